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

/// Four f32 rounded to e4m3 (round to nearest even, saturating to ±448: `cvt.rn.satfinite`, PTX ISA
/// §9.7.9.21) and packed into one register, `x[0]` in the lowest byte: four columns of the 8-bit `wgmma`
/// A fragment (`ptx::wgmma::e4m3`).
#[inline(always)]
pub fn pack4_e4m3(x: [f32; 4]) -> u32 {
    let out: u32;
    // SAFETY: pure register conversions; the first source of each `cvt` goes to the upper byte.
    unsafe {
        core::arch::asm!(
            "{{ .reg .b16 lo, hi;",
            "cvt.rn.satfinite.e4m3x2.f32 lo, {2}, {1};",
            "cvt.rn.satfinite.e4m3x2.f32 hi, {4}, {3};",
            "mov.b32 {0}, {{lo, hi}}; }}",
            out(reg32) out, in(reg32) x[0], in(reg32) x[1], in(reg32) x[2], in(reg32) x[3],
            options(pure, nomem, nostack)
        )
    };
    out
}

/// `prmt.b32` (PTX ISA §9.7.8.7): byte i of the result is byte `(SEL >> 4i) & 7` of the pair (`a` bytes
/// 0-3, `b` bytes 4-7).
#[inline(always)]
pub fn byte_perm<const SEL: u32>(a: u32, b: u32) -> u32 {
    let out: u32;
    // SAFETY: a pure register permutation.
    unsafe {
        core::arch::asm!("prmt.b32 {0}, {1}, {2}, {3};", out(reg32) out, in(reg32) a, in(reg32) b, const SEL, options(pure, nomem, nostack))
    };
    out
}

/// The 4×4 byte transpose: byte j of result i is byte i of `w[j]`.
#[inline(always)]
pub fn transpose_bytes(w: [u32; 4]) -> [u32; 4] {
    // Bytes 0 and 1 of each pair interleaved, then bytes 2 and 3; then the pairs' halves joined.
    let (a01, a23) = (byte_perm::<0x5140>(w[0], w[1]), byte_perm::<0x7362>(w[0], w[1]));
    let (b01, b23) = (byte_perm::<0x5140>(w[2], w[3]), byte_perm::<0x7362>(w[2], w[3]));
    [
        byte_perm::<0x5410>(a01, b01),
        byte_perm::<0x7632>(a01, b01),
        byte_perm::<0x5410>(a23, b23),
        byte_perm::<0x7632>(a23, b23),
    ]
}
