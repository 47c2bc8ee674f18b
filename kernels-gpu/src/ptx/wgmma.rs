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

/// An element type `wgmma` multiplies, f32 accumulation. `TA`/`TB` = 1 reads that operand MN-major
/// (transposed), 0 K-major; `accumulate` false overwrites the accumulator.
pub trait WgmmaElem: Elem16 {
    /// D[64×64] (+)= A·B, both from shared memory.
    ///
    /// # Safety
    /// Warpgroup-converged; the descriptors describe loaded shared memory.
    unsafe fn ss_m64n64k16<const TA: u32, const TB: u32>(acc: &mut [f32; 32], a: u64, b: u64, accumulate: bool);
    /// D[64×128] (+)= A·B, both from shared memory.
    ///
    /// # Safety
    /// As `ss_m64n64k16`.
    unsafe fn ss_m64n128k16<const TA: u32, const TB: u32>(acc: &mut [f32; 64], a: u64, b: u64, accumulate: bool);
    /// D[64×128] (+)= A·B, A from registers.
    ///
    /// # Safety
    /// As `ss_m64n64k16`.
    unsafe fn rs_m64n128k16<const TB: u32>(acc: &mut [f32; 64], a: &[u32; 4], b: u64, accumulate: bool);
}

/// `asm!` with the 64 accumulator registers `acc[0..64]` as operands {0}..{63} (in, out), followed by
/// the remaining operands: the m64n128 shapes share this list.
macro_rules! asm_acc64 {
    ([$($template:expr),* $(,)?], $acc:ident, $($rest:tt)*) => {
        core::arch::asm!(
            $($template),*,
            inout(reg32) $acc[0], inout(reg32) $acc[1], inout(reg32) $acc[2], inout(reg32) $acc[3],
            inout(reg32) $acc[4], inout(reg32) $acc[5], inout(reg32) $acc[6], inout(reg32) $acc[7],
            inout(reg32) $acc[8], inout(reg32) $acc[9], inout(reg32) $acc[10], inout(reg32) $acc[11],
            inout(reg32) $acc[12], inout(reg32) $acc[13], inout(reg32) $acc[14], inout(reg32) $acc[15],
            inout(reg32) $acc[16], inout(reg32) $acc[17], inout(reg32) $acc[18], inout(reg32) $acc[19],
            inout(reg32) $acc[20], inout(reg32) $acc[21], inout(reg32) $acc[22], inout(reg32) $acc[23],
            inout(reg32) $acc[24], inout(reg32) $acc[25], inout(reg32) $acc[26], inout(reg32) $acc[27],
            inout(reg32) $acc[28], inout(reg32) $acc[29], inout(reg32) $acc[30], inout(reg32) $acc[31],
            inout(reg32) $acc[32], inout(reg32) $acc[33], inout(reg32) $acc[34], inout(reg32) $acc[35],
            inout(reg32) $acc[36], inout(reg32) $acc[37], inout(reg32) $acc[38], inout(reg32) $acc[39],
            inout(reg32) $acc[40], inout(reg32) $acc[41], inout(reg32) $acc[42], inout(reg32) $acc[43],
            inout(reg32) $acc[44], inout(reg32) $acc[45], inout(reg32) $acc[46], inout(reg32) $acc[47],
            inout(reg32) $acc[48], inout(reg32) $acc[49], inout(reg32) $acc[50], inout(reg32) $acc[51],
            inout(reg32) $acc[52], inout(reg32) $acc[53], inout(reg32) $acc[54], inout(reg32) $acc[55],
            inout(reg32) $acc[56], inout(reg32) $acc[57], inout(reg32) $acc[58], inout(reg32) $acc[59],
            inout(reg32) $acc[60], inout(reg32) $acc[61], inout(reg32) $acc[62], inout(reg32) $acc[63],
            $($rest)*
        )
    };
}

macro_rules! wgmma_impl {
    ($t:ty, $ptx:literal) => {
        impl WgmmaElem for $t {

            #[inline(always)]
            unsafe fn ss_m64n64k16<const TA: u32, const TB: u32>(acc: &mut [f32; 32], a: u64, b: u64, accumulate: bool) {
                core::arch::asm!(
                    "{{",
                    ".reg .pred p;",
                    "setp.ne.b32 p, {34}, 0;",
                    concat!("wgmma.mma_async.sync.aligned.m64n64k16.f32.", $ptx, ".", $ptx,
                        " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {32}, {33}, p, 1, 1, {ta}, {tb};"),
                    "}}",
                inout(reg32) acc[0], inout(reg32) acc[1], inout(reg32) acc[2], inout(reg32) acc[3],
                inout(reg32) acc[4], inout(reg32) acc[5], inout(reg32) acc[6], inout(reg32) acc[7],
                inout(reg32) acc[8], inout(reg32) acc[9], inout(reg32) acc[10], inout(reg32) acc[11],
                inout(reg32) acc[12], inout(reg32) acc[13], inout(reg32) acc[14], inout(reg32) acc[15],
                inout(reg32) acc[16], inout(reg32) acc[17], inout(reg32) acc[18], inout(reg32) acc[19],
                inout(reg32) acc[20], inout(reg32) acc[21], inout(reg32) acc[22], inout(reg32) acc[23],
                inout(reg32) acc[24], inout(reg32) acc[25], inout(reg32) acc[26], inout(reg32) acc[27],
                inout(reg32) acc[28], inout(reg32) acc[29], inout(reg32) acc[30], inout(reg32) acc[31],
                in(reg64) a, in(reg64) b, in(reg32) accumulate as u32,
                ta = const TA, tb = const TB,
                options(nostack)
                );
            }
            #[inline(always)]
            unsafe fn ss_m64n128k16<const TA: u32, const TB: u32>(acc: &mut [f32; 64], a: u64, b: u64, accumulate: bool) {
                asm_acc64!(
                    [
                    "{{",
                    ".reg .pred p;",
                    "setp.ne.b32 p, {66}, 0;",
                    concat!("wgmma.mma_async.sync.aligned.m64n128k16.f32.", $ptx, ".", $ptx,
                        " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {64}, {65}, p, 1, 1, {ta}, {tb};"),
                    "}}"],
                acc,
                in(reg64) a, in(reg64) b, in(reg32) accumulate as u32,
                ta = const TA, tb = const TB,
                options(nostack)
                );
            }
            #[inline(always)]
            unsafe fn rs_m64n128k16<const TB: u32>(acc: &mut [f32; 64], a: &[u32; 4], b: u64, accumulate: bool) {
                asm_acc64!(
                    [
                    "{{",
                    ".reg .pred p;",
                    "setp.ne.b32 p, {69}, 0;",
                    concat!("wgmma.mma_async.sync.aligned.m64n128k16.f32.", $ptx, ".", $ptx,
                        " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {{{64}, {65}, {66}, {67}}}, {68}, p, 1, 1, {tb};"),
                    "}}"],
                acc,
                in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
                in(reg64) b, in(reg32) accumulate as u32,
                tb = const TB,
                options(nostack)
                );
            }
        }
    };
}

wgmma_impl!(Bf16, "bf16");
wgmma_impl!(F16, "f16");
