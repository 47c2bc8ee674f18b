//! Elementwise f32 loops of the tiled CPU path's softmax. Floating-point reductions keep their
//! sequential order unless written over independent lanes, and a libm `expf` call per element
//! cannot be vectorised, so both are spelled out here. As in the microkernels, x86-64 gets an AVX2
//! build of the loops, chosen at run time.

/// Independent partial results per reduction: 8 f32 fill two SSE or one AVX register.
const LANES: usize = 8;

/// y *= alpha
#[inline]
pub fn scale_in_place(y: &mut [f32], alpha: f32) {
    for yi in y {
        *yi *= alpha;
    }
}

/// The largest of `init` and the elements of `x` (NaN elements are ignored, as `f32::max` does).
#[inline]
pub fn max_of(x: &[f32], init: f32) -> f32 {
    let mut partial = [init; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(init, f32::max);
    for chunk in chunks {
        for l in 0..LANES {
            partial[l] = partial[l].max(chunk[l]);
        }
    }
    partial.iter().copied().fold(tail, f32::max)
}

/// Replaces every element by exp(x − shift) and returns their sum. `shift` must be at least the
/// largest element, so every argument is ≤ 0.
pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { exp_shifted_sum_avx2(x, shift) };
    }
    exp_shifted_sum_portable(x, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_sum_avx2(x: &mut [f32], shift: f32) -> f32 {
    exp_shifted_sum_portable(x, shift)
}

#[inline(always)]
fn exp_shifted_sum_portable(x: &mut [f32], shift: f32) -> f32 {
    let mut partial = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            chunk[l] = exp_nonpositive(chunk[l] - shift);
            partial[l] += chunk[l];
        }
    }
    let mut sum = 0.0;
    for xi in chunks.into_remainder() {
        *xi = exp_nonpositive(*xi - shift);
        sum += *xi;
    }
    partial.iter().sum::<f32>() + sum
}

/// Replaces every element x by cap · tanh(x): the softcap, for scores already divided by the cap.
pub fn softcap_in_place(x: &mut [f32], cap: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { softcap_in_place_avx2(x, cap) };
    }
    softcap_in_place_portable(x, cap)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softcap_in_place_avx2(x: &mut [f32], cap: f32) {
    softcap_in_place_portable(x, cap)
}

#[inline(always)]
fn softcap_in_place_portable(x: &mut [f32], cap: f32) {
    for xi in x {
        *xi = cap * tanh(*xi);
    }
}

/// tanh(x) within 3 ulp, without calls or branches so that loops over it vectorise (libm's tanhf
/// made the softcap cost more than the two matrix products). Cephes' tanhf: an odd polynomial for
/// |x| ≤ 0.625, where 1 − e^(−2|x|) would cancel, and (1 − e) / (1 + e) with e = e^(−2|x|) above,
/// which reaches ±1 once e clamps (|x| > 43.5).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let magnitude = x.abs();
    let z = x * x;
    let mut p = -5.704_988_7e-3f32;
    p = p * z + 2.063_909e-2;
    p = p * z - 5.373_971_6e-2;
    p = p * z + 1.333_144_2e-1;
    p = p * z - 3.333_328e-1;
    let small = p * z * x + x;
    let e = exp_nonpositive(-2.0 * magnitude);
    let large = ((1.0 - e) / (1.0 + e)).copysign(x);
    if magnitude > 0.625 {
        large
    } else {
        small
    }
}

/// exp(x) for x ≤ 0 (and NaN), within 2 ulp, written without calls or branches so that loops over it
/// vectorise. Cephes' expf: x = n·ln2 + r with |r| ≤ ln2/2, a degree-7 polynomial for exp(r), and
/// 2^n built from its exponent bits. Arguments below -87 return 0 rather than a number below
/// exp(-87) ≈ 1.6e-38: next to a softmax row sum of at least 1 the difference is invisible, and a
/// tiny nonzero weight would make its products with V subnormal, which x86 computes in microcode
/// (rows whose keys all sit far below a sink logit or an ALiBi-favoured key ran twice as long).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds to an integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // Comparisons rather than `max`, so that NaN passes through.
    let underflows = x < -87.0;
    let x = if underflows { -87.0 } else { x };
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let exp_r = p * r * r + r + 1.0;
    // n ∈ [-126, 0]: 2^n is a normal f32 with biased exponent n + 127.
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let result = exp_r * f32::from_bits((n_bits.wrapping_add(127) as u32) << 23);
    if underflows {
        0.0
    } else {
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            let ulp = f32::EPSILON as f64 * want;
            worst = worst.max((got - want).abs() / ulp);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-87.5), 0.0);
    }

    #[test]
    fn tanh_is_within_three_ulp() {
        let mut worst = 0.0f64;
        // Dense near 0 and the polynomial's edge, coarser out to where tanh is 1 in f32.
        let small = (0..=100_000).map(|i| i as f32 * 1e-5);
        let large = (0..=200_000).map(|i| 1.0 + i as f32 * 1e-4);
        for x in small.chain(large).flat_map(|x| [x, -x]) {
            let want = (x as f64).tanh();
            let got = tanh(x) as f64;
            // An ulp of the f32 result; the smallest normal's for results near 0.
            let ulp = f32::EPSILON as f64 * want.abs().max(f32::MIN_POSITIVE as f64);
            worst = worst.max((got - want).abs() / ulp);
        }
        assert!(worst <= 3.0, "worst error {worst} ulp");
        println!("tanh: worst error {worst:.2} ulp");
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!((tanh(100.0), tanh(-100.0)), (1.0, -1.0));
        assert_eq!((tanh(f32::INFINITY), tanh(f32::NEG_INFINITY)), (1.0, -1.0));
        assert!(tanh(f32::NAN).is_nan());
        let mut capped = vec![0.5f32, -3.0, 40.0, 1e-3, -1e-30, 7.0, 0.0, -0.7, 2.0];
        let want: Vec<f32> = capped.iter().map(|&x| 2.0 * tanh(x)).collect();
        softcap_in_place(&mut capped, 2.0);
        assert_eq!(capped, want);
    }

    #[test]
    fn reductions_cover_lanes_and_tail() {
        for n in [1, 7, 8, 9, 21] {
            let x: Vec<f32> = (0..n).map(|i| -((i * 5 % 7) as f32)).collect();
            assert_eq!(max_of(&x, f32::NEG_INFINITY), 0.0);
            assert_eq!(max_of(&x, 3.0), 3.0);
            let mut e = x.clone();
            let sum = exp_shifted_sum(&mut e, 1.0);
            let mut e_portable = x.clone();
            assert_eq!(exp_shifted_sum_portable(&mut e_portable, 1.0), sum);
            assert_eq!(e_portable, e);
            let want: f64 = x.iter().map(|&v| (v as f64 - 1.0).exp()).sum();
            assert!((sum as f64 - want).abs() < 1e-6 * want, "n = {n}");
            for (v, ev) in x.iter().zip(&e) {
                assert!((*ev as f64 - (*v as f64 - 1.0).exp()).abs() < 1e-6);
            }
        }
    }
}
