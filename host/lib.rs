//! # ironflash
//!
//! Exact FlashAttention for Rust, with the GPU kernels written in Rust (see `kernels-gpu/`).
//!
//! Tensors use FlashAttention's layout `[batch, seqlen, heads, head_dim]` with free strides on the first
//! three dimensions. Every call is validated on the host first; bad input gets an [`Error`] naming the
//! argument, never a panic.
//!
//! ```
//! use ironflash::{bf16, cpu, AttnOptions, HostTensor};
//! let q = HostTensor::<bf16>::random_seeded([1, 64, 4, 64], 1.0, 1);
//! let k = HostTensor::<bf16>::random_seeded([1, 80, 2, 64], 1.0, 2);
//! let v = HostTensor::<bf16>::random_seeded([1, 80, 2, 64], 1.0, 3);
//! let out = cpu::forward(&q, &k, &v, &AttnOptions::causal()).unwrap();
//! assert_eq!(out.o.shape(), [1, 64, 4, 64]);
//! ```
//!
//! ## One training step's attention on the GPU
//!
//! The forward keeps what the backward needs, O and the f32 log-sum-exp of each row; the backward
//! takes the upstream gradient dO and recomputes the probabilities from them (no `seqlen_q x seqlen_k`
//! buffer in either direction). The options (causality, scale) must be the same for both calls;
//! `deterministic: true` makes the gradients bitwise reproducible run to run.
//!
//! ```no_run
//! use ironflash::{bf16, gpu, AttnOptions, Device, HostTensor};
//! # fn main() -> ironflash::Result<()> {
//! let dev = Device::open(0)?;
//! let mut seed = 0;
//! let mut upload = |shape| {
//!     seed += 1;
//!     dev.upload(&HostTensor::<bf16>::random_seeded(shape, 1.0, seed))
//! };
//! let (q, k, v) = (upload([2, 1024, 16, 128])?, upload([2, 1024, 4, 128])?, upload([2, 1024, 4, 128])?);
//! let opts = AttnOptions { causal: true, ..AttnOptions::default() };
//!
//! // Forward: O = softmax(scale·QKᵀ + mask)·V, and the LSE kept for the backward.
//! let fwd = gpu::flash_forward(&dev, &q, &k, &v, &opts)?;
//!
//! // ... the rest of the model's forward and backward produce dO, shaped like O ...
//! let d_o = upload([2, 1024, 16, 128])?;
//!
//! // Backward: dQ, dK, dV (dK and dV summed over each K/V head's 4 query heads).
//! let grads = gpu::flash_backward(&dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts)?;
//! assert_eq!(grads.dk.shape(), [2, 1024, 4, 128]);
//! # Ok(())
//! # }
//! ```

pub mod cpu;
pub mod device;
pub mod dtype;
pub mod error;
pub mod fp8;
pub mod gpu;
pub mod layout;
pub mod modules;
pub mod options;
pub mod problem;
pub mod ring;
pub mod tensor;

pub use device::{Device, DeviceInfo};
pub use dtype::{DType, Element, F8E4M3};
pub use error::{Arg, Error, Result};
/// The 16-bit float types the tensors hold, and their crate: a program needs no `half` dependency of
/// its own.
pub use half::{self, bf16, f16};
pub use layout::Layout;
pub use options::{AttnOptions, PerHead, Window};
pub use problem::AttnProblem;
pub use tensor::HostTensor;
