//! PLACEHOLDER (being written): the fused FlashAttention forward on the GPU.

use crate::device::Device;
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::gpu::tensor::{DeviceTensor, GpuForwardOutput};
use crate::options::AttnOptions;

/// Fused attention forward: O (contiguous, shaped like q) and the f32 LSE `[batch, heads_q, seqlen_q]`.
pub fn flash_forward<T: Element>(
    _dev: &Device,
    _q: &DeviceTensor<T>,
    _k: &DeviceTensor<T>,
    _v: &DeviceTensor<T>,
    _opts: &AttnOptions,
) -> Result<GpuForwardOutput<T>> {
    Err(Error::NoTileConfig("the fused forward kernel is not built yet".into()))
}
