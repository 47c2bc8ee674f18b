//! The ring on the CPU: every rank's steps run in turn in one process, in f64 (each step call's
//! sequences through the reference, the merges and sums in the ring's order). It is
//! the GPU ring's algorithm without the communication, so that the step plans and the merge are checked
//! against single-sequence attention where there is no GPU (tests/cpu_ring.rs), and a reference for the
//! GPU ring's shards.

use super::check_ring_options;
use super::shard::{RingMask, Sharding, StepPlan};
use crate::cpu::reference::{reference_backward_given_o_lse_shifted, reference_forward_shifted};
use crate::dtype::Element;
use crate::error::{Arg, Error, Result};
use crate::layout::Layout;
use crate::options::{AttnOptions, PerHead, Window};
use crate::problem::host_per_head;
use crate::tensor::HostTensor;
use std::ops::Range;

/// Rank `rank`'s shard of a `[batch, seqlen, heads, dim]` tensor: its chunks of every batch entry, in
/// order, contiguous `[batch, shard_len, heads, dim]`.
pub fn shard<T: Element>(full: &HostTensor<T>, sharding: &Sharding, rank: usize) -> HostTensor<T> {
    let [batch, _, heads, dim] = full.shape();
    let len = sharding.shard_len(rank);
    let mut data = Vec::with_capacity(batch * len * heads * dim);
    for b in 0..batch {
        for s in sharding.chunks(rank).into_iter().flatten() {
            for h in 0..heads {
                let at = full.layout.offset(b, s, h, 0);
                data.extend_from_slice(&full.data[at..at + dim]);
            }
        }
    }
    HostTensor { data, layout: Layout::contiguous([batch, len, heads, dim]) }
}

/// Per-rank `[batch, shard_len, heads, dim]` rows (row-major, any element) back into the global
/// `[batch, seqlen, heads, dim]` order.
pub fn unshard<E: Copy + Default>(parts: &[Vec<E>], sharding: &Sharding, batch: usize, row: usize) -> Vec<E> {
    let mut out = vec![E::default(); batch * sharding.seqlen * row];
    for (rank, part) in parts.iter().enumerate() {
        let len = sharding.shard_len(rank);
        for b in 0..batch {
            for (i, s) in sharding.chunks(rank).into_iter().flatten().enumerate() {
                let src = (b * len + i) * row;
                let dst = (b * sharding.seqlen + s) * row;
                out[dst..dst + row].copy_from_slice(&part[src..src + row]);
            }
        }
    }
    out
}

/// Per-rank LSEs `[heads, batch·shard_len]` (the ring's layout) in the dense call's `[batch, heads,
/// seqlen]` order.
pub fn unshard_lse<E: Copy + Default>(parts: &[Vec<E>], sharding: &Sharding, batch: usize, heads: usize) -> Vec<E> {
    let n = sharding.seqlen;
    let mut out = vec![E::default(); batch * heads * n];
    for (rank, part) in parts.iter().enumerate() {
        let len = sharding.shard_len(rank);
        for h in 0..heads {
            for b in 0..batch {
                for (i, s) in sharding.chunks(rank).into_iter().flatten().enumerate() {
                    out[(b * heads + h) * n + s] = part[h * batch * len + b * len + i];
                }
            }
        }
    }
    out
}

/// One rank's forward result: O `[batch, shard_len, heads_q, head_dim_v]` and the LSE `[heads_q,
/// batch·shard_len]` (natural log), in f64.
#[derive(Debug, Clone)]
pub struct RingForward {
    pub o: Vec<f64>,
    pub lse: Vec<f64>,
}

/// One rank's gradients, shaped like its shards of q, k and v, and the sinks' gradient (the same on
/// every rank: the sum over the whole sequence).
#[derive(Debug, Clone)]
pub struct RingBackward {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    pub d_sinks: Option<Vec<f64>>,
}

/// The shapes every rank's shards must have: `world` tensors, rank r's of `shard_len(r)` tokens.
fn check_shards<T: Element>(arg: Arg, shards: &[&HostTensor<T>], sharding: &Sharding) -> Result<()> {
    if shards.len() != sharding.world {
        return Err(Error::ShapeMismatch {
            arg,
            what: "number of shards",
            got: shards.len(),
            expected: sharding.world,
            why: "one shard per rank",
        });
    }
    for (rank, t) in shards.iter().enumerate() {
        if t.shape()[1] != sharding.shard_len(rank) {
            return Err(Error::ShapeMismatch {
                arg,
                what: "seqlen",
                got: t.shape()[1],
                expected: sharding.shard_len(rank),
                why: "a rank's shard holds its chunks of the sequence (ring::Sharding::shard_len)",
            });
        }
    }
    Ok(())
}

/// The ring forward in f64 over every rank's shards (rank r's `q[r]`, `k[r]`, `v[r]`, each
/// `[batch, shard_len(r), heads, dim]`), with the GPU ring's step calls (`Sharding::step_plans`): each
/// call's sequences through the reference (their diagonals shifted where the mask is positional), its
/// O and LSE over all of the shard's rows merged in call order. Options as the GPU ring takes them
/// (ALiBi slopes and sinks on the host).
pub fn forward<T: Element>(
    q: &[&HostTensor<T>],
    k: &[&HostTensor<T>],
    v: &[&HostTensor<T>],
    sharding: &Sharding,
    opts: &AttnOptions,
) -> Result<Vec<RingForward>> {
    check_ring_options(opts, sharding)?;
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v)] {
        check_shards(arg, t, sharding)?;
    }
    let (_, sinks) = host_per_head(opts)?;
    // The steps run without sinks; the merge adds each head's once.
    let step_opts = AttnOptions { sinks: None, ..*opts };
    let mask = RingMask::of(opts);
    let mut out = Vec::with_capacity(sharding.world);
    for rank in 0..sharding.world {
        let [batch, len_q, heads_q, _] = q[rank].shape();
        let dv = v[rank].shape()[3];
        let rows = heads_q * batch * len_q;
        let mut o = vec![0.0; rows * dv];
        let mut lse = vec![f64::NEG_INFINITY; rows];
        for step in 0..sharding.world {
            let source = sharding.source(rank, step);
            for plan in sharding.step_plans(rank, step, &mask) {
                // The call's O `[batch·len, heads, dv]` and LSE `[heads, batch·len]`, as the packed call
                // writes them (rows in no sequence with keys: O 0, LSE -inf).
                let mut o_step = vec![0.0; rows * dv];
                let mut lse_step = vec![f64::NEG_INFINITY; rows];
                for b in 0..batch {
                    let call = AttnOptions { causal: plan.causal, ..entry_options(&step_opts, &plan, b, heads_q)? };
                    for (i, (qs, ks)) in plan.sequences.iter().enumerate() {
                        if qs.is_empty() || ks.is_empty() {
                            continue;
                        }
                        let shift = plan.shifts.as_ref().map_or(0, |s| s[i] as i64);
                        let (qb, kb, vb) =
                            (rows_of(q[rank], b, qs), rows_of(k[source], b, ks), rows_of(v[source], b, ks));
                        let part = reference_forward_shifted(&qb, &kb, &vb, &call, shift)?;
                        for h in 0..heads_q {
                            for (a, t) in qs.clone().enumerate() {
                                let token = b * len_q + t;
                                lse_step[h * batch * len_q + token] = part.lse[h * qs.len() + a];
                                let (dst, src) = ((token * heads_q + h) * dv, (a * heads_q + h) * dv);
                                o_step[dst..dst + dv].copy_from_slice(&part.o[src..src + dv]);
                            }
                        }
                    }
                }
                merge(&mut o, &mut lse, &o_step, &lse_step, heads_q, dv, None);
            }
        }
        if let Some(sinks) = sinks {
            let zeros = vec![0.0; o.len()];
            merge(&mut o, &mut lse, &zeros, &vec![f64::NEG_INFINITY; rows], heads_q, dv, Some(sinks));
        }
        out.push(RingForward { o, lse });
    }
    Ok(out)
}

/// The options of batch entry `b`'s sequences in a call of `plan`: its row of `[batch, heads_q]` ALiBi
/// slopes, the window only in positional calls (elsewhere a causal call's right edge, which hides
/// nothing more), as the GPU ring's calls take them.
fn entry_options<'a>(opts: &AttnOptions<'a>, plan: &StepPlan, b: usize, heads_q: usize) -> Result<AttnOptions<'a>> {
    let (slopes, _) = host_per_head(opts)?;
    let window = if plan.shifts.is_some() { opts.window } else { Window::default() };
    let alibi_slopes = match slopes {
        Some(s) if s.len() > heads_q => Some(PerHead::Host(&s[b * heads_q..(b + 1) * heads_q])),
        _ => opts.alibi_slopes,
    };
    Ok(AttnOptions { alibi_slopes, window, ..*opts })
}

/// Folds a step's O and LSE (`[tokens, heads, dv]`, `[heads, tokens]`) into the running ones, with the
/// heads' sinks as one more term without a value when given: the merge the GPU ring's kernel does.
fn merge(
    o: &mut [f64],
    lse: &mut [f64],
    o_step: &[f64],
    lse_step: &[f64],
    heads: usize,
    dv: usize,
    sinks: Option<&[f32]>,
) {
    let tokens = lse.len() / heads;
    for h in 0..heads {
        let sink = sinks.map_or(f64::NEG_INFINITY, |s| s[h] as f64);
        for t in 0..tokens {
            let (a, b) = (lse[h * tokens + t], lse_step[h * tokens + t]);
            let max = a.max(b).max(sink);
            if max == f64::NEG_INFINITY {
                continue;
            }
            let total = max + ((a - max).exp() + (b - max).exp() + (sink - max).exp()).ln();
            let (wa, wb) = ((a - total).exp(), (b - total).exp());
            let row = (t * heads + h) * dv;
            for d in 0..dv {
                o[row + d] = wa * o[row + d] + wb * o_step[row + d];
            }
            lse[h * tokens + t] = total;
        }
    }
}

/// The ring backward in f64: every rank's gradients for the upstream gradients `d_o[r]`, from the
/// forward's shards, its O (`o[r]`, shaped like O) and its LSE (`lse[r]`, `[heads_q, batch·shard_len]`,
/// as [`forward`] returns it). Each step's share comes from the exact gradients given O and the whole
/// row's LSE (`reference_backward_given_o_lse`) over the step's sequences; dK and dV are summed in the
/// ring's order (the keys of rank t get rank t's share first, then rank t + 1's, ...), the sinks'
/// gradient (each rank's at its step 0) over the ranks in rank order.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    q: &[&HostTensor<T>],
    k: &[&HostTensor<T>],
    v: &[&HostTensor<T>],
    o: &[&HostTensor<T>],
    lse: &[&[f64]],
    d_o: &[&HostTensor<T>],
    sharding: &Sharding,
    opts: &AttnOptions,
) -> Result<Vec<RingBackward>> {
    check_ring_options(opts, sharding)?;
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v), (Arg::O, o), (Arg::DO, d_o)] {
        check_shards(arg, t, sharding)?;
    }
    let world = sharding.world;
    let mut dk: Vec<Vec<f64>> = k.iter().map(|t| vec![0.0; t.layout.numel()]).collect();
    let mut dv: Vec<Vec<f64>> = v.iter().map(|t| vec![0.0; t.layout.numel()]).collect();
    let mut dq: Vec<Vec<f64>> = q.iter().map(|t| vec![0.0; t.layout.numel()]).collect();
    let mut d_sinks: Option<Vec<f64>> = None;
    let mask = RingMask::of(opts);
    // Step by step over all ranks, so that the keys' sums run in the ring's order.
    for step in 0..world {
        for rank in 0..world {
            let source = sharding.source(rank, step);
            let [batch, len_q, heads_q, _] = q[rank].shape();
            if lse[rank].len() != heads_q * batch * len_q {
                return Err(Error::ShapeMismatch {
                    arg: Arg::Lse,
                    what: "length",
                    got: lse[rank].len(),
                    expected: heads_q * batch * len_q,
                    why: "one value per (q head, token of the shard)",
                });
            }
            for (call_index, plan) in sharding.step_plans(rank, step, &mask).into_iter().enumerate() {
                // The sinks' gradient is the rows' own (no keys in it): taken at step 0's first call only
                // (whose sequences hold every query with keys: the shard's own chunks' diagonal pairs).
                let sinks = if step == 0 && call_index == 0 { opts.sinks } else { None };
                for b in 0..batch {
                    let call = AttnOptions { causal: plan.causal, sinks, ..entry_options(opts, &plan, b, heads_q)? };
                    for (i, (qs, ks)) in plan.sequences.iter().enumerate() {
                        if qs.is_empty() || ks.is_empty() {
                            continue;
                        }
                        let shift = plan.shifts.as_ref().map_or(0, |s| s[i] as i64);
                        let row_lse: Vec<f64> = (0..heads_q)
                            .flat_map(|h| qs.clone().map(move |i| (h, i)))
                            .map(|(h, i)| lse[rank][h * batch * len_q + b * len_q + i])
                            .collect();
                        let (qb, ob, dob) =
                            (rows_of(q[rank], b, qs), rows_of(o[rank], b, qs), rows_of(d_o[rank], b, qs));
                        let (kb, vb) = (rows_of(k[source], b, ks), rows_of(v[source], b, ks));
                        let g =
                            reference_backward_given_o_lse_shifted(&qb, &kb, &vb, &ob, &row_lse, &dob, &call, shift)?;
                        add_rows(&mut dq[rank], &g.dq, q[rank].shape(), b, qs);
                        add_rows(&mut dk[source], &g.dk, k[source].shape(), b, ks);
                        add_rows(&mut dv[source], &g.dv, v[source].shape(), b, ks);
                        if let Some(part) = g.d_sinks {
                            add(d_sinks.get_or_insert_with(|| vec![0.0; part.len()]), &part);
                        }
                    }
                }
            }
        }
    }
    Ok((0..world)
        .map(|r| RingBackward {
            dq: std::mem::take(&mut dq[r]),
            dk: std::mem::take(&mut dk[r]),
            dv: std::mem::take(&mut dv[r]),
            d_sinks: d_sinks.clone(),
        })
        .collect())
}

/// Tokens `range` of batch entry `b` as a `[1, len, heads, dim]` tensor.
fn rows_of<T: Element>(t: &HostTensor<T>, b: usize, range: &Range<usize>) -> HostTensor<T> {
    let [_, _, heads, dim] = t.shape();
    let mut data = Vec::with_capacity(range.len() * heads * dim);
    for s in range.clone() {
        for h in 0..heads {
            let at = t.layout.offset(b, s, h, 0);
            data.extend_from_slice(&t.data[at..at + dim]);
        }
    }
    HostTensor { data, layout: Layout::contiguous([1, range.len(), heads, dim]) }
}

/// Adds `[1, len, heads, dim]` rows into tokens `range` of batch entry `b` of a contiguous `shape`.
fn add_rows(acc: &mut [f64], part: &[f64], [_, len, heads, dim]: [usize; 4], b: usize, range: &Range<usize>) {
    let row = heads * dim;
    add(&mut acc[(b * len + range.start) * row..(b * len + range.end) * row], part);
}

fn add(acc: &mut [f64], part: &[f64]) {
    for (a, p) in acc.iter_mut().zip(part) {
        *a += p;
    }
}
