//! The FlashAttention forward algorithm on the CPU, in f32: for each block of query rows, walk the
//! blocks of keys/values once, keeping a running row max and row sum and rescaling the output
//! accumulator whenever the max grows, then normalise once at the end. Only the key blocks that some
//! row of the block sees are visited (a causal diagonal or a window's edges end the walk early or start
//! it late). Parallel over (batch, query head, query block) with rayon.
//!
//! The score modifiers follow FlashAttention: the softcap and ALiBi act on each visible score before
//! the softmax, and a sink is one more logit in every row's denominator, with no value: each row's
//! online state starts from it.
//!
//! This is the library's CPU fallback, so it is written to be reasonably fast: K and V are packed to
//! f32 once per (batch, kv head) (`packing`), the two products run in register-blocked microkernels
//! (`microkernel`) and the softmax's exp is vectorisable (`vecops`). Only writing O into
//! caller-chosen strides (`forward_into`) is sequential.

use super::microkernel::{accumulate_pv, scores, BLOCK_K};
use super::packing::{load_rows, PackedKv};
use super::vecops::{exp_shifted_sum, max_of, scale_in_place, softcap_in_place};
use crate::dtype::Element;
use crate::error::{Arg, Result};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::{host_per_head, AttnProblem};
use crate::tensor::HostTensor;
use rayon::prelude::*;
use std::ops::Range;

/// Query rows per task: enough rows that each K/V tile, once in cache, serves many of them, and few
/// enough that short sequences still split into several tasks. With `BLOCK_K` = 64 keys, the Q, K
/// and V tiles at head_dim 256 are 192 KiB of f32, about an L2's share.
pub const BLOCK_Q: usize = 64;

/// Output of a forward call: O `[batch, seqlen_q, heads_q, head_dim_v]` (q's rows and heads, v's head
/// dim), and the f32 LSE `[batch, heads_q, seqlen_q]`.
#[derive(Debug, Clone)]
pub struct ForwardOutput<T> {
    pub o: HostTensor<T>,
    pub lse: Vec<f32>,
}

/// softmax(scale · Q Kᵀ) V under the options' mask and score modifiers (see `AttnOptions`; ALiBi
/// slopes and sinks must be `PerHead::Host`). O comes back contiguous, `[batch, seqlen_q, heads_q,
/// head_dim_v]`; a row that sees no key gets O = 0 and LSE = -inf, or its sink logit with sinks.
pub fn forward<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<ForwardOutput<T>> {
    let (problem, modifiers) = validate(q, k, v, opts)?;
    let o_shape = problem.o_shape();
    let mut o = HostTensor::filled(o_shape, T::default());
    let mut lse = vec![0.0; problem.lse_len()];
    let o_by_head = attention_by_head(&problem, &modifiers, q, k, v, &mut lse);
    store_contiguous(&problem, &o_by_head, &mut o.data);
    Ok(ForwardOutput { o, lse })
}

/// Like [`forward`], into caller-provided O (any non-overlapping strides, shaped like O: q's batch,
/// seqlen and heads, v's head dim) and LSE (`batch · heads_q · seqlen_q` values).
pub fn forward_into<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    opts: &AttnOptions,
    o: &mut HostTensor<T>,
    lse: &mut [f32],
) -> Result<()> {
    let (problem, modifiers) = validate(q, k, v, opts)?;
    problem.check_like_o(Arg::O, &o.layout, o.data.len())?;
    problem.check_lse_len(lse.len())?;
    let o_by_head = attention_by_head(&problem, &modifiers, q, k, v, lse);
    if o.layout == Layout::contiguous(o.shape()) {
        store_contiguous(&problem, &o_by_head, &mut o.data);
    } else {
        store_strided(&problem, &o_by_head, o);
    }
    Ok(())
}

/// The call's problem and its score modifiers (shared with the tiled backward).
pub(super) fn validate<'a, T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    opts: &AttnOptions<'a>,
) -> Result<(AttnProblem, Modifiers<'a>)> {
    let problem =
        AttnProblem::new((&q.layout, q.data.len()), (&k.layout, k.data.len()), (&v.layout, v.data.len()), opts)?;
    let (alibi_slopes, sinks) = host_per_head(opts)?;
    Ok((problem, Modifiers { softcap: problem.softcap, alibi_slopes, sinks }))
}

/// The per-element score modifiers of a call, with their per-head values on the host.
pub(super) struct Modifiers<'a> {
    pub softcap: Option<f32>,
    /// `[heads_q]` or `[batch, heads_q]` (the problem's `alibi_per_batch` says which).
    pub alibi_slopes: Option<&'a [f32]>,
    /// `[heads_q]` natural-log logits.
    pub sinks: Option<&'a [f32]>,
}

impl Modifiers<'_> {
    /// The ALiBi slope of (batch `b`, query head `h`), if the call has ALiBi.
    pub fn alibi_slope(&self, p: &AttnProblem, b: usize, h: usize) -> Option<f32> {
        let slopes = self.alibi_slopes?;
        let per_batch = p.alibi_per_batch == Some(true);
        Some(if per_batch { slopes[b * p.heads_q + h] } else { slopes[h] })
    }

    /// The scale the score microkernel applies: with a softcap, the tanh's argument scale `scale / cap`.
    pub fn score_scale(&self, p: &AttnProblem) -> f32 {
        self.softcap.map_or(p.softmax_scale, |cap| p.softmax_scale / cap)
    }
}

/// The keys some row of a query block sees, from the rows' visible ranges: one range, as both edges of
/// a row's range grow with the row (empty, `0..0`, when no row sees a key).
pub(super) fn union_of_rows(key_ranges: &[Range<usize>]) -> Range<usize> {
    let seen = key_ranges.iter().filter(|range| !range.is_empty());
    let start = seen.clone().map(|range| range.start).min().unwrap_or(0);
    start..seen.map(|range| range.end).max().unwrap_or(0)
}

/// ALiBi's bias on the scores `s` of query row `i` for keys `first_key..`: −slope · |key − diagonal|.
pub(super) fn add_alibi(p: &AttnProblem, s: &mut [f32], i: usize, first_key: usize, slope: f32) {
    let diagonal = (i + p.seqlen_k) as i64 - p.seqlen_q as i64;
    for (j, x) in (first_key..).zip(s.iter_mut()) {
        *x -= slope * (j as i64 - diagonal).unsigned_abs() as f32;
    }
}

/// Runs every query block; returns O in f32 ordered `[batch, heads_q, seqlen_q, head_dim_v]`, so that
/// each task owns one contiguous piece, and writes the LSE. The query heads sharing a kv head are
/// consecutive in that order, so one task per (batch, kv head) packs K and V for all of them.
fn attention_by_head<T: Element>(
    p: &AttnProblem,
    modifiers: &Modifiers,
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    lse: &mut [f32],
) -> Vec<f32> {
    let (d_v, group) = (p.head_dim_v, p.group_size());
    let mut o = vec![0.0f32; p.batch * p.heads_q * p.seqlen_q * d_v];
    let o_groups = o.par_chunks_mut(group * p.seqlen_q * d_v);
    o_groups.zip(lse.par_chunks_mut(group * p.seqlen_q)).enumerate().for_each(|(bkv, (o_group, lse_group))| {
        let (b, hkv) = (bkv / p.heads_kv, bkv % p.heads_kv);
        let kv = PackedKv::new(k, v, b, hkv);
        let heads = o_group.par_chunks_mut(p.seqlen_q * d_v).zip(lse_group.par_chunks_mut(p.seqlen_q));
        heads.enumerate().for_each(|(g, (o_head, lse_head))| {
            let blocks = o_head.par_chunks_mut(BLOCK_Q * d_v).zip(lse_head.par_chunks_mut(BLOCK_Q));
            blocks.enumerate().for_each(|(block, (o_rows, lse_rows))| {
                let rows = QueryBlock { p, modifiers, b, h: hkv * group + g, first_row: block * BLOCK_Q };
                rows.run(q, &kv, o_rows, lse_rows);
            });
        });
    });
    o
}

/// One task: `lse_rows.len()` query rows of head `h` in batch `b`, starting at `first_row`.
struct QueryBlock<'a> {
    p: &'a AttnProblem,
    modifiers: &'a Modifiers<'a>,
    b: usize,
    h: usize,
    first_row: usize,
}

impl QueryBlock<'_> {
    /// Online softmax over the key blocks; `o_rows` must come in zeroed, `[rows, head_dim_v]`.
    fn run<T: Element>(&self, q: &HostTensor<T>, kv: &PackedKv, o_rows: &mut [f32], lse_rows: &mut [f32]) {
        let (p, rows) = (self.p, lse_rows.len());
        let (d, d_v) = (p.head_dim, p.head_dim_v);
        let q_tile = load_rows(q, self.b, self.h, self.first_row, rows);
        // Scores, turned into probabilities in place.
        let mut s_tile = vec![0.0f32; rows * BLOCK_K];
        // A sink is a logit every row starts with: max = sink and sum = exp(sink − sink) = 1 fold it
        // into the LSE, and it adds nothing to O.
        let (initial_max, initial_sum) = match self.modifiers.sinks {
            Some(sinks) => (sinks[self.h], 1.0),
            None => (f32::NEG_INFINITY, 0.0),
        };
        let mut row_max = [initial_max; BLOCK_Q];
        let mut row_sum = [initial_sum; BLOCK_Q];

        let key_ranges: Vec<Range<usize>> = (0..rows).map(|r| p.key_range(self.first_row + r)).collect();
        // Both edges of the visible range grow with the row, so the union of the rows' ranges is one
        // range: key blocks outside it (before a window's left edge, past the diagonal) are never visited.
        let Range { start: keys_start, end: keys_end } = union_of_rows(&key_ranges);
        let score_scale = self.modifiers.score_scale(p);
        let alibi_slope = self.modifiers.alibi_slope(p, self.b, self.h);
        let modified = self.modifiers.softcap.is_some() || alibi_slope.is_some();
        for first_key in (keys_start / BLOCK_K * BLOCK_K..keys_end).step_by(BLOCK_K) {
            let keys = BLOCK_K.min(keys_end - first_key);
            // Columns past `keys` may be written too (from padding); they are never read.
            scores(&q_tile, kv.kt_tile(first_key), &mut s_tile, d, keys, score_scale);
            for (r, range) in key_ranges.iter().enumerate() {
                // The row's visible keys as columns of this block.
                let clip = |key: usize| key.clamp(first_key, first_key + keys) - first_key;
                let visible = clip(range.start)..clip(range.end);
                let s_row = &mut s_tile[r * BLOCK_K..][..keys];
                if modified {
                    let first_visible = first_key + visible.start;
                    self.modify_scores(&mut s_row[visible.clone()], self.first_row + r, first_visible, alibi_slope);
                }
                let rescale = softmax_step(s_row, visible, &mut row_max[r], &mut row_sum[r]);
                if rescale != 1.0 {
                    scale_in_place(&mut o_rows[r * d_v..][..d_v], rescale);
                }
            }
            accumulate_pv(&s_tile, kv.v_rows(first_key, keys), o_rows, d_v, keys);
        }

        for r in 0..rows {
            if row_sum[r] == 0.0 {
                // No visible key and no sink: O stays 0, as FlashAttention leaves it.
                lse_rows[r] = f32::NEG_INFINITY;
            } else {
                scale_in_place(&mut o_rows[r * d_v..][..d_v], 1.0 / row_sum[r]);
                lse_rows[r] = row_max[r] + row_sum[r].ln();
            }
        }
    }

    /// Softcap then ALiBi on the visible scores of query row `i` for keys `first_key..`; with a softcap
    /// the scores come in as `scale · q·k / cap`.
    fn modify_scores(&self, s: &mut [f32], i: usize, first_key: usize, alibi_slope: Option<f32>) {
        if let Some(cap) = self.modifiers.softcap {
            softcap_in_place(s, cap);
        }
        if let Some(slope) = alibi_slope {
            add_alibi(self.p, s, i, first_key, slope);
        }
    }
}

/// One online-softmax step for a row: turns its scores for this key block into unnormalised
/// probabilities exp(s − max) in place (0 outside the `visible` columns), updates the running max and
/// sum, and returns the factor by which the row's accumulated output must shrink.
fn softmax_step(s_row: &mut [f32], visible: Range<usize>, running_max: &mut f32, running_sum: &mut f32) -> f32 {
    let (before, rest) = s_row.split_at_mut(visible.start);
    let (seen, after) = rest.split_at_mut(visible.len());
    before.fill(0.0);
    after.fill(0.0);
    if seen.is_empty() {
        return 1.0;
    }
    let new_max = max_of(seen, *running_max);
    // exp(-inf) = 0 on a row's first visible block without a sink, which discards the empty
    // accumulator; with a sink it scales the sink's term in the sum.
    let rescale = (*running_max - new_max).exp();
    let block_sum = exp_shifted_sum(seen, new_max);
    *running_sum = *running_sum * rescale + block_sum;
    *running_max = new_max;
    rescale
}

/// Head-major f32 O into a contiguous `[batch, seqlen_q, heads_q, head_dim_v]` buffer, rounding once.
fn store_contiguous<T: Element>(p: &AttnProblem, o_by_head: &[f32], out: &mut [T]) {
    let d_v = p.head_dim_v;
    out.par_chunks_mut(p.heads_q * d_v).enumerate().for_each(|(bs, out_row)| {
        let (b, s) = (bs / p.seqlen_q, bs % p.seqlen_q);
        for (h, dst) in out_row.chunks_exact_mut(d_v).enumerate() {
            let src = &o_by_head[((b * p.heads_q + h) * p.seqlen_q + s) * d_v..][..d_v];
            for (x, &y) in dst.iter_mut().zip(src) {
                *x = T::from_f32(y);
            }
        }
    });
}

/// The same into any validated (non-overlapping) strides; sequential, as it is a small fraction of the work.
fn store_strided<T: Element>(p: &AttnProblem, o_by_head: &[f32], out: &mut HostTensor<T>) {
    let d_v = p.head_dim_v;
    for b in 0..p.batch {
        for h in 0..p.heads_q {
            for s in 0..p.seqlen_q {
                let src = &o_by_head[((b * p.heads_q + h) * p.seqlen_q + s) * d_v..][..d_v];
                let start = out.layout.offset(b, s, h, 0);
                for (x, &y) in out.data[start..start + d_v].iter_mut().zip(src) {
                    *x = T::from_f32(y);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key blocks that no row of a query block sees hold NaN in K and V: visiting one would turn O into
    /// NaN (masked probabilities are 0, and 0 · NaN is NaN), so a finite O shows that the walk skips
    /// every block before the rows' first visible key and after their last.
    #[test]
    fn query_blocks_skip_key_blocks_outside_their_rows_ranges() {
        for (seqlen_q, seqlen_k) in [(256, 256), (100, 400), (400, 100)] {
            for (causal, left, right) in [(true, None, None), (true, Some(70), None), (false, Some(5), Some(90))] {
                let opts = AttnOptions { causal, ..AttnOptions::default() }.with_window(left, right);
                for first_row in (0..seqlen_q).step_by(BLOCK_Q) {
                    run_with_unseen_blocks_poisoned(seqlen_q, seqlen_k, &opts, first_row);
                }
            }
        }
    }

    fn run_with_unseen_blocks_poisoned(seqlen_q: usize, seqlen_k: usize, opts: &AttnOptions, first_row: usize) {
        let (d, rng) = (32, &mut rand::rng());
        let q = HostTensor::<f32>::random([1, seqlen_q, 1, d], 1.0, rng);
        let mut k = HostTensor::<f32>::random([1, seqlen_k, 1, d], 1.0, rng);
        let mut v = HostTensor::<f32>::random([1, seqlen_k, 1, d], 1.0, rng);
        let (p, modifiers) = validate(&q, &k, &v, opts).unwrap();
        let rows = BLOCK_Q.min(seqlen_q - first_row);
        let ranges: Vec<_> = (first_row..first_row + rows).map(|i| p.key_range(i)).collect();
        let seen = |j: usize| {
            let block = j / BLOCK_K * BLOCK_K..(j / BLOCK_K + 1) * BLOCK_K;
            ranges.iter().any(|r| r.start < block.end && block.start < r.end)
        };
        let unseen: Vec<usize> = (0..seqlen_k).filter(|&j| !seen(j)).collect();
        for &j in &unseen {
            for x in 0..d {
                k.set(0, j, 0, x, f32::NAN);
                v.set(0, j, 0, x, f32::NAN);
            }
        }
        let kv = PackedKv::new(&k, &v, 0, 0);
        let (mut o_rows, mut lse_rows) = (vec![0.0f32; rows * d], vec![0.0f32; rows]);
        QueryBlock { p: &p, modifiers: &modifiers, b: 0, h: 0, first_row }.run(&q, &kv, &mut o_rows, &mut lse_rows);
        let ctx = format!("{seqlen_q}x{seqlen_k} {opts:?} rows {first_row}.. ({} keys poisoned)", unseen.len());
        assert!(o_rows.iter().all(|x| x.is_finite()), "{ctx}");
        assert!(lse_rows.iter().all(|x| !x.is_nan()), "{ctx}");
    }
}
