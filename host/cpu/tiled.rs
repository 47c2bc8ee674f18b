//! The FlashAttention forward algorithm on the CPU, in f32: for each block of query rows, walk the
//! blocks of keys/values once, keeping a running row max and row sum and rescaling the output
//! accumulator whenever the max grows, then normalise once at the end. Causal blocks entirely above
//! the diagonal are never visited. Parallel over (batch, query head, query block) with rayon.
//!
//! This is the library's CPU fallback, so it is written to be reasonably fast: tiles are converted
//! to f32 once per block, and the inner loops run over contiguous f32 slices with independent lanes
//! so that the compiler can vectorise them.

use super::vecops::{add_scaled, dot, scale_in_place};
use crate::dtype::Element;
use crate::error::{Arg, Error, Result};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use crate::tensor::HostTensor;
use rayon::prelude::*;

/// Query rows per task: large enough that each key/value tile, converted once, serves many rows.
pub const BLOCK_Q: usize = 64;
/// Keys per tile: a K and a V tile of 64 rows × 256 dims is 128 KiB of f32, about an L2's share.
pub const BLOCK_K: usize = 64;

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
/// each task owns one contiguous piece, and writes the LSE.
fn attention_by_head<T: Element>(
    p: &AttnProblem,
    q: &HostTensor<T>,
    k: &HostTensor<T>,
    v: &HostTensor<T>,
    lse: &mut [f32],
) -> Vec<f32> {
    let d = p.head_dim;
    let mut o = vec![0.0f32; p.batch * p.heads_q * p.seqlen_q * d];
    o.par_chunks_mut(p.seqlen_q * d).zip(lse.par_chunks_mut(p.seqlen_q)).enumerate().for_each(
        |(bh, (o_head, lse_head))| {
            let (b, h) = (bh / p.heads_q, bh % p.heads_q);
            o_head.par_chunks_mut(BLOCK_Q * d).zip(lse_head.par_chunks_mut(BLOCK_Q)).enumerate().for_each(
                |(block, (o_rows, lse_rows))| {
                    let rows = QueryBlock { p, b, h, first_row: block * BLOCK_Q };
                    rows.run(q, k, v, o_rows, lse_rows);
                },
            );
        },
    );
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
    fn run<T: Element>(
        &self,
        q: &HostTensor<T>,
        k: &HostTensor<T>,
        v: &HostTensor<T>,
        o_rows: &mut [f32],
        lse_rows: &mut [f32],
    ) {
        let (p, d, rows) = (self.p, self.p.head_dim, lse_rows.len());
        let hkv = self.h / p.group_size();
        let scale = p.softmax_scale;
        let q_tile = load_rows(q, self.b, self.h, self.first_row, rows);
        let mut k_tile = vec![0.0f32; BLOCK_K * d];
        let mut v_tile = vec![0.0f32; BLOCK_K * d];
        let mut scores = [0.0f32; BLOCK_K];
        let mut row_max = [f32::NEG_INFINITY; BLOCK_Q];
        let mut row_sum = [0.0f32; BLOCK_Q];

        // The key end grows with the row, so the last row bounds every key this block needs:
        // key blocks past it (above the causal diagonal) are skipped.
        let keys_needed = self.key_end(self.first_row + rows - 1);
        for first_key in (0..keys_needed).step_by(BLOCK_K) {
            let keys = BLOCK_K.min(keys_needed - first_key);
            fill_rows(&mut k_tile[..keys * d], k, self.b, hkv, first_key);
            fill_rows(&mut v_tile[..keys * d], v, self.b, hkv, first_key);
            for r in 0..rows {
                let visible = self.key_end(self.first_row + r).saturating_sub(first_key).min(keys);
                if visible == 0 {
                    continue;
                }
                let q_row = &q_tile[r * d..][..d];
                let s = &mut scores[..visible];
                for (c, s_c) in s.iter_mut().enumerate() {
                    *s_c = scale * dot(q_row, &k_tile[c * d..][..d]);
                }
                let block_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let new_max = row_max[r].max(block_max);
                // exp(-inf) = 0 on a row's first visible block, which discards the empty accumulator.
                let rescale = (row_max[r] - new_max).exp();
                let mut block_sum = 0.0f32;
                for s_c in s.iter_mut() {
                    *s_c = (*s_c - new_max).exp();
                    block_sum += *s_c;
                }
                row_sum[r] = row_sum[r] * rescale + block_sum;
                row_max[r] = new_max;
                let o_row = &mut o_rows[r * d..][..d];
                if rescale != 1.0 {
                    scale_in_place(o_row, rescale);
                }
                for (c, &p_c) in s.iter().enumerate() {
                    add_scaled(o_row, p_c, &v_tile[c * d..][..d]);
                }
            }
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

/// `rows` consecutive sequence rows of head `h` in batch `b`, as contiguous f32 `[rows, head_dim]`.
fn load_rows<T: Element>(t: &HostTensor<T>, b: usize, h: usize, first: usize, rows: usize) -> Vec<f32> {
    let mut tile = vec![0.0f32; rows * t.layout.head_dim()];
    fill_rows(&mut tile, t, b, h, first);
    tile
}

/// Fills `tile` (`[rows, head_dim]` f32) from consecutive sequence rows starting at `first`.
fn fill_rows<T: Element>(tile: &mut [f32], t: &HostTensor<T>, b: usize, h: usize, first: usize) {
    let d = t.layout.head_dim();
    for (i, row) in tile.chunks_exact_mut(d).enumerate() {
        let start = t.layout.offset(b, first + i, h, 0);
        for (dst, src) in row.iter_mut().zip(&t.data[start..start + d]) {
            *dst = src.to_f32();
        }
    }
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
