//! The two small kernels around the backward main kernel: delta = rowsum(dO ∘ O) before it, and the
//! f32 dQ accumulator scaled and rounded to the element type after it.

use super::dq_accum_col;
use crate::abi::BwdParams;
use crate::attn::stage;
use crate::ptx::elem::Elem16;
use crate::ptx::math::exp2;
use crate::ptx::{gmem, smem, sreg, sync, warp};

/// Warps per block of the delta kernel (one warp per query row).
pub const DELTA_WARPS: u32 = 8;
/// Threads per block of the dQ kernel (one thread per 8 elements).
pub const DQ_THREADS: u32 = 256;
/// Threads per block of the sinks' gradient kernel (one block per query head), and its shared memory:
/// one f32 per warp.
pub const DSINK_THREADS: u32 = 256;
pub const DSINK_SMEM_BYTES: u32 = DSINK_THREADS / 32 * 4;

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct V4([u32; 4]);

#[inline(always)]
fn halves<E: Elem16>(x: u32) -> (f32, f32) {
    (E::to_f32(x as u16), E::to_f32((x >> 16) as u16))
}

/// `delta[b, h, i] = Σ_d dO·O` (over V's head dim) for the row `(b, h, i)` of this warp (rows in
/// `[b, h, i]` order), and zeros in the row's `dq_accum` and in the dQ counters: the main kernel's
/// starting state, here rather than in memsets of their own (each a driver call on the host).
///
/// # Safety
/// Launched as `abi::BwdParams` documents for `attn_bwd_delta_*`.
#[inline(always)]
pub unsafe fn delta<E: Elem16>(p: &BwdParams) {
    // In 64 bits: the grid's thread count can pass 2^32 (rows are limited by `rows·head_dim/8`).
    let threads = sreg::grid_dim_x() as usize * (DELTA_WARPS * 32) as usize;
    let mut counter = sreg::block_x() as usize * (DELTA_WARPS * 32) as usize + sreg::thread_x() as usize;
    while counter < p.dq_counters as usize {
        *(p.dq_semaphore as *mut u32).add(counter) = 0;
        counter += threads;
    }
    let row = (sreg::block_x() * DELTA_WARPS + sreg::warp()) as usize;
    let (sq, hq) = (p.score.mask.seqlen_q as usize, p.heads_q as usize);
    if row >= p.batch as usize * hq * sq {
        return;
    }
    let lane = sreg::lane() as usize;
    let acc_row = (p.dq_accum as *mut [u32; 4]).add(row * p.head_dim as usize / 4);
    let mut c = lane;
    while c < p.head_dim as usize / 4 {
        gmem::store_v4(acc_row.add(c) as *mut u16, [0; 4]);
        c += 32;
    }
    let (i, h, b) = (row % sq, (row / sq) % hq, row / sq / hq);
    let o = (p.o as *const u16)
        .add(b * p.o_strides[0] as usize + i * p.o_strides[1] as usize + h * p.o_strides[2] as usize);
    let d_o = (p.d_o as *const u16)
        .add(b * p.d_o_strides[0] as usize + i * p.d_o_strides[1] as usize + h * p.d_o_strides[2] as usize);
    let chunks = p.head_dim_v as usize / 8;
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

/// `dq[b, i, h, :] = scale · dq_accum[b, h, i, :]` (its chunks permuted, `dq_accum_col`), 8 elements
/// per thread.
///
/// # Safety
/// Launched as `abi::BwdParams` documents for `attn_bwd_dq_*`.
#[inline(always)]
pub unsafe fn dq_convert<E: Elem16>(p: &BwdParams) {
    let idx = sreg::block_x() as usize * DQ_THREADS as usize + sreg::thread_x() as usize;
    let (sq, hq) = (p.score.mask.seqlen_q as usize, p.heads_q as usize);
    let chunks = p.head_dim as usize / 8;
    if idx >= p.batch as usize * hq * sq * chunks {
        return;
    }
    let (row, c) = (idx / chunks, idx % chunks);
    let (i, h, b) = (row % sq, (row / sq) % hq, row / sq / hq);
    let src_row = (p.dq_accum as *const f32).add(row * chunks * 8);
    let at = |col: usize| src_row.add(dq_accum_col(i as u32, col as u32) as usize) as *const V4;
    let lo = core::ptr::read(at(8 * c)).0;
    let hi = core::ptr::read(at(8 * c + 4)).0;
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

/// `d_sinks[h] = −Σ_{b,i} exp(sink[h] − lse[b, h, i])·delta[b, h, i]` for the block's head: the sink's
/// probability in each row times the row's delta (`attn::score`: the sink has no value, so its dS is
/// `p_sink·(0 − delta)`). Thread k sums rows k, k + 256, … of each batch in order, then the warps' sums
/// meet in shared memory in a fixed order: the result does not depend on scheduling.
///
/// # Safety
/// Launched as `abi::BwdParams` documents for `attn_bwd_dsink` (grid `(heads_q)`, `DSINK_THREADS`
/// threads, `DSINK_SMEM_BYTES` of dynamic shared memory), after the delta kernel.
#[inline(always)]
pub unsafe fn d_sinks(p: &BwdParams) {
    let head = sreg::block_x() as usize;
    let tid = sreg::thread_x() as usize;
    let (sq, hq) = (p.score.mask.seqlen_q as usize, p.heads_q as usize);
    let sink = stage::sink_log2(&p.score, head as u32);
    let (lse, delta) = (p.lse as *const f32, p.delta as *const f32);
    let mut acc = 0.0f32;
    for b in 0..p.batch as usize {
        let row0 = (b * hq + head) * sq;
        let mut i = tid;
        while i < sq {
            // LSE >= the sink whenever there is one, so the weight is at most 1.
            acc += exp2(sink - *lse.add(row0 + i) * core::f32::consts::LOG2_E) * *delta.add(row0 + i);
            i += DSINK_THREADS as usize;
        }
    }
    let acc = warp::warp_sum(acc);
    let partials = smem::base();
    if tid % 32 == 0 {
        smem::store_u32(partials + (tid / 32 * 4) as u32, acc.to_bits());
    }
    sync::block();
    if tid == 0 {
        let mut total = 0.0f32;
        for quad in 0..DSINK_SMEM_BYTES / 16 {
            for bits in smem::load_v4(partials + 16 * quad) {
                total += f32::from_bits(bits);
            }
        }
        *(p.d_sinks as *mut f32).add(head) = -total;
    }
}
