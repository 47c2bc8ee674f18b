//! The backward main kernel (FlashAttention-2 backward, Dao 2023, Algorithm 2): one CTA per
//! (key block, K/V head, batch). See `tiles_bwd` for the three products and their warp grids.
//!
//! Per query block (of each query head of the group):
//! - wait for its Q, dO, LSE, delta (cp.async), barrier, start loading the next one (2 stages);
//! - phase 1a: Sᵀ = K Qᵀ; the score stage (`attn/stage.rs`) turns it into logits x (scale or softcap,
//!   ALiBi, the mask as −inf); P = exp2(x − log2e·LSE) (0 where masked or where the row saw no key:
//!   LSE = −inf is read as +inf, so the exponent is −inf and never NaN), rounded to the element type,
//!   kept packed in registers and stored (Pᵀ) to shared memory;
//! - phase 1b: dPᵀ = V dOᵀ; dS = P ∘ (dP − delta) (times the softcap's 1 − tanh² in the `SOFTCAP`
//!   instantiation) stored (dSᵀ) to shared memory; barrier;
//! - phase 2: dV += Pᵀ dO, dK += dSᵀ Q (registers; V and dO may have a head dim `DV` of their own);
//! - phase 3: dS K added to the f32 dQ accumulator (`red.global.add.f32`, regrouped by shuffles into
//!   row-contiguous reductions), in key-block order when deterministic.
//!
//! Registers bind this kernel (dK and dV stay on chip for the whole loop), so nothing loop-invariant
//! is left in them: the CTA's global addresses and strides sit in shared memory (read where used), and
//! every lane- or region-dependent shared address is recomputed each step from opaque copies of the
//! thread index and the shared-memory base (`ptx::opaque`).
//!
//! Fragment layouts (PTX ISA §9.7.14.5.8, m16n8k16): A (row) from a row-major `[m][k]` tile with
//! `ldmatrix.x4` (lane l addresses row l%16, column 8·(l/16)); from a `[k][m]` tile with `.trans`
//! (row l%8 + 8·(l/16), column 8·((l/8)%2)). B (col) pairs of n8 tiles from an `[n][k]` tile with
//! `ldmatrix.x4` (row l%8 + 8·(l/16), column 8·((l/8)%2)); from a `[k][n]` tile with `.trans`
//! (row l%16, column 8·(l/16)). Registers 0,1 are the first n8 tile's b0,b1 and 2,3 the second's.

use super::{copy_key_grads, dq_accum_col, KeyRows};
use crate::abi::BwdParams;
use crate::attn::score::Mask;
use crate::attn::stage::{self, FragPos, Sequence};
use crate::frag::AccFrag;
use crate::ptx::math::exp2;
use crate::ptx::mma::MmaElem;
use crate::ptx::opaque::u32 as opaque;
use crate::ptx::shfl_idx::shfl_idx_f32;
use crate::ptx::{atomic, cp_async, ldmatrix, shared_f32, smem, sreg, sync};
use crate::smem_tile::{load_rows, RowLayout};

/// The CTA's loop-invariant global addresses and strides live in shared memory (10 u64 at `consts`),
/// written once by thread 0 and read where used, so that they hold no registers through the query loop
/// (registers bind the backward). Slots: q, q row stride, q head stride, dO, dO row stride, dO head
/// stride, LSE, delta (these four at batch b, head 0), dQ accumulator (batch b, head 0), turn counters
/// (batch b, head 0).
pub(super) const C_Q: u32 = 0;
pub(super) const C_DO: u32 = 24;
pub(super) const C_LSE: u32 = 48;
pub(super) const C_ACC: u32 = 64;

#[inline(always)]
pub(super) unsafe fn consts_pair(addr: u32) -> (u64, u64) {
    let v = smem::load_v4(addr);
    ((v[0] as u64) | ((v[1] as u64) << 32), (v[2] as u64) | ((v[3] as u64) << 32))
}

#[inline(always)]
pub(super) unsafe fn consts_store(consts: u32, slot: u32, value: u64) {
    smem::store_u32(consts + 8 * slot, value as u32);
    smem::store_u32(consts + 8 * slot + 4, (value >> 32) as u32);
}

/// The CTA's work item `(key block, K/V head, batch)`. Deterministic mode takes it from a global ticket
/// counter in grid order (key block fastest, from the last one down) rather than from the block index:
/// a CTA then only ever waits for the dQ turn of a later key block (`dq_turn`), whose CTA took its ticket
/// earlier, hence is running or done, whatever order the hardware dispatches blocks in. `slot`: 16 bytes
/// of 16-byte aligned shared memory. Contains a CTA barrier in deterministic mode.
#[inline(always)]
pub(super) unsafe fn work_item(p: &BwdParams, slot: u32, tid: u32) -> (u32, usize, usize) {
    if p.deterministic != 0 {
        if tid == 0 {
            smem::store_u32(slot, atomic::fetch_add_u32(p.dq_ticket as *mut u32, 1));
        }
        sync::block();
        let ticket = smem::load_v4(slot)[0];
        let (gx, gy) = (sreg::grid_dim_x(), p.heads_q / p.group);
        (gx - 1 - ticket % gx, ((ticket / gx) % gy) as usize, (ticket / gx / gy) as usize)
    } else {
        (sreg::block_x(), sreg::block_y() as usize, sreg::block_z() as usize)
    }
}

/// Writes the CTA's constants (see `C_Q`) for sequence `b` (`seq`: its batch row and first query).
#[inline(always)]
pub(super) unsafe fn store_consts<const BM: usize, const PACKED: bool>(
    consts: u32,
    p: &BwdParams,
    b: usize,
    seq: &Sequence,
) {
    let (qs, os) = (p.q_strides, p.d_o_strides);
    let (row, q0) = (seq.row as u64, seq.q0 as u64);
    let rows_b = row * p.heads_q as u64 * p.score.mask.seqlen_q as u64 + q0;
    consts_store(consts, 0, p.q + 2 * (row * qs[0] + q0 * qs[1]));
    consts_store(consts, 1, qs[1]);
    consts_store(consts, 2, qs[2]);
    consts_store(consts, 3, p.d_o + 2 * (row * os[0] + q0 * os[1]));
    consts_store(consts, 4, os[1]);
    consts_store(consts, 5, os[2]);
    consts_store(consts, 6, p.lse + 4 * rows_b);
    consts_store(consts, 7, p.delta + 4 * rows_b);
    consts_store(consts, 8, p.dq_accum + 4 * rows_b * p.head_dim as u64);
    let m_blocks = turn_counters_per_head::<BM, PACKED>(p) as u64;
    consts_store(consts, 9, p.dq_semaphore + 4 * b as u64 * p.heads_q as u64 * m_blocks);
}

/// Deterministic mode's turn counters: one per query block of `block_m` rows, all of them, whatever
/// blocks a CTA visits; for every sequence of a packed batch as many as its longest has.
#[inline(always)]
fn turn_counters_per_head<const BM: usize, const PACKED: bool>(p: &BwdParams) -> u32 {
    let rows = if PACKED { p.score.max_seqlen_q } else { p.score.mask.seqlen_q };
    rows.div_ceil(BM as u32)
}

/// The turn counter of query head `h`'s query block `m`, from the sequence's counters at
/// `batch_counters` (the constants' slot, see `C_ACC`).
#[inline(always)]
pub(super) unsafe fn turn_counter<const BM: usize, const PACKED: bool>(
    p: &BwdParams,
    batch_counters: u64,
    h: u32,
    m: u32,
) -> *mut u32 {
    (batch_counters as *mut u32).add(h as usize * turn_counters_per_head::<BM, PACKED>(p) as usize + m as usize)
}

/// The CTA's sequence's mask inside the query loop: a dense call's from the parameters, a packed one's
/// from the CTA's shared slot (`attn::stage::enter`).
///
/// # Safety
/// A packed kernel's threads have passed `attn::stage::enter`.
#[inline(always)]
pub(super) unsafe fn loop_mask<const PACKED: bool>(p: &BwdParams) -> Mask {
    if PACKED {
        stage::sequence_mask::<true>(&p.score)
    } else {
        stage::dense_mask(p.score.mask)
    }
}

/// Issues the copies of query block `m` of query head `h` (Q, dO, LSE, delta) into one stage; Q rows are
/// `D` wide, dO rows `DV`. `(seqlen_q, rows_per_head)`: the sequence's queries, and the rows per head
/// of the LSE layout (a dense call's `seqlen_q`, a packed one's token count).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn load_query_block<const BM: usize, const D: usize, const DV: usize>(
    layout: RowLayout,
    consts: u32,
    h: u32,
    m: u32,
    (seqlen_q, rows_per_head): (u32, u32),
    dst: [u32; 4],
    tid: u32,
    threads: usize,
) {
    let m0 = m * BM as u32;
    let rows = (seqlen_q - m0).min(BM as u32);
    let (h, m0u) = (h as usize, m0 as usize);
    let (q, qs1) = consts_pair(consts + C_Q);
    let (qs2, d_o) = consts_pair(consts + C_Q + 16);
    let (dos1, dos2) = consts_pair(consts + C_DO + 8);
    let q = (q as *const u16).add(m0u * qs1 as usize + h * qs2 as usize);
    load_rows::<BM, D>(layout, dst[0], q, qs1 as usize, rows, tid, threads);
    let d_o = (d_o as *const u16).add(m0u * dos1 as usize + h * dos2 as usize);
    load_rows::<BM, DV>(layout, dst[1], d_o, dos1 as usize, rows, tid, threads);
    load_query_stats::<BM>(consts, h as u32, m, (seqlen_q, rows_per_head), [dst[2], dst[3]], tid);
}

/// Issues the copies of the LSE and delta of query block `m` of query head `h` (zeros past the
/// sequence) by the first `BM` threads: `load_query_block`'s last part, which the Hopper kernel's TMA
/// rows run alone (their Q and dO come by TMA).
#[inline(always)]
pub(super) unsafe fn load_query_stats<const BM: usize>(
    consts: u32,
    h: u32,
    m: u32,
    (seqlen_q, rows_per_head): (u32, u32),
    dst: [u32; 2],
    tid: u32,
) {
    if (tid as usize) < BM {
        let m0 = m * BM as u32;
        let (lse, delta) = consts_pair(consts + C_LSE);
        let (lse, delta) = (lse as *const f32, delta as *const f32);
        let valid = tid < (seqlen_q - m0).min(BM as u32);
        let row = h as usize * rows_per_head as usize + m0 as usize + tid as usize;
        let (lse, delta) = if valid { (lse.add(row), delta.add(row)) } else { (lse, delta) };
        shared_f32::copy4_or_zero(dst[0] + tid * 4, lse, valid);
        shared_f32::copy4_or_zero(dst[1] + tid * 4, delta, valid);
    }
}

#[inline(always)]
pub(super) fn strides(s: [u64; 3]) -> [usize; 3] {
    [s[0] as usize, s[1] as usize, s[2] as usize]
}

/// What one CTA does: its first key `n0`, and the query blocks it visits, `[m_end - per_head, m_end)` of
/// each of the group's query heads from `h_first` on (`total` steps), in the order of `block`, the same
/// for both main kernels.
#[derive(Clone, Copy)]
pub(super) struct KeyBlockWork {
    pub n0: u32,
    pub m_end: u32,
    pub per_head: u32,
    pub total: u32,
    pub h_first: u32,
}

impl KeyBlockWork {
    /// The query head and query block of step `it` of a call in mode `p.deterministic`. Deterministic
    /// mode goes up from the key block's first query block, so that where the key blocks' ranges are
    /// staggered (causal, windows), the later key blocks, whose turns come first (`dq_turn`), reach
    /// each query block a step or more before the next earlier one, instead of every key block of a
    /// head reaching it at the same step and waiting for the turns of all the others. The fast mode
    /// (no turns) goes down. (The mode is read from the parameters at each use, not held in a register
    /// through the loop.)
    #[inline(always)]
    pub fn block(&self, it: u32, p: &BwdParams) -> (u32, u32) {
        let (h, i) = (self.h_first + it / self.per_head, it % self.per_head);
        (h, if p.deterministic != 0 { self.m_end - self.per_head + i } else { self.m_end - 1 - i })
    }
}

/// `mask`: the CTA's sequence's. A packed batch's CTA may start past its sequence's keys (the grid is
/// sized by the longest): it has no work.
#[inline(always)]
pub(super) fn key_block_work<const BM: usize, const BN: usize, const PACKED: bool>(
    p: &BwdParams,
    mask: &Mask,
    nb: u32,
    hkv: usize,
) -> KeyBlockWork {
    let n0 = nb * BN as u32;
    let (m_first, m_end) =
        if PACKED && n0 >= mask.seqlen_k { (0, 0) } else { mask.query_blocks(n0, BN as u32, BM as u32) };
    let per_head = m_end - m_first;
    KeyBlockWork { n0, m_end, per_head, total: per_head * p.group, h_first: hkv as u32 * p.group }
}

/// The turn of key block `nb` at query block `m` in deterministic mode (`mask`: the sequence's): the key
/// blocks that visit a query block form one contiguous range (`attn::score`), and they add their dQ
/// parts from the last key block down, so the turn is the block's place in that range counted from its
/// end. Every block before it took its work-item ticket earlier (see `work_item`), so the wait ends.
#[inline(always)]
pub(super) fn dq_turn<const BM: usize, const BN: usize>(mask: &Mask, nb: u32, m: u32) -> u32 {
    let m0 = m * BM as u32;
    let rows = (mask.seqlen_q - m0).min(BM as u32);
    mask.key_blocks(m0, rows, BN as u32).end - 1 - nb
}

/// Issues the copies of the CTA's `BN` K and V rows (`D` and `DV` wide) from key `n0` of its sequence
/// (`seq`; zero past the end of its keys) into `k_dst` and `v_dst`, laid out as `layout`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn load_key_block<const BN: usize, const D: usize, const DV: usize, const PACKED: bool>(
    p: &BwdParams,
    layout: RowLayout,
    seq: &Sequence,
    (hkv, n0): (usize, u32),
    k_dst: u32,
    v_dst: u32,
    tid: u32,
    threads: usize,
) {
    let seqlen_k = seq.mask.seqlen_k;
    let kv_rows = if PACKED { seqlen_k.max(n0) - n0 } else { seqlen_k - n0 }.min(BN as u32);
    let (ks, vs) = (strides(p.k_strides), strides(p.v_strides));
    let (b, key) = (seq.row as usize, (seq.k0 + n0) as usize);
    let k_g = (p.k as *const u16).add(b * ks[0] + key * ks[1] + hkv * ks[2]);
    let v_g = (p.v as *const u16).add(b * vs[0] + key * vs[1] + hkv * vs[2]);
    load_rows::<BN, D>(layout, k_dst, k_g, ks[1], kv_rows, tid, threads);
    load_rows::<BN, DV>(layout, v_dst, v_g, vs[1], kv_rows, tid, threads);
}

/// The backward main kernel body for head dims `D` (Q, K) and `DV` (V, dO). `MT*`/`NT*`/`ND*` are the
/// per-warp tile counts of the three phases (`tiles_bwd::BwdTile::{sdp,dkv,dq}_{m,n}_tiles`, `ND2V`:
/// `dv_n_tiles`); `SOFTCAP`: the instantiation for calls with a
/// softcap (dS chained through the tanh; a separate kernel, so that the plain one keeps its registers);
/// `PACKED`: the one for packed variable-length batches (grid z: the sequences; each CTA finds its
/// sequence with `attn::stage::enter`).
///
/// # Safety
/// Launched as `abi::BwdParams` documents, with `W·32` threads and the tile's shared memory; `PACKED`
/// exactly for a packed call.
#[inline(always)]
pub unsafe fn attn_bwd<
    E: MmaElem,
    const D: usize,
    const DV: usize,
    const BM: usize,
    const BN: usize,
    const W: usize,
    const QS: usize,
    const WN1: usize,
    const MT1: usize,
    const NT1: usize,
    const WN2: usize,
    const MT2: usize,
    const ND2: usize,
    const ND2V: usize,
    const WM3: usize,
    const MT3: usize,
    const ND3: usize,
    const SOFTCAP: bool,
    const PACKED: bool,
>(
    p: &BwdParams,
) {
    let threads = W * 32;
    let tid = sreg::thread_x();
    // The LSE layout's rows per head: a dense call's queries, a packed call's tokens.
    let sq = p.score.mask.seqlen_q;

    // Shared memory (tiles_bwd::BwdTile::smem_layout): K and Q rows of `D`, V and dO rows of `DV`.
    let row_b = ((D + 8) * 2) as u32;
    let row_bv = ((DV + 8) * 2) as u32;
    let prow_b = ((BM + 8) * 2) as u32;
    let stage_b = BM as u32 * row_b;
    let stage_bv = BM as u32 * row_bv;
    let stage_f = (BM * 4) as u32;
    let off_v = BN as u32 * row_b;
    let off_q = off_v + BN as u32 * row_bv;
    let off_do = off_q + QS as u32 * stage_b;
    let off_p = off_do + QS as u32 * stage_bv;
    let off_ds = off_p + BN as u32 * prow_b;
    let off_lse = off_ds + BN as u32 * prow_b;
    let off_dl = off_lse + QS as u32 * stage_f;
    let off_consts = off_dl + QS as u32 * stage_f;
    let base = smem::base();

    let (nb, hkv, b) = work_item(p, base + off_consts + 80, tid);
    let seq = stage::enter::<PACKED>(&p.score, b as u32, tid);

    let work = key_block_work::<BM, BN, PACKED>(p, &seq.mask, nb, hkv);
    let KeyBlockWork { n0, total, .. } = work;

    // K and V of this CTA's keys.
    load_key_block::<BN, D, DV, PACKED>(p, RowLayout::Padded, &seq, (hkv, n0), base, base + off_v, tid, threads);

    // The per-CTA constants (see `C_Q`); visible to every thread after the first barrier of the loop.
    let consts = base + off_consts;
    let rows_b = (seq.row as usize * p.heads_q as usize) * sq as usize + seq.q0 as usize;
    if tid == 0 {
        store_consts::<BM, PACKED>(consts, p, b, &seq);
    }
    if total > 0 {
        // The first block's copies read the values themselves (the constants are not visible yet).
        let (h, m) = work.block(0, p);
        let m0 = (m * BM as u32) as usize;
        let rows = (seq.mask.seqlen_q - m * BM as u32).min(BM as u32);
        let (qs, os) = (strides(p.q_strides), strides(p.d_o_strides));
        let (h, row, first) = (h as usize, seq.row as usize, seq.q0 as usize + m0);
        let q = (p.q as *const u16).add(row * qs[0] + first * qs[1] + h * qs[2]);
        load_rows::<BM, D>(RowLayout::Padded, base + off_q, q, qs[1], rows, tid, threads);
        let d_o = (p.d_o as *const u16).add(row * os[0] + first * os[1] + h * os[2]);
        load_rows::<BM, DV>(RowLayout::Padded, base + off_do, d_o, os[1], rows, tid, threads);
        if (tid as usize) < BM {
            let valid = tid < rows;
            let row = rows_b + h * sq as usize + m0 + tid as usize;
            let (lse, delta) = (p.lse as *const f32, p.delta as *const f32);
            let (lse, delta) = if valid { (lse.add(row), delta.add(row)) } else { (lse, delta) };
            shared_f32::copy4_or_zero(base + off_lse + tid * 4, lse, valid);
            shared_f32::copy4_or_zero(base + off_dl + tid * 4, delta, valid);
        }
    }
    cp_async::commit();

    let mut dk = [[[0f32; 4]; ND2]; MT2];
    let mut dv = [[[0f32; 4]; ND2V]; MT2];

    let mut it = 0u32;
    while it < total {
        // Everything below is recomputed from opaque copies of the thread index and the shared-memory
        // base each step, so that no lane- or region-dependent address stays live in a register
        // through the loop (see `ptx::opaque`).
        let tid = opaque(tid);
        let base = opaque(base);
        let lane = (tid % 32) as usize;
        let warp = (tid / 32) as usize;
        let (g, t) = (lane / 4, lane % 4);
        let (k_s, v_s, p_s, ds_s) = (base, base + off_v, base + off_p, base + off_ds);
        let consts = base + off_consts;
        // Warp grids of the three phases.
        let (key1, qry1) = ((warp % WN1) * MT1 * 16, (warp / WN1) * NT1 * 8);
        let (key2, col2, col2v) = ((warp % WN2) * MT2 * 16, (warp / WN2) * ND2 * 8, (warp / WN2) * ND2V * 8);
        let (qry3, col3) = ((warp % WM3) * MT3 * 16, (warp / WM3) * ND3 * 8);

        let (h, m) = work.block(it, p);
        let m0 = m * BM as u32;
        let stage = if QS == 2 { it % 2 } else { 0 };
        let (q_s, do_s) = (base + off_q + stage * stage_b, base + off_do + stage * stage_bv);
        let (lse_s, dl_s) = (base + off_lse + stage * stage_f, base + off_dl + stage * stage_f);

        cp_async::wait::<0>();
        sync::block();
        if QS == 2 {
            if it + 1 < total {
                let (hn, mn) = work.block(it + 1, p);
                let sn = 1 - stage;
                let dst = [
                    base + off_q + sn * stage_b,
                    base + off_do + sn * stage_bv,
                    base + off_lse + sn * stage_f,
                    base + off_dl + sn * stage_f,
                ];
                let seq_q = loop_mask::<PACKED>(p).seqlen_q;
                load_query_block::<BM, D, DV>(RowLayout::Padded, consts, hn, mn, (seq_q, sq), dst, tid, threads);
            }
            cp_async::commit();
        }

        // Phase 1a: Sᵀ = K Qᵀ, then P (rounded to the element type: the registers it keeps until dS are
        // half those of f32, and dV uses the rounded P anyway), stored to shared memory.
        let a_lane = ((key1 + lane % 16) as u32) * row_b + ((lane / 16) * 16) as u32;
        let b_lane = ((qry1 + lane % 8 + (lane / 16) * 8) as u32) * row_b + (((lane / 8) % 2) * 16) as u32;
        let st_lane = ((key1 + g) as u32) * prow_b + ((qry1 + 2 * t) * 2) as u32;
        let mut s = [[[0f32; 4]; NT1]; MT1];
        {
            let (k_a, q_b) = (opaque(k_s + a_lane), opaque(q_s + b_lane));
            for kk in 0..D / 16 {
                let mut ak = [[0u32; 4]; MT1];
                for mt in 0..MT1 {
                    ak[mt] = ldmatrix::x4(k_a + (mt * 16) as u32 * row_b + (kk * 32) as u32);
                }
                for np in 0..NT1 / 2 {
                    let bq = ldmatrix::x4(q_b + (np * 16) as u32 * row_b + (kk * 32) as u32);
                    for mt in 0..MT1 {
                        E::mma(&mut s[mt][2 * np], &ak[mt], &[bq[0], bq[1]]);
                        E::mma(&mut s[mt][2 * np + 1], &ak[mt], &[bq[2], bq[3]]);
                    }
                }
            }
        }
        // The score stage: logits of query head h, masked (−inf, so P = 0 by the exponent, never by a
        // multiply: a masked exponent may overflow to +inf) where the tile needs it.
        let need_mask = loop_mask::<PACKED>(p).needs_mask(m0, BM as u32, n0, BN as u32);
        let mut s = AccFrag(s);
        let at = FragPos { row_g: n0 + (key1 + g) as u32, col0: m0 + qry1 as u32, t: t as u32 };
        // With a softcap, dS takes the tanh's derivative: it waits for dP in the dSᵀ tile, rounded to the
        // element type, at the place where this thread writes dS (free since the barrier that began
        // this step); held in registers, it would push this kernel's registers into spills.
        let st_off = |mt: usize, nt: usize, rr: usize| (mt * 16 + 8 * rr) as u32 * prow_b + (nt * 16) as u32;
        let park = |mt, nt, rr, d: [f32; 2]| smem::store_u32(ds_s + st_lane + st_off(mt, nt, rr), E::pack2(d[0], d[1]));
        let mask = || stage::sequence_mask::<PACKED>(&p.score);
        let slope = || stage::alibi_slope_log2(&p.score, b as u32, h);
        stage::logits_by_key::<MT1, NT1, SOFTCAP>(&p.score, mask, slope, &mut s, at, need_mask, park);
        let s = s.0;
        let mut pk = [[[0u32; 2]; NT1]; MT1];
        let p_st = opaque(p_s + st_lane);
        let ds_st = opaque(ds_s + st_lane);
        for nt in 0..NT1 {
            let c = qry1 + nt * 8 + 2 * t;
            let lse = shared_f32::load_v2(lse_s + (c * 4) as u32);
            // A row that saw no key has LSE = -inf: read as +inf, its P is exp2(-inf) = 0.
            let lse2 = [
                if lse[0] == f32::NEG_INFINITY { f32::INFINITY } else { lse[0] * core::f32::consts::LOG2_E },
                if lse[1] == f32::NEG_INFINITY { f32::INFINITY } else { lse[1] * core::f32::consts::LOG2_E },
            ];
            for mt in 0..MT1 {
                let mut pv = [0f32; 4];
                for e in 0..4 {
                    pv[e] = exp2(s[mt][nt][e] - lse2[e % 2]);
                }
                for rr in 0..2 {
                    pk[mt][nt][rr] = E::pack2(pv[2 * rr], pv[2 * rr + 1]);
                    smem::store_u32(p_st + st_off(mt, nt, rr), pk[mt][nt][rr]);
                }
            }
        }

        // Phase 1b: dPᵀ = V dOᵀ (over `DV`), then dS = P ∘ (dP − delta), stored to shared memory.
        let mut dp = [[[0f32; 4]; NT1]; MT1];
        {
            let a_lane = ((key1 + lane % 16) as u32) * row_bv + ((lane / 16) * 16) as u32;
            let b_lane = ((qry1 + lane % 8 + (lane / 16) * 8) as u32) * row_bv + (((lane / 8) % 2) * 16) as u32;
            let (v_a, do_b) = (opaque(v_s + a_lane), opaque(do_s + b_lane));
            for kk in 0..DV / 16 {
                let mut av = [[0u32; 4]; MT1];
                for mt in 0..MT1 {
                    av[mt] = ldmatrix::x4(v_a + (mt * 16) as u32 * row_bv + (kk * 32) as u32);
                }
                for np in 0..NT1 / 2 {
                    let bo = ldmatrix::x4(do_b + (np * 16) as u32 * row_bv + (kk * 32) as u32);
                    for mt in 0..MT1 {
                        E::mma(&mut dp[mt][2 * np], &av[mt], &[bo[0], bo[1]]);
                        E::mma(&mut dp[mt][2 * np + 1], &av[mt], &[bo[2], bo[3]]);
                    }
                }
            }
        }
        for nt in 0..NT1 {
            let c = qry1 + nt * 8 + 2 * t;
            let delta = shared_f32::load_v2(dl_s + (c * 4) as u32);
            for mt in 0..MT1 {
                for rr in 0..2 {
                    let off = st_off(mt, nt, rr);
                    let (mut p0, mut p1) = (E::to_f32(pk[mt][nt][rr] as u16), E::to_f32((pk[mt][nt][rr] >> 16) as u16));
                    if SOFTCAP {
                        let d = smem::load_u32(ds_st + off);
                        (p0, p1) = (p0 * E::to_f32(d as u16), p1 * E::to_f32((d >> 16) as u16));
                    }
                    let ds0 = p0 * (dp[mt][nt][2 * rr] - delta[0]);
                    let ds1 = p1 * (dp[mt][nt][2 * rr + 1] - delta[1]);
                    smem::store_u32(ds_st + off, E::pack2(ds0, ds1));
                }
            }
        }
        sync::block();

        // Phase 2: dV += Pᵀ dO, dK += dSᵀ Q.
        let a_lane = ((key2 + lane % 16) as u32) * prow_b + ((lane / 16) * 16) as u32;
        let b_lane = ((lane % 16) as u32) * row_b + ((col2 + (lane / 16) * 8) * 2) as u32;
        let b_lane_v = ((lane % 16) as u32) * row_bv + ((col2v + (lane / 16) * 8) * 2) as u32;
        let (p_a, ds_a) = (opaque(p_s + a_lane), opaque(ds_s + a_lane));
        let (do_t, q_t) = (opaque(do_s + b_lane_v), opaque(q_s + b_lane));
        for kk in 0..BM / 16 {
            let mut ap = [[0u32; 4]; MT2];
            let mut ads = [[0u32; 4]; MT2];
            for mt in 0..MT2 {
                let off = (mt * 16) as u32 * prow_b + (kk * 32) as u32;
                ap[mt] = ldmatrix::x4(p_a + off);
                ads[mt] = ldmatrix::x4(ds_a + off);
            }
            // One unrolled loop over both products' column pairs (the bounds are constants, so with
            // `DV == D` each step is the same fused pair as ever, and past `ND2V` only dK is left).
            for np in 0..ND2.max(ND2V) / 2 {
                if np < ND2V / 2 {
                    let bo = ldmatrix::x4_trans(do_t + (kk * 16) as u32 * row_bv + (np * 32) as u32);
                    for mt in 0..MT2 {
                        E::mma(&mut dv[mt][2 * np], &ap[mt], &[bo[0], bo[1]]);
                        E::mma(&mut dv[mt][2 * np + 1], &ap[mt], &[bo[2], bo[3]]);
                    }
                }
                if np < ND2 / 2 {
                    let bq = ldmatrix::x4_trans(q_t + (kk * 16) as u32 * row_b + (np * 32) as u32);
                    for mt in 0..MT2 {
                        E::mma(&mut dk[mt][2 * np], &ads[mt], &[bq[0], bq[1]]);
                        E::mma(&mut dk[mt][2 * np + 1], &ads[mt], &[bq[2], bq[3]]);
                    }
                }
            }
        }

        // Phase 3: dQ_partial = dS K.
        let mut dq = [[[0f32; 4]; ND3]; MT3];
        let a_lane = ((lane % 8 + (lane / 16) * 8) as u32) * prow_b + ((qry3 + ((lane / 8) % 2) * 8) * 2) as u32;
        let b_lane = ((lane % 16) as u32) * row_b + ((col3 + (lane / 16) * 8) * 2) as u32;
        let (ds_t, k_t) = (opaque(ds_s + a_lane), opaque(k_s + b_lane));
        for kk in 0..BN / 16 {
            let mut a = [[0u32; 4]; MT3];
            for mt in 0..MT3 {
                let off = (kk * 16) as u32 * prow_b + (mt * 32) as u32;
                a[mt] = ldmatrix::x4_trans(ds_t + off);
            }
            for np in 0..ND3 / 2 {
                let off = (kk * 16) as u32 * row_b + (np * 32) as u32;
                let bk = ldmatrix::x4_trans(k_t + off);
                for mt in 0..MT3 {
                    E::mma(&mut dq[mt][2 * np], &a[mt], &[bk[0], bk[1]]);
                    E::mma(&mut dq[mt][2 * np + 1], &a[mt], &[bk[2], bk[3]]);
                }
            }
        }
        let deterministic = p.deterministic != 0;
        // Deterministic mode: the key blocks of one (batch, head, query block) add their dQ parts from
        // the last key block down (`dq_turn`), each CTA walking its query blocks up
        // (`KeyBlockWork::block`), so that where the key blocks' ranges are staggered each CTA reaches a
        // query block after the key blocks whose turns come before its own.
        let (acc, sem) = consts_pair(consts + C_ACC);
        let sem = turn_counter::<BM, PACKED>(p, sem, h, m);
        if deterministic {
            if tid == 0 {
                let turn = dq_turn::<BM, BN>(&loop_mask::<PACKED>(p), nb, m);
                while atomic::load_acquire_u32(sem) != turn {}
            }
            sync::block();
        }
        // The reductions go out row-contiguous: in the accumulator layout lane (g, t) holds columns 2t
        // and 2t+1 of rows g and g+8, so one `red` per register would touch 8 rows of 32-byte sectors,
        // each half used. Two shuffles per value regroup them so that one `red` covers 4 rows x 8
        // consecutive columns (4 full sectors), halving the L2's atomic work.
        let acc = (acc as *mut f32).add((h as usize * sq as usize + m0 as usize) * D);
        let seq_q = loop_mask::<PACKED>(p).seqlen_q;
        let q0 = stage::parked_queries::<PACKED>(b as u32).1;
        let (r_in_quad, c8) = (lane / 8, lane % 8);
        for mt in 0..MT3 {
            for hh in 0..2 {
                for quad in 0..2 {
                    let r8 = quad * 4 + r_in_quad;
                    let src = (r8 * 4 + c8 / 2) as u32;
                    let row = qry3 + mt * 16 + 8 * hh + r8;
                    let valid = m0 + (row as u32) < seq_q;
                    for nd in 0..ND3 {
                        let lo = shfl_idx_f32(dq[mt][nd][2 * hh], src);
                        let hi = shfl_idx_f32(dq[mt][nd][2 * hh + 1], src);
                        if valid {
                            let value = if c8 % 2 == 1 { hi } else { lo };
                            // The permutation keeps a group of 8 columns in its 32-byte sector.
                            let col = dq_accum_col(q0 + row as u32, (col3 + nd * 8 + c8) as u32) as usize;
                            atomic::red_add_f32(acc.add(row * D + col), value);
                        }
                    }
                }
            }
        }
        if deterministic {
            sync::block();
            if tid == 0 {
                atomic::release_add_u32(sem, 1);
            }
        }

        if QS == 1 {
            sync::block();
            if it + 1 < total {
                let (hn, mn) = work.block(it + 1, p);
                let dst = [base + off_q, base + off_do, base + off_lse, base + off_dl];
                let seq_q = loop_mask::<PACKED>(p).seqlen_q;
                load_query_block::<BM, D, DV>(RowLayout::Padded, consts, hn, mn, (seq_q, sq), dst, tid, threads);
            }
            cp_async::commit();
        }
        it += 1;
    }

    // dK (scaled) and dV of this CTA's keys, through K's and V's tiles: from the accumulator's layout
    // they would be 4-byte scattered stores, which on Hopper kept the compute warps 16% of their time
    // at 1K queries in the memory pipe's queue (`hopper.rs::park_key_grads`, docs/perf.md). Every
    // warp's products have read K and V (and, in a CTA without steps, every thread's copies of them
    // have landed) once all threads meet here; then each warp writes its block of keys × columns and
    // copies it out as 16-byte stores.
    cp_async::wait::<0>();
    sync::block();
    let tid = opaque(tid);
    let base = smem::base();
    let (lane, warp) = (tid % 32, (tid / 32) as usize);
    let (g, t) = (lane / 4, lane % 4);
    let (key2, col2, col2v) = ((warp % WN2) * MT2 * 16, (warp / WN2) * ND2 * 8, (warp / WN2) * ND2V * 8);
    let (k_s, v_s) = (base, base + off_v);
    for mt in 0..MT2 {
        for rr in 0..2 {
            let key = (key2 + mt * 16 + 8 * rr) as u32 + g;
            for nd in 0..ND2 {
                let at = k_s + key * row_b + ((col2 + nd * 8) as u32 + 2 * t) * 2;
                smem::store_u32(at, E::pack2(dk[mt][nd][2 * rr] * p.scale, dk[mt][nd][2 * rr + 1] * p.scale));
            }
            for nd in 0..ND2V {
                let at = v_s + key * row_bv + ((col2v + nd * 8) as u32 + 2 * t) * 2;
                smem::store_u32(at, E::pack2(dv[mt][nd][2 * rr], dv[mt][nd][2 * rr + 1]));
            }
        }
    }
    sync::warp();
    let (row, k0, sk) = stage::parked_keys::<PACKED>(&p.score, b as u32);
    let (dks, dvs) = (strides(p.dk_strides), strides(p.dv_strides));
    let (row, k0) = (row as usize, k0 as usize);
    let dk_g = (p.dk as *mut u16).add(row * dks[0] + k0 * dks[1] + hkv * dks[2]);
    let dv_g = (p.dv as *mut u16).add(row * dvs[0] + k0 * dvs[1] + hkv * dvs[2]);
    // The warp's `MT2 · 16` keys, `ND2` (`ND2V`) 16-byte chunks of each from column `col2` (`col2v`).
    let rows = KeyRows { first: key2 as u32, count: (MT2 * 16) as u32, n0, sk };
    let pad = RowLayout::Padded;
    copy_key_grads::<BN, D>(pad, k_s, dk_g, dks[1], rows, ((col2 / 8) as u32, ND2 as u32), lane);
    copy_key_grads::<BN, DV>(pad, v_s, dv_g, dvs[1], rows, ((col2v / 8) as u32, ND2V as u32), lane);
}
