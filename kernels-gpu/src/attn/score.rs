//! The score stage's parameters and its integer arithmetic: which (query, key) pairs are visible, and
//! which blocks of them a kernel visits. Target-independent: the kernels, the host's validation and the
//! CPU paths use this one definition (unit-tested on the CPU below).
//!
//! Visibility (FlashAttention's sliding-window semantics, aligned bottom-right when the lengths differ):
//! key `j` is visible to query `i` iff `0 <= j < seqlen_k`, `0 <= i < seqlen_q` and
//! `i + diagonal - left <= j <= i + diagonal + right`, where `diagonal = seqlen_k - seqlen_q` (the last
//! query's diagonal is the last key) plus a packed sequence's `shift` (its queries and keys are
//! slices of a longer sequence at other positions: a context-parallel ring's chunks, `Mask::of_sequence`).
//! Causal is `right = 0`; no window on a side is that side clamped to where it no longer hides anything
//! (`left = seqlen_q + diagonal`, `right = seqlen_k - diagonal`, at least 0; `seqlen_k` and `seqlen_q`
//! unshifted), so one rule covers full, causal, windowed and causal-windowed attention.
//!
//! Both edges of a row's visible keys grow by one per row, and both edges of a key's visible queries by
//! one per key: every union of rows (a query block) sees one contiguous range of keys, and every union of
//! keys (a key block) one contiguous range of queries. Rows that see nothing are leading rows (their
//! window ends before key 0) or, under a shifted diagonal, trailing ones (their window starts after the
//! last key); likewise for keys. The block ranges below skip them.

/// Which (query, key) pairs are visible (see the module docs). Built by [`Mask::new`], which clamps the
/// window; all fields fit an i32 and `seqlen_q + seqlen_k` stays below 2^31 − 2^16 (host-checked; with
/// a shifted diagonal, lengths, shift and window below [`MAX_SHIFTED`]), so the per-element arithmetic
/// of the kernels runs in i32 with a tile of slack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mask {
    pub seqlen_q: u32,
    pub seqlen_k: u32,
    /// Keys before the diagonal a query sees, at most `seqlen_k` (= unbounded).
    pub left: u32,
    /// Keys after the diagonal a query sees, at most `seqlen_q` (= unbounded); 0 when causal.
    pub right: u32,
    /// A packed sequence's diagonal shift (`ScoreParams::diagonal_shifts`), 0 for bottom-right alignment:
    /// key `i + seqlen_k − seqlen_q + shift` is on query i's diagonal ([`Mask::offset`]). Stored as the
    /// shift, not the diagonal, so that a dense call's constant 0 folds away in the kernels.
    pub shift: i32,
}

/// Largest `seqlen_q + seqlen_k` the kernels' i32 mask arithmetic allows (2^16 of slack for row and
/// column offsets inside a tile).
pub const MAX_TOTAL_SEQLEN: u64 = (1 << 31) - (1 << 16);

/// Largest sequence lengths, diagonal shift and finite window of a call whose packed sequences shift
/// their diagonals (`ScoreParams::diagonal_shifts`), so that every sum of the mask arithmetic stays
/// within ±2^31 (host-checked). A window wider than this is unbounded.
pub const MAX_SHIFTED: u32 = 1 << 28;

/// The smallest `(left, right)` window that hides nothing for sequences of these lengths whose diagonal
/// is shifted by `shift`: the last row's diagonal (`seqlen_k + shift`) and the first row's distance to
/// the last key (`seqlen_q − shift`), at least 0 (module docs).
#[inline(always)]
fn unbounded_window(seqlen_q: u32, seqlen_k: u32, shift: i32) -> (u32, u32) {
    ((seqlen_k as i32 + shift).max(0) as u32, (seqlen_q as i32 - shift).max(0) as u32)
}

/// The key blocks one query block visits, and which need the mask (see [`Mask::key_blocks`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyBlocks {
    /// First visited block.
    pub first: u32,
    /// One past the last visited block; `first == end`: the rows see no key at all.
    pub end: u32,
    /// Blocks `[full_first, full_end)` are visible in full to every row and need no mask;
    /// `first <= full_first <= full_end <= end`.
    pub full_first: u32,
    pub full_end: u32,
}

impl KeyBlocks {
    /// Blocks visited.
    #[inline(always)]
    pub fn len(&self) -> u32 {
        self.end - self.first
    }
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.end == self.first
    }
    /// Whether block `b` (in `[first, end)`) needs the mask: cut by a window's left edge (before
    /// `full_first`), or by the diagonal, a right window edge or the end of the keys (from `full_end`).
    /// Kernels visit the blocks in key order, in three loops (masked, unmasked, masked), each
    /// register-allocated on its own.
    #[inline(always)]
    pub fn needs_mask(&self, b: u32) -> bool {
        b < self.full_first || b >= self.full_end
    }
    /// Split `split`'s share of the blocks under split-KV (`abi::FwdParams`): `[first, end)`, the
    /// `split`-th run of `ceil(len / splits)` blocks, empty past the last block.
    #[inline(always)]
    pub fn share(&self, split: u32, splits: u32) -> (u32, u32) {
        let per_split = self.len().div_ceil(splits);
        let first = (self.first + split * per_split).min(self.end);
        (first, (first + per_split).min(self.end))
    }
}

impl Mask {
    /// The mask of a call: `causal` sets `right = 0`; `None` on a side is unbounded.
    pub fn new(seqlen_q: u32, seqlen_k: u32, causal: bool, left: Option<u32>, right: Option<u32>) -> Self {
        let left = left.map_or(seqlen_k, |l| l.min(seqlen_k));
        let right = if causal { 0 } else { right.map_or(seqlen_q, |r| r.min(seqlen_q)) };
        Mask { seqlen_q, seqlen_k, left, right, shift: 0 }
    }

    /// The mask of a packed call whose sequences shift their diagonals (`ScoreParams::diagonal_shifts`):
    /// as [`Mask::new`], but a window is clamped to [`MAX_SHIFTED`] rather than to the token counts,
    /// which a shifted sequence's window may need to exceed to stay unbounded ([`Mask::of_sequence`]
    /// clamps it per sequence).
    pub fn shifted_call(seqlen_q: u32, seqlen_k: u32, causal: bool, left: Option<u32>, right: Option<u32>) -> Self {
        let wide = |w: Option<u32>| w.map_or(MAX_SHIFTED, |w| w.min(MAX_SHIFTED));
        Mask {
            left: wide(left),
            right: if causal { 0 } else { wide(right) },
            ..Mask::new(seqlen_q, seqlen_k, causal, None, None)
        }
    }

    /// The mask of one sequence of a packed batch whose call mask is `self` (built over the batch's
    /// token counts, so that its window bounds are at least any sequence's, or by
    /// [`Mask::shifted_call`]): the same rule over the sequence's own lengths, its diagonal shifted by
    /// `shift` (0: aligned bottom-right), the window clamped to where it no longer hides anything as
    /// [`Mask::new`] clamps it.
    #[inline(always)]
    pub fn of_sequence(&self, seqlen_q: u32, seqlen_k: u32, shift: i32) -> Mask {
        let (left_unbounded, right_unbounded) = unbounded_window(seqlen_q, seqlen_k, shift);
        Mask { seqlen_q, seqlen_k, left: self.left.min(left_unbounded), right: self.right.min(right_unbounded), shift }
    }

    /// `seqlen_k − seqlen_q + shift`: key `i + offset` is on query i's diagonal.
    #[inline(always)]
    pub fn offset(&self) -> i32 {
        self.seqlen_k as i32 - self.seqlen_q as i32 + self.shift
    }

    /// Whether any window edge hides keys beyond what the end of the keys and causality do.
    #[inline(always)]
    pub fn is_windowed(&self) -> bool {
        let (left_unbounded, right_unbounded) = unbounded_window(self.seqlen_q, self.seqlen_k, self.shift);
        self.left < left_unbounded || (self.right > 0 && self.right < right_unbounded)
    }

    /// Whether every query row sees every key (no diagonal and no window edge inside the keys), so that
    /// every block of query rows has the same key blocks.
    #[inline(always)]
    pub fn sees_all(&self) -> bool {
        // The last row's window starts at key 0 or before, the first row's ends at the last key or after.
        self.left as i32 + 1 >= self.seqlen_k as i32 + self.shift
            && self.right as i32 + 1 >= self.seqlen_q as i32 - self.shift
    }

    /// The visible keys of query row `i >= 0` as `[lo, hi)`, unclamped below: key `j >= 0` of a tile is
    /// visible iff `lo <= j < hi` (`hi <= seqlen_k` covers the end of the keys; a row past the end of
    /// the queries sees none).
    #[inline(always)]
    pub fn key_limits(&self, i: i32) -> (i32, i32) {
        let diagonal = i + self.offset();
        let (lo, hi) = (diagonal - self.left as i32, (diagonal + self.right as i32 + 1).min(self.seqlen_k as i32));
        // An empty range that stays an empty range when a kernel shifts both ends.
        (lo, if i < self.seqlen_q as i32 { hi } else { lo })
    }

    /// The visible queries of key `j >= 0` as `[lo, hi)`, the transpose of [`Mask::key_limits`]
    /// (`hi <= seqlen_q`; a key past the end of the keys is seen by none).
    #[inline(always)]
    pub fn query_limits(&self, j: i32) -> (i32, i32) {
        let diagonal = j - self.offset();
        let (lo, hi) = (diagonal - self.right as i32, (diagonal + self.left as i32 + 1).min(self.seqlen_q as i32));
        (lo, if j < self.seqlen_k as i32 { hi } else { lo })
    }

    /// The visible keys of query row `i < seqlen_q`, clamped: `[start, end)`, `start == end` when none.
    #[inline(always)]
    pub fn key_range(&self, i: u32) -> (u32, u32) {
        let (lo, hi) = self.key_limits(i as i32);
        let lo = lo.max(0) as u32;
        let hi = hi.max(0) as u32;
        (lo.min(hi), hi)
    }

    /// The visible queries of key `j < seqlen_k`, clamped: `[start, end)`, `start == end` when none.
    #[inline(always)]
    pub fn query_range(&self, j: u32) -> (u32, u32) {
        let (lo, hi) = self.query_limits(j as i32);
        let lo = lo.max(0) as u32;
        let hi = hi.max(0) as u32;
        (lo.min(hi), hi)
    }

    /// Whether key `j` is visible to query `i` (both range-checked).
    #[inline(always)]
    pub fn visible(&self, i: u32, j: u32) -> bool {
        if i >= self.seqlen_q || j >= self.seqlen_k {
            return false;
        }
        let (lo, hi) = self.key_limits(i as i32);
        lo <= j as i32 && (j as i32) < hi
    }

    /// Key blocks of `block_n` keys seen by query rows `[m0, m0 + rows)` (`rows >= 1`, all in range),
    /// with the blocks that need no mask.
    #[inline(always)]
    pub fn key_blocks(&self, m0: u32, rows: u32, block_n: u32) -> KeyBlocks {
        let last = m0 + rows - 1;
        // Leading rows see nothing where their diagonal plus `right` is before key 0, trailing ones
        // where their diagonal minus `left` is after the last key.
        // (The last row's end is the last seeing row's: past it, rows end at the last key.)
        let first_seeing =
            (self.seqlen_q as i32 - self.seqlen_k as i32 - self.shift - self.right as i32).max(m0 as i32);
        let blind_from = self.seqlen_q as i32 - self.shift + self.left as i32;
        let end_key = self.key_range(last).1;
        if first_seeing > last as i32 || first_seeing >= blind_from || end_key == 0 {
            return KeyBlocks::default();
        }
        let first = self.key_range(first_seeing as u32).0 / block_n;
        let end = end_key.div_ceil(block_n);
        // Keys every row sees: from the last row's first key to the first row's end.
        let (all_lo, all_hi) = (self.key_range(last).0, self.key_range(m0).1);
        // max-then-min rather than `clamp`, whose bound check would put a panic in every kernel.
        let full_first = all_lo.div_ceil(block_n).max(first).min(end);
        let full_end = (all_hi / block_n).max(full_first).min(end);
        if full_first == full_end {
            // No unmasked block: every block is visited masked, in key order.
            return KeyBlocks { first, end, full_first: end, full_end: end };
        }
        KeyBlocks { first, end, full_first, full_end }
    }

    /// Query blocks of `block_m` rows that see any key of the block of `block_n` keys at `n0`
    /// (`n0 < seqlen_k`): `[first, end)`, empty when no query sees those keys.
    #[inline(always)]
    pub fn query_blocks(&self, n0: u32, block_n: u32, block_m: u32) -> (u32, u32) {
        let last = (n0 + block_n).min(self.seqlen_k) - 1;
        // Leading keys are seen by no query before the first row's window, trailing ones after the
        // last row's.
        // (The last key's end is the last seen key's: past it, keys end at the last query.)
        let first_seen = (self.offset() - self.left as i32).max(n0 as i32);
        let unseen_from = self.seqlen_k as i32 + self.shift + self.right as i32;
        let end_query = self.query_range(last).1;
        if first_seen > last as i32 || first_seen >= unseen_from || end_query == 0 {
            return (0, 0);
        }
        (self.query_range(first_seen as u32).0 / block_m, end_query.div_ceil(block_m))
    }

    /// Whether some (query, key) pair of queries `[m0, m0 + block_m)` × keys `[n0, n0 + block_n)` is
    /// invisible or out of range (the tile needs the mask).
    #[inline(always)]
    pub fn needs_mask(&self, m0: u32, block_m: u32, n0: u32, block_n: u32) -> bool {
        if n0 + block_n > self.seqlen_k || m0 + block_m > self.seqlen_q {
            return true;
        }
        // Every row sees the whole tile iff the last row's first key and the first row's end enclose it.
        let (lo_last, _) = self.key_limits((m0 + block_m - 1) as i32);
        let (_, hi_first) = self.key_limits(m0 as i32);
        lo_last > n0 as i32 || hi_first < (n0 + block_n) as i32
    }
}

/// The score stage of every kernel, as one kernel parameter: the mask and the per-element modifiers
/// that turn a raw dot product `q·k` of query `i` and key `j` into a logit, in base-2 units:
///
/// `x = scale·log2e·(q·k)`, or with softcap `x = cap·log2e·tanh(scale·(q·k)/cap)`;
/// then ALiBi adds `−slope·log2e·|i + offset − j|` (`Mask::offset`); invisible pairs get `x = −inf`.
///
/// Sinks join each row's softmax denominator as one more logit per query head (no value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScoreParams {
    pub mask: Mask,
    /// softmax_scale · log2(e), used when there is no softcap.
    pub scale_log2: f32,
    /// Softcap: `softmax_scale / cap` (applied before the tanh) and `cap · log2(e)` (after it); both 0
    /// without a softcap.
    pub softcap_pre: f32,
    pub softcap_post: f32,
    /// ALiBi slopes' batch stride: 0 for `[heads_q]` slopes, `heads_q` for `[batch, heads_q]`.
    pub alibi_batch_stride: u32,
    /// f32 ALiBi slopes (natural units; the kernels scale them by log2 e), 0 when absent.
    pub alibi_slopes: u64,
    /// f32 `[heads_q]` sink logits (natural units), 0 when absent.
    pub sinks: u64,
    /// Packed variable-length batches: i32 `[batch + 1]` token offsets of the sequences in Q (and O) and
    /// in K/V (`cu_seqlens`), 0 for a dense batch. When set, `mask` is built over the token counts
    /// (`seqlen_q`, `seqlen_k`: the tensors' rows) and each sequence's own mask comes from
    /// [`Mask::of_sequence`] with its lengths ([`packed_tokens`]).
    pub cu_seqlens_q: u64,
    pub cu_seqlens_k: u64,
    /// Packed batches: the longest sequence's queries and keys, as the call states them (the grid and
    /// the backward's per-sequence turn counters are sized by them); a longer sequence is cut to them.
    /// 0 for a dense batch.
    pub max_seqlen_q: u32,
    pub max_seqlen_k: u32,
    /// Batches whose sequences use a prefix of their keys (a paged KV cache): i32 `[batch]`, sequence b's
    /// keys are its first `seqused_k[b]` (clamped into `[0, mask.seqlen_k]`), its mask the call's over
    /// those (`Mask::of_sequence`, aligned bottom-right); 0 when not so. Read in the kernels' packed
    /// instantiation (`attn::stage::enter`), as the offsets of a packed batch are.
    pub seqused_k: u64,
    /// Packed batches whose sequences are slices of longer ones (a context-parallel ring's chunks): i32
    /// `[batch]`, sequence b's diagonal shifted by `diagonal_shifts[b]` keys ([`Mask::of_sequence`]), so
    /// that windows and ALiBi measure the distance in the longer sequence; `mask` then comes from
    /// [`Mask::shifted_call`]. 0 when not so.
    pub diagonal_shifts: u64,
}

/// The tokens `[start, end)` of one sequence of a packed batch, from its offsets `cu[b]` and `cu[b + 1]`
/// as stored (i32), clamped into the tensor's `tokens` rows and to a length in `[0, longest]` (the
/// call's `max_seqlen`): offsets or maxima the host could not check (device data) can then only give
/// wrong sequences, never an access outside the tensors or the buffers sized by the maxima.
#[inline(always)]
pub fn packed_tokens(start: i32, end: i32, tokens: u32, longest: u32) -> (u32, u32) {
    let start = (start.max(0) as u32).min(tokens);
    let end = (end.max(0) as u32).min(tokens).max(start).min(start + longest.min(tokens - start));
    (start, end)
}

impl ScoreParams {
    #[inline(always)]
    pub fn has_softcap(&self) -> bool {
        self.softcap_post != 0.0
    }
    #[inline(always)]
    pub fn has_alibi(&self) -> bool {
        self.alibi_slopes != 0
    }
    /// Whether any per-element modifier (softcap, ALiBi) is on: the kernels' loops come in two copies.
    #[inline(always)]
    pub fn has_modifiers(&self) -> bool {
        self.has_softcap() || self.has_alibi()
    }
    /// Whether the batch is packed (variable-length sequences along the token dimension).
    #[inline(always)]
    pub fn is_packed(&self) -> bool {
        self.cu_seqlens_q != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::format;
    use std::vec::Vec;

    /// The splits' shares cover a row block's key blocks once each, in order, each within
    /// `ceil(len / splits)` blocks; shares past the last block are empty.
    #[test]
    fn split_shares_partition_the_blocks() {
        for (first, end) in [(0u32, 0u32), (0, 1), (3, 10), (5, 133), (0, 128)] {
            let blocks = KeyBlocks { first, end, full_first: first, full_end: end };
            for splits in 1..=20u32 {
                let mut next = first;
                for split in 0..splits {
                    let (a, b) = blocks.share(split, splits);
                    assert!(a == next.min(end) && a <= b && b <= end, "{first}..{end} / {splits}: split {split}");
                    assert!(b - a <= blocks.len().div_ceil(splits));
                    next = b;
                }
                assert_eq!(next, end, "{first}..{end} / {splits}");
            }
        }
    }

    /// Every mask shape the tests cross: full, causal, windows on either side and both, causal windows,
    /// windows wider than the sequences and zero-width ones; each aligned bottom-right and with its
    /// diagonal shifted either way, by less and by more than the lengths.
    fn masks(sq: u32, sk: u32) -> Vec<Mask> {
        let mut v = Vec::new();
        for causal in [false, true] {
            for left in [None, Some(0), Some(1), Some(7), Some(40), Some(1000)] {
                for right in [None, Some(0), Some(3), Some(50)] {
                    v.push(Mask::new(sq, sk, causal, left, right));
                    let call = Mask::shifted_call(4000, 4000, causal, left, right);
                    for shift in [-700, -130, -33, -1, 1, 20, 129, 650] {
                        v.push(call.of_sequence(sq, sk, shift));
                    }
                }
            }
        }
        v
    }

    const SHAPES: [(u32, u32); 10] =
        [(1, 1), (1, 200), (200, 1), (130, 130), (64, 300), (300, 64), (77, 128), (129, 65), (5, 2), (2, 5)];

    /// The definition, written independently of `key_limits`.
    fn brute_visible(m: &Mask, i: u32, j: u32) -> bool {
        let d = i as i64 + m.seqlen_k as i64 - m.seqlen_q as i64 + m.shift as i64;
        i < m.seqlen_q && j < m.seqlen_k && d - m.left as i64 <= j as i64 && j as i64 <= d + m.right as i64
    }

    #[test]
    fn clamped_window_means_unbounded() {
        for &(sq, sk) in &SHAPES {
            let full = Mask::new(sq, sk, false, None, None);
            let causal = Mask::new(sq, sk, true, None, None);
            for i in 0..sq {
                for j in 0..sk {
                    assert!(brute_visible(&full, i, j));
                    assert_eq!(brute_visible(&causal, i, j), j as i64 <= i as i64 + sk as i64 - sq as i64);
                }
            }
            assert!(!full.is_windowed() && !causal.is_windowed());
        }
    }

    /// `sees_all` exactly when every query row sees every key; then every block of rows has the same key
    /// blocks.
    #[test]
    fn sees_all_matches_brute_force() {
        for &(sq, sk) in &SHAPES {
            for m in masks(sq, sk) {
                let all = (0..sq).all(|i| (0..sk).all(|j| brute_visible(&m, i, j)));
                assert_eq!(m.sees_all(), all, "{m:?}");
                if all {
                    let blocks = |m0: u32| m.key_blocks(m0, (sq - m0).min(16), 16);
                    let first = blocks(0);
                    assert!((0..sq).step_by(16).all(|m0| blocks(m0).len() == first.len()), "{m:?}");
                }
            }
        }
    }

    #[test]
    fn ranges_match_brute_force() {
        for &(sq, sk) in &SHAPES {
            for m in masks(sq, sk) {
                for i in 0..sq {
                    let (a, b) = m.key_range(i);
                    let want: Vec<u32> = (0..sk).filter(|&j| brute_visible(&m, i, j)).collect();
                    let got: Vec<u32> = (a..b).collect();
                    assert_eq!(got, want, "{m:?} row {i}");
                    for j in 0..sk {
                        assert_eq!(m.visible(i, j), brute_visible(&m, i, j));
                    }
                }
                for j in 0..sk {
                    let (a, b) = m.query_range(j);
                    let want: Vec<u32> = (0..sq).filter(|&i| brute_visible(&m, i, j)).collect();
                    assert_eq!((a..b).collect::<Vec<_>>(), want, "{m:?} key {j}");
                }
            }
        }
    }

    #[test]
    fn key_blocks_match_brute_force() {
        for &(sq, sk) in &SHAPES {
            for m in masks(sq, sk) {
                for bn in [16, 64] {
                    for bm in [64, 128] {
                        let mut m0 = 0;
                        while m0 < sq {
                            let rows = bm.min(sq - m0);
                            let kb = m.key_blocks(m0, rows, bn);
                            let ctx = format!("{m:?} bn {bn} m0 {m0} rows {rows} -> {kb:?}");
                            let (mut any_first, mut any_end) = (None, 0);
                            for nb in 0..sk.div_ceil(bn) {
                                let keys = nb * bn..((nb + 1) * bn);
                                let any = (m0..m0 + rows).any(|i| keys.clone().any(|j| brute_visible(&m, i, j)));
                                let all = (m0..m0 + rows).all(|i| keys.clone().all(|j| brute_visible(&m, i, j)));
                                if any {
                                    any_first.get_or_insert(nb);
                                    any_end = nb + 1;
                                }
                                let unmasked = (kb.full_first..kb.full_end).contains(&nb);
                                // A block marked unmasked must be visible in full; every fully visible
                                // block is marked so (both edges are exact).
                                assert_eq!(unmasked, all, "{ctx} block {nb}");
                            }
                            match any_first {
                                None => assert!(kb.is_empty(), "{ctx}"),
                                Some(f) => assert_eq!((kb.first, kb.end), (f, any_end), "{ctx}"),
                            }
                            assert!(kb.first <= kb.full_first && kb.full_first <= kb.full_end && kb.full_end <= kb.end);
                            for b in kb.first..kb.end {
                                assert_eq!(kb.needs_mask(b), !(kb.full_first..kb.full_end).contains(&b), "{ctx}");
                            }
                            m0 += bm;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn query_blocks_and_needs_mask_match_brute_force() {
        for &(sq, sk) in &SHAPES {
            for m in masks(sq, sk) {
                for bn in [64u32, 128] {
                    for bm in [32u32, 64] {
                        let mut n0 = 0;
                        while n0 < sk {
                            let (first, end) = m.query_blocks(n0, bn, bm);
                            for mb in 0..sq.div_ceil(bm) {
                                let m0 = mb * bm;
                                let pairs = || (m0..m0 + bm).flat_map(|i| (n0..n0 + bn).map(move |j| (i, j)));
                                let any = pairs().any(|(i, j)| brute_visible(&m, i, j));
                                assert_eq!(any, (first..end).contains(&mb), "{m:?} n0 {n0} mb {mb}");
                                let all = pairs().all(|(i, j)| brute_visible(&m, i, j));
                                assert_eq!(!all, m.needs_mask(m0, bm, n0, bn), "{m:?} n0 {n0} mb {mb}");
                                // The deterministic backward's turn order: the key blocks that visit
                                // query block mb are exactly `key_blocks(..).first..end` with the
                                // backward's block_n.
                                let rows = bm.min(sq - m0);
                                let kb = m.key_blocks(m0, rows, bn);
                                assert_eq!(any, (kb.first..kb.end).contains(&(n0 / bn)));
                            }
                            n0 += bn;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_sequence_mask_is_the_mask_of_its_lengths() {
        for causal in [false, true] {
            for left in [None, Some(0), Some(5), Some(100)] {
                for right in [None, Some(0), Some(3), Some(70)] {
                    let call = Mask::new(900, 1200, causal, left, right);
                    let shifted_call = Mask::shifted_call(900, 1200, causal, left, right);
                    for &(sq, sk) in &SHAPES {
                        assert_eq!(call.of_sequence(sq, sk, 0), Mask::new(sq, sk, causal, left, right));
                        assert_eq!(shifted_call.of_sequence(sq, sk, 0), Mask::new(sq, sk, causal, left, right));
                    }
                }
            }
        }
    }

    /// A shifted sequence's mask is the mask of the longer sequence it is a slice of: queries
    /// `[q0, q0 + sq)` and keys `[k0, k0 + sk)` of a sequence of `n` tokens, shifted by the distance
    /// between their ends; an unbounded window stays unbounded however far apart the slices are.
    #[test]
    fn a_shifted_sequence_is_a_slice_of_the_longer_one() {
        let n = 300u32;
        for causal in [false, true] {
            for left in [None, Some(0), Some(9), Some(120)] {
                for right in [None, Some(0), Some(4), Some(200)] {
                    let whole = Mask::new(n, n, causal, left, right);
                    let call = Mask::shifted_call(64, 64, causal, left, right);
                    for (q0, sq, k0, sk) in [(0, 37, 200, 100), (250, 50, 0, 64), (100, 64, 100, 64), (10, 1, 299, 1)] {
                        let shift = (q0 + sq) as i32 - (k0 + sk) as i32;
                        let m = call.of_sequence(sq, sk, shift);
                        for i in 0..sq {
                            for j in 0..sk {
                                assert_eq!(m.visible(i, j), whole.visible(q0 + i, k0 + j), "{m:?} ({i}, {j})");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packed_tokens_stay_inside_the_tensor() {
        assert_eq!(packed_tokens(3, 10, 20, 20), (3, 10));
        assert_eq!(packed_tokens(3, 30, 20, 20), (3, 20));
        assert_eq!(packed_tokens(25, 30, 20, 20), (20, 20));
        assert_eq!(packed_tokens(10, 3, 20, 20), (10, 10));
        assert_eq!(packed_tokens(-5, 4, 20, 20), (0, 4));
        assert_eq!(packed_tokens(i32::MIN, i32::MAX, 20, 20), (0, 20));
        // Cut to the stated longest sequence, and never past the tokens whatever it says.
        assert_eq!(packed_tokens(3, 10, 20, 4), (3, 7));
        assert_eq!(packed_tokens(3, 10, 20, 0), (3, 3));
        assert_eq!(packed_tokens(3, 30, 20, u32::MAX), (3, 20));
        assert_eq!(packed_tokens(20, 20, 20, 5), (20, 20));
    }

    #[test]
    fn limits_agree_with_ranges_in_and_out_of_range() {
        for &(sq, sk) in &SHAPES {
            for m in masks(sq, sk) {
                // Rows and keys past the ends too: tiles run over them.
                for i in 0..sq + 3 {
                    let (lo, hi) = m.key_limits(i as i32);
                    for j in 0..sk + 3 {
                        assert_eq!(lo <= j as i32 && (j as i32) < hi, m.visible(i, j), "{m:?} {i} {j}");
                        let (qlo, qhi) = m.query_limits(j as i32);
                        assert_eq!(qlo <= i as i32 && (i as i32) < qhi, m.visible(i, j), "{m:?} {i} {j}");
                    }
                }
            }
        }
    }
}
