//! Validation of an attention call: every shape, stride and option checked on the host, before any
//! launch, into one `AttnProblem` that the CPU and GPU paths share.

use crate::error::{Arg, Error, Result};
use crate::layout::Layout;
use crate::options::{AttnOptions, PerHead};
use ironflash_kernels::attn::score::{Mask, MAX_TOTAL_SEQLEN};

/// Head dims the kernels are compiled for (and the CPU path accepts), of Q and K; V takes the same
/// head dim, or one of `supported_head_dims_v`.
pub const SUPPORTED_HEAD_DIMS: &[usize] = &[32, 64, 96, 128, 192, 256];

/// The head dims V (and so O, dO, dV) may have when Q and K have `head_dim`: the same, and at 192 also
/// 128 (DeepSeek-V2/V3's attention: 128 "nope" plus 64 rotary dims per query and key, 128 per value).
pub fn supported_head_dims_v(head_dim: usize) -> &'static [usize] {
    match head_dim {
        32 => &[32],
        64 => &[64],
        96 => &[96],
        128 => &[128],
        192 => &[192, 128],
        256 => &[256],
        _ => &[],
    }
}

/// Every supported pair of head dims `(Q and K, V)`.
pub fn supported_head_dim_pairs() -> impl Iterator<Item = (usize, usize)> {
    SUPPORTED_HEAD_DIMS.iter().flat_map(|&d| supported_head_dims_v(d).iter().map(move |&dv| (d, dv)))
}

/// A validated attention problem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnProblem {
    pub batch: usize,
    pub seqlen_q: usize,
    pub seqlen_k: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    /// Head dim of Q and K.
    pub head_dim: usize,
    /// Head dim of V, O and their gradients (`supported_head_dims_v`).
    pub head_dim_v: usize,
    pub causal: bool,
    /// Which (query, key) pairs are visible: causality and the window, one rule (`attn::score`).
    pub mask: Mask,
    pub softmax_scale: f32,
    /// The softcap, validated finite and positive.
    pub softcap: Option<f32>,
    /// ALiBi slopes present: `Some(false)` for `[heads_q]`, `Some(true)` for `[batch, heads_q]`.
    pub alibi_per_batch: Option<bool>,
    /// Sink logits present (`[heads_q]`).
    pub sinks: bool,
}

impl AttnProblem {
    /// Query heads that share one K/V head.
    pub fn group_size(&self) -> usize {
        self.heads_q / self.heads_kv
    }

    /// The keys query row `i` sees, `[start, end)` (empty for a fully masked row).
    pub fn key_range(&self, i: usize) -> std::ops::Range<usize> {
        let (start, end) = self.mask.key_range(i as u32);
        start as usize..end as usize
    }

    /// (query, key) pairs visible in one (batch, head): the work a windowed call does.
    pub fn visible_pairs(&self) -> u64 {
        (0..self.seqlen_q).map(|i| self.key_range(i).len() as u64).sum()
    }

    /// Forward FLOPs as the FlashAttention papers count them: 4·B·H·Nq·Nk·D, halved when causal
    /// (2·D for S = QKᵀ, 2·D_v for PV when V has a head dim of its own); with a sliding window, per
    /// visible (computed) pair.
    pub fn forward_flops(&self) -> f64 {
        let per_pair = 2.0 * (self.batch * self.heads_q) as f64 * (self.head_dim + self.head_dim_v) as f64;
        if self.mask.is_windowed() {
            return per_pair * self.visible_pairs() as f64;
        }
        let f = per_pair * self.seqlen_q as f64 * self.seqlen_k as f64;
        if self.causal {
            f / 2.0
        } else {
            f
        }
    }

    /// Backward FLOPs in the same count: the five products per visible pair, S = QKᵀ again, dP = dO Vᵀ,
    /// dV = Pᵀ dO, dK = dSᵀ Q and dQ = dS K, so 2·(3·D + 2·D_v) per pair: 2.5x the forward's when
    /// `D_v = D`.
    pub fn backward_flops(&self) -> f64 {
        let (d, dv) = (self.head_dim as f64, self.head_dim_v as f64);
        self.forward_flops() * (3.0 * d + 2.0 * dv) / (d + dv)
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
        }
        same(Arg::K, "head_dim", kl.head_dim(), head_dim, "q and k share one head_dim")?;
        let head_dim_v = vl.head_dim();
        let supported_v = supported_head_dims_v(head_dim);
        if !supported_v.contains(&head_dim_v) {
            return Err(Error::UnsupportedHeadDimV { head_dim, head_dim_v, supported: supported_v });
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
        let (seqlen_q, seqlen_k) = (ql.seqlen(), kl.seqlen());
        if (seqlen_q + seqlen_k) as u64 > MAX_TOTAL_SEQLEN {
            return Err(Error::TooLarge { arg: Arg::K, what: "seqlen_q + seqlen_k", value: seqlen_q + seqlen_k });
        }
        if let Some(cap) = opts.softcap {
            if !cap.is_finite() || cap <= 0.0 {
                return Err(Error::BadSoftcap(cap));
            }
        }
        let (batch, heads_q) = (ql.batch(), ql.heads());
        let alibi_per_batch = match opts.alibi_slopes {
            None => None,
            Some(s) if s.len() == heads_q => Some(false),
            Some(s) if s.len() == batch * heads_q => Some(true),
            Some(s) => {
                return Err(Error::ShapeMismatch {
                    arg: Arg::AlibiSlopes,
                    what: "length",
                    got: s.len(),
                    expected: heads_q,
                    why: "one f32 slope per query head ([heads_q]) or per (batch, query head) ([batch, heads_q])",
                })
            }
        };
        if let Some(s) = opts.sinks {
            same(Arg::Sinks, "length", s.len(), heads_q, "one f32 sink logit per query head ([heads_q])")?;
        }
        let window = |w: Option<usize>| w.map(|w| w.min(u32::MAX as usize) as u32);
        let mask = Mask::new(
            seqlen_q as u32,
            seqlen_k as u32,
            opts.causal,
            window(opts.window.left),
            window(opts.window.right),
        );
        Ok(AttnProblem {
            batch,
            seqlen_q,
            seqlen_k,
            heads_q,
            heads_kv: kl.heads(),
            head_dim,
            head_dim_v,
            causal: opts.causal,
            mask,
            softmax_scale,
            softcap: opts.softcap,
            alibi_per_batch,
            sinks: opts.sinks.is_some(),
        })
    }

    /// `UnsupportedOption` for the score modifiers (softcap, ALiBi, sinks) on a path that implements the
    /// mask only (the standard baseline).
    pub fn require_mask_only(&self, path: &'static str) -> Result<()> {
        let modifiers = [
            (self.softcap.is_some(), Arg::Softcap, "softcap"),
            (self.alibi_per_batch.is_some(), Arg::AlibiSlopes, "ALiBi"),
            (self.sinks, Arg::Sinks, "attention sinks"),
        ];
        match modifiers.into_iter().find(|m| m.0) {
            Some((_, arg, what)) => Err(Error::UnsupportedOption { arg, what, path }),
            None => Ok(()),
        }
    }

    /// The problem of contiguous tensors of these sizes: `[batch, seqlen_q, heads_q, head_dim]` queries,
    /// `[batch, seqlen_k, heads_kv, head_dim]` keys and values (what a planner or a benchmark needs
    /// without tensors at hand).
    pub fn contiguous(shape: [usize; 6], opts: &AttnOptions) -> Result<Self> {
        Self::contiguous_with_head_dim_v(shape, shape[5], opts)
    }

    /// As `contiguous`, with values `[batch, seqlen_k, heads_kv, head_dim_v]`.
    pub fn contiguous_with_head_dim_v(
        [batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim]: [usize; 6],
        head_dim_v: usize,
        opts: &AttnOptions,
    ) -> Result<Self> {
        let q = Layout::contiguous([batch, seqlen_q, heads_q, head_dim]);
        let k = Layout::contiguous([batch, seqlen_k, heads_kv, head_dim]);
        let v = Layout::contiguous([batch, seqlen_k, heads_kv, head_dim_v]);
        AttnProblem::new((&q, q.numel()), (&k, k.numel()), (&v, v.numel()), opts)
    }

    /// The layout every output shaped like q (dQ) must have: q's shape.
    pub fn check_like_q(&self, arg: Arg, l: &Layout, len: usize) -> Result<()> {
        l.validate_output(arg, len)?;
        let want = [self.batch, self.seqlen_q, self.heads_q, self.head_dim];
        check_shape(arg, l, want, "shaped like q")
    }

    /// O's shape: q's batch, rows and heads, v's head dim.
    pub fn o_shape(&self) -> [usize; 4] {
        [self.batch, self.seqlen_q, self.heads_q, self.head_dim_v]
    }

    /// The layout an output shaped like O must have.
    pub fn check_like_o(&self, arg: Arg, l: &Layout, len: usize) -> Result<()> {
        l.validate_output(arg, len)?;
        check_shape(arg, l, self.o_shape(), LIKE_O)
    }

    /// The layout an input shaped like O (the backward's O and dO) must have: validated as an input, so
    /// overlapping strides (a broadcast dO) are fine.
    pub fn check_input_like_o(&self, arg: Arg, l: &Layout, len: usize) -> Result<()> {
        l.validate(arg, len)?;
        check_shape(arg, l, self.o_shape(), LIKE_O)
    }

    /// The layout every output shaped like k (dK) must have.
    pub fn check_like_k(&self, arg: Arg, l: &Layout, len: usize) -> Result<()> {
        l.validate_output(arg, len)?;
        let want = [self.batch, self.seqlen_k, self.heads_kv, self.head_dim];
        check_shape(arg, l, want, "shaped like k")
    }

    /// The layout every output shaped like v (dV) must have.
    pub fn check_like_v(&self, arg: Arg, l: &Layout, len: usize) -> Result<()> {
        l.validate_output(arg, len)?;
        let want = [self.batch, self.seqlen_k, self.heads_kv, self.head_dim_v];
        check_shape(arg, l, want, "shaped like v")
    }

    /// Number of f32 log-sum-exp values: one per (batch, head, query row), laid out `[batch, heads_q, seqlen_q]`.
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads_q * self.seqlen_q
    }

    /// A host LSE buffer of `len` values must hold exactly `lse_len`.
    pub fn check_lse_len(&self, len: usize) -> Result<()> {
        if len == self.lse_len() {
            return Ok(());
        }
        Err(Error::ShapeMismatch {
            arg: Arg::Lse,
            what: "length",
            got: len,
            expected: self.lse_len(),
            why: "one value per (batch, q head, query row)",
        })
    }
}

const LIKE_O: &str = "shaped like o: q's batch, seqlen and heads, v's head_dim";

/// The per-head options' host slices: `(alibi_slopes, sinks)`.
pub type HostPerHead<'a> = (Option<&'a [f32]>, Option<&'a [f32]>);

/// The host slices of the per-head options, for the CPU paths; a device buffer is an error naming the
/// option.
pub fn host_per_head<'a>(opts: &AttnOptions<'a>) -> Result<HostPerHead<'a>> {
    let host = |arg: Arg, v: Option<PerHead<'a>>| match v {
        None => Ok(None),
        Some(PerHead::Host(s)) => Ok(Some(s)),
        Some(PerHead::Device(_)) => Err(Error::PerHeadLocation { arg, expected: "host", got: "device" }),
    };
    Ok((host(Arg::AlibiSlopes, opts.alibi_slopes)?, host(Arg::Sinks, opts.sinks)?))
}

/// `ShapeMismatch` naming the first dimension of `l` that differs from `want`.
pub(crate) fn check_shape(arg: Arg, l: &Layout, want: [usize; 4], why: &'static str) -> Result<()> {
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

    fn problem(seqlen_q: usize, seqlen_k: usize, causal: bool) -> AttnProblem {
        let q = Layout::contiguous([1, seqlen_q, 2, 64]);
        let kv = Layout::contiguous([1, seqlen_k, 1, 64]);
        let opts = AttnOptions { causal, ..AttnOptions::default() };
        AttnProblem::new((&q, q.numel()), (&kv, kv.numel()), (&kv, kv.numel()), &opts).unwrap()
    }

    #[test]
    fn key_range_is_bottom_right_aligned() {
        assert_eq!(problem(3, 3, true).key_range(0), 0..1);
        assert_eq!(problem(2, 5, true).key_range(0), 0..4);
        assert!(problem(5, 2, true).key_range(2).is_empty());
        assert_eq!(problem(5, 2, true).key_range(3), 0..1);
        assert_eq!(problem(5, 2, false).key_range(0), 0..2);
    }

    #[test]
    fn windowed_flops_count_visible_pairs() {
        let q = Layout::contiguous([1, 8, 1, 64]);
        let opts = AttnOptions::causal().with_window(Some(2), None);
        let p = AttnProblem::new((&q, q.numel()), (&q, q.numel()), (&q, q.numel()), &opts).unwrap();
        // Rows 0, 1 see 1, 2 keys; rows 2..8 see 3 each.
        assert_eq!(p.visible_pairs(), 1 + 2 + 6 * 3);
        assert_eq!(p.forward_flops(), 4.0 * 64.0 * 21.0);
    }

    #[test]
    fn bad_modifiers_are_typed_errors() {
        let q = Layout::contiguous([2, 8, 4, 64]);
        let kv = Layout::contiguous([2, 8, 2, 64]);
        let new = |o: &AttnOptions| AttnProblem::new((&q, q.numel()), (&kv, kv.numel()), (&kv, kv.numel()), o);
        for cap in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(new(&AttnOptions::default().with_softcap(cap)), Err(Error::BadSoftcap(_))));
        }
        let three = [0.5f32; 3];
        let e = new(&AttnOptions::default().with_alibi(PerHead::Host(&three))).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { arg: Arg::AlibiSlopes, .. }), "{e}");
        let e = new(&AttnOptions::default().with_sinks(PerHead::Host(&three))).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { arg: Arg::Sinks, .. }), "{e}");
        let (four, eight) = ([0.5f32; 4], [0.5f32; 8]);
        assert_eq!(new(&AttnOptions::default().with_alibi(PerHead::Host(&four))).unwrap().alibi_per_batch, Some(false));
        assert_eq!(new(&AttnOptions::default().with_alibi(PerHead::Host(&eight))).unwrap().alibi_per_batch, Some(true));
        // A window that hides every key is legal.
        assert!(new(&AttnOptions::default().with_window(Some(0), Some(0))).is_ok());
    }

    #[test]
    fn value_head_dim_of_its_own() {
        let p = AttnProblem::contiguous_with_head_dim_v([1, 8, 8, 2, 2, 192], 128, &AttnOptions::default()).unwrap();
        assert_eq!((p.head_dim, p.head_dim_v), (192, 128));
        // The default scale follows the query/key head dim.
        assert_eq!(p.softmax_scale, 1.0 / 192f32.sqrt());
        assert_eq!(p.forward_flops(), 2.0 * 2.0 * (192.0 + 128.0) * 64.0);
        assert_eq!(p.backward_flops(), 2.0 * 2.0 * (3.0 * 192.0 + 2.0 * 128.0) * 64.0);
        let same = AttnProblem::contiguous([1, 8, 8, 2, 2, 128], &AttnOptions::default()).unwrap();
        assert_eq!(same.backward_flops(), 2.5 * same.forward_flops());
        for (d, dv) in [(128, 64), (192, 64), (256, 128), (64, 128)] {
            let e =
                AttnProblem::contiguous_with_head_dim_v([1, 8, 8, 2, 2, d], dv, &AttnOptions::default()).unwrap_err();
            assert!(matches!(e, Error::UnsupportedHeadDimV { head_dim_v, .. } if head_dim_v == dv), "{e}");
        }
        // K keeps q's head dim.
        let q = Layout::contiguous([1, 8, 2, 192]);
        let k = Layout::contiguous([1, 8, 2, 128]);
        let e = AttnProblem::new((&q, q.numel()), (&k, k.numel()), (&k, k.numel()), &AttnOptions::default());
        assert!(matches!(e, Err(Error::ShapeMismatch { arg: Arg::K, what: "head_dim", .. })));
    }

    #[test]
    fn default_scale_and_group_size() {
        let p = problem(4, 4, false);
        assert_eq!(p.softmax_scale, 0.125);
        assert_eq!(p.group_size(), 2);
        assert_eq!(p.lse_len(), 8);
    }
}
