//! The one place where kernel parameter structs cross into the driver, and the launch of a kernel as
//! the programmatic dependent of the one before it.

use cudarc::driver::{sys, CudaFunction, CudaStream, DeviceRepr, DriverError, LaunchConfig, PushKernelArg};

/// A `#[repr(C)]` parameter struct from `ironflash_kernels::abi`, passed by value as the kernel's single
/// parameter (`.param .align 8 .b8 name[size]` in the PTX).
#[repr(transparent)]
pub(crate) struct KernelParams<P>(pub P);

// SAFETY: the abi structs are #[repr(C)], Copy, and hold only integers, floats and device addresses;
// the kernels declare the same struct as their one by-value parameter.
unsafe impl<P: Copy> DeviceRepr for KernelParams<P> {}

/// Launches `f` with `params` on `stream` as a programmatic dependent of the kernel enqueued just before
/// it on that stream (`programmatic`: the device runs the sm_90a PTX, whose kernels pair
/// `griddepcontrol.launch_dependents` in the first with `griddepcontrol.wait` in `f`; see
/// `ironflash_kernels::ptx::griddep`): `f`'s CTAs may be scheduled while the first kernel's last CTAs
/// still run, and wait for its results themselves. Without `programmatic`, an ordinary launch.
///
/// # Safety
/// As for any launch: `params` is the parameter struct `f` declares, every address in it is live until
/// `f` completes in stream order. With `programmatic`, `f` calls `griddepcontrol.wait` before it reads
/// anything the previous kernel writes, and the previous kernel on `stream` is the one that writes it.
pub(crate) unsafe fn launch_dependent<P: Copy>(
    stream: &CudaStream,
    f: &CudaFunction,
    cfg: LaunchConfig,
    params: &KernelParams<P>,
    programmatic: bool,
) -> Result<(), DriverError> {
    if !programmatic {
        return stream.launch_builder(f).arg(params).launch(cfg).map(drop);
    }
    stream.context().bind_to_thread()?;
    let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // The driver copies the parameter struct out of `params` during the call.
    let mut args = [params as *const KernelParams<P> as *mut std::ffi::c_void];
    sys::cuLaunchKernelEx(&config, f.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()).result()
}
