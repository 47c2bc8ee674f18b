//! The dynamic shared-memory window (PTX ISA §5.1.5 "Shared State Space"; §9.7.9.5 `cvta`/`mov` of a
//! variable's address).
//!
//! One `.extern .shared` array of unspecified size is the kernel's dynamic shared memory: the launch's
//! `sharedMemBytes` sizes it. Its address taken with `mov.u32` is a 32-bit offset in the shared window,
//! the operand form every `.shared` instruction (`ldmatrix`, `cp.async`, `ld/st.shared`) takes, so the
//! kernels do their shared-memory arithmetic in `u32`.

core::arch::global_asm!(".extern .shared .align 128 .b8 IRONFLASH_SMEM[];");

/// Shared-window address of the first byte of the dynamic shared memory (128-byte aligned).
#[inline(always)]
pub fn base() -> u32 {
    let addr: u32;
    // SAFETY: takes the address of a symbol; reads nothing.
    unsafe { core::arch::asm!("mov.u32 {0}, IRONFLASH_SMEM;", out(reg32) addr, options(pure, nomem, nostack)) };
    addr
}

/// `st.shared.b32` (PTX ISA §9.7.9.10 `st`).
///
/// # Safety
/// `addr` is a 4-byte aligned shared-window address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn store_u32(addr: u32, value: u32) {
    core::arch::asm!("st.shared.b32 [{0}], {1};", in(reg32) addr, in(reg32) value, options(nostack));
}

/// `st.shared.v4.b32` (PTX ISA §9.7.9.10 `st`): 16 bytes.
///
/// # Safety
/// `addr` is a 16-byte aligned shared-window address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn store_v4(addr: u32, v: [u32; 4]) {
    core::arch::asm!(
        "st.shared.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};",
        in(reg32) addr, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
        options(nostack)
    );
}

/// `ld.shared.v4.b32` (PTX ISA §9.7.9.8 `ld`): 16 bytes.
///
/// # Safety
/// `addr` is a 16-byte aligned shared-window address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn load_v4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    core::arch::asm!(
        "ld.shared.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
        options(nostack, readonly)
    );
    [a, b, c, d]
}

/// `ld.shared.b32` (PTX ISA §9.7.9.8 `ld`).
///
/// # Safety
/// `addr` is a 4-byte aligned shared-window address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn load_u32(addr: u32) -> u32 {
    let v: u32;
    core::arch::asm!("ld.shared.b32 {0}, [{1}];", out(reg32) v, in(reg32) addr, options(nostack, readonly));
    v
}
