//! The causal mask, aligned to the bottom-right corner when seqlen_q != seqlen_k (FlashAttention >= 2.1):
//! query row i sees key j iff j <= i + seqlen_k - seqlen_q.

/// One past the last key visible to query row `row` (0 when the row is fully masked).
#[inline(always)]
pub fn causal_key_end(row: u32, seqlen_q: u32, seqlen_k: u32) -> u32 {
    let end = row as i64 + 1 + seqlen_k as i64 - seqlen_q as i64;
    if end <= 0 {
        0
    } else if end >= seqlen_k as i64 {
        seqlen_k
    } else {
        end as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn square_is_lower_triangle() {
        assert_eq!(causal_key_end(0, 4, 4), 1);
        assert_eq!(causal_key_end(3, 4, 4), 4);
    }
    #[test]
    fn bottom_right_alignment() {
        // more keys than queries: the last query sees every key
        assert_eq!(causal_key_end(1, 2, 5), 5);
        assert_eq!(causal_key_end(0, 2, 5), 4);
        // more queries than keys: early rows are fully masked
        assert_eq!(causal_key_end(0, 5, 2), 0);
        assert_eq!(causal_key_end(2, 5, 2), 0);
        assert_eq!(causal_key_end(3, 5, 2), 1);
        assert_eq!(causal_key_end(4, 5, 2), 2);
    }
}
