//! Kernel parameters and names, shared by the host (which fills and launches them) and the kernels
//! (which read them). Every struct is `#[repr(C)]` and passed by value as one kernel parameter.

/// Row softmax of the standard-attention baseline: `probs[r, :] = softmax(scores[r, :])` with the causal
/// mask applied, in place allowed, plus the natural-log LSE of each row (already scaled scores).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowSoftmaxParams {
    /// `rows x cols` scores (bf16 or f16), row stride `cols`.
    pub scores: u64,
    /// Output probabilities, same element type and layout as `scores` (may equal `scores`).
    pub probs: u64,
    /// `rows` f32 log-sum-exp values (`-inf` for a fully masked row).
    pub lse: u64,
    pub rows: u32,
    pub cols: u32,
    /// Query rows per (batch, head): row r is query `r % seqlen_q`.
    pub seqlen_q: u32,
    /// 1 for causal (bottom-right aligned: key j visible to query i iff j <= i + cols - seqlen_q).
    pub causal: u32,
}

/// Symbol names of the row-softmax kernels, per element type.
pub const ROW_SOFTMAX_BF16: &str = "row_softmax_bf16";
pub const ROW_SOFTMAX_F16: &str = "row_softmax_f16";
