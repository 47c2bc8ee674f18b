//! The f64 reference backward against central finite differences of the f64 reference forward, for
//! every mask and score modifier alone and combined. The loss is L = Σ O ∘ W for a random W, so
//! dL/dO = W is the upstream gradient handed to the backward; with sinks the sink logits are inputs too.

use ironflash::cpu::{reference_backward, reference_forward};
use ironflash::{AttnOptions, HostTensor, PerHead};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Finite-difference step. Inputs are f32, so the step actually taken is measured after rounding
/// (`x + STEP` as f32 minus `x - STEP` as f32) and the truncation error is O(STEP²) ≈ 1e-6.
const STEP: f32 = 1.0 / 1024.0;

/// |analytic − numeric| must stay below this times (1 + |analytic|). Truncation error of the central
/// difference dominates (the forward is exact to f64), and it is well below this bound.
const TOLERANCE: f64 = 1e-5;

fn loss(q: &HostTensor<f32>, k: &HostTensor<f32>, v: &HostTensor<f32>, w: &[f64], opts: &AttnOptions) -> f64 {
    let fwd = reference_forward(q, k, v, opts).unwrap();
    fwd.o.iter().zip(w).map(|(o, w)| o * w).sum()
}

/// Which input a gradient belongs to.
#[derive(Clone, Copy, Debug)]
enum Input {
    Q,
    K,
    V,
}

/// Central difference of `loss` at `x` (an f32 input), over the step actually taken after rounding.
fn central_difference(x: f32, loss: impl Fn(f32) -> f64) -> f64 {
    let (up, down) = (x + STEP, x - STEP);
    (loss(up) - loss(down)) / (up as f64 - down as f64)
}

/// |analytic − numeric| relative to (1 + |analytic|), asserted below `TOLERANCE`.
fn compare(analytic: f64, numeric: f64, what: impl FnOnce() -> String) -> f64 {
    let err = (analytic - numeric).abs() / (1.0 + analytic.abs());
    assert!(err < TOLERANCE, "{}: analytic {analytic}, numeric {numeric}", what());
    err
}

/// Checks every element of dQ, dK and dV (and d_sinks, with sinks) for one problem; returns the
/// worst error seen.
fn check(q_shape: [usize; 4], kv_shape: [usize; 4], opts: AttnOptions, seed: u64) -> f64 {
    check_with_head_dim_v(q_shape, kv_shape, kv_shape[3], opts, seed)
}

/// As `check`, with V (and so O, W = dL/dO and dV) of head dim `head_dim_v`.
fn check_with_head_dim_v(
    q_shape: [usize; 4],
    kv_shape: [usize; 4],
    head_dim_v: usize,
    opts: AttnOptions,
    seed: u64,
) -> f64 {
    let [batch, seqlen_q, heads_q, _] = q_shape;
    let [_, seqlen_k, heads_kv, _] = kv_shape;
    let v_shape = [batch, seqlen_k, heads_kv, head_dim_v];
    let o_shape = [batch, seqlen_q, heads_q, head_dim_v];
    let mut rng = StdRng::seed_from_u64(seed);
    let q = HostTensor::<f32>::random(q_shape, 1.0, &mut rng);
    let k = HostTensor::<f32>::random(kv_shape, 1.0, &mut rng);
    let v = HostTensor::<f32>::random(v_shape, 1.0, &mut rng);
    let w = HostTensor::<f32>::random(o_shape, 1.0, &mut rng);
    let w64 = w.to_f64_contiguous();
    let grads = reference_backward(&q, &k, &v, &w, &opts).unwrap();

    let mut worst = 0.0f64;
    for (input, analytic) in [(Input::Q, &grads.dq), (Input::K, &grads.dk), (Input::V, &grads.dv)] {
        let base = match input {
            Input::Q => &q,
            Input::K => &k,
            Input::V => &v,
        };
        assert_eq!(analytic.len(), base.layout.numel());
        let [nb, ns, nh, nd] = base.shape();
        let mut index = 0;
        for b in 0..nb {
            for s in 0..ns {
                for h in 0..nh {
                    for d in 0..nd {
                        let numeric = central_difference(base.get(b, s, h, d), |value| {
                            let mut t = base.clone();
                            t.set(b, s, h, d, value);
                            match input {
                                Input::Q => loss(&t, &k, &v, &w64, &opts),
                                Input::K => loss(&q, &t, &v, &w64, &opts),
                                Input::V => loss(&q, &k, &t, &w64, &opts),
                            }
                        });
                        let err = compare(analytic[index], numeric, || {
                            format!(
                                "d{input:?}[{b},{s},{h},{d}] (q {q_shape:?}, k {kv_shape:?}, v {v_shape:?}, {opts:?})"
                            )
                        });
                        worst = worst.max(err);
                        index += 1;
                    }
                }
            }
        }
    }

    match opts.sinks {
        None => assert!(grads.d_sinks.is_none(), "d_sinks without sinks"),
        Some(PerHead::Host(sinks)) => {
            let d_sinks = grads.d_sinks.as_ref().expect("sinks but no d_sinks");
            assert_eq!(d_sinks.len(), q_shape[2]);
            for (h, &analytic) in d_sinks.iter().enumerate() {
                let numeric = central_difference(sinks[h], |value| {
                    let mut moved = sinks.to_vec();
                    moved[h] = value;
                    loss(&q, &k, &v, &w64, &AttnOptions { sinks: Some(PerHead::Host(&moved)), ..opts })
                });
                let err = compare(analytic, numeric, || {
                    format!("d_sinks[{h}] (q {q_shape:?}, k {kv_shape:?}, v {v_shape:?}, {opts:?})")
                });
                worst = worst.max(err);
            }
        }
        Some(PerHead::Device(_)) => unreachable!("the reference takes host values"),
    }
    worst
}

#[test]
fn dense_more_keys_than_queries() {
    let worst = check([1, 3, 2, 32], [1, 5, 2, 32], AttnOptions::default(), 1);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn causal_square() {
    let worst = check([1, 4, 1, 32], [1, 4, 1, 32], AttnOptions::causal().with_scale(0.7), 2);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn causal_more_keys_than_queries_gqa() {
    // 4 query heads share 2 kv heads: dK and dV sum over the pair.
    let worst = check([2, 3, 4, 32], [2, 6, 2, 32], AttnOptions::causal(), 3);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn causal_more_queries_than_keys_mqa_with_fully_masked_rows() {
    // Rows 0..3 see no key at all and must contribute nothing to any gradient.
    let worst = check([1, 6, 3, 32], [1, 3, 1, 32], AttnOptions::causal().with_scale(1.3), 4);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn fully_masked_rows_have_zero_query_gradient() {
    let mut rng = StdRng::seed_from_u64(5);
    let q = HostTensor::<f32>::random([1, 5, 2, 64], 1.0, &mut rng);
    let k = HostTensor::<f32>::random([1, 2, 1, 64], 1.0, &mut rng);
    let v = HostTensor::<f32>::random([1, 2, 1, 64], 1.0, &mut rng);
    let d_o = HostTensor::<f32>::random([1, 5, 2, 64], 1.0, &mut rng);
    let grads = reference_backward(&q, &k, &v, &d_o, &AttnOptions::causal()).unwrap();
    // Bottom-right alignment: query rows 0, 1, 2 see no key; rows are [s, h, d] = 2 * 64 values each.
    assert!(grads.dq[..3 * 2 * 64].iter().all(|&g| g == 0.0));
    assert!(grads.dq[3 * 2 * 64..].iter().any(|&g| g != 0.0));
}

// Sliding windows. Query i's diagonal is key i + seqlen_k − seqlen_q; each case below mixes rows
// whose window is cut by the ends of the keys with rows whose window lies inside them.

#[test]
fn window_left_only() {
    let worst = check([1, 6, 2, 32], [1, 6, 2, 32], AttnOptions::default().with_window(Some(2), None), 6);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn window_right_only_more_keys_than_queries() {
    let worst = check([1, 4, 2, 32], [1, 7, 2, 32], AttnOptions::default().with_window(None, Some(1)), 7);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn window_both_sides_more_queries_than_keys_with_fully_masked_rows() {
    // Diagonals at keys −3..=2 with one key before and none after: rows 0..3 see nothing.
    let worst = check([1, 6, 2, 32], [1, 3, 1, 32], AttnOptions::default().with_window(Some(1), Some(0)), 8);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn causal_window_gqa() {
    let opts = AttnOptions::causal().with_window(Some(2), None).with_scale(0.6);
    let worst = check([2, 5, 4, 32], [2, 7, 2, 32], opts, 9);
    println!("worst relative error {worst:.2e}");
}

// Score modifiers. Scores of q, k in [−1, 1)³² at scale 1 reach a few units, where a cap of 1.5
// bends them well away from linear.

#[test]
fn softcap() {
    let opts = AttnOptions::default().with_scale(1.0).with_softcap(1.5);
    let worst = check([1, 4, 2, 32], [1, 5, 1, 32], opts, 10);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn causal_softcap_more_queries_than_keys() {
    let opts = AttnOptions::causal().with_scale(0.8).with_softcap(0.7);
    let worst = check([1, 6, 2, 32], [1, 4, 2, 32], opts, 11);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn alibi_per_head() {
    let slopes = [0.5f32, 0.125, 1.5];
    let opts = AttnOptions::default().with_alibi(PerHead::Host(&slopes));
    let worst = check([1, 4, 3, 32], [1, 6, 1, 32], opts, 12);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn alibi_per_batch_and_head() {
    // [batch, heads_q] = [2, 2]: each batch has its own slopes.
    let slopes = [0.5f32, 0.25, 2.0, 0.0625];
    let opts = AttnOptions::causal().with_alibi(PerHead::Host(&slopes));
    let worst = check([2, 5, 2, 32], [2, 3, 2, 32], opts, 13);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn sinks() {
    let sinks = [0.3f32, -1.2];
    let opts = AttnOptions::default().with_sinks(PerHead::Host(&sinks));
    let worst = check([2, 4, 2, 32], [2, 5, 1, 32], opts, 14);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn sinks_with_fully_masked_rows() {
    // Rows 0..3 see no key: their LSE is the sink, O is 0, and they add nothing to d_sinks.
    let sinks = [1.1f32, -0.4, 2.5];
    let opts = AttnOptions::causal().with_sinks(PerHead::Host(&sinks)).with_scale(1.2);
    let worst = check([1, 6, 3, 32], [1, 3, 1, 32], opts, 15);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn every_option_at_once_gqa() {
    let slopes = [0.25f32, 0.5, 1.0, 0.125, 0.75, 0.0, 2.0, 0.375];
    let sinks = [0.5f32, -0.5, 1.0, 0.0];
    let opts = AttnOptions::causal()
        .with_window(Some(3), None)
        .with_scale(0.9)
        .with_softcap(1.2)
        .with_alibi(PerHead::Host(&slopes))
        .with_sinks(PerHead::Host(&sinks));
    let worst = check([2, 5, 4, 32], [2, 7, 2, 32], opts, 16);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn every_option_two_sided_window_more_queries_than_keys() {
    let slopes = [0.3f32, 0.7];
    let sinks = [-0.2f32, 0.9];
    let opts = AttnOptions::default()
        .with_window(Some(1), Some(2))
        .with_softcap(2.0)
        .with_scale(1.0)
        .with_alibi(PerHead::Host(&slopes))
        .with_sinks(PerHead::Host(&sinks));
    let worst = check([1, 7, 2, 32], [1, 4, 1, 32], opts, 17);
    println!("worst relative error {worst:.2e}");
}

// V with a head dim of its own (DeepSeek-V3's: Q and K 192, V 128): dQ and dK have 192 columns, dV,
// O and dO 128, and delta = rowsum(dO ∘ O) runs over V's. Few rows keep the 192-wide differences quick.

#[test]
fn value_head_dim_of_its_own_causal_gqa() {
    // Two query heads share the kv head; more keys than queries.
    let worst = check_with_head_dim_v([1, 2, 2, 192], [1, 3, 1, 192], 128, AttnOptions::causal(), 19);
    println!("worst relative error {worst:.2e}");
}

#[test]
fn value_head_dim_of_its_own_with_sinks_and_a_window() {
    // The sinks' gradient is made of delta; row 0 sees no key (window of one key before the diagonal,
    // none after, diagonals at keys -1..=1).
    let sinks = [0.6f32];
    let opts = AttnOptions::default().with_window(Some(1), Some(0)).with_sinks(PerHead::Host(&sinks));
    let worst = check_with_head_dim_v([1, 3, 1, 192], [1, 2, 1, 192], 128, opts, 20);
    println!("worst relative error {worst:.2e}");
}

/// `reference_backward_given_o` with the forward's own O is `reference_backward` (to f64 rounding of
/// the f32 round trip), with an O moved by δ only rowsum(dO ∘ O) moves, by exactly dO·δ per row; an O
/// not shaped like O is a typed error naming `o`.
#[test]
fn given_o_only_changes_the_delta() {
    let sinks = [0.4f32, -0.7];
    let opts = AttnOptions::causal().with_sinks(PerHead::Host(&sinks));
    let mut rng = StdRng::seed_from_u64(18);
    let (qs, ks) = ([1, 6, 2, 32], [1, 9, 1, 32]);
    let q = HostTensor::<f32>::random(qs, 1.0, &mut rng);
    let k = HostTensor::<f32>::random(ks, 1.0, &mut rng);
    let v = HostTensor::<f32>::random(ks, 1.0, &mut rng);
    let d_o = HostTensor::<f32>::random(qs, 1.0, &mut rng);
    let fwd = reference_forward(&q, &k, &v, &opts).unwrap();
    let exact = reference_backward(&q, &k, &v, &d_o, &opts).unwrap();
    let mut o = HostTensor::<f32>::random(qs, 1.0, &mut rng);
    o.data.iter_mut().zip(&fwd.o).for_each(|(x, &y)| *x = y as f32);
    let same = ironflash::cpu::reference_backward_given_o(&q, &k, &v, &o, &d_o, &opts).unwrap();
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + y.abs()));
    assert!(close(&same.dq, &exact.dq) && close(&same.dk, &exact.dk) && close(&same.dv, &exact.dv));

    // O + δ on one row: dV is unchanged, and that row's d_sinks term moves by −p_sink·(dO·δ).
    let (row, head, d) = (3usize, 1usize, 32usize);
    let at = (row * 2 + head) * d;
    let shift: Vec<f32> = (0..d).map(|c| 0.01 * (c as f32 - 15.5)).collect();
    let mut moved = o.clone();
    moved.data[at..at + d].iter_mut().zip(&shift).for_each(|(x, s)| *x += s);
    let off = ironflash::cpu::reference_backward_given_o(&q, &k, &v, &moved, &d_o, &opts).unwrap();
    assert_eq!(off.dv, same.dv);
    let d_delta: f64 = (0..d).map(|c| d_o.data[at + c] as f64 * shift[c] as f64).sum();
    let p_sink = (sinks[head] as f64 - fwd.lse[head * 6 + row]).exp();
    let want = same.d_sinks.as_ref().unwrap()[head] - p_sink * d_delta;
    assert!((off.d_sinks.as_ref().unwrap()[head] - want).abs() <= 1e-9 * (1.0 + want.abs()));

    let short = HostTensor::<f32>::random([1, 5, 2, 32], 1.0, &mut rng);
    let e = ironflash::cpu::reference_backward_given_o(&q, &k, &v, &short, &d_o, &opts).unwrap_err();
    assert!(matches!(e, ironflash::Error::ShapeMismatch { arg: ironflash::Arg::O, .. }), "{e}");
}
