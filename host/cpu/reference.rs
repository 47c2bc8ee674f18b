//! Exact attention in f64: the oracle every other path is checked against. Written for clarity
//! rather than speed, one query row at a time and straight from the definition (the mask, softcap,
//! ALiBi and sinks are spelled out here, not shared with the fast paths), but parallel (forward: over
//! batch, head and row; backward: over batch and kv head) so that tests on a few hundred rows with
//! head_dim 256 stay quick.

use crate::dtype::Element;
use crate::error::{Arg, Result};
use crate::options::AttnOptions;
use crate::problem::{host_per_head, AttnProblem};
use crate::tensor::HostTensor;
use rayon::prelude::*;

/// Exact forward attention in f64.
#[derive(Debug, Clone)]
pub struct ReferenceForward {
    pub problem: AttnProblem,
    /// `[batch, seqlen_q, heads_q, head_dim_v]`, contiguous.
    pub o: Vec<f64>,
    /// `[batch, heads_q, seqlen_q]`, natural log, sink included; a row that sees no key has `-inf`
    /// without sinks and its sink logit with them.
    pub lse: Vec<f64>,
}

/// Exact gradients in f64, each contiguous in the shape of its input (dV in v's, with v's head dim).
#[derive(Debug, Clone)]
pub struct ReferenceBackward {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    /// `[heads_q]`, summed over batch and query rows; `Some` only when the call has sinks.
    pub d_sinks: Option<Vec<f64>>,
}

/// Exact attention: for query i and key j, `s = scale · q_i·k_j`, softcapped to `cap · tanh(s / cap)`,
/// minus `slope · |i + seqlen_k − seqlen_q − j|` with ALiBi; the softmax runs over the keys the mask
/// (causal and window, aligned bottom-right) shows, with `exp(sink)` added to its denominator.
pub fn reference_forward<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<ReferenceForward> {
    reference_forward_shifted(q, k, v, opts, 0)
}

/// [`reference_forward`] with every row's diagonal `shift` keys further than bottom-right alignment
/// puts it (key `i + seqlen_k − seqlen_q + shift` is on query i's diagonal), for the mask and ALiBi:
/// queries and keys that are slices of a longer sequence (a ring step's chunks, `ring::cpu`).
pub(crate) fn reference_forward_shifted<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    opts: &AttnOptions,
    shift: i64,
) -> Result<ReferenceForward> {
    let x = Inputs { diagonal_shift: shift as i128, ..Inputs::new(q, k, v, opts)? };
    let p = x.problem;
    let head_dim_v = p.head_dim_v;
    // One task per (batch, q head), split further by query row; each returns its O rows
    // `[seqlen_q, head_dim_v]` and its LSE row.
    let per_head: Vec<(Vec<f64>, Vec<f64>)> = (0..p.batch * p.heads_q)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / p.heads_q, bh % p.heads_q);
            let mut o = vec![0.0; p.seqlen_q * head_dim_v];
            let mut lse = vec![f64::NEG_INFINITY; p.seqlen_q];
            o.par_chunks_mut(head_dim_v).zip(lse.par_iter_mut()).enumerate().for_each_init(
                || Vec::with_capacity(p.seqlen_k),
                |weights, (i, (o_row, lse_i))| {
                    *lse_i = x.row_softmax(b, h, i, weights);
                    for w in weights.iter() {
                        axpy(o_row, w.prob, x.v_row(b, w.key, h / p.group_size()));
                    }
                },
            );
            (o, lse)
        })
        .collect();

    let mut o = vec![0.0; p.batch * p.seqlen_q * p.heads_q * head_dim_v];
    let mut lse = Vec::with_capacity(p.lse_len());
    for (bh, (o_head, lse_head)) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / p.heads_q, bh % p.heads_q);
        for i in 0..p.seqlen_q {
            let dst = x.o_offset(b, i, h);
            o[dst..dst + head_dim_v].copy_from_slice(&o_head[i * head_dim_v..(i + 1) * head_dim_v]);
        }
        lse.extend(lse_head);
    }
    Ok(ReferenceForward { problem: p, o, lse })
}

/// Exact gradients of the forward above for the upstream gradient `d_o` (shaped like O):
/// dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)) taken through the softcap's tanh′,
/// dQ = scale·dS K, dK = scale·dSᵀ Q, with dK and dV summed over the query heads that share a K/V
/// head; d_sink_h = −Σ_{b,i} exp(sink_h − LSE_i) · rowsum(dO ∘ O)_i. ALiBi slopes are constants.
pub fn reference_backward<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    d_o: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<ReferenceBackward> {
    backward(q, k, v, None, None, d_o, opts, 0)
}

/// The gradients above with rowsum(dO ∘ O) taken from a given O: what a backward that is handed the
/// forward's output in the element type computes (FlashAttention's contract, and the GPU backward's),
/// exactly. Where dP − rowsum(dO ∘ O) cancels (a row whose probability sits on one key), the rounding
/// of O decides dS; this reference shares it with the kernel.
pub fn reference_backward_given_o<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    o: &HostTensor<T>,
    d_o: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<ReferenceBackward> {
    backward(q, k, v, Some(o), None, d_o, opts, 0)
}

/// The gradients above with rowsum(dO ∘ O) from a given O and the probabilities normalised by a given
/// LSE (`[batch, heads_q, seqlen_q]`, natural log) instead of the keys' own: the share of these keys
/// in the gradients of a softmax that also ran over other keys, the given LSE being the whole row's
/// (a ring step's, `ring::cpu`). With sinks, their gradient uses the given LSE too.
pub fn reference_backward_given_o_lse<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    o: &HostTensor<T>,
    lse: &[f64],
    d_o: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<ReferenceBackward> {
    reference_backward_given_o_lse_shifted(q, k, v, o, lse, d_o, opts, 0)
}

/// [`reference_backward_given_o_lse`] with the diagonal shifted as [`reference_forward_shifted`] takes
/// it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reference_backward_given_o_lse_shifted<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    o: &HostTensor<T>,
    lse: &[f64],
    d_o: &HostTensor<T>,
    opts: &AttnOptions,
    shift: i64,
) -> Result<ReferenceBackward> {
    backward(q, k, v, Some(o), Some(lse), d_o, opts, shift)
}

#[allow(clippy::too_many_arguments)]
fn backward<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    o: Option<&HostTensor<T>>,
    given_lse: Option<&[f64]>,
    d_o: &HostTensor<T>,
    opts: &AttnOptions,
    shift: i64,
) -> Result<ReferenceBackward> {
    let x = Inputs { diagonal_shift: shift as i128, ..Inputs::new(q, k, v, opts)? };
    let p = x.problem;
    let like_o = |t: &HostTensor<T>, arg: Arg| -> Result<Vec<f64>> {
        p.check_input_like_o(arg, &t.layout, t.data.len())?;
        Ok(t.to_f64_contiguous())
    };
    let d_o = like_o(d_o, Arg::DO)?;
    let given_o = o.map(|o| like_o(o, Arg::O)).transpose()?;
    if let Some(lse) = given_lse {
        p.check_lse_len(lse.len())?;
    }
    // Q, K and their gradients have `head_dim`; V, O, dO and dV have `head_dim_v`.
    let (head_dim, head_dim_v, group) = (p.head_dim, p.head_dim_v, p.group_size());
    let scale = p.softmax_scale as f64;

    // One task per (batch, kv head), looping over its query heads, so that dK and dV are summed
    // without sharing between threads. Each returns dQ rows `[group, seqlen_q, head_dim]`, dK rows
    // `[seqlen_k, head_dim]`, dV rows `[seqlen_k, head_dim_v]`, and its query heads' sink gradients
    // `[group]`.
    let per_head: Vec<HeadGradients> = (0..p.batch * p.heads_kv)
        .into_par_iter()
        .map(|bh| {
            let (b, hkv) = (bh / p.heads_kv, bh % p.heads_kv);
            let mut grads = HeadGradients {
                dq: vec![0.0; group * p.seqlen_q * head_dim],
                dk: vec![0.0; p.seqlen_k * head_dim],
                dv: vec![0.0; p.seqlen_k * head_dim_v],
                d_sinks: vec![0.0; group],
            };
            let mut weights = Vec::with_capacity(p.seqlen_k);
            let mut o_row = vec![0.0; head_dim_v];
            for g in 0..group {
                let h = hkv * group + g;
                for i in 0..p.seqlen_q {
                    let mut lse = x.row_softmax(b, h, i, &mut weights);
                    if let Some(given) = given_lse {
                        let row_lse = given[(b * p.heads_q + h) * p.seqlen_q + i];
                        let factor = (lse - row_lse).exp();
                        weights.iter_mut().for_each(|w| w.prob *= factor);
                        lse = row_lse;
                    }
                    o_row.fill(0.0);
                    for w in &weights {
                        axpy(&mut o_row, w.prob, x.v_row(b, w.key, hkv));
                    }
                    let o_at = x.o_offset(b, i, h);
                    let do_row = &d_o[o_at..][..head_dim_v];
                    let delta = dot(do_row, given_o.as_ref().map_or(&o_row[..], |o| &o[o_at..][..head_dim_v]));
                    let dq_row = &mut grads.dq[(g * p.seqlen_q + i) * head_dim..][..head_dim];
                    for w in &weights {
                        let j = w.key;
                        let dp = dot(do_row, x.v_row(b, j, hkv));
                        // dL/d(scale · q·k): the softmax's gradient, then the softcap's chain factor.
                        let ds = w.prob * (dp - delta) * w.score_slope;
                        axpy(dq_row, scale * ds, x.k_row(b, j, hkv));
                        axpy(&mut grads.dk[j * head_dim..][..head_dim], scale * ds, x.q_row(b, i, h));
                        axpy(&mut grads.dv[j * head_dim_v..][..head_dim_v], w.prob, do_row);
                    }
                    if let Some(sinks) = &x.sinks {
                        // The sink's probability is exp(sink − LSE), and O depends on the sink only
                        // through the shared denominator: dO/dsink = −p_sink · O.
                        grads.d_sinks[g] -= (sinks[h] - lse).exp() * delta;
                    }
                }
            }
            grads
        })
        .collect();

    let mut dq = vec![0.0; x.q.len()];
    let mut dk = vec![0.0; x.k.len()];
    let mut dv = vec![0.0; x.v.len()];
    let mut d_sinks = vec![0.0; p.heads_q];
    for (bh, head) in per_head.into_iter().enumerate() {
        let (b, hkv) = (bh / p.heads_kv, bh % p.heads_kv);
        for g in 0..group {
            for i in 0..p.seqlen_q {
                let dst = x.q_offset(b, i, hkv * group + g);
                dq[dst..][..head_dim].copy_from_slice(&head.dq[(g * p.seqlen_q + i) * head_dim..][..head_dim]);
            }
            d_sinks[hkv * group + g] += head.d_sinks[g];
        }
        for j in 0..p.seqlen_k {
            dk[x.k_offset(b, j, hkv)..][..head_dim].copy_from_slice(&head.dk[j * head_dim..][..head_dim]);
            dv[x.v_offset(b, j, hkv)..][..head_dim_v].copy_from_slice(&head.dv[j * head_dim_v..][..head_dim_v]);
        }
    }
    let d_sinks = p.sinks.then_some(d_sinks);
    Ok(ReferenceBackward { dq, dk, dv, d_sinks })
}

/// One backward task's gradients: dQ of its query heads `[group, seqlen_q, head_dim]`, dK
/// `[seqlen_k, head_dim]` and dV `[seqlen_k, head_dim_v]` of its kv head, and the sink gradients of its
/// query heads `[group]`.
struct HeadGradients {
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    d_sinks: Vec<f64>,
}

/// A visible key of one query row, after the softmax.
#[derive(Debug, Clone, Copy)]
struct KeyWeight {
    key: usize,
    /// p_ij: its share of the row's softmax (sink included in the denominator).
    prob: f64,
    /// ∂s_ij / ∂(scale · q_i·k_j): the softcap's `1 − tanh²`, 1 without a softcap.
    score_slope: f64,
}

/// Validated inputs copied to contiguous f64, so the arithmetic is exact to f64 whatever the strides,
/// with the options the score needs.
struct Inputs {
    problem: AttnProblem,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    /// Keys a query sees before / after its diagonal (`None`: unbounded); causal is `after = 0`.
    window_before: Option<usize>,
    window_after: Option<usize>,
    /// `[heads_q]` or `[batch, heads_q]` (`problem.alibi_per_batch` says which).
    alibi_slopes: Option<Vec<f64>>,
    /// `[heads_q]` sink logits.
    sinks: Option<Vec<f64>>,
    /// Keys from bottom-right alignment to each row's diagonal (`reference_forward_shifted`).
    diagonal_shift: i128,
}

impl Inputs {
    fn new<T: Element>(q: &HostTensor<T>, k: &HostTensor<T>, v: &HostTensor<T>, opts: &AttnOptions) -> Result<Self> {
        let problem =
            AttnProblem::new((&q.layout, q.data.len()), (&k.layout, k.data.len()), (&v.layout, v.data.len()), opts)?;
        let (alibi_slopes, sinks) = host_per_head(opts)?;
        let to_f64 = |s: &[f32]| s.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        Ok(Inputs {
            problem,
            q: q.to_f64_contiguous(),
            k: k.to_f64_contiguous(),
            v: v.to_f64_contiguous(),
            window_before: opts.window.left,
            window_after: if opts.causal { Some(0) } else { opts.window.right },
            alibi_slopes: alibi_slopes.map(to_f64),
            sinks: sinks.map(to_f64),
            diagonal_shift: 0,
        })
    }

    /// Offsets of a row in the contiguous tensors: Q (and dQ), O (and dO) by query row `i` and q head
    /// `h`; K (and dK), V (and dV) by key `j` and kv head `h`.
    fn q_offset(&self, b: usize, i: usize, h: usize) -> usize {
        let p = &self.problem;
        ((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim
    }
    fn o_offset(&self, b: usize, i: usize, h: usize) -> usize {
        let p = &self.problem;
        ((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim_v
    }
    fn k_offset(&self, b: usize, j: usize, h: usize) -> usize {
        let p = &self.problem;
        ((b * p.seqlen_k + j) * p.heads_kv + h) * p.head_dim
    }
    fn v_offset(&self, b: usize, j: usize, h: usize) -> usize {
        let p = &self.problem;
        ((b * p.seqlen_k + j) * p.heads_kv + h) * p.head_dim_v
    }
    fn q_row(&self, b: usize, i: usize, h: usize) -> &[f64] {
        &self.q[self.q_offset(b, i, h)..][..self.problem.head_dim]
    }
    fn k_row(&self, b: usize, j: usize, h: usize) -> &[f64] {
        &self.k[self.k_offset(b, j, h)..][..self.problem.head_dim]
    }
    fn v_row(&self, b: usize, j: usize, h: usize) -> &[f64] {
        &self.v[self.v_offset(b, j, h)..][..self.problem.head_dim_v]
    }

    /// Signed distance from query row `i`'s diagonal (key `i + seqlen_k − seqlen_q + diagonal_shift`)
    /// to key `j`; i128 so that no window width, however large, overflows below.
    fn past_diagonal(&self, i: usize, j: usize) -> i128 {
        let p = &self.problem;
        j as i128 - (i as i128 + p.seqlen_k as i128 - p.seqlen_q as i128 + self.diagonal_shift)
    }

    /// Whether query row `i` sees key `j` (both in range).
    fn visible(&self, i: usize, j: usize) -> bool {
        let past = self.past_diagonal(i, j);
        self.window_before.is_none_or(|w| past >= -(w as i128)) && self.window_after.is_none_or(|w| past <= w as i128)
    }

    /// The score of query row `i` (q head `h`) for key `j` and its slope `∂s / ∂(scale · q·k)`.
    fn score(&self, b: usize, h: usize, i: usize, j: usize) -> (f64, f64) {
        let p = &self.problem;
        let raw = p.softmax_scale as f64 * dot(self.q_row(b, i, h), self.k_row(b, j, h / p.group_size()));
        let (capped, slope) = match p.softcap {
            Some(cap) => {
                let t = (raw / cap as f64).tanh();
                (cap as f64 * t, 1.0 - t * t)
            }
            None => (raw, 1.0),
        };
        let bias = match &self.alibi_slopes {
            Some(slopes) => {
                let slope = if p.alibi_per_batch == Some(true) { slopes[b * p.heads_q + h] } else { slopes[h] };
                -slope * self.past_diagonal(i, j).abs() as f64
            }
            None => 0.0,
        };
        (capped + bias, slope)
    }

    /// Fills `weights` with the softmax of query row `i` (q head `h`) over its visible keys, in key
    /// order, and returns the row's log-sum-exp (sink included). A row that sees no key leaves
    /// `weights` empty and returns its sink logit, or -inf without sinks.
    fn row_softmax(&self, b: usize, h: usize, i: usize, weights: &mut Vec<KeyWeight>) -> f64 {
        weights.clear();
        for j in (0..self.problem.seqlen_k).filter(|&j| self.visible(i, j)) {
            let (score, score_slope) = self.score(b, h, i, j);
            // `prob` holds the score until the row's max is known.
            weights.push(KeyWeight { key: j, prob: score, score_slope });
        }
        let sink = self.sinks.as_ref().map(|s| s[h]);
        let max = weights.iter().map(|w| w.prob).chain(sink).fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return f64::NEG_INFINITY;
        }
        let mut sum = sink.map_or(0.0, |s| (s - max).exp());
        for w in weights.iter_mut() {
            w.prob = (w.prob - max).exp();
            sum += w.prob;
        }
        for w in weights.iter_mut() {
            w.prob /= sum;
        }
        max + sum.ln()
    }
}

/// Σ a·b, over four partial sums so that the loop vectorises; the order change is far below what
/// any test of an f32 or 16-bit path can see.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut partial = [0.0f64; 4];
    let (a_chunks, b_chunks) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for l in 0..4 {
            partial[l] += ca[l] * cb[l];
        }
    }
    partial.iter().sum::<f64>() + tail
}

/// y += alpha · x
fn axpy(y: &mut [f64], alpha: f64, x: &[f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::options::PerHead;

    fn tensor(shape: [usize; 4], f: impl Fn(usize, usize, usize, usize) -> f32) -> HostTensor<f32> {
        let mut t = HostTensor::filled(shape, 0.0f32);
        let [nb, ns, nh, nd] = shape;
        for b in 0..nb {
            for s in 0..ns {
                for h in 0..nh {
                    for d in 0..nd {
                        t.set(b, s, h, d, f(b, s, h, d));
                    }
                }
            }
        }
        t
    }

    #[test]
    fn zero_queries_average_the_values() {
        // q = 0 makes every score equal: O is the mean of V, LSE is ln(seqlen_k).
        let q = HostTensor::filled([1, 3, 2, 32], 0.0f32);
        let k = tensor([1, 5, 1, 32], |_, s, _, d| (s * 7 + d) as f32 * 0.01);
        let v = tensor([1, 5, 1, 32], |_, s, _, d| (s * 3 + d) as f32);
        let r = reference_forward(&q, &k, &v, &AttnOptions::default()).unwrap();
        for (n, &o) in r.o.iter().enumerate() {
            let d = n % 32;
            assert!((o - (6.0 + d as f64)).abs() < 1e-12, "o[{n}] = {o}");
        }
        for &l in &r.lse {
            assert!((l - 5f64.ln()).abs() < 1e-12);
        }
    }

    #[test]
    fn causal_rows_above_the_keys_are_fully_masked() {
        // 4 queries, 2 keys, bottom-right aligned: rows 0 and 1 see nothing, row 2 sees key 0 only.
        let q = tensor([1, 4, 1, 32], |_, s, _, d| (s + d) as f32 * 0.1);
        let k = tensor([1, 2, 1, 32], |_, s, _, d| (s * d) as f32 * 0.1);
        let v = tensor([1, 2, 1, 32], |_, s, _, d| (10 * s + d) as f32);
        let r = reference_forward(&q, &k, &v, &AttnOptions::causal()).unwrap();
        assert_eq!(r.lse[0], f64::NEG_INFINITY);
        assert_eq!(r.lse[1], f64::NEG_INFINITY);
        assert!(r.o[..2 * 32].iter().all(|&o| o == 0.0));
        for d in 0..32 {
            assert_eq!(r.o[2 * 32 + d], d as f64);
        }
        assert!(r.lse[2].is_finite() && r.lse[3].is_finite());
    }

    #[test]
    fn a_sink_joins_the_denominator_without_a_value() {
        // q = 0: every score is 0, so with n visible keys LSE = ln(exp(sink) + n) and O is the mean of
        // V shrunk by n / (n + exp(sink)).
        let q = HostTensor::filled([1, 2, 2, 32], 0.0f32);
        let k = tensor([1, 4, 1, 32], |_, s, _, d| (s + d) as f32 * 0.03);
        let v = tensor([1, 4, 1, 32], |_, s, _, d| (s * 2 + d) as f32);
        let sinks = [0.5f32, -2.0];
        let r = reference_forward(&q, &k, &v, &AttnOptions::default().with_sinks(PerHead::Host(&sinks))).unwrap();
        for (h, &sink) in sinks.iter().enumerate() {
            let shrink = 4.0 / (4.0 + (sink as f64).exp());
            for i in 0..2 {
                assert!((r.lse[h * 2 + i] - ((sink as f64).exp() + 4.0).ln()).abs() < 1e-12);
                for d in 0..32 {
                    let o = r.o[(i * 2 + h) * 32 + d];
                    assert!((o - (3.0 + d as f64) * shrink).abs() < 1e-12, "h {h} i {i} d {d}: {o}");
                }
            }
        }
    }

    #[test]
    fn a_row_without_keys_gets_its_sink_as_lse() {
        // Causal, 3 queries and 1 key: rows 0 and 1 see nothing.
        let q = tensor([1, 3, 1, 32], |_, s, _, d| (s + d) as f32 * 0.1);
        let k = tensor([1, 1, 1, 32], |_, _, _, d| d as f32 * 0.1);
        let v = tensor([1, 1, 1, 32], |_, _, _, d| d as f32);
        let sinks = [1.5f32];
        let r = reference_forward(&q, &k, &v, &AttnOptions::causal().with_sinks(PerHead::Host(&sinks))).unwrap();
        assert_eq!(&r.lse[..2], &[1.5, 1.5]);
        assert!(r.o[..2 * 32].iter().all(|&o| o == 0.0));
        // The inputs and the scale are f32, so the expected score uses their rounded values.
        let dot: f64 = (0..32).map(|d| ((2 + d) as f32 * 0.1) as f64 * (d as f32 * 0.1) as f64).sum();
        let score = dot * (1.0 / 32f32.sqrt()) as f64;
        assert!((r.lse[2] - (1.5f64.exp() + score.exp()).ln()).abs() < 1e-12);
    }

    #[test]
    fn alibi_penalises_the_distance_to_the_diagonal() {
        // q = 0: the scores are the ALiBi biases alone. 2 queries, 3 keys: query i's diagonal is key
        // i + 1, so row 0 sees distances 1, 0, 1 and row 1 sees 2, 1, 0. Per-batch slopes: batch b,
        // head h uses slopes[b * 2 + h].
        let q = HostTensor::filled([2, 2, 2, 32], 0.0f32);
        let k = tensor([2, 3, 1, 32], |b, s, _, d| (b + s * d) as f32 * 0.05);
        let v = tensor([2, 3, 1, 32], |b, s, _, _| (10 * b + s) as f32);
        let slopes = [0.25f32, 0.5, 1.0, 2.0];
        let r = reference_forward(&q, &k, &v, &AttnOptions::default().with_alibi(PerHead::Host(&slopes))).unwrap();
        for b in 0..2 {
            for h in 0..2 {
                let slope = slopes[b * 2 + h] as f64;
                for (i, distances) in [[1.0, 0.0, 1.0], [2.0, 1.0, 0.0]].iter().enumerate() {
                    let weights = distances.map(|x: f64| (-slope * x).exp());
                    let sum: f64 = weights.iter().sum();
                    let o_want: f64 = (0..3).map(|j| weights[j] * (10 * b + j) as f64).sum::<f64>() / sum;
                    assert!((r.lse[(b * 2 + h) * 2 + i] - sum.ln()).abs() < 1e-12);
                    let o = r.o[((b * 2 + i) * 2 + h) * 32];
                    assert!((o - o_want).abs() < 1e-12, "b {b} h {h} i {i}: {o} vs {o_want}");
                }
            }
        }
    }

    #[test]
    fn softcap_saturates_large_scores() {
        // Key 0 scores 100 and key 1 scores 0; a cap of 2 turns 100 into 2·tanh(50) = 2 (to f64), so
        // key 0 gets exp(2) / (exp(2) + 1) of the row instead of all of it.
        let q = tensor([1, 1, 1, 32], |_, _, _, d| if d == 0 { 10.0 } else { 0.0 });
        let k = tensor([1, 2, 1, 32], |_, s, _, d| if s == 0 && d == 0 { 10.0 } else { 0.0 });
        let v = tensor([1, 2, 1, 32], |_, s, _, _| if s == 0 { 1.0 } else { 0.0 });
        let opts = AttnOptions::default().with_scale(1.0);
        let plain = reference_forward(&q, &k, &v, &opts).unwrap();
        assert!((plain.o[0] - 1.0).abs() < 1e-40 && (plain.lse[0] - 100.0).abs() < 1e-12);
        let capped = reference_forward(&q, &k, &v, &opts.with_softcap(2.0)).unwrap();
        let e2 = 2f64.exp();
        assert!((capped.o[0] - e2 / (e2 + 1.0)).abs() < 1e-15);
        assert!((capped.lse[0] - (e2 + 1.0).ln()).abs() < 1e-15);
    }

    #[test]
    fn visibility_matches_the_shared_mask() {
        // The reference spells the window out itself; it must agree with `Mask`, which the fast paths use.
        let windows = [None, Some(0), Some(1), Some(3), Some(9), Some(usize::MAX)];
        for (seqlen_q, seqlen_k) in [(1, 1), (5, 2), (2, 5), (7, 7), (3, 11), (11, 3)] {
            let q = HostTensor::filled([1, seqlen_q, 1, 32], 0.0f32);
            let k = HostTensor::filled([1, seqlen_k, 1, 32], 0.0f32);
            for causal in [false, true] {
                for left in windows {
                    for right in windows {
                        let opts = AttnOptions { causal, ..AttnOptions::default() }.with_window(left, right);
                        let x = Inputs::new(&q, &k, &k, &opts).unwrap();
                        for i in 0..seqlen_q {
                            let range = x.problem.key_range(i);
                            for j in 0..seqlen_k {
                                assert_eq!(
                                    x.visible(i, j),
                                    range.contains(&j),
                                    "{seqlen_q}x{seqlen_k} {opts:?} ({i}, {j})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn strides_do_not_change_the_result() {
        let mut rng = rand::rng();
        let q = HostTensor::<f32>::random([2, 6, 4, 64], 1.0, &mut rng);
        let padded = Layout { shape: [2, 6, 4, 64], strides: [6 * 5 * 80, 5 * 80, 80, 1] };
        let mut q_padded = HostTensor::<f32>::random_with_layout(padded, 1.0, &mut rng);
        for b in 0..2 {
            for s in 0..6 {
                for h in 0..4 {
                    for d in 0..64 {
                        q_padded.set(b, s, h, d, q.get(b, s, h, d));
                    }
                }
            }
        }
        let k = HostTensor::<f32>::random([2, 9, 2, 64], 1.0, &mut rng);
        let v = HostTensor::<f32>::random([2, 9, 2, 64], 1.0, &mut rng);
        let a = reference_forward(&q, &k, &v, &AttnOptions::causal()).unwrap();
        let b = reference_forward(&q_padded, &k, &v, &AttnOptions::causal()).unwrap();
        assert_eq!(a.o, b.o);
        assert_eq!(a.lse, b.lse);
    }
}
