//! Which query blocks one CTA of the backward kernel visits, and whether a (query block, key block)
//! pair needs the mask.

/// Query blocks of `block_m` rows that see any key of the block starting at key `n0` (`n0 < seqlen_k`):
/// the range `[first, end)`. Non-causal: every block. Causal (bottom-right): query i sees key n0 iff
/// i >= n0 + seqlen_q - seqlen_k, and the last query row sees every key, so the range is never empty.
#[inline(always)]
pub fn bwd_query_blocks(n0: u32, seqlen_q: u32, seqlen_k: u32, causal: bool, block_m: u32) -> (u32, u32) {
    let end = seqlen_q.div_ceil(block_m);
    if !causal {
        return (0, end);
    }
    let first_row = (n0 as u64 + seqlen_q as u64).saturating_sub(seqlen_k as u64);
    ((first_row / block_m as u64) as u32, end)
}

/// Whether some (query, key) pair of queries `[m0, m0 + block_m)` × keys `[n0, n0 + block_n)` is
/// invisible or out of range, so that the probabilities need the mask.
#[inline(always)]
pub fn bwd_needs_mask(
    m0: u32,
    n0: u32,
    block_m: u32,
    block_n: u32,
    seqlen_q: u32,
    seqlen_k: u32,
    causal: bool,
) -> bool {
    let tail = n0 + block_n > seqlen_k || m0 + block_m > seqlen_q;
    // The first query row m0 sees keys <= m0 + seqlen_k - seqlen_q; the block's last key is n0 + block_n - 1.
    let cut = causal && (n0 + block_n - 1) as u64 + seqlen_q as u64 > m0 as u64 + seqlen_k as u64;
    tail || cut
}

/// Whether key `j` is visible to query `i` (both in range checked too).
#[inline(always)]
pub fn visible(i: u32, j: u32, seqlen_q: u32, seqlen_k: u32, causal: bool) -> bool {
    i < seqlen_q && j < seqlen_k && (!causal || j as u64 + seqlen_q as u64 <= i as u64 + seqlen_k as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attn::mask::causal_key_end;

    #[test]
    fn matches_brute_force() {
        for &(sq, sk) in &[(1, 1), (1, 200), (200, 1), (130, 130), (64, 300), (300, 64), (77, 128), (129, 65)] {
            for causal in [false, true] {
                for bn in [64u32, 128] {
                    for bm in [32u32, 64] {
                        let mut n0 = 0;
                        while n0 < sk {
                            let (first, end) = bwd_query_blocks(n0, sq, sk, causal, bm);
                            for m in 0..sq.div_ceil(bm) {
                                let m0 = m * bm;
                                let pairs = || (m0..m0 + bm).flat_map(|i| (n0..n0 + bn).map(move |j| (i, j)));
                                let any = pairs().any(|(i, j)| visible(i, j, sq, sk, causal));
                                assert_eq!(any, (first..end).contains(&m), "sq {sq} sk {sk} c {causal} n0 {n0} m {m}");
                                let all = pairs().all(|(i, j)| visible(i, j, sq, sk, causal));
                                assert_eq!(!all, bwd_needs_mask(m0, n0, bm, bn, sq, sk, causal));
                            }
                            n0 += bn;
                        }
                        for i in 0..sq {
                            for j in 0..sk {
                                let want = j < if causal { causal_key_end(i, sq, sk) } else { sk };
                                assert_eq!(visible(i, j, sq, sk, causal), want);
                            }
                        }
                    }
                }
            }
        }
    }
}
