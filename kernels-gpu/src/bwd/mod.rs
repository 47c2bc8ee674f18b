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
