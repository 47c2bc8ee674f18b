//! # ironflash
//!
//! Exact FlashAttention for Rust, with the GPU kernels written in Rust (see `kernels-gpu/`).
//!
//! Tensors use FlashAttention's layout `[batch, seqlen, heads, head_dim]` with free strides on the first
//! three dimensions. Every call is validated on the host first; bad input gets an [`Error`] naming the
//! argument, never a panic.
//!
//! ```
//! use ironflash::{cpu, AttnOptions, HostTensor};
//! use half::bf16;
//! let mut rng = rand::rng();
//! let q = HostTensor::<bf16>::random([1, 64, 4, 64], 1.0, &mut rng);
//! let k = HostTensor::<bf16>::random([1, 80, 2, 64], 1.0, &mut rng);
//! let v = HostTensor::<bf16>::random([1, 80, 2, 64], 1.0, &mut rng);
//! let out = cpu::forward(&q, &k, &v, &AttnOptions::causal()).unwrap();
//! assert_eq!(out.o.shape(), [1, 64, 4, 64]);
//! ```

pub mod bench;
pub mod cpu;
pub mod device;
pub mod dtype;
pub mod error;
pub mod gpu;
pub mod layout;
pub mod modules;
pub mod options;
pub mod problem;
pub mod tensor;

pub use device::{Device, DeviceInfo};
pub use dtype::{DType, Element};
pub use error::{Arg, Error, Result};
pub use layout::Layout;
pub use options::AttnOptions;
pub use problem::AttnProblem;
pub use tensor::HostTensor;
