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
//! Options: causal or not, softmax scale, softcap, sinks, GQA/MQA, every head dim and both 16-bit
//! types the single-GPU kernels have; sliding windows and ALiBi depend on the distance between a query
//! and a key, which the per-step calls (keys of another shard) do not carry, and are refused with
//! [`Error::UnsupportedOption`].

pub mod cpu;
pub mod shard;

#[cfg(feature = "nccl")]
pub mod gpu;
#[cfg(feature = "nccl")]
pub mod nccl;

pub use shard::{ShardLayout, Sharding, StepPlan};

use crate::error::{Arg, Error, Result};
use crate::options::AttnOptions;

const PATH: &str = "context-parallel (ring) attention";

/// `UnsupportedOption` for the options a ring cannot apply (see the module docs).
pub(crate) fn check_ring_options(opts: &AttnOptions) -> Result<()> {
    if opts.window.left.is_some() || opts.window.right.is_some() {
        return Err(Error::UnsupportedOption { arg: Arg::Q, what: "sliding windows", path: PATH });
    }
    if opts.alibi_slopes.is_some() {
        return Err(Error::UnsupportedOption { arg: Arg::AlibiSlopes, what: "ALiBi", path: PATH });
    }
    Ok(())
}
