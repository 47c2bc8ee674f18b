//! The f64 reference backward against central finite differences of the f64 reference forward.
//! The loss is L = Σ O ∘ W for a random W, so dL/dO = W is the upstream gradient handed to the backward.

use ironflash::cpu::{reference_backward, reference_forward};
use ironflash::{AttnOptions, HostTensor};
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

/// Checks every element of dQ, dK and dV for one problem; returns the worst error seen.
fn check(q_shape: [usize; 4], kv_shape: [usize; 4], opts: AttnOptions, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let q = HostTensor::<f32>::random(q_shape, 1.0, &mut rng);
    let k = HostTensor::<f32>::random(kv_shape, 1.0, &mut rng);
    let v = HostTensor::<f32>::random(kv_shape, 1.0, &mut rng);
    let w = HostTensor::<f32>::random(q_shape, 1.0, &mut rng);
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
                        let x = base.get(b, s, h, d);
                        let (up, down) = (x + STEP, x - STEP);
                        let eval = |value: f32| {
                            let mut t = base.clone();
                            t.set(b, s, h, d, value);
                            match input {
                                Input::Q => loss(&t, &k, &v, &w64, &opts),
                                Input::K => loss(&q, &t, &v, &w64, &opts),
                                Input::V => loss(&q, &k, &t, &w64, &opts),
                            }
                        };
                        let numeric = (eval(up) - eval(down)) / (up as f64 - down as f64);
                        let got = analytic[index];
                        let err = (got - numeric).abs() / (1.0 + got.abs());
                        assert!(
                            err < TOLERANCE,
                            "d{input:?}[{b},{s},{h},{d}]: analytic {got}, numeric {numeric} (q {q_shape:?}, kv {kv_shape:?}, {opts:?})"
                        );
                        worst = worst.max(err);
                        index += 1;
                    }
                }
            }
        }
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
