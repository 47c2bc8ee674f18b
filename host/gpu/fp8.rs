//! The FP8 (e4m3) forward on the GPU (`kernels-gpu/src/fwd/hopper_fp8.rs`, compute capability 9.0):
//! FP8 tensors with their descale factors ([`Fp8Tensor`], the convention of `crate::fp8`), the
//! conversion from bf16/f16 on the device ([`quantize_fp8`]), and the forward, O in bf16.

use crate::device::Device;
use crate::dtype::{DType, Element, F8E4M3};
use crate::error::{Arg, DriverContext, Error, Result};
use crate::fp8::{check_descale, check_groups};
use crate::gpu::flash::{check_grid, check_outputs};
use crate::gpu::score::{check_per_head, ScoreArgs};
use crate::gpu::tensor::{check_vector_strides, check_vector_strides_of, strides3, DeviceTensor, GpuForwardOutput};
use crate::gpu::{launch::KernelParams, tma};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
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
        Ok(Fp8Tensor { data, descale, heads_kv })
    }
}

/// `x` converted to e4m3 on the device with one factor per (batch, group of `heads / heads_kv`
/// heads), as `crate::fp8::quantize` does on the host (the same bits): two kernels, then a copy of the
/// `batch · heads_kv` factors back to check them (a non-finite input gives a non-finite factor:
/// `Error::BadDescale`), which waits for the conversion.
pub fn quantize_fp8<T: Element>(dev: &Device, x: &DeviceTensor<T>, arg: Arg, heads_kv: usize) -> Result<Fp8Tensor> {
    if !T::DTYPE.is_half() {
        return Err(Error::UnsupportedDtype { arg, dtype: T::DTYPE, path: "the FP8 conversion" });
    }
    check_sm90(dev)?;
    x.check_on(dev, arg)?;
    check_vector_strides(arg, &x.layout)?;
    let [batch, seqlen, heads, head_dim] = x.shape();
    check_groups(arg, heads, heads_kv)?;
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
        });
        // Enough CTAs per group to fill the device about twice, each striding over its group.
        let vectors = seqlen * (heads / heads_kv) * head_dim / 8;
        let shares =
            vectors.div_ceil(256).clamp(1, (2 * dev.info().sm_count as usize).div_ceil(groups).max(1)).min(65535);
        let cfg =
            LaunchConfig { grid_dim: (groups as u32, shares as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let f16 = T::DTYPE == DType::F16;
        for name in
            if f16 { [abi::FP8_AMAX_F16, abi::FP8_QUANTIZE_F16] } else { [abi::FP8_AMAX_BF16, abi::FP8_QUANTIZE_BF16] }
        {
            let f = dev.modules.function(&dev.ctx, name, 0)?;
            // SAFETY: the parameters describe `x` (validated layout, 16-byte rows), `out` (contiguous,
            // its size), and `groups` u32 and f32 values; the amax launch runs first on this stream.
            unsafe { stream.launch_builder(&f).arg(&params).launch(cfg) }
                .map_err(|source| Error::Launch { kernel: name.into(), source })?;
        }
    }
    check_descale(arg, &dev.download_f32(&descale)?, batch, heads_kv)?;
    let data = DeviceTensor { buf: out, layout, ordinal: dev.info().ordinal };
    Ok(Fp8Tensor { data, descale, heads_kv })
}

/// The FP8 forward tile for a head dim on this device (`tiles::choose_fwd_fp8`).
pub fn fp8_forward_tile(dev: &Device, head_dim: usize) -> Result<Fp8FwdTile> {
    check_sm90(dev)?;
    let info = dev.info();
    tiles::choose_fwd_fp8(head_dim, info.smem_per_block_optin, info.smem_per_sm, true)
        .copied()
        .ok_or(Error::UnsupportedHeadDim { arg: Arg::Q, head_dim, supported: FP8_HEAD_DIMS })
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
/// device); dense batches, head dims 64, 128 and 256 (`FP8_HEAD_DIMS`), compute capability 9.0. P is rounded to e4m3
/// for the P·V product (scaled by a power of two first; `fwd/hopper_fp8.rs`).
pub fn flash_forward_fp8(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    opts: &AttnOptions,
) -> Result<GpuForwardOutput<bf16>> {
    let (p, tile) = plan(dev, q, k, v, opts)?;
    dev.refuse_capture("flash_forward_fp8")?;
    let o_layout = Layout::contiguous(p.o_shape());
    // SAFETY: the kernel writes every element of O and of the LSE.
    let o = unsafe { dev.stream.alloc::<bf16>(o_layout.numel()) }.during("allocating O")?;
    let mut lse = unsafe { dev.stream.alloc::<f32>(p.lse_len()) }.during("allocating the LSE")?;
    let mut o = DeviceTensor { buf: o, layout: o_layout, ordinal: dev.info().ordinal };
    // Outputs allocated here to the problem's shape: nothing of them to check.
    launch(dev, &p, opts, &tile, (q, k, v), &mut o, &mut lse)?;
    Ok(GpuForwardOutput { o, lse })
}

/// As [`flash_forward_fp8`], into caller-provided buffers (as `flash_forward_into`'s).
pub fn flash_forward_fp8_into(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    o: &mut DeviceTensor<bf16>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
) -> Result<()> {
    forward_into(dev, (q, k, v), o, lse, opts, None)
}

/// As [`flash_forward_fp8_into`] with an explicit row of `tiles::FP8_FWD_TILES` instead of the
/// chooser's: for tests and tile benchmarks. A row of another head dim, or one whose shared memory does
/// not fit this device, is `Error::NoTileConfig`.
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_fp8_with_tile(
    dev: &Device,
    q: &Fp8Tensor,
    k: &Fp8Tensor,
    v: &Fp8Tensor,
    o: &mut DeviceTensor<bf16>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: &Fp8FwdTile,
) -> Result<()> {
    forward_into(dev, (q, k, v), o, lse, opts, Some(tile))
}

/// The checks and the launch of an FP8 forward into given outputs, on the chooser's row or `forced`.
fn forward_into(
    dev: &Device,
    (q, k, v): (&Fp8Tensor, &Fp8Tensor, &Fp8Tensor),
    o: &mut DeviceTensor<bf16>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    forced: Option<&Fp8FwdTile>,
) -> Result<()> {
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
    launch(dev, &p, opts, tile, (q, k, v), o, lse)
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

fn launch(
    dev: &Device,
    p: &AttnProblem,
    opts: &AttnOptions,
    tile: &Fp8FwdTile,
    (q, k, v): (&Fp8Tensor, &Fp8Tensor, &Fp8Tensor),
    o: &mut DeviceTensor<bf16>,
    lse: &mut CudaSlice<f32>,
) -> Result<()> {
    let f = dev.modules.function(&dev.ctx, tile.symbol, tile.smem_bytes())?;
    let stream = dev.stream();
    let (q_ptr, _q) = q.data.buf.device_ptr(stream);
    let (k_ptr, _k) = k.data.buf.device_ptr(stream);
    let (v_ptr, _v) = v.data.buf.device_ptr(stream);
    let (qd_ptr, _qd) = q.descale.device_ptr(stream);
    let (kd_ptr, _kd) = k.descale.device_ptr(stream);
    let (vd_ptr, _vd) = v.descale.device_ptr(stream);
    let (o_ptr, _o) = o.buf.device_ptr_mut(stream);
    let (lse_ptr, _l) = lse.device_ptr_mut(stream);
    let score = ScoreArgs::new(dev, p, opts)?;
    let params = KernelParams(FwdParams {
        q: q_ptr,
        k: k_ptr,
        v: v_ptr,
        o: o_ptr,
        lse: lse_ptr,
        q_strides: strides3(&q.data.layout),
        k_strides: strides3(&k.data.layout),
        v_strides: strides3(&v.data.layout),
        o_strides: strides3(&o.layout),
        score: score.params,
        heads_q: p.heads_q as u32,
        group: p.group_size() as u32,
        num_splits: 1,
        sinks_by_row: 0,
        pages: PageTable::default(),
        o_accum: 0,
        lse_accum: 0,
    });
    let map = |ptr, dims, l: &Layout, rows| {
        tma::tensor_map(DType::F8E4M3, ptr, dims, [l.strides[0], l.strides[1], l.strides[2]], rows)
    };
    let maps = KernelParams(FwdTensorMaps {
        q: map(q_ptr, [p.batch, p.seqlen_q, p.heads_q, p.head_dim], &q.data.layout, Fp8FwdTile::BLOCK_M)?,
        k: map(k_ptr, [p.batch, p.seqlen_k, p.heads_kv, p.head_dim], &k.data.layout, tile.block_n)?,
        v: map(v_ptr, [p.batch, p.seqlen_k, p.heads_kv, p.head_dim_v], &v.data.layout, tile.block_n)?,
    });
    let descales = KernelParams(Fp8Descales { q: qd_ptr, k: kd_ptr, v: vd_ptr });
    let cfg = LaunchConfig {
        grid_dim: (p.seqlen_q.div_ceil(Fp8FwdTile::BLOCK_M) as u32, p.heads_q as u32, p.batch as u32),
        block_dim: (Fp8FwdTile::THREADS as u32, 1, 1),
        shared_mem_bytes: tile.smem_bytes() as u32,
    };
    // SAFETY: `plan` validated every layout against its buffer, the strides (whole 16-byte rows), the
    // descale buffers' lengths and the index limits; the pointers are live for the launch (their
    // guards outlive it on this stream) and the maps describe the same buffers.
    unsafe { stream.launch_builder(&f).arg(&params).arg(&maps).arg(&descales).launch(cfg) }
        .map_err(|source| Error::Launch { kernel: tile.symbol.into(), source })?;
    Ok(())
}
