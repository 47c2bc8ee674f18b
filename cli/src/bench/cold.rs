//! A fresh process's first calls (the suite's cold-start table; also `CUDA_CACHE_DISABLE=1 cargo run
//! --release --example cold_start -- D`): the first and second forward and backward call at one head
//! dim, where the first pays for loading, and JIT-compiling, the kernels it needs. The suite runs each
//! head dim in a process of its own (the suite's executable again, with `--cold-start-child D`) with
//! the driver's JIT cache off (`CUDA_CACHE_DISABLE=1`), so each row is what a fresh machine's first call
//! costs. bf16, B = 2, N = 1024, H = 2048 / D, causal; host wall clock around each call and a
//! synchronize.

use crate::bench::grid::parse_dims;
use half::bf16;
use ironflash::gpu::{self, GpuGradients};
use ironflash::{AttnOptions, Device, HostTensor};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The head dims of the table: Q/K's, or Q/K's `v` V's.
pub const HEAD_DIMS: &[&str] = &["32", "64", "96", "128", "192", "192v128", "256"];

/// One process's first calls, seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColdRow {
    pub head_dims: String,
    pub forward_first_s: f64,
    pub forward_second_s: f64,
    pub backward_first_s: f64,
    pub backward_second_s: f64,
    /// The driver's JIT cache off in this process (`CUDA_CACHE_DISABLE=1`).
    pub jit_cache_off: bool,
}

/// The first and second forward and backward calls at `spec`'s head dims on `dev`, in this process.
pub fn first_calls(dev: &Device, spec: &str) -> Result<ColdRow, Box<dyn std::error::Error>> {
    let (d, dv) = parse_dims(spec)?;
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
        out = Some(gpu::flash_forward(dev, &q, &k, &v, &opts)?);
        Ok(())
    };
    let (forward_first_s, forward_second_s) = (timed(&mut forward)?, timed(&mut forward)?);
    let fwd = out.ok_or("the forward returned nothing")?;
    let mut grads: Option<GpuGradients<bf16>> = None;
    let mut backward = || {
        grads = Some(gpu::flash_backward(dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts)?);
        Ok(())
    };
    let (backward_first_s, backward_second_s) = (timed(&mut backward)?, timed(&mut backward)?);
    Ok(ColdRow {
        head_dims: spec.into(),
        forward_first_s,
        forward_second_s,
        backward_first_s,
        backward_second_s,
        jit_cache_off: std::env::var("CUDA_CACHE_DISABLE").is_ok_and(|v| v == "1"),
    })
}

/// Each of [`HEAD_DIMS`] in a fresh process: `exe` run with `args` and `--cold-start-child D`, with the
/// driver's JIT cache off; the child prints its [`ColdRow`] as one JSON line ([`child_line`]). A head
/// dim whose process failed gives its error.
pub fn in_fresh_processes(exe: &Path, args: &[String]) -> Vec<Result<ColdRow, String>> {
    HEAD_DIMS
        .iter()
        .map(|spec| {
            let out = Command::new(exe)
                .args(args)
                .args(["--cold-start-child", spec])
                .env("CUDA_CACHE_DISABLE", "1")
                .output()
                .map_err(|e| format!("head dims {spec}: cannot start {}: {e}", exe.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().find_map(|l| l.strip_prefix(CHILD_PREFIX));
            match (out.status.success(), line) {
                (true, Some(json)) => serde_json::from_str(json).map_err(|e| format!("head dims {spec}: {e}")),
                _ => Err(format!(
                    "head dims {spec}: the child process ended with {} ({})",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("no message")
                )),
            }
        })
        .collect()
}

/// Marks the child's result line on its stdout.
const CHILD_PREFIX: &str = "cold start: ";

/// What a child process prints: its row, marked for [`in_fresh_processes`].
pub fn child_line(row: &ColdRow) -> String {
    format!("{CHILD_PREFIX}{}", serde_json::to_string(row).unwrap_or_default())
}

/// The table in Markdown; a failed head dim gets its error in a row of its own.
pub fn markdown(rows: &[Result<ColdRow, String>]) -> String {
    let mut s = String::from(
        "| head dims | first forward, s | second forward, s | first backward, s | second backward, s |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        s += &match r {
            Ok(r) => format!(
                "| {} | {:.3} | {:.4} | {:.3} | {:.4} |\n",
                r.head_dims, r.forward_first_s, r.forward_second_s, r.backward_first_s, r.backward_second_s
            ),
            Err(e) => format!("| {e} | | | | |\n"),
        };
    }
    s
}
