//! ironflash GPU kernels, written in Rust and compiled to PTX for `nvptx64-nvidia-cuda`.
//!
//! The crate has two faces. Built for nvptx64 (by the root `build.rs`, with the pinned nightly), it is a
//! cdylib whose fat-LTO module is the PTX the host loads. Built for the host (as a plain dependency of
//! `ironflash`, on stable), only the target-independent modules exist: the kernel ABI, the tile table,
//! the integer arithmetic of masks and block ranges, the FP8 inputs' rotation, and where each kernel
//! sits in the PTX (`ptx_split`), so host, build script and kernels share one definition of each.
#![no_std]
#![cfg_attr(target_arch = "nvptx64", feature(abi_ptx, asm_experimental_arch))]

/// Where this crate's source lives (its manifest's directory, a path checkout or the unpacked package):
/// `ironflash`'s build script, which has this crate as a build-dependency, compiles the kernels to PTX
/// from a copy of it, so the kernels travel with the published crate.
pub const SOURCE_DIR: &str = env!("CARGO_MANIFEST_DIR");

pub mod abi;
pub mod attn;
pub mod ptx_split;
pub mod rotation;
pub mod tiles;
pub mod tiles_bwd;

#[cfg(target_arch = "nvptx64")]
pub mod ptx;

#[cfg(target_arch = "nvptx64")]
mod fwd;

#[cfg(target_arch = "nvptx64")]
mod bwd;

#[cfg(target_arch = "nvptx64")]
mod frag;

#[cfg(target_arch = "nvptx64")]
mod smem_tile;

#[cfg(target_arch = "nvptx64")]
mod softmax_rows;

#[cfg(target_arch = "nvptx64")]
mod ring;

#[cfg(all(target_arch = "nvptx64", target_feature = "sm_90a"))]
mod fp8_quant;

/// Kernels abort with `trap` on a panic: nothing of core's formatting machinery reaches the PTX.
#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: `trap` ends the kernel with an error the host sees at the next synchronisation.
    unsafe { core::arch::asm!("trap;", options(noreturn)) }
}
