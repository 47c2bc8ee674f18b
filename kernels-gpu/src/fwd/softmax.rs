//! The online softmax of a warp's query rows (FlashAttention-2, Dao 2023, §3.1), in base-2 units.
//!
//! Scores arrive as `x` with their logits `factor · x + row offset` in base 2 (`attn::stage::Logits`:
//! the factor is the call's `scale·log2(e)` for raw dot products, 1 for logits the stage formed; the
//! row offset is ALiBi's per-row part, else `-0.0`), so `exp(scale·s − max)` is one fused multiply-add
//! and one `ex2`; the row max is taken on `x` and scaled once per row (the factor is positive). Each
//! thread holds 2 rows per m16 tile (g and g+8, g = lane/4) and, of each row, the columns 2t and 2t+1
//! of every n8 tile (t = lane%4): the row max needs the 4 lanes of a quad (two `shfl.bfly`; the row
//! offset may differ between them, so each lane's max is scaled and offset first), the row sum is kept
//! per thread and reduced once at the end (every lane of a quad scales it by the same factor).
//!
//! With `lazy` (the caller's choice, a constant where it is called) the running max moves only when
//! a block raises some row of the warp by more than `RESCALE_SLACK` (2^8 in probability): until then
//! the probabilities are formed against the stale max (at most 2^8, exact in f32 and as representable
//! in bf16/f16 as values ≤ 1) and the O accumulator, the sum and the rescale's `ex2` are left alone.
//! The decision is the warp's (one vote), so no lane diverges; the normaliser and the LSE come out the
//! same, since both carry the max they were formed against. It pays where O is wide against a block's
//! scores (the Hopper forward at head dims ≥ 96: +1-10% on an H200) and costs where it is narrow (32
//! and 64: -0.5 to -9%).
//!
//! An attention sink is one more logit of the row with no value: the state starts from it (running max
//! = the sink, sum = 1, held by lane t = 0 of each quad), so the normaliser and the LSE include it and
//! nothing else changes. Each row has its own (`attn::stage::row_sinks_log2`: rows that are query
//! heads take their head's).

use crate::attn::stage::Logits;
use crate::frag::AccFrag;
use crate::ptx::math::{exp2, exp2_fma, fma, log2, recip};
use crate::ptx::warp::{self, shfl_xor_f32};

/// How far (base-2 units) a block may raise a row's max before the warp rescales: probabilities stay
/// below 2^8 against the stale max.
const RESCALE_SLACK: f32 = 8.0;

/// `P_LOG2`: the probabilities come out scaled by `2^P_LOG2` (the FP8 forward's, which rounds them to
/// e4m3: its range then holds them down to 2^-17 instead of 2^-9; the sum carries the same factor, so
/// the normaliser cancels it, and the LSE takes it out). 0 everywhere else, where it compiles away.
pub struct OnlineSoftmax<const MT: usize, const P_LOG2: u32 = 0> {
    /// Running max of each row (base-2 units); `-inf` while the row has seen no visible key.
    max: [[f32; 2]; MT],
    /// This thread's part of each row's running sum of exp2(s − max).
    sum: [[f32; 2]; MT],
}

/// The max to subtract: a row with no visible key yet keeps max = -inf, and subtracting 0 instead keeps
/// exp2(-inf - (-inf)) = NaN out (its exponentials are then of -inf, i.e. 0).
#[inline(always)]
fn finite_or_zero(max: f32) -> f32 {
    if max == f32::NEG_INFINITY {
        0.0
    } else {
        max
    }
}

/// Row `r` (0: g, 1: g + 8) of one m16 tile's block of scores: its max over the quad's four lanes,
/// as a logit (`x · factor + offset`, each lane's own offset first).
#[inline(always)]
fn quad_max<const NN: usize>(tiles: &[[f32; 4]; NN], r: usize, factor: f32, offset: f32) -> f32 {
    let mut block_max = f32::NEG_INFINITY;
    for tile in tiles.iter() {
        block_max = block_max.max(tile[2 * r]).max(tile[2 * r + 1]);
    }
    // A `-0.0` offset folds away (x + -0.0 is x).
    block_max = block_max * factor + offset;
    block_max = block_max.max(shfl_xor_f32(block_max, 1));
    block_max.max(shfl_xor_f32(block_max, 2))
}

/// Row `r` of one m16 tile's scores becomes exp2(x · factor + base) (`fma_tiles` of the `NN` n8
/// tiles on the FMA pipe: `exp2_on_fma`); returns this thread's part of their sum.
#[inline(always)]
fn exponentiate<const NN: usize>(
    tiles: &mut [[f32; 4]; NN],
    r: usize,
    factor: f32,
    base: f32,
    fma_tiles: usize,
) -> f32 {
    let mut block_sum = 0.0;
    for (n, tile) in tiles.iter_mut().enumerate() {
        let e = if exp2_on_fma(n, fma_tiles, NN) { exp2_fma } else { exp2 };
        tile[2 * r] = e(fma(tile[2 * r], factor, base));
        tile[2 * r + 1] = e(fma(tile[2 * r + 1], factor, base));
        block_sum += tile[2 * r] + tile[2 * r + 1];
    }
    block_sum
}

/// Whether n8 tile `tile` of a row's `nn` takes its exponentials on the FMA pipe when `fma_tiles` of
/// them do: spread evenly over the row, so that the MUFU and FMA work interleave in the schedule.
#[inline(always)]
const fn exp2_on_fma(tile: usize, fma_tiles: usize, nn: usize) -> bool {
    (tile + 1) * fma_tiles / nn != tile * fma_tiles / nn
}

impl<const MT: usize, const P_LOG2: u32> OnlineSoftmax<MT, P_LOG2> {
    /// The state before any key: `sinks_log2` are the rows' sink logits in base-2 units (`-inf`: none),
    /// `t` this lane's index in its quad.
    #[inline(always)]
    pub fn new(sinks_log2: [[f32; 2]; MT], t: u32) -> Self {
        let one = (1u32 << P_LOG2) as f32;
        let sum = sinks_log2.map(|pair| pair.map(|s| if t == 0 && s != f32::NEG_INFINITY { one } else { 0.0 }));
        OnlineSoftmax { max: sinks_log2, sum }
    }

    /// Takes in one block of scores `s` (masked entries `-inf`) whose logits are `factor · s + row
    /// offset` (`logits`; `factor` > 0): replaces them by the unnormalised probabilities exp2(logit −
    /// new max), and rescales the accumulator `o` by exp2(old max − new max). Its loops are
    /// `quad_max` and `exponentiate` written out: through them LLVM ordered some additions of the
    /// `mma.sync` kernels differently, and those kernels sit at the edge of their registers.
    /// `lazy`: rescale only when the warp's max grows by more than `RESCALE_SLACK` (module docs).
    /// `fma_tiles` of each row's `NN` n8 tiles take their exponentials on the FMA pipe
    /// (`math::exp2_fma`), the rest on the MUFU unit (a constant where it is called: `exp2_on_fma`).
    #[inline(always)]
    pub fn update<const NN: usize, const ND: usize>(
        &mut self,
        s: &mut AccFrag<MT, NN>,
        o: &mut AccFrag<MT, ND>,
        logits: Logits<MT>,
        lazy: bool,
        fma_tiles: usize,
    ) {
        let (s, o) = (&mut s.0, &mut o.0);
        let (factor, offset) = (logits.factor, logits.row_offset);
        let mut new_max = [[f32::NEG_INFINITY; 2]; MT];
        let mut grows = false;
        for m in 0..MT {
            for r in 0..2 {
                let mut block_max = f32::NEG_INFINITY;
                for tile in s[m].iter() {
                    block_max = block_max.max(tile[2 * r]).max(tile[2 * r + 1]);
                }
                // A `-0.0` offset folds away (x + -0.0 is x).
                block_max = block_max * factor + offset[m][r];
                block_max = block_max.max(shfl_xor_f32(block_max, 1));
                block_max = block_max.max(shfl_xor_f32(block_max, 2));
                new_max[m][r] = self.max[m][r].max(block_max);
                // The first visible key of a row (max -inf) always counts as growth.
                // Scaled probabilities (`P_LOG2`) leave that much less room under the stale max.
                grows |= new_max[m][r] > self.max[m][r] + if lazy { RESCALE_SLACK - P_LOG2 as f32 } else { 0.0 };
            }
        }
        if !lazy || warp::any(grows) {
            for m in 0..MT {
                for r in 0..2 {
                    let rescale = exp2(self.max[m][r] - finite_or_zero(new_max[m][r]));
                    self.max[m][r] = new_max[m][r];
                    self.sum[m][r] *= rescale;
                    for tile in o[m].iter_mut() {
                        tile[2 * r] *= rescale;
                        tile[2 * r + 1] *= rescale;
                    }
                }
            }
        }
        for m in 0..MT {
            for r in 0..2 {
                let mut base = offset[m][r] - finite_or_zero(self.max[m][r]);
                if P_LOG2 > 0 {
                    base += P_LOG2 as f32;
                }
                let mut block_sum = 0.0;
                for (n, tile) in s[m].iter_mut().enumerate() {
                    let e = if exp2_on_fma(n, fma_tiles, NN) { exp2_fma } else { exp2 };
                    tile[2 * r] = e(fma(tile[2 * r], factor, base));
                    tile[2 * r + 1] = e(fma(tile[2 * r + 1], factor, base));
                    block_sum += tile[2 * r] + tile[2 * r + 1];
                }
                self.sum[m][r] += block_sum;
            }
        }
    }

    /// `update` for a caller whose O is still being written by an asynchronous product (the Hopper
    /// FP8 kernel's intra-warpgroup overlap: this block's softmax runs under the previous block's
    /// P·V): the max and the sums move, O is left alone, and the factors it needs come back (`None`:
    /// none, the lazy rescale kept the max) for [`Self::rescale_o`] once the product has landed.
    #[inline(always)]
    pub fn update_deferred<const NN: usize>(
        &mut self,
        s: &mut AccFrag<MT, NN>,
        logits: Logits<MT>,
        lazy: bool,
        fma_tiles: usize,
    ) -> Option<[[f32; 2]; MT]> {
        let s = &mut s.0;
        let (factor, offset) = (logits.factor, logits.row_offset);
        let mut new_max = [[f32::NEG_INFINITY; 2]; MT];
        let mut grows = false;
        for m in 0..MT {
            for r in 0..2 {
                new_max[m][r] = self.max[m][r].max(quad_max(&s[m], r, factor, offset[m][r]));
                grows |= new_max[m][r] > self.max[m][r] + if lazy { RESCALE_SLACK - P_LOG2 as f32 } else { 0.0 };
            }
        }
        let mut rescale = None;
        if !lazy || warp::any(grows) {
            let mut factors = [[1.0; 2]; MT];
            for m in 0..MT {
                for r in 0..2 {
                    factors[m][r] = exp2(self.max[m][r] - finite_or_zero(new_max[m][r]));
                    self.max[m][r] = new_max[m][r];
                    self.sum[m][r] *= factors[m][r];
                }
            }
            rescale = Some(factors);
        }
        for m in 0..MT {
            for r in 0..2 {
                let mut base = offset[m][r] - finite_or_zero(self.max[m][r]);
                if P_LOG2 > 0 {
                    base += P_LOG2 as f32;
                }
                self.sum[m][r] += exponentiate(&mut s[m], r, factor, base, fma_tiles);
            }
        }
        rescale
    }

    /// O's rows times the factors [`Self::update_deferred`] returned.
    #[inline(always)]
    pub fn rescale_o<const ND: usize>(o: &mut AccFrag<MT, ND>, factors: &[[f32; 2]; MT]) {
        for (rows, f) in o.0.iter_mut().zip(factors) {
            for tile in rows.iter_mut() {
                for (i, x) in tile.iter_mut().enumerate() {
                    *x *= f[i / 2];
                }
            }
        }
    }

    /// Per row: the factor that normalises O (0 for a fully masked row, whose O is then 0), and the
    /// natural-log LSE (`-inf` for a fully masked row).
    #[inline(always)]
    pub fn finish(&self) -> ([[f32; 2]; MT], [[f32; 2]; MT]) {
        let mut inv = [[0.0; 2]; MT];
        let mut lse = [[f32::NEG_INFINITY; 2]; MT];
        for m in 0..MT {
            for r in 0..2 {
                let mut sum = self.sum[m][r];
                sum += shfl_xor_f32(sum, 1);
                sum += shfl_xor_f32(sum, 2);
                if sum > 0.0 {
                    inv[m][r] = recip(sum);
                    let log2_sum = if P_LOG2 > 0 { log2(sum) - P_LOG2 as f32 } else { log2(sum) };
                    lse[m][r] = (self.max[m][r] + log2_sum) * core::f32::consts::LN_2;
                }
            }
        }
        (inv, lse)
    }
}
