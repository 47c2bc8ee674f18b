//! Exact attention in f64: the oracle every other path is checked against. Written for clarity
//! rather than speed, one query row at a time, but parallel (forward: over batch, head and row;
//! backward: over batch and kv head) so that tests on a few hundred rows with head_dim 256 stay quick.

use crate::dtype::Element;
use crate::error::{Arg, Error, Result};
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use crate::tensor::HostTensor;
use rayon::prelude::*;

/// Exact forward attention in f64.
#[derive(Debug, Clone)]
pub struct ReferenceForward {
    pub problem: AttnProblem,
    /// `[batch, seqlen_q, heads_q, head_dim]`, contiguous.
    pub o: Vec<f64>,
    /// `[batch, heads_q, seqlen_q]`, natural log; `-inf` for fully masked rows.
    pub lse: Vec<f64>,
}

/// Exact gradients in f64, each contiguous in the shape of its input.
#[derive(Debug, Clone)]
pub struct ReferenceBackward {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
}

/// Exact softmax(scale · Q Kᵀ) V, with the causal mask aligned bottom-right.
pub fn reference_forward<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<ReferenceForward> {
    let x = Inputs::new(q, k, v, opts)?;
    let p = x.problem;
    let d = p.head_dim;
    // One task per (batch, q head), split further by query row; each returns its O rows
    // `[seqlen_q, d]` and its LSE row.
    let per_head: Vec<(Vec<f64>, Vec<f64>)> = (0..p.batch * p.heads_q)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / p.heads_q, bh % p.heads_q);
            let mut o = vec![0.0; p.seqlen_q * d];
            let mut lse = vec![f64::NEG_INFINITY; p.seqlen_q];
            o.par_chunks_mut(d).zip(lse.par_iter_mut()).enumerate().for_each_init(
                || Vec::with_capacity(p.seqlen_k),
                |probs, (i, (o_row, lse_i))| {
                    *lse_i = x.row_probs(b, h, i, probs);
                    for (j, &pj) in probs.iter().enumerate() {
                        axpy(o_row, pj, x.v_row(b, j, h / p.group_size()));
                    }
                },
            );
            (o, lse)
        })
        .collect();

    let mut o = vec![0.0; p.batch * p.seqlen_q * p.heads_q * d];
    let mut lse = Vec::with_capacity(p.lse_len());
    for (bh, (o_head, lse_head)) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / p.heads_q, bh % p.heads_q);
        for i in 0..p.seqlen_q {
            let dst = ((b * p.seqlen_q + i) * p.heads_q + h) * d;
            o[dst..dst + d].copy_from_slice(&o_head[i * d..(i + 1) * d]);
        }
        lse.extend(lse_head);
    }
    Ok(ReferenceForward { problem: p, o, lse })
}

/// Exact gradients of the forward above for the upstream gradient `d_o` (shaped like q):
/// dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)), dQ = scale·dS K, dK = scale·dSᵀ Q,
/// with dK and dV summed over the query heads that share a K/V head.
pub fn reference_backward<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    d_o: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<ReferenceBackward> {
    let x = Inputs::new(q, k, v, opts)?;
    let p = x.problem;
    d_o.layout.validate(Arg::DO, d_o.data.len())?;
    for (dim, (&got, &expected)) in d_o.shape().iter().zip(&q.shape()).enumerate() {
        if got != expected {
            let what = crate::layout::DIM_NAMES[dim];
            return Err(Error::ShapeMismatch { arg: Arg::DO, what, got, expected, why: "d_o is shaped like q" });
        }
    }
    let d_o = d_o.to_f64_contiguous();
    let (d, group) = (p.head_dim, p.group_size());
    let scale = p.softmax_scale as f64;

    // One task per (batch, kv head), looping over its query heads, so that dK and dV are summed
    // without sharing between threads. Each returns dQ rows `[group, seqlen_q, d]`, dK and dV `[seqlen_k, d]`.
    let per_head: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = (0..p.batch * p.heads_kv)
        .into_par_iter()
        .map(|bh| {
            let (b, hkv) = (bh / p.heads_kv, bh % p.heads_kv);
            let mut dq = vec![0.0; group * p.seqlen_q * d];
            let mut dk = vec![0.0; p.seqlen_k * d];
            let mut dv = vec![0.0; p.seqlen_k * d];
            let mut probs = Vec::with_capacity(p.seqlen_k);
            let mut o_row = vec![0.0; d];
            for g in 0..group {
                let h = hkv * group + g;
                for i in 0..p.seqlen_q {
                    x.row_probs(b, h, i, &mut probs);
                    o_row.fill(0.0);
                    for (j, &pj) in probs.iter().enumerate() {
                        axpy(&mut o_row, pj, x.v_row(b, j, hkv));
                    }
                    let do_row = &d_o[x.q_offset(b, i, h)..][..d];
                    let delta = dot(do_row, &o_row);
                    let dq_row = &mut dq[(g * p.seqlen_q + i) * d..][..d];
                    for (j, &pj) in probs.iter().enumerate() {
                        let dp = dot(do_row, x.v_row(b, j, hkv));
                        let ds = pj * (dp - delta);
                        axpy(dq_row, scale * ds, x.k_row(b, j, hkv));
                        axpy(&mut dk[j * d..(j + 1) * d], scale * ds, x.q_row(b, i, h));
                        axpy(&mut dv[j * d..(j + 1) * d], pj, do_row);
                    }
                }
            }
            (dq, dk, dv)
        })
        .collect();

    let mut dq = vec![0.0; p.batch * p.seqlen_q * p.heads_q * d];
    let mut dk = vec![0.0; p.batch * p.seqlen_k * p.heads_kv * d];
    let mut dv = vec![0.0; p.batch * p.seqlen_k * p.heads_kv * d];
    for (bh, (dq_head, dk_head, dv_head)) in per_head.into_iter().enumerate() {
        let (b, hkv) = (bh / p.heads_kv, bh % p.heads_kv);
        for g in 0..group {
            for i in 0..p.seqlen_q {
                let dst = x.q_offset(b, i, hkv * group + g);
                dq[dst..dst + d].copy_from_slice(&dq_head[(g * p.seqlen_q + i) * d..][..d]);
            }
        }
        for j in 0..p.seqlen_k {
            let dst = x.kv_offset(b, j, hkv);
            dk[dst..dst + d].copy_from_slice(&dk_head[j * d..(j + 1) * d]);
            dv[dst..dst + d].copy_from_slice(&dv_head[j * d..(j + 1) * d]);
        }
    }
    Ok(ReferenceBackward { dq, dk, dv })
}

/// Validated inputs copied to contiguous f64, so the arithmetic is exact to f64 whatever the strides.
struct Inputs {
    problem: AttnProblem,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

impl Inputs {
    fn new<T: Element>(q: &HostTensor<T>, k: &HostTensor<T>, v: &HostTensor<T>, opts: &AttnOptions) -> Result<Self> {
        let problem =
            AttnProblem::new((&q.layout, q.data.len()), (&k.layout, k.data.len()), (&v.layout, v.data.len()), opts)?;
        Ok(Inputs { problem, q: q.to_f64_contiguous(), k: k.to_f64_contiguous(), v: v.to_f64_contiguous() })
    }

    fn q_offset(&self, b: usize, i: usize, h: usize) -> usize {
        let p = &self.problem;
        ((b * p.seqlen_q + i) * p.heads_q + h) * p.head_dim
    }
    fn kv_offset(&self, b: usize, j: usize, h: usize) -> usize {
        let p = &self.problem;
        ((b * p.seqlen_k + j) * p.heads_kv + h) * p.head_dim
    }
    fn q_row(&self, b: usize, i: usize, h: usize) -> &[f64] {
        &self.q[self.q_offset(b, i, h)..][..self.problem.head_dim]
    }
    fn k_row(&self, b: usize, j: usize, h: usize) -> &[f64] {
        &self.k[self.kv_offset(b, j, h)..][..self.problem.head_dim]
    }
    fn v_row(&self, b: usize, j: usize, h: usize) -> &[f64] {
        &self.v[self.kv_offset(b, j, h)..][..self.problem.head_dim]
    }

    /// Fills `probs` with the softmax of query row `i` (q head `h`) over its visible keys (so its
    /// length is the number of visible keys) and returns the row's log-sum-exp; a fully masked row
    /// leaves `probs` empty and returns -inf.
    fn row_probs(&self, b: usize, h: usize, i: usize, probs: &mut Vec<f64>) -> f64 {
        let p = &self.problem;
        probs.clear();
        let Some(last) = p.last_visible_key(i) else {
            return f64::NEG_INFINITY;
        };
        let (q_row, hkv, scale) = (self.q_row(b, i, h), h / p.group_size(), p.softmax_scale as f64);
        probs.extend((0..=last).map(|j| scale * dot(q_row, self.k_row(b, j, hkv))));
        let max = probs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for s in probs.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for s in probs.iter_mut() {
            *s /= sum;
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
