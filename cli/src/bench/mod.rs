//! The benchmark suite and the main job's checks, as a library so that `benches/suite.rs` and the
//! `ironflash` binary share them.
//!
//! - `case`: what is measured (`Case`) and what was found (`Record`, also the JSON-lines row).
//! - `grid`: the papers' grid, the long-context sweep, the decode grid.
//! - `timing`: CUDA-event timing, device-side random inputs, the memory pool's high-water mark, the
//!   bf16 matmul peak.
//! - `runner`: one case on one of our implementations; `peers`: PyTorch through `benches/peers.py`.
//! - `report`: Markdown and JSON lines; `plot`: PNG charts; `suite`: all of it as one call.
//! - `overhead`: what a call costs beyond its kernels (allocation, synchronisation, host enqueue);
//!   `cold`: a fresh process's first calls per head dim.
//! - `accuracy`: every path against the f64 reference.

pub mod accuracy;
pub mod case;
pub mod cold;
pub mod grid;
pub mod overhead;
pub mod peers;
pub mod plot;
pub mod report;
pub mod runner;
pub mod stats;
pub mod suite;
pub mod timing;

pub use case::{Case, DTypeName, GridName, Impl, MemMethod, Pass, Record, Status};
pub use suite::{run_suite, BenchArgs, SuiteReport};
