//! The forward's rate on the shapes of a two-rank ring's steps, on one GPU: where the ring's scaling
//! goes (docs/perf.md, "Packed batches on the TMA rows, and the ring's forward"). For a global length
//! N (zig-zag over two ranks: a shard of N/2 tokens in two chunks of N/4), bf16, B = 1, H = 16, D = 128:
//! - rank 0's step 1 as the ring calls it (`Sharding::step_plan`): a packed call, the head chunk's
//!   queries in a sequence without keys, the tail chunk's against all N/2 keys of the other shard,
//!   non-causal;
//! - the same work as a dense call: N/4 queries against N/2 keys, non-causal;
//! - step 0's work as a dense call: N/2 queries and keys, causal (the same FLOPs).
//!
//! `cargo run --release --example ring_step_shapes -- [--seqlen 1048576] [--reps 3]`: host-timed around
//! a synchronize, median of `reps` after one warm-up; TFLOP/s on the visible pairs (4·H·D per pair).

mod common;

use ironflash::cpu::varlen::Varlen;
use ironflash::gpu;
use ironflash::{bf16, AttnOptions};

const HEADS: usize = 16;
const DIM: usize = 128;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n = common::usizes_arg(&args, "--seqlen", &[1 << 20])?[0];
    let reps = common::usizes_arg(&args, "--reps", &[3])?[0];
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    let (shard, chunk) = (n / 2, n / 4);
    let tokens = |len, seed| dev.upload(&common::random_tokens(len, HEADS, DIM, seed));
    let (q, k, v) = (tokens(shard, 1)?, tokens(shard, 11)?, tokens(shard, 21)?);
    let q_tail = tokens(chunk, 1)?;
    let mut o = dev.poisoned::<bf16>([1, shard, HEADS, DIM])?;
    let mut lse = dev.poisoned_f32(HEADS * shard)?;
    let mut o_tail = dev.poisoned::<bf16>([1, chunk, HEADS, DIM])?;
    let mut lse_tail = dev.poisoned_f32(HEADS * chunk)?;
    let (c, s) = (chunk as i32, shard as i32);
    let offsets = dev.upload_varlen(&Varlen { cu_seqlens_q: &[0, c, s], cu_seqlens_k: &[0, 0, s] }, shard, shard)?;
    let plain = AttnOptions::default();
    let causal = AttnOptions { causal: true, ..plain };
    // Every row's visible pairs: chunk × shard (step 1's), shard²/2 (step 0's, as the ring counts them).
    let tflops = |pairs: f64, ms: f64| 4.0 * pairs * (HEADS * DIM) as f64 / (ms * 1e-3) / 1e12;
    let step1 = (chunk * shard) as f64;
    let step0 = (shard * shard) as f64 / 2.0;

    println!(
        "device: {} ({} SMs); N = {n}: shard {shard}, chunk {chunk}; H = {HEADS}, D = {DIM}, bf16",
        dev.info().name,
        dev.info().sm_count
    );
    println!("| call | ms | TFLOP/s |");
    println!("| --- | ---: | ---: |");
    let ms = common::host_timed_median_ms(&dev, reps, || {
        gpu::flash_forward_varlen_into(&dev, &q, &k, &v, &offsets.view(), &mut o, &mut lse, &plain)
    })?;
    println!(
        "| step 1, packed ({chunk} queries without keys, {chunk} against {shard} keys) | {ms:.1} | {:.0} |",
        tflops(step1, ms)
    );
    let ms = common::host_timed_median_ms(&dev, reps, || {
        gpu::flash_forward_into(&dev, &q_tail, &k, &v, &mut o_tail, &mut lse_tail, &plain)
    })?;
    println!("| step 1's work, dense ({chunk} queries against {shard} keys) | {ms:.1} | {:.0} |", tflops(step1, ms));
    let ms = common::host_timed_median_ms(&dev, reps, || {
        gpu::flash_forward_into(&dev, &q, &k, &v, &mut o, &mut lse, &causal)
    })?;
    println!("| step 0's work, dense ({shard} causal) | {ms:.1} | {:.0} |", tflops(step0, ms));
    Ok(())
}
