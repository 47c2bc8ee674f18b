//! Attention over a paged KV cache on the GPU (vLLM-style block tables), with FlashAttention's
//! `flash_attn_with_kvcache` semantics, as the f64 reference (`cpu::paged`) defines them: sequence b's
//! keys are its first `cache_seqlens[b]` cache tokens, found through its row of the block table,
//! followed by the call's new keys, which the call writes into the cache first (rotated, with rotary
//! embeddings, as the queries are); queries align with the end of those keys (bottom-right).
//!
//! Two launches: the paged step (`kernels-gpu/src/fwd/paged.rs`: each sequence's key count, the append,
//! the rotated queries), then the fused forward's `mma.sync` rows in their paged instantiation, whose
//! loaders read each key row through the block table (any page size), split-KV and the grouped-query
//! decode packing as for a dense cache. Device data the host cannot check (lengths, table entries,
//! positions) never addresses outside the buffers: bad entries are skipped and raise error bits in the
//! cache's [`PagedErrors`], which [`PagedErrors::check`] turns into a typed error.

use crate::cpu::paged::queries_move;
use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::error::{Arg, DriverContext, Error, Result};
use crate::gpu::flash::{self, BatchLaunch, PagedLaunch};
use crate::gpu::launch::{self, KernelParams, Launch};
use crate::gpu::score::check_per_head;
use crate::gpu::tensor::{check_vector_strides, strides3, DeviceTensor, GpuForwardOutput};
use crate::layout::Layout;
use crate::options::AttnOptions;
use crate::problem::AttnProblem;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use ironflash_kernels::abi::{self, PageTable, PagedPrepParams};
use ironflash_kernels::tiles::{BatchLayout, FwdTile};

/// Threads per block of the paged step, and the most blocks its grid-stride loop takes.
const PREP_THREADS: u32 = 256;
const PREP_MAX_BLOCKS: usize = 1 << 16;

/// The error bits of a paged cache's calls on the device (`abi::PAGED_*`), sticky until checked: the
/// kernels raise them without a synchronisation, so a decode loop pays nothing for them, and
/// [`PagedErrors::check`] (one synchronisation) reports them when the caller asks.
pub struct PagedErrors {
    bits: CudaSlice<u32>,
}

impl PagedErrors {
    pub fn new(dev: &Device) -> Result<Self> {
        Ok(PagedErrors { bits: dev.stream.alloc_zeros::<u32>(1).during("allocating the paged error bits")? })
    }

    /// Waits for the calls so far, then clears the bits: `Ok` when none was raised, else
    /// `Error::BadPagedCache` naming what the calls met (a block-table entry outside the cache, a cache
    /// length that is negative or beyond its sequence's pages with the new tokens, a rotary position
    /// beyond the tables), whose keys or writes the calls skipped.
    pub fn check(&mut self, dev: &Device) -> Result<()> {
        let bits = dev.stream.clone_dtoh(&self.bits).during("reading the paged error bits")?[0];
        if bits == 0 {
            return Ok(());
        }
        dev.stream.memset_zeros(&mut self.bits).during("clearing the paged error bits")?;
        let (arg, what) = if bits & abi::PAGED_BAD_PAGE != 0 {
            (Arg::BlockTable, "a block-table entry outside [0, num_pages)")
        } else if bits & abi::PAGED_BAD_LENGTH != 0 {
            (Arg::CacheSeqlens, "a cache length that is negative or, with the new tokens, beyond its pages")
        } else {
            (Arg::Rotary, "a rotary position beyond the cos/sin tables")
        };
        let why = format!("the device met {what} (error bits {bits:#x}); the keys or writes concerned were skipped");
        Err(Error::BadPagedCache { arg, why })
    }
}

/// A paged cache on the device: K and V pages `[num_pages, page_size, heads_kv, head_dim]` (V with its
/// own head dim; any strides that are multiples of 8 elements, the last dim contiguous), the block
/// table `[batch, pages_per_seq]` (i32 page indices, row-major) and the cached length of each sequence
/// (i32 `[batch]`), with the error bits its calls raise.
pub struct DevicePagedKv<'a, T> {
    pub k_pages: &'a mut DeviceTensor<T>,
    pub v_pages: &'a mut DeviceTensor<T>,
    pub block_table: &'a CudaSlice<i32>,
    pub cache_seqlens: &'a CudaSlice<i32>,
    pub errors: &'a mut PagedErrors,
}

/// The call's new keys and values, `[batch, seqlen_new, heads_kv, head_dim]` (V: its head dim): written
/// into the cache at `cache_seqlens[b]` and attended to. The cache's lengths are the caller's to advance
/// for the next step, as with FlashAttention.
pub struct DeviceKvAppend<'a, T> {
    pub k: &'a DeviceTensor<T>,
    pub v: &'a DeviceTensor<T>,
}

/// Rotary embeddings applied in the call (`cpu::paged::Rotary`'s semantics): f32 `cos`, `sin`
/// `[positions, rotary_dim / 2]` on the device; the first `rotary_dim` dims of each new key and of each
/// query rotated at their positions, pairs `(x_i, x_{i + rotary_dim/2})` or, `interleaved`,
/// `(x_{2i}, x_{2i+1})`.
#[derive(Clone, Copy)]
pub struct DeviceRotary<'a> {
    pub cos: &'a CudaSlice<f32>,
    pub sin: &'a CudaSlice<f32>,
    pub rotary_dim: usize,
    pub interleaved: bool,
}

/// Attention of `q` (`[batch, seqlen_q, heads_q, head_dim]`) over a paged cache, after appending
/// `append` to it: O `[batch, seqlen_q, heads_q, head_dim_v]` (contiguous) and the f32 LSE `[batch,
/// heads_q, seqlen_q]`, as the dense call gives them for each sequence's keys. Every option of the dense
/// call applies per sequence (causal and windows bottom-right, softcap, ALiBi per head or per sequence,
/// sinks); GQA/MQA; any page size.
pub fn flash_forward_paged<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    cache: &mut DevicePagedKv<'_, T>,
    append: Option<DeviceKvAppend<'_, T>>,
    rotary: Option<DeviceRotary<'_>>,
    opts: &AttnOptions,
) -> Result<GpuForwardOutput<T>> {
    let plan = plan(dev, q, cache, append.as_ref(), rotary.as_ref(), opts)?;
    dev.refuse_capture("flash_forward_paged")?;
    let o_layout = Layout::contiguous(plan.p.o_shape());
    // SAFETY: the forward writes every element of O and of the LSE.
    let o = unsafe { dev.stream.alloc::<T>(o_layout.numel()) }.during("allocating O")?;
    let mut lse = unsafe { dev.stream.alloc::<f32>(plan.p.lse_len()) }.during("allocating the LSE")?;
    let mut o = DeviceTensor { buf: o, layout: o_layout, ordinal: dev.info().ordinal };
    run(dev, &plan, q, cache, append.as_ref(), rotary.as_ref(), opts, (&mut o, &mut lse), None, None)?;
    Ok(GpuForwardOutput { o, lse })
}

/// As [`flash_forward_paged`], into caller-provided O (any non-overlapping strides, multiples of 8
/// elements) and LSE (at least `batch · heads_q · seqlen_q` f32), with an optional forced tile (a row
/// with a paged kernel for this page size and split count: `FwdTile::paged_box_rows`) and split count,
/// for tests and benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn flash_forward_paged_into<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    cache: &mut DevicePagedKv<'_, T>,
    append: Option<DeviceKvAppend<'_, T>>,
    rotary: Option<DeviceRotary<'_>>,
    o: &mut DeviceTensor<T>,
    lse: &mut CudaSlice<f32>,
    opts: &AttnOptions,
    tile: Option<&FwdTile>,
    num_splits: Option<usize>,
) -> Result<()> {
    if let Some(n) = num_splits {
        flash::check_num_splits(n)?;
    }
    let plan = plan(dev, q, cache, append.as_ref(), rotary.as_ref(), opts)?;
    flash::check_outputs(dev, &plan.p, o, lse, "one f32 per (batch, head_q, query row)")?;
    if let Some(t) = tile {
        let split = num_splits.is_some_and(|n| n > 1);
        let kernel = t.kernel_symbol(false, split, BatchLayout::Paged);
        if kernel.is_empty() || t.paged_box_rows(plan.page_size).is_none() || (t.head_dim, t.head_dim_v) != plan.dims()
        {
            return Err(Error::NoTileConfig(format!(
                "{}: no paged-cache kernel for head_dim {}, head_dim_v {}, pages of {} keys{} (the `mma.sync` rows \
                 take any page size and split, the TMA rows page sizes that split into boxes of whole 8-row \
                 groups, unsplit)",
                t.symbols[0],
                plan.p.head_dim,
                plan.p.head_dim_v,
                plan.page_size,
                if split { ", split" } else { "" }
            )));
        }
    }
    run(dev, &plan, q, cache, append.as_ref(), rotary.as_ref(), opts, (o, lse), tile, num_splits)
}

/// A validated paged call: the dense problem over each sequence's capacity (`pages_per_seq ·
/// page_size` keys), the cache's geometry and the new tokens per sequence.
struct Plan {
    p: AttnProblem,
    num_pages: usize,
    page_size: usize,
    pages_per_seq: usize,
    seqlen_new: usize,
    tile: FwdTile,
}

impl Plan {
    fn dims(&self) -> (usize, usize) {
        (self.p.head_dim, self.p.head_dim_v)
    }
}

fn mismatch(arg: Arg, what: &'static str, got: usize, expected: usize, why: &'static str) -> Error {
    Error::ShapeMismatch { arg, what, got, expected, why }
}

fn plan<T: Element>(
    dev: &Device,
    q: &DeviceTensor<T>,
    cache: &DevicePagedKv<'_, T>,
    append: Option<&DeviceKvAppend<'_, T>>,
    rotary: Option<&DeviceRotary<'_>>,
    opts: &AttnOptions,
) -> Result<Plan> {
    if !T::DTYPE.is_half() {
        return Err(Error::UnsupportedDtype { arg: Arg::Q, dtype: T::DTYPE, path: "the fused forward kernel" });
    }
    let ordinal = dev.info().ordinal;
    for (arg, t) in [(Arg::Q, q), (Arg::K, &*cache.k_pages), (Arg::V, &*cache.v_pages)] {
        t.check_on(dev, arg)?;
        t.layout.validate(arg, t.buf.len())?;
        check_vector_strides(arg, &t.layout)?;
    }
    for (arg, s) in [(Arg::BlockTable, cache.block_table), (Arg::CacheSeqlens, cache.cache_seqlens)] {
        if s.ordinal() != ordinal {
            return Err(Error::DeviceMismatch { arg, got: s.ordinal(), expected: ordinal });
        }
    }
    let [batch, _, _, head_dim] = q.layout.shape;
    let [num_pages, page_size, heads_kv, _] = cache.k_pages.layout.shape;
    let [vp, vs, vh, head_dim_v] = cache.v_pages.layout.shape;
    if (vp, vs, vh) != (num_pages, page_size, heads_kv) {
        let why = "v's pages are k's: [num_pages, page_size, heads_kv, head_dim_v]";
        return Err(mismatch(Arg::V, "pages", vp * vs * vh, num_pages * page_size * heads_kv, why));
    }
    if cache.cache_seqlens.len() < batch {
        let why = "one cached length per sequence (q's batch)";
        return Err(mismatch(Arg::CacheSeqlens, "length", cache.cache_seqlens.len(), batch, why));
    }
    let table = cache.block_table.len();
    if table < batch || table % batch != 0 {
        let why = "a row of page indices per sequence, [batch, pages_per_seq]";
        return Err(mismatch(Arg::BlockTable, "length", table, batch, why));
    }
    let pages_per_seq = table / batch;
    let seqlen_new = match append {
        None => 0,
        Some(a) => {
            for (arg, t, d) in [(Arg::K, a.k, head_dim), (Arg::V, a.v, head_dim_v)] {
                t.check_on(dev, arg)?;
                t.layout.validate(arg, t.buf.len())?;
                check_vector_strides(arg, &t.layout)?;
                let [b, _, h, dim] = t.layout.shape;
                if (b, h, dim) != (batch, heads_kv, d) {
                    let why = "new keys and values are [batch, seqlen_new, heads_kv, head_dim] (q's batch, the cache's heads)";
                    return Err(mismatch(arg, "shape", b * h * dim, batch * heads_kv * d, why));
                }
            }
            if a.v.layout.shape[1] != a.k.layout.shape[1] {
                let why = "one new value per new key";
                return Err(mismatch(Arg::V, "seqlen", a.v.layout.shape[1], a.k.layout.shape[1], why));
            }
            a.k.layout.shape[1]
        }
    };
    if let Some(r) = rotary {
        check_rotary(dev, r, head_dim)?;
    }
    // The dense problem over each sequence's capacity: shapes, head dims, GQA, options and index limits
    // as the dense call checks them.
    let capacity = pages_per_seq * page_size;
    let k_virtual = Layout::contiguous([batch, capacity, heads_kv, head_dim]);
    let v_virtual = Layout::contiguous([batch, capacity, heads_kv, head_dim_v]);
    let p = AttnProblem::new(
        (&q.layout, q.buf.len()),
        (&k_virtual, k_virtual.numel()),
        (&v_virtual, v_virtual.numel()),
        opts,
    )?;
    check_per_head(dev, opts)?;
    flash::check_grid(p.heads_q, p.batch, p.lse_len())?;
    let tile = flash::paged_tile(dev.info(), &p, T::DTYPE, page_size)?;
    Ok(Plan { p, num_pages, page_size, pages_per_seq, seqlen_new, tile })
}

fn check_rotary(dev: &Device, r: &DeviceRotary<'_>, head_dim: usize) -> Result<()> {
    let bad = |why: String| Err(Error::BadPagedCache { arg: Arg::Rotary, why });
    for s in [r.cos, r.sin] {
        if s.ordinal() != dev.info().ordinal {
            return Err(Error::DeviceMismatch { arg: Arg::Rotary, got: s.ordinal(), expected: dev.info().ordinal });
        }
    }
    if r.rotary_dim == 0 || r.rotary_dim % 2 != 0 || r.rotary_dim > head_dim {
        return bad(format!("rotary_dim {} must be even, positive and at most head_dim {head_dim}", r.rotary_dim));
    }
    let half = r.rotary_dim / 2;
    if r.cos.len() != r.sin.len() || r.cos.is_empty() || r.cos.len() % half != 0 {
        return bad(format!(
            "cos and sin hold {} and {} values; both must be [positions, {half}] with at least one position",
            r.cos.len(),
            r.sin.len()
        ));
    }
    if r.cos.len() / half > u32::MAX as usize {
        return bad(format!("{} positions; at most 2^32 - 1", r.cos.len() / half));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run<T: Element>(
    dev: &Device,
    plan: &Plan,
    q: &DeviceTensor<T>,
    cache: &mut DevicePagedKv<'_, T>,
    append: Option<&DeviceKvAppend<'_, T>>,
    rotary: Option<&DeviceRotary<'_>>,
    opts: &AttnOptions,
    (o, lse): (&mut DeviceTensor<T>, &mut CudaSlice<f32>),
    tile: Option<&FwdTile>,
    num_splits: Option<usize>,
) -> Result<()> {
    let p = &plan.p;
    let stream = dev.stream();
    // The paged step runs only where there is something to write before attention: new tokens or
    // rotated queries. Without, the forward takes the cached lengths as its key counts (clamping them
    // into the pages and raising `PAGED_BAD_LENGTH` itself, `fwd::io::check_paged_length`): one launch.
    let prep = append.is_some() || rotary.is_some();
    // Workspace, stream-ordered: each sequence's key count, and the rotated queries.
    // SAFETY: the paged step writes every element of both before the forward reads them.
    let mut seqused = match prep {
        true => Some(unsafe { stream.alloc::<i32>(p.batch) }.during("allocating the sequences' key counts")?),
        false => None,
    };
    let q_rot_layout = Layout::contiguous(q.layout.shape);
    let mut q_rot = match rotary {
        Some(_) => Some(unsafe { stream.alloc::<T>(q_rot_layout.numel()) }.during("allocating the rotated queries")?),
        None => None,
    };

    let (table_ptr, _table_sync) = cache.block_table.device_ptr(stream);
    let (lens_ptr, _lens_sync) = cache.cache_seqlens.device_ptr(stream);
    let (errors_ptr, _errors_sync) = cache.errors.bits.device_ptr_mut(stream);
    let pages = PageTable {
        block_table: table_ptr,
        errors: errors_ptr,
        pages_per_seq: plan.pages_per_seq as u32,
        page_size: plan.page_size as u32,
        num_pages: plan.num_pages as u32,
        // Set at launch for a TMA row (`flash::launch`: it depends on the row's key block).
        tma_box_rows: 0,
    };
    if let Some(seqused) = seqused.as_mut() {
        let (seqused_ptr, _seqused_sync) = seqused.device_ptr_mut(stream);
        let (k_pages_ptr, _kp_sync) = cache.k_pages.buf.device_ptr_mut(stream);
        let (v_pages_ptr, _vp_sync) = cache.v_pages.buf.device_ptr_mut(stream);
        let (q_ptr, _q_sync) = q.buf.device_ptr(stream);
        let new_ptrs = append.map(|a| (a.k.buf.device_ptr(stream), a.v.buf.device_ptr(stream)));
        let rot_ptrs = rotary.map(|r| (r.cos.device_ptr(stream), r.sin.device_ptr(stream)));
        let q_rot_ptr = q_rot.as_mut().map(|b| b.device_ptr_mut(stream));
        let half = rotary.map_or(1, |r| r.rotary_dim / 2);
        let params = PagedPrepParams {
            pages,
            cache_seqlens: lens_ptr,
            seqused_k: seqused_ptr,
            k_pages: k_pages_ptr,
            v_pages: v_pages_ptr,
            k_page_strides: strides3(&cache.k_pages.layout),
            v_page_strides: strides3(&cache.v_pages.layout),
            k_new: new_ptrs.as_ref().map_or(0, |n| n.0 .0),
            v_new: new_ptrs.as_ref().map_or(0, |n| n.1 .0),
            k_new_strides: append.map_or([0; 3], |a| strides3(&a.k.layout)),
            v_new_strides: append.map_or([0; 3], |a| strides3(&a.v.layout)),
            q: q_ptr,
            q_strides: strides3(&q.layout),
            q_rotated: q_rot_ptr.as_ref().map_or(0, |r| r.0),
            cos: rot_ptrs.as_ref().map_or(0, |r| r.0 .0),
            sin: rot_ptrs.as_ref().map_or(0, |r| r.1 .0),
            positions: rotary.map_or(0, |r| (r.cos.len() / half) as u32),
            rotary_dim: rotary.map_or(0, |r| r.rotary_dim as u32),
            interleaved: rotary.is_some_and(|r| r.interleaved) as u32,
            rows_move: queries_move(opts) as u32,
            batch: p.batch as u32,
            seqlen_q: p.seqlen_q as u32,
            seqlen_new: plan.seqlen_new as u32,
            heads_q: p.heads_q as u32,
            heads_kv: p.heads_kv as u32,
            head_dim: p.head_dim as u32,
            head_dim_v: p.head_dim_v as u32,
        };
        let rot_elems = if rotary.is_some() { p.lse_len() * p.head_dim } else { 0 };
        let new_elems = p.batch * plan.seqlen_new * p.heads_kv * (p.head_dim + p.head_dim_v);
        let total = p.batch + new_elems + rot_elems;
        let blocks = total.div_ceil(PREP_THREADS as usize).min(PREP_MAX_BLOCKS);
        let name = if T::DTYPE == DType::F16 { abi::PAGED_PREP_F16 } else { abi::PAGED_PREP_BF16 };
        let f = dev.modules.function(&dev.ctx, name, 0)?;
        let cfg =
            LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (PREP_THREADS, 1, 1), shared_mem_bytes: 0 };
        let arg = KernelParams(params);
        // SAFETY: `plan` checked every layout against its buffer and the cache's geometry; device data
        // (lengths, table entries, positions) is clamped or skipped by the kernel; the pointers outlive
        // the launch on this stream.
        unsafe { launch::enqueue(dev, &[Launch::new(&f, name, cfg, &arg)]) }?;
    }

    let seqused_ptr = seqused.as_ref().map(|s| s.device_ptr(stream));
    let seqused_k = seqused_ptr.as_ref().map_or(lens_ptr, |(ptr, _sync)| *ptr);
    let batch = BatchLaunch::Paged(PagedLaunch { pages, seqused_k });
    let (q_buf, q_layout) = match &q_rot {
        Some(b) => (b, q_rot_layout),
        None => (&q.buf, q.layout),
    };
    let plan_for = |run: &AttnProblem| flash::launch_choice(dev.info(), run, &plan.tile, tile, num_splits, T::DTYPE);
    // Pages cannot be cut at a window's first key, and a sequence may hold no key: windowed rows and
    // rows with sinks stay as given (`flash::pack_query_heads`).
    let (rows, tile, splits) = flash::plan_rows(p, opts, (&q_layout, &o.layout), false, plan_for)?;
    let (gp, q_layout, o_layout) = flash::run_view(rows.as_ref(), p, q_layout, o.layout);
    let (k, v) = (&*cache.k_pages, &*cache.v_pages);
    let o_run = (&mut o.buf, &o_layout);
    flash::launch(dev, gp, opts, batch, rows.as_ref(), (&tile, splits, None), (q_buf, &q_layout), k, v, o_run, lse)
}
