//! The benchmark suite as one call, shared by `benches/suite.rs` and `ironflash bench`: picks the cases,
//! measures the device's matmul peak, runs ironflash's implementations, runs the PyTorch peers, merges,
//! and writes the Markdown table, the JSON lines and the plots.

use crate::bench::case::{Case, DTypeName, GridName, Impl, Pass, Record};
use crate::bench::grid::{self, parse_len, parse_shape, GridFilter};
use crate::bench::runner::{run_cpu_case, run_gpu_case, CpuLimits, RepPolicy};
use crate::bench::{cold, overhead, peers, plot, report, timing};
use indicatif::{ProgressBar, ProgressStyle};
use ironflash::device::Device;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CausalChoice {
    Both,
    On,
    Off,
}

/// The suite's options (the `bench` subcommand and `cargo bench --bench suite -- ...`).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Grids to run, comma-separated: paper (B·N = 16K, hidden 2048, N 512..16K, D 64/128/256), long
    /// (B=1 H=16 D=128, N 16K..256K, 256K causal only), decode (N_q 1..16, N_k 1K..64K, B 1..64). Default: all three, or
    /// none when --shape is given.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub grid: Vec<GridName>,
    /// Extra self-attention shape B,H,N,D (repeatable), e.g. --shape 4,16,4096,128.
    #[arg(long = "shape", value_name = "B,H,N,D", value_parser = parse_shape)]
    pub shapes: Vec<[usize; 4]>,
    /// Element type of every input.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DTypeName,
    /// Implementations, comma-separated: fused, fused-det (the backward's deterministic mode; backward
    /// rows only), standard, cpu, peers (PyTorch SDPA backends and a naive matmul-softmax-matmul).
    /// Default: all.
    #[arg(long = "impl", value_enum, value_delimiter = ',')]
    pub impls: Vec<Impl>,
    /// Keep only these head dims (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub head_dims: Vec<usize>,
    /// Keep only these sequence lengths (N; the KV length for decode), e.g. 2048,16K.
    #[arg(long, value_delimiter = ',', value_parser = parse_len)]
    pub seqlens: Vec<usize>,
    /// Causal mask: both, on or off.
    #[arg(long, value_enum, default_value = "both")]
    pub causal: CausalChoice,
    /// Passes, comma-separated: fwd, bwd (the backward call alone is timed; its forward runs before).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fwd")]
    pub pass: Vec<Pass>,
    /// Fewer points per chart and fewer repetitions (about a minute on an H100).
    #[arg(long)]
    pub quick: bool,
    /// Fixed number of timed repetitions per case, at least 1 (default: enough for ~0.4 s, 5..50;
    /// --quick ~0.1 s, 3..20).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=1_000_000), allow_negative_numbers = true)]
    pub reps: Option<i64>,
    /// Directory for results.jsonl, results.md and plots/.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    /// JSON lines output [default: OUT_DIR/results.jsonl].
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Markdown output [default: OUT_DIR/results.md].
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Directory for the PNG plots [default: OUT_DIR/plots].
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Do not draw plots.
    #[arg(long)]
    pub no_plots: bool,
    /// Merge the records of these JSON lines files into the report (rows for the same implementation and
    /// case replace earlier ones; rows for cases not selected are dropped).
    #[arg(long, value_name = "FILE")]
    pub merge: Vec<PathBuf>,
    /// Python interpreter for the peers.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The peers script [default: benches/peers.py].
    #[arg(long)]
    pub peers_script: Option<PathBuf>,
    /// Skip the runtime tables, which run with the fused rows on a GPU: call overhead (allocating vs
    /// `_into` calls, synchronised vs back to back, host enqueue, the driver primitives;
    /// `bench::overhead`) and cold start (each head dim's first calls in a fresh process with the
    /// driver's JIT cache off; `bench::cold`).
    #[arg(long)]
    pub no_runtime: bool,
    /// Internal: be one cold-start child process at these head dims (`bench::cold`).
    #[arg(long, hide = true, value_name = "D")]
    pub cold_start_child: Option<String>,
    /// The CPU path runs only cases of at most this many GFLOP.
    #[arg(long, default_value_t = CpuLimits::default().max_gflop)]
    pub cpu_max_gflop: f64,
}

impl BenchArgs {
    fn impls(&self) -> Vec<Impl> {
        if self.impls.is_empty() {
            vec![Impl::Fused, Impl::FusedDet, Impl::Standard, Impl::Cpu, Impl::Peers]
        } else {
            self.impls.clone()
        }
    }

    fn filter(&self) -> GridFilter {
        GridFilter {
            quick: self.quick,
            head_dims: self.head_dims.clone(),
            seqlens: self.seqlens.clone(),
            causal: match self.causal {
                CausalChoice::Both => None,
                CausalChoice::On => Some(true),
                CausalChoice::Off => Some(false),
            },
            passes: self.pass.clone(),
        }
    }

    /// Every case, in run order.
    pub fn cases(&self) -> Vec<Case> {
        let f = self.filter();
        let grids = if self.grid.is_empty() && self.shapes.is_empty() {
            vec![GridName::Paper, GridName::Long, GridName::Decode]
        } else {
            self.grid.clone()
        };
        let mut out: Vec<Case> = grids.into_iter().flat_map(|g| grid::cases(g, self.dtype, &f)).collect();
        out.extend(grid::custom_cases(&self.shapes, self.dtype, &f));
        out
    }

    fn policy(&self) -> RepPolicy {
        let base = if self.quick { RepPolicy::QUICK } else { RepPolicy::FULL };
        match self.reps {
            Some(n) => RepPolicy { min_reps: n as usize, max_reps: n as usize, ..base },
            None => base,
        }
    }
}

/// What a suite run produced.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// Lines on where and how it ran (device, driver, peak, peers, elapsed), also at the top of results.md.
    pub header: Vec<String>,
    pub records: Vec<Record>,
    pub markdown: String,
    pub files: Vec<PathBuf>,
}

fn progress_bar(len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {wide_msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb
}

/// Print above the progress bar, or plainly when the bar is hidden (stderr not a terminal, as in logs).
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

fn brief(r: &Record) -> String {
    let c = r.case();
    let what = format!(
        "{:<19} {:<6} B={:<3} H={:<2} N={:<11} D={:<3} {:<10}",
        r.impl_name,
        r.grid.name(),
        c.b,
        c.h,
        c.n_label(),
        c.d,
        if c.causal { "causal" } else { "non-causal" }
    );
    match (r.ms, r.tflops) {
        // CPU rows run at a fraction of a TFLOP/s: enough digits that they do not read as 0.0.
        (Some(ms), Some(t)) if t < 1.0 => format!("{what} {ms:>10.4} ms {t:>7.4} TFLOP/s"),
        (Some(ms), Some(t)) => format!("{what} {ms:>10.4} ms {t:>7.1} TFLOP/s"),
        _ => format!("{what} {:?} {}", r.status, r.note),
    }
}

/// Run the suite. `dev` is `None` on a machine without a GPU: then only the CPU path (and the peers'
/// own check for a GPU) run, and the header says so.
pub fn run_suite(args: &BenchArgs, dev: Option<&Device>) -> Result<SuiteReport, String> {
    let started = Instant::now();
    let cases = args.cases();
    let impls = args.impls();
    let policy = args.policy();
    let cpu_limits = CpuLimits { max_gflop: args.cpu_max_gflop, ..CpuLimits::default() };
    let mut header = Vec::new();
    let command: Vec<String> = std::env::args().collect();
    header.push(format!("command: {}", command.join(" ")));
    let device_name = match dev {
        Some(d) => {
            let i = d.info();
            let (free, total) = d.mem_info().map_err(|e| e.to_string())?;
            header.push(format!(
                "device: {} (sm_{}{}, {} SMs, L2 {} MiB, {:.1} GiB, {:.1} GiB free), driver {}.{}",
                i.name,
                i.compute_capability.0,
                i.compute_capability.1,
                i.sm_count,
                i.l2_bytes >> 20,
                total as f64 / (1u64 << 30) as f64,
                free as f64 / (1u64 << 30) as f64,
                i.driver_version / 1000,
                (i.driver_version % 1000) / 10
            ));
            i.name.clone()
        }
        None => {
            header.push("device: none (no CUDA driver): GPU rows skipped, the CPU path runs".into());
            "CPU".into()
        }
    };
    header.push(format!(
        "cases: {} ({}), dtype {}, {} mode",
        cases.len(),
        impls.iter().map(|i| i.name()).collect::<Vec<_>>().join(", "),
        args.dtype.name(),
        if args.quick { "quick" } else { "full" }
    ));
    for line in &header {
        eprintln!("{line}");
    }

    let gpu_impls: Vec<Impl> =
        impls.iter().copied().filter(|i| matches!(i, Impl::Fused | Impl::FusedDet | Impl::Standard)).collect();
    let peak = match dev {
        Some(d) if !gpu_impls.is_empty() || impls.contains(&Impl::Peers) => {
            let p = timing::measure_bf16_peak(d, if args.quick { 10 } else { 30 }).map_err(|e| e.to_string())?;
            header.push(format!("bf16 matmul peak (cuBLAS 8192x8192x8192, median): {p:.0} TFLOP/s"));
            eprintln!("{}", header.last().unwrap());
            Some(p)
        }
        _ => None,
    };

    let mut units = 0u64;
    for c in &cases {
        units += if dev.is_some() { gpu_impls.iter().filter(|&&i| runs_on(i, c)).count() as u64 } else { 0 };
        units += (impls.contains(&Impl::Cpu) && cpu_limits.allows(c)) as u64;
    }
    let pb = progress_bar(units);
    let mut records = Vec::new();
    for case in &cases {
        if let Some(d) = dev {
            for &imp in gpu_impls.iter().filter(|&&i| runs_on(i, case)) {
                pb.set_message(format!("{} {} N={} D={}", imp.name(), case.grid.name(), case.n_label(), case.d));
                let r = run_gpu_case(d, imp, case, &policy);
                say(&pb, brief(&r));
                records.push(r);
                pb.inc(1);
            }
        }
        if impls.contains(&Impl::Cpu) && cpu_limits.allows(case) {
            pb.set_message(format!("cpu {} N={} D={}", case.grid.name(), case.n_label(), case.d));
            let r = run_cpu_case(case, if args.quick { &RepPolicy::QUICK_CPU } else { &RepPolicy::CPU });
            say(&pb, brief(&r));
            records.push(r);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let runtime = match dev {
        Some(d) if impls.contains(&Impl::Fused) && !args.no_runtime => {
            eprintln!("call overhead: allocating vs _into calls, synchronised vs back to back, host enqueue");
            let calls = overhead::call_rows(d).map_err(|e| format!("call overhead: {e}"))?;
            let primitives = overhead::driver_primitives(d).map_err(|e| format!("driver primitives: {e}"))?;
            eprintln!("cold start: each head dim's first calls in a fresh process, JIT cache off");
            let exe = std::env::current_exe().map_err(|e| format!("cold start: this executable: {e}"))?;
            let cold = cold::in_fresh_processes(&exe, command.get(1..).unwrap_or_default());
            Some((calls, primitives, cold))
        }
        _ => None,
    };
    let mut peer_records = Vec::new();
    if impls.contains(&Impl::Peers) {
        match peers::locate_script(args.peers_script.as_deref()) {
            Some(script) => {
                let outcome = peers::run(&args.python, &script, &cases, args.quick, &args.out_dir);
                header.push(outcome.summary);
                peer_records = outcome.records;
            }
            None => header.push("peers: benches/peers.py not found: PyTorch rows omitted".into()),
        }
        eprintln!("{}", header.last().unwrap());
    }
    let mut all = peers::merge(records, peer_records, &cases);
    for path in &args.merge {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--merge {}: {e}", path.display()))?;
        let (extra, _) = report::parse_jsonl(&text);
        header.push(format!("merged {} rows from {}", extra.len(), path.display()));
        all = peers::merge(all, extra, &cases);
    }
    for r in &mut all {
        r.set_derived(peak);
    }
    let all = report::sorted(&all);
    header.push(format!("elapsed: {:.0} s", started.elapsed().as_secs_f64()));

    let mut markdown = report::markdown(&all);
    if let Some((calls, primitives, cold)) = &runtime {
        markdown += &format!("\n## Call overhead\n\n{}", overhead::markdown(calls, primitives));
        markdown +=
            &format!("\n## Cold start (a fresh process per head dim, JIT cache off)\n\n{}", cold::markdown(cold));
    }
    let mut files = write_outputs(args, &header, &all, &markdown, &device_name)?;
    if let Some((calls, primitives, cold)) = &runtime {
        let mut lines = calls.iter().map(serde_json::to_string).collect::<Vec<_>>();
        lines.extend(primitives.iter().map(serde_json::to_string));
        files.push(write_jsonl(&args.out_dir.join("overhead.jsonl"), lines)?);
        let lines = cold.iter().filter_map(|r| r.as_ref().ok()).map(serde_json::to_string).collect();
        files.push(write_jsonl(&args.out_dir.join("cold_start.jsonl"), lines)?);
    }
    Ok(SuiteReport { header, records: all, markdown, files })
}

/// Whether a GPU implementation has a row for a case: the deterministic mode exists only backward.
pub fn runs_on(imp: Impl, case: &Case) -> bool {
    imp != Impl::FusedDet || case.pass == Pass::Bwd
}

/// JSON lines (one serialised row each) into `path`.
fn write_jsonl(path: &Path, lines: Vec<serde_json::Result<String>>) -> Result<PathBuf, String> {
    let mut text = String::new();
    for line in lines {
        text += &line.map_err(|e| format!("{}: {e}", path.display()))?;
        text.push('\n');
    }
    write_file(path, &text)
}

/// `text` into `path`, its folder made first.
fn write_file(path: &Path, text: &str) -> Result<PathBuf, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

/// A cold-start child process (`--cold-start-child D`, started by the suite; `bench::cold`): the line
/// it prints instead of running the suite, or why it could not measure. `None` for the suite itself.
pub fn cold_start_child(args: &BenchArgs, dev: Option<&Device>) -> Option<Result<String, String>> {
    let spec = args.cold_start_child.as_deref()?;
    Some(match dev {
        Some(d) => cold::first_calls(d, spec).map(|row| cold::child_line(&row)).map_err(|e| e.to_string()),
        None => Err("a cold-start child needs a GPU".into()),
    })
}

fn write_outputs(
    args: &BenchArgs,
    header: &[String],
    records: &[Record],
    markdown: &str,
    device: &str,
) -> Result<Vec<PathBuf>, String> {
    let json = args.json.clone().unwrap_or_else(|| args.out_dir.join("results.jsonl"));
    let md = args.markdown.clone().unwrap_or_else(|| args.out_dir.join("results.md"));
    let mut files = vec![write_file(&json, &report::to_jsonl(records))?];
    let preamble: String = header.iter().map(|l| format!("- {l}\n")).collect();
    files.push(write_file(&md, &format!("{preamble}\n{markdown}"))?);
    if !args.no_plots {
        let dir = args.plots.clone().unwrap_or_else(|| args.out_dir.join("plots"));
        files.extend(plot::write_all(records, &dir, device)?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(argv: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("suite").chain(argv.iter().copied())).unwrap().args
    }

    #[test]
    fn reps_must_be_positive() {
        for bad in ["0", "-1"] {
            let e = Cli::try_parse_from(["suite", "--reps", bad]).err().expect(bad);
            assert!(e.to_string().contains("--reps"), "{bad}: {e}");
        }
        assert_eq!(parse(&["--reps", "3"]).reps, Some(3));
    }

    #[test]
    fn default_is_the_three_grids_forward() {
        let a = parse(&[]);
        let c = a.cases();
        for g in [GridName::Paper, GridName::Long, GridName::Decode] {
            assert!(c.iter().any(|x| x.grid == g), "{g:?}");
        }
        assert!(c.iter().all(|x| x.pass == Pass::Fwd && x.dtype == DTypeName::Bf16));
        assert_eq!(a.impls().len(), 5);
        assert_eq!(a.policy(), RepPolicy::FULL);
    }

    #[test]
    fn flags_pick_cases() {
        let a = parse(&["--shape", "2,8,1024,64", "--causal", "on", "--dtype", "f16", "--impl", "cpu", "--reps", "2"]);
        let c = a.cases();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0], Case::fwd(GridName::Custom, 2, 8, 1024, 64, true, DTypeName::F16));
        assert_eq!(a.impls(), vec![Impl::Cpu]);
        assert_eq!((a.policy().min_reps, a.policy().max_reps), (2, 2));
        let b = parse(&["--grid", "paper", "--head-dims", "128", "--seqlens", "2K,16K", "--quick"]);
        assert!(b.cases().iter().all(|x| x.d == 128 && (x.n_q == 2048 || x.n_q == 16384)));
        assert_eq!(b.cases().len(), 4);
        assert!(Cli::try_parse_from(["suite", "--shape", "1,2,3"]).is_err());
        assert!(Cli::try_parse_from(["suite", "--grid", "nope"]).is_err());
    }

    #[test]
    fn fused_det_has_backward_rows_only() {
        let a = parse(&["--shape", "1,2,256,64", "--pass", "fwd,bwd", "--impl", "fused,fused-det"]);
        assert_eq!(a.impls(), vec![Impl::Fused, Impl::FusedDet]);
        let cases = a.cases();
        assert_eq!(cases.len(), 4, "two passes, both masks");
        for c in &cases {
            assert!(runs_on(Impl::Fused, c) && runs_on(Impl::Standard, c));
            assert_eq!(runs_on(Impl::FusedDet, c), c.pass == Pass::Bwd);
        }
    }

    #[test]
    fn cold_start_child_is_a_mode_of_its_own() {
        assert!(cold_start_child(&parse(&[]), None).is_none(), "the suite itself is no child");
        let child = parse(&["--shape", "1,2,64,32", "--cold-start-child", "192v128"]);
        assert_eq!(child.cold_start_child.as_deref(), Some("192v128"));
        let e = cold_start_child(&child, None).expect("a child").unwrap_err();
        assert!(e.contains("needs a GPU"), "{e}");
        assert_eq!(grid::parse_dims("192v128"), Ok((192, 128)));
        assert_eq!(grid::parse_dims("64"), Ok((64, 64)));
        assert!(grid::parse_dims("x").is_err());
        let table = cold::markdown(&[Err("head dims 32: the child process ended with exit status: 1".into())]);
        assert!(table.lines().nth(2).is_some_and(|l| l.starts_with("| head dims 32:")), "{table}");
    }

    #[test]
    fn cpu_only_run_writes_every_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_str().unwrap();
        let a = parse(&["--shape", "1,2,64,32", "--causal", "off", "--impl", "cpu", "--reps", "1", "--out-dir", out]);
        let rep = run_suite(&a, None).unwrap();
        assert_eq!(rep.records.len(), 1);
        assert_eq!(rep.records[0].impl_name, "ironflash-cpu");
        assert!(rep.records[0].ms.is_some());
        assert!(rep.header.iter().any(|l| l.contains("no CUDA driver")));
        let jsonl = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
        let back = report::parse_jsonl(&jsonl).0;
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].case(), back[0].reps), (rep.records[0].case(), rep.records[0].reps));
        assert!((back[0].ms.unwrap() / rep.records[0].ms.unwrap() - 1.0).abs() < 1e-12);
        assert!(std::fs::read_to_string(dir.path().join("results.md")).unwrap().contains("| ironflash-cpu |"));
    }
}
