//! ironflash's output buffers as candle tensors, without copies.
//!
//! candle makes tensors from storage only inside its own ops, so a buffer ironflash allocated (on
//! candle's stream, in cudarc 0.19 like candle's own) becomes a tensor through a unary op that ignores
//! its input and hands the buffer over as its result.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

struct Adopt {
    storage: Mutex<Option<CudaStorage>>,
    shape: Shape,
}

impl CustomOp1 for Adopt {
    fn name(&self) -> &'static str {
        "ironflash-adopt"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("ironflash-adopt: the buffer is on a CUDA device")
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let storage = self.storage.lock().unwrap_or_else(|e| e.into_inner()).take();
        match storage {
            Some(s) => Ok((s, self.shape.clone())),
            None => candle_core::bail!("ironflash-adopt: applied twice"),
        }
    }
}

/// The contiguous tensor of `shape` over `buf`, on the CUDA device of `like` (whose storage `buf` must
/// share a device with); `like` is only the op's anchor, nothing of it is read.
pub fn tensor<T: CudaDType>(buf: CudaSlice<T>, shape: impl Into<Shape>, like: &Tensor) -> Result<Tensor> {
    let device = {
        let (storage, _) = like.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(s) => s.device().clone(),
            _ => candle_core::bail!("ironflash: expected a CUDA tensor"),
        }
    };
    let shape = shape.into();
    if buf.len() != shape.elem_count() {
        candle_core::bail!("ironflash-adopt: {} values for shape {shape:?}", buf.len());
    }
    let op = Adopt { storage: Mutex::new(Some(CudaStorage::wrap_cuda_slice(buf, device))), shape };
    like.apply_op1_no_bwd(&op)
}
