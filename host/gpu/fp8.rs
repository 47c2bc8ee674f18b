//! The FP8 (e4m3) forward on the GPU (`kernels-gpu/src/fwd/hopper_fp8.rs`, compute capability 9.0):
//! FP8 tensors with their descale factors ([`Fp8Tensor`], the convention of `crate::fp8`), the
//! conversion from bf16/f16 on the device ([`quantize_fp8`]), and the forward, O in bf16 or f16.

use crate::device::Device;
use crate::dtype::{DType, Element, F8E4M3};
use crate::error::{Arg, DriverContext, Error, Result};
use crate::fp8::{check_descale, check_groups, Rotation};
use crate::gpu::flash::{
    check_grid, check_num_splits, check_outputs, num_splits_heuristic, pack_query_heads, persistent_ctas,
    persistent_section, persistent_tiles, run_view, Combine, CombineRows, HeadsAsRows, SplitWorkspace, TileOrder,
};
use crate::gpu::launch::{self, KernelParams, Launch};
use crate::gpu::score::{check_per_head, ScoreArgs};
use crate::gpu::tensor::{check_vector_strides, check_vector_strides_of, strides3, DeviceTensor, GpuForwardOutput};
use crate::gpu::tma;
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;
use ironflash_kernels::abi::{self, Fp8Descales, Fp8QuantizeParams, FwdParams, FwdTensorMaps, PageTable};
use ironflash_kernels::tiles::{self, Fp8FwdTile};

/// Head dims with an FP8 forward kernel.
pub const FP8_HEAD_DIMS: &[usize] = &[64, 128, 256];

/// An FP8 tensor on the device with its descale factors, f32 `[batch, heads_kv]` (`crate::fp8`).
#[derive(Debug)]
pub struct Fp8Tensor {
    pub(crate) data: DeviceTensor<F8E4M3>,
    pub(crate) descale: CudaSlice<f32>,
    pub(crate) heads_kv: usize,
    /// The rotation its rows went through before rounding ([`quantize_fp8_with`]).
    pub(crate) rotation: Option<Rotation>,
}

impl Fp8Tensor {
    pub fn data(&self) -> &DeviceTensor<F8E4M3> {
        &self.data
    }
    /// The descale factors, `[batch, heads_kv]`.
    pub fn descale(&self) -> &CudaSlice<f32> {
        &self.descale
    }
    /// How many groups of heads share a factor (the K/V heads of the call).
    pub fn heads_kv(&self) -> usize {
        self.heads_kv
    }
    /// The rotation its rows went through before rounding, if any: the forward takes Q and K rotated
    /// alike and V not rotated.
    pub fn rotation(&self) -> Option<Rotation> {
        self.rotation
    }
}

impl Device {
    /// An FP8 tensor from a device tensor of e4m3 values and its descale factors (`[batch, heads_kv]`,
    /// each finite and positive, checked here), copied to the device.
    pub fn fp8_tensor(
        &self,
        arg: Arg,
        data: DeviceTensor<F8E4M3>,
        descale: &[f32],
        heads_kv: usize,
    ) -> Result<Fp8Tensor> {
        data.check_on(self, arg)?;
        let [batch, _, heads, _] = data.shape();
        check_groups(arg, heads, heads_kv)?;
        check_descale(arg, descale, batch, heads_kv)?;
        let descale = self.stream.clone_htod(descale).during("copying descale factors to the device")?;
        Ok(Fp8Tensor { data, descale, heads_kv, rotation: None })
    }
}

/// `x` converted to e4m3 on the device with one factor per (batch, group of `heads / heads_kv`
/// heads), as `crate::fp8::quantize` does on the host (the same bits): two kernels, then a copy of the
/// `batch · heads_kv` factors back to check them (a non-finite input gives a non-finite factor:
/// `Error::BadDescale`), which waits for the conversion.
pub fn quantize_fp8<T: Element>(dev: &Device, x: &DeviceTensor<T>, arg: Arg, heads_kv: usize) -> Result<Fp8Tensor> {
    quantize_fp8_with(dev, x, arg, heads_kv, None)
}

/// As [`quantize_fp8`], each row rotated first when `rotation` is given (incoherent processing, as
/// `crate::fp8::quantize_with` does on the host, the same bits): pass Q and K through it with the same
/// rotation, V without.
pub fn quantize_fp8_with<T: Element>(
    dev: &Device,
    x: &DeviceTensor<T>,
    arg: Arg,
    heads_kv: usize,
    rotation: Option<Rotation>,
) -> Result<Fp8Tensor> {
    if !T::DTYPE.is_half() {
        return Err(Error::UnsupportedDtype { arg, dtype: T::DTYPE, path: "the FP8 conversion" });
    }
    check_sm90(dev)?;
    x.check_on(dev, arg)?;
    check_vector_strides(arg, &x.layout)?;
    let [batch, seqlen, heads, head_dim] = x.shape();
    check_groups(arg, heads, heads_kv)?;
    if rotation.is_some() {
        Rotation::check(arg, head_dim)?;
    }
    if head_dim % 8 != 0 || x.layout.numel() > u32::MAX as usize {
        return Err(Error::TooLarge {
            arg,
            what: "elements (a head dim that is a multiple of 8, < 2^32)",
            value: x.layout.numel(),
        });
    }
    let groups = batch * heads_kv;
    let stream = dev.stream();
    let layout = Layout::contiguous(x.shape());
    // SAFETY: the conversion writes every element and every factor.
    let mut out = unsafe { stream.alloc::<F8E4M3>(layout.numel()) }.during("allocating an FP8 tensor")?;
    let mut descale = unsafe { stream.alloc::<f32>(groups) }.during("allocating descale factors")?;
    let mut amax = stream.alloc_zeros::<u32>(groups).during("allocating the amax of each group")?;
    {
        let (x_ptr, _x) = x.buf.device_ptr(stream);
        let (out_ptr, _o) = out.device_ptr_mut(stream);
        let (descale_ptr, _d) = descale.device_ptr_mut(stream);
        let (amax_ptr, _a) = amax.device_ptr_mut(stream);
        let params = KernelParams(Fp8QuantizeParams {
            x: x_ptr,
            x_strides: strides3(&x.layout),
            out: out_ptr,
            amax: amax_ptr,
            descale: descale_ptr,
            seqlen: seqlen as u32,
            heads: heads as u32,
            head_dim: head_dim as u32,
            heads_kv: heads_kv as u32,
            group: (heads / heads_kv) as u32,
            rotate: rotation.is_some() as u32,
            rotation_seed: rotation.map_or(0, |r| r.seed),
        });
        // Enough CTAs per group to fill the device about twice, each striding over its group.
        let vectors = seqlen * (heads / heads_kv) * head_dim / 8;
        let shares =
            vectors.div_ceil(256).clamp(1, (2 * dev.info().sm_count as usize).div_ceil(groups).max(1)).min(65535);
        let cfg =
            LaunchConfig { grid_dim: (groups as u32, shares as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let f16 = T::DTYPE == DType::F16;
        let [amax_name, quantize_name] =
            if f16 { [abi::FP8_AMAX_F16, abi::FP8_QUANTIZE_F16] } else { [abi::FP8_AMAX_BF16, abi::FP8_QUANTIZE_BF16] };
        let (f_amax, f_quantize) =
            (dev.modules.function(&dev.ctx, amax_name, 0)?, dev.modules.function(&dev.ctx, quantize_name, 0)?);
        let launches =
            [Launch::new(&f_amax, amax_name, cfg, &params), Launch::new(&f_quantize, quantize_name, cfg, &params)];
        // SAFETY: the parameters describe `x` (validated layout, 16-byte rows), `out` (contiguous, its
        // size), and `groups` u32 and f32 values; the amax launch runs first on this stream.
        unsafe { launch::enqueue(dev, &launches) }?;
    }
    check_descale(arg, &dev.download_f32(&descale)?, batch, heads_kv)?;
    let data = DeviceTensor { buf: out, layout, ordinal: dev.info().ordinal };
    Ok(Fp8Tensor { data, descale, heads_kv, rotation })
}

/// The FP8 forward tile for a head dim on this device (`tiles::choose_fwd_fp8`).
pub fn fp8_forward_tile(dev: &Device, head_dim: usize) -> Result<Fp8FwdTile> {
    check_sm90(dev)?;
    let info = dev.info();
    tiles::choose_fwd_fp8(head_dim, info.smem_per_block_optin, info.smem_per_sm, true)
        .copied()
        .ok_or(Error::UnsupportedHeadDim { arg: Arg::Q, head_dim, supported: FP8_HEAD_DIMS })
}

/// O in bf16 or f16 (`UnsupportedDtype` for any other type).
fn check_output_dtype<O: Element>() -> Result<()> {
    if !O::DTYPE.is_half() {
        return Err(Error::UnsupportedDtype { arg: Arg::O, dtype: O::DTYPE, path: "the FP8 forward's output" });
    }
    Ok(())
}

/// The FP8 kernels exist in the sm_90a PTX only.
fn check_sm90(dev: &Device) -> Result<()> {
    if dev.info().compute_capability != (9, 0) {
        return Err(Error::UnsupportedDtype {
            arg: Arg::Q,
            dtype: DType::F8E4M3,
            path: "this device (the FP8 kernels need compute capability 9.0; on others dequantize to bf16)",
        });
    }
    Ok(())
}

/// FP8 attention forward: O = softmax(scale·QKᵀ + mask)·V of the real (descaled) Q, K and V, in bf16
/// (contiguous, shaped like q with v's head dim), and the f32 LSE `[batch, heads_q, seqlen_q]`. Every
/// option of `AttnOptions` applies (causal, window, softcap, ALiBi, sinks; per-head buffers on the
/// device); dense batches, head dims 64, 128 and 256 (`FP8_HEAD_DIMS`), compute capability 9.0. P is
/// rounded to e4m3 for the P·V product (scaled by a power of two first; `fwd/hopper_fp8.rs`). O in f16:
/// [`flash_forward_fp8_as`].
pub fn flash_forward_fp8(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    opts: &AttnOptions,
) -> Result<GpuForwardOutput<bf16>> {
    flash_forward_fp8_as::<bf16>(dev, q, k, v, opts)
}

/// As [`flash_forward_fp8`], O in `O` (bf16 or f16).
pub fn flash_forward_fp8_as<O: Element>(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    opts: &AttnOptions,
) -> Result<GpuForwardOutput<O>> {
    check_output_dtype::<O>()?;
    let (p, tile) = plan(dev, q, k, v, opts)?;
    dev.refuse_capture("flash_forward_fp8")?;
    let o_layout = Layout::contiguous(p.o_shape());
    // SAFETY: the kernel writes every element of O and of the LSE.
    let o = unsafe { dev.stream.alloc::<O>(o_layout.numel()) }.during("allocating O")?;
    let mut lse = unsafe { dev.stream.alloc::<f32>(p.lse_len()) }.during("allocating the LSE")?;
    let mut o = DeviceTensor { buf: o, layout: o_layout, ordinal: dev.info().ordinal };
    // Outputs allocated here to the problem's shape: nothing of them to check.
    launch_planned(dev, &p, opts, &tile, (None, None), (q, k, v), &mut o, &mut lse)?;
    Ok(GpuForwardOutput { o, lse })
}

/// As [`flash_forward_fp8`], into caller-provided buffers (as `flash_forward_into`'s).
pub fn flash_forward_fp8_into<O: Element>(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    o: &mut DeviceTensor<O>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
) -> Result<()> {
    forward_into(dev, (q, k, v), o, lse, opts, None, (None, None))
}

/// As [`flash_forward_fp8_into`] with an explicit row of `tiles::FP8_FWD_TILES` instead of the
/// chooser's: for tests and tile benchmarks. A row of another head dim, or one whose shared memory does
/// not fit this device, is `Error::NoTileConfig`.
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_fp8_with_tile<O: Element>(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    o: &mut DeviceTensor<O>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: &Fp8FwdTile,
) -> Result<()> {
    forward_into(dev, (q, k, v), o, lse, opts, Some(tile), (None, None))
}

/// As [`flash_forward_fp8_into`] with an optional explicit row (as [`flash_forward_fp8_with_tile`])
/// and a split-KV count instead of [`fp8_num_splits`]'s: for tests and benchmarks. `num_splits` must
/// be in `1..=MAX_SPLITS`; 1 forces the unsplit one-tile kernel (one CTA per tile, where the launch
/// plan may take a persistent kernel).
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_fp8_with_splits<O: Element>(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    o: &mut DeviceTensor<O>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: Option<&Fp8FwdTile>,
    num_splits: usize,
) -> Result<()> {
    check_num_splits(num_splits)?;
    forward_into(dev, (q, k, v), o, lse, opts, tile, (Some(num_splits), None))
}

/// As [`flash_forward_fp8_into`] with a persistent kernel forced: `ctas` CTAs (clamped to the call's
/// tiles) taking the tiles in `order` (rounds or tickets) instead of the launch plan's choice, on the
/// chooser's row or `tile`: for tests and benchmarks of those kernels, on any shape (from one CTA,
/// which takes every tile, to more than the tiles). `Error::NoTileConfig` for
/// [`TileOrder::OnePerTile`].
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_fp8_persistent<O: Element>(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    o: &mut DeviceTensor<O>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: Option<&Fp8FwdTile>,
    ctas: usize,
    order: TileOrder,
) -> Result<()> {
    if !order.persistent() {
        return Err(Error::NoTileConfig("a forced persistent launch takes its tiles in rounds or by ticket".into()));
    }
    forward_into(dev, (q, k, v), o, lse, opts, tile, (Some(1), Some((ctas, order))))
}

/// The split-KV count of the FP8 forward for the problem it runs (1: no split): the 16-bit forward's
/// rule (`num_splits_heuristic`) for the FP8 rows' one CTA per SM, where one wave is every slot.
pub fn fp8_num_splits(dev: &Device, p: &AttnProblem, tile: &Fp8FwdTile) -> usize {
    let ctas = p.seqlen_q.div_ceil(Fp8FwdTile::BLOCK_M) * p.heads_q * p.batch;
    let sms = dev.info().sm_count as usize;
    num_splits_heuristic(ctas, sms, sms, p.seqlen_k.div_ceil(tile.block_n))
}

/// The checks and the launch of an FP8 forward into given outputs, on the chooser's row or `forced`,
/// with the heuristic's split count or `splits`, and with `persistent` a persistent grid of that many
/// CTAs forced (`splits` then 1).
fn forward_into<O: Element>(
    dev: &Device,
    (q, k, v): (&Fp8Tensor, &Fp8Tensor, &Fp8Tensor),
    o: &mut DeviceTensor<O>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    forced: Option<&Fp8FwdTile>,
    (splits, persistent): (Option<usize>, Option<(usize, TileOrder)>),
) -> Result<()> {
    check_output_dtype::<O>()?;
    let (p, chosen) = plan(dev, q, k, v, opts)?;
    check_outputs(dev, &p, o, lse, "one f32 per (batch, head_q, query row)")?;
    let info = dev.info();
    let tile = forced.unwrap_or(&chosen);
    if !tiles::FP8_FWD_TILES.contains(tile)
        || tile.head_dim != p.head_dim
        || !tiles::fits_smem(tile.smem_bytes(), info.smem_per_block_optin, info.smem_per_sm)
    {
        return Err(Error::NoTileConfig(format!(
            "{tile:?} is not an FP8 row for head dim {} on this device",
            p.head_dim
        )));
    }
    launch_planned(dev, &p, opts, tile, (splits, persistent), (q, k, v), o, lse)
}

/// The launch of a checked call: decode with grouped query heads runs them as rows of their K/V head
/// (`pack_query_heads`, as the 16-bit forward: one read of each K/V head per split), then the kernel
/// with `splits` or the heuristic's count (unsplit: one CTA per tile, or the persistent kernel where
/// [`persistent_grid`] or a forced CTA count `persistent` has one), then the combine when split.
#[allow(clippy::too_many_arguments)]
fn launch_planned<O: Element>(
    dev: &Device,
    p: &AttnProblem,
    opts: &AttnOptions,
    tile: &Fp8FwdTile,
    (splits, persistent): (Option<usize>, Option<(usize, TileOrder)>),
    inputs: (&Fp8Tensor, &Fp8Tensor, &Fp8Tensor),
    o: &mut DeviceTensor<O>,
    lse: &mut CudaSlice<f32>,
) -> Result<()> {
    let packed = pack_query_heads(p, opts, &inputs.0.data.layout, &o.layout, true);
    let (run, q_layout, o_layout) = run_view(packed.as_ref(), p, inputs.0.data.layout, o.layout);
    let forced_splits = splits.is_some();
    let splits = splits.unwrap_or_else(|| fp8_num_splits(dev, run, tile));
    let ctas = match persistent {
        Some((n, order)) => Some((n.clamp(1, persistent_tiles(run, Fp8FwdTile::BLOCK_M)?.max(1)), order)),
        // A forced split count, one included, runs one CTA per tile (per split).
        None if splits == 1 && !forced_splits => persistent_grid(dev, run, tile)?,
        None => None,
    };
    let view = RunView { p: run, packed: packed.as_ref(), q: &q_layout, o: &o_layout, splits, ctas };
    launch(dev, &view, opts, tile, inputs, &mut o.buf, lse)
}

/// What one launch runs: the problem (the packed rows' when `packed`), Q's and O's layouts as it sees
/// them, its split count, and the persistent kernel's CTA count (`None`: one CTA per tile).
struct RunView<'a> {
    p: &'a AttnProblem,
    packed: Option<&'a HeadsAsRows>,
    q: &'a Layout,
    o: &'a Layout,
    splits: usize,
    ctas: Option<(usize, TileOrder)>,
}

/// The persistent grid of an unsplit call where its tiles fill more than a wave (`persistent_ctas`;
/// `None`: one CTA per tile): tiles that all see the same keys in rounds on one CTA per SM where the
/// row says so (`Fp8FwdTile::equal_tiles_in_rounds`), every other call by ticket on one CTA per SM.
/// Measured on an H200 (docs/perf.md, "A persistent FP8 forward"): against one CTA per tile +10-13%
/// at 1K, +2-9% at 4K, level to +7% from 8K; rounds on 128 of 132 SMs for causal rows ran 11-15%
/// behind one CTA per tile at 16K where tickets ran level with it, and at head dim 128 rounds trailed
/// tickets by 2-6% non-causal (SMs that finish their rounds early idle), where at head dims 64 (level)
/// and 256 (+1-4%) they did not.
fn persistent_grid(dev: &Device, p: &AttnProblem, tile: &Fp8FwdTile) -> Result<Option<(usize, TileOrder)>> {
    let tiles = persistent_tiles(p, Fp8FwdTile::BLOCK_M)?;
    let m_blocks = p.seqlen_q.div_ceil(Fp8FwdTile::BLOCK_M);
    let slots = dev.info().sm_count as usize;
    Ok(persistent_ctas(&p.mask, m_blocks, tiles, slots).map(|(ctas, order)| {
        if order == TileOrder::Rounds && p.mask.sees_all() && tile.equal_tiles_in_rounds {
            (ctas, order)
        } else {
            (slots, TileOrder::Tickets)
        }
    }))
}

/// Everything checked before a launch: devices, shapes, descale factors' length and device, strides of
/// whole 16-byte rows, head dim and device.
fn plan(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    opts: &AttnOptions,
) -> Result<(AttnProblem, Fp8FwdTile)> {
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v)] {
        t.data.check_on(dev, arg)?;
        if t.descale.ordinal() != dev.info().ordinal {
            return Err(Error::DeviceMismatch { arg, got: t.descale.ordinal(), expected: dev.info().ordinal });
        }
    }
    let (qd, kd, vd) = (&q.data, &k.data, &v.data);
    let p = AttnProblem::new((&qd.layout, qd.buf.len()), (&kd.layout, kd.buf.len()), (&vd.layout, vd.buf.len()), opts)?;
    check_per_head(dev, opts)?;
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v)] {
        if t.heads_kv != p.heads_kv {
            return Err(Error::ShapeMismatch {
                arg,
                what: "descale groups (heads_kv)",
                got: t.heads_kv,
                expected: p.heads_kv,
                why: "the FP8 forward takes one factor per (batch, K/V head) for each input",
            });
        }
        if t.descale.len() != p.batch * p.heads_kv {
            return Err(Error::ShapeMismatch {
                arg,
                what: "descale factors",
                got: t.descale.len(),
                expected: p.batch * p.heads_kv,
                why: "one f32 per (batch, K/V head)",
            });
        }
        // Rows of whole 16-byte vectors (TMA's stride unit): 16 one-byte elements.
        check_vector_strides_of(arg, &t.data.layout, 16)?;
    }
    if q.rotation != k.rotation || v.rotation.is_some() {
        return Err(Error::RotationMismatch {
            q: q.rotation.map(|r| r.seed),
            k: k.rotation.map(|r| r.seed),
            v: v.rotation.map(|r| r.seed),
        });
    }
    check_grid(p.heads_q, p.batch, p.lse_len())?;
    if p.head_dim_v != p.head_dim {
        return Err(Error::UnsupportedHeadDimV {
            head_dim: p.head_dim,
            head_dim_v: p.head_dim_v,
            supported: FP8_HEAD_DIMS,
        });
    }
    let tile = fp8_forward_tile(dev, p.head_dim)?;
    Ok((p, tile))
}

fn launch<O: Element>(
    dev: &Device,
    run: &RunView,
    opts: &AttnOptions,
    tile: &Fp8FwdTile,
    (q, k, v): (&Fp8Tensor, &Fp8Tensor, &Fp8Tensor),
    o: &mut CudaSlice<O>,
    lse: &mut CudaSlice<f32>,
) -> Result<()> {
    let p = run.p;
    let f16 = O::DTYPE == DType::F16;
    let order = run.ctas.map_or(TileOrder::OnePerTile, |(_, order)| order);
    let symbol = match (run.splits > 1, order) {
        (true, _) => tile.split_symbol,
        (false, TileOrder::OnePerTile) => tile.symbol(f16),
        (false, TileOrder::Rounds) => tile.persistent_symbols[f16 as usize],
        (false, TileOrder::Tickets) => tile.ticket_symbols[f16 as usize],
    };
    let f = dev.modules.function(&dev.ctx, symbol, tile.smem_bytes())?;
    let stream = dev.stream();
    let (q_ptr, _q) = q.data.buf.device_ptr(stream);
    let (k_ptr, _k) = k.data.buf.device_ptr(stream);
    let (v_ptr, _v) = v.data.buf.device_ptr(stream);
    // Packed decode rows read the keys of their window only (`HeadsAsRows::first_key`); one byte each.
    let first_key = |l: &Layout| (run.packed.map_or(0, |r| r.first_key) * l.strides[1]) as u64;
    let (k_ptr, v_ptr) = (k_ptr + first_key(&k.data.layout), v_ptr + first_key(&v.data.layout));
    let (qd_ptr, _qd) = q.descale.device_ptr(stream);
    let (kd_ptr, _kd) = k.descale.device_ptr(stream);
    let (vd_ptr, _vd) = v.descale.device_ptr(stream);
    let (o_ptr, _o) = o.device_ptr_mut(stream);
    let (lse_ptr, _l) = lse.device_ptr_mut(stream);
    let score = ScoreArgs::new(dev, p, opts)?;
    let mut workspace = SplitWorkspace::new(dev, p.lse_len(), p.head_dim_v, run.splits)?;
    let (o_accum, lse_accum) = workspace.ptrs(stream);
    let params = KernelParams(FwdParams {
        q: q_ptr,
        k: k_ptr,
        v: v_ptr,
        o: o_ptr,
        lse: lse_ptr,
        q_strides: strides3(run.q),
        k_strides: strides3(&k.data.layout),
        v_strides: strides3(&v.data.layout),
        o_strides: strides3(run.o),
        score: score.params,
        heads_q: p.heads_q as u32,
        group: p.group_size() as u32,
        num_splits: run.splits as u32,
        // Packed decode rows are query heads, each with its own sink.
        sinks_by_row: run.packed.is_some() as u32,
        pages: PageTable::default(),
        o_accum,
        lse_accum,
        batch: p.batch as u32,
        section_heads: persistent_section(dev.info(), p, order, 1),
        tile_counter: if order == TileOrder::Tickets { dev.tile_counter.addr() } else { 0 },
    });
    let map = |ptr, dims, strides: [usize; 4], rows| {
        tma::tensor_map(DType::F8E4M3, ptr, dims, [strides[0], strides[1], strides[2]], rows)
    };
    let maps = KernelParams(FwdTensorMaps {
        q: map(q_ptr, [p.batch, p.seqlen_q, p.heads_q, p.head_dim], run.q.strides, Fp8FwdTile::BLOCK_M)?,
        k: map(k_ptr, [p.batch, p.seqlen_k, p.heads_kv, p.head_dim], k.data.layout.strides, tile.block_n)?,
        v: map(v_ptr, [p.batch, p.seqlen_k, p.heads_kv, p.head_dim_v], v.data.layout.strides, tile.block_n)?,
    });
    let descales = KernelParams(Fp8Descales { q: qd_ptr, k: kd_ptr, v: vd_ptr });
    let one_per_tile =
        ((p.seqlen_q.div_ceil(Fp8FwdTile::BLOCK_M) * run.splits) as u32, p.heads_q as u32, p.batch as u32);
    let cfg = LaunchConfig {
        grid_dim: run.ctas.map_or(one_per_tile, |(n, _)| (n as u32, 1, 1)),
        block_dim: (Fp8FwdTile::THREADS as u32, 1, 1),
        shared_mem_bytes: tile.smem_bytes() as u32,
    };
    let rows = CombineRows {
        heads_q: p.heads_q,
        rows_per_head: p.seqlen_q,
        o: run.o,
        lse_rows: p.lse_len(),
        head_dim_v: p.head_dim_v,
    };
    // `o_ptr` and `lse_ptr` hold the call's O (`run.o`, or the packed rows' call O) and LSE.
    let combine = workspace.combine(dev, f16, run.packed, rows, (o_ptr, lse_ptr), score.params.sinks)?;
    let main = Launch::new(&f, symbol, cfg, &params).arg(&maps).arg(&descales);
    let launches: Vec<Launch> = std::iter::once(main).chain(combine.as_ref().map(Combine::launch)).collect();
    // SAFETY: `plan` validated every layout against its buffer, the strides (whole 16-byte rows), the
    // descale buffers' lengths and the index limits; the packed rows' views and key offset stay within
    // those layouts; the pointers are live for the launches (their guards outlive them on this stream)
    // and the maps describe the same buffers; the combine reads the workspace the split kernel writes,
    // freed after both in stream order (dropped below); a ticket-taking grid takes the device's tile
    // counter, zero between launches on its stream (the grid's last CTA resets it).
    unsafe { launch::enqueue(dev, &launches) }?;
    drop(workspace);
    Ok(())
}
