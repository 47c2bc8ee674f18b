//! The main job: `cargo run --release` checks every available attention path against the f64 reference
//! and times them; `info`, `check` and `bench` go further (see `--help`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
