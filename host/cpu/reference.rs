//! PLACEHOLDER (being written): exact attention in f64.
use crate::dtype::Element;
use crate::error::Result;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use crate::tensor::HostTensor;

/// Exact forward attention in f64.
#[derive(Debug, Clone)]
pub struct ReferenceForward {
    pub problem: AttnProblem,
    /// `[batch, seqlen_q, heads_q, head_dim]`, contiguous.
    pub o: Vec<f64>,
    /// `[batch, heads_q, seqlen_q]`, natural log; `-inf` for fully masked rows.
    pub lse: Vec<f64>,
}

/// Exact gradients in f64, each contiguous in the shape of its input.
#[derive(Debug, Clone)]
pub struct ReferenceBackward {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
}

pub fn reference_forward<T: Element>(_q: &HostTensor<T>, _k: &HostTensor<T>, _v: &HostTensor<T>, _opts: &AttnOptions) -> Result<ReferenceForward> {
    todo!()
}

pub fn reference_backward<T: Element>(
    _q: &HostTensor<T>,
    _k: &HostTensor<T>,
    _v: &HostTensor<T>,
    _d_o: &HostTensor<T>,
    _opts: &AttnOptions,
) -> Result<ReferenceBackward> {
    todo!()
}
