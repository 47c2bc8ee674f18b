//! The fused attention forward (FlashAttention-2 on `mma.sync` tensor cores).
//!
//! One CTA computes `block_m` query rows of one (head, batch): each warp owns `16·m_tiles` rows and keeps
//! their Q fragments, scores, running max/sum and O accumulator in registers. K/V blocks of `block_n`
//! keys stream through a `stages`-deep ring of shared-memory buffers filled by `cp.async`; scores and
//! PV go through `ldmatrix` + `mma.m16n8k16` with f32 accumulation; the softmax is online, in base-2
//! units, and O is divided by the row sum once, at the end.
//!
//! - `io.rs`: global → shared tile copies (zero-filled past the end of a sequence).
//! - `mainloop.rs`: the kernel body: block range, pipeline, the two products.
//! - `softmax.rs`: the online softmax state of a warp's rows.
//! - `epilogue.rs`: O (normalised, through shared memory, 16-byte stores) and the LSE.
//! - `hopper.rs`: the kernel on Hopper's `wgmma` (sm_90a PTX only), every head dim, warp-specialised.
//! - `hopper_fp8.rs`: its FP8 (e4m3) counterpart (sm_90a PTX only), V transposed in shared memory.
//! - `schedule.rs`: which tiles a Hopper CTA computes; a persistent CTA's by atomic tickets.
//! - `kernels.rs`: the entry points, one per row of `tiles::FWD_TILES` and element type.
//! - `combine.rs`: the split-KV (FlashDecoding) combine of per-split partial outputs.
//! - `paged.rs`: the step before attention over a paged KV cache (lengths, append, rotary).
//!
//! Split-KV: when the grid would leave most SMs idle (decode: few query blocks × heads × batch), each
//! CTA's key blocks are divided among `num_splits` CTAs; each writes an f32 partial O and its LSE, and
//! the combine kernel weights them by their LSEs.

mod combine;
mod epilogue;
#[cfg(target_feature = "sm_90a")]
mod hopper;
#[cfg(target_feature = "sm_90a")]
mod hopper_fp8;
mod io;
mod kernels;
mod mainloop;
mod paged;
#[cfg(target_feature = "sm_90a")]
mod schedule;
mod softmax;

/// This CTA's query block and split (0 when not `SPLIT`): grid x is (query block, split), split
/// fastest, the highest query block first (the longest causal rows start first, so the tail of the
/// grid is short CTAs). A split kernel also lets its programmatic dependent, the combine (launched as
/// such on Hopper), be scheduled now: it waits for this grid's results itself (`ptx::griddep`).
/// Split mode is a compile-time parameter: the unsplit kernels keep no trace of it.
/// (`mainloop.rs` keeps these lines written out: through this function ptxas spilled 16 bytes in its
/// split kernel at head dim 192, a kernel at the register limit.)
#[inline(always)]
fn query_block_and_split<const SPLIT: bool>(p: &crate::abi::FwdParams) -> (u32, u32) {
    use crate::ptx::{griddep, sreg};
    if SPLIT {
        griddep::launch_dependents();
        let num_splits = p.num_splits;
        (sreg::grid_dim_x() / num_splits - 1 - sreg::block_x() / num_splits, sreg::block_x() % num_splits)
    } else {
        (sreg::grid_dim_x() - 1 - sreg::block_x(), 0)
    }
}
