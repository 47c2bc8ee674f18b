//! The body of every forward kernel: block range, the cp.async pipeline over K/V blocks, S = QKᵀ and
//! O += PV on tensor cores, with the online softmax in between.
//!
//! The mask and the score modifiers are run-time parameters (`FwdParams::score`, applied by the score
//! stage, `attn/stage.rs`): the mask only changes the block range (blocks no row sees are never loaded)
//! and which blocks take the masked path, a CTA-uniform branch per block; each modifier is a CTA-uniform
//! branch around its per-element arithmetic. Every kernel already needs the masked path for the last,
//! partial block of keys, so compile-time flags would save a few uniform branches per block at the cost
//! of many more kernels.

use super::epilogue::{self, OutRows};
use super::io::{
    check_paged_length, load_kv_paged, load_tile, smem_row_bytes, stage_page_entries, PagedRows, StagedPages,
};
use super::softmax::OnlineSoftmax;
use crate::abi::FwdParams;
use crate::attn::stage::{self, FragPos};
use crate::frag::AccFrag;
use crate::ptx::mma::MmaElem;
use crate::ptx::{cp_async, griddep, ldmatrix, opaque, smem, sreg, sync};

/// Shape parameters, all compile-time. `D` and `DV` the head dims of Q/K and of V/O, `KD = D/16` (k-steps
/// of QKᵀ), `ND = DV/8` (n8 tiles of O),
/// `NN = BN/8` (n8 tiles of S), `KN = BN/16` (k-steps of PV), `MT` m16 tiles per warp; `SPLIT`: the
/// split-KV instantiation (this CTA's split of the key blocks, f32 partial output); `PACKED`: the
/// instantiation for sequences found in device memory (`stage::enter`: packed variable-length batches,
/// or with `PAGED` a paged KV cache's, whose K/V rows go through its block table). The derived
/// sizes are separate parameters because array lengths cannot be computed from generic constants on
/// stable Rust; `kernels.rs` passes them from one `tiles::FwdTile` row and the assert below ties them.
///
/// # Safety
/// Launched as `abi::FwdParams` documents, with `16·MT·WARPS`-row blocks, `32·WARPS` threads and
/// `tiles::FwdTile::smem_bytes` of dynamic shared memory; `p` describes valid buffers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attn_fwd<
    E: MmaElem,
    const D: usize,
    const DV: usize,
    const KD: usize,
    const ND: usize,
    const BN: usize,
    const NN: usize,
    const KN: usize,
    const WARPS: usize,
    const MT: usize,
    const STAGES: usize,
    const QREG: bool,
    const SPLIT: bool,
    const PACKED: bool,
    const PAGED: bool,
>(
    p: &FwdParams,
) {
    const {
        assert!(KD * 16 == D && ND * 8 == DV && DV <= D && NN * 8 == BN && KN * 16 == BN && STAGES >= 2 && STAGES <= 4);
        assert!(PACKED || !PAGED);
        assert!(!PAGED || BN <= 32 * WARPS); // stage_page_entries: one entry per thread
    }
    let block_m = 16 * MT * WARPS;
    let threads = 32 * WARPS;
    let row_bytes = smem_row_bytes::<D>();
    let row_bytes_v = smem_row_bytes::<DV>();

    let tid = sreg::thread_x();
    let (warp, lane) = (tid / 32, tid % 32);
    // Grid x is (query block, split), split fastest. The longest causal rows (highest query block)
    // start first: the tail of the grid is then short CTAs. (`super::query_block_and_split`, written
    // out here: see there.)
    // Split mode is a compile-time parameter: the unsplit kernels keep no trace of it.
    let split_mode = SPLIT;
    if SPLIT {
        // The combine kernel, launched as this grid's dependent on Hopper, may be scheduled now: it
        // waits for this grid's results itself (`ptx::griddep`).
        griddep::launch_dependents();
    }
    let (m_block, split) = if SPLIT {
        let num_splits = p.num_splits;
        (sreg::grid_dim_x() / num_splits - 1 - sreg::block_x() / num_splits, sreg::block_x() % num_splits)
    } else {
        (sreg::grid_dim_x() - 1 - sreg::block_x(), 0)
    };
    let (head, batch) = (sreg::block_y(), sreg::block_z());
    let seq = stage::enter::<PACKED>(&p.score, batch, tid);
    if PAGED && tid == 0 {
        check_paged_length(&p.pages, p.score.seqused_k, batch, p.score.mask.seqlen_k);
    }
    let seqlen_q = seq.mask.seqlen_q;
    let kv_head = head / p.group;
    let m0 = m_block * block_m as u32;
    if PACKED && m0 >= seqlen_q {
        // A packed batch's grid covers its longest sequence: this sequence has no such rows.
        return;
    }
    let rows = (seqlen_q - m0).min(block_m as u32);

    let q_rows = (p.q as *const u16).add(
        (seq.row as u64 * p.q_strides[0] + (seq.q0 + m0) as u64 * p.q_strides[1] + head as u64 * p.q_strides[2])
            as usize,
    );
    let q_stride = p.q_strides[1] as usize;
    // Where this CTA's O rows and LSE values go; called after the block loop so that none of it is
    // live (in registers) during the loop.
    let out_rows = |batch: u32, head: u32| {
        let seq = stage::parked::<PACKED>(&p.score, batch);
        let o = (p.o as *mut u16).add(
            (seq.row as u64 * p.o_strides[0] + (seq.q0 + m0) as u64 * p.o_strides[1] + head as u64 * p.o_strides[2])
                as usize,
        );
        let lse = (p.lse as *mut f32).add(seq.lse_row(&p.score, p.heads_q, head, m0) as usize);
        (o, lse, p.o_strides[1] as usize)
    };

    // Where a split's rows go in the f32 workspace: row (split, batch row, head, m0) onwards, each split
    // one LSE layout (`[batch, heads_q, rows]`; one batch row when packed).
    let accum_row = |batch: u32, head: u32| {
        let seq = stage::parked::<PACKED>(&p.score, batch);
        // A packed batch is one batch row of its tokens; a paged cache's batch is dense.
        let batch_rows = if PACKED && !PAGED { 1 } else { sreg::grid_dim_z() as u64 };
        let per_split = batch_rows * p.heads_q as u64 * p.score.mask.seqlen_q as u64;
        (split as u64 * per_split + seq.lse_row(&p.score, p.heads_q, head, m0)) as usize
    };

    // The key blocks this CTA's rows see, `[first, n_end)` in key order (a split's share of them when
    // split), and the unmasked ones among them, `[full_first, full_end)`.
    let blocks = seq.mask.key_blocks(m0, rows, BN as u32);
    let (first, n_end) = if split_mode { blocks.share(split, p.num_splits) } else { (blocks.first, blocks.end) };
    let (full_first, full_end) = (blocks.full_first, blocks.full_end);
    // Split kernels leave the sink to the combine.
    let sink = if SPLIT { f32::NEG_INFINITY } else { stage::sink_log2(&p.score, head) };
    if first == n_end {
        if split_mode {
            let lse = (p.lse_accum as *mut f32).add(accum_row(batch, head));
            epilogue::store_split_empty(lse, rows, threads as u32, tid);
        } else {
            let (o_rows, lse_rows, o_stride) = out_rows(batch, head);
            let lse = sink * core::f32::consts::LN_2;
            epilogue::store_empty::<DV>(o_rows, o_stride, lse_rows, lse, rows, threads as u32, tid);
        }
        return;
    }

    // Shared memory: Q (block_m rows), then STAGES x (K block, V block); V rows are `DV` wide.
    let q_smem = smem::base();
    let kv_smem = q_smem + (block_m * row_bytes) as u32;
    let stage_bytes = (BN * (row_bytes + row_bytes_v)) as u32;
    let v_offset = (BN * row_bytes) as u32;

    // K/V addresses are re-derived from the parameters (a packed kernel's from its shared slot) at each
    // block (through `opaque`), so that neither they nor the per-chunk offsets are hoisted out of the
    // loop into registers of their own (see ptx/opaque.rs); parameters are read from the constant bank
    // and cost no register.
    // A paged cache's block-table entries of block X are staged in the padding of the K rows of the
    // stage X loads into (`stage_page_entries`: entry i in row i's padding, which neither the copies nor
    // ldmatrix touch), copied one pipeline round ahead, in the group of block X - (STAGES - 1), which has
    // landed when X's copies are issued. The slot's previous entries (block X - STAGES) were read an
    // iteration earlier, before a barrier.
    let table_slot = |stage: u32| kv_smem + stage * stage_bytes + (D * 2) as u32;
    let stage_pages = |block: u32, stage: u32| {
        if PAGED && block < n_end {
            let seqlen_k = stage::parked_seqlen_k();
            let n0 = block * BN as u32;
            stage_page_entries::<D, BN>(table_slot(stage), &p.pages, opaque::u32(batch), n0, seqlen_k, tid);
        }
    };
    // `staged`: the block's table entries are in its stage's slot (every block the loop loads).
    let load_kv = |block: u32, stage: u32, staged: bool| {
        let n0 = block * BN as u32;
        let k_smem = kv_smem + stage * stage_bytes;
        if PAGED {
            let seqlen_k = stage::parked_seqlen_k();
            let entries = staged.then(|| StagedPages { slot: table_slot(stage), row_bytes: row_bytes as u32 });
            let (seq, kv_head) = (opaque::u32(batch), opaque::u32(kv_head));
            let at = PagedRows { seq, n0, kv_head, valid_rows: seqlen_k - n0, staged: entries };
            let (dst, src) = ([k_smem, k_smem + v_offset], [p.k as *const u16, p.v as *const u16]);
            load_kv_paged::<D, DV, BN, WARPS>(dst, src, [p.k_strides, p.v_strides], &p.pages, at, tid);
            return;
        }
        // The sequence's keys for each tile (parameters, or the CTA's shared slot when packed).
        let rows_at = |strides: [u64; 3]| {
            let (row, k0, seqlen_k) = stage::parked_keys::<PACKED>(&p.score, opaque::u32(batch));
            let kv_head = opaque::u32(kv_head) as u64;
            let at = row as u64 * strides[0] + k0 as u64 * strides[1] + kv_head * strides[2];
            (at as usize + n0 as usize * strides[1] as usize, seqlen_k - n0)
        };
        let (k_stride, v_stride) = (p.k_strides[1] as usize, p.v_strides[1] as usize);
        let (k, valid) = rows_at(p.k_strides);
        load_tile::<D>(k_smem, (p.k as *const u16).add(k), k_stride, valid, BN, threads, tid);
        let (v, valid) = rows_at(p.v_strides);
        load_tile::<DV>(k_smem + v_offset, (p.v as *const u16).add(v), v_stride, valid, BN, threads, tid);
    };

    // Prologue: Q with the first block in the first group, then the next STAGES-2 blocks, one group
    // each (a paged cache's with the table entries of the block STAGES - 1 later).
    load_tile::<D>(q_smem, q_rows, q_stride, rows, block_m, threads, tid);
    load_kv(first, 0, false);
    stage_pages(first + (STAGES - 1) as u32, (STAGES - 1) as u32);
    cp_async::commit();
    for s in 1..STAGES - 1 {
        if first + (s as u32) < n_end {
            load_kv(first + s as u32, s as u32, false);
        }
        stage_pages(first + (s + STAGES - 1) as u32, ((s + STAGES - 1) % STAGES) as u32);
        cp_async::commit();
    }

    // Per-lane parts of the ldmatrix row addresses (see ptx/ldmatrix.rs for the lane → row rule):
    // A operand (Q) and the transposed B operand (V) take matrices (rows 0-7, cols 0-7), (rows 8-15,
    // cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15); the B operand from K takes
    // (keys 0-7, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 0-7), (keys 8-15, d 8-15).
    let lane_a = (((lane & 7) + ((lane >> 3) & 1) * 8) * row_bytes as u32) + (lane >> 4) * 16;
    let lane_k = (((lane & 7) + (lane >> 4) * 8) * row_bytes as u32) + ((lane >> 3) & 1) * 16;
    let lane_v = (((lane & 7) + ((lane >> 3) & 1) * 8) * row_bytes_v as u32) + (lane >> 4) * 16;
    let warp_row0 = warp * (16 * MT) as u32;
    let q_warp = q_smem + warp_row0 * row_bytes as u32;

    let (g, t) = (lane / 4, lane % 4);

    // Each row's sink (split kernels: none, the combine adds them).
    let sinks = if SPLIT {
        [[f32::NEG_INFINITY; 2]; MT]
    } else {
        let my_rows = core::array::from_fn(|m| [0, 1].map(|r| m0 + warp_row0 + g + (16 * m + 8 * r) as u32));
        stage::row_sinks_log2::<MT>(&p.score, p.sinks_by_row != 0, head, my_rows)
    };
    let mut softmax = OnlineSoftmax::<MT>::new(sinks, t);
    let mut acc_o = AccFrag::<MT, ND>::zeros();
    let mut q_frag = [[[0u32; 4]; KD]; MT];

    wait_all_but::<STAGES>();
    sync::block();
    if QREG {
        for (m, frags) in q_frag.iter_mut().enumerate() {
            for (kk, frag) in frags.iter_mut().enumerate() {
                *frag = ldmatrix::x4(q_warp + lane_a + (m * 16 * row_bytes + kk * 32) as u32);
            }
        }
    }

    let mut compute_stage = 0u32;
    let mut load_stage = (STAGES - 1) as u32;
    let mut block = first;
    // One iteration per K/V block, in key order. Three copies of the loop: blocks cut by a window's
    // left edge, blocks that every row sees in full, then the blocks cut by the diagonal, a right
    // window edge or the end of the keys. Each copy is register-allocated on its own, so the mask's
    // arithmetic does not raise the register peak of the common, unmasked loop.
    macro_rules! block_loop {
        ($until:expr, $masked:expr, $mods:expr) => {
            while block < $until {
                // The buffer of block+STAGES-1 is the one block-1 used: every warp finished it before
                // the barrier that ended the previous iteration.
                let ahead = block + (STAGES - 1) as u32;
                if ahead < n_end {
                    load_kv(ahead, load_stage, true);
                }
                // The entries of block ahead + STAGES - 1, whose stage is the one before load_stage.
                let table_stage = if load_stage == 0 { (STAGES - 1) as u32 } else { load_stage - 1 };
                stage_pages(ahead + (STAGES - 1) as u32, table_stage);
                cp_async::commit();

                // Fresh bases each block: fragment addresses are base + immediate (see ptx/opaque.rs).
                let k_smem = opaque::u32(kv_smem + compute_stage * stage_bytes + lane_k);
                let v_smem = opaque::u32(kv_smem + compute_stage * stage_bytes + v_offset + lane_v);
                let q_lane = opaque::u32(q_warp + lane_a);

                let n0 = block * BN as u32;
                let mut acc_s = AccFrag(scores::<E, D, KD, NN, MT, QREG>(&q_frag, q_lane, k_smem));
                // To base-2 logits, masked where this block needs it.
                let at = FragPos { row_g: m0 + warp_row0 + g, col0: n0, t };
                let slope = || stage::alibi_slope_log2(&p.score, sreg::fresh::block_z(), sreg::fresh::block_y());
                let mask = || stage::sequence_mask::<PACKED>(&p.score);
                let logits = stage::logits_by_query::<MT, NN, $mods>(&p.score, mask, slope, &mut acc_s, at, $masked);
                softmax.update(&mut acc_s, &mut acc_o, logits, false, 0);
                accumulate_pv::<E, DV, ND, NN, KN, MT>(&mut acc_o.0, &acc_s.0, v_smem);

                block += 1;
                compute_stage = if compute_stage + 1 == STAGES as u32 { 0 } else { compute_stage + 1 };
                load_stage = if load_stage + 1 == STAGES as u32 { 0 } else { load_stage + 1 };
                if block < n_end {
                    // Block `block` has landed (this thread's copies), then everyone's copies are
                    // visible and every warp is done with the buffer the next iteration refills.
                    wait_all_but::<STAGES>();
                    sync::block();
                }
            }
        };
    }
    // The modifiers (softcap, ALiBi) take their own copies of the loops, chosen once: the plain loops
    // have no branch between the score product and the softmax.
    if p.score.has_modifiers() {
        block_loop!(full_first.min(n_end), true, true);
        block_loop!(full_end.min(n_end), false, true);
        block_loop!(n_end, true, true);
    } else {
        block_loop!(full_first.min(n_end), true, false);
        block_loop!(full_end.min(n_end), false, false);
        block_loop!(n_end, true, false);
    }

    let (inv, lse) = softmax.finish();
    if split_mode {
        let at = accum_row(sreg::fresh::block_z(), sreg::fresh::block_y()) + warp_row0 as usize;
        let (o, lse_out) = ((p.o_accum as *mut f32).add(at * DV), (p.lse_accum as *mut f32).add(at));
        epilogue::store_split::<DV, ND, MT>(&acc_o.0, &inv, &lse, o, lse_out, rows as i32 - warp_row0 as i32, lane);
        return;
    }
    let (o_rows, lse_rows, o_stride) = out_rows(sreg::fresh::block_z(), sreg::fresh::block_y());
    let out = OutRows {
        o: o_rows.add(warp_row0 as usize * o_stride),
        o_row_stride: o_stride,
        lse: lse_rows.add(warp_row0 as usize),
        valid_rows: rows as i32 - warp_row0 as i32,
        staging: q_warp,
    };
    // O rows are `DV` wide in the staging rows: within the warp's Q rows, as `DV <= D`.
    epilogue::store::<E, DV, ND, MT>(&acc_o.0, &inv, &lse, &out, lane);
}

/// S = Q Kᵀ for the warp's `16·MT` rows and the `BN` keys of the block in shared memory.
/// `q_lane`/`k_smem` are this lane's ldmatrix row addresses of row/key 0, column 0.
#[inline(always)]
unsafe fn scores<E: MmaElem, const D: usize, const KD: usize, const NN: usize, const MT: usize, const QREG: bool>(
    q_frag: &[[[u32; 4]; KD]; MT],
    q_lane: u32,
    k_smem: u32,
) -> [[[f32; 4]; NN]; MT] {
    let row_bytes = smem_row_bytes::<D>();
    let mut acc_s = [[[0.0f32; 4]; NN]; MT];
    for kk in 0..KD {
        let mut a = [[0u32; 4]; MT];
        for m in 0..MT {
            a[m] = if QREG { q_frag[m][kk] } else { ldmatrix::x4(q_lane + (m * 16 * row_bytes + kk * 32) as u32) };
        }
        let mut nn = 0;
        while nn < NN {
            // Keys nn*8.. and nn*8+8.. at once: registers (0,1) and (2,3) are their B fragments.
            let b = ldmatrix::x4(k_smem + (nn * 8 * row_bytes + kk * 32) as u32);
            for m in 0..MT {
                E::mma(&mut acc_s[m][nn], &a[m], &[b[0], b[1]]);
                E::mma(&mut acc_s[m][nn + 1], &a[m], &[b[2], b[3]]);
            }
            nn += 2;
        }
    }
    acc_s
}

/// O += P V, for V's head dim `DV`. The S accumulator of n8 tiles 2kn and 2kn+1 is, rounded to 16 bits, exactly the A
/// fragment of k-step kn (rows g/g+8, keys 2t,2t+1 and 2t+8,2t+9): P never leaves the registers.
/// `v_smem` is this lane's ldmatrix.trans row address of key 0, column 0.
#[inline(always)]
unsafe fn accumulate_pv<
    E: MmaElem,
    const DV: usize,
    const ND: usize,
    const NN: usize,
    const KN: usize,
    const MT: usize,
>(
    acc_o: &mut [[[f32; 4]; ND]; MT],
    acc_s: &[[[f32; 4]; NN]; MT],
    v_smem: u32,
) {
    let row_bytes = smem_row_bytes::<DV>();
    for kn in 0..KN {
        let mut a = [[0u32; 4]; MT];
        for m in 0..MT {
            let (lo, hi) = (&acc_s[m][2 * kn], &acc_s[m][2 * kn + 1]);
            a[m] = [E::pack2(lo[0], lo[1]), E::pack2(lo[2], lo[3]), E::pack2(hi[0], hi[1]), E::pack2(hi[2], hi[3])];
        }
        let mut nd = 0;
        while nd < ND {
            // Columns nd*8.. and nd*8+8.. of V, transposed into B fragments.
            let b = ldmatrix::x4_trans(v_smem + (kn * 16 * row_bytes + nd * 16) as u32);
            for m in 0..MT {
                E::mma(&mut acc_o[m][nd], &a[m], &[b[0], b[1]]);
                E::mma(&mut acc_o[m][nd + 1], &a[m], &[b[2], b[3]]);
            }
            nd += 2;
        }
    }
}

/// `cp.async.wait_group (STAGES - 2)`: with STAGES-1 blocks in flight ahead of the one computed next,
/// that one has landed when at most STAGES-2 younger groups are pending.
#[inline(always)]
fn wait_all_but<const STAGES: usize>() {
    match STAGES {
        2 => cp_async::wait::<0>(),
        3 => cp_async::wait::<1>(),
        _ => cp_async::wait::<2>(),
    }
}
