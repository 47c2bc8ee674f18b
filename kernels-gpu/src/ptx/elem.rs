//! 16-bit element types as the kernels see them: raw `u16` bits converted with the hardware's
//! round-to-nearest-even conversions (PTX ISA §9.7.9.21 `cvt`).

pub trait Elem16: Copy {
    fn to_f32(bits: u16) -> f32;
    fn from_f32(x: f32) -> u16;
    /// Packs two f32 into one `.b32` register (low half = `lo`), the operand form of `mma.sync`.
    fn pack2(lo: f32, hi: f32) -> u32;
}

#[derive(Clone, Copy)]
pub struct Bf16;
#[derive(Clone, Copy)]
pub struct F16;

impl Elem16 for Bf16 {
    #[inline(always)]
    fn to_f32(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> u16 {
        let out: u16;
        // SAFETY: pure register conversion.
        unsafe {
            core::arch::asm!("cvt.rn.bf16.f32 {0}, {1};", out(reg16) out, in(reg32) x, options(pure, nomem, nostack))
        };
        out
    }
    #[inline(always)]
    fn pack2(lo: f32, hi: f32) -> u32 {
        let out: u32;
        // SAFETY: pure register conversion; the first source goes to the upper half.
        unsafe {
            core::arch::asm!("cvt.rn.bf16x2.f32 {0}, {1}, {2};", out(reg32) out, in(reg32) hi, in(reg32) lo, options(pure, nomem, nostack))
        };
        out
    }
}

impl Elem16 for F16 {
    #[inline(always)]
    fn to_f32(bits: u16) -> f32 {
        let out: f32;
        // SAFETY: pure register conversion.
        unsafe {
            core::arch::asm!("cvt.f32.f16 {0}, {1};", out(reg32) out, in(reg16) bits, options(pure, nomem, nostack))
        };
        out
    }
    #[inline(always)]
    fn from_f32(x: f32) -> u16 {
        let out: u16;
        // SAFETY: pure register conversion.
        unsafe {
            core::arch::asm!("cvt.rn.f16.f32 {0}, {1};", out(reg16) out, in(reg32) x, options(pure, nomem, nostack))
        };
        out
    }
    #[inline(always)]
    fn pack2(lo: f32, hi: f32) -> u32 {
        let out: u32;
        // SAFETY: pure register conversion; the first source goes to the upper half.
        unsafe {
            core::arch::asm!("cvt.rn.f16x2.f32 {0}, {1}, {2};", out(reg32) out, in(reg32) hi, in(reg32) lo, options(pure, nomem, nostack))
        };
        out
    }
}
