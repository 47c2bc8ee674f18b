//! Kernel parameters and names, shared by the host (which fills and launches them) and the kernels
//! (which read them). Every struct is `#[repr(C)]` and passed by value as one kernel parameter.

pub use crate::attn::score::{Mask, ScoreParams};

/// Row softmax of the standard-attention baseline: `probs[r, :] = softmax(scores[r, :])` over the keys
/// the mask leaves visible (causal, window), in place allowed, plus the natural-log LSE of each row
/// (already scaled scores).
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
    /// Row r is query `r % mask.seqlen_q`; `cols = mask.seqlen_k`.
    pub mask: Mask,
}

/// Symbol names of the row-softmax kernels, per element type.
pub const ROW_SOFTMAX_BF16: &str = "row_softmax_bf16";
pub const ROW_SOFTMAX_F16: &str = "row_softmax_f16";

/// Row kernel of the standard-attention baseline's backward: for row r (query i of head h of batch b),
/// `delta = Σ_d dO[b, i, h, d]·O[b, i, h, d]`, then `ds[r, j] = scale · P[r, j] · (dP[r, j] − delta)`,
/// where S = scale·QKᵀ, so dS is taken with respect to QKᵀ (the scale folded in). Masked keys have P = 0
/// and get dS = 0. One warp per row; launch `ceil(rows / 8)` blocks of 256 threads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowSoftmaxBwdParams {
    /// `rows x cols` probabilities from the forward (bf16 or f16), row stride `cols`.
    pub probs: u64,
    /// `rows x cols` dP = dO·Vᵀ, same element type and layout.
    pub dp: u64,
    /// Output dS, same element type and layout (may equal `dp`).
    pub ds: u64,
    /// O and dO, `[batch, seqlen_q, heads_q, head_dim]` with the element strides below (head_dim contiguous;
    /// `head_dim` is O's, which is V's).
    pub o: u64,
    pub d_o: u64,
    pub o_strides: [u64; 3],
    pub d_o_strides: [u64; 3],
    /// `batch · heads_q · seqlen_q`; row r is query `r % seqlen_q` of head `(r / seqlen_q) % heads_q`.
    pub rows: u32,
    pub cols: u32,
    pub seqlen_q: u32,
    pub heads_q: u32,
    pub head_dim: u32,
    pub scale: f32,
}

/// Symbol names of the dS row kernels, per element type.
pub const ROW_SOFTMAX_BWD_BF16: &str = "row_softmax_bwd_bf16";
pub const ROW_SOFTMAX_BWD_F16: &str = "row_softmax_bwd_f16";

/// The fused forward kernels (`fwd/`): O = softmax(scale·QKᵀ + mask)·V and the LSE of each row.
///
/// Tensors are `[batch, seqlen, heads, head_dim]` with the element strides below (head_dim contiguous;
/// every stride a multiple of 8 elements and every base 16-byte aligned, for 16-byte vector access);
/// V and O have the kernel's `head_dim_v` (`tiles::FwdTile`), Q and K its `head_dim`.
/// Launch: grid `(ceil(seqlen_q / block_m) · num_splits, heads_q, batch)`, `warps · 32` threads, the
/// tile's dynamic shared memory (`tiles::FwdTile::smem_bytes`).
///
/// Split-KV (`num_splits > 1`, FlashDecoding): grid x holds (query block, split) with the split
/// fastest; split s of a CTA's visible key blocks `[0, n)` is blocks `[s·c, min((s+1)·c, n))`,
/// `c = ceil(n / num_splits)`. Each split writes its O normalised by its own row sum, in f32, to
/// `o_accum` and its LSE to `lse_accum` (`-inf` for a split that sees no key; its O is then not
/// written), and `o`/`lse` are left to the combine kernel (`FwdCombineParams`).
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
    /// Sequence lengths (`score.mask`), the mask and the score modifiers (`attn::score`). Sinks enter the
    /// unsplit kernels' softmax; split kernels leave them to the combine.
    pub score: ScoreParams,
    pub heads_q: u32,
    /// Query heads per K/V head (MQA/GQA): query head h reads K/V head h / group.
    pub group: u32,
    /// Key-range splits per (query block, head, batch); 1: no split, O and LSE written directly.
    pub num_splits: u32,
    /// 1 when the rows of a head are query heads (decode with grouped query heads run as their K/V
    /// head's `seqlen_q` rows, `gpu::flash`'s `pack_query_heads`): row i of head h takes the sink of
    /// query head `h·seqlen_q + i` (`attn::stage::row_sinks_log2`); 0: every row of head h takes sink h.
    /// (In the padding before `pages`: no other field moves.)
    pub sinks_by_row: u32,
    /// A paged KV cache (the `paged` kernels; zeros otherwise): K and V are its pages.
    pub pages: PageTable,
    /// f32 `[num_splits, batch, heads_q, seqlen_q, head_dim_v]`, contiguous; used only when split.
    pub o_accum: u64,
    /// f32 `[num_splits, batch, heads_q, seqlen_q]`, contiguous, natural log; used only when split.
    pub lse_accum: u64,
    /// Batch rows: the persistent kernels' (`fwd::hopper`'s dense TMA rows) tiles are query blocks ×
    /// `heads_q` × `batch`, over a one-dimensional grid.
    pub batch: u32,
    /// The persistent kernels' order of tiles: (batch, query head) pairs per section
    /// (`tiles::persistent_tile`), at least 1; unused by the other kernels.
    pub section_heads: u32,
    /// The persistent kernels' tile tickets (`fwd::schedule`): the global address of two u32, the next
    /// ticket and the count of CTAs done, both 0 when a launch starts and again when it ends (its last
    /// CTA resets them); 0 for the other kernels, which do not read it.
    pub tile_counter: u64,
}

/// TMA tensor maps (`CUtensorMap`, 128 opaque bytes each, built by the host with
/// `cuTensorMapEncodeTiled`) of Q, K and V for the Hopper forward's TMA rows (`tiles::FwdTile::tma`): the
/// kernel's second parameter, after `FwdParams`. Each map sees its tensor as 4-D `[head_dim, seqlen,
/// heads, batch]` (innermost first) with the tensor's strides (a packed batch's: `[head_dim, tokens,
/// heads, 1]`), in boxes of 64 elements × the tile's rows (`block_m` for Q, `block_n` for K and V) × 1 ×
/// 1, 128-byte swizzled (the `wgmma` layout), zeros outside the tensor. The kernel reads them from the
/// parameter space (64-byte aligned there:
/// build.rs's `ironflash-param-align`).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FwdTensorMaps {
    pub q: [u64; 16],
    pub k: [u64; 16],
    pub v: [u64; 16],
}

/// The FP8 forward's descale factors (`tiles::Fp8FwdTile`, its kernel's third parameter): f32
/// `[batch, heads_kv]` each, contiguous; the real values of Q, K and V of K/V head h (and its query
/// heads) in batch b are the stored e4m3 values times `q[b·heads_kv + h]`, `k[..]`, `v[..]` (finite and
/// positive: the host's `gpu::Fp8Tensor` checks them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fp8Descales {
    pub q: u64,
    pub k: u64,
    pub v: u64,
}

/// The conversion of a bf16/f16 tensor `x` `[batch, seqlen, heads, head_dim]` to e4m3 for the FP8
/// forward, one scale per (batch, K/V head) group of `group` consecutive heads (`fp8_quant.rs`): launch
/// `FP8_AMAX_*` then `FP8_QUANTIZE_*`, each with grid `(batch · heads_kv, shares)` of 256 threads.
/// `head_dim` a multiple of 8; x's strides multiples of 8 elements and its base 16-byte aligned. With
/// `rotate` 1, each row is first rotated (`rotation`: `head_dim` one of `rotation::ROTATION_HEAD_DIMS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fp8QuantizeParams {
    pub x: u64,
    pub x_strides: [u64; 3],
    /// e4m3 `[batch, seqlen, heads, head_dim]`, contiguous, written by the second launch.
    pub out: u64,
    /// u32 `[batch · heads_kv]`, zeroed before the first launch: the bits of each group's max |x|.
    pub amax: u64,
    /// f32 `[batch · heads_kv]`, written by the second launch: each group's descale factor.
    pub descale: u64,
    pub seqlen: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub heads_kv: u32,
    /// Heads per group (`heads / heads_kv`).
    pub group: u32,
    /// 1: rotate each row (`rotation::rotate_row` with `rotation_seed`) before the amax and the
    /// rounding; 0: quantize the values as they are.
    pub rotate: u32,
    pub rotation_seed: u32,
}

/// e4m3's largest finite value.
pub const FP8_E4M3_MAX: f32 = 448.0;

/// The scale and the descale factor of an FP8 group whose largest magnitude is `amax`: `448 / amax`
/// and `amax / 448`, 1 and 1 for a group of zeros. One definition for the conversion kernels
/// (`fp8_quant.rs`) and the host's reference quantizer, which give the same bits.
#[inline(always)]
pub fn fp8_group_scales(amax: f32) -> (f32, f32) {
    if amax == 0.0 {
        (1.0, 1.0)
    } else {
        (FP8_E4M3_MAX / amax, amax / FP8_E4M3_MAX)
    }
}

/// Symbols of the FP8 conversion kernels (sm_90a PTX only), per input element type.
pub const FP8_AMAX_BF16: &str = "fp8_amax_bf16";
pub const FP8_AMAX_F16: &str = "fp8_amax_f16";
pub const FP8_QUANTIZE_BF16: &str = "fp8_quantize_bf16";
pub const FP8_QUANTIZE_F16: &str = "fp8_quantize_f16";

/// A paged KV cache as the kernels read it (vLLM-style block tables): K and V are pages
/// `[num_pages, page_size, heads_kv, head_dim]` (strides `[page, token, head]` in `FwdParams::k_strides`
/// and `v_strides`); key t of sequence b lives in page `block_table[b · pages_per_seq + t / page_size]`
/// at slot `t % page_size`. Sequence b's keys are its first `score.seqused_k[b]`, clamped into `[0,
/// pages_per_seq · page_size]` (the call mask's `seqlen_k`; a count outside it sets `PAGED_BAD_LENGTH`:
/// the counts are the paged step's, or the cached lengths themselves in a call without one). A page
/// index outside `[0, num_pages)` is never read: its keys are taken as zeros and bit `PAGED_BAD_PAGE`
/// is set in `errors`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PageTable {
    /// i32 `[batch, pages_per_seq]`.
    pub block_table: u64,
    /// u32 error bits (`PAGED_*`), or'ed in by the kernels; the host reads and clears them.
    pub errors: u64,
    pub pages_per_seq: u32,
    pub page_size: u32,
    pub num_pages: u32,
    /// The Hopper TMA rows' paged kernels (`tiles::FwdTile::paged_box_rows`): keys per TMA box,
    /// `gcd(page_size, block_n)`, a multiple of 8, so that a box never leaves its page and lands on whole
    /// rows of the swizzle; 0 for the other kernels. (In the padding after `num_pages`: no field moves.)
    pub tma_box_rows: u32,
}

/// Error bits of a paged call (`PageTable::errors`): a block-table entry outside `[0, num_pages)`; a cache
/// length that is negative or, with the call's new tokens, beyond the sequence's pages; a rotary position
/// beyond the cos/sin tables.
pub const PAGED_BAD_PAGE: u32 = 1;
pub const PAGED_BAD_LENGTH: u32 = 2;
pub const PAGED_BAD_POSITION: u32 = 4;

/// The step before attention over a paged cache (`fwd/paged.rs`) of a call with new tokens or rotary (a
/// call with neither has none), one launch over a flat index space:
/// 1. `seqused_k[b] = cache_seqlens[b] + seqlen_new` (clamped into `[0, pages_per_seq · page_size]`,
///    `PAGED_BAD_LENGTH` when clamped);
/// 2. with new keys and values, new token j of sequence b written into the cache at token
///    `cache_seqlens[b] + j` (its key rotated at that position when `rotary_dim > 0`); a token past the
///    sequence's pages or on a bad page is not written;
/// 3. with rotary, query row i of sequence b rotated at position `cache_seqlens[b] + i` (or
///    `cache_seqlens[b]` for every row unless `rows_move`) into `q_rotated` `[batch, seqlen_q, heads_q,
///    head_dim]`, contiguous.
///
/// Rotation (FlashAttention's `rotary_cos` / `rotary_sin`): `cos`, `sin` f32 `[positions, rotary_dim /
/// 2]`; pairs `(x_i, x_{i + rotary_dim/2})`, or `(x_{2i}, x_{2i+1})` when `interleaved`; dims past
/// `rotary_dim` copied. Grid-stride loop, any grid; 256 threads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PagedPrepParams {
    pub pages: PageTable,
    /// i32 `[batch]`, read only.
    pub cache_seqlens: u64,
    /// i32 `[batch]`, written.
    pub seqused_k: u64,
    /// The cache's pages and their strides `[page, token, head]` (elements).
    pub k_pages: u64,
    pub v_pages: u64,
    pub k_page_strides: [u64; 3],
    pub v_page_strides: [u64; 3],
    /// New keys and values `[batch, seqlen_new, heads_kv, head_dim]` with strides `[batch, token, head]`;
    /// unused when `seqlen_new` is 0.
    pub k_new: u64,
    pub v_new: u64,
    pub k_new_strides: [u64; 3],
    pub v_new_strides: [u64; 3],
    /// Queries `[batch, seqlen_q, heads_q, head_dim]` and their rotated copy (contiguous); unused
    /// without rotary.
    pub q: u64,
    pub q_strides: [u64; 3],
    pub q_rotated: u64,
    pub cos: u64,
    pub sin: u64,
    pub positions: u32,
    /// 0: no rotary.
    pub rotary_dim: u32,
    pub interleaved: u32,
    pub rows_move: u32,
    pub batch: u32,
    pub seqlen_q: u32,
    pub seqlen_new: u32,
    pub heads_q: u32,
    pub heads_kv: u32,
    pub head_dim: u32,
    pub head_dim_v: u32,
}

/// Symbols of the paged step's kernel, per element type.
pub const PAGED_PREP_BF16: &str = "attn_paged_prep_bf16";
pub const PAGED_PREP_F16: &str = "attn_paged_prep_f16";

/// The split-KV combine (`fwd/combine.rs`): for each row `r` of `[batch, heads_q, seqlen_q]`,
/// `lse[r] = log(exp(sink[h]) + Σ_s exp(lse_accum[s, r]))` and
/// `O[r] = Σ_s exp(lse_accum[s, r] − lse[r]) · o_accum[s, r]`, the splits taken in index order (bitwise
/// reproducible); splits with LSE `-inf` are skipped, and a row whose splits are all `-inf` gets O = 0 and
/// LSE = the sink (`-inf` without sinks). Grid `(ceil(batch·heads_q·seqlen_q / 8))`,
/// 256 threads (one warp per row).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FwdCombineParams {
    /// As `FwdParams::o_accum` / `lse_accum`.
    pub o_accum: u64,
    pub lse_accum: u64,
    /// O in the element type, `[batch, seqlen_q, heads_q, head_dim_v]` with `o_strides` (multiples of 8).
    pub o: u64,
    /// f32 `[batch, heads_q, seqlen_q]`, contiguous.
    pub lse: u64,
    pub o_strides: [u64; 3],
    /// `batch · heads_q · seqlen_q`.
    pub rows: u32,
    pub seqlen_q: u32,
    pub heads_q: u32,
    /// O's (V's) head dim: a multiple of 32, at most 256.
    pub head_dim_v: u32,
    pub num_splits: u32,
    /// f32 `[heads_q]` sink logits, 0 when absent.
    pub sinks: u64,
}

/// Symbols of the split-KV combine kernels, per element type.
pub const FWD_COMBINE_BF16: &str = "attn_fwd_combine_bf16";
pub const FWD_COMBINE_F16: &str = "attn_fwd_combine_f16";

/// The context-parallel (ring) forward's merge (`ring.rs`): folds one ring step's partial result
/// (`o_step`, `lse_step`: the packed forward's O and LSE over the keys of that step) into the running
/// one, for each row `r = (token, head)`:
/// `lse = log(exp(lse_accum[r]) + exp(lse_step[r]))`,
/// `o = exp(lse_accum[r] − lse)·o_accum[r] + exp(lse_step[r] − lse)·o_step[r]`,
/// in f32 (the running O is kept normalised, as every step's is). On the last step the row's sink, if
/// any, joins the sum as one more term without a value, and O goes to `o` in the element type instead
/// of `o_accum`. A row with no key so far keeps LSE `-inf` and O = 0. Grid
/// `(ceil(tokens·heads / 8))`, 256 threads (one warp per row).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RingMergeParams {
    /// f32 `[tokens, heads, head_dim_v]`, contiguous: the running O (not read on the first step).
    pub o_accum: u64,
    /// f32 `[heads, tokens]`: the running LSE (natural log; not read on the first step), and the
    /// merged one after the launch.
    pub lse_accum: u64,
    /// The step's O in the element type, `[tokens, heads, head_dim_v]` contiguous, and its f32 LSE
    /// `[heads, tokens]` (`-inf` with O = 0 where the row saw no key in the step); `o_step` 0: no step
    /// (a last merge that only adds the sinks and writes O).
    pub o_step: u64,
    pub lse_step: u64,
    /// 0 before the last step; on the last, O in the element type, `[tokens, heads, head_dim_v]`
    /// contiguous (then `o_accum` is not written).
    pub o: u64,
    /// f32 `[heads]` sink logits (natural log), 0 when absent; read on the last step only.
    pub sinks: u64,
    pub tokens: u32,
    pub heads: u32,
    /// A multiple of 32, at most 256.
    pub head_dim_v: u32,
    /// 1 on the first step: the running result is the step's alone.
    pub first: u32,
}

/// Symbols of the ring merge, per element type.
pub const RING_MERGE_BF16: &str = "ring_merge_bf16";
pub const RING_MERGE_F16: &str = "ring_merge_f16";

/// The context-parallel backward's gradient sums (`ring.rs`): `v = accum[i] + step[i]` for each of `n`
/// elements (`accum` taken as 0 on the first step, `step` as 0 when its address is 0), then
/// `out[i] = v` rounded to the element type when `out` is set, else `accum[i] = v` (f32). The steps'
/// partial gradients arrive in a fixed order, so the sums are bitwise reproducible. Grid
/// `(ceil(n / 8 / 256))`, 256 threads, 8 elements per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RingAccumulateParams {
    /// f32 `[n]`, 16-byte aligned.
    pub accum: u64,
    /// `[n]` in the element type, 16-byte aligned, or 0.
    pub step: u64,
    /// `[n]` in the element type, 16-byte aligned, or 0.
    pub out: u64,
    /// A multiple of 8.
    pub n: u64,
    /// 1: `accum` is not read.
    pub first: u32,
    pub _pad: u32,
}

/// Symbols of the ring's gradient sums, per element type.
pub const RING_ACCUMULATE_BF16: &str = "ring_accumulate_bf16";
pub const RING_ACCUMULATE_F16: &str = "ring_accumulate_f16";

/// The fused backward kernels (`bwd/`), one struct for the three launches of one backward call:
/// 1. `attn_bwd_delta_*`: `delta[b, h, i] = Σ_d dO[b, i, h, d]·O[b, i, h, d]` (f32), and zeros in
///    `dq_accum` and in the `dq_counters` counters from `dq_semaphore` (so that the call needs no
///    memset). Grid `(ceil(batch·heads_q·seqlen_q / 8))`, 256 threads (one warp per query row).
/// 2. `attn_bwd_hd*` (the main kernel, one per `tiles_bwd::BWD_TILES` row): grid
///    `(ceil(seqlen_k / block_n), heads_kv, batch)`, `warps · 32` threads, the tile's dynamic shared
///    memory. Each CTA owns `block_n` keys of one K/V head, loops over the query heads of its group and
///    their query blocks, writes dK and dV, and adds its dQ contributions (unscaled) into `dq_accum`.
/// 3. `attn_bwd_dq_*`: `dq = scale · dq_accum` in the element type. Grid
///    `(ceil(batch·heads_q·seqlen_q·head_dim / 8 / 256))`, 256 threads.
/// 4. With sinks, `attn_bwd_dsink`: `d_sinks[h] = −Σ_{b,i} exp(sink[h] − lse[b, h, i])·delta[b, h, i]`,
///    in a fixed order (bitwise reproducible). Grid `(heads_q)`, 256 threads.
///
/// With a softcap the main kernel is the `softcap` instantiation of the tile row (`BwdTile::symbol`),
/// which also chains dS through the tanh.
///
/// Element tensors are `[batch, seqlen, heads, head_dim]` with the element strides below (head_dim
/// contiguous, strides multiples of 8 elements, bases 16-byte aligned); V, O, dO and dV have
/// `head_dim_v`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BwdParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub d_o: u64,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    /// f32 `[batch, heads_q, seqlen_q]`, natural log, from the forward; `-inf` for fully masked rows.
    pub lse: u64,
    /// f32 `[batch, heads_q, seqlen_q]`: rowsum(dO ∘ O), written by the delta kernel.
    pub delta: u64,
    /// f32 `[batch, heads_q, seqlen_q, head_dim]`, 16-byte aligned; zeroed by the delta kernel.
    pub dq_accum: u64,
    /// u32 `[batch, heads_q, ceil(seqlen_q / block_m)]`, zeroed by the delta kernel; used only when
    /// `deterministic` (the per-query-block turn counters that order the dQ additions).
    pub dq_semaphore: u64,
    /// u32, zeroed by the delta kernel; used only when `deterministic`: each CTA takes its work
    /// item (key block, K/V head, batch) from this counter, so that a CTA only ever waits for the turn
    /// of a CTA that started before it.
    pub dq_ticket: u64,
    /// Element strides `[batch, seqlen, heads]`.
    pub q_strides: [u64; 3],
    pub k_strides: [u64; 3],
    pub v_strides: [u64; 3],
    pub o_strides: [u64; 3],
    pub d_o_strides: [u64; 3],
    pub dq_strides: [u64; 3],
    pub dk_strides: [u64; 3],
    pub dv_strides: [u64; 3],
    /// Sequence lengths (`score.mask`), the mask and the score modifiers (`attn::score`), as the forward's.
    pub score: ScoreParams,
    /// f32 `[heads_q]`: the sinks' gradient (written by `attn_bwd_dsink`), 0 without sinks.
    pub d_sinks: u64,
    pub batch: u32,
    pub heads_q: u32,
    /// Query heads per K/V head (MQA/GQA): query head h uses K/V head h / group.
    pub group: u32,
    /// Head dims of Q, K (dQ, dK) and of V, O (dO, dV).
    pub head_dim: u32,
    pub head_dim_v: u32,
    /// softmax_scale (applied to dK in the main kernel and to dQ in the convert kernel).
    pub scale: f32,
    /// 1: add the dQ contributions of the key blocks in key-block order (bitwise reproducible).
    pub deterministic: u32,
    /// The u32 counters from `dq_semaphore` through `dq_ticket`, which the delta kernel zeroes.
    pub dq_counters: u32,
}

/// TMA tensor maps of Q and dO for the Hopper backward's TMA rows (`tiles_bwd::BwdTile::tma`, dense
/// batches): the kernel's second parameter, after `BwdParams`, each as `FwdTensorMaps::q` sees Q (4-D,
/// boxes of 64 elements × `block_m` rows, 128-byte swizzled, zeros past the rows), 64-byte aligned in the
/// parameter space as the forward's.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BwdTensorMaps {
    pub q: [u64; 16],
    pub d_o: [u64; 16],
}

/// Symbols of the backward's delta and dQ-convert kernels, per element type.
pub const BWD_DELTA_BF16: &str = "attn_bwd_delta_bf16";
pub const BWD_DELTA_F16: &str = "attn_bwd_delta_f16";
pub const BWD_DQ_BF16: &str = "attn_bwd_dq_bf16";
pub const BWD_DQ_F16: &str = "attn_bwd_dq_f16";
/// Symbol of the sinks' gradient kernel (f32 only: it reads the LSE and delta).
pub const BWD_DSINK: &str = "attn_bwd_dsink";
