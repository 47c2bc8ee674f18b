//! Global → shared copies of row tiles, `cp.async` 16 bytes per thread per step.
//!
//! A tile is `rows` rows of `D` elements; in shared memory each row takes `D + 8` elements (the padding
//! that makes `ldmatrix` conflict-free, see `tiles::FwdTile::smem_row`). Rows at or past `valid_rows`
//! are written as zeros and not read: a K or V tail row must be 0, not garbage, because the masked
//! probability (0) times a NaN would still be NaN.

use crate::abi::{PageTable, PAGED_BAD_LENGTH, PAGED_BAD_PAGE};
use crate::ptx::{atomic, cp_async, smem};

/// Bytes per shared-memory row of a `D`-wide tile.
#[inline(always)]
pub const fn smem_row_bytes<const D: usize>() -> usize {
    (D + 8) * 2
}

/// Issues (does not commit) the copies of one `rows`-row tile. Every one of the `threads` threads of the
/// CTA calls it with its `tid`; `rows` and `threads` are constants once inlined.
///
/// When a row's chunks divide the threads evenly, thread `tid` always copies chunk `tid % chunks` of
/// rows `tid / chunks + i·rows_per_step`: one running global pointer, one shared base with immediate
/// offsets, one row bound, whatever the tile size.
///
/// # Safety
/// `dst` is the 16-byte aligned shared address of a `rows x (D + 8)` element region; `src` points at
/// row 0 of the tile in global memory, 16-byte aligned, `row_stride` (elements) a multiple of 8, and
/// rows `0..min(valid_rows, rows)` are readable.
#[inline(always)]
pub unsafe fn load_tile<const D: usize>(
    dst: u32,
    src: *const u16,
    row_stride: usize,
    valid_rows: u32,
    rows: usize,
    threads: usize,
    tid: u32,
) {
    let chunks_per_row = D / 8;
    let steps = rows * chunks_per_row / threads; // exact: tiles::FwdTile::is_valid
    if threads % chunks_per_row == 0 {
        let rows_per_step = threads / chunks_per_row;
        let (row0, chunk) = (tid as usize / chunks_per_row, tid as usize % chunks_per_row);
        let mut from = src.add(row0 * row_stride + chunk * 8);
        let to = dst + (row0 * smem_row_bytes::<D>() + chunk * 16) as u32;
        let rows_left = valid_rows as i32 - row0 as i32;
        for i in 0..steps {
            let valid = ((i * rows_per_step) as i32) < rows_left;
            // An invalid row keeps `src` (row 0, always readable) as its address; nothing is read.
            let at = if valid { from } else { src };
            cp_async::copy16_or_zero(to + (i * rows_per_step * smem_row_bytes::<D>()) as u32, at, valid);
            from = from.add(rows_per_step * row_stride);
        }
    } else {
        for i in 0..steps {
            let idx = tid as usize + i * threads;
            let (row, chunk) = (idx / chunks_per_row, idx % chunks_per_row);
            let valid = (row as u32) < valid_rows;
            let at = if valid { src.add(row * row_stride + chunk * 8) } else { src };
            cp_async::copy16_or_zero(dst + (row * smem_row_bytes::<D>() + chunk * 16) as u32, at, valid);
        }
    }
}

/// Where a tile's keys lie in a paged cache (`abi::PageTable`): the sequence's row of the block table,
/// the first key of the tile, the K/V head, how many of the tile's rows are keys (rows at or past
/// `valid_rows` are written as zeros), and where [`stage_page_entries`] left the tile's table entries
/// (landed and visible; `None`: read the block table itself, as a pipeline's first tiles do).
#[derive(Clone, Copy)]
pub struct PagedRows {
    pub seq: u32,
    pub n0: u32,
    pub kv_head: u32,
    pub valid_rows: u32,
    pub staged: Option<StagedPages>,
}

/// Raises `abi::PAGED_BAD_LENGTH` when sequence `seq`'s key count (`ScoreParams::seqused_k`) lies outside
/// `[0, capacity]`. A call with neither new tokens nor rotary has no paged step (`fwd/paged.rs`) to clamp
/// and check the cached lengths, and passes them as they are: the score stage clamps them
/// (`attn::stage::enter`), this reports them. After a paged step the count is in range and nothing
/// is raised. One thread per CTA.
///
/// # Safety
/// `seqused_k` holds at least `seq + 1` values; `pages.errors` is valid.
#[inline(always)]
pub unsafe fn check_paged_length(pages: &PageTable, seqused_k: u64, seq: u32, capacity: u32) {
    let used = *(seqused_k as *const i32).add(seq as usize);
    if used < 0 || used as u32 > capacity {
        atomic::red_or_u32(pages.errors as *mut u32, PAGED_BAD_LENGTH);
    }
}

/// Where [`stage_page_entries`] left a tile's block-table entries: entry i at `slot + i · row_bytes`
/// (the K tile's rows, whatever the width of the tile loaded with them).
#[derive(Clone, Copy)]
pub struct StagedPages {
    pub slot: u32,
    pub row_bytes: u32,
}

/// Issues (does not commit) the copies of the block-table entries of one `ROWS`-key tile, keys
/// `n0..min(n0 + ROWS, seqlen_k)` of sequence `seq`, into the padding of a `D`-wide tile's rows from
/// `slot` on: entry i (the tile's i-th page; at most `ROWS` of them, at page size 1) at `slot + i ·
/// smem_row_bytes::<D>()`, a word of row i's 16 padding bytes, which neither [`load_tile`] nor ldmatrix
/// touch, so it costs no shared memory. The loads of that tile read them there ([`load_tile_paged`]
/// with `staged`) instead of reading the table in global memory just before their copies, a round trip
/// that stalls every warp once per tile (docs/perf.md, the paged decode grid). Nothing when the tile
/// holds no key.
///
/// # Safety
/// `slot` is the shared address of row 0's padding (the tile's base + `2·D`) of a `ROWS`-row tile;
/// `pages` describes valid buffers and `seqlen_k` is at most the sequence's `pages_per_seq · page_size`
/// keys. `ROWS <= threads`.
#[inline(always)]
pub unsafe fn stage_page_entries<const D: usize, const ROWS: usize>(
    slot: u32,
    pages: &PageTable,
    seq: u32,
    n0: u32,
    seqlen_k: u32,
    tid: u32,
) {
    if n0 >= seqlen_k {
        return;
    }
    let first = n0 / pages.page_size;
    let count = ((n0 + ROWS as u32).min(seqlen_k) - 1) / pages.page_size - first + 1;
    if tid < count {
        let entry = (pages.block_table as *const u32).add((seq * pages.pages_per_seq + first + tid) as usize);
        cp_async::copy4(slot + tid * smem_row_bytes::<D>() as u32, entry);
    }
}

/// The cache page of a tile's `i`-th page (the sequence's `page_of_key`-th): from the tile's staged
/// entries ([`stage_page_entries`]) or from the sequence's row of the block table, `table`. An index
/// outside `[0, num_pages)` raises `abi::PAGED_BAD_PAGE`; the caller reads nothing from it.
///
/// # Safety
/// `staged`, when given, holds the tile's entries, else `table` has `page_of_key + 1` readable entries.
#[inline(always)]
pub(super) unsafe fn lookup_page(
    pages: &PageTable,
    table: *const i32,
    staged: Option<StagedPages>,
    i: u32,
    page_of_key: u32,
) -> u32 {
    let page = match staged {
        Some(at) => smem::load_u32(at.slot + i * at.row_bytes),
        None => *table.add(page_of_key as usize) as u32,
    };
    if page >= pages.num_pages {
        atomic::red_or_u32(pages.errors as *mut u32, PAGED_BAD_PAGE);
    }
    page
}

/// As [`load_tile`] for keys `n0..` of a sequence of a paged cache: each row's address goes through the
/// block table (`abi::PageTable`), so that rows of one tile may lie in different pages (any page size).
/// The table entries come from `at.staged`, or else from the table itself. A row whose
/// page index is outside `[0, num_pages)` is written as zeros, never read, and raises
/// `abi::PAGED_BAD_PAGE`. Tried and not kept (docs/perf.md, the paged decode grid): reading every table
/// entry of a thread's steps before issuing the copies (up to 8 entries held in registers through the
/// copies put the kernels at the register limit into local memory), and a shift and a mask for
/// power-of-two pages (no faster; it spilled the 255-register rows).
///
/// # Safety
/// `pages` describes valid buffers; `src` is the cache's pages (16-byte aligned, `strides` `[page,
/// token, head]` in elements, multiples of 8); rows `0..min(at.valid_rows, rows)` are keys of the
/// sequence, within its row of the block table; `at.staged`, when given, holds this tile's entries.
/// `ROWS` rows, `WARPS · 32` threads.
#[inline(always)]
pub unsafe fn load_tile_paged<const D: usize, const ROWS: usize, const WARPS: usize>(
    dst: u32,
    src: *const u16,
    strides: [u64; 3],
    pages: &PageTable,
    at: PagedRows,
    tid: u32,
) {
    let (staged, valid_rows) = (at.staged, at.valid_rows);
    let (chunks_per_row, threads) = (D / 8, WARPS * 32);
    // Exact: tiles::FwdTile::is_valid.
    let steps = const { ROWS * (D / 8) / (WARPS * 32) };
    let table = (pages.block_table as *const i32).add((at.seq * pages.pages_per_seq) as usize);
    let first_page = at.n0 / pages.page_size;
    for i in 0..steps {
        let idx = tid as usize + i * threads;
        let (row, chunk) = (idx / chunks_per_row, idx % chunks_per_row);
        let mut valid = (row as u32) < valid_rows;
        let key = at.n0 + row as u32;
        let (page_of_key, slot) = (key / pages.page_size, key % pages.page_size);
        let page = if valid { lookup_page(pages, table, staged, page_of_key - first_page, page_of_key) } else { 0 };
        if valid && page >= pages.num_pages {
            valid = false;
        }
        let offset = page as u64 * strides[0] + slot as u64 * strides[1] + at.kv_head as u64 * strides[2];
        // An invalid row keeps `src` (the first page, always readable) as its address; nothing is read.
        let from = if valid { src.add(offset as usize + chunk * 8) } else { src };
        cp_async::copy16_or_zero(dst + (row * smem_row_bytes::<D>() + chunk * 16) as u32, from, valid);
    }
}

/// A paged cache's K and V tiles of one block, `ROWS` keys from `at.n0` (K rows `D` wide into `dst[0]`,
/// V rows `DV` wide into `dst[1]`), as two [`load_tile_paged`] calls would load them. Where K and V rows
/// are alike and a row's chunks divide the threads, a thread copies the same chunk of rows `row0 + i ·
/// rows_per_step` of both: one block-table lookup serves K and V, the page/slot pair advances by
/// `rows_per_step` keys per step (a compare and a subtraction for pages of at least `rows_per_step`
/// keys) instead of a division per copy, and a row's offsets are recomputed only where the rows enter
/// another page (one table lookup per page a thread's rows touch). The address arithmetic, not the
/// bytes, bound the paged decode loop (docs/perf.md, the paged decode grid).
///
/// # Safety
/// As [`load_tile_paged`] for each of K (`src[0]`, `strides[0]`) and V (`src[1]`, `strides[1]`).
#[inline(always)]
pub unsafe fn load_kv_paged<const D: usize, const DV: usize, const ROWS: usize, const WARPS: usize>(
    dst: [u32; 2],
    src: [*const u16; 2],
    strides: [[u64; 3]; 2],
    pages: &PageTable,
    at: PagedRows,
    tid: u32,
) {
    let (chunks_per_row, threads) = (D / 8, WARPS * 32);
    if D != DV || threads % chunks_per_row != 0 {
        load_tile_paged::<D, ROWS, WARPS>(dst[0], src[0], strides[0], pages, at, tid);
        load_tile_paged::<DV, ROWS, WARPS>(dst[1], src[1], strides[1], pages, at, tid);
        return;
    }
    let (staged, valid_rows) = (at.staged, at.valid_rows);
    let rows_per_step = threads / chunks_per_row;
    // Exact: tiles::FwdTile::is_valid.
    let steps = const { ROWS * (D / 8) / (WARPS * 32) };
    let (row0, chunk) = (tid as usize / chunks_per_row, tid as usize % chunks_per_row);
    let table = (pages.block_table as *const i32).add((at.seq * pages.pages_per_seq) as usize);
    let page_size = pages.page_size;
    let first_page = at.n0 / page_size;
    let key0 = at.n0 + row0 as u32;
    let (mut page_of_key, mut slot) = (key0 / page_size, key0 % page_size);
    let rows_left = valid_rows as i32 - row0 as i32;
    let to = (row0 * smem_row_bytes::<D>() + chunk * 16) as u32;
    // The current row's element offsets in K and V; recomputed where the rows enter a page, else
    // advanced by `rows_per_step` tokens.
    let (mut row_at, mut page_ok, mut new_page) = ([0u64; 2], false, true);
    for i in 0..steps {
        let row_valid = ((i * rows_per_step) as i32) < rows_left;
        if new_page && row_valid {
            let page = lookup_page(pages, table, staged, page_of_key - first_page, page_of_key);
            page_ok = page < pages.num_pages;
            for t in 0..2 {
                let s = strides[t];
                row_at[t] = page as u64 * s[0] + slot as u64 * s[1] + at.kv_head as u64 * s[2] + chunk as u64 * 8;
            }
        } else {
            for t in 0..2 {
                row_at[t] += rows_per_step as u64 * strides[t][1];
            }
        }
        let valid = row_valid && page_ok;
        let step_to = to + (i * rows_per_step * smem_row_bytes::<D>()) as u32;
        for t in 0..2 {
            // An invalid row keeps `src` (the first page, always readable) as its address; nothing is read.
            let from = if valid { src[t].add(row_at[t] as usize) } else { src[t] };
            cp_async::copy16_or_zero(dst[t] + step_to, from, valid);
        }
        slot += rows_per_step as u32;
        new_page = false;
        while slot >= page_size {
            slot -= page_size;
            page_of_key += 1;
            new_page = true;
        }
    }
}
