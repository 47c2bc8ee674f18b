//! Warp-wide stores of 8x8 b16 matrices from `mma` fragments to shared memory (PTX ISA §9.7.14.5.16
//! `stmatrix`, sm_90), the counterpart of `ldmatrix`.
//!
//! With `.x4`, register i of lane l holds row l/4, elements 2(l%4) and 2(l%4)+1 of matrix i (an `mma`
//! accumulator's packed 8x8 block), and lanes 8i..8i+7 give the addresses of the 8 stored rows (16 bytes
//! each) of matrix i. `.trans` stores the transpose: stored row j holds column j of the fragment.
//! `ldmatrix.x4.trans` at the same addresses reads the fragments back.

/// `stmatrix.sync.aligned.m8n8.x4.shared.b16`: stored row j of matrix i holds row j of fragment i.
///
/// # Safety
/// All 32 lanes call it converged; `addr` is this lane's 16-byte aligned row address in shared memory.
#[inline(always)]
pub unsafe fn x4(addr: u32, m: [u32; 4]) {
    core::arch::asm!(
        "stmatrix.sync.aligned.m8n8.x4.shared.b16 [{0}], {{{1}, {2}, {3}, {4}}};",
        in(reg32) addr, in(reg32) m[0], in(reg32) m[1], in(reg32) m[2], in(reg32) m[3],
        options(nostack)
    );
}

/// `stmatrix.sync.aligned.m8n8.x4.trans.shared.b16`.
///
/// # Safety
/// All 32 lanes call it converged; `addr` is this lane's 16-byte aligned row address in shared memory.
#[inline(always)]
pub unsafe fn x4_trans(addr: u32, m: [u32; 4]) {
    core::arch::asm!(
        "stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [{0}], {{{1}, {2}, {3}, {4}}};",
        in(reg32) addr, in(reg32) m[0], in(reg32) m[1], in(reg32) m[2], in(reg32) m[3],
        options(nostack)
    );
}

/// `stmatrix.sync.aligned.m8n8.x1.trans.shared.b16`: one matrix, rows addressed by lanes 0-7.
///
/// # Safety
/// As [`x4_trans`].
#[inline(always)]
pub unsafe fn x1_trans(addr: u32, m: u32) {
    core::arch::asm!(
        "stmatrix.sync.aligned.m8n8.x1.trans.shared.b16 [{0}], {{{1}}};",
        in(reg32) addr, in(reg32) m,
        options(nostack)
    );
}
