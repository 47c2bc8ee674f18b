//! Context-parallel (ring) attention: a sequence too long for one GPU sharded over several, each rank
//! holding a shard of Q, K and V, the K/V shards passed around a ring while every rank's fused kernel
//! runs, and the partial results merged exactly through the log-sum-exp (forward), the K/V gradients
//! travelling with their shards (backward).
//!
//! - [`shard`]: the sharding ([`ShardLayout::Contiguous`], or [`ShardLayout::ZigZag`], load-balanced
//!   under a causal mask) and what each rank computes at each step; target-independent.
//! - [`cpu`]: the ring simulated on the CPU in f64, all ranks in one process.
//! - `gpu` (feature `nccl`): the ring on GPUs over NCCL, `ring::gpu::{forward, backward}` with a
//!   `ring::gpu::Communicator`.
//!
//! Options: every option of the single-GPU calls (causal or not, sliding windows, softmax scale,
//! softcap, ALiBi, sinks), GQA/MQA, every head dim and both 16-bit types. Windows and ALiBi depend on
//! the distance between a query and a key: their step calls shift each chunk pair's diagonal to where
//! the chunks lie in the whole sequence ([`RingMask::positional`]), which bounds the sequence to
//! `attn::score::MAX_SHIFTED` tokens.

pub mod cpu;
pub mod shard;

#[cfg(feature = "nccl")]
pub mod gpu;
#[cfg(feature = "nccl")]
pub mod nccl;

pub use shard::{RingMask, ShardLayout, Sharding, StepPlan};

use crate::error::{Arg, Error, Result};
use crate::options::AttnOptions;
use ironflash_kernels::attn::score::MAX_SHIFTED;

/// `TooLarge` for a sequence longer than the positional step calls' arithmetic allows (see the module
/// docs).
pub(crate) fn check_ring_options(opts: &AttnOptions, sharding: &Sharding) -> Result<()> {
    if RingMask::of(opts).positional() && sharding.seqlen > MAX_SHIFTED as usize {
        return Err(Error::TooLarge {
            arg: Arg::Q,
            what: "seqlen of a ring with a window or ALiBi",
            value: sharding.seqlen,
        });
    }
    Ok(())
}
