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

/// `st.shared.b32` by the threads with `pred` set, predicated inside the instruction rather than branched
/// around (as `mbarrier::init`), so that the compiler finds no divergent path to move barriers into.
///
/// # Safety
/// As [`store_u32`].
#[inline(always)]
pub unsafe fn store_u32_if(pred: bool, addr: u32, value: u32) {
    core::arch::asm!(
        "{{ .reg .pred p; setp.ne.u32 p, {0}, 0; @p st.shared.b32 [{1}], {2}; }}",
        in(reg32) pred as u32, in(reg32) addr, in(reg32) value,
        options(nostack)
    );
}

// The CTA's 32-byte slot of static shared memory (PTX ISA §5.1.5: a module-scope `.shared` variable;
// ptxas gives it only to the kernels that use it, at an address the instructions take as an immediate,
// so reading it costs no address register).
core::arch::global_asm!(".shared .align 16 .b8 IRONFLASH_CTA_SLOT[32];");

/// Stores the eight words of the CTA slot (two `st.shared.v4`).
///
/// # Safety
/// One thread stores, and a barrier orders the store before every other thread's loads.
#[inline(always)]
pub unsafe fn store_cta_slot(v: [u32; 8]) {
    core::arch::asm!(
        "st.shared.v4.b32 [IRONFLASH_CTA_SLOT], {{{0}, {1}, {2}, {3}}};",
        "st.shared.v4.b32 [IRONFLASH_CTA_SLOT+16], {{{4}, {5}, {6}, {7}}};",
        in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
        in(reg32) v[4], in(reg32) v[5], in(reg32) v[6], in(reg32) v[7],
        options(nostack)
    );
}

/// Words 0-3 of the CTA slot. Not `pure`: a read inside a loop stays there (see `ptx::opaque`), rather
/// than being hoisted and held in registers.
///
/// # Safety
/// [`store_cta_slot`] wrote the slot before a barrier this thread has passed.
#[inline(always)]
pub unsafe fn load_cta_slot_v4() -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    core::arch::asm!(
        "ld.shared.v4.b32 {{{0}, {1}, {2}, {3}}}, [IRONFLASH_CTA_SLOT];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d,
        options(nostack)
    );
    [a, b, c, d]
}

/// Words 4 and 5 of the CTA slot, as [`load_cta_slot_v4`].
///
/// # Safety
/// As [`load_cta_slot_v4`].
#[inline(always)]
pub unsafe fn load_cta_slot_v2() -> [u32; 2] {
    let (a, b): (u32, u32);
    core::arch::asm!("ld.shared.v2.b32 {{{0}, {1}}}, [IRONFLASH_CTA_SLOT+16];", out(reg32) a, out(reg32) b, options(nostack));
    [a, b]
}

/// Word `W` (0-7) of the CTA slot, as [`load_cta_slot_v4`].
///
/// # Safety
/// As [`load_cta_slot_v4`].
#[inline(always)]
pub unsafe fn load_cta_slot_word<const W: u32>() -> u32 {
    const { assert!(W < 8) };
    let v: u32;
    core::arch::asm!("ld.shared.b32 {0}, [IRONFLASH_CTA_SLOT+{1}];", out(reg32) v, const 4 * W, options(nostack));
    v
}
