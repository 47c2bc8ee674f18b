//! Hopper warpgroup tensor-core products (PTX ISA §9.7.15 "Asynchronous Warpgroup Level Matrix
//! Multiply-Accumulate": `wgmma.mma_async`, `wgmma.fence`, `wgmma.commit_group`, `wgmma.wait_group`;
//! §9.7.15.5.1 the shared-memory matrix descriptor). Only in the `sm_90a` build.
//!
//! A warpgroup (4 consecutive warps, the first a multiple of 4) computes `D[64×N] (+)= A[64×16]·B[16×N]`.
//! B always comes from shared memory through a descriptor; A from shared memory (`ss_*`) or from
//! registers (`rs_*`, the m16n8k16 A-fragment layout of `mma.sync`, warp j of the group holding rows
//! 16j..16j+15). The f32 accumulator of warp j: register 4i+0/1 holds row 16j+g, columns 8i+2t and
//! 8i+2t+1, registers 4i+2/3 the same columns of row 16j+g+8 (g = lane/4, t = lane%4): the `mma.sync`
//! accumulator layout repeated over N/8 column blocks.
//!
//! The products run asynchronously: `commit` closes a group of them, `wait::<N>` returns when at most N
//! groups are pending. The accumulators must not be touched in between (ptxas serialises the pipeline,
//! with a warning, when they are); `fence` orders earlier register writes (fresh A fragments,
//! accumulators written by ordinary instructions) before the next product.
//!
//! Shared-memory operands here use the 128-byte swizzle: an operand tile is stored as column blocks of
//! 64 elements (128 bytes per row), rows 128 bytes apart, and 16-byte chunk c of row r sits at chunk
//! position c ^ (r % 8) (the XOR the hardware applies to address bits 4-6 from bits 7-9, hence 1024-byte
//! aligned tiles). The same bytes serve as a K-major operand (K along the row: the descriptor steps
//! 32 bytes per k16 inside a column block) and as an MN-major one (K along the rows: 2048 bytes per k16;
//! LBO = distance between the 64-element column blocks, SBO = 1024, eight rows).

use super::elem::{Bf16, Elem16, F16};

/// The shared-memory matrix descriptor of a 128-byte-swizzled operand starting at shared-window address
/// `addr` (16-byte aligned, inside a 1024-byte aligned tile): LBO and SBO in bytes.
#[inline(always)]
pub const fn desc_sw128(addr: u32, lbo: u32, sbo: u32) -> u64 {
    ((addr as u64 >> 4) & 0x3fff)
        | ((((lbo >> 4) & 0x3fff) as u64) << 16)
        | ((((sbo >> 4) & 0x3fff) as u64) << 32)
        | (1 << 62)
}

/// The descriptor of a K-major operand at `addr` whose rows are `row_bytes` bytes (128: the 128-byte
/// swizzle; 64: the 64-byte swizzle, 16-byte chunk c of row r at chunk position c ^ ((r / 2) % 4)),
/// eight rows per swizzle atom (SBO), inside a tile aligned to the atom (1024 or 512 bytes).
#[inline(always)]
pub const fn desc_kmajor(addr: u32, row_bytes: u32) -> u64 {
    let mode: u64 = if row_bytes == 128 { 1 } else { 2 };
    ((addr as u64 >> 4) & 0x3fff) | (1 << 16) | ((((8 * row_bytes) >> 4) & 0x3fff) as u64) << 32 | (mode << 62)
}

/// Byte offset of byte `col` of row `row` in a tile of `row_bytes`-byte rows (128 or 64) swizzled as
/// [`desc_kmajor`] describes (one-byte elements: FP8 tiles).
#[inline(always)]
pub const fn swizzled_byte(row_bytes: u32, row: u32, col: u32) -> u32 {
    let phase = if row_bytes == 128 { row % 8 } else { (row / 2) % 4 };
    row * row_bytes + (((col / 16) ^ phase) * 16) + col % 16
}

/// Byte offset of element (row, col) in a 128-byte-swizzled tile of `rows` rows (see the module docs).
#[inline(always)]
pub const fn sw128_offset(rows: u32, row: u32, col: u32) -> u32 {
    (col / 64) * rows * 128 + row * 128 + ((((col % 64) / 8) ^ (row % 8)) * 16) + (col % 8) * 2
}

/// `wgmma.fence.sync.aligned`.
#[inline(always)]
pub fn fence() {
    // SAFETY: an ordering instruction; every caller runs it warpgroup-converged.
    unsafe { core::arch::asm!("wgmma.fence.sync.aligned;", options(nostack)) };
}

/// `wgmma.commit_group.sync.aligned`: closes the group of products issued since the last commit.
#[inline(always)]
pub fn commit() {
    // SAFETY: bookkeeping; warpgroup-converged callers.
    unsafe { core::arch::asm!("wgmma.commit_group.sync.aligned;", options(nostack)) };
}

/// `wgmma.wait_group.sync.aligned N`: at most `N` committed groups still pending.
#[inline(always)]
pub fn wait<const N: u32>() {
    // SAFETY: blocks the warp; warpgroup-converged callers.
    unsafe { core::arch::asm!("wgmma.wait_group.sync.aligned {n};", n = const N, options(nostack)) };
}

/// Keeps `x` in place across a pending product: an empty asm that "reads and writes" it, so the
/// compiler neither moves a use of an accumulator above the `wait` before it nor keeps a stale copy.
#[inline(always)]
pub fn pin(x: &mut f32) {
    // SAFETY: an empty asm.
    unsafe { core::arch::asm!("// pin {0}", inout(reg32) * x, options(nomem, nostack)) };
}

/// `pin` for every accumulator register of a product: called right after the `wait` that covers it.
#[inline(always)]
pub fn pin_all<const N: usize>(acc: &mut [f32; N]) {
    for x in acc.iter_mut() {
        pin(x);
    }
}

/// An element type `wgmma` multiplies, f32 accumulation: one function per shape `m64nNk16` (an
/// accumulator of `N/2` registers per thread), and [`WgmmaElem::ss`]/[`WgmmaElem::rs`], which pick the
/// shape from the accumulator's length, for kernels generic over their tile. `TA`/`TB` = 1 reads that
/// operand MN-major (transposed), 0 K-major; `accumulate` false overwrites the accumulator.
///
/// # Safety (every product)
/// Warpgroup-converged; the descriptors describe loaded shared memory; the accumulator (and a register
/// A operand) stays untouched until a `wait` covers the product.
#[allow(clippy::missing_safety_doc)]
pub trait WgmmaElem: Elem16 {
    /// D[64×16] (+)= A·B, both from shared memory.
    unsafe fn ss_m64n16k16<const TA: u32, const TB: u32>(acc: &mut [f32; 8], a: u64, b: u64, accumulate: bool);
    /// D[64×32] (+)= A·B, both from shared memory.
    unsafe fn ss_m64n32k16<const TA: u32, const TB: u32>(acc: &mut [f32; 16], a: u64, b: u64, accumulate: bool);
    /// D[64×64] (+)= A·B, both from shared memory.
    unsafe fn ss_m64n64k16<const TA: u32, const TB: u32>(acc: &mut [f32; 32], a: u64, b: u64, accumulate: bool);
    /// D[64×80] (+)= A·B, both from shared memory.
    unsafe fn ss_m64n80k16<const TA: u32, const TB: u32>(acc: &mut [f32; 40], a: u64, b: u64, accumulate: bool);
    /// D[64×96] (+)= A·B, both from shared memory.
    unsafe fn ss_m64n96k16<const TA: u32, const TB: u32>(acc: &mut [f32; 48], a: u64, b: u64, accumulate: bool);
    /// D[64×112] (+)= A·B, both from shared memory.
    unsafe fn ss_m64n112k16<const TA: u32, const TB: u32>(acc: &mut [f32; 56], a: u64, b: u64, accumulate: bool);
    /// D[64×128] (+)= A·B, both from shared memory.
    unsafe fn ss_m64n128k16<const TA: u32, const TB: u32>(acc: &mut [f32; 64], a: u64, b: u64, accumulate: bool);
    /// D[64×32] (+)= A·B, A from registers.
    unsafe fn rs_m64n32k16<const TB: u32>(acc: &mut [f32; 16], a: &[u32; 4], b: u64, accumulate: bool);
    /// D[64×64] (+)= A·B, A from registers.
    unsafe fn rs_m64n64k16<const TB: u32>(acc: &mut [f32; 32], a: &[u32; 4], b: u64, accumulate: bool);
    /// D[64×96] (+)= A·B, A from registers.
    unsafe fn rs_m64n96k16<const TB: u32>(acc: &mut [f32; 48], a: &[u32; 4], b: u64, accumulate: bool);
    /// D[64×128] (+)= A·B, A from registers.
    unsafe fn rs_m64n128k16<const TB: u32>(acc: &mut [f32; 64], a: &[u32; 4], b: u64, accumulate: bool);
    /// D[64×192] (+)= A·B, A from registers.
    unsafe fn rs_m64n192k16<const TB: u32>(acc: &mut [f32; 96], a: &[u32; 4], b: u64, accumulate: bool);
    /// D[64×256] (+)= A·B, A from registers.
    unsafe fn rs_m64n256k16<const TB: u32>(acc: &mut [f32; 128], a: &[u32; 4], b: u64, accumulate: bool);

    /// D[64×N] (+)= A·B, both from shared memory, N = 2·R.
    #[inline(always)]
    unsafe fn ss<const R: usize, const TA: u32, const TB: u32>(acc: &mut [f32; R], a: u64, b: u64, accumulate: bool) {
        match R {
            8 => Self::ss_m64n16k16::<TA, TB>(fit(acc), a, b, accumulate),
            16 => Self::ss_m64n32k16::<TA, TB>(fit(acc), a, b, accumulate),
            32 => Self::ss_m64n64k16::<TA, TB>(fit(acc), a, b, accumulate),
            40 => Self::ss_m64n80k16::<TA, TB>(fit(acc), a, b, accumulate),
            48 => Self::ss_m64n96k16::<TA, TB>(fit(acc), a, b, accumulate),
            56 => Self::ss_m64n112k16::<TA, TB>(fit(acc), a, b, accumulate),
            64 => Self::ss_m64n128k16::<TA, TB>(fit(acc), a, b, accumulate),
            _ => unreachable(),
        }
    }

    /// D[64×N] (+)= A·B, A from registers, N = 2·R.
    #[inline(always)]
    unsafe fn rs<const R: usize, const TB: u32>(acc: &mut [f32; R], a: &[u32; 4], b: u64, accumulate: bool) {
        match R {
            16 => Self::rs_m64n32k16::<TB>(fit(acc), a, b, accumulate),
            32 => Self::rs_m64n64k16::<TB>(fit(acc), a, b, accumulate),
            48 => Self::rs_m64n96k16::<TB>(fit(acc), a, b, accumulate),
            64 => Self::rs_m64n128k16::<TB>(fit(acc), a, b, accumulate),
            96 => Self::rs_m64n192k16::<TB>(fit(acc), a, b, accumulate),
            128 => Self::rs_m64n256k16::<TB>(fit(acc), a, b, accumulate),
            _ => unreachable(),
        }
    }
}

/// The accumulator as the array type of the shape `R` selected (the same type: `R == S` in the taken
/// arm, the others are compiled out).
#[inline(always)]
fn fit<const R: usize, const S: usize>(acc: &mut [f32; R]) -> &mut [f32; S] {
    (&mut acc[..]).try_into().unwrap_or_else(|_| unreachable())
}

/// A shape no `wgmma` function has: a kernel instantiated with an unsupported tile traps.
#[inline(always)]
fn unreachable() -> ! {
    // SAFETY: `trap` ends the kernel with an error.
    unsafe { core::arch::asm!("trap;", options(noreturn)) }
}

/// One `ss` shape: accumulator registers are operands 0..R, then A's and B's descriptors and the
/// accumulate flag at the three indices given.
macro_rules! ss_shape {
    ($ptx:literal, $name:ident, $shape:literal, $r:literal, [$i0:literal $($i:literal)*], $a:literal, $b:literal, $p:literal) => {
        #[inline(always)]
        unsafe fn $name<const TA: u32, const TB: u32>(acc: &mut [f32; $r], a: u64, b: u64, accumulate: bool) {
            core::arch::asm!(
                "{{",
                ".reg .pred p;",
                concat!("setp.ne.b32 p, {", $p, "}, 0;"),
                concat!("wgmma.mma_async.sync.aligned.", $shape, ".f32.", $ptx, ".", $ptx, " {{{", $i0, "}" $(, ", {", $i, "}")*,
                    "}}, {", $a, "}, {", $b, "}, p, 1, 1, {ta}, {tb};"),
                "}}",
                inout(reg32) acc[$i0], $(inout(reg32) acc[$i],)*
                in(reg64) a, in(reg64) b, in(reg32) accumulate as u32,
                ta = const TA, tb = const TB,
                options(nostack)
            );
        }
    };
}

/// One `rs` shape: accumulator registers 0..R, then A's four registers, B's descriptor and the
/// accumulate flag.
macro_rules! rs_shape {
    ($ptx:literal, $name:ident, $shape:literal, $r:literal, [$i0:literal $($i:literal)*], $a0:literal, $a1:literal, $a2:literal, $a3:literal, $b:literal, $p:literal) => {
        #[inline(always)]
        unsafe fn $name<const TB: u32>(acc: &mut [f32; $r], a: &[u32; 4], b: u64, accumulate: bool) {
            core::arch::asm!(
                "{{",
                ".reg .pred p;",
                concat!("setp.ne.b32 p, {", $p, "}, 0;"),
                concat!("wgmma.mma_async.sync.aligned.", $shape, ".f32.", $ptx, ".", $ptx, " {{{", $i0, "}" $(, ", {", $i, "}")*,
                    "}}, {{{", $a0, "}, {", $a1, "}, {", $a2, "}, {", $a3, "}}}, {", $b, "}, p, 1, 1, {tb};"),
                "}}",
                inout(reg32) acc[$i0], $(inout(reg32) acc[$i],)*
                in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
                in(reg64) b, in(reg32) accumulate as u32,
                tb = const TB,
                options(nostack)
            );
        }
    };
}

macro_rules! wgmma_impl {
    ($t:ty, $ptx:literal) => {
        impl WgmmaElem for $t {
            ss_shape!($ptx, ss_m64n16k16, "m64n16k16", 8, [0 1 2 3 4 5 6 7], 8, 9, 10);
            ss_shape!($ptx, ss_m64n32k16, "m64n32k16", 16, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15], 16, 17, 18);
            ss_shape!($ptx, ss_m64n64k16, "m64n64k16", 32, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31], 32, 33, 34);
            ss_shape!($ptx, ss_m64n80k16, "m64n80k16", 40, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39], 40, 41, 42);
            ss_shape!($ptx, ss_m64n96k16, "m64n96k16", 48, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47], 48, 49, 50);
            ss_shape!($ptx, ss_m64n112k16, "m64n112k16", 56, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55], 56, 57, 58);
            ss_shape!($ptx, ss_m64n128k16, "m64n128k16", 64, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63], 64, 65, 66);
            rs_shape!($ptx, rs_m64n32k16, "m64n32k16", 16, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15], 16, 17, 18, 19, 20, 21);
            rs_shape!($ptx, rs_m64n64k16, "m64n64k16", 32, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31], 32, 33, 34, 35, 36, 37);
            rs_shape!($ptx, rs_m64n96k16, "m64n96k16", 48, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47], 48, 49, 50, 51, 52, 53);
            rs_shape!($ptx, rs_m64n128k16, "m64n128k16", 64, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63], 64, 65, 66, 67, 68, 69);
            rs_shape!($ptx, rs_m64n192k16, "m64n192k16", 96, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95], 96, 97, 98, 99, 100, 101);
            rs_shape!($ptx, rs_m64n256k16, "m64n256k16", 128, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127], 128, 129, 130, 131, 132, 133);
        }
    };
}

wgmma_impl!(Bf16, "bf16");
wgmma_impl!(F16, "f16");

/// FP8 (e4m3) products, f32 accumulation: `wgmma.mma_async...m64nNk32.f32.e4m3.e4m3`. 8-bit operands
/// have no transpose flags: both are K-major (K along the 128-byte rows of the swizzle, 32 bytes per
/// k32 step, as a 16-bit operand's k16 step). A register A operand (`rs`) is the 8-bit fragment of
/// `m64nNk32` (CUTLASS's `ALayout_64x32`): register `r` of lane (g, t) of warp j holds row
/// `16j + g + 8·(r % 2)`, columns `4t + 16·(r / 2)` to `+ 3`, one byte each, lowest byte first.
///
/// Safety of every product: as [`WgmmaElem`]'s.
pub mod e4m3 {
    use super::{fit, unreachable};

    /// D[64×N] (+)= A·B, both from shared memory, N = 2·R (the shapes the FP8 forward uses).
    ///
    /// # Safety
    /// As [`super::WgmmaElem`]'s products.
    #[inline(always)]
    pub unsafe fn ss<const R: usize>(acc: &mut [f32; R], a: u64, b: u64, accumulate: bool) {
        match R {
            32 => ss_m64n64k32(fit(acc), a, b, accumulate),
            64 => ss_m64n128k32(fit(acc), a, b, accumulate),
            _ => unreachable(),
        }
    }

    /// D[64×N] (+)= A·B, A from registers, N = 2·R.
    ///
    /// # Safety
    /// As [`super::WgmmaElem`]'s products.
    #[inline(always)]
    pub unsafe fn rs<const R: usize>(acc: &mut [f32; R], a: &[u32; 4], b: u64, accumulate: bool) {
        match R {
            32 => rs_m64n64k32(fit(acc), a, b, accumulate),
            64 => rs_m64n128k32(fit(acc), a, b, accumulate),
            128 => rs_m64n256k32(fit(acc), a, b, accumulate),
            _ => unreachable(),
        }
    }

    macro_rules! e4m3_ss {
        ($name:ident, $shape:literal, $r:literal, [$i0:literal $($i:literal)*], $a:literal, $b:literal, $p:literal) => {
            #[inline(always)]
            unsafe fn $name(acc: &mut [f32; $r], a: u64, b: u64, accumulate: bool) {
                core::arch::asm!(
                    "{{",
                    ".reg .pred p;",
                    concat!("setp.ne.b32 p, {", $p, "}, 0;"),
                    concat!("wgmma.mma_async.sync.aligned.", $shape, ".f32.e4m3.e4m3 {{{", $i0, "}" $(, ", {", $i, "}")*,
                        "}}, {", $a, "}, {", $b, "}, p, 1, 1;"),
                    "}}",
                    inout(reg32) acc[$i0], $(inout(reg32) acc[$i],)*
                    in(reg64) a, in(reg64) b, in(reg32) accumulate as u32,
                    options(nostack)
                );
            }
        };
    }

    macro_rules! e4m3_rs {
        ($name:ident, $shape:literal, $r:literal, [$i0:literal $($i:literal)*], $a0:literal, $a1:literal, $a2:literal, $a3:literal, $b:literal, $p:literal) => {
            #[inline(always)]
            unsafe fn $name(acc: &mut [f32; $r], a: &[u32; 4], b: u64, accumulate: bool) {
                core::arch::asm!(
                    "{{",
                    ".reg .pred p;",
                    concat!("setp.ne.b32 p, {", $p, "}, 0;"),
                    concat!("wgmma.mma_async.sync.aligned.", $shape, ".f32.e4m3.e4m3 {{{", $i0, "}" $(, ", {", $i, "}")*,
                        "}}, {{{", $a0, "}, {", $a1, "}, {", $a2, "}, {", $a3, "}}}, {", $b, "}, p, 1, 1;"),
                    "}}",
                    inout(reg32) acc[$i0], $(inout(reg32) acc[$i],)*
                    in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
                    in(reg64) b, in(reg32) accumulate as u32,
                    options(nostack)
                );
            }
        };
    }

    e4m3_ss!(ss_m64n64k32, "m64n64k32", 32, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31], 32, 33, 34);
    e4m3_rs!(rs_m64n64k32, "m64n64k32", 32, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31], 32, 33, 34, 35, 36, 37);
    e4m3_ss!(ss_m64n128k32, "m64n128k32", 64, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63], 64, 65, 66);
    e4m3_rs!(rs_m64n128k32, "m64n128k32", 64, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63], 64, 65, 66, 67, 68, 69);
    e4m3_rs!(rs_m64n256k32, "m64n256k32", 128, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127], 128, 129, 130, 131, 132, 133);
}
