//! A small transformer block trained for a few steps in candle (`Var`s, `backward`), its attention by
//! ironflash or by candle's own ops as a model without a fused kernel runs it (bf16 matmuls, the
//! softmax in f32, the N×N scores materialised): prints the time of a forward + backward step and its
//! peak device memory over the weights and input (the high-water mark of the memory pool both
//! libraries allocate from), for both, and how far apart their losses and gradients are.
//!
//! `cargo run --release --example transformer_block [-- SEQ]` (in `candle/`; needs a CUDA device).
//! Block: x → QKV projection → causal attention (16 heads of 128, bf16) → output projection → residual
//! → MLP (4× width, GELU) → residual; loss = mean of the output squared. Batch 2, hidden 2048, SEQ
//! 2048 by default.

#[path = "../tests/common/mod.rs"]
mod common;

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::{DType, Device, Result, Tensor, Var};
use std::time::Instant;

const HEADS: usize = 16;
const HEAD_DIM: usize = 128;
const HIDDEN: usize = HEADS * HEAD_DIM;

struct Block {
    w_qkv: Var,
    w_o: Var,
    w_up: Var,
    w_down: Var,
}

impl Block {
    fn new(dev: &Device) -> Result<Self> {
        let w = |i: usize, o: usize| Var::randn(0f32, (1.0 / i as f64).sqrt() as f32, (i, o), dev);
        Ok(Block {
            w_qkv: w(HIDDEN, 3 * HIDDEN)?,
            w_o: w(HIDDEN, HIDDEN)?,
            w_up: w(HIDDEN, 4 * HIDDEN)?,
            w_down: w(4 * HIDDEN, HIDDEN)?,
        })
    }

    fn vars(&self) -> [&Var; 4] {
        [&self.w_qkv, &self.w_o, &self.w_up, &self.w_down]
    }

    /// The block's loss on `x` (batch, seq, hidden), attention by ironflash or by candle's ops.
    fn loss(&self, x: &Tensor, ironflash: bool) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let bf = |w: &Var| w.to_dtype(DType::BF16);
        let qkv = x.broadcast_matmul(&bf(&self.w_qkv)?)?.reshape((b, s, 3, HEADS, HEAD_DIM))?;
        let (q, k, v) =
            (qkv.narrow(2, 0, 1)?.squeeze(2)?, qkv.narrow(2, 1, 1)?.squeeze(2)?, qkv.narrow(2, 2, 1)?.squeeze(2)?);
        let scale = (HEAD_DIM as f32).powf(-0.5);
        let attn = if ironflash {
            ironflash_candle::flash_attn(&q, &k, &v, scale, true)?
        } else {
            unfused_attention(&q, &k, &v, scale)?
        };
        let h = (x + attn.reshape((b, s, HIDDEN))?.broadcast_matmul(&bf(&self.w_o)?)?)?;
        let mlp = h.broadcast_matmul(&bf(&self.w_up)?)?.gelu()?.broadcast_matmul(&bf(&self.w_down)?)?;
        let out = (h + mlp)?.to_dtype(DType::F32)?;
        out.sqr()?.mean_all()
    }
}

/// Causal attention as candle models run it without a fused kernel: scores and P·V as bf16 matmuls
/// (heads first), the mask and softmax in f32.
fn unfused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let (_, s, _, _) = q.dims4()?;
    let heads_first = |t: &Tensor| t.transpose(1, 2)?.contiguous();
    let (q, k, v) = (heads_first(q)?, heads_first(k)?, heads_first(v)?);
    let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale as f64)?;
    let mask: Vec<f32> = (0..s * s).map(|x| if x % s <= x / s { 0.0 } else { f32::NEG_INFINITY }).collect();
    let scores = scores.broadcast_add(&Tensor::from_vec(mask, (s, s), q.device())?)?;
    let max = scores.max_keepdim(candle_core::D::Minus1)?;
    let e = scores.broadcast_sub(&max)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)?.to_dtype(DType::BF16)?;
    p.matmul(&v)?.transpose(1, 2)
}

/// The device's default memory pool, from which cudarc (candle's and ironflash's allocations alike)
/// allocates stream-ordered where the device supports it.
fn mem_pool(dev: &Device) -> Result<sys::CUmemoryPool> {
    let cu_device = dev.as_cuda_device()?.cuda_stream().context().cu_device();
    let mut pool = std::ptr::null_mut();
    // SAFETY: writes one handle.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, cu_device) }.result().map_err(candle_core::Error::wrap)?;
    Ok(pool)
}

/// A pool attribute that is a byte count.
fn pool_bytes(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut v = 0u64;
    // SAFETY: the byte-count attributes are 64-bit values.
    unsafe { sys::cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut std::ffi::c_void) }
        .result()
        .map_err(candle_core::Error::wrap)?;
    Ok(v)
}

/// Peak device memory of `step` over what was in use before it, from the pool's high-water mark.
fn peak_bytes<T>(dev: &Device, step: impl FnOnce() -> Result<T>) -> Result<(u64, T)> {
    use sys::CUmemPool_attribute::{
        CU_MEMPOOL_ATTR_USED_MEM_CURRENT as CURRENT, CU_MEMPOOL_ATTR_USED_MEM_HIGH as HIGH,
    };
    let pool = mem_pool(dev)?;
    dev.synchronize()?;
    let before = pool_bytes(pool, CURRENT)?;
    let mut zero = 0u64;
    // SAFETY: resetting the high-water mark takes a 64-bit zero.
    unsafe { sys::cuMemPoolSetAttribute(pool, HIGH, &mut zero as *mut u64 as *mut std::ffi::c_void) }
        .result()
        .map_err(candle_core::Error::wrap)?;
    let out = step()?;
    dev.synchronize()?;
    Ok((pool_bytes(pool, HIGH)?.saturating_sub(before), out))
}

fn main() -> Result<()> {
    let seq: usize = std::env::args().nth(1).map_or(2048, |s| s.parse().expect("SEQ: a number"));
    let dev = Device::new_cuda(0)?;
    let block = Block::new(&dev)?;
    let x = Tensor::randn(0f32, 1.0, (2, seq, HIDDEN), &dev)?.to_dtype(DType::BF16)?;
    println!("transformer block: batch 2, seq {seq}, hidden {HIDDEN} ({HEADS} heads of {HEAD_DIM}), causal, bf16");

    let mut results = Vec::new();
    for (name, ironflash) in [("ironflash", true), ("candle, unfused", false)] {
        let step = || -> Result<(f32, Vec<Tensor>)> {
            let loss = block.loss(&x, ironflash)?;
            let grads = loss.backward()?;
            let g = block.vars().iter().map(|v| grads.get(v).cloned().expect("a gradient per weight")).collect();
            Ok((loss.to_scalar::<f32>()?, g))
        };
        step()?; // warm-up
        let (peak, _) = peak_bytes(&dev, step)?;
        let reps = 5;
        let t = Instant::now();
        let mut last = None;
        for _ in 0..reps {
            last = Some(step()?);
        }
        dev.synchronize()?;
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!(
            "{name:>16}: {ms:8.2} ms per forward + backward, peak {:8.1} MiB over the weights and input",
            peak as f64 / 1048576.0
        );
        results.push((ms, peak, last.expect("ran")));
    }
    let (a, b) = (&results[0], &results[1]);
    println!("speed-up {:.2}x, peak memory {:.2}x less", b.0 / a.0, b.1 as f64 / a.1.max(1) as f64);
    let grad_err = a.2 .1.iter().zip(&b.2 .1).map(|(x, y)| common::rel_l2(x, y)).collect::<Result<Vec<_>>>()?;
    let grad_err: Vec<String> = grad_err.iter().map(|e| format!("{e:.2e}")).collect();
    println!("loss {:.6} vs {:.6}; weight gradients, relative L2: {}", a.2 .0, b.2 .0, grad_err.join(", "));
    Ok(())
}
