//! Command-line parsing and dispatch. Every failure ends as one line on stderr and a non-zero exit code.

mod check;
mod default_job;
mod info;
mod summary;

use clap::{Parser, Subcommand};
use ironflash::{Device, Error};
use ironflash_cli::bench::BenchArgs;
use std::process::ExitCode;

/// ironflash: exact FlashAttention for Rust, with the GPU kernels written in Rust.
///
/// Without a subcommand: a device summary, a check of every available path (fused GPU, standard GPU,
/// CPU) against an exact f64 reference on a few shapes, and a short timing table. Without a GPU the CPU
/// path runs, and the output says so.
#[derive(Parser)]
#[command(name = "ironflash", version, about, long_about)]
struct Cli {
    /// CUDA device ordinal.
    #[arg(long, global = true, default_value_t = 0)]
    device: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Device properties and the fused kernel's tile configuration per head dim, with the reason.
    Info,
    /// A wide correctness sweep: every head dim, both masks, bf16 and f16, GQA/MQA, N_q != N_k.
    Check(check::CheckArgs),
    /// The benchmark suite: grids, implementations (including PyTorch peers), table, JSON lines, plots.
    Bench(Box<BenchArgs>),
}

/// What a job returns: its exit code, or an error to print as one line.
pub type JobResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// The device, `None` when there is no driver, or an error for anything else. Without a driver one
/// line says so, followed by `instead` (what the job does then).
pub fn open_device(ordinal: usize, instead: &str) -> Result<Option<Device>, Error> {
    match Device::open(ordinal) {
        Ok(d) => Ok(Some(d)),
        Err(Error::NoDriver(why)) => {
            summary::no_gpu_line(&why, instead);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// An error and its causes, on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s.replace('\n', " ")
}

pub fn main() -> ExitCode {
    // A panic is a bug in ironflash: say so in one line, without a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        if msg.contains("failed printing to std") {
            // The reader went away (`ironflash info | head`): nothing left to say to it.
            std::process::exit(0);
        }
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("ironflash: internal error: {msg}{at}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print in full; a usage error is its first line and a pointer to --help.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            // An invalid choice names the valid ones (clap puts them on a line of their own).
            let choices = text.lines().map(str::trim).find(|l| l.starts_with("[possible values:"));
            match choices {
                Some(c) => eprintln!("ironflash: error: {first} {c} (see ironflash --help)"),
                None => eprintln!("ironflash: error: {first} (see ironflash --help)"),
            }
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        None => default_job::run(cli.device),
        Some(Command::Info) => info::run(cli.device),
        Some(Command::Check(args)) => check::run(cli.device, &args),
        Some(Command::Bench(args)) => bench(cli.device, &args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ironflash: error: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn bench(ordinal: usize, args: &BenchArgs) -> JobResult {
    let dev = open_device(ordinal, "the suite runs the CPU rows only")?;
    if let Some(line) = ironflash_cli::bench::suite::cold_start_child(args, dev.as_ref()) {
        println!("{}", line?);
        return Ok(ExitCode::SUCCESS);
    }
    let report = ironflash_cli::bench::run_suite(args, dev.as_ref())?;
    for line in &report.header {
        println!("- {line}");
    }
    println!("\n{}", report.markdown);
    for f in &report.files {
        eprintln!("wrote {}", f.display());
    }
    // A run that measured nothing is a failure for a script that asked for numbers.
    if report.records.is_empty() {
        eprintln!(
            "ironflash: error: no case ran (the grid, head dims, lengths and implementations chosen select none)"
        );
        return Ok(ExitCode::FAILURE);
    }
    if !report.records.iter().any(|r| r.status == ironflash_cli::bench::Status::Ok) {
        eprintln!("ironflash: error: every row failed (see the status column)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
