//! Row softmax for the standard-attention baseline (the unfused path: S = QK^T by cuBLAS, this kernel,
//! then PV by cuBLAS). One warp per row; the row is read twice: an online max/sum pass, then a write pass.

use crate::abi::{RowSoftmaxBwdParams, RowSoftmaxParams};
use crate::ptx::elem::{Bf16, Elem16, F16};
use crate::ptx::{sreg, warp};

const WARPS_PER_BLOCK: u32 = 8;

#[inline(always)]
unsafe fn row_softmax<E: Elem16>(p: &RowSoftmaxParams) {
    let row = sreg::block_x() * WARPS_PER_BLOCK + sreg::warp();
    if row >= p.rows {
        return;
    }
    let lane = sreg::lane();
    let cols = p.mask.seqlen_k as usize;
    let scores = (p.scores as *const u16).add(row as usize * cols);
    let probs = (p.probs as *mut u16).add(row as usize * cols);
    // The row's visible keys, `[first, visible)`: the mask of the call (causal, window).
    let (first, visible) = p.mask.key_range(row.checked_rem(p.mask.seqlen_q).unwrap_or(0));
    let (first, visible) = (first as usize, visible as usize);

    // Pass 1: each lane keeps its own running max and sum over its columns, merged at the end.
    let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
    let mut j = first + lane as usize;
    while j < visible {
        let x = E::to_f32(*scores.add(j));
        if x > m {
            l = l * exp(m - x) + 1.0;
            m = x;
        } else {
            l += exp(x - m);
        }
        j += 32;
    }
    let row_max = warp::warp_max(m);
    let row_sum = warp::warp_sum(if m == f32::NEG_INFINITY { 0.0 } else { l * exp(m - row_max) });

    // Pass 2: probabilities (0 for masked keys and for fully masked rows).
    let inv = if row_sum > 0.0 { 1.0 / row_sum } else { 0.0 };
    let mut j = lane as usize;
    while j < cols {
        let pr = if (first..visible).contains(&j) { exp(E::to_f32(*scores.add(j)) - row_max) * inv } else { 0.0 };
        *probs.add(j) = E::from_f32(pr);
        j += 32;
    }
    if lane == 0 {
        let lse = if row_sum > 0.0 { row_max + ln(row_sum) } else { f32::NEG_INFINITY };
        *(p.lse as *mut f32).add(row as usize) = lse;
    }
}

/// dS of one row (the backward of the row softmax): delta from the row's O and dO, then one pass over
/// P and dP. dP is read before dS is written at the same index, so `ds` may alias `dp`.
#[inline(always)]
unsafe fn row_softmax_bwd<E: Elem16>(p: &RowSoftmaxBwdParams) {
    let row = sreg::block_x() * WARPS_PER_BLOCK + sreg::warp();
    if row >= p.rows {
        return;
    }
    let lane = sreg::lane() as usize;
    let i = (row % p.seqlen_q) as u64;
    let bh = row / p.seqlen_q;
    let (b, h) = ((bh / p.heads_q) as u64, (bh % p.heads_q) as u64);
    let o = (p.o as *const u16).add((b * p.o_strides[0] + i * p.o_strides[1] + h * p.o_strides[2]) as usize);
    let d_o = (p.d_o as *const u16).add((b * p.d_o_strides[0] + i * p.d_o_strides[1] + h * p.d_o_strides[2]) as usize);
    let mut partial = 0.0f32;
    let mut c = lane;
    while c < p.head_dim as usize {
        partial += E::to_f32(*o.add(c)) * E::to_f32(*d_o.add(c));
        c += 32;
    }
    let delta = warp::warp_sum(partial);

    let cols = p.cols as usize;
    let offset = row as usize * cols;
    let probs = (p.probs as *const u16).add(offset);
    let dp = (p.dp as *const u16).add(offset);
    let ds = (p.ds as *mut u16).add(offset);
    let mut j = lane;
    while j < cols {
        let pr = E::to_f32(*probs.add(j));
        let g = E::to_f32(*dp.add(j));
        *ds.add(j) = E::from_f32(p.scale * pr * (g - delta));
        j += 32;
    }
}

#[inline(always)]
fn exp(x: f32) -> f32 {
    exp2(x * core::f32::consts::LOG2_E)
}

#[inline(always)]
fn exp2(x: f32) -> f32 {
    let out: f32;
    // SAFETY: pure; ex2.approx.ftz: 2 ulp, -inf -> 0.
    unsafe {
        core::arch::asm!("ex2.approx.ftz.f32 {0}, {1};", out(reg32) out, in(reg32) x, options(pure, nomem, nostack))
    };
    out
}

#[inline(always)]
fn ln(x: f32) -> f32 {
    let out: f32;
    // SAFETY: pure.
    unsafe {
        core::arch::asm!("lg2.approx.ftz.f32 {0}, {1};", out(reg32) out, in(reg32) x, options(pure, nomem, nostack))
    };
    out * core::f32::consts::LN_2
}

/// # Safety
/// `p` describes valid device buffers of `rows * cols` elements (scores, probs) and `rows` f32 (lse);
/// launch with `WARPS_PER_BLOCK * 32` threads and `ceil(rows / WARPS_PER_BLOCK)` blocks.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn row_softmax_bf16(p: RowSoftmaxParams) {
    row_softmax::<Bf16>(&p)
}

/// # Safety
/// As `row_softmax_bf16`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn row_softmax_f16(p: RowSoftmaxParams) {
    row_softmax::<F16>(&p)
}

/// # Safety
/// `p` describes valid device buffers of `rows * cols` elements (probs, dp, ds) and O, dO covering every
/// row; launch with `WARPS_PER_BLOCK * 32` threads and `ceil(rows / WARPS_PER_BLOCK)` blocks.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn row_softmax_bwd_bf16(p: RowSoftmaxBwdParams) {
    row_softmax_bwd::<Bf16>(&p)
}

/// # Safety
/// As `row_softmax_bwd_bf16`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn row_softmax_bwd_f16(p: RowSoftmaxBwdParams) {
    row_softmax_bwd::<F16>(&p)
}
