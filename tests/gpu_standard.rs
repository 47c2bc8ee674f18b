//! The standard-attention baseline (cuBLAS QKᵀ, the Rust row-softmax kernel, cuBLAS PV) against the f64
//! reference on fresh random inputs with poisoned outputs. Skips with one line without a CUDA driver.

mod common;

use common::{check_lse, device_or_skip, max_abs, output_tolerance, rel_l2};
use half::{bf16, f16};
use ironflash::{cpu, gpu, AttnOptions, Element, HostTensor, Layout};
use rand::{Rng, SeedableRng};

/// `[batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim]`
type Dims = [usize; 6];

fn run_case<T: Element>(dims: Dims, causal: bool, seed: u64) {
    let [b, sq, sk, hq, hkv, d] = dims;
    let Some(dev) = device_or_skip("gpu_standard") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // q gets padded strides (a head stride larger than head_dim) to exercise the strided GEMM path.
    let q_layout = Layout { shape: [b, sq, hq, d], strides: [sq * hq * (d + 8), hq * (d + 8), d + 8, 1] };
    let q = HostTensor::<T>::random_with_layout(q_layout, 1.0, &mut rng);
    let k = HostTensor::<T>::random([b, sk, hkv, d], 1.0, &mut rng);
    let v = HostTensor::<T>::random([b, sk, hkv, d], 1.0, &mut rng);
    let opts = AttnOptions { causal, softmax_scale: Some(rng.random_range(0.05..0.3)), deterministic: false };
    let reference = cpu::reference_forward(&q, &k, &v, &opts).unwrap();
    let (dq, dk, dv) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap(), dev.upload(&v).unwrap());
    let out = gpu::standard_forward(dev, &dq, &dk, &dv, &opts).unwrap();
    let o = dev.download(&out.o).unwrap().to_f64_contiguous();
    let lse = dev.download_f32(&out.lse).unwrap();
    let err = rel_l2(&o, &reference.o);
    let case = format!("{} b{b} sq{sq} sk{sk} hq{hq} hkv{hkv} d{d} causal={causal}", T::DTYPE);
    println!("{case}: rel_l2 {err:.2e}, max_abs {:.2e}", max_abs(&o, &reference.o));
    // The baseline rounds S and P to the element type, so its error is a few times the output rounding.
    assert!(err < 2.0 * output_tolerance(T::DTYPE), "{case}: rel_l2 {err}");
    // LSE is computed from rounded scores: allow the rounding of |S| ~ a few units.
    check_lse(&lse, &reference.lse, 0.05).unwrap_or_else(|e| panic!("{case}: {e}"));
}

#[test]
fn standard_matches_reference_bf16() {
    run_case::<bf16>([2, 100, 77, 4, 4, 64], false, 1);
    run_case::<bf16>([1, 130, 130, 2, 2, 128], true, 2);
    run_case::<bf16>([1, 200, 64, 6, 2, 96], true, 3); // GQA, more queries than keys: fully masked rows
}

#[test]
fn standard_matches_reference_f16() {
    run_case::<f16>([1, 64, 300, 4, 1, 256], true, 4); // MQA, decode-like
    run_case::<f16>([3, 33, 45, 2, 1, 32], false, 5);
}

#[test]
fn standard_rejects_f32() {
    let Some(dev) = device_or_skip("standard_rejects_f32") else { return };
    let t = HostTensor::<f32>::random([1, 4, 1, 64], 1.0, &mut rand::rng());
    let d = dev.upload(&t).unwrap();
    let err = gpu::standard_forward(dev, &d, &d, &d, &AttnOptions::default()).unwrap_err();
    assert!(matches!(err, ironflash::Error::UnsupportedDtype { .. }), "{err}");
}
