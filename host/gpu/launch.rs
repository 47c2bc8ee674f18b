//! The one place where kernel parameter structs cross into the driver.

use cudarc::driver::DeviceRepr;

/// A `#[repr(C)]` parameter struct from `ironflash_kernels::abi`, passed by value as the kernel's single
/// parameter (`.param .align 8 .b8 name[size]` in the PTX).
#[repr(transparent)]
pub(crate) struct KernelParams<P>(pub P);

// SAFETY: the abi structs are #[repr(C)], Copy, and hold only integers, floats and device addresses;
// the kernels declare the same struct as their one by-value parameter.
unsafe impl<P: Copy> DeviceRepr for KernelParams<P> {}
