//! The two small kernels around the backward main kernel: delta = rowsum(dO ∘ O) before it, and the
//! f32 dQ accumulator scaled and rounded to the element type after it.

use crate::abi::BwdParams;
use crate::ptx::elem::Elem16;
use crate::ptx::{gmem, sreg, warp};

/// Warps per block of the delta kernel (one warp per query row).
pub const DELTA_WARPS: u32 = 8;
/// Threads per block of the dQ kernel (one thread per 8 elements).
pub const DQ_THREADS: u32 = 256;

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct V4([u32; 4]);

#[inline(always)]
fn halves<E: Elem16>(x: u32) -> (f32, f32) {
    (E::to_f32(x as u16), E::to_f32((x >> 16) as u16))
}

/// `delta[b, h, i] = Σ_d dO·O` for the row `(b, h, i)` of this warp (rows in `[b, h, i]` order).
///
/// # Safety
/// Launched as `abi::BwdParams` documents for `attn_bwd_delta_*`.
#[inline(always)]
pub unsafe fn delta<E: Elem16>(p: &BwdParams) {
    let row = (sreg::block_x() * DELTA_WARPS + sreg::warp()) as usize;
    let (sq, hq) = (p.seqlen_q as usize, p.heads_q as usize);
    if row >= p.batch as usize * hq * sq {
        return;
    }
    let lane = sreg::lane() as usize;
    let (i, h, b) = (row % sq, (row / sq) % hq, row / sq / hq);
    let o = (p.o as *const u16)
        .add(b * p.o_strides[0] as usize + i * p.o_strides[1] as usize + h * p.o_strides[2] as usize);
    let d_o = (p.d_o as *const u16)
        .add(b * p.d_o_strides[0] as usize + i * p.d_o_strides[1] as usize + h * p.d_o_strides[2] as usize);
    let chunks = p.head_dim as usize / 8;
    let mut acc = 0.0f32;
    let mut c = lane;
    while c < chunks {
        let x = core::ptr::read(o.add(c * 8) as *const V4).0;
        let y = core::ptr::read(d_o.add(c * 8) as *const V4).0;
        for j in 0..4 {
            let (x0, x1) = halves::<E>(x[j]);
            let (y0, y1) = halves::<E>(y[j]);
            acc += x0 * y0 + x1 * y1;
        }
        c += 32;
    }
    let acc = warp::warp_sum(acc);
    if lane == 0 {
        *(p.delta as *mut f32).add(row) = acc;
    }
}

/// `dq[b, i, h, :] = scale · dq_accum[b, h, i, :]`, 8 elements per thread.
///
/// # Safety
/// Launched as `abi::BwdParams` documents for `attn_bwd_dq_*`.
#[inline(always)]
pub unsafe fn dq_convert<E: Elem16>(p: &BwdParams) {
    let idx = sreg::block_x() as usize * DQ_THREADS as usize + sreg::thread_x() as usize;
    let (sq, hq) = (p.seqlen_q as usize, p.heads_q as usize);
    let chunks = p.head_dim as usize / 8;
    if idx >= p.batch as usize * hq * sq * chunks {
        return;
    }
    let (row, c) = (idx / chunks, idx % chunks);
    let (i, h, b) = (row % sq, (row / sq) % hq, row / sq / hq);
    let src = (p.dq_accum as *const f32).add(idx * 8);
    let lo = core::ptr::read(src as *const V4).0;
    let hi = core::ptr::read(src.add(4) as *const V4).0;
    let s = p.scale;
    let f = |x: u32| f32::from_bits(x) * s;
    let out = [
        E::pack2(f(lo[0]), f(lo[1])),
        E::pack2(f(lo[2]), f(lo[3])),
        E::pack2(f(hi[0]), f(hi[1])),
        E::pack2(f(hi[2]), f(hi[3])),
    ];
    let dst = (p.dq as *mut u16)
        .add(b * p.dq_strides[0] as usize + i * p.dq_strides[1] as usize + h * p.dq_strides[2] as usize + c * 8);
    gmem::store_v4(dst, out);
}
