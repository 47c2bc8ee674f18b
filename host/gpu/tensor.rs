//! Device tensors: a typed device buffer plus a `Layout`, tied to the device that owns it.

use crate::device::Device;
use crate::dtype::Element;
use crate::error::{Arg, DriverContext, Error, Result};
use crate::layout::Layout;
use crate::tensor::HostTensor;
use cudarc::driver::{CudaSlice, DevicePtr};

pub struct DeviceTensor<T> {
    pub(crate) buf: CudaSlice<T>,
    pub(crate) layout: Layout,
    pub(crate) ordinal: usize,
}

impl<T> std::fmt::Debug for DeviceTensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTensor").field("layout", &self.layout).field("device", &self.ordinal).finish()
    }
}

/// What a GPU forward call returns: O (q's batch, rows and heads, v's head dim), and the f32 LSE `[batch, heads_q, seqlen_q]`.
#[derive(Debug)]
pub struct GpuForwardOutput<T> {
    pub o: DeviceTensor<T>,
    pub lse: CudaSlice<f32>,
}

impl<T: Element> DeviceTensor<T> {
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn shape(&self) -> [usize; 4] {
        self.layout.shape
    }
    pub fn device_ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn buffer(&self) -> &CudaSlice<T> {
        &self.buf
    }
    /// The buffer back, the tensor taken apart (the counterpart of `Device::wrap`).
    pub fn into_buffer(self) -> CudaSlice<T> {
        self.buf
    }
    pub(crate) fn check_on(&self, dev: &Device, arg: Arg) -> Result<()> {
        if self.ordinal != dev.info().ordinal {
            return Err(Error::DeviceMismatch { arg, got: self.ordinal, expected: dev.info().ordinal });
        }
        Ok(())
    }
}

impl Device {
    /// Copy a host tensor (its whole buffer, so strides are kept) to the device.
    pub fn upload<T: Element>(&self, t: &HostTensor<T>) -> Result<DeviceTensor<T>> {
        let buf = self.stream.clone_htod(&t.data).during("copying a tensor to the device")?;
        Ok(DeviceTensor { buf, layout: t.layout, ordinal: self.info().ordinal })
    }

    /// A device tensor over a buffer already on this device, without a copy (a buffer the caller
    /// filled, or one of another library on the same context). `arg` names the tensor in errors: the
    /// buffer must belong to this device, start 16-byte aligned and `layout` must fit it
    /// (`Layout::validate`).
    pub fn wrap<T: Element>(&self, arg: Arg, buf: CudaSlice<T>, layout: Layout) -> Result<DeviceTensor<T>> {
        self.try_wrap(arg, buf, layout).map_err(|b| b.0)
    }

    /// As [`Device::wrap`], giving the buffer back with the error (boxed with it): for a buffer the
    /// caller must not drop (one lent from another library's memory, which dropping would free).
    pub fn try_wrap<T: Element>(
        &self,
        arg: Arg,
        buf: CudaSlice<T>,
        layout: Layout,
    ) -> std::result::Result<DeviceTensor<T>, Box<(Error, CudaSlice<T>)>> {
        let ordinal = buf.stream().context().ordinal();
        if ordinal != self.info().ordinal {
            return Err(Box::new((Error::DeviceMismatch { arg, got: ordinal, expected: self.info().ordinal }, buf)));
        }
        if let Err(e) = layout.validate(arg, buf.len()) {
            return Err(Box::new((e, buf)));
        }
        // Buffers ironflash allocates start on the allocator's (256-byte) boundaries; a wrapped one (a
        // view at an element offset) may not, and a misaligned vector access would fault the context.
        let address = buf.device_ptr(buf.stream()).0;
        if address % 16 != 0 {
            return Err(Box::new((Error::MisalignedBuffer { arg, address }, buf)));
        }
        Ok(DeviceTensor { buf, layout, ordinal })
    }

    /// Copy a device tensor back (the whole buffer, strides kept).
    pub fn download<T: Element>(&self, t: &DeviceTensor<T>) -> Result<HostTensor<T>> {
        t.check_on(self, Arg::O)?;
        let data = self.stream.clone_dtoh(&t.buf).during("copying a tensor to the host")?;
        Ok(HostTensor { data, layout: t.layout })
    }

    /// Copy an f32 buffer (e.g. an LSE) back.
    pub fn download_f32(&self, s: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(s).during("copying f32 values to the host")
    }

    /// A contiguous device tensor with every element set to `T::poison()` (NaN), so that a kernel that
    /// fails to write an element is caught by any comparison.
    pub fn poisoned<T: Element>(&self, shape: [usize; 4]) -> Result<DeviceTensor<T>> {
        let layout = Layout::contiguous(shape);
        let host = vec![T::poison(); layout.numel()];
        let buf = self.stream.clone_htod(&host).during("allocating a poisoned tensor")?;
        Ok(DeviceTensor { buf, layout, ordinal: self.info().ordinal })
    }

    /// `len` f32 values set to NaN.
    pub fn poisoned_f32(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream.clone_htod(&vec![f32::NAN; len]).during("allocating a poisoned f32 buffer")
    }
}

/// The fused kernels move rows with 16-byte vectors, so every row must start 16-byte aligned: batch,
/// sequence and head strides must be multiples of 8 (16-bit) elements.
pub(crate) const STRIDE_MULTIPLE: usize = 8;

/// `MisalignedStrides` unless the layout's batch, sequence and head strides allow 16-byte row accesses
/// of 16-bit elements.
pub(crate) fn check_vector_strides(arg: Arg, l: &Layout) -> Result<()> {
    check_vector_strides_of(arg, l, STRIDE_MULTIPLE)
}

/// As [`check_vector_strides`] for elements of which `multiple` make 16 bytes (16 for FP8).
pub(crate) fn check_vector_strides_of(arg: Arg, l: &Layout, multiple: usize) -> Result<()> {
    if l.strides[..3].iter().any(|s| s % multiple != 0) {
        return Err(Error::MisalignedStrides { arg, strides: l.strides, multiple });
    }
    Ok(())
}

/// `DeviceMismatch` unless an f32 buffer (LSE, d_sinks) lives on the call's device, `ShapeMismatch`
/// unless it holds at least `needed` values (`why` says what they are).
pub(crate) fn check_f32_buffer(
    dev: &Device,
    arg: Arg,
    buf: &CudaSlice<f32>,
    needed: usize,
    why: &'static str,
) -> Result<()> {
    let ordinal = dev.info().ordinal;
    if buf.ordinal() != ordinal {
        return Err(Error::DeviceMismatch { arg, got: buf.ordinal(), expected: ordinal });
    }
    if buf.len() < needed {
        return Err(Error::ShapeMismatch { arg, what: "length", got: buf.len(), expected: needed, why });
    }
    Ok(())
}

/// Batch, sequence and head strides as the kernels' ABI takes them.
pub(crate) fn strides3(l: &Layout) -> [u64; 3] {
    [l.strides[0] as u64, l.strides[1] as u64, l.strides[2] as u64]
}
