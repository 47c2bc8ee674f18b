//! `ironflash check`: every path against the f64 reference over a wide sweep of shapes.

use super::default_job::{print_check_header, print_check_row};
use super::summary::device_line;
use super::{open_device, JobResult};
use indicatif::{ProgressBar, ProgressStyle};
use ironflash_cli::bench::accuracy::{check_paths, sweep_shapes, Verdict};
use ironflash_cli::bench::case::{DTypeName, Impl};
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Element types, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bf16,f16")]
    dtype: Vec<DTypeName>,
    /// Forward paths to check, comma-separated: fused, standard, cpu (fused-det and peers have no forward of
    /// their own and are ignored). Default: every available one.
    #[arg(long = "impl", value_enum, value_delimiter = ',')]
    impls: Vec<Impl>,
    /// Keep only these head dims (comma-separated; default: all supported).
    #[arg(long, value_delimiter = ',')]
    head_dims: Vec<usize>,
    /// Cap on sequence lengths (the sweep reaches 513).
    #[arg(long, default_value_t = 513)]
    max_len: usize,
    /// Seed of the random inputs (each shape adds its index).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print every result, not only failures.
    #[arg(long, short)]
    verbose: bool,
}

pub fn run(ordinal: usize, args: &CheckArgs) -> JobResult {
    let dev = open_device(ordinal, &super::summary::cpu_fallback())?;
    if let Some(d) = &dev {
        println!("{}", device_line(d));
    }
    let mut impls: Vec<Impl> = if args.impls.is_empty() {
        vec![Impl::Fused, Impl::Standard, Impl::Cpu]
    } else {
        args.impls.iter().copied().filter(|i| !matches!(i, Impl::Peers | Impl::FusedDet)).collect()
    };
    if dev.is_none() {
        impls.retain(|i| *i == Impl::Cpu);
        if impls.is_empty() {
            return Err("no GPU here, and only GPU paths were asked for (add --impl cpu)".into());
        }
    }
    let shapes: Vec<_> = sweep_shapes(&args.dtype, args.max_len.max(1))
        .into_iter()
        .filter(|s| args.head_dims.is_empty() || args.head_dims.contains(&s.d))
        .collect();
    if shapes.is_empty() {
        return Err("no shapes left after --head-dims (supported: 32, 64, 96, 128, 192, 256)".into());
    }
    println!(
        "checking {} against the f64 reference on {} shapes",
        impls.iter().map(|i| i.name()).collect::<Vec<_>>().join(", "),
        shapes.len()
    );
    let pb = ProgressBar::new(shapes.len() as u64);
    pb.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {wide_msg}")?);
    let mut results = Vec::new();
    let mut printed_header = false;
    for (i, shape) in shapes.iter().enumerate() {
        pb.set_message(shape.to_string());
        for r in check_paths(dev.as_ref(), &impls, shape, args.seed + i as u64)? {
            if args.verbose || matches!(r.verdict, Verdict::Fail(_)) {
                pb.suspend(|| {
                    if !printed_header {
                        print_check_header();
                        printed_header = true;
                    }
                    print_check_row(&r)
                });
            }
            results.push(r);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();

    println!(
        "\n{:<20} {:>6} {:>6} {:>13} {:>13} {:>14}",
        "path", "pass", "FAIL", "unavailable", "worst O err", "worst LSE err"
    );
    for imp in &impls {
        let mine: Vec<_> = results.iter().filter(|r| r.imp == *imp).collect();
        let count = |f: &dyn Fn(&Verdict) -> bool| mine.iter().filter(|r| f(&r.verdict)).count();
        let worst = |f: &dyn Fn(&&&ironflash_cli::bench::accuracy::CheckResult) -> Option<f64>| {
            mine.iter().filter_map(|r| f(&r)).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        };
        let fmt = |x: Option<f64>| x.map(|v| format!("{v:.1e}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:>6} {:>6} {:>13} {:>13} {:>14}",
            imp.name(),
            count(&|v| *v == Verdict::Pass),
            count(&|v| matches!(v, Verdict::Fail(_))),
            count(&|v| matches!(v, Verdict::Unavailable(_))),
            fmt(worst(&|r| r.rel_l2)),
            fmt(worst(&|r| r.lse_err)),
        );
    }
    let failed = results.iter().filter(|r| matches!(r.verdict, Verdict::Fail(_))).count();
    if failed == 0 {
        println!("\nall checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{failed} checks FAILED");
        Ok(ExitCode::FAILURE)
    }
}
