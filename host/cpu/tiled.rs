//! PLACEHOLDER (being written): tiled online-softmax CPU attention.
use crate::dtype::Element;
use crate::error::Result;
use crate::options::AttnOptions;
use crate::tensor::HostTensor;

/// Output of a forward call: O shaped like q, and the f32 LSE `[batch, heads_q, seqlen_q]`.
#[derive(Debug, Clone)]
pub struct ForwardOutput<T> {
    pub o: HostTensor<T>,
    pub lse: Vec<f32>,
}

pub fn forward<T: Element>(_q: &HostTensor<T>, _k: &HostTensor<T>, _v: &HostTensor<T>, _opts: &AttnOptions) -> Result<ForwardOutput<T>> {
    todo!()
}
