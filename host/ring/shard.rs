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
//! Each step's attention is one packed (varlen) call whose sequences tile the shard's queries and the
//! held keys in order ([`StepPlan::sequences`]); a sequence with no keys gives its rows LSE `-inf`, which
//! the merge weighs 0, and one with no queries leaves its keys' gradients 0.

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

/// One step's attention for one batch entry: whether the call is causal, and its sequences as
/// (query range, key range) in the shard's local token indices. The query ranges tile `0..seqlen_q`
/// and the key ranges `0..seqlen_k`, in order, as a packed call's offsets must.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    pub causal: bool,
    pub sequences: Vec<(Range<usize>, Range<usize>)>,
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

    /// Rank `rank`'s attention at step `step`, or `None` when none of its queries sees any of the keys
    /// it holds then (contiguous shards under a causal mask, keys of a later rank).
    pub fn step_plan(&self, rank: usize, step: usize, causal: bool) -> Option<StepPlan> {
        let source = self.source(rank, step);
        let (len_q, len_k) = (self.shard_len(rank), self.shard_len(source));
        let all = |causal| Some(StepPlan { causal, sequences: vec![(0..len_q, 0..len_k)] });
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
                Some(StepPlan { causal: false, sequences })
            }
        }
    }
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

    /// Every (query, key) pair of the global causal (or full) mask is computed at exactly one step of
    /// exactly one rank, and no other pair is.
    fn covers_the_mask_once(seqlen: usize, world: usize, layout: ShardLayout, causal: bool) {
        let sh = Sharding { seqlen, world, layout };
        let mut seen = vec![0u8; seqlen * seqlen];
        for rank in 0..world {
            let q_global: Vec<usize> = sh.chunks(rank).into_iter().flatten().collect();
            assert_eq!(q_global.len(), sh.shard_len(rank));
            for step in 0..world {
                let k_global: Vec<usize> = sh.chunks(sh.source(rank, step)).into_iter().flatten().collect();
                let Some(plan) = sh.step_plan(rank, step, causal) else { continue };
                assert_eq!(plan.sequences.first().unwrap().0.start, 0);
                assert_eq!(plan.sequences.last().unwrap().0.end, q_global.len());
                assert_eq!(plan.sequences.last().unwrap().1.end, k_global.len());
                for w in plan.sequences.windows(2) {
                    assert_eq!((w[0].0.end, w[0].1.end), (w[1].0.start, w[1].1.start));
                }
                for (qs, ks) in &plan.sequences {
                    for (a, i) in qs.clone().enumerate() {
                        for (c, j) in ks.clone().enumerate() {
                            // Bottom-right causal within the sequence, as the packed kernels apply it.
                            if plan.causal && c + qs.len() > a + ks.len() {
                                continue;
                            }
                            seen[q_global[i] * seqlen + k_global[j]] += 1;
                        }
                    }
                }
            }
        }
        for i in 0..seqlen {
            for j in 0..seqlen {
                let want = u8::from(!causal || j <= i);
                assert_eq!(seen[i * seqlen + j], want, "seqlen {seqlen} world {world} {layout:?} ({i}, {j})");
            }
        }
    }

    #[test]
    fn every_visible_pair_once() {
        for world in 1..=5 {
            for seqlen in [world * 2, 2 * world + 1, 17, 40, 41] {
                for layout in [ShardLayout::Contiguous, ShardLayout::ZigZag] {
                    for causal in [false, true] {
                        covers_the_mask_once(seqlen, world, layout, causal);
                    }
                }
            }
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
        let plan = StepPlan { causal: false, sequences: vec![(0..3, 0..0), (3..5, 0..4)] };
        assert_eq!(plan.offsets(2, 5, 4), (vec![0, 3, 5, 8, 10], vec![0, 0, 4, 4, 8]));
    }
}
