//! Validation of an attention call: every shape, stride and option checked on the host, before any
//! launch, into one `AttnProblem` that the CPU and GPU paths share.

use crate::error::{Arg, Error, Result};
use crate::layout::Layout;
use crate::options::AttnOptions;

/// Head dims the kernels are compiled for (and the CPU path accepts).
pub const SUPPORTED_HEAD_DIMS: &[usize] = &[32, 64, 96, 128, 192, 256];

/// A validated attention problem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnProblem {
    pub batch: usize,
    pub seqlen_q: usize,
    pub seqlen_k: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub softmax_scale: f32,
}

impl AttnProblem {
    /// Query heads that share one K/V head.
    pub fn group_size(&self) -> usize {
        self.heads_q / self.heads_kv
    }

    /// Last key index (inclusive) visible to query row `i`, or `None` if the row is fully masked.
    /// Bottom-right alignment: row i sees keys j <= i + seqlen_k - seqlen_q.
    pub fn last_visible_key(&self, i: usize) -> Option<usize> {
        if !self.causal {
            return Some(self.seqlen_k - 1);
        }
        let limit = i as i64 + self.seqlen_k as i64 - self.seqlen_q as i64;
        if limit < 0 {
            None
        } else {
            Some((limit as usize).min(self.seqlen_k - 1))
        }
    }

    /// Forward FLOPs as the FlashAttention papers count them: 4·B·H·Nq·Nk·D, halved when causal.
    pub fn forward_flops(&self) -> f64 {
        let f = 4.0
            * (self.batch * self.heads_q) as f64
            * self.seqlen_q as f64
            * self.seqlen_k as f64
            * self.head_dim as f64;
        if self.causal {
            f / 2.0
        } else {
            f
        }
    }

    /// Validate q, k, v layouts (with their buffer lengths) and the options.
    pub fn new(q: (&Layout, usize), k: (&Layout, usize), v: (&Layout, usize), opts: &AttnOptions) -> Result<Self> {
        let (ql, kl, vl) = (q.0, k.0, v.0);
        ql.validate(Arg::Q, q.1)?;
        kl.validate(Arg::K, k.1)?;
        vl.validate(Arg::V, v.1)?;
        let head_dim = ql.head_dim();
        if !SUPPORTED_HEAD_DIMS.contains(&head_dim) {
            return Err(Error::UnsupportedHeadDim { arg: Arg::Q, head_dim, supported: SUPPORTED_HEAD_DIMS });
        }
        for (arg, l) in [(Arg::K, kl), (Arg::V, vl)] {
            same(arg, "batch", l.batch(), ql.batch(), "k and v share q's batch")?;
            same(arg, "head_dim", l.head_dim(), head_dim, "q, k and v share one head_dim")?;
        }
        same(Arg::V, "seqlen", vl.seqlen(), kl.seqlen(), "v has one row per key")?;
        same(Arg::V, "heads", vl.heads(), kl.heads(), "k and v have the same number of heads")?;
        if ql.heads() % kl.heads() != 0 {
            return Err(Error::HeadsNotMultiple { heads_q: ql.heads(), heads_kv: kl.heads() });
        }
        let softmax_scale = opts.scale_for(head_dim);
        if !softmax_scale.is_finite() || softmax_scale == 0.0 {
            return Err(Error::BadScale(softmax_scale));
        }
        Ok(AttnProblem {
            batch: ql.batch(),
            seqlen_q: ql.seqlen(),
            seqlen_k: kl.seqlen(),
            heads_q: ql.heads(),
            heads_kv: kl.heads(),
            head_dim,
            causal: opts.causal,
            softmax_scale,
        })
    }

    /// The layout every output shaped like q (O, dQ) must have: q's shape.
    pub fn check_like_q(&self, arg: Arg, l: &Layout, len: usize) -> Result<()> {
        l.validate_output(arg, len)?;
        let want = [self.batch, self.seqlen_q, self.heads_q, self.head_dim];
        check_shape(arg, l, want, "shaped like q")
    }

    /// The layout every output shaped like k (dK, dV) must have.
    pub fn check_like_k(&self, arg: Arg, l: &Layout, len: usize) -> Result<()> {
        l.validate_output(arg, len)?;
        let want = [self.batch, self.seqlen_k, self.heads_kv, self.head_dim];
        check_shape(arg, l, want, "shaped like k")
    }

    /// Number of f32 log-sum-exp values: one per (batch, head, query row), laid out `[batch, heads_q, seqlen_q]`.
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads_q * self.seqlen_q
    }
}

fn check_shape(arg: Arg, l: &Layout, want: [usize; 4], why: &'static str) -> Result<()> {
    for ((name, &got), &expected) in crate::layout::DIM_NAMES.iter().zip(&l.shape).zip(&want) {
        same(arg, name, got, expected, why)?;
    }
    Ok(())
}

fn same(arg: Arg, what: &'static str, got: usize, expected: usize, why: &'static str) -> Result<()> {
    if got != expected {
        Err(Error::ShapeMismatch { arg, what, got, expected, why })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironflash_kernels::attn::mask::causal_key_end;

    fn problem(seqlen_q: usize, seqlen_k: usize, causal: bool) -> AttnProblem {
        let q = Layout::contiguous([1, seqlen_q, 2, 64]);
        let kv = Layout::contiguous([1, seqlen_k, 1, 64]);
        let opts = AttnOptions { causal, ..AttnOptions::default() };
        AttnProblem::new((&q, q.numel()), (&kv, kv.numel()), (&kv, kv.numel()), &opts).unwrap()
    }

    #[test]
    fn last_visible_key_is_bottom_right_aligned() {
        assert_eq!(problem(3, 3, true).last_visible_key(0), Some(0));
        assert_eq!(problem(2, 5, true).last_visible_key(0), Some(3));
        assert_eq!(problem(5, 2, true).last_visible_key(2), None);
        assert_eq!(problem(5, 2, true).last_visible_key(3), Some(0));
        assert_eq!(problem(5, 2, false).last_visible_key(0), Some(1));
    }

    #[test]
    fn last_visible_key_agrees_with_the_kernels_mask() {
        for seqlen_q in 1..20 {
            for seqlen_k in 1..20 {
                let p = problem(seqlen_q, seqlen_k, true);
                for i in 0..seqlen_q {
                    let end = causal_key_end(i as u32, seqlen_q as u32, seqlen_k as u32) as usize;
                    assert_eq!(p.last_visible_key(i).map_or(0, |j| j + 1), end, "{seqlen_q}x{seqlen_k} row {i}");
                }
            }
        }
    }

    #[test]
    fn default_scale_and_group_size() {
        let p = problem(4, 4, false);
        assert_eq!(p.softmax_scale, 0.125);
        assert_eq!(p.group_size(), 2);
        assert_eq!(p.lse_len(), 8);
    }
}
