//! The main job's and the benchmark suite's code, shared by the `ironflash` binary, `benches/suite.rs`
//! and the timing examples. The attention library itself is the `ironflash` crate; nothing here is
//! needed to use it.

pub mod bench;
