//! TMA tensor maps for the Hopper kernels' TMA rows (`FwdTile::tma`, `BwdTile::tma`): each tensor they
//! load described to the TMA unit (`cuTensorMapEncodeTiled`) as the kernel reads it
//! (`abi::FwdTensorMaps`, `abi::BwdTensorMaps`).

use crate::dtype::DType;
use crate::error::{DriverContext, Result};
use cudarc::driver::sys;
use std::sync::Mutex;

/// Everything a map is encoded from: equal keys give equal maps (the map holds the address, not the data).
type MapKey = (DType, u64, [usize; 4], [usize; 3], usize);

/// Maps kept: a forward call encodes three (Q, K, V), a backward two (Q, dO).
const RECENT_MAPS: usize = 32;

/// The last maps encoded, reused round-robin: a call on the same buffers and layouts as a recent one
/// (a training step's layers, a decode loop) skips the driver's encoder (a few microseconds per map).
static RECENT: Mutex<Recent> = Mutex::new(Recent { maps: [None; RECENT_MAPS], next: 0 });

struct Recent {
    maps: [Option<(MapKey, [u64; 16])>; RECENT_MAPS],
    next: usize,
}

/// [`encode`]'s map for these arguments, from the recent maps when one matches.
pub(crate) fn tensor_map(
    dtype: DType,
    ptr: u64,
    dims: [usize; 4],
    strides: [usize; 3],
    box_rows: usize,
) -> Result<[u64; 16]> {
    let key = (dtype, ptr, dims, strides, box_rows);
    // A poisoned lock only means another thread panicked between two plain stores: the table is whole.
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, map)) = recent.maps.iter().flatten().find(|(k, _)| *k == key) {
        return Ok(*map);
    }
    let map = encode(dtype, ptr, dims, strides, box_rows)?;
    let slot = recent.next;
    recent.maps[slot] = Some((key, map));
    recent.next = (slot + 1) % RECENT_MAPS;
    Ok(map)
}

/// Bytes per box row, one row of the swizzle: 128 (64 two-byte elements, 128 FP8 ones), or the 64-byte
/// swizzle's 64 for FP8 rows that narrow (head dim 64: `fwd/hopper_fp8.rs` reads such tiles). Two-byte
/// tiles are always 64 columns wide, since the 16-bit kernels' tiles are (head dims 32 and 96 take
/// whole 64-column blocks whose columns past the head dim the TMA unit fills with zeros): a 64-byte box
/// there would bring half the bytes each stage's `mbarrier` waits for, and the kernel would wait forever.
fn box_row_bytes(dtype: DType, dim: usize) -> usize {
    match dtype.size_bytes() {
        1 => dim.min(128),
        _ => 128,
    }
}

/// The 4-D map of one `[batch, rows, heads, dim]` tensor at device address `ptr` with element strides
/// `strides` (`[batch, row, head]`; the head dim contiguous) of `dtype` (2 bytes, or FP8's 1): dims
/// innermost first (`[dim, rows, heads, batch]`), boxes of 128 bytes (64 or 128 elements) × `box_rows`
/// × 1 × 1, 128-byte swizzle (the `wgmma` operand layout), zeros outside the tensor; a row of 64 bytes
/// (FP8 at head dim 64) in boxes of 64 bytes with the 64-byte swizzle.
fn encode(
    dtype: DType,
    ptr: u64,
    [batch, rows, heads, dim]: [usize; 4],
    [batch_stride, row_stride, head_stride]: [usize; 3],
    box_rows: usize,
) -> Result<[u64; 16]> {
    let elem = dtype.size_bytes();
    let dims = [dim, rows, heads, batch].map(|d| d as u64);
    // A dimension of extent 1 is only read at index 0: its stride, which may be 0 or anything in a view,
    // is given as the smallest the encoder accepts (a multiple of 16 bytes).
    let stride = |s: usize, extent: usize| if extent == 1 { 16 } else { (s * elem) as u64 };
    let strides = [stride(row_stride, rows), stride(head_stride, heads), stride(batch_stride, batch)];
    let box_bytes = box_row_bytes(dtype, dim);
    let boxes = [(box_bytes / elem) as u32, box_rows as u32, 1, 1];
    let swizzle = if box_bytes == 128 {
        sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B
    } else {
        sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B
    };
    let element_strides = [1u32; 4];
    let data_type = match dtype {
        DType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        DType::F8E4M3 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        _ => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    };
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: every array has the rank's length (4 dims, 3 strides above the innermost); the encoder
    // only reads them and writes `map`, checking the address, strides and box against its limits.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            data_type,
            4,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .during("encoding a TMA tensor map")?;
    }
    Ok(map.opaque)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_rows_are_whole_swizzle_rows_as_the_kernels_tiles() {
        // 16-bit tiles: 64 columns at every head dim (32 and 96 zero-filled past the head dim).
        for dtype in [DType::BF16, DType::F16] {
            for dim in [32, 64, 96, 128, 192, 256] {
                assert_eq!(box_row_bytes(dtype, dim), 128, "{dtype:?} {dim}");
            }
        }
        // FP8: 64-byte rows at head dim 64, 128-byte ones from 128.
        assert_eq!(box_row_bytes(DType::F8E4M3, 64), 64);
        assert_eq!(box_row_bytes(DType::F8E4M3, 128), 128);
        assert_eq!(box_row_bytes(DType::F8E4M3, 256), 128);
    }
}
