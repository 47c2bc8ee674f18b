//! The backward main kernel (FlashAttention-2 backward, Dao 2023, Algorithm 2): one CTA per
//! (key block, K/V head, batch). See `tiles_bwd` for the three products and their warp grids.
//!
//! Per query block (of each query head of the group):
//! - wait for its Q, dO, LSE, delta (cp.async), barrier, start loading the next one (2 stages);
//! - phase 1: Sᵀ = K Qᵀ, dPᵀ = V dOᵀ; P = exp2(scale·log2e·S − log2e·LSE) (0 where masked or where the
//!   row saw no key: LSE = −inf is read as +inf, so the exponent is −inf and never NaN);
//!   dS = P ∘ (dP − delta); Pᵀ and dSᵀ to shared memory in the element type; barrier;
//! - phase 2: dV += Pᵀ dO, dK += dSᵀ Q (registers);
//! - phase 3: dS K added to the f32 dQ accumulator (`red.global.add.f32`), in key-block order when
//!   deterministic.
//!
//! Fragment layouts (PTX ISA §9.7.14.5.8, m16n8k16): A (row) from a row-major `[m][k]` tile with
//! `ldmatrix.x4` (lane l addresses row l%16, column 8·(l/16)); from a `[k][m]` tile with `.trans`
//! (row l%8 + 8·(l/16), column 8·((l/8)%2)). B (col) pairs of n8 tiles from an `[n][k]` tile with
//! `ldmatrix.x4` (row l%8 + 8·(l/16), column 8·((l/8)%2)); from a `[k][n]` tile with `.trans`
//! (row l%16, column 8·(l/16)). Registers 0,1 are the first n8 tile's b0,b1 and 2,3 the second's.

use crate::abi::BwdParams;
use crate::attn::bwd_range::{bwd_needs_mask, bwd_query_blocks};
use crate::ptx::math::exp2;
use crate::ptx::mma::MmaElem;
use crate::ptx::{atomic, cp_async, ldmatrix, shared_f32, smem, sreg, sync};

/// Issues the cp.async copies of a `ROWS x D` tile into shared rows of `D + 8` elements; rows at or past
/// `valid_rows` are zero-filled and not read.
#[inline(always)]
unsafe fn load_rows<const ROWS: usize, const D: usize>(
    dst: u32,
    src: *const u16,
    row_stride: usize,
    valid_rows: u32,
    tid: u32,
    threads: usize,
) {
    let chunks = D / 8;
    let total = ROWS * chunks;
    let steps = total.div_ceil(threads);
    for i in 0..steps {
        let idx = tid as usize + i * threads;
        if total.is_multiple_of(threads) || idx < total {
            let (row, chunk) = (idx / chunks, idx % chunks);
            let valid = (row as u32) < valid_rows;
            // An invalid row keeps `src` (row 0, always readable) as its address; nothing is read.
            let from = if valid { src.add(row * row_stride + chunk * 8) } else { src };
            cp_async::copy16_or_zero(dst + (row * (D + 8) * 2 + chunk * 16) as u32, from, valid);
        }
    }
}

/// Where the query blocks of one CTA come from (global bases and sizes that do not change per step).
struct QuerySource {
    q: *const u16,
    d_o: *const u16,
    lse: *const f32,
    delta: *const f32,
    q_strides: [usize; 3],
    d_o_strides: [usize; 3],
    batch: usize,
    heads_q: usize,
    seqlen_q: u32,
}

impl QuerySource {
    /// Issues the copies of query block `m` of query head `h` into one stage.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn load<const BM: usize, const D: usize>(
        &self,
        h: u32,
        m: u32,
        q_dst: u32,
        d_o_dst: u32,
        lse_dst: u32,
        delta_dst: u32,
        tid: u32,
        threads: usize,
    ) {
        let m0 = m * BM as u32;
        let rows = (self.seqlen_q - m0).min(BM as u32);
        let (b, h, m0u) = (self.batch, h as usize, m0 as usize);
        let qs = self.q_strides;
        let q = self.q.add(b * qs[0] + m0u * qs[1] + h * qs[2]);
        load_rows::<BM, D>(q_dst, q, qs[1], rows, tid, threads);
        let os = self.d_o_strides;
        let d_o = self.d_o.add(b * os[0] + m0u * os[1] + h * os[2]);
        load_rows::<BM, D>(d_o_dst, d_o, os[1], rows, tid, threads);
        if (tid as usize) < BM {
            let valid = tid < rows;
            let row = (b * self.heads_q + h) * self.seqlen_q as usize + m0u + tid as usize;
            let (lse, delta) = if valid { (self.lse.add(row), self.delta.add(row)) } else { (self.lse, self.delta) };
            shared_f32::copy4_or_zero(lse_dst + tid * 4, lse, valid);
            shared_f32::copy4_or_zero(delta_dst + tid * 4, delta, valid);
        }
    }
}

/// The value of `x`, through a `mov` the compiler may neither hoist nor merge. Shared-memory addresses
/// are `base + lane part + constant`; laundering `base + lane part` once per phase inside the loop stops
/// LLVM from hoisting one register per constant out of the loop (hundreds of live registers), and
/// ptxas folds each constant into the `ldmatrix`/`st.shared` immediate offset.
#[inline(always)]
fn opaque(x: u32) -> u32 {
    let out: u32;
    // SAFETY: a register move; deliberately not `pure`.
    unsafe {
        core::arch::asm!("mov.b32 {0}, {1};", out(reg32) out, in(reg32) x, options(nomem, nostack, preserves_flags))
    };
    out
}

#[inline(always)]
fn strides(s: [u64; 3]) -> [usize; 3] {
    [s[0] as usize, s[1] as usize, s[2] as usize]
}

/// The backward main kernel body. `MT*`/`NT*`/`ND*` are the per-warp tile counts of the three phases
/// (`tiles_bwd::BwdTile::{sdp,dkv,dq}_{m,n}_tiles`).
///
/// # Safety
/// Launched as `abi::BwdParams` documents, with `W·32` threads and the tile's shared memory.
#[inline(always)]
pub unsafe fn attn_bwd<
    E: MmaElem,
    const D: usize,
    const BM: usize,
    const BN: usize,
    const W: usize,
    const QS: usize,
    const WN1: usize,
    const MT1: usize,
    const NT1: usize,
    const WN2: usize,
    const MT2: usize,
    const ND2: usize,
    const WM3: usize,
    const MT3: usize,
    const ND3: usize,
>(
    p: &BwdParams,
) {
    let threads = W * 32;
    let tid = sreg::thread_x();
    let lane = sreg::lane();
    let warp = (tid / 32) as usize;
    let (g, t) = ((lane / 4) as usize, (lane % 4) as usize);
    let lane = lane as usize;
    let (nb, hkv, b) = (sreg::block_x(), sreg::block_y() as usize, sreg::block_z() as usize);
    let (sq, sk) = (p.seqlen_q, p.seqlen_k);
    let causal = p.causal != 0;
    let n0 = nb * BN as u32;
    let (m_first, m_end) = bwd_query_blocks(n0, sq, sk, causal, BM as u32);
    let per_head = m_end - m_first;
    let total = per_head * p.group;
    let m_blocks = m_end as usize;

    // Shared memory (tiles_bwd::BwdTile::smem_layout).
    let row_b = ((D + 8) * 2) as u32;
    let prow_b = ((BM + 8) * 2) as u32;
    let k_s = smem::base();
    let v_s = k_s + BN as u32 * row_b;
    let q_s0 = v_s + BN as u32 * row_b;
    let do_s0 = q_s0 + (QS * BM) as u32 * row_b;
    let p_s = do_s0 + (QS * BM) as u32 * row_b;
    let ds_s = p_s + BN as u32 * prow_b;
    let lse_s0 = ds_s + BN as u32 * prow_b;
    let dl_s0 = lse_s0 + (QS * BM * 4) as u32;
    let stage_b = BM as u32 * row_b;
    let stage_f = (BM * 4) as u32;

    // K and V of this CTA's keys.
    let kv_rows = (sk - n0).min(BN as u32);
    let (ks, vs) = (strides(p.k_strides), strides(p.v_strides));
    let n0u = n0 as usize;
    let k_g = (p.k as *const u16).add(b * ks[0] + n0u * ks[1] + hkv * ks[2]);
    let v_g = (p.v as *const u16).add(b * vs[0] + n0u * vs[1] + hkv * vs[2]);
    load_rows::<BN, D>(k_s, k_g, ks[1], kv_rows, tid, threads);
    load_rows::<BN, D>(v_s, v_g, vs[1], kv_rows, tid, threads);

    let src = QuerySource {
        q: p.q as *const u16,
        d_o: p.d_o as *const u16,
        lse: p.lse as *const f32,
        delta: p.delta as *const f32,
        q_strides: strides(p.q_strides),
        d_o_strides: strides(p.d_o_strides),
        batch: b,
        heads_q: p.heads_q as usize,
        seqlen_q: sq,
    };
    let h_first = hkv as u32 * p.group;
    if total > 0 {
        src.load::<BM, D>(h_first, m_end - 1, q_s0, do_s0, lse_s0, dl_s0, tid, threads);
    }
    cp_async::commit();

    let mut dk = [[[0f32; 4]; ND2]; MT2];
    let mut dv = [[[0f32; 4]; ND2]; MT2];
    let scale_log2 = p.scale_log2;

    // Warp grids of the three phases.
    let (key1, qry1) = ((warp % WN1) * MT1 * 16, (warp / WN1) * NT1 * 8);
    let (key2, col2) = ((warp % WN2) * MT2 * 16, (warp / WN2) * ND2 * 8);
    let (qry3, col3) = ((warp % WM3) * MT3 * 16, (warp / WM3) * ND3 * 8);

    // The first query that sees each of this thread's phase-1 key rows (i32::MAX past the last key):
    // query i sees key j iff i >= first_query[j] (and i < seqlen_q). Sequence lengths are below 2^31
    // (host-checked), so key + seqlen_q - seqlen_k fits an i32.
    let mut first_query = [[0i32; 2]; MT1];
    for (mt, rows) in first_query.iter_mut().enumerate() {
        for (rr, fq) in rows.iter_mut().enumerate() {
            let key = (n0 as usize + key1 + mt * 16 + g + 8 * rr) as i32;
            *fq = if key >= sk as i32 {
                i32::MAX
            } else if causal {
                key + sq as i32 - sk as i32
            } else {
                0
            };
        }
    }

    let mut it = 0u32;
    while it < total {
        let h = h_first + it / per_head;
        let m = m_end - 1 - it % per_head;
        let m0 = m * BM as u32;
        let stage = if QS == 2 { it % 2 } else { 0 };
        let (q_s, do_s) = (q_s0 + stage * stage_b, do_s0 + stage * stage_b);
        let (lse_s, dl_s) = (lse_s0 + stage * stage_f, dl_s0 + stage * stage_f);

        cp_async::wait::<0>();
        sync::block();
        if QS == 2 {
            if it + 1 < total {
                let (hn, mn) = (h_first + (it + 1) / per_head, m_end - 1 - (it + 1) % per_head);
                let sn = 1 - stage;
                src.load::<BM, D>(
                    hn,
                    mn,
                    q_s0 + sn * stage_b,
                    do_s0 + sn * stage_b,
                    lse_s0 + sn * stage_f,
                    dl_s0 + sn * stage_f,
                    tid,
                    threads,
                );
            }
            cp_async::commit();
        }

        // Phase 1: Sᵀ = K Qᵀ and dPᵀ = V dOᵀ.
        let mut s = [[[0f32; 4]; NT1]; MT1];
        let mut dp = [[[0f32; 4]; NT1]; MT1];
        let a_lane = ((key1 + lane % 16) as u32) * row_b + ((lane / 16) * 16) as u32;
        let b_lane = ((qry1 + lane % 8 + (lane / 16) * 8) as u32) * row_b + (((lane / 8) % 2) * 16) as u32;
        let (k_a, v_a) = (opaque(k_s + a_lane), opaque(v_s + a_lane));
        let (q_b, do_b) = (opaque(q_s + b_lane), opaque(do_s + b_lane));
        for kk in 0..D / 16 {
            let mut ak = [[0u32; 4]; MT1];
            let mut av = [[0u32; 4]; MT1];
            for mt in 0..MT1 {
                let off = (mt * 16) as u32 * row_b + (kk * 32) as u32;
                ak[mt] = ldmatrix::x4(k_a + off);
                av[mt] = ldmatrix::x4(v_a + off);
            }
            for np in 0..NT1 / 2 {
                let off = (np * 16) as u32 * row_b + (kk * 32) as u32;
                let bq = ldmatrix::x4(q_b + off);
                let bo = ldmatrix::x4(do_b + off);
                for mt in 0..MT1 {
                    E::mma(&mut s[mt][2 * np], &ak[mt], &[bq[0], bq[1]]);
                    E::mma(&mut s[mt][2 * np + 1], &ak[mt], &[bq[2], bq[3]]);
                    E::mma(&mut dp[mt][2 * np], &av[mt], &[bo[0], bo[1]]);
                    E::mma(&mut dp[mt][2 * np + 1], &av[mt], &[bo[2], bo[3]]);
                }
            }
        }

        // P and dS, in place of S and dP. Masked entries get P = 0 by a select (never a multiply: their
        // exponent may overflow to +inf).
        let need_mask = bwd_needs_mask(m0, n0, BM as u32, BN as u32, sq, sk, causal);
        for nt in 0..NT1 {
            let c = qry1 + nt * 8 + 2 * t;
            let lse = shared_f32::load_v2(lse_s + (c * 4) as u32);
            let delta = shared_f32::load_v2(dl_s + (c * 4) as u32);
            // A row that saw no key has LSE = -inf: read as +inf, its P is exp2(-inf) = 0.
            let lse2 = [
                if lse[0] == f32::NEG_INFINITY { f32::INFINITY } else { lse[0] * core::f32::consts::LOG2_E },
                if lse[1] == f32::NEG_INFINITY { f32::INFINITY } else { lse[1] * core::f32::consts::LOG2_E },
            ];
            for mt in 0..MT1 {
                for e in 0..4 {
                    let (rr, cc) = (e / 2, e % 2);
                    let mut pv = exp2(s[mt][nt][e] * scale_log2 - lse2[cc]);
                    if need_mask {
                        let qry = (m0 + (c + cc) as u32) as i32;
                        let keep = (qry >= first_query[mt][rr]) & (qry < sq as i32);
                        pv = if keep { pv } else { 0.0 };
                    }
                    s[mt][nt][e] = pv;
                    dp[mt][nt][e] = pv * (dp[mt][nt][e] - delta[cc]);
                }
            }
        }
        let st_lane = ((key1 + g) as u32) * prow_b + ((qry1 + 2 * t) * 2) as u32;
        let (p_st, ds_st) = (opaque(p_s + st_lane), opaque(ds_s + st_lane));
        for mt in 0..MT1 {
            for rr in 0..2 {
                let row = (mt * 16 + 8 * rr) as u32;
                for nt in 0..NT1 {
                    let off = row * prow_b + (nt * 16) as u32;
                    smem::store_u32(p_st + off, E::pack2(s[mt][nt][2 * rr], s[mt][nt][2 * rr + 1]));
                    smem::store_u32(ds_st + off, E::pack2(dp[mt][nt][2 * rr], dp[mt][nt][2 * rr + 1]));
                }
            }
        }
        sync::block();

        // Phase 2: dV += Pᵀ dO, dK += dSᵀ Q.
        let a_lane = ((key2 + lane % 16) as u32) * prow_b + ((lane / 16) * 16) as u32;
        let b_lane = ((lane % 16) as u32) * row_b + ((col2 + (lane / 16) * 8) * 2) as u32;
        let (p_a, ds_a) = (opaque(p_s + a_lane), opaque(ds_s + a_lane));
        let (do_t, q_t) = (opaque(do_s + b_lane), opaque(q_s + b_lane));
        for kk in 0..BM / 16 {
            let mut ap = [[0u32; 4]; MT2];
            let mut ads = [[0u32; 4]; MT2];
            for mt in 0..MT2 {
                let off = (mt * 16) as u32 * prow_b + (kk * 32) as u32;
                ap[mt] = ldmatrix::x4(p_a + off);
                ads[mt] = ldmatrix::x4(ds_a + off);
            }
            for np in 0..ND2 / 2 {
                let off = (kk * 16) as u32 * row_b + (np * 32) as u32;
                let bo = ldmatrix::x4_trans(do_t + off);
                let bq = ldmatrix::x4_trans(q_t + off);
                for mt in 0..MT2 {
                    E::mma(&mut dv[mt][2 * np], &ap[mt], &[bo[0], bo[1]]);
                    E::mma(&mut dv[mt][2 * np + 1], &ap[mt], &[bo[2], bo[3]]);
                    E::mma(&mut dk[mt][2 * np], &ads[mt], &[bq[0], bq[1]]);
                    E::mma(&mut dk[mt][2 * np + 1], &ads[mt], &[bq[2], bq[3]]);
                }
            }
        }

        // Phase 3: dQ_partial = dS K.
        let mut dq = [[[0f32; 4]; ND3]; MT3];
        let a_lane = ((lane % 8 + (lane / 16) * 8) as u32) * prow_b + ((qry3 + ((lane / 8) % 2) * 8) * 2) as u32;
        let b_lane = ((lane % 16) as u32) * row_b + ((col3 + (lane / 16) * 8) * 2) as u32;
        let (ds_t, k_t) = (opaque(ds_s + a_lane), opaque(k_s + b_lane));
        for kk in 0..BN / 16 {
            let mut a = [[0u32; 4]; MT3];
            for mt in 0..MT3 {
                let off = (kk * 16) as u32 * prow_b + (mt * 32) as u32;
                a[mt] = ldmatrix::x4_trans(ds_t + off);
            }
            for np in 0..ND3 / 2 {
                let off = (kk * 16) as u32 * row_b + (np * 32) as u32;
                let bk = ldmatrix::x4_trans(k_t + off);
                for mt in 0..MT3 {
                    E::mma(&mut dq[mt][2 * np], &a[mt], &[bk[0], bk[1]]);
                    E::mma(&mut dq[mt][2 * np + 1], &a[mt], &[bk[2], bk[3]]);
                }
            }
        }
        let deterministic = p.deterministic != 0;
        // Deterministic mode: the key blocks of one (batch, head, query block) add their dQ parts in
        // key-block order. Every key block below this one visits this query block too (visibility is a
        // prefix of the keys), so this CTA's turn comes when the counter reaches `nb`. Lower key blocks
        // have lower block indices and are dispatched first, so the wait always ends. Every CTA walks
        // the query blocks from the last one down, the one all key blocks share (causal or not), so the
        // CTAs of a head move in step, each one turn behind the previous, instead of the later key
        // blocks of a causal head waiting for key block 0 to reach their first query block.
        let sem = (p.dq_semaphore as *mut u32).add((b * p.heads_q as usize + h as usize) * m_blocks + m as usize);
        if deterministic {
            if tid == 0 {
                while atomic::load_acquire_u32(sem) != nb {}
            }
            sync::block();
        }
        let acc = (p.dq_accum as *mut f32).add(((b * p.heads_q as usize + h as usize) * sq as usize + m0 as usize) * D);
        for mt in 0..MT3 {
            for rr in 0..2 {
                let row = qry3 + mt * 16 + g + 8 * rr;
                if m0 + (row as u32) < sq {
                    for nd in 0..ND3 {
                        let at = acc.add(row * D + col3 + nd * 8 + 2 * t);
                        atomic::red_add_f32(at, dq[mt][nd][2 * rr]);
                        atomic::red_add_f32(at.add(1), dq[mt][nd][2 * rr + 1]);
                    }
                }
            }
        }
        if deterministic {
            sync::block();
            if tid == 0 {
                atomic::release_add_u32(sem, 1);
            }
        }

        if QS == 1 {
            sync::block();
            if it + 1 < total {
                let (hn, mn) = (h_first + (it + 1) / per_head, m_end - 1 - (it + 1) % per_head);
                src.load::<BM, D>(hn, mn, q_s0, do_s0, lse_s0, dl_s0, tid, threads);
            }
            cp_async::commit();
        }
        it += 1;
    }

    // dK (scaled) and dV of this CTA's keys.
    let scale = p.scale;
    let (dks, dvs) = (strides(p.dk_strides), strides(p.dv_strides));
    let dk_g = (p.dk as *mut u16).add(b * dks[0] + hkv * dks[2]);
    let dv_g = (p.dv as *mut u16).add(b * dvs[0] + hkv * dvs[2]);
    for mt in 0..MT2 {
        for rr in 0..2 {
            let key = n0 as usize + key2 + mt * 16 + g + 8 * rr;
            if key < sk as usize {
                for nd in 0..ND2 {
                    let col = col2 + nd * 8 + 2 * t;
                    let k_val = E::pack2(dk[mt][nd][2 * rr] * scale, dk[mt][nd][2 * rr + 1] * scale);
                    let v_val = E::pack2(dv[mt][nd][2 * rr], dv[mt][nd][2 * rr + 1]);
                    *(dk_g.add(key * dks[1] + col) as *mut u32) = k_val;
                    *(dv_g.add(key * dvs[1] + col) as *mut u32) = v_val;
                }
            }
        }
    }
}
