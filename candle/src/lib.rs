//! ironflash's attention on candle tensors: the functions of `candle-flash-attn` 0.11 with the same
//! signatures and semantics, on candle's CUDA tensors without copies and on candle's stream, plus a
//! backward through candle's custom-op autograd (so `Var`-based training works, which
//! `candle-flash-attn` cannot do).
//!
//! Tensors are `(batch, seq_len, num_heads, head_size)`, bf16 or f16, on one CUDA device; K and V may
//! have fewer heads than Q (MQA/GQA) and any strides with a contiguous last dimension. Head sizes 32,
//! 64, 96, 128, 192 and 256. `window_size_left = None` with `window_size_right = Some(0)` is causal;
//! ALiBi slopes are an f32 tensor `(num_heads_q)` (or `(batch, num_heads_q)`), bias
//! `−slope·|i + seqlen_k − seqlen_q − j|`. Bad input comes back as a candle error naming the problem.
//!
//! The variable-length functions of `candle-flash-attn` (`flash_attn_varlen*`) follow when ironflash
//! has variable-length batches.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor, Var};
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::new_cuda(0)?;
//! let q = Var::randn(0f32, 1.0, (2, 1024, 16, 128), &dev)?;
//! let k = Tensor::randn(0f32, 1.0, (2, 1024, 4, 128), &dev)?.to_dtype(DType::BF16)?;
//! let v = Tensor::randn(0f32, 1.0, (2, 1024, 4, 128), &dev)?.to_dtype(DType::BF16)?;
//! let o = ironflash_candle::flash_attn(&q.to_dtype(DType::BF16)?, &k, &v, 128f32.powf(-0.5), true)?;
//! let grads = o.to_dtype(DType::F32)?.sum_all()?.backward()?;
//! let dq = grads.get(&q).unwrap(); // (2, 1024, 16, 128)
//! # Ok(()) }
//! ```

mod adopt;
mod borrow;
mod op;

use candle_core::{Result, Tensor};
use op::FlashAttn;

/// Attention `softmax(Q·Kᵀ·softmax_scale)·V`, causal (bottom-right aligned) or not.
pub fn flash_attn(q: &Tensor, k: &Tensor, v: &Tensor, softmax_scale: f32, causal: bool) -> Result<Tensor> {
    let right = if causal { Some(0) } else { None };
    FlashAttn::new(softmax_scale, None, None, right, None).apply(q, k, v)
}

/// As [`flash_attn`], with a sliding window: key j is visible to query i iff
/// `i + seqlen_k − seqlen_q − left <= j <= i + seqlen_k − seqlen_q + right`, a `None` side unbounded.
pub fn flash_attn_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> Result<Tensor> {
    FlashAttn::new(softmax_scale, None, window_size_left, window_size_right, None).apply(q, k, v)
}

/// As [`flash_attn`], with ALiBi: `alibi_slopes` is f32 `(num_heads_q)` or `(batch, num_heads_q)`.
pub fn flash_attn_alibi(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    softmax_scale: f32,
    causal: bool,
) -> Result<Tensor> {
    let right = if causal { Some(0) } else { None };
    FlashAttn::new(softmax_scale, Some(alibi_slopes.clone()), None, right, None).apply(q, k, v)
}

/// As [`flash_attn_windowed`], with ALiBi.
pub fn flash_attn_alibi_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: &Tensor,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
) -> Result<Tensor> {
    FlashAttn::new(softmax_scale, Some(alibi_slopes.clone()), window_size_left, window_size_right, None).apply(q, k, v)
}

/// As [`flash_attn_alibi_windowed`], ALiBi optional, with the scores softcapped to
/// `softcap·tanh(score / softcap)` before the softmax (Gemma-2).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_alibi_windowed_softcap(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi_slopes: Option<&Tensor>,
    softmax_scale: f32,
    window_size_left: Option<usize>,
    window_size_right: Option<usize>,
    softcap: f32,
) -> Result<Tensor> {
    FlashAttn::new(softmax_scale, alibi_slopes.cloned(), window_size_left, window_size_right, Some(softcap))
        .apply(q, k, v)
}
