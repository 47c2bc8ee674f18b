//! The suite's grids. Each is a plain list of `Case`s so that the Rust runner and `peers.py` measure the
//! same shapes; `--quick` keeps every chart's axes but thins the points.

use crate::bench::case::{Case, DTypeName, GridName, Pass};

/// The papers' grid keeps B·N fixed at 16K tokens and the model width at 2048 (H = 2048 / D).
pub const PAPER_TOKENS: usize = 16 * 1024;
pub const PAPER_HIDDEN: usize = 2048;
pub const PAPER_SEQLENS: &[usize] = &[512, 1024, 2048, 4096, 8192, 16384];
pub const PAPER_SEQLENS_QUICK: &[usize] = &[512, 2048, 8192, 16384];
pub const PAPER_HEAD_DIMS: &[usize] = &[64, 128, 256];

/// Long context: one sequence, 16 heads of 128. The standard path needs 2·16·N² bytes of scores, 128 GiB
/// at N = 64K, so it runs out on an 80 GB card there while the fused path needs O(N).
pub const LONG_HEADS: usize = 16;
pub const LONG_HEAD_DIM: usize = 128;
pub const LONG_SEQLENS: &[usize] = &[16384, 32768, 65536, 131072];
/// Past 128K only the causal case, to keep the whole suite inside its time budget.
pub const LONG_CAUSAL_EXTRA: &[usize] = &[262144];

/// Decode: a few new query rows against a KV cache (not causal: a row of a decode step sees the whole
/// cache, and PyTorch's causal mask is top-left aligned, which would differ from ours for n_q < n_k).
pub const DECODE_HEADS: usize = 16;
pub const DECODE_HEAD_DIM: usize = 128;
pub const DECODE_SEQLENS_Q: &[usize] = &[1, 4, 16];
pub const DECODE_SEQLENS_K: &[usize] = &[1024, 4096, 16384, 65536];
pub const DECODE_BATCHES: &[usize] = &[1, 8, 64];

/// What the command line narrows a grid to. Empty lists mean "the grid's own values".
#[derive(Debug, Clone, Default)]
pub struct GridFilter {
    pub quick: bool,
    pub head_dims: Vec<usize>,
    /// Sequence lengths (N for the paper and long grids, the KV length for decode).
    pub seqlens: Vec<usize>,
    /// `None`: both.
    pub causal: Option<bool>,
    pub passes: Vec<Pass>,
}

impl GridFilter {
    fn keeps_d(&self, d: usize) -> bool {
        self.head_dims.is_empty() || self.head_dims.contains(&d)
    }
    fn keeps_n(&self, n: usize) -> bool {
        self.seqlens.is_empty() || self.seqlens.contains(&n)
    }
    fn causal_values(&self) -> Vec<bool> {
        match self.causal {
            Some(c) => vec![c],
            None => vec![false, true],
        }
    }
    fn passes(&self) -> Vec<Pass> {
        if self.passes.is_empty() {
            vec![Pass::Fwd]
        } else {
            self.passes.clone()
        }
    }
}

/// The cases of one grid, in the order they are run.
pub fn cases(grid: GridName, dtype: DTypeName, f: &GridFilter) -> Vec<Case> {
    let mut out = Vec::new();
    for pass in f.passes() {
        let with_pass = |c: Case| Case { pass, ..c };
        match grid {
            GridName::Paper => {
                let seqlens = if f.quick { PAPER_SEQLENS_QUICK } else { PAPER_SEQLENS };
                for &d in PAPER_HEAD_DIMS.iter().filter(|&&d| f.keeps_d(d)) {
                    for causal in f.causal_values() {
                        for &n in seqlens.iter().filter(|&&n| f.keeps_n(n)) {
                            let (b, h) = (PAPER_TOKENS / n, PAPER_HIDDEN / d);
                            out.push(with_pass(Case::fwd(grid, b, h, n, d, causal, dtype)));
                        }
                    }
                }
            }
            GridName::Long => {
                if !f.keeps_d(LONG_HEAD_DIM) {
                    continue;
                }
                for causal in f.causal_values() {
                    // Quick mode keeps the lengths (the OOM point is the chart's message) but not 256K.
                    let extra = if causal && !f.quick { LONG_CAUSAL_EXTRA } else { &[] };
                    for &n in LONG_SEQLENS.iter().chain(extra).filter(|&&n| f.keeps_n(n)) {
                        out.push(with_pass(Case::fwd(grid, 1, LONG_HEADS, n, LONG_HEAD_DIM, causal, dtype)));
                    }
                }
            }
            GridName::Decode => {
                if !f.keeps_d(DECODE_HEAD_DIM) || f.causal == Some(true) {
                    continue;
                }
                let (nqs, bs): (&[usize], &[usize]) =
                    if f.quick { (&[1, 16], &[1, 64]) } else { (DECODE_SEQLENS_Q, DECODE_BATCHES) };
                for &b in bs {
                    for &nq in nqs {
                        for &nk in DECODE_SEQLENS_K.iter().filter(|&&n| f.keeps_n(n)) {
                            let c = Case::fwd(grid, b, DECODE_HEADS, nk, DECODE_HEAD_DIM, false, dtype);
                            out.push(with_pass(Case { n_q: nq, ..c }));
                        }
                    }
                }
            }
            GridName::Custom => {}
        }
    }
    out
}

/// Cases from `B,H,N,D` shapes given on the command line (self-attention, MHA), each causal as filtered.
pub fn custom_cases(shapes: &[[usize; 4]], dtype: DTypeName, f: &GridFilter) -> Vec<Case> {
    let mut out = Vec::new();
    for pass in f.passes() {
        for &[b, h, n, d] in shapes {
            for causal in f.causal_values() {
                out.push(Case { pass, ..Case::fwd(GridName::Custom, b, h, n, d, causal, dtype) });
            }
        }
    }
    out
}

/// Parse `B,H,N,D` (for example `4,16,2048,128`).
pub fn parse_shape(s: &str) -> Result<[usize; 4], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 4 {
        return Err(format!("shape '{s}': expected four comma-separated numbers B,H,N,D"));
    }
    let mut out = [0usize; 4];
    for (slot, (p, name)) in out.iter_mut().zip(parts.iter().zip(["B", "H", "N", "D"])) {
        *slot = p.parse().map_err(|_| format!("shape '{s}': {name} = '{p}' is not a whole number"))?;
        if *slot == 0 {
            return Err(format!("shape '{s}': {name} must be at least 1"));
        }
    }
    Ok(out)
}

/// `"128"` → (128, 128); `"192v128"` → (192, 128): the head dims of Q/K and of V, as the timing examples'
/// `--dims` and the cold-start children take them.
pub fn parse_dims(s: &str) -> Result<(usize, usize), String> {
    let bad = |e: std::num::ParseIntError| format!("head dims {s:?}: {e}");
    match s.split_once('v') {
        Some((d, dv)) => Ok((d.parse().map_err(bad)?, dv.parse().map_err(bad)?)),
        None => s.parse().map(|d| (d, d)).map_err(bad),
    }
}

/// Parse a length such as `4096`, `16K` or `1M` (K = 1024).
pub fn parse_len(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1024),
        Some('m' | 'M') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    digits.parse::<usize>().map(|v| v * mult).map_err(|_| format!("'{s}' is not a length (e.g. 4096, 16K)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(grid: GridName, quick: bool) -> Vec<Case> {
        cases(grid, DTypeName::Bf16, &GridFilter { quick, ..GridFilter::default() })
    }

    #[test]
    fn paper_grid_keeps_tokens_and_width() {
        let c = all(GridName::Paper, false);
        assert_eq!(c.len(), PAPER_SEQLENS.len() * PAPER_HEAD_DIMS.len() * 2);
        for case in &c {
            assert_eq!(case.b * case.n_q, PAPER_TOKENS);
            assert_eq!(case.h * case.d, PAPER_HIDDEN);
            assert_eq!((case.n_q, case.h_kv, case.pass), (case.n_k, case.h, Pass::Fwd));
        }
        // Same token count and width: the FLOPs grow linearly with N.
        let first = &c[0];
        let n16k = c.iter().find(|x| x.d == first.d && x.causal == first.causal && x.n_q == 16384).unwrap();
        assert_eq!(n16k.flops() / first.flops(), 16384.0 / first.n_q as f64);
        assert!(all(GridName::Paper, true).len() < c.len());
    }

    #[test]
    fn long_grid_reaches_past_the_standard_paths_memory() {
        let c = all(GridName::Long, false);
        assert!(c.iter().all(|x| x.b == 1 && x.h == LONG_HEADS && x.d == LONG_HEAD_DIM));
        let ns: Vec<usize> = c.iter().filter(|x| !x.causal).map(|x| x.n_q).collect();
        assert_eq!(ns, LONG_SEQLENS);
        assert!(c.iter().any(|x| x.causal && x.n_q == 262144));
        // 2 bytes · 16 heads · N² at 64K is 128 GiB: more than an 80 GB card.
        let s64k = 2 * 16 * 65536usize * 65536;
        assert!(s64k > 80 << 30);
    }

    #[test]
    fn decode_grid_spans_queries_cache_and_batch() {
        let c = all(GridName::Decode, false);
        assert_eq!(c.len(), DECODE_SEQLENS_Q.len() * DECODE_SEQLENS_K.len() * DECODE_BATCHES.len());
        assert!(c.iter().all(|x| !x.causal && x.n_q <= 16 && x.n_k >= 1024));
        assert_eq!(c.iter().map(|x| x.b).max(), Some(64));
        assert_eq!(c.iter().map(|x| x.n_k).max(), Some(65536));
        assert!(!all(GridName::Decode, true).is_empty());
    }

    #[test]
    fn filters_narrow_the_grid() {
        let f = GridFilter {
            head_dims: vec![128],
            seqlens: vec![2048],
            causal: Some(true),
            passes: vec![Pass::Fwd, Pass::Bwd],
            ..Default::default()
        };
        let c = cases(GridName::Paper, DTypeName::F16, &f);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|x| x.d == 128 && x.n_q == 2048 && x.causal && x.dtype == DTypeName::F16));
        assert_eq!(c.iter().filter(|x| x.pass == Pass::Bwd).count(), 1);
        assert!(cases(GridName::Decode, DTypeName::Bf16, &GridFilter { causal: Some(true), ..Default::default() })
            .is_empty());
    }

    #[test]
    fn shapes_and_lengths_parse() {
        assert_eq!(parse_shape("4,16,2048,128"), Ok([4, 16, 2048, 128]));
        assert!(parse_shape("4,16,2048").is_err());
        assert!(parse_shape("4,x,2048,128").unwrap_err().contains("H"));
        assert!(parse_shape("0,1,1,64").is_err());
        assert_eq!(parse_len("16K"), Ok(16384));
        assert_eq!(parse_len("1m"), Ok(1 << 20));
        assert_eq!(parse_len("77"), Ok(77));
        assert!(parse_len("abc").is_err());
        let f = GridFilter { causal: None, ..Default::default() };
        assert_eq!(custom_cases(&[[1, 2, 3, 64]], DTypeName::Bf16, &f).len(), 2);
    }
}
