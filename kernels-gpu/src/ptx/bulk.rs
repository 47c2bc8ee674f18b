//! Proxy fences and bulk reductions (PTX ISA §9.7.13.4 `fence.proxy.async`; §9.7.9.25.4.3
//! `cp.reduce.async.bulk`, §9.7.9.25.4.4/5 `cp.async.bulk.commit_group`/`wait_group`). Only in the
//! `sm_90a` build.
//!
//! Ordinary shared-memory stores and `cp.async` copies belong to the generic proxy; `wgmma` operands and
//! bulk copies are read by the async proxy, so a writer fences its stores with `shared_async` before
//! the barrier after which they are read that way.

/// `fence.proxy.async.shared::cta`: this thread's earlier generic-proxy shared-memory writes become
/// visible to the async proxy.
#[inline(always)]
pub fn shared_async() {
    // SAFETY: an ordering instruction.
    unsafe { core::arch::asm!("fence.proxy.async.shared::cta;", options(nostack)) };
}

/// `fence.proxy.async.global`: orders this thread's global accesses between the generic and async
/// proxies.
#[inline(always)]
pub fn global_async() {
    // SAFETY: an ordering instruction.
    unsafe { core::arch::asm!("fence.proxy.async.global;", options(nostack)) };
}

/// `cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32`: `dst[i] += src[i]` for `bytes / 4`
/// f32, performed by the TMA unit, atomically per element; then closes the bulk group.
///
/// # Safety
/// `dst` is a 16-byte aligned global address of `bytes` writable bytes, `src` a 16-byte aligned shared
/// address of `bytes` bytes fenced with `shared_async` and a barrier, `bytes` a multiple of 16; `src`
/// is not written again before `wait_read::<0>` returns.
#[inline(always)]
pub unsafe fn reduce_add_f32(dst: *mut f32, src: u32, bytes: u32) {
    core::arch::asm!(
        "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [{0}], [{1}], {2};",
        "cp.async.bulk.commit_group;",
        in(reg64) dst, in(reg32) src, in(reg32) bytes,
        options(nostack)
    );
}

/// `cp.async.bulk.wait_group.read N`: at most `N` of this thread's bulk groups still read their
/// source (the shared memory may be reused).
#[inline(always)]
pub fn wait_read<const N: u32>() {
    // SAFETY: blocks this thread only.
    unsafe { core::arch::asm!("cp.async.bulk.wait_group.read {n};", n = const N, options(nostack)) };
}

/// `cp.async.bulk.wait_group N`: at most `N` of this thread's bulk groups incomplete (their writes
/// performed).
#[inline(always)]
pub fn wait_done<const N: u32>() {
    // SAFETY: blocks this thread only.
    unsafe { core::arch::asm!("cp.async.bulk.wait_group {n};", n = const N, options(nostack)) };
}
