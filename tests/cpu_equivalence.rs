//! The tiled f32 CPU forward against the exact f64 reference, on random problems: GQA/MQA, unequal
//! sequence lengths, every supported head dim (and V's own head dim where one is supported: 192 with
//! 128, DeepSeek-V3's), causal or not, sliding windows (some hiding every key
//! of many rows), softcap, ALiBi (per head or per batch and head) and sinks, crossed at random, random
//! softmax scales, padded and head-major strides, in bf16, f16 and f32.
//!
//! Error bounds. Both paths read the same (already rounded) inputs, so input precision cancels out.
//! What remains is (a) the f32 arithmetic of the tiled path, well under 1e-5 relative for rows of at
//! most 300 keys, and (b) the final rounding of O to the element type, at most one half ulp per
//! element: a relative error ≤ u = 2^-8 · 2^-1 = 2^-9 ≈ 2.0e-3 for bf16 (8 significant bits) and
//! ≤ 2^-12 ≈ 2.4e-4 for f16 (11 bits), so ≤ u in relative L2 too (f16 subnormals add at most 2^-25
//! absolute per element, negligible next to outputs of size ~1e-2). The bound is 4u plus the f32 bound:
//! bf16 < 7.8e-3, f16 < 1.0e-3, f32 < 1.0e-5. The LSE is f32 for every element type, so one bound
//! (relative to the problem's LSE magnitude) serves all three.
//!
//! The modifiers add f32 roundings of the same size: the softcap's tanh and products (a few ulp of
//! scores bounded by the cap) and ALiBi's bias (an ulp of `slope · distance`, on keys whose weight
//! falls as e^(−slope · distance)), so the bounds stay as they are.

mod common;

use common::{check_lse, rel_l2};
use half::{bf16, f16};
use ironflash::cpu::{backward, forward, forward_into, reference_backward_given_o, reference_forward, ForwardOutput};
use ironflash::problem::supported_head_dim_pairs;
use ironflash::{AttnOptions, DType, Element, Error, HostTensor, Layout, PerHead, Window};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Relative L2 bound of the f32 arithmetic alone.
const F32_BOUND: f64 = 1e-5;
/// Bound on |LSE − reference| relative to the largest |LSE| of the problem (at least 1): f32 scores
/// and their log-sum-exp carry errors of a few f32 epsilons (1.2e-7) of that magnitude; 9.3e-7 is the
/// worst seen (over some 4,000 random cases with the score modifiers).
const LSE_BOUND: f64 = 4e-6;

/// Unit roundoff (half an ulp, relative) of rounding to the element type.
fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-9),
        DType::F16 => 2f64.powi(-12),
        DType::F32 => 2f64.powi(-24),
        DType::F8E4M3 => 2f64.powi(-4),
    }
}

fn output_bound(dtype: DType) -> f64 {
    4.0 * unit_roundoff(dtype) + F32_BOUND
}

/// How a tensor's elements are placed in its buffer.
#[derive(Debug, Clone, Copy)]
enum Placement {
    Contiguous,
    /// Gaps after each head row, each sequence row and each batch.
    Padded,
    /// `[batch, heads, seqlen, head_dim]` in memory, as many frameworks store attention inputs.
    HeadMajor,
}

fn layout(shape: [usize; 4], placement: Placement) -> Layout {
    let [_, s, h, d] = shape;
    match placement {
        Placement::Contiguous => Layout::contiguous(shape),
        Placement::Padded => {
            let head = d + 8;
            let row = h * head + 3;
            Layout { shape, strides: [s * row + 5, row, head, 1] }
        }
        Placement::HeadMajor => Layout { shape, strides: [h * s * d, d, s * d, 1] },
    }
}

#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    heads_q: usize,
    heads_kv: usize,
    seqlen_q: usize,
    seqlen_k: usize,
    head_dim: usize,
    /// Head dim of V and O.
    head_dim_v: usize,
    causal: bool,
    window: Window,
    softcap: Option<f32>,
    /// `[heads_q]` or `[batch, heads_q]`.
    alibi_slopes: Option<Vec<f32>>,
    /// `[heads_q]`.
    sinks: Option<Vec<f32>>,
    /// Softmax scale as a multiple of 1/sqrt(head_dim); `None` uses the default.
    scale_factor: Option<f32>,
    /// Amplitude of q: larger values make the softmax peakier and exercise the running-max rescale.
    q_amplitude: f32,
    placements: [Placement; 3],
    seed: u64,
}

fn placement() -> impl Strategy<Value = Placement> {
    prop_oneof![Just(Placement::Contiguous), Just(Placement::Padded), Just(Placement::HeadMajor)]
}

/// One side of a window: unbounded, narrow (a few keys, so that with unequal lengths whole query
/// blocks see nothing), or anything up to past the longest sequence.
fn window_side() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![2 => Just(None), 1 => (0usize..=8).prop_map(Some), 1 => (0usize..=320).prop_map(Some)]
}

/// Which modifiers a case has; the per-head values are drawn from the case's seed once its shape is known.
#[derive(Debug, Clone)]
struct ModifierChoice {
    causal: bool,
    window: Window,
    softcap: Option<f32>,
    /// (per batch, largest slope).
    alibi: Option<(bool, f32)>,
    /// Sink logits are drawn from [−amplitude, amplitude).
    sink_amplitude: Option<f32>,
}

fn modifiers() -> impl Strategy<Value = ModifierChoice> {
    (
        any::<bool>(),
        window_side(),
        window_side(),
        proptest::option::weighted(0.35, 0.5f32..50.0),
        proptest::option::weighted(0.35, (any::<bool>(), 0.01f32..1.0)),
        proptest::option::weighted(0.35, 0.1f32..6.0),
    )
        .prop_map(|(causal, left, right, softcap, alibi, sink_amplitude)| ModifierChoice {
            causal,
            window: Window { left, right },
            softcap,
            alibi,
            sink_amplitude,
        })
}

/// Every supported (head_dim, head_dim_v) pair.
fn head_dims() -> impl Strategy<Value = (usize, usize)> {
    proptest::sample::select(supported_head_dim_pairs().collect::<Vec<_>>())
}

fn case() -> impl Strategy<Value = Case> {
    let heads = (1usize..=4).prop_flat_map(|hq| {
        let divisors: Vec<usize> = (1..=hq).filter(|g| hq % g == 0).collect();
        (Just(hq), proptest::sample::select(divisors))
    });
    (
        1usize..=3,
        heads,
        1usize..=300,
        1usize..=300,
        head_dims(),
        modifiers(),
        proptest::option::weighted(0.75, 0.25f32..4.0),
        0.5f32..4.0,
        [placement(), placement(), placement()],
        any::<u64>(),
    )
        .prop_map(
            |(
                batch,
                (heads_q, heads_kv),
                seqlen_q,
                seqlen_k,
                (head_dim, head_dim_v),
                m,
                scale_factor,
                q_amplitude,
                placements,
                seed,
            )| {
                // Its own stream, so that the inputs stay those of the seed whatever the modifiers.
                let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
                let alibi_slopes = m.alibi.map(|(per_batch, largest)| {
                    let n = if per_batch { batch * heads_q } else { heads_q };
                    (0..n).map(|_| rng.random_range(0.0..largest)).collect()
                });
                let sinks = m.sink_amplitude.map(|a| (0..heads_q).map(|_| rng.random_range(-a..a)).collect());
                Case {
                    batch,
                    heads_q,
                    heads_kv,
                    seqlen_q,
                    seqlen_k,
                    head_dim,
                    head_dim_v,
                    causal: m.causal,
                    window: m.window,
                    softcap: m.softcap,
                    alibi_slopes,
                    sinks,
                    scale_factor,
                    q_amplitude,
                    placements,
                    seed,
                }
            },
        )
}

impl Case {
    fn options(&self) -> AttnOptions<'_> {
        let opts = AttnOptions {
            causal: self.causal,
            window: self.window,
            softcap: self.softcap,
            alibi_slopes: self.alibi_slopes.as_deref().map(PerHead::Host),
            sinks: self.sinks.as_deref().map(PerHead::Host),
            ..AttnOptions::default()
        };
        match self.scale_factor {
            Some(f) => opts.with_scale(f / (self.head_dim as f32).sqrt()),
            None => opts,
        }
    }

    /// Fresh random q, k, v (padding included, so that reading it would show).
    fn inputs<T: Element>(&self) -> [HostTensor<T>; 3] {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let q_shape = [self.batch, self.seqlen_q, self.heads_q, self.head_dim];
        let k_shape = [self.batch, self.seqlen_k, self.heads_kv, self.head_dim];
        let v_shape = [self.batch, self.seqlen_k, self.heads_kv, self.head_dim_v];
        let [pq, pk, pv] = self.placements;
        [
            HostTensor::random_with_layout(layout(q_shape, pq), self.q_amplitude, &mut rng),
            HostTensor::random_with_layout(layout(k_shape, pk), 1.0, &mut rng),
            HostTensor::random_with_layout(layout(v_shape, pv), 1.0, &mut rng),
        ]
    }

    /// O's shape: q's rows and heads, v's head dim.
    fn o_shape(&self) -> [usize; 4] {
        [self.batch, self.seqlen_q, self.heads_q, self.head_dim_v]
    }
}

/// Tiled vs reference for one case; returns (relative L2 of O, max |ΔLSE| relative to the problem's
/// LSE magnitude, as `LSE_BOUND` measures it).
fn compare<T: Element>(case: &Case) -> Result<(f64, f64), String> {
    let [q, k, v] = case.inputs::<T>();
    let opts = case.options();
    let got = forward(&q, &k, &v, &opts).map_err(|e| e.to_string())?;
    let want = reference_forward(&q, &k, &v, &opts).map_err(|e| e.to_string())?;
    if got.o.layout != Layout::contiguous(case.o_shape()) {
        return Err(format!("O layout {:?} is not contiguous in O's shape {:?}", got.o.layout, case.o_shape()));
    }
    check_fully_masked_rows(case, &got)?;
    let err = rel_l2(&got.o.to_f64_contiguous(), &want.o);
    let bound = output_bound(T::DTYPE);
    if err.is_nan() || err >= bound {
        return Err(format!("{} O relative L2 {err:.3e} >= {bound:.3e}", T::DTYPE));
    }
    let lse_scale = want.lse.iter().filter(|x| x.is_finite()).fold(1.0f64, |m, x| m.max(x.abs()));
    let lse_err = check_lse(&got.lse, &want.lse, LSE_BOUND * lse_scale)?;
    Ok((err, lse_err / lse_scale))
}

/// A row that sees no key: O exactly 0 and LSE exactly -inf, or exactly its sink logit with sinks.
fn check_fully_masked_rows<T: Element>(case: &Case, got: &ForwardOutput<T>) -> Result<(), String> {
    let opts = case.options();
    for i in (0..case.seqlen_q).filter(|&i| !visible_keys(case, i)) {
        for b in 0..case.batch {
            for h in 0..case.heads_q {
                let lse = got.lse[(b * case.heads_q + h) * case.seqlen_q + i];
                let want = case.sinks.as_ref().map_or(f32::NEG_INFINITY, |s| s[h]);
                if lse != want {
                    return Err(format!("fully masked row ({b}, {h}, {i}): LSE {lse}, want {want} ({opts:?})"));
                }
                if (0..case.head_dim_v).any(|d| got.o.get(b, i, h, d).to_f32() != 0.0) {
                    return Err(format!("fully masked row ({b}, {h}, {i}): O is not 0"));
                }
            }
        }
    }
    Ok(())
}

/// Whether query row `i` sees any key: some key lies within the window around its diagonal.
fn visible_keys(case: &Case, i: usize) -> bool {
    let diagonal = i as i64 + case.seqlen_k as i64 - case.seqlen_q as i64;
    let after = if case.causal { Some(0) } else { case.window.right };
    let first = case.window.left.map_or(0, |l| (diagonal - l as i64).max(0));
    let last = after.map_or(case.seqlen_k as i64 - 1, |r| (diagonal + r as i64).min(case.seqlen_k as i64 - 1));
    first <= last
}

/// `forward_into` on poisoned outputs (NaN O in `placement`, NaN LSE) must write every element, the
/// same as `forward`.
fn compare_forward_into<T: Element>(case: &Case, placement: Placement) -> Result<(), String> {
    let [q, k, v] = case.inputs::<T>();
    let opts = case.options();
    let want = forward(&q, &k, &v, &opts).map_err(|e| e.to_string())?;
    let o_layout = layout(case.o_shape(), placement);
    let mut o = HostTensor { data: vec![T::from_f32(f32::NAN); o_layout.span()], layout: o_layout };
    let mut lse = vec![f32::NAN; want.lse.len()];
    forward_into(&q, &k, &v, &opts, &mut o, &mut lse).map_err(|e| e.to_string())?;
    let (got_o, want_o) = (o.to_f64_contiguous(), want.o.to_f64_contiguous());
    // Bitwise, NaN included: `to_bits` makes NaN == NaN and tells 0 from -0.
    let same_o = got_o.iter().zip(&want_o).all(|(a, b)| a.to_bits() == b.to_bits());
    let same_lse = lse.iter().zip(&want.lse).all(|(a, b)| a.to_bits() == b.to_bits());
    if !same_o || !same_lse {
        return Err(format!(
            "forward_into ({placement:?}) differs from forward (O same: {same_o}, LSE same: {same_lse})"
        ));
    }
    Ok(())
}

/// The tiled backward against the f64 reference handed the same O (the tiled forward's, rounded to
/// the element type) and dO; returns the relative L2 of dQ, dK, dV and the sinks' gradients' worst
/// error relative to their largest magnitude (0 without sinks).
fn compare_backward<T: Element>(case: &Case) -> Result<[f64; 4], String> {
    let [q, k, v] = case.inputs::<T>();
    let opts = case.options();
    let fwd = forward(&q, &k, &v, &opts).map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(case.seed ^ 0x5851_f42d_4c95_7f2d);
    let d_o = HostTensor::<T>::random(case.o_shape(), 1.0, &mut rng);
    let got = backward(&q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts).map_err(|e| e.to_string())?;
    let want = reference_backward_given_o(&q, &k, &v, &fwd.o, &d_o, &opts).map_err(|e| e.to_string())?;
    let bound = grad_bound(T::DTYPE);
    let mut errs = [0.0; 4];
    for (slot, (name, got, want)) in
        [("dq", &got.dq, &want.dq), ("dk", &got.dk, &want.dk), ("dv", &got.dv, &want.dv)].into_iter().enumerate()
    {
        let err = rel_l2(&got.to_f64_contiguous(), want);
        if err.is_nan() || err >= bound {
            return Err(format!("{} {name} relative L2 {err:.3e} >= {bound:.3e}", T::DTYPE));
        }
        errs[slot] = err;
    }
    match (&got.d_sinks, &want.d_sinks) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            let scale = w.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            let worst = g.iter().zip(w).map(|(&a, b)| (a as f64 - b).abs()).fold(0.0, f64::max) / scale;
            if worst.is_nan() || worst >= SINK_GRAD_BOUND {
                return Err(format!("{} d_sinks error {worst:.3e} of {scale:.3e} >= {SINK_GRAD_BOUND:.1e}", T::DTYPE));
            }
            errs[3] = worst;
        }
        (g, w) => return Err(format!("d_sinks present: got {}, want {}", g.is_some(), w.is_some())),
    }
    Ok(errs)
}

/// The gradients' bound: rounding to the element type, plus f32 error that the cancellation in
/// dP − rowsum(dO ∘ O) enlarges. Worst seen over 600 cases per type: f32 4.0e-5, bf16 1.8e-3, f16
/// 2.3e-4 (bounds 1.0e-4, 7.9e-3, 1.0e-3); the sinks' gradients 2.8e-6 against 1e-4.
fn grad_bound(dtype: DType) -> f64 {
    4.0 * unit_roundoff(dtype) + 1e-4
}

/// The sinks' gradients are f32 sums over every row of a head, relative to their largest magnitude.
const SINK_GRAD_BOUND: f64 = 1e-4;

fn backward_config() -> ProptestConfig {
    // The f64 reference backward dominates each case (a few tenths of a second at the largest shapes).
    ProptestConfig { cases: 48, ..config() }
}

fn config() -> ProptestConfig {
    // Each case costs up to ~0.1 s on two cores at the largest shapes, most far less; shrinking is
    // capped so that a failure still reports quickly.
    // Failures are saved where proptest replays them first (its default looks for a lib.rs we lack).
    ProptestConfig {
        cases: 128,
        max_shrink_iters: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/cpu_equivalence.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tiled_matches_reference_f32(case in case(), out in placement()) {
        let fail = |e: String| TestCaseError::fail(format!("{e}\n{case:?}"));
        let (err, lse_err) = compare::<f32>(&case).map_err(fail)?;
        compare_forward_into::<f32>(&case, out).map_err(fail)?;
        println!("f32 rel_l2 {err:.2e} lse {lse_err:.2e}");
    }

    #[test]
    fn tiled_matches_reference_bf16(case in case(), out in placement()) {
        let fail = |e: String| TestCaseError::fail(format!("{e}\n{case:?}"));
        let (err, lse_err) = compare::<bf16>(&case).map_err(fail)?;
        compare_forward_into::<bf16>(&case, out).map_err(fail)?;
        println!("bf16 rel_l2 {err:.2e} lse {lse_err:.2e}");
    }

    #[test]
    fn tiled_matches_reference_f16(case in case(), out in placement()) {
        let fail = |e: String| TestCaseError::fail(format!("{e}\n{case:?}"));
        let (err, lse_err) = compare::<f16>(&case).map_err(fail)?;
        compare_forward_into::<f16>(&case, out).map_err(fail)?;
        println!("f16 rel_l2 {err:.2e} lse {lse_err:.2e}");
    }
}

fn fixed_case(seqlen_q: usize, seqlen_k: usize, causal: bool) -> Case {
    Case {
        batch: 2,
        heads_q: 4,
        heads_kv: 2,
        seqlen_q,
        seqlen_k,
        head_dim: 64,
        head_dim_v: 64,
        causal,
        window: Window::default(),
        softcap: None,
        alibi_slopes: None,
        sinks: None,
        scale_factor: None,
        q_amplitude: 1.0,
        placements: [Placement::Contiguous; 3],
        seed: 7,
    }
}

#[test]
fn fully_masked_rows_give_zero_output_and_minus_infinity_lse() {
    // Bottom-right alignment with 130 queries and 70 keys: the first 60 rows see no key. 130 rows
    // span three query blocks, so the masked rows fill whole blocks and part of one.
    let case = fixed_case(130, 70, true);
    let [q, k, v] = case.inputs::<f32>();
    let out = forward(&q, &k, &v, &case.options()).unwrap();
    for b in 0..case.batch {
        for h in 0..case.heads_q {
            for i in 0..case.seqlen_q {
                let lse = out.lse[(b * case.heads_q + h) * case.seqlen_q + i];
                let row: Vec<f32> = (0..case.head_dim_v).map(|d| out.o.get(b, i, h, d)).collect();
                if i < 60 {
                    assert_eq!(lse, f32::NEG_INFINITY, "row {i}");
                    assert!(row.iter().all(|&x| x == 0.0), "row {i}");
                } else {
                    assert!(lse.is_finite(), "row {i}");
                    assert!(row.iter().any(|&x| x != 0.0), "row {i}");
                }
            }
        }
    }
    compare::<f32>(&case).unwrap();
}

#[test]
fn narrow_windows_hide_every_key_of_whole_query_blocks() {
    // 300 queries, 40 keys, one key on each side of the diagonal (row i's is key i − 260): rows
    // 0..259 see nothing (0..260 when causal hides the key after it), which fills four query blocks
    // and part of a fifth. Without sinks their LSE is -inf, with sinks it is
    // the sink; O is 0 either way (checked in `compare`).
    let sinks = vec![0.7f32, -1.5, 3.0, 0.0];
    for sinks in [None, Some(sinks)] {
        for causal in [false, true] {
            let case = Case {
                window: Window { left: Some(1), right: Some(1) },
                sinks: sinks.clone(),
                ..fixed_case(300, 40, causal)
            };
            let hidden = (0..case.seqlen_q).filter(|&i| !visible_keys(&case, i)).count();
            assert_eq!(hidden, if causal { 260 } else { 259 }, "{case:?}");
            let (err, lse_err) = compare::<f32>(&case).unwrap();
            compare_forward_into::<f32>(&case, Placement::Padded).unwrap();
            println!("narrow window causal={causal} sinks={} rel_l2 {err:.2e} lse {lse_err:.2e}", sinks.is_some());
        }
    }
}

#[test]
fn every_modifier_at_once() {
    // Long rows crossing several key blocks, with a left edge that moves through them.
    let slopes: Vec<f32> = (0..2 * 4).map(|i| 0.5f32.powi(i)).collect();
    for (causal, seqlen_q, seqlen_k, window) in [
        (true, 257, 257, Window { left: Some(100), right: None }),
        (false, 130, 300, Window { left: Some(70), right: Some(5) }),
        (false, 300, 90, Window { left: None, right: Some(0) }),
    ] {
        let case = Case {
            window,
            softcap: Some(5.0),
            alibi_slopes: Some(slopes.clone()),
            sinks: Some(vec![1.0, -2.0, 0.5, 4.0]),
            q_amplitude: 3.0,
            ..fixed_case(seqlen_q, seqlen_k, causal)
        };
        for (dtype, (err, lse_err)) in [
            (DType::F32, compare::<f32>(&case).unwrap()),
            (DType::BF16, compare::<bf16>(&case).unwrap()),
            (DType::F16, compare::<f16>(&case).unwrap()),
        ] {
            println!("all modifiers {dtype} causal={causal} {seqlen_q}x{seqlen_k} rel_l2 {err:.2e} lse {lse_err:.2e}");
        }
    }
}

#[test]
fn peaky_softmax_stays_exact() {
    // Scores of size ~100 make exp overflow without the running max; the rescale must stay exact.
    for (causal, seqlen_q, seqlen_k) in [(false, 100, 257), (true, 257, 257), (true, 9, 300)] {
        let case = Case { q_amplitude: 40.0, scale_factor: Some(3.0), ..fixed_case(seqlen_q, seqlen_k, causal) };
        let (err, lse_err) = compare::<f32>(&case).unwrap();
        println!("peaky causal={causal} rel_l2 {err:.2e} lse {lse_err:.2e}");
    }
}

#[test]
fn single_key_and_single_query() {
    for (seqlen_q, seqlen_k, causal) in [(1, 1, false), (1, 1, true), (1, 300, true), (300, 1, false), (300, 1, true)] {
        compare::<bf16>(&fixed_case(seqlen_q, seqlen_k, causal)).unwrap();
    }
}

#[test]
fn forward_into_strided_output_matches_forward() {
    let case = Case {
        placements: [Placement::HeadMajor, Placement::Padded, Placement::Contiguous],
        ..fixed_case(77, 91, true)
    };
    let [q, k, v] = case.inputs::<f16>();
    let opts = case.options();
    let want = forward(&q, &k, &v, &opts).unwrap();
    for placement in [Placement::Contiguous, Placement::Padded, Placement::HeadMajor] {
        let mut rng = StdRng::seed_from_u64(1);
        let mut o = HostTensor::<f16>::random_with_layout(layout(case.o_shape(), placement), 1.0, &mut rng);
        let mut lse: Vec<f32> = (0..want.lse.len()).map(|_| rng.random()).collect();
        forward_into(&q, &k, &v, &opts, &mut o, &mut lse).unwrap();
        assert_eq!(o.to_f64_contiguous(), want.o.to_f64_contiguous(), "{placement:?}");
        assert_eq!(lse, want.lse);
    }
}

#[test]
fn forward_into_rejects_a_short_lse() {
    let case = fixed_case(5, 5, false);
    let [q, k, v] = case.inputs::<f32>();
    let mut o = HostTensor::filled(case.o_shape(), 0.0f32);
    let mut lse = vec![0.0f32; 2 * 4 * 5 - 1];
    let err = forward_into(&q, &k, &v, &case.options(), &mut o, &mut lse).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { arg: ironflash::Arg::Lse, .. }), "{err:?}");
}

#[test]
fn backward_rejects_a_short_lse_and_a_misshapen_d_o() {
    let case = fixed_case(5, 5, false);
    let [q, k, v] = case.inputs::<f32>();
    let fwd = forward(&q, &k, &v, &case.options()).unwrap();
    let err = backward(&q, &k, &v, &fwd.o, &fwd.lse[1..], &fwd.o, &case.options()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { arg: ironflash::Arg::Lse, .. }), "{err:?}");
    let d_o = HostTensor::filled([case.batch, case.seqlen_q, case.heads_q, case.head_dim_v + 32], 1.0f32);
    let err = backward(&q, &k, &v, &fwd.o, &fwd.lse, &d_o, &case.options()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { arg: ironflash::Arg::DO, .. }), "{err:?}");
}

/// Every gradient has one owner (a key block's task for dK and dV, a query block's for dQ) and the
/// sinks' partial sums are added in task order, so one thread and many give the same bits.
#[test]
fn backward_is_bitwise_the_same_on_any_thread_count() {
    let mut case = fixed_case(300, 200, true);
    case.sinks = Some(vec![0.5, -1.0, 2.0, 0.0]);
    case.softcap = Some(20.0);
    let [q, k, v] = case.inputs::<bf16>();
    let opts = case.options();
    let fwd = forward(&q, &k, &v, &opts).unwrap();
    let d_o = HostTensor::<bf16>::random(case.o_shape(), 1.0, &mut StdRng::seed_from_u64(7));
    let run = || backward(&q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts).unwrap();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
    let many = rayon::ThreadPoolBuilder::new().num_threads(8).build().unwrap().install(run);
    assert_eq!(one.dq.data, many.dq.data);
    assert_eq!(one.dk.data, many.dk.data);
    assert_eq!(one.dv.data, many.dv.data);
    assert_eq!(one.d_sinks, many.d_sinks);
}

/// DeepSeek-V3's head dims: Q and K 192, V (and so O) 128. GQA, strided inputs and every mask: dense
/// rows crossing several key blocks, causal with fewer keys than queries (fully masked rows), a
/// window's left edge moving through the key blocks, and a two-sided window with every modifier.
#[test]
fn value_head_dim_of_its_own() {
    let deepseek = |seqlen_q, seqlen_k, causal| Case {
        head_dim: 192,
        head_dim_v: 128,
        placements: [Placement::HeadMajor, Placement::Padded, Placement::Padded],
        ..fixed_case(seqlen_q, seqlen_k, causal)
    };
    let slopes: Vec<f32> = (0..4).map(|i| 0.5f32.powi(i)).collect();
    let cases = [
        deepseek(150, 200, false),
        deepseek(130, 70, true),
        Case { window: Window { left: Some(100), right: None }, ..deepseek(257, 257, true) },
        Case {
            window: Window { left: Some(70), right: Some(5) },
            softcap: Some(5.0),
            alibi_slopes: Some(slopes),
            sinks: Some(vec![1.0, -2.0, 0.5, 4.0]),
            q_amplitude: 3.0,
            ..deepseek(130, 300, false)
        },
    ];
    for case in cases {
        for (dtype, (err, lse_err)) in [
            (DType::F32, compare::<f32>(&case).unwrap()),
            (DType::BF16, compare::<bf16>(&case).unwrap()),
            (DType::F16, compare::<f16>(&case).unwrap()),
        ] {
            println!("head dims 192/128 {dtype} rel_l2 {err:.2e} lse {lse_err:.2e}");
        }
        for placement in [Placement::Contiguous, Placement::Padded, Placement::HeadMajor] {
            compare_forward_into::<bf16>(&case, placement).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(backward_config())]

    #[test]
    fn tiled_backward_matches_reference_f32(case in case()) {
        let errs = compare_backward::<f32>(&case).map_err(|e| TestCaseError::fail(format!("{e}\n{case:?}")))?;
        println!("f32 dq {:.2e} dk {:.2e} dv {:.2e} d_sinks {:.2e}", errs[0], errs[1], errs[2], errs[3]);
    }

    #[test]
    fn tiled_backward_matches_reference_bf16(case in case()) {
        let errs = compare_backward::<bf16>(&case).map_err(|e| TestCaseError::fail(format!("{e}\n{case:?}")))?;
        println!("bf16 dq {:.2e} dk {:.2e} dv {:.2e} d_sinks {:.2e}", errs[0], errs[1], errs[2], errs[3]);
    }

    #[test]
    fn tiled_backward_matches_reference_f16(case in case()) {
        let errs = compare_backward::<f16>(&case).map_err(|e| TestCaseError::fail(format!("{e}\n{case:?}")))?;
        println!("f16 dq {:.2e} dk {:.2e} dv {:.2e} d_sinks {:.2e}", errs[0], errs[1], errs[2], errs[3]);
    }
}
