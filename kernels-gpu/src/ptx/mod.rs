//! Thin wrappers over PTX instructions, one instruction family per file. Each wrapper names the PTX ISA
//! section it implements; `unsafe` ones state what the caller must guarantee.

pub mod elem;
pub mod sreg;
pub mod warp;
pub mod atomic;
pub mod cp_async;
pub mod gmem;
pub mod ldmatrix;
pub mod math;
pub mod mma;
pub mod shared_f32;
pub mod smem;
pub mod sync;
pub mod opaque;
