//! Which key blocks one CTA of the forward kernel visits, and which of them need the mask.

use crate::attn::mask::causal_key_end;

/// Key blocks of `block_n` keys seen by the query rows `[m0, m0 + rows)` (`rows >= 1`, all < seqlen_q):
/// `(n_blocks, n_unmasked)`. Blocks `[0, n_unmasked)` are visible to every row in full and need no
/// mask; blocks `[n_unmasked, n_blocks)` are cut by the causal diagonal or by the end of the keys.
/// Blocks from `n_blocks` on are invisible to every row (above the diagonal) and are never loaded.
/// `n_blocks == 0` means every row of the CTA is fully masked.
#[inline(always)]
pub fn fwd_key_blocks(m0: u32, rows: u32, seqlen_q: u32, seqlen_k: u32, causal: bool, block_n: u32) -> (u32, u32) {
    let (keys_end, keys_all_rows) = if causal {
        // Row visibility grows with the row index: the last row sees the most keys, the first the fewest.
        (causal_key_end(m0 + rows - 1, seqlen_q, seqlen_k), causal_key_end(m0, seqlen_q, seqlen_k))
    } else {
        (seqlen_k, seqlen_k)
    };
    let n_blocks = keys_end.div_ceil(block_n);
    let n_unmasked = (keys_all_rows / block_n).min(n_blocks);
    (n_blocks, n_unmasked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: a block needs no mask iff every (row, key) in it is visible.
    fn brute(m0: u32, rows: u32, sq: u32, sk: u32, causal: bool, bn: u32) -> (u32, u32) {
        let visible = |i: u32, j: u32| j < sk && (!causal || j < causal_key_end(i, sq, sk));
        let blocks = sk.div_ceil(bn);
        let mut n_blocks = 0;
        let mut n_unmasked = 0;
        let mut prefix = true;
        for nb in 0..blocks {
            let keys = nb * bn..(nb + 1) * bn;
            let any = (m0..m0 + rows).any(|i| keys.clone().any(|j| visible(i, j)));
            let all = (m0..m0 + rows).all(|i| keys.clone().all(|j| visible(i, j)));
            if any {
                n_blocks = nb + 1;
            }
            if all && prefix {
                n_unmasked = nb + 1;
            } else {
                prefix = false;
            }
        }
        (n_blocks, n_unmasked)
    }

    #[test]
    fn matches_brute_force() {
        for &(sq, sk) in &[(1, 1), (1, 200), (200, 1), (130, 130), (64, 300), (300, 64), (77, 128), (129, 65)] {
            for causal in [false, true] {
                for bn in [16, 32, 64] {
                    for bm in [64, 128] {
                        let mut m0 = 0;
                        while m0 < sq {
                            let rows = bm.min(sq - m0);
                            assert_eq!(
                                fwd_key_blocks(m0, rows, sq, sk, causal, bn),
                                brute(m0, rows, sq, sk, causal, bn),
                                "sq {sq} sk {sk} causal {causal} bn {bn} m0 {m0} rows {rows}"
                            );
                            m0 += bm;
                        }
                    }
                }
            }
        }
    }
}
