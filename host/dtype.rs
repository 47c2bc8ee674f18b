//! Element types. The GPU kernels take bf16 and f16; f32 exists for the CPU path and for callers who
//! hold f32 data, and is rejected by the GPU paths with a typed error. [`F8E4M3`] is the FP8 forward's
//! input type (`gpu::flash_forward_fp8`, `cpu::forward_fp8`, with descale factors: `crate::fp8`).

use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    BF16,
    F16,
    F32,
    /// FP8 e4m3 ([`F8E4M3`]).
    F8E4M3,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::BF16 | DType::F16 => 2,
            DType::F32 => 4,
            DType::F8E4M3 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
            DType::F8E4M3 => "e4m3",
        }
    }
    /// bf16 or f16: the element types of the 16-bit GPU kernels.
    pub fn is_half(self) -> bool {
        matches!(self, DType::BF16 | DType::F16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
    impl Sealed for f32 {}
    impl Sealed for super::F8E4M3 {}
}

/// An attention element type.
pub trait Element:
    sealed::Sealed + Copy + Send + Sync + Default + std::fmt::Debug + cudarc::driver::DeviceRepr + 'static
{
    const DTYPE: DType;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
    /// A bit pattern used to poison outputs so that unwritten elements show (NaN for floats).
    fn poison() -> Self {
        Self::from_f32(f32::NAN)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

/// An FP8 value in the e4m3 format (OCP FP8 "E4M3FN", the format of Hopper's FP8 tensor cores): sign,
/// 4 exponent bits (bias 7), 3 mantissa bits; no infinities, `0x7f`/`0xff` are NaN; the largest finite
/// value is 448, the smallest subnormal 2^-9. Conversions from f32 round to nearest even and saturate
/// to ±448 (as the GPU's `cvt.rn.satfinite`), NaN stays NaN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct F8E4M3(pub u8);

// SAFETY: a transparent byte, valid for every bit pattern.
unsafe impl cudarc::driver::DeviceRepr for F8E4M3 {}
// SAFETY: as above; all-zero bytes are the value +0.
unsafe impl cudarc::driver::ValidAsZeroBits for F8E4M3 {}

impl F8E4M3 {
    /// The largest finite value.
    pub const MAX: f32 = ironflash_kernels::abi::FP8_E4M3_MAX;
    pub const NAN: F8E4M3 = F8E4M3(0x7f);

    pub fn to_f32(self) -> f32 {
        let sign = if self.0 & 0x80 != 0 { -1.0 } else { 1.0 };
        let (exp, man) = ((self.0 >> 3) & 0xf, self.0 & 7);
        if exp == 0xf && man == 7 {
            return f32::NAN;
        }
        // Subnormals are steps of 2^-9; a normal is (8 + man) steps of 2^(exp - 7 - 3).
        let magnitude =
            if exp == 0 { man as f32 * (-9f32).exp2() } else { (8 + man) as f32 * (exp as f32 - 10.0).exp2() };
        sign * magnitude
    }

    /// Round to nearest even, saturating (see the type's docs).
    pub fn from_f32(x: f32) -> Self {
        if x.is_nan() {
            return Self::NAN;
        }
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = x.abs();
        if a >= Self::MAX {
            return F8E4M3(sign | 0x7e);
        }
        // Below 2^-6 the steps are 2^-9 (subnormals, counted from 0); above, 2^(e-3) within [2^e,
        // 2^(e+1)), counted from 8 at the binade's start. Both counts map to the encoding by one add,
        // a carry into the exponent included. Scaling by powers of two is exact in f32.
        let bits = if a < (-6f32).exp2() {
            (a * 512.0).round_ties_even() as u8
        } else {
            let e = ((a.to_bits() >> 23) as i32) - 127;
            let steps = (a * (3.0 - e as f32).exp2()).round_ties_even() as u8;
            (((e + 7) as u8) << 3) + (steps - 8)
        };
        F8E4M3(sign | bits)
    }
}

impl Element for F8E4M3 {
    const DTYPE: DType = DType::F8E4M3;
    fn to_f32(self) -> f32 {
        F8E4M3::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        F8E4M3::from_f32(x)
    }
}
