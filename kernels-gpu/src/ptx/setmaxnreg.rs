//! Per-warpgroup register budgets (PTX ISA §9.7.17.1 `setmaxnreg`, sm_90a). Only in the `sm_90a` build.
//!
//! A warp-specialised CTA is compiled for its launch bounds (so the launch's register file holds every
//! warp at the kernel's register count); then the warpgroups that do little give registers back
//! (`dec`) and those that compute take them (`inc`, which waits until the pool has them).

/// `setmaxnreg.inc.sync.aligned.u32 N`: this warpgroup may use up to `N` registers per thread.
#[inline(always)]
pub fn inc<const N: u32>() {
    // SAFETY: all four warps of the warpgroup execute it together; N is a multiple of 8 in 24..=256.
    unsafe { core::arch::asm!("setmaxnreg.inc.sync.aligned.u32 {n};", n = const N, options(nostack)) };
}

/// `setmaxnreg.dec.sync.aligned.u32 N`: this warpgroup releases registers down to `N` per thread.
#[inline(always)]
pub fn dec<const N: u32>() {
    // SAFETY: as `inc`.
    unsafe { core::arch::asm!("setmaxnreg.dec.sync.aligned.u32 {n};", n = const N, options(nostack)) };
}
