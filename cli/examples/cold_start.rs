//! The first calls of a process: opening the device, then the first and second forward and backward
//! call at one head dim (the first pays for loading, and JIT-compiling, the kernels it needs). Run it in
//! a fresh process per head dim with the driver's JIT cache off to see a fresh machine's first call:
//!
//! ```text
//! CUDA_CACHE_DISABLE=1 cargo run --release --example cold_start -- 128
//! CUDA_CACHE_DISABLE=1 cargo run --release --example cold_start -- 192v128
//! ```
//! bf16, B = 2, N = 1024, H = 2048 / D, causal; host wall clock around each call and a synchronize.

mod common;

use half::bf16;
use ironflash::gpu::{self, GpuGradients};
use ironflash::{AttnOptions, Device, HostTensor};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "128".into());
    let (d, dv) = common::parse_dims(&spec)?;
    let started = Instant::now();
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    let open_s = started.elapsed().as_secs_f64();
    let (b, n, h) = (2, 1024, 2048 / d);
    let mut seed = 0;
    let mut upload = |shape| {
        seed += 1;
        dev.upload(&HostTensor::<bf16>::random_seeded(shape, 1.0, seed))
    };
    let (q, k, v, d_o) = (upload([b, n, h, d])?, upload([b, n, h, d])?, upload([b, n, h, dv])?, upload([b, n, h, dv])?);
    let opts = AttnOptions::causal();
    let timed = |f: &mut dyn FnMut() -> ironflash::Result<()>| -> ironflash::Result<f64> {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut out = None;
    let mut forward = || {
        out = Some(gpu::flash_forward(&dev, &q, &k, &v, &opts)?);
        Ok(())
    };
    let (fwd_first, fwd_second) = (timed(&mut forward)?, timed(&mut forward)?);
    let fwd = out.expect("the forward ran");
    let mut grads: Option<GpuGradients<bf16>> = None;
    let mut backward = || {
        grads = Some(gpu::flash_backward(&dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts)?);
        Ok(())
    };
    let (bwd_first, bwd_second) = (timed(&mut backward)?, timed(&mut backward)?);
    println!(
        "D={spec} ({}): device open {:.3} s; forward first {:.3} s, second {:.4} s; backward first {:.3} s, \
         second {:.4} s; CUDA_CACHE_DISABLE={}",
        device_name(&dev),
        open_s,
        fwd_first,
        fwd_second,
        bwd_first,
        bwd_second,
        std::env::var("CUDA_CACHE_DISABLE").unwrap_or_else(|_| "unset".into())
    );
    Ok(())
}

fn device_name(dev: &Device) -> String {
    dev.info().name.clone()
}
