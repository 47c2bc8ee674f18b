//! The backward main kernel on Hopper's warpgroup tensor cores (`sm_90a`: `wgmma`, bulk reductions),
//! generic over the head dim `D` (32, 64, 96, 128) and the query block `BM` (64, 80 or 128 rows; the
//! `wgmma` rows of `tiles_bwd`): one CTA per (128 keys, K/V head, batch), two warpgroups of 4 warps,
//! warpgroup w owning keys 64w..64w+63 of the block. Head dims 32 and 96 are stored in whole 64-column
//! blocks of the swizzle.
//!
//! Per query block (`BM` rows of one query head of the group), with Q, dO, K, V in shared memory in the
//! 128-byte swizzled layout (`ptx::wgmma`), each warpgroup:
//! 1. Sᵀ = K_w Qᵀ and dPᵀ = V_w dOᵀ (`[64 keys, BM queries]`, both operands K-major from shared
//!    memory), issued back to back as two asynchronous groups, then (fast mode; the deterministic
//!    mode before them) the copies of the next query block into the other stage;
//! 2. when Sᵀ lands: Pᵀ = exp2(scale·log2e·S − log2e·LSE) (masked where needed), rounded to the element
//!    type and kept in registers, which are directly the A fragments of dV += Pᵀ dO (`[64 keys, D]`,
//!    dO read MN-major), issued at once;
//! 3. when dPᵀ lands (dV still running): dSᵀ = Pᵀ ∘ (dPᵀ − delta), kept packed in registers (the A
//!    fragments of dK += dSᵀ Q) and stored to shared memory (`[128 keys, BM queries]`, swizzled);
//! 4. after a CTA barrier: dQ = dS K, both MN-major from shared memory, each warpgroup 64 rows ×
//!    `Shape::DQ_COLS` columns of it: with 64-row blocks the warpgroups split the columns (warpgroup 1's
//!    K operand starts D/2 columns in, for D < 128 inside a swizzled 128-byte row, as a K-major k-step
//!    does; at D = 96 it starts at column 64 and computes 64 columns over K's zero-filled 96-127, of
//!    which it keeps 32), with 128-row blocks the rows. Staged in shared memory as f32 rows (two buffers,
//!    alternating) and added to the global f32 accumulator by one bulk reduction
//!    (`cp.reduce.async.bulk .add.f32`, performed by the TMA unit) issued by the dQ writer: the first
//!    warp of a third warpgroup, which does nothing else. dK += dSᵀ Q is issued right after dQ's
//!    product, so that it runs while dQ is staged.
//!    With 80-row blocks (head dims 96 and 128, `BwdTile::wgmma_dq_transposed`) no warpgroup can own
//!    64-row parts of dQ, so each computes 64 head-dim rows of dQᵀ = Kᵀ dSᵀ (`[128, 80]`: K read MN-major, dS
//!    K-major over the keys), dS stored untransposed (`[80 queries][128 keys]`, each 8x8 block of the
//!    register dSᵀ transposed on its way by `stmatrix .trans`), and dQ staged through one buffer.
//!    80 rows are FlashAttention-3's non-causal choice: the n80 products Sᵀ and dPᵀ read 4.5 KiB of
//!    shared memory per 160 KFLOP where n64 ones read 4 KiB per 128 KFLOP, and the per-step costs
//!    (barriers, LSE/delta, hand-overs) spread over a quarter more work.
//!
//! Deterministic mode adds the key blocks' parts in key-block order, from the last key block down, each
//! CTA walking its query blocks up (turn counters and order as `mainloop.rs`):
//! waiting for the turn, for the reduction to complete and handing the turn on take the writer about
//! a microsecond per step. Done by a compute thread they stalled the whole CTA at its next barrier
//! (measured 19-24% of the time, 17% when overlapped with the dQ product); the writer warp takes them
//! off the compute warps' path, which only wait for a staging buffer to be free again.
//!
//! TMA rows (`TMA`, every head dim here): the query blocks after the first come as TMA
//! boxes of Q and dO from a loader warp (the writer warpgroup's second, `loader_tma`), a stage ahead;
//! the compute threads copy only the next block's LSE and delta. Measured +11-22% (fast) at head dim 128
//! over the `cp.async` rows (docs/perf.md).
//!
//! Barriers: 0 (all 384 threads) for the set-up; `BAR_COMPUTE` among the 256 compute threads twice
//! a step (the TMA rows: once, and `BAR_QFULL + s` with the loader at the start of a step, `BAR_QEMPTY
//! + s` to free stage s); `BAR_FULL + s` (compute threads arrive after filling staging buffer s, the
//! writer waits) and `BAR_EMPTY + s` (the writer arrives once its reduction has read buffer s, the
//! compute threads wait before refilling it).
//!
//! dK and dV (D/2 + D/2 f32 per thread) stay in registers for the whole loop. Registers bind, so the
//! loop-invariant addresses live in shared memory as in the `mma.sync` kernel (`mainloop.rs`).

use super::mainloop::{
    consts_pair, dq_turn, key_block_work, load_key_block, load_query_block, load_query_stats, loop_mask, store_consts,
    strides, turn_counter, work_item, KeyBlockWork, C_ACC,
};
use super::{copy_key_grads, dq_accum_col, KeyRows};
use crate::abi::BwdParams;
use crate::attn::stage::{self, FragPos};
use crate::frag::AccFrag;
use crate::ptx::math::exp2;
use crate::ptx::opaque::u32 as opaque;
use crate::ptx::wgmma::{self, desc_sw128, WgmmaElem};
use crate::ptx::{atomic, bulk, cp_async, ldmatrix, mbarrier, setmaxnreg, shared_f32, smem, sreg, stmatrix, sync, tma};
use crate::smem_tile::RowLayout;
use crate::tiles_bwd::{BwdTile, BWD_HD128_WGMMA};

/// The shape every row shares (`BwdTile::is_valid`); the head dim and the query block are the kernel's
/// parameters.
const T: BwdTile = BWD_HD128_WGMMA;
const BN: usize = T.block_n;
/// The two warpgroups that compute.
pub(super) const COMPUTE_THREADS: usize = 256;
pub(super) const COMPUTE_THREADS_U32: u32 = COMPUTE_THREADS as u32;
/// Compute threads and one warp of the third warpgroup (the dQ writer, or the TMA rows' loader; the
/// other warps of that warpgroup exit at once): the participants of the hand-off barriers.
pub(super) const ALL_THREADS_U32: u32 = (COMPUTE_THREADS + 32) as u32;
/// The dQ writer's warp and the loader's: the participants of `BAR_QEMPTY` where the writer frees the
/// query stages (the head-dim split rows, `hopper_wide.rs`).
const WRITER_AND_LOADER_U32: u32 = 64;
/// Registers per thread after the split (`setmaxnreg`): the CTA launches with 168 per thread (384
/// threads, the launch bounds in `kernels.rs`); 2·128·240 + 128·24 = 384·168 = 64512.
pub(super) const COMPUTE_REGS: u32 = 240;
pub(super) const WRITER_REGS: u32 = 24;
const _: () = assert!(
    BN == 128
        && T.warps * 32 == COMPUTE_THREADS + 128
        && T.q_stages == 2
        && 256 * COMPUTE_REGS + 128 * WRITER_REGS <= 384 * 168
);

/// The constants of head dims `D` (Q, K) and `DV` (V, dO; `D` but in `hopper_wide.rs`) with query
/// blocks of `BM` rows.
pub(super) struct Shape<const D: usize, const DV: usize, const BM: usize>;

impl<const D: usize, const DV: usize, const BM: usize> Shape<D, DV, BM> {
    /// The tile row for (`D`, `DV`, `BM`): past head dim 128 the head-dim split rows' 64 keys
    /// (`hopper_wide.rs`).
    pub(super) const TILE: BwdTile =
        BwdTile { head_dim: D, head_dim_v: DV, block_m: BM, block_n: if D > 128 { 64 } else { BN }, ..T };
    /// Whether the warpgroups split the head dim (`BwdTile::wgmma_splits_head_dim`): the writer then
    /// reduces dQ from the step's query stage and frees the stage for the loader.
    const WIDE: bool = Self::TILE.wgmma_splits_head_dim();
    /// Bytes from one query stage's Q (and dO) to the next stage's (`BwdTile::wgmma_stage_stride`).
    pub(super) const STAGE_STRIDE: u32 = Self::TILE.wgmma_stage_stride(2) as u32;
    /// `[k, v, q, d_o, ds, dq (two staging buffers), lse, delta, consts, end]` from the 1024-byte
    /// aligned base.
    pub(super) const L: [usize; 10] = Self::TILE.wgmma_smem_layout(2);
    /// One dQ staging buffer: `[BM][D]` f32.
    const DQ_STAGE_BYTES: u32 = (BM * D * 4) as u32;
    /// Each warpgroup's part of dQ is 64 query rows × `DQ_COLS` columns: with 64-row query blocks the
    /// warpgroups split the columns at `DQ_SPLIT`, with 128-row blocks the rows
    /// (`BwdTile::wgmma_dq_cols`).
    const DQ_COLS: usize = Self::TILE.wgmma_dq_cols();
    const DQ_SPLIT: usize = Self::TILE.wgmma_dq_split();
    /// Where warpgroup 1's part starts: in the dSᵀ tile (a column block of queries) and in the swizzled
    /// K tile (column `DQ_SPLIT`: a column block, then bytes inside its 128-byte rows; for D < 128
    /// inside a row, as a K-major k-step is).
    const DQ_DS_OFFSET: u32 = if BM == 128 { (BN * 128) as u32 } else { 0 };
    const DQ_K_OFFSET: u32 =
        if BM == 128 { 0 } else { ((Self::DQ_SPLIT / 64) * BN * 128 + (Self::DQ_SPLIT % 64) * 2) as u32 };
    /// Warpgroup 1 reads K past the head dim (head dim 96: its 64 columns from 64 end at the stored
    /// 128), which the kernel then fills with zeros.
    const K_PAST_HEAD_DIM: bool = BM != 128 && Self::DQ_SPLIT + Self::DQ_COLS > D;
    /// The TMA rows: bytes of one query block's Q and dO tiles, which complete its stage's `mbarrier`.
    pub(super) const STAGE_TX_BYTES: u32 = (BM * (Self::STORED + Self::STORED_V) * 2) as u32;
    /// Columns of the element tiles in shared memory (whole 64-column blocks of the swizzle): Q and K,
    /// then V and dO.
    pub(super) const STORED: usize = crate::tiles::swizzled_cols(D);
    const STORED_V: usize = crate::tiles::swizzled_cols(DV);
    /// dQ computed transposed (`BwdTile::wgmma_dq_transposed`): warpgroup w's dQᵀ rows are head-dim
    /// columns 64w..64w+63, K's column block w read MN-major; dS is stored untransposed.
    const DQ_T: bool = Self::TILE.wgmma_dq_transposed();
    /// dQ staging buffers (`BwdTile::wgmma_dq_stages`).
    const DQ_STAGES: u32 = Self::TILE.wgmma_dq_stages() as u32;
    /// Whether dPᵀ's product is issued once Pᵀ is formed (not with Sᵀ's), and dSᵀ waits for dV's
    /// product, which frees Pᵀ's registers (dV's A operand) for it: with a softcap at 80-row blocks,
    /// whose registers do not hold Sᵀ, dPᵀ and the tanh's work, nor Pᵀ, dSᵀ, dPᵀ and the tanh's
    /// derivatives, beside dK and dV (8-28 bytes of spills with either overlap).
    const fn serial_softcap(softcap: bool) -> bool {
        softcap && Self::DQ_T
    }
    const OK: () = assert!(
        Self::TILE.is_valid()
            && Self::DQ_COLS % 16 == 0
            && (!Self::K_PAST_HEAD_DIM || D % 64 == 32)
            && (BM == 128 || Self::DQ_SPLIT % 64 + Self::DQ_COLS <= 64 || Self::DQ_SPLIT % 64 == 0)
            && (!Self::DQ_T || ((D == 128 || D == 96) && Self::DQ_SPLIT == 64 && BM % 16 == 0 && BM / 8 % 2 == 0))
    );
}

pub(super) const BAR_COMPUTE: u32 = 1;
/// Staging buffer s is full: 2 + s.
pub(super) const BAR_FULL: u32 = 2;
/// Staging buffer s is free: 4 + s.
const BAR_EMPTY: u32 = 4;
/// The TMA rows: query stage s has landed (the loader arrives once the stage's `mbarrier` has completed,
/// the compute threads wait): 6 + s.
pub(super) const BAR_QFULL: u32 = 6;
/// The TMA rows: query stage s is free (the compute threads arrive once their products have read it, or
/// in the head-dim split rows the writer once its reduction has read the dQ staged there; the loader
/// waits before refilling it): 8 + s.
const BAR_QEMPTY: u32 = 8;
/// The TMA rows' `mbarrier`s, one per query stage, at `consts + QBARS + 8s`.
pub(super) const QBARS: u32 = 96;
const _: () = assert!(QBARS + 16 <= crate::tiles_bwd::BWD_CONSTS_BYTES as u32 && QBARS >= DQ_TURN + 8);

/// Deterministic mode: the dQ turn (`mainloop::dq_turn`) of the step staged in buffer s, at
/// `consts + DQ_TURN + 4s` (after the constants and the work-item ticket), written by compute thread 0
/// before it hands the buffer to the writer.
pub(super) const DQ_TURN: u32 = 88;
const _: () = assert!(DQ_TURN + 8 <= crate::tiles_bwd::BWD_CONSTS_BYTES as u32);

/// Bytes between the two 64-column blocks of a swizzled `rows x 128` tile, and between 8-row groups.
pub(super) const fn col_block(rows: usize) -> u32 {
    (rows * 128) as u32
}
pub(super) const SBO: u32 = 1024;
/// Bytes per 16 rows of a swizzled tile: one k16 step of an MN-major operand.
pub(super) const K16_ROWS: u32 = 16 * 128;

/// The dQ writer (one warp, lane 0 acting): per step, once the compute warps have staged the step's
/// dQ part in buffer `it % DQ_STAGES`, adds it to the accumulator rows of its (head, query block) with
/// one bulk reduction, in key-block order when deterministic, and frees the buffer once the reduction
/// has read it (before, when deterministic, waiting for it to complete and handing the turn on). In the
/// head-dim split rows (`Shape::WIDE`) the buffer is the step's query stage, freed for the loader.
#[inline(always)]
pub(super) unsafe fn dq_writer<const D: usize, const DV: usize, const BM: usize, const PACKED: bool>(
    p: &BwdParams,
    consts: u32,
    work: KeyBlockWork,
) {
    let l = Shape::<D, DV, BM>::L;
    let lane0 = sreg::thread_x() % 32 == 0;
    // The LSE layout's rows per head (see `mainloop::attn_bwd`).
    let sq = p.score.mask.seqlen_q;
    let deterministic = p.deterministic != 0;
    let stages = if Shape::<D, DV, BM>::WIDE { 2 } else { Shape::<D, DV, BM>::DQ_STAGES };
    let mut it = 0u32;
    while it < work.total {
        let s = it % stages;
        let (h, m) = work.block(it, p);
        sync::named_at::<ALL_THREADS_U32>(BAR_FULL + s);
        if lane0 {
            let m0 = m * BM as u32;
            let bytes = (loop_mask::<PACKED>(p).seqlen_q - m0).min(BM as u32) * (D * 4) as u32;
            let staged = if Shape::<D, DV, BM>::WIDE {
                opaque(consts) - l[8] as u32 + l[2] as u32 + s * Shape::<D, DV, BM>::STAGE_STRIDE
            } else {
                opaque(consts) - l[8] as u32 + l[5] as u32 + s * Shape::<D, DV, BM>::DQ_STAGE_BYTES
            };
            let (acc, _) = consts_pair(consts + C_ACC);
            let acc = (acc as *mut f32).add((h as usize * sq as usize + m0 as usize) * D);
            if deterministic {
                // The compute warps worked the turn out (`DQ_TURN`): the writer's 24 registers do not
                // hold the block-range arithmetic.
                let turn = smem::load_u32(opaque(consts) + DQ_TURN + 4 * s);
                while atomic::load_acquire_u32(dq_turn_counter::<BM, PACKED>(p, consts, h, m)) != turn {}
                bulk::global_async();
            }
            bulk::reduce_add_f32(acc, staged, bytes);
            bulk::wait_read::<0>();
        }
        // The compute warps wait for this buffer only before their step it + DQ_STAGES; the loader
        // for the query stage only to load step it + 2's block into it.
        if it + stages < work.total {
            sync::warp();
            if Shape::<D, DV, BM>::WIDE {
                sync::arrive_at::<WRITER_AND_LOADER_U32>(BAR_QEMPTY + s);
            } else {
                sync::arrive_at::<ALL_THREADS_U32>(BAR_EMPTY + s);
            }
        }
        if lane0 && deterministic {
            // The next key block's turn once this part is in the accumulator.
            bulk::wait_done::<0>();
            bulk::global_async();
            atomic::release_add_u32(dq_turn_counter::<BM, PACKED>(p, consts, h, m), 1);
        }
        it += 1;
    }
    if lane0 {
        // The shared memory stays allocated until the last reduction has completed.
        bulk::wait_done::<0>();
    }
}

/// The deterministic mode's turn counter of query head `h`'s query block `m` (`mainloop::turn_counter`).
///
/// # Safety
/// In deterministic mode, with the CTA's constants stored at `consts`.
#[inline(always)]
pub(super) unsafe fn dq_turn_counter<const BM: usize, const PACKED: bool>(
    p: &BwdParams,
    consts: u32,
    h: u32,
    m: u32,
) -> *mut u32 {
    turn_counter::<BM, PACKED>(p, consts_pair(consts + C_ACC).1, h, m)
}

/// The TMA rows' loader (one warp, the second of the third warpgroup; its first lane issues): the query
/// blocks of the CTA's steps after the first (which the compute threads copy themselves), in the compute
/// warps' order, two stages ahead: Q and dO as swizzled TMA tiles (`abi::BwdTensorMaps`) against the
/// stage's `mbarrier`. (The LSE and delta stay with the compute threads' `cp.async`: a TMA box must start
/// 16-byte aligned in memory, which row `(b·heads_q + h)·seqlen_q + m0` is not for every `seqlen_q` (such
/// boxes faulted), and per-lane copies here spilled the loader's 24 registers.) The
/// warp waits on that `mbarrier` and hands the stage over through `BAR_QFULL`, so that the compute
/// warps wait on named barriers only (in the forward, compute warpgroups polling the `mbarrier`s
/// measured 5-20% slower); the compute warps free a stage through `BAR_QEMPTY`. `b`: the CTA's batch
/// row (a packed call's sequence); `maps`: the generic address of the call's tensor maps. Every lane
/// runs the same instructions, the copies predicated on the first (no branch of one thread next to the
/// named barriers).
///
/// A packed call's maps span its tokens (`[1, tokens, heads, head dim]`): a sequence's last box may run
/// into the next sequence's rows, which the score stage masks (their Pᵀ and dSᵀ are zeros, so they add
/// nothing to dV and dK, and the writer reduces the sequence's rows of dQ only); past the last token
/// the TMA unit fills zeros, as past a dense batch's rows.
///
/// # Safety
/// In a call of a TMA row (`PACKED` for a packed one, after `attn::stage::enter`), with `maps` the
/// tensor maps of its Q and dO, the stage `mbarrier`s initialised and the compute warps running the
/// same steps.
///
/// The head-dim split rows (`Shape::WIDE`): stage s's Q and dO tiles lie `STAGE_STRIDE` apart per stage,
/// and the writer frees a stage (`BAR_QEMPTY`) once its reduction has read the dQ staged over it.
#[inline(always)]
pub(super) unsafe fn loader_tma<const D: usize, const DV: usize, const BM: usize, const PACKED: bool>(
    p: &BwdParams,
    maps: u64,
    base: u32,
    b: u32,
    work: KeyBlockWork,
) {
    let l = Shape::<D, DV, BM>::L;
    let leader = sreg::thread_x() % 32 == 0;
    let (q_map, do_map) = (maps, maps + 128);
    // Two calls, not a loop over an array (which one instantiation kept in local memory).
    tma::prefetch_map(leader, q_map);
    tma::prefetch_map(leader, do_map);
    let bars = base + l[8] as u32 + QBARS;
    let issue = |it: u32| {
        let s = it % 2;
        let (h, m) = work.block(it, p);
        let m0 = m * BM as u32;
        let bar = bars + 8 * s;
        let stride = Shape::<D, DV, BM>::STAGE_STRIDE;
        mbarrier::arrive_expect_tx(leader, bar, Shape::<D, DV, BM>::STAGE_TX_BYTES);
        // The box's first row: the sequence's batch row and first token (a packed call's is row 0).
        let (row, q0) = stage::parked_queries::<PACKED>(b);
        let at = [q0 + m0, h, row];
        tma::load_tile::<BM, D>(leader, base + l[2] as u32 + s * stride, q_map, at, bar);
        tma::load_tile::<BM, DV>(leader, base + l[3] as u32 + s * stride, do_map, at, bar);
    };
    // Block it >= 1 is stage s = it % 2's ((it + s) / 2 - 1)-th load (stage 1 loads blocks 1, 3, ...,
    // stage 0 blocks 2, 4, ...): its phase's parity.
    let hand_over = |it: u32| {
        let s = it % 2;
        mbarrier::wait(bars + 8 * s, ((it + s) / 2 + 1) & 1);
        sync::arrive_at::<ALL_THREADS_U32>(BAR_QFULL + s);
    };
    let total = work.total;
    if total == 0 {
        return;
    }
    if total > 1 {
        issue(1);
    }
    // Block 0: the compute threads' own copies, which they have waited for.
    sync::arrive_at::<ALL_THREADS_U32>(BAR_QFULL);
    let mut it = 0u32;
    while it < total {
        // Step it + 1's block is handed over while the compute warps work on step it; step it + 2's is
        // issued into step it's stage once they are done with it (they free every step's).
        if it + 1 < total {
            hand_over(it + 1);
        }
        if Shape::<D, DV, BM>::WIDE {
            // The writer frees only the stages the loader refills.
            if it + 2 < total {
                sync::named_at::<WRITER_AND_LOADER_U32>(BAR_QEMPTY + it % 2);
                issue(it + 2);
            }
        } else {
            sync::named_at::<ALL_THREADS_U32>(BAR_QEMPTY + it % 2);
            if it + 2 < total {
                issue(it + 2);
            }
        }
        it += 1;
    }
}

/// Zeros rows `rows..BM` of the Q and dO tiles of a stage (swizzled, `BM` rows of `STORED` columns, dO's
/// of `DV`'s), the compute threads sharing the 16-byte chunks.
///
/// # Safety
/// Compute threads only (`tid < 256`), with `q_s` and `do_s` the stage's tiles, which no product reads
/// at the time.
#[inline(always)]
pub(super) unsafe fn zero_rows<const D: usize, const DV: usize, const BM: usize>(
    q_s: u32,
    do_s: u32,
    rows: u32,
    tid: u32,
) {
    let chunks_per_row = (Shape::<D, DV, BM>::STORED / 8) as u32;
    let chunks_v = (crate::tiles::swizzled_cols(DV) / 8) as u32;
    let mut i = tid;
    while i < (BM as u32 - rows) * chunks_per_row {
        let (row, chunk) = (rows + i / chunks_per_row, i % chunks_per_row);
        let at = RowLayout::Swizzled128.chunk_offset::<BM, D>(row as usize, chunk as usize);
        smem::store_v4(q_s + at, [0; 4]);
        // dO's rows are `DV` wide (the swizzled offset of a chunk depends on the rows only).
        if D == DV || chunk < chunks_v {
            smem::store_v4(do_s + at, [0; 4]);
        }
        i += COMPUTE_THREADS_U32;
    }
}

/// The descriptor of k16 step `kk` of a K-major operand: a swizzled tile of `ROWS` rows at `tile`, 32
/// bytes per step inside each 64-column block.
#[inline(always)]
pub(super) fn k_major_step<const ROWS: usize>(tile: u32, kk: usize) -> u64 {
    desc_sw128(tile + ((kk / 4) * ROWS * 128 + (kk % 4) * 32) as u32, 16, SBO)
}

/// Issues `acc = A_w Bᵀ` as one committed group: `[64 keys, SR·2 queries]` from the warpgroup's 64 rows
/// of a key-side tile at `a_w` (K or V, `AR` rows) and the query rows at `b` of a query-side tile (Q or
/// dO, `BR` rows), both K-major over the head dim in k16 steps of 32 bytes inside each 64-column block
/// (Sᵀ = K Qᵀ, dPᵀ = V dOᵀ).
#[inline(always)]
pub(super) unsafe fn issue_by_key<E: WgmmaElem, const D: usize, const AR: usize, const BR: usize, const SR: usize>(
    acc: &mut [f32; SR],
    a_w: u32,
    b: u32,
) {
    for kk in 0..D / 16 {
        let (a, b) = (k_major_step::<AR>(a_w, kk), k_major_step::<BR>(b, kk));
        E::ss::<SR, 0, 0>(acc, a, b, kk > 0);
    }
    wgmma::commit();
}

/// Issues `acc += Aᵀ B` as one committed group, summed over the block's `BM` queries: A is a packed
/// `[64 keys, BM queries]` register tile (Pᵀ or dSᵀ; the A fragment of k16 step kk is its column blocks
/// 2kk and 2kk+1), B the query-side tile at `b` read MN-major (dO for dV, Q for dK).
#[inline(always)]
unsafe fn accumulate_by_query<E: WgmmaElem, const BM: usize, const DR: usize, const PK: usize>(
    acc: &mut [f32; DR],
    a: &[u32; PK],
    b: u32,
) {
    for kk in 0..BM / 16 {
        let frag = [a[4 * kk], a[4 * kk + 1], a[4 * kk + 2], a[4 * kk + 3]];
        let b = desc_sw128(b + kk as u32 * K16_ROWS, col_block(BM), SBO);
        E::rs::<DR, 1>(acc, &frag, b, true);
    }
    wgmma::commit();
}

/// The kernel body for head dim `D` and query blocks of `BM` rows. Register arrays: `DR = D/2` (dK, dV),
/// `SR = BM/2` (Sᵀ, dPᵀ), `PK = BM/4` (Pᵀ and dSᵀ packed), `NT = BM/8` (n8 tiles of Sᵀ), `QR`
/// (dQ's part, `BwdTile::wgmma_dq_regs`). `SOFTCAP`: the instantiation for calls with a softcap (dS
/// chained through the tanh); `PACKED`: the one for packed variable-length batches (as
/// `mainloop::attn_bwd`'s); `TMA`: the query blocks come by TMA from a loader warp (`loader_tma`),
/// `maps` being the generic address of the call's `abi::BwdTensorMaps` (unused without).
///
/// # Safety
/// Launched as `abi::BwdParams` documents, with 384 threads (`T.threads()`) and `T.smem_bytes(2)`
/// bytes of dynamic shared memory, on an sm_90a device; `PACKED` exactly for a packed call; with `TMA`,
/// `maps` as above.
#[inline(always)]
pub unsafe fn attn_bwd_wgmma<
    E: WgmmaElem,
    const D: usize,
    const BM: usize,
    const DR: usize,
    const SR: usize,
    const PK: usize,
    const NT: usize,
    const QR: usize,
    const SOFTCAP: bool,
    const PACKED: bool,
    const TMA: bool,
>(
    p: &BwdParams,
    maps: u64,
) {
    const {
        assert!(
            DR == D / 2
                && SR == BM / 2
                && PK == BM / 4
                && NT == BM / 8
                && QR == Shape::<D, D, BM>::TILE.wgmma_dq_regs()
        )
    };
    #[allow(clippy::let_unit_value)]
    let () = Shape::<D, D, BM>::OK;
    let l = Shape::<D, D, BM>::L;
    let tid = sreg::thread_x();
    // The LSE layout's rows per head: a dense call's queries, a packed call's tokens.
    let sq = p.score.mask.seqlen_q;
    // The swizzle pattern repeats every 1024 bytes of the shared window: tiles start on that boundary.
    let base = (smem::base() + 1023) & !1023;
    let (nb, hkv, b) = work_item(p, base + l[8] as u32 + 80, tid);
    let seq = stage::enter::<PACKED>(&p.score, b as u32, tid);

    let work = key_block_work::<BM, BN, PACKED>(p, &seq.mask, nb, hkv);
    let KeyBlockWork { n0, total, .. } = work;

    let consts = base + l[8] as u32;
    if tid == 0 {
        store_consts::<BM, PACKED>(consts, p, b, &seq);
    }
    if TMA {
        for s in 0..2 {
            mbarrier::init(tid == 0, consts + QBARS + 8 * s, 1);
        }
        mbarrier::fence_init();
    }
    let sw = RowLayout::Swizzled128;
    if tid < COMPUTE_THREADS_U32 {
        let (k_dst, v_dst) = (base + l[0] as u32, base + l[1] as u32);
        load_key_block::<BN, D, D, PACKED>(p, sw, &seq, (hkv, n0), k_dst, v_dst, tid, COMPUTE_THREADS);
        if Shape::<D, D, BM>::K_PAST_HEAD_DIM {
            // Zeros in the 16-byte chunks of K's last column block past the head dim, so that whatever
            // the memory held stays out of the dQ columns warpgroup 1 drops (its stores are fenced for
            // the tensor cores with the first step's copies).
            let last = k_dst + (D / 64 * BN * 128) as u32;
            for i in 0..(BN * 4 / 256) as u32 {
                let idx = tid + 256 * i;
                let (row, chunk) = (idx / 4, 4 + idx % 4);
                smem::store_v4(last + row * 128 + ((chunk ^ (row % 8)) * 16), [0; 4]);
            }
        }
    }
    sync::block();
    if tid >= COMPUTE_THREADS_U32 {
        setmaxnreg::dec::<WRITER_REGS>();
        if tid < ALL_THREADS_U32 {
            dq_writer::<D, D, BM, PACKED>(p, consts, work);
        } else if TMA && tid < ALL_THREADS_U32 + 32 {
            loader_tma::<D, D, BM, PACKED>(p, maps, base, b as u32, work);
        }
        return;
    }
    setmaxnreg::inc::<COMPUTE_REGS>();
    // The first query block by the compute threads' own copies (the TMA rows' loader brings the
    // others): it is needed at once either way, and without these copies before the loop ptxas
    // serialised every `wgmma` of the TMA kernels (C7512, 400 bytes of stack).
    if total > 0 {
        let dst = [base + l[2] as u32, base + l[3] as u32, base + l[6] as u32, base + l[7] as u32];
        let queries = (seq.mask.seqlen_q, sq);
        let (h, m) = work.block(0, p);
        load_query_block::<BM, D, D>(sw, consts, h, m, queries, dst, tid, COMPUTE_THREADS);
    }
    cp_async::commit();
    if TMA {
        // Visible to the tensor cores' proxy; the loader's hand-over of block 0 (`BAR_QFULL`) makes
        // every thread's copies visible to all.
        cp_async::wait::<0>();
        bulk::shared_async();
    }

    let mut dk = [0f32; DR];
    let mut dv = [0f32; DR];
    let stage_b = (l[3] - l[2]) as u32 / 2;
    let stage_f = (BM * 4) as u32;

    let mut it = 0u32;
    while it < total {
        let tid = opaque(tid);
        let base = opaque(base);
        let lane = tid % 32;
        let (wg, warp) = (tid / 128, (tid / 32) % 4);
        let (g, t) = (lane / 4, lane % 4);
        let consts = base + l[8] as u32;
        let (k_s, v_s, ds_s) = (base + l[0] as u32, base + l[1] as u32, base + l[4] as u32);

        let (h, m) = work.block(it, p);
        let m0 = m * BM as u32;
        let stage = it % 2;
        let dq_stage = it % Shape::<D, D, BM>::DQ_STAGES;
        let dq_s = base + l[5] as u32 + dq_stage * Shape::<D, D, BM>::DQ_STAGE_BYTES;
        let (q_s, do_s) = (base + l[2] as u32 + stage * stage_b, base + l[3] as u32 + stage * stage_b);
        let (lse_s, dl_s) = (base + l[6] as u32 + stage * stage_f, base + l[7] as u32 + stage * stage_f);

        // This block's copies landed; make them visible to the tensor cores' (async) proxy and to every
        // compute thread. Every product of the previous step has completed (each thread waited for
        // them), so the other stage is free for the next block's copies, and dSᵀ for this step's. The
        // TMA rows' loader hands the block over once its `mbarrier` has completed, with every compute
        // thread meeting there as at `BAR_COMPUTE`.
        if TMA {
            // This thread's LSE and delta copies (`load_next`) landed; the barrier publishes them.
            cp_async::wait::<0>();
            sync::named_at::<ALL_THREADS_U32>(BAR_QFULL + stage);
            let rows = loop_mask::<PACKED>(p).seqlen_q - m0;
            if PACKED && it > 0 && rows < BM as u32 {
                // A packed sequence's last box ran into the next sequence's rows: zeros there, as a dense
                // call's TMA boxes and every `cp.async` copy have, so that whatever those rows hold (even
                // a NaN) stays out of this sequence's dV and dK (its Pᵀ and dSᵀ are zeros there, but
                // 0·NaN is not).
                zero_rows::<D, D, BM>(q_s, do_s, rows, tid);
                bulk::shared_async();
                sync::named::<BAR_COMPUTE, COMPUTE_THREADS_U32>();
            }
        } else {
            cp_async::wait::<0>();
            bulk::shared_async();
            sync::named::<BAR_COMPUTE, COMPUTE_THREADS_U32>();
        }

        // The next query block's copies, into the other stage (free since the barrier above). The fast
        // mode issues them once this block's Sᵀ and dPᵀ are under way: issued first, they kept the
        // tensor cores idle for their issue time (+2-9% at every head dim, docs/perf.md). The
        // deterministic mode keeps them first: after the products it measured 3-18% slower, for a
        // reason not yet found.
        let load_next = || {
            if it + 1 < total {
                let (hn, mn) = work.block(it + 1, p);
                let sn = 1 - stage;
                let (lse, delta) = (base + l[6] as u32 + sn * stage_f, base + l[7] as u32 + sn * stage_f);
                let queries = (loop_mask::<PACKED>(p).seqlen_q, sq);
                if TMA {
                    // The LSE and delta only (the loader brings Q and dO).
                    load_query_stats::<BM>(consts, hn, mn, queries, [lse, delta], tid);
                } else {
                    let (q, d_o) = (base + l[2] as u32 + sn * stage_b, base + l[3] as u32 + sn * stage_b);
                    let dst = [q, d_o, lse, delta];
                    load_query_block::<BM, D, D>(sw, consts, hn, mn, queries, dst, tid, COMPUTE_THREADS);
                }
            }
            cp_async::commit();
        };
        if p.deterministic != 0 {
            load_next();
        }

        // 1. Sᵀ = K_w Qᵀ and dPᵀ = V_w dOᵀ: K-major operands, k16 steps of 32 bytes inside a 64-column
        // block.
        let key_w = wg * 64;
        let mut s = [0f32; SR];
        let mut dp = [0f32; SR];
        wgmma::fence();
        issue_by_key::<E, D, BN, BM, SR>(&mut s, k_s + key_w * 128, q_s);
        if !Shape::<D, D, BM>::serial_softcap(SOFTCAP) {
            issue_by_key::<E, D, BN, BM, SR>(&mut dp, v_s + key_w * 128, do_s);
        }
        if p.deterministic == 0 {
            load_next();
        }

        // 2. Pᵀ from the score stage's logits (masked where the tile needs it), packed: register 2i+rr
        // holds row g+8rr, columns 8i+2t and 8i+2t+1.
        let need_mask = loop_mask::<PACKED>(p).needs_mask(m0, BM as u32, n0, BN as u32);
        if Shape::<D, D, BM>::serial_softcap(SOFTCAP) {
            wgmma::wait::<0>();
        } else {
            wgmma::wait::<1>();
        }
        wgmma::pin_all(&mut s);
        // With a softcap, dS takes the tanh's derivative: it waits for dP in the dS tile, rounded to the
        // element type, where this warp writes dS (free since the barrier that began this step); held
        // in registers, it would push the compute warpgroups' registers into spills.
        // dSᵀ's packed block (i, rr) (this thread's keys `key_w + 16·warp + 8rr + g`, queries `8i + 2t`,
        // `+ 1`): this thread's word of the dSᵀ tile.
        let ds_at = |i: u32, rr: u32| {
            let row = key_w + warp * 16 + g + 8 * rr;
            ds_s + (i / 8) * col_block(BN) + row * 128 + (((i % 8) ^ (row % 8)) * 16) + 4 * t
        };
        // Transposed dQ: the 16-byte row of the dS tile that this lane addresses for `stmatrix` /
        // `ldmatrix` of the 8x8 blocks (i, 0), (i, 1), (i + 1, 0), (i + 1, 1) (`.x4`, matrix lane / 8)
        // or of block (i, rr) (`.x1`, lanes 0-7): query `8i + lane % 8` (+ 8), the 8 keys of the
        // block's chunk of the warpgroup's column block.
        let ds_row = |i: u32, rr: u32| {
            let q = 8 * i + lane % 8;
            ds_s + wg * (BM * 128) as u32 + q * 128 + (((2 * warp + rr) ^ (q % 8)) * 16)
        };
        let ds_rows4 = |i: u32| ds_row(i + (lane / 16), (lane / 8) % 2);
        let park = |_, i: usize, rr: usize, d: [f32; 2]| {
            let v = E::pack2(d[0], d[1]);
            if Shape::<D, D, BM>::DQ_T {
                stmatrix::x1_trans(ds_row(i as u32, rr as u32), v);
            } else {
                smem::store_u32(ds_at(i as u32, rr as u32), v);
            }
        };
        let mut s_frag = AccFrag::<1, NT>::from_wgmma(&s);
        let at = FragPos { row_g: n0 + key_w + warp * 16 + g, col0: m0, t };
        let mask = || stage::sequence_mask::<PACKED>(&p.score);
        let slope = || stage::alibi_slope_log2(&p.score, b as u32, h);
        stage::logits_by_key::<1, NT, SOFTCAP>(&p.score, mask, slope, &mut s_frag, at, need_mask, park);
        let x = &s_frag.0[0];
        let mut pk = [0u32; PK];
        for i in 0..NT {
            let c = 8 * i as u32 + 2 * t;
            let lse = shared_f32::load_v2(lse_s + c * 4);
            // A row that saw no key has LSE = -inf: read as +inf, its P is exp2(-inf) = 0.
            let lse2 = [
                if lse[0] == f32::NEG_INFINITY { f32::INFINITY } else { lse[0] * core::f32::consts::LOG2_E },
                if lse[1] == f32::NEG_INFINITY { f32::INFINITY } else { lse[1] * core::f32::consts::LOG2_E },
            ];
            for rr in 0..2 {
                let pv = [exp2(x[i][2 * rr] - lse2[0]), exp2(x[i][2 * rr + 1] - lse2[1])];
                pk[2 * i + rr] = E::pack2(pv[0], pv[1]);
            }
        }
        // dV += Pᵀ dO: the A fragment of k16 step kk is column blocks 2kk and 2kk+1 of Pᵀ.
        wgmma::fence();
        if Shape::<D, D, BM>::serial_softcap(SOFTCAP) {
            issue_by_key::<E, D, BN, BM, SR>(&mut dp, v_s + key_w * 128, do_s);
        }
        accumulate_by_query::<E, BM, DR, PK>(&mut dv, &pk, do_s);

        // 3. dSᵀ = Pᵀ ∘ (dPᵀ − delta) (dV may still be running, but for `Shape::serial_softcap`), two
        // column blocks of 8 at a time.
        if Shape::<D, D, BM>::serial_softcap(SOFTCAP) {
            wgmma::wait::<0>();
            wgmma::pin_all(&mut dv);
        } else {
            wgmma::wait::<1>();
        }
        wgmma::pin_all(&mut dp);
        let mut dsk = [0u32; PK];
        if SOFTCAP && Shape::<D, D, BM>::DQ_T {
            // The warp's parked blocks are read back by other lanes than wrote them.
            sync::warp();
        }
        for i2 in (0..NT).step_by(2) {
            // Transposed dQ: the pair's four parked blocks, read back by `ldmatrix .trans`.
            let parked4 =
                if SOFTCAP && Shape::<D, D, BM>::DQ_T { ldmatrix::x4_trans(ds_rows4(i2 as u32)) } else { [0; 4] };
            for i in i2..i2 + 2 {
                let c = 8 * i as u32 + 2 * t;
                let delta = shared_f32::load_v2(dl_s + c * 4);
                for rr in 0..2 {
                    let pr = pk[2 * i + rr];
                    let (mut p0, mut p1) = (E::to_f32(pr as u16), E::to_f32((pr >> 16) as u16));
                    if SOFTCAP {
                        let d = if Shape::<D, D, BM>::DQ_T {
                            parked4[2 * (i - i2) + rr]
                        } else {
                            smem::load_u32(ds_at(i as u32, rr as u32))
                        };
                        (p0, p1) = (p0 * E::to_f32(d as u16), p1 * E::to_f32((d >> 16) as u16));
                    }
                    let ds0 = p0 * (dp[4 * i + 2 * rr] - delta[0]);
                    let ds1 = p1 * (dp[4 * i + 2 * rr + 1] - delta[1]);
                    dsk[2 * i + rr] = E::pack2(ds0, ds1);
                }
            }
        }
        if Shape::<D, D, BM>::DQ_T {
            // dS to shared memory untransposed (`[BM queries][128 keys]`, swizzled column blocks of 64
            // keys, the warpgroup's block w), four 8x8 blocks of dSᵀ per `stmatrix .trans` (over the
            // parked ones, which the whole warp has read).
            if SOFTCAP {
                sync::warp();
            }
            for i2 in (0..NT).step_by(2) {
                let blocks = [dsk[2 * i2], dsk[2 * i2 + 1], dsk[2 * i2 + 2], dsk[2 * i2 + 3]];
                stmatrix::x4_trans(ds_rows4(i2 as u32), blocks);
            }
        } else {
            // dSᵀ to shared memory (`[128 keys][BM queries]`, swizzled column blocks of 64 queries).
            for i in 0..NT as u32 {
                for rr in 0..2u32 {
                    smem::store_u32(ds_at(i, rr), dsk[(2 * i + rr) as usize]);
                }
            }
        }
        bulk::shared_async();
        sync::named::<BAR_COMPUTE, COMPUTE_THREADS_U32>();

        // 4. This warpgroup's part of dQ = dS K (`Shape::DQ_COLS`): both MN-major (dS from dSᵀ, K along
        // its rows); transposed, dQᵀ = Kᵀ dSᵀ: K's column block w MN-major, dS K-major over the keys.
        let mut dq = [0f32; QR];
        wgmma::fence();
        for kk in 0..BN / 16 {
            let kk = kk as u32;
            let k_rows = desc_sw128(k_s + wg * Shape::<D, D, BM>::DQ_K_OFFSET + kk * K16_ROWS, col_block(BN), SBO);
            if Shape::<D, D, BM>::DQ_T {
                let ds = k_major_step::<BM>(ds_s, kk as usize);
                E::ss::<QR, 1, 0>(&mut dq, k_rows, ds, kk > 0);
            } else {
                let a = desc_sw128(ds_s + wg * Shape::<D, D, BM>::DQ_DS_OFFSET + kk * K16_ROWS, col_block(BN), SBO);
                E::ss::<QR, 1, 1>(&mut dq, a, k_rows, kk > 0);
            }
        }
        wgmma::commit();
        // dK += dSᵀ Q after dQ, so that it runs while dQ is staged (issued before the barrier, it ran
        // under the dSᵀ stores, and the tensor cores sat idle through the staging).
        accumulate_by_query::<E, BM, DR, PK>(&mut dk, &dsk, q_s);
        wgmma::wait::<1>();
        wgmma::pin_all(&mut dq);
        wgmma::pin_all(&mut dv);
        // Staged as f32 rows `[BM][D]` in the accumulator's own layout (`dq_accum_col`), for one
        // contiguous reduction, once the writer's reduction of `DQ_STAGES` steps ago has read this
        // buffer.
        if it >= Shape::<D, D, BM>::DQ_STAGES {
            sync::named_at::<ALL_THREADS_U32>(BAR_EMPTY + dq_stage);
        }
        let (row0, col0) = if BM == 128 { (64 * wg, 0) } else { (0, wg * Shape::<D, D, BM>::DQ_SPLIT as u32) };
        let q0 = stage::parked_queries::<PACKED>(b as u32).1;
        if Shape::<D, D, BM>::DQ_T {
            // Register 4i + 2rr + e holds dQᵀ's head-dim row `col0 + 16·warp + g + 8rr`, query `8i + 2t
            // + e`: one word per store, conflict-free through the permutation (the 8 rows g and the
            // 4 query pairs t of a store fall in 32 distinct banks).
            for i in 0..(QR / 4) as u32 {
                for rr in 0..2u32 {
                    for e in 0..2u32 {
                        let (row, col) = (8 * i + 2 * t + e, col0 + warp * 16 + g + 8 * rr);
                        // At head dim 96 warpgroup 1's rows past 95 (from K's zeros) are dropped.
                        if !Shape::<D, D, BM>::K_PAST_HEAD_DIM || col < D as u32 {
                            let at = row * D as u32 + dq_accum_col(q0 + row, col);
                            smem::store_u32(dq_s + at * 4, dq[(4 * i + 2 * rr + e) as usize].to_bits());
                        }
                    }
                }
            }
        } else {
            for i in 0..(QR / 4) as u32 {
                for rr in 0..2u32 {
                    let row = row0 + warp * 16 + g + 8 * rr;
                    let col = col0 + 8 * i + 2 * t;
                    let idx = (4 * i + 2 * rr) as usize;
                    // At head dim 96 warpgroup 1's columns past 95 (from K's zeros) are dropped; no
                    // other shape computes columns past the head dim, and its check folds away.
                    if !Shape::<D, D, BM>::K_PAST_HEAD_DIM || col < D as u32 {
                        // Permuted as the accumulator's rows are (conflict-free across a store's 8 rows).
                        let at = row * D as u32 + dq_accum_col(q0 + row, col);
                        shared_f32::store_v2(dq_s + at * 4, [dq[idx], dq[idx + 1]]);
                    }
                }
            }
        }
        if tid == 0 && p.deterministic != 0 {
            smem::store_u32(consts + DQ_TURN + 4 * dq_stage, dq_turn::<BM, BN>(&loop_mask::<PACKED>(p), nb, m));
        }
        bulk::shared_async();
        sync::arrive_at::<ALL_THREADS_U32>(BAR_FULL + dq_stage);
        // dK has read this stage's Q before any thread passes the next step's barrier and copies into
        // it (or, with TMA, frees the stage for the loader).
        wgmma::wait::<0>();
        wgmma::pin_all(&mut dk);
        if TMA {
            // Every step, the last two included: the loader waits for each.
            sync::arrive_at::<ALL_THREADS_U32>(BAR_QEMPTY + stage);
        }
        it += 1;
    }

    // dK (scaled) and dV of this CTA's keys.
    if !TMA {
        // The `cp.async` rows (each head dim's TMA row comes first) store from the registers: staged
        // through shared memory, the packed one at head dim 128 spilled.
        let (row, k0, sk) = stage::parked_keys::<PACKED>(&p.score, b as u32);
        let (dks, dvs) = (strides(p.dk_strides), strides(p.dv_strides));
        let (row, k0) = (row as usize, k0 as usize);
        let dk_g = (p.dk as *mut u16).add(row * dks[0] + k0 * dks[1] + hkv * dks[2]);
        let dv_g = (p.dv as *mut u16).add(row * dvs[0] + k0 * dvs[1] + hkv * dvs[2]);
        let (lane, row0) = (tid % 32, (tid / 128) * 64 + ((tid / 32) % 4) * 16);
        let rows = KeyRows { first: row0, count: 16, n0, sk };
        store_key_grads_direct::<E, DR>(&dk, p.scale, dk_g, dks[1], rows, lane);
        store_key_grads_direct::<E, DR>(&dv, 1.0, dv_g, dvs[1], rows, lane);
        return;
    }
    // Out through K's and V's tiles. After this barrier every product of both warpgroups has completed
    // (each thread waited for its own) and, in a CTA without steps, every thread's copies of K and V
    // have landed (each waited before the loop): K's rows, which both warpgroups' dQ products read, are
    // free for dK, and V's for dV. Each warp stages and copies out its own 16 rows (the global addresses
    // worked out once dK and dV have left the registers).
    sync::named::<BAR_COMPUTE, COMPUTE_THREADS_U32>();
    // The thread's place and the tiles' base afresh (`ptx::opaque`), as the loop works them out, rather
    // than values of the prologue held through it.
    let tid = opaque(tid);
    let (lane, row0) = (tid % 32, (tid / 128) * 64 + ((tid / 32) % 4) * 16);
    let base = (smem::base() + 1023) & !1023;
    let (k_s, v_s) = (base + l[0] as u32, base + l[1] as u32);
    park_key_grads::<E, BN, DR>(&dk, p.scale, k_s, row0, 0, lane);
    park_key_grads::<E, BN, DR>(&dv, 1.0, v_s, row0, 0, lane);
    sync::warp();
    let (row, k0, sk) = stage::parked_keys::<PACKED>(&p.score, b as u32);
    let (dks, dvs) = (strides(p.dk_strides), strides(p.dv_strides));
    let (row, k0) = (row as usize, k0 as usize);
    let dk_g = (p.dk as *mut u16).add(row * dks[0] + k0 * dks[1] + hkv * dks[2]);
    let dv_g = (p.dv as *mut u16).add(row * dvs[0] + k0 * dvs[1] + hkv * dvs[2]);
    let rows = KeyRows { first: row0, count: 16, n0, sk };
    let chunks = (0, (D / 8) as u32);
    copy_key_grads::<BN, 0>(RowLayout::Swizzled128, k_s, dk_g, dks[1], rows, chunks, lane);
    copy_key_grads::<BN, 0>(RowLayout::Swizzled128, v_s, dv_g, dvs[1], rows, chunks, lane);
}

/// dK and dV leave the CTA through shared memory: in the accumulator's layout (a lane holds 2 adjacent
/// columns of a row) they would make 4-byte scattered global stores, which kept the compute warps 16%
/// of their time at 1K queries in the memory pipe's queue (docs/perf.md). So the compute warps write
/// them rounded into the key-side tiles (K's for dK, V's for dV; 128-byte swizzled, `ROWS` rows; free
/// once every product has completed) with [`park_key_grads`], and copy them out as 16-byte vectors
/// with [`copy_key_grads`](super::copy_key_grads).
///
/// Writes one warp's 16 rows from `row0` of a column part of dK or dV (`R` registers from column
/// `col0`, a multiple of 8; times `scale`) into the tile at `tile`.
///
/// # Safety
/// All 32 lanes call it converged; no product reads those rows and columns of `tile`.
#[inline(always)]
pub(super) unsafe fn park_key_grads<E: WgmmaElem, const ROWS: usize, const R: usize>(
    acc: &[f32; R],
    scale: f32,
    tile: u32,
    row0: u32,
    col0: u32,
    lane: u32,
) {
    // Register 4i + 2rr + e holds row `row0 + g + 8rr` (g = lane / 4), column `col0 + 8i + 2t + e`: the
    // packed 8x8 blocks (i, rr) are `stmatrix` fragments, four per store ((i, 0), (i, 1), (i + 1, 0),
    // (i + 1, 1)), lanes 8j..8j+7 addressing block j's rows: row `row0 + 8((lane / 8) % 2) + lane % 8`,
    // 16-byte chunk `col0 / 8 + i + lane / 16`. The 8 rows of a block fall in 8 distinct chunks of the
    // swizzle (conflict-free).
    const { assert!(R % 8 == 0) };
    let row = (row0 + 8 * ((lane / 8) % 2) + lane % 8) as usize;
    let half = (lane / 16) as usize;
    for i in (0..R / 4).step_by(2) {
        let at = RowLayout::Swizzled128.chunk_offset::<ROWS, 0>(row, col0 as usize / 8 + i + half);
        let pack = |j: usize| E::pack2(acc[j] * scale, acc[j + 1] * scale);
        stmatrix::x4(tile + at, [pack(4 * i), pack(4 * i + 2), pack(4 * i + 4), pack(4 * i + 6)]);
    }
}

/// Stores one warp's 16 rows of dK or dV (`R` registers from column 0, times `scale`) from the
/// accumulator's layout: 4-byte scattered stores, where [`park_key_grads`] and
/// [`copy_key_grads`](super::copy_key_grads) do not fit the registers.
///
/// # Safety
/// The rows `< rows.sk` of `key_g` (row stride `key_stride`) are valid and 4-byte aligned.
#[inline(always)]
unsafe fn store_key_grads_direct<E: WgmmaElem, const R: usize>(
    acc: &[f32; R],
    scale: f32,
    key_g: *mut u16,
    key_stride: usize,
    rows: KeyRows,
    lane: u32,
) {
    let (g, t) = (lane / 4, lane % 4);
    for rr in 0..2 {
        let key = rows.n0 + rows.first + g + 8 * rr;
        if key < rows.sk {
            for i in 0..R / 4 {
                let (col, idx) = (8 * i + 2 * t as usize, 4 * i + 2 * rr as usize);
                *(key_g.add(key as usize * key_stride + col) as *mut u32) =
                    E::pack2(acc[idx] * scale, acc[idx + 1] * scale);
            }
        }
    }
}
