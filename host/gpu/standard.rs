//! Standard (unfused) attention on the GPU: the baseline that FlashAttention is measured against.
//! S = scale·QKᵀ by cuBLAS into a materialised `[batch, heads_q, seqlen_q, seqlen_k]` buffer, a row
//! softmax kernel (Rust, `kernels-gpu/src/softmax_rows.rs`) turning S into P in place, then O = PV by
//! cuBLAS. Memory grows with seqlen_q·seqlen_k, exactly as in an unfused implementation.

use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::error::{Arg, DriverContext, Error, Result};
use crate::gpu::gemm::{gemm, Operand};
use crate::gpu::launch::{self, KernelParams, Launch};
use crate::gpu::tensor::{DeviceTensor, GpuForwardOutput};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use ironflash_kernels::abi::{RowSoftmaxParams, ROW_SOFTMAX_BF16, ROW_SOFTMAX_F16};

pub(crate) const SOFTMAX_WARPS_PER_BLOCK: u32 = 8;

/// Bytes of device memory the standard path needs beyond its inputs and output (the score matrix).
pub fn standard_extra_bytes(p: &AttnProblem, dtype: DType) -> usize {
    p.batch * p.heads_q * p.seqlen_q * p.seqlen_k * dtype.size_bytes()
}

/// The cuBLAS element type and the row-softmax kernel of a GPU element type.
pub(crate) fn gpu_dtype<T: Element>(arg: Arg) -> Result<(blas_sys::cudaDataType_t, &'static str)> {
    match T::DTYPE {
        DType::BF16 => Ok((blas_sys::cudaDataType_t::CUDA_R_16BF, ROW_SOFTMAX_BF16)),
        DType::F16 => Ok((blas_sys::cudaDataType_t::CUDA_R_16F, ROW_SOFTMAX_F16)),
        DType::F32 | DType::F8E4M3 => {
            Err(Error::UnsupportedDtype { arg, dtype: T::DTYPE, path: "the GPU attention paths" })
        }
    }
}

/// Standard attention: O (contiguous, `[batch, seqlen_q, heads_q, head_dim_v]`: q's rows and heads,
/// v's head dim) and the f32 LSE `[batch, heads_q, seqlen_q]`.
pub fn standard_forward<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    opts: &AttnOptions,
) -> Result<GpuForwardOutput<T>> {
    standard_forward_train(dev, q, k, v, opts).map(|t| GpuForwardOutput { o: t.o, lse: t.lse })
}

/// What the standard forward keeps for its backward: O, the LSE and the probabilities P themselves
/// (`[batch, heads_q, seqlen_q, seqlen_k]` contiguous, in the element type), as an autograd
/// implementation saves them: its backward recomputes nothing.
#[derive(Debug)]
pub struct StandardTrainOutput<T> {
    pub o: DeviceTensor<T>,
    pub lse: CudaSlice<f32>,
    pub probs: CudaSlice<T>,
}

/// [`standard_forward`] keeping P for [`standard_backward`](fn@crate::gpu::standard_backward).
pub fn standard_forward_train<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    opts: &AttnOptions,
) -> Result<StandardTrainOutput<T>> {
    let (data_type, softmax_kernel) = gpu_dtype::<T>(Arg::Q)?;
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v)] {
        t.check_on(dev, arg)?;
    }
    let p = AttnProblem::new((&q.layout, q.buf.len()), (&k.layout, k.buf.len()), (&v.layout, v.buf.len()), opts)?;
    p.require_mask_only("the standard baseline")?;
    dev.refuse_capture("the standard forward")?;
    // S = QKᵀ reduces over q's and k's head dim, O = PV produces v's.
    let (nq, nk, d, d_v) = (p.seqlen_q, p.seqlen_k, p.head_dim, p.head_dim_v);
    for (what, value) in [("seqlen_q", nq), ("seqlen_k", nk)] {
        if value > i32::MAX as usize {
            return Err(Error::TooLarge { arg: Arg::Q, what, value });
        }
    }

    let stream = dev.stream();
    let o_layout = Layout::contiguous([p.batch, nq, p.heads_q, d_v]);
    // SAFETY: every element of `o`, `scores` and `lse` is written below before it is read.
    let mut o = unsafe { stream.alloc::<T>(o_layout.numel()) }.during("allocating O")?;
    let mut scores =
        unsafe { stream.alloc::<T>(p.batch * p.heads_q * nq * nk) }.during("allocating the score matrix")?;
    let mut lse = unsafe { stream.alloc::<f32>(p.lse_len()) }.during("allocating the LSE")?;
    let blas = dev.cublas()?;

    let elem = std::mem::size_of::<T>() as u64;
    let group = p.group_size();
    // Without GQA one strided-batched call covers every head of a batch; with GQA, one call per K/V head
    // covers its group of query heads (stride 0 on K and V shares them without a copy).
    let (calls_per_batch, heads_per_call, kv_head_stride) =
        if group == 1 { (1, p.heads_q, k.layout.strides[2]) } else { (p.heads_kv, group, 0) };
    let head_matrix = nq * nk;
    {
        let (q_ptr, _q_sync) = q.buf.device_ptr(stream);
        let (k_ptr, _k_sync) = k.buf.device_ptr(stream);
        let (s_ptr, _s_sync) = scores.device_ptr_mut(stream);
        for b in 0..p.batch {
            for c in 0..calls_per_batch {
                let h0 = c * heads_per_call;
                // Column-major view: Sᵀ (nk x nq) = K (as Kᵀ stored, transposed) · Qᵀ, scaled.
                gemm(
                    blas,
                    data_type,
                    (true, false),
                    (nk, nq, d),
                    Operand {
                        ptr: k_ptr + elem * k.layout.offset(b, 0, h0 / group, 0) as u64,
                        ld: k.layout.strides[1],
                        batch_stride: kv_head_stride,
                    },
                    Operand {
                        ptr: q_ptr + elem * q.layout.offset(b, 0, h0, 0) as u64,
                        ld: q.layout.strides[1],
                        batch_stride: q.layout.strides[2],
                    },
                    (p.softmax_scale, 0.0),
                    Operand {
                        ptr: s_ptr + elem * ((b * p.heads_q + h0) * head_matrix) as u64,
                        ld: nk,
                        batch_stride: head_matrix,
                    },
                    heads_per_call,
                    "S = QKᵀ (cuBLAS)",
                )?;
            }
        }
    }

    let rows = (p.batch * p.heads_q * nq) as u32;
    {
        let f = dev.modules.function(&dev.ctx, softmax_kernel, 0)?;
        let (s_ptr, _s_sync) = scores.device_ptr_mut(stream);
        let (l_ptr, _l_sync) = lse.device_ptr_mut(stream);
        let params = RowSoftmaxParams { scores: s_ptr, probs: s_ptr, lse: l_ptr, rows, mask: p.mask };
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(SOFTMAX_WARPS_PER_BLOCK), 1, 1),
            block_dim: (SOFTMAX_WARPS_PER_BLOCK * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let arg = KernelParams(params);
        // SAFETY: params point at live buffers of the sizes the kernel reads and writes.
        unsafe { launch::enqueue(dev, &[Launch::new(&f, softmax_kernel, cfg, &arg)]) }?;
    }

    {
        let (v_ptr, _v_sync) = v.buf.device_ptr(stream);
        let (s_ptr, _s_sync) = scores.device_ptr(stream);
        let (o_ptr, _o_sync) = o.device_ptr_mut(stream);
        let v_head_stride = if group == 1 { v.layout.strides[2] } else { 0 };
        for b in 0..p.batch {
            for c in 0..calls_per_batch {
                let h0 = c * heads_per_call;
                // Column-major view: Oᵀ (d_v x nq) = Vᵀ (d_v x nk) · Pᵀ (nk x nq).
                gemm(
                    blas,
                    data_type,
                    (false, false),
                    (d_v, nq, nk),
                    Operand {
                        ptr: v_ptr + elem * v.layout.offset(b, 0, h0 / group, 0) as u64,
                        ld: v.layout.strides[1],
                        batch_stride: v_head_stride,
                    },
                    Operand {
                        ptr: s_ptr + elem * ((b * p.heads_q + h0) * head_matrix) as u64,
                        ld: nk,
                        batch_stride: head_matrix,
                    },
                    (1.0, 0.0),
                    Operand {
                        ptr: o_ptr + elem * o_layout.offset(b, 0, h0, 0) as u64,
                        ld: o_layout.strides[1],
                        batch_stride: o_layout.strides[2],
                    },
                    heads_per_call,
                    "O = PV (cuBLAS)",
                )?;
            }
        }
    }
    Ok(StandardTrainOutput {
        o: DeviceTensor { buf: o, layout: o_layout, ordinal: dev.info().ordinal },
        lse,
        probs: scores,
    })
}
