//! The score stage on the GPU: raw dot products `q·k` in an accumulator fragment become base-2 logits
//! (scale or softcap, then ALiBi, then the mask as `-inf`), the same code for every kernel. The forward
//! kernels' fragments have query rows and key columns; the backward kernels compute Sᵀ, with key rows
//! and query columns, and use the transposed limits (`Mask::query_limits`). Everything else the
//! modifiers need stays where it is used: the sink in the online softmax's initial state (`sink_log2`),
//! the softcap's derivative in dS (`DTANH`), the sinks' gradient in `bwd/prep.rs`.
//!
//! Parameters are read from the kernel's parameter space where used (no registers held through the
//! loops); the ALiBi slope comes from the kernel (`alibi_slope_log2`: loaded per block where registers
//! bind, once before the loop where they do not).

use crate::attn::score::{packed_tokens, Mask, ScoreParams, MAX_SHIFTED};
use crate::frag::AccFrag;
use crate::ptx::math::{fma, recip, tanh};
use crate::ptx::{opaque, smem, sync};
use core::f32::consts::LOG2_E;

/// Where a fragment sits: this thread's first row (`row0 + g` of the tile, g = lane/4), the first column
/// of the fragment (the block's first key or query), and t = lane % 4. Every kernel's warps start their
/// rows at a multiple of 16, which [`FragPos::warp_row0`] relies on.
#[derive(Clone, Copy)]
pub struct FragPos {
    pub row_g: u32,
    pub col0: u32,
    pub t: u32,
}

impl FragPos {
    /// This thread's row of m16 tile `m`, half `r` (rows g and g + 8).
    #[inline(always)]
    fn row(&self, m: usize, r: usize) -> i32 {
        (self.row_g + (16 * m + 8 * r) as u32) as i32
    }
    /// The warp's first row (`row_g - g`: g < 8 and the warp's rows start at a multiple of 16).
    #[inline(always)]
    fn warp_row0(&self) -> i32 {
        (self.row_g & !15) as i32
    }
    /// The other index of this thread's column 0: column `8n + e` is `col_t() + 8n + e`.
    #[inline(always)]
    fn col_t(&self) -> i32 {
        (self.col0 + 2 * self.t) as i32
    }
}

/// The call's mask, each field passed through `ptx::opaque` where it is read: what a loop derives from
/// it (block ranges, row limits) is then recomputed in the loop from the parameter space, which costs
/// no register, instead of being hoisted out and held in registers the accumulators need.
#[inline(always)]
fn call_mask(p: &ScoreParams) -> Mask {
    let m = &p.mask;
    dense_mask(Mask {
        seqlen_q: opaque::u32(m.seqlen_q),
        seqlen_k: opaque::u32(m.seqlen_k),
        left: opaque::u32(m.left),
        right: opaque::u32(m.right),
        shift: 0,
    })
}

/// A dense call's mask with its shift the constant 0 (`Mask::new` aligns it bottom-right) rather than
/// a parameter read, so that it folds away: the Hopper backward's registers hold nothing more.
#[inline(always)]
pub fn dense_mask(m: Mask) -> Mask {
    Mask { shift: 0, ..m }
}

/// One sequence of a call, as a kernel finds it: the mask over its own lengths, its first query and
/// key token in the tensors, and the batch row of the tensors (and of the LSE and split layouts) that
/// holds it. A dense batch's sequence b is batch row b from token 0 under the call's mask; a packed
/// batch's is tokens `cu_seqlens[b]..cu_seqlens[b + 1]` of batch row 0 (`ScoreParams::cu_seqlens_q`),
/// whose LSE rows are `[heads_q, tokens_q]`, the dense layout of one batch row of `tokens_q` queries.
#[derive(Clone, Copy)]
pub struct Sequence {
    pub mask: Mask,
    pub q0: u32,
    pub k0: u32,
    pub row: u32,
}

impl Sequence {
    /// Row `i` of the sequence's queries of head `head` in the `[batch, heads_q, rows_per_head]` layout
    /// of the LSE (and of the split-KV and backward f32 buffers), `rows_per_head` the call mask's
    /// `seqlen_q` (the tensor's rows).
    #[inline(always)]
    pub fn lse_row(&self, p: &ScoreParams, heads_q: u32, head: u32, i: u32) -> u64 {
        (self.row as u64 * heads_q as u64 + head as u64) * p.mask.seqlen_q as u64 + (self.q0 + i) as u64
    }
}

/// The words of a packed kernel's shared slot (`ptx::smem::store_cta_slot`): the sequence's mask
/// (`seqlen_q`, `seqlen_k`, `left`, `right`, words 0-3, the order of [`Mask`]'s fields), then its first
/// query and key token, its batch row and its mask's `shift`.
const SLOT_SEQLEN_K: u32 = 1;
const SLOT_Q0: u32 = 4;
const SLOT_K0: u32 = 5;
const SLOT_ROW: u32 = 6;
const SLOT_SHIFT: u32 = 7;

/// Sequence `b` of the call (see [`Sequence`]), at the start of a kernel: every thread of the CTA
/// calls it with its `tid`, in uniform control flow. `PACKED`: the kernel's instantiation
/// for sequences found in device memory (separate kernels, so that the dense ones carry no trace of it
/// and keep their registers): a packed batch's, where thread 0 reads two offsets of each `cu_seqlens`
/// (global memory) and clamps them into the tensors ([`packed_tokens`]), or a paged cache's (batch row
/// b, its keys the first `seqused_k[b]`); thread 0 keeps the sequence in the CTA's shared slot
/// (`ptx::smem::store_cta_slot`); after a CTA barrier every thread reads it from there, as the loops
/// do ([`parked`], [`sequence_mask`]): a packed batch's lengths are not parameters, and neither holding
/// them in registers nor re-reading the offsets (64-bit addresses) fits the kernels' register budgets.
///
/// # Safety
/// `PACKED` only for a packed call, whose `cu_seqlens_q`/`cu_seqlens_k` hold at least `b + 2` i32
/// values (and `diagonal_shifts`, where set, `b + 1`), or one with `seqused_k` holding at least
/// `b + 1`; then the kernel uses no CTA barrier 0 of its own at the same time.
#[inline(always)]
pub unsafe fn enter<const PACKED: bool>(p: &ScoreParams, b: u32, tid: u32) -> Sequence {
    if !PACKED {
        return resolve::<false>(p, b, p.mask);
    }
    if tid == 0 {
        let seq = resolve::<true>(p, b, p.mask);
        let m = &seq.mask;
        smem::store_cta_slot([m.seqlen_q, m.seqlen_k, m.left, m.right, seq.q0, seq.k0, seq.row, m.shift as u32]);
    }
    sync::block();
    parked::<true>(p, b)
}

/// The CTA's sequence where a loop needs it: a dense kernel's from the parameters (batch row `b`), a
/// packed kernel's from its shared slot ([`enter`]).
///
/// # Safety
/// A packed kernel's threads have passed [`enter`].
#[inline(always)]
pub unsafe fn parked<const PACKED: bool>(p: &ScoreParams, b: u32) -> Sequence {
    if !PACKED {
        return resolve::<false>(p, b, p.mask);
    }
    let [q0, k0] = smem::load_cta_slot_v2();
    Sequence { mask: parked_mask(), q0, k0, row: smem::load_cta_slot_word::<SLOT_ROW>() }
}

/// The batch row, first key and key count of the CTA's sequence (`Sequence::row`, `k0`,
/// `mask.seqlen_k`) as [`parked`] gives them, a packed kernel's in two registers (its batch row is 0):
/// what a loader needs per block. Packed batches only: a paged cache's keys are found through its
/// block table.
///
/// # Safety
/// As [`parked`].
#[inline(always)]
pub unsafe fn parked_keys<const PACKED: bool>(p: &ScoreParams, b: u32) -> (u32, u32, u32) {
    if !PACKED {
        return (b, 0, p.mask.seqlen_k);
    }
    (0, smem::load_cta_slot_word::<SLOT_K0>(), smem::load_cta_slot_word::<SLOT_SEQLEN_K>())
}

/// The key count of the CTA's sequence (`mask.seqlen_k`) from a packed kernel's shared slot, in one
/// register: what a paged cache's loader needs per block.
///
/// # Safety
/// As [`parked`], in a packed kernel.
#[inline(always)]
pub unsafe fn parked_seqlen_k() -> u32 {
    smem::load_cta_slot_word::<SLOT_SEQLEN_K>()
}

/// The batch row and first query of the CTA's sequence (`Sequence::row`, `q0`) as [`parked`] gives
/// them, a packed kernel's in one register (its batch row is 0). Packed batches only.
///
/// # Safety
/// As [`parked`].
#[inline(always)]
pub unsafe fn parked_queries<const PACKED: bool>(b: u32) -> (u32, u32) {
    if !PACKED {
        return (b, 0);
    }
    (0, smem::load_cta_slot_word::<SLOT_Q0>())
}

#[inline(always)]
unsafe fn parked_mask() -> Mask {
    let [seqlen_q, seqlen_k, left, right] = smem::load_cta_slot_v4();
    Mask { seqlen_q, seqlen_k, left, right, shift: smem::load_cta_slot_word::<SLOT_SHIFT>() as i32 }
}

/// The sequence's mask as the score stage reads it inside a block loop: from the parameter space
/// through `ptx::opaque` ([`call_mask`]), or a packed kernel's from its shared slot ([`parked`]), so
/// that none of it is held in registers through the loop.
///
/// # Safety
/// As [`parked`].
#[inline(always)]
pub unsafe fn sequence_mask<const PACKED: bool>(p: &ScoreParams) -> Mask {
    if !PACKED {
        return call_mask(p);
    }
    parked_mask()
}

#[inline(always)]
unsafe fn resolve<const PACKED: bool>(p: &ScoreParams, b: u32, call: Mask) -> Sequence {
    if !PACKED {
        return Sequence { mask: dense_mask(call), q0: 0, k0: 0, row: b };
    }
    if p.seqused_k != 0 {
        // A batch row that uses a prefix of its keys (a paged cache).
        let used = (*(p.seqused_k as *const i32).add(b as usize)).max(0) as u32;
        return Sequence { mask: call.of_sequence(call.seqlen_q, used.min(call.seqlen_k), 0), q0: 0, k0: 0, row: b };
    }
    let offsets = |cu: u64| (*(cu as *const i32).add(b as usize), *(cu as *const i32).add(b as usize + 1));
    let (q_start, q_end) = offsets(p.cu_seqlens_q);
    let (k_start, k_end) = offsets(p.cu_seqlens_k);
    let (q0, q1) = packed_tokens(q_start, q_end, call.seqlen_q, p.max_seqlen_q);
    let (k0, k1) = packed_tokens(k_start, k_end, call.seqlen_k, p.max_seqlen_k);
    // A shift outside ±MAX_SHIFTED (device data the host could not check) can only give a wrong mask.
    let shift = if p.diagonal_shifts != 0 { *(p.diagonal_shifts as *const i32).add(b as usize) } else { 0 };
    let shift = shift.max(-(MAX_SHIFTED as i32)).min(MAX_SHIFTED as i32);
    Sequence { mask: call.of_sequence(q1 - q0, k1 - k0, shift), q0, k0, row: 0 }
}

/// What the forward's stage leaves for the online softmax: the logit of element `x` of row half `r` of
/// m16 tile `m` is `factor · x + row_offset[m][r]` (base 2). `factor` is positive; a row offset of
/// `-0.0` (the plain stage's, a constant) folds away.
#[derive(Clone, Copy)]
pub struct Logits<const MT: usize> {
    pub factor: f32,
    pub row_offset: [[f32; 2]; MT],
}

impl<const MT: usize> Logits<MT> {
    #[inline(always)]
    fn factor_only(factor: f32) -> Self {
        Logits { factor, row_offset: [[-0.0; 2]; MT] }
    }
}

/// Forward orientation (rows are queries, columns keys): `s` becomes the logits of one query head up
/// to the returned positive factor and per-row offsets ([`Logits`]), which the online softmax applies
/// in its fused multiply-add (`fwd/softmax.rs`): the plain stage leaves raw dot products (factor
/// `scale·log2 e`) unless the scale is negative; with a softcap it leaves `tanh` (factor: the cap in
/// base-2 units); ALiBi's bias is added in units of the factor, its per-row part as the row offset
/// where the warp's tile lies on one side of the diagonal. Invisible pairs become `-inf` when `masked`
/// (the block range says whether the tile needs it).
/// `alibi_slope()` gives the head's ALiBi slope in base-2 units ([`alibi_slope_log2`]); it is asked for
/// only with ALiBi, so a kernel whose registers bind loads it there, and one with registers to spare
/// loads it once, before its loop.
///
/// `MODS`: whether the call may have a softcap or ALiBi (`ScoreParams::has_modifiers`); without, the
/// stage is the scale and the mask only, with no branch between the score product and the softmax. A
/// kernel runs its block loop in two copies, chosen once per CTA.
///
/// # Safety
/// `p` is the call's score parameters; `alibi_slope` is safe to call when `p` has ALiBi slopes.
#[inline(always)]
pub unsafe fn logits_by_query<const MT: usize, const NN: usize, const MODS: bool>(
    p: &ScoreParams,
    mask: impl Fn() -> Mask,
    alibi_slope: impl Fn() -> f32,
    s: &mut AccFrag<MT, NN>,
    at: FragPos,
    masked: bool,
) -> Logits<MT> {
    if MODS {
        logits::<MT, NN, false, false>(p, mask, alibi_slope, s, at, masked, |_, _, _, _| {})
    } else {
        Logits::factor_only(mask_raw::<MT, NN>(p, mask, s, at, masked))
    }
}

/// The plain stage, forward orientation: the mask on the raw dot products, whose factor (the scale)
/// the softmax applies; a negative scale (legal) is applied here, since the softmax's row max needs a
/// positive factor.
#[inline(always)]
fn mask_raw<const MT: usize, const NN: usize>(
    p: &ScoreParams,
    mask: impl Fn() -> Mask,
    s: &mut AccFrag<MT, NN>,
    at: FragPos,
    masked: bool,
) -> f32 {
    let factor = raw_or_scaled(p, s);
    if masked {
        apply_mask::<MT, NN, false>(&mask(), s, at);
    }
    factor
}

/// Forward raw dot products without a softcap: left raw, with the scale as the softmax's factor, unless
/// the scale is not positive (the row max needs a positive factor): then scaled here, factor 1.
#[inline(always)]
fn raw_or_scaled<const MT: usize, const NN: usize>(p: &ScoreParams, s: &mut AccFrag<MT, NN>) -> f32 {
    if p.scale_log2 > 0.0 {
        p.scale_log2
    } else {
        scale(p, s);
        1.0
    }
}

/// Raw scores to base-2 logits without a softcap: `scale · log2 e · (q·k)`.
#[inline(always)]
fn scale<const MT: usize, const NN: usize>(p: &ScoreParams, s: &mut AccFrag<MT, NN>) {
    let scale = p.scale_log2;
    for tiles in s.0.iter_mut() {
        for tile in tiles.iter_mut() {
            for x in tile.iter_mut() {
                *x *= scale;
            }
        }
    }
}

/// Backward orientation (rows are keys, columns queries): as [`logits_by_query`], except that the
/// softcap is a compile-time choice here (the backward's kernels come in two instantiations, so that
/// the plain one carries no softcap code): `DTANH` applies it, and the softcap's derivative `1 − tanh²`
/// of each element pair (m16 tile m, n8 tile n, row half r, columns 2t and 2t+1) goes to
/// `dtanh(m, n, r, [d0, d1])` as soon as it is known, so that the kernel can park it (in shared memory)
/// instead of holding a fragment of registers until dS.
///
/// # Safety
/// As [`logits_by_query`].
#[inline(always)]
pub unsafe fn logits_by_key<const MT: usize, const NN: usize, const DTANH: bool>(
    p: &ScoreParams,
    mask: impl Fn() -> Mask,
    alibi_slope: impl Fn() -> f32,
    s: &mut AccFrag<MT, NN>,
    at: FragPos,
    masked: bool,
    dtanh: impl FnMut(usize, usize, usize, [f32; 2]),
) {
    // The backward's logits are formed here (factor 1, no row offsets).
    let _ = logits::<MT, NN, true, DTANH>(p, mask, alibi_slope, s, at, masked, dtanh);
}

/// The ALiBi slope of query head `head` of batch `batch` in base-2 units.
///
/// # Safety
/// `p.alibi_slopes` is set, with `heads_q` values (`alibi_batch_stride` 0) or `batch · heads_q`.
#[inline(always)]
pub unsafe fn alibi_slope_log2(p: &ScoreParams, batch: u32, head: u32) -> f32 {
    let at = batch * p.alibi_batch_stride + head;
    *(p.alibi_slopes as *const f32).add(opaque::u32(at) as usize) * LOG2_E
}

/// The sink logits (base 2) of a thread's rows `rows[m][r]` (m16 tile m, half r; rows of the
/// sequence) of head `head`: the head's sink, or with `by_row` (the forward's `FwdParams::sinks_by_row`:
/// the rows are query heads) each row's own query head's, `head·seqlen_q + row`; `-inf` without sinks
/// (the online softmax's initial running max; see `fwd/softmax.rs`).
///
/// # Safety
/// As [`sink_log2`]; with `by_row`, `head·seqlen_q + row` is a query head of the call for every row
/// below `seqlen_q` (rows past it are clamped to the last).
#[inline(always)]
pub unsafe fn row_sinks_log2<const MT: usize>(
    p: &ScoreParams,
    by_row: bool,
    head: u32,
    rows: [[u32; 2]; MT],
) -> [[f32; 2]; MT] {
    if !by_row {
        return [[sink_log2(p, head); 2]; MT];
    }
    let rows_per_head = p.mask.seqlen_q;
    rows.map(|pair| pair.map(|row| sink_log2(p, head * rows_per_head + row.min(rows_per_head - 1))))
}

/// The sink logit of query head `head` in base-2 units, `-inf` without sinks (the online softmax's
/// initial running max; see `fwd/softmax.rs`).
///
/// # Safety
/// `p.sinks`, if set, holds `heads_q` values and `head < heads_q`.
#[inline(always)]
pub unsafe fn sink_log2(p: &ScoreParams, head: u32) -> f32 {
    if p.sinks == 0 {
        f32::NEG_INFINITY
    } else {
        *(p.sinks as *const f32).add(head as usize) * LOG2_E
    }
}

#[inline(always)]
unsafe fn logits<const MT: usize, const NN: usize, const BY_KEY: bool, const DTANH: bool>(
    p: &ScoreParams,
    mask: impl Fn() -> Mask,
    alibi_slope: impl Fn() -> f32,
    s: &mut AccFrag<MT, NN>,
    at: FragPos,
    masked: bool,
    mut dtanh: impl FnMut(usize, usize, usize, [f32; 2]),
) -> Logits<MT> {
    // The forward decides at run time; the backward's instantiation decides (`DTANH`).
    let softcap = if BY_KEY { DTANH } else { opaque::f32(p.softcap_post) != 0.0 };
    // The forward leaves the last multiply to the softmax's fused multiply-add (`factor`, positive):
    // the softcap's `post` after the tanh, or the scale of raw dot products (`raw_or_scaled`); the
    // ALiBi bias is then added in units of that factor. The backward forms the logits (factor 1).
    let factor = if softcap {
        let (pre, post) = (opaque::f32(p.softcap_pre), opaque::f32(p.softcap_post));
        for (m, tiles) in s.0.iter_mut().enumerate() {
            for (n, tile) in tiles.iter_mut().enumerate() {
                for r in 0..2 {
                    let th = [tanh(tile[2 * r] * pre), tanh(tile[2 * r + 1] * pre)];
                    (tile[2 * r], tile[2 * r + 1]) = if BY_KEY { (th[0] * post, th[1] * post) } else { (th[0], th[1]) };
                    if DTANH {
                        dtanh(m, n, r, [1.0 - th[0] * th[0], 1.0 - th[1] * th[1]]);
                    }
                }
            }
        }
        if BY_KEY {
            1.0
        } else {
            post
        }
    } else if BY_KEY {
        scale(p, s);
        1.0
    } else {
        raw_or_scaled(p, s)
    };

    let mut out = Logits::factor_only(factor);
    if opaque::u32(p.has_alibi() as u32) != 0 {
        let slope_log2 = alibi_slope();
        // The slope in units of the factor.
        let slope = if BY_KEY || factor == 1.0 { slope_log2 } else { slope_log2 * recip(factor) };
        let seq_mask = mask();
        let offset = seq_mask.offset();
        // Forward: where the warp's tile lies on one side of the diagonal, |i + offset − j| is linear
        // in j there, and its per-row part goes to the row offset: one multiply-add per element.
        let side = if BY_KEY { 0.0 } else { diagonal_side::<MT, NN>(at, &seq_mask) };
        if side != 0.0 {
            alibi_one_side::<MT, NN>(s, at, offset, slope, slope_log2, side, &mut out.row_offset);
        } else {
            alibi_straddling::<MT, NN, BY_KEY>(s, at, offset, slope);
        }
    }

    if masked {
        apply_mask::<MT, NN, BY_KEY>(&mask(), s, at);
    }
    out
}

/// Forward orientation: `1.0` where every visible key of the warp's tile is at or before the diagonal
/// of its row (`j <= i + offset`), `-1.0` where every visible key is at or after it, `0.0` where the
/// diagonal crosses the tile. Causal attention (no key after the diagonal is visible) is `1.0`
/// everywhere, a left window of 0 is `-1.0`: the keys on the other side are masked to `-inf` after the
/// bias (a tile that holds any is a masked tile). Uniform across the warp.
#[inline(always)]
fn diagonal_side<const MT: usize, const NN: usize>(at: FragPos, mask: &Mask) -> f32 {
    if mask.right == 0 {
        return 1.0;
    }
    if mask.left == 0 {
        return -1.0;
    }
    let first_diagonal = at.warp_row0() + mask.offset();
    let last_diagonal = first_diagonal + (16 * MT) as i32 - 1;
    let (first_key, last_key) = (at.col0 as i32, (at.col0 as usize + 8 * NN - 1) as i32);
    if last_key <= first_diagonal {
        1.0
    } else if first_key >= last_diagonal {
        -1.0
    } else {
        0.0
    }
}

/// ALiBi where the warp's tile lies on one side of the diagonal (`side`, ±1): `−slope·|base − c|` with
/// `base = i + offset − col_t` (per row and lane) and `c = 8n + e` (a constant) is
/// `−side·slope·base + side·slope·c`; the first term goes to the row offsets (base-2 units), the second
/// is one multiply-add by a constant per element.
#[inline(always)]
fn alibi_one_side<const MT: usize, const NN: usize>(
    s: &mut AccFrag<MT, NN>,
    at: FragPos,
    offset: i32,
    slope: f32,
    slope_log2: f32,
    side: f32,
    row_offset: &mut [[f32; 2]; MT],
) {
    let per_col = side * slope;
    for m in 0..MT {
        for r in 0..2 {
            // Exact in f32 below 2^24; farther pairs have biases beyond any softmax's reach.
            let base = (at.row(m, r) + offset - at.col_t()) as f32;
            row_offset[m][r] = -side * slope_log2 * base;
            for (n, tile) in s.0[m].iter_mut().enumerate() {
                for e in 0..2 {
                    tile[2 * r + e] = fma(per_col, (8 * n + e) as f32, tile[2 * r + e]);
                }
            }
        }
    }
}

/// ALiBi in full, `−slope·|i + offset − j|` per element (the backward's orientation swaps the roles:
/// rows are keys, so the distance is `j' + offset − i'` for query column `j'` and key row `i'`).
#[inline(always)]
fn alibi_straddling<const MT: usize, const NN: usize, const BY_KEY: bool>(
    s: &mut AccFrag<MT, NN>,
    at: FragPos,
    offset: i32,
    slope: f32,
) {
    for m in 0..MT {
        for r in 0..2 {
            // |i + offset − j| = |base − c|, base in f32 (exact below 2^24; farther pairs have
            // biases beyond any softmax's reach).
            let (row, col_t) = (at.row(m, r), at.col_t());
            let base = if BY_KEY { row - offset - col_t } else { row + offset - col_t } as f32;
            for (n, tile) in s.0[m].iter_mut().enumerate() {
                for e in 0..2 {
                    let c = (8 * n + e) as f32;
                    tile[2 * r + e] = fma(-slope, (base - c).abs(), tile[2 * r + e]);
                }
            }
        }
    }
}

/// Invisible pairs to `-inf`, rows being queries (`!BY_KEY`) or keys.
#[inline(always)]
fn apply_mask<const MT: usize, const NN: usize, const BY_KEY: bool>(mask: &Mask, s: &mut AccFrag<MT, NN>, at: FragPos) {
    for m in 0..MT {
        for r in 0..2 {
            let (lo, hi) = if BY_KEY { mask.query_limits(at.row(m, r)) } else { mask.key_limits(at.row(m, r)) };
            let (lo, hi) = (lo - at.col_t(), hi - at.col_t());
            for (n, tile) in s.0[m].iter_mut().enumerate() {
                for e in 0..2 {
                    let c = (8 * n + e) as i32;
                    if c < lo || c >= hi {
                        tile[2 * r + e] = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }
}
