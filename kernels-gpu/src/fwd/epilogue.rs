//! Writing a CTA's results: O normalised and rounded to the element type, and the LSE.
//!
//! O leaves the registers in the accumulator layout (a lane holds 2 adjacent columns of a row), which
//! would make 4-byte scattered global stores. Each warp instead writes its rows to its own part of the
//! Q region of shared memory (no other warp reads those rows), and then copies them out as 16-byte
//! vectors, 8 lanes covering 128 contiguous bytes of a row.

use super::io::smem_row_bytes;
use crate::ptx::elem::Elem16;
use crate::ptx::{gmem, smem, sync};

/// Where one warp's rows go.
pub struct OutRows {
    /// Global address of the warp's first row of O (row `m0 + warp·16·MT`).
    pub o: *mut u16,
    /// O's row (sequence) stride, elements.
    pub o_row_stride: usize,
    /// LSE of the warp's first row.
    pub lse: *mut f32,
    /// Rows of the warp that exist (< seqlen_q); may be <= 0.
    pub valid_rows: i32,
    /// Shared address of the warp's part of the Q region (its `16·MT` rows).
    pub staging: u32,
}

/// Stores the warp's O rows (`o · inv`) and LSE values.
///
/// # Safety
/// All 32 lanes call it converged, after the warp's last read of its Q rows in shared memory; the
/// addresses in `out` are valid for the rows `< valid_rows`, O 16-byte aligned with a row stride that is
/// a multiple of 8 elements.
#[inline(always)]
pub unsafe fn store<E: Elem16, const D: usize, const ND: usize, const MT: usize>(
    o: &[[[f32; 4]; ND]; MT],
    inv: &[[f32; 2]; MT],
    lse: &[[f32; 2]; MT],
    out: &OutRows,
    lane: u32,
) {
    let row_bytes = smem_row_bytes::<D>() as u32;
    let (g, t) = (lane / 4, lane % 4);
    sync::warp();
    for m in 0..MT {
        for r in 0..2 {
            let row = (m * 16) as u32 + g + 8 * r as u32;
            for nd in 0..ND {
                let v = E::pack2(o[m][nd][2 * r] * inv[m][r], o[m][nd][2 * r + 1] * inv[m][r]);
                smem::store_u32(out.staging + row * row_bytes + (nd as u32 * 8 + 2 * t) * 2, v);
            }
            if t == 0 && (row as i32) < out.valid_rows {
                *out.lse.add(row as usize) = lse[m][r];
            }
        }
    }
    sync::warp();
    let chunks_per_row = D / 8;
    let steps = 16 * MT * chunks_per_row / 32;
    for i in 0..steps {
        let idx = lane as usize + 32 * i;
        let (row, chunk) = (idx / chunks_per_row, idx % chunks_per_row);
        if (row as i32) < out.valid_rows {
            let v = smem::load_v4(out.staging + (row * smem_row_bytes::<D>() + chunk * 16) as u32);
            gmem::store_v4(out.o.add(row * out.o_row_stride + chunk * 8), v);
        }
    }
}

/// Rows `[0, rows)` of a CTA whose rows are all fully masked: O = 0, LSE = `lse_value` (`-inf` as
/// FlashAttention, or the row's sink, which then holds all the probability).
///
/// # Safety
/// `o` (row stride `o_row_stride`, 16-byte aligned, stride a multiple of 8) and `lse` are valid for
/// `rows` rows.
#[inline(always)]
pub unsafe fn store_empty<const D: usize>(
    o: *mut u16,
    o_row_stride: usize,
    lse: *mut f32,
    lse_value: f32,
    rows: u32,
    threads: u32,
    tid: u32,
) {
    let chunks_per_row = (D / 8) as u32;
    let mut idx = tid;
    while idx < rows * chunks_per_row {
        let (row, chunk) = ((idx / chunks_per_row) as usize, (idx % chunks_per_row) as usize);
        gmem::store_v4(o.add(row * o_row_stride + chunk * 8), [0; 4]);
        idx += threads;
    }
    let mut row = tid;
    while row < rows {
        *lse.add(row as usize) = lse_value;
        row += threads;
    }
}

/// Stores the warp's rows of one split's partial output: O · inv in f32 (row stride `D`) and the LSE,
/// straight from the accumulator layout; each quad of lanes writes 32 contiguous bytes of a row, so
/// every sector is written in full.
///
/// # Safety
/// `o` and `lse` point at the warp's first row of the split's `o_accum` / `lse_accum` rows, valid for
/// rows `< valid_rows`; `o` is 8-byte aligned.
#[inline(always)]
pub unsafe fn store_split<const D: usize, const ND: usize, const MT: usize>(
    o_acc: &[[[f32; 4]; ND]; MT],
    inv: &[[f32; 2]; MT],
    lse_acc: &[[f32; 2]; MT],
    o: *mut f32,
    lse: *mut f32,
    valid_rows: i32,
    lane: u32,
) {
    let (g, t) = (lane / 4, lane % 4);
    for m in 0..MT {
        for r in 0..2 {
            let row = (m * 16) as u32 + g + 8 * r as u32;
            if (row as i32) < valid_rows {
                let o_row = o.add(row as usize * D + 2 * t as usize) as *mut [f32; 2];
                for nd in 0..ND {
                    *o_row.add(nd * 4) = [o_acc[m][nd][2 * r] * inv[m][r], o_acc[m][nd][2 * r + 1] * inv[m][r]];
                }
                if t == 0 {
                    *lse.add(row as usize) = lse_acc[m][r];
                }
            }
        }
    }
}

/// Rows `[0, rows)` of a split that sees no key: LSE = -inf (the combine then skips its O).
///
/// # Safety
/// `lse` is valid for `rows` values.
#[inline(always)]
pub unsafe fn store_split_empty(lse: *mut f32, rows: u32, threads: u32, tid: u32) {
    let mut row = tid;
    while row < rows {
        *lse.add(row as usize) = f32::NEG_INFINITY;
        row += threads;
    }
}
