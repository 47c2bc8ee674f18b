//! The one cuBLAS entry point of the standard (unfused) baseline, forward and backward: a strided-batched
//! GEMM over 16-bit operands with f32 compute, addressed by raw device pointers so that one call can cover
//! every head of a batch (or, with GQA, a group of query heads sharing one K/V head through stride 0).

use crate::error::{DriverContext, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};

/// One operand of a strided-batched GEMM: a device address, its leading dimension (elements) and the
/// stride between the matrices of the batch (elements).
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    pub ptr: u64,
    pub ld: usize,
    pub batch_stride: usize,
}

/// `C = alpha·op(A)·op(B) + beta·C` (column-major, as cuBLAS sees it), `count` times, f32 compute.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    blas: &CudaBlas,
    data_type: blas_sys::cudaDataType_t,
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: Operand,
    (alpha, beta): (f32, f32),
    c: Operand,
    count: usize,
    what: &'static str,
) -> Result<()> {
    let op = |t: bool| {
        if t {
            blas_sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas_sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    // SAFETY: the callers derive every address, leading dimension and batch stride from layouts that
    // were validated against their buffers, and from the sizes of the N×N buffers they allocated.
    unsafe {
        blas::gemm_strided_batched_ex(
            *blas.handle(),
            op(trans_a),
            op(trans_b),
            m as i32,
            n as i32,
            k as i32,
            (&alpha) as *const f32 as *const _,
            a.ptr as *const _,
            data_type,
            a.ld as i32,
            a.batch_stride as i64,
            b.ptr as *const _,
            data_type,
            b.ld as i32,
            b.batch_stride as i64,
            (&beta) as *const f32 as *const _,
            c.ptr as *mut _,
            data_type,
            c.ld as i32,
            c.batch_stride as i64,
            count as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .during(what)
}
