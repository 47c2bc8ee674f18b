//! Packed variable-length forward against dense calls on the same data (bf16, D = 128, H = 16).
//!
//! 64 sequences with lengths drawn uniformly from 128..=8192 (fixed seed), packed (`flash_forward_varlen`),
//! against the same sequences padded to the longest into a dense batch, and against a dense batch of
//! the same token count at the mean length (the rate the packed call aims for). TFLOP/s are counted on
//! the real work of each call's sequences: the padded batch's rate is its real work over its time (the
//! padding is waste), the mean-length batch's its own work. Each figure is the median of rounds of
//! back-to-back event-timed calls, the three calls taking turns in each round.
//!
//! ```text
//! cargo run --release --example varlen_timing            # also writes varlen_cases.jsonl for the peers
//! python3 benches/peers.py --cases varlen_cases.jsonl --impls flash,cudnn   # SDPA on the padded batch
//! ```

mod common;

use ironflash::cpu::varlen::Varlen;
use ironflash::{bf16, gpu, AttnOptions, Device, HostTensor};
use ironflash_cli::bench::timing::time_calls;
use rand::{Rng, SeedableRng};

const SEQUENCES: usize = 64;
const HEADS: usize = 16;
const D: usize = 128;
const ROUNDS: usize = 5;
const REPS: usize = 5;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Forward FLOPs of one sequence of `n` tokens (self-attention), as the FlashAttention papers count
/// them, halved when causal.
fn flops(n: usize, causal: bool) -> f64 {
    4.0 * HEADS as f64 * (n * n) as f64 * D as f64 / if causal { 2.0 } else { 1.0 }
}

fn random(dev: &Device, shape: [usize; 4], seed: u64) -> ironflash::Result<gpu::DeviceTensor<bf16>> {
    dev.upload(&HostTensor::<bf16>::random_seeded(shape, 1.0, seed))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    let info = dev.info().clone();
    println!(
        "device: {} (sm_{}{}, {} SMs)",
        info.name, info.compute_capability.0, info.compute_capability.1, info.sm_count
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let lens: Vec<usize> = (0..SEQUENCES).map(|_| rng.random_range(128..=8192)).collect();
    let tokens: usize = lens.iter().sum();
    let longest = *lens.iter().max().unwrap();
    let mean = tokens / SEQUENCES;
    println!("{SEQUENCES} sequences, {tokens} tokens, mean {mean}, longest {longest}; H = {HEADS}, D = {D}, bf16");

    let cu: Vec<i32> = std::iter::once(0)
        .chain(lens.iter().scan(0, |t, &l| {
            *t += l as i32;
            Some(*t)
        }))
        .collect();
    let offsets = dev.upload_varlen(&Varlen { cu_seqlens_q: &cu, cu_seqlens_k: &cu }, tokens, tokens)?;
    let (q, k, v) = (
        random(&dev, [1, tokens, HEADS, D], 1)?,
        random(&dev, [1, tokens, HEADS, D], 2)?,
        random(&dev, [1, tokens, HEADS, D], 3)?,
    );
    let mut o = dev.poisoned::<bf16>([1, tokens, HEADS, D])?;
    let mut lse = dev.poisoned_f32(HEADS * tokens)?;
    // Padded: every sequence in its own batch row of `longest` tokens.
    let padded = [SEQUENCES, longest, HEADS, D];
    let (pq, pk, pv) = (random(&dev, padded, 4)?, random(&dev, padded, 5)?, random(&dev, padded, 6)?);
    let mut po = dev.poisoned::<bf16>(padded)?;
    let mut plse = dev.poisoned_f32(SEQUENCES * HEADS * longest)?;
    // Dense at the mean length, the same token count.
    let even = [tokens / mean, mean, HEADS, D];
    let (mq, mk, mv) = (random(&dev, even, 7)?, random(&dev, even, 8)?, random(&dev, even, 9)?);
    let mut mo = dev.poisoned::<bf16>(even)?;
    let mut mlse = dev.poisoned_f32(even[0] * HEADS * mean)?;

    println!("{:>7} {:>22} {:>10} {:>9} {:>8}", "causal", "call", "median ms", "TFLOP/s", "vs mean");
    for causal in [false, true] {
        let opts = AttnOptions { causal, ..AttnOptions::default() };
        let real: f64 = lens.iter().map(|&n| flops(n, causal)).sum();
        let mean_work = even[0] as f64 * flops(mean, causal);
        let (mut t_packed, mut t_padded, mut t_mean) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let view = offsets.view();
            gpu::flash_forward_varlen_into(&dev, &q, &k, &v, &view, &mut o, &mut lse, &opts)?;
            t_packed.extend(time_calls(&dev, REPS, |_| {
                gpu::flash_forward_varlen_into(&dev, &q, &k, &v, &view, &mut o, &mut lse, &opts)
            })?);
            gpu::flash_forward_into(&dev, &pq, &pk, &pv, &mut po, &mut plse, &opts)?;
            t_padded.extend(time_calls(&dev, REPS, |_| {
                gpu::flash_forward_into(&dev, &pq, &pk, &pv, &mut po, &mut plse, &opts)
            })?);
            gpu::flash_forward_into(&dev, &mq, &mk, &mv, &mut mo, &mut mlse, &opts)?;
            t_mean.extend(time_calls(&dev, REPS, |_| {
                gpu::flash_forward_into(&dev, &mq, &mk, &mv, &mut mo, &mut mlse, &opts)
            })?);
        }
        let (packed, padded, at_mean) = (median(&mut t_packed), median(&mut t_padded), median(&mut t_mean));
        let rate = |work: f64, ms: f64| work / (ms * 1e-3) / 1e12;
        let mean_rate = rate(mean_work, at_mean);
        for (name, ms, work) in [
            ("packed (varlen)", packed, real),
            ("padded dense", padded, real),
            ("dense at mean length", at_mean, mean_work),
        ] {
            let r = rate(work, ms);
            println!("{causal:>7} {name:>22} {ms:>10.3} {r:>9.1} {:>7.1}%", 100.0 * r / mean_rate);
        }
    }
    let host = dev.download(&o)?;
    assert!(host.data.iter().all(|x| x.is_finite()), "O has unwritten or non-finite elements");

    // The padded batch for the peers (SDPA), JSON lines as `benches/peers.py` reads them; their TFLOP/s
    // on the real work are theirs times real / padded work.
    let cases: Vec<String> = [false, true]
        .iter()
        .map(|c| {
            format!(
                r#"{{"grid": "varlen-padded", "pass": "fwd", "b": {SEQUENCES}, "h": {HEADS}, "h_kv": {HEADS}, "n_q": {longest}, "n_k": {longest}, "d": {D}, "causal": {c}, "dtype": "bf16"}}"#
            )
        })
        .collect();
    std::fs::write("varlen_cases.jsonl", cases.join("\n") + "\n")?;
    for causal in [false, true] {
        let real: f64 = lens.iter().map(|&n| flops(n, causal)).sum();
        let padded_work = SEQUENCES as f64 * flops(longest, causal);
        println!("varlen_cases.jsonl (causal {causal}): real / padded work = {:.4}", real / padded_work);
    }
    Ok(())
}
