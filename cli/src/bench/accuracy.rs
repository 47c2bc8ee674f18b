//! Correctness of each path against the f64 reference (`cpu::reference_forward`): the main job's check
//! and the `check` sweep. Errors are relative L2 on O and max |diff| on the LSE, with the bounds the
//! tests use per dtype.

use crate::bench::case::{DTypeName, Impl};
use half::{bf16, f16};
use ironflash::device::Device;
use ironflash::dtype::{DType, Element};
use ironflash::error::{Error, Result};
use ironflash::options::AttnOptions;
use ironflash::problem::supported_head_dim_pairs;
use ironflash::tensor::HostTensor;
use rand::SeedableRng;

/// One shape to check. Heads are query heads; `h_kv < h` is GQA/MQA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckShape {
    pub b: usize,
    pub n_q: usize,
    pub n_k: usize,
    pub h: usize,
    pub h_kv: usize,
    pub d: usize,
    /// V's (and O's) head dim.
    pub d_v: usize,
    pub causal: bool,
    pub dtype: DTypeName,
}

impl std::fmt::Display for CheckShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let heads = if self.h == self.h_kv { self.h.to_string() } else { format!("{}/{}", self.h, self.h_kv) };
        let n = if self.n_q == self.n_k { self.n_q.to_string() } else { format!("{}/{}", self.n_q, self.n_k) };
        let mask = if self.causal { " causal" } else { "" };
        let d = if self.d_v == self.d { self.d.to_string() } else { format!("{}/{}", self.d, self.d_v) };
        write!(f, "B={} H={heads} N={n} D={d}{mask} {}", self.b, self.dtype.name())
    }
}

/// Relative L2 error of O allowed per dtype (the bound the equivalence tests use).
pub fn output_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1e-2,
        DType::F16 => 5e-3,
        DType::F32 => 1e-5,
        DType::F8E4M3 => 5e-2,
    }
}

/// Bounds for one path: the standard baseline rounds S and P to the element type, so it gets twice the
/// output bound and a looser LSE bound (as in tests/gpu_standard.rs).
pub fn tolerances(imp: Impl, dtype: DType) -> (f64, f64) {
    match imp {
        Impl::Standard => (2.0 * output_tolerance(dtype), 0.05),
        _ => (output_tolerance(dtype), 1e-2),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// The path cannot run this shape here (no GPU, no tile configuration fits this device, ...).
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub imp: Impl,
    pub shape: CheckShape,
    pub rel_l2: Option<f64>,
    pub lse_err: Option<f64>,
    pub tol: (f64, f64),
    pub verdict: Verdict,
}

/// ‖a − b‖₂ / ‖b‖₂ with b the reference; NaN anywhere in `a` gives NaN, which fails every bound.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Max |got − want| over rows with a finite reference; a fully masked row (reference −inf) must be −inf.
pub fn lse_error(got: &[f32], want: &[f64]) -> std::result::Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!("LSE has {} values, want {}", got.len(), want.len()));
    }
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w == f64::NEG_INFINITY {
            if g != f32::NEG_INFINITY {
                return Err(format!("lse[{i}] = {g}, want -inf (fully masked row)"));
            }
            continue;
        }
        let d = (g as f64 - w).abs();
        if d.is_nan() {
            return Err(format!("lse[{i}] is NaN"));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

/// Check each path in `imps` on one shape against one f64 reference. GPU paths need `dev`.
pub fn check_paths(dev: Option<&Device>, imps: &[Impl], shape: &CheckShape, seed: u64) -> Result<Vec<CheckResult>> {
    match shape.dtype {
        DTypeName::Bf16 => check_typed::<bf16>(dev, imps, shape, seed),
        DTypeName::F16 => check_typed::<f16>(dev, imps, shape, seed),
    }
}

/// Errors that mean "this path does not run this here" rather than "this path is wrong".
fn is_unavailable(e: &Error) -> bool {
    matches!(e, Error::NoTileConfig(_) | Error::UnsupportedDtype { .. } | Error::NoDriver(_))
}

fn check_typed<T: Element>(
    dev: Option<&Device>,
    imps: &[Impl],
    shape: &CheckShape,
    seed: u64,
) -> Result<Vec<CheckResult>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let q = HostTensor::<T>::random([shape.b, shape.n_q, shape.h, shape.d], 1.0, &mut rng);
    let k = HostTensor::<T>::random([shape.b, shape.n_k, shape.h_kv, shape.d], 1.0, &mut rng);
    let v = HostTensor::<T>::random([shape.b, shape.n_k, shape.h_kv, shape.d_v], 1.0, &mut rng);
    let opts = AttnOptions { causal: shape.causal, ..AttnOptions::default() };
    let reference = ironflash::cpu::reference_forward(&q, &k, &v, &opts)?;

    let mut out = Vec::new();
    for &imp in imps {
        let tol = tolerances(imp, T::DTYPE);
        let result = |rel_l2, lse_err, verdict| CheckResult { imp, shape: *shape, rel_l2, lse_err, tol, verdict };
        let got: Result<(Vec<f64>, Vec<f32>)> = match (imp, dev) {
            (Impl::Cpu, _) => ironflash::cpu::forward(&q, &k, &v, &opts).map(|o| (o.o.to_f64_contiguous(), o.lse)),
            // The forward has no deterministic mode: fused-det checks the same forward as fused.
            (Impl::Fused | Impl::FusedDet | Impl::Standard, Some(dev)) => (|| {
                let (q, k, v) = (dev.upload(&q)?, dev.upload(&k)?, dev.upload(&v)?);
                let o = if imp != Impl::Standard {
                    ironflash::gpu::flash_forward(dev, &q, &k, &v, &opts)?
                } else {
                    ironflash::gpu::standard_forward(dev, &q, &k, &v, &opts)?
                };
                Ok((dev.download(&o.o)?.to_f64_contiguous(), dev.download_f32(&o.lse)?))
            })(),
            (Impl::Fused | Impl::FusedDet | Impl::Standard, None) => {
                out.push(result(None, None, Verdict::Unavailable("no GPU".into())));
                continue;
            }
            (Impl::Peers, _) => continue,
        };
        let (o, lse) = match got {
            Ok(x) => x,
            Err(e) if is_unavailable(&e) => {
                out.push(result(None, None, Verdict::Unavailable(e.to_string())));
                continue;
            }
            Err(e) => {
                out.push(result(None, None, Verdict::Fail(e.to_string())));
                continue;
            }
        };
        let (err_o, lse_err, verdict) = judge(&o, &lse, (&reference.o, &reference.lse), tol);
        out.push(result(Some(err_o), lse_err, verdict));
    }
    Ok(out)
}

/// The main job's few shapes: MHA causal, GQA with N_q != N_k, MQA decode-like with head dim 256, and
/// GQA causal with V's head dim below Q's and K's (192 / 128).
pub fn quick_shapes() -> Vec<CheckShape> {
    let s = |b, n_q, n_k, h, h_kv, d, causal| CheckShape {
        b,
        n_q,
        n_k,
        h,
        h_kv,
        d,
        d_v: d,
        causal,
        dtype: DTypeName::Bf16,
    };
    vec![
        s(1, 128, 128, 4, 4, 64, true),
        s(2, 100, 77, 4, 2, 128, false),
        s(1, 16, 300, 4, 1, 256, true),
        CheckShape { d_v: 128, ..s(1, 90, 130, 4, 2, 192, true) },
    ]
}

/// The `check` sweep: every supported pair of head dims (Q/K, V), both masks, both dtypes, over shapes
/// that hit the edge cases (partial blocks, N_q > N_k with fully masked rows, GQA/MQA, a single query
/// row).
pub fn sweep_shapes(dtypes: &[DTypeName], max_len: usize) -> Vec<CheckShape> {
    // [b, n_q, n_k, h, h_kv]
    const BASE: &[[usize; 5]] =
        &[[1, 128, 128, 4, 4], [2, 100, 77, 4, 2], [1, 1, 300, 8, 1], [1, 257, 513, 2, 2], [2, 300, 100, 2, 1]];
    let mut out = Vec::new();
    for &dtype in dtypes {
        for (d, d_v) in supported_head_dim_pairs() {
            for causal in [false, true] {
                for &[b, n_q, n_k, h, h_kv] in BASE {
                    let (n_q, n_k) = (n_q.min(max_len), n_k.min(max_len));
                    out.push(CheckShape { b, n_q, n_k, h, h_kv, d, d_v, causal, dtype });
                }
            }
        }
    }
    out
}

/// The main job's packed-batch check: three sequences of their own lengths (one of them without
/// queries) in one `gpu::flash_forward_varlen` call, GQA 4/2, D = 128, causal, bf16, against the f64
/// varlen reference. `Unavailable` without a GPU. The shape reads `B=3 N=tokens_q/tokens_k`.
pub fn check_varlen(dev: Option<&Device>, seed: u64) -> Result<CheckResult> {
    use ironflash::cpu::varlen::{reference_forward_varlen, Varlen};
    let (cu_q, cu_k) = ([0i32, 100, 100, 157], [0i32, 130, 139, 196]);
    let shape =
        CheckShape { b: 3, n_q: 157, n_k: 196, h: 4, h_kv: 2, d: 128, d_v: 128, causal: true, dtype: DTypeName::Bf16 };
    let tol = tolerances(Impl::Fused, DType::BF16);
    let result = |rel_l2, lse_err, verdict| CheckResult { imp: Impl::Fused, shape, rel_l2, lse_err, tol, verdict };
    let Some(dev) = dev else { return Ok(result(None, None, Verdict::Unavailable("no GPU".into()))) };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let q = HostTensor::<bf16>::random([1, shape.n_q, shape.h, shape.d], 1.0, &mut rng);
    let k = HostTensor::<bf16>::random([1, shape.n_k, shape.h_kv, shape.d], 1.0, &mut rng);
    let v = HostTensor::<bf16>::random([1, shape.n_k, shape.h_kv, shape.d_v], 1.0, &mut rng);
    let seqs = Varlen { cu_seqlens_q: &cu_q, cu_seqlens_k: &cu_k };
    let opts = AttnOptions::causal();
    let reference = reference_forward_varlen(&q, &k, &v, &seqs, &opts)?;
    let offsets = dev.upload_varlen(&seqs, shape.n_q, shape.n_k)?;
    let (q, k, v) = (dev.upload(&q)?, dev.upload(&k)?, dev.upload(&v)?);
    let out = ironflash::gpu::flash_forward_varlen(dev, &q, &k, &v, &offsets.view(), &opts)?;
    let (o, lse) = (dev.download(&out.o)?.to_f64_contiguous(), dev.download_f32(&out.lse)?);
    let (err_o, lse_err, verdict) = judge(&o, &lse, (&reference.o, &reference.lse), tol);
    Ok(result(Some(err_o), lse_err, verdict))
}

/// O's relative L2 error, the LSE's max |diff| (when comparable) and the verdict against `tol` (O, LSE).
fn judge(o: &[f64], lse: &[f32], (want_o, want_lse): (&[f64], &[f64]), tol: (f64, f64)) -> (f64, Option<f64>, Verdict) {
    let err_o = rel_l2(o, want_o);
    let lse_err = lse_error(lse, want_lse);
    let verdict = match &lse_err {
        Err(why) => Verdict::Fail(why.clone()),
        Ok(_) if err_o.is_nan() || err_o > tol.0 => Verdict::Fail(format!("O rel L2 {err_o:.2e} > {:.0e}", tol.0)),
        Ok(e) if *e > tol.1 => Verdict::Fail(format!("LSE max |diff| {e:.2e} > {:.0e}", tol.1)),
        Ok(_) => Verdict::Pass,
    };
    (err_o, lse_err.ok(), verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_l2(&[1.1, 0.0], &[1.0, 0.0]) - 0.1).abs() < 1e-12);
        assert!(rel_l2(&[f64::NAN, 0.0], &[1.0, 0.0]).is_nan());
        assert_eq!(lse_error(&[1.5, f32::NEG_INFINITY], &[1.0, f64::NEG_INFINITY]), Ok(0.5));
        assert!(lse_error(&[0.0], &[f64::NEG_INFINITY]).is_err());
        assert!(lse_error(&[f32::NAN], &[1.0]).is_err());
    }

    #[test]
    fn sweep_covers_every_head_dim_mask_and_dtype() {
        let s = sweep_shapes(&[DTypeName::Bf16, DTypeName::F16], 512);
        assert_eq!(s.len(), 2 * supported_head_dim_pairs().count() * 2 * 5);
        assert!(s.iter().any(|x| (x.d, x.d_v) == (192, 128)));
        assert!(s.iter().any(|x| x.causal && x.n_q > x.n_k), "fully masked rows");
        assert!(s.iter().any(|x| x.n_q == 1));
        assert!(sweep_shapes(&[DTypeName::Bf16], 64).iter().all(|x| x.n_q <= 64 && x.n_k <= 64));
        assert_eq!(quick_shapes()[1].to_string(), "B=2 H=4/2 N=100/77 D=128 bf16");
    }

    #[test]
    fn gpu_paths_without_a_device_are_unavailable() {
        let shape =
            CheckShape { b: 1, n_q: 8, n_k: 8, h: 1, h_kv: 1, d: 32, d_v: 32, causal: false, dtype: DTypeName::Bf16 };
        let r = check_paths(None, &[Impl::Fused, Impl::Standard], &shape, 1).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|x| matches!(x.verdict, Verdict::Unavailable(_))));
    }
}
