//! The first calls of a process at one head dim (`ironflash_cli::bench::cold`, whose table the suite
//! prints for every head dim, each in a fresh process): opening the device, then the first and second
//! forward and backward call (the first pays for loading, and JIT-compiling, the kernels it needs). Run
//! it in a fresh process per head dim with the driver's JIT cache off to see a fresh machine's first
//! call:
//!
//! ```text
//! CUDA_CACHE_DISABLE=1 cargo run --release --example cold_start -- 128
//! CUDA_CACHE_DISABLE=1 cargo run --release --example cold_start -- 192v128
//! ```
//! bf16, B = 2, N = 1024, H = 2048 / D, causal; host wall clock around each call and a synchronize.

mod common;

use ironflash_cli::bench::cold;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "128".into());
    let started = Instant::now();
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    let open_s = started.elapsed().as_secs_f64();
    let r = cold::first_calls(&dev, &spec)?;
    println!(
        "D={spec} ({}): device open {open_s:.3} s; forward first {:.3} s, second {:.4} s; backward first {:.3} s, \
         second {:.4} s; CUDA_CACHE_DISABLE={}",
        dev.info().name,
        r.forward_first_s,
        r.forward_second_s,
        r.backward_first_s,
        r.backward_second_s,
        std::env::var("CUDA_CACHE_DISABLE").unwrap_or_else(|_| "unset".into())
    );
    Ok(())
}
