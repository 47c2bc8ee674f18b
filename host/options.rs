//! What an attention call computes, beyond its tensors.

/// Options of one attention call (forward or backward).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AttnOptions {
    /// Mask key j for query i when j > i + (seqlen_k - seqlen_q): the causal mask aligned to the
    /// bottom-right corner, as FlashAttention >= 2.1 does when the lengths differ.
    pub causal: bool,
    /// Multiplies Q K^T before the softmax; `None` means 1/sqrt(head_dim).
    pub softmax_scale: Option<f32>,
    /// Backward only: bitwise-identical gradients run to run (no floating-point atomics).
    pub deterministic: bool,
}

impl AttnOptions {
    pub fn causal() -> Self {
        AttnOptions { causal: true, ..Self::default() }
    }
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.softmax_scale = Some(scale);
        self
    }
    /// The scale that will be used for `head_dim`.
    pub fn scale_for(&self, head_dim: usize) -> f32 {
        self.softmax_scale.unwrap_or(1.0 / (head_dim as f32).sqrt())
    }
}
