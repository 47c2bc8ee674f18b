//! Programmatic dependent launch (PTX ISA §9.7.13.13 `griddepcontrol`, sm_90): a grid that the host
//! launches after this one on the same stream with programmatic stream serialisation may be scheduled
//! once every CTA of this grid has called [`launch_dependents`] or exited, instead of once this grid has
//! finished; it calls [`wait`] before it reads what this grid writes. So its launch and set-up overlap
//! this grid's tail. In the sm_80 build both are empty: the host launches dependents there (and on any
//! device that runs the sm_80 PTX) the ordinary way, ordered by the stream.

/// `griddepcontrol.launch_dependents`: this CTA no longer holds back the dependent grid's launch.
#[inline(always)]
pub fn launch_dependents() {
    // SAFETY: a scheduling hint with no operands; the dependent grid's `wait` still orders its reads.
    #[cfg(target_feature = "sm_90a")]
    unsafe {
        core::arch::asm!("griddepcontrol.launch_dependents;", options(nostack))
    };
}

/// `griddepcontrol.wait`: blocks until the grids this one depends on have completed and their memory
/// operations are visible (at once when it was launched the ordinary way).
#[inline(always)]
pub fn wait() {
    // SAFETY: no operands; not `nomem`, so no memory access moves above it.
    #[cfg(target_feature = "sm_90a")]
    unsafe {
        core::arch::asm!("griddepcontrol.wait;", options(nostack))
    };
}
