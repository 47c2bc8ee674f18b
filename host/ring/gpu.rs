//! The ring on GPUs: each rank's forward and backward over NCCL (`ring::nccl`), one rank per GPU.
//!
//! Each step's attention is the single-GPU packed (varlen) call on the step's sequences
//! (`ring::shard::StepPlan`; with windows or ALiBi, up to three calls per step whose sequences'
//! diagonals are shifted to the chunks' places in the whole sequence), so every head dim, dtype, GQA
//! ratio, option and kernel of the single-GPU path applies unchanged. While step s runs on the
//! device's stream, the ring's stream sends the keys and values of step s to the next rank and
//! receives those of step s + 1 from the previous one (two buffers, alternating); events order the two
//! streams (a buffer is received into only after the kernels of the step before have read it).
//!
//! Forward: each step call's O (element type) and LSE are merged into a running f32 O and the LSE
//! (`ring_merge_*`, in call order), the sinks joining at the last merge. Backward: each step call's
//! gradients come from the single-GPU backward with the final O and LSE (so the probabilities are
//! the whole row's); dQ is summed in f32 on the rank, dK and dV in f32 buffers that travel with their
//! keys and values and come home after `world` steps (`ring_accumulate_*`). Every sum runs in a fixed
//! order: results are bitwise reproducible run to run.
//!
//! Before any transfer the ranks compare their calls (an all-gather of a few integers, waited for
//! with the communicator's timeout): a rank whose inputs fail validation returns its error and the
//! others `Error::PeerFailed`, ranks called with different problems `Error::RankMismatch`; none
//! waits on a transfer that will not come. That wait is the call's one host synchronisation.

use super::check_ring_options;
use super::nccl::Communicator;
use super::shard::{RingMask, ShardLayout, Sharding, StepPlan};
use crate::cpu::varlen::Varlen;
use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::error::{Arg, DriverContext, Error, Result};
use crate::gpu::backward;
use crate::gpu::backward::GpuGradients;
use crate::gpu::launch::{self, KernelParams, Launch};
use crate::gpu::score::device_per_head;
use crate::gpu::tensor::{DeviceTensor, GpuForwardOutput};
use crate::gpu::varlen::{forward_packed_into, DeviceVarlen, Packed, VarlenOffsets};
use crate::layout::Layout;
use crate::options::{AttnOptions, PerHead, Window};
use crate::problem::AttnProblem;
use cudarc::driver::{CudaEvent, CudaSlice, DevicePtr, LaunchConfig};
use ironflash_kernels::abi::{self, RingAccumulateParams, RingMergeParams};
use std::marker::PhantomData;
use std::mem::ManuallyDrop;

/// Rows per CTA of the merge kernel (one warp each) and threads per CTA of the gradient sums.
const MERGE_ROWS_PER_CTA: u32 = 8;
const ACCUMULATE_THREADS: u32 = 256;

/// Context-parallel forward on rank `comm.rank()`: `q`, `k`, `v` are this rank's shards
/// (`[batch, sharding.shard_len(rank), heads, head_dim]`, contiguous; `ring::cpu::shard` makes them
/// from a whole sequence), `opts` the call's options (see `ring`'s module docs for those a ring
/// refuses; sinks as a device buffer). Returns this rank's O (`[batch, shard_len, heads_q,
/// head_dim_v]`, contiguous) and LSE (`[heads_q, batch·shard_len]`, the packed calls' layout; for
/// batch 1 the dense call's), which [`backward`] takes. Every rank of the ring must make the same call
/// with its own shards.
pub fn forward<T: Element>(
    dev: &Device,
    comm: &mut Communicator,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    sharding: &Sharding,
    opts: &AttnOptions,
) -> Result<GpuForwardOutput<T>> {
    let checked = check_call(dev, comm, sharding, [q, k, v], None, opts);
    let p = handshake(comm, sharding, opts, Direction::Forward, T::DTYPE, checked)?;
    let mut ring =
        Ring::new(dev, comm, sharding, &p, opts, (address(dev, &k.buf), address(dev, &v.buf)), T::DTYPE.size_bytes())?;
    let sinks = sinks_ptr(dev, opts)?;
    let step_opts = AttnOptions { sinks: None, ..*opts };
    let stream = dev.stream();
    let (tokens, heads_q, dv) = (ring.tokens_q, p.heads_q, p.head_dim_v);

    // SAFETY (the allocations): the last merge writes every element of O and of the LSE.
    let o_layout = Layout::contiguous([p.batch, ring.len_q, heads_q, dv]);
    let o = unsafe { stream.alloc::<T>(o_layout.numel()) }.during("allocating O")?;
    let lse = unsafe { stream.alloc::<f32>(heads_q * tokens) }.during("allocating the LSE")?;
    let o_accum = if ring.world > 1 {
        Some(unsafe { stream.alloc::<f32>(tokens * heads_q * dv) }.during("allocating the ring's running O")?)
    } else {
        None
    };
    let step_layout = Layout::contiguous([1, tokens, heads_q, dv]);
    let o_step = unsafe { stream.alloc::<T>(step_layout.numel()) }.during("allocating a step's O")?;
    let lse_step = unsafe { stream.alloc::<f32>(heads_q * tokens) }.during("allocating a step's LSE")?;
    let mut o_step = DeviceTensor { buf: o_step, layout: step_layout, ordinal: dev.info().ordinal };
    let mut lse_step = lse_step;

    let q_packed = ring.packed(q);
    let mut merged_any = false;
    ring.start(comm)?;
    for s in 0..ring.world {
        ring.exchange(comm, s, None)?;
        ring.wait_keys(s)?;
        let last_step = s + 1 == ring.world;
        let calls = ring.plans[s].len();
        let mut merge = |step: Option<(u64, u64)>, last: bool| {
            let (o_step_ptr, lse_step_ptr) = step.unwrap_or((0, 0));
            let params = RingMergeParams {
                o_accum: o_accum.as_ref().map_or(0, |b| address(dev, b)),
                lse_accum: address(dev, &lse),
                o_step: o_step_ptr,
                lse_step: lse_step_ptr,
                o: if last { address(dev, &o) } else { 0 },
                sinks: if last { sinks } else { 0 },
                tokens: tokens as u32,
                heads: heads_q as u32,
                head_dim_v: dv as u32,
                first: u32::from(!merged_any),
            };
            merged_any = true;
            // SAFETY: every address is a live buffer of the sizes the params state (allocated above
            // for this call, or the caller's sinks of `heads_q` f32), used in stream order.
            unsafe { launch_merge::<T>(dev, params, tokens * heads_q) }
        };
        for (c, plan) in ring.plans[s].iter().enumerate() {
            let (k_step, v_step) = ring.keys(s, k, v);
            let seqs = plan.seqs();
            forward_packed_into(
                dev,
                &q_packed,
                &k_step,
                &v_step,
                plan.packed(&seqs),
                &mut o_step,
                &mut lse_step,
                &plan.options(&step_opts),
                None,
                None,
            )?;
            merge(Some((address(dev, &o_step.buf), address(dev, &lse_step))), last_step && c + 1 == calls)?;
        }
        if calls == 0 && last_step {
            merge(None, true)?;
        }
        ring.step_done(s)?;
    }
    ring.finish(comm)?;
    // Keeps the buffers alive in the code's order until the ring's work is enqueued.
    drop((o_accum, o_step, lse_step));
    Ok(GpuForwardOutput { o: DeviceTensor { buf: o, layout: o_layout, ordinal: dev.info().ordinal }, lse })
}

/// Context-parallel backward on rank `comm.rank()`: this rank's dQ, dK, dV (contiguous, shaped like
/// its shards of q, k, v) for its upstream gradient `d_o` (shaped like O, contiguous), from the
/// forward's shards, its O and its LSE as [`forward`] returned them; with sinks, their gradient summed
/// over the whole sequence (the same on every rank). `opts` must be the forward's;
/// `opts.deterministic` runs each step's kernels in their deterministic mode (the ring's own sums are
/// always in a fixed order).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    dev: &Device,
    comm: &mut Communicator,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    o: &DeviceTensor<T>,
    lse: &CudaSlice<f32>,
    d_o: &DeviceTensor<T>,
    sharding: &Sharding,
    opts: &AttnOptions,
) -> Result<GpuGradients<T>> {
    let checked = check_call(dev, comm, sharding, [q, k, v], Some((o, lse, d_o)), opts);
    let p = handshake(comm, sharding, opts, Direction::Backward, T::DTYPE, checked)?;
    let mut ring =
        Ring::new(dev, comm, sharding, &p, opts, (address(dev, &k.buf), address(dev, &v.buf)), T::DTYPE.size_bytes())?;
    let stream = dev.stream();
    let (tokens_q, tokens_k_max) = (ring.tokens_q, ring.tokens_k_max);
    let (dq_len, dk_len) = (tokens_q * p.heads_q * p.head_dim, tokens_k_max * p.heads_kv * p.head_dim);
    let dv_len = tokens_k_max * p.heads_kv * p.head_dim_v;

    // SAFETY (the allocations): every element is written before it is read (the sums' first steps
    // write without reading; the last ones write the gradients in full).
    let mut grads = unsafe { GpuGradients::<T>::alloc_uninit(dev, &p, "ring::gpu::backward") }?;
    let alloc_f32 = |n: usize, what| unsafe { stream.alloc::<f32>(n) }.during(what);
    let dq_accum = alloc_f32(dq_len, "allocating the ring's dQ sum")?;
    // dK and dV sums of the keys held at each step, two of each, alternating (`Ring::exchange`).
    let dkv_accum = [
        (alloc_f32(dk_len, "allocating the ring's dK sums")?, alloc_f32(dv_len, "allocating the ring's dV sums")?),
        (alloc_f32(dk_len, "allocating the ring's dK sums")?, alloc_f32(dv_len, "allocating the ring's dV sums")?),
    ];
    let alloc_t = |n: usize, what| unsafe { stream.alloc::<T>(n) }.during(what);
    let (dq_step, dk_step, dv_step) = (
        alloc_t(dq_len, "allocating a step's dQ")?,
        alloc_t(dk_len, "allocating a step's dK")?,
        alloc_t(dv_len, "allocating a step's dV")?,
    );
    let mut d_sinks = grads.d_sinks.take();

    let (q_packed, o_packed, d_o_packed) = (ring.packed(q), ring.packed(o), ring.packed(d_o));
    ring.start(comm)?;
    for s in 0..=ring.world {
        let dkv_sent = (s >= 1).then(|| &dkv_accum[(s - 1) % 2]);
        ring.exchange(comm, s, dkv_sent.map(|d| (address(dev, &d.0), address(dev, &d.1), &dkv_accum[s % 2])))?;
        if s == ring.world {
            break;
        }
        ring.wait_keys(s)?;
        let source_tokens = ring.tokens_k(s);
        for (c, plan) in ring.plans[s].iter().enumerate() {
            let (k_step, v_step) = ring.keys(s, k, v);
            // The sinks' gradient is the rows' own (no key in it): taken at step 0's first call only
            // (whose sequences hold every query that sees a key), then summed over the ranks.
            let first = s == 0 && c == 0;
            let call = AttnOptions { sinks: if first { opts.sinks } else { None }, ..plan.options(opts) };
            // The step buffers as tensors (leaked back below, not freed).
            let step = |buf: &CudaSlice<T>, layout| {
                ManuallyDrop::into_inner(alias::<T>(dev, address(dev, buf), layout).take())
            };
            let keys = |dim| Layout::contiguous([1, source_tokens, p.heads_kv, dim]);
            let mut step_grads = GpuGradients {
                dq: step(&dq_step, q_packed.layout),
                dk: step(&dk_step, keys(p.head_dim)),
                dv: step(&dv_step, keys(p.head_dim_v)),
                d_sinks: if first { d_sinks.take() } else { None },
            };
            let seqs = plan.seqs();
            let run = backward::backward_into(
                dev,
                (&q_packed, &k_step, &v_step, &o_packed, lse, &d_o_packed),
                Some(plan.packed(&seqs)),
                &mut step_grads,
                &call,
                None,
            );
            // The aliases go back without freeing what they alias.
            let GpuGradients { dq, dk, dv, d_sinks: back } = step_grads;
            for t in [dq, dk, dv] {
                t.buf.leak();
            }
            if first {
                d_sinks = back;
            }
            run?;
            // SAFETY: the sums' buffers hold `dq_len`, `dk_len`, `dv_len` elements, at least what
            // these lengths count; all on this stream.
            unsafe {
                accumulate::<T>(dev, address(dev, &dq_accum), address(dev, &dq_step), 0, dq_len, first)?;
                ring.wait_gradients(s)?;
                let (dk_sum, dv_sum) = &dkv_accum[s % 2];
                let (nk, nv) = (source_tokens * p.heads_kv * p.head_dim, source_tokens * p.heads_kv * p.head_dim_v);
                accumulate::<T>(dev, address(dev, dk_sum), address(dev, &dk_step), 0, nk, first)?;
                accumulate::<T>(dev, address(dev, dv_sum), address(dev, &dv_step), 0, nv, first)?;
            }
        }
        ring.step_done(s)?;
    }
    // This rank's own keys' sums came home with the last exchange (stayed home in a ring of one).
    ring.wait_gradients(ring.world)?;
    let (dk_sum, dv_sum) = &dkv_accum[if ring.world == 1 { 0 } else { ring.world % 2 }];
    // SAFETY: as above; the gradients are contiguous tensors of these lengths.
    unsafe {
        let (nq, nk, nv) = (grads.dq.layout.numel(), grads.dk.layout.numel(), grads.dv.layout.numel());
        accumulate::<T>(dev, address(dev, &dq_accum), 0, address(dev, &grads.dq.buf), nq, false)?;
        accumulate::<T>(dev, address(dev, dk_sum), 0, address(dev, &grads.dk.buf), nk, false)?;
        accumulate::<T>(dev, address(dev, dv_sum), 0, address(dev, &grads.dv.buf), nv, false)?;
    }
    if let Some(d) = &d_sinks {
        if ring.world > 1 {
            comm.stream().join(stream).during("ordering the ring's streams")?;
            // SAFETY: `heads_q` f32 on this device; every rank reduces the same count, in the same
            // order of collectives (after the ring's last exchange).
            unsafe { comm.all_reduce_sum_f32(address(dev, d), p.heads_q) }?;
        }
    }
    ring.finish(comm)?;
    drop((dq_accum, dkv_accum, dq_step, dk_step, dv_step));
    grads.d_sinks = d_sinks;
    Ok(grads)
}

/// Which call the ranks are making (part of what the handshake compares).
#[derive(Clone, Copy)]
enum Direction {
    Forward = 0,
    Backward = 1,
}

/// The sinks' device address (0 without).
fn sinks_ptr(dev: &Device, opts: &AttnOptions) -> Result<u64> {
    Ok(device_per_head(dev, Arg::Sinks, opts.sinks)?.map_or(0, |s| address(dev, s)))
}

/// A buffer's device address (the stream-order bookkeeping of cudarc's guard is not needed: every
/// use is on this device's streams, ordered by the ring's events).
fn address<T>(dev: &Device, buf: &CudaSlice<T>) -> u64 {
    buf.device_ptr(dev.stream()).0
}

/// The local checks of a call: the communicator's device and size, the options, the shards' shapes
/// (this rank's lengths), contiguity, and for the backward O, dO and the LSE. Returns the problem of
/// this rank's shard against its own keys.
fn check_call<T: Element>(
    dev: &Device,
    comm: &Communicator,
    sharding: &Sharding,
    [q, k, v]: [&DeviceTensor<T>; 3],
    backward: Option<(&DeviceTensor<T>, &CudaSlice<f32>, &DeviceTensor<T>)>,
    opts: &AttnOptions,
) -> Result<AttnProblem> {
    if comm.ordinal() != dev.info().ordinal {
        return Err(Error::DeviceMismatch { arg: Arg::Q, got: comm.ordinal(), expected: dev.info().ordinal });
    }
    if sharding.world != comm.world() {
        return Err(Error::BadRingRank { rank: comm.rank(), world: sharding.world });
    }
    if T::DTYPE != DType::BF16 && T::DTYPE != DType::F16 {
        return Err(Error::UnsupportedDtype { arg: Arg::Q, dtype: T::DTYPE, path: "context-parallel attention" });
    }
    check_ring_options(opts, sharding)?;
    let len = sharding.shard_len(comm.rank());
    let mut tensors = vec![(Arg::Q, q), (Arg::K, k), (Arg::V, v)];
    if let Some((o, _, d_o)) = backward {
        tensors.extend([(Arg::O, o), (Arg::DO, d_o)]);
    }
    for &(arg, t) in &tensors {
        t.check_on(dev, arg)?;
        if t.layout.seqlen() != len {
            return Err(Error::ShapeMismatch {
                arg,
                what: "seqlen",
                got: t.layout.seqlen(),
                expected: len,
                why: "this rank's shard of the sequence (ring::Sharding::shard_len)",
            });
        }
        if t.layout != Layout::contiguous(t.layout.shape) {
            let (shape, strides) = (t.layout.shape, t.layout.strides);
            return Err(Error::NotContiguous { arg, shape, strides, path: "context-parallel attention" });
        }
    }
    let p = AttnProblem::new((&q.layout, q.buf.len()), (&k.layout, k.buf.len()), (&v.layout, v.buf.len()), opts)?;
    if let Some((o, lse, d_o)) = backward {
        p.check_input_like_o(Arg::O, &o.layout, o.buf.len())?;
        p.check_input_like_o(Arg::DO, &d_o.layout, d_o.buf.len())?;
        if lse.len() < p.lse_len() {
            return Err(Error::ShapeMismatch {
                arg: Arg::Lse,
                what: "length",
                got: lse.len(),
                expected: p.lse_len(),
                why: "one f32 per (q head, token of the shard), as ring::gpu::forward returns it",
            });
        }
    }
    device_per_head(dev, Arg::Sinks, opts.sinks)?;
    Ok(p)
}

/// What the handshake compares, in its order (after a status word).
const FIELDS: [&str; 18] = [
    "direction (0 forward, 1 backward)",
    "world",
    "seqlen",
    "shard layout (0 contiguous, 1 zig-zag)",
    "causal",
    "batch",
    "heads_q",
    "heads_kv",
    "head_dim",
    "head_dim_v",
    "dtype (16 bf16, 17 f16)",
    "softmax scale (f32 bits)",
    "softcap (f32 bits, 0 none)",
    "sinks",
    "deterministic",
    "window left (+1, 0 none)",
    "window right (+1, 0 none)",
    "ALiBi slopes (0 none, else their count)",
];

/// Words per rank in the handshake: the status, then [`FIELDS`].
const WORDS: usize = FIELDS.len() + 1;

/// The ranks compare their calls before any transfer (see the module docs): this rank's status and
/// problem are gathered from every rank and waited for with the communicator's timeout.
fn handshake(
    comm: &mut Communicator,
    sharding: &Sharding,
    opts: &AttnOptions,
    direction: Direction,
    dtype: DType,
    checked: Result<AttnProblem>,
) -> Result<AttnProblem> {
    let mut words = [0u64; WORDS];
    if let Ok(p) = &checked {
        let fields = [
            direction as u64,
            sharding.world as u64,
            sharding.seqlen as u64,
            u64::from(sharding.layout == ShardLayout::ZigZag),
            u64::from(opts.causal),
            p.batch as u64,
            p.heads_q as u64,
            p.heads_kv as u64,
            p.head_dim as u64,
            p.head_dim_v as u64,
            if dtype == DType::BF16 { 16 } else { 17 },
            u64::from(p.softmax_scale.to_bits()),
            p.softcap.map_or(0, |c| u64::from(c.to_bits())),
            u64::from(p.sinks),
            u64::from(opts.deterministic && matches!(direction, Direction::Backward)),
            opts.window.left.map_or(0, |w| w as u64 + 1),
            opts.window.right.map_or(0, |w| w as u64 + 1),
            opts.alibi_slopes.map_or(0, |s| s.len() as u64),
        ];
        words[1..].copy_from_slice(&fields);
    } else {
        words[0] = 1;
    }
    // A ring of one has no peer to compare with.
    if comm.world() == 1 {
        return checked;
    }
    let world = comm.world();
    let ring_stream = comm.stream().clone();
    let sent = ring_stream.clone_htod(&words).during("copying the ring's handshake to the device")?;
    let gathered = ring_stream.alloc_zeros::<u64>(WORDS * world).during("allocating the ring's handshake")?;
    // SAFETY: `WORDS` u64 from each rank into `WORDS · world`, on the ring's stream, as every rank does.
    unsafe { comm.all_gather_u64(sent.device_ptr(&ring_stream).0, gathered.device_ptr(&ring_stream).0, WORDS) }?;
    let done = ring_stream.record_event(None).during("recording the ring's handshake")?;
    comm.wait(&done, "the ring's handshake")?;
    let all = ring_stream.clone_dtoh(&gathered).during("reading the ring's handshake")?;
    let p = checked?;
    for (rank, theirs) in all.chunks(WORDS).enumerate() {
        if theirs[0] != 0 {
            return Err(Error::PeerFailed { rank });
        }
        if let Some(i) = (1..WORDS).find(|&i| theirs[i] != words[i]) {
            return Err(Error::RankMismatch { rank, what: FIELDS[i - 1], got: theirs[i], expected: words[i] });
        }
    }
    Ok(p)
}

/// One call's ring: its step plans and their offsets on the device, the receive buffers for the keys
/// and values of the next step, and the events that order the device's stream and the ring's.
struct Ring<'d> {
    dev: &'d Device,
    world: usize,
    rank: usize,
    len_q: usize,
    tokens_q: usize,
    tokens_k_max: usize,
    /// Tokens of each rank's shard (all batch entries).
    tokens_of: Vec<usize>,
    heads_kv: usize,
    head_dims: (usize, usize),
    /// Each step's calls (none where none of this rank's queries sees the keys held then).
    plans: Vec<Vec<DevicePlan>>,
    /// The caller's keys and values (step 0's).
    own_kv: (u64, u64),
    /// Two (K, V) receive buffers, alternating: step s + 1's keys arrive in `kv[s % 2]`.
    kv: [(u64, u64); 2],
    _kv_buffers: Vec<CudaSlice<u8>>,
    /// Recorded on the ring's stream after exchange s.
    arrived: Vec<Option<CudaEvent>>,
    /// Recorded on the device's stream after step s.
    done: Vec<Option<CudaEvent>>,
    elem_bytes: usize,
}

/// A step call's plan (`ring::shard::StepPlan`, over the batch's entries) on the device: its offsets,
/// its sequences' diagonal shifts (positional calls), and with ALiBi slopes per batch entry, their rows
/// repeated per sequence (`[sequences, heads_q]`, as a packed call takes them).
struct DevicePlan {
    causal: bool,
    offsets: VarlenOffsets,
    shifts: Option<CudaSlice<i32>>,
    slopes: Option<CudaSlice<f32>>,
}

impl DevicePlan {
    fn seqs(&self) -> DeviceVarlen<'_> {
        self.offsets.view()
    }

    /// The packed call of [`DevicePlan::seqs`]' sequences.
    fn packed<'a>(&'a self, seqs: &'a DeviceVarlen<'a>) -> Packed<'a> {
        Packed { seqs, diagonal_shifts: self.shifts.as_ref() }
    }

    /// The call's options: the ring's, causal as the plan says, the window only in positional calls
    /// (elsewhere it is a causal call's right edge, which hides nothing more), ALiBi slopes per sequence
    /// where the ring's are per batch entry.
    fn options<'a>(&'a self, opts: &AttnOptions<'a>) -> AttnOptions<'a> {
        let alibi_slopes = self.slopes.as_ref().map(PerHead::Device).or(opts.alibi_slopes);
        let window = if self.shifts.is_some() { opts.window } else { Window::default() };
        AttnOptions { causal: self.causal, alibi_slopes, window, ..*opts }
    }

    fn upload(
        dev: &Device,
        plan: &StepPlan,
        (batch, heads_q): (usize, usize),
        lens: (usize, usize),
        opts: &AttnOptions,
    ) -> Result<Self> {
        let stream = dev.stream();
        let (cu_q, cu_k) = plan.offsets(batch, lens.0, lens.1);
        let offsets =
            dev.upload_varlen(&Varlen { cu_seqlens_q: &cu_q, cu_seqlens_k: &cu_k }, batch * lens.0, batch * lens.1)?;
        let shifts = match &plan.shifts {
            Some(per_entry) => Some(
                stream
                    .clone_htod(&per_entry.repeat(batch))
                    .during("copying a ring step's diagonal shifts to the device")?,
            ),
            None => None,
        };
        let per_sequence = plan.sequences.len();
        let slopes = match device_per_head(dev, Arg::AlibiSlopes, opts.alibi_slopes)? {
            Some(rows) if batch > 1 && rows.len() == batch * heads_q => {
                // SAFETY: every row is written below before the call reads it.
                let mut out = unsafe { stream.alloc::<f32>(batch * per_sequence * heads_q) }
                    .during("allocating a ring step's ALiBi slopes")?;
                for b in 0..batch {
                    for i in 0..per_sequence {
                        let at = (b * per_sequence + i) * heads_q;
                        stream
                            .memcpy_dtod(
                                &rows.slice(b * heads_q..(b + 1) * heads_q),
                                &mut out.slice_mut(at..at + heads_q),
                            )
                            .during("copying a ring step's ALiBi slopes")?;
                    }
                }
                Some(out)
            }
            _ => None,
        };
        Ok(DevicePlan { causal: plan.causal, offsets, shifts, slopes })
    }
}

impl<'d> Ring<'d> {
    fn new(
        dev: &'d Device,
        comm: &Communicator,
        sharding: &Sharding,
        p: &AttnProblem,
        opts: &AttnOptions,
        own_kv: (u64, u64),
        elem_bytes: usize,
    ) -> Result<Self> {
        let (world, rank, batch) = (sharding.world, comm.rank(), p.batch);
        let len_q = sharding.shard_len(rank);
        let tokens_of: Vec<usize> = (0..world).map(|r| batch * sharding.shard_len(r)).collect();
        let stream = dev.stream();
        let mask = RingMask::of(opts);
        let mut plans = Vec::with_capacity(world);
        for s in 0..world {
            let lens = (len_q, sharding.shard_len(sharding.source(rank, s)));
            let calls = sharding.step_plans(rank, s, &mask);
            plans.push(
                calls
                    .iter()
                    .map(|plan| DevicePlan::upload(dev, plan, (batch, p.heads_q), lens, opts))
                    .collect::<Result<_>>()?,
            );
        }
        let tokens_k_max = batch * sharding.max_shard_len();
        let (k_bytes, v_bytes) = (
            tokens_k_max * p.heads_kv * p.head_dim * elem_bytes,
            tokens_k_max * p.heads_kv * p.head_dim_v * elem_bytes,
        );
        let mut buffers = Vec::new();
        let mut kv = [(0, 0); 2];
        if world > 1 {
            for slot in &mut kv {
                // SAFETY: received into before any read (`Ring::exchange`).
                let k = unsafe { stream.alloc::<u8>(k_bytes.max(1)) }.during("allocating the ring's K buffer")?;
                let v = unsafe { stream.alloc::<u8>(v_bytes.max(1)) }.during("allocating the ring's V buffer")?;
                *slot = (address(dev, &k), address(dev, &v));
                buffers.extend([k, v]);
            }
        }
        Ok(Ring {
            dev,
            world,
            rank,
            len_q,
            tokens_q: batch * len_q,
            tokens_k_max,
            tokens_of,
            heads_kv: p.heads_kv,
            head_dims: (p.head_dim, p.head_dim_v),
            plans,
            own_kv,
            kv,
            _kv_buffers: buffers,
            arrived: (0..=world).map(|_| None).collect(),
            done: (0..world).map(|_| None).collect(),
            elem_bytes,
        })
    }

    /// Tokens of the keys held at step s.
    fn tokens_k(&self, s: usize) -> usize {
        self.tokens_of[(self.rank + self.world - s % self.world) % self.world]
    }

    /// `[batch, len, heads, dim]` contiguous as the packed `[1, batch·len, heads, dim]`, same memory.
    fn packed<T: Element>(&self, t: &'d DeviceTensor<T>) -> Alias<'d, T> {
        let [b, s, h, d] = t.layout.shape;
        alias(self.dev, address(self.dev, &t.buf), Layout::contiguous([1, b * s, h, d]))
    }

    /// The keys and values held at step s, packed: the caller's at step 0, a receive buffer after.
    /// `k` and `v` are the caller's (whose addresses the ring holds): borrowed so that the aliases
    /// cannot outlive them.
    fn keys<'a, T: Element>(
        &self,
        s: usize,
        k: &'a DeviceTensor<T>,
        v: &'a DeviceTensor<T>,
    ) -> (Alias<'a, T>, Alias<'a, T>) {
        let _ = (k, v);
        let (k_at, v_at) = self.keys_at(s);
        let tokens = self.tokens_k(s);
        let (d, dv) = self.head_dims;
        (
            alias(self.dev, k_at, Layout::contiguous([1, tokens, self.heads_kv, d])),
            alias(self.dev, v_at, Layout::contiguous([1, tokens, self.heads_kv, dv])),
        )
    }

    /// Where the keys and values of step s are: the caller's at step 0, a receive buffer after.
    fn keys_at(&self, s: usize) -> (u64, u64) {
        if s == 0 {
            self.own_kv
        } else {
            self.kv[(s - 1) % 2]
        }
    }

    /// The ring's stream starts after the caller's work on the device's stream (the shards are ready).
    fn start(&self, comm: &Communicator) -> Result<()> {
        comm.stream().join(self.dev.stream()).during("ordering the ring's streams")
    }

    /// The device's stream waits for the keys and values of step s (exchange s − 1).
    fn wait_keys(&self, s: usize) -> Result<()> {
        match s.checked_sub(1).and_then(|e| self.arrived[e].as_ref()) {
            Some(e) => self.dev.stream().wait(e).during("ordering the ring's streams"),
            None => Ok(()),
        }
    }

    /// The device's stream waits for the dK/dV sums of step s (exchange s, backward).
    fn wait_gradients(&self, s: usize) -> Result<()> {
        match self.arrived[s].as_ref() {
            Some(e) if s >= 1 => self.dev.stream().wait(e).during("ordering the ring's streams"),
            _ => Ok(()),
        }
    }

    /// Step s's work is enqueued on the device's stream: the exchange that reuses its buffers waits
    /// for it.
    fn step_done(&mut self, s: usize) -> Result<()> {
        if self.world > 1 {
            self.done[s] = Some(self.dev.stream().record_event(None).during("recording a ring step")?);
        }
        Ok(())
    }

    /// The device's stream waits for the ring's last transfers: the call's buffers, freed on the
    /// device's stream, outlive them, and the caller's next work on the shards follows them.
    fn finish(&self, comm: &Communicator) -> Result<()> {
        if self.world > 1 {
            self.dev.stream().join(comm.stream()).during("ordering the ring's streams")?;
        }
        Ok(())
    }

    /// Exchange s on the ring's stream: the keys and values of step s to the next rank and those of
    /// step s + 1 from the previous one (while s + 1 < world), and with `gradients` (the backward,
    /// s ≥ 1) the dK/dV sums of step s − 1 to the next rank and those of step s from the previous one
    /// (into the third element). Waits for step s − 1 on the device's stream, whose buffers it reuses.
    #[allow(clippy::type_complexity)]
    fn exchange(
        &mut self,
        comm: &Communicator,
        s: usize,
        gradients: Option<(u64, u64, &(CudaSlice<f32>, CudaSlice<f32>))>,
    ) -> Result<()> {
        let keys = s + 1 < self.world;
        if self.world == 1 || (!keys && gradients.is_none()) {
            return Ok(());
        }
        if s >= 1 {
            if let Some(done) = &self.done[s - 1] {
                comm.stream().wait(done).during("ordering the ring's streams")?;
            }
        }
        let (next, prev) = ((self.rank + 1) % self.world, (self.rank + self.world - 1) % self.world);
        let (d, dv) = self.head_dims;
        let (row_k, row_v) = (self.heads_kv * d, self.heads_kv * dv);
        comm.group(|c| {
            // SAFETY: every address is a live buffer of this call with room for the byte counts
            // (receive buffers sized for the longest shard); the peers post the matching calls, as
            // every rank runs the same exchanges in the same order.
            unsafe {
                if keys {
                    let (send_tokens, recv_tokens) = (self.tokens_k(s), self.tokens_k(s + 1));
                    let (sk, sv) = self.keys_at(s);
                    c.send(sk, send_tokens * row_k * self.elem_bytes, next)?;
                    c.send(sv, send_tokens * row_v * self.elem_bytes, next)?;
                    let (rk, rv) = self.kv[s % 2];
                    c.recv(rk, recv_tokens * row_k * self.elem_bytes, prev)?;
                    c.recv(rv, recv_tokens * row_v * self.elem_bytes, prev)?;
                }
                if let Some((send_k, send_v, (recv_k, recv_v))) = gradients {
                    let (send_tokens, recv_tokens) = (self.tokens_k(s - 1), self.tokens_k(s));
                    c.send(send_k, send_tokens * row_k * 4, next)?;
                    c.send(send_v, send_tokens * row_v * 4, next)?;
                    c.recv(address(self.dev, recv_k), recv_tokens * row_k * 4, prev)?;
                    c.recv(address(self.dev, recv_v), recv_tokens * row_v * 4, prev)?;
                }
            }
            Ok(())
        })?;
        self.arrived[s] = Some(comm.stream().record_event(None).during("recording a ring exchange")?);
        Ok(())
    }
}

/// A tensor over memory another buffer owns (a packed view of a shard, a receive buffer's prefix): a
/// `DeviceTensor` whose buffer is never freed (it is leaked back when the alias goes), borrowing
/// from the owner for `'a`.
struct Alias<'a, T> {
    t: ManuallyDrop<DeviceTensor<T>>,
    _owner: PhantomData<&'a ()>,
}

impl<T> Alias<'_, T> {
    /// The tensor, out of the alias: the caller must `leak` its buffer instead of dropping it.
    fn take(mut self) -> ManuallyDrop<DeviceTensor<T>> {
        // SAFETY: `self.t` is not used again (self is forgotten without running Drop).
        let t = unsafe { ManuallyDrop::take(&mut self.t) };
        std::mem::forget(self);
        ManuallyDrop::new(t)
    }
}

impl<T> std::ops::Deref for Alias<'_, T> {
    type Target = DeviceTensor<T>;
    fn deref(&self) -> &DeviceTensor<T> {
        &self.t
    }
}

impl<T> Drop for Alias<'_, T> {
    fn drop(&mut self) {
        // SAFETY: taken once, here; the buffer is leaked, not freed: its owner frees it.
        let t = unsafe { ManuallyDrop::take(&mut self.t) };
        t.buf.leak();
    }
}

/// A tensor of `layout` over the device memory at `at`, which a live buffer of this device owns with
/// at least `layout.span()` elements from `at` for as long as the alias is used.
fn alias<'a, T>(dev: &Device, at: u64, layout: Layout) -> Alias<'a, T> {
    // SAFETY: as the function's contract says; the slice is never freed (`Alias`'s Drop leaks it).
    let buf = unsafe { dev.stream().upgrade_device_ptr::<T>(at, layout.span()) };
    Alias { t: ManuallyDrop::new(DeviceTensor { buf, layout, ordinal: dev.info().ordinal }), _owner: PhantomData }
}

/// Launches the merge (`abi::RingMergeParams`) over `rows` rows on the device's stream.
///
/// # Safety
/// Every address in `params` is live with the sizes `abi::RingMergeParams` states, until the kernel
/// completes in stream order.
unsafe fn launch_merge<T: Element>(dev: &Device, params: RingMergeParams, rows: usize) -> Result<()> {
    let name = if T::DTYPE == DType::F16 { abi::RING_MERGE_F16 } else { abi::RING_MERGE_BF16 };
    let f = dev.modules.function(&dev.ctx, name, 0)?;
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(MERGE_ROWS_PER_CTA as usize) as u32, 1, 1),
        block_dim: (32 * MERGE_ROWS_PER_CTA, 1, 1),
        shared_mem_bytes: 0,
    };
    let params = KernelParams(params);
    launch::enqueue(dev, &[Launch::new(&f, name, cfg, &params)])
}

/// `out = round(accum + step)` when `out` is set, else `accum (+)= step` (`abi::RingAccumulateParams`),
/// over `n` elements on the device's stream.
///
/// # Safety
/// `accum` holds `n` f32, `step` and `out` (where not 0) `n` elements of `T`, all live until the kernel
/// completes in stream order; `n` is a multiple of 8.
unsafe fn accumulate<T: Element>(dev: &Device, accum: u64, step: u64, out: u64, n: usize, first: bool) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let name = if T::DTYPE == DType::F16 { abi::RING_ACCUMULATE_F16 } else { abi::RING_ACCUMULATE_BF16 };
    let f = dev.modules.function(&dev.ctx, name, 0)?;
    let chunks = n / 8;
    let blocks = chunks.div_ceil(ACCUMULATE_THREADS as usize).min(65_535 * 8) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ACCUMULATE_THREADS, 1, 1), shared_mem_bytes: 0 };
    let params = RingAccumulateParams { accum, step, out, n: n as u64, first: u32::from(first), _pad: 0 };
    let params = KernelParams(params);
    launch::enqueue(dev, &[Launch::new(&f, name, cfg, &params)])
}
