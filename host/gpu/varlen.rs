//! Packed variable-length batches on the GPU (FlashAttention's `varlen`): sequences of different
//! lengths laid end to end along the token dimension of one batch row, each attended on its own (its
//! causal diagonal and windows aligned bottom-right within the sequence), with the same fused forward
//! kernels as the dense call in their packed instantiation (`ScoreParams::cu_seqlens_q`), forward and
//! backward. The f64 references are `cpu::reference_forward_varlen` and `cpu::reference_backward_varlen`.

use crate::cpu::varlen::{alibi_rows, packed_problem, Varlen};
use crate::device::Device;
use crate::dtype::Element;
use crate::error::{Arg, DriverContext, Error, Result};
use crate::gpu::backward::{self, GpuGradients};
use crate::gpu::flash::{self, BatchLaunch, PackedLaunch};
use crate::gpu::score::check_per_head;
use crate::gpu::tensor::{check_vector_strides, DeviceTensor, GpuForwardOutput};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use cudarc::driver::{CudaSlice, DevicePtr};
use ironflash_kernels::attn::score::{Mask, MAX_SHIFTED};
use ironflash_kernels::tiles::BatchLayout;
use ironflash_kernels::tiles::FwdTile;
use ironflash_kernels::tiles_bwd::BwdTile;

/// A packed batch's sequences on the device: sequence b's queries are tokens `cu_seqlens_q[b] ..
/// cu_seqlens_q[b + 1]` of q (and O), its keys tokens `cu_seqlens_k[b] .. cu_seqlens_k[b + 1]` of k and
/// v (i32, batch + 1 offsets each, starting at 0, never decreasing, ending at the token counts), and
/// no sequence is longer than `max_seqlen_q` queries or `max_seqlen_k` keys.
///
/// The offsets live on the device, so a call cannot check them without a synchronisation: it checks
/// their buffers' lengths and device, and the kernels clamp every sequence into the tensors, so that
/// wrong offsets or maxima give wrong results for the sequences concerned, never an access outside the
/// buffers. [`Device::upload_varlen`] checks host offsets before they go up and derives the maxima.
#[derive(Debug, Clone, Copy)]
pub struct DeviceVarlen<'a> {
    pub cu_seqlens_q: &'a CudaSlice<i32>,
    pub cu_seqlens_k: &'a CudaSlice<i32>,
    pub max_seqlen_q: usize,
    pub max_seqlen_k: usize,
}

/// Offsets uploaded by [`Device::upload_varlen`], with their maxima; [`VarlenOffsets::view`] lends
/// them to the calls.
#[derive(Debug)]
pub struct VarlenOffsets {
    pub cu_seqlens_q: CudaSlice<i32>,
    pub cu_seqlens_k: CudaSlice<i32>,
    pub max_seqlen_q: usize,
    pub max_seqlen_k: usize,
}

/// A packed call's sequences as the launches take them: the offsets and, for sequences that are chunks
/// of longer ones (a context-parallel ring's steps, `ring::gpu`), each sequence's diagonal shift (i32
/// `[batch]`, `ScoreParams::diagonal_shifts`), so that windows and ALiBi measure distances in the
/// longer sequences.
#[derive(Clone, Copy)]
pub(crate) struct Packed<'a> {
    pub seqs: &'a DeviceVarlen<'a>,
    pub diagonal_shifts: Option<&'a CudaSlice<i32>>,
}

impl<'a> Packed<'a> {
    pub(crate) fn aligned(seqs: &'a DeviceVarlen<'a>) -> Self {
        Packed { seqs, diagonal_shifts: None }
    }
}

impl VarlenOffsets {
    pub fn view(&self) -> DeviceVarlen<'_> {
        DeviceVarlen {
            cu_seqlens_q: &self.cu_seqlens_q,
            cu_seqlens_k: &self.cu_seqlens_k,
            max_seqlen_q: self.max_seqlen_q,
            max_seqlen_k: self.max_seqlen_k,
        }
    }
}

impl Device {
    /// Checks host offsets against the token counts of q and k (`tokens_q`, `tokens_k`) as the CPU path
    /// does, and copies them to the device with the longest sequences' lengths.
    pub fn upload_varlen(&self, seqs: &Varlen, tokens_q: usize, tokens_k: usize) -> Result<VarlenOffsets> {
        seqs.batch(tokens_q, tokens_k)?;
        let longest = |cu: &[i32]| cu.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0);
        let upload = |cu: &[i32]| self.stream.clone_htod(cu).during("copying sequence offsets to the device");
        Ok(VarlenOffsets {
            cu_seqlens_q: upload(seqs.cu_seqlens_q)?,
            cu_seqlens_k: upload(seqs.cu_seqlens_k)?,
            max_seqlen_q: longest(seqs.cu_seqlens_q),
            max_seqlen_k: longest(seqs.cu_seqlens_k),
        })
    }
}

/// The varlen forward: O `[1, tokens_q, heads_q, head_dim_v]` (contiguous) and the f32 LSE
/// `[heads_q, tokens_q]` (natural log; `-inf` and O = 0 for rows that see no key, such as the queries
/// of a sequence without keys). Q, K and V are `[1, tokens, heads, head_dim]` with free strides (as the
/// dense call's); every option of the dense call applies to each sequence, ALiBi slopes `[heads_q]` or
/// one row per sequence (`[batch, heads_q]`).
pub fn flash_forward_varlen<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    seqs: &DeviceVarlen,
    opts: &AttnOptions,
) -> Result<GpuForwardOutput<T>> {
    let packed = Packed::aligned(seqs);
    let plan = plan(dev, q, k, v, packed, opts)?;
    dev.refuse_capture("flash_forward_varlen")?;
    let o_layout = Layout::contiguous(plan.tokens.o_shape());
    // SAFETY: the kernels write every element of O and of the LSE that belongs to a sequence; with
    // offsets that cover the tokens (as documented), that is all of them.
    let mut o = unsafe { dev.stream.alloc::<T>(o_layout.numel()) }.during("allocating O")?;
    let mut lse = unsafe { dev.stream.alloc::<f32>(plan.lse_len()) }.during("allocating the LSE")?;
    run(dev, &plan, packed, opts, None, None, q, k, v, (&mut o, &o_layout), &mut lse)?;
    Ok(GpuForwardOutput { o: DeviceTensor { buf: o, layout: o_layout, ordinal: dev.info().ordinal }, lse })
}

/// As [`flash_forward_varlen`], into caller-provided buffers: `o` shaped like O with any
/// non-overlapping strides (multiples of 8 elements, last dim contiguous), `lse` at least
/// `heads_q · tokens_q` f32, written as `[heads_q, tokens_q]`.
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_varlen_into<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    seqs: &DeviceVarlen,
    o: &mut DeviceTensor<T>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
) -> Result<()> {
    flash_forward_varlen_with_splits(dev, q, k, v, seqs, o, lse, opts, None, None)
}

/// As [`flash_forward_varlen_into`] with an optional explicit tile and split-KV count, as the dense
/// `gpu::flash_forward_with_tile` / `flash_forward_with_splits` take them (a tile alone gets the
/// heuristic's split count for it): for tests and benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_varlen_with_splits<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    seqs: &DeviceVarlen,
    o: &mut DeviceTensor<T>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: Option<&FwdTile>,
    num_splits: Option<usize>,
) -> Result<()> {
    forward_packed_into(dev, q, k, v, Packed::aligned(seqs), o, lse, opts, tile, num_splits)
}

/// The varlen forward of any packed call ([`Packed`]), into caller-provided buffers as
/// [`flash_forward_varlen_with_splits`] takes them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_packed_into<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    packed: Packed,
    o: &mut DeviceTensor<T>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: Option<&FwdTile>,
    num_splits: Option<usize>,
) -> Result<()> {
    if let Some(n) = num_splits {
        flash::check_num_splits(n)?;
    }
    let plan = plan(dev, q, k, v, packed, opts)?;
    // The token problem's LSE rows are `[heads_q, tokens_q]` (one batch row).
    flash::check_outputs(dev, &plan.tokens, o, lse, "one f32 per (head_q, query token)")?;
    let o_layout = o.layout;
    run(dev, &plan, packed, opts, tile, num_splits, q, k, v, (&mut o.buf, &o_layout), lse)
}

/// The varlen backward: dQ `[1, tokens_q, heads_q, head_dim]`, dK `[1, tokens_k, heads_kv, head_dim]`,
/// dV `[1, tokens_k, heads_kv, head_dim_v]` (contiguous) and, with sinks, their gradient summed over the
/// sequences, for the upstream gradient `d_o` (shaped like O), from the varlen forward's inputs, its O
/// and its LSE (`[heads_q, tokens_q]`), as [`flash_forward_varlen`] returns them. `opts` must be the
/// forward's; `opts.deterministic` as the dense [`flash_backward`](crate::gpu::flash_backward). The same
/// fused kernels as the dense call, in their packed instantiation: each sequence's gradients are the
/// dense call's on that sequence alone (dQ of queries without keys and dK, dV of keys no query sees
/// are 0).
#[allow(clippy::too_many_arguments)]
pub fn flash_backward_varlen<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    lse: &CudaSlice<f32>,
    d_o: &DeviceTensor<T>,
    seqs: &DeviceVarlen,
    opts: &AttnOptions,
) -> Result<GpuGradients<T>> {
    let tokens = packed_problem((&q.layout, q.buf.len()), (&k.layout, k.buf.len()), (&v.layout, v.buf.len()), opts)?;
    // SAFETY: the dQ kernel writes every element of dq; the main kernel every key row of dk and dv that
    // belongs to a sequence (a CTA whose keys no query sees writes zeros), which with offsets that
    // cover the tokens (as documented) is all of them.
    let mut grads = unsafe { GpuGradients::alloc_uninit(dev, &tokens, "flash_backward_varlen") }?;
    backward::backward_into(dev, (q, k, v, o, lse, d_o), Some(Packed::aligned(seqs)), &mut grads, opts, None)?;
    Ok(grads)
}

/// As [`flash_backward_varlen`], into caller-provided gradients shaped like q, k and v (any
/// non-overlapping strides, multiples of 8 elements, last dim contiguous), as
/// [`flash_backward_into`](crate::gpu::flash_backward_into) takes them.
#[allow(clippy::too_many_arguments)]
pub fn flash_backward_varlen_into<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    lse: &CudaSlice<f32>,
    d_o: &DeviceTensor<T>,
    seqs: &DeviceVarlen,
    grads: &mut GpuGradients<T>,
    opts: &AttnOptions,
) -> Result<()> {
    backward::backward_into(dev, (q, k, v, o, lse, d_o), Some(Packed::aligned(seqs)), grads, opts, None)
}

/// As [`flash_backward_varlen_into`] with a given tile instead of the chooser's (tests and benchmarks),
/// as [`flash_backward_with_tile`](crate::gpu::flash_backward_with_tile).
#[allow(clippy::too_many_arguments)]
pub fn flash_backward_varlen_with_tile<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    lse: &CudaSlice<f32>,
    d_o: &DeviceTensor<T>,
    seqs: &DeviceVarlen,
    grads: &mut GpuGradients<T>,
    opts: &AttnOptions,
    tile: &BwdTile,
) -> Result<()> {
    backward::backward_into(dev, (q, k, v, o, lse, d_o), Some(Packed::aligned(seqs)), grads, opts, Some(tile))
}

/// A validated varlen call: the problem over the token counts (shapes, strides, options) and the
/// problem the kernels' grid and tile plan see (one batch entry per sequence, the longest lengths).
struct Plan {
    tokens: AttnProblem,
    grid: AttnProblem,
    tile: FwdTile,
}

impl Plan {
    fn lse_len(&self) -> usize {
        self.tokens.heads_q * self.tokens.seqlen_q
    }
}

fn plan<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    packed: Packed,
    opts: &AttnOptions,
) -> Result<Plan> {
    if !T::DTYPE.is_half() {
        return Err(Error::UnsupportedDtype { arg: Arg::Q, dtype: T::DTYPE, path: "the fused forward kernel" });
    }
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v)] {
        t.check_on(dev, arg)?;
    }
    let layouts = [(&q.layout, q.buf.len()), (&k.layout, k.buf.len()), (&v.layout, v.buf.len())];
    let (tokens, batch) = packed_plan(dev, layouts, packed, opts)?;
    let seqs = packed.seqs;
    check_per_head(dev, opts)?;
    for (arg, t) in [(Arg::Q, q), (Arg::K, k), (Arg::V, v)] {
        check_vector_strides(arg, &t.layout)?;
    }
    flash::check_grid(tokens.heads_q, batch, tokens.heads_q * tokens.seqlen_q)?;
    let grid = AttnProblem { batch, seqlen_q: seqs.max_seqlen_q, seqlen_k: seqs.max_seqlen_k, ..tokens };
    let dims = (tokens.head_dim, tokens.head_dim_v);
    let tile = flash::layout_tile(dev.info(), dims, T::DTYPE, BatchLayout::Packed, |_| true)?;
    Ok(Plan { tokens, grid, tile })
}

/// The problem of a packed call over its token counts (`packed_problem`, with the ALiBi slopes' rows;
/// with diagonal shifts, the mask of `Mask::shifted_call`) and its number of sequences, after checking
/// the offsets and the shifts: what the forward and the backward share.
pub(crate) fn packed_plan(
    dev: &Device,
    [q, k, v]: [(&Layout, usize); 3],
    packed: Packed,
    opts: &AttnOptions,
) -> Result<(AttnProblem, usize)> {
    let tokens = packed_problem(q, k, v, opts)?;
    let batch = check_offsets(dev, packed.seqs, &tokens)?;
    let alibi_per_batch = alibi_rows(opts.alibi_slopes.map(|s| s.len()), tokens.heads_q, batch)?;
    let mut mask = tokens.mask;
    if let Some(shifts) = packed.diagonal_shifts {
        if shifts.ordinal() != dev.info().ordinal {
            return Err(Error::DeviceMismatch {
                arg: Arg::CuSeqlensQ,
                got: shifts.ordinal(),
                expected: dev.info().ordinal,
            });
        }
        if shifts.len() != batch {
            let why = format!("{} diagonal shifts for {batch} sequences", shifts.len());
            return Err(Error::BadSeqlenOffsets { arg: Arg::CuSeqlensQ, why });
        }
        for (what, value) in [("tokens of q", tokens.seqlen_q), ("tokens of k", tokens.seqlen_k)] {
            if value > MAX_SHIFTED as usize {
                return Err(Error::TooLarge { arg: Arg::Q, what, value });
            }
        }
        let window = |w: Option<usize>| w.map(|w| w.min(MAX_SHIFTED as usize) as u32);
        let (sq, sk) = (tokens.seqlen_q as u32, tokens.seqlen_k as u32);
        mask = Mask::shifted_call(sq, sk, opts.causal, window(opts.window.left), window(opts.window.right));
    }
    Ok((AttnProblem { alibi_per_batch, mask, ..tokens }, batch))
}

/// The offsets' buffers (device, equal lengths of at least 2) and the maxima (within the token counts);
/// the number of sequences.
fn check_offsets(dev: &Device, seqs: &DeviceVarlen, tokens: &AttnProblem) -> Result<usize> {
    let ordinal = dev.info().ordinal;
    for (arg, cu) in [(Arg::CuSeqlensQ, seqs.cu_seqlens_q), (Arg::CuSeqlensK, seqs.cu_seqlens_k)] {
        if cu.ordinal() != ordinal {
            return Err(Error::DeviceMismatch { arg, got: cu.ordinal(), expected: ordinal });
        }
        if cu.len() < 2 {
            let why = format!("{} offsets; a batch of b sequences has b + 1", cu.len());
            return Err(Error::BadSeqlenOffsets { arg, why });
        }
    }
    let (len_q, len_k) = (seqs.cu_seqlens_q.len(), seqs.cu_seqlens_k.len());
    if len_q != len_k {
        return Err(Error::ShapeMismatch {
            arg: Arg::CuSeqlensK,
            what: "length",
            got: len_k,
            expected: len_q,
            why: "one offset per sequence and one more, as cu_seqlens_q",
        });
    }
    for (arg, max, count, what) in [
        (Arg::CuSeqlensQ, seqs.max_seqlen_q, tokens.seqlen_q, "q"),
        (Arg::CuSeqlensK, seqs.max_seqlen_k, tokens.seqlen_k, "k"),
    ] {
        if max > count {
            let why = format!("max_seqlen {max} exceeds the {count} tokens of {what}");
            return Err(Error::BadSeqlenOffsets { arg, why });
        }
    }
    Ok(len_q - 1)
}

#[allow(clippy::too_many_arguments)]
fn run<T: Element>(
    dev: &Device,
    plan: &Plan,
    packed: Packed,
    opts: &AttnOptions,
    tile: Option<&FwdTile>,
    num_splits: Option<usize>,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: (&mut CudaSlice<T>, &Layout),
    lse: &mut CudaSlice<f32>,
) -> Result<()> {
    let grid = &plan.grid;
    if grid.seqlen_q == 0 {
        // No sequence has a query: nothing to write.
        return Ok(());
    }
    let (tile, splits) = flash::launch_choice(dev.info(), grid, &plan.tile, tile, num_splits, T::DTYPE)?;
    let stream = dev.stream();
    let (cu_q, _cu_q_sync) = packed.seqs.cu_seqlens_q.device_ptr(stream);
    let (cu_k, _cu_k_sync) = packed.seqs.cu_seqlens_k.device_ptr(stream);
    let shifts = packed.diagonal_shifts.map(|s| s.device_ptr(stream));
    let launch = PackedLaunch {
        cu_seqlens_q: cu_q,
        cu_seqlens_k: cu_k,
        diagonal_shifts: shifts.as_ref().map_or(0, |s| s.0),
        tokens_q: plan.tokens.seqlen_q,
    };
    flash::launch(
        dev,
        grid,
        opts,
        BatchLaunch::Packed(launch),
        None,
        (&tile, splits, None),
        (&q.buf, &q.layout),
        k,
        v,
        o,
        lse,
    )
}
