//! The GPU side: device tensors, the fused FlashAttention kernels and the standard (unfused) baseline.

pub mod flash;
mod launch;
pub mod standard;
pub mod tensor;

pub use flash::flash_forward;
pub use standard::standard_forward;
pub use tensor::{DeviceTensor, GpuForwardOutput};
