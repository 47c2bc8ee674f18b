//! The GPU side: device tensors, the fused FlashAttention kernels and the standard (unfused) baseline.

pub mod backward;
pub mod flash;
mod forced_tile;
pub mod fp8;
mod gemm;
pub(crate) mod launch;
pub mod paged;
pub(crate) mod score;
pub(crate) mod scratch;
pub mod standard;
pub mod standard_backward;
pub mod tensor;
mod tma;
pub mod varlen;

pub use backward::{
    backward_tile, flash_backward, flash_backward_into, flash_backward_with_tile, BackwardTile, GpuGradients,
};
pub use flash::{
    flash_forward, flash_forward_into, flash_forward_persistent, flash_forward_with_splits, flash_forward_with_tile,
    forward_grid, forward_launch_plan, forward_num_splits, forward_tile, forward_workspace_f32, num_splits_heuristic,
    ForwardTile, TileOrder, MAX_SPLITS,
};
pub use fp8::{
    flash_forward_fp8, flash_forward_fp8_as, flash_forward_fp8_into, flash_forward_fp8_persistent,
    flash_forward_fp8_with_splits, flash_forward_fp8_with_tile, fp8_forward_tile, fp8_num_splits, quantize_fp8,
    quantize_fp8_with, Fp8Tensor, FP8_HEAD_DIMS,
};
pub use paged::{
    flash_forward_paged, flash_forward_paged_into, DeviceKvAppend, DevicePagedKv, DeviceRotary, PagedErrors,
};
pub use standard::{standard_forward, standard_forward_train, StandardTrainOutput};
pub use standard_backward::{standard_backward, standard_backward_into};
pub use tensor::{DeviceTensor, GpuForwardOutput};
pub use varlen::{
    flash_backward_varlen, flash_backward_varlen_into, flash_backward_varlen_with_tile, flash_forward_varlen,
    flash_forward_varlen_into, flash_forward_varlen_with_splits, DeviceVarlen, VarlenOffsets,
};
