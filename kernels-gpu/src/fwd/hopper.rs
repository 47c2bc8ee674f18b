//! The forward kernel on Hopper's warpgroup tensor cores (`sm_90a`: `wgmma`, `setmaxnreg`), for every
//! head dim that is a multiple of 32 with a P·V shape (the `wgmma` rows of `tiles.rs`: 32, 64, 96, 128,
//! 192, 256; 32 and 96 are stored in whole 64-column blocks of the swizzle). One CTA per
//! (128 query rows, head, batch), as the `mma.sync` kernel, in three warpgroups with one job each:
//! - warpgroups 0 and 1 compute, each for its 64 query rows: per block of `BN` keys,
//!   S = Q Kᵀ (`wgmma` m64n`BN`, both operands K-major from shared memory), the online softmax in
//!   registers (`softmax.rs`, the same code as the `mma.sync` kernel's: the `wgmma` accumulator of a
//!   warp is the `mma.sync` layout of its 16 rows), and O += P V (m64n`D`) with P straight from
//!   registers as the A operand (V read MN-major; V and O may have a head dim `DV` below Q and K's). The product of block j+1's scores is issued while
//!   block j's PV may still run: one wait covers both.
//! - warpgroup 2 loads: Q once, then K and V blocks into a ring of `STAGES` stages (`cp.async`, 128-byte
//!   swizzle), `STAGES - 1` blocks of copies in flight (one with two stages, where a block
//!   is handed over before the loader waits for a stage: the compute warpgroups free a stage only once
//!   they have the next block). It hands each landed block to each compute warpgroup through a named
//!   barrier (`FULL`), and waits on another (`EMPTY`) until both warpgroups are done with a stage
//!   before refilling it.
//! - Ping-pong (`PINGPONG`, the tile row's `pingpong`): the compute warpgroups take turns issuing their
//!   products through two named barriers (`Shape::SCHED`), so that one's softmax runs while the other's
//!   products hold the tensor cores (FlashAttention-3, Shah et al. 2024, §3.1). Without it they only
//!   drift apart. FlashAttention-3's intra-warpgroup overlap (S of block j issued with P·V of block j-1,
//!   the softmax of block j while that P·V runs) measured slower here at every head dim, twice
//!   (docs/perf.md; the FP8 kernel, whose products are half as long, keeps it at head dim 64).
//! - `TMA` (the tile row's `tma`, dense or packed batches or a paged cache, head dims that are multiples of
//!   64): the loader's first thread issues Q, K and V as TMA boxes (`ptx::tma`, the tensor maps the host
//!   built, passed as the kernel's second parameter) against one `mbarrier` per stage; the TMA unit
//!   swizzles and zero-fills. Over a paged cache (`PAGED`) the maps of K and V span its pages, and each
//!   block's keys come as one box per page run (`issue_paged`), each issued by a loader thread of its own.
//!   The loader warpgroup waits on each stage's `mbarrier` and hands the block on through `FULL` as the
//!   `cp.async` loader does (the compute warpgroups polling the `mbarrier`s measured slower).
//! - `PERSIST` (the TMA rows' persistent kernels, dense batches): a one-dimensional grid whose CTAs take
//!   tile after tile, in static rounds or, with `TICKETS` (kernels of their own), by atomic tickets
//!   that the loader takes and hands to every warp (`schedule.rs`); the loader carries the ring of
//!   stages and the `mbarrier` phases from tile to tile, bringing a tile's first K/V blocks while the
//!   compute warpgroups finish the previous tile, and its Q once both have issued their last product
//!   with the previous Q (`Shape::Q_FREE`); O is staged in the stage of the tile's last block instead
//!   of the Q tile, once both compute warpgroups are done with it.
//! - `FMA_EXP2` (the tile row's `fma_exp2_tiles`): that many n8 tiles of each row's scores take their
//!   exponentials on the FMA pipe (`ptx::math::exp2_fma`) instead of the MUFU unit, where one `ex2` per
//!   score is more MUFU time than the score's products take on the tensor cores (head dim 32).
//!
//! `setmaxnreg` gives the compute warpgroups 224 registers per thread and the loader 56 (the launch
//! bounds in `kernels.rs` give 168 each: 2·128·224 + 128·56 = 384·168). At head dim 256 the O
//! accumulator alone is 128 of the 224, and 208 spilled there; a `cp.async` loader of 40 spilled at head
//! dim 256 (four column blocks per tile row), which is why it copies one 64-column block at a time. The
//! TMA loader of dense and packed batches (one issuing thread) takes 24 and the compute warpgroups 240
//! (2·128·240 + 128·24 = 64512), which lets head dim 256 take turns too.
//!
//! The epilogue of each compute warp stages its 16 O rows (normalised, rounded) in its own rows of the
//! Q tile, which nothing reads any more (a persistent CTA's: of its last block's stage), and writes them
//! out as 16-byte vectors.

use super::epilogue::store_empty;
use super::io::check_paged_length;
use super::schedule::{TileId, TileQueue, Tiles, Walk};
use super::softmax::OnlineSoftmax;
use crate::abi::FwdParams;
use crate::attn::score::KeyBlocks;
use crate::attn::stage::{self, FragPos};
use crate::frag::AccFrag;
use crate::ptx::wgmma::{self, desc_sw128, sw128_offset, WgmmaElem};
use crate::ptx::{bulk, cp_async, gmem, mbarrier, opaque, setmaxnreg, smem, sreg, sync, tma, warp};
use crate::smem_tile::RowLayout;

pub(super) const BM: usize = 128;
const COMPUTE_THREADS: u32 = 256;
/// Registers per thread after `setmaxnreg` (the launch bounds in `kernels.rs` give 168 each): the
/// `cp.async` loader and the paged TMA loader (a thread per page run) compute addresses and keep 56,
/// leaving the compute warpgroups 224.
const COMPUTE_REGS: u32 = 224;
const LOADER_REGS: u32 = 56;
/// The TMA loader of dense and packed batches issues each stage's boxes from one thread and lives on
/// `setmaxnreg`'s least, leaving the compute warpgroups 240: room for head dim 256 to take turns with
/// 80-key blocks (O alone is 128 of them; those blocks spilled at 224).
const COMPUTE_REGS_TMA: u32 = 240;
const LOADER_REGS_TMA: u32 = 24;
/// Bytes per 16 rows of a swizzled tile: one k16 step of an MN-major operand.
const K16_ROWS: u32 = 16 * 128;
/// Eight 128-byte rows: the stride between the swizzle's row groups.
const SBO: u32 = 1024;
// Two compute warpgroups and the loader's at the launch bounds' 168 registers per thread.
const _: () = assert!(
    COMPUTE_THREADS * COMPUTE_REGS + 128 * LOADER_REGS <= 384 * 168
        && COMPUTE_THREADS * COMPUTE_REGS_TMA + 128 * LOADER_REGS_TMA <= 384 * 168
);

/// Named barriers. `FULL + 2s + w`: stage s holds its block, for compute warpgroup w (the loader's 128
/// threads arrive, w's 128 wait). `EMPTY + s`: both compute warpgroups are done with stage s (their
/// 256 threads arrive, the loader's 128 wait). Then the two ping-pong barriers (`Shape::SCHED`) and `Shape::Q_FREE`.
const FULL: u32 = 1;
const fn empty(stages: u32) -> u32 {
    FULL + 2 * stages
}

/// The shape of one instantiation, from its tile row; `D` (Q and K), `DV` (V and O), `BN`, `STAGES` and
/// the register arrays' lengths are the kernel's const parameters, checked against each other here.
struct Shape<const D: usize, const DV: usize, const BN: usize, const STAGES: u32>;

impl<const D: usize, const DV: usize, const BN: usize, const STAGES: u32> Shape<D, DV, BN, STAGES> {
    /// Columns per stored row of Q and K, and of V (`tiles::swizzled_cols`).
    const DP: usize = crate::tiles::swizzled_cols(D);
    const DVP: usize = crate::tiles::swizzled_cols(DV);
    /// One K tile, and one stage (K then V).
    const K_TILE_BYTES: u32 = (BN * Self::DP * 2) as u32;
    const STAGE_BYTES: u32 = Self::K_TILE_BYTES + (BN * Self::DVP * 2) as u32;
    /// Q, then the stages, from the 1024-byte aligned base.
    const Q: u32 = 0;
    const KV: u32 = (BM * Self::DP * 2) as u32;
    const EMPTY: u32 = empty(STAGES);
    /// `SCHED + w`: warpgroup w's turn to issue its products (ping-pong): its 128 threads wait, the
    /// other warpgroup's 128 arrive once it has issued its own.
    const SCHED: u32 = empty(STAGES) + STAGES;
    /// A persistent CTA's Q tile is free for the next tile's: both compute warpgroups have issued their
    /// last product with it (their 256 threads arrive, the loader's 128 wait).
    const Q_FREE: u32 = Self::SCHED + 2;
    /// The TMA rows' `mbarrier`s, after the stages: Q's, then stage s's at `BARS + 8 + 8s` (the loader's
    /// one arrival with the stage's bytes completes each phase).
    const BARS: u32 = Self::KV + STAGES * Self::STAGE_BYTES;
    const Q_TMA_BYTES: u32 = (BM * Self::DP * 2) as u32;
    const fn full_bar(base: u32, s: u32) -> u32 {
        base + Self::BARS + 8 + 8 * s
    }
    /// A persistent CTA's tile queue (`schedule::TileQueue`), after the stages' `mbarrier`s.
    const QUEUE: u32 = Self::BARS + 8 * (1 + STAGES);
    const OK: () = assert!(
        D % 32 == 0
            && D <= 256
            && DV % 32 == 0
            && DV <= D
            && BN % 16 == 0
            && STAGES >= 2
            && Self::Q_FREE < 16
            && BM * Self::DVP * 2 <= Self::STAGE_BYTES as usize
            && (Self::KV as usize + STAGES as usize * Self::STAGE_BYTES as usize) % 1024 == 0
            && 8 * (1 + STAGES as usize) + TileQueue::BYTES as usize <= crate::tiles::TMA_BARRIER_BYTES
    );
}

/// The loader warpgroup: Q, then the CTA's `n_blocks` K/V blocks in key order from block `first`, step j
/// into stage `j % STAGES`.
#[inline(always)]
unsafe fn loader<const D: usize, const DV: usize, const BN: usize, const STAGES: u32, const PACKED: bool>(
    p: &FwdParams,
    base: u32,
    m0: u32,
    rows: u32,
    (first, n_blocks): (u32, u32),
    tid: u32,
) {
    let (head, batch) = (sreg::block_y() as u64, sreg::block_z());
    let kv_head = head / p.group as u64;
    let (row, q0) = stage::parked_queries::<PACKED>(batch);
    let q = (p.q as *const u16)
        .add((row as u64 * p.q_strides[0] + (q0 + m0) as u64 * p.q_strides[1] + head * p.q_strides[2]) as usize);
    copy_tile::<BM, D>(base + Shape::<D, DV, BN, STAGES>::Q, q, p.q_strides[1] as usize, rows, tid);
    let mut j = 0u32;
    while j < n_blocks {
        let s = j % STAGES;
        if j >= STAGES {
            if STAGES == 2 {
                // The compute warpgroups free block j - 2's stage once they have block j - 1: hand it
                // over first (with two stages, one block of copies is in flight at a time).
                cp_async::wait::<0>();
                hand_over::<STAGES>(j - 1);
            }
            // Both compute warpgroups are done with block j - STAGES.
            sync::named_at::<384>(Shape::<D, DV, BN, STAGES>::EMPTY + s);
        }
        let n0 = (first + j) * BN as u32;
        let dst = base + Shape::<D, DV, BN, STAGES>::KV + s * Shape::<D, DV, BN, STAGES>::STAGE_BYTES;
        // The sequence's keys again for each tile (parameters, or the CTA's shared slot when packed)
        // rather than held in the loader's few registers.
        let rows_at = |strides: [u64; 3]| {
            let (row, k0, seqlen_k) = stage::parked_keys::<PACKED>(&p.score, batch);
            // A packed loader needs those two registers: it takes the K/V head afresh instead.
            let kv_head = if PACKED { (sreg::fresh::block_y() / p.group) as u64 } else { kv_head };
            let at = row as u64 * strides[0] + (k0 + n0) as u64 * strides[1] + kv_head * strides[2];
            (at as usize, seqlen_k - n0)
        };
        let (k, valid) = rows_at(p.k_strides);
        copy_tile::<BN, D>(dst, (p.k as *const u16).add(k), p.k_strides[1] as usize, valid, tid);
        let (v, valid) = rows_at(p.v_strides);
        let v_dst = dst + Shape::<D, DV, BN, STAGES>::K_TILE_BYTES;
        copy_tile::<BN, DV>(v_dst, (p.v as *const u16).add(v), p.v_strides[1] as usize, valid, tid);
        cp_async::commit();
        if j >= 1 && !(STAGES == 2 && j >= STAGES) {
            // Block j - 1 (and Q with block 0) has landed: visible to the tensor cores' proxy, handed on.
            cp_async::wait::<1>();
            hand_over::<STAGES>(j - 1);
        }
        j += 1;
    }
    cp_async::wait::<0>();
    hand_over::<STAGES>(n_blocks - 1);
}

/// The TMA loaders' order over the ring of `STAGES` stages (`loader_tma` and `hopper_fp8.rs`'s; the
/// `cp.async` loader above keeps the same order written out, which its 56 registers need: through
/// this function ptxas spilled 8 bytes at head dims 128 and 192 / 128), for one tile's `n_blocks`
/// blocks, which are the ring's blocks `g0..g0 + n_blocks` (a persistent CTA's earlier tiles took the
/// ring's first `g0`; the closures get ring indices): block g's copies go into stage `g % STAGES`
/// (`issue(g)`) once both compute warpgroups are done with block `g - STAGES` (`wait_empty(stage)`),
/// and the tile's block `g - 1` is handed over after block g's copies are issued (`hand_over(g - 1)`),
/// its last block at the end. With two stages, block `g - 1` goes before the wait instead: the compute
/// warpgroups free block `g - 2`'s stage only once they have block `g - 1`, so one block of copies is
/// in flight at a time.
#[inline(always)]
pub(super) fn ring<const STAGES: u32>(
    g0: u32,
    n_blocks: u32,
    mut issue: impl FnMut(u32),
    mut wait_empty: impl FnMut(u32),
    mut hand_over: impl FnMut(u32),
) {
    let mut g = g0;
    while g < g0 + n_blocks {
        let early = STAGES == 2 && g >= STAGES;
        if g > g0 && early {
            hand_over(g - 1);
        }
        if g >= STAGES {
            wait_empty(g % STAGES);
        }
        issue(g);
        if g > g0 && !early {
            hand_over(g - 1);
        }
        g += 1;
    }
    hand_over(g0 + n_blocks - 1);
}

/// The loader warpgroup of the TMA rows: its first thread (`leader`) issues each tile's K and V boxes,
/// block after block, into the ring's stages against each stage's `mbarrier`, whose phase the TMA unit
/// completes once the bytes have landed (zero-filled past the tensor's rows), and the tile's Q boxes
/// with its first block. The whole loader warpgroup waits on that phase and hands the block over
/// through `FULL`, in the `cp.async` loader's order, so that the compute warpgroups wait on named
/// barriers only: with the 256 compute threads polling the `mbarrier`s themselves, the head dim 128
/// row ran 5-20% slower (docs/perf.md). `maps` is the generic address of the call's
/// `abi::FwdTensorMaps`.
///
/// A persistent CTA (`PERSIST`, `Tiles`) carries the ring from tile to tile, so that its next tile's
/// first blocks land while the compute warpgroups finish the current one; a tile's Q is loaded once
/// both compute warpgroups have issued their last product with the previous tile's (`Q_FREE`). At the
/// end it takes the arrivals at `EMPTY` and `Q_FREE` that no refill waited for.
///
/// A packed batch's maps span its tokens (batch 1): a sequence's boxes start at its first query or
/// key, and its last ones run on into the next sequence's rows. Queries there are computed but never
/// stored, keys there are masked, and their V rows are zeroed here before the block is handed over,
/// so that a sequence's result never depends on another's values (the product of a masked score's
/// zero and a non-finite value would not be zero).
#[inline(always)]
unsafe fn loader_tma<
    const D: usize,
    const DV: usize,
    const BN: usize,
    const STAGES: u32,
    const PACKED: bool,
    const PAGED: bool,
    const PERSIST: bool,
    const TICKETS: bool,
>(
    maps: u64,
    p: &FwdParams,
    base: u32,
    tid: u32,
) {
    let (q_map, k_map, v_map) = (maps, maps + 128, maps + 256);
    // Every loader thread runs the same instructions, the copies predicated on `leader`: a branch of
    // the first thread's own would let the compiler move the `EMPTY` barriers into diverged paths.
    let leader = tid == 0;
    for map in [q_map, k_map, v_map] {
        tma::prefetch_map(leader, map);
    }
    let q_bar = base + Shape::<D, DV, BN, STAGES>::BARS;
    let v_tile = |s: u32| {
        base + Shape::<D, DV, BN, STAGES>::KV
            + s * Shape::<D, DV, BN, STAGES>::STAGE_BYTES
            + Shape::<D, DV, BN, STAGES>::K_TILE_BYTES
    };
    // The ring's blocks and the Q tiles issued so far (the phase of Q's `mbarrier`).
    let (mut g0, mut q_tiles) = (0u32, 0u32);
    // A persistent CTA's tile indices: in rounds, or by ticket its first, then each next one chosen
    // once the current tile's last block is out (`Walk::choose_next`), published to every warp.
    let mut walk = Walk::<PERSIST, TICKETS>::new(TileQueue::at(base + Shape::<D, DV, BN, STAGES>::QUEUE));
    loop {
        walk.publish(leader);
        let Some(i) = walk.next(p, tid % 32) else { break };
        let tile = Tiles::<PERSIST, TICKETS>::at(p, i);
        let work = TileWork::of::<PACKED, BN>(p, tile);
        let (first, n_blocks) = (work.blocks.first, work.blocks.len());
        if n_blocks == 0 {
            walk.choose_next(leader, p);
            continue;
        }
        let (head, batch) = (tile.head, tile.batch);
        let kv_head = head / p.group;
        // A paged cache's queries are a dense batch (its keys alone go through the block table).
        let (row, q0) = if PAGED { (batch, 0) } else { stage::parked_queries::<PACKED>(batch) };
        // Block g (and Q with the tile's first) has landed: handed to the compute warpgroups.
        let hand_over_landed = |g: u32| {
            if g == g0 {
                mbarrier::wait(q_bar, q_tiles & 1);
            }
            mbarrier::wait(Shape::<D, DV, BN, STAGES>::full_bar(base, g % STAGES), (g / STAGES) & 1);
            if PACKED {
                // After the wait: the box's own bytes must have landed, or they would overwrite the
                // zeros. `valid` is at least 1 (`Mask::key_blocks` ends at the last block holding a
                // key). A paged block's rows past its keys are the rest of a page, or rows no box
                // wrote (stale).
                let seqlen_k = stage::parked_keys::<PACKED>(&p.score, batch).2;
                let valid = seqlen_k - (first + g - g0) * BN as u32;
                if valid < BN as u32 {
                    zero_rows_from::<BN, DV>(v_tile(g % STAGES), valid, tid);
                }
            }
            hand_over::<STAGES>(g);
        };
        let load_q = || {
            mbarrier::arrive_expect_tx(leader, q_bar, Shape::<D, DV, BN, STAGES>::Q_TMA_BYTES);
            let q_s = base + Shape::<D, DV, BN, STAGES>::Q;
            tma::load_tile::<BM, D>(leader, q_s, q_map, [q0 + work.m0, head, row], q_bar);
        };
        let issue = |g: u32| {
            if !PERSIST && g == g0 {
                // A one-tile CTA's Q before its first keys, as they are needed together.
                load_q();
            }
            let s = g % STAGES;
            let bar = Shape::<D, DV, BN, STAGES>::full_bar(base, s);
            let dst = base + Shape::<D, DV, BN, STAGES>::KV + s * Shape::<D, DV, BN, STAGES>::STAGE_BYTES;
            if PAGED {
                // The loader's first warp alone: a block has at most `BN / 8 <= 16` boxes, and the
                // other three warps' share of the work would only take issue slots from the compute
                // warps that share their schedulers (docs/perf.md).
                if tid < 32 {
                    let block = PagedBlock { n0: (first + g - g0) * BN as u32, kv_head, seq: batch };
                    issue_paged::<D, DV, BN>(p, [dst, v_tile(s)], [k_map, v_map], bar, block, tid);
                }
            } else {
                // The sequence's first key again for each block (a packed CTA's shared slot), as
                // `loader`.
                let (row, k0, _) = stage::parked_keys::<PACKED>(&p.score, batch);
                let n0 = k0 + (first + g - g0) * BN as u32;
                mbarrier::arrive_expect_tx(leader, bar, Shape::<D, DV, BN, STAGES>::STAGE_BYTES);
                tma::load_tile::<BN, D>(leader, dst, k_map, [n0, kv_head, row], bar);
                tma::load_tile::<BN, DV>(leader, v_tile(s), v_map, [n0, kv_head, row], bar);
            }
            if PERSIST && g == g0 {
                // A persistent CTA's Q after the tile's first keys, which need not wait for the previous
                // tile's products, once both compute warpgroups are done with the previous Q.
                if q_tiles > 0 {
                    sync::named_at::<384>(Shape::<D, DV, BN, STAGES>::Q_FREE);
                }
                load_q();
            }
            if TICKETS && g + 1 == g0 + n_blocks {
                // The next tile once the tile's last block is out, a ticket's latency under its last
                // blocks' landing: a ticket taken at the tile's start held the CTA's next tile a whole
                // tile early, and the last tiles of a call went to CTAs far from done (docs/perf.md).
                walk.choose_next(leader, p);
            }
        };
        let wait_empty = |s: u32| sync::named_at::<384>(Shape::<D, DV, BN, STAGES>::EMPTY + s);
        ring::<STAGES>(g0, n_blocks, issue, wait_empty, hand_over_landed);
        g0 += n_blocks;
        q_tiles += 1;
    }
    if PERSIST {
        // The compute warpgroups' arrivals for the ring's last blocks and for the last tile's Q.
        let mut g = g0.saturating_sub(STAGES);
        while g < g0 {
            sync::named_at::<384>(Shape::<D, DV, BN, STAGES>::EMPTY + g % STAGES);
            g += 1;
        }
        if q_tiles > 0 {
            sync::named_at::<384>(Shape::<D, DV, BN, STAGES>::Q_FREE);
        }
        walk.retire(leader, p);
    }
}

/// A block of a paged cache's keys: its first key `n0` in sequence `seq`'s pages, of K/V head `kv_head`.
#[derive(Clone, Copy)]
struct PagedBlock {
    n0: u32,
    kv_head: u32,
    seq: u32,
}

/// The TMA loads of one block of a paged cache's keys (`abi::PageTable`), K into `dst[0]` and V into
/// `dst[1]` (the stage's tiles), through the maps `maps` of the K and V pages (`[dim, page_size,
/// heads_kv, num_pages]`, boxes of `tma_box_rows` keys): box i holds keys `n0 + i·rows ..` of one page
/// (`rows` divides the page size and the block), at row `i·rows` of the tiles, a whole number of the
/// swizzle's 8-row groups. Lane i of the loader's first warp issues box i, so that the boxes' block-table
/// reads go out together rather than one after the other from one thread; boxes past the sequence's
/// keys are not issued, and lane 0 arms the stage's `mbarrier` with the bytes of those that are (counted
/// by a ballot: no division by the run-time box size). A page index
/// outside `[0, num_pages)` raises `abi::PAGED_BAD_PAGE`; the TMA unit reads nothing there and fills the
/// box with zeros (its coordinates lie outside the map).
///
/// # Safety
/// The loader's first warp, converged (`tid` its lane), with the stage free (both compute warpgroups
/// past `EMPTY`) and its `mbarrier`'s phase not yet armed; `maps` as `loader_tma`'s, the block holding
/// at least one key of the sequence.
#[inline(always)]
unsafe fn issue_paged<const D: usize, const DV: usize, const BN: usize>(
    p: &FwdParams,
    dst: [u32; 2],
    maps: [u64; 2],
    bar: u32,
    block: PagedBlock,
    tid: u32,
) {
    let pages = &p.pages;
    let rows = pages.tma_box_rows;
    // Box `tid` exists (`tid · rows < BN`) and holds a key of the sequence.
    let key = block.n0 + tid * rows;
    let mine = tid * rows < BN as u32 && key < stage::parked_seqlen_k();
    let boxes = warp::ballot(mine).count_ones();
    // Whole 64-column boxes (the TMA rows' head dims are multiples of 64: `attn_fwd_wgmma`).
    let box_bytes = rows * 128 * (D.div_ceil(64) + DV.div_ceil(64)) as u32;
    mbarrier::arrive_expect_tx(tid == 0, bar, boxes * box_bytes);
    let page = if mine {
        let table = (pages.block_table as *const i32).add((block.seq * pages.pages_per_seq) as usize);
        super::io::lookup_page(pages, table, None, 0, key / pages.page_size)
    } else {
        0
    };
    let at = |cb: usize| [64 * cb as u32, key % pages.page_size, block.kv_head, page];
    let row_bytes = tid * rows * 128;
    for cb in 0..D.div_ceil(64) {
        tma::load_4d(mine, dst[0] + (cb * BN * 128) as u32 + row_bytes, maps[0], at(cb), bar);
    }
    for cb in 0..DV.div_ceil(64) {
        tma::load_4d(mine, dst[1] + (cb * BN * 128) as u32 + row_bytes, maps[1], at(cb), bar);
    }
}

/// Issues the copies of one `ROWS x D` tile into swizzled shared memory (`ptx::wgmma` layout) with the
/// loader's 128 threads, one 64-column block after the other: thread `tid` copies chunk `tid % 8` of
/// rows `tid / 8 + 16i`, which all sit at the same swizzled column, 2048 bytes apart. A rolled loop with
/// running addresses (the trip count hidden from the optimiser) keeps the loader within its registers.
/// Rows at or past `valid` are zero-filled. In the last block of a head dim that is an odd multiple of
/// 32, the threads of chunks 4-7 have nothing to copy.
#[inline(always)]
unsafe fn copy_tile<const ROWS: usize, const D: usize>(
    dst: u32,
    src: *const u16,
    row_stride: usize,
    valid: u32,
    tid: u32,
) {
    const { assert!(ROWS % 16 == 0 && D % 32 == 0) };
    let (row0, chunk) = (tid / 8, tid % 8);
    for cb in 0..D.div_ceil(64) {
        if 64 * cb + 32 == D && chunk >= 4 {
            break;
        }
        let mut to = dst + RowLayout::Swizzled128.chunk_offset::<ROWS, D>(row0 as usize, 8 * cb + chunk as usize);
        let mut from = src.add(row0 as usize * row_stride + 64 * cb + chunk as usize * 8);
        let mut left = valid as i32 - row0 as i32;
        let mut i = 0;
        while i < opaque::u32((ROWS / 16) as u32) {
            let ok = left > 0;
            // A row past the end keeps `src` (row 0, always readable) as its address; nothing is read.
            cp_async::copy16_or_zero(to, if ok { from } else { src }, ok);
            to += 16 * 128;
            from = from.add(16 * row_stride);
            left -= 16;
            i += 1;
        }
    }
}

/// Zeros rows `valid..ROWS` of a swizzled `ROWS x COLS` tile (`ptx::wgmma` layout: each 64-column block
/// `ROWS` rows of 128 bytes, the swizzle permuting 16-byte chunks within a row, so that whole rows are
/// zeroed by their unswizzled chunk offsets) with the loader's 128 threads, one 16-byte chunk per thread
/// and round.
///
/// # Safety
/// Loader threads only (`tid` below 128), on a tile in this CTA's shared memory whose copies have
/// landed and that no product reads until the loader hands it over.
#[inline(always)]
unsafe fn zero_rows_from<const ROWS: usize, const COLS: usize>(tile: u32, valid: u32, tid: u32) {
    let chunks_per_row = (COLS / 8) as u32;
    let mut idx = tid;
    while idx < (ROWS as u32 - valid) * chunks_per_row {
        let (row, chunk) = (valid + idx / chunks_per_row, idx % chunks_per_row);
        smem::store_v4(tile + (chunk / 8) * (ROWS as u32 * 128) + row * 128 + (chunk % 8) * 16, [0; 4]);
        idx += 128;
    }
}

/// The loader's side of `FULL`: this thread's copies of block `j` are complete and fenced.
#[inline(always)]
fn hand_over<const STAGES: u32>(j: u32) {
    bulk::shared_async();
    let s = j % STAGES;
    sync::arrive_at::<256>(FULL + 2 * s);
    sync::arrive_at::<256>(FULL + 2 * s + 1);
}

/// Issues S = Q_w Kᵀ for the warpgroup's Q rows at `q_w` and the K tile at `k_s`: k16 steps of 32 bytes
/// inside each 64-column block of Q and K, one committed group.
#[inline(always)]
unsafe fn issue_s<E: WgmmaElem, const D: usize, const BN: usize, const SR: usize>(
    sc: &mut [f32; SR],
    q_w: u32,
    k_s: u32,
) {
    wgmma::fence();
    for kk in 0..D / 16 {
        let inner = ((kk % 4) * 32) as u32;
        let a = desc_sw128(q_w + ((kk / 4) * BM * 128) as u32 + inner, 16, SBO);
        let b = desc_sw128(k_s + ((kk / 4) * BN * 128) as u32 + inner, 16, SBO);
        E::ss::<SR, 0, 0>(sc, a, b, kk > 0);
    }
    wgmma::commit();
}

/// A tile's query rows and visible key blocks.
pub(super) struct TileWork {
    pub m0: u32,
    pub rows: u32,
    pub blocks: KeyBlocks,
}

impl TileWork {
    /// # Safety
    /// As `stage::parked` (a packed CTA's threads have passed `stage::enter`); a packed tile's first row
    /// is within its sequence.
    #[inline(always)]
    pub(super) unsafe fn of<const PACKED: bool, const BN: usize>(p: &FwdParams, tile: TileId) -> TileWork {
        let mask = stage::parked::<PACKED>(&p.score, tile.batch).mask;
        let m0 = tile.m_block * BM as u32;
        let rows = (mask.seqlen_q - m0).min(BM as u32);
        TileWork { m0, rows, blocks: mask.key_blocks(m0, rows, BN as u32) }
    }
}

/// Where a tile's O rows and LSE values go (the sequence's from its shared slot when packed).
///
/// # Safety
/// As `TileWork::of`.
#[inline(always)]
pub(super) unsafe fn out_rows<const PACKED: bool>(p: &FwdParams, tile: TileId, m0: u32) -> (*mut u16, *mut f32) {
    let seq = stage::parked::<PACKED>(&p.score, tile.batch);
    let o_g = (p.o as *mut u16).add(
        (seq.row as u64 * p.o_strides[0] + (seq.q0 + m0) as u64 * p.o_strides[1] + tile.head as u64 * p.o_strides[2])
            as usize,
    );
    let lse_g = (p.lse as *mut f32).add(seq.lse_row(&p.score, p.heads_q, tile.head, m0) as usize);
    (o_g, lse_g)
}

/// The kernel body for head dims `D` (Q, K) and `DV` (V, O), `BN`-key blocks in `STAGES` stages;
/// `SR = BN/2` and `OR = DV/2` are the registers of the S and O accumulators, `NN = BN/8` and
/// `ND = DV/8` their n8 tiles, `KS =
/// BN/16` the k16 steps of P·V.
///
/// # Safety
/// Launched as `abi::FwdParams` documents (`num_splits` = 1), with 384 threads, the tile row's
/// `smem_bytes(2)` bytes of dynamic shared memory and 128-row query blocks, on an sm_90a device; the
/// persistent kernels (`PERSIST`: dense TMA rows) with a one-dimensional grid of any size (`Tiles`).
#[inline(always)]
pub unsafe fn attn_fwd_wgmma<
    E: WgmmaElem,
    const D: usize,
    const DV: usize,
    const BN: usize,
    const STAGES: u32,
    const SR: usize,
    const OR: usize,
    const NN: usize,
    const ND: usize,
    const KS: usize,
    const PINGPONG: bool,
    const FMA_EXP2: usize,
    const TMA: bool,
    const PACKED: bool,
    const PAGED: bool,
    const PERSIST: bool,
    const TICKETS: bool,
>(
    p: &FwdParams,
    maps: u64,
) {
    const { assert!(SR == BN / 2 && OR == DV / 2 && NN == BN / 8 && ND == DV / 8 && KS == BN / 16) };
    const { assert!(!TMA || (D % 64 == 0 && DV % 64 == 0)) };
    // A paged cache's sequences come as a packed batch's do (`stage::enter`), its keys by TMA boxes.
    const { assert!(!PAGED || (PACKED && TMA)) };
    // Persistent CTAs: the dense TMA rows.
    const { assert!(!PERSIST || (TMA && !PACKED)) };
    const { assert!(PERSIST || !TICKETS) };
    #[allow(clippy::let_unit_value)]
    let () = Shape::<D, DV, BN, STAGES>::OK;
    let tid = sreg::thread_x();
    // A one-tile CTA's work, worked out once for both roles (a persistent CTA's per tile, below).
    let mut one_tile = TileWork { m0: 0, rows: 0, blocks: KeyBlocks::default() };
    if !PERSIST {
        // The CTA's one tile: a packed batch's sequence into the CTA's shared slot, and a CTA without
        // work leaves before the barriers exist.
        let tile = Tiles::<false, false>::at(p, 0);
        let seq = stage::enter::<PACKED>(&p.score, tile.batch, tid);
        if PAGED && tid == 0 {
            check_paged_length(&p.pages, p.score.seqused_k, tile.batch, p.score.mask.seqlen_k);
        }
        let m0 = tile.m_block * BM as u32;
        if PACKED && m0 >= seq.mask.seqlen_q {
            // A packed batch's grid covers its longest sequence: this sequence has no such rows.
            return;
        }
        one_tile = TileWork::of::<PACKED, BN>(p, tile);
        if one_tile.blocks.is_empty() {
            if tid < COMPUTE_THREADS {
                store_empty_tile::<PACKED, false, false, DV>(p, 0, &one_tile, tid);
            }
            return;
        }
    }

    // The swizzle pattern repeats every 1024 bytes of the shared window: tiles start on that boundary.
    let base = (smem::base() + 1023) & !1023;
    if TMA {
        // The barriers exist before anyone arrives at or waits on them.
        // By thread 0, predicated rather than branched (as the loader's copies).
        mbarrier::init(tid == 0, base + Shape::<D, DV, BN, STAGES>::BARS, 1);
        for s in 0..STAGES {
            mbarrier::init(tid == 0, Shape::<D, DV, BN, STAGES>::full_bar(base, s), 1);
        }
        if TICKETS {
            TileQueue::at(base + Shape::<D, DV, BN, STAGES>::QUEUE).init(tid);
        }
        mbarrier::fence_init();
        sync::block();
    }
    // The loader issues from one thread (dense and packed TMA rows): the register split of
    // `COMPUTE_REGS_TMA`, decided once for both roles.
    let one_issuer = TMA && !PAGED;
    if tid >= COMPUTE_THREADS {
        if one_issuer {
            setmaxnreg::dec::<LOADER_REGS_TMA>();
        } else {
            setmaxnreg::dec::<LOADER_REGS>();
        }
        if TMA {
            loader_tma::<D, DV, BN, STAGES, PACKED, PAGED, PERSIST, TICKETS>(maps, p, base, tid - COMPUTE_THREADS);
        } else {
            let blocks = (one_tile.blocks.first, one_tile.blocks.len());
            loader::<D, DV, BN, STAGES, PACKED>(p, base, one_tile.m0, one_tile.rows, blocks, tid - COMPUTE_THREADS);
        }
        return;
    }
    if one_issuer {
        setmaxnreg::inc::<COMPUTE_REGS_TMA>();
    } else {
        setmaxnreg::inc::<COMPUTE_REGS>();
    }

    let wg = tid / 128;
    if PINGPONG && wg == 1 {
        // Warpgroup 0 takes the first turn.
        sync::arrive_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED);
    }
    if PERSIST {
        // The ring's blocks taken by this CTA's earlier tiles.
        let mut walk = Walk::<PERSIST, TICKETS>::new(TileQueue::at(base + Shape::<D, DV, BN, STAGES>::QUEUE));
        let mut g0 = 0u32;
        while let Some(i) = walk.next(p, tid % 32) {
            let work = TileWork::of::<PACKED, BN>(p, Tiles::<PERSIST, TICKETS>::at(p, i));
            if work.blocks.is_empty() {
                store_empty_tile::<PACKED, PERSIST, TICKETS, DV>(p, i, &work, tid);
            } else {
                compute_tile::<E, D, DV, BN, STAGES, SR, OR, NN, ND, KS, PINGPONG, FMA_EXP2, PACKED, PERSIST, TICKETS>(
                    p,
                    base,
                    (i, &work),
                    g0,
                    tid,
                );
                g0 += work.blocks.len();
            }
        }
    } else {
        // The one tile (one without keys left above).
        compute_tile::<E, D, DV, BN, STAGES, SR, OR, NN, ND, KS, PINGPONG, FMA_EXP2, PACKED, PERSIST, TICKETS>(
            p,
            base,
            (0, &one_tile),
            0,
            tid,
        );
    }
    if PERSIST && PINGPONG && wg == 0 {
        // Warpgroup 1's arrival after its last turn, which nothing else waits for (a one-tile CTA
        // takes it in `compute_tile`, before its epilogue).
        sync::named_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED);
    }
}

/// A tile whose rows see no key: O = 0 and the LSE of an empty row (`store_empty`), by the 256 compute
/// threads; tile `i` of `Tiles`, its `work`.
///
/// # Safety
/// As `TileWork::of`; compute threads only.
#[inline(always)]
unsafe fn store_empty_tile<const PACKED: bool, const PERSIST: bool, const TICKETS: bool, const DV: usize>(
    p: &FwdParams,
    i: u32,
    work: &TileWork,
    tid: u32,
) {
    let tile = Tiles::<PERSIST, TICKETS>::at(p, i);
    let sink = stage::sink_log2(&p.score, tile.head);
    let (o_g, lse_g) = out_rows::<PACKED>(p, tile, work.m0);
    let o_stride = p.o_strides[1] as usize;
    store_empty::<DV>(o_g, o_stride, lse_g, sink * core::f32::consts::LN_2, work.rows, COMPUTE_THREADS, tid);
}

/// Tile `i` of `Tiles` (its `work`) for a compute warpgroup (module docs), its blocks the ring's `g0..`
/// (`ring`).
///
/// # Safety
/// A compute thread of `attn_fwd_wgmma`, the tile's blocks non-empty.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn compute_tile<
    E: WgmmaElem,
    const D: usize,
    const DV: usize,
    const BN: usize,
    const STAGES: u32,
    const SR: usize,
    const OR: usize,
    const NN: usize,
    const ND: usize,
    const KS: usize,
    const PINGPONG: bool,
    const FMA_EXP2: usize,
    const PACKED: bool,
    const PERSIST: bool,
    const TICKETS: bool,
>(
    p: &FwdParams,
    base: u32,
    (i, work): (u32, &TileWork),
    g0: u32,
    tid: u32,
) {
    let TileId { head, batch, .. } = Tiles::<PERSIST, TICKETS>::at(p, i);
    let (m0, blocks) = (work.m0, work.blocks);
    let n_blocks = blocks.len();
    let lane = tid % 32;
    let (wg, warp) = (tid / 128, (tid / 32) % 4);
    let (g, t) = (lane / 4, lane % 4);
    let q_s = base + Shape::<D, DV, BN, STAGES>::Q;
    let kv_s = base + Shape::<D, DV, BN, STAGES>::KV;
    let row_g = m0 + 64 * wg + 16 * warp + g;

    let mut softmax = OnlineSoftmax::<1>::new(
        stage::row_sinks_log2::<1>(&p.score, p.sinks_by_row != 0, head, [[row_g, row_g + 8]]),
        t,
    );
    // Loaded once: the compute warpgroups have registers to spare, and a load in the loop would stall
    // each block's softmax on its latency.
    let slope = if p.score.has_alibi() { stage::alibi_slope_log2(&p.score, batch, head) } else { 0.0 };
    let mods = p.score.has_modifiers();
    let mut o = [0f32; OR];
    let mut j = 0u32;
    while j < n_blocks {
        let stage_of = |j: u32| (g0 + j) % STAGES;
        let k_s = kv_s + stage_of(j) * Shape::<D, DV, BN, STAGES>::STAGE_BYTES;
        sync::named_at::<256>(FULL + 2 * stage_of(j) + wg);
        if PINGPONG {
            // This warpgroup's turn to issue; the other's products then run during this one's softmax.
            sync::named_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED + wg);
        }
        let mut sc = [0f32; SR];
        issue_s::<E, D, BN, SR>(&mut sc, q_s + wg * 64 * 128, k_s);
        if PINGPONG {
            sync::arrive_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED + 1 - wg);
        }
        // Also the previous block's PV: its stage may be refilled once both warpgroups are past here
        // (a one-tile CTA's last `STAGES` blocks are never refilled; a persistent CTA's loader takes
        // every arrival).
        wgmma::wait::<0>();
        wgmma::pin_all(&mut sc);
        wgmma::pin_all(&mut o);
        if j >= 1 && (PERSIST || j - 1 + STAGES < n_blocks) {
            sync::arrive_at::<384>(Shape::<D, DV, BN, STAGES>::EMPTY + stage_of(j - 1));
        }
        if PERSIST && j == n_blocks - 1 {
            // The tile's last product with Q is done: the loader may bring the next tile's.
            sync::arrive_at::<384>(Shape::<D, DV, BN, STAGES>::Q_FREE);
        }

        let mut s_frag = AccFrag::<1, NN>::from_wgmma(&sc);
        let mut o_frag = AccFrag::<1, ND>::from_wgmma(&o);
        let at = FragPos { row_g, col0: (blocks.first + j) * BN as u32, t };
        let masked = blocks.needs_mask(blocks.first + j);
        let mask = || stage::sequence_mask::<PACKED>(&p.score);
        // Lazy rescaling where O is wide (measured: docs/perf.md). At head dim 256 the softmax goes in
        // each branch, so that the plain one's row offsets stay constants (one softmax after both
        // spilled there); elsewhere one softmax follows both (two copies cost 1-4% at head dim 64).
        if D >= 256 {
            if mods {
                let logits = stage::logits_by_query::<1, NN, true>(&p.score, mask, || slope, &mut s_frag, at, masked);
                softmax.update(&mut s_frag, &mut o_frag, logits, DV >= 96, FMA_EXP2);
            } else {
                let logits = stage::logits_by_query::<1, NN, false>(&p.score, mask, || slope, &mut s_frag, at, masked);
                softmax.update(&mut s_frag, &mut o_frag, logits, DV >= 96, FMA_EXP2);
            }
        } else {
            let logits = if mods {
                stage::logits_by_query::<1, NN, true>(&p.score, mask, || slope, &mut s_frag, at, masked)
            } else {
                stage::logits_by_query::<1, NN, false>(&p.score, mask, || slope, &mut s_frag, at, masked)
            };
            softmax.update(&mut s_frag, &mut o_frag, logits, DV >= 96, FMA_EXP2);
        }
        o_frag.to_wgmma(&mut o);

        // O += P V: the A fragment of k16 step kk is n8 tiles 2kk and 2kk+1 of P, rounded.
        let mut pk = [[0u32; 4]; KS];
        for (kk, a) in pk.iter_mut().enumerate() {
            let (lo, hi) = (&s_frag.0[0][2 * kk], &s_frag.0[0][2 * kk + 1]);
            *a = [E::pack2(lo[0], lo[1]), E::pack2(lo[2], lo[3]), E::pack2(hi[0], hi[1]), E::pack2(hi[2], hi[3])];
        }
        wgmma::fence();
        let v_s = k_s + Shape::<D, DV, BN, STAGES>::K_TILE_BYTES;
        for (kk, a) in pk.iter().enumerate() {
            let b = desc_sw128(v_s + kk as u32 * K16_ROWS, (BN * 128) as u32, SBO);
            E::rs::<OR, 1>(&mut o, a, b, true);
        }
        wgmma::commit();
        j += 1;
    }
    if !PERSIST && PINGPONG && wg == 0 {
        // Warpgroup 1's arrival after its last turn, which nothing else waits for.
        sync::named_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED);
    }
    wgmma::wait::<0>();
    wgmma::pin_all(&mut o);

    let (inv, lse) = softmax.finish();
    let (o_g, lse_g) = out_rows::<PACKED>(p, Tiles::<PERSIST, TICKETS>::at(p, i), m0);
    let o_stride = p.o_strides[1] as usize;
    // A packed batch's rows again rather than held through the loop (its lengths are not parameters).
    let rows =
        if PACKED { (stage::parked::<PACKED>(&p.score, 0).mask.seqlen_q - m0).min(BM as u32) } else { work.rows };
    // The thread's place afresh (`ptx::opaque`): in a persistent CTA's loop the staging's addresses,
    // functions of the thread alone, would otherwise be worked out once ahead of the tile loop and
    // held through the block loop (spilling at head dims 192 and 256).
    let tid = if PERSIST { opaque::u32(tid) } else { tid };
    let (lane, wg, warp) = (tid % 32, tid / 128, (tid / 32) % 4);
    let (g, t) = (lane / 4, lane % 4);
    let row0 = 64 * wg + 16 * warp;
    // O · inv, rounded, into this warp's 16 rows of the Q tile (swizzled, `DV <= D` columns; the
    // warpgroup's products are done with Q), then out in 16-byte rows: each warp reads back only what
    // it wrote, so a warp barrier orders it. A persistent CTA stages O in its last block's stage
    // instead and frees that stage for the loader once it has read it back.
    let last_stage = (g0 + n_blocks - 1) % STAGES;
    let q_s = if PERSIST {
        // A persistent CTA's Q tile is the next tile's: O goes through the stage of the tile's last
        // block, once both compute warpgroups are done with it.
        sync::named::<0, 256>();
        kv_s + last_stage * Shape::<D, DV, BN, STAGES>::STAGE_BYTES
    } else {
        q_s
    };
    for rr in 0..2usize {
        let row = row0 + g + 8 * rr as u32;
        for n in 0..DV / 8 {
            let (x, y) = (o[4 * n + 2 * rr] * inv[0][rr], o[4 * n + 2 * rr + 1] * inv[0][rr]);
            smem::store_u32(q_s + sw128_offset(BM as u32, row, (8 * n) as u32 + 2 * t), E::pack2(x, y));
        }
        if t == 0 && row < rows {
            *lse_g.add(row as usize) = lse[0][rr];
        }
    }
    sync::warp();
    let chunks = (DV / 8) as u32;
    for n in 0..(16 * chunks / 32) {
        let idx = lane + 32 * n;
        let row = row0 + idx / chunks;
        let chunk = idx % chunks;
        if row < rows {
            let v = smem::load_v4(q_s + sw128_offset(BM as u32, row, 8 * chunk));
            gmem::store_v4(o_g.add(row as usize * o_stride + 8 * chunk as usize), v);
        }
    }
    if PERSIST {
        // The staging's generic accesses before the TMA unit's writes of the stage's next block.
        bulk::shared_async();
        sync::arrive_at::<384>(Shape::<D, DV, BN, STAGES>::EMPTY + last_stage);
    }
}
