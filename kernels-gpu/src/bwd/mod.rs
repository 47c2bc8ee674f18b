//! The fused attention backward (FlashAttention-2 backward on `mma.sync` tensor cores): dQ, dK, dV by
//! recomputing the probabilities from the forward's LSE, never storing the score matrix.
//!
//! - `prep.rs`: delta = rowsum(dO ∘ O) before the main kernel; dQ (f32 accumulator → element type) after.
//! - `mainloop.rs`: the main kernel, parallel over key blocks (dK, dV on chip, dQ by f32 reductions).
//! - `hopper.rs`: the main kernel on Hopper's `wgmma` (sm_90a PTX only), head dims 32, 64, 96, 128.
//! - `hopper_wide.rs`: the Hopper kernel for head dims 192 and 256 (and Q/K 192 with V 128), its
//!   warpgroups splitting the head dim.
//! - `kernels.rs`: the entry points, one per row of `tiles_bwd::BWD_TILES` and element type.

#[cfg(target_feature = "sm_90a")]
mod hopper;
#[cfg(target_feature = "sm_90a")]
mod hopper_wide;
mod kernels;
mod mainloop;
mod prep;

/// Where element `col` of query row `row` sits in its row of the f32 dQ accumulator: the row's 16-byte
/// chunks are permuted by the row (chunk c at c ^ (row % 8)), so that the Hopper kernel's staging, one
/// store of which covers 8 consecutive rows, spreads them over the shared-memory banks, and the staged
/// block still goes out as one contiguous bulk reduction. Every writer of the accumulator and the
/// conversion that reads it use this one rule (head dims ≥ 32: 8 chunks or more per row). `row` is the
/// accumulator's row within its head (the query token): a block's rows start at a multiple of 8 from
/// the first query of its sequence, which in a packed batch is any token, so the main kernels key the
/// permutation by that first query plus the row in the block.
#[inline(always)]
pub(crate) const fn dq_accum_col(row: u32, col: u32) -> u32 {
    (((col / 4) ^ (row % 8)) * 4) | (col % 4)
}

/// The rows a [`copy_key_grads`] stores: tile rows `first..first + count`, the CTA's keys from `n0`; keys
/// at or past `sk` (the sequence's) are not stored.
#[derive(Clone, Copy)]
pub(crate) struct KeyRows {
    pub first: u32,
    pub count: u32,
    pub n0: u32,
    pub sk: u32,
}

/// dK or dV out of a key-side tile in shared memory (`ROWS` rows laid out as `layout`, `COLS` columns
/// where that is `Padded`), where a kernel staged them rounded after its loop: in the accumulator's
/// layout (a lane holds 2 adjacent columns of a row) they would make 4-byte scattered global stores,
/// which on Hopper kept the compute warps 16% of their time at 1K queries in the memory pipe's queue
/// (docs/perf.md). Copies `rows`, 16-byte chunks `chunks.0..chunks.0 + chunks.1` of each (columns
/// `8·chunk..`), to the global rows at `key_g` (key 0 of the CTA's sequence and head; row stride
/// `key_stride`, a multiple of 8 elements), the warp's lanes (this one `lane`) covering a row's
/// contiguous chunks, one 16-byte store each.
///
/// # Safety
/// All 32 lanes call it; the tile's chunks are written and visible to them; the rows `< sk` of `key_g`
/// are valid and 16-byte aligned.
#[inline(always)]
pub(crate) unsafe fn copy_key_grads<const ROWS: usize, const COLS: usize>(
    layout: crate::smem_tile::RowLayout,
    tile: u32,
    key_g: *mut u16,
    key_stride: usize,
    rows: KeyRows,
    chunks: (u32, u32),
    lane: u32,
) {
    let (chunk0, n) = chunks;
    let mut idx = lane;
    while idx < rows.count * n {
        let (row, chunk) = (rows.first + idx / n, chunk0 + idx % n);
        let key = rows.n0 + row;
        if key < rows.sk {
            let v = crate::ptx::smem::load_v4(tile + layout.chunk_offset::<ROWS, COLS>(row as usize, chunk as usize));
            crate::ptx::gmem::store_v4(key_g.add(key as usize * key_stride + 8 * chunk as usize), v);
        }
        idx += 32;
    }
}
