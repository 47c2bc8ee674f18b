//! Target-independent attention arithmetic (runs on the host in unit tests, and in the kernels).

pub mod block_range;
pub mod bwd_range;
pub mod mask;
