//! Which tiles a Hopper forward CTA computes (`fwd::hopper`). A tile is 128 query rows of one head of
//! one batch row. One-tile CTAs (grid: query blocks × heads × batch) take their block indices, the
//! highest query block (the longest causal rows) first. A persistent CTA (the dense TMA rows' kernels of
//! their own, a one-dimensional grid) takes the call's tiles in the order of `tiles::persistent_tile`,
//! in one of two ways, each in kernels of its own (the host chooses: `gpu::flash::forward_grid`):
//! - static rounds (`PERSIST`; `tiles::Rounds`: tile c, 2·grid − 1 − c, 2·grid + c, ...), where every
//!   tile sees the same keys, or where causal rows pair into rounds of equal length for a CTA count
//!   near the SMs (the order a head's query blocks in a row, highest first). Every warp walks the
//!   rounds itself: nothing is handed over.
//! - tickets (`PERSIST` and `TICKETS`; `FwdParams::tile_counter`): CTA c its tile c, then whichever
//!   tile is next when it asks, by an atomic counter in global memory, the order in sections of heads
//!   whose K and V fit the L2 cache, each section's longest tiles first. Tiles of unequal lengths that
//!   no rounds pair (windows, fewer keys than queries, query-block counts that pair with no CTA count
//!   near the SMs) balance themselves: a CTA that took a long tile asks again later. Where rounds pair
//!   the tiles, tickets measured up to 7% slower on causal rows and 1-4% at 1K (docs/perf.md: the
//!   sections' decoding of each tile index, which the rounds' kernels do not share), so those keep the
//!   rounds' kernels.
//!
//! With tickets the loader takes the CTA's next ticket once it has issued the current tile's last block
//! (as late as keeps the atomic's latency under that block's landing; a CTA that asked at the start of
//! a tile held its next one a whole tile early, and the tail of a causal call went unbalanced) and hands
//! each tile index to every warp of the CTA through [`TileQueue`]. The last CTA of a launch to finish
//! resets the counter, so that it is zero for the next launch on the stream without a memset.

use super::hopper::BM;
use crate::abi::FwdParams;
use crate::ptx::{atomic, mbarrier, opaque, smem, sreg, sync};
use crate::tiles::Rounds;

/// One tile of a call: 128 query rows (`m_block`) of a head of a batch row.
#[derive(Clone, Copy)]
pub(super) struct TileId {
    pub m_block: u32,
    pub head: u32,
    pub batch: u32,
}

/// The call's tiles (module docs): in rounds a head's query blocks in a row; by ticket (`TICKETS`) in
/// sections of `FwdParams::section_heads` pairs.
pub(super) struct Tiles<const PERSIST: bool, const TICKETS: bool>;

impl<const PERSIST: bool, const TICKETS: bool> Tiles<PERSIST, TICKETS> {
    /// The call's tile count (persistent kernels; 1 for a one-tile CTA).
    #[inline(always)]
    pub fn count(p: &FwdParams) -> u32 {
        if !PERSIST {
            return 1;
        }
        p.score.mask.seqlen_q.div_ceil(BM as u32) * p.heads_q * p.batch
    }

    /// Tile `i` (`i < count`), taken afresh where it is needed rather than held through a loop: a
    /// one-tile CTA's own from its block indices (`i` unused), a persistent CTA's from `i` (behind
    /// `ptx::opaque`, so that the optimiser does not keep an earlier result in registers instead).
    #[inline(always)]
    pub fn at(p: &FwdParams, i: u32) -> TileId {
        if !PERSIST {
            let m_block = sreg::grid_dim_x() - 1 - sreg::block_x();
            return TileId { m_block, head: sreg::fresh::block_y(), batch: sreg::fresh::block_z() };
        }
        let i = opaque::u32(i);
        let (m_blocks, heads) = (p.score.mask.seqlen_q.div_ceil(BM as u32), p.heads_q);
        // Not 0 where a tile exists; the tests spare the divisions their checks, whose panic call
        // would serialise the `wgmma` pipelines.
        if m_blocks == 0 || heads == 0 || (TICKETS && p.section_heads == 0) {
            return TileId { m_block: 0, head: 0, batch: 0 };
        }
        // The rounds' order is the sections' of one pair, in two divisions rather than the sections'
        // four (a per-tile cost the rounds' kernels measured: docs/perf.md).
        let section = if TICKETS { p.section_heads } else { 1 };
        let (m_block, pair) = crate::tiles::persistent_tile(i, m_blocks, heads * p.batch, section);
        TileId { m_block, head: pair % heads, batch: pair / heads }
    }
}

/// Warps of a CTA (two compute warpgroups and the loader's): the arrivals that free [`TileQueue`]'s slot.
const CTA_WARPS: u32 = 12;

/// A persistent CTA's hand-off of tile indices, in shared memory: two slots, used in turn (index k in
/// slot k % 2), each with two `mbarrier`s. The loader's first thread writes index k into its slot and
/// completes that slot's `full` phase; every warp of the CTA waits for it, reads the slot and arrives
/// at the slot's `empty` (lane 0, after its whole warp has read it), whose phase completing frees the
/// slot for index k + 2. Two slots let the loader publish the next index while the compute warpgroups
/// are still on the tile before the one whose blocks it has issued (short causal tiles of one or two
/// blocks).
/// `mbarrier`s rather than named barriers: the rows with four stages use all sixteen of those.
#[derive(Clone, Copy)]
pub(super) struct TileQueue {
    base: u32,
}

impl TileQueue {
    /// Bytes it takes at its (8-byte aligned) shared address: `full` and `empty` of each slot, then the
    /// slots.
    pub const BYTES: u32 = 40;

    #[inline(always)]
    pub fn at(addr: u32) -> TileQueue {
        TileQueue { base: addr }
    }

    #[inline(always)]
    fn full(&self, slot: u32) -> u32 {
        self.base + 8 * slot
    }

    #[inline(always)]
    fn empty(&self, slot: u32) -> u32 {
        self.base + 16 + 8 * slot
    }

    #[inline(always)]
    fn slot(&self, slot: u32) -> u32 {
        self.base + 32 + 4 * slot
    }

    /// By every thread of the CTA, with the CTA's other `mbarrier`s (`tid == 0` initialises).
    ///
    /// # Safety
    /// As `mbarrier::init`: `mbarrier::fence_init` and a CTA barrier follow before any use.
    #[inline(always)]
    pub unsafe fn init(&self, tid: u32) {
        for slot in 0..2 {
            mbarrier::init(tid == 0, self.full(slot), 1);
            mbarrier::init(tid == 0, self.empty(slot), CTA_WARPS);
        }
    }

    /// The loader warpgroup, converged: the CTA's `k`-th tile index `i` (the `leader`'s value) into its
    /// slot, once every warp has taken index `k - 2` from there.
    ///
    /// # Safety
    /// Called for k = 0, 1, ... in turn, each followed by this warpgroup's [`TileQueue::take`] of it.
    #[inline(always)]
    pub unsafe fn publish(&self, leader: bool, k: u32, i: u32) {
        let (slot, turn) = (k % 2, k / 2);
        if turn > 0 {
            mbarrier::wait(self.empty(slot), (turn - 1) & 1);
        }
        smem::store_u32_if(leader, self.slot(slot), i);
        mbarrier::arrive(leader, self.full(slot));
    }

    /// The CTA's `k`-th tile index, by every thread of a converged warp (`lane` its lane); every warp of
    /// the CTA takes every index, in turn.
    ///
    /// # Safety
    /// The CTA's loader publishes index `k`.
    #[inline(always)]
    pub unsafe fn take(&self, k: u32, lane: u32) -> u32 {
        let (slot, turn) = (k % 2, k / 2);
        mbarrier::wait(self.full(slot), turn & 1);
        let i = smem::load_u32(self.slot(slot));
        // The whole warp has read the slot before its arrival frees it.
        sync::warp();
        mbarrier::arrive(lane == 0, self.empty(slot));
        i
    }
}

/// A role's walk over its CTA's tiles: a one-tile CTA's one tile (index 0); a persistent CTA's in
/// rounds, which every warp walks itself, or by ticket, as [`TileQueue`] hands them over from the
/// loader (`TICKETS`).
pub(super) struct Walk<const PERSIST: bool, const TICKETS: bool> {
    /// The next tile in rounds (a one-tile CTA's: index 0, then past its one tile).
    rounds: Rounds,
    /// Tickets: the indices taken from the queue so far.
    taken: u32,
    /// Tickets: the loader's next index to publish (its leader's): the CTA's first tile, then its
    /// last ticket.
    next: u32,
    queue: TileQueue,
}

impl<const PERSIST: bool, const TICKETS: bool> Walk<PERSIST, TICKETS> {
    #[inline(always)]
    pub fn new(queue: TileQueue) -> Self {
        const { assert!(PERSIST || !TICKETS) };
        let rounds = if PERSIST {
            Rounds::first(sreg::block_x(), sreg::grid_dim_x())
        } else {
            // Past the one tile after one step.
            Rounds { i: 0, step: 1, next_step: 1 }
        };
        Walk { rounds, taken: 0, next: if TICKETS { sreg::block_x() } else { 0 }, queue }
    }

    /// The CTA's next tile, `None` past its last.
    ///
    /// # Safety
    /// With `TICKETS`, as [`TileQueue::take`], by a converged warp (`lane` its lane); the CTA's loader
    /// publishes first ([`Walk::publish`]).
    #[inline(always)]
    pub unsafe fn next(&mut self, p: &FwdParams, lane: u32) -> Option<u32> {
        let i = if TICKETS {
            let i = self.queue.take(self.taken, lane);
            self.taken += 1;
            i
        } else {
            let i = self.rounds.i;
            self.rounds.advance();
            i
        };
        (i < Tiles::<PERSIST, TICKETS>::count(p)).then_some(i)
    }

    /// The loader warpgroup of a ticket-taking CTA, converged: the CTA's next tile index to every warp,
    /// before its own [`Walk::next`]. Nothing without `TICKETS`.
    ///
    /// # Safety
    /// As [`TileQueue::publish`].
    #[inline(always)]
    pub unsafe fn publish(&self, leader: bool) {
        if TICKETS {
            self.queue.publish(leader, self.taken, self.next);
        }
    }

    /// The loader's index after the one just taken, by ticket (the leader's: [`ticket`]). Nothing
    /// without `TICKETS`.
    ///
    /// # Safety
    /// As [`ticket`].
    #[inline(always)]
    pub unsafe fn choose_next(&mut self, leader: bool, p: &FwdParams) {
        if TICKETS {
            self.next = ticket(leader, p);
        }
    }

    /// The loader's leader after the CTA's last ticket: as [`retire`]. Nothing without `TICKETS`.
    ///
    /// # Safety
    /// As [`retire`].
    #[inline(always)]
    pub unsafe fn retire(&self, leader: bool, p: &FwdParams) {
        if TICKETS {
            retire(leader, p);
        }
    }
}

/// The `leader`'s next tile index from a ticket (other threads get a meaningless value): the tiles
/// after the grid's first ones go out in ticket order.
///
/// # Safety
/// `p.tile_counter` as `abi::FwdParams` documents, the launch's grid one-dimensional.
#[inline(always)]
unsafe fn ticket(leader: bool, p: &FwdParams) -> u32 {
    sreg::grid_dim_x() + atomic::fetch_add_u32_if(leader, p.tile_counter as *mut u32, 1)
}

/// After the CTA's last ticket (the `leader`, which took it, past the last tile): counts the CTA out,
/// and the grid's last CTA to be counted resets the counter. Every CTA takes tickets until one lies past
/// the last tile, and then no more, so once all are counted out none will read the counter again in
/// this launch.
///
/// # Safety
/// As [`ticket`]; once per CTA.
#[inline(always)]
unsafe fn retire(leader: bool, p: &FwdParams) {
    if leader {
        let counter = p.tile_counter as *mut u32;
        // The last ticket's read before the count that may let another CTA reset it.
        atomic::fence_gpu();
        let done = atomic::fetch_add_u32(counter.add(1), 1);
        if done == sreg::grid_dim_x() - 1 {
            atomic::fence_gpu();
            *counter.add(1) = 0;
            *counter = 0;
        }
    }
}
