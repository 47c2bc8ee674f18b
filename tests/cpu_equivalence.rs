//! The tiled f32 CPU forward against the exact f64 reference, on random problems: GQA/MQA, unequal
//! sequence lengths, every supported head dim, causal or not, random softmax scales, padded and
//! head-major strides, in bf16, f16 and f32.
//!
//! Error bounds. Both paths read the same (already rounded) inputs, so input precision cancels out.
//! What remains is (a) the f32 arithmetic of the tiled path, well under 1e-5 relative for rows of at
//! most 300 keys, and (b) the final rounding of O to the element type, at most one half ulp per
//! element: a relative error ≤ u = 2^-8 · 2^-1 = 2^-9 ≈ 2.0e-3 for bf16 (8 significant bits) and
//! ≤ 2^-12 ≈ 2.4e-4 for f16 (11 bits), so ≤ u in relative L2 too (f16 subnormals add at most 2^-25
//! absolute per element, negligible next to outputs of size ~1e-2). The bound is 4u plus the f32 bound:
//! bf16 < 7.8e-3, f16 < 1.0e-3, f32 < 1.0e-5. The LSE is f32 for every element type, so one bound
//! (relative to the problem's LSE magnitude) serves all three.

mod common;

use common::{check_lse, rel_l2};
use half::{bf16, f16};
use ironflash::cpu::{forward, forward_into, reference_forward};
use ironflash::{AttnOptions, DType, Element, Error, HostTensor, Layout};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Relative L2 bound of the f32 arithmetic alone.
const F32_BOUND: f64 = 1e-5;
/// Bound on |LSE − reference| relative to the largest |LSE| of the problem (at least 1): f32 scores
/// and their log-sum-exp carry errors of a few f32 epsilons (1.2e-7) of that magnitude; 6e-7 is the
/// worst seen.
const LSE_BOUND: f64 = 4e-6;

/// Unit roundoff (half an ulp, relative) of rounding to the element type.
fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-9),
        DType::F16 => 2f64.powi(-12),
        DType::F32 => 2f64.powi(-24),
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
    causal: bool,
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
        proptest::sample::select(vec![32usize, 64, 96, 128, 192, 256]),
        any::<bool>(),
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
                head_dim,
                causal,
                scale_factor,
                q_amplitude,
                placements,
                seed,
            )| Case {
                batch,
                heads_q,
                heads_kv,
                seqlen_q,
                seqlen_k,
                head_dim,
                causal,
                scale_factor,
                q_amplitude,
                placements,
                seed,
            },
        )
}

impl Case {
    fn options(&self) -> AttnOptions {
        let opts = AttnOptions { causal: self.causal, ..AttnOptions::default() };
        match self.scale_factor {
            Some(f) => opts.with_scale(f / (self.head_dim as f32).sqrt()),
            None => opts,
        }
    }

    /// Fresh random q, k, v (padding included, so that reading it would show).
    fn inputs<T: Element>(&self) -> [HostTensor<T>; 3] {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let q_shape = [self.batch, self.seqlen_q, self.heads_q, self.head_dim];
        let kv_shape = [self.batch, self.seqlen_k, self.heads_kv, self.head_dim];
        let [pq, pk, pv] = self.placements;
        [
            HostTensor::random_with_layout(layout(q_shape, pq), self.q_amplitude, &mut rng),
            HostTensor::random_with_layout(layout(kv_shape, pk), 1.0, &mut rng),
            HostTensor::random_with_layout(layout(kv_shape, pv), 1.0, &mut rng),
        ]
    }
}

/// Tiled vs reference for one case; returns (relative L2 of O, max |ΔLSE|).
fn compare<T: Element>(case: &Case) -> Result<(f64, f64), String> {
    let [q, k, v] = case.inputs::<T>();
    let opts = case.options();
    let got = forward(&q, &k, &v, &opts).map_err(|e| e.to_string())?;
    let want = reference_forward(&q, &k, &v, &opts).map_err(|e| e.to_string())?;
    if got.o.layout != Layout::contiguous(q.shape()) {
        return Err(format!("O layout {:?} is not contiguous in q's shape", got.o.layout));
    }
    let err = rel_l2(&got.o.to_f64_contiguous(), &want.o);
    let bound = output_bound(T::DTYPE);
    if err.is_nan() || err >= bound {
        return Err(format!("{} O relative L2 {err:.3e} >= {bound:.3e}", T::DTYPE));
    }
    let lse_scale = want.lse.iter().filter(|x| x.is_finite()).fold(1.0f64, |m, x| m.max(x.abs()));
    let lse_err = check_lse(&got.lse, &want.lse, LSE_BOUND * lse_scale)?;
    Ok((err, lse_err))
}

fn config() -> ProptestConfig {
    // Each case costs up to ~0.5 s on two cores at the largest shapes; shrinking is capped so that
    // a failure still reports quickly.
    // Failures are saved where proptest replays them first (its default looks for a lib.rs we lack).
    ProptestConfig {
        cases: 48,
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
    fn tiled_matches_reference_f32(case in case()) {
        let (err, lse_err) = compare::<f32>(&case).map_err(|e| TestCaseError::fail(format!("{e}\n{case:?}")))?;
        println!("f32 rel_l2 {err:.2e} lse {lse_err:.2e}");
    }

    #[test]
    fn tiled_matches_reference_bf16(case in case()) {
        let (err, lse_err) = compare::<bf16>(&case).map_err(|e| TestCaseError::fail(format!("{e}\n{case:?}")))?;
        println!("bf16 rel_l2 {err:.2e} lse {lse_err:.2e}");
    }

    #[test]
    fn tiled_matches_reference_f16(case in case()) {
        let (err, lse_err) = compare::<f16>(&case).map_err(|e| TestCaseError::fail(format!("{e}\n{case:?}")))?;
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
        causal,
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
                let row: Vec<f32> = (0..case.head_dim).map(|d| out.o.get(b, i, h, d)).collect();
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
        let mut o = HostTensor::<f16>::random_with_layout(layout(q.shape(), placement), 1.0, &mut rng);
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
    let mut o = HostTensor::filled(q.shape(), 0.0f32);
    let mut lse = vec![0.0f32; 2 * 4 * 5 - 1];
    let err = forward_into(&q, &k, &v, &case.options(), &mut o, &mut lse).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { arg: ironflash::Arg::Lse, .. }), "{err:?}");
}
