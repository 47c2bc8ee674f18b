//! The step before attention over a paged KV cache (`abi::PagedPrepParams`): each sequence's key count,
//! the call's new keys and values written into the cache's pages (the keys rotated at their positions),
//! and the queries rotated into a contiguous copy. One element per thread of a grid-stride loop over
//! the four parts in turn; the attention kernels run after it on the same stream.
//!
//! Rotations are computed in f64 from the element and the f32 tables, then rounded to f32 and to the
//! element type, as the f64 reference (`cpu::paged`) forms them: the cache holds the same bits.
//! Device data the host cannot check (cache lengths, block-table entries, positions) is clamped or
//! skipped, never used to address outside the buffers, and raises the call's error bits.

use crate::abi::{PagedPrepParams, PAGED_BAD_LENGTH, PAGED_BAD_PAGE, PAGED_BAD_POSITION};
use crate::ptx::elem::Elem16;
use crate::ptx::{atomic, sreg};

/// Threads per block.
pub const PREP_THREADS: u32 = 256;

/// Sets error bits.
#[inline(always)]
unsafe fn raise(p: &PagedPrepParams, bits: u32) {
    atomic::red_or_u32(p.pages.errors as *mut u32, bits);
}

/// Element `e` of a `head_dim`-wide row at `row`, rotated at `position` when rotary is on and `e` is one
/// of its dims, else copied.
#[inline(always)]
unsafe fn rotated<E: Elem16>(p: &PagedPrepParams, row: *const u16, e: u32, position: u32) -> u16 {
    let rd = p.rotary_dim;
    if rd == 0 || e >= rd {
        return *row.add(e as usize);
    }
    let half = rd / 2;
    // The pair (first, second) and which of the two this element is.
    let (first, second, pair) = if p.interleaved != 0 {
        (e & !1, e | 1, e / 2)
    } else if e < half {
        (e, e + half, e)
    } else {
        (e - half, e, e - half)
    };
    let x = |d: u32| E::to_f32(*row.add(d as usize)) as f64;
    let at = (position * half + pair) as usize;
    let (cos, sin) = (*(p.cos as *const f32).add(at) as f64, *(p.sin as *const f32).add(at) as f64);
    let (x1, x2) = (x(first), x(second));
    let out = if e == first { x1 * cos - x2 * sin } else { x1 * sin + x2 * cos };
    E::from_f32(out as f32)
}

/// A rotary position within the tables: clamped, raising `PAGED_BAD_POSITION`, when past them.
#[inline(always)]
unsafe fn position(p: &PagedPrepParams, position: u32) -> u32 {
    if p.rotary_dim != 0 && position >= p.positions {
        raise(p, PAGED_BAD_POSITION);
        return p.positions - 1;
    }
    position
}

/// Sequence `b`'s cached length as stored, 0 when negative.
#[inline(always)]
unsafe fn cached(p: &PagedPrepParams, b: u32) -> u32 {
    (*(p.cache_seqlens as *const i32).add(b as usize)).max(0) as u32
}

/// Writes element `e` of new token `j` of head `h` of sequence `b` (key or value) into its cache page.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn append<E: Elem16>(
    p: &PagedPrepParams,
    (b, j, h, e): (u32, u32, u32, u32),
    src: (u64, [u64; 3]),
    dst: (u64, [u64; 3]),
    key: bool,
) {
    let capacity = p.pages.pages_per_seq * p.pages.page_size;
    let stored = *(p.cache_seqlens as *const i32).add(b as usize);
    let token = cached(p, b) + j;
    if stored < 0 || token >= capacity {
        // Flagged by the sequence's length (`PAGED_BAD_LENGTH`); nothing written.
        return;
    }
    let table = (p.pages.block_table as *const i32).add((b * p.pages.pages_per_seq) as usize);
    let page = *table.add((token / p.pages.page_size) as usize);
    if page as u32 >= p.pages.num_pages {
        raise(p, PAGED_BAD_PAGE);
        return;
    }
    let (src, ss) = src;
    let row = (src as *const u16).add((b as u64 * ss[0] + j as u64 * ss[1] + h as u64 * ss[2]) as usize);
    let value = if key { rotated::<E>(p, row, e, position(p, token)) } else { *row.add(e as usize) };
    let (dst, ds) = dst;
    let slot = (token % p.pages.page_size) as u64;
    let at = page as u64 * ds[0] + slot * ds[1] + h as u64 * ds[2] + e as u64;
    *(dst as *mut u16).add(at as usize) = value;
}

/// The whole step (see `abi::PagedPrepParams`).
///
/// # Safety
/// Launched as `abi::PagedPrepParams` documents, with `PREP_THREADS` threads per block.
#[inline(always)]
pub unsafe fn prep<E: Elem16>(p: &PagedPrepParams) {
    let step = sreg::grid_dim_x() as u64 * PREP_THREADS as u64;
    let (batch, new, hkv) = (p.batch as u64, p.seqlen_new as u64, p.heads_kv as u64);
    let n_len = batch;
    let n_k = batch * new * hkv * p.head_dim as u64;
    let n_v = batch * new * hkv * p.head_dim_v as u64;
    let n_q = if p.rotary_dim != 0 { batch * p.seqlen_q as u64 * p.heads_q as u64 * p.head_dim as u64 } else { 0 };
    let mut idx = sreg::block_x() as u64 * PREP_THREADS as u64 + sreg::thread_x() as u64;
    while idx < n_len + n_k + n_v + n_q {
        if idx < n_len {
            let b = idx as u32;
            let stored = *(p.cache_seqlens as *const i32).add(b as usize);
            let capacity = p.pages.pages_per_seq * p.pages.page_size;
            let keys = cached(p, b) + p.seqlen_new;
            if stored < 0 || keys > capacity {
                raise(p, PAGED_BAD_LENGTH);
            }
            *(p.seqused_k as *mut i32).add(b as usize) = keys.min(capacity) as i32;
        } else if idx < n_len + n_k + n_v {
            let key = idx < n_len + n_k;
            let (i, dim) = if key { (idx - n_len, p.head_dim) } else { (idx - n_len - n_k, p.head_dim_v) };
            let (e, rest) = ((i % dim as u64) as u32, i / dim as u64);
            let (h, rest) = ((rest % hkv) as u32, rest / hkv);
            let (j, b) = ((rest % new) as u32, (rest / new) as u32);
            if key {
                append::<E>(p, (b, j, h, e), (p.k_new, p.k_new_strides), (p.k_pages, p.k_page_strides), true);
            } else {
                append::<E>(p, (b, j, h, e), (p.v_new, p.v_new_strides), (p.v_pages, p.v_page_strides), false);
            }
        } else {
            let i = idx - n_len - n_k - n_v;
            let d = p.head_dim as u64;
            let (e, rest) = ((i % d) as u32, i / d);
            let (h, rest) = ((rest % p.heads_q as u64) as u32, rest / p.heads_q as u64);
            let (row, b) = ((rest % p.seqlen_q as u64) as u32, (rest / p.seqlen_q as u64) as u32);
            let qs = p.q_strides;
            let src = (p.q as *const u16).add((b as u64 * qs[0] + row as u64 * qs[1] + h as u64 * qs[2]) as usize);
            let at = cached(p, b) + if p.rows_move != 0 { row } else { 0 };
            *(p.q_rotated as *mut u16).add(i as usize) = rotated::<E>(p, src, e, position(p, at));
        }
        idx += step;
    }
}

const _: () = assert!(
    crate::tiles::str_eq(crate::abi::PAGED_PREP_BF16, "attn_paged_prep_bf16")
        && crate::tiles::str_eq(crate::abi::PAGED_PREP_F16, "attn_paged_prep_f16")
);

/// # Safety
/// Launched as `abi::PagedPrepParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attn_paged_prep_bf16(p: PagedPrepParams) {
    prep::<crate::ptx::elem::Bf16>(&p)
}

/// # Safety
/// Launched as `abi::PagedPrepParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attn_paged_prep_f16(p: PagedPrepParams) {
    prep::<crate::ptx::elem::F16>(&p)
}
