//! Fast f32 transcendental functions (PTX ISA §9.7.3.x `ex2`, `lg2`, `rcp`, `tanh`) and the fused
//! multiply-add (`fma.rn`), which rustc never forms from a multiply and an add on its own.

/// 2^x with `ex2.approx.ftz.f32` (max 2 ulp; 2^-inf = +0, which the online softmax relies on).
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    let out: f32;
    // SAFETY: pure register operation.
    unsafe {
        core::arch::asm!("ex2.approx.ftz.f32 {0}, {1};", out(reg32) out, in(reg32) x, options(pure, nomem, nostack))
    };
    out
}

/// log2(x) with `lg2.approx.ftz.f32` (only called on x > 0).
#[inline(always)]
pub fn log2(x: f32) -> f32 {
    let out: f32;
    // SAFETY: pure register operation.
    unsafe {
        core::arch::asm!("lg2.approx.ftz.f32 {0}, {1};", out(reg32) out, in(reg32) x, options(pure, nomem, nostack))
    };
    out
}

/// 1/x rounded to nearest (`rcp.rn.f32`): the normaliser of each output row, computed once per row.
#[inline(always)]
pub fn recip(x: f32) -> f32 {
    let out: f32;
    // SAFETY: pure register operation.
    unsafe { core::arch::asm!("rcp.rn.f32 {0}, {1};", out(reg32) out, in(reg32) x, options(pure, nomem, nostack)) };
    out
}

/// tanh(x) with `tanh.approx.f32` (sm_75+; max relative error about 2^-11, one MUFU operation as
/// FlashAttention's softcap uses): the softcap of the score stage.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let out: f32;
    // SAFETY: pure register operation.
    unsafe {
        core::arch::asm!("tanh.approx.f32 {0}, {1};", out(reg32) out, in(reg32) x, options(pure, nomem, nostack))
    };
    out
}

/// a·b + c rounded once (`fma.rn.f32`): one instruction where `a * b + c` is two.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    let out: f32;
    // SAFETY: pure register operation.
    unsafe {
        core::arch::asm!("fma.rn.f32 {0}, {1}, {2}, {3};", out(reg32) out, in(reg32) a, in(reg32) b, in(reg32) c, options(pure, nomem, nostack))
    };
    out
}
