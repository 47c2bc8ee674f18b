//! Small f32 transfers into and out of shared memory (PTX ISA §9.7.9.25.3 `cp.async` with 4-byte
//! `.ca` copies, §9.7.9.8 `ld.shared.v2`): the per-row LSE and delta values of the backward.

/// Copies 4 bytes from `src` to `dst`, or writes 4 zero bytes when `valid` is false (commit and wait as
/// for `cp_async::copy16_or_zero`).
///
/// # Safety
/// `dst` is a 4-byte aligned shared-window address inside the dynamic shared memory. When `valid`,
/// `src` is a 4-byte aligned global address; when not, `src` is never read.
#[inline(always)]
pub unsafe fn copy4_or_zero(dst: u32, src: *const f32, valid: bool) {
    let src_size: u32 = if valid { 4 } else { 0 };
    core::arch::asm!(
        "cp.async.ca.shared.global [{0}], [{1}], 4, {2};",
        in(reg32) dst, in(reg64) src, in(reg32) src_size,
        options(nostack)
    );
}

/// `ld.shared.v2.f32`: two consecutive f32.
///
/// # Safety
/// `addr` is an 8-byte aligned shared-window address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn load_v2(addr: u32) -> [f32; 2] {
    let (a, b): (f32, f32);
    core::arch::asm!(
        "ld.shared.v2.f32 {{{0}, {1}}}, [{2}];",
        out(reg32) a, out(reg32) b, in(reg32) addr,
        options(nostack, readonly)
    );
    [a, b]
}

/// `st.shared.v2.f32`: two consecutive f32.
///
/// # Safety
/// `addr` is an 8-byte aligned shared-window address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn store_v2(addr: u32, v: [f32; 2]) {
    core::arch::asm!("st.shared.v2.f32 [{0}], {{{1}, {2}}};", in(reg32) addr, in(reg32) v[0], in(reg32) v[1], options(nostack));
}
