//! Times the fused backward (dQ, dK, dV) on the GPU at B·N = 16K tokens, hidden 2048 (H = 2048/D),
//! D = 128 (or the head dims of `--dims`), N in {1K, 4K, 16K}, causal off/on, fast and deterministic
//! modes, for the device's tile and (where that is a Hopper kernel) the head dim's `mma.sync` tile too;
//! O and LSE come from the fused forward. TFLOP/s = 2.5 · 4·B·H·N²·D / t (halved when causal),
//! FlashAttention's convention (`AttnProblem::backward_flops`, which counts V's head dim where it
//! differs).
//!
//! ```text
//! cargo run --release --example bwd_timing                     # markdown table for docs/perf.md
//! cargo run --release --example bwd_timing -- --dims 32,64,128
//! cargo run --release --example bwd_timing -- --dims 192v128   # V (and dO, dV) of head dim 128
//! cargo run --release --example bwd_timing -- --all           # every compiled row that runs here
//! cargo run --release --example bwd_timing -- --softcap 30    # every call softcapped
//! ```

mod common;

use half::bf16;
use ironflash::gpu::DeviceTensor;
use ironflash::gpu::{BackwardTile, GpuGradients};
use ironflash::{gpu, AttnOptions, AttnProblem, Device, HostTensor, Layout};
use ironflash_kernels::tiles_bwd::BWD_TILES;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let all = args.iter().any(|a| a == "--all");
    let softcap = common::flag_value(&args, "--softcap")?.map(str::parse::<f32>).transpose()?;
    let dims = common::dims_arg(&args, &[(128, 128)])?;
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    let info = dev.info();
    println!("device: {} ({} SMs)", info.name, info.sm_count);
    println!("| N | B | H | D | causal | mode | tile | ms | TFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for d in dims {
        time_head_dim(&dev, d, all, softcap)?;
    }
    Ok(())
}

/// The table's rows for head dim `d`: the chooser's tile and, where that is a Hopper kernel, the
/// `mma.sync` row this device would otherwise run; with `all`, every compiled row that runs here.
fn time_head_dim(dev: &Device, (d, dv): (usize, usize), all: bool, softcap: Option<f32>) -> ironflash::Result<()> {
    let info = dev.info();
    let h = 2048 / d;
    let runs = |t: &&BackwardTile| {
        (t.head_dim, t.head_dim_v) == (d, dv)
            && t.smem_bytes(2) <= info.smem_per_block_optin
            && (!t.wgmma || info.runs_wgmma())
    };
    let chosen = gpu::backward_tile(info, (d, dv), ironflash::DType::BF16)?;
    let mut tiles = vec![chosen];
    if all {
        tiles.extend(BWD_TILES.iter().filter(runs).filter(|t| **t != chosen));
    } else if tiles[0].wgmma {
        if let Some(t) = BWD_TILES.iter().filter(runs).find(|t| !t.wgmma) {
            tiles.push(*t);
        }
    }
    let mut rng = rand::rng();
    for n in [1024usize, 4096, 16384] {
        let b = 16384 / n;
        let mut t = |d| dev.upload(&HostTensor::<bf16>::random([b, n, h, d], 1.0, &mut rng));
        let (q, k, v, d_o) = (t(d)?, t(d)?, t(dv)?, t(dv)?);
        for causal in [false, true] {
            for deterministic in [false, true] {
                let opts = AttnOptions { causal, deterministic, softcap, ..Default::default() };
                let fwd = gpu::flash_forward(dev, &q, &k, &v, &opts)?;
                let p = AttnProblem::new(
                    (q.layout(), q.buffer().len()),
                    (k.layout(), k.buffer().len()),
                    (v.layout(), v.buffer().len()),
                    &opts,
                )?;
                for tile in &tiles {
                    let t = time_backward(dev, [&q, &k, &v, &fwd.o, &d_o], &fwd.lse, &opts, tile)?;
                    let tflops = p.backward_flops() / t / 1e12;
                    let mode = if deterministic { "deterministic" } else { "fast" };
                    let name = tile.symbols[0].trim_end_matches("_bf16");
                    println!("| {n} | {b} | {h} | {d} | {causal} | {mode} | {name} | {:.3} | {tflops:.1} |", t * 1e3);
                }
            }
        }
    }
    Ok(())
}

/// Median seconds of 10 calls (after 3 warm-up calls) of the backward with `tile`, each timed on the host
/// around a stream synchronize (so including the dQ accumulator's allocation and memset and all three
/// kernels); the gradients are allocated once.
fn time_backward(
    dev: &Device,
    [q, k, v, o, d_o]: [&DeviceTensor<bf16>; 5],
    lse: &cudarc::driver::CudaSlice<f32>,
    opts: &AttnOptions,
    tile: &BackwardTile,
) -> ironflash::Result<f64> {
    let zeros = |l: &Layout| dev.upload(&HostTensor::<bf16> { data: vec![bf16::ZERO; l.span()], layout: *l });
    let mut grads =
        GpuGradients { dq: zeros(q.layout())?, dk: zeros(k.layout())?, dv: zeros(v.layout())?, d_sinks: None };
    let mut run = || gpu::flash_backward_with_tile(dev, q, k, v, o, lse, d_o, &mut grads, opts, tile);
    for _ in 0..3 {
        run()?;
    }
    dev.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        run()?;
        dev.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
