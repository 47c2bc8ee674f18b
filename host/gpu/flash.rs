//! The fused FlashAttention forward on the GPU (`kernels-gpu/src/fwd/`): validation, tile choice,
//! launch. O = softmax(scale·QKᵀ + mask)·V and the f32 LSE, without materialising the score matrix.

use crate::device::{Device, DeviceInfo};
use crate::dtype::{DType, Element};
use crate::error::{Arg, DriverContext, Error, Result};
use crate::gpu::forced_tile::check_forced_tile;
use crate::gpu::launch::{self, KernelParams, Launch};
use crate::gpu::score::{check_per_head, ScoreArgs};
use crate::gpu::scratch::{Kind, Scratch};
use crate::gpu::tensor::{check_f32_buffer, check_vector_strides, strides3, DeviceTensor, GpuForwardOutput};
use crate::gpu::tma;
use crate::layout::Layout;
use crate::modules::Arch;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use ironflash_kernels::abi::{self, FwdCombineParams, FwdParams, FwdTensorMaps, PageTable};
use ironflash_kernels::attn::score::Mask;
use ironflash_kernels::tiles::{self, BatchLayout, FwdTile};

pub use ironflash_kernels::tiles::FwdTile as ForwardTile;

/// Grid y (heads) and z (batch) are limited to 65535 by the hardware.
const GRID_YZ_MAX: usize = 65535;
/// Most key-range splits of one (query block, head, batch) (split-KV): bounds the workspace and the
/// combine's work per row.
pub const MAX_SPLITS: usize = 128;
/// Fewest key blocks per split: each split pays a prologue (Q load, pipeline fill), an f32 partial
/// output and its share of the combine. Measured on H100 (docs/perf.md, "The serving decode grid"): at
/// 8K keys (128 blocks of 64), B = 1, 16 splits of 8 blocks took 0.033 ms with 32 query heads on 8 K/V
/// heads against 0.043 ms for 8 of 16, and 0.044 against 0.046 ms with 16 heads on 16.
const MIN_BLOCKS_PER_SPLIT: usize = 8;
/// The grid fills the device well enough unsplit from this fraction of one wave on (FA2's 0.8).
const FULL_WAVE_FRACTION: f64 = 0.8;

/// Split-KV count for a grid of `ctas` CTAs (query blocks × heads × batch) on a device with `slots`
/// resident CTAs (SMs × CTAs per SM), each CTA visiting up to `n_blocks` key blocks, where `busy` CTAs
/// already keep the device busy unsplit. 1 (no split) when the grid fills `FULL_WAVE_FRACTION` of
/// `busy`.
///
/// Otherwise the most splits that still fit in one wave (`ctas·s <= slots`), within `MAX_SPLITS` and
/// `MIN_BLOCKS_PER_SPLIT`. FA2's heuristic instead takes the first count within 85% of the best wave
/// efficiency over any number of waves; on H100 at B=1, H=16, 64K keys that is 14 splits (224 of 264
/// slots, 0.26 ms) where 16 (256 slots) measured 0.23 ms and every count past one wave was slower: a
/// decode CTA is bandwidth-bound, so one full wave of concurrent streams is what counts.
pub fn num_splits_heuristic(ctas: usize, slots: usize, busy: usize, n_blocks: usize) -> usize {
    if ctas == 0 || ctas as f64 >= FULL_WAVE_FRACTION * busy as f64 {
        return 1;
    }
    (slots / ctas).min(n_blocks / MIN_BLOCKS_PER_SPLIT).clamp(1, MAX_SPLITS)
}

/// The split count the fused forward uses for a problem with a tile on a device (1: no split).
///
/// A CTA whose query rows fill at most an eighth of its tile (decode: one row, or a GQA group's query
/// heads packed as rows) reads K/V with cheap products: one such CTA per SM keeps the memory busy, and
/// splitting a grid that has them costs the partial outputs and the combine for nothing (H100, 8
/// sequences, 16 heads: unsplit 0.184 ms at 8K keys and 1.396 ms at 64K against 0.206 and 1.529 ms
/// split in two). Any other CTA wants every resident slot.
pub fn forward_num_splits(info: &DeviceInfo, p: &AttnProblem, tile: &FwdTile) -> usize {
    let ctas = p.seqlen_q.div_ceil(tile.block_m) * p.heads_q * p.batch;
    let slots = info.sm_count as usize * tile.ctas_per_sm;
    let bandwidth_bound = p.seqlen_q * 8 <= tile.block_m;
    let busy = if bandwidth_bound { info.sm_count as usize } else { slots };
    num_splits_heuristic(ctas, slots, busy, p.seqlen_k.div_ceil(tile.block_n))
}

/// f32 elements of the split-KV workspace for `splits` (0 when unsplit): partial O
/// `[splits, batch, heads_q, seqlen_q, head_dim_v]` and partial LSE `[splits, batch, heads_q, seqlen_q]`.
pub fn forward_workspace_f32(p: &AttnProblem, splits: usize) -> (usize, usize) {
    split_workspace_f32(p.lse_len(), p.head_dim_v, splits)
}

/// The split-KV workspace for `lse_rows` rows of the LSE layout: `splits` partial LSE layouts, and as
/// many partial O rows of `head_dim_v`.
fn split_workspace_f32(lse_rows: usize, head_dim_v: usize, splits: usize) -> (usize, usize) {
    if splits <= 1 {
        return (0, 0);
    }
    (splits * lse_rows * head_dim_v, splits * lse_rows)
}

/// The tile the fused forward uses on a device for the head dims of Q/K and of V, element type and
/// causality (what `ironflash info` prints): the tile of a dense batch.
pub fn forward_tile(info: &DeviceInfo, head_dims: (usize, usize), dtype: DType, causal: bool) -> Result<FwdTile> {
    let _ = causal;
    layout_tile(info, head_dims, dtype, BatchLayout::Dense, |_| true)
}

/// The chooser's tile among the rows with an unsplit kernel for a batch layout that run on this device
/// and that `fits` the call (a paged call's page size: [`paged_tile`]), so that a packed or paged call
/// may take a later row of the table than a dense one.
pub(crate) fn layout_tile(
    info: &DeviceInfo,
    (head_dim, head_dim_v): (usize, usize),
    dtype: DType,
    layout: BatchLayout,
    fits: impl Fn(&FwdTile) -> bool,
) -> Result<FwdTile> {
    if !dtype.is_half() {
        return Err(Error::UnsupportedDtype { arg: Arg::Q, dtype, path: "the fused forward kernel" });
    }
    let (optin, per_sm) = (info.smem_per_block_optin, info.smem_per_sm);
    let sm90a = info.runs_wgmma();
    let runs = |t: &FwdTile| (sm90a || !t.wgmma) && !t.kernel_symbol(false, false, layout).is_empty() && fits(t);
    tiles::choose_fwd_among(head_dim, head_dim_v, dtype.size_bytes(), optin, per_sm, runs).copied().ok_or_else(|| {
        Error::NoTileConfig(format!(
            "head_dim {head_dim}, head_dim_v {head_dim_v}, {dtype}: no compiled {layout:?} forward tile fits {} B of shared \
             memory per block ({} B per SM) on {}",
            info.smem_per_block_optin, info.smem_per_sm, info.name
        ))
    })
}

/// The kernel and split count for a problem, starting from the chooser's tile: a Hopper (`wgmma`) row has
/// no split-KV kernel, so where the grid is small enough to split (decode), the `mma.sync` row the
/// chooser picks without Hopper rows runs split instead; where the call launches a persistent kernel
/// and the chooser's row has none, the first row with one (`persistent_tile`).
pub fn forward_launch_plan(info: &DeviceInfo, p: &AttnProblem, tile: &FwdTile, dtype: DType) -> (FwdTile, usize) {
    if !tile.wgmma {
        return (*tile, forward_num_splits(info, p, tile));
    }
    if let Some(base) = split_kv_tile(info, p, dtype) {
        let splits = forward_num_splits(info, p, &base);
        if splits > 1 {
            return (base, splits);
        }
    }
    (persistent_tile(info, p, tile, dtype), 1)
}

/// `tile`, or where a dense call would launch a persistent kernel (`forward_grid`) and `tile` has
/// none, the chooser's first row for the head dims that has one: a persistent CTA's next tile's loads
/// run under its current tile's products. At head dim 64 the TMA row, which one tile per CTA trails the
/// `cp.async` row (chosen first), leads it persistent (docs/perf.md, "The persistent forward landed").
fn persistent_tile(info: &DeviceInfo, p: &AttnProblem, tile: &FwdTile, dtype: DType) -> FwdTile {
    let dense = BatchLayout::Dense;
    if tile.persistent(false, dense) {
        return *tile;
    }
    let head_dims = (p.head_dim, p.head_dim_v);
    match layout_tile(info, head_dims, dtype, dense, |t| t.persistent(false, dense)) {
        // The grid that row's launch would take.
        Ok(row) if matches!(forward_grid(info, p, &row, (1, dense), None), Ok((_, order)) if order.persistent()) => row,
        _ => *tile,
    }
}

/// The tile of a call over a paged cache (`gpu::paged`) with pages of `page_size` keys: the chooser's
/// among the rows with a paged kernel for that page size (`FwdTile::paged_box_rows`), the TMA rows
/// first; but where their boxes would hold fewer than [`PAGED_TMA_SMALL_BOX`] keys and the call has
/// fewer than [`PAGED_TMA_FEW_QUERIES`] queries per sequence (decode), an `mma.sync` row: a TMA box costs
/// the loader an instruction per 2-8 KiB there, which bandwidth-bound calls feel (pages of 16 at
/// B = 64: 0.84-0.91x the `mma.sync` row at 4K-16K keys), where chunked prefill still gains 1.7-1.9x
/// (docs/perf.md, "Paged caches on the TMA rows").
pub(crate) fn paged_tile(info: &DeviceInfo, p: &AttnProblem, dtype: DType, page_size: usize) -> Result<FwdTile> {
    let fits = |t: &FwdTile| match t.paged_box_rows(page_size) {
        None => false,
        Some(rows) => rows == 0 || rows >= PAGED_TMA_SMALL_BOX || p.seqlen_q >= PAGED_TMA_FEW_QUERIES,
    };
    layout_tile(info, (p.head_dim, p.head_dim_v), dtype, BatchLayout::Paged, fits)
}

/// Keys per TMA box from which a paged call with few queries takes a TMA row ([`paged_tile`]).
const PAGED_TMA_SMALL_BOX: usize = 64;
/// Queries per sequence from which a paged call takes a TMA row whatever its boxes ([`paged_tile`]).
const PAGED_TMA_FEW_QUERIES: usize = 64;

/// [`split_kv_tile`], or `NoTileConfig` for a forced split count where no row fits.
fn split_kv_tile_or_error(info: &DeviceInfo, p: &AttnProblem, dtype: DType) -> Result<FwdTile> {
    split_kv_tile(info, p, dtype).ok_or_else(|| {
        Error::NoTileConfig(format!(
            "head_dim {}, head_dim_v {}: no split-KV forward tile fits {}",
            p.head_dim, p.head_dim_v, info.name
        ))
    })
}

/// The chooser's tile among the rows that have split-KV kernels (the `mma.sync` ones).
fn split_kv_tile(info: &DeviceInfo, p: &AttnProblem, dtype: DType) -> Option<FwdTile> {
    let (optin, per_sm) = (info.smem_per_block_optin, info.smem_per_sm);
    tiles::choose_fwd(p.head_dim, p.head_dim_v, dtype.size_bytes(), p.causal, optin, per_sm, false).copied()
}

/// `NoTileConfig` unless a forced forward tile is a compiled row for the head dims that fits the device,
/// runs on it (Hopper rows need compute capability 9.0) and, when split, has a split-KV kernel.
fn check_forced_forward_tile(
    tile: &FwdTile,
    p: &AttnProblem,
    dtype: DType,
    info: &DeviceInfo,
    splits: usize,
) -> Result<()> {
    let (head_dim, has_kernel) = (p.head_dim, !tile.wgmma || splits <= 1);
    let compiled =
        tiles::FWD_TILES.contains(tile) && (tile.head_dim, tile.head_dim_v) == (head_dim, p.head_dim_v) && has_kernel;
    let dims = format!("head_dim {head_dim}, head_dim_v {}", p.head_dim_v);
    check_forced_tile(tile, compiled, tile.wgmma, tile.smem_bytes(dtype.size_bytes()), "forward", &dims, info)
}

/// Fused attention forward: O (contiguous, shaped like q but with v's head dim) and the f32 LSE `[batch, heads_q, seqlen_q]`
/// (natural log; `-inf` and O = 0 for rows that see no key).
///
/// When query blocks × heads × batch would leave most of the device idle (decode, small batches), the
/// key range is split ([`forward_num_splits`]) and a combine kernel merges the partial results; that
/// takes a temporary f32 workspace of `splits · batch · heads_q · seqlen_q · (head_dim_v + 1)` elements
/// ([`forward_workspace_f32`]; independent of seqlen_k, at most 128 splits), allocated and freed on the
/// device's stream. Results are bitwise reproducible either way.
pub fn flash_forward<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    opts: &AttnOptions,
) -> Result<GpuForwardOutput<T>> {
    let (p, tile) = plan(dev, q, k, v, opts)?;
    dev.refuse_capture("flash_forward")?;
    let o_layout = Layout::contiguous(p.o_shape());
    // SAFETY: the kernel writes every element of O and of the LSE (fully masked rows included).
    let mut o = unsafe { dev.stream.alloc::<T>(o_layout.numel()) }.during("allocating O")?;
    let mut lse = unsafe { dev.stream.alloc::<f32>(p.lse_len()) }.during("allocating the LSE")?;
    let plan_for = |run: &AttnProblem| Ok(forward_launch_plan(dev.info(), run, &tile, T::DTYPE));
    let (rows, tile, splits) = plan_rows(&p, opts, (&q.layout, &o_layout), true, plan_for)?;
    let (run, q_layout, run_o_layout) = run_view(rows.as_ref(), &p, q.layout, o_layout);
    launch(
        dev,
        run,
        opts,
        BatchLaunch::Dense,
        rows.as_ref(),
        (&tile, splits, None),
        (&q.buf, &q_layout),
        k,
        v,
        (&mut o, &run_o_layout),
        &mut lse,
    )?;
    Ok(GpuForwardOutput { o: DeviceTensor { buf: o, layout: o_layout, ordinal: dev.info().ordinal }, lse })
}

/// As [`flash_forward`], into caller-provided buffers: `o` shaped like O (q's batch, rows and heads,
/// v's head dim) with any non-overlapping
/// strides (multiples of 8 elements, last dim contiguous), `lse` at least `batch·heads_q·seqlen_q` f32,
/// written contiguously as `[batch, heads_q, seqlen_q]`.
pub fn flash_forward_into<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &mut DeviceTensor<T>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
) -> Result<()> {
    forward_into(dev, q, k, v, o, lse, opts, None, None, None)
}

/// As [`flash_forward_into`] with an explicit tile instead of the chooser's: for tests and tile
/// benchmarks. `tile` must be a row of `ironflash_kernels::tiles::FWD_TILES` for the problem's head dims (`head_dim`, `head_dim_v`) whose
/// shared memory fits this device (else `Error::NoTileConfig`).
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_with_tile<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &mut DeviceTensor<T>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: &FwdTile,
) -> Result<()> {
    forward_into(dev, q, k, v, o, lse, opts, Some(tile), None, None)
}

/// As [`flash_forward_into`] with an optional explicit tile (as [`flash_forward_with_tile`]) and an
/// optional split-KV count instead of [`forward_num_splits`]'s: for tests and benchmarks. `num_splits`
/// must be in `1..=MAX_SPLITS`; 1 forces the unsplit kernel.
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_with_splits<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &mut DeviceTensor<T>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: Option<&FwdTile>,
    num_splits: usize,
) -> Result<()> {
    check_num_splits(num_splits)?;
    forward_into(dev, q, k, v, o, lse, opts, tile, Some(num_splits), None)
}

/// As [`flash_forward_into`] with a persistent kernel (the dense TMA rows, `FwdTile::persistent`) forced:
/// `ctas` CTAs (clamped to the call's tiles) taking the tiles in `order` (rounds or tickets) instead
/// of [`forward_grid`]'s choice, on the chooser's tile or `tile` (as [`flash_forward_with_tile`]): for
/// tests and benchmarks of those kernels, on any shape (CTA counts from one, which takes every tile, to
/// more than the tiles; calls of at most a wave, which the launch plan gives one CTA per tile; either
/// order on tiles of any lengths). `Error::NoTileConfig` where that tile has no persistent kernel or
/// `order` is [`TileOrder::OnePerTile`].
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_persistent<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &mut DeviceTensor<T>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: Option<&FwdTile>,
    ctas: usize,
    order: TileOrder,
) -> Result<()> {
    if !order.persistent() {
        return Err(Error::NoTileConfig("a forced persistent launch takes its tiles in rounds or by ticket".into()));
    }
    forward_into(dev, q, k, v, o, lse, opts, tile, Some(1), Some((ctas, order)))
}

/// `TooLarge` unless a forced split count is in `1..=MAX_SPLITS`.
pub(crate) fn check_num_splits(num_splits: usize) -> Result<()> {
    if !(1..=MAX_SPLITS).contains(&num_splits) {
        return Err(Error::TooLarge { arg: Arg::Q, what: "num_splits (1..=128)", value: num_splits });
    }
    Ok(())
}

/// The kernel row and split count of a launch: the launch plan from the chooser's tile `chosen`
/// ([`forward_launch_plan`]), or a forced tile (checked; its split count from the heuristic unless
/// forced too) or a forced split count (on the `mma.sync` row where the chosen one cannot split).
pub(crate) fn launch_choice(
    info: &DeviceInfo,
    p: &AttnProblem,
    chosen: &FwdTile,
    tile: Option<&FwdTile>,
    num_splits: Option<usize>,
    dtype: DType,
) -> Result<(FwdTile, usize)> {
    Ok(match (tile, num_splits) {
        (None, None) => forward_launch_plan(info, p, chosen, dtype),
        // A forced split count needs a split kernel: the `mma.sync` row for this head dim.
        (None, Some(n)) if chosen.wgmma && n > 1 => (split_kv_tile_or_error(info, p, dtype)?, n),
        (None, Some(n)) => (*chosen, n),
        (Some(t), n) => {
            let splits = n.unwrap_or_else(|| if t.wgmma { 1 } else { forward_num_splits(info, p, t) });
            check_forced_forward_tile(t, p, dtype, info, splits)?;
            (*t, splits)
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn forward_into<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &mut DeviceTensor<T>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: Option<&FwdTile>,
    num_splits: Option<usize>,
    forced: Option<(usize, TileOrder)>,
) -> Result<()> {
    let (p, chosen) = plan(dev, q, k, v, opts)?;
    check_outputs(dev, &p, o, lse, "one f32 per (batch, head_q, query row)")?;
    let plan_for = |run: &AttnProblem| launch_choice(dev.info(), run, &chosen, tile, num_splits, T::DTYPE);
    let (rows, tile, splits) = plan_rows(&p, opts, (&q.layout, &o.layout), true, plan_for)?;
    let (run, q_layout, o_layout) = run_view(rows.as_ref(), &p, q.layout, o.layout);
    let o_run = (&mut o.buf, &o_layout);
    let kernel = (&tile, splits, forced);
    launch(dev, run, opts, BatchLaunch::Dense, rows.as_ref(), kernel, (&q.buf, &q_layout), k, v, o_run, lse)
}

/// Caller-provided O and LSE of a forward: O on the device, shaped like the problem's O with vector
/// strides, and at least `p.lse_len()` f32 of LSE (`lse_why`: its layout, for the error).
pub(crate) fn check_outputs<T: Element>(
    dev: &Device,
    p: &AttnProblem,
    o: &DeviceTensor<T>,
    lse: &CudaSlice<f32>,
    lse_why: &'static str,
) -> Result<()> {
    o.check_on(dev, Arg::O)?;
    p.check_like_o(Arg::O, &o.layout, o.buf.len())?;
    check_vector_strides(Arg::O, &o.layout)?;
    check_f32_buffer(dev, Arg::Lse, lse, p.lse_len(), lse_why)
}

/// Decode with grouped query heads (GQA/MQA): with one query row per sequence, the query heads that
/// share a K/V head become that head's query rows (q `[b, 1, heads_q, d]` seen as
/// `[b, group, heads_kv, d]`, a strided view, and O likewise), so that one CTA (per split) reads each
/// K/V head once for its whole group instead of once per query head. The LSE `[b, heads_q, 1]` is the
/// same memory as `[b, heads_kv, group]`. Exact: the single row sees one range of keys, the same for
/// every query head, so the packed rows run unmasked over it:
/// - a window's left edge: the row sees keys `seqlen_k - 1 - left ..= seqlen_k - 1` (its right edge
///   hides nothing, the row being the last): the launch reads K and V from `first_key` on, over
///   `seqlen_k - first_key` keys;
/// - sinks (one per query head): the unsplit kernels give each row its own query head's
///   (`FwdParams::sinks_by_row`); the split kernels leave them to the combine, which runs over the
///   call's own rows (`call_heads_q`, `call_o`), query head by query head.
///
/// Both only with `dense_kv` (K and V dense tensors, every sequence with `seqlen_k ≥ 1` keys): a paged
/// cache's pages cannot be cut at a window's first key, and a paged sequence may hold no key, whose
/// rows the kernels give one sink per head; paged rows with a window or sinks stay as given. ALiBi
/// depends on the query head in the kernels, so it keeps the problem as given, as do calls with more
/// than one query row or without grouping (`None`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct HeadsAsRows {
    /// What the kernels run: `group` rows per K/V head over the keys from `first_key`, no mask.
    pub run: AttnProblem,
    pub q: Layout,
    pub o: Layout,
    /// The single row's first visible key: K and V are read from there.
    pub first_key: usize,
    /// The call's query heads and O: where the combine writes each query head's row and adds its sink.
    pub call_heads_q: usize,
    pub call_o: Layout,
}

pub(crate) fn pack_query_heads(
    p: &AttnProblem,
    opts: &AttnOptions,
    q: &Layout,
    o: &Layout,
    dense_kv: bool,
) -> Option<HeadsAsRows> {
    let group = p.group_size();
    // With one row, only a left window edge hides keys (`Mask::is_windowed`).
    let windowed = p.mask.is_windowed();
    let dense_only = windowed || opts.sinks.is_some();
    if p.seqlen_q != 1 || group == 1 || opts.alibi_slopes.is_some() || (dense_only && !dense_kv) {
        return None;
    }
    let first_key = if windowed { p.seqlen_k - 1 - p.mask.left as usize } else { 0 };
    let heads_as_rows = |l: &Layout| {
        let [b, _, _, d] = l.shape;
        let [sb, _, sh, _] = l.strides;
        Layout { shape: [b, group, p.heads_kv, d], strides: [sb, sh, group * sh, 1] }
    };
    let seqlen_k = p.seqlen_k - first_key;
    let run = AttnProblem {
        seqlen_q: group,
        seqlen_k,
        heads_q: p.heads_kv,
        causal: false,
        mask: Mask::new(group as u32, seqlen_k as u32, false, None, None),
        ..*p
    };
    Some(HeadsAsRows { run, q: heads_as_rows(q), o: heads_as_rows(o), first_key, call_heads_q: p.heads_q, call_o: *o })
}

/// The launch of a call whose query heads may run as rows ([`pack_query_heads`]): the packed problem and
/// its plan (`plan_for`: tile and split count), or the problem as given and its plan where it does not
/// pack.
pub(crate) fn plan_rows(
    p: &AttnProblem,
    opts: &AttnOptions,
    (q, o): (&Layout, &Layout),
    dense_kv: bool,
    plan_for: impl Fn(&AttnProblem) -> Result<(FwdTile, usize)>,
) -> Result<(Option<HeadsAsRows>, FwdTile, usize)> {
    let rows = pack_query_heads(p, opts, q, o, dense_kv);
    let (tile, splits) = plan_for(rows.as_ref().map_or(p, |r| &r.run))?;
    Ok((rows, tile, splits))
}

/// The problem and the q and O layouts a launch runs: the packed rows' ([`HeadsAsRows`]), or the call's
/// own (`p`, `q`, `o`).
pub(crate) fn run_view<'a>(
    rows: Option<&'a HeadsAsRows>,
    p: &'a AttnProblem,
    q: Layout,
    o: Layout,
) -> (&'a AttnProblem, Layout, Layout) {
    match rows {
        Some(r) => (&r.run, r.q, r.o),
        None => (p, q, o),
    }
}

/// Everything checked before a launch: dtype, devices, shapes and strides, kernel index limits, tile.
fn plan<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    opts: &AttnOptions,
) -> Result<(AttnProblem, FwdTile)> {
    if !T::DTYPE.is_half() {
        return Err(Error::UnsupportedDtype { arg: Arg::Q, dtype: T::DTYPE, path: "the fused forward kernel" });
    }
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v)] {
        t.check_on(dev, arg)?;
    }
    let p = AttnProblem::new((&q.layout, q.buf.len()), (&k.layout, k.buf.len()), (&v.layout, v.buf.len()), opts)?;
    check_per_head(dev, opts)?;
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v)] {
        check_vector_strides(arg, &t.layout)?;
    }
    check_grid(p.heads_q, p.batch, p.lse_len())?;
    let tile = forward_tile(dev.info(), (p.head_dim, p.head_dim_v), T::DTYPE, p.causal)?;
    Ok((p, tile))
}

/// How a forward launch takes its tiles (`fwd::schedule` in the kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileOrder {
    /// One CTA per tile (grid: query blocks × splits, heads, batch).
    OnePerTile,
    /// The row's persistent kernel, its CTAs taking tiles in static rounds (`tiles::Rounds`).
    Rounds,
    /// The row's ticket-taking persistent kernel (`FwdTile::ticket_symbols`), its CTAs taking tiles by
    /// atomic tickets (`FwdParams::tile_counter`).
    Tickets,
}

impl TileOrder {
    /// Whether the launch is a persistent kernel's (a one-dimensional grid of CTAs taking tile after tile).
    pub fn persistent(self) -> bool {
        self != TileOrder::OnePerTile
    }
}

/// A persistent forward's tile count (query blocks of `block_m` rows × heads_q × batch): the kernels
/// count their tiles in 32 bits, and the grid's x is below 2^31.
pub(crate) fn persistent_tiles(p: &AttnProblem, block_m: usize) -> Result<usize> {
    let tiles = p.seqlen_q.div_ceil(block_m) * p.heads_q * p.batch;
    if tiles > i32::MAX as usize {
        return Err(Error::TooLarge { arg: Arg::Q, what: "query blocks·heads_q·batch", value: tiles });
    }
    Ok(tiles)
}

/// The forward kernel's grid and how it takes its tiles: (query blocks × splits, heads, batch) for the
/// one-tile kernels; for the row's persistent kernels (`FwdTile::persistent`), its tiles in a row,
/// one-dimensional, of `ctas` CTAs in `order` where a test forces them (`forced`), else
/// `persistent_ctas`'s.
pub fn forward_grid(
    info: &DeviceInfo,
    p: &AttnProblem,
    tile: &FwdTile,
    (num_splits, layout): (usize, BatchLayout),
    forced: Option<(usize, TileOrder)>,
) -> Result<((u32, u32, u32), TileOrder)> {
    let m_blocks = p.seqlen_q.div_ceil(tile.block_m);
    let one_per_tile = ((m_blocks * num_splits) as u32, p.heads_q as u32, p.batch as u32);
    if !tile.persistent(num_splits > 1, layout) {
        if forced.is_some() {
            return Err(Error::NoTileConfig(format!("{}: no persistent kernel", tile.symbols[0])));
        }
        return Ok((one_per_tile, TileOrder::OnePerTile));
    }
    let tiles = persistent_tiles(p, tile.block_m)?;
    let slots = info.sm_count as usize * tile.ctas_per_sm;
    let forced = forced.map(|(n, order)| (n.clamp(1, tiles.max(1)), order));
    match forced.or_else(|| persistent_ctas(&p.mask, m_blocks, tiles, slots)) {
        Some((n, order)) => Ok(((n as u32, 1, 1), order)),
        None => Ok((one_per_tile, TileOrder::OnePerTile)),
    }
}

/// The most query blocks per head whose causal rows a persistent forward takes in rounds (4K rows of
/// 128). Measured on an H200 with each row's clocks settled (docs/perf.md, "Causal rows by ticket"),
/// rounds on 128 of 132 SMs against tickets on 132 at head dims 64-256: ahead by 4-7% at 1K, level at
/// 4K, behind by 1-16% at 8K in both orders of timing, within -3 to +1.5% at 16K.
pub(crate) const CAUSAL_ROUNDS_MAX_M_BLOCKS: usize = 32;

/// The CTA count and tile order of a persistent forward, or `None` where one CTA per tile serves as well:
/// at most a wave of tiles (nothing to overlap).
/// - Every tile sees the same keys: one CTA per SM slot, in rounds (CTA c takes tiles c, 2·ctas − 1 − c,
///   2·ctas + c, ...; the ticket kernels measured 1-4% slower at 1K: docs/perf.md).
/// - Causal rows with every key before the diagonal (no left window, `seqlen_k >= seqlen_q`: a tile's
///   key blocks grow by one block per query block) and at most [`CAUSAL_ROUNDS_MAX_M_BLOCKS`] query
///   blocks, in rounds where the two tiles of a CTA's pair of rounds, c and 2·ctas − 1 − c, add up to
///   the same length for every CTA: where the pair's 2·ctas tiles hold whole heads' query blocks or lie
///   within one head's (`m_blocks` divides 2·ctas or 2·ctas divides `m_blocks`), the most CTAs up to the
///   slots that do so, down to 15/16 of them (128 of 132 SMs for every power-of-two `m_blocks`).
/// - Otherwise (windows, fewer keys than queries, longer causal rows, causal query-block counts that
///   pair with no such CTA count): one CTA per SM slot, the row's ticket kernel, whose tickets balance
///   tiles of any lengths (+1.6-9.5% over one CTA per tile on causal 6K and 12K, +2.6% on a window;
///   +3-16% over the rounds on causal 8K and 16K: docs/perf.md).
pub(crate) fn persistent_ctas(mask: &Mask, m_blocks: usize, tiles: usize, slots: usize) -> Option<(usize, TileOrder)> {
    if tiles <= slots {
        return None;
    }
    if mask.sees_all() {
        return Some((slots, TileOrder::Rounds));
    }
    let causal_prefix = mask.right == 0
        && mask.left >= mask.seqlen_k
        && mask.seqlen_k >= mask.seqlen_q
        && m_blocks <= CAUSAL_ROUNDS_MAX_M_BLOCKS;
    let balanced = |ctas: &usize| (2 * ctas) % m_blocks == 0 || m_blocks % (2 * ctas) == 0;
    match (slots - slots / 16..=slots).rev().find(balanced) {
        Some(ctas) if causal_prefix => Some((ctas, TileOrder::Rounds)),
        _ => Some((slots, TileOrder::Tickets)),
    }
}

/// The persistent order's section (`tiles::persistent_tile`), at least 1. In rounds, 1: each head's query
/// blocks in a row, highest first, which the rounds pair. By tickets, the most pairs whose K and V fit
/// half the L2 cache (query heads of one K/V head share theirs), a power of two, so that each section's
/// longest tiles go out first: the same rule as FlashAttention-3's scheduler. (Sections filling the
/// whole cache, in sizes as equal as the pairs divide into, measured 1-12% slower: docs/perf.md.)
pub(crate) fn persistent_section(info: &DeviceInfo, p: &AttnProblem, order: TileOrder, elem_bytes: usize) -> u32 {
    if order != TileOrder::Tickets {
        return 1;
    }
    let pairs = (p.heads_q * p.batch).max(1);
    let kv_per_pair = (p.seqlen_k * (p.head_dim + p.head_dim_v) * elem_bytes).div_ceil(p.group_size()).max(1);
    let most = (info.l2_bytes / 2 / kv_per_pair).clamp(1, pairs);
    // The largest power of two up to `most`; `check_grid` keeps the pairs within u32.
    (1usize << most.ilog2()) as u32
}

/// The kernels' grid limits: heads (grid y) and batch entries (grid z) within the hardware's 65535,
/// and their LSE rows' indices within the kernels' integer types.
pub(crate) fn check_grid(heads_q: usize, batch: usize, lse_len: usize) -> Result<()> {
    for (what, value) in [("heads_q", heads_q), ("batch", batch)] {
        if value > GRID_YZ_MAX {
            return Err(Error::TooLarge { arg: Arg::Q, what, value });
        }
    }
    if batch * heads_q > u32::MAX as usize || lse_len > i64::MAX as usize {
        return Err(Error::TooLarge { arg: Arg::Q, what: "batch·heads_q", value: batch * heads_q });
    }
    Ok(())
}

/// A packed batch at launch (`gpu::varlen`): the device addresses of its offsets and the token count of
/// q, which sets the LSE layout `[heads_q, tokens_q]`. `p` then has one batch entry per sequence and the
/// longest sequences' lengths (the grid), and the mask over the token counts (`ScoreParams::cu_seqlens_q`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PackedLaunch {
    pub cu_seqlens_q: u64,
    pub cu_seqlens_k: u64,
    /// `ScoreParams::diagonal_shifts` (0: none).
    pub diagonal_shifts: u64,
    pub tokens_q: usize,
}

/// K/V in a paged cache at launch (`gpu::paged`): its pages are `k` and `v` (strides `[page, token,
/// head]`), its block table and error bits, and each sequence's key count (`ScoreParams::seqused_k`,
/// written by the paged step before). `p` is the dense problem over the cache's capacity per sequence.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PagedLaunch {
    pub pages: PageTable,
    pub seqused_k: u64,
}

/// How a launch's batch lies in memory.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BatchLaunch {
    Dense,
    Packed(PackedLaunch),
    Paged(PagedLaunch),
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn launch<T: Element>(
    dev: &Device,
    p: &AttnProblem,
    opts: &AttnOptions,
    batch: BatchLaunch,
    rows: Option<&HeadsAsRows>,
    (tile, num_splits, forced): (&FwdTile, usize, Option<(usize, TileOrder)>),
    (q, q_layout): (&CudaSlice<T>, &Layout),
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: (&mut CudaSlice<T>, &Layout),
    lse: &mut CudaSlice<f32>,
) -> Result<()> {
    let f16 = T::DTYPE == DType::F16;
    let layout = match batch {
        BatchLaunch::Dense => BatchLayout::Dense,
        BatchLaunch::Packed(_) => BatchLayout::Packed,
        BatchLaunch::Paged(_) => BatchLayout::Paged,
    };
    let (grid_dim, order) = forward_grid(dev.info(), p, tile, (num_splits, layout), forced)?;
    let name = match order {
        TileOrder::OnePerTile => tile.kernel_symbol(f16, num_splits > 1, layout),
        TileOrder::Rounds => tile.persistent_symbols[f16 as usize],
        TileOrder::Tickets => tile.ticket_symbols[f16 as usize],
    };
    if name.is_empty() {
        // A forced row without this batch layout's kernel (paged caches: no kernel on the Hopper rows
        // without TMA, no split one on the TMA rows).
        return Err(Error::NoTileConfig(format!("{tile:?} has no {layout:?} kernel with {num_splits} split(s)")));
    }
    let smem = tile.smem_bytes(T::DTYPE.size_bytes());
    let f = dev.modules.function(&dev.ctx, name, smem)?;
    let stream = dev.stream();
    let (q_ptr, _q_sync) = q.device_ptr(stream);
    let (k_ptr, _k_sync) = k.buf.device_ptr(stream);
    let (v_ptr, _v_sync) = v.buf.device_ptr(stream);
    // Packed decode rows read the keys of their window only (`HeadsAsRows::first_key`; dense K/V).
    let first_key = |strides: [usize; 4]| (rows.map_or(0, |r| r.first_key) * strides[1] * size_of::<T>()) as u64;
    let (k_ptr, v_ptr) = (k_ptr + first_key(k.layout.strides), v_ptr + first_key(v.layout.strides));
    let (o_buf, o_layout) = o;
    let (o_ptr, _o_sync) = o_buf.device_ptr_mut(stream);
    let (lse_ptr, _lse_sync) = lse.device_ptr_mut(stream);
    let mut score = ScoreArgs::new(dev, p, opts)?;
    // The LSE layout's rows: `[batch, heads_q, seqlen_q]`, or `[heads_q, tokens_q]` when packed.
    let mut pages = PageTable::default();
    let (lse_rows, rows_per_head) = match batch {
        BatchLaunch::Dense => (p.lse_len(), p.seqlen_q),
        BatchLaunch::Paged(pg) => {
            score.params.seqused_k = pg.seqused_k;
            pages = pg.pages;
            if tile.tma {
                let rows = tile.paged_box_rows(pages.page_size as usize).ok_or_else(|| {
                    Error::NoTileConfig(format!(
                        "{}: pages of {} keys do not split into TMA boxes of whole 8-row groups (the `mma.sync` \
                         rows take any page size)",
                        tile.symbols[0], pages.page_size
                    ))
                })?;
                pages.tma_box_rows = rows as u32;
            }
            (p.lse_len(), p.seqlen_q)
        }
        BatchLaunch::Packed(pk) => {
            score.params.cu_seqlens_q = pk.cu_seqlens_q;
            score.params.cu_seqlens_k = pk.cu_seqlens_k;
            score.params.diagonal_shifts = pk.diagonal_shifts;
            (score.params.max_seqlen_q, score.params.max_seqlen_k) = (p.seqlen_q as u32, p.seqlen_k as u32);
            (p.heads_q * pk.tokens_q, pk.tokens_q)
        }
    };
    // Split-KV workspace, stream-ordered: freed (asynchronously, after the kernels) when this returns.
    let mut workspace = SplitWorkspace::new(dev, lse_rows, p.head_dim_v, num_splits)?;
    let (o_accum_ptr, lse_accum_ptr) = workspace.ptrs(stream);
    let params = FwdParams {
        q: q_ptr,
        k: k_ptr,
        v: v_ptr,
        o: o_ptr,
        lse: lse_ptr,
        q_strides: strides3(q_layout),
        k_strides: strides3(&k.layout),
        v_strides: strides3(&v.layout),
        o_strides: strides3(o_layout),
        score: score.params,
        heads_q: p.heads_q as u32,
        group: p.group_size() as u32,
        num_splits: num_splits as u32,
        // Packed decode rows are query heads, each with its own sink.
        sinks_by_row: rows.is_some() as u32,
        o_accum: o_accum_ptr,
        lse_accum: lse_accum_ptr,
        pages,
        batch: p.batch as u32,
        section_heads: persistent_section(dev.info(), p, order, T::DTYPE.size_bytes()),
        tile_counter: if order == TileOrder::Tickets { dev.tile_counter.addr() } else { 0 },
    };
    let cfg = LaunchConfig { grid_dim, block_dim: (tile.threads() as u32, 1, 1), shared_mem_bytes: smem as u32 };
    let arg = KernelParams(params);
    // The TMA rows read Q, K and V through tensor maps of the tensors as this launch sees them (decode
    // rows' views and window offset included; a packed batch's over its tokens, as one batch row),
    // passed as a second parameter.
    let maps = if tile.tma {
        let map = |ptr, dims, strides: [usize; 4], box_rows| {
            tma::tensor_map(T::DTYPE, ptr, dims, [strides[0], strides[1], strides[2]], box_rows)
        };
        // A packed batch's rows: its tokens, which its layouts hold (`p` has the longest sequences'). A
        // paged cache's K and V: its pages (`[num_pages, page_size, heads_kv, dim]`, as their layouts),
        // in boxes of `tma_box_rows` keys.
        // `[batch, rows]` of Q's map, then `[batch, rows]` and box rows of K's and V's.
        let ([q_batch, rows_q], [kv_batch, rows_k], box_k) = match batch {
            BatchLaunch::Packed(_) => ([1, q_layout.shape[1]], [1, k.layout.shape[1]], tile.block_n),
            BatchLaunch::Paged(_) => {
                ([p.batch, p.seqlen_q], [k.layout.shape[0], k.layout.shape[1]], pages.tma_box_rows as usize)
            }
            BatchLaunch::Dense => ([p.batch, p.seqlen_q], [p.batch, p.seqlen_k], tile.block_n),
        };
        Some(KernelParams(FwdTensorMaps {
            q: map(q_ptr, [q_batch, rows_q, p.heads_q, p.head_dim], q_layout.strides, tile.block_m)?,
            k: map(k_ptr, [kv_batch, rows_k, p.heads_kv, p.head_dim], k.layout.strides, box_k)?,
            v: map(v_ptr, [kv_batch, rows_k, p.heads_kv, p.head_dim_v], v.layout.strides, box_k)?,
        }))
    } else {
        None
    };
    let combined = CombineRows { heads_q: p.heads_q, rows_per_head, o: o_layout, lse_rows, head_dim_v: p.head_dim_v };
    let combine = workspace.combine(dev, f16, rows, combined, (o_ptr, lse_ptr), score.params.sinks)?;
    let main = Launch::new(&f, name, cfg, &arg);
    let main = match &maps {
        Some(maps) => main.arg(maps),
        None => main,
    };
    let launches: Vec<Launch> = std::iter::once(main).chain(combine.as_ref().map(Combine::launch)).collect();
    // SAFETY: `plan` validated every layout against its buffer, the strides' alignment and the index
    // limits; the pointers are live for the launches (their sync guards outlive them on this stream),
    // and the maps describe the same buffers within those layouts; the combine reads the workspace the
    // split kernel writes (`Combine`), which is freed after both in stream order (dropped below).
    unsafe { launch::enqueue(dev, &launches) }?;
    drop(workspace);
    Ok(())
}

/// The split-KV workspace of a launch (nothing when unsplit): partial O and LSE in f32
/// (`split_workspace_f32`) in one stream-ordered allocation (one driver call per call: each costs the
/// host 1-2.5 µs), freed (asynchronously, after the kernels) when dropped.
pub(crate) struct SplitWorkspace<'d> {
    /// The scratch, and where the partial LSEs start in it (in f32, on a 256-byte boundary after the
    /// partial O).
    accum: Option<(Scratch<'d>, usize)>,
    num_splits: usize,
}

/// The rows a launch's combine writes, as the split kernel ran them: `lse_rows` rows of the LSE layout,
/// `rows_per_head` per head of `heads_q`, O in `o`'s layout with V's head dim.
pub(crate) struct CombineRows<'a> {
    pub heads_q: usize,
    pub rows_per_head: usize,
    pub o: &'a Layout,
    pub lse_rows: usize,
    pub head_dim_v: usize,
}

impl<'d> SplitWorkspace<'d> {
    pub(crate) fn new(dev: &'d Device, lse_rows: usize, head_dim_v: usize, num_splits: usize) -> Result<Self> {
        if num_splits <= 1 {
            return Ok(SplitWorkspace { accum: None, num_splits });
        }
        let (o_len, lse_len) = split_workspace_f32(lse_rows, head_dim_v, num_splits);
        let lse_start = o_len.next_multiple_of(64);
        // The split kernel writes every partial LSE, and every partial O row whose LSE is finite; the
        // combine reads only those.
        let bytes = 4 * (lse_start + lse_len);
        let accum = dev.scratch(Kind::SplitKv, bytes, "allocating the split-KV O and LSE")?;
        Ok(SplitWorkspace { accum: Some((accum, lse_start)), num_splits })
    }

    /// `FwdParams::o_accum` and `lse_accum` (zeros when unsplit).
    pub(crate) fn ptrs(&mut self, stream: &cudarc::driver::CudaStream) -> (u64, u64) {
        match &mut self.accum {
            Some((accum, lse_start)) => {
                let base = accum.ptr(stream);
                (base, base + 4 * *lse_start as u64)
            }
            None => (0, 0),
        }
    }

    /// The combine of a split launch (nothing when unsplit), to enqueue right after the split kernel,
    /// into O and the LSE (`o_lse`); packed decode rows (`packed`) are combined as the call's rows,
    /// one per query head, whose sinks (`sinks`, `ScoreParams::sinks`) it adds. `o_lse` are the call's
    /// O (of `rows.o`'s layout, or `packed`'s call O) and LSE (`rows.lse_rows`).
    pub(crate) fn combine(
        &mut self,
        dev: &Device,
        f16: bool,
        packed: Option<&HeadsAsRows>,
        rows: CombineRows,
        (o_ptr, lse_ptr): (u64, u64),
        sinks: u64,
    ) -> Result<Option<Combine>> {
        if self.accum.is_none() {
            return Ok(None);
        }
        let (o_accum, lse_accum) = self.ptrs(dev.stream());
        let kernel = if f16 { abi::FWD_COMBINE_F16 } else { abi::FWD_COMBINE_BF16 };
        let function = dev.modules.function(&dev.ctx, kernel, 0)?;
        let (heads_q, rows_per_head, o_layout) = match packed {
            Some(r) => (r.call_heads_q, 1, &r.call_o),
            None => (rows.heads_q, rows.rows_per_head, rows.o),
        };
        let params = FwdCombineParams {
            o_accum,
            lse_accum,
            o: o_ptr,
            lse: lse_ptr,
            o_strides: strides3(o_layout),
            rows: rows.lse_rows as u32,
            seqlen_q: rows_per_head as u32,
            heads_q: heads_q as u32,
            head_dim_v: rows.head_dim_v as u32,
            num_splits: self.num_splits as u32,
            sinks,
        };
        let cfg = LaunchConfig {
            grid_dim: (rows.lse_rows.div_ceil(COMBINE_ROWS_PER_CTA) as u32, 1, 1),
            block_dim: (32 * COMBINE_ROWS_PER_CTA as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // On Hopper the combine is the split kernel's programmatic dependent: its launch overlaps the
        // split kernel's tail, and it waits for the partial results itself.
        let programmatic = dev.info().arch() == Arch::Sm90a;
        Ok(Some(Combine { function, kernel, cfg, params: KernelParams(params), programmatic }))
    }
}

/// A split launch's combine: the launch that follows the split kernel, reading the workspace it writes
/// (with `programmatic`, the split kernel lets dependents start and the combine waits for its grid
/// before reading the workspace).
pub(crate) struct Combine {
    function: CudaFunction,
    kernel: &'static str,
    cfg: LaunchConfig,
    params: KernelParams<FwdCombineParams>,
    programmatic: bool,
}

impl Combine {
    pub(crate) fn launch(&self) -> Launch<'_> {
        Launch::new(&self.function, self.kernel, self.cfg, &self.params).programmatic(self.programmatic)
    }
}

/// Rows per CTA of the combine kernel (one warp each; `fwd/combine.rs`).
const COMBINE_ROWS_PER_CTA: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Window;

    /// An H100-like device of compute capability `cc` (132 SMs, 227 KiB of shared memory per block).
    fn h100_like(cc: (i32, i32)) -> DeviceInfo {
        DeviceInfo {
            ordinal: 0,
            name: "test".into(),
            compute_capability: cc,
            sm_count: 132,
            smem_per_block_optin: 227 * 1024,
            smem_per_sm: 228 * 1024,
            l2_bytes: 50 << 20,
            total_mem: 80 << 30,
            driver_version: 13000,
        }
    }

    fn padded(shape: [usize; 4]) -> Layout {
        let [_, s, h, d] = shape;
        let (hs, ss) = (d + 8, h * (d + 8) + 24);
        Layout { shape, strides: [s * ss + 16, ss, hs, 1] }
    }

    #[test]
    fn each_batch_layout_takes_a_row_with_its_kernel() {
        for (cc, optin, per_sm) in [((9, 0), 227, 228), ((8, 0), 163, 164), ((8, 9), 99, 100)] {
            let info = DeviceInfo {
                ordinal: 0,
                name: "test".into(),
                compute_capability: cc,
                sm_count: 108,
                smem_per_block_optin: optin * 1024,
                smem_per_sm: per_sm * 1024,
                l2_bytes: 40 << 20,
                total_mem: 80 << 30,
                driver_version: 13000,
            };
            for (d, dv) in crate::problem::SUPPORTED_HEAD_DIMS
                .iter()
                .flat_map(|&d| crate::problem::supported_head_dims_v(d).iter().map(move |&dv| (d, dv)))
            {
                // Paged caches: on compute capability 9.0 the TMA row where it has the head dims and the
                // page size splits into boxes of whole 8-row groups, of at least 64 keys unless the call
                // has 64 queries per sequence or more; else an `mma.sync` row, which also has the split
                // kernel a decode call may want.
                let tma_row = tiles::FWD_TILES.iter().find(|t| t.tma && (t.head_dim, t.head_dim_v) == (d, dv));
                for (seqlen_q, page_size) in [1, 64].into_iter().flat_map(|q| [1, 7, 16, 64, 256].map(|s| (q, s))) {
                    let p = AttnProblem::contiguous_with_head_dim_v(
                        [2, seqlen_q, 4096, 8, 2, d],
                        dv,
                        &AttnOptions::causal(),
                    )
                    .unwrap();
                    let t = paged_tile(&info, &p, DType::BF16, page_size).unwrap();
                    let rows = tma_row.and_then(|r| r.paged_box_rows(page_size));
                    let tma = cc == (9, 0) && rows.is_some_and(|r| r >= 64 || seqlen_q >= 64);
                    assert!(t.tma == tma && t.wgmma == tma && (t.head_dim, t.head_dim_v) == (d, dv), "{t:?}");
                    assert!(!t.kernel_symbol(true, false, BatchLayout::Paged).is_empty(), "{t:?}");
                    assert_eq!(t.kernel_symbol(true, true, BatchLayout::Paged).is_empty(), tma, "{t:?}");
                }
                // Dense and packed batches: a row with their kernel; on compute capability 9.0 a Hopper
                // row, TMA-fed at 128, 192 and 256.
                for layout in [BatchLayout::Dense, BatchLayout::Packed] {
                    let t = layout_tile(&info, (d, dv), DType::F16, layout, |_| true).unwrap();
                    assert!((t.head_dim, t.head_dim_v) == (d, dv) && t.wgmma == (cc == (9, 0)), "{t:?}");
                    assert!(!t.kernel_symbol(true, false, layout).is_empty(), "{t:?}");
                    let tma = cc == (9, 0) && d == dv && matches!(d, 128 | 192 | 256);
                    assert_eq!(t.tma, tma, "{layout:?} {t:?}");
                }
                assert_eq!(
                    layout_tile(&info, (d, dv), DType::BF16, BatchLayout::Dense, |_| true).unwrap(),
                    forward_tile(&info, (d, dv), DType::BF16, false).unwrap()
                );
            }
        }
    }

    #[test]
    fn query_heads_pack_into_rows_of_their_kv_head() {
        let (b, hq, hkv, d) = (3, 8, 2, 64);
        let (q, o) = (padded([b, 1, hq, d]), padded([b, 1, hq, d]));
        let kv = Layout::contiguous([b, 500, hkv, d]);
        let v = kv;
        let opts = AttnOptions::causal();
        let p = AttnProblem::new((&q, q.span()), (&kv, kv.span()), (&v, v.span()), &opts).unwrap();
        let rows = pack_query_heads(&p, &opts, &q, &o, true).unwrap();
        let (packed, pq, po) = (rows.run, rows.q, rows.o);
        assert_eq!((rows.first_key, rows.call_heads_q, rows.call_o), (0, hq, o));
        let group = hq / hkv;
        assert_eq!((packed.seqlen_q, packed.heads_q, packed.group_size(), packed.causal), (group, hkv, 1, false));
        // Row i of K/V head h is query head h·group + i; every row sees every key.
        for (l, pl) in [(q, pq), (o, po)] {
            for bi in 0..b {
                for h in 0..hkv {
                    for i in 0..group {
                        assert_eq!(pl.offset(bi, i, h, 5), l.offset(bi, 0, h * group + i, 5));
                    }
                }
            }
        }
        for i in 0..group {
            assert_eq!(packed.key_range(i), 0..500);
        }
        // The LSE's rows are the same memory: [b, heads_q, 1] and [b, heads_kv, group].
        assert_eq!(packed.lse_len(), p.lse_len());
        // The same (query head, key) pairs, each once.
        assert_eq!(packed.visible_pairs() * packed.heads_q as u64, p.visible_pairs() * p.heads_q as u64);
    }

    #[test]
    fn windows_and_sinks_pack_where_the_row_allows() {
        let q = Layout::contiguous([1, 1, 8, 64]);
        let kv = Layout::contiguous([1, 300, 2, 64]);
        let new = |opts: &AttnOptions| AttnProblem::new((&q, q.span()), (&kv, kv.span()), (&kv, kv.span()), opts);
        // A left window: the single row sees keys 283..=299, the packed rows exactly those.
        for causal in [false, true] {
            let opts = AttnOptions { causal, window: Window { left: Some(16), right: Some(5) }, ..Default::default() };
            let p = new(&opts).unwrap();
            assert_eq!(p.key_range(0), 283..300);
            let rows = pack_query_heads(&p, &opts, &q, &q, true).unwrap();
            assert_eq!((rows.first_key, rows.run.seqlen_k), (283, 17));
            for i in 0..4 {
                assert_eq!(rows.run.key_range(i), 0..17);
            }
            // A paged cache cannot start at key 283: as given.
            assert_eq!(pack_query_heads(&p, &opts, &q, &q, false), None);
        }
        // A window wider than the keys hides nothing.
        let wide = AttnOptions { window: Window { left: Some(400), right: None }, ..AttnOptions::default() };
        assert_eq!(pack_query_heads(&new(&wide).unwrap(), &wide, &q, &q, false).unwrap().first_key, 0);
        // Sinks: packed (each row takes its own query head's sink in the kernels).
        let sinks = [0.5f32; 8];
        let with_sinks = AttnOptions::default().with_sinks(crate::options::PerHead::Host(&sinks));
        let p = new(&with_sinks).unwrap();
        let plan_for = |r: &AttnProblem| Ok((tiles::HD64, r.seqlen_q));
        let (rows, _, planned_rows) = plan_rows(&p, &with_sinks, (&q, &q), true, plan_for).unwrap();
        assert_eq!(
            (rows.map(|r| r.run), planned_rows),
            (pack_query_heads(&p, &with_sinks, &q, &q, true).map(|r| r.run), 4)
        );
        // Over a paged cache (whose sequences may hold no key): as given.
        assert_eq!(plan_rows(&p, &with_sinks, (&q, &q), false, plan_for).unwrap().0, None);
    }

    #[test]
    fn rows_that_differ_are_not_packed() {
        let q = Layout::contiguous([1, 1, 8, 64]);
        let kv = Layout::contiguous([1, 300, 2, 64]);
        let slopes = [0.5f32; 8];
        let alibi = AttnOptions::default().with_alibi(crate::options::PerHead::Host(&slopes));
        let p = AttnProblem::new((&q, q.span()), (&kv, kv.span()), (&kv, kv.span()), &alibi).unwrap();
        assert_eq!(pack_query_heads(&p, &alibi, &q, &q, true), None);
        // Two query rows, or one query head per K/V head: as given.
        let mha = Layout::contiguous([1, 1, 2, 64]);
        let p = AttnProblem::new((&mha, mha.span()), (&kv, kv.span()), (&kv, kv.span()), &AttnOptions::default());
        assert_eq!(pack_query_heads(&p.unwrap(), &AttnOptions::default(), &mha, &mha, true), None);
        let two = Layout::contiguous([1, 2, 8, 64]);
        let p = AttnProblem::new((&two, two.span()), (&kv, kv.span()), (&kv, kv.span()), &AttnOptions::default());
        assert_eq!(pack_query_heads(&p.unwrap(), &AttnOptions::default(), &two, &two, true), None);
    }

    /// The persistent grid's rounds (`tiles::Rounds`, as the kernel walks them) take every tile once,
    /// and where `persistent_ctas` launches them every CTA gets the same key blocks but for the last
    /// pair of rounds; where it does not, tickets on every SM slot (one CTA per tile for a wave).
    #[test]
    fn persistent_rounds_cover_the_tiles_and_balance_causal_rows() {
        let (bm, bn, slots) = (128usize, 128u32, 132usize);
        for seqlen in [1024u32, 2048, 3072, 4096, 8192, 16384, 65536] {
            for heads in [1usize, 16, 40, 256] {
                for (causal, left) in [(false, None), (true, None), (true, Some(1000)), (false, Some(300))] {
                    let mask = Mask::new(seqlen, seqlen, causal, left, None);
                    let m_blocks = (seqlen as usize).div_ceil(bm);
                    let tiles = m_blocks * heads;
                    let chosen = persistent_ctas(&mask, m_blocks, tiles, slots);
                    if tiles <= slots {
                        assert_eq!(chosen, None, "{seqlen} {heads} {causal} {left:?}");
                        continue;
                    }
                    let ctas = match chosen {
                        Some((ctas, TileOrder::Rounds)) => ctas,
                        Some((ctas, TileOrder::Tickets)) => {
                            let pairs = [8, 16, 32].contains(&m_blocks);
                            assert!(ctas == slots && (left.is_some() || causal && !pairs), "{seqlen} {heads}");
                            continue;
                        }
                        other => panic!("{other:?}"),
                    };
                    assert!(left.is_none(), "{seqlen} {heads} {causal} {left:?}");
                    assert!(ctas <= slots && ctas >= slots - slots / 16);
                    // Key blocks of tile i: its head's query block m_blocks − 1 − i % m_blocks.
                    let len = |i: usize| {
                        let m0 = ((m_blocks - 1 - i % m_blocks) * bm) as u32;
                        mask.key_blocks(m0, (seqlen - m0).min(bm as u32), bn).len() as usize
                    };
                    let mut taken = vec![0u8; tiles];
                    // Per CTA: blocks in the rounds of whole pairs, and in all.
                    let whole_pairs = tiles / (2 * ctas) * 2;
                    let mut loads = vec![(0usize, 0usize); ctas];
                    for (c, load) in loads.iter_mut().enumerate() {
                        let mut r = ironflash_kernels::tiles::Rounds::first(c as u32, ctas as u32);
                        let mut round = 0;
                        while (r.i as usize) < tiles {
                            taken[r.i as usize] += 1;
                            if round < whole_pairs {
                                load.0 += len(r.i as usize);
                            }
                            load.1 += len(r.i as usize);
                            r.advance();
                            round += 1;
                        }
                    }
                    assert!(taken.iter().all(|&n| n == 1), "{seqlen} {heads} {ctas}");
                    let (lo, hi) = (loads.iter().map(|l| l.0).min(), loads.iter().map(|l| l.0).max());
                    assert_eq!(lo, hi, "{seqlen} {heads} {causal} {ctas}");
                    // The last pair adds at most one pair's blocks.
                    let most = loads.iter().map(|l| l.1).max().unwrap();
                    assert!(most <= hi.unwrap() + 2 * len(0), "{seqlen} {heads} {ctas}");
                }
            }
        }
    }

    /// The persistent order's sections: a head at a time in rounds; by tickets the most pairs whose K
    /// and V fit half the L2 cache, a power of two; GQA's query heads share their K/V head's bytes.
    #[test]
    fn persistent_sections_fit_half_the_l2_cache() {
        let info = h100_like((9, 0));
        let tickets = TileOrder::Tickets;
        // [batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim]: 512 KiB of K and V per pair, 50 fit.
        for (shape, order, section) in [
            ([16, 1024, 1024, 16, 16, 128], tickets, 32),
            ([16, 1024, 1024, 16, 16, 128], TileOrder::Rounds, 1),
            ([2, 8192, 8192, 16, 16, 128], tickets, 4),
            ([2, 8192, 8192, 16, 2, 128], tickets, 32),
            ([1, 32768, 32768, 16, 16, 128], tickets, 1),
            ([1, 1 << 20, 1 << 20, 4, 4, 256], tickets, 1),
            ([1, 128, 128, 1, 1, 64], tickets, 1),
        ] {
            let p = AttnProblem::contiguous(shape, &AttnOptions::causal()).unwrap();
            assert_eq!(persistent_section(&info, &p, order, 2), section, "{shape:?}");
        }
    }

    /// A dense call that launches a persistent kernel takes a row that has one: at head dim 64 the TMA
    /// row instead of the chooser's `cp.async` row, for calls of more than a wave, causal, windowed or
    /// with fewer keys than queries too; one-wave calls and devices without the Hopper rows keep the
    /// chooser's row.
    #[test]
    fn persistent_calls_take_a_row_with_a_persistent_kernel() {
        let windowed = AttnOptions::causal().with_window(Some(512), Some(0));
        for d in [64, 128, 256] {
            for (shape, opts, persistent) in [
                ([16, 1024, 1024, 32, 32, d], AttnOptions::default(), true),
                ([16, 1024, 1024, 32, 8, d], AttnOptions::causal(), true),
                ([1, 1024, 1024, 16, 16, d], AttnOptions::default(), false),
                ([16, 1024, 1024, 32, 32, d], windowed, true),
                ([16, 1024, 300, 32, 32, d], AttnOptions::causal(), true),
                ([2, 3072, 3072, 16, 16, d], AttnOptions::causal(), true),
            ] {
                let p = AttnProblem::contiguous(shape, &opts).unwrap();
                let h100 = h100_like((9, 0));
                let chosen = forward_tile(&h100, (d, d), DType::BF16, p.causal).unwrap();
                // (The one-wave call may split its keys on an `mma.sync` row.)
                let (tile, splits) = forward_launch_plan(&h100, &p, &chosen, DType::BF16);
                let launches =
                    forward_grid(&h100, &p, &tile, (splits, BatchLayout::Dense), None).unwrap().1.persistent();
                assert_eq!(launches, persistent, "{shape:?} {tile:?}");
                assert!(tile == chosen || persistent || splits > 1, "{shape:?}");
                assert_eq!(tile != chosen && persistent, d == 64 && persistent, "{shape:?}");
                let a100 = h100_like((8, 0));
                let chosen = forward_tile(&a100, (d, d), DType::BF16, p.causal).unwrap();
                assert_eq!(forward_launch_plan(&a100, &p, &chosen, DType::BF16).0, chosen);
            }
        }
    }
}
