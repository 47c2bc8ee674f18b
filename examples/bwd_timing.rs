//! Times the fused backward (dQ, dK, dV) on the GPU at B·N = 16K tokens, hidden 2048 (H = 2048/D),
//! D = 128, N in {1K, 4K}, causal off/on, fast and deterministic modes; O and LSE come from the fused
//! forward. TFLOP/s = 2.5 · 4·B·H·N²·D / t (halved when causal), FlashAttention's convention.
//!
//! `cargo run --release --example bwd_timing` (prints a markdown table for docs/perf.md).

use half::bf16;
use ironflash::{gpu, AttnOptions, AttnProblem, Device, HostTensor};
use std::time::Instant;

fn main() -> ironflash::Result<()> {
    let dev = Device::open(0)?;
    let info = dev.info();
    println!("device: {} ({} SMs)", info.name, info.sm_count);
    println!("| N | B | H | D | causal | mode | ms | TFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|");
    let d = 128;
    let h = 2048 / d;
    let mut rng = rand::rng();
    for n in [1024usize, 4096] {
        let b = 16384 / n;
        let shape = [b, n, h, d];
        let mut t = || dev.upload(&HostTensor::<bf16>::random(shape, 1.0, &mut rng));
        let (q, k, v, d_o) = (t()?, t()?, t()?, t()?);
        for causal in [false, true] {
            for deterministic in [false, true] {
                let opts = AttnOptions { causal, softmax_scale: None, deterministic };
                let fwd = gpu::flash_forward(&dev, &q, &k, &v, &opts)?;
                let p = AttnProblem::new(
                    (q.layout(), q.buffer().len()),
                    (k.layout(), k.buffer().len()),
                    (v.layout(), v.buffer().len()),
                    &opts,
                )?;
                for _ in 0..3 {
                    gpu::flash_backward(&dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts)?;
                }
                dev.synchronize()?;
                let mut times = Vec::new();
                for _ in 0..10 {
                    let start = Instant::now();
                    let g = gpu::flash_backward(&dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts)?;
                    dev.synchronize()?;
                    times.push(start.elapsed().as_secs_f64());
                    drop(g);
                }
                times.sort_by(f64::total_cmp);
                let t = times[times.len() / 2];
                let tflops = 2.5 * p.forward_flops() / t / 1e12;
                let mode = if deterministic { "deterministic" } else { "fast" };
                println!("| {n} | {b} | {h} | {d} | {causal} | {mode} | {:.3} | {tflops:.1} |", t * 1e3);
            }
        }
    }
    Ok(())
}
