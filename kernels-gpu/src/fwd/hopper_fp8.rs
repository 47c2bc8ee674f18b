//! The FP8 forward on Hopper (`sm_90a`): Q, K and V in e4m3 with one descale factor per (batch, K/V
//! head) for each (FlashAttention-3's `q_descale`, `k_descale`, `v_descale`: the real values are the
//! stored ones times the factor), O in bf16 and the LSE in f32. `hopper.rs`'s design (two compute
//! warpgroups of 64 query rows taking turns on the tensor cores, a loader warpgroup, TMA loads into a
//! ring of stages, the same score stage and online softmax) with what FP8 `wgmma` changes:
//!
//! - Both operands of an 8-bit product are K-major. S = Q Kᵀ is (the head dim runs along Q's and K's
//!   rows), P·V is not: V's keys run down its columns. The loader warpgroup transposes each V tile in
//!   shared memory once it has landed (`transpose_v`), before it hands the block over, so no pass over
//!   V in global memory is needed and the compute warpgroups never wait for it.
//! - P is the A operand of P·V from registers, in the 8-bit fragment layout (`ptx::wgmma::e4m3`),
//!   whose columns are not those of S's accumulator: a thread holds keys 2t, 2t+1, 8+2t, 9+2t of each
//!   16-key group of its rows where the fragment wants 4t..4t+3. Rather than moving bytes between
//!   lanes, the transpose stores V's keys in the fragment's order: column `4t + i` of each 16-key
//!   group of Vᵀ holds key `2t + i % 2 + 8·(i / 2)`, and the product's sum over keys is the same.
//! - P is rounded to e4m3 scaled by `2^P_LOG2` (FlashAttention-3 scales by 2^8): probabilities in
//!   (0, 1] would lose everything below 2^-9 (e4m3's smallest subnormal) against the row's max; scaled,
//!   they keep down to `2^(-9 - P_LOG2)`. Below 2^8 the softmax rescales lazily, letting the max go
//!   stale by up to `8 - P_LOG2` (base 2), so P · 2^P_LOG2 stays within 2^8, below e4m3's 448: the
//!   tile row trades the range of small probabilities against the rescales it saves (`tiles.rs`). The
//!   row sum is taken in f32 on the same scaled values, so the normaliser cancels the factor.
//! - The descales: `q_descale · k_descale` joins the score scale (and the softcap's pre-scale), so the
//!   score stage sees exactly the real scores; `v_descale` multiplies O with the normaliser.
//!
//! - `OVERLAP` (the tile row's `overlap`): FlashAttention-3's intra-warpgroup overlap. S of block j is
//!   issued in the same turn as P·V of block j-1, and block j's softmax runs while that P·V does; O is
//!   rescaled once it has landed (`OnlineSoftmax::update_deferred`). The softmax then leaves the
//!   warpgroup's chain only where it is long against the products: at head dim 64 (`docs/perf.md`).
//!
//! Tiles are rows of the 128-byte swizzle (head dims that are multiples of 128: column blocks of 128
//! e4m3) or of the 64-byte swizzle (head dim 64); Vᵀ's rows are the block's 128 or 64 keys.

use super::hopper::{ring, TileWork, BM};
use super::schedule::{TileId, TileQueue, Tiles, Walk};
use super::softmax::OnlineSoftmax;
use crate::abi::{Fp8Descales, FwdParams};
use crate::attn::score::{KeyBlocks, ScoreParams};
use crate::attn::stage::{self, FragPos};
use crate::frag::AccFrag;
use crate::ptx::elem::{pack4_e4m3, transpose_bytes, Elem16};
use crate::ptx::wgmma::{self, desc_kmajor, e4m3, swizzled_byte};
use crate::ptx::{bulk, mbarrier, setmaxnreg, smem, sreg, sync, tma};

const COMPUTE_THREADS: u32 = 256;
const COMPUTE_REGS: u32 = 224;
const LOADER_REGS: u32 = 56;
// Two compute warpgroups and the loader's at the launch bounds' 168 registers per thread.
const _: () = assert!(COMPUTE_THREADS * COMPUTE_REGS + 128 * LOADER_REGS <= 384 * 168);

/// Named barriers, as in `hopper.rs`: `FULL + 2s + w` (stage s holds its block, transposed, for compute
/// warpgroup w), `EMPTY + s` (both compute warpgroups are done with stage s), then the two ping-pong
/// barriers (`SCHED + w`: warpgroup w's turn to issue its products) and a persistent CTA's `Q_FREE`.
const FULL: u32 = 1;

/// The shared memory of one instantiation: Q, then `STAGES` stages of K, V as loaded and Vᵀ, then the
/// TMA `mbarrier`s (Q's, then one per stage). One byte per element.
struct Shape<const D: usize, const DV: usize, const BN: usize, const STAGES: u32>;

impl<const D: usize, const DV: usize, const BN: usize, const STAGES: u32> Shape<D, DV, BN, STAGES> {
    /// Bytes per stored row of Q and K, and of V as loaded: the head dim in column blocks of at most
    /// 128 bytes (the 128-byte swizzle; a head dim of 64 is one block of 64-byte rows, the 64-byte
    /// swizzle). Vᵀ's rows are `BN` bytes.
    const QK_ROW: usize = if D < 128 { D } else { 128 };
    const V_ROW: usize = if DV < 128 { DV } else { 128 };
    const Q_BYTES: u32 = (BM * D) as u32;
    const K_BYTES: u32 = (BN * D) as u32;
    const V_BYTES: u32 = (BN * DV) as u32;
    /// K, then V as the TMA unit lands it (`DV / 128` column blocks of `BN` rows), then Vᵀ (`DV` rows of
    /// `BN` keys in the fragment's order).
    const STAGE_BYTES: u32 = Self::K_BYTES + 2 * Self::V_BYTES;
    const Q: u32 = 0;
    const KV: u32 = Self::Q_BYTES;
    const EMPTY: u32 = FULL + 2 * STAGES;
    const SCHED: u32 = Self::EMPTY + STAGES;
    /// A persistent CTA's: both compute warpgroups are done with the tile's Q (256 arrive, the loader
    /// waits).
    const Q_FREE: u32 = Self::SCHED + 2;
    /// A ticket-taking CTA's `schedule::TileQueue`, after the TMA `mbarrier`s.
    const QUEUE: u32 = Self::BARS + 8 * (1 + STAGES);
    const BARS: u32 = Self::KV + STAGES * Self::STAGE_BYTES;
    const fn full_bar(base: u32, s: u32) -> u32 {
        base + Self::BARS + 8 + 8 * s
    }
    const fn v_raw(stage: u32) -> u32 {
        stage + Self::K_BYTES
    }
    const fn v_t(stage: u32) -> u32 {
        stage + Self::K_BYTES + Self::V_BYTES
    }
    const OK: () = assert!(
        D % Self::QK_ROW == 0
            && matches!(Self::QK_ROW, 64 | 128)
            && D <= 256
            && DV % Self::V_ROW == 0
            && matches!(Self::V_ROW, 64 | 128)
            && DV <= D
            && matches!(BN, 64 | 128)
            && STAGES >= 2
            && Self::Q_FREE < 16
            && Self::Q_BYTES % 1024 == 0
            && Self::K_BYTES % 1024 == 0
            && Self::V_BYTES % 1024 == 0
            && 8 * (1 + STAGES as usize) + TileQueue::BYTES as usize <= crate::tiles::TMA_BARRIER_BYTES
    );
}

/// One tile's work for both roles: its query rows from `m0` (`rows` of them), its head and batch row,
/// its visible key blocks and of those the blocks `first .. first + n_blocks` it computes (a split's
/// share when split).
#[derive(Clone, Copy)]
struct Fp8Tile {
    m0: u32,
    rows: u32,
    head: u32,
    batch: u32,
    blocks: KeyBlocks,
    first: u32,
    n_blocks: u32,
}

/// The loader warpgroup: its first thread issues each tile's Q boxes and each block's K and V boxes
/// into stage `g % STAGES` of the ring against that stage's `mbarrier` (as `hopper.rs`'s TMA loader, in
/// the same order); the whole warpgroup waits for a block to land, transposes its V (`transpose_v`) and
/// hands it over through `FULL`. `maps` is the generic address of the call's `abi::FwdTensorMaps`
/// (boxes of 128 e4m3). A one-tile CTA loads `one`; a persistent CTA (`PERSIST`) walks its tiles in
/// rounds or by ticket (`TICKETS`; `schedule::Walk`, the next ticket taken once a tile's last block is
/// out), carrying the ring from tile to tile as `hopper.rs`'s persistent loader does (a tile's Q after
/// its first keys, once both compute warpgroups are past `Q_FREE`), and at the end takes the arrivals
/// at `EMPTY` and `Q_FREE` that no refill waited for.
///
/// # Safety
/// The loader warpgroup of a launch as `attn_fwd_fp8` documents, after the barriers' initialisation.
#[inline(always)]
unsafe fn loader<
    const D: usize,
    const DV: usize,
    const BN: usize,
    const STAGES: u32,
    const PERSIST: bool,
    const TICKETS: bool,
>(
    maps: u64,
    p: &FwdParams,
    base: u32,
    one: Fp8Tile,
    tid: u32,
) {
    // Predicated on `leader` rather than branched, as in `hopper.rs`.
    let leader = tid == 0;
    for map in [maps, maps + 128, maps + 256] {
        tma::prefetch_map(leader, map);
    }
    if !PERSIST {
        load_tile::<D, DV, BN, STAGES, PERSIST>(maps, p, base, one, (0, 0), || {}, tid);
        return;
    }
    // The ring's blocks and the Q tiles loaded so far (the phase of Q's `mbarrier`).
    let (mut g0, mut q_tiles) = (0u32, 0u32);
    let mut walk = Walk::<true, TICKETS>::new(TileQueue::at(base + Shape::<D, DV, BN, STAGES>::QUEUE));
    loop {
        walk.publish(leader);
        let Some(i) = walk.next(p, tid % 32) else { break };
        let tile = Fp8Tile::persistent::<BN, TICKETS>(p, i);
        if tile.n_blocks == 0 {
            walk.choose_next(leader, p);
            continue;
        }
        // The next ticket once the tile's last block is out (as `hopper.rs`'s loader).
        let last_issued = || walk.choose_next(leader, p);
        load_tile::<D, DV, BN, STAGES, PERSIST>(maps, p, base, tile, (g0, q_tiles), last_issued, tid);
        g0 += tile.n_blocks;
        q_tiles += 1;
    }
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

impl Fp8Tile {
    /// Tile `i` of a persistent CTA's walk (`schedule::Tiles`, in rounds or by ticket), taken afresh.
    ///
    /// # Safety
    /// As `TileWork::of` for a dense batch.
    #[inline(always)]
    unsafe fn persistent<const BN: usize, const TICKETS: bool>(p: &FwdParams, i: u32) -> Fp8Tile {
        let tile = Tiles::<true, TICKETS>::at(p, i);
        let work = TileWork::of::<false, BN>(p, tile);
        let (m0, rows, blocks) = (work.m0, work.rows, work.blocks);
        Fp8Tile { m0, rows, head: tile.head, batch: tile.batch, blocks, first: blocks.first, n_blocks: blocks.len() }
    }
}

/// The loader's part of one tile with key blocks, its blocks the ring's `g0 ..` and its Q the CTA's
/// `q_tiles`-th; `last_issued` once its last block's copies are out.
///
/// # Safety
/// As `loader`.
#[inline(always)]
unsafe fn load_tile<const D: usize, const DV: usize, const BN: usize, const STAGES: u32, const PERSIST: bool>(
    maps: u64,
    p: &FwdParams,
    base: u32,
    tile: Fp8Tile,
    (g0, q_tiles): (u32, u32),
    mut last_issued: impl FnMut(),
    tid: u32,
) {
    let (head, batch) = (tile.head, tile.batch);
    let kv_head = head / p.group;
    let (q_map, k_map, v_map) = (maps, maps + 128, maps + 256);
    let leader = tid == 0;
    let q_bar = base + Shape::<D, DV, BN, STAGES>::BARS;
    let load_q = || {
        mbarrier::arrive_expect_tx(leader, q_bar, Shape::<D, DV, BN, STAGES>::Q_BYTES);
        let q_s = base + Shape::<D, DV, BN, STAGES>::Q;
        let q_row = Shape::<D, DV, BN, STAGES>::QK_ROW;
        tma::load_boxes_of::<BM, D>(leader, q_s, q_row, q_map, [tile.m0, head, batch], q_bar);
    };
    let stage = |g: u32| base + Shape::<D, DV, BN, STAGES>::KV + (g % STAGES) * Shape::<D, DV, BN, STAGES>::STAGE_BYTES;
    // Block g (and Q with the tile's first) has landed: V transposed, handed to the compute warpgroups.
    let hand_over_landed = |g: u32| {
        if g == g0 {
            mbarrier::wait(q_bar, q_tiles & 1);
        }
        mbarrier::wait(Shape::<D, DV, BN, STAGES>::full_bar(base, g % STAGES), (g / STAGES) & 1);
        let s = stage(g);
        let (v_raw, v_t) = (Shape::<D, DV, BN, STAGES>::v_raw(s), Shape::<D, DV, BN, STAGES>::v_t(s));
        transpose_v::<DV, BN>(v_raw, v_t, Shape::<D, DV, BN, STAGES>::V_ROW as u32, tid);
        // The transposed tile is read by `wgmma` (the async proxy).
        bulk::shared_async();
        sync::arrive_at::<256>(FULL + 2 * (g % STAGES));
        sync::arrive_at::<256>(FULL + 2 * (g % STAGES) + 1);
    };
    let issue = |g: u32| {
        if !PERSIST && g == g0 {
            // A one-tile CTA's Q before its first keys, as they are needed together.
            load_q();
        }
        let bar = Shape::<D, DV, BN, STAGES>::full_bar(base, g % STAGES);
        let n0 = (tile.first + g - g0) * BN as u32;
        let dst = stage(g);
        let bytes = Shape::<D, DV, BN, STAGES>::K_BYTES + Shape::<D, DV, BN, STAGES>::V_BYTES;
        mbarrier::arrive_expect_tx(leader, bar, bytes);
        let qk_row = Shape::<D, DV, BN, STAGES>::QK_ROW;
        tma::load_boxes_of::<BN, D>(leader, dst, qk_row, k_map, [n0, kv_head, batch], bar);
        let v_raw = Shape::<D, DV, BN, STAGES>::v_raw(dst);
        let v_row = Shape::<D, DV, BN, STAGES>::V_ROW;
        tma::load_boxes_of::<BN, DV>(leader, v_raw, v_row, v_map, [n0, kv_head, batch], bar);
        if PERSIST && g == g0 {
            // A persistent CTA's Q after the tile's first keys, which need not wait for the previous
            // tile's products, once both compute warpgroups are done with the previous Q.
            if q_tiles > 0 {
                sync::named_at::<384>(Shape::<D, DV, BN, STAGES>::Q_FREE);
            }
            load_q();
        }
        if g + 1 == g0 + tile.n_blocks {
            last_issued();
        }
    };
    let wait_empty = |s: u32| sync::named_at::<384>(Shape::<D, DV, BN, STAGES>::EMPTY + s);
    ring::<STAGES>(g0, tile.n_blocks, issue, wait_empty, hand_over_landed);
}

/// Vᵀ of one block by the loader's 128 threads: `v_raw` holds `BN` keys × `DV` e4m3 as the TMA unit
/// landed them (column blocks of `v_row`-byte rows), `v_t` receives `DV` rows of `BN` keys (`BN`-byte
/// rows, swizzled), key columns in the P fragment's order (module docs). Lane L of a warp takes key
/// group `g = L % (BN / 4)`, the keys `k_i = 32(g / 8) + 16((g / 4) % 2) + 2(g % 4) + i % 2 + 8(i / 2)`,
/// whose bytes go to columns `4g .. 4g + 3` of every row; the warp's `32 / (BN / 4)` lane groups and the
/// four warps take the 16-column chunks of the head dim in turn. Each store of a lane group fills one
/// whole row of Vᵀ; each thread's 16 bytes of four keys turn into 16 words of four keys by 4×4 byte
/// transposes.
///
/// # Safety
/// The loader's 128 threads, converged; `v_raw` holds a landed block and nothing reads `v_t` until the
/// hand-over that follows.
#[inline(always)]
unsafe fn transpose_v<const DV: usize, const BN: usize>(v_raw: u32, v_t: u32, v_row: u32, tid: u32) {
    const { assert!(matches!(BN, 64 | 128) && DV % 64 == 0) };
    let groups = (BN / 4) as u32;
    let (warp, lane) = (tid / 32, tid % 32);
    let (g, sub) = (lane % groups, lane / groups);
    let key0 = 32 * (g / 8) + 16 * ((g / 4) % 2) + 2 * (g % 4);
    let keys = [key0, key0 + 1, key0 + 8, key0 + 9];
    let per_warp = 32 / groups;
    let mut chunk = per_warp * warp + sub;
    while chunk < (DV / 16) as u32 {
        let col = 16 * chunk;
        let block = v_raw + (col / v_row) * (BN as u32 * v_row);
        let rows = keys.map(|k| smem::load_v4(block + swizzled_byte(v_row, k, col % v_row)));
        for j in 0..4 {
            let dims = transpose_bytes([rows[0][j], rows[1][j], rows[2][j], rows[3][j]]);
            for (e, word) in dims.iter().enumerate() {
                let row = col + 4 * j as u32 + e as u32;
                smem::store_u32(v_t + swizzled_byte(BN as u32, row, 4 * g), *word);
            }
        }
        chunk += 4 * per_warp;
    }
}

/// Issues S = Q_w Kᵀ (e4m3, k32 steps of 32 bytes inside each column block of `row`-byte rows), one
/// group.
///
/// # Safety
/// A compute warpgroup, converged, with Q and this block's K landed at `q_w` and `k_s`.
#[inline(always)]
unsafe fn issue_s<const D: usize, const BN: usize, const SR: usize>(
    sc: &mut [f32; SR],
    q_w: u32,
    k_s: u32,
    row: usize,
) {
    wgmma::fence();
    let steps = row / 32;
    for kk in 0..D / 32 {
        let inner = ((kk % steps) * 32) as u32;
        let a = desc_kmajor(q_w + ((kk / steps) * BM * row) as u32 + inner, row as u32);
        let b = desc_kmajor(k_s + ((kk / steps) * BN * row) as u32 + inner, row as u32);
        e4m3::ss::<SR>(sc, a, b, kk > 0);
    }
    wgmma::commit();
}

/// P of one block as the A fragments of P·V's k32 steps: step kk from n8 tiles 4kk .. 4kk + 3 of the
/// scores, in the key order `transpose_v` stores Vᵀ in (module docs).
#[inline(always)]
fn pack_p<const NN: usize, const KS: usize>(s: &AccFrag<1, NN>) -> [[u32; 4]; KS] {
    let mut pk = [[0u32; 4]; KS];
    for (kk, a) in pk.iter_mut().enumerate() {
        let tl = &s.0[0][4 * kk..4 * kk + 4];
        *a = [
            pack4_e4m3([tl[0][0], tl[0][1], tl[1][0], tl[1][1]]),
            pack4_e4m3([tl[0][2], tl[0][3], tl[1][2], tl[1][3]]),
            pack4_e4m3([tl[2][0], tl[2][1], tl[3][0], tl[3][1]]),
            pack4_e4m3([tl[2][2], tl[2][3], tl[3][2], tl[3][3]]),
        ];
    }
    pk
}

/// Issues O += P V for one block as one group (after a `wgmma::fence`, since P and O were written).
///
/// # Safety
/// A compute warpgroup, converged, with the block's Vᵀ at `v_t`.
#[inline(always)]
unsafe fn issue_pv<const BN: usize, const OR: usize, const KS: usize>(
    o: &mut [f32; OR],
    pk: &[[u32; 4]; KS],
    v_t: u32,
) {
    for (kk, a) in pk.iter().enumerate() {
        e4m3::rs::<OR>(o, a, desc_kmajor(v_t + 32 * kk as u32, BN as u32), true);
    }
    wgmma::commit();
}

/// The kernel body for head dims `D` (Q, K) and `DV` (V, O), `BN`-key blocks in `STAGES` stages; `SR =
/// BN/2` and `OR = DV/2` are the registers of the S and O accumulators, `NN = BN/8` and `ND = DV/8`
/// their n8 tiles, `KS = BN/32` the k32 steps of P·V; `FMA_EXP2` of each row's n8 tiles take their
/// exponentials on the FMA pipe (`fwd/softmax.rs`). `OVERLAP`: FlashAttention-3's intra-warpgroup
/// overlap (module docs). `SPLIT`: split-KV (decode), each CTA one split's
/// share of its rows' key blocks, its O (f32, normalised by its own row sum, `v_descale` applied) and
/// LSE to the workspace, the sinks left to the combine. `PERSIST`: a persistent grid whose CTAs take
/// the call's tiles in rounds, or by ticket with `TICKETS` (`fwd::schedule`), the next tile's first
/// blocks and Q landing while the compute warpgroups finish the current one.
///
/// # Safety
/// Launched as `abi::FwdParams` documents for a dense batch (`num_splits` = 1 unless `SPLIT`; Q, K, V
/// of one-byte elements, O of `E`), with `maps` the generic address of the tensor maps of Q, K and V
/// (boxes of 128 e4m3 × the tile's rows, 128-byte swizzle) and `descale` as `abi::Fp8Descales`
/// documents, 384 threads, the tile row's shared memory and 128-row query blocks, on an sm_90a device;
/// with `PERSIST` a one-dimensional grid of any size.
#[inline(always)]
pub unsafe fn attn_fwd_fp8<
    E: Elem16,
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
    const P_LOG2: u32,
    const OVERLAP: bool,
    const SPLIT: bool,
    const PERSIST: bool,
    const TICKETS: bool,
>(
    p: &FwdParams,
    maps: u64,
    descale: &Fp8Descales,
) {
    const { assert!(SR == BN / 2 && OR == DV / 2 && NN == BN / 8 && ND == DV / 8 && KS == BN / 32) };
    const { assert!(!(SPLIT && PERSIST) && (PERSIST || !TICKETS)) };
    #[allow(clippy::let_unit_value)]
    let () = Shape::<D, DV, BN, STAGES>::OK;
    let tid = sreg::thread_x();
    // A one-tile CTA's tile (and split), worked out once for both roles; one without keys leaves
    // before the barriers exist.
    let mut one = Fp8Tile { m0: 0, rows: 0, head: 0, batch: 0, blocks: KeyBlocks::default(), first: 0, n_blocks: 0 };
    let mut split = 0;
    if !PERSIST {
        let m_block;
        (m_block, split) = super::query_block_and_split::<SPLIT>(p);
        let (head, batch) = (sreg::block_y(), sreg::block_z());
        let seq = stage::enter::<false>(&p.score, batch, tid);
        let m0 = m_block * BM as u32;
        let rows = (seq.mask.seqlen_q - m0).min(BM as u32);
        let blocks = seq.mask.key_blocks(m0, rows, BN as u32);
        let (first, end) = if SPLIT { blocks.share(split, p.num_splits) } else { (blocks.first, blocks.end) };
        one = Fp8Tile { m0, rows, head, batch, blocks, first, n_blocks: end - first };
        if one.n_blocks == 0 {
            if tid < COMPUTE_THREADS {
                store_empty_tile::<SPLIT, DV>(p, &one, split, tid);
            }
            return;
        }
    }

    let base = (smem::base() + 1023) & !1023;
    // The barriers exist before anyone arrives at or waits on them (by thread 0, predicated).
    mbarrier::init(tid == 0, base + Shape::<D, DV, BN, STAGES>::BARS, 1);
    for s in 0..STAGES {
        mbarrier::init(tid == 0, Shape::<D, DV, BN, STAGES>::full_bar(base, s), 1);
    }
    if TICKETS {
        TileQueue::at(base + Shape::<D, DV, BN, STAGES>::QUEUE).init(tid);
    }
    mbarrier::fence_init();
    sync::block();
    if tid >= COMPUTE_THREADS {
        setmaxnreg::dec::<LOADER_REGS>();
        loader::<D, DV, BN, STAGES, PERSIST, TICKETS>(maps, p, base, one, tid - COMPUTE_THREADS);
        return;
    }
    setmaxnreg::inc::<COMPUTE_REGS>();

    let wg = tid / 128;
    if PINGPONG && wg == 1 {
        // Warpgroup 0 takes the first turn.
        sync::arrive_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED);
    }
    if PERSIST {
        let mut walk = Walk::<true, TICKETS>::new(TileQueue::at(base + Shape::<D, DV, BN, STAGES>::QUEUE));
        let mut g0 = 0u32;
        while let Some(i) = walk.next(p, tid % 32) {
            let tile = Fp8Tile::persistent::<BN, TICKETS>(p, i);
            if tile.n_blocks == 0 {
                store_empty_tile::<false, DV>(p, &tile, 0, tid);
            } else {
                compute_tile::<
                    E,
                    D,
                    DV,
                    BN,
                    STAGES,
                    SR,
                    OR,
                    NN,
                    ND,
                    KS,
                    PINGPONG,
                    FMA_EXP2,
                    P_LOG2,
                    OVERLAP,
                    false,
                    true,
                >(p, base, descale, (&tile, 0), g0, tid);
                g0 += tile.n_blocks;
            }
        }
        if PINGPONG && wg == 0 {
            // Warpgroup 1's arrival after its last turn, which nothing else waits for.
            sync::named_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED);
        }
    } else {
        compute_tile::<E, D, DV, BN, STAGES, SR, OR, NN, ND, KS, PINGPONG, FMA_EXP2, P_LOG2, OVERLAP, SPLIT, false>(
            p,
            base,
            descale,
            (&one, split),
            0,
            tid,
        );
    }
}

/// Where a tile's O rows and LSE values go: `(O, LSE)` of its first row in the call's outputs (the
/// 16-bit forward's `out_rows` for a dense batch).
#[inline(always)]
unsafe fn out_rows(p: &FwdParams, tile: &Fp8Tile) -> (*mut u16, *mut f32) {
    let id = TileId { m_block: tile.m0 / BM as u32, head: tile.head, batch: tile.batch };
    super::hopper::out_rows::<false>(p, id, tile.m0)
}

/// A split's first row in the workspace, `[num_splits, batch, heads_q, seqlen_q]` rows.
#[inline(always)]
fn accum_row(p: &FwdParams, tile: &Fp8Tile, split: u32) -> usize {
    let per_split = p.batch * p.heads_q * p.score.mask.seqlen_q;
    (split * per_split + (tile.batch * p.heads_q + tile.head) * p.score.mask.seqlen_q + tile.m0) as usize
}

/// A tile whose rows see no key: O = 0 and the LSE of an empty row (a split's: its workspace LSE), by
/// the 256 compute threads.
///
/// # Safety
/// Compute threads only; `tile` one of the launch's.
#[inline(always)]
unsafe fn store_empty_tile<const SPLIT: bool, const DV: usize>(p: &FwdParams, tile: &Fp8Tile, split: u32, tid: u32) {
    if SPLIT {
        let lse = (p.lse_accum as *mut f32).add(accum_row(p, tile, split));
        super::epilogue::store_split_empty(lse, tile.rows, COMPUTE_THREADS, tid);
    } else {
        let (o_g, lse_g) = out_rows(p, tile);
        let sink = stage::sink_log2(&p.score, tile.head);
        let o_stride = p.o_strides[1] as usize;
        let lse_value = sink * core::f32::consts::LN_2;
        super::epilogue::store_empty::<DV>(o_g, o_stride, lse_g, lse_value, tile.rows, COMPUTE_THREADS, tid);
    }
}

/// One tile with key blocks for a compute warpgroup (module docs), its blocks the ring's `g0 ..`, then
/// its O and LSE (a split's to the workspace: `split`).
///
/// # Safety
/// A compute thread of `attn_fwd_fp8`, the tile's blocks non-empty and loaded by `loader` in this order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn compute_tile<
    E: Elem16,
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
    const P_LOG2: u32,
    const OVERLAP: bool,
    const SPLIT: bool,
    const PERSIST: bool,
>(
    p: &FwdParams,
    base: u32,
    descale: &Fp8Descales,
    (tile, split): (&Fp8Tile, u32),
    g0: u32,
    tid: u32,
) {
    let (m0, rows, head, batch) = (tile.m0, tile.rows, tile.head, tile.batch);
    let (blocks, first, n_blocks) = (tile.blocks, tile.first, tile.n_blocks);
    let lane = tid % 32;
    let (wg, warp) = (tid / 128, (tid / 32) % 4);
    let (g, t) = (lane / 4, lane % 4);
    let q_s = base + Shape::<D, DV, BN, STAGES>::Q;
    let row_g = m0 + 64 * wg + 16 * warp + g;

    // This (batch, K/V head)'s factors: Q's and K's join the score scale.
    let kv_at = at_kv(p, head, batch);
    let qk = *(descale.q as *const f32).add(kv_at) * *(descale.k as *const f32).add(kv_at);
    let score = ScoreParams { scale_log2: p.score.scale_log2 * qk, softcap_pre: p.score.softcap_pre * qk, ..p.score };

    // Each row's sink (split kernels: none, the combine adds them).
    let sinks = if SPLIT {
        [[f32::NEG_INFINITY; 2]]
    } else {
        stage::row_sinks_log2::<1>(&score, p.sinks_by_row != 0, head, [[row_g, row_g + 8]])
    };
    let mut softmax = OnlineSoftmax::<1, P_LOG2>::new(sinks, t);
    let slope = if score.has_alibi() { stage::alibi_slope_log2(&score, batch, head) } else { 0.0 };
    let mods = score.has_modifiers();
    let mut o = [0f32; OR];
    // With `OVERLAP`, P of the previous block, whose P·V is issued with this block's S.
    let mut pk = [[0u32; 4]; KS];
    let stage_at =
        |j: u32| base + Shape::<D, DV, BN, STAGES>::KV + ((g0 + j) % STAGES) * Shape::<D, DV, BN, STAGES>::STAGE_BYTES;
    let mut j = 0u32;
    while j < n_blocks {
        let k_s = stage_at(j);
        sync::named_at::<256>(FULL + 2 * ((g0 + j) % STAGES) + wg);
        if PINGPONG {
            sync::named_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED + wg);
        }
        let mut sc = [0f32; SR];
        let q_w = q_s + wg * 64 * Shape::<D, DV, BN, STAGES>::QK_ROW as u32;
        issue_s::<D, BN, SR>(&mut sc, q_w, k_s, Shape::<D, DV, BN, STAGES>::QK_ROW);
        if OVERLAP {
            // Block 0's P·V group is empty, so that `wait::<1>` below finds S landed every time.
            if j > 0 {
                issue_pv::<BN, OR, KS>(&mut o, &pk, Shape::<D, DV, BN, STAGES>::v_t(stage_at(j - 1)));
            } else {
                wgmma::commit();
            }
        }
        if PINGPONG {
            sync::arrive_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED + 1 - wg);
        }
        // The previous block's P·V too (without `OVERLAP`): its stage may be refilled once both
        // warpgroups are past here (a one-tile CTA's last `STAGES` blocks are never refilled; a
        // persistent CTA's loader takes every arrival).
        let release_previous = || {
            if j >= 1 && (PERSIST || j - 1 + STAGES < n_blocks) {
                sync::arrive_at::<384>(Shape::<D, DV, BN, STAGES>::EMPTY + (g0 + j - 1) % STAGES);
            }
        };
        if OVERLAP {
            wgmma::wait::<1>();
            wgmma::pin_all(&mut sc);
        } else {
            wgmma::wait::<0>();
            wgmma::pin_all(&mut sc);
            wgmma::pin_all(&mut o);
            release_previous();
        }
        if PERSIST && j == n_blocks - 1 {
            // The tile's last product with Q is done: the loader may bring the next tile's.
            sync::arrive_at::<384>(Shape::<D, DV, BN, STAGES>::Q_FREE);
        }

        let mut s_frag = AccFrag::<1, NN>::from_wgmma(&sc);
        let at = FragPos { row_g, col0: (first + j) * BN as u32, t };
        let masked = blocks.needs_mask(first + j);
        let mask = || stage::sequence_mask::<false>(&score);
        let logits = if mods {
            stage::logits_by_query::<1, NN, true>(&score, mask, || slope, &mut s_frag, at, masked)
        } else {
            stage::logits_by_query::<1, NN, false>(&score, mask, || slope, &mut s_frag, at, masked)
        };
        // Lazy below a scale of 2^8, the max left stale by at most `8 - P_LOG2` (`fwd/softmax.rs`), so
        // that P · 2^P_LOG2 stays below e4m3's 448 (module docs).
        let lazy = P_LOG2 < 8;
        if OVERLAP {
            // This block's softmax ran under the previous block's P·V; O is rescaled once that landed.
            let rescale = softmax.update_deferred(&mut s_frag, logits, lazy, FMA_EXP2);
            wgmma::wait::<0>();
            wgmma::pin_all(&mut o);
            release_previous();
            if let Some(factors) = rescale {
                let mut o_frag = AccFrag::<1, ND>::from_wgmma(&o);
                OnlineSoftmax::<1, P_LOG2>::rescale_o(&mut o_frag, &factors);
                o_frag.to_wgmma(&mut o);
            }
            pk = pack_p::<NN, KS>(&s_frag);
        } else {
            let mut o_frag = AccFrag::<1, ND>::from_wgmma(&o);
            softmax.update(&mut s_frag, &mut o_frag, logits, lazy, FMA_EXP2);
            o_frag.to_wgmma(&mut o);
            // O += P V.
            pk = pack_p::<NN, KS>(&s_frag);
            wgmma::fence();
            issue_pv::<BN, OR, KS>(&mut o, &pk, Shape::<D, DV, BN, STAGES>::v_t(k_s));
        }
        j += 1;
    }
    if OVERLAP {
        wgmma::fence();
        issue_pv::<BN, OR, KS>(&mut o, &pk, Shape::<D, DV, BN, STAGES>::v_t(stage_at(n_blocks - 1)));
    }
    if !PERSIST && PINGPONG && wg == 0 {
        // Warpgroup 1's arrival after its last turn, which nothing else waits for (a persistent CTA
        // takes it after its last tile).
        sync::named_at::<256>(Shape::<D, DV, BN, STAGES>::SCHED);
    }
    wgmma::wait::<0>();
    wgmma::pin_all(&mut o);
    if PERSIST {
        // The tile's last block: its stage may be refilled once both warpgroups' products with it are done.
        sync::arrive_at::<384>(Shape::<D, DV, BN, STAGES>::EMPTY + (g0 + n_blocks - 1) % STAGES);
    }

    // O · (v_descale / row sum), rounded to `E`, straight to global memory: each quad writes 16
    // contiguous bytes of a row per n8 tile (a split's in f32 to the workspace, 32 bytes).
    let (inv, lse) = softmax.finish();
    let v_scale = *(descale.v as *const f32).add(at_kv(p, head, batch));
    let row0 = 64 * wg + 16 * warp;
    // Bytes of an element of O (`E`) or of the workspace's f32 partial O, and where the rows go.
    let elem = if SPLIT { 4 } else { 2 };
    let (o_dst, lse_dst, row_bytes) = if SPLIT {
        let at = accum_row(p, tile, split);
        ((p.o_accum as *mut u8).add(4 * at * DV), (p.lse_accum as *mut f32).add(at), 4 * DV)
    } else {
        let (o_g, lse_g) = out_rows(p, tile);
        (o_g as *mut u8, lse_g, 2 * p.o_strides[1] as usize)
    };
    for rr in 0..2usize {
        let row = row0 + g + 8 * rr as u32;
        if row < rows {
            let scale = inv[0][rr] * v_scale;
            let o_row = o_dst.add(row as usize * row_bytes);
            for i in 0..DV / 8 {
                let (x, y) = (o[4 * i + 2 * rr] * scale, o[4 * i + 2 * rr + 1] * scale);
                let at = o_row.add((8 * i + 2 * t as usize) * elem);
                if SPLIT {
                    *(at as *mut [f32; 2]) = [x, y];
                } else {
                    *(at as *mut u32) = E::pack2(x, y);
                }
            }
            if t == 0 {
                *lse_dst.add(row as usize) = lse[0][rr];
            }
        }
    }
}

/// The index of (batch, the K/V head of query head `head`) into the `[batch, heads_kv]` descale buffers.
#[inline(always)]
fn at_kv(p: &FwdParams, head: u32, batch: u32) -> usize {
    (batch * (p.heads_q / p.group) + head / p.group) as usize
}
