//! Barriers (PTX ISA §9.7.13.1 `bar`/`barrier`, §9.7.13.2 `bar.warp.sync`).

/// `bar.sync 0`: every thread of the CTA arrives and waits; shared-memory accesses before it are visible
/// to every thread after it. All threads of the CTA must reach the same call (uniform control flow).
#[inline(always)]
pub fn block() {
    // SAFETY: a CTA-wide barrier; the callers reach it in uniform control flow.
    unsafe { core::arch::asm!("bar.sync 0;", options(nostack)) };
}

/// `bar.warp.sync 0xffffffff`: the 32 lanes of the warp converge, and shared-memory accesses of each lane
/// before it are visible to the others after it (PTX ISA memory model: bar.warp.sync is a warp barrier).
#[inline(always)]
pub fn warp() {
    // SAFETY: full mask; every caller runs it with the whole warp converged.
    unsafe { core::arch::asm!("bar.warp.sync 0xffffffff;", options(nostack)) };
}

/// `bar.sync ID, COUNT`: waits until `COUNT` threads (a multiple of 32, whole warps) have arrived at
/// named barrier `ID` (1-15; 0 is `block`), this one included. Memory accesses before the arrivals
/// are visible after it.
#[inline(always)]
pub fn named<const ID: u32, const COUNT: u32>() {
    // SAFETY: a barrier; the callers arrive in whole warps, COUNT threads per generation.
    unsafe { core::arch::asm!("bar.sync {id}, {n};", id = const ID, n = const COUNT, options(nostack)) };
}

/// `bar.arrive ID, COUNT`: counts this thread's arrival at named barrier `ID` without waiting (the
/// producer side of a producer/consumer hand-off; the consumers `named::<ID, COUNT>()`).
#[inline(always)]
pub fn arrive<const ID: u32, const COUNT: u32>() {
    // SAFETY: as `named`.
    unsafe { core::arch::asm!("bar.arrive {id}, {n};", id = const ID, n = const COUNT, options(nostack)) };
}

/// `bar.sync id, COUNT` with the barrier id in a register (warp-uniform, 1-15): for barriers indexed
/// by a pipeline stage.
#[inline(always)]
pub fn named_at<const COUNT: u32>(id: u32) {
    // SAFETY: as `named`; `id` is the same in every lane of the warp.
    unsafe { core::arch::asm!("bar.sync {id}, {n};", id = in(reg32) id, n = const COUNT, options(nostack)) };
}

/// `bar.arrive id, COUNT` with the barrier id in a register (see `named_at`, `arrive`).
#[inline(always)]
pub fn arrive_at<const COUNT: u32>(id: u32) {
    // SAFETY: as `arrive`; `id` is warp-uniform.
    unsafe { core::arch::asm!("bar.arrive {id}, {n};", id = in(reg32) id, n = const COUNT, options(nostack)) };
}
