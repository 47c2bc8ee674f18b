//! Warp-level tensor-core products (PTX ISA §9.7.14.5.14 `mma`, fragment layouts §9.7.14.5.8 for
//! m16n8k16 with .bf16/.f16 inputs).
//!
//! `d = a·b + c` on a 16x16 A (row-major: 4 registers of 2 elements), a 16x8 B ("col": 2 registers) and
//! a 16x8 f32 accumulator (4 registers). With g = lane/4 and t = lane%4, accumulator registers 0,1 hold
//! row g, columns 2t and 2t+1; registers 2,3 hold row g+8, same columns.

use super::elem::{Bf16, Elem16, F16};

/// An element type that `mma.sync` multiplies.
pub trait MmaElem: Elem16 {
    /// `acc += a·b` on one m16n8k16 tile.
    fn mma(acc: &mut [f32; 4], a: &[u32; 4], b: &[u32; 2]);
}

macro_rules! mma_impl {
    ($t:ty, $ptx:literal) => {
        impl MmaElem for $t {
            #[inline(always)]
            fn mma(acc: &mut [f32; 4], a: &[u32; 4], b: &[u32; 2]) {
                // SAFETY: register-only; every ironflash caller runs it with the whole warp converged
                // (`.sync.aligned`), in fully unrolled code.
                unsafe {
                    core::arch::asm!(
                        concat!("mma.sync.aligned.m16n8k16.row.col.f32.", $ptx, ".", $ptx, ".f32 ",
                            "{{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{0}, {1}, {2}, {3}}};"),
                        inout(reg32) acc[0], inout(reg32) acc[1], inout(reg32) acc[2], inout(reg32) acc[3],
                        in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
                        in(reg32) b[0], in(reg32) b[1],
                        options(nomem, nostack)
                    )
                }
            }
        }
    };
}

mma_impl!(Bf16, "bf16");
mma_impl!(F16, "f16");
