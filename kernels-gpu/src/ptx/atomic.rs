//! Global-memory reductions and the acquire/release operations of a turn counter (PTX ISA §9.7.13.5
//! `red`, §9.7.9.8 `ld` with `.acquire`, §9.7.13.4 `membar`/`fence`). Used by the backward's dQ
//! accumulation and the persistent forward's tile tickets (`fwd::schedule`).

/// `red.global.add.f32`: `*addr += value`, atomically, without returning the old value.
///
/// # Safety
/// `addr` is a 4-byte aligned global address of a writable f32.
#[inline(always)]
pub unsafe fn red_add_f32(addr: *mut f32, value: f32) {
    core::arch::asm!("red.global.add.f32 [{0}], {1};", in(reg64) addr, in(reg32) value, options(nostack));
}

/// `ld.acquire.gpu.global.u32`: reads a turn counter; later memory operations of this thread are
/// ordered after it.
///
/// # Safety
/// `addr` is a 4-byte aligned global address.
#[inline(always)]
pub unsafe fn load_acquire_u32(addr: *const u32) -> u32 {
    let v: u32;
    core::arch::asm!("ld.acquire.gpu.global.u32 {0}, [{1}];", out(reg32) v, in(reg64) addr, options(nostack));
    v
}

/// `fence.acq_rel.gpu` then `red.release.gpu.global.add.u32`: publishes everything this thread (and,
/// after a CTA barrier, its CTA) wrote before, then adds `value` to the counter.
///
/// # Safety
/// `addr` is a 4-byte aligned global address of a writable u32.
#[inline(always)]
pub unsafe fn release_add_u32(addr: *mut u32, value: u32) {
    core::arch::asm!(
        "fence.acq_rel.gpu;",
        "red.release.gpu.global.add.u32 [{0}], {1};",
        in(reg64) addr, in(reg32) value,
        options(nostack)
    );
}

/// `red.global.or.b32`: `*addr |= bits`, atomically (error flags).
///
/// # Safety
/// `addr` is a 4-byte aligned global address of a writable u32.
#[inline(always)]
pub unsafe fn red_or_u32(addr: *mut u32, bits: u32) {
    core::arch::asm!("red.global.or.b32 [{0}], {1};", in(reg64) addr, in(reg32) bits, options(nostack));
}

/// `atom.global.add.u32`: adds `value` and returns the old value.
///
/// # Safety
/// `addr` is a 4-byte aligned global address of a writable u32.
#[inline(always)]
pub unsafe fn fetch_add_u32(addr: *mut u32, value: u32) -> u32 {
    let old: u32;
    core::arch::asm!("atom.global.add.u32 {0}, [{1}], {2};", out(reg32) old, in(reg64) addr, in(reg32) value, options(nostack));
    old
}

/// `atom.global.add.u32` by the threads with `pred` set (predicated, as `smem::store_u32_if`): adds
/// `value` and returns the old value; 0 where `pred` is not set (nothing read or written).
///
/// # Safety
/// As [`fetch_add_u32`], where `pred` is set.
#[inline(always)]
pub unsafe fn fetch_add_u32_if(pred: bool, addr: *mut u32, value: u32) -> u32 {
    let old: u32;
    core::arch::asm!(
        "{{ .reg .pred p; setp.ne.u32 p, {1}, 0; mov.u32 {0}, 0; @p atom.global.add.u32 {0}, [{2}], {3}; }}",
        out(reg32) old, in(reg32) pred as u32, in(reg64) addr, in(reg32) value,
        options(nostack)
    );
    old
}

/// `fence.acq_rel.gpu`: this thread's memory operations before it are ordered before those after it,
/// as every thread of the device sees them.
#[inline(always)]
pub fn fence_gpu() {
    // SAFETY: an ordering instruction.
    unsafe { core::arch::asm!("fence.acq_rel.gpu;", options(nostack)) };
}
