//! Runs one case on one of ironflash's own implementations and turns what happened into a `Record`:
//! timings, peak extra memory, or why it could not run (OOM is a result, not a failure).

use crate::bench::case::{Case, DTypeName, Impl, MemMethod, Pass, Record, Status};
use crate::bench::timing::{is_oom, time_calls, PoolWatermark, RandomSource};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use ironflash::device::Device;
use ironflash::dtype::Element;
use ironflash::error::{Arg, Result};
use ironflash::gpu::{self, DeviceTensor, GpuForwardOutput};
use ironflash::layout::Layout;
use ironflash::options::AttnOptions;
use ironflash::tensor::HostTensor;
use std::time::Instant;

/// How many repetitions a case gets: enough to fill `target_ms`, within `[min_reps, max_reps]`, after
/// `warmup` untimed calls (module load, allocator growth, cuBLAS heuristics stay out of the numbers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepPolicy {
    pub warmup: usize,
    pub min_reps: usize,
    pub max_reps: usize,
    pub target_ms: f64,
}

impl RepPolicy {
    /// The full suite: ~0.4 s of timed calls per case.
    pub const FULL: RepPolicy = RepPolicy { warmup: 2, min_reps: 5, max_reps: 50, target_ms: 400.0 };
    /// `--quick`: ~0.1 s per case.
    pub const QUICK: RepPolicy = RepPolicy { warmup: 1, min_reps: 3, max_reps: 20, target_ms: 100.0 };
    /// The CPU path: a second or so per case.
    pub const CPU: RepPolicy = RepPolicy { warmup: 1, min_reps: 1, max_reps: 5, target_ms: 1000.0 };
    /// The CPU path under `--quick`.
    pub const QUICK_CPU: RepPolicy = RepPolicy { warmup: 1, min_reps: 1, max_reps: 3, target_ms: 300.0 };

    /// Repetitions for a call that took `one_ms`.
    pub fn reps_for(&self, one_ms: f64) -> usize {
        let want = if one_ms > 0.0 { (self.target_ms / one_ms).ceil() } else { self.max_reps as f64 };
        (want as usize).clamp(self.min_reps, self.max_reps.max(self.min_reps))
    }
}

/// Input sets that rotate so that together they exceed the L2 cache twice over: the cache never holds
/// the next call's inputs, as it would not in a model.
pub fn rotation_sets(case: &Case, l2_bytes: usize, free_bytes: usize) -> usize {
    rotation_sets_of(case.input_bytes(), l2_bytes, free_bytes)
}

/// As [`rotation_sets`] for sets of `one` bytes each (a backward set also holds O, dO, the LSE and, for
/// the standard path, P).
pub fn rotation_sets_of(one: usize, l2_bytes: usize, free_bytes: usize) -> usize {
    let one = one.max(1);
    let want = (2 * l2_bytes).div_ceil(one).clamp(1, 64);
    // Never let rotation itself push a case out of memory: keep the inputs under a quarter of what is free.
    let fit = (free_bytes / 4 / one).max(1);
    want.min(fit)
}

/// Run one case on the GPU.
pub fn run_gpu_case(dev: &Device, imp: Impl, case: &Case, policy: &RepPolicy) -> Record {
    let record = match case.dtype {
        DTypeName::Bf16 => run_gpu_typed::<bf16>(dev, imp, case, policy),
        DTypeName::F16 => run_gpu_typed::<f16>(dev, imp, case, policy),
    };
    // The case's buffers were freed stream-ordered; wait for that and hand the memory back, so that the
    // next case and the peers (another process) start from an empty pool.
    if dev.synchronize().is_ok() {
        if let Some(pool) = PoolWatermark::new(dev) {
            let _ = pool.trim();
        }
    }
    record
}

/// The signature both GPU forward paths share.
type ForwardFn<T> =
    fn(&Device, &DeviceTensor<T>, &DeviceTensor<T>, &DeviceTensor<T>, &AttnOptions) -> Result<GpuForwardOutput<T>>;

struct InputSet<T: Element> {
    q: DeviceTensor<T>,
    k: DeviceTensor<T>,
    v: DeviceTensor<T>,
}

fn failed(imp: Impl, case: &Case, e: &ironflash::Error) -> Record {
    let status = if is_oom(e) { Status::Oom } else { Status::Error };
    Record::new(imp.name(), case, status).with_note(e.to_string())
}

fn run_gpu_typed<T: Element>(dev: &Device, imp: Impl, case: &Case, policy: &RepPolicy) -> Record {
    if case.pass == Pass::Bwd {
        return run_gpu_backward::<T>(dev, imp, case, policy);
    }
    let call: ForwardFn<T> = match imp {
        Impl::Fused => gpu::flash_forward::<T>,
        Impl::Standard => gpu::standard_forward::<T>,
        Impl::FusedDet => {
            return Record::new(imp.name(), case, Status::Unsupported)
                .with_note("the forward has no deterministic mode (it is ironflash-fused)")
        }
        Impl::Cpu | Impl::Peers => unreachable!("run_gpu_case is for the GPU implementations"),
    };
    let opts = AttnOptions { causal: case.causal, ..AttnOptions::default() };
    let free = dev.mem_info().map(|(free, _)| free).unwrap_or(0);
    let sets = make_sets::<T>(dev, case, rotation_sets(case, dev.info().l2_bytes, free));
    let sets = match sets {
        Ok(s) => s,
        Err(e) => return failed(imp, case, &e).with_note(format!("inputs: {e}")),
    };
    let run = |i: usize| -> Result<GpuForwardOutput<T>> {
        let s = &sets[i % sets.len()];
        call(dev, &s.q, &s.k, &s.v, &opts)
    };

    // First call alone: it loads modules, and it is where the peak memory is read.
    let mut record = match first_call_memory(dev, || run(0).map(drop)) {
        Ok(bytes) => with_memory(Record::new(imp.name(), case, Status::Ok), bytes, || computed_extra_bytes(imp, case)),
        Err(e) => return failed(imp, case, &e),
    };
    match time_rotated(dev, policy, run) {
        Ok(times) => record.set_timing(&times),
        Err(e) => return failed(imp, case, &e),
    }
    if sets.len() > 1 {
        record.note = format!("{} input sets rotated", sets.len());
    }
    record
}

/// One backward input set: the forward's inputs, what that implementation's forward kept (O, LSE; P for
/// the standard path) and an upstream gradient dO.
struct BackwardSet<T: Element> {
    q: DeviceTensor<T>,
    k: DeviceTensor<T>,
    v: DeviceTensor<T>,
    o: DeviceTensor<T>,
    lse: CudaSlice<f32>,
    probs: Option<CudaSlice<T>>,
    d_o: DeviceTensor<T>,
}

/// Bytes of one backward set of `imp`.
pub fn backward_set_bytes(imp: Impl, case: &Case) -> usize {
    let p = case.problem();
    let elem = case.dtype.dtype().size_bytes();
    let q_like = case.b * case.n_q * case.h * case.d * elem;
    let probs = if imp == Impl::Standard { gpu::standard::standard_extra_bytes(&p, case.dtype.dtype()) } else { 0 };
    case.input_bytes() + 2 * q_like + 4 * p.lse_len() + probs
}

/// What a backward call allocates, from the sizes alone: dQ, dK, dV, plus the fused path's f32 dQ
/// accumulator and delta, or the standard path's dP/dS matrix. Used where the pool cannot be read.
pub fn computed_backward_extra_bytes(imp: Impl, case: &Case) -> u64 {
    let p = case.problem();
    let grads = case.input_bytes();
    let extra = match imp {
        Impl::Standard => gpu::standard_backward::standard_backward_extra_bytes(&p, case.dtype.dtype()),
        _ => p.lse_len() * (p.head_dim + 1) * 4,
    };
    (grads + extra) as u64
}

/// A backward case: the sets' forwards run first (untimed); the timed region is the backward call alone.
/// Peak extra memory is the backward call's, over what the sets already hold (for the standard path,
/// the P it reads was allocated by the forward and is named in the note).
fn run_gpu_backward<T: Element>(dev: &Device, imp: Impl, case: &Case, policy: &RepPolicy) -> Record {
    if !matches!(imp, Impl::Fused | Impl::FusedDet | Impl::Standard) {
        return Record::new(imp.name(), case, Status::Error).with_note("not a GPU implementation");
    }
    let opts = AttnOptions { causal: case.causal, deterministic: imp == Impl::FusedDet, ..AttnOptions::default() };
    let free = dev.mem_info().map(|(free, _)| free).unwrap_or(0);
    let count = rotation_sets_of(backward_set_bytes(imp, case), dev.info().l2_bytes, free);
    let sets = (|| -> Result<Vec<BackwardSet<T>>> {
        let src = RandomSource::<T>::new(dev, &mut rand::rng())?;
        let tensor = |shape: [usize; 4], salt: u64| -> Result<DeviceTensor<T>> {
            let layout = Layout::contiguous(shape);
            dev.wrap(Arg::Q, src.buffer(dev, layout.numel(), salt)?, layout)
        };
        (0..count as u64)
            .map(|i| {
                let (q, k, v) = (
                    tensor(case.q_shape(), 4 * i)?,
                    tensor(case.kv_shape(), 4 * i + 1)?,
                    tensor(case.kv_shape(), 4 * i + 2)?,
                );
                let d_o = tensor(case.q_shape(), 4 * i + 3)?;
                let (o, lse, probs) = if imp == Impl::Standard {
                    let t = gpu::standard_forward_train(dev, &q, &k, &v, &opts)?;
                    (t.o, t.lse, Some(t.probs))
                } else {
                    let t = gpu::flash_forward(dev, &q, &k, &v, &opts)?;
                    (t.o, t.lse, None)
                };
                Ok(BackwardSet { q, k, v, o, lse, probs, d_o })
            })
            .collect()
    })();
    let sets = match sets {
        Ok(s) => s,
        Err(e) => return failed(imp, case, &e).with_note(format!("forward before the backward: {e}")),
    };
    let run = |i: usize| -> Result<gpu::GpuGradients<T>> {
        let s = &sets[i % sets.len()];
        match &s.probs {
            Some(probs) => gpu::standard_backward(dev, &s.q, &s.k, &s.v, &s.o, probs, &s.d_o, &opts),
            None => gpu::flash_backward(dev, &s.q, &s.k, &s.v, &s.o, &s.lse, &s.d_o, &opts),
        }
    };
    let mut record = match first_call_memory(dev, || run(0).map(drop)) {
        Ok(bytes) => {
            with_memory(Record::new(imp.name(), case, Status::Ok), bytes, || computed_backward_extra_bytes(imp, case))
        }
        Err(e) => return failed(imp, case, &e),
    };
    match time_rotated(dev, policy, run) {
        Ok(times) => record.set_timing(&times),
        Err(e) => return failed(imp, case, &e),
    }
    let mut notes = Vec::new();
    if imp == Impl::Standard {
        let p = case.problem();
        let saved = gpu::standard::standard_extra_bytes(&p, case.dtype.dtype()) as u64;
        notes.push(format!("+ P kept by the forward: {}", crate::bench::report::format_bytes(saved)));
    }
    if sets.len() > 1 {
        notes.push(format!("{} input sets rotated", sets.len()));
    }
    record.note = notes.join("; ");
    record
}

/// The timed calls of a GPU case: a warm-up (at least one call; the last one's time sizes the
/// repetitions), then the policy's repetitions; `run(i)` calls with input set `i` (rotated by the
/// caller; the warm-up from set 1 on).
fn time_rotated<R>(dev: &Device, policy: &RepPolicy, run: impl Fn(usize) -> Result<R>) -> Result<Vec<f64>> {
    let warm = time_calls(dev, policy.warmup.max(1), |i| run(i + 1).map(drop))?;
    let one_ms = warm.last().copied().unwrap_or(0.0);
    time_calls(dev, policy.reps_for(one_ms), |i| run(i).map(drop))
}

/// Runs `call` once, alone, and returns the pool's high-water mark during it over what was in use
/// before (`None` where the pool cannot be read).
fn first_call_memory(dev: &Device, call: impl FnOnce() -> Result<()>) -> Result<Option<u64>> {
    let watermark = PoolWatermark::new(dev);
    dev.synchronize()?;
    let before = match &watermark {
        Some(w) => {
            w.reset()?;
            Some(w.used()?)
        }
        None => None,
    };
    call()?;
    dev.synchronize()?;
    Ok(match (&watermark, before) {
        (Some(w), Some(before)) => Some(w.high()?.saturating_sub(before)),
        _ => None,
    })
}

/// A record's memory columns: measured, or computed where the pool could not be read.
fn with_memory(mut record: Record, measured: Option<u64>, computed: impl FnOnce() -> u64) -> Record {
    match measured {
        Some(bytes) => {
            record.extra_mem_bytes = Some(bytes);
            record.mem_method = MemMethod::PoolHighWater;
        }
        None => {
            record.extra_mem_bytes = Some(computed());
            record.mem_method = MemMethod::Computed;
        }
    }
    record
}

fn make_sets<T: Element>(dev: &Device, case: &Case, count: usize) -> Result<Vec<InputSet<T>>> {
    let src = RandomSource::<T>::new(dev, &mut rand::rng())?;
    let tensor = |shape: [usize; 4], salt: u64| -> Result<DeviceTensor<T>> {
        let layout = Layout::contiguous(shape);
        dev.wrap(Arg::Q, src.buffer(dev, layout.numel(), salt)?, layout)
    };
    (0..count as u64)
        .map(|i| {
            Ok(InputSet {
                q: tensor(case.q_shape(), 3 * i)?,
                k: tensor(case.kv_shape(), 3 * i + 1)?,
                v: tensor(case.kv_shape(), 3 * i + 2)?,
            })
        })
        .collect()
}

/// What an implementation allocates per call, from the sizes alone: O and the f32 LSE, plus the score
/// matrix for the standard path. Used where the pool cannot be read.
pub fn computed_extra_bytes(imp: Impl, case: &Case) -> u64 {
    let p = case.problem();
    let elem = case.dtype.dtype().size_bytes();
    let out = case.b * case.n_q * case.h * case.d * elem + p.lse_len() * 4;
    let scores = if imp == Impl::Standard { gpu::standard::standard_extra_bytes(&p, case.dtype.dtype()) } else { 0 };
    (out + scores) as u64
}

/// Limits on what the CPU path is asked to run: it is there to show the fallback, not to be swept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuLimits {
    pub max_gflop: f64,
    pub max_input_bytes: usize,
}

impl Default for CpuLimits {
    fn default() -> Self {
        CpuLimits { max_gflop: 40.0, max_input_bytes: 256 << 20 }
    }
}

impl CpuLimits {
    pub fn allows(&self, case: &Case) -> bool {
        case.pass == Pass::Fwd && case.flops() <= self.max_gflop * 1e9 && case.input_bytes() <= self.max_input_bytes
    }
}

/// Run one case on the CPU path, timed with the wall clock.
pub fn run_cpu_case(case: &Case, policy: &RepPolicy) -> Record {
    match case.dtype {
        DTypeName::Bf16 => run_cpu_typed::<bf16>(case, policy),
        DTypeName::F16 => run_cpu_typed::<f16>(case, policy),
    }
}

fn run_cpu_typed<T: Element>(case: &Case, policy: &RepPolicy) -> Record {
    if case.pass == Pass::Bwd {
        return Record::new(Impl::Cpu.name(), case, Status::Unsupported)
            .with_note("the CPU path is not timed backward");
    }
    let mut rng = rand::rng();
    let q = HostTensor::<T>::random(case.q_shape(), 1.0, &mut rng);
    let k = HostTensor::<T>::random(case.kv_shape(), 1.0, &mut rng);
    let v = HostTensor::<T>::random(case.kv_shape(), 1.0, &mut rng);
    let opts = AttnOptions { causal: case.causal, ..AttnOptions::default() };
    let once = || -> Result<f64> {
        let t = Instant::now();
        drop(ironflash::cpu::forward(&q, &k, &v, &opts)?);
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let timed = (|| -> Result<Vec<f64>> {
        let mut last = 0.0;
        for _ in 0..policy.warmup.max(1) {
            last = once()?;
        }
        (0..policy.reps_for(last)).map(|_| once()).collect()
    })();
    let mut record = Record::new(Impl::Cpu.name(), case, Status::Ok);
    match timed {
        Ok(times) => record.set_timing(&times),
        Err(e) => return Record::new(Impl::Cpu.name(), case, Status::Error).with_note(e.to_string()),
    }
    record.note = format!("{} threads, wall clock", rayon::current_num_threads());
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::case::GridName;

    #[test]
    fn reps_fill_the_target_within_bounds() {
        let p = RepPolicy { warmup: 1, min_reps: 3, max_reps: 20, target_ms: 100.0 };
        assert_eq!(p.reps_for(10.0), 10);
        assert_eq!(p.reps_for(0.01), 20);
        assert_eq!(p.reps_for(500.0), 3);
        assert_eq!(p.reps_for(0.0), 20);
    }

    #[test]
    fn rotation_exceeds_l2_but_respects_free_memory() {
        let small = Case::fwd(GridName::Decode, 1, 16, 1024, 128, false, DTypeName::Bf16);
        let l2 = 50 << 20;
        let n = rotation_sets(&small, l2, 80 << 30);
        assert!(n * small.input_bytes() >= 2 * l2, "{n} sets");
        assert_eq!(rotation_sets(&small, l2, small.input_bytes() * 4), 1);
        let big = Case::fwd(GridName::Long, 1, 16, 131072, 128, false, DTypeName::Bf16);
        assert_eq!(rotation_sets(&big, l2, 80 << 30), 1);
    }

    #[test]
    fn computed_memory_counts_the_score_matrix_only_for_standard() {
        let c = Case::fwd(GridName::Long, 1, 16, 65536, 128, false, DTypeName::Bf16);
        let fused = computed_extra_bytes(Impl::Fused, &c);
        let standard = computed_extra_bytes(Impl::Standard, &c);
        assert_eq!(fused, (65536 * 16 * 128 * 2 + 16 * 65536 * 4) as u64);
        assert_eq!(standard - fused, 2 * 16 * 65536u64 * 65536);
    }

    #[test]
    fn backward_sets_and_memory_count_the_square_matrices_only_for_standard() {
        let c = Case { pass: Pass::Bwd, ..Case::fwd(GridName::Paper, 4, 16, 4096, 128, true, DTypeName::Bf16) };
        let q_like = 4 * 4096 * 16 * 128 * 2;
        let lse = 4 * 16 * 4096 * 4;
        let square = 2 * 4 * 16 * 4096usize * 4096;
        let fused = backward_set_bytes(Impl::Fused, &c);
        assert_eq!(fused, c.input_bytes() + 2 * q_like + lse);
        assert_eq!(backward_set_bytes(Impl::Standard, &c) - fused, square);
        assert_eq!(backward_set_bytes(Impl::FusedDet, &c), fused);
        let grads = c.input_bytes() as u64;
        assert_eq!(computed_backward_extra_bytes(Impl::Fused, &c), grads + (lse * 129) as u64);
        assert_eq!(computed_backward_extra_bytes(Impl::Standard, &c), grads + square as u64);
        assert_eq!(rotation_sets_of(fused, 50 << 20, 80 << 30), 1);
        assert_eq!(rotation_sets_of(10 << 20, 50 << 20, 80 << 30), 10);
    }

    #[test]
    fn cpu_limits_keep_small_forward_cases() {
        let lim = CpuLimits::default();
        assert!(lim.allows(&Case::fwd(GridName::Paper, 32, 16, 512, 128, true, DTypeName::Bf16)));
        assert!(!lim.allows(&Case::fwd(GridName::Paper, 1, 16, 16384, 128, false, DTypeName::Bf16)));
        let huge_cache = Case { n_q: 1, ..Case::fwd(GridName::Decode, 64, 16, 65536, 128, false, DTypeName::Bf16) };
        assert!(!lim.allows(&huge_cache), "17 GB of KV cache is not a CPU case");
        let bwd = Case { pass: Pass::Bwd, ..Case::fwd(GridName::Custom, 1, 1, 64, 64, false, DTypeName::Bf16) };
        assert!(!lim.allows(&bwd));
    }
}
