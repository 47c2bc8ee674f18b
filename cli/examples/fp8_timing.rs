//! The FP8 (e4m3) forward beside the bf16 one, same shapes, same run: B·N = 16K tokens, hidden 2048
//! (H = 2048 / D), N in {1K, 4K, 8K, 16K}, causal off and on; TFLOP/s = 4·B·H·N²·D / t, halved for
//! causal. Each shape times bf16, then each FP8 row as the launch plan runs it (persistent where the
//! tiles fill more than a wave), with one CTA per tile (`1/CTA`) and with each persistent order forced
//! on one CTA per SM (`rounds`, `tickets`), twice over (CUDA events, median of 30 launches after
//! 5 warm-up ones, each row first run for 250 ms so that the clocks settle; outputs preallocated).
//! Then the conversion of one bf16 tensor to FP8 (`gpu::quantize_fp8`, with its check of the factors),
//! and the error table: FP8 and bf16
//! against the f64 reference on the same inputs (relative L2 of O; for FP8 also against the f64
//! reference of its own dequantized inputs, and with Q and K rotated before quantizing: incoherent
//! processing, `fp8::Rotation`), for inputs of amplitude 1, with 0.1% of the entries ten times larger
//! (outliers), and with scores four times sharper; with `--all`, for every FP8 row of head dim 128.
//!
//! ```text
//! cargo run --release --example fp8_timing                    # head dim 128, the chooser's rows
//! cargo run --release --example fp8_timing -- --dims 128,256 --all   # every FP8 row of each head dim
//! cargo run --release --example fp8_timing -- --decode       # decode: one query row, split-KV
//! ```

mod common;

use half::bf16;
use ironflash::fp8::{self, dequantize, quantize};
use ironflash::gpu::{self, Fp8Tensor, TileOrder};
use ironflash::{cpu, Arg, AttnOptions, Device, HostTensor};
use ironflash_cli::bench::accuracy::rel_l2;
use ironflash_kernels::tiles::{Fp8FwdTile, FP8_FWD_TILES};
use rand::{Rng, SeedableRng};

/// The error table's head dim.
const D: usize = 128;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let all = args.iter().any(|a| a == "--all");
    let dims = common::dims_arg(&args, &[(128, 128)])?;
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    let info = dev.info().clone();
    println!(
        "device: {} (sm_{}{}, {} SMs)",
        info.name, info.compute_capability.0, info.compute_capability.1, info.sm_count
    );
    if args.iter().any(|a| a == "--decode") {
        return decode(&dev);
    }
    println!(
        "{:>6} {:>4} {:>4} {:>3} {:>7} {:<40} {:>10} {:>9}",
        "N", "D", "H", "B", "causal", "kernel", "median ms", "TFLOP/s"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (d, _) in dims {
        let chosen = gpu::fp8_forward_tile(&dev, d)?;
        let rows: Vec<Fp8FwdTile> =
            if all { FP8_FWD_TILES.iter().filter(|t| t.head_dim == d).copied().collect() } else { vec![chosen] };
        let h = 2048 / d;
        for n in [1024usize, 4096, 8192, 16384] {
            let b = 16 * 1024 / n;
            let host = |rng: &mut rand::rngs::StdRng| HostTensor::<bf16>::random([b, n, h, d], 1.0, rng);
            let (q, k, v) = (dev.upload(&host(&mut rng))?, dev.upload(&host(&mut rng))?, dev.upload(&host(&mut rng))?);
            let fp8 = |x| gpu::quantize_fp8(&dev, x, Arg::Q, h);
            let (q8, k8, v8): (Fp8Tensor, Fp8Tensor, Fp8Tensor) = (fp8(&q)?, fp8(&k)?, fp8(&v)?);
            let mut o = dev.poisoned::<bf16>([b, n, h, d])?;
            let mut lse = dev.poisoned_f32(b * h * n)?;
            for causal in [false, true] {
                let opts = AttnOptions { causal, ..AttnOptions::default() };
                let flops = 4.0 * (b * h) as f64 * (n * n) as f64 * d as f64 / if causal { 2.0 } else { 1.0 };
                let line = |name: &str, ms: f64| {
                    println!(
                        "{n:>6} {d:>4} {h:>4} {b:>3} {causal:>7} {name:<40} {ms:>10.3} {:>9.1}",
                        flops / (ms * 1e-3) / 1e12
                    )
                };
                for _round in 0..2 {
                    line(
                        "bf16",
                        common::settled_median_ms(&dev, || {
                            gpu::flash_forward_into(&dev, &q, &k, &v, &mut o, &mut lse, &opts)
                        })?,
                    );
                    for tile in &rows {
                        let ms = common::settled_median_ms(&dev, || {
                            gpu::flash_forward_fp8_with_tile(&dev, &q8, &k8, &v8, &mut o, &mut lse, &opts, tile)
                        })?;
                        line(tile.symbol(false), ms);
                        // One CTA per tile forced (one split), where the plan may launch the persistent kernel.
                        let ms = common::settled_median_ms(&dev, || {
                            gpu::flash_forward_fp8_with_splits(
                                &dev,
                                &q8,
                                &k8,
                                &v8,
                                &mut o,
                                &mut lse,
                                &opts,
                                Some(tile),
                                1,
                            )
                        })?;
                        line(&format!("{} 1/CTA", tile.symbol(false)), ms);
                        // Each persistent order forced on one CTA per SM.
                        for (order, name) in [(TileOrder::Rounds, "rounds"), (TileOrder::Tickets, "tickets")] {
                            let ctas = dev.info().sm_count as usize;
                            let ms = common::settled_median_ms(&dev, || {
                                gpu::flash_forward_fp8_persistent(
                                    &dev,
                                    &q8,
                                    &k8,
                                    &v8,
                                    &mut o,
                                    &mut lse,
                                    &opts,
                                    Some(tile),
                                    ctas,
                                    order,
                                )
                            })?;
                            line(&format!("{} {name}", tile.symbol(false)), ms);
                        }
                    }
                }
                let host = dev.download(&o)?;
                assert!(host.data.iter().all(|x| x.to_f32().is_finite()), "O has unwritten or non-finite elements");
            }
            if n == 16384 {
                let ms = common::median_ms(&dev, || fp8(&q).map(drop))?;
                let gb = (b * n * h * d * 3) as f64 / 1e9;
                println!(
                    "quantize_fp8 of one [{b}, {n}, {h}, {d}] bf16 tensor: {ms:.3} ms ({:.0} GB/s read + written)",
                    gb / (ms * 1e-3)
                );
            }
        }
    }
    let rows: Vec<Fp8FwdTile> = if all {
        FP8_FWD_TILES.iter().filter(|t| t.head_dim == D).copied().collect()
    } else {
        vec![gpu::fp8_forward_tile(&dev, D)?]
    };
    error_table(&dev, &rows)
}

/// Decode (one query row, D = 128): the bf16 forward (the library's choice) against the FP8 one (its
/// choice, then 1 and 2·that many splits forced), B in {1, 8}, 8K and 64K keys, 16 query heads on 16
/// K/V heads and 32 on 8; GB/s of K and V read (2 bytes an element for bf16, 1 for FP8).
fn decode(dev: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let d = 128;
    println!("decode (D = 128, seqlen_q = 1)");
    println!("{:>3} {:>7} {:>6} {:<12} {:>10} {:>8}", "B", "Hq/Hkv", "keys", "kernel", "median ms", "GB/s");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for (h, h_kv) in [(16usize, 16usize), (32, 8)] {
        for b in [1usize, 8] {
            for n in [8192usize, 65536] {
                let q = dev.upload(&HostTensor::<bf16>::random([b, 1, h, d], 1.0, &mut rng))?;
                let k = dev.upload(&HostTensor::<bf16>::random([b, n, h_kv, d], 1.0, &mut rng))?;
                let v = dev.upload(&HostTensor::<bf16>::random([b, n, h_kv, d], 1.0, &mut rng))?;
                let fp8 = |x, arg| gpu::quantize_fp8(dev, x, arg, h_kv);
                let (q8, k8, v8) = (fp8(&q, Arg::Q)?, fp8(&k, Arg::K)?, fp8(&v, Arg::V)?);
                let mut o = dev.poisoned::<bf16>([b, 1, h, d])?;
                let mut lse = dev.poisoned_f32(b * h)?;
                let opts = AttnOptions::default();
                let elements = (2 * b * n * h_kv * d) as f64;
                let heads = format!("{h}/{h_kv}");
                let line = |label: &str, ms: f64, bytes: f64| {
                    println!(
                        "{b:>3} {heads:>7} {n:>6} {label:<12} {ms:>10.3} {:>8.0}",
                        elements * bytes / (ms * 1e-3) / 1e9
                    )
                };
                let ms = common::median_ms(dev, || gpu::flash_forward_into(dev, &q, &k, &v, &mut o, &mut lse, &opts))?;
                line("bf16 auto", ms, 2.0);
                let ms = common::median_ms(dev, || {
                    gpu::flash_forward_fp8_into(dev, &q8, &k8, &v8, &mut o, &mut lse, &opts)
                })?;
                line("fp8 auto", ms, 1.0);
                for splits in [1, 64.min(2 * (132 / (b * h_kv)).max(1))] {
                    let ms = common::median_ms(dev, || {
                        gpu::flash_forward_fp8_with_splits(dev, &q8, &k8, &v8, &mut o, &mut lse, &opts, None, splits)
                    })?;
                    line(&format!("fp8 {splits}"), ms, 1.0);
                }
                let host = dev.download(&o)?;
                assert!(host.data.iter().all(|x| x.to_f32().is_finite()), "O has unwritten or non-finite elements");
            }
        }
    }
    Ok(())
}

/// O's relative L2 error against the f64 reference, FP8 and bf16, on the same inputs.
fn error_table(dev: &Device, rows: &[Fp8FwdTile]) -> Result<(), Box<dyn std::error::Error>> {
    println!("error of O (relative L2) against the f64 reference, B = 1, N = 1024, H = 4, D = 128:");
    println!(
        "{:>9} {:>7} {:<40} {:>12} {:>12} {:>14} {:>12}",
        "inputs", "causal", "kernel", "bf16", "e4m3", "e4m3 vs its own", "e4m3 rot."
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let (b, n, h) = (1, 1024, 4);
    // Uniform inputs; 0.1% of the entries ten times larger (outliers); scores four times sharper
    // (most of a row's probabilities far below its largest).
    for (inputs, outliers, scale) in [("uniform", false, 1.0), ("outliers", true, 1.0), ("sharp", false, 4.0)] {
        let mut gen = || {
            let mut t = HostTensor::<bf16>::random([b, n, h, D], 1.0, &mut rng);
            if outliers {
                for x in t.data.iter_mut() {
                    if rng.random_range(0..1000) == 0 {
                        *x = bf16::from_f32(x.to_f32() * 10.0);
                    }
                }
            }
            t
        };
        let (q, k, v) = (gen(), gen(), gen());
        for causal in [false, true] {
            let opts = AttnOptions { causal, ..AttnOptions::default() }.with_scale(scale / (D as f32).sqrt());
            let exact = cpu::reference_forward(&q, &k, &v, &opts)?;
            let bf = gpu::flash_forward(dev, &dev.upload(&q)?, &dev.upload(&k)?, &dev.upload(&v)?, &opts)?;
            let bf = dev.download(&bf.o)?.to_f64_contiguous();
            let up = |t: &HostTensor<bf16>, r| gpu::quantize_fp8_with(dev, &dev.upload(t).unwrap(), Arg::Q, h, r);
            let (q8, k8, v8) = (up(&q, None)?, up(&k, None)?, up(&v, None)?);
            // Q and K rotated (incoherent processing), V as it is.
            let rotation = Some(fp8::Rotation { seed: 1 });
            let (q8r, k8r) = (up(&q, rotation)?, up(&k, rotation)?);
            let real = |t: &HostTensor<bf16>| {
                let (x, d) = quantize(t, Arg::Q, h).unwrap();
                dequantize(&x, Arg::Q, &d, h).unwrap()
            };
            let own = cpu::reference_forward(&real(&q), &real(&k), &real(&v), &opts)?;
            for tile in rows {
                let mut o = dev.poisoned::<bf16>([b, n, h, D])?;
                let mut lse = dev.poisoned_f32(b * h * n)?;
                gpu::flash_forward_fp8_with_tile(dev, &q8, &k8, &v8, &mut o, &mut lse, &opts, tile)?;
                let f8 = dev.download(&o)?.to_f64_contiguous();
                gpu::flash_forward_fp8_with_tile(dev, &q8r, &k8r, &v8, &mut o, &mut lse, &opts, tile)?;
                let f8r = dev.download(&o)?.to_f64_contiguous();
                println!(
                    "{inputs:>9} {causal:>7} {:<40} {:>12.3e} {:>12.3e} {:>14.3e} {:>12.3e}",
                    tile.symbol(false),
                    rel_l2(&bf, &exact.o),
                    rel_l2(&f8, &exact.o),
                    rel_l2(&f8, &own.o),
                    rel_l2(&f8r, &exact.o)
                );
            }
        }
    }
    Ok(())
}
