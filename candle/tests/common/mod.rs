//! candle's own attention (matmul, softmax, matmul in f32), the reference for the tests and the
//! example's baseline, and the measures they share.

#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, D};

/// What a call asks for, as `candle-flash-attn`'s arguments.
#[derive(Clone, Debug)]
pub struct Spec {
    pub softmax_scale: f32,
    pub window_left: Option<usize>,
    pub window_right: Option<usize>,
    pub alibi: Option<Vec<f32>>,
    pub softcap: Option<f32>,
}

/// `(seqlen_q, seqlen_k)` additive mask and ALiBi bias per query head, f32 `(heads_q, seqlen_q, seqlen_k)`:
/// 0 or the bias where visible, −inf elsewhere (bottom-right aligned, as the kernels).
fn bias(spec: &Spec, heads_q: usize, sq: usize, sk: usize, dev: &Device) -> Result<Tensor> {
    let mut b = vec![0f32; heads_q * sq * sk];
    for h in 0..heads_q {
        for i in 0..sq {
            let diag = i as i64 + sk as i64 - sq as i64;
            for j in 0..sk {
                let d = diag - j as i64;
                let left_ok = spec.window_left.is_none_or(|l| d <= l as i64);
                let right_ok = spec.window_right.is_none_or(|r| -d <= r as i64);
                let x = if left_ok && right_ok {
                    spec.alibi.as_ref().map_or(0.0, |s| -s[h] * d.unsigned_abs() as f32)
                } else {
                    f32::NEG_INFINITY
                };
                b[(h * sq + i) * sk + j] = x;
            }
        }
    }
    Tensor::from_vec(b, (1, heads_q, sq, sk), dev)
}

/// Attention of `(batch, seq, heads, head_dim)` tensors in f32 with candle's ops (differentiable):
/// K/V heads repeated for GQA, the scores softcapped, biased and masked, softmax, times V.
pub fn naive_attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &Spec) -> Result<Tensor> {
    let (b, sq, hq, d) = q.dims4()?;
    let (_, sk, hkv, _) = k.dims4()?;
    let group = hq / hkv;
    let heads_first = |t: &Tensor| t.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous();
    let repeat =
        |t: Tensor| -> Result<Tensor> { t.unsqueeze(2)?.expand((b, hkv, group, sk, d))?.reshape((b, hq, sk, d)) };
    let (q, k, v) = (heads_first(q)?, repeat(heads_first(k)?)?, repeat(heads_first(v)?)?);
    let mut s = (q.matmul(&k.t()?)? * spec.softmax_scale as f64)?;
    if let Some(cap) = spec.softcap {
        s = ((s / cap as f64)?.tanh()? * cap as f64)?;
    }
    let s = s.broadcast_add(&bias(spec, hq, sq, sk, q.device())?)?;
    let max = s.max_keepdim(D::Minus1)?;
    let e = s.broadcast_sub(&max)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    p.matmul(&v)?.transpose(1, 2)?.contiguous()
}

/// ‖a − b‖ / ‖b‖ in f64.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a: Vec<f32> = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let b: Vec<f32> = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    Ok((num / den.max(f64::MIN_POSITIVE)).sqrt())
}
