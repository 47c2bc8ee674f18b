//! The fused attention backward (FlashAttention-2 backward on `mma.sync` tensor cores): dQ, dK, dV by
//! recomputing the probabilities from the forward's LSE, never storing the score matrix.
//!
//! - `prep.rs`: delta = rowsum(dO ∘ O) before the main kernel; dQ (f32 accumulator → element type) after.
//! - `mainloop.rs`: the main kernel, parallel over key blocks (dK, dV on chip, dQ by f32 reductions).
//! - `hopper.rs`: the main kernel on Hopper's `wgmma` (sm_90a PTX only), head dim 128.
//! - `kernels.rs`: the entry points, one per row of `tiles_bwd::BWD_TILES` and element type.

#[cfg(target_feature = "sm_90a")]
mod hopper;
mod kernels;
mod mainloop;
mod prep;
