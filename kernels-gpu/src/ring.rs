//! The two small kernels of context-parallel (ring) attention, as `abi::RingMergeParams` and
//! `abi::RingAccumulateParams` document: the forward's merge of each ring step's partial O and LSE into
//! the running result, and the backward's sums of each step's partial gradients.
//!
//! Both are memory-bound and run once per ring step, next to a fused attention kernel that takes
//! seconds at the lengths ring attention is for; they are written for being exact and reproducible
//! (every sum in a fixed order) rather than for the last GB/s.

use crate::abi::{RingAccumulateParams, RingMergeParams};
use crate::ptx::elem::{Bf16, Elem16, F16};
use crate::ptx::math::{exp2, log2};
use crate::ptx::{gmem, sreg};
use core::f32::consts::{LN_2, LOG2_E};

const WARPS_PER_BLOCK: u32 = 8;
/// Column pairs per lane at the largest head dim (256 = 64 columns per pass · 4).
const PAIRS: usize = 4;
/// Threads per block of the gradient sums.
const ACCUMULATE_THREADS: u32 = 256;

/// `exp(x − y)` for natural-log values, 0 when `x` is `-inf` (a term without keys).
#[inline(always)]
fn weight(x: f32, y: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        0.0
    } else {
        exp2((x - y) * LOG2_E)
    }
}

#[inline(always)]
unsafe fn merge<E: Elem16>(p: &RingMergeParams) {
    let row = sreg::block_x() * WARPS_PER_BLOCK + sreg::warp();
    if row >= p.tokens * p.heads {
        return;
    }
    let lane = sreg::lane() as usize;
    let (token, head) = (row / p.heads, row % p.heads);
    let lse_at = (head * p.tokens + token) as usize;
    let d = p.head_dim_v as usize;
    let first = p.first != 0;
    let last = p.o != 0;
    let lse_accum = if first { f32::NEG_INFINITY } else { *(p.lse_accum as *const f32).add(lse_at) };
    // No step (`o_step` 0): the last merge of a rank whose last step had no work.
    let lse_step = if p.o_step == 0 { f32::NEG_INFINITY } else { *(p.lse_step as *const f32).add(lse_at) };
    let sink = if last && p.sinks != 0 { *(p.sinks as *const f32).add(head as usize) } else { f32::NEG_INFINITY };

    let max = lse_accum.max(lse_step).max(sink);
    let (mut w_accum, mut w_step, mut lse) = (0.0f32, 0.0f32, f32::NEG_INFINITY);
    if max != f32::NEG_INFINITY {
        lse = max + log2(weight(lse_accum, max) + weight(lse_step, max) + weight(sink, max)) * LN_2;
        w_accum = weight(lse_accum, lse);
        w_step = weight(lse_step, lse);
    }

    let pairs_at = row as usize * d / 2;
    let accum = (p.o_accum as *mut [f32; 2]).add(pairs_at);
    let step = (p.o_step as *const u32).add(pairs_at);
    let mut acc = [[0.0f32; 2]; PAIRS];
    for (j, a) in acc.iter_mut().enumerate() {
        let pair = lane + 32 * j;
        if 2 * pair < d {
            // Terms of weight 0 are skipped, not multiplied: the running O is uninitialised before
            // the first step.
            if w_accum != 0.0 {
                let v = *accum.add(pair);
                a[0] = w_accum * v[0];
                a[1] = w_accum * v[1];
            }
            if w_step != 0.0 {
                let v = *step.add(pair);
                a[0] += w_step * E::to_f32(v as u16);
                a[1] += w_step * E::to_f32((v >> 16) as u16);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let pair = lane + 32 * j;
        if 2 * pair < d {
            if last {
                *(p.o as *mut u32).add(pairs_at + pair) = E::pack2(a[0], a[1]);
            } else {
                *accum.add(pair) = *a;
            }
        }
    }
    if lane == 0 {
        *(p.lse_accum as *mut f32).add(lse_at) = lse;
    }
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct V4([u32; 4]);

#[inline(always)]
unsafe fn accumulate<E: Elem16>(p: &RingAccumulateParams) {
    let threads = sreg::grid_dim_x() as u64 * ACCUMULATE_THREADS as u64;
    let mut chunk = sreg::block_x() as u64 * ACCUMULATE_THREADS as u64 + sreg::thread_x() as u64;
    while chunk < p.n / 8 {
        let at = chunk as usize * 8;
        let mut v = [0.0f32; 8];
        if p.first == 0 {
            let acc = p.accum as *const V4;
            let (lo, hi) = ((*acc.add(2 * chunk as usize)).0, (*acc.add(2 * chunk as usize + 1)).0);
            for j in 0..4 {
                v[j] = f32::from_bits(lo[j]);
                v[j + 4] = f32::from_bits(hi[j]);
            }
        }
        if p.step != 0 {
            let s = (*(p.step as *const V4).add(chunk as usize)).0;
            for j in 0..4 {
                v[2 * j] += E::to_f32(s[j] as u16);
                v[2 * j + 1] += E::to_f32((s[j] >> 16) as u16);
            }
        }
        if p.out != 0 {
            let packed = [E::pack2(v[0], v[1]), E::pack2(v[2], v[3]), E::pack2(v[4], v[5]), E::pack2(v[6], v[7])];
            gmem::store_v4((p.out as *mut u16).add(at), packed);
        } else {
            let acc = p.accum as *mut V4;
            *acc.add(2 * chunk as usize) = V4([v[0].to_bits(), v[1].to_bits(), v[2].to_bits(), v[3].to_bits()]);
            *acc.add(2 * chunk as usize + 1) = V4([v[4].to_bits(), v[5].to_bits(), v[6].to_bits(), v[7].to_bits()]);
        }
        chunk += threads;
    }
}

/// # Safety
/// Launched as `abi::RingMergeParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn ring_merge_bf16(p: RingMergeParams) {
    merge::<Bf16>(&p)
}

/// # Safety
/// Launched as `abi::RingMergeParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn ring_merge_f16(p: RingMergeParams) {
    merge::<F16>(&p)
}

/// # Safety
/// Launched as `abi::RingAccumulateParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn ring_accumulate_bf16(p: RingAccumulateParams) {
    accumulate::<Bf16>(&p)
}

/// # Safety
/// Launched as `abi::RingAccumulateParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn ring_accumulate_f16(p: RingAccumulateParams) {
    accumulate::<F16>(&p)
}
