//! What an attention call computes, beyond its tensors: the mask (causal, sliding window), the score
//! modifiers (softcap, ALiBi, sinks), the scale, and the backward's determinism.

use cudarc::driver::CudaSlice;

/// One f32 per query head, or per (batch, query head), living on the host (CPU path) or on the device
/// (GPU path): ALiBi slopes and sink logits.
#[derive(Clone, Copy)]
pub enum PerHead<'a> {
    Host(&'a [f32]),
    Device(&'a CudaSlice<f32>),
}

impl PerHead<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            PerHead::Host(s) => s.len(),
            PerHead::Device(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for PerHead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PerHead::Host(s) => write!(f, "Host({} values)", s.len()),
            PerHead::Device(s) => write!(f, "Device({} values on device {})", s.len(), s.ordinal()),
        }
    }
}

/// Two `PerHead`s are equal when they are the same buffer.
impl PartialEq for PerHead<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PerHead::Host(a), PerHead::Host(b)) => std::ptr::eq(*a, *b),
            (PerHead::Device(a), PerHead::Device(b)) => std::ptr::eq(*a, *b),
            _ => false,
        }
    }
}

/// A sliding window: key j is visible to query i iff
/// `i + seqlen_k − seqlen_q − left <= j <= i + seqlen_k − seqlen_q + right` (FlashAttention's
/// `window_size`, aligned bottom-right); `None` leaves that side unbounded. With `causal`, `right` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub left: Option<usize>,
    pub right: Option<usize>,
}

/// Options of one attention call (forward or backward). The backward must get the forward's options.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AttnOptions<'a> {
    /// Mask key j for query i when j > i + (seqlen_k - seqlen_q): the causal mask aligned to the
    /// bottom-right corner, as FlashAttention >= 2.1 does when the lengths differ.
    pub causal: bool,
    /// Sliding-window (local) attention; the default sees every key (or every causal key).
    pub window: Window,
    /// Multiplies Q K^T before the softmax; `None` means 1/sqrt(head_dim).
    pub softmax_scale: Option<f32>,
    /// Softcapping (Gemma-2): the scaled score s becomes `cap · tanh(s / cap)` before the softmax.
    /// Finite and positive.
    pub softcap: Option<f32>,
    /// ALiBi: per-query-head slopes, `[heads_q]` or `[batch, heads_q]` f32; the score of query i and key
    /// j gets `−slope · |i + seqlen_k − seqlen_q − j|` added (FlashAttention's convention), after the
    /// softcap.
    pub alibi_slopes: Option<PerHead<'a>>,
    /// Attention sinks (gpt-oss): one f32 logit per query head, `[heads_q]`, that joins every row's
    /// softmax denominator and contributes no value. The LSE includes it; the backward returns its
    /// gradient.
    pub sinks: Option<PerHead<'a>>,
    /// Backward only: bitwise-identical gradients run to run (no floating-point atomics).
    pub deterministic: bool,
}

impl<'a> AttnOptions<'a> {
    pub fn causal() -> Self {
        AttnOptions { causal: true, ..Self::default() }
    }
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.softmax_scale = Some(scale);
        self
    }
    /// A sliding window of `left` keys before and `right` keys after the diagonal (`None`: unbounded).
    pub fn with_window(mut self, left: Option<usize>, right: Option<usize>) -> Self {
        self.window = Window { left, right };
        self
    }
    pub fn with_softcap(mut self, cap: f32) -> Self {
        self.softcap = Some(cap);
        self
    }
    pub fn with_alibi(mut self, slopes: PerHead<'a>) -> Self {
        self.alibi_slopes = Some(slopes);
        self
    }
    pub fn with_sinks(mut self, sinks: PerHead<'a>) -> Self {
        self.sinks = Some(sinks);
        self
    }
    pub fn deterministic(mut self) -> Self {
        self.deterministic = true;
        self
    }
    /// The scale that will be used for `head_dim`.
    pub fn scale_for(&self, head_dim: usize) -> f32 {
        self.softmax_scale.unwrap_or(1.0 / (head_dim as f32).sqrt())
    }
}
