//! The two small matrix products of one FlashAttention step on f32 tiles: S = scale · Q Kᵀ and
//! O += P V. Each works on `ROWS` query rows at a time against `L` keys (or head-dim columns),
//! keeping a `ROWS × L` block of accumulators in registers: each value loaded from K or V then
//! serves `ROWS` rows, and the fixed-size inner loops have independent lanes, which is what lets
//! the compiler vectorise them (floating-point sums are otherwise kept in their sequential order).
//!
//! The same code is compiled twice on x86-64: for the baseline (SSE2) and for AVX2, chosen at run
//! time, since the default target would otherwise leave half of every vector register unused.

/// Keys per tile; tiles hold this many columns of Kᵀ and of S.
pub const BLOCK_K: usize = 64;
/// Query rows per register block.
const ROWS: usize = 4;
/// Lanes per register block: 4 rows × 8 lanes fill 8 of SSE's 16 registers, 4 × 16 lanes fill 8 of
/// AVX's. Both divide `BLOCK_K` and every supported head dim.
const LANES_SSE: usize = 8;
#[cfg(target_arch = "x86_64")]
const LANES_AVX: usize = 16;

/// `s[r][c] = scale · Σ_k q[r][k] · kt[k][c]` for every row of `q` (`[rows, d]`) and every column
/// `c < keys`, where `kt` is Kᵀ `[d, BLOCK_K]` and `s` is `[rows, BLOCK_K]`. Columns up to `keys`
/// rounded up to a whole register block are written too (from whatever `kt` holds there).
pub fn scores(q: &[f32], kt: &[f32], s: &mut [f32], d: usize, keys: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { scores_avx2(q, kt, s, d, keys, scale) };
    }
    scores_lanes::<LANES_SSE>(q, kt, s, d, keys, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scores_avx2(q: &[f32], kt: &[f32], s: &mut [f32], d: usize, keys: usize, scale: f32) {
    scores_lanes::<LANES_AVX>(q, kt, s, d, keys, scale)
}

#[inline(always)]
fn scores_lanes<const L: usize>(q: &[f32], kt: &[f32], s: &mut [f32], d: usize, keys: usize, scale: f32) {
    debug_assert!(keys <= BLOCK_K && BLOCK_K % L == 0);
    let keys_padded = keys.div_ceil(L) * L;
    let rows = q.len() / d;
    let full = rows / ROWS * ROWS;
    for (q_rows, s_rows) in q[..full * d].chunks_exact(ROWS * d).zip(s.chunks_exact_mut(ROWS * BLOCK_K)) {
        scores_block::<ROWS, L>(q_rows, kt, s_rows, d, keys_padded, scale);
    }
    for (q_row, s_row) in q[full * d..].chunks_exact(d).zip(s[full * BLOCK_K..].chunks_exact_mut(BLOCK_K)) {
        scores_block::<1, L>(q_row, kt, s_row, d, keys_padded, scale);
    }
}

#[inline(always)]
fn scores_block<const R: usize, const L: usize>(
    q: &[f32],
    kt: &[f32],
    s: &mut [f32],
    d: usize,
    keys_padded: usize,
    scale: f32,
) {
    let q_rows: [&[f32]; R] = std::array::from_fn(|r| &q[r * d..(r + 1) * d]);
    let kt = &kt[..d * BLOCK_K];
    for c0 in (0..keys_padded).step_by(L) {
        let mut acc = [[0.0f32; L]; R];
        for (k, kt_row) in kt.chunks_exact(BLOCK_K).enumerate() {
            let keys: &[f32; L] = kt_row[c0..c0 + L].try_into().unwrap();
            for r in 0..R {
                let q_rk = q_rows[r][k];
                for l in 0..L {
                    acc[r][l] += q_rk * keys[l];
                }
            }
        }
        for r in 0..R {
            for l in 0..L {
                s[r * BLOCK_K + c0 + l] = scale * acc[r][l];
            }
        }
    }
}

/// `o[r][j] += Σ_{c < keys} p[r][c] · v[c][j]` for every row of `o` (`[rows, d]`), with `p` `[rows, BLOCK_K]`
/// and `v` `[keys, d]`.
pub fn accumulate_pv(p: &[f32], v: &[f32], o: &mut [f32], d: usize, keys: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { accumulate_pv_avx2(p, v, o, d, keys) };
    }
    accumulate_pv_lanes::<LANES_SSE>(p, v, o, d, keys)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_pv_avx2(p: &[f32], v: &[f32], o: &mut [f32], d: usize, keys: usize) {
    accumulate_pv_lanes::<LANES_AVX>(p, v, o, d, keys)
}

#[inline(always)]
fn accumulate_pv_lanes<const L: usize>(p: &[f32], v: &[f32], o: &mut [f32], d: usize, keys: usize) {
    debug_assert!(d % L == 0);
    let rows = o.len() / d;
    let full = rows / ROWS * ROWS;
    let (o_full, o_rest) = o.split_at_mut(full * d);
    for (p_rows, o_rows) in p.chunks_exact(ROWS * BLOCK_K).zip(o_full.chunks_exact_mut(ROWS * d)) {
        pv_block::<ROWS, L>(p_rows, v, o_rows, d, keys);
    }
    for (p_row, o_row) in p[full * BLOCK_K..].chunks_exact(BLOCK_K).zip(o_rest.chunks_exact_mut(d)) {
        pv_block::<1, L>(p_row, v, o_row, d, keys);
    }
}

#[inline(always)]
fn pv_block<const R: usize, const L: usize>(p: &[f32], v: &[f32], o: &mut [f32], d: usize, keys: usize) {
    let p_rows: [&[f32]; R] = std::array::from_fn(|r| &p[r * BLOCK_K..r * BLOCK_K + keys]);
    let v = &v[..keys * d];
    for j0 in (0..d).step_by(L) {
        let mut acc: [[f32; L]; R] = std::array::from_fn(|r| o[r * d + j0..][..L].try_into().unwrap());
        for (c, v_row) in v.chunks_exact(d).enumerate() {
            let values: &[f32; L] = v_row[j0..j0 + L].try_into().unwrap();
            for r in 0..R {
                let p_rc = p_rows[r][c];
                for l in 0..L {
                    acc[r][l] += p_rc * values[l];
                }
            }
        }
        for r in 0..R {
            o[r * d + j0..][..L].copy_from_slice(&acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7 + seed * 13) % 17) as f32 - 8.0).collect()
    }

    #[test]
    fn scores_match_a_plain_product() {
        let (d, keys_padded) = (32, 32);
        for rows in [1, 3, 4, 7, 9] {
            let q = values(rows * d, 1);
            let kt = values(d * BLOCK_K, 2);
            let mut s = vec![f32::NAN; rows * BLOCK_K];
            scores(&q, &kt, &mut s, d, keys_padded, 0.5);
            let mut s_portable = vec![f32::NAN; rows * BLOCK_K];
            scores_lanes::<LANES_SSE>(&q, &kt, &mut s_portable, d, keys_padded, 0.5);
            for r in 0..rows {
                for c in 0..keys_padded {
                    let want: f32 = (0..d).map(|k| q[r * d + k] * kt[k * BLOCK_K + c]).sum::<f32>() * 0.5;
                    assert_eq!(s[r * BLOCK_K + c], want, "rows {rows}, s[{r}][{c}]");
                    assert_eq!(s_portable[r * BLOCK_K + c], want, "rows {rows}, s[{r}][{c}]");
                }
            }
        }
    }

    #[test]
    fn pv_accumulates_into_o() {
        let (d, keys) = (32, 13);
        for rows in [1, 4, 6] {
            let p = values(rows * BLOCK_K, 3);
            let v = values(keys * d, 4);
            let mut o = values(rows * d, 5);
            let before = o.clone();
            accumulate_pv(&p, &v, &mut o, d, keys);
            let mut o_portable = before.clone();
            accumulate_pv_lanes::<LANES_SSE>(&p, &v, &mut o_portable, d, keys);
            assert_eq!(o, o_portable);
            for r in 0..rows {
                for j in 0..d {
                    let want = before[r * d + j] + (0..keys).map(|c| p[r * BLOCK_K + c] * v[c * d + j]).sum::<f32>();
                    assert_eq!(o[r * d + j], want, "rows {rows}, o[{r}][{j}]");
                }
            }
        }
    }
}
