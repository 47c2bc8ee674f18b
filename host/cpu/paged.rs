//! A paged KV cache (vLLM-style block tables) on the CPU, in the f64 reference and on the tiled path,
//! with FlashAttention's `flash_attn_with_kvcache` semantics: sequence b's keys are its first
//! `cache_seqlens[b]` cache tokens, found through its row of the block table (token t lives in page
//! `block_table[b][t / page_size]` at slot `t % page_size`), followed by the call's new keys, which the
//! call also writes into the cache after the old ones. Queries are aligned with the end of those keys
//! (bottom-right), as in the dense call. Each sequence then goes through a dense call: the reference
//! (`reference.rs`) or the tiled path (`tiled.rs`, [`forward_paged`]).

use super::reference::reference_forward;
use super::tiled::{self, ForwardOutput};
use super::varlen::{alibi_rows, copy_token, keyless_lse, sequence_slopes, tokens};
use crate::dtype::Element;
use crate::error::{Arg, Error, Result};
use crate::layout::Layout;
use crate::options::{AttnOptions, PerHead};
use crate::problem::host_per_head;
use crate::tensor::HostTensor;

/// Exact attention over a paged cache: O `[batch, seqlen_q, heads_q, head_dim_v]` contiguous and the
/// LSE `[batch, heads_q, seqlen_q]`, as the dense call lays them out.
#[derive(Debug, Clone)]
pub struct PagedReferenceForward {
    pub o: Vec<f64>,
    pub lse: Vec<f64>,
}

/// A paged cache: K and V pages `[num_pages, page_size, heads_kv, head_dim]` (V with its own head
/// dim), the block table `[batch, pages_per_seq]` (row-major, page indices) and the cached length of
/// each sequence.
pub struct PagedKv<'a, T> {
    pub k_pages: &'a mut HostTensor<T>,
    pub v_pages: &'a mut HostTensor<T>,
    pub block_table: &'a [i32],
    pub cache_seqlens: &'a [i32],
}

/// The call's new keys and values, `[batch, seqlen_new, heads_kv, head_dim]`: appended to each
/// sequence's cache at `cache_seqlens[b]` (and written into its pages), then attended to.
pub struct KvAppend<'a, T> {
    pub k: &'a HostTensor<T>,
    pub v: &'a HostTensor<T>,
}

/// Rotary position embeddings applied in the call (FlashAttention's `rotary_cos` / `rotary_sin`):
/// `cos` and `sin` are `[positions, rotary_dim / 2]` row-major; the first `rotary_dim` dims of each new
/// key at position p (its place in its sequence's cache) and of each query are rotated, pairs
/// `(x_i, x_{i + rotary_dim/2})` (GPT-NeoX) or, `interleaved`, `(x_{2i}, x_{2i+1})` (GPT-J). Query row i
/// of sequence b sits at `cache_seqlens[b] + i` when the call is causal or windowed, else every query
/// row at `cache_seqlens[b]`, as FlashAttention places them. Rotated values are rounded to the element
/// type (the cache holds them).
#[derive(Debug, Clone, Copy)]
pub struct Rotary<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub rotary_dim: usize,
    pub interleaved: bool,
}

impl Rotary<'_> {
    fn positions(&self) -> usize {
        self.cos.len() / (self.rotary_dim / 2).max(1)
    }

    fn check(&self, head_dim: usize, last_position: usize) -> Result<()> {
        let bad = |why: String| Err(Error::BadPagedCache { arg: Arg::Rotary, why });
        if self.rotary_dim == 0 || self.rotary_dim % 2 != 0 || self.rotary_dim > head_dim {
            return bad(format!(
                "rotary_dim {} must be even, positive and at most head_dim {head_dim}",
                self.rotary_dim
            ));
        }
        if self.cos.len() != self.sin.len() || self.cos.len() % (self.rotary_dim / 2) != 0 {
            return bad(format!(
                "cos and sin hold {} and {} values; both must be [positions, {}]",
                self.cos.len(),
                self.sin.len(),
                self.rotary_dim / 2
            ));
        }
        if last_position >= self.positions() {
            return bad(format!("position {last_position} is used, the tables hold {}", self.positions()));
        }
        Ok(())
    }

    /// Token `s` of batch row `b` of `t`, rotated at `position`, into token `to` of batch row `b_to` of `out`.
    fn rotate<T: Element>(
        &self,
        t: &HostTensor<T>,
        (b, s): (usize, usize),
        position: usize,
        out: &mut HostTensor<T>,
        (b_to, to): (usize, usize),
    ) {
        let [_, _, heads, dim] = t.shape();
        let half = self.rotary_dim / 2;
        for h in 0..heads {
            let x = |d: usize| t.get(b, s, h, d).to_f32() as f64;
            for d in self.rotary_dim..dim {
                out.set(b_to, to, h, d, t.get(b, s, h, d));
            }
            for i in 0..half {
                let (cos, sin) = (self.cos[position * half + i] as f64, self.sin[position * half + i] as f64);
                let (d1, d2) = if self.interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                let (x1, x2) = (x(d1), x(d2));
                out.set(b_to, to, h, d1, T::from_f32((x1 * cos - x2 * sin) as f32));
                out.set(b_to, to, h, d2, T::from_f32((x1 * sin + x2 * cos) as f32));
            }
        }
    }
}

/// Whether rotary embeddings place query row i at `cache_seqlens[b] + i` (when the mask depends on the
/// row: causal or windowed) rather than every row at `cache_seqlens[b]`, as FlashAttention places them.
/// The reference and the GPU's paged step share this rule.
pub(crate) fn queries_move(opts: &AttnOptions) -> bool {
    opts.causal || opts.window.left.is_some() || opts.window.right.is_some()
}

impl<T: Element> PagedKv<'_, T> {
    fn page_size(&self) -> usize {
        self.k_pages.shape()[1]
    }

    fn pages_per_seq(&self, batch: usize) -> usize {
        self.block_table.len() / batch
    }

    /// The page and slot of token `t` of sequence `b`; the caller has checked the table.
    fn slot(&self, b: usize, t: usize, batch: usize) -> (usize, usize) {
        let page = self.block_table[b * self.pages_per_seq(batch) + t / self.page_size()];
        (page as usize, t % self.page_size())
    }

    /// Checks the pages, the table and the lengths (with `new` tokens to append) for `batch` sequences.
    fn check(&self, batch: usize, heads_kv: usize, new: usize) -> Result<()> {
        let [num_pages, page_size, hk, _] = self.k_pages.shape();
        let [vp, vs, vh, _] = self.v_pages.shape();
        let mismatch = |arg, what, got, expected, why| Err(Error::ShapeMismatch { arg, what, got, expected, why });
        if (vp, vs, vh) != (num_pages, page_size, hk) {
            return mismatch(Arg::V, "pages", vp * vs * vh, num_pages * page_size * hk, "v's pages match k's");
        }
        if hk != heads_kv {
            return mismatch(Arg::K, "heads", hk, heads_kv, "the cache has the call's K/V heads");
        }
        if self.cache_seqlens.len() != batch {
            return mismatch(Arg::CacheSeqlens, "length", self.cache_seqlens.len(), batch, "one length per sequence");
        }
        if self.block_table.is_empty() || self.block_table.len() % batch != 0 {
            let why = "a row of page indices per sequence, [batch, pages_per_seq]";
            return mismatch(Arg::BlockTable, "length", self.block_table.len(), batch, why);
        }
        let capacity = self.pages_per_seq(batch) * page_size;
        let bad = |arg, why: String| Err(Error::BadPagedCache { arg, why });
        for (b, &len) in self.cache_seqlens.iter().enumerate() {
            if len < 0 || len as usize + new > capacity {
                let why = format!("sequence {b} holds {len} tokens plus {new} new; its pages hold {capacity}");
                return bad(Arg::CacheSeqlens, why);
            }
            let used = (len as usize + new).div_ceil(page_size);
            let row = &self.block_table[b * self.pages_per_seq(batch)..][..used];
            if let Some(&page) = row.iter().find(|&&p| p < 0 || p as usize >= num_pages) {
                return bad(Arg::BlockTable, format!("sequence {b} names page {page}; the cache has {num_pages}"));
            }
        }
        Ok(())
    }
}

/// Exact attention of `q` (`[batch, seqlen_q, heads_q, head_dim]`) over a paged cache, after
/// appending `append` to it (the cache's pages and not its lengths change: the caller advances
/// `cache_seqlens` for the next step, as with FlashAttention). O and the LSE as `reference_forward`
/// gives them for the dense problem of each sequence's keys; a sequence whose cache and append are
/// empty gives O = 0 and LSE = −inf (its sink logit with sinks). ALiBi slopes are `[heads_q]` or
/// `[batch, heads_q]`.
pub fn reference_forward_paged<T: Element>(
    q: &HostTensor<T>,
    cache: PagedKv<'_, T>,
    append: Option<KvAppend<'_, T>>,
    rotary: Option<Rotary<'_>>,
    opts: &AttnOptions,
) -> Result<PagedReferenceForward> {
    let (o, lse) = each_sequence(q, cache, append, rotary, opts, (0.0, |x| x), |q, k, v, opts| {
        let r = reference_forward(q, k, v, opts)?;
        Ok((r.o, r.lse))
    })?;
    Ok(PagedReferenceForward { o, lse })
}

/// As [`reference_forward_paged`] on the CPU's tiled path (`tiled::forward`, f32, multithreaded), with
/// the dense call's outputs: O `[batch, seqlen_q, heads_q, head_dim_v]` contiguous and the f32 LSE
/// `[batch, heads_q, seqlen_q]`; the append (and its rotation) as the reference writes it.
pub fn forward_paged<T: Element>(
    q: &HostTensor<T>,
    cache: PagedKv<'_, T>,
    append: Option<KvAppend<'_, T>>,
    rotary: Option<Rotary<'_>>,
    opts: &AttnOptions,
) -> Result<ForwardOutput<T>> {
    let keyless = |x: f64| x as f32;
    let head_dim_v = cache.v_pages.shape()[3];
    let (o, lse) = each_sequence(q, cache, append, rotary, opts, (T::from_f32(0.0), keyless), |q, k, v, opts| {
        let r = tiled::forward(q, k, v, opts)?;
        Ok((r.o.data, r.lse))
    })?;
    let [batch, seqlen_q, heads_q, _] = q.shape();
    Ok(ForwardOutput {
        o: HostTensor { data: o, layout: Layout::contiguous([batch, seqlen_q, heads_q, head_dim_v]) },
        lse,
    })
}

/// The append, then one forward per sequence over its keys gathered through the block table (its
/// queries rotated, its ALiBi row taken): `attend` gives contiguous O `[1, seqlen_q, heads_q,
/// head_dim_v]` and the LSE `[heads_q, seqlen_q]`, gathered in batch order. A sequence without keys gets
/// O = `zero` and its keyless LSE (`lse_of` of the f64 value): the score rules stay in `attend`.
#[allow(clippy::type_complexity)]
fn each_sequence<T: Element, O: Copy, L: Copy>(
    q: &HostTensor<T>,
    cache: PagedKv<'_, T>,
    append: Option<KvAppend<'_, T>>,
    rotary: Option<Rotary<'_>>,
    opts: &AttnOptions,
    (zero, lse_of): (O, fn(f64) -> L),
    mut attend: impl FnMut(&HostTensor<T>, &HostTensor<T>, &HostTensor<T>, &AttnOptions) -> Result<(Vec<O>, Vec<L>)>,
) -> Result<(Vec<O>, Vec<L>)> {
    // Dimensions of at least 1 (the sequences are counted from q's batch).
    q.layout.validate(Arg::Q, q.data.len())?;
    let [batch, seqlen_q, heads_q, head_dim] = q.shape();
    let [_, _, heads_kv, _] = cache.k_pages.shape();
    let head_dim_v = cache.v_pages.shape()[3];
    let new = match &append {
        None => 0,
        Some(a) => {
            for (arg, t, d) in [(Arg::K, a.k, head_dim), (Arg::V, a.v, head_dim_v)] {
                if t.shape()[0] != batch || t.shape()[2] != heads_kv || t.shape()[3] != d {
                    let why = "new keys and values are [batch, seqlen_new, heads_kv, head_dim]";
                    return Err(Error::ShapeMismatch { arg, what: "shape", got: t.shape()[0], expected: batch, why });
                }
            }
            if a.v.shape()[1] != a.k.shape()[1] {
                let why = "one new value per new key";
                return Err(Error::ShapeMismatch {
                    arg: Arg::V,
                    what: "seqlen",
                    got: a.v.shape()[1],
                    expected: a.k.shape()[1],
                    why,
                });
            }
            a.k.shape()[1]
        }
    };
    cache.check(batch, heads_kv, new)?;
    let rows_move = queries_move(opts);
    if let Some(r) = &rotary {
        let longest = cache.cache_seqlens.iter().map(|&l| l as usize).max().unwrap_or(0);
        let last = longest + new.max(if rows_move { seqlen_q } else { 1 }).saturating_sub(1);
        r.check(head_dim, last)?;
    }
    let (slopes, sinks) = host_per_head(opts)?;
    alibi_rows(slopes.map(<[f32]>::len), heads_q, batch)?;
    let mut o = Vec::with_capacity(batch * seqlen_q * heads_q * head_dim_v);
    let mut lse = Vec::with_capacity(batch * heads_q * seqlen_q);
    for b in 0..batch {
        let cached = cache.cache_seqlens[b] as usize;
        // Append: new token j of sequence b goes to cache token cached + j (its key rotated there).
        if let Some(a) = &append {
            for j in 0..new {
                let (page, slot) = cache.slot(b, cached + j, batch);
                match &rotary {
                    Some(r) => r.rotate(a.k, (b, j), cached + j, cache.k_pages, (page, slot)),
                    None => copy_token(a.k, (b, j), cache.k_pages, (page, slot)),
                }
                copy_token(a.v, (b, j), cache.v_pages, (page, slot));
            }
        }
        let keys = cached + new;
        if keys == 0 {
            // No key: O is 0, the LSE the sink's logit (all the probability) or −inf.
            o.extend(std::iter::repeat_n(zero, seqlen_q * heads_q * head_dim_v));
            for h in 0..heads_q {
                lse.extend(std::iter::repeat_n(lse_of(keyless_lse(sinks, h)), seqlen_q));
            }
            continue;
        }
        let gather = |pages: &HostTensor<T>| {
            let [_, _, h, d] = pages.shape();
            let mut out = HostTensor::filled([1, keys, h, d], T::from_f32(0.0));
            for t in 0..keys {
                copy_token(pages, cache.slot(b, t, batch), &mut out, (0, t));
            }
            out
        };
        let opts_b = AttnOptions { alibi_slopes: sequence_slopes(slopes, b, heads_q).map(PerHead::Host), ..*opts };
        let mut q_b = tokens(q, b, 0..seqlen_q);
        if let Some(r) = &rotary {
            for i in 0..seqlen_q {
                let position = cached + if rows_move { i } else { 0 };
                r.rotate(q, (b, i), position, &mut q_b, (0, i));
            }
        }
        let (o_b, lse_b) = attend(&q_b, &gather(cache.k_pages), &gather(cache.v_pages), &opts_b)?;
        o.extend_from_slice(&o_b);
        lse.extend_from_slice(&lse_b);
    }
    Ok((o, lse))
}
