//! The standard-attention baseline (cuBLAS QKᵀ, the Rust row-softmax kernel, cuBLAS PV) and its backward
//! (stored P, cuBLAS dV, dP, dQ, dK, the Rust dS row kernel) against the f64 reference on fresh random
//! inputs with poisoned outputs. Skips with one line without a CUDA driver.

mod common;

use common::{check_lse, device_or_skip, grad_error, max_abs, output_tolerance, rel_l2};
use half::{bf16, f16};
use ironflash::gpu::GpuGradients;
use ironflash::{cpu, gpu, AttnOptions, DType, Element, HostTensor, Layout};
use rand::{Rng, SeedableRng};

/// `[batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim]`
type Dims = [usize; 6];

fn run_case<T: Element>(dims: Dims, causal: bool, seed: u64) {
    run_case_with_head_dim_v::<T>(dims, dims[5], causal, seed)
}

/// As `run_case`, with V (and O) of head dim `dv`.
fn run_case_with_head_dim_v<T: Element>(dims: Dims, dv: usize, causal: bool, seed: u64) {
    let [b, sq, sk, hq, hkv, d] = dims;
    let Some(dev) = device_or_skip("gpu_standard") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // q gets padded strides (a head stride larger than head_dim) to exercise the strided GEMM path.
    let q_layout = Layout { shape: [b, sq, hq, d], strides: [sq * hq * (d + 8), hq * (d + 8), d + 8, 1] };
    let q = HostTensor::<T>::random_with_layout(q_layout, 1.0, &mut rng);
    let k = HostTensor::<T>::random([b, sk, hkv, d], 1.0, &mut rng);
    let v = HostTensor::<T>::random([b, sk, hkv, dv], 1.0, &mut rng);
    let opts = AttnOptions { causal, softmax_scale: Some(rng.random_range(0.05..0.3)), ..Default::default() };
    let reference = cpu::reference_forward(&q, &k, &v, &opts).unwrap();
    let (q_dev, k_dev, v_dev) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap(), dev.upload(&v).unwrap());
    let out = gpu::standard_forward(dev, &q_dev, &k_dev, &v_dev, &opts).unwrap();
    let o = dev.download(&out.o).unwrap().to_f64_contiguous();
    let lse = dev.download_f32(&out.lse).unwrap();
    let err = rel_l2(&o, &reference.o);
    let case = format!("{} b{b} sq{sq} sk{sk} hq{hq} hkv{hkv} d{d} dv{dv} causal={causal}", T::DTYPE);
    println!("{case}: rel_l2 {err:.2e}, max_abs {:.2e}", max_abs(&o, &reference.o));
    // The baseline rounds S and P to the element type, so its error is a few times the output rounding.
    assert!(err < 2.0 * output_tolerance(T::DTYPE), "{case}: rel_l2 {err}");
    // LSE is computed from rounded scores: allow the rounding of |S| ~ a few units.
    check_lse(&lse, &reference.lse, 0.05).unwrap_or_else(|e| panic!("{case}: {e}"));
}

fn standard_matches_reference_bf16() {
    run_case::<bf16>([2, 100, 77, 4, 4, 64], false, 1);
    run_case::<bf16>([1, 130, 130, 2, 2, 128], true, 2);
    run_case::<bf16>([1, 200, 64, 6, 2, 96], true, 3); // GQA, more queries than keys: fully masked rows
    run_case_with_head_dim_v::<bf16>([1, 150, 170, 4, 2, 192], 128, true, 6); // DeepSeek-V3's head dims
}

fn standard_matches_reference_f16() {
    run_case::<f16>([1, 64, 300, 4, 1, 256], true, 4); // MQA, decode-like
    run_case::<f16>([3, 33, 45, 2, 1, 32], false, 5);
}

fn standard_rejects_f32() {
    let Some(dev) = device_or_skip("standard_rejects_f32") else { return };
    let t = HostTensor::<f32>::random([1, 4, 1, 64], 1.0, &mut rand::rng());
    let d = dev.upload(&t).unwrap();
    let err = gpu::standard_forward(dev, &d, &d, &d, &AttnOptions::default()).unwrap_err();
    assert!(matches!(err, ironflash::Error::UnsupportedDtype { .. }), "{err}");
}

/// The baseline's gradient bound: P, dP and dS are each rounded to the element type between products,
/// and dK/dV of a GQA group are summed in the element type (one GEMM per group member, beta 1), so
/// allow about twice the fused backward's bound (bf16 1.5e-2, f16 2e-3).
fn standard_grad_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 3e-2,
        DType::F16 => 5e-3,
        DType::F32 => 1e-5,
        DType::F8E4M3 => unreachable!("the baseline takes 16-bit tensors"),
    }
}

/// A layout with every stride padded (a multiple of 8 elements), to exercise the strided GEMM operands.
fn padded(shape: [usize; 4]) -> Layout {
    let [_, s, h, d] = shape;
    let (hs, ss) = (d + 8, h * (d + 8) + 16);
    Layout { shape, strides: [s * ss + 8, ss, hs, 1] }
}

fn run_backward_case<T: Element>(dims: Dims, causal: bool, seed: u64) {
    run_backward_case_with_head_dim_v::<T>(dims, dims[5], causal, seed)
}

/// As `run_backward_case`, with V (and O, dO, dV) of head dim `dv`.
fn run_backward_case_with_head_dim_v<T: Element>(dims: Dims, dv: usize, causal: bool, seed: u64) {
    let [b, sq, sk, hq, hkv, d] = dims;
    let Some(dev) = device_or_skip("gpu_standard backward") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (qs, ks, vs, os) = ([b, sq, hq, d], [b, sk, hkv, d], [b, sk, hkv, dv], [b, sq, hq, dv]);
    let q = HostTensor::<T>::random_with_layout(padded(qs), 1.0, &mut rng);
    let k = HostTensor::<T>::random_with_layout(padded(ks), 1.0, &mut rng);
    let v = HostTensor::<T>::random(vs, 1.0, &mut rng);
    let d_o = HostTensor::<T>::random_with_layout(padded(os), 1.0, &mut rng);
    let scale = rng.random_range(0.5..3.0) / (d as f32).sqrt();
    let opts = AttnOptions { causal, softmax_scale: Some(scale), ..Default::default() };
    let want = cpu::reference_backward(&q, &k, &v, &d_o, &opts).unwrap();
    let (gq, gk, gv, gdo) =
        (dev.upload(&q).unwrap(), dev.upload(&k).unwrap(), dev.upload(&v).unwrap(), dev.upload(&d_o).unwrap());
    let fwd = gpu::standard_forward_train(dev, &gq, &gk, &gv, &opts).unwrap();
    let poisoned = |shape| {
        dev.upload(&HostTensor::<T> { data: vec![T::poison(); padded(shape).span()], layout: padded(shape) }).unwrap()
    };
    let mut grads = GpuGradients { dq: poisoned(qs), dk: poisoned(ks), dv: poisoned(vs), d_sinks: None };
    gpu::standard_backward_into(dev, &gq, &gk, &gv, &fwd.o, &fwd.probs, &gdo, &mut grads, &opts).unwrap();
    let got = [&grads.dq, &grads.dk, &grads.dv].map(|t| dev.download(t).unwrap().to_f64_contiguous());
    let case = format!("{} b{b} sq{sq} sk{sk} hq{hq} hkv{hkv} d{d} dv{dv} causal={causal}", T::DTYPE);
    let tol = standard_grad_tolerance(T::DTYPE);
    let errs: Vec<(&str, f64)> = [("dq", &got[0], &want.dq), ("dk", &got[1], &want.dk), ("dv", &got[2], &want.dv)]
        .into_iter()
        .map(|(name, g, w)| (name, grad_error(g, w)))
        .collect();
    let shown: Vec<String> = errs.iter().map(|(name, e)| format!("{name} {e:.2e}")).collect();
    println!("{case}: backward {} (bound {tol:.1e})", shown.join(", "));
    for (name, err) in errs {
        assert!(err < tol, "{case}: {name} error {err} (bound {tol})");
    }
    // The allocating call gives the same gradients (it runs the same products on the same inputs).
    let again = gpu::standard_backward(dev, &gq, &gk, &gv, &fwd.o, &fwd.probs, &gdo, &opts).unwrap();
    let dq_again = dev.download(&again.dq).unwrap().to_f64_contiguous();
    assert_eq!(dq_again, got[0], "{case}: standard_backward vs standard_backward_into");
}

fn standard_backward_matches_reference_bf16() {
    run_backward_case::<bf16>([2, 100, 77, 4, 4, 64], false, 11);
    run_backward_case::<bf16>([1, 130, 130, 4, 2, 128], true, 12); // GQA
    run_backward_case::<bf16>([1, 200, 64, 6, 2, 96], true, 13); // GQA, fully masked rows
    run_backward_case_with_head_dim_v::<bf16>([1, 150, 170, 4, 2, 192], 128, true, 16);
    // DeepSeek-V3's head dims
}

fn standard_backward_matches_reference_f16() {
    run_backward_case::<f16>([1, 64, 300, 4, 1, 256], true, 14); // MQA
    run_backward_case::<f16>([3, 33, 45, 2, 2, 32], false, 15);
}

fn standard_backward_rejects_a_short_p() {
    let Some(dev) = device_or_skip("standard_backward_rejects_a_short_p") else { return };
    let t = HostTensor::<bf16>::random([1, 16, 2, 64], 1.0, &mut rand::rng());
    let d = dev.upload(&t).unwrap();
    let short = dev.stream().clone_htod(&vec![bf16::ZERO; 16 * 16]).unwrap();
    let err = gpu::standard_backward(dev, &d, &d, &d, &d, &short, &d, &AttnOptions::default()).unwrap_err();
    assert!(matches!(err, ironflash::Error::ShapeMismatch { .. }), "{err}");
}

fn main() -> std::process::ExitCode {
    common::gpu_main(
        gpu_tests![
            standard_matches_reference_bf16,
            standard_matches_reference_f16,
            standard_rejects_f32,
            standard_backward_matches_reference_bf16,
            standard_backward_matches_reference_f16,
            standard_backward_rejects_a_short_p,
        ],
        &[],
    )
}
