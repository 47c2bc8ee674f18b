//! Global → shared copies of `ROWS x D` element tiles (`cp.async`, 16 bytes per copy), in the layout
//! the reading instruction wants: padded rows for `ldmatrix`, 128-byte swizzled column blocks for
//! `wgmma` descriptors. Rows past the end of a sequence are zero-filled: a masked probability (0) times
//! garbage could still be NaN.

use crate::ptx::cp_async;

/// Shared-memory layouts of a `ROWS x D` element tile.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RowLayout {
    /// Rows of `D + 8` elements (16 bytes of padding: conflict-free `ldmatrix`), the `mma.sync` kernels.
    Padded,
    /// 64-element column blocks of 128-byte rows with the 128-byte swizzle (`ptx::wgmma` docs), the
    /// `wgmma` kernels (sm_90a PTX only).
    #[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
    Swizzled128,
}

impl RowLayout {
    /// Byte offset of the 16-byte chunk `chunk` of row `row`.
    #[inline(always)]
    pub const fn chunk_offset<const ROWS: usize, const D: usize>(self, row: usize, chunk: usize) -> u32 {
        match self {
            RowLayout::Padded => (row * (D + 8) * 2 + chunk * 16) as u32,
            RowLayout::Swizzled128 => ((chunk / 8) * ROWS * 128 + row * 128 + ((chunk % 8) ^ (row % 8)) * 16) as u32,
        }
    }
}

/// Issues the cp.async copies of a `ROWS x D` tile into shared memory laid out as `layout`; rows at or
/// past `valid_rows` are zero-filled and not read.
#[inline(always)]
pub unsafe fn load_rows<const ROWS: usize, const D: usize>(
    layout: RowLayout,
    dst: u32,
    src: *const u16,
    row_stride: usize,
    valid_rows: u32,
    tid: u32,
    threads: usize,
) {
    let chunks = D / 8;
    let total = ROWS * chunks;
    let steps = total.div_ceil(threads);
    for i in 0..steps {
        let idx = tid as usize + i * threads;
        if total.is_multiple_of(threads) || idx < total {
            let (row, chunk) = (idx / chunks, idx % chunks);
            let valid = (row as u32) < valid_rows;
            // An invalid row keeps `src` (row 0, always readable) as its address; nothing is read.
            let from = if valid { src.add(row * row_stride + chunk * 8) } else { src };
            cp_async::copy16_or_zero(dst + layout.chunk_offset::<ROWS, D>(row, chunk), from, valid);
        }
    }
}
