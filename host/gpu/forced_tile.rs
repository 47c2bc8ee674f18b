//! Tiles forced by the caller (tests of fallback rows, tile benchmarks), checked the same way for the
//! forward and the backward before any launch.

use crate::device::DeviceInfo;
use crate::error::{Error, Result};
use ironflash_kernels::tiles::fits_smem;

/// `NoTileConfig` unless the forced tile is a compiled row of its table for the problem's head dims
/// (`compiled_for_head_dims`, described by `head_dims`), exists in this device's PTX (a `wgmma` row only where
/// `DeviceInfo::runs_wgmma`) and its `smem_bytes` fit the device.
pub(crate) fn check_forced_tile(
    tile: &impl std::fmt::Debug,
    compiled_for_head_dims: bool,
    wgmma: bool,
    smem_bytes: usize,
    pass: &str,
    head_dims: &str,
    info: &DeviceInfo,
) -> Result<()> {
    let runs_here = !wgmma || info.runs_wgmma();
    if !compiled_for_head_dims || !runs_here || !fits_smem(smem_bytes, info.smem_per_block_optin, info.smem_per_sm) {
        return Err(Error::NoTileConfig(format!(
            "{tile:?} is not a compiled {pass} tile for {head_dims} that fits {}",
            info.name
        )));
    }
    Ok(())
}
