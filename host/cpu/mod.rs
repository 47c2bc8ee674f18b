//! The CPU side: an exact f64 reference (the oracle every kernel is checked against) and a tiled,
//! multithreaded online-softmax forward and backward (the library's CPU fallback).

mod microkernel;
mod packing;
pub mod paged;
pub mod reference;
pub mod tiled;
pub mod tiled_bwd;
pub mod varlen;
mod vecops;

pub use reference::{
    reference_backward, reference_backward_given_o, reference_backward_given_o_lse, reference_forward,
    ReferenceBackward, ReferenceForward,
};
pub use tiled::{forward, forward_into, ForwardOutput};
pub use tiled_bwd::{backward, BackwardOutput};
