//! The default job: device summary, every available path against the f64 reference on a few shapes,
//! then a short timing table.

use super::summary::device_line;
use super::{open_device, JobResult};
use ironflash_cli::bench::accuracy::{check_paths, check_varlen, quick_shapes, CheckResult, Verdict};
use ironflash_cli::bench::case::{Case, DTypeName, GridName, Impl, Record};
use ironflash_cli::bench::report::format_bytes;
use ironflash_cli::bench::runner::{run_cpu_case, run_gpu_case, RepPolicy};
use std::process::ExitCode;

pub fn run(ordinal: usize) -> JobResult {
    println!("ironflash {}: exact FlashAttention for Rust", env!("CARGO_PKG_VERSION"));
    let dev = open_device(ordinal, &super::summary::cpu_fallback())?;
    if let Some(d) = &dev {
        println!("{}", device_line(d));
    }
    let paths: &[Impl] = if dev.is_some() { &[Impl::Fused, Impl::Standard, Impl::Cpu] } else { &[Impl::Cpu] };

    println!("\ncorrectness against the exact f64 reference (O: relative L2 error, LSE: max |diff|)");
    print_check_header();
    let mut results = Vec::new();
    for (seed, shape) in quick_shapes().iter().enumerate() {
        for r in check_paths(dev.as_ref(), paths, shape, seed as u64)? {
            print_check_row(&r);
            results.push(r);
        }
    }
    if dev.is_some() {
        // Three sequences of their own lengths packed in one call (`gpu::flash_forward_varlen`).
        let r = check_varlen(dev.as_ref(), 7)?;
        print_check_row_named("fused (varlen)", &r);
        results.push(r);
    }

    println!("\ntiming (median; GPU: CUDA events around each call, CPU: wall clock)");
    println!("{:<20} {:<36} {:>10} {:>9} {:>11}", "path", "shape", "ms", "TFLOP/s", "extra mem");
    let case = |b, h, n, d, causal| Case::fwd(GridName::Custom, b, h, n, d, causal, DTypeName::Bf16);
    if let Some(d) = &dev {
        for c in [case(4, 16, 4096, 128, false), case(4, 16, 4096, 128, true)] {
            for imp in [Impl::Fused, Impl::Standard] {
                print_timing_row(&run_gpu_case(d, imp, &c, &RepPolicy::QUICK));
            }
        }
    }
    for c in [case(1, 8, 1024, 64, false), case(1, 8, 1024, 64, true)] {
        print_timing_row(&run_cpu_case(&c, &RepPolicy::QUICK_CPU));
    }

    let failed = results.iter().filter(|r| matches!(r.verdict, Verdict::Fail(_))).count();
    let passed = results.iter().filter(|r| r.verdict == Verdict::Pass).count();
    let unavailable: Vec<&str> = {
        let mut v: Vec<&str> =
            results.iter().filter(|r| matches!(r.verdict, Verdict::Unavailable(_))).map(|r| r.imp.name()).collect();
        v.dedup();
        v
    };
    let mut line = format!("\n{passed} of {} checks passed", results.len());
    if !unavailable.is_empty() {
        line.push_str(&format!(" ({} not available here)", unavailable.join(", ")));
    }
    if dev.is_none() {
        line.push_str("; CPU path only (no GPU)");
    }
    println!("{line}");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn print_check_header() {
    println!("{:<20} {:<41} {:>9} {:>9}  result", "path", "shape", "O err", "LSE err");
}

pub fn print_check_row(r: &CheckResult) {
    print_check_row_named(r.imp.name(), r);
}

/// As [`print_check_row`], under another path name.
pub fn print_check_row_named(path: &str, r: &CheckResult) {
    let num = |x: Option<f64>| x.map(|v| format!("{v:.1e}")).unwrap_or_else(|| "-".into());
    let verdict = match &r.verdict {
        Verdict::Pass => format!("pass (bounds {:.0e}, {:.0e})", r.tol.0, r.tol.1),
        Verdict::Fail(why) => format!("FAIL: {why}"),
        Verdict::Unavailable(why) => format!("not available: {why}"),
    };
    println!("{:<20} {:<41} {:>9} {:>9}  {verdict}", path, r.shape.to_string(), num(r.rel_l2), num(r.lse_err));
}

fn print_timing_row(r: &Record) {
    let c = r.case();
    let shape = format!(
        "B={} H={} N={} D={}{} {}",
        c.b,
        c.h,
        c.n_label(),
        c.d,
        if c.causal { " causal" } else { "" },
        c.dtype.name()
    );
    match (r.ms, r.tflops) {
        (Some(ms), Some(t)) => {
            let mem = r.extra_mem_bytes.map(format_bytes).unwrap_or_else(|| "-".into());
            let t = if t >= 1.0 { format!("{t:.1}") } else { format!("{t:.4}") };
            println!("{:<20} {:<36} {ms:>10.3} {t:>9} {mem:>11}", r.impl_name, shape);
        }
        _ => println!("{:<20} {:<36} {:?}: {}", r.impl_name, shape, r.status, r.note),
    }
}
