//! Times the score stage's options against the plain kernels, forward and backward, with CUDA events:
//! bf16, head dim 128, hidden 2048 (H = 16).
//! - Modifiers: B·N = 16K tokens, N in {4K, 16K}, causal off and on: plain, softcap 30, ALiBi
//!   (`[heads_q]` slopes), sinks, and all three; TFLOP/s on the dense (or causal) FLOPs and the cost
//!   over plain.
//! - Sliding window: B = 1, N = 32K, window (4096, 0) against dense causal; TFLOP/s on the visible
//!   (computed) pairs, 4·H·D per pair (×2.5 for the backward).
//!
//! - `--window-sweep`: instead, B = 1, N = 32K, windows `(w, 0)` for w in 1K..16K against dense causal,
//!   the backward with every Hopper row of head dim 128 (the chooser's first), all timed in turns.
//!
//! `cargo run --release --example score_timing` (prints markdown tables for docs/perf.md). The options
//! of one table row group are timed in turns, `ROUNDS` times over, so that a drift of the clocks during
//! the run moves them alike; each turn is a warm-up call and `REPS` back-to-back event-timed calls
//! (`bench::timing::time_calls`), and each figure the median of its `ROUNDS · REPS` samples. Inputs
//! random.

mod common;

use half::bf16;
use ironflash::gpu::{self, DeviceTensor, GpuForwardOutput};
use ironflash::{AttnOptions, AttnProblem, Device, HostTensor, PerHead};
use ironflash_cli::bench::timing::time_calls;

const ROUNDS: usize = 5;
const REPS: usize = 7;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Inputs {
    q: DeviceTensor<bf16>,
    k: DeviceTensor<bf16>,
    v: DeviceTensor<bf16>,
    d_o: DeviceTensor<bf16>,
}

/// Median forward and backward ms of each option set, timed in turns (module docs).
fn time(dev: &Device, x: &Inputs, options: &[AttnOptions]) -> ironflash::Result<Vec<(f64, f64)>> {
    let fwd: Vec<GpuForwardOutput<bf16>> =
        options.iter().map(|o| gpu::flash_forward(dev, &x.q, &x.k, &x.v, o)).collect::<Result<_, _>>()?;
    let mut samples = vec![(Vec::new(), Vec::new()); options.len()];
    for _ in 0..ROUNDS {
        for ((opts, out), (f, b)) in options.iter().zip(&fwd).zip(samples.iter_mut()) {
            gpu::flash_forward(dev, &x.q, &x.k, &x.v, opts)?;
            f.extend(time_calls(dev, REPS, |_| gpu::flash_forward(dev, &x.q, &x.k, &x.v, opts).map(drop))?);
            gpu::flash_backward(dev, &x.q, &x.k, &x.v, &out.o, &out.lse, &x.d_o, opts)?;
            b.extend(time_calls(dev, REPS, |_| {
                gpu::flash_backward(dev, &x.q, &x.k, &x.v, &out.o, &out.lse, &x.d_o, opts).map(drop)
            })?);
        }
    }
    Ok(samples.iter().map(|(f, b)| (median(f), median(b))).collect())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    println!("device: {} ({} SMs)", dev.info().name, dev.info().sm_count);
    let (h, d) = (16usize, 128usize);
    let mut rng = rand::rng();
    if std::env::args().any(|a| a == "--window-sweep") {
        return window_sweep(&dev, h, d, &mut rng);
    }
    let slopes: Vec<f32> = (0..h).map(|i| 2f32.powf(-8.0 * (i + 1) as f32 / h as f32)).collect();
    let sinks: Vec<f32> = (0..h).map(|i| i as f32 * 0.1 - 0.5).collect();
    let (slopes, sinks) = (dev.stream().clone_htod(&slopes)?, dev.stream().clone_htod(&sinks)?);
    let mut upload = |shape| dev.upload(&HostTensor::<bf16>::random(shape, 1.0, &mut rng));

    println!("\n| N | B | causal | option | fwd ms | fwd TFLOP/s | fwd cost | bwd ms | bwd TFLOP/s | bwd cost |");
    println!("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|");
    for n in [4096usize, 16384] {
        let b = 16384 / n;
        let shape = [b, n, h, d];
        let x = Inputs { q: upload(shape)?, k: upload(shape)?, v: upload(shape)?, d_o: upload(shape)? };
        for causal in [false, true] {
            let plain = AttnOptions { causal, ..AttnOptions::default() };
            let variants = [
                ("plain", plain),
                ("softcap 30", plain.with_softcap(30.0)),
                ("ALiBi", plain.with_alibi(PerHead::Device(&slopes))),
                ("sinks", plain.with_sinks(PerHead::Device(&sinks))),
                (
                    "all three",
                    plain.with_softcap(30.0).with_alibi(PerHead::Device(&slopes)).with_sinks(PerHead::Device(&sinks)),
                ),
            ];
            let flops = AttnProblem::contiguous([b, n, n, h, h, d], &plain)?.forward_flops();
            let times = time(&dev, &x, &variants.map(|(_, o)| o))?;
            let base = times[0];
            for ((name, _), (f, bw)) in variants.iter().zip(times) {
                println!(
                    "| {n} | {b} | {causal} | {name} | {f:.3} | {:.1} | {:+.1}% | {bw:.3} | {:.1} | {:+.1}% |",
                    flops / f / 1e9,
                    (f / base.0 - 1.0) * 100.0,
                    2.5 * flops / bw / 1e9,
                    (bw / base.1 - 1.0) * 100.0
                );
            }
        }
    }

    println!("\n| N | window | fwd ms | fwd TFLOP/s (visible) | bwd ms | bwd TFLOP/s (visible) |");
    println!("|---:|---|---:|---:|---:|---:|");
    let n = 32768;
    let shape = [1, n, h, d];
    let x = Inputs { q: upload(shape)?, k: upload(shape)?, v: upload(shape)?, d_o: upload(shape)? };
    let windows = [
        ("dense causal", AttnOptions::causal()),
        ("(4096, 0)", AttnOptions::causal().with_window(Some(4096), Some(0))),
    ];
    let times = time(&dev, &x, &windows.map(|(_, o)| o))?;
    for ((name, opts), (f, bw)) in windows.iter().zip(times) {
        let p = AttnProblem::contiguous([1, n, n, h, h, d], opts)?;
        // Visible pairs for both rows, so that the rates compare work done.
        let flops = 4.0 * (h * d) as f64 * p.visible_pairs() as f64;
        println!("| {n} | {name} | {f:.3} | {:.1} | {bw:.3} | {:.1} |", flops / f / 1e9, 2.5 * flops / bw / 1e9);
    }
    Ok(())
}

/// `--window-sweep` (module docs): TFLOP/s on the visible pairs of the forward and of the backward with
/// each Hopper row of the head dim, every (window, row) timed in turns.
fn window_sweep(dev: &Device, h: usize, d: usize, rng: &mut impl rand::Rng) -> Result<(), Box<dyn std::error::Error>> {
    use ironflash::gpu::GpuGradients;
    use ironflash::Layout;
    let n = 32768;
    let shape = [1, n, h, d];
    let mut upload = |shape| dev.upload(&HostTensor::<bf16>::random(shape, 1.0, &mut *rng));
    let x = Inputs { q: upload(shape)?, k: upload(shape)?, v: upload(shape)?, d_o: upload(shape)? };
    let chosen = gpu::backward_tile(dev.info(), (d, d), ironflash::DType::BF16)?;
    let mut tiles = vec![chosen];
    tiles.extend(ironflash_kernels::tiles_bwd::BWD_TILES.iter().filter(|t| {
        t.head_dim == d
            && t.head_dim_v == d
            && t.wgmma
            && t.tma
            && **t != chosen
            && t.smem_bytes(2) <= dev.info().smem_per_block_optin
    }));
    let mut cases = vec![("dense causal".to_string(), AttnOptions::causal())];
    for w in [1024usize, 2048, 4096, 8192, 16384] {
        cases.push((format!("({w}, 0)"), AttnOptions::causal().with_window(Some(w), Some(0))));
    }
    let zeros = |l: &Layout| dev.upload(&HostTensor::<bf16> { data: vec![bf16::ZERO; l.span()], layout: *l });
    let mut grads =
        GpuGradients { dq: zeros(x.q.layout())?, dk: zeros(x.k.layout())?, dv: zeros(x.v.layout())?, d_sinks: None };
    let fwd: Vec<GpuForwardOutput<bf16>> =
        cases.iter().map(|(_, o)| gpu::flash_forward(dev, &x.q, &x.k, &x.v, o)).collect::<Result<_, _>>()?;
    // samples[case][0] forward, [1 + t] backward with tile t.
    let mut samples = vec![vec![Vec::new(); 1 + tiles.len()]; cases.len()];
    for _ in 0..ROUNDS {
        for (((_, opts), out), s) in cases.iter().zip(&fwd).zip(samples.iter_mut()) {
            gpu::flash_forward(dev, &x.q, &x.k, &x.v, opts)?;
            s[0].extend(time_calls(dev, REPS, |_| gpu::flash_forward(dev, &x.q, &x.k, &x.v, opts).map(drop))?);
            for (tile, b) in tiles.iter().zip(&mut s[1..]) {
                let mut call = || {
                    gpu::flash_backward_with_tile(
                        dev, &x.q, &x.k, &x.v, &out.o, &out.lse, &x.d_o, &mut grads, opts, tile,
                    )
                };
                call()?;
                b.extend(time_calls(dev, REPS, |_| call())?);
            }
        }
    }
    let names: Vec<&str> = tiles.iter().map(|t| t.symbols[0].trim_end_matches("_bf16")).collect();
    println!("\n| N | window | fwd TFLOP/s | bwd TFLOP/s: {} |", names.join(" | "));
    println!("|---:|---|---:|{}", "---:|".repeat(tiles.len()));
    for ((name, opts), s) in cases.iter().zip(&samples) {
        let p = AttnProblem::contiguous([1, n, n, h, h, d], opts)?;
        let flops = 4.0 * (h * d) as f64 * p.visible_pairs() as f64;
        let bwd: Vec<String> = s[1..].iter().map(|b| format!("{:.1}", 2.5 * flops / median(b) / 1e9)).collect();
        println!("| {n} | {name} | {:.1} | {} |", flops / median(&s[0]) / 1e9, bwd.join(" | "));
    }
    Ok(())
}
