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
