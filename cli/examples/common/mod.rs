//! What the timing examples share.

use ironflash::{bf16, Device, HostTensor};
use ironflash_cli::bench::grid::parse_dims;
use ironflash_cli::bench::timing::time_calls;

/// Warm-up calls before the timed ones (`median_ms`).
const WARMUP: usize = 5;
/// Timed calls per figure (`median_ms`).
const REPS: usize = 30;

/// Device 0, or `None` after one `skipped: no CUDA driver` line on a machine without a GPU (the
/// examples then end successfully, as the GPU tests do).
#[allow(dead_code)] // `ring_timing` opens its two devices itself.
pub fn device_or_skip() -> Result<Option<Device>, ironflash::Error> {
    match Device::open(0) {
        Ok(d) => Ok(Some(d)),
        Err(ironflash::Error::NoDriver(why)) => {
            println!("skipped: no CUDA driver ({why})");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The word after `flag` on the command line (`None` without the flag; an error when nothing follows it).
#[allow(dead_code)] // Not every example takes a flag with a value.
pub fn flag_value<'a>(args: &'a [String], flag: &str) -> Result<Option<&'a str>, String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args.get(i + 1).map(|v| Some(v.as_str())).ok_or_else(|| format!("{flag} needs a value")),
        None => Ok(None),
    }
}

/// The comma-separated numbers after `flag` on the command line, or `default` without the flag.
#[allow(dead_code)] // Not every example takes a list of numbers.
pub fn usizes_arg(args: &[String], flag: &str, default: &[usize]) -> Result<Vec<usize>, Box<dyn std::error::Error>> {
    match flag_value(args, flag)? {
        Some(list) => Ok(list.split(',').map(str::parse).collect::<Result<_, _>>()?),
        None => Ok(default.to_vec()),
    }
}

/// The head dims `--dims` lists (comma-separated, `bench::grid::parse_dims` each), or `default` without the
/// flag.
#[allow(dead_code)] // Not every example takes `--dims`.
pub fn dims_arg(
    args: &[String],
    default: &[(usize, usize)],
) -> Result<Vec<(usize, usize)>, Box<dyn std::error::Error>> {
    match flag_value(args, "--dims")? {
        Some(list) => Ok(list.split(',').map(parse_dims).collect::<Result<_, _>>()?),
        None => Ok(default.to_vec()),
    }
}

/// How long [`settled_median_ms`] runs a call before timing it: under the card's power limit the
/// clocks follow the work that ran before, and on an H200 an FP8 row timed right after the bf16 row or
/// after a slower kernel read up to 15% off its steady rate (docs/perf.md, "A persistent FP8 forward").
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

/// [`median_ms`] of `run` once it has run back to back for [`SETTLE`].
#[allow(dead_code)] // Not every example times calls this way.
pub fn settled_median_ms(
    dev: &Device,
    mut run: impl FnMut() -> ironflash::Result<()>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let start = std::time::Instant::now();
    while start.elapsed() < SETTLE {
        for _ in 0..8 {
            run()?;
        }
        dev.synchronize()?;
    }
    median_ms(dev, run)
}

/// The median (the upper middle of an even count) over `REPS` back-to-back event-timed calls of `run`
/// (`bench::timing::time_calls`), after `WARMUP` untimed ones.
#[allow(dead_code)] // Not every example times calls this way.
pub fn median_ms(
    dev: &Device,
    mut run: impl FnMut() -> ironflash::Result<()>,
) -> Result<f64, Box<dyn std::error::Error>> {
    for _ in 0..WARMUP {
        run()?;
    }
    dev.synchronize()?;
    let mut ms = time_calls(dev, REPS, |_| run())?;
    ms.sort_by(f64::total_cmp);
    Ok(ms[REPS / 2])
}

/// A `[1, len, heads, dim]` tensor of random values: one random block of up to 64K tokens, repeated
/// (host generation of 2^31 values would take minutes; the times do not depend on the values).
#[allow(dead_code)] // The long-sequence examples only.
pub fn random_tokens(len: usize, heads: usize, dim: usize, seed: u64) -> HostTensor<bf16> {
    let block = len.min(1 << 16);
    let one = HostTensor::<bf16>::random_seeded([1, block, heads, dim], 1.0, seed);
    let data: Vec<bf16> = one.data.iter().copied().cycle().take(len * heads * dim).collect();
    HostTensor { data, layout: ironflash::Layout::contiguous([1, len, heads, dim]) }
}

/// The median (the upper middle of an even count) of `reps` calls of `run`, each timed on the host
/// around a synchronize, after one untimed call: for calls of seconds (long sequences), where event
/// timing adds nothing and a call's allocations should count.
#[allow(dead_code)] // The long-sequence examples only.
pub fn host_timed_median_ms(
    dev: &Device,
    reps: usize,
    mut run: impl FnMut() -> ironflash::Result<()>,
) -> ironflash::Result<f64> {
    let mut ms = Vec::new();
    for rep in 0..=reps {
        let t = std::time::Instant::now();
        run()?;
        dev.synchronize()?;
        if rep > 0 {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}
