//! Conversion of bf16/f16 tensors to e4m3 for the FP8 forward (`abi::Fp8QuantizeParams`), in two
//! launches over the same grid: the amax of each (batch, K/V head) group, then the scaled, rounded
//! copy and the group's descale factor. sm_90a PTX only (the e4m3 conversion needs sm_89 or newer).
//!
//! The amax is kept as the bits of |x| (an unsigned maximum orders non-negative floats as their
//! values, and puts NaN above infinity above every finite value, so a NaN or infinite input shows in
//! the group's descale, which the host checks). The group's scale and descale come from
//! `abi::fp8_group_scales`, which the host's reference quantizer (`ironflash::fp8`) calls too: the
//! same rounded f32 operations, so the same bits.
//!
//! With `rotate`, both passes see each row rotated (`rotation`): a thread rotates its own 8 elements,
//! then the row's `head_dim / 8` threads, consecutive lanes of one warp, exchange values by shuffles
//! for the wider strides. The threads of a row take their steps together: the grid's stride and every
//! CTA's first vector are multiples of 256, which `head_dim / 8` (at most 32) divides.

use crate::abi::{fp8_group_scales, Fp8QuantizeParams};
use crate::ptx::elem::{pack4_e4m3, Bf16, Elem16, F16};
use crate::ptx::sreg;
use crate::rotation;

/// Elements each thread takes per step: one 16-byte load of the input.
const VEC: u32 = 8;

/// Calls `f(the vector's 8 values, rotated if `p.rotate`, output element offset)` for every
/// 8-element vector of this CTA's share of its group (grid x: the group `b · heads_kv + h`, grid y: the
/// CTA's share).
#[inline(always)]
unsafe fn for_each_vector<E: Elem16>(p: &Fp8QuantizeParams, mut f: impl FnMut([f32; 8], usize)) {
    let group = sreg::block_x();
    let (b, kv_head) = (group / p.heads_kv, group % p.heads_kv);
    let per_row = p.group * (p.head_dim / VEC);
    let total = p.seqlen * per_row;
    let mut i = sreg::block_y() * sreg::block_dim_x() + sreg::thread_x();
    let step = sreg::grid_dim_y() * sreg::block_dim_x();
    while i < total {
        let (s, rest) = (i / per_row, i % per_row);
        let (h, d) = (kv_head * p.group + rest / (p.head_dim / VEC), (rest % (p.head_dim / VEC)) * VEC);
        let x = (p.x as *const u16).add(
            (b as u64 * p.x_strides[0] + s as u64 * p.x_strides[1] + h as u64 * p.x_strides[2] + d as u64) as usize,
        );
        let out = ((b as usize * p.seqlen as usize + s as usize) * p.heads as usize + h as usize) * p.head_dim as usize
            + d as usize;
        let mut v = load8::<E>(x as *const [u32; 4]);
        if p.rotate != 0 {
            rotate(p, d, &mut v);
        }
        f(v, out);
        i += step;
    }
}

/// The 8 elements of a 16-byte input vector as f32.
#[inline(always)]
unsafe fn load8<E: Elem16>(x: *const [u32; 4]) -> [f32; 8] {
    let w = *x;
    core::array::from_fn(|e| E::to_f32((w[e / 2] >> (16 * (e % 2))) as u16))
}

/// `rotation::rotate_row`'s share of this thread: the 8 elements of its row from column `first`;
/// the row's other vectors are in the neighbouring lanes (`head_dim / 8` of them, aligned).
#[inline(always)]
fn rotate(p: &Fp8QuantizeParams, first: u32, v: &mut [f32; 8]) {
    rotation::signed_hadamard8(p.rotation_seed, first, v);
    let lanes = p.head_dim / VEC;
    let members = if lanes == 32 { u32::MAX } else { ((1 << lanes) - 1) << (sreg::lane() & !(lanes - 1)) };
    let mut h = 1;
    while h < lanes {
        let upper = sreg::lane() & h != 0;
        for x in v.iter_mut() {
            let theirs = shfl_xor_f32_among(*x, h, members);
            // The pair (a, b) of lanes (lower, upper) becomes (a + b, a - b).
            *x = if upper { rotation::butterfly(theirs, *x).1 } else { rotation::butterfly(*x, theirs).0 };
        }
        h *= 2;
    }
    let s = rotation::norm(p.head_dim);
    for x in v.iter_mut() {
        *x *= s;
    }
}

#[inline(always)]
unsafe fn amax<E: Elem16>(p: &Fp8QuantizeParams) {
    let mut m = 0u32;
    for_each_vector::<E>(p, |v, _| {
        for v in v {
            m = m.max(v.to_bits() & 0x7fff_ffff);
        }
    });
    for mask in [16, 8, 4, 2, 1] {
        m = m.max(shfl_xor_u32(m, mask));
    }
    if sreg::lane() == 0 {
        let at = (p.amax as *mut u32).add(sreg::block_x() as usize);
        core::arch::asm!("red.global.max.u32 [{0}], {1};", in(reg64) at, in(reg32) m, options(nostack));
    }
}

#[inline(always)]
unsafe fn quantize<E: Elem16>(p: &Fp8QuantizeParams) {
    let group = sreg::block_x();
    let (scale, descale) = fp8_group_scales(f32::from_bits(*(p.amax as *const u32).add(group as usize)));
    for_each_vector::<E>(p, |v, out| {
        let v = v.map(|v| v * scale);
        let packed = [pack4_e4m3([v[0], v[1], v[2], v[3]]), pack4_e4m3([v[4], v[5], v[6], v[7]])];
        *((p.out as *mut u8).add(out) as *mut [u32; 2]) = packed;
    });
    if sreg::block_y() == 0 && sreg::thread_x() == 0 {
        *(p.descale as *mut f32).add(group as usize) = descale;
    }
}

/// `shfl.sync.bfly.b32` among the lanes of `members` (the caller's lane and its partner among them).
#[inline(always)]
fn shfl_xor_f32_among(x: f32, mask: u32, members: u32) -> f32 {
    let out: f32;
    // SAFETY: every lane of `members` runs the same call together (the lanes of one row).
    unsafe {
        core::arch::asm!("shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, {3};", out(reg32) out, in(reg32) x, in(reg32) mask, in(reg32) members, options(nostack))
    };
    out
}

/// `shfl.sync.bfly.b32` over the full warp.
#[inline(always)]
fn shfl_xor_u32(x: u32, mask: u32) -> u32 {
    let out: u32;
    // SAFETY: a full-warp shuffle; every caller runs it warp-converged.
    unsafe {
        core::arch::asm!("shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;", out(reg32) out, in(reg32) x, in(reg32) mask, options(nostack))
    };
    out
}

macro_rules! quant_kernels {
    ($($amax:ident, $quantize:ident, $elem:ty;)*) => {$(
        /// # Safety
        /// Launched as `abi::Fp8QuantizeParams` documents (the amax pass, `amax` zeroed).
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $amax(p: Fp8QuantizeParams) {
            amax::<$elem>(&p)
        }

        /// # Safety
        /// Launched as `abi::Fp8QuantizeParams` documents, after the amax pass on the same stream.
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $quantize(p: Fp8QuantizeParams) {
            quantize::<$elem>(&p)
        }
    )*};
}

quant_kernels! {
    fp8_amax_bf16, fp8_quantize_bf16, Bf16;
    fp8_amax_f16, fp8_quantize_f16, F16;
}
