//! The fused backward (`gpu::flash_backward`) against the f64 reference backward on fresh random
//! inputs, with poisoned (NaN) gradient buffers. Skips with one line without a CUDA driver.
//!
//! O and the LSE fed to the kernel come from the f64 reference forward (O rounded to the element type,
//! LSE to f32), so these tests do not depend on the forward kernel; one test runs the real training
//! step (fused forward, then backward) end to end.
//!
//! The reference is exact given that rounded O (`cpu::reference_backward_given_o`: rowsum(dO ∘ O) from
//! it, as the kernel forms delta), except in the end-to-end test, which holds the whole step to the
//! O-exact reference.
//!
//! Error bounds (relative L2 of each gradient against the f64 reference): bf16 1.5e-2, f16 2e-3, about
//! four units of the element type's rounding (unit roundoff bf16 2^-8 ≈ 3.9e-3, f16 2^-11 ≈ 4.9e-4).
//! The kernel rounds P and dS to the element type before the dV, dK and dQ products (as
//! FlashAttention-2 does; dS is formed from the rounded P) and computes delta from the rounded O, so
//! each gradient carries about one unit of rounding (measured on the H100 over 126 random cases of
//! every head dim: bf16 2.0e-3..3.6e-3, f16 2.5e-4..5.1e-4), more where dP − delta cancels; the
//! measured errors are printed next to the bound. These are
//! tighter than the 2e-2 / 1e-2 often quoted for FlashAttention-2's backward against f64.

mod common;

use common::{device_or_skip, grad_error, grad_error_summed, max_abs, run_property, HEAD_DIM_PAIRS};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use ironflash::gpu::{self, BackwardTile, GpuGradients};
use ironflash::{cpu, Arg, AttnOptions, DType, Device, Element, Error, HostTensor, Layout};
use ironflash_kernels::tiles_bwd::BWD_TILES;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::{Rng, SeedableRng};

/// Relative L2 bound of every gradient, per dtype (see the module docs).
fn grad_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1.5e-2,
        DType::F16 => 2e-3,
        DType::F32 => 1e-5,
        DType::F8E4M3 => unreachable!("no FP8 backward"),
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    seqlen_q: usize,
    seqlen_k: usize,
    heads_kv: usize,
    group: usize,
    head_dim: usize,
    /// V's (O's, dO's, dV's) head dim.
    head_dim_v: usize,
    causal: bool,
    /// Padded strides on every input and on the gradient buffers.
    strided: bool,
    deterministic: bool,
}

impl Case {
    /// Shapes of q, k, v and of O (and dO).
    fn shapes(&self) -> [[usize; 4]; 4] {
        let (hq, d, dv) = (self.heads_kv * self.group, self.head_dim, self.head_dim_v);
        [
            [self.batch, self.seqlen_q, hq, d],
            [self.batch, self.seqlen_k, self.heads_kv, d],
            [self.batch, self.seqlen_k, self.heads_kv, dv],
            [self.batch, self.seqlen_q, hq, dv],
        ]
    }

    fn name<T: Element>(&self) -> String {
        let c = self;
        format!(
            "{} b{} sq{} sk{} hq{} hkv{} d{} dv{} causal={} strided={} det={}",
            T::DTYPE,
            c.batch,
            c.seqlen_q,
            c.seqlen_k,
            c.heads_kv * c.group,
            c.heads_kv,
            c.head_dim,
            c.head_dim_v,
            c.causal,
            c.strided,
            c.deterministic
        )
    }
}

/// A layout for `shape`, contiguous or with every stride padded (multiples of 8 elements).
fn layout(shape: [usize; 4], strided: bool) -> Layout {
    if !strided {
        return Layout::contiguous(shape);
    }
    let [_, s, h, d] = shape;
    let hs = d + 8;
    let ss = h * hs + 16;
    Layout { shape, strides: [s * ss + 8, ss, hs, 1] }
}

/// A host tensor holding `values` (contiguous `[b, s, h, d]` f64) in `layout`, rounded to T.
fn from_f64<T: Element>(values: &[f64], layout: Layout) -> HostTensor<T> {
    let [nb, ns, nh, nd] = layout.shape;
    let mut t = HostTensor { data: vec![T::from_f32(0.0); layout.span()], layout };
    let mut i = 0;
    for b in 0..nb {
        for s in 0..ns {
            for h in 0..nh {
                for d in 0..nd {
                    t.set(b, s, h, d, T::from_f32(values[i] as f32));
                    i += 1;
                }
            }
        }
    }
    t
}

struct Inputs<T> {
    q: HostTensor<T>,
    k: HostTensor<T>,
    v: HostTensor<T>,
    d_o: HostTensor<T>,
    opts: AttnOptions<'static>,
}

fn inputs<T: Element>(c: &Case, seed: u64) -> Inputs<T> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let [qs, ks, vs, os] = c.shapes();
    let q = HostTensor::<T>::random_with_layout(layout(qs, c.strided), 1.0, &mut rng);
    let k = HostTensor::<T>::random_with_layout(layout(ks, c.strided), 1.0, &mut rng);
    let v = HostTensor::<T>::random_with_layout(layout(vs, c.strided), 1.0, &mut rng);
    let d_o = HostTensor::<T>::random_with_layout(layout(os, c.strided), 1.0, &mut rng);
    // Scales around 1/sqrt(d) and above it, so that some rows have peaked softmaxes.
    let scale = rng.random_range(0.5..3.0) / (c.head_dim as f32).sqrt();
    let opts = AttnOptions {
        causal: c.causal,
        softmax_scale: Some(scale),
        deterministic: c.deterministic,
        ..Default::default()
    };
    Inputs { q, k, v, d_o, opts }
}

/// Uploads the inputs with the reference O and LSE, runs the backward into poisoned gradient buffers.
fn run_gpu<T: Element>(
    dev: &Device,
    c: &Case,
    x: &Inputs<T>,
    fwd: &cpu::ReferenceForward,
) -> Result<GpuGradients<T>, Error> {
    run_gpu_tile(dev, c, x, fwd, None)
}

fn run_gpu_tile<T: Element>(
    dev: &Device,
    c: &Case,
    x: &Inputs<T>,
    fwd: &cpu::ReferenceForward,
    tile: Option<&BackwardTile>,
) -> Result<GpuGradients<T>, Error> {
    let [qs, ks, vs, _] = c.shapes();
    let o = rounded_o::<T>(c, fwd);
    let lse: Vec<f32> = fwd.lse.iter().map(|&l| l as f32).collect();
    let lse: CudaSlice<f32> = dev.stream().clone_htod(&lse).unwrap();
    let (q, k, v) = (dev.upload(&x.q)?, dev.upload(&x.k)?, dev.upload(&x.v)?);
    let (o, d_o) = (dev.upload(&o)?, dev.upload(&x.d_o)?);
    let poisoned = |shape| {
        dev.upload(&HostTensor::<T> {
            data: vec![T::poison(); layout(shape, c.strided).span()],
            layout: layout(shape, c.strided),
        })
    };
    let mut grads = GpuGradients { dq: poisoned(qs)?, dk: poisoned(ks)?, dv: poisoned(vs)?, d_sinks: None };
    match tile {
        None => gpu::flash_backward_into(dev, &q, &k, &v, &o, &lse, &d_o, &mut grads, &x.opts)?,
        Some(t) => gpu::flash_backward_with_tile(dev, &q, &k, &v, &o, &lse, &d_o, &mut grads, &x.opts, t)?,
    }
    Ok(grads)
}

/// The reference O in the element type, as the backward is handed it.
fn rounded_o<T: Element>(c: &Case, fwd: &cpu::ReferenceForward) -> HostTensor<T> {
    from_f64::<T>(&fwd.o, layout(c.shapes()[3], c.strided))
}

fn download<T: Element>(dev: &Device, g: &GpuGradients<T>) -> [Vec<f64>; 3] {
    [&g.dq, &g.dk, &g.dv].map(|t| dev.download(t).unwrap().to_f64_contiguous())
}

/// Runs one case against the reference; returns the worst relative L2 over dq, dk, dv.
fn check_case<T: Element>(c: Case, seed: u64) -> Result<f64, String> {
    check_case_tile::<T>(c, seed, None)
}

fn check_case_tile<T: Element>(c: Case, seed: u64, tile: Option<&BackwardTile>) -> Result<f64, String> {
    let Some(dev) = device_or_skip("gpu_backward") else { return Ok(0.0) };
    let x = inputs::<T>(&c, seed);
    let fwd = cpu::reference_forward(&x.q, &x.k, &x.v, &x.opts).unwrap();
    // Exact gradients given the O the kernel is handed (rowsum(dO ∘ O) from the rounded O).
    let o = rounded_o::<T>(&c, &fwd);
    let want = cpu::reference_backward_given_o(&x.q, &x.k, &x.v, &o, &x.d_o, &x.opts).unwrap();
    let grads = run_gpu_tile(dev, &c, &x, &fwd, tile).map_err(|e| format!("{}: {e}", c.name::<T>()))?;
    let got = download(dev, &grads);
    let tol = grad_tolerance(T::DTYPE);
    let mut worst = 0.0f64;
    let mut report = Vec::new();
    let (keys, queries) = (c.seqlen_k, c.seqlen_q * c.group);
    for (name, g, w, terms) in
        [("dq", &got[0], &want.dq, keys), ("dk", &got[1], &want.dk, queries), ("dv", &got[2], &want.dv, queries)]
    {
        let err = grad_error_summed(g, w, terms);
        report.push(format!("{name} {err:.2e} (max_abs {:.2e})", max_abs(g, w)));
        // An all-zero reference (e.g. dQ with a single key) is held to the floor of `grad_error_summed`.
        if err.is_nan() || err >= tol {
            return Err(format!("{}: {name} error {err} > {tol} [{}]", c.name::<T>(), report.join(", ")));
        }
        worst = worst.max(err);
    }
    println!("{}: {} (bound {tol:.1e})", c.name::<T>(), report.join(", "));
    Ok(worst)
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1usize..=2,
        prop_oneof![1usize..=48, 49usize..=300],
        prop_oneof![1usize..=48, 49usize..=300],
        1usize..=2,
        prop_oneof![Just(1usize), Just(2), Just(3)],
        prop::sample::select(HEAD_DIM_PAIRS.to_vec()),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.25),
    )
        .prop_map(
            |(batch, seqlen_q, seqlen_k, heads_kv, group, (head_dim, head_dim_v), causal, strided, deterministic)| {
                Case {
                    batch,
                    seqlen_q,
                    seqlen_k,
                    heads_kv,
                    group,
                    head_dim,
                    head_dim_v,
                    causal,
                    strided,
                    deterministic,
                }
            },
        )
}

/// 24 random cases (`IRONFLASH_PROPTEST_CASES` overrides) of `case_strategy` with a fresh seed each.
fn property<T: Element>(name: &str) {
    let cases = std::env::var("IRONFLASH_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(case_strategy(), any::<u64>()), |(c, seed)| {
        check_case::<T>(c, seed).map(|_| ()).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Each TMA row (`BwdTile::tma`: Q and dO by TMA from a loader warp) forced over random shapes of its
/// head dim: tails (the boxes' zero fill past a sequence), GQA, strides, causal, deterministic; bf16
/// and f16.
fn tma_rows_match_reference() {
    let Some(dev) = device_or_skip("tma_rows_match_reference") else { return };
    if !dev.info().runs_wgmma() {
        println!("tma_rows_match_reference: the TMA rows need compute capability 9.0, skipped on {}", dev.info().name);
        return;
    }
    for tile in BWD_TILES.iter().filter(|t| t.tma) {
        let strategy = (case_strategy(), any::<u64>(), any::<bool>())
            .prop_map(|(c, seed, f16)| (Case { head_dim: tile.head_dim, head_dim_v: tile.head_dim_v, ..c }, seed, f16));
        let name = format!("tma_rows_match_reference {}", tile.symbols[0]);
        run_property(&name, 16, strategy, "gradient error", |_, &(c, seed, f16)| {
            // Named before it runs: a kernel fault poisons the context for every later case.
            eprintln!("{name}: {c:?} f16={f16}");
            if f16 {
                check_case_tile::<f16>(c, seed, Some(tile))
            } else {
                check_case_tile::<bf16>(c, seed, Some(tile))
            }
        });
    }
}

fn backward_matches_reference_bf16() {
    property::<bf16>("backward_matches_reference_bf16");
}

fn backward_matches_reference_f16() {
    property::<f16>("backward_matches_reference_f16");
}

const fn case(b: usize, sq: usize, sk: usize, hkv: usize, group: usize, d: usize, causal: bool) -> Case {
    Case {
        batch: b,
        seqlen_q: sq,
        seqlen_k: sk,
        heads_kv: hkv,
        group,
        head_dim: d,
        head_dim_v: d,
        causal,
        strided: false,
        deterministic: false,
    }
}

/// Every head dim, both masks, GQA and MQA, tails on both sides, fully masked rows (causal, sq > sk).
fn fixed_cases_every_head_dim() {
    let mut cases = Vec::new();
    for (d, dv) in HEAD_DIM_PAIRS {
        let with_dv = |c: Case| Case { head_dim_v: dv, ..c };
        cases.push(with_dv(case(1, 130, 200, 2, 2, d, false)));
        cases.push(with_dv(case(2, 200, 77, 1, 3, d, true))); // MQA, rows 0..122 fully masked
        cases.push(with_dv(Case { strided: true, ..case(1, 64, 64, 2, 1, d, true) }));
    }
    for (i, c) in cases.into_iter().enumerate() {
        check_case::<bf16>(c, 100 + i as u64).unwrap();
        check_case::<f16>(c, 200 + i as u64).unwrap();
    }
}

/// Longer sequences at the head dim the benchmarks use.
fn fixed_cases_seqlen_2k_d128() {
    check_case::<bf16>(case(1, 2048, 2048, 2, 1, 128, false), 7).unwrap();
    check_case::<bf16>(case(1, 2048, 2048, 1, 2, 128, true), 8).unwrap();
    check_case::<f16>(case(1, 1000, 2048, 2, 1, 128, true), 9).unwrap();
}

/// Deterministic mode: two runs give bitwise-identical gradients (and they are correct); the fast
/// mode, whose f32 atomics add in a run-dependent order, stays within the tolerance.
fn deterministic_is_bitwise_stable() {
    let Some(dev) = device_or_skip("deterministic_is_bitwise_stable") else { return };
    for (i, c) in [case(2, 700, 900, 2, 2, 128, false), case(1, 513, 513, 1, 4, 64, true)].into_iter().enumerate() {
        let det = Case { deterministic: true, ..c };
        check_case::<bf16>(det, 300 + i as u64).unwrap();
        check_case::<bf16>(c, 300 + i as u64).unwrap();
        let x = inputs::<bf16>(&det, 300 + i as u64);
        let fwd = cpu::reference_forward(&x.q, &x.k, &x.v, &x.opts).unwrap();
        let bits = |g: [Vec<f64>; 3]| g.map(|v| v.iter().map(|y| y.to_bits()).collect::<Vec<_>>());
        let first = bits(download(dev, &run_gpu(dev, &det, &x, &fwd).unwrap()));
        for _ in 0..2 {
            let again = bits(download(dev, &run_gpu(dev, &det, &x, &fwd).unwrap()));
            assert!(first == again, "{}: deterministic gradients differ between runs", det.name::<bf16>());
        }
    }
}

/// One training step's attention on the GPU: fused forward (keeping O and LSE), then backward.
fn forward_then_backward_end_to_end() {
    let Some(dev) = device_or_skip("forward_then_backward_end_to_end") else { return };
    let c = case(2, 300, 300, 2, 2, 128, true);
    let x = inputs::<bf16>(&c, 11);
    let (q, k, v, d_o) =
        (dev.upload(&x.q).unwrap(), dev.upload(&x.k).unwrap(), dev.upload(&x.v).unwrap(), dev.upload(&x.d_o).unwrap());
    let out = match gpu::flash_forward(dev, &q, &k, &v, &x.opts) {
        Ok(out) => out,
        Err(e) => panic!("fused forward failed: {e}"),
    };
    let g = gpu::flash_backward(dev, &q, &k, &v, &out.o, &out.lse, &d_o, &x.opts).unwrap();
    let want = cpu::reference_backward(&x.q, &x.k, &x.v, &x.d_o, &x.opts).unwrap();
    let got = download(dev, &g);
    for (name, g, w) in [("dq", &got[0], &want.dq), ("dk", &got[1], &want.dk), ("dv", &got[2], &want.dv)] {
        let err = grad_error(g, w);
        println!("end to end {name}: rel_l2 {err:.2e}");
        assert!(err < grad_tolerance(DType::BF16), "{name}: {err}");
    }
}

/// Bad inputs get typed errors, before any launch.
fn backward_rejects_bad_inputs() {
    let Some(dev) = device_or_skip("backward_rejects_bad_inputs") else { return };
    let t = |shape| dev.upload(&HostTensor::<bf16>::random(shape, 1.0, &mut rand::rng())).unwrap();
    let (q, k, v) = (t([1, 16, 2, 64]), t([1, 24, 1, 64]), t([1, 24, 1, 64]));
    let (o, d_o) = (t([1, 16, 2, 64]), t([1, 16, 2, 64]));
    let lse: CudaSlice<f32> = dev.stream().clone_htod(&[0.0f32; 32]).unwrap();
    let opts = AttnOptions::default();
    gpu::flash_backward(dev, &q, &k, &v, &o, &lse, &d_o, &opts).unwrap();

    let short: CudaSlice<f32> = dev.stream().clone_htod(&[0.0f32; 31]).unwrap();
    let e = gpu::flash_backward(dev, &q, &k, &v, &o, &short, &d_o, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::Lse, .. }), "{e}");

    let bad_o = t([1, 16, 2, 32]);
    let e = gpu::flash_backward(dev, &q, &k, &v, &bad_o, &lse, &d_o, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::O, .. }), "{e}");
    let bad_do = t([1, 17, 2, 64]);
    let e = gpu::flash_backward(dev, &q, &k, &v, &o, &lse, &bad_do, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::DO, .. }), "{e}");

    let odd = Layout { shape: [1, 16, 2, 64], strides: [16 * 2 * 68, 2 * 68, 68, 1] };
    let odd_do = dev.upload(&HostTensor::<bf16>::random_with_layout(odd, 1.0, &mut rand::rng())).unwrap();
    let e = gpu::flash_backward(dev, &q, &k, &v, &o, &lse, &odd_do, &opts).unwrap_err();
    assert!(matches!(e, Error::MisalignedStrides { arg: Arg::DO, .. }), "{e}");

    let f = |shape| dev.upload(&HostTensor::<f32>::random(shape, 1.0, &mut rand::rng())).unwrap();
    let (q32, k32) = (f([1, 16, 2, 64]), f([1, 24, 1, 64]));
    let e = gpu::flash_backward(dev, &q32, &k32, &k32, &q32, &lse, &q32, &opts).unwrap_err();
    assert!(matches!(e, Error::UnsupportedDtype { .. }), "{e}");

    let mut wrong = GpuGradients { dq: t([1, 16, 2, 64]), dk: t([1, 24, 2, 64]), dv: t([1, 24, 1, 64]), d_sinks: None };
    let e = gpu::flash_backward_into(dev, &q, &k, &v, &o, &lse, &d_o, &mut wrong, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::DK, .. }), "{e}");
}

/// A small sample for `compute-sanitizer` (memcheck, racecheck): tails on both sides, causal with
/// fully masked rows, GQA, strides, every kernel shape class, fast and deterministic modes.
fn sanitizer_sample() {
    for (i, c) in [
        case(1, 70, 45, 1, 2, 64, true),
        Case { strided: true, deterministic: true, ..case(1, 33, 130, 2, 1, 128, false) },
        case(1, 40, 70, 1, 1, 256, true),
        Case { deterministic: true, ..case(1, 90, 90, 1, 2, 32, true) },
        // The Hopper kernel on an H100 (head dim 128): tails, causal, GQA, two batches, both modes.
        case(2, 130, 200, 1, 2, 128, true),
        Case { deterministic: true, ..case(1, 200, 130, 2, 2, 128, true) },
    ]
    .into_iter()
    .enumerate()
    {
        check_case::<bf16>(c, 400 + i as u64).unwrap();
    }
    check_case::<f16>(case(1, 50, 66, 1, 1, 192, false), 410).unwrap();
    check_case::<f16>(case(1, 17, 100, 1, 1, 96, true), 411).unwrap();
    // Q/K 192 with V 128 (on an H100 the head-dim split kernel), deterministic, GQA.
    let c = Case { head_dim_v: 128, deterministic: true, ..case(1, 70, 90, 1, 2, 192, true) };
    check_case::<bf16>(c, 412).unwrap();
}

/// Every compiled backward tile (the A100 fallbacks too, which the H100's chooser never picks), with
/// tails, causal masking, GQA and the deterministic mode.
fn every_compiled_tile() {
    let Some(dev) = device_or_skip("every_compiled_tile") else { return };
    for (i, tile) in BWD_TILES.iter().enumerate() {
        if tile.wgmma && !dev.info().runs_wgmma() {
            println!("{}: needs compute capability 9.0, skipped on {}", tile.symbols[0], dev.info().name);
            continue;
        }
        let (d, head_dim_v) = (tile.head_dim, tile.head_dim_v);
        let c = Case { head_dim_v, ..case(1, 150, 170, 1, 2, d, true) };
        check_case_tile::<bf16>(c, 500 + i as u64, Some(tile)).unwrap();
        let c = Case { deterministic: true, strided: true, head_dim_v, ..case(1, 97, 80, 2, 1, d, false) };
        check_case_tile::<f16>(c, 600 + i as u64, Some(tile)).unwrap();
    }
}

fn main() -> std::process::ExitCode {
    common::gpu_main(
        gpu_tests![
            backward_matches_reference_bf16,
            backward_matches_reference_f16,
            fixed_cases_every_head_dim,
            fixed_cases_seqlen_2k_d128,
            deterministic_is_bitwise_stable,
            forward_then_backward_end_to_end,
            backward_rejects_bad_inputs,
            sanitizer_sample,
            every_compiled_tile,
            tma_rows_match_reference,
        ],
        &[],
    )
}
