//! The fused FlashAttention backward on the GPU (`kernels-gpu/src/bwd/`): validation, tile choice and
//! the three launches (delta = rowsum(dO ∘ O); the main kernel over key blocks; dQ from its f32
//! accumulator). Memory beyond the inputs and gradients: the f32 dQ accumulator (`seqlen_q·heads_q·
//! head_dim` per batch), delta (one f32 per query row) and, in deterministic mode, one u32 per
//! (batch, query head, query block): nothing grows with seqlen_q·seqlen_k.
//!
//! Deterministic mode orders the dQ additions instead of splitting them: each (batch, query head,
//! query block) has a turn counter, and the CTA of key block n adds its dS·K part when the counter
//! reads n, then bumps it. The alternative, one f32 dQ slice per key block reduced afterwards, costs
//! `ceil(seqlen_k / block_n)·seqlen_q·head_dim` f32 per head, which grows with seqlen_q·seqlen_k;
//! the counters cost `ceil(seqlen_q / block_m)` u32 per head and no extra pass.

use crate::device::{Device, DeviceInfo};
use crate::dtype::{DType, Element};
use crate::error::{Arg, DriverContext, Error, Result};
use crate::gpu::forced_tile::check_forced_tile;
use crate::gpu::launch::{self, KernelParams, Launch};
use crate::gpu::score::{check_per_head, ScoreArgs};
use crate::gpu::scratch::Kind;
use crate::gpu::tensor::{check_f32_buffer, check_vector_strides, strides3, DeviceTensor};
use crate::gpu::tma;
use crate::gpu::varlen::{self, Packed};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use ironflash_kernels::abi::{self, BwdParams, BwdTensorMaps};
use ironflash_kernels::tiles_bwd::{self, BwdTile};

pub use ironflash_kernels::tiles_bwd::BwdTile as BackwardTile;

/// Grid y (heads) and z (batch) are limited to 65535 by the hardware.
const GRID_YZ_MAX: usize = 65535;
/// Threads per block of the delta kernel (8 warps, one query row each) and of the dQ kernel.
const DELTA_ROWS_PER_BLOCK: usize = 8;
const DQ_THREADS: usize = 256;
/// Threads and shared memory (one f32 per warp) of the sinks' gradient kernel (`bwd/prep.rs`).
const DSINK_THREADS: u32 = 256;
const DSINK_SMEM_BYTES: u32 = DSINK_THREADS / 32 * 4;

/// The gradients of one attention call, each contiguous in the shape of its input.
#[derive(Debug)]
pub struct GpuGradients<T> {
    pub dq: DeviceTensor<T>,
    pub dk: DeviceTensor<T>,
    pub dv: DeviceTensor<T>,
    /// With sinks: their gradient, f32 `[heads_q]` (at least `heads_q` values). Without sinks it is
    /// left as it is.
    pub d_sinks: Option<CudaSlice<f32>>,
}

impl<T: Element> GpuGradients<T> {
    /// Contiguous dQ, dK, dV (shaped like q, k, v), uninitialised.
    ///
    /// # Safety
    /// The caller must write every element before any is read.
    pub(crate) unsafe fn alloc_uninit(dev: &Device, p: &AttnProblem, call: &'static str) -> Result<Self> {
        dev.refuse_capture(call)?;
        let ordinal = dev.info().ordinal;
        let stream = dev.stream();
        let dq_layout = Layout::contiguous([p.batch, p.seqlen_q, p.heads_q, p.head_dim]);
        let dk_layout = Layout::contiguous([p.batch, p.seqlen_k, p.heads_kv, p.head_dim]);
        let dv_layout = Layout::contiguous([p.batch, p.seqlen_k, p.heads_kv, p.head_dim_v]);
        let dq = unsafe { stream.alloc::<T>(dq_layout.numel()) }.during("allocating dQ")?;
        let dk = unsafe { stream.alloc::<T>(dk_layout.numel()) }.during("allocating dK")?;
        let dv = unsafe { stream.alloc::<T>(dv_layout.numel()) }.during("allocating dV")?;
        let d_sinks =
            if p.sinks { Some(unsafe { stream.alloc::<f32>(p.heads_q) }.during("allocating d_sinks")?) } else { None };
        Ok(GpuGradients {
            dq: DeviceTensor { buf: dq, layout: dq_layout, ordinal },
            dk: DeviceTensor { buf: dk, layout: dk_layout, ordinal },
            dv: DeviceTensor { buf: dv, layout: dv_layout, ordinal },
            d_sinks,
        })
    }
}

/// The tile the fused backward uses on a device for the head dims of Q/K and of V, and an element type
/// (dense and packed batches alike).
pub fn backward_tile(info: &DeviceInfo, (head_dim, head_dim_v): (usize, usize), dtype: DType) -> Result<BwdTile> {
    if !dtype.is_half() {
        return Err(Error::UnsupportedDtype { arg: Arg::Q, dtype, path: "the fused backward kernel" });
    }
    let (optin, per_sm) = (info.smem_per_block_optin, info.smem_per_sm);
    let sm90a = info.runs_wgmma();
    tiles_bwd::choose_bwd(head_dim, head_dim_v, dtype.size_bytes(), optin, per_sm, sm90a).copied().ok_or_else(|| {
        Error::NoTileConfig(format!(
            "head_dim {head_dim}, head_dim_v {head_dim_v}, {dtype}: no compiled backward tile fits {} B of shared memory per block \
                 ({} B per SM) on {}",
            info.smem_per_block_optin, info.smem_per_sm, info.name
        ))
    })
}

/// Fused attention backward: dQ, dK, dV (contiguous, shaped like q, k, v) for the upstream gradient
/// `d_o`, from the forward's inputs, its output `o` and its f32 `lse` (`[batch, heads_q, seqlen_q]`,
/// natural log, `-inf` for rows that see no key; a longer buffer is fine, as `flash_forward_into`
/// accepts), as [`flash_forward`](crate::gpu::flash_forward) returns them. `o` and `d_o` are shaped
/// like O (q's batch, seqlen and heads, v's head dim) with any strides (multiples of 8 elements, last
/// dim contiguous). With GQA/MQA, dK and dV are summed over the query heads of each group.
/// `opts` must be the forward's (causality, scale); `opts.deterministic` makes the gradients bitwise
/// reproducible run to run (dQ contributions added in a fixed order) at some cost in speed.
#[allow(clippy::too_many_arguments)]
pub fn flash_backward<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    lse: &CudaSlice<f32>,
    d_o: &DeviceTensor<T>,
    opts: &AttnOptions,
) -> Result<GpuGradients<T>> {
    let plan = plan(dev, (q, k, v, o, lse, d_o), opts, None)?;
    // SAFETY: the dQ kernel writes every element of dq, the main kernel every row of dk and dv (every
    // key block has a CTA, and a CTA whose keys no query sees writes zeros).
    let mut grads = unsafe { GpuGradients::alloc_uninit(dev, &plan.p, "flash_backward") }?;
    flash_backward_into(dev, q, k, v, o, lse, d_o, &mut grads, opts)?;
    Ok(grads)
}

/// As [`flash_backward`], into caller-provided gradients: `grads.dq`, `grads.dk` and `grads.dv`
/// shaped like q, k and v, each with any non-overlapping strides (multiples of 8 elements, last dim
/// contiguous). Every element of the three is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn flash_backward_into<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    lse: &CudaSlice<f32>,
    d_o: &DeviceTensor<T>,
    grads: &mut GpuGradients<T>,
    opts: &AttnOptions,
) -> Result<()> {
    backward_into(dev, (q, k, v, o, lse, d_o), None, grads, opts, None)
}

/// As [`flash_backward_into`] with a given tile instead of the chooser's (benchmarks and tests of the
/// fallback tiles): `NoTileConfig` unless `tile` is a compiled backward tile for the head dim that fits
/// the device.
#[allow(clippy::too_many_arguments)]
pub fn flash_backward_with_tile<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    lse: &CudaSlice<f32>,
    d_o: &DeviceTensor<T>,
    grads: &mut GpuGradients<T>,
    opts: &AttnOptions,
    tile: &BwdTile,
) -> Result<()> {
    backward_into(dev, (q, k, v, o, lse, d_o), None, grads, opts, Some(tile))
}

/// `NoTileConfig` unless `tile` is a compiled backward row for the problem's head dims that fits the
/// device and exists in its PTX (the Hopper rows only in the sm_90a one).
fn check_forced_backward_tile(tile: &BwdTile, p: &AttnProblem, dtype: DType, info: &DeviceInfo) -> Result<()> {
    let dims = (p.head_dim, p.head_dim_v);
    let compiled = tiles_bwd::BWD_TILES.contains(tile) && (tile.head_dim, tile.head_dim_v) == dims;
    let dims = format!("head_dim {}, head_dim_v {}", dims.0, dims.1);
    check_forced_tile(tile, compiled, tile.wgmma, tile.smem_bytes(dtype.size_bytes()), "backward", &dims, info)
}

/// The backward's inputs: q, k, v, the forward's O and LSE, and dO.
pub(crate) type BackwardInputs<'a, T> = (
    &'a DeviceTensor<T>,
    &'a DeviceTensor<T>,
    &'a DeviceTensor<T>,
    &'a DeviceTensor<T>,
    &'a CudaSlice<f32>,
    &'a DeviceTensor<T>,
);

/// The one launch path of the fused backward, for a dense batch or a packed one (`seqs`: the
/// sequences of a packed batch, whose tensors are `[1, tokens, heads, head_dim]`; `gpu::varlen`).
pub(crate) fn backward_into<T: Element>(
    dev: &Device,
    inputs: BackwardInputs<'_, T>,
    packed: Option<Packed>,
    grads: &mut GpuGradients<T>,
    opts: &AttnOptions,
    tile: Option<&BwdTile>,
) -> Result<()> {
    let (q, k, v, o, lse, d_o) = inputs;
    let Plan { p, tile: chosen, grid_batch } = plan(dev, inputs, opts, packed)?;
    let seqs = packed.map(|pk| pk.seqs);
    let tile = match tile {
        None => chosen,
        Some(t) => {
            check_forced_backward_tile(t, &p, T::DTYPE, dev.info())?;
            *t
        }
    };
    for (arg, t) in [(Arg::DQ, &grads.dq), (Arg::DK, &grads.dk), (Arg::DV, &grads.dv)] {
        t.check_on(dev, arg)?;
        match arg {
            Arg::DQ => p.check_like_q(arg, &t.layout, t.buf.len())?,
            Arg::DK => p.check_like_k(arg, &t.layout, t.buf.len())?,
            _ => p.check_like_v(arg, &t.layout, t.buf.len())?,
        }
        check_vector_strides(arg, &t.layout)?;
    }
    if p.sinks {
        let Some(d_sinks) = &grads.d_sinks else {
            return Err(Error::ShapeMismatch {
                arg: Arg::DSinks,
                what: "length",
                got: 0,
                expected: p.heads_q,
                why: "a call with sinks returns their gradient: d_sinks needs one f32 per query head",
            });
        };
        check_f32_buffer(dev, Arg::DSinks, d_sinks, p.heads_q, "one f32 per query head")?;
    }
    let stream = dev.stream();
    let mut score = ScoreArgs::new(dev, &p, opts)?;
    // The main kernel's grid: (key blocks, K/V heads, sequences), a packed batch's sized by its longest
    // sequence; and the sequences' query rows (each sequence has as many turn counters).
    let (grid_keys, batch_queries, offsets) = match seqs {
        None => (p.seqlen_k, p.seqlen_q, None),
        Some(s) => {
            let (cu_q, cu_q_sync) = s.cu_seqlens_q.device_ptr(stream);
            let (cu_k, cu_k_sync) = s.cu_seqlens_k.device_ptr(stream);
            score.params.cu_seqlens_q = cu_q;
            score.params.cu_seqlens_k = cu_k;
            let shifts = packed.and_then(|pk| pk.diagonal_shifts).map(|d| d.device_ptr(stream));
            score.params.diagonal_shifts = shifts.as_ref().map_or(0, |d| d.0);
            (score.params.max_seqlen_q, score.params.max_seqlen_k) = (s.max_seqlen_q as u32, s.max_seqlen_k as u32);
            (s.max_seqlen_k, s.max_seqlen_q, Some((cu_q_sync, cu_k_sync, shifts.map(|d| d.1))))
        }
    };
    let (dq_layout, dk_layout, dv_layout) = (grads.dq.layout, grads.dk.layout, grads.dv.layout);
    let (dq, dk, dv) = (&mut grads.dq.buf, &mut grads.dk.buf, &mut grads.dv.buf);
    let mut d_sinks = grads.d_sinks.as_mut().filter(|_| p.sinks);
    // Deterministic mode: one turn counter per (sequence, query head, query block), then the work-item
    // ticket counter.
    let sem_len = if opts.deterministic { grid_batch * p.heads_q * tile.m_blocks(batch_queries) + 1 } else { 1 };
    let dq_counters = u32::try_from(sem_len).map_err(|_| Error::TooLarge {
        arg: Arg::Q,
        what: "the dQ turn counters",
        value: sem_len,
    })?;
    let layout = Workspace::new(&p, sem_len);
    // One piece of scratch for delta, the dQ accumulator and the counters (one driver call per backward,
    // none when the device keeps it): the delta kernel writes delta and zeroes the accumulator and the
    // counters before the main kernel reads any of them.
    let mut workspace = dev.scratch(Kind::Backward, 4 * layout.words, "allocating the backward's workspace")?;

    let f16 = T::DTYPE == DType::F16;
    let (delta_name, dq_name) =
        if f16 { (abi::BWD_DELTA_F16, abi::BWD_DQ_F16) } else { (abi::BWD_DELTA_BF16, abi::BWD_DQ_BF16) };
    let main_name = tile.symbol(f16, p.softcap.is_some(), seqs.is_some());
    let smem = tile.smem_bytes(T::DTYPE.size_bytes());
    let f_delta = dev.modules.function(&dev.ctx, delta_name, 0)?;
    let f_main = dev.modules.function(&dev.ctx, main_name, smem)?;
    let f_dq = dev.modules.function(&dev.ctx, dq_name, 0)?;
    let f_dsink =
        if p.sinks { Some(dev.modules.function(&dev.ctx, abi::BWD_DSINK, DSINK_SMEM_BYTES as usize)?) } else { None };

    {
        let (q_ptr, _q_sync) = q.buf.device_ptr(stream);
        let (k_ptr, _k_sync) = k.buf.device_ptr(stream);
        let (v_ptr, _v_sync) = v.buf.device_ptr(stream);
        let (o_ptr, _o_sync) = o.buf.device_ptr(stream);
        let (do_ptr, _do_sync) = d_o.buf.device_ptr(stream);
        let (lse_ptr, _lse_sync) = lse.device_ptr(stream);
        let (dq_ptr, _dq_sync) = dq.device_ptr_mut(stream);
        let (dk_ptr, _dk_sync) = dk.device_ptr_mut(stream);
        let (dv_ptr, _dv_sync) = dv.device_ptr_mut(stream);
        let workspace_ptr = workspace.ptr(stream);
        let [delta_ptr, acc_ptr, sem_ptr] = layout.offsets.map(|words| workspace_ptr + 4 * words as u64);
        let (d_sinks_ptr, _d_sinks_sync) = match d_sinks.as_mut() {
            Some(s) => {
                let (ptr, sync) = s.device_ptr_mut(stream);
                (ptr, Some(sync))
            }
            None => (0, None),
        };
        let params = BwdParams {
            q: q_ptr,
            k: k_ptr,
            v: v_ptr,
            o: o_ptr,
            d_o: do_ptr,
            dq: dq_ptr,
            dk: dk_ptr,
            dv: dv_ptr,
            lse: lse_ptr,
            delta: delta_ptr,
            dq_accum: acc_ptr,
            dq_semaphore: sem_ptr,
            dq_ticket: sem_ptr + 4 * (sem_len as u64 - 1),
            q_strides: strides3(&q.layout),
            k_strides: strides3(&k.layout),
            v_strides: strides3(&v.layout),
            o_strides: strides3(&o.layout),
            d_o_strides: strides3(&d_o.layout),
            dq_strides: strides3(&dq_layout),
            dk_strides: strides3(&dk_layout),
            dv_strides: strides3(&dv_layout),
            batch: p.batch as u32,
            score: score.params,
            d_sinks: d_sinks_ptr,
            heads_q: p.heads_q as u32,
            group: p.group_size() as u32,
            head_dim: p.head_dim as u32,
            head_dim_v: p.head_dim_v as u32,
            scale: p.softmax_scale,
            deterministic: opts.deterministic as u32,
            dq_counters,
        };
        let arg = KernelParams(params);
        let rows = p.lse_len();
        // The TMA rows read Q and dO through tensor maps (a packed batch's over its tokens: `p` is then
        // the token problem, batch 1), passed to the main kernel as a second parameter.
        let maps = if tile.tma {
            let map = |ptr, dims, layout: &Layout| {
                let s = layout.strides;
                tma::tensor_map(T::DTYPE, ptr, dims, [s[0], s[1], s[2]], tile.block_m)
            };
            Some(KernelParams(BwdTensorMaps {
                q: map(q_ptr, [p.batch, p.seqlen_q, p.heads_q, p.head_dim], &q.layout)?,
                d_o: map(do_ptr, [p.batch, p.seqlen_q, p.heads_q, p.head_dim_v], &d_o.layout)?,
            }))
        } else {
            None
        };
        let delta_cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(DELTA_ROWS_PER_BLOCK) as u32, 1, 1),
            block_dim: (DELTA_ROWS_PER_BLOCK as u32 * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let main_cfg = LaunchConfig {
            grid_dim: (grid_keys.div_ceil(tile.block_n) as u32, p.heads_kv as u32, grid_batch as u32),
            block_dim: (tile.threads() as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let dq_cfg = LaunchConfig {
            grid_dim: ((rows * p.head_dim / 8).div_ceil(DQ_THREADS) as u32, 1, 1),
            block_dim: (DQ_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let main = Launch::new(&f_main, main_name, main_cfg, &arg);
        let mut launches = vec![
            Launch::new(&f_delta, delta_name, delta_cfg, &arg),
            match &maps {
                Some(maps) => main.arg(maps),
                None => main,
            },
            Launch::new(&f_dq, dq_name, dq_cfg, &arg),
        ];
        if let Some(f) = &f_dsink {
            let cfg = LaunchConfig {
                grid_dim: (p.heads_q as u32, 1, 1),
                block_dim: (DSINK_THREADS, 1, 1),
                shared_mem_bytes: DSINK_SMEM_BYTES,
            };
            launches.push(Launch::new(f, abi::BWD_DSINK, cfg, &arg));
        }
        // A packed batch without keys has no key block (dQ is then zero, from the accumulator's zeros).
        launches.retain(|l| l.has_blocks());
        // SAFETY: `plan` validated every layout against its buffer, the strides' alignment, the LSE
        // length and the index limits; every pointer is live for the launches (their sync guards
        // outlive them on this stream), the maps describe the same buffers within those layouts, and
        // the kernels run in stream order.
        unsafe { launch::enqueue(dev, &launches) }?;
    }
    drop(offsets);
    Ok(())
}

/// Where the backward's scratch lives in its one allocation, in u32 words: delta (one f32 per query
/// row), the f32 dQ accumulator (`[batch, heads_q, seqlen_q, head_dim]`) and the `sem_len` dQ
/// counters, each part starting on a 256-byte boundary (the accumulator's 16-byte vector stores and
/// bulk reductions need 16).
struct Workspace {
    offsets: [usize; 3],
    words: usize,
}

impl Workspace {
    fn new(p: &AttnProblem, sem_len: usize) -> Workspace {
        let part = |words: usize| words.next_multiple_of(64);
        let delta = 0;
        let acc = delta + part(p.lse_len());
        let sem = acc + part(p.lse_len() * p.head_dim);
        Workspace { offsets: [delta, acc, sem], words: sem + part(sem_len) }
    }
}

/// A validated backward call: the problem (a packed batch's over its token counts, batch 1), the tile,
/// and the main kernel's batch of sequences (a packed batch's number of sequences).
struct Plan {
    p: AttnProblem,
    tile: BwdTile,
    grid_batch: usize,
}

/// Everything checked before a launch: dtype, devices, shapes and strides, LSE length, index limits,
/// and a packed batch's offsets (as the varlen forward checks them).
fn plan<T: Element>(
    dev: &Device,
    (q, k, v, o, lse, d_o): BackwardInputs<'_, T>,
    opts: &AttnOptions,
    packed: Option<Packed>,
) -> Result<Plan> {
    if !T::DTYPE.is_half() {
        return Err(Error::UnsupportedDtype { arg: Arg::Q, dtype: T::DTYPE, path: "the fused backward kernel" });
    }
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v), (Arg::O, o), (Arg::DO, d_o)] {
        t.check_on(dev, arg)?;
    }
    let layouts = [(&q.layout, q.buf.len()), (&k.layout, k.buf.len()), (&v.layout, v.buf.len())];
    let (p, sequences) = match packed {
        None => (AttnProblem::new(layouts[0], layouts[1], layouts[2], opts)?, None),
        Some(packed) => {
            let (p, batch) = varlen::packed_plan(dev, layouts, packed, opts)?;
            (p, Some(batch))
        }
    };
    check_per_head(dev, opts)?;
    for (arg, t) in [(Arg::O, o), (Arg::DO, d_o)] {
        p.check_input_like_o(arg, &t.layout, t.buf.len())?;
    }
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v), (Arg::O, o), (Arg::DO, d_o)] {
        check_vector_strides(arg, &t.layout)?;
    }
    let why = if packed.is_some() {
        "at least one f32 per (head_q, query token), [heads_q, tokens_q]"
    } else {
        "at least one f32 per (batch, head_q, query row), [batch, heads_q, seqlen_q]"
    };
    check_f32_buffer(dev, Arg::Lse, lse, p.lse_len(), why)?;
    let grid_batch = sequences.unwrap_or(p.batch);
    for (what, value) in [("heads_kv", p.heads_kv), ("batch", grid_batch)] {
        if value > GRID_YZ_MAX {
            return Err(Error::TooLarge { arg: Arg::K, what, value });
        }
    }
    // Row indices `(b·heads_q + h)·seqlen_q + i` and the dQ kernel's thread index stay in 32 bits.
    let elems = p.lse_len() * p.head_dim;
    if elems / 8 > i32::MAX as usize || p.batch * p.heads_q > u32::MAX as usize {
        return Err(Error::TooLarge { arg: Arg::Q, what: "batch·heads_q·seqlen_q·head_dim", value: elems });
    }
    let tile = backward_tile(dev.info(), (p.head_dim, p.head_dim_v), T::DTYPE)?;
    Ok(Plan { p, tile, grid_batch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironflash_kernels::tiles_bwd::{
        BWD_HD128_M32, BWD_HD128_M80_WGMMA_TMA, BWD_HD128_WGMMA, BWD_HD128_WGMMA_TMA, BWD_HD192, BWD_HD192_V128,
        BWD_HD192_V128_WGMMA_TMA, BWD_HD192_WGMMA_TMA, BWD_HD256, BWD_HD256_WGMMA_TMA,
    };

    fn info(cc: (i32, i32), smem_optin_kib: usize, smem_sm_kib: usize) -> DeviceInfo {
        DeviceInfo {
            ordinal: 0,
            name: format!("test sm_{}{}", cc.0, cc.1),
            compute_capability: cc,
            sm_count: 108,
            smem_per_block_optin: smem_optin_kib * 1024,
            smem_per_sm: smem_sm_kib * 1024,
            l2_bytes: 40 << 20,
            total_mem: 80 << 30,
            driver_version: 13000,
        }
    }

    #[test]
    fn hopper_tile_only_on_compute_capability_9_0() {
        let h100 = info((9, 0), 227, 228);
        let a100 = info((8, 0), 163, 164);
        let l40 = info((8, 9), 99, 100);
        let problem = |d, dv| AttnProblem::contiguous_with_head_dim_v([1, 8, 8, 1, 1, d], dv, &Default::default());
        let (p128, p64) = (problem(128, 128).unwrap(), problem(64, 64).unwrap());
        assert_eq!(backward_tile(&h100, (128, 128), DType::BF16).unwrap(), BWD_HD128_M80_WGMMA_TMA);
        assert_eq!(backward_tile(&a100, (128, 128), DType::BF16).unwrap(), BWD_HD128_M32);
        assert!(check_forced_backward_tile(&BWD_HD128_WGMMA, &p128, DType::BF16, &h100).is_ok());
        assert!(check_forced_backward_tile(&BWD_HD128_M32, &p128, DType::F16, &h100).is_ok());
        for other in [&a100, &l40] {
            let e = check_forced_backward_tile(&BWD_HD128_WGMMA, &p128, DType::BF16, other).unwrap_err();
            assert!(matches!(e, Error::NoTileConfig(_)), "{e}");
        }
        assert!(check_forced_backward_tile(&BWD_HD128_WGMMA, &p64, DType::BF16, &h100).is_err());
        // A value head dim of its own: the head-dim split Hopper row, the `mma.sync` row made for it
        // elsewhere (and when forced).
        assert_eq!(backward_tile(&h100, (192, 128), DType::BF16).unwrap(), BWD_HD192_V128_WGMMA_TMA);
        assert_eq!(backward_tile(&a100, (192, 128), DType::BF16).unwrap(), BWD_HD192_V128);
        let p192 = problem(192, 128).unwrap();
        assert!(check_forced_backward_tile(&BWD_HD192_V128, &p192, DType::BF16, &h100).is_ok());
        assert!(check_forced_backward_tile(&BWD_HD192, &p192, DType::BF16, &h100).is_err());
        assert!(check_forced_backward_tile(&BWD_HD128_WGMMA_TMA, &p128, DType::BF16, &h100).is_ok());
        assert!(check_forced_backward_tile(&BWD_HD128_M80_WGMMA_TMA, &p64, DType::BF16, &h100).is_err());
        // Head dims 192 and 256: the head-dim split Hopper rows, the `mma.sync` rows elsewhere.
        assert_eq!(backward_tile(&h100, (256, 256), DType::BF16).unwrap(), BWD_HD256_WGMMA_TMA);
        assert_eq!(backward_tile(&h100, (192, 192), DType::F16).unwrap(), BWD_HD192_WGMMA_TMA);
        assert_eq!(backward_tile(&info((9, 0), 227, 228), (256, 256), DType::BF16).unwrap().block_n, 64);
        assert!(!backward_tile(&l40, (256, 256), DType::BF16).is_ok_and(|t| t.wgmma));
        assert_ne!(backward_tile(&a100, (256, 256), DType::BF16).unwrap(), BWD_HD256_WGMMA_TMA);
        let p256 = problem(256, 256).unwrap();
        assert!(check_forced_backward_tile(&BWD_HD256, &p256, DType::BF16, &h100).is_ok());
        assert!(check_forced_backward_tile(&BWD_HD256_WGMMA_TMA, &p256, DType::BF16, &a100).is_err());
    }
}
