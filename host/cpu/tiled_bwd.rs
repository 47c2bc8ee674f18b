//! The FlashAttention backward on the CPU, in f32: gradients from the forward's O and LSE without
//! storing the attention matrix. Each (query block, key block) tile recomputes its scores, turns them
//! into probabilities with the saved LSE (P = exp(s − LSE)), forms dP = dO Vᵀ and
//! dS = P ∘ (dP − delta) (delta = rowsum(dO ∘ O), times the softcap's 1 − tanh²), and adds
//! dV += Pᵀ dO, dK += scale · dSᵀ Q, dQ += scale · dS K.
//!
//! Two passes, so that every accumulator has one owner and the result does not depend on the thread
//! count (no atomics, bitwise the same run to run): one task per (batch, kv head, key block) sums dK
//! and dV over every query head of the group and every query block that sees it; one task per
//! (batch, query head, query block) sums dQ over its key blocks. The tiles' scores and probabilities
//! are computed in both (7 small products per tile instead of 5): the price of the ownership, which
//! the GPU kernels pay with atomics or turn counters instead.
//!
//! The score stage is the forward's (`tiled.rs`: the mask's key ranges, the softcap, ALiBi, the sink in
//! the LSE), as are the packed K/V tiles and the microkernels.

use super::microkernel::{accumulate_pv, scores, BLOCK_K};
use super::packing::{load_rows, PackedKv};
use super::tiled::{add_alibi, union_of_rows, validate, Modifiers, BLOCK_Q};
use super::vecops::softcap_in_place;
use crate::dtype::Element;
use crate::error::{Arg, Result};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use crate::tensor::HostTensor;
use rayon::prelude::*;
use std::ops::Range;

// Pᵀ and dSᵀ of a tile are `[keys, query rows]` with the rows as the microkernel's inner dimension.
const _: () = assert!(BLOCK_Q <= BLOCK_K);

/// Gradients of a backward call, contiguous: dQ like q, dK like k, dV like v; and the sinks' gradients
/// `[heads_q]` when the call has sinks.
#[derive(Debug, Clone)]
pub struct BackwardOutput<T> {
    pub dq: HostTensor<T>,
    pub dk: HostTensor<T>,
    pub dv: HostTensor<T>,
    pub d_sinks: Option<Vec<f32>>,
}

/// Gradients of `forward` for the upstream gradient `d_o`, from the forward's outputs `o` and `lse`
/// (FlashAttention's contract: delta is formed from `o` as given, in its element type). dK and dV are
/// summed over the query heads that share a K/V head; a row that saw no key contributes nothing.
/// ALiBi slopes and sinks must be `PerHead::Host`; the sinks' gradients are f32 sums over the batch.
pub fn backward<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    o: &HostTensor<T>,
    lse: &[f32],
    d_o: &HostTensor<T>,
    opts: &AttnOptions,
) -> Result<BackwardOutput<T>> {
    let (p, modifiers) = validate(q, k, v, opts)?;
    p.check_input_like_o(Arg::O, &o.layout, o.data.len())?;
    p.check_input_like_o(Arg::DO, &d_o.layout, d_o.data.len())?;
    p.check_lse_len(lse.len())?;
    let delta = row_deltas(&p, o, d_o);
    let packed: Vec<PackedKv> = (0..p.batch * p.heads_kv)
        .into_par_iter()
        .map(|bkv| PackedKv::for_backward(k, v, bkv / p.heads_kv, bkv % p.heads_kv))
        .collect();
    let ctx = Context { p: &p, modifiers: &modifiers, q, d_o, lse, delta: &delta, packed: &packed };

    let (dk, dv) = ctx.key_gradients();
    let (dq, d_sinks) = ctx.query_gradients();
    Ok(BackwardOutput {
        dq: contiguous([p.batch, p.seqlen_q, p.heads_q, p.head_dim], dq),
        dk: contiguous([p.batch, p.seqlen_k, p.heads_kv, p.head_dim], dk),
        dv: contiguous([p.batch, p.seqlen_k, p.heads_kv, p.head_dim_v], dv),
        d_sinks: p.sinks.then_some(d_sinks),
    })
}

/// delta = rowsum(dO ∘ O) per (batch, query head, row), `[batch, heads_q, seqlen_q]` as the LSE.
fn row_deltas<T: Element>(p: &AttnProblem, o: &HostTensor<T>, d_o: &HostTensor<T>) -> Vec<f32> {
    let mut delta = vec![0.0f32; p.lse_len()];
    delta.par_chunks_mut(p.seqlen_q).enumerate().for_each(|(bh, rows)| {
        let (b, h) = (bh / p.heads_q, bh % p.heads_q);
        for (i, x) in rows.iter_mut().enumerate() {
            let (oo, od) = (o.layout.offset(b, i, h, 0), d_o.layout.offset(b, i, h, 0));
            let pairs = o.data[oo..oo + p.head_dim_v].iter().zip(&d_o.data[od..od + p.head_dim_v]);
            *x = pairs.map(|(a, g)| a.to_f32() * g.to_f32()).sum();
        }
    });
    delta
}

/// An f32 gradient in `[batch, seqlen, heads, head_dim]` order rounded into a contiguous tensor.
fn contiguous<T: Element>(shape: [usize; 4], values: Vec<f32>) -> HostTensor<T> {
    HostTensor { data: values.into_iter().map(T::from_f32).collect(), layout: Layout::contiguous(shape) }
}

struct Context<'a, T> {
    p: &'a AttnProblem,
    modifiers: &'a Modifiers<'a>,
    q: &'a HostTensor<T>,
    d_o: &'a HostTensor<T>,
    lse: &'a [f32],
    delta: &'a [f32],
    /// K and V of each (batch, kv head), in that order.
    packed: &'a [PackedKv],
}

/// One query block's inputs for the tiles: Q and dO rows in f32, the rows' LSE and delta.
struct QueryRows {
    first_row: usize,
    q: Vec<f32>,
    d_o: Vec<f32>,
    lse: Vec<f32>,
    delta: Vec<f32>,
}

/// P and dS of one tile, `[rows, BLOCK_K]` (0 where a row does not see a key).
#[derive(Default)]
struct Tile {
    p: Vec<f32>,
    ds: Vec<f32>,
}

impl<T: Element> Context<'_, T> {
    fn query_rows(&self, b: usize, h: usize, first_row: usize) -> QueryRows {
        let p = self.p;
        let rows = BLOCK_Q.min(p.seqlen_q - first_row);
        let at = (b * p.heads_q + h) * p.seqlen_q + first_row;
        QueryRows {
            first_row,
            q: load_rows(self.q, b, h, first_row, rows),
            d_o: load_rows(self.d_o, b, h, first_row, rows),
            lse: self.lse[at..at + rows].to_vec(),
            delta: self.delta[at..at + rows].to_vec(),
        }
    }

    /// The keys some row of the query block from `first_row` sees (`tiled::union_of_rows`).
    fn block_keys(&self, first_row: usize) -> Range<usize> {
        let rows = first_row..(first_row + BLOCK_Q).min(self.p.seqlen_q);
        union_of_rows(&rows.map(|i| self.p.key_range(i)).collect::<Vec<_>>())
    }

    /// P and dS of the tile (query rows `x` of head `h` in batch `b`, the `keys` keys from `first_key`),
    /// into `tile`, a task's buffers reused from tile to tile (every element is written).
    #[allow(clippy::too_many_arguments)]
    fn tile(&self, b: usize, h: usize, x: &QueryRows, kv: &PackedKv, first_key: usize, keys: usize, tile: &mut Tile) {
        let (p, m) = (self.p, self.modifiers);
        let rows = x.lse.len();
        let (s, dp) = (&mut tile.p, &mut tile.ds);
        s.resize(rows * BLOCK_K, 0.0);
        dp.resize(rows * BLOCK_K, 0.0);
        scores(&x.q, kv.kt_tile(first_key), s, p.head_dim, keys, m.score_scale(p));
        scores(&x.d_o, kv.vt_tile(first_key), dp, p.head_dim_v, keys, 1.0);
        let alibi_slope = m.alibi_slope(p, b, h);
        for r in 0..rows {
            let i = x.first_row + r;
            let range = p.key_range(i);
            let clip = |key: usize| key.clamp(first_key, first_key + keys) - first_key;
            let visible = clip(range.start)..clip(range.end);
            let (s_row, dp_row) = (&mut s[r * BLOCK_K..][..BLOCK_K], &mut dp[r * BLOCK_K..][..BLOCK_K]);
            // A row that saw no key (LSE = −inf without a sink) has P = 0 everywhere.
            let lse = x.lse[r];
            let seen = if lse == f32::NEG_INFINITY { 0..0 } else { visible };
            let (s_seen, dp_seen) = (&mut s_row[seen.clone()], &mut dp_row[seen.clone()]);
            if let Some(cap) = m.softcap {
                softcap_in_place(s_seen, cap);
                // dS takes the softcap's derivative 1 − tanh², from the capped score before ALiBi.
                for (g, &capped) in dp_seen.iter_mut().zip(s_seen.iter()) {
                    let t = capped / cap;
                    *g = (*g - x.delta[r]) * (1.0 - t * t);
                }
            } else {
                for g in dp_seen.iter_mut() {
                    *g -= x.delta[r];
                }
            }
            if let Some(slope) = alibi_slope {
                add_alibi(p, s_seen, i, first_key + seen.start, slope);
            }
            for (prob, g) in s_seen.iter_mut().zip(dp_seen.iter_mut()) {
                *prob = (*prob - lse).exp();
                *g *= *prob;
            }
            s_row[..seen.start].fill(0.0);
            s_row[seen.end..].fill(0.0);
            dp_row[..seen.start].fill(0.0);
            dp_row[seen.end..].fill(0.0);
        }
    }

    /// dK and dV, `[batch, seqlen_k, heads_kv, head_dim(_v)]` in f32: one task per (batch, kv head, key
    /// block), over every query head of the group and every query block that sees the block.
    fn key_gradients(&self) -> (Vec<f32>, Vec<f32>) {
        let p = self.p;
        let (d, d_v, group) = (p.head_dim, p.head_dim_v, p.group_size());
        let key_blocks = p.seqlen_k.div_ceil(BLOCK_K);
        let query_blocks: Vec<(usize, Range<usize>)> =
            (0..p.seqlen_q).step_by(BLOCK_Q).map(|first_row| (first_row, self.block_keys(first_row))).collect();
        let blocks: Vec<(Vec<f32>, Vec<f32>)> = (0..p.batch * p.heads_kv * key_blocks)
            .into_par_iter()
            .map(|task| {
                let (bkv, kb) = (task / key_blocks, task % key_blocks);
                let (b, hkv) = (bkv / p.heads_kv, bkv % p.heads_kv);
                let (first_key, kv) = (kb * BLOCK_K, &self.packed[bkv]);
                let keys = BLOCK_K.min(p.seqlen_k - first_key);
                let (mut dk, mut dv) = (vec![0.0f32; keys * d], vec![0.0f32; keys * d_v]);
                let (mut transposed, mut tile) = (vec![0.0f32; keys * BLOCK_K], Tile::default());
                for h in hkv * group..(hkv + 1) * group {
                    for (first_row, seen) in &query_blocks {
                        if seen.end <= first_key || first_key + keys <= seen.start {
                            continue;
                        }
                        let x = self.query_rows(b, h, *first_row);
                        self.tile(b, h, &x, kv, first_key, keys, &mut tile);
                        let rows = x.lse.len();
                        transpose(&tile.p, rows, keys, &mut transposed);
                        accumulate_pv(&transposed, &x.d_o, &mut dv, d_v, rows);
                        transpose(&tile.ds, rows, keys, &mut transposed);
                        accumulate_pv(&transposed, &x.q, &mut dk, d, rows);
                    }
                }
                dk.iter_mut().for_each(|g| *g *= p.softmax_scale);
                (dk, dv)
            })
            .collect();
        let mut dk = vec![0.0f32; p.batch * p.seqlen_k * p.heads_kv * d];
        let mut dv = vec![0.0f32; p.batch * p.seqlen_k * p.heads_kv * d_v];
        for (task, (block_dk, block_dv)) in blocks.iter().enumerate() {
            let (bkv, kb) = (task / key_blocks, task % key_blocks);
            let (b, hkv) = (bkv / p.heads_kv, bkv % p.heads_kv);
            for (r, (gk, gv)) in block_dk.chunks_exact(d).zip(block_dv.chunks_exact(d_v)).enumerate() {
                let row = (b * p.seqlen_k + kb * BLOCK_K + r) * p.heads_kv + hkv;
                dk[row * d..][..d].copy_from_slice(gk);
                dv[row * d_v..][..d_v].copy_from_slice(gv);
            }
        }
        (dk, dv)
    }

    /// dQ, `[batch, seqlen_q, heads_q, head_dim]` in f32, one task per (batch, query head, query block);
    /// and the sinks' gradients d_sink_h = −Σ exp(sink_h − LSE_i) · delta_i over the batch's rows.
    fn query_gradients(&self) -> (Vec<f32>, Vec<f32>) {
        let p = self.p;
        let (d, group) = (p.head_dim, p.group_size());
        let query_blocks = p.seqlen_q.div_ceil(BLOCK_Q);
        let blocks: Vec<(Vec<f32>, f32)> = (0..p.batch * p.heads_q * query_blocks)
            .into_par_iter()
            .map(|task| {
                let (bh, qb) = (task / query_blocks, task % query_blocks);
                let (b, h) = (bh / p.heads_q, bh % p.heads_q);
                let kv = &self.packed[b * p.heads_kv + h / group];
                let x = self.query_rows(b, h, qb * BLOCK_Q);
                let mut dq = vec![0.0f32; x.lse.len() * d];
                let (seen, mut tile) = (self.block_keys(x.first_row), Tile::default());
                for first_key in (seen.start / BLOCK_K * BLOCK_K..seen.end).step_by(BLOCK_K) {
                    let keys = BLOCK_K.min(p.seqlen_k - first_key);
                    self.tile(b, h, &x, kv, first_key, keys, &mut tile);
                    accumulate_pv(&tile.ds, kv.k_rows(first_key, keys), &mut dq, d, keys);
                }
                dq.iter_mut().for_each(|g| *g *= p.softmax_scale);
                let d_sink = match self.modifiers.sinks {
                    Some(sinks) => {
                        -x.lse.iter().zip(&x.delta).map(|(&lse, &delta)| (sinks[h] - lse).exp() * delta).sum::<f32>()
                    }
                    None => 0.0,
                };
                (dq, d_sink)
            })
            .collect();
        let mut dq = vec![0.0f32; p.batch * p.seqlen_q * p.heads_q * d];
        let mut d_sinks = vec![0.0f32; p.heads_q];
        for (task, (block_dq, d_sink)) in blocks.iter().enumerate() {
            let (bh, qb) = (task / query_blocks, task % query_blocks);
            let (b, h) = (bh / p.heads_q, bh % p.heads_q);
            for (r, g) in block_dq.chunks_exact(d).enumerate() {
                let row = (b * p.seqlen_q + qb * BLOCK_Q + r) * p.heads_q + h;
                dq[row * d..][..d].copy_from_slice(g);
            }
            // In task order: the same sum whatever the thread count.
            d_sinks[h] += d_sink;
        }
        (dq, d_sinks)
    }
}

/// `out[c][r] = tile[r][c]` for the `rows × keys` corner of a `[rows, BLOCK_K]` tile, `out` being
/// `[keys, BLOCK_K]` (the microkernel's `p` operand with the rows as its inner dimension).
fn transpose(tile: &[f32], rows: usize, keys: usize, out: &mut [f32]) {
    for c in 0..keys {
        for r in 0..rows {
            out[c * BLOCK_K + r] = tile[r * BLOCK_K + c];
        }
    }
}
