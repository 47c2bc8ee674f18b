//! Context-parallel (ring) attention on two GPUs against one GPU, at long sequences: forward and
//! backward time, TFLOP/s per GPU, the scaling over one GPU at the same length and device memory per
//! GPU. bf16, B = 1, causal (with `--window W`, a sliding window of W keys before the diagonal),
//! zig-zag shards, the ranks in threads of one process.
//!
//! `--steps` adds where the ring's time goes: each rank's step calls (the packed calls of its
//! `StepPlan`s) run alone on the first GPU, without the exchange or the merges, summed per rank (the
//! slower rank's sum); the ring's forward time minus that is what the exchange, the merges and the
//! handshake add, and that sum against half the single GPU's time is what the step shapes cost.
//!
//! `cargo run --release --example ring_timing -- [--seqlens 262144,524288,1048576] [--heads 16]
//! [--dim 128] [--reps 2] [--window W] [--no-single] [--steps]` (needs two GPUs and NCCL: `IRONFLASH_NCCL` or
//! `libnccl.so.2` on the loader's path).

mod common;

use common::random_tokens;
use ironflash::cpu::varlen::Varlen;
use ironflash::gpu;
use ironflash::ring::gpu as ring;
use ironflash::ring::nccl::Communicator;
use ironflash::ring::{ShardLayout, Sharding};
use ironflash::{bf16, AttnOptions, AttnProblem, Device};
use std::sync::Barrier;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// One rank's forward and backward times (ms) and its device memory in use (GiB).
type RankTimes = (Vec<f64>, Vec<f64>, f64);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> ironflash::Result<()> {
    let seqlens: Vec<usize> = arg("--seqlens")
        .unwrap_or_else(|| "262144,524288,1048576".into())
        .split(',')
        .map(|s| s.parse().expect("--seqlens: comma-separated integers"))
        .collect();
    let heads: usize = arg("--heads").map_or(16, |s| s.parse().unwrap());
    let dim: usize = arg("--dim").map_or(128, |s| s.parse().unwrap());
    let reps: usize = arg("--reps").map_or(2, |s| s.parse().unwrap());
    let single = !std::env::args().any(|a| a == "--no-single");
    let window: Option<usize> = arg("--window").map(|s| s.parse().expect("--window: an integer"));
    // The steps alone are the unwindowed step plans' calls.
    let steps = std::env::args().any(|a| a == "--steps") && window.is_none();
    let world = 2;
    let devices: Vec<Device> = (0..world).map(Device::open).collect::<ironflash::Result<_>>()?;
    let id = Communicator::unique_id()?;
    let mut comms: Vec<Communicator> = std::thread::scope(|s| {
        let joins: Vec<_> =
            devices.iter().enumerate().map(|(r, d)| s.spawn(move || Communicator::new(d, r, world, &id))).collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect::<ironflash::Result<Vec<_>>>()
    })?;
    let mask = window.map_or("causal".to_string(), |w| format!("causal, window {w}"));
    println!("# {} x{world}, bf16, B=1, H={heads}, D={dim}, {mask}, zig-zag; times in ms (median of {reps} after one warm-up)", devices[0].info().name);
    println!("# N | ring fwd ms | ring fwd TFLOP/s/GPU | 1-GPU fwd ms | fwd scaling | ring bwd ms | ring bwd TFLOP/s/GPU | 1-GPU bwd ms | bwd scaling | ring GiB/GPU{}", if steps { " | fwd steps alone ms (slower rank; per step)" } else { "" });
    let opts = AttnOptions::causal().with_window(window, None);
    for &n in &seqlens {
        let p = AttnProblem::contiguous([1, n, n, heads, heads, dim], &opts)?;
        let (fwd_flops, bwd_flops) = (p.forward_flops(), p.backward_flops());
        let sharding = Sharding { seqlen: n, world, layout: ShardLayout::ZigZag };
        let barrier = Barrier::new(world);
        // Each rank: upload its shards, then time forward and backward, every repetition started together.
        let per_rank: Vec<RankTimes> = std::thread::scope(|s| {
            let joins: Vec<_> = comms
                .iter_mut()
                .zip(&devices)
                .enumerate()
                .map(|(r, (comm, dev))| {
                    let (sharding, barrier, opts) = (&sharding, &barrier, &opts);
                    s.spawn(move || -> ironflash::Result<RankTimes> {
                        let len = sharding.shard_len(r);
                        let up = |seed| dev.upload(&random_tokens(len, heads, dim, seed + r as u64));
                        let (q, k, v, d_o) = (up(1)?, up(11)?, up(21)?, up(31)?);
                        let (mut f_ms, mut b_ms) = (Vec::new(), Vec::new());
                        let mut used = 0.0;
                        for rep in 0..=reps {
                            barrier.wait();
                            let t = Instant::now();
                            let fwd = ring::forward(dev, comm, &q, &k, &v, sharding, opts)?;
                            dev.synchronize()?;
                            let f = t.elapsed().as_secs_f64() * 1e3;
                            barrier.wait();
                            let t = Instant::now();
                            let g = ring::backward(dev, comm, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, sharding, opts)?;
                            dev.synchronize()?;
                            let b = t.elapsed().as_secs_f64() * 1e3;
                            let (free, total) = dev.mem_info()?;
                            used = (total - free) as f64 / (1u64 << 30) as f64;
                            drop(g);
                            if rep > 0 {
                                f_ms.push(f);
                                b_ms.push(b);
                            }
                        }
                        Ok((f_ms, b_ms, used))
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect::<ironflash::Result<Vec<_>>>()
        })?;
        // The slower rank's time per repetition.
        let slowest = |pick: fn(&RankTimes) -> &Vec<f64>| {
            median((0..reps).map(|i| per_rank.iter().map(|r| pick(r)[i]).fold(0.0, f64::max)).collect())
        };
        let (ring_f, ring_b) = (slowest(|r| &r.0), slowest(|r| &r.1));
        let mem = per_rank.iter().map(|r| r.2).fold(0.0, f64::max);
        let (one_f, one_b) = if single {
            let dev = &devices[0];
            let up = |seed| dev.upload(&random_tokens(n, heads, dim, seed));
            let (q, k, v, d_o) = (up(1)?, up(11)?, up(21)?, up(31)?);
            let (mut f_ms, mut b_ms) = (Vec::new(), Vec::new());
            for rep in 0..=reps {
                let t = Instant::now();
                let fwd = gpu::flash_forward(dev, &q, &k, &v, &opts)?;
                dev.synchronize()?;
                let f = t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                let g = gpu::flash_backward(dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts)?;
                dev.synchronize()?;
                let b = t.elapsed().as_secs_f64() * 1e3;
                drop(g);
                if rep > 0 {
                    f_ms.push(f);
                    b_ms.push(b);
                }
            }
            (median(f_ms), median(b_ms))
        } else {
            (f64::NAN, f64::NAN)
        };
        let steps_alone =
            if steps { forward_steps_alone(&devices[0], &sharding, heads, dim, reps, &opts)? } else { String::new() };
        let tflops = |flops: f64, ms: f64| flops / world as f64 / (ms * 1e-3) / 1e12;
        println!(
            "{n} | {ring_f:.1} | {:.0} | {one_f:.1} | {:.2}x | {ring_b:.1} | {:.0} | {one_b:.1} | {:.2}x | {mem:.1}{steps_alone}",
            tflops(fwd_flops, ring_f),
            one_f / ring_f,
            tflops(bwd_flops, ring_b),
            one_b / ring_b
        );
    }
    Ok(())
}

/// Each rank's forward step calls alone on `dev` (median of `reps` after one warm-up, each call timed
/// around a synchronize), summed per rank: ` | slower rank's sum (its steps' times)`.
fn forward_steps_alone(
    dev: &Device,
    sharding: &Sharding,
    heads: usize,
    dim: usize,
    reps: usize,
    opts: &AttnOptions,
) -> ironflash::Result<String> {
    let mut slowest = (0.0, Vec::new());
    for rank in 0..sharding.world {
        let mut per_step = Vec::new();
        for s in 0..sharding.world {
            let Some(plan) = sharding.step_plan(rank, s, opts.causal) else { continue };
            let (len_q, len_k) = (sharding.shard_len(rank), sharding.shard_len(sharding.source(rank, s)));
            let q = dev.upload(&random_tokens(len_q, heads, dim, 1))?;
            let (k, v) = (
                dev.upload(&random_tokens(len_k, heads, dim, 11))?,
                dev.upload(&random_tokens(len_k, heads, dim, 21))?,
            );
            let (cu_q, cu_k) = plan.offsets(1, len_q, len_k);
            let offsets = dev.upload_varlen(&Varlen { cu_seqlens_q: &cu_q, cu_seqlens_k: &cu_k }, len_q, len_k)?;
            let mut o = dev.poisoned::<bf16>([1, len_q, heads, dim])?;
            let mut lse = dev.poisoned_f32(heads * len_q)?;
            let call = AttnOptions { causal: plan.causal, ..*opts };
            per_step.push(common::host_timed_median_ms(dev, reps, || {
                gpu::flash_forward_varlen_into(dev, &q, &k, &v, &offsets.view(), &mut o, &mut lse, &call)
            })?);
        }
        let sum: f64 = per_step.iter().sum();
        if sum > slowest.0 {
            slowest = (sum, per_step);
        }
    }
    let steps: Vec<String> = slowest.1.iter().map(|ms| format!("{ms:.1}")).collect();
    Ok(format!(" | {:.1} ({})", slowest.0, steps.join(" + ")))
}
