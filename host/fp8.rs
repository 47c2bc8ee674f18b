//! FP8 (e4m3) attention inputs on the host: the descale convention, the reference quantizer (the GPU's
//! `gpu::quantize_fp8` gives the same bits), dequantization, and the CPU forward on FP8 tensors.
//!
//! Convention (FlashAttention-3's `q_descale`, `k_descale`, `v_descale`): each FP8 tensor comes with
//! one f32 descale factor per (batch, K/V head), `[batch, heads_kv]`; the real value of an element of
//! head h of batch b is the stored e4m3 value times `descale[b · heads_kv + h / (heads / heads_kv)]`
//! (for Q, the query heads of one K/V head share its factor). Factors must be finite and positive.
//!
//! The quantizer takes each group's largest magnitude to e4m3's largest finite value, 448: scale
//! `448 / amax`, descale `amax / 448` (1 and 1 for a group of zeros); each element is `x · scale`
//! rounded to nearest even. e4m3 keeps 3 mantissa bits, so each element carries a relative error of
//! at most 2^-4 (and an absolute error of at most 2^-10 · descale below the normal range).

use crate::cpu::{self, ForwardOutput};
use crate::dtype::{Element, F8E4M3};
use crate::error::{Arg, Error, Result};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::tensor::HostTensor;
use half::bf16;
use ironflash_kernels::rotation;

/// The group of head `head` among `heads` heads of which `heads_kv` groups share a factor.
fn group_of(head: usize, heads: usize, heads_kv: usize) -> usize {
    head / (heads / heads_kv)
}

/// Checks `heads_kv` against a tensor's heads (`arg`): at least 1, dividing them.
pub(crate) fn check_groups(arg: Arg, heads: usize, heads_kv: usize) -> Result<()> {
    if heads_kv == 0 || heads % heads_kv != 0 {
        return Err(Error::ShapeMismatch {
            arg,
            what: "heads",
            got: heads,
            expected: heads_kv.max(1) * (heads / heads_kv.max(1)).max(1),
            why: "an FP8 tensor's heads are groups of its K/V heads, one descale factor each",
        });
    }
    Ok(())
}

/// Checks descale factors: `batch · heads_kv` of them, each finite and positive.
pub fn check_descale(arg: Arg, descale: &[f32], batch: usize, heads_kv: usize) -> Result<()> {
    if descale.len() != batch * heads_kv {
        return Err(Error::ShapeMismatch {
            arg,
            what: "descale factors",
            got: descale.len(),
            expected: batch * heads_kv,
            why: "one f32 per (batch, K/V head)",
        });
    }
    match descale.iter().position(|d| !(d.is_finite() && *d > 0.0)) {
        Some(index) => Err(Error::BadDescale { arg, index, value: descale[index] }),
        None => Ok(()),
    }
}

/// The scale and descale of a group whose largest magnitude is `amax` (see the module docs): the
/// conversion kernels' own definition.
pub use ironflash_kernels::abi::fp8_group_scales as group_scales;

/// Incoherent processing: a random-sign Hadamard rotation of each row along the head dim, drawn
/// from `seed` (`ironflash_kernels::rotation`), applied before quantizing. Rotate Q and K with the
/// same seed and V not at all: the rotation is orthogonal, so every score `q · k` stays what it was,
/// while a row's few large entries spread over all of it. Head dims 8 to 256, powers of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub seed: u32,
}

impl Rotation {
    /// `HeadDim` unless the rotation serves head dim `d`.
    pub(crate) fn check(arg: Arg, head_dim: usize) -> Result<()> {
        if !rotation::serves(head_dim) {
            return Err(Error::UnsupportedHeadDim { arg, head_dim, supported: rotation::ROTATION_HEAD_DIMS });
        }
        Ok(())
    }
}

/// `x` as f32, each row rotated by `rotation` (the values the conversion rounds), contiguous.
pub fn rotate<T: Element>(x: &HostTensor<T>, arg: Arg, rotation: Option<Rotation>) -> Result<HostTensor<f32>> {
    let [b, s, h, d] = x.shape();
    if rotation.is_some() {
        Rotation::check(arg, d)?;
    }
    let mut out = HostTensor::filled([b, s, h, d], 0f32);
    let mut row = vec![0f32; d];
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                for (di, r) in row.iter_mut().enumerate() {
                    *r = x.get(bi, si, hi, di).to_f32();
                }
                if let Some(r) = rotation {
                    rotation::rotate_row(r.seed, &mut row);
                }
                for (di, &r) in row.iter().enumerate() {
                    out.set(bi, si, hi, di, r);
                }
            }
        }
    }
    Ok(out)
}

/// `x` quantized to e4m3 with one factor per (batch, group of `heads / heads_kv` heads): the tensor
/// (contiguous) and its descale factors `[batch, heads_kv]`. Non-finite inputs are an error
/// (`Error::BadDescale`: their group's factor would not be finite).
pub fn quantize<T: Element>(x: &HostTensor<T>, arg: Arg, heads_kv: usize) -> Result<(HostTensor<F8E4M3>, Vec<f32>)> {
    quantize_with(x, arg, heads_kv, None)
}

/// As [`quantize`], each row rotated first when `rotation` is given (its real values are then the
/// rotated ones: [`dequantize`] gives them back rotated).
pub fn quantize_with<T: Element>(
    x: &HostTensor<T>,
    arg: Arg,
    heads_kv: usize,
    rotation: Option<Rotation>,
) -> Result<(HostTensor<F8E4M3>, Vec<f32>)> {
    let [b, s, h, d] = x.shape();
    check_groups(arg, h, heads_kv)?;
    let x = rotate(x, arg, rotation)?;
    let mut amax = vec![0f32; b * heads_kv];
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let m = &mut amax[bi * heads_kv + group_of(hi, h, heads_kv)];
                for di in 0..d {
                    let v = x.get(bi, si, hi, di).abs();
                    // NaN wins, as in the GPU's unsigned maximum of the bits.
                    if !m.is_nan() && (v.is_nan() || v > *m) {
                        *m = v;
                    }
                }
            }
        }
    }
    let scales: Vec<(f32, f32)> = amax.iter().map(|&m| group_scales(m)).collect();
    let descale: Vec<f32> = scales.iter().map(|s| s.1).collect();
    check_descale(arg, &descale, b, heads_kv)?;
    let mut out = HostTensor::filled([b, s, h, d], F8E4M3::default());
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let scale = scales[bi * heads_kv + group_of(hi, h, heads_kv)].0;
                for di in 0..d {
                    out.set(bi, si, hi, di, F8E4M3::from_f32(x.get(bi, si, hi, di) * scale));
                }
            }
        }
    }
    Ok((out, descale))
}

/// The real values of an FP8 tensor (stored value × its group's descale), as f32, contiguous.
pub fn dequantize(x: &HostTensor<F8E4M3>, arg: Arg, descale: &[f32], heads_kv: usize) -> Result<HostTensor<f32>> {
    let [b, s, h, d] = x.shape();
    check_groups(arg, h, heads_kv)?;
    check_descale(arg, descale, b, heads_kv)?;
    let mut out = HostTensor::filled([b, s, h, d], 0f32);
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let f = descale[bi * heads_kv + group_of(hi, h, heads_kv)];
                for di in 0..d {
                    out.set(bi, si, hi, di, x.get(bi, si, hi, di).to_f32() * f);
                }
            }
        }
    }
    Ok(out)
}

/// The descale factors of an FP8 forward's three inputs, each `[batch, heads_kv]`.
#[derive(Debug, Clone, Copy)]
pub struct Descales<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
}

/// The CPU forward on FP8 inputs: softmax(scale · Q Kᵀ) V of the dequantized tensors (f32, the CPU
/// path's own accuracy), O rounded to bf16 as the GPU's. `heads_kv` is K's heads.
pub fn forward(
    q: &HostTensor<F8E4M3>,
    k: &HostTensor<F8E4M3>,
    v: &HostTensor<F8E4M3>,
    descale: Descales,
    opts: &AttnOptions,
) -> Result<ForwardOutput<bf16>> {
    let heads_kv = k.shape()[2];
    let q = dequantize(q, Arg::Q, descale.q, heads_kv)?;
    let k = dequantize(k, Arg::K, descale.k, heads_kv)?;
    let v = dequantize(v, Arg::V, descale.v, heads_kv)?;
    let out = cpu::forward(&q, &k, &v, opts)?;
    let o = out.o.data.iter().map(|&x| bf16::from_f32(x)).collect();
    Ok(ForwardOutput { o: HostTensor { data: o, layout: Layout::contiguous(out.o.shape()) }, lse: out.lse })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every finite e4m3 value, by brute force over the bit patterns.
    fn finite_values() -> Vec<(u8, f32)> {
        (0..=255u8).map(|b| (b, F8E4M3(b).to_f32())).filter(|(_, v)| !v.is_nan()).collect()
    }

    #[test]
    fn decoding_matches_the_format() {
        assert_eq!(F8E4M3(0x7e).to_f32(), 448.0);
        assert_eq!(F8E4M3(0x08).to_f32(), (-6f32).exp2());
        assert_eq!(F8E4M3(0x01).to_f32(), (-9f32).exp2());
        assert_eq!(F8E4M3(0x38).to_f32(), 1.0);
        assert_eq!(F8E4M3(0xb8).to_f32(), -1.0);
        assert!(F8E4M3(0x7f).to_f32().is_nan() && F8E4M3(0xff).to_f32().is_nan());
        assert_eq!(finite_values().len(), 254);
    }

    #[test]
    fn every_value_round_trips() {
        for (b, v) in finite_values() {
            // -0 encodes as 0x80 and decodes to -0.0, which round-trips to itself.
            assert_eq!(F8E4M3::from_f32(v).0, b, "{b:#x} = {v}");
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_saturates() {
        let finite = finite_values();
        let mut x = 1e-5f32;
        let mut seed = 0x2545f491u32;
        while x < 600.0 {
            for sign in [1.0f32, -1.0] {
                let y = sign * x;
                let got = F8E4M3::from_f32(y);
                // The nearest finite value; on a tie, the even encoding; beyond 448, 448.
                let best = finite
                    .iter()
                    .filter(|(_, v)| v.is_sign_negative() == y.is_sign_negative() || *v == 0.0)
                    .min_by(|a, b| {
                        let (da, db) = ((a.1 - y).abs(), (b.1 - y).abs());
                        da.partial_cmp(&db).unwrap().then((a.0 & 1).cmp(&(b.0 & 1)))
                    })
                    .unwrap();
                assert_eq!(got.to_f32(), best.1, "{y}");
            }
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            x *= 1.0 + (seed % 1000) as f32 / 20000.0;
        }
        assert_eq!(F8E4M3::from_f32(1e9).to_f32(), 448.0);
        assert_eq!(F8E4M3::from_f32(f32::NEG_INFINITY).to_f32(), -448.0);
        assert!(F8E4M3::from_f32(f32::NAN).to_f32().is_nan());
        // Ties: 1 + 1/16 lies between 1 and 1.125: to 1 (even mantissa); 1 + 3/16 to 1.25.
        assert_eq!(F8E4M3::from_f32(1.0625).to_f32(), 1.0);
        assert_eq!(F8E4M3::from_f32(1.1875).to_f32(), 1.25);
    }

    #[test]
    fn quantize_and_dequantize_within_the_format_error() {
        let x = HostTensor::<bf16>::random_seeded([2, 37, 4, 32], 3.0, 7);
        let (q8, descale) = quantize(&x, Arg::Q, 2).unwrap();
        assert_eq!(descale.len(), 4);
        let back = dequantize(&q8, Arg::Q, &descale, 2).unwrap();
        for (b, s, h, d) in (0..2)
            .flat_map(|b| (0..37).flat_map(move |s| (0..4).map(move |h| (b, s, h))))
            .flat_map(|(b, s, h)| (0..32).map(move |d| (b, s, h, d)))
        {
            let (want, got) = (x.get(b, s, h, d).to_f32(), back.get(b, s, h, d));
            let f = descale[b * 2 + h / 2];
            assert!((want - got).abs() <= want.abs() / 16.0 + f * (-10f32).exp2(), "{want} {got}");
        }
        // Each group's largest magnitude lands on 448.
        for (g, f) in descale.iter().enumerate() {
            let (b, hk) = (g / 2, g % 2);
            let amax = (0..37)
                .flat_map(|s| (2 * hk..2 * hk + 2).flat_map(move |h| (0..32).map(move |d| (s, h, d))))
                .map(|(s, h, d)| q8.get(b, s, h, d).to_f32().abs())
                .fold(0f32, f32::max);
            assert_eq!(amax, 448.0);
            assert!(*f > 0.0);
        }
    }

    #[test]
    fn bad_descales_and_groups_are_typed_errors() {
        let x = HostTensor::filled([1, 4, 4, 32], F8E4M3(0x38));
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let err = dequantize(&x, Arg::K, &[1.0, bad], 2).unwrap_err();
            assert!(matches!(err, Error::BadDescale { arg: Arg::K, index: 1, .. }), "{err}");
        }
        assert!(matches!(dequantize(&x, Arg::K, &[1.0], 2), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(dequantize(&x, Arg::K, &[1.0, 1.0, 1.0], 3), Err(Error::ShapeMismatch { .. })));
        let mut y = HostTensor::<bf16>::random_seeded([1, 4, 4, 32], 1.0, 3);
        y.set(0, 1, 3, 5, bf16::INFINITY);
        assert!(matches!(quantize(&y, Arg::V, 2), Err(Error::BadDescale { arg: Arg::V, index: 1, .. })));
    }

    #[test]
    fn cpu_forward_runs_on_the_dequantized_inputs() {
        let opts = AttnOptions::causal();
        let mk = |shape, seed| HostTensor::<bf16>::random_seeded(shape, 2.0, seed);
        let (q, k, v) = (mk([1, 50, 4, 128], 1), mk([1, 70, 2, 128], 2), mk([1, 70, 2, 128], 3));
        let (q8, qd) = quantize(&q, Arg::Q, 2).unwrap();
        let (k8, kd) = quantize(&k, Arg::K, 2).unwrap();
        let (v8, vd) = quantize(&v, Arg::V, 2).unwrap();
        let out = forward(&q8, &k8, &v8, Descales { q: &qd, k: &kd, v: &vd }, &opts).unwrap();
        let r = crate::cpu::reference_forward(
            &dequantize(&q8, Arg::Q, &qd, 2).unwrap(),
            &dequantize(&k8, Arg::K, &kd, 2).unwrap(),
            &dequantize(&v8, Arg::V, &vd, 2).unwrap(),
            &opts,
        )
        .unwrap();
        let err = out.o.data.iter().zip(&r.o).map(|(a, b)| (a.to_f64() - b).abs()).fold(0.0, f64::max);
        assert!(err < 2e-2, "{err}");
        assert_eq!(out.o.shape(), [1, 50, 4, 128]);
    }

    /// Q and K rotated with one seed: the CPU forward on them is the forward on the inputs as they
    /// were, within FP8's rounding (the rotation keeps every score); V is not rotated.
    #[test]
    fn rotated_q_and_k_keep_the_attention() {
        let opts = AttnOptions::causal();
        let mk = |shape, seed| HostTensor::<bf16>::random_seeded(shape, 2.0, seed);
        let (q, k, v) = (mk([1, 40, 4, 64], 4), mk([1, 60, 2, 64], 5), mk([1, 60, 2, 64], 6));
        let rotation = Some(Rotation { seed: 77 });
        let (q8, qd) = quantize_with(&q, Arg::Q, 2, rotation).unwrap();
        let (k8, kd) = quantize_with(&k, Arg::K, 2, rotation).unwrap();
        let (v8, vd) = quantize(&v, Arg::V, 2).unwrap();
        // The rotated values themselves differ from the inputs.
        assert!(dequantize(&q8, Arg::Q, &qd, 2)
            .unwrap()
            .data
            .iter()
            .zip(&q.data)
            .any(|(a, b)| (a - b.to_f32()).abs() > 0.5));
        let out = forward(&q8, &k8, &v8, Descales { q: &qd, k: &kd, v: &vd }, &opts).unwrap();
        let exact = crate::cpu::reference_forward(&q, &k, &v, &opts).unwrap();
        let got: Vec<f64> = out.o.data.iter().map(|x| x.to_f64()).collect();
        let num: f64 = got.iter().zip(&exact.o).map(|(a, b)| (a - b) * (a - b)).sum();
        let den: f64 = exact.o.iter().map(|b| b * b).sum();
        assert!((num / den).sqrt() < 0.06, "{}", (num / den).sqrt());
        let err = quantize_with(&mk([1, 4, 2, 96], 7), Arg::Q, 2, rotation).unwrap_err();
        assert!(matches!(err, Error::UnsupportedHeadDim { head_dim: 96, .. }), "{err}");
    }
}
