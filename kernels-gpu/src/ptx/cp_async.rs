//! Asynchronous global→shared copies (PTX ISA §9.7.9.25.3 `cp.async`, §9.7.9.25.3.2
//! `cp.async.commit_group`, §9.7.9.25.3.3 `cp.async.wait_group`).
//!
//! `.cg` bypasses L1 (each K/V byte is used once per CTA from shared memory) and allows only 16-byte
//! copies. The `src-size` operand copies that many bytes and fills the rest of the 16 with zeros: a
//! row past the end of a sequence is written as zeros and nothing is read from global memory.

/// Copies 16 bytes from `src` to `dst`, or writes 16 zero bytes when `valid` is false.
///
/// # Safety
/// `dst` is a 16-byte aligned shared-window address inside the dynamic shared memory. When `valid`,
/// `src` is a 16-byte aligned global address of 16 readable bytes; when not, `src` is never read.
#[inline(always)]
pub unsafe fn copy16_or_zero(dst: u32, src: *const u16, valid: bool) {
    let src_size: u32 = if valid { 16 } else { 0 };
    core::arch::asm!(
        "cp.async.cg.shared.global [{0}], [{1}], 16, {2};",
        in(reg32) dst, in(reg64) src, in(reg32) src_size,
        options(nostack)
    );
}

/// Copies 4 bytes from `src` to `dst` (`.ca`: through L1, the only cache mode for copies under 16
/// bytes); small bookkeeping data such as a paged cache's block-table entries.
///
/// # Safety
/// `dst` is a 4-byte aligned shared-window address inside the dynamic shared memory; `src` a 4-byte
/// aligned global address of 4 readable bytes.
#[inline(always)]
pub unsafe fn copy4(dst: u32, src: *const u32) {
    core::arch::asm!(
        "cp.async.ca.shared.global [{0}], [{1}], 4;",
        in(reg32) dst, in(reg64) src,
        options(nostack)
    );
}

/// Closes the group of copies issued by this thread since the last commit.
#[inline(always)]
pub fn commit() {
    // SAFETY: bookkeeping only; an empty group is allowed and completes at once.
    unsafe { core::arch::asm!("cp.async.commit_group;", options(nostack)) };
}

/// Waits until at most `PENDING` of this thread's committed groups are still in flight. The copies of
/// the completed groups are then visible to this thread; a barrier makes them visible to the others.
#[inline(always)]
pub fn wait<const PENDING: u32>() {
    // SAFETY: blocks this thread only.
    unsafe { core::arch::asm!("cp.async.wait_group {n};", n = const PENDING, options(nostack)) };
}
