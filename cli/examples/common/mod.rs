//! What the timing examples share.

use ironflash::Device;

/// Device 0, or `None` after one `skipped: no CUDA driver` line on a machine without a GPU (the
/// examples then end successfully, as the GPU tests do).
pub fn device_or_skip() -> Result<Option<Device>, ironflash::Error> {
    match Device::open(0) {
        Ok(d) => Ok(Some(d)),
        Err(ironflash::Error::NoDriver(why)) => {
            println!("skipped: no CUDA driver ({why})");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
