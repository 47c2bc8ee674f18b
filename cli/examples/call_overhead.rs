//! What a call costs beyond its kernels: the allocating calls (`flash_forward`, `flash_backward`)
//! against the `_into` calls with preallocated outputs, each with a synchronisation after every call
//! (a training step's loss read-back, a serving loop) and back to back; and the host's time to enqueue
//! one `_into` call. Each measured with the device's memory pool giving freed memory back to the driver
//! at every synchronisation (release threshold 0, the driver's default) and keeping it (`u64::MAX`,
//! what `Device::open` sets).
//!
//! ```text
//! cargo run --release --example call_overhead
//! ```
//! bf16, D = 128, H = 16: B = 16, N = 1K (forward and backward) and decode B = 1, one query, 8K keys
//! (forward). Medians of 50 calls after 5 warm-up calls, host wall clock.

mod common;

use half::bf16;
use ironflash::gpu::{self, DeviceTensor, GpuGradients};
use ironflash::{AttnOptions, Device, HostTensor};
use std::time::Instant;

const REPS: usize = 50;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    println!("device: {}", dev.info().name);
    println!("| shape | pool keeps | call | synchronised, µs | back to back, µs | host enqueue, µs |");
    println!("| --- | --- | --- | ---: | ---: | ---: |");
    for (name, [b, sq, sk]) in [("B=16 N=1K", [16, 1024, 1024]), ("decode B=1 Sk=8K", [1, 1, 8192])] {
        let h = 16;
        let mut seed = 0;
        let mut up = |shape| {
            seed += 1;
            dev.upload(&HostTensor::<bf16>::random_seeded(shape, 1.0, seed))
        };
        let (q, k, v, d_o) = (up([b, sq, h, 128])?, up([b, sk, h, 128])?, up([b, sk, h, 128])?, up([b, sq, h, 128])?);
        let opts = AttnOptions::default();
        for (keeps, threshold) in [("nothing", 0u64), ("everything", u64::MAX)] {
            dev.set_pool_release_threshold(threshold)?;
            let mut o = dev.poisoned::<bf16>([b, sq, h, 128])?;
            let mut lse = dev.poisoned_f32(b * h * sq)?;
            let row = |call: &str, t: [f64; 3]| {
                println!("| {name} | {keeps} | {call} | {:.1} | {:.1} | {:.1} |", t[0], t[1], t[2]);
            };
            row("flash_forward", timings(&dev, || gpu::flash_forward(&dev, &q, &k, &v, &opts).map(drop))?);
            row(
                "flash_forward_into",
                timings(&dev, || gpu::flash_forward_into(&dev, &q, &k, &v, &mut o, &mut lse, &opts))?,
            );
            if sq == 1 {
                continue;
            }
            let fwd = gpu::flash_forward(&dev, &q, &k, &v, &opts)?;
            let zeros = |t: &DeviceTensor<bf16>| dev.poisoned::<bf16>(t.shape());
            let mut grads = GpuGradients { dq: zeros(&q)?, dk: zeros(&k)?, dv: zeros(&v)?, d_sinks: None };
            row(
                "flash_backward",
                timings(&dev, || gpu::flash_backward(&dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts).map(drop))?,
            );
            row(
                "flash_backward_into",
                timings(&dev, || {
                    gpu::flash_backward_into(&dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &mut grads, &opts)
                })?,
            );
        }
    }
    Ok(())
}

/// Median µs per call synchronised after each call, per call back to back (one synchronisation after
/// `REPS` calls, best of three rounds), and the median host time of one call's enqueue (back to back).
fn timings(dev: &Device, mut call: impl FnMut() -> ironflash::Result<()>) -> ironflash::Result<[f64; 3]> {
    for _ in 0..5 {
        call()?;
    }
    dev.synchronize()?;
    let mut synced = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let t = Instant::now();
        call()?;
        dev.synchronize()?;
        synced.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut back_to_back = f64::INFINITY;
    let mut enqueue = Vec::with_capacity(3 * REPS);
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..REPS {
            let e = Instant::now();
            call()?;
            enqueue.push(e.elapsed().as_secs_f64() * 1e6);
        }
        dev.synchronize()?;
        back_to_back = back_to_back.min(t.elapsed().as_secs_f64() * 1e6 / REPS as f64);
    }
    Ok([median(&mut synced), back_to_back, median(&mut enqueue)])
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
