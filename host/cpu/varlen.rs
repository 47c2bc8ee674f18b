//! Variable-length batches (FlashAttention's `varlen`) on the CPU: sequences of different lengths
//! packed along the token dimension, each attended on its own (its causal diagonal and windows aligned
//! bottom-right within the sequence, as FlashAttention does). Every sequence goes through a dense
//! call, the f64 reference (`reference.rs`) or the tiled path (`tiled.rs`), so the score rules stay in
//! one place.

use super::reference::{reference_backward_given_o, reference_forward};
use super::tiled::{self, ForwardOutput};
use crate::dtype::Element;
use crate::error::{Arg, Error, Result};
use crate::layout::Layout;
use crate::options::{AttnOptions, PerHead};
use crate::problem::{host_per_head, AttnProblem};
use crate::tensor::HostTensor;
use std::ops::Range;

/// The sequences of a packed batch: sequence b's queries are the tokens `cu_seqlens_q[b] ..
/// cu_seqlens_q[b + 1]` of q (and O, dO), its keys the tokens `cu_seqlens_k[b] .. cu_seqlens_k[b + 1]`
/// of k and v. Both hold batch + 1 offsets that start at 0, never decrease and end at their tensors'
/// token counts; a sequence may be empty. Tensors are `[1, tokens, heads, head_dim]`.
#[derive(Debug, Clone, Copy)]
pub struct Varlen<'a> {
    pub cu_seqlens_q: &'a [i32],
    pub cu_seqlens_k: &'a [i32],
}

impl Varlen<'_> {
    /// The number of sequences, after checking both offset lists against the token counts.
    pub fn batch(&self, tokens_q: usize, tokens_k: usize) -> Result<usize> {
        check_offsets(Arg::CuSeqlensQ, self.cu_seqlens_q, tokens_q)?;
        check_offsets(Arg::CuSeqlensK, self.cu_seqlens_k, tokens_k)?;
        if self.cu_seqlens_q.len() != self.cu_seqlens_k.len() {
            return Err(Error::ShapeMismatch {
                arg: Arg::CuSeqlensK,
                what: "length",
                got: self.cu_seqlens_k.len(),
                expected: self.cu_seqlens_q.len(),
                why: "one offset per sequence and one more, as cu_seqlens_q",
            });
        }
        Ok(self.cu_seqlens_q.len() - 1)
    }

    /// Sequence b's query and key tokens.
    fn tokens(&self, b: usize) -> (Range<usize>, Range<usize>) {
        let range = |cu: &[i32]| cu[b] as usize..cu[b + 1] as usize;
        (range(self.cu_seqlens_q), range(self.cu_seqlens_k))
    }
}

fn check_offsets(arg: Arg, cu: &[i32], tokens: usize) -> Result<()> {
    let bad = |why: String| Err(Error::BadSeqlenOffsets { arg, why });
    if cu.len() < 2 {
        return bad(format!("{} offsets; a batch of b sequences has b + 1", cu.len()));
    }
    if cu[0] != 0 {
        return bad(format!("starts at {}, not 0", cu[0]));
    }
    if let Some(i) = cu.windows(2).position(|w| w[1] < w[0]) {
        return bad(format!("decreases from {} to {} at index {}", cu[i], cu[i + 1], i + 1));
    }
    if cu[cu.len() - 1] as usize != tokens {
        return bad(format!("ends at {}, but the tensor holds {tokens} tokens", cu[cu.len() - 1]));
    }
    Ok(())
}

/// Exact varlen forward: O `[1, tokens_q, heads_q, head_dim_v]` contiguous and the LSE
/// `[heads_q, tokens_q]` (FlashAttention's varlen layout), per sequence as `reference_forward` gives
/// them; a sequence without keys gives O = 0 and LSE = −inf (its sink logit with sinks).
#[derive(Debug, Clone)]
pub struct VarlenReferenceForward {
    pub o: Vec<f64>,
    pub lse: Vec<f64>,
}

/// Exact varlen gradients: dQ `[1, tokens_q, heads_q, head_dim]`, dK `[1, tokens_k, heads_kv,
/// head_dim]`, dV `[1, tokens_k, heads_kv, head_dim_v]`, contiguous; sink gradients summed over the
/// sequences.
#[derive(Debug, Clone)]
pub struct VarlenReferenceBackward {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    pub d_sinks: Option<Vec<f64>>,
}

/// The varlen forward in f64. ALiBi slopes are `[heads_q]` or `[batch, heads_q]` (one row per
/// sequence); sinks `[heads_q]`.
pub fn reference_forward_varlen<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    seqs: &Varlen,
    opts: &AttnOptions,
) -> Result<VarlenReferenceForward> {
    let (o, lse) = each_sequence(q, k, v, seqs, opts, (0.0, |x| x), |q, k, v, opts| {
        let r = reference_forward(q, k, v, opts)?;
        Ok((r.o, r.lse))
    })?;
    Ok(VarlenReferenceForward { o, lse })
}

/// The varlen forward on the CPU's tiled path (`tiled::forward`, f32, multithreaded), in the layouts of
/// the GPU's `flash_forward_varlen`: O `[1, tokens_q, heads_q, head_dim_v]` contiguous and the f32 LSE
/// `[heads_q, tokens_q]` (a `ForwardOutput` of one batch row); a sequence without keys gives O = 0 and
/// LSE = −inf (its sink logit with sinks). Options as [`reference_forward_varlen`] takes them.
pub fn forward_varlen<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    seqs: &Varlen,
    opts: &AttnOptions,
) -> Result<ForwardOutput<T>> {
    let keyless = |x: f64| x as f32;
    let (o, lse) = each_sequence(q, k, v, seqs, opts, (T::from_f32(0.0), keyless), |q, k, v, opts| {
        let r = tiled::forward(q, k, v, opts)?;
        Ok((r.o.data, r.lse))
    })?;
    let [_, tokens_q, heads_q, _] = q.shape();
    let o = HostTensor { data: o, layout: Layout::contiguous([1, tokens_q, heads_q, v.shape()[3]]) };
    Ok(ForwardOutput { o, lse })
}

/// One forward per sequence of a packed batch, its tokens copied out and its ALiBi row taken
/// (`attend` gives contiguous O `[1, n, heads_q, head_dim_v]` and the LSE `[heads_q, n]`), gathered into
/// O `[tokens_q, heads_q, head_dim_v]` and the LSE `[heads_q, tokens_q]`. A sequence without keys gets
/// O = `zero` and its keyless LSE (`lse_of` of the f64 value): the score rules stay in `attend`.
#[allow(clippy::type_complexity)]
fn each_sequence<T: Element, O: Copy, L: Copy>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    seqs: &Varlen,
    opts: &AttnOptions,
    (zero, lse_of): (O, fn(f64) -> L),
    mut attend: impl FnMut(&HostTensor<T>, &HostTensor<T>, &HostTensor<T>, &AttnOptions) -> Result<(Vec<O>, Vec<L>)>,
) -> Result<(Vec<O>, Vec<L>)> {
    let batch = check_packed(q, k, v, seqs, opts)?;
    let [_, tokens_q, heads_q, _] = q.shape();
    let head_dim_v = v.shape()[3];
    let mut o = vec![zero; tokens_q * heads_q * head_dim_v];
    let mut lse = vec![lse_of(f64::NEG_INFINITY); heads_q * tokens_q];
    let (slopes, sinks) = host_per_head(opts)?;
    for b in 0..batch {
        let (qs, ks) = seqs.tokens(b);
        if qs.is_empty() {
            continue;
        }
        if ks.is_empty() {
            // No key: O stays 0, the LSE is the sink's logit (all the probability) or −inf.
            for h in 0..heads_q {
                lse[h * tokens_q + qs.start..h * tokens_q + qs.end].fill(lse_of(keyless_lse(sinks, h)));
            }
            continue;
        }
        let slopes_b = sequence_slopes(slopes, b, heads_q);
        let opts_b = AttnOptions { alibi_slopes: slopes_b.map(PerHead::Host), ..*opts };
        let (o_b, lse_b) = attend(&tokens(q, 0, qs.clone()), &tokens(k, 0, ks.clone()), &tokens(v, 0, ks), &opts_b)?;
        let width = heads_q * head_dim_v;
        o[qs.start * width..qs.end * width].copy_from_slice(&o_b);
        for h in 0..heads_q {
            let n = qs.len();
            lse[h * tokens_q + qs.start..h * tokens_q + qs.end].copy_from_slice(&lse_b[h * n..(h + 1) * n]);
        }
    }
    Ok((o, lse))
}

/// The varlen gradients in f64 for the upstream gradient `d_o` (shaped like O), with rowsum(dO ∘ O)
/// taken from the given `o`, as `reference_backward_given_o` does per sequence.
pub fn reference_backward_varlen<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    o: &HostTensor<T>,
    d_o: &HostTensor<T>,
    seqs: &Varlen,
    opts: &AttnOptions,
) -> Result<VarlenReferenceBackward> {
    let batch = check_packed(q, k, v, seqs, opts)?;
    let [_, tokens_q, heads_q, head_dim] = q.shape();
    let [_, tokens_k, heads_kv, head_dim_v] = v.shape();
    for (arg, t) in [(Arg::O, o), (Arg::DO, d_o)] {
        if t.shape() != [1, tokens_q, heads_q, head_dim_v] {
            return Err(Error::ShapeMismatch {
                arg,
                what: "shape",
                got: t.shape().iter().product(),
                expected: tokens_q * heads_q * head_dim_v,
                why: "shaped like O: [1, tokens_q, heads_q, v's head_dim]",
            });
        }
    }
    let mut dq = vec![0.0; tokens_q * heads_q * head_dim];
    let mut dk = vec![0.0; tokens_k * heads_kv * head_dim];
    let mut dv = vec![0.0; tokens_k * heads_kv * head_dim_v];
    let (slopes, sinks) = host_per_head(opts)?;
    let mut d_sinks = sinks.map(|_| vec![0.0; heads_q]);
    for b in 0..batch {
        let (qs, ks) = seqs.tokens(b);
        // A sequence without queries or without keys adds nothing: its dQ rows, dK and dV rows and
        // the sinks' share (O = 0 there, so rowsum(dO ∘ O) = 0) are all zero.
        if qs.is_empty() || ks.is_empty() {
            continue;
        }
        let slopes_b = sequence_slopes(slopes, b, heads_q);
        let opts_b = AttnOptions { alibi_slopes: slopes_b.map(PerHead::Host), ..*opts };
        let (qb, kb, vb) = (tokens(q, 0, qs.clone()), tokens(k, 0, ks.clone()), tokens(v, 0, ks.clone()));
        let r =
            reference_backward_given_o(&qb, &kb, &vb, &tokens(o, 0, qs.clone()), &tokens(d_o, 0, qs.clone()), &opts_b)?;
        dq[qs.start * heads_q * head_dim..qs.end * heads_q * head_dim].copy_from_slice(&r.dq);
        dk[ks.start * heads_kv * head_dim..ks.end * heads_kv * head_dim].copy_from_slice(&r.dk);
        dv[ks.start * heads_kv * head_dim_v..ks.end * heads_kv * head_dim_v].copy_from_slice(&r.dv);
        if let (Some(total), Some(part)) = (d_sinks.as_mut(), r.d_sinks) {
            total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
        }
    }
    Ok(VarlenReferenceBackward { dq, dk, dv, d_sinks })
}

/// The packed tensors (shapes, strides and options as the dense call checks them, batch dims 1), the
/// sequences and the ALiBi slopes' length, checked; the number of sequences.
fn check_packed<T: Element>(
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    seqs: &Varlen,
    opts: &AttnOptions,
) -> Result<usize> {
    let tokens = packed_problem((&q.layout, q.data.len()), (&k.layout, k.data.len()), (&v.layout, v.data.len()), opts)?;
    let batch = seqs.batch(tokens.seqlen_q, tokens.seqlen_k)?;
    alibi_rows(opts.alibi_slopes.map(|s| s.len()), tokens.heads_q, batch)?;
    Ok(batch)
}

/// The problem of packed tensors over their token counts: batch dims 1 (a packed batch holds its
/// sequences along the token dimension), then everything the dense call checks except the ALiBi slopes'
/// length, which may have a row per sequence ([`alibi_rows`]). The CPU and GPU varlen calls share it.
pub(crate) fn packed_problem(
    q: (&Layout, usize),
    k: (&Layout, usize),
    v: (&Layout, usize),
    opts: &AttnOptions,
) -> Result<AttnProblem> {
    for (arg, l) in [(Arg::Q, q.0), (Arg::K, k.0), (Arg::V, v.0)] {
        if l.batch() != 1 {
            return Err(Error::ShapeMismatch {
                arg,
                what: "batch",
                got: l.batch(),
                expected: 1,
                why: "a packed batch holds its sequences along the token dimension",
            });
        }
    }
    AttnProblem::new(q, k, v, &AttnOptions { alibi_slopes: None, ..*opts })
}

/// ALiBi slopes of a call over `batch` sequences, of length `len`: `None` without, `Some(false)` for
/// `[heads_q]`, `Some(true)` for one row per sequence (`[batch, heads_q]`); any other length is an error.
pub(crate) fn alibi_rows(len: Option<usize>, heads_q: usize, batch: usize) -> Result<Option<bool>> {
    match len {
        None => Ok(None),
        Some(n) if n == heads_q => Ok(Some(false)),
        Some(n) if n == batch * heads_q => Ok(Some(true)),
        Some(n) => Err(Error::ShapeMismatch {
            arg: Arg::AlibiSlopes,
            what: "length",
            got: n,
            expected: heads_q,
            why: "one f32 slope per query head ([heads_q]) or per (sequence, query head) ([batch, heads_q])",
        }),
    }
}

/// Sequence b's ALiBi slopes: `[heads_q]` as given, or row b of `[batch, heads_q]`.
pub(super) fn sequence_slopes(slopes: Option<&[f32]>, b: usize, heads_q: usize) -> Option<&[f32]> {
    slopes.map(|s| if s.len() == heads_q { s } else { &s[b * heads_q..(b + 1) * heads_q] })
}

/// The LSE of a query row of head `h` that sees no key: its sink's logit (all the probability) or −inf.
pub(super) fn keyless_lse(sinks: Option<&[f32]>, h: usize) -> f64 {
    sinks.map_or(f64::NEG_INFINITY, |s| s[h] as f64)
}

/// Every head of token `from` (batch row, token) of `t` into token `to` of `out`.
pub(super) fn copy_token<T: Element>(
    t: &HostTensor<T>,
    from: (usize, usize),
    out: &mut HostTensor<T>,
    to: (usize, usize),
) {
    let [_, _, heads, dim] = t.shape();
    for h in 0..heads {
        for d in 0..dim {
            out.set(to.0, to.1, h, d, t.get(from.0, from.1, h, d));
        }
    }
}

/// Tokens `range` of batch row `b` of a `[batch, tokens, heads, head_dim]` tensor, as a contiguous
/// `[1, range.len(), heads, head_dim]` tensor.
pub(super) fn tokens<T: Element>(t: &HostTensor<T>, b: usize, range: Range<usize>) -> HostTensor<T> {
    let [_, _, heads, dim] = t.shape();
    let mut out = HostTensor::filled([1, range.len(), heads, dim], T::from_f32(0.0));
    for (s, token) in range.enumerate() {
        copy_token(t, (b, token), &mut out, (0, s));
    }
    out
}
