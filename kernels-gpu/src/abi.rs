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

/// The fused forward kernels (`fwd/`): O = softmax(scale·QKᵀ + mask)·V and the LSE of each row.
///
/// Tensors are `[batch, seqlen, heads, head_dim]` with the element strides below (head_dim contiguous;
/// every stride a multiple of 8 elements and every base 16-byte aligned, for 16-byte vector access).
/// Launch: grid `(ceil(seqlen_q / block_m), heads_q, batch)`, `warps · 32` threads, the tile's dynamic
/// shared memory (`tiles::FwdTile::smem_bytes`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FwdParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    /// f32 `[batch, heads_q, seqlen_q]`, contiguous, natural log; `-inf` for fully masked rows.
    pub lse: u64,
    /// Element strides `[batch, seqlen, heads]` of q, k, v and o.
    pub q_strides: [u64; 3],
    pub k_strides: [u64; 3],
    pub v_strides: [u64; 3],
    pub o_strides: [u64; 3],
    pub seqlen_q: u32,
    pub seqlen_k: u32,
    pub heads_q: u32,
    /// Query heads per K/V head (MQA/GQA): query head h reads K/V head h / group.
    pub group: u32,
    /// softmax_scale · log2(e): scores are taken to base-2 exponent units once, so the softmax uses exp2.
    pub scale_log2: f32,
    /// 1: causal, aligned bottom-right (key j visible to query i iff j <= i + seqlen_k - seqlen_q).
    pub causal: u32,
}
