//! Incoherent processing for FP8 inputs: a random-sign Hadamard rotation along the head dim,
//! `y = H · S · x / √d` (S a diagonal of ±1 drawn from a seed, H the d × d Walsh-Hadamard matrix),
//! applied to Q and K before they are quantized (FlashAttention-3's remedy for outlier features). It
//! is orthogonal, so rotating Q and K with the same seed keeps every score `q · k`, while a few large
//! entries of a row spread over all its d entries, which narrows the range each group's scale must
//! cover. V is never rotated (the output would come out rotated).
//!
//! One definition for the conversion kernels (`fp8_quant.rs`, where a row's 16-byte vectors sit in
//! consecutive lanes of one warp) and the host's reference quantizer: the same f32 operations in the
//! same order, so the same bits. The transform runs the butterfly stages of strides 1, 2, 4 inside
//! each 8-element vector (`signed_hadamard8`), then strides 8, 16, … d/2 across vectors (across lanes
//! on the GPU, `butterfly`), then scales by `norm(d)`.

/// Head dims the rotation serves: powers of two up to 256 (a row's vectors within one warp).
pub const ROTATION_HEAD_DIMS: &[usize] = &[8, 16, 32, 64, 128, 256];

/// Whether the rotation serves head dim `d`.
pub fn serves(d: usize) -> bool {
    ROTATION_HEAD_DIMS.contains(&d)
}

/// A 32-bit integer hash with good avalanche (the "lowbias32" constants of Chris Wellons' hash prospector).
#[inline(always)]
fn hash(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Whether column `column` of the rotation drawn from `seed` is negated (S's entry is -1).
#[inline(always)]
pub fn negates(seed: u32, column: u32) -> bool {
    hash(column ^ hash(seed)) & 1 != 0
}

/// One butterfly of the transform: the lower element of a pair becomes `a + b`, the upper `a - b`.
#[inline(always)]
pub fn butterfly(a: f32, b: f32) -> (f32, f32) {
    (a + b, a - b)
}

/// S then the strides 1, 2 and 4 of the transform over the 8 elements of a row starting at column
/// `first` (a multiple of 8).
#[inline(always)]
pub fn signed_hadamard8(seed: u32, first: u32, v: &mut [f32; 8]) {
    for (e, x) in v.iter_mut().enumerate() {
        // Negation as a flip of the sign bit, without a branch.
        *x = f32::from_bits(x.to_bits() ^ ((negates(seed, first + e as u32) as u32) << 31));
    }
    // Counted loops (not an array's iterator), which the PTX backend unrolls into registers.
    let mut h = 1;
    while h < 8 {
        for i in 0..8 {
            if i & h == 0 {
                (v[i], v[i + h]) = butterfly(v[i], v[i + h]);
            }
        }
        h *= 2;
    }
}

/// `1 / √d` as f32 for `d` a power of two: a power of two, times `1/√2` when `log2 d` is odd.
#[inline(always)]
pub fn norm(d: u32) -> f32 {
    let log2 = d.trailing_zeros();
    let pow2 = f32::from_bits((127 - log2 / 2) << 23);
    if log2 % 2 == 1 {
        pow2 * core::f32::consts::FRAC_1_SQRT_2
    } else {
        pow2
    }
}

/// The rotation of one row (`row.len()` a served head dim), in place: what the conversion kernels
/// compute, bit for bit.
pub fn rotate_row(seed: u32, row: &mut [f32]) {
    let d = row.len();
    for (chunk, first) in row.chunks_exact_mut(8).zip((0u32..).step_by(8)) {
        let v: &mut [f32; 8] = chunk.try_into().expect("chunks of 8");
        signed_hadamard8(seed, first, v);
    }
    let mut h = 8;
    while h < d {
        for i in 0..d {
            if i & h == 0 {
                (row[i], row[i + h]) = butterfly(row[i], row[i + h]);
            }
        }
        h *= 2;
    }
    let s = norm(d as u32);
    for x in row.iter_mut() {
        *x *= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_is_one_over_the_square_root() {
        for &d in ROTATION_HEAD_DIMS {
            let want = 1.0 / (d as f64).sqrt();
            assert!(((norm(d as u32) as f64) - want).abs() <= want * 1e-7, "{d}");
        }
        assert_eq!(norm(64), 0.125);
        assert_eq!(norm(256), 0.0625);
    }

    /// Rotating Q and K with one seed keeps their dot product; the rotation is orthogonal (keeps
    /// norms) and spreads a single spike over the whole row.
    #[test]
    fn the_rotation_is_orthogonal_and_spreads_a_spike() {
        for &d in ROTATION_HEAD_DIMS {
            let mut state = 0x1234_5678u32 ^ d as u32;
            let mut draw = || {
                state = hash(state);
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            };
            let q: [f32; 256] = core::array::from_fn(|_| draw());
            let k: [f32; 256] = core::array::from_fn(|_| draw());
            let (mut rq, mut rk) = (q, k);
            rotate_row(7, &mut rq[..d]);
            rotate_row(7, &mut rk[..d]);
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
            assert!((dot(&q[..d], &k[..d]) - dot(&rq[..d], &rk[..d])).abs() < 1e-4, "{d}");
            assert!((dot(&q[..d], &q[..d]) - dot(&rq[..d], &rq[..d])).abs() < 1e-4, "{d}");

            let mut spike = [0f32; 256];
            spike[3] = 1.0;
            rotate_row(7, &mut spike[..d]);
            assert!(spike[..d].iter().all(|x| (x.abs() - norm(d as u32)).abs() < 1e-7), "{d}");
        }
    }

    #[test]
    fn seeds_draw_different_signs() {
        let signs = |seed| (0..256).filter(|&c| negates(seed, c)).count();
        for seed in [0, 1, 2, 0xdead_beef] {
            assert!((96..=160).contains(&signs(seed)), "seed {seed}: {} of 256 negated", signs(seed));
        }
        assert!((0..256).any(|c| negates(1, c) != negates(2, c)));
    }
}
