//! Values the optimiser cannot see through.
//!
//! LLVM's loop-invariant code motion hoists every address that does not change between K/V blocks
//! (per-chunk global offsets, per-fragment shared addresses) out of the block loop, and then each stays
//! live in its own register through the whole loop: tens of registers that the accumulators need.
//! Passing a base through an empty `mov` inside the loop makes everything derived from it loop-variant,
//! so it is recomputed (one add, or folded into the instruction's `[reg+imm]` address) where it is used.

/// `x`, opaque to the optimiser (not `pure`: a pure asm would itself be hoisted).
#[inline(always)]
pub fn u32(mut x: u32) -> u32 {
    // SAFETY: an empty register move.
    unsafe { core::arch::asm!("mov.b32 {0}, {0};", inout(reg32) x, options(nomem, nostack)) };
    x
}

/// `x`, opaque to the optimiser (not `pure`: a pure asm would itself be hoisted).
#[inline(always)]
pub fn usize(mut x: usize) -> usize {
    // SAFETY: an empty register move.
    unsafe { core::arch::asm!("mov.b64 {0}, {0};", inout(reg64) x, options(nomem, nostack)) };
    x
}

/// `x`, opaque to the optimiser (as [`u32`]).
#[inline(always)]
pub fn f32(x: f32) -> f32 {
    f32::from_bits(u32(x.to_bits()))
}
