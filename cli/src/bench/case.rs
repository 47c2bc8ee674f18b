//! What one benchmark measurement is about (`Case`) and what it found (`Record`). A `Record` is also the
//! JSON-lines row that `benches/peers.py` prints, so both sides share one set of column names.

use ironflash::dtype::DType;
use ironflash::options::AttnOptions;
use ironflash::problem::AttnProblem;
use serde::{Deserialize, Serialize};

/// Forward or backward. The backward FLOP count is 2.5x the forward's (two matmuls forward, five backward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    Fwd,
    Bwd,
}

impl Pass {
    pub fn name(self) -> &'static str {
        match self {
            Pass::Fwd => "fwd",
            Pass::Bwd => "bwd",
        }
    }
}

/// Which grid a case belongs to; the report has one section per grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GridName {
    /// The FlashAttention papers' grid: 16K tokens, hidden 2048, N 512..16K, D 64/128/256.
    Paper,
    /// B=1, H=16, D=128, N 16K..256K (256K causal only): memory O(N) against the standard path's O(N²).
    Long,
    /// Decode: seqlen_q 1..16 against a KV cache of 1K..64K, batch 1..64.
    Decode,
    /// Shapes given on the command line (`--shape`), or the main job's short timing.
    #[value(skip)]
    Custom,
}

impl GridName {
    pub fn name(self) -> &'static str {
        match self {
            GridName::Paper => "paper",
            GridName::Long => "long",
            GridName::Decode => "decode",
            GridName::Custom => "custom",
        }
    }
}

/// The implementations this crate runs itself; peers (PyTorch) arrive as records from `peers.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Impl {
    /// ironflash's fused FlashAttention kernel (the backward in its fast mode: dQ by atomics).
    Fused,
    /// The fused backward in deterministic mode (bitwise reproducible dQ); backward rows only, the
    /// forward has no such mode.
    FusedDet,
    /// The cuBLAS + row-softmax baseline that materialises the N x N scores.
    Standard,
    /// The tiled, multithreaded CPU path (small shapes only).
    Cpu,
    /// PyTorch SDPA backends and a naive matmul-softmax-matmul, through `benches/peers.py`.
    Peers,
}

impl Impl {
    /// The name in the `impl` column.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Fused => "ironflash-fused",
            Impl::FusedDet => "ironflash-fused-det",
            Impl::Standard => "ironflash-standard",
            Impl::Cpu => "ironflash-cpu",
            Impl::Peers => "torch",
        }
    }
}

/// One shape to measure. Heads are query heads; `heads_kv` < `heads` is GQA/MQA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Case {
    pub grid: GridName,
    pub pass: Pass,
    pub b: usize,
    pub h: usize,
    pub h_kv: usize,
    pub n_q: usize,
    pub n_k: usize,
    pub d: usize,
    pub causal: bool,
    pub dtype: DTypeName,
}

/// `DType` as it appears in JSON (`"bf16"`, `"f16"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DTypeName {
    Bf16,
    F16,
}

impl DTypeName {
    pub fn dtype(self) -> DType {
        match self {
            DTypeName::Bf16 => DType::BF16,
            DTypeName::F16 => DType::F16,
        }
    }
    pub fn name(self) -> &'static str {
        self.dtype().name()
    }
}

impl Case {
    /// A self-attention forward case (`n_q == n_k`, `h_kv == h`).
    pub fn fwd(grid: GridName, b: usize, h: usize, n: usize, d: usize, causal: bool, dtype: DTypeName) -> Case {
        Case { grid, pass: Pass::Fwd, b, h, h_kv: h, n_q: n, n_k: n, d, causal, dtype }
    }

    /// The problem as the library validates it (default softmax scale).
    pub fn problem(&self) -> AttnProblem {
        let opts = AttnOptions { causal: self.causal, ..AttnOptions::default() };
        AttnProblem::contiguous([self.b, self.n_q, self.n_k, self.h, self.h_kv, self.d], &opts)
            .expect("a benchmark case is a valid problem")
    }

    /// FLOPs as the FlashAttention papers count them: forward 4·B·H·Nq·Nk·D (halved when causal), backward
    /// 2.5x that (`AttnProblem::{forward,backward}_flops`).
    pub fn flops(&self) -> f64 {
        let p = self.problem();
        match self.pass {
            Pass::Fwd => p.forward_flops(),
            Pass::Bwd => p.backward_flops(),
        }
    }

    pub fn q_shape(&self) -> [usize; 4] {
        [self.b, self.n_q, self.h, self.d]
    }
    pub fn kv_shape(&self) -> [usize; 4] {
        [self.b, self.n_k, self.h_kv, self.d]
    }

    /// Bytes of one input set (q, k, v) in device memory.
    pub fn input_bytes(&self) -> usize {
        let elems = self.b * self.d * (self.n_q * self.h + 2 * self.n_k * self.h_kv);
        elems * self.dtype.dtype().size_bytes()
    }

    /// The fewest bytes a forward call must move through device memory: q, k and v read once, O and the
    /// f32 LSE written once. Decode is bound by this, not by FLOPs, so the table shows bytes/time too.
    pub fn forward_min_bytes(&self) -> usize {
        let o = self.b * self.n_q * self.h * self.d * self.dtype.dtype().size_bytes();
        self.input_bytes() + o + 4 * self.b * self.h * self.n_q
    }

    /// "N" as a short label: `4096`, or `16/65536` when the lengths differ.
    pub fn n_label(&self) -> String {
        if self.n_q == self.n_k {
            self.n_q.to_string()
        } else {
            format!("{}/{}", self.n_q, self.n_k)
        }
    }
}

/// How a record's `extra_mem_bytes` was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemMethod {
    /// High-water mark of the device's stream-ordered memory pool during one call, minus what was in use
    /// before it: every allocation the call makes through cudarc (O, LSE, score matrix, workspaces).
    /// cuBLAS's per-handle workspace is allocated outside the pool and is not included.
    PoolHighWater,
    /// `torch.cuda.max_memory_allocated()` during one call minus the allocation before it.
    TorchPeak,
    /// Computed from the sizes the implementation allocates (used when no measurement is possible).
    Computed,
    /// Host memory, not measured.
    None,
}

/// Outcome of one case for one implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Ran out of device memory (the standard path at long N, by design).
    Oom,
    /// The implementation does not support this case (e.g. a backend's head-dim limit).
    Unsupported,
    /// Failed for another reason; `note` says why.
    Error,
}

/// One row of the results: JSON lines, the Markdown table and the plots are all made from these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "impl")]
    pub impl_name: String,
    pub grid: GridName,
    pub pass: Pass,
    pub b: usize,
    pub h: usize,
    pub h_kv: usize,
    pub n_q: usize,
    pub n_k: usize,
    pub d: usize,
    pub causal: bool,
    pub dtype: DTypeName,
    pub status: Status,
    /// Median over the repetitions, in milliseconds.
    pub ms: Option<f64>,
    pub ms_min: Option<f64>,
    pub ms_max: Option<f64>,
    pub reps: usize,
    pub tflops: Option<f64>,
    /// `tflops` over the device's measured bf16 matmul peak (filled in by the suite for every row).
    pub peak_frac: Option<f64>,
    /// Forward's minimum bytes (`Case::forward_min_bytes`) over the median time, in GB/s (filled in by
    /// the suite for every forward row).
    #[serde(default)]
    pub gb_s: Option<f64>,
    pub extra_mem_bytes: Option<u64>,
    pub mem_method: MemMethod,
    /// Why a case failed or was skipped, or a remark on how it was timed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Record {
    /// A record with the case's columns and nothing measured yet.
    pub fn new(impl_name: &str, case: &Case, status: Status) -> Record {
        Record {
            impl_name: impl_name.to_string(),
            grid: case.grid,
            pass: case.pass,
            b: case.b,
            h: case.h,
            h_kv: case.h_kv,
            n_q: case.n_q,
            n_k: case.n_k,
            d: case.d,
            causal: case.causal,
            dtype: case.dtype,
            status,
            ms: None,
            ms_min: None,
            ms_max: None,
            reps: 0,
            tflops: None,
            peak_frac: None,
            gb_s: None,
            extra_mem_bytes: None,
            mem_method: MemMethod::None,
            note: String::new(),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Record {
        self.note = note.into();
        self
    }

    /// The case this record measured.
    pub fn case(&self) -> Case {
        Case {
            grid: self.grid,
            pass: self.pass,
            b: self.b,
            h: self.h,
            h_kv: self.h_kv,
            n_q: self.n_q,
            n_k: self.n_k,
            d: self.d,
            causal: self.causal,
            dtype: self.dtype,
        }
    }

    /// Fill the timing columns from the per-repetition times (ms) and the case's FLOP count.
    pub fn set_timing(&mut self, times_ms: &[f64]) {
        let Some(s) = crate::bench::stats::Summary::of(times_ms) else { return };
        self.ms = Some(s.median);
        self.ms_min = Some(s.min);
        self.ms_max = Some(s.max);
        self.reps = times_ms.len();
        self.tflops = Some(self.case().flops() / (s.median * 1e-3) / 1e12);
    }

    /// Set the columns derived from the time: `peak_frac` from the measured peak (TFLOP/s; CPU rows keep
    /// none, a GPU peak means nothing there) and `gb_s` (forward rows).
    pub fn set_derived(&mut self, peak_tflops: Option<f64>) {
        self.peak_frac = match (self.tflops, peak_tflops) {
            (Some(t), Some(p)) if p > 0.0 && self.mem_method != MemMethod::None => Some(t / p),
            _ => None,
        };
        self.gb_s = match (self.ms, self.pass) {
            (Some(ms), Pass::Fwd) if ms > 0.0 => Some(self.case().forward_min_bytes() as f64 / (ms * 1e-3) / 1e9),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_follow_the_papers_formula() {
        let c = Case::fwd(GridName::Paper, 8, 16, 2048, 128, false, DTypeName::Bf16);
        assert_eq!(c.flops(), 4.0 * 8.0 * 16.0 * 2048.0 * 2048.0 * 128.0);
        let causal = Case { causal: true, ..c };
        assert_eq!(causal.flops(), c.flops() / 2.0);
        let bwd = Case { pass: Pass::Bwd, ..c };
        assert_eq!(bwd.flops(), 2.5 * c.flops());
        let decode = Case { n_q: 1, n_k: 65536, ..c };
        assert_eq!(decode.flops(), 4.0 * 8.0 * 16.0 * 65536.0 * 128.0);
    }

    #[test]
    fn timing_fills_tflops_from_the_median() {
        let c = Case::fwd(GridName::Custom, 1, 1, 1024, 64, false, DTypeName::Bf16);
        let mut r = Record::new("x", &c, Status::Ok);
        r.set_timing(&[2.0, 1.0, 3.0]);
        assert_eq!((r.ms, r.ms_min, r.ms_max, r.reps), (Some(2.0), Some(1.0), Some(3.0), 3));
        let want = c.flops() / 2e-3 / 1e12;
        assert!((r.tflops.unwrap() - want).abs() < 1e-12);
        r.mem_method = MemMethod::PoolHighWater;
        r.set_derived(Some(want * 4.0));
        assert!((r.peak_frac.unwrap() - 0.25).abs() < 1e-12);
        let bytes = (1024 * 64 * 2 * 4 + 1024 * 4) as f64;
        assert!((r.gb_s.unwrap() - bytes / 2e-3 / 1e9).abs() < 1e-9);
    }

    #[test]
    fn input_bytes_count_gqa_kv_heads() {
        let c = Case { h_kv: 2, ..Case::fwd(GridName::Custom, 2, 8, 100, 64, false, DTypeName::F16) };
        assert_eq!(c.input_bytes(), 2 * 64 * (100 * 8 + 2 * 100 * 2) * 2);
    }
}
