//! The benchmark suite: `cargo bench --bench suite -- [--quick] [flags]` (or `ironflash bench`, the same
//! code). On a GPU it times ironflash's fused kernel and standard baseline with CUDA events, the CPU path
//! on small shapes, and PyTorch's SDPA backends through `benches/peers.py`, then prints one Markdown
//! table and writes JSON lines and PNG plots (see `--help`). Without a GPU only the CPU rows run.

use clap::Parser;
use ironflash_cli::bench::suite::cold_start_child;
use ironflash_cli::bench::{run_suite, BenchArgs};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "suite", about = "ironflash benchmark suite: fused vs standard vs CPU vs PyTorch SDPA backends")]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dev = match ironflash::Device::open(cli.device) {
        Ok(d) => Some(d),
        Err(ironflash::Error::NoDriver(why)) => {
            eprintln!("no CUDA driver ({why}): running the CPU rows only");
            None
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cold_start_child(&cli.args, dev.as_ref()) {
        Some(Ok(line)) => {
            println!("{line}");
            return ExitCode::SUCCESS;
        }
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        None => {}
    }
    match run_suite(&cli.args, dev.as_ref()) {
        Ok(report) => {
            for line in &report.header {
                println!("- {line}");
            }
            println!("\n{}", report.markdown);
            for f in &report.files {
                eprintln!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
