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

/// 2^x on the FMA pipe instead of the MUFU unit (FlashAttention-4's software exponential): x = j + f
/// with j = floor(x) (one add rounded toward -inf against 1.5·2^23, whose low mantissa bits then hold
/// j), 2^f on [0, 1) by a degree-3 polynomial with p(0) = 1 exactly (a minimax fit of the relative
/// error: at most 8.6e-5, below bf16's and f16's rounding of P), and j added to its exponent field.
/// Eight FMA/ALU instructions against one MUFU operation: measured to pay where a score's products are
/// short against its `ex2` (the Hopper forward at head dim 32), and to cost from head dim 64 up, softcap
/// included (docs/perf.md, "Exponentials on the FMA pipe").
///
/// Defined for x ≤ 2^22; x ≤ -127 (and -inf) gives +0 exactly: x is raised to -127, so f = 0, p = 1.0
/// and the exponent field becomes 127 - 127 = 0 with a zero mantissa. Between -127 and -126 the result
/// is a subnormal near 2^-127 (ex2.approx.ftz gives 0 there; both are below anything a softmax row sum
/// can tell apart from 0).
#[inline(always)]
pub fn exp2_fma(x: f32) -> f32 {
    /// 1.5·2^23: a sum with it has unit spacing, so its low mantissa bits hold the rounded integer.
    const INTEGER_BITS: f32 = 12_582_912.0;
    const C1: f32 = f32::from_bits(0x3F31_F325); // 0.69511634
    const C2: f32 = f32::from_bits(0x3E69_1C4C); // 0.22764701
    const C3: f32 = f32::from_bits(0x3D9D_D45C); // 0.07706520
    let x = x.max(-127.0);
    let t: f32;
    // SAFETY: pure register operation.
    unsafe {
        core::arch::asm!("add.rm.f32 {0}, {1}, {2};", out(reg32) t, in(reg32) x, in(reg32) INTEGER_BITS, options(pure, nomem, nostack))
    };
    let f = x - (t - INTEGER_BITS);
    let p = fma(fma(fma(C3, f, C2), f, C1), f, 1.0);
    // j sits in t's low 9 bits (two's complement for j < 0); shifted into the exponent field, the
    // rest of t's bits fall off the top.
    f32::from_bits(p.to_bits().wrapping_add(t.to_bits() << 23))
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
