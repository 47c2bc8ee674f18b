//! Shared-memory barriers that count arrivals and bytes (PTX ISA §9.7.13.15 `mbarrier`): the hand-off of
//! TMA copies, whose completion the copy engine reports on the barrier in bytes. Only in the `sm_90a`
//! build.
//!
//! A barrier object is 8 bytes of shared memory. Each phase completes once its expected arrivals have
//! arrived and its expected bytes have landed; waiters name the phase by its parity.

/// `mbarrier.init.shared::cta.b64` by the threads with `leader` set: `count` arrivals complete a phase.
/// Predicated inside the instruction rather than branched around, so that the compiler (to which inline
/// assembly is not convergent) finds no divergent path to move the CTA's barriers into.
///
/// # Safety
/// `bar` is an 8-byte aligned shared address no thread uses as a barrier yet; one thread has `leader`
/// set, and `fence_init` plus a CTA barrier separate the initialisation from every other use.
#[inline(always)]
pub unsafe fn init(leader: bool, bar: u32, count: u32) {
    core::arch::asm!(
        "{{ .reg .pred p; setp.ne.u32 p, {0}, 0; @p mbarrier.init.shared::cta.b64 [{1}], {2}; }}",
        in(reg32) leader as u32, in(reg32) bar, in(reg32) count,
        options(nostack)
    );
}

/// `fence.mbarrier_init.release.cluster`: this thread's barrier initialisations become visible to the
/// async proxy (the TMA unit's completions) before anything after the fence.
#[inline(always)]
pub fn fence_init() {
    // SAFETY: an ordering instruction.
    unsafe { core::arch::asm!("fence.mbarrier_init.release.cluster;", options(nostack)) };
}

/// `mbarrier.arrive.expect_tx.shared::cta.b64` by the threads with `leader` set (predicated, as `init`):
/// their arrival, and `bytes` more to land in the current phase (the TMA copies issued after it
/// complete them).
///
/// # Safety
/// `bar` is an initialised barrier; the copies issued against it bring exactly `bytes` per leader.
#[inline(always)]
pub unsafe fn arrive_expect_tx(leader: bool, bar: u32, bytes: u32) {
    core::arch::asm!(
        "{{ .reg .pred p; setp.ne.u32 p, {0}, 0; @p mbarrier.arrive.expect_tx.shared::cta.b64 _, [{1}], {2}; }}",
        in(reg32) leader as u32, in(reg32) bar, in(reg32) bytes,
        options(nostack)
    );
}

/// Waits until the phase of parity `phase` (0 or 1) of `bar` has completed (`mbarrier.try_wait.parity`,
/// which suspends the thread for a time-limited while, retried); the memory it hands over is then
/// visible to this thread, and to its `wgmma` reads. The retry loop is inside the one assembly block
/// (its labels are local to the block's scope), so the compiler sees no loop whose exit the warp's
/// threads might take apart before a barrier.
///
/// # Safety
/// `bar` is an initialised barrier whose phase `phase` will complete.
#[inline(always)]
#[allow(named_asm_labels)]
pub unsafe fn wait(bar: u32, phase: u32) {
    core::arch::asm!(
        "{{ .reg .pred p;",
        "ironflash_mbarrier_wait:",
        "mbarrier.try_wait.parity.shared::cta.b64 p, [{0}], {1};",
        "@!p bra ironflash_mbarrier_wait;",
        "}}",
        in(reg32) bar, in(reg32) phase,
        options(nostack)
    );
}

/// `mbarrier.arrive.shared::cta.b64` by the threads with `leader` set (predicated, as `init`): their
/// arrival, with release semantics (what they wrote before is visible to the threads that see the
/// phase complete).
///
/// # Safety
/// `bar` is an initialised barrier that expects the arrival in its current phase.
#[inline(always)]
pub unsafe fn arrive(leader: bool, bar: u32) {
    core::arch::asm!(
        "{{ .reg .pred p; setp.ne.u32 p, {0}, 0; @p mbarrier.arrive.shared::cta.b64 _, [{1}]; }}",
        in(reg32) leader as u32, in(reg32) bar,
        options(nostack)
    );
}
