//! The split-KV combine: merges the per-split partial outputs of the forward (`num_splits > 1`) into O
//! and the LSE, as `abi::FwdCombineParams` documents.
//!
//! One warp per row; every lane walks the same splits in the same order (the max, then the sum, then
//! the weighted O), so the result does not depend on scheduling. A lane owns the column pairs
//! `2·lane + 64·j`: 8-byte f32 reads and 4-byte element writes, contiguous across the warp.
//!
//! On Hopper the host launches it as a programmatic dependent of the split kernel (`ptx::griddep`), so
//! that its launch overlaps the split kernel's tail; it waits for the split kernel's results first.

use crate::abi::FwdCombineParams;
use crate::ptx::elem::{Bf16, Elem16, F16};
use crate::ptx::math::{exp2, log2};
use crate::ptx::{griddep, sreg};

const WARPS_PER_BLOCK: u32 = 8;
/// Column pairs per lane at the largest head dim (256 = 64 columns per pass · 4).
const PAIRS: usize = 4;

#[inline(always)]
unsafe fn combine<E: Elem16>(p: &FwdCombineParams) {
    // Launched as the split kernel's dependent on Hopper (`griddep`): its partial outputs are complete
    // and visible past this.
    griddep::wait();
    let row = sreg::block_x() * WARPS_PER_BLOCK + sreg::warp();
    if row >= p.rows {
        return;
    }
    let lane = sreg::lane() as usize;
    let (rows, d, splits) = (p.rows as usize, p.head_dim_v as usize, p.num_splits as usize);
    let lse_of = |s: usize| *(p.lse_accum as *const f32).add(s * rows + row as usize);

    let (sq, hq) = (p.seqlen_q, p.heads_q);
    let (i, head, batch) = (row % sq, (row / sq) % hq, row / (sq * hq));
    // The row's sink is one more term of the denominator, with no value (`-inf`: none).
    let sink = if p.sinks == 0 { f32::NEG_INFINITY } else { *(p.sinks as *const f32).add(head as usize) };

    // Natural-log LSEs; weights in base 2 so that each is one ex2.
    let mut max = sink;
    for s in 0..splits {
        max = max.max(lse_of(s));
    }
    let mut acc = [[0.0f32; 2]; PAIRS];
    let mut lse = f32::NEG_INFINITY;
    if max != f32::NEG_INFINITY {
        // exp2(-inf) = 0: a split without keys, or no sink, adds nothing.
        let mut sum = exp2((sink - max) * core::f32::consts::LOG2_E);
        for s in 0..splits {
            sum += exp2((lse_of(s) - max) * core::f32::consts::LOG2_E);
        }
        lse = max + log2(sum) * core::f32::consts::LN_2;
        for s in 0..splits {
            let l = lse_of(s);
            // Skipped, not weighted by 0: an empty split's O was never written.
            if l == f32::NEG_INFINITY {
                continue;
            }
            let w = exp2((l - lse) * core::f32::consts::LOG2_E);
            let o_split = (p.o_accum as *const [f32; 2]).add((s * rows + row as usize) * d / 2);
            for (j, a) in acc.iter_mut().enumerate() {
                let pair = lane + 32 * j;
                if 2 * pair < d {
                    let v = *o_split.add(pair);
                    a[0] += w * v[0];
                    a[1] += w * v[1];
                }
            }
        }
    }

    let o = (p.o as *mut u16)
        .add((batch as u64 * p.o_strides[0] + i as u64 * p.o_strides[1] + head as u64 * p.o_strides[2]) as usize)
        as *mut u32;
    for (j, a) in acc.iter().enumerate() {
        let pair = lane + 32 * j;
        if 2 * pair < d {
            *o.add(pair) = E::pack2(a[0], a[1]);
        }
    }
    if lane == 0 {
        *(p.lse as *mut f32).add(row as usize) = lse;
    }
}

/// # Safety
/// Launched as `abi::FwdCombineParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attn_fwd_combine_bf16(p: FwdCombineParams) {
    combine::<Bf16>(&p)
}

/// # Safety
/// Launched as `abi::FwdCombineParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attn_fwd_combine_f16(p: FwdCombineParams) {
    combine::<F16>(&p)
}
