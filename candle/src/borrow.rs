//! candle's CUDA buffers seen by ironflash without copies, and the ironflash device of a candle stream.
//!
//! ironflash's tensors own a `cudarc` buffer; candle's storage owns its own. Both use cudarc 0.19, so a
//! candle buffer can be lent to ironflash as a second `CudaSlice` over the same device memory that is
//! never freed through ironflash: [`Borrowed`] hands it back with `CudaSlice::leak` when dropped
//! (panics included), which releases cudarc's bookkeeping (events, the stream's handle) and not the
//! memory.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use candle_core::{Layout, Result};
use ironflash::gpu::DeviceTensor;
use ironflash::{Arg, Device, Element};
use std::sync::{Arc, Mutex};

/// The ironflash device for a candle stream: created once per stream (each loads the kernels' modules on
/// first use), launching on that stream, so ironflash's kernels are ordered with candle's work. The
/// cache holds each stream for the life of the program, so a stream's handle, its key here, is never
/// reused by another.
pub fn device_for(stream: &Arc<CudaStream>) -> Result<Arc<Device>> {
    static DEVICES: Mutex<Vec<(usize, Arc<Device>)>> = Mutex::new(Vec::new());
    let key = stream.cu_stream() as usize;
    let mut devices = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, d)) = devices.iter().find(|(k, _)| *k == key) {
        return Ok(d.clone());
    }
    let d = Arc::new(Device::on_stream(stream.clone()).map_err(candle_core::Error::wrap)?);
    devices.push((key, d.clone()));
    Ok(d)
}

/// A candle buffer lent to ironflash as a tensor (see the module docs); derefs to the tensor.
pub struct Borrowed<T: Element> {
    tensor: Option<DeviceTensor<T>>,
}

impl<T: Element> std::ops::Deref for Borrowed<T> {
    type Target = DeviceTensor<T>;
    fn deref(&self) -> &DeviceTensor<T> {
        self.tensor.as_ref().expect("a Borrowed holds its tensor until dropped")
    }
}

impl<T: Element> Drop for Borrowed<T> {
    fn drop(&mut self) {
        if let Some(t) = self.tensor.take() {
            // The memory stays candle's: only cudarc's handles of this second view are released.
            let _ = t.into_buffer().leak();
        }
    }
}

/// The 4-D tensor `layout` of candle buffer `slice` as an ironflash tensor named `arg` in errors.
///
/// # Safety
/// `slice` must stay alive, and unwritten by anyone else, while the result is in use: the caller holds
/// the read guard of the candle storage it comes from.
pub unsafe fn tensor<T: Element>(dev: &Device, arg: Arg, slice: &CudaSlice<T>, layout: &Layout) -> Result<Borrowed<T>> {
    let dims = layout.shape().dims4()?;
    let s = layout.stride();
    let view = lend(dev.stream(), slice, layout.start_offset())?;
    let layout = ironflash::Layout { shape: [dims.0, dims.1, dims.2, dims.3], strides: [s[0], s[1], s[2], s[3]] };
    match dev.try_wrap(arg, view, layout) {
        Ok(t) => Ok(Borrowed { tensor: Some(t) }),
        Err(lent_back) => {
            let (e, view) = *lent_back;
            let _ = view.leak();
            Err(candle_core::Error::wrap(e))
        }
    }
}

/// A candle buffer of f32 (ALiBi slopes) from `start` on, lent as a `CudaSlice` that derefs to it and is
/// leaked again when dropped.
///
/// # Safety
/// As [`tensor`].
pub unsafe fn values(stream: &Arc<CudaStream>, slice: &CudaSlice<f32>, start: usize) -> Result<LentSlice> {
    Ok(LentSlice(Some(lend(stream, slice, start)?)))
}

/// A lent f32 buffer ([`values`]).
pub struct LentSlice(Option<CudaSlice<f32>>);

impl std::ops::Deref for LentSlice {
    type Target = CudaSlice<f32>;
    fn deref(&self) -> &CudaSlice<f32> {
        self.0.as_ref().expect("a LentSlice holds its buffer until dropped")
    }
}

impl Drop for LentSlice {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.leak();
        }
    }
}

/// A second `CudaSlice` over `slice`'s memory from element `start` on, on `stream`.
///
/// # Safety
/// The result must be given up with `leak`, never dropped, and used only while `slice` lives.
unsafe fn lend<T>(stream: &Arc<CudaStream>, slice: &CudaSlice<T>, start: usize) -> Result<CudaSlice<T>> {
    if start > slice.len() {
        candle_core::bail!("ironflash: a layout starts at element {start} of a buffer of {}", slice.len());
    }
    let (ptr, _sync) = slice.device_ptr(stream);
    let at = ptr + (start * std::mem::size_of::<T>()) as u64;
    Ok(stream.upgrade_device_ptr::<T>(at, slice.len() - start))
}
