//! The score stage: target-independent mask and block-range arithmetic (`score.rs`, shared with the
//! host and unit-tested on it), and on the GPU the per-element transform of an accumulator fragment
//! (`stage.rs`) that every kernel applies.

pub mod score;
#[cfg(target_arch = "nvptx64")]
pub mod stage;
