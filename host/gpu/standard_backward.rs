//! The standard-attention baseline's backward, as autograd runs it: nothing is recomputed, the forward's
//! stored probabilities P ([`standard_forward_train`](crate::gpu::standard_forward_train)) are read back.
//! dV = Pᵀ·dO and dP = dO·Vᵀ by cuBLAS (f32 compute), dS = scale·P ∘ (dP − rowsum(dO ∘ O)) by a Rust row
//! kernel (`kernels-gpu/src/softmax_rows.rs`, in place over dP), then dQ = dS·K and dK = dSᵀ·Q by cuBLAS.
//! Beyond P, the call allocates one more `[batch, heads_q, seqlen_q, seqlen_k]` buffer (dP, then dS):
//! memory grows with seqlen_q·seqlen_k, as in an unfused implementation.

use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::error::{Arg, DriverContext, Error, Result};
use crate::gpu::backward::GpuGradients;
use crate::gpu::gemm::{gemm, Operand};
use crate::gpu::launch::{self, KernelParams, Launch};
use crate::gpu::standard::{gpu_dtype, SOFTMAX_WARPS_PER_BLOCK};
use crate::gpu::tensor::{strides3, DeviceTensor};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use ironflash_kernels::abi::{RowSoftmaxBwdParams, ROW_SOFTMAX_BWD_BF16, ROW_SOFTMAX_BWD_F16};

/// Bytes of device memory the standard backward allocates beyond its gradients (the dP/dS matrix); the
/// forward's P, which it reads, is as large again.
pub fn standard_backward_extra_bytes(p: &AttnProblem, dtype: DType) -> usize {
    p.batch * p.heads_q * p.seqlen_q * p.seqlen_k * dtype.size_bytes()
}

/// Standard-attention backward: dQ, dK, dV (contiguous, shaped like q, k, v) for the upstream gradient
/// `d_o`, from the forward's inputs, its output `o` and its probabilities `probs`, as
/// [`standard_forward_train`](crate::gpu::standard_forward_train) returns them (`o` and `d_o` shaped like
/// O: q's batch, seqlen and heads, v's head dim; any strides with the last dim contiguous). With GQA/MQA,
/// dK and dV are summed over the query heads of each group. `opts` must be the forward's (causality is
/// already in P; the scale is applied to dS).
#[allow(clippy::too_many_arguments)]
pub fn standard_backward<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    probs: &CudaSlice<T>,
    d_o: &DeviceTensor<T>,
    opts: &AttnOptions,
) -> Result<GpuGradients<T>> {
    gpu_dtype::<T>(Arg::Q)?;
    let p = plan(dev, q, k, v, o, probs, d_o, opts)?;
    // SAFETY: standard_backward_into writes every element (beta = 0 GEMMs first).
    let mut grads = unsafe { GpuGradients::alloc_uninit(dev, &p, "standard_backward") }?;
    standard_backward_into(dev, q, k, v, o, probs, d_o, &mut grads, opts)?;
    Ok(grads)
}

/// As [`standard_backward`], into caller-provided gradients: `grads.dq` shaped like q, `grads.dk` like k
/// and `grads.dv` like v, each with any non-overlapping strides (last dim contiguous). Every element of
/// the three is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn standard_backward_into<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    probs: &CudaSlice<T>,
    d_o: &DeviceTensor<T>,
    grads: &mut GpuGradients<T>,
    opts: &AttnOptions,
) -> Result<()> {
    let (data_type, _) = gpu_dtype::<T>(Arg::Q)?;
    let p = plan(dev, q, k, v, o, probs, d_o, opts)?;
    for (arg, t) in [(Arg::DQ, &grads.dq), (Arg::DK, &grads.dk), (Arg::DV, &grads.dv)] {
        t.check_on(dev, arg)?;
        match arg {
            Arg::DQ => p.check_like_q(arg, &t.layout, t.buf.len())?,
            Arg::DK => p.check_like_k(arg, &t.layout, t.buf.len())?,
            _ => p.check_like_v(arg, &t.layout, t.buf.len())?,
        }
        if t.layout.strides[1] > i32::MAX as usize {
            return Err(Error::TooLarge { arg, what: "sequence stride", value: t.layout.strides[1] });
        }
    }
    // Q, K, dQ and dK have `head_dim`; V, O, dO and dV have `head_dim_v`.
    let (nq, nk, head_dim, head_dim_v) = (p.seqlen_q, p.seqlen_k, p.head_dim, p.head_dim_v);
    let (group, hq, hkv) = (p.group_size(), p.heads_q, p.heads_kv);
    let stream = dev.stream();
    let (dq_layout, dk_layout, dv_layout) = (grads.dq.layout, grads.dk.layout, grads.dv.layout);
    let (dq, dk, dv) = (&mut grads.dq.buf, &mut grads.dk.buf, &mut grads.dv.buf);
    // SAFETY: the dP GEMM (beta = 0) writes every element before the row kernel reads it.
    let mut ds = unsafe { stream.alloc::<T>(p.batch * hq * nq * nk) }.during("allocating the dP/dS matrix")?;
    let blas = dev.cublas()?;
    let elem = std::mem::size_of::<T>() as u64;
    let head_matrix = nq * nk;

    {
        let (q_ptr, _q_sync) = q.buf.device_ptr(stream);
        let (k_ptr, _k_sync) = k.buf.device_ptr(stream);
        let (v_ptr, _v_sync) = v.buf.device_ptr(stream);
        let (o_ptr, _o_sync) = o.buf.device_ptr(stream);
        let (do_ptr, _do_sync) = d_o.buf.device_ptr(stream);
        let (p_ptr, _p_sync) = probs.device_ptr(stream);
        let (dq_ptr, _dq_sync) = dq.device_ptr_mut(stream);
        let (dk_ptr, _dk_sync) = dk.device_ptr_mut(stream);
        let (dv_ptr, _dv_sync) = dv.device_ptr_mut(stream);
        let (ds_ptr, _ds_sync) = ds.device_ptr_mut(stream);
        let at = |base: u64, l: &Layout, b: usize, h: usize| base + elem * l.offset(b, 0, h, 0) as u64;
        let square = |base: u64, b: usize, h: usize| base + elem * ((b * hq + h) * head_matrix) as u64;

        // Products per query head (dP = dO·Vᵀ, dQ = dS·K) read the K/V head of their group: without GQA
        // one call per batch covers every head; with GQA, one call per K/V head covers its group
        // (batch stride 0 on K or V shares it without a copy).
        let (calls_per_batch, heads_per_call) = if group == 1 { (1, hq) } else { (hkv, group) };
        let kv_stride = |l: &Layout| if group == 1 { l.strides[2] } else { 0 };
        for b in 0..p.batch {
            for c in 0..calls_per_batch {
                let h0 = c * heads_per_call;
                // Column-major: dPᵀ (nk x nq) = V (Vᵀ stored, transposed) · dOᵀ, over v's head dim.
                gemm(
                    blas,
                    data_type,
                    (true, false),
                    (nk, nq, head_dim_v),
                    Operand {
                        ptr: at(v_ptr, &v.layout, b, h0 / group),
                        ld: v.layout.strides[1],
                        batch_stride: kv_stride(&v.layout),
                    },
                    Operand {
                        ptr: at(do_ptr, &d_o.layout, b, h0),
                        ld: d_o.layout.strides[1],
                        batch_stride: d_o.layout.strides[2],
                    },
                    (1.0, 0.0),
                    Operand { ptr: square(ds_ptr, b, h0), ld: nk, batch_stride: head_matrix },
                    heads_per_call,
                    "dP = dO·Vᵀ (cuBLAS)",
                )?;
            }
        }

        // Products summed over a group (dV = Pᵀ·dO, dK = dSᵀ·Q): one call per (batch, member g of the
        // group) over the K/V heads, the group's members after the first adding into the result (beta 1).
        let reduce_into_kv =
            |a_base: u64, a_layout: &Layout, square_base: u64, c_base: u64, c_layout: &Layout, what| -> Result<()> {
                // The result's head dim, as validated above: v's for dV, k's for dK.
                let result_head_dim = c_layout.head_dim();
                for b in 0..p.batch {
                    for g in 0..group {
                        // Column-major: dVᵀ (d_v x nk) = dOᵀ · P (Pᵀ stored, transposed); dKᵀ (d x nk)
                        // likewise from Q, dS.
                        gemm(
                            blas,
                            data_type,
                            (false, true),
                            (result_head_dim, nk, nq),
                            Operand {
                                ptr: at(a_base, a_layout, b, g),
                                ld: a_layout.strides[1],
                                batch_stride: group * a_layout.strides[2],
                            },
                            Operand { ptr: square(square_base, b, g), ld: nk, batch_stride: group * head_matrix },
                            (1.0, if g == 0 { 0.0 } else { 1.0 }),
                            Operand {
                                ptr: at(c_base, c_layout, b, 0),
                                ld: c_layout.strides[1],
                                batch_stride: c_layout.strides[2],
                            },
                            hkv,
                            what,
                        )?;
                    }
                }
                Ok(())
            };
        reduce_into_kv(do_ptr, &d_o.layout, p_ptr, dv_ptr, &dv_layout, "dV = Pᵀ·dO (cuBLAS)")?;

        let (kernel, rows) = (ds_kernel::<T>(), p.lse_len() as u32);
        let f = dev.modules.function(&dev.ctx, kernel, 0)?;
        let params = RowSoftmaxBwdParams {
            probs: p_ptr,
            dp: ds_ptr,
            ds: ds_ptr,
            o: o_ptr,
            d_o: do_ptr,
            o_strides: strides3(&o.layout),
            d_o_strides: strides3(&d_o.layout),
            rows,
            cols: nk as u32,
            seqlen_q: nq as u32,
            heads_q: hq as u32,
            // The kernel's head dim is the length of its rowsum(dO ∘ O): O's.
            head_dim: head_dim_v as u32,
            scale: p.softmax_scale,
        };
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(SOFTMAX_WARPS_PER_BLOCK), 1, 1),
            block_dim: (SOFTMAX_WARPS_PER_BLOCK * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let arg = KernelParams(params);
        // SAFETY: params point at live buffers of the sizes the kernel reads and writes (validated by
        // `plan`); the GEMMs before it and after it run in stream order.
        unsafe { launch::enqueue(dev, &[Launch::new(&f, kernel, cfg, &arg)]) }?;

        for b in 0..p.batch {
            for c in 0..calls_per_batch {
                let h0 = c * heads_per_call;
                // Column-major: dQᵀ (d x nq) = Kᵀ · dSᵀ.
                gemm(
                    blas,
                    data_type,
                    (false, false),
                    (head_dim, nq, nk),
                    Operand {
                        ptr: at(k_ptr, &k.layout, b, h0 / group),
                        ld: k.layout.strides[1],
                        batch_stride: kv_stride(&k.layout),
                    },
                    Operand { ptr: square(ds_ptr, b, h0), ld: nk, batch_stride: head_matrix },
                    (1.0, 0.0),
                    Operand {
                        ptr: at(dq_ptr, &dq_layout, b, h0),
                        ld: dq_layout.strides[1],
                        batch_stride: dq_layout.strides[2],
                    },
                    heads_per_call,
                    "dQ = dS·K (cuBLAS)",
                )?;
            }
        }
        reduce_into_kv(q_ptr, &q.layout, ds_ptr, dk_ptr, &dk_layout, "dK = dSᵀ·Q (cuBLAS)")?;
    }
    Ok(())
}

fn ds_kernel<T: Element>() -> &'static str {
    if T::DTYPE == DType::F16 {
        ROW_SOFTMAX_BWD_F16
    } else {
        ROW_SOFTMAX_BWD_BF16
    }
}

/// Everything checked before the first call: devices, shapes, P's length, cuBLAS's 32-bit dimensions.
#[allow(clippy::too_many_arguments)]
fn plan<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    probs: &CudaSlice<T>,
    d_o: &DeviceTensor<T>,
    opts: &AttnOptions,
) -> Result<AttnProblem> {
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v), (Arg::O, o), (Arg::DO, d_o)] {
        t.check_on(dev, arg)?;
    }
    let ordinal = dev.info().ordinal;
    if probs.ordinal() != ordinal {
        return Err(Error::DeviceMismatch { arg: Arg::O, got: probs.ordinal(), expected: ordinal });
    }
    let p = AttnProblem::new((&q.layout, q.buf.len()), (&k.layout, k.buf.len()), (&v.layout, v.buf.len()), opts)?;
    p.require_mask_only("the standard baseline")?;
    for (arg, t) in [(Arg::O, o), (Arg::DO, d_o)] {
        p.check_input_like_o(arg, &t.layout, t.buf.len())?;
    }
    let square = p.batch * p.heads_q * p.seqlen_q * p.seqlen_k;
    if probs.len() < square {
        return Err(Error::ShapeMismatch {
            arg: Arg::O,
            what: "length of P",
            got: probs.len(),
            expected: square,
            why: "P is [batch, heads_q, seqlen_q, seqlen_k], as standard_forward_train returns it",
        });
    }
    // cuBLAS takes 32-bit dimensions and leading dimensions; the row kernel 32-bit row indices.
    let strides = [q, k, v, o, d_o].map(|t| t.layout.strides[1]);
    for (what, value) in [("seqlen_q", p.seqlen_q), ("seqlen_k", p.seqlen_k), ("rows", p.lse_len())]
        .into_iter()
        .chain(strides.into_iter().map(|s| ("sequence stride", s)))
    {
        if value > i32::MAX as usize {
            return Err(Error::TooLarge { arg: Arg::Q, what, value });
        }
    }
    Ok(p)
}
