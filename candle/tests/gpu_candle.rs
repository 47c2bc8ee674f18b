//! ironflash-candle against candle's own attention (matmul, softmax, matmul in f32) on the GPU: the
//! forward, and the gradients of q, k and v through candle's autograd (`Var`s, `backward`), over head
//! dims, GQA, unequal lengths, causal, windows, ALiBi, softcap, both dtypes and a strided q; bad input
//! as candle errors. Inputs random (bf16/f16-representable, so both paths see the same values). Without
//! a CUDA driver the tests are reported as ignored, with one line that says why.
//!
//! Bounds, relative L2 against the f32 path: O bf16 1e-2, f16 5e-3; gradients bf16 1.5e-2, f16 5e-3
//! (the library's own bounds; the reference here is f32, not f64).

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{naive_attention, rel_l2, Spec};
use ironflash_candle as fa;

struct Case {
    name: &'static str,
    dtype: DType,
    b: usize,
    sq: usize,
    sk: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    spec: Spec,
}

fn spec(d: usize) -> Spec {
    Spec { softmax_scale: (d as f32).powf(-0.5), window_left: None, window_right: None, alibi: None, softcap: None }
}

fn cases() -> Vec<Case> {
    let base = |name, dtype, (b, sq, sk, hq, hkv, d)| Case { name, dtype, b, sq, sk, hq, hkv, d, spec: spec(d) };
    let mut v = vec![
        base("plain d64 gqa", DType::BF16, (2, 200, 200, 4, 2, 64)),
        base("plain d128 sq<sk", DType::BF16, (1, 130, 257, 8, 8, 128)),
        base("plain d32 f16", DType::F16, (2, 97, 160, 4, 1, 32)),
        base("plain d256", DType::BF16, (1, 150, 150, 2, 2, 256)),
        base("plain d192 f16", DType::F16, (1, 80, 120, 2, 1, 192)),
    ];
    let mut c = base("causal d128 gqa", DType::BF16, (2, 300, 300, 8, 2, 128));
    c.spec.window_right = Some(0);
    v.push(c);
    let mut c = base("window d96 f16", DType::F16, (1, 260, 300, 4, 2, 96));
    (c.spec.window_left, c.spec.window_right) = (Some(64), Some(16));
    v.push(c);
    let mut c = base("alibi causal d64", DType::BF16, (2, 180, 180, 4, 4, 64));
    c.spec.window_right = Some(0);
    c.spec.alibi = Some((0..4).map(|h| 2f32.powi(-(h + 1))).collect());
    v.push(c);
    let mut c = base("alibi window softcap d128 f16", DType::F16, (1, 200, 230, 4, 2, 128));
    (c.spec.window_left, c.spec.window_right) = (Some(100), None);
    c.spec.alibi = Some((0..4).map(|h| 0.1 * (h + 1) as f32).collect());
    c.spec.softcap = Some(20.0);
    v.push(c);
    v
}

fn bounds(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F16 => (5e-3, 5e-3),
        _ => (1e-2, 1.5e-2),
    }
}

/// A random tensor whose values the dtype holds exactly, as f32.
fn input(shape: (usize, usize, usize, usize), dtype: DType, dev: &Device) -> Result<Tensor> {
    Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dtype)?.to_dtype(DType::F32)
}

/// ironflash through the candle-flash-attn function that `spec` calls for.
fn ironflash(q: &Tensor, k: &Tensor, v: &Tensor, s: &Spec, slopes: Option<&Tensor>) -> Result<Tensor> {
    match (slopes, s.softcap) {
        (None, None) if s.window_left.is_none() && s.window_right.is_none() => {
            fa::flash_attn(q, k, v, s.softmax_scale, false)
        }
        (None, None) if s.window_left.is_none() && s.window_right == Some(0) => {
            fa::flash_attn(q, k, v, s.softmax_scale, true)
        }
        (None, None) => fa::flash_attn_windowed(q, k, v, s.softmax_scale, s.window_left, s.window_right),
        (Some(a), None) if s.window_left.is_none() => {
            fa::flash_attn_alibi(q, k, v, a, s.softmax_scale, s.window_right == Some(0))
        }
        (Some(a), None) => fa::flash_attn_alibi_windowed(q, k, v, a, s.softmax_scale, s.window_left, s.window_right),
        (a, Some(cap)) => {
            fa::flash_attn_alibi_windowed_softcap(q, k, v, a, s.softmax_scale, s.window_left, s.window_right, cap)
        }
    }
}

fn check(c: &Case, dev: &Device) -> Result<()> {
    let q = Var::from_tensor(&input((c.b, c.sq, c.hq, c.d), c.dtype, dev)?)?;
    let k = Var::from_tensor(&input((c.b, c.sk, c.hkv, c.d), c.dtype, dev)?)?;
    let v = Var::from_tensor(&input((c.b, c.sk, c.hkv, c.d), c.dtype, dev)?)?;
    let slopes = c.spec.alibi.as_ref().map(|s| Tensor::new(s.as_slice(), dev)).transpose()?;
    // A random weighting of O as the loss, so that every output element has its own gradient.
    let w = Tensor::randn(0f32, 1.0, (c.b, c.sq, c.hq, c.d), dev)?;

    let got = ironflash(&q.to_dtype(c.dtype)?, &k.to_dtype(c.dtype)?, &v.to_dtype(c.dtype)?, &c.spec, slopes.as_ref())?;
    let want = naive_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &c.spec)?;
    let (o_tol, g_tol) = bounds(c.dtype);
    let o_err = rel_l2(&got, &want)?;
    let g_got = (got.to_dtype(DType::F32)? * &w)?.sum_all()?.backward()?;
    let g_want = (want * &w)?.sum_all()?.backward()?;
    let mut report = vec![format!("O {o_err:.2e}")];
    let mut worst = o_err / o_tol;
    for (name, var) in [("dq", &q), ("dk", &k), ("dv", &v)] {
        let (Some(a), Some(b)) = (g_got.get(var), g_want.get(var)) else {
            candle_core::bail!("{}: no gradient for {name}", c.name)
        };
        let e = rel_l2(a, b)?;
        worst = worst.max(e / g_tol);
        report.push(format!("{name} {e:.2e}"));
    }
    println!("{} ({:?}): {}", c.name, c.dtype, report.join(", "));
    if worst.is_nan() || worst >= 1.0 {
        candle_core::bail!("{}: beyond the bounds ({o_tol:.0e} / {g_tol:.0e}): {}", c.name, report.join(", "));
    }
    Ok(())
}

fn cuda() -> Option<Device> {
    Device::new_cuda(0).ok()
}

fn forward_and_gradients_match_candle() {
    let Some(dev) = cuda() else { return };
    for c in cases() {
        check(&c, &dev).unwrap();
    }
}

/// q as a transposed view (heads-major storage): strides pass through without a copy.
fn strided_q() {
    let Some(dev) = cuda() else { return };
    let s = spec(64);
    let q_heads_major = Tensor::randn(0f32, 1.0, (1, 4, 128, 64), &dev).unwrap().to_dtype(DType::BF16).unwrap();
    let q = q_heads_major.transpose(1, 2).unwrap();
    assert!(!q.is_contiguous());
    let k = Tensor::randn(0f32, 1.0, (1, 128, 4, 64), &dev).unwrap().to_dtype(DType::BF16).unwrap();
    let v = Tensor::randn(0f32, 1.0, (1, 128, 4, 64), &dev).unwrap().to_dtype(DType::BF16).unwrap();
    let got = fa::flash_attn(&q, &k, &v, s.softmax_scale, false).unwrap();
    let want = naive_attention(&q, &k, &v, &s).unwrap();
    let e = rel_l2(&got, &want).unwrap();
    println!("strided q: O {e:.2e}");
    assert!(e < 1e-2, "{e}");
}

/// Wrong dtype, rank, mixed dtypes, bad slopes, bad head dim, a strided head dim and CPU tensors:
/// candle errors, no panic.
fn bad_input_is_an_error() {
    let Some(dev) = cuda() else { return };
    let t = |shape: (usize, usize, usize, usize), dt| Tensor::zeros(shape, dt, &dev).unwrap();
    let (q, k) = (t((1, 64, 2, 64), DType::BF16), t((1, 64, 2, 64), DType::BF16));
    let cases: Vec<(&str, Result<Tensor>)> = vec![
        ("f32 q", fa::flash_attn(&t((1, 64, 2, 64), DType::F32), &k, &k, 1.0, false)),
        ("mixed dtypes", fa::flash_attn(&q, &t((1, 64, 2, 64), DType::F16), &k, 1.0, false)),
        ("rank 3", fa::flash_attn(&Tensor::zeros((64, 2, 64), DType::BF16, &dev).unwrap(), &k, &k, 1.0, false)),
        (
            "head dim 80",
            fa::flash_attn(
                &t((1, 64, 2, 80), DType::BF16),
                &t((1, 64, 2, 80), DType::BF16),
                &t((1, 64, 2, 80), DType::BF16),
                1.0,
                false,
            ),
        ),
        ("heads 3 vs 2", fa::flash_attn(&t((1, 64, 3, 64), DType::BF16), &k, &k, 1.0, false)),
        ("f16 slopes", fa::flash_attn_alibi(&q, &k, &k, &Tensor::zeros(2, DType::F16, &dev).unwrap(), 1.0, false)),
        (
            "3 slopes for 2 heads",
            fa::flash_attn_alibi(&q, &k, &k, &Tensor::zeros(3, DType::F32, &dev).unwrap(), 1.0, false),
        ),
        ("softcap 0", fa::flash_attn_alibi_windowed_softcap(&q, &k, &k, None, 1.0, None, None, 0.0)),
        ("head dim not contiguous", {
            let q = t((1, 64, 64, 2), DType::BF16).transpose(2, 3).unwrap();
            fa::flash_attn(&q, &k, &k, 1.0, false)
        }),
        ("cpu tensors", {
            let c = Tensor::zeros((1, 64, 2, 64), DType::BF16, &Device::Cpu).unwrap();
            fa::flash_attn(&c, &c, &c, 1.0, false)
        }),
    ];
    for (name, r) in cases {
        match r {
            Ok(_) => panic!("{name}: accepted"),
            // candle appends a backtrace where RUST_BACKTRACE asks for one: the message is the first line.
            Err(e) => println!("{name}: {}", e.to_string().lines().next().unwrap_or_default()),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let missing = ironflash::Device::open(0).err();
    if let Some(why) = &missing {
        println!("skipped: no CUDA driver ({why}): the candle GPU tests reported as ignored");
    }
    let tests: [(&str, fn()); 3] = [
        ("forward_and_gradients_match_candle", forward_and_gradients_match_candle),
        ("strided_q", strided_q),
        ("bad_input_is_an_error", bad_input_is_an_error),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            libtest_mimic::Trial::test(name, move || {
                f();
                Ok(())
            })
            .with_ignored_flag(missing.is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
