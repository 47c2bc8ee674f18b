//! Warp-wide loads of 8x8 b16 matrices from shared memory into `mma` fragments (PTX ISA §9.7.14.5.15
//! `ldmatrix`).
//!
//! With `.x4`, lanes 8i..8i+7 give the addresses of the 8 rows (16 bytes each) of matrix i, and result
//! register i of lane l holds row l/4, elements 2(l%4) and 2(l%4)+1 of matrix i: exactly the layout of
//! one 8x8 quarter of an m16n8k16 A fragment, or one half of a B fragment (§9.7.14.5.8). `.trans` hands
//! out the transpose, which turns a row-major [k][n] tile (V) into the "col" B operand.

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16`.
///
/// # Safety
/// All 32 lanes call it converged; `addr` is this lane's 16-byte aligned row address in shared memory.
#[inline(always)]
pub unsafe fn x4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    core::arch::asm!(
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
        options(nostack, readonly)
    );
    [a, b, c, d]
}

/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16`.
///
/// # Safety
/// As [`x4`].
#[inline(always)]
pub unsafe fn x4_trans(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    core::arch::asm!(
        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
        options(nostack, readonly)
    );
    [a, b, c, d]
}
