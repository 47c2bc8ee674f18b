//! Thin wrappers over PTX instructions, one instruction family per file. Each wrapper names the PTX ISA
//! section it implements; `unsafe` ones state what the caller must guarantee.

pub mod atomic;
#[cfg(target_feature = "sm_90a")]
pub mod bulk;
pub mod cp_async;
pub mod elem;
pub mod gmem;
pub mod griddep;
pub mod ldmatrix;
pub mod math;
#[cfg(target_feature = "sm_90a")]
pub mod mbarrier;
pub mod mma;
pub mod opaque;
#[cfg(target_feature = "sm_90a")]
pub mod setmaxnreg;
pub mod shared_f32;
pub mod shfl_idx;
pub mod smem;
pub mod sreg;
#[cfg(target_feature = "sm_90a")]
pub mod stmatrix;
pub mod sync;
#[cfg(target_feature = "sm_90a")]
pub mod tma;
pub mod warp;
#[cfg(target_feature = "sm_90a")]
pub mod wgmma;
