//! Packed variable-length forward and backward against dense calls on the same data (bf16, D = 128,
//! H = 16).
//!
//! 64 sequences with lengths drawn uniformly from 128..=8192 (fixed seed), packed (`flash_forward_varlen`,
//! `flash_backward_varlen`, fast and deterministic),
//! against the same sequences padded to the longest into a dense batch, and against a dense batch of
//! the same token count at the mean length (the rate the packed call aims for). TFLOP/s are counted on
//! the real work of each call's sequences: the padded batch's rate is its real work over its time (the
//! padding is waste), the mean-length batch's its own work. Each figure is the median of rounds of
//! back-to-back event-timed calls, the three calls taking turns in each round. Backward FLOPs are 2.5x
//! the forward's.
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

/// One timed call.
type Call<'a> = &'a mut dyn FnMut(usize) -> ironflash::Result<()>;

/// Times the calls in turns (`ROUNDS` rounds of `REPS` back-to-back calls each, after one warm-up
/// call) and prints each one's median and rate: the packed and padded calls' rates on the real work
/// of the sequences (`lens`), the mean-length batch's (`even`) on its own work, all times
/// `flop_factor` (the backward's 2.5); the last column is the rate over the mean-length batch's
/// (the call named "dense at mean length").
fn report(
    dev: &Device,
    pass: &str,
    causal: bool,
    lens: &[usize],
    even: [usize; 4],
    flop_factor: f64,
    calls: &mut [(&str, Call)],
) -> ironflash::Result<()> {
    let real: f64 = flop_factor * lens.iter().map(|&n| flops(n, causal)).sum::<f64>();
    let mean_work = flop_factor * even[0] as f64 * flops(even[1], causal);
    let mut times = vec![Vec::new(); calls.len()];
    for _ in 0..ROUNDS {
        for ((_, call), t) in calls.iter_mut().zip(&mut times) {
            call(0)?;
            t.extend(time_calls(dev, REPS, &mut **call)?);
        }
    }
    let rate = |work: f64, ms: f64| work / (ms * 1e-3) / 1e12;
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let mean_rate =
        calls.iter().zip(&medians).find(|(c, _)| c.0 == "dense at mean length").map(|(_, &ms)| rate(mean_work, ms));
    for ((name, _), &ms) in calls.iter().zip(&medians) {
        let work = if *name == "dense at mean length" { mean_work } else { real };
        let r = rate(work, ms);
        let vs = mean_rate.map_or(String::from("-"), |m| format!("{:.1}%", 100.0 * r / m));
        println!("{pass:>4} {causal:>7} {name:>30} {ms:>10.3} {r:>9.1} {vs:>8}");
    }
    Ok(())
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

    println!("{:>4} {:>7} {:>30} {:>10} {:>9} {:>8}", "pass", "causal", "call", "median ms", "TFLOP/s", "vs mean");
    for causal in [false, true] {
        let opts = AttnOptions { causal, ..AttnOptions::default() };
        let view = offsets.view();
        let mut calls: [(&str, Call); 3] = [
            ("packed (varlen)", &mut |_| {
                gpu::flash_forward_varlen_into(&dev, &q, &k, &v, &view, &mut o, &mut lse, &opts)
            }),
            ("padded dense", &mut |_| gpu::flash_forward_into(&dev, &pq, &pk, &pv, &mut po, &mut plse, &opts)),
            ("dense at mean length", &mut |_| gpu::flash_forward_into(&dev, &mq, &mk, &mv, &mut mo, &mut mlse, &opts)),
        ];
        report(&dev, "fwd", causal, &lens, even, 1.0, &mut calls)?;
    }

    // The backward of each layout on its forward's O and LSE, fast and, for the packed call,
    // deterministic too; backward FLOPs are 2.5x the forward's.
    let d_o = random(&dev, [1, tokens, HEADS, D], 10)?;
    let pd_o = random(&dev, padded, 11)?;
    let md_o = random(&dev, even, 12)?;
    let mut grads =
        gpu::flash_backward_varlen(&dev, &q, &k, &v, &o, &lse, &d_o, &offsets.view(), &AttnOptions::default())?;
    let mut det_grads =
        gpu::flash_backward_varlen(&dev, &q, &k, &v, &o, &lse, &d_o, &offsets.view(), &AttnOptions::default())?;
    let mut pgrads = gpu::flash_backward(&dev, &pq, &pk, &pv, &po, &plse, &pd_o, &AttnOptions::default())?;
    let mut mgrads = gpu::flash_backward(&dev, &mq, &mk, &mv, &mo, &mlse, &md_o, &AttnOptions::default())?;
    for causal in [false, true] {
        let opts = AttnOptions { causal, ..AttnOptions::default() };
        let det = AttnOptions { deterministic: true, ..opts };
        gpu::flash_forward_varlen_into(&dev, &q, &k, &v, &offsets.view(), &mut o, &mut lse, &opts)?;
        gpu::flash_forward_into(&dev, &pq, &pk, &pv, &mut po, &mut plse, &opts)?;
        gpu::flash_forward_into(&dev, &mq, &mk, &mv, &mut mo, &mut mlse, &opts)?;
        let view = offsets.view();
        let (o, lse, po, plse, mo, mlse) = (&o, &lse, &po, &plse, &mo, &mlse);
        let mut calls: [(&str, Call); 4] = [
            ("packed (varlen)", &mut |_| {
                gpu::flash_backward_varlen_into(&dev, &q, &k, &v, o, lse, &d_o, &view, &mut grads, &opts)
            }),
            ("packed (varlen), deterministic", &mut |_| {
                gpu::flash_backward_varlen_into(&dev, &q, &k, &v, o, lse, &d_o, &view, &mut det_grads, &det)
            }),
            ("padded dense", &mut |_| {
                gpu::flash_backward_into(&dev, &pq, &pk, &pv, po, plse, &pd_o, &mut pgrads, &opts)
            }),
            ("dense at mean length", &mut |_| {
                gpu::flash_backward_into(&dev, &mq, &mk, &mv, mo, mlse, &md_o, &mut mgrads, &opts)
            }),
        ];
        report(&dev, "bwd", causal, &lens, even, 2.5, &mut calls)?;
    }
    for g in [&grads, &det_grads] {
        let host = dev.download(&g.dq)?;
        assert!(host.data.iter().all(|x| x.is_finite()), "dQ has unwritten or non-finite elements");
    }
    let host = dev.download(&o)?;
    assert!(host.data.iter().all(|x| x.is_finite()), "O has unwritten or non-finite elements");

    // The padded batch for the peers (SDPA), JSON lines as `benches/peers.py` reads them; their TFLOP/s
    // on the real work are theirs times real / padded work.
    let cases: Vec<String> = ["fwd", "bwd"]
        .iter()
        .flat_map(|pass| [false, true].map(|c| (pass, c)))
        .map(|(pass, c)| {
            format!(
                r#"{{"grid": "varlen-padded", "pass": "{pass}", "b": {SEQUENCES}, "h": {HEADS}, "h_kv": {HEADS}, "n_q": {longest}, "n_k": {longest}, "d": {D}, "causal": {c}, "dtype": "bf16"}}"#
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
