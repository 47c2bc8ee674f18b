//! The FlashAttention forward algorithm on the CPU, in f32: for each block of query rows, walk the
//! blocks of keys/values once, keeping a running row max and row sum and rescaling the output
//! accumulator whenever the max grows, then normalise once at the end. Causal blocks entirely above
//! the diagonal are never visited. Parallel over (batch, query head, query block) with rayon.
//!
//! This is the library's CPU fallback, so it is written to be reasonably fast: K and V are packed to
//! f32 once per (batch, kv head) (`packing`), the two products run in register-blocked microkernels
//! (`microkernel`) and the softmax's exp is vectorisable (`vecops`). Only writing O into
//! caller-chosen strides (`forward_into`) is sequential.

use super::microkernel::{accumulate_pv, scores, BLOCK_K};
use super::packing::{load_rows, PackedKv};
use super::vecops::{exp_shifted_sum, max_of, scale_in_place};
use crate::dtype::Element;
use crate::error::{Arg, Error, Result};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use crate::tensor::HostTensor;
use rayon::prelude::*;

/// Query rows per task: enough rows that each K/V tile, once in cache, serves many of them, and few
/// enough that short sequences still split into several tasks. With `BLOCK_K` = 64 keys, the Q, K
/// and V tiles at head_dim 256 are 192 KiB of f32, about an L2's share.
pub const BLOCK_Q: usize = 64;

/// Output of a forward call: O shaped like q, and the f32 LSE `[batch, heads_q, seqlen_q]`.
#[derive(Debug, Clone)]
pub struct ForwardOutput<T> {
    pub o: HostTensor<T>,
    pub lse: Vec<f32>,
}

/// softmax(scale · Q Kᵀ) V with the causal mask aligned bottom-right. O comes back contiguous in
/// q's shape; a fully masked row gets O = 0 and LSE = -inf.
pub fn forward<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<ForwardOutput<T>> {
    let problem = validate(q, k, v, opts)?;
    let mut o = HostTensor::filled(q.shape(), T::default());
    let mut lse = vec![0.0; problem.lse_len()];
    let o_by_head = attention_by_head(&problem, q, k, v, &mut lse);
    store_contiguous(&problem, &o_by_head, &mut o.data);
    Ok(ForwardOutput { o, lse })
}

/// Like [`forward`], into caller-provided O (any non-overlapping strides, shaped like q) and LSE
/// (`batch · heads_q · seqlen_q` values).
pub fn forward_into<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    opts: &AttnOptions,
    o: &mut HostTensor<T>,
    lse: &mut [f32],
) -> Result<()> {
    let problem = validate(q, k, v, opts)?;
    problem.check_like_q(Arg::O, &o.layout, o.data.len())?;
    if lse.len() != problem.lse_len() {
        return Err(Error::ShapeMismatch {
            arg: Arg::Lse,
            what: "length",
            got: lse.len(),
            expected: problem.lse_len(),
            why: "one value per (batch, q head, query row)",
        });
    }
    let o_by_head = attention_by_head(&problem, q, k, v, lse);
    if o.layout == Layout::contiguous(o.shape()) {
        store_contiguous(&problem, &o_by_head, &mut o.data);
    } else {
        store_strided(&problem, &o_by_head, o);
    }
    Ok(())
}

fn validate<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<AttnProblem> {
    AttnProblem::new((&q.layout, q.data.len()), (&k.layout, k.data.len()), (&v.layout, v.data.len()), opts)
}

/// Runs every query block; returns O in f32 ordered `[batch, heads_q, seqlen_q, head_dim]`, so that
/// each task owns one contiguous piece, and writes the LSE. The query heads sharing a kv head are
/// consecutive in that order, so one task per (batch, kv head) packs K and V for all of them.
fn attention_by_head<T: Element>(
    p: &AttnProblem,
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    lse: &mut [f32],
) -> Vec<f32> {
    let (d, group) = (p.head_dim, p.group_size());
    let mut o = vec![0.0f32; p.batch * p.heads_q * p.seqlen_q * d];
    let o_groups = o.par_chunks_mut(group * p.seqlen_q * d);
    o_groups.zip(lse.par_chunks_mut(group * p.seqlen_q)).enumerate().for_each(|(bkv, (o_group, lse_group))| {
        let (b, hkv) = (bkv / p.heads_kv, bkv % p.heads_kv);
        let kv = PackedKv::new(k, v, b, hkv);
        let heads = o_group.par_chunks_mut(p.seqlen_q * d).zip(lse_group.par_chunks_mut(p.seqlen_q));
        heads.enumerate().for_each(|(g, (o_head, lse_head))| {
            let blocks = o_head.par_chunks_mut(BLOCK_Q * d).zip(lse_head.par_chunks_mut(BLOCK_Q));
            blocks.enumerate().for_each(|(block, (o_rows, lse_rows))| {
                let rows = QueryBlock { p, b, h: hkv * group + g, first_row: block * BLOCK_Q };
                rows.run(q, &kv, o_rows, lse_rows);
            });
        });
    });
    o
}

/// One task: `lse_rows.len()` query rows of head `h` in batch `b`, starting at `first_row`.
struct QueryBlock<'a> {
    p: &'a AttnProblem,
    b: usize,
    h: usize,
    first_row: usize,
}

impl QueryBlock<'_> {
    /// One past the last key query row `i` may see.
    fn key_end(&self, i: usize) -> usize {
        self.p.last_visible_key(i).map_or(0, |j| j + 1)
    }

    /// Online softmax over the key blocks; `o_rows` must come in zeroed, `[rows, head_dim]`.
    fn run<T: Element>(&self, q: &HostTensor<T>, kv: &PackedKv, o_rows: &mut [f32], lse_rows: &mut [f32]) {
        let (p, d, rows) = (self.p, self.p.head_dim, lse_rows.len());
        let q_tile = load_rows(q, self.b, self.h, self.first_row, rows);
        // Scores, turned into probabilities in place.
        let mut s_tile = vec![0.0f32; rows * BLOCK_K];
        let mut row_max = [f32::NEG_INFINITY; BLOCK_Q];
        let mut row_sum = [0.0f32; BLOCK_Q];

        // The key end grows with the row, so the last row bounds every key this block needs:
        // key blocks past it (above the causal diagonal) are skipped.
        let keys_needed = self.key_end(self.first_row + rows - 1);
        for first_key in (0..keys_needed).step_by(BLOCK_K) {
            let keys = BLOCK_K.min(keys_needed - first_key);
            // Columns past `keys` may be written too (from padding); they are never read.
            scores(&q_tile, kv.kt_tile(first_key), &mut s_tile, d, keys, p.softmax_scale);
            for r in 0..rows {
                let visible = self.key_end(self.first_row + r).saturating_sub(first_key).min(keys);
                let s_row = &mut s_tile[r * BLOCK_K..][..keys];
                let rescale = softmax_step(s_row, visible, &mut row_max[r], &mut row_sum[r]);
                if rescale != 1.0 {
                    scale_in_place(&mut o_rows[r * d..][..d], rescale);
                }
            }
            accumulate_pv(&s_tile, kv.v_rows(first_key, keys), o_rows, d, keys);
        }

        for r in 0..rows {
            if row_sum[r] == 0.0 {
                // No visible key: O stays 0, as FlashAttention leaves it.
                lse_rows[r] = f32::NEG_INFINITY;
            } else {
                scale_in_place(&mut o_rows[r * d..][..d], 1.0 / row_sum[r]);
                lse_rows[r] = row_max[r] + row_sum[r].ln();
            }
        }
    }
}

/// One online-softmax step for a row: turns its scores for this key block into unnormalised
/// probabilities exp(s − max) in place (0 for the `s_row.len() - visible` masked keys), updates the
/// running max and sum, and returns the factor by which the row's accumulated output must shrink.
fn softmax_step(s_row: &mut [f32], visible: usize, running_max: &mut f32, running_sum: &mut f32) -> f32 {
    let (seen, masked) = s_row.split_at_mut(visible);
    masked.fill(0.0);
    if seen.is_empty() {
        return 1.0;
    }
    let new_max = max_of(seen, *running_max);
    // exp(-inf) = 0 on a row's first visible block, which discards the empty accumulator.
    let rescale = (*running_max - new_max).exp();
    let block_sum = exp_shifted_sum(seen, new_max);
    *running_sum = *running_sum * rescale + block_sum;
    *running_max = new_max;
    rescale
}

/// Head-major f32 O into a contiguous `[batch, seqlen_q, heads_q, head_dim]` buffer, rounding once.
fn store_contiguous<T: Element>(p: &AttnProblem, o_by_head: &[f32], out: &mut [T]) {
    let d = p.head_dim;
    out.par_chunks_mut(p.heads_q * d).enumerate().for_each(|(bs, out_row)| {
        let (b, s) = (bs / p.seqlen_q, bs % p.seqlen_q);
        for (h, dst) in out_row.chunks_exact_mut(d).enumerate() {
            let src = &o_by_head[((b * p.heads_q + h) * p.seqlen_q + s) * d..][..d];
            for (x, &y) in dst.iter_mut().zip(src) {
                *x = T::from_f32(y);
            }
        }
    });
}

/// The same into any validated (non-overlapping) strides; sequential, as it is a small fraction of the work.
fn store_strided<T: Element>(p: &AttnProblem, o_by_head: &[f32], out: &mut HostTensor<T>) {
    let d = p.head_dim;
    for b in 0..p.batch {
        for h in 0..p.heads_q {
            for s in 0..p.seqlen_q {
                let src = &o_by_head[((b * p.heads_q + h) * p.seqlen_q + s) * d..][..d];
                let start = out.layout.offset(b, s, h, 0);
                for (x, &y) in out.data[start..start + d].iter_mut().zip(src) {
                    *x = T::from_f32(y);
                }
            }
        }
    }
}
