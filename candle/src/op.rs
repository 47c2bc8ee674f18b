//! The attention op: forward on candle's CUDA storage through ironflash, and its backward for candle's
//! autograd from the forward's LSE (kept by the op, which candle keeps for the backward pass).

use crate::{adopt, borrow};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, StorageRef, Tensor};
use ironflash::{bf16, f16, gpu, Arg, AttnOptions, Element, PerHead};
use std::sync::{Arc, Mutex};

pub struct FlashAttn {
    softmax_scale: f32,
    alibi_slopes: Option<Tensor>,
    window_left: Option<usize>,
    window_right: Option<usize>,
    softcap: Option<f32>,
    /// The forward's LSE, f32 `[batch, heads_q, seqlen_q]`, for the backward.
    lse: Mutex<Option<CudaSlice<f32>>>,
}

impl FlashAttn {
    pub fn new(
        softmax_scale: f32,
        alibi_slopes: Option<Tensor>,
        window_left: Option<usize>,
        window_right: Option<usize>,
        softcap: Option<f32>,
    ) -> Self {
        FlashAttn { softmax_scale, alibi_slopes, window_left, window_right, softcap, lse: Mutex::new(None) }
    }

    /// Runs the op, recorded for the backward when an input tracks gradients.
    pub fn apply(self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        q.apply_op3(k, v, self)
    }

    /// ironflash's options for this op, the ALiBi slopes (if any) lent from candle.
    fn options<'a>(&self, slopes: Option<&'a CudaSlice<f32>>) -> AttnOptions<'a> {
        // candle-flash-attn's convention: a right window of 0 with no left window is causal; a
        // window beyond the keys is no window (ironflash clamps the same way).
        let mut opts = AttnOptions { causal: self.window_right == Some(0), ..AttnOptions::default() }
            .with_scale(self.softmax_scale)
            .with_window(self.window_left, self.window_right);
        if let Some(cap) = self.softcap {
            opts = opts.with_softcap(cap);
        }
        if let Some(s) = slopes {
            opts = opts.with_alibi(PerHead::Device(s));
        }
        opts
    }

    /// The ALiBi slopes, if any, lent from candle, with the read guard of their storage, which must be
    /// held while they are in use.
    fn lent_slopes(&self, stream: &Arc<CudaStream>) -> Result<Option<(borrow::LentSlice, StorageRef<'_>)>> {
        let Some(t) = &self.alibi_slopes else { return Ok(None) };
        let (guard, layout) = t.storage_and_layout();
        let lent = slope_values(stream, &guard, layout)?;
        Ok(Some((lent, guard)))
    }

    fn forward<T: Element + CudaDType>(
        &self,
        (q, q_l): (&CudaStorage, &Layout),
        (k, k_l): (&CudaStorage, &Layout),
        (v, v_l): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let device = q.device().clone();
        let stream = device.cuda_stream();
        let dev = borrow::device_for(&stream)?;
        let slopes = self.lent_slopes(&stream)?;
        // SAFETY: the storages are borrowed for this call (candle holds their read guards around it).
        let (q, k, v) = unsafe {
            (
                borrow::tensor(&dev, Arg::Q, q.as_cuda_slice::<T>()?, q_l)?,
                borrow::tensor(&dev, Arg::K, k.as_cuda_slice::<T>()?, k_l)?,
                borrow::tensor(&dev, Arg::V, v.as_cuda_slice::<T>()?, v_l)?,
            )
        };
        let out = gpu::flash_forward(&dev, &q, &k, &v, &self.options(slopes.as_ref().map(|(lent, _)| &**lent)))
            .map_err(candle_core::Error::wrap)?;
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Some(out.lse);
        let shape = Shape::from(out.o.shape().to_vec());
        Ok((CudaStorage::wrap_cuda_slice(out.o.into_buffer(), device), shape))
    }

    fn backward<T: Element + CudaDType>(
        &self,
        [q, k, v, o, d_o]: [&Tensor; 5],
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grads = {
            let guards = [q, k, v, o, d_o].map(|t| t.storage_and_layout());
            let mut parts = Vec::with_capacity(5);
            for (s, l) in &guards {
                match &**s {
                    Storage::Cuda(c) => parts.push((c, *l)),
                    _ => candle_core::bail!("ironflash: the backward's tensors must be on a CUDA device"),
                }
            }
            let stream = parts[0].0.device().cuda_stream();
            let dev = borrow::device_for(&stream)?;
            let slopes = self.lent_slopes(&stream)?;
            let lse = self.lse.lock().unwrap_or_else(|e| e.into_inner());
            let Some(lse) = lse.as_ref() else { candle_core::bail!("ironflash: the backward ran before the forward") };
            let args = [Arg::Q, Arg::K, Arg::V, Arg::O, Arg::DO];
            let mut lent = Vec::with_capacity(5);
            for ((c, l), arg) in parts.iter().zip(args) {
                // SAFETY: the read guards above keep each storage alive and unwritten for this call.
                lent.push(unsafe { borrow::tensor(&dev, arg, c.as_cuda_slice::<T>()?, l)? });
            }
            gpu::flash_backward(
                &dev,
                &lent[0],
                &lent[1],
                &lent[2],
                &lent[3],
                lse,
                &lent[4],
                &self.options(slopes.as_ref().map(|(lent, _)| &**lent)),
            )
            .map_err(candle_core::Error::wrap)?
        };
        let dq = adopt::tensor(grads.dq.into_buffer(), q.shape(), q)?;
        let dk = adopt::tensor(grads.dk.into_buffer(), k.shape(), q)?;
        let dv = adopt::tensor(grads.dv.into_buffer(), v.shape(), q)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The ALiBi slopes' storage lent as f32 values: one per query head, or per (batch, query head).
fn slope_values(stream: &Arc<CudaStream>, storage: &Storage, layout: &Layout) -> Result<borrow::LentSlice> {
    let Storage::Cuda(c) = storage else { candle_core::bail!("ironflash: alibi_slopes must be on the CUDA device") };
    // Lent on q's stream, so ironflash's own device check would pass a buffer of another device.
    let (got, expected) = (c.device().cuda_stream().context().ordinal(), stream.context().ordinal());
    if got != expected {
        candle_core::bail!("ironflash: alibi_slopes are on CUDA device {got}, q on device {expected}");
    }
    if c.dtype() != DType::F32 {
        return Err(candle_core::Error::UnexpectedDType { msg: "alibi_slopes", expected: DType::F32, got: c.dtype() });
    }
    if !layout.is_contiguous() || layout.dims().len() > 2 {
        candle_core::bail!("ironflash: alibi_slopes must be contiguous, (num_heads) or (batch, num_heads)")
    }
    // SAFETY: the caller keeps the slopes' read guard with the lent slice (`FlashAttn::lent_slopes`).
    unsafe { borrow::values(stream, c.as_cuda_slice::<f32>()?, layout.start_offset()) }
}

impl CustomOp3 for FlashAttn {
    fn name(&self) -> &'static str {
        "ironflash-flash-attn"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("ironflash-candle: q, k and v must be on a CUDA device")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_l: &Layout,
        k: &CudaStorage,
        k_l: &Layout,
        v: &CudaStorage,
        v_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if !matches!(q.dtype(), DType::BF16 | DType::F16) {
            return Err(candle_core::Error::UnsupportedDTypeForOp(q.dtype(), "ironflash-flash-attn (bf16 or f16)"));
        }
        for (other, name) in [(k, "k"), (v, "v")] {
            if other.dtype() != q.dtype() {
                return Err(candle_core::Error::UnexpectedDType { msg: name, expected: q.dtype(), got: other.dtype() });
            }
        }
        match q.dtype() {
            DType::BF16 => self.forward::<bf16>((q, q_l), (k, k_l), (v, v_l)),
            DType::F16 => self.forward::<f16>((q, q_l), (k, k_l), (v, v_l)),
            dt => Err(candle_core::Error::UnsupportedDTypeForOp(dt, "ironflash-flash-attn (bf16 or f16)")),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        d_o: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The incoming gradient may come in another dtype (an f32 loss): ironflash takes q's.
        let d_o = d_o.to_dtype(q.dtype())?;
        match q.dtype() {
            DType::BF16 => self.backward::<bf16>([q, k, v, o, &d_o]),
            DType::F16 => self.backward::<f16>([q, k, v, o, &d_o]),
            dt => Err(candle_core::Error::UnsupportedDTypeForOp(dt, "ironflash-flash-attn (bf16 or f16)")),
        }
    }
}
