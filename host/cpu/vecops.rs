//! The f32 inner loops of the tiled CPU path. Floating-point addition is not associative, so the
//! compiler keeps a plain `sum()` sequential; spreading a reduction over `LANES` independent partial
//! sums is what lets it vectorise.

/// Independent partial sums per reduction: 16 f32 fill two AVX or four SSE registers, enough to
/// hide the add latency.
const LANES: usize = 16;

/// Σ a·b over equal-length slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut partial = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            partial[l] += ca[l] * cb[l];
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// y += alpha · x
#[inline]
pub fn add_scaled(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// y *= alpha
#[inline]
pub fn scale_in_place(y: &mut [f32], alpha: f32) {
    for yi in y {
        *yi *= alpha;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_covers_lanes_and_tail() {
        for n in [0, 1, 15, 16, 17, 32, 37] {
            let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..n).map(|i| (2 * i + 1) as f32).collect();
            let want: f32 = (0..n).map(|i| (i * (2 * i + 1)) as f32).sum();
            assert_eq!(dot(&a, &b), want, "n = {n}");
        }
    }
}
