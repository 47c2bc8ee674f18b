//! How a sequence is sharded over the ranks of a ring, and what each rank computes at each step of it:
//! target-independent integer arithmetic, shared by the GPU ring and the CPU simulation
//! ([`super::cpu`]) and unit-tested below.
//!
//! At step `s` of a ring of `world` ranks, rank `r` holds the keys and values of rank `(r − s) mod
//! world` (its own at step 0) and attends its queries to them. Which of its queries see which of those
//! keys follows from the chunks of the global sequence each rank holds:
//! - [`ShardLayout::Contiguous`]: rank `r` holds chunk `r` of `world`. Under a causal mask rank `r`
//!   has work at `r + 1` steps only (the last rank does `world` times the first's).
//! - [`ShardLayout::ZigZag`]: the sequence is cut into `2·world` chunks and rank `r` holds chunks `r`
//!   and `2·world − 1 − r` (head and tail), so that under a causal mask every rank has the same work at
//!   every step: its own keys with the causal mask at step 0; at a step whose keys come from an
//!   earlier rank (`t < r`), all its queries against the head chunk of those keys; from a later rank
//!   (`t > r`), its tail chunk's queries against all of them.
//!
//! Each step's attention is a packed (varlen) call whose sequences tile the shard's queries and the
//! held keys in order ([`StepPlan::sequences`]); a sequence with no keys gives its rows LSE `-inf`, which
//! the merge weighs 0, and one with no queries leaves its keys' gradients 0.
//!
//! Where the scores depend on the distance between a query and a key (sliding windows, ALiBi:
//! [`RingMask::positional`]), a step's sequences are pairs of chunks, each with its diagonal shifted to
//! where the chunks lie in the whole sequence (the distance between their ends, [`StepPlan::shifts`]),
//! and the pairs that see any key are grouped into as few calls as keep each call's chunks in order:
//! one per step with contiguous shards, two or three with zig-zag ones. Pairs that see no key are
//! left out, so a window's work is proportional to its visible keys here too.

use crate::options::AttnOptions;
use ironflash_kernels::attn::score::Mask;
use std::ops::Range;

/// Which chunks of the global sequence each rank holds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardLayout {
    /// Rank `r` holds chunk `r` of `world` equal chunks.
    Contiguous,
    /// Rank `r` holds chunks `r` and `2·world − 1 − r` of `2·world` (load-balanced under a causal mask).
    ZigZag,
}

/// A sequence of `seqlen` tokens sharded over `world` ranks. Chunks differ in length by at most one
/// token: chunk `i` of `n` holds `seqlen / n` tokens, plus one for the first `seqlen % n` chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sharding {
    pub seqlen: usize,
    pub world: usize,
    pub layout: ShardLayout,
}

/// One call of a step's attention for one batch entry: whether the call is causal, and its sequences as
/// (query range, key range) in the shard's local token indices. The query ranges tile `0..seqlen_q`
/// and the key ranges `0..seqlen_k`, in order, as a packed call's offsets must.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    pub causal: bool,
    pub sequences: Vec<(Range<usize>, Range<usize>)>,
    /// Positional calls ([`RingMask::positional`]): each sequence's diagonal shift (the end of its
    /// queries minus the end of its keys in the whole sequence, `ScoreParams::diagonal_shifts`), and the
    /// call's window is the whole sequence's. `None`: sequences aligned bottom-right, no window.
    pub shifts: Option<Vec<i32>>,
}

/// What decides which (query, key) pairs of the whole sequence a ring computes, and how: the causal
/// mask, the sliding window (FlashAttention's semantics over the whole sequence; `None` unbounded) and
/// whether ALiBi makes the scores depend on the distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingMask {
    pub causal: bool,
    pub left: Option<usize>,
    pub right: Option<usize>,
    pub alibi: bool,
}

impl RingMask {
    pub fn of(opts: &AttnOptions) -> Self {
        RingMask {
            causal: opts.causal,
            left: opts.window.left,
            right: if opts.causal { Some(0) } else { opts.window.right },
            alibi: opts.alibi_slopes.is_some(),
        }
    }

    /// Whether the step calls must know where their chunks lie (windows, ALiBi).
    pub fn positional(&self) -> bool {
        self.alibi || self.left.is_some() || (self.right.is_some() && !self.causal)
    }

    /// The mask over a whole sequence of `seqlen` tokens.
    fn whole(&self, seqlen: usize) -> Mask {
        let w = |w: Option<usize>| w.map(|w| w.min(seqlen) as u32);
        Mask::new(seqlen as u32, seqlen as u32, self.causal, w(self.left), w(self.right))
    }
}

impl Sharding {
    fn chunk_count(&self) -> usize {
        match self.layout {
            ShardLayout::Contiguous => self.world,
            ShardLayout::ZigZag => 2 * self.world,
        }
    }

    /// The global token range of chunk `i`.
    fn chunk(&self, i: usize) -> Range<usize> {
        let n = self.chunk_count();
        let (base, extra) = (self.seqlen / n, self.seqlen % n);
        let start = i * base + i.min(extra);
        start..start + base + usize::from(i < extra)
    }

    /// The global token ranges rank `rank` holds, in the order its shard lays them out.
    pub fn chunks(&self, rank: usize) -> Vec<Range<usize>> {
        match self.layout {
            ShardLayout::Contiguous => vec![self.chunk(rank)],
            ShardLayout::ZigZag => vec![self.chunk(rank), self.chunk(2 * self.world - 1 - rank)],
        }
    }

    /// Tokens in rank `rank`'s shard.
    pub fn shard_len(&self, rank: usize) -> usize {
        self.chunks(rank).iter().map(|c| c.len()).sum()
    }

    /// The longest shard (the ring's receive buffers hold any rank's keys and values).
    pub fn max_shard_len(&self) -> usize {
        (0..self.world).map(|r| self.shard_len(r)).max().unwrap_or(0)
    }

    /// The rank whose keys and values rank `rank` holds at step `step`.
    pub fn source(&self, rank: usize, step: usize) -> usize {
        (rank + self.world - step % self.world) % self.world
    }

    /// Rank `rank`'s calls at step `step` under `mask`: [`Sharding::step_plan`]'s one where the mask is
    /// not positional, the chunk pairs' calls (module docs) where it is; none when none of its queries
    /// sees any of the keys it holds then.
    pub fn step_plans(&self, rank: usize, step: usize, mask: &RingMask) -> Vec<StepPlan> {
        if !mask.positional() {
            return self.step_plan(rank, step, mask.causal).into_iter().collect();
        }
        let whole = mask.whole(self.seqlen);
        let (q_chunks, k_chunks) = (self.chunks(rank), self.chunks(self.source(rank, step)));
        // Whether some query of chunk `qc` sees some key of chunk `kc` (the keys a block of rows sees
        // form one range: `Mask::key_blocks` with blocks of one key).
        let sees = |qc: &Range<usize>, kc: &Range<usize>| {
            if qc.is_empty() || kc.is_empty() {
                return false;
            }
            let keys = whole.key_blocks(qc.start as u32, qc.len() as u32, 1);
            !keys.is_empty() && (keys.first as usize) < kc.end && kc.start < keys.end as usize
        };
        let mut pairs: Vec<(usize, usize)> = (0..q_chunks.len())
            .flat_map(|a| (0..k_chunks.len()).map(move |b| (a, b)))
            .filter(|&(a, b)| sees(&q_chunks[a], &k_chunks[b]))
            .collect();
        let mut plans = Vec::new();
        while !pairs.is_empty() {
            // Greedily, the pairs whose query and key chunks both come after the last one taken.
            let mut chain: Vec<(usize, usize)> = Vec::new();
            pairs.retain(|&(a, b)| {
                let take = chain.last().is_none_or(|&(la, lb)| a > la && b > lb);
                if take {
                    chain.push((a, b));
                }
                !take
            });
            plans.push(chain_plan(&chain, &q_chunks, &k_chunks, mask.causal));
        }
        plans
    }

    /// Rank `rank`'s attention at step `step` with no window and no ALiBi, one call, or `None` when none
    /// of its queries sees any of the keys it holds then (contiguous shards under a causal mask, keys of
    /// a later rank).
    pub fn step_plan(&self, rank: usize, step: usize, causal: bool) -> Option<StepPlan> {
        let source = self.source(rank, step);
        let (len_q, len_k) = (self.shard_len(rank), self.shard_len(source));
        let all = |causal| Some(StepPlan { causal, sequences: vec![(0..len_q, 0..len_k)], shifts: None });
        if !causal {
            return all(false);
        }
        if source == rank {
            // The shard's own keys: its chunks keep their global order in the shard (head before
            // tail), so the causal mask over the shard is the global one.
            return all(true);
        }
        match self.layout {
            ShardLayout::Contiguous if source < rank => all(false),
            ShardLayout::Contiguous => None,
            ShardLayout::ZigZag => {
                // The head chunks: chunk `rank` of the queries, chunk `source` of the keys.
                let (head_q, head_k) = (self.chunk(rank).len(), self.chunk(source).len());
                let sequences = if source < rank {
                    // Every query is after the source's head chunk and before its tail chunk.
                    vec![(0..len_q, 0..head_k), (len_q..len_q, head_k..len_k)]
                } else {
                    // The head chunk's queries are before both of the source's chunks, the tail's after.
                    vec![(0..head_q, 0..0), (head_q..len_q, 0..len_k)]
                };
                Some(StepPlan { causal: false, sequences, shifts: None })
            }
        }
    }
}

/// One positional call: the chain's chunk pairs (query and key chunk indices, both increasing) as
/// sequences with their shifts, the tokens between them as sequences without keys or without queries.
fn chain_plan(
    chain: &[(usize, usize)],
    q_chunks: &[Range<usize>],
    k_chunks: &[Range<usize>],
    causal: bool,
) -> StepPlan {
    // Local ranges: a shard lays its chunks out in order.
    let local = |chunks: &[Range<usize>], i: usize| {
        let start: usize = chunks[..i].iter().map(|c| c.len()).sum();
        start..start + chunks[i].len()
    };
    let (len_q, len_k) = (q_chunks.iter().map(|c| c.len()).sum(), k_chunks.iter().map(|c| c.len()).sum());
    let mut sequences = Vec::new();
    let mut shifts = Vec::new();
    // The tokens from `at` to `to` as a sequence without keys and one without queries (where not empty).
    let pad = |sequences: &mut Vec<(Range<usize>, Range<usize>)>,
               shifts: &mut Vec<i32>,
               at: (usize, usize),
               to: (usize, usize)| {
        if at.0 < to.0 {
            sequences.push((at.0..to.0, at.1..at.1));
            shifts.push(0);
        }
        if at.1 < to.1 {
            sequences.push((to.0..to.0, at.1..to.1));
            shifts.push(0);
        }
    };
    let mut at = (0, 0);
    for &(a, b) in chain {
        let (qs, ks) = (local(q_chunks, a), local(k_chunks, b));
        pad(&mut sequences, &mut shifts, at, (qs.start, ks.start));
        at = (qs.end, ks.end);
        sequences.push((qs, ks));
        shifts.push(q_chunks[a].end as i32 - k_chunks[b].end as i32);
    }
    pad(&mut sequences, &mut shifts, at, (len_q, len_k));
    StepPlan { causal, sequences, shifts: Some(shifts) }
}

impl StepPlan {
    /// The packed call's offsets over `batch` entries laid end to end (entry `b`'s shard at tokens
    /// `b·len_q..` of the queries and `b·len_k..` of the keys): `(cu_seqlens_q, cu_seqlens_k)`.
    pub fn offsets(&self, batch: usize, len_q: usize, len_k: usize) -> (Vec<i32>, Vec<i32>) {
        let mut cu_q = vec![0i32];
        let mut cu_k = vec![0i32];
        for b in 0..batch {
            for (q, k) in &self.sequences {
                cu_q.push((b * len_q + q.end) as i32);
                cu_k.push((b * len_k + k.end) as i32);
            }
        }
        (cu_q, cu_k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (query, key) pair of the whole sequence's mask is computed at exactly one step of exactly
    /// one rank, with its distance to the diagonal where the mask is positional, and no other pair is;
    /// no call holds a chunk pair that sees nothing.
    fn covers_the_mask_once(seqlen: usize, world: usize, layout: ShardLayout, mask: RingMask) {
        let sh = Sharding { seqlen, world, layout };
        let whole = mask.whole(seqlen);
        let mut seen = vec![0u8; seqlen * seqlen];
        for rank in 0..world {
            let q_global: Vec<usize> = sh.chunks(rank).into_iter().flatten().collect();
            assert_eq!(q_global.len(), sh.shard_len(rank));
            for step in 0..world {
                let k_global: Vec<usize> = sh.chunks(sh.source(rank, step)).into_iter().flatten().collect();
                for plan in sh.step_plans(rank, step, &mask) {
                    assert_eq!(plan.sequences.first().unwrap().0.start, 0);
                    assert_eq!(plan.sequences.last().unwrap().0.end, q_global.len());
                    assert_eq!(plan.sequences.last().unwrap().1.end, k_global.len());
                    for w in plan.sequences.windows(2) {
                        assert_eq!((w[0].0.end, w[0].1.end), (w[1].0.start, w[1].1.start));
                    }
                    let shifts = plan.shifts.clone().unwrap_or(vec![0; plan.sequences.len()]);
                    assert_eq!(shifts.len(), plan.sequences.len());
                    assert_eq!(plan.shifts.is_some(), mask.positional());
                    let w = |w: Option<usize>| w.map(|w| w as u32);
                    let (left, right) = if mask.positional() { (w(mask.left), w(mask.right)) } else { (None, None) };
                    let call = Mask::shifted_call(1 << 20, 1 << 20, plan.causal, left, right);
                    for ((qs, ks), &shift) in plan.sequences.iter().zip(&shifts) {
                        // The sequence's mask as the packed kernels apply it.
                        let m = call.of_sequence(qs.len() as u32, ks.len() as u32, shift);
                        let mut any = false;
                        for (a, i) in qs.clone().enumerate() {
                            for (c, j) in ks.clone().enumerate() {
                                if !m.visible(a as u32, c as u32) {
                                    continue;
                                }
                                any = true;
                                let (gi, gj) = (q_global[i], k_global[j]);
                                seen[gi * seqlen + gj] += 1;
                                if mask.positional() {
                                    assert_eq!(a as i64 + m.offset() as i64 - c as i64, gi as i64 - gj as i64);
                                }
                            }
                        }
                        assert!(any || qs.is_empty() || ks.is_empty() || !mask.positional(), "{mask:?} {plan:?}");
                    }
                }
            }
        }
        for i in 0..seqlen {
            for j in 0..seqlen {
                let want = u8::from(whole.visible(i as u32, j as u32));
                assert_eq!(seen[i * seqlen + j], want, "seqlen {seqlen} world {world} {layout:?} {mask:?} ({i}, {j})");
            }
        }
    }

    #[test]
    fn every_visible_pair_once() {
        let mut masks = Vec::new();
        for causal in [false, true] {
            for (left, right) in
                [(None, None), (Some(0), None), (Some(3), Some(5)), (None, Some(2)), (Some(9), Some(0))]
            {
                for alibi in [false, true] {
                    masks.push(RingMask { causal, left, right: if causal { Some(0) } else { right }, alibi });
                }
            }
        }
        for world in 1..=5 {
            for seqlen in [world * 2, 2 * world + 1, 17, 40, 41] {
                for layout in [ShardLayout::Contiguous, ShardLayout::ZigZag] {
                    for mask in &masks {
                        covers_the_mask_once(seqlen, world, layout, *mask);
                    }
                }
            }
        }
    }

    /// A window narrower than a chunk leaves a rank work at three steps at most (its own keys and its
    /// chunks' neighbours'), and the calls per step stay within three (two under a causal mask).
    #[test]
    fn windows_skip_steps_and_calls_stay_few() {
        let sh = Sharding { seqlen: 8000, world: 4, layout: ShardLayout::ZigZag };
        let causal = RingMask { causal: true, left: Some(100), right: Some(0), alibi: false };
        let full = RingMask { causal: false, left: None, right: None, alibi: true };
        for rank in 0..4 {
            let steps: Vec<usize> = (0..4).map(|s| sh.step_plans(rank, s, &causal).len()).collect();
            assert!(steps[0] >= 1 && steps.iter().all(|&n| n <= 2), "{steps:?}");
            assert!(steps.iter().filter(|&&n| n > 0).count() <= 3, "{steps:?}");
            assert!((0..4).all(|s| sh.step_plans(rank, s, &full).len() == 3));
        }
    }

    #[test]
    fn chunks_tile_the_sequence() {
        let sh = Sharding { seqlen: 23, world: 3, layout: ShardLayout::ZigZag };
        let mut all: Vec<usize> = (0..3).flat_map(|r| sh.chunks(r).into_iter().flatten()).collect();
        all.sort();
        assert_eq!(all, (0..23).collect::<Vec<_>>());
        assert_eq!(sh.chunks(0), vec![0..4, 20..23]);
        assert_eq!(sh.max_shard_len(), 8);
    }

    #[test]
    fn zigzag_balances_causal_work() {
        let sh = Sharding { seqlen: 64, world: 4, layout: ShardLayout::ZigZag };
        let work = |rank| -> Vec<usize> {
            (0..4)
                .map(|s| {
                    sh.step_plan(rank, s, true).map_or(0, |p| {
                        p.sequences
                            .iter()
                            .map(|(q, k)| if p.causal { q.len() * (q.len() + 1) / 2 } else { q.len() * k.len() })
                            .sum()
                    })
                })
                .collect()
        };
        for r in 1..4 {
            assert_eq!(work(r), work(0));
        }
    }

    #[test]
    fn offsets_repeat_per_batch_entry() {
        let plan = StepPlan { causal: false, sequences: vec![(0..3, 0..0), (3..5, 0..4)], shifts: None };
        assert_eq!(plan.offsets(2, 5, 4), (vec![0, 3, 5, 8, 10], vec![0, 0, 4, 4, 8]));
    }
}
