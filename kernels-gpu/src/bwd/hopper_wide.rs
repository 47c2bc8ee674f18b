//! The backward main kernel on Hopper for head dims 192 and 256, and Q/K 192 with V 128
//! (`BwdTile::wgmma_splits_head_dim`):
//! the two compute warpgroups split the head dim, not the keys. With `hopper.rs`'s split (each
//! warpgroup 64 keys × the whole head dim) dK and dV alone would take 192 or 256 registers per thread
//! here; split by columns, each warpgroup owns all 64 keys of the CTA and half the head dim's columns
//! of dK, dV and dQ (at head dim 256: 64 + 64 registers for dK and dV, 64 for dQ's part), as
//! FlashAttention-3 arranges its head-dim-256 backward.
//!
//! A warpgroup's columns come in at most two parts (`Wide::parts`), each a whole `wgmma` product: at
//! head dim 256 columns 128w..128w+127; at 192 the 64-column block w and 32 columns of block 2 (an
//! MN-major operand may start inside a 64-column block, as `hopper.rs`'s dQ split at head dim 64 does,
//! but not run past it, which 96 columns from column 96 would).
//!
//! One CTA per (64 keys, K/V head, batch), 64-row query blocks, three warpgroups as in `hopper.rs`
//! (two compute warpgroups with 240 registers per thread, a third whose first warp writes dQ and whose
//! second loads Q and dO by TMA). Per query block, warpgroup w:
//! 1. Sᵀ_w = K Q_wᵀ and dPᵀ_w = V dO_wᵀ for the block's queries 32w..32w+31 (`[64 keys, 32 queries]`,
//!    n32 products over the whole head dim, K-major from shared memory);
//! 2. Pᵀ_w from the score stage's logits and the LSE, dSᵀ_w = Pᵀ_w ∘ (dPᵀ_w − delta), both stored to
//!    shared memory (`[64 keys][64 queries]`, swizzled), where every product that needs them reads
//!    them: dV and dK sum over all 64 queries, half of them the other warpgroup's;
//! 3. after a barrier: dV_w += Pᵀ dO_w, dK_w += dSᵀ Q_w (`[64 keys, its columns]`, dO and Q read
//!    MN-major) and dQ_w = dS K_w (`[64 queries, its columns]`, dS read MN-major from dSᵀ, K
//!    MN-major), issued back to back;
//! 4. dQ_w staged as f32 rows over the step's own query stage (its Q and dO tiles take as many bytes as
//!    the staged block, and every product that reads them has completed), for the writer's one bulk
//!    reduction; the writer then frees the stage for the loader, which refills it with the block two
//!    steps ahead. So dQ needs no staging buffers of its own, which would take head dim 256's shared
//!    memory past an H100's 227 KiB (215 KiB as laid out, `BwdTile::wgmma_smem_layout`).
//!
//! Barriers: as `hopper.rs`'s TMA rows (`BAR_QFULL + s` hands a stage over at the start of a step,
//! `BAR_FULL + s` the staged dQ to the writer), `BAR_COMPUTE` twice a step (between the Pᵀ/dSᵀ stores
//! and the products that read them; before the staging over the stage that both warpgroups' products
//! read); `BAR_QEMPTY + s` between the writer and the loader.

use super::hopper::{
    col_block, dq_writer, issue_by_key, k_major_step, loader_tma, park_key_grads, zero_rows, Shape, ALL_THREADS_U32,
    BAR_COMPUTE, BAR_FULL, BAR_QFULL, COMPUTE_REGS, COMPUTE_THREADS, COMPUTE_THREADS_U32, DQ_TURN, K16_ROWS, QBARS,
    SBO, WRITER_REGS,
};
use super::mainloop::{
    dq_turn, key_block_work, load_key_block, load_query_block, load_query_stats, loop_mask, store_consts, strides,
    work_item, KeyBlockWork,
};
use super::{copy_key_grads, dq_accum_col, KeyRows};
use crate::abi::BwdParams;
use crate::attn::stage::{self, FragPos};
use crate::frag::AccFrag;
use crate::ptx::math::exp2;
use crate::ptx::opaque::u32 as opaque;
use crate::ptx::wgmma::{self, desc_sw128, WgmmaElem};
use crate::ptx::{bulk, cp_async, mbarrier, setmaxnreg, shared_f32, smem, sreg, sync};
use crate::smem_tile::RowLayout;
use crate::tiles_bwd::{wgmma_wide_parts, BwdTile};

/// Keys per CTA and query rows per block.
const BN: usize = 64;
const BM: usize = 64;
/// Each warpgroup's queries in Sᵀ and dPᵀ.
const BM_W: usize = BM / 2;
/// Sᵀ and dPᵀ registers (n32), their n8 tiles, and Pᵀ/dSᵀ packed.
const SR: usize = BM_W / 2;
const NT: usize = BM_W / 8;

/// The constants of head dims `D` (Q, K) and `DV` (V, dO).
struct Wide<const D: usize, const DV: usize>;

impl<const D: usize, const DV: usize> Wide<D, DV> {
    const TILE: BwdTile = Shape::<D, DV, BM>::TILE;
    /// `[k, v, q, d_o, ds, p, lse, delta, consts, end]` (`BwdTile::wgmma_smem_layout`).
    const L: [usize; 10] = Shape::<D, DV, BM>::L;
    /// Registers per thread of a warpgroup's two column parts of dK and dQ, and of dV (`columns / 2`
    /// each; 0 for no second part; `BwdTile::wgmma_wide_regs`).
    const REGS: [usize; 2] = Self::TILE.wgmma_wide_regs();
    const REGS_V: [usize; 2] = Self::TILE.wgmma_wide_regs_v();
    /// Warpgroup w's column parts of a product `cols` wide: their first columns (the second's unused
    /// where it has no columns; `tiles_bwd::wgmma_wide_parts`).
    #[inline(always)]
    fn parts(cols: usize, w: u32) -> [u32; 2] {
        let p = wgmma_wide_parts(cols, w as usize);
        [p[0].0 as u32, p[1].0 as u32]
    }
    const OK: () = assert!(
        BwdTile { tma: true, ..Self::TILE }.is_valid()
            && Self::TILE.block_n == BN
            && 2 * (Self::REGS[0] + Self::REGS[1]) == D / 2
            && 2 * (Self::REGS_V[0] + Self::REGS_V[1]) == DV / 2
            && BM * D * 4 <= Shape::<D, DV, BM>::STAGE_STRIDE as usize
            && Self::L[3] - Self::L[2] == BM * D * 2
    );
}

/// Byte offset of column `col` in a swizzled tile of `ROWS` rows read MN-major (a column block, then
/// bytes inside its 128-byte rows).
const fn mn_col<const ROWS: usize>(col: u32) -> u32 {
    (col / 64) * col_block(ROWS) + (col % 64) * 2
}

/// Issues `acc (+)= A B` for one column part (`R` registers: `2R` columns from `col`) over `steps` k16
/// steps: A's descriptor of step kk from `a` (`TA`: read MN-major), B an MN-major tile of `ROWS` rows
/// at `b`. `zero`: the first step overwrites `acc`. Nothing for a part without columns.
#[inline(always)]
unsafe fn issue_part<E: WgmmaElem, const R: usize, const TA: u32, const ROWS: usize>(
    acc: &mut [f32; R],
    a: impl Fn(usize) -> u64,
    b: u32,
    col: u32,
    steps: usize,
    zero: bool,
) {
    if R == 0 {
        return;
    }
    for kk in 0..steps {
        let b = desc_sw128(b + mn_col::<ROWS>(col) + kk as u32 * K16_ROWS, col_block(ROWS), SBO);
        E::ss::<R, TA, 1>(acc, a(kk), b, !zero || kk > 0);
    }
}

/// Stages one column part of dQ (`R` registers from column `col0`) as f32 rows `[BM][D]` at `dq_s`, in
/// the accumulator's layout (`dq_accum_col`; `q0`: the sequence's first query).
#[inline(always)]
unsafe fn stage_part<const D: usize, const R: usize>(dq: &[f32; R], dq_s: u32, col0: u32, q0: u32, lane: [u32; 3]) {
    let [warp, g, t] = lane;
    for i in 0..(R / 4) as u32 {
        for rr in 0..2u32 {
            let row = warp * 16 + g + 8 * rr;
            let col = col0 + 8 * i + 2 * t;
            let idx = (4 * i + 2 * rr) as usize;
            let at = row * D as u32 + dq_accum_col(q0 + row, col);
            shared_f32::store_v2(dq_s + at * 4, [dq[idx], dq[idx + 1]]);
        }
    }
}

/// The kernel body for head dims `D` (Q, K) and `DV` (V, dO): `RA` and `RB` registers per thread for
/// each of dK and dQ's part in a warpgroup's two column parts (`Wide::REGS`), `VA` and `VB` for dV's
/// (`Wide::REGS_V`). `SOFTCAP`, `PACKED` as
/// `hopper::attn_bwd_wgmma`'s; the query blocks always come by TMA (`maps`: the generic address of the
/// call's `abi::BwdTensorMaps`).
///
/// # Safety
/// Launched as `abi::BwdParams` documents, with 384 threads and the row's `smem_bytes(2)` bytes of
/// dynamic shared memory, on an sm_90a device; `PACKED` exactly for a packed call; `maps` as above.
#[inline(always)]
pub unsafe fn attn_bwd_wgmma_wide<
    E: WgmmaElem,
    const D: usize,
    const DV: usize,
    const RA: usize,
    const RB: usize,
    const VA: usize,
    const VB: usize,
    const SOFTCAP: bool,
    const PACKED: bool,
>(
    p: &BwdParams,
    maps: u64,
) {
    const {
        assert!(
            RA == Wide::<D, DV>::REGS[0]
                && RB == Wide::<D, DV>::REGS[1]
                && VA == Wide::<D, DV>::REGS_V[0]
                && VB == Wide::<D, DV>::REGS_V[1]
        )
    };
    #[allow(clippy::let_unit_value)]
    let () = Wide::<D, DV>::OK;
    let l = Wide::<D, DV>::L;
    // The set-up as `hopper::attn_bwd_wgmma`'s. (Shared as a function returning the CTA's start, it
    // made ptxas spill 256-640 bytes in both kernels' query loops, 2026-11-27.)
    let tid = sreg::thread_x();
    // The LSE layout's rows per head: a dense call's queries, a packed call's tokens.
    let sq = p.score.mask.seqlen_q;
    let base = (smem::base() + 1023) & !1023;
    let (nb, hkv, b) = work_item(p, base + l[8] as u32 + 80, tid);
    let seq = stage::enter::<PACKED>(&p.score, b as u32, tid);
    let work = key_block_work::<BM, BN, PACKED>(p, &seq.mask, nb, hkv);
    let KeyBlockWork { n0, total, .. } = work;

    let consts = base + l[8] as u32;
    if tid == 0 {
        store_consts::<BM, PACKED>(consts, p, b, &seq);
    }
    for s in 0..2 {
        mbarrier::init(tid == 0, consts + QBARS + 8 * s, 1);
    }
    mbarrier::fence_init();
    let sw = RowLayout::Swizzled128;
    if tid < COMPUTE_THREADS_U32 {
        let (k_dst, v_dst) = (base + l[0] as u32, base + l[1] as u32);
        load_key_block::<BN, D, DV, PACKED>(p, sw, &seq, (hkv, n0), k_dst, v_dst, tid, COMPUTE_THREADS);
    }
    sync::block();
    if tid >= COMPUTE_THREADS_U32 {
        setmaxnreg::dec::<WRITER_REGS>();
        if tid < ALL_THREADS_U32 {
            dq_writer::<D, DV, BM, PACKED>(p, consts, work);
        } else if tid < ALL_THREADS_U32 + 32 {
            loader_tma::<D, DV, BM, PACKED>(p, maps, base, b as u32, work);
        }
        return;
    }
    setmaxnreg::inc::<COMPUTE_REGS>();
    // The first query block by the compute threads' own copies, as `hopper.rs` (the loader brings the
    // others).
    if total > 0 {
        let dst = [base + l[2] as u32, base + l[3] as u32, base + l[6] as u32, base + l[7] as u32];
        let (h, m) = work.block(0, p);
        load_query_block::<BM, D, DV>(sw, consts, h, m, (seq.mask.seqlen_q, sq), dst, tid, COMPUTE_THREADS);
    }
    cp_async::commit();
    cp_async::wait::<0>();
    bulk::shared_async();

    let (mut dk_a, mut dk_b) = ([0f32; RA], [0f32; RB]);
    let (mut dv_a, mut dv_b) = ([0f32; VA], [0f32; VB]);
    let stage_f = (BM * 4) as u32;

    let mut it = 0u32;
    while it < total {
        let tid = opaque(tid);
        let base = opaque(base);
        let lane = tid % 32;
        let (wg, warp) = (tid / 128, (tid / 32) % 4);
        let (g, t) = (lane / 4, lane % 4);
        let consts = base + l[8] as u32;
        let (k_s, v_s, ds_s, p_s) = (base + l[0] as u32, base + l[1] as u32, base + l[4] as u32, base + l[5] as u32);

        let (h, m) = work.block(it, p);
        let m0 = m * BM as u32;
        let stage = it % 2;
        let q_s = base + l[2] as u32 + stage * Shape::<D, DV, BM>::STAGE_STRIDE;
        let do_s = q_s + (l[3] - l[2]) as u32;
        let (lse_s, dl_s) = (base + l[6] as u32 + stage * stage_f, base + l[7] as u32 + stage * stage_f);

        // This thread's LSE and delta copies landed; the loader hands the block over once its
        // `mbarrier` has completed, every compute thread meeting there. Every product of the previous
        // step has completed, so the Pᵀ and dSᵀ tiles are free.
        cp_async::wait::<0>();
        sync::named_at::<ALL_THREADS_U32>(BAR_QFULL + stage);
        let rows = loop_mask::<PACKED>(p).seqlen_q - m0;
        if PACKED && it > 0 && rows < BM as u32 {
            // A packed sequence's last box ran into the next sequence's rows: zeros there (as
            // `hopper.rs`).
            zero_rows::<D, DV, BM>(q_s, do_s, rows, tid);
            bulk::shared_async();
            sync::named::<BAR_COMPUTE, COMPUTE_THREADS_U32>();
        }
        // The next block's LSE and delta (the loader brings its Q and dO).
        let load_next = || {
            if it + 1 < total {
                let (hn, mn) = work.block(it + 1, p);
                let sn = 1 - stage;
                let dst = [base + l[6] as u32 + sn * stage_f, base + l[7] as u32 + sn * stage_f];
                load_query_stats::<BM>(consts, hn, mn, (loop_mask::<PACKED>(p).seqlen_q, sq), dst, tid);
            }
            cp_async::commit();
        };

        // 1. Sᵀ_w = K Q_wᵀ, dPᵀ_w = V dO_wᵀ: the warpgroup's 32 query rows of the stage's tiles.
        let q_w = wg * BM_W as u32;
        let mut s = [0f32; SR];
        let mut dp = [0f32; SR];
        wgmma::fence();
        issue_by_key::<E, D, BN, BM, SR>(&mut s, k_s, q_s + q_w * 128);
        issue_by_key::<E, DV, BN, BM, SR>(&mut dp, v_s, do_s + q_w * 128);
        load_next();

        // 2. Pᵀ_w, then dSᵀ_w, to shared memory: register 2i+rr of a packed tile holds key
        // `16·warp + g + 8rr`, queries `q_w + 8i + 2t` and `+ 1`, stored at that word of the swizzled
        // `[64 keys][64 queries]` tile at `tile`.
        let at_key = |tile: u32, i: u32, rr: u32| {
            let row = warp * 16 + g + 8 * rr;
            tile + row * 128 + ((((q_w / 8) + i) ^ (row % 8)) * 16) + 4 * t
        };
        let need_mask = loop_mask::<PACKED>(p).needs_mask(m0, BM as u32, n0, BN as u32);
        wgmma::wait::<1>();
        wgmma::pin_all(&mut s);
        // With a softcap, dS takes the tanh's derivative, parked (rounded to the element type) where
        // this thread writes dS.
        let park = |_, i: usize, rr: usize, d: [f32; 2]| {
            smem::store_u32(at_key(ds_s, i as u32, rr as u32), E::pack2(d[0], d[1]))
        };
        let mut s_frag = AccFrag::<1, NT>::from_wgmma(&s);
        let at = FragPos { row_g: n0 + warp * 16 + g, col0: m0 + q_w, t };
        let mask = || stage::sequence_mask::<PACKED>(&p.score);
        let slope = || stage::alibi_slope_log2(&p.score, b as u32, h);
        stage::logits_by_key::<1, NT, SOFTCAP>(&p.score, mask, slope, &mut s_frag, at, need_mask, park);
        let x = &s_frag.0[0];
        let mut pk = [0u32; SR / 2];
        for i in 0..NT {
            let c = q_w + 8 * i as u32 + 2 * t;
            let lse = shared_f32::load_v2(lse_s + c * 4);
            // A row that saw no key has LSE = -inf: read as +inf, its P is exp2(-inf) = 0.
            let lse2 = [
                if lse[0] == f32::NEG_INFINITY { f32::INFINITY } else { lse[0] * core::f32::consts::LOG2_E },
                if lse[1] == f32::NEG_INFINITY { f32::INFINITY } else { lse[1] * core::f32::consts::LOG2_E },
            ];
            for rr in 0..2 {
                let pv = [exp2(x[i][2 * rr] - lse2[0]), exp2(x[i][2 * rr + 1] - lse2[1])];
                pk[2 * i + rr] = E::pack2(pv[0], pv[1]);
                smem::store_u32(at_key(p_s, i as u32, rr as u32), pk[2 * i + rr]);
            }
        }
        wgmma::wait::<0>();
        wgmma::pin_all(&mut dp);
        for i in 0..NT {
            let c = q_w + 8 * i as u32 + 2 * t;
            let delta = shared_f32::load_v2(dl_s + c * 4);
            for rr in 0..2 {
                let pr = pk[2 * i + rr];
                let (mut p0, mut p1) = (E::to_f32(pr as u16), E::to_f32((pr >> 16) as u16));
                let ds_at = at_key(ds_s, i as u32, rr as u32);
                if SOFTCAP {
                    let d = smem::load_u32(ds_at);
                    (p0, p1) = (p0 * E::to_f32(d as u16), p1 * E::to_f32((d >> 16) as u16));
                }
                let ds0 = p0 * (dp[4 * i + 2 * rr] - delta[0]);
                let ds1 = p1 * (dp[4 * i + 2 * rr + 1] - delta[1]);
                smem::store_u32(ds_at, E::pack2(ds0, ds1));
            }
        }
        bulk::shared_async();
        sync::named::<BAR_COMPUTE, COMPUTE_THREADS_U32>();

        // 3. The warpgroup's column parts: dV += Pᵀ dO_w, dK += dSᵀ Q_w (Pᵀ and dSᵀ K-major over the
        // queries, dO and Q MN-major), dQ_w = dS K_w (dS MN-major from dSᵀ, K MN-major).
        let [col_a, col_b] = Wide::<D, DV>::parts(D, wg);
        let [col_va, col_vb] = Wide::<D, DV>::parts(DV, wg);
        let (mut dq_a, mut dq_b) = ([0f32; RA], [0f32; RB]);
        let p_steps = |kk| k_major_step::<BN>(p_s, kk);
        let ds_steps = |kk| k_major_step::<BN>(ds_s, kk);
        let ds_mn = |kk: usize| desc_sw128(ds_s + kk as u32 * K16_ROWS, col_block(BN), SBO);
        wgmma::fence();
        issue_part::<E, VA, 0, BM>(&mut dv_a, p_steps, do_s, col_va, BM / 16, false);
        issue_part::<E, VB, 0, BM>(&mut dv_b, p_steps, do_s, col_vb, BM / 16, false);
        wgmma::commit();
        issue_part::<E, RA, 0, BM>(&mut dk_a, ds_steps, q_s, col_a, BM / 16, false);
        issue_part::<E, RB, 0, BM>(&mut dk_b, ds_steps, q_s, col_b, BM / 16, false);
        wgmma::commit();
        issue_part::<E, RA, 1, BN>(&mut dq_a, ds_mn, k_s, col_a, BN / 16, true);
        issue_part::<E, RB, 1, BN>(&mut dq_b, ds_mn, k_s, col_b, BN / 16, true);
        wgmma::commit();
        wgmma::wait::<0>();
        wgmma::pin_all(&mut dv_a);
        wgmma::pin_all(&mut dv_b);
        wgmma::pin_all(&mut dk_a);
        wgmma::pin_all(&mut dk_b);
        wgmma::pin_all(&mut dq_a);
        wgmma::pin_all(&mut dq_b);

        // 4. dQ_w staged over this stage's Q and dO as f32 rows `[BM][D]` in the accumulator's own
        // layout (`dq_accum_col`), once the other warpgroup's products have read them too (each
        // warpgroup's columns of every row span both tiles). The barrier also frees the Pᵀ and dSᵀ
        // tiles for the next step.
        sync::named::<BAR_COMPUTE, COMPUTE_THREADS_U32>();
        let q0 = stage::parked_queries::<PACKED>(b as u32).1;
        stage_part::<D, RA>(&dq_a, q_s, col_a, q0, [warp, g, t]);
        stage_part::<D, RB>(&dq_b, q_s, col_b, q0, [warp, g, t]);
        if tid == 0 && p.deterministic != 0 {
            smem::store_u32(consts + DQ_TURN + 4 * stage, dq_turn::<BM, BN>(&loop_mask::<PACKED>(p), nb, m));
        }
        bulk::shared_async();
        sync::arrive_at::<ALL_THREADS_U32>(BAR_FULL + stage);
        it += 1;
    }

    // dK (scaled) and dV of this CTA's keys: warpgroup w's column parts, staged in K's and V's tiles
    // (`hopper::park_key_grads`) and copied out by the warp that wrote them. Both warpgroups' products
    // have completed before a step's last barrier; a CTA without steps meets here once, so that every
    // thread's copies of K and V have landed before any warp writes over them.
    sync::named::<BAR_COMPUTE, COMPUTE_THREADS_U32>();
    let lane = tid % 32;
    let (wg, row0) = (tid / 128, ((tid / 32) % 4) * 16);
    let [col_a, col_b] = Wide::<D, DV>::parts(D, wg);
    let [col_va, col_vb] = Wide::<D, DV>::parts(DV, wg);
    // The tiles' base afresh, as the loop works it out, rather than the prologue's held through it.
    let base = (smem::base() + 1023) & !1023;
    let (k_s, v_s) = (base + l[0] as u32, base + l[1] as u32);
    park_key_grads::<E, BN, RA>(&dk_a, p.scale, k_s, row0, col_a, lane);
    park_key_grads::<E, BN, RB>(&dk_b, p.scale, k_s, row0, col_b, lane);
    park_key_grads::<E, BN, VA>(&dv_a, 1.0, v_s, row0, col_va, lane);
    park_key_grads::<E, BN, VB>(&dv_b, 1.0, v_s, row0, col_vb, lane);
    sync::warp();
    let (row, k0, sk) = stage::parked_keys::<PACKED>(&p.score, b as u32);
    let (dks, dvs) = (strides(p.dk_strides), strides(p.dv_strides));
    let (row, k0) = (row as usize, k0 as usize);
    let dk_g = (p.dk as *mut u16).add(row * dks[0] + k0 * dks[1] + hkv * dks[2]);
    let dv_g = (p.dv as *mut u16).add(row * dvs[0] + k0 * dvs[1] + hkv * dvs[2]);
    let rows = KeyRows { first: row0, count: 16, n0, sk };
    // A part of R registers per thread is 2R columns: R / 4 chunks.
    let part = |col: u32, regs: usize| (col / 8, (regs / 4) as u32);
    copy_key_grads::<BN, 0>(sw, k_s, dk_g, dks[1], rows, part(col_a, RA), lane);
    copy_key_grads::<BN, 0>(sw, k_s, dk_g, dks[1], rows, part(col_b, RB), lane);
    copy_key_grads::<BN, 0>(sw, v_s, dv_g, dvs[1], rows, part(col_va, VA), lane);
    copy_key_grads::<BN, 0>(sw, v_s, dv_g, dvs[1], rows, part(col_vb, VB), lane);
}
