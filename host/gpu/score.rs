//! The score stage's kernel parameter (`abi::ScoreParams`) for a validated call: the mask, the scale or
//! softcap, and the device pointers of the per-head ALiBi slopes and sinks, checked to live on the
//! call's device.

use crate::device::Device;
use crate::error::{Arg, Error, Result};
use crate::options::{AttnOptions, PerHead};
use crate::problem::AttnProblem;
use cudarc::driver::{CudaSlice, DevicePtr, SyncOnDrop};
use ironflash_kernels::abi::ScoreParams;

/// `ScoreParams` with the stream guards of the buffers it points at: keep it alive until the launches
/// that read them are enqueued.
pub(crate) struct ScoreArgs<'a> {
    pub params: ScoreParams,
    _guards: Vec<SyncOnDrop<'a>>,
}

/// The device buffer of a per-head option, or a typed error when it lives on the host or on another
/// device.
pub(crate) fn device_per_head<'a>(
    dev: &Device,
    arg: Arg,
    v: Option<PerHead<'a>>,
) -> Result<Option<&'a CudaSlice<f32>>> {
    match v {
        None => Ok(None),
        Some(PerHead::Host(_)) => Err(Error::PerHeadLocation { arg, expected: "device", got: "host" }),
        Some(PerHead::Device(s)) if s.ordinal() != dev.info().ordinal => {
            Err(Error::DeviceMismatch { arg, got: s.ordinal(), expected: dev.info().ordinal })
        }
        Some(PerHead::Device(s)) => Ok(Some(s)),
    }
}

/// Checks the per-head buffers' device (their lengths were checked by `AttnProblem::new`).
pub(crate) fn check_per_head(dev: &Device, opts: &AttnOptions) -> Result<()> {
    device_per_head(dev, Arg::AlibiSlopes, opts.alibi_slopes)?;
    device_per_head(dev, Arg::Sinks, opts.sinks)?;
    Ok(())
}

impl<'a> ScoreArgs<'a> {
    pub(crate) fn new(dev: &'a Device, p: &AttnProblem, opts: &AttnOptions<'a>) -> Result<Self> {
        let stream = dev.stream();
        let mut guards = Vec::new();
        let mut ptr = |arg, v| -> Result<u64> {
            Ok(match device_per_head(dev, arg, v)? {
                None => 0,
                Some(s) => {
                    let (ptr, guard) = s.device_ptr(stream);
                    guards.push(guard);
                    ptr
                }
            })
        };
        let alibi_slopes = ptr(Arg::AlibiSlopes, opts.alibi_slopes)?;
        let sinks = ptr(Arg::Sinks, opts.sinks)?;
        let log2e = std::f32::consts::LOG2_E;
        let (softcap_pre, softcap_post) = match p.softcap {
            Some(cap) => (p.softmax_scale / cap, cap * log2e),
            None => (0.0, 0.0),
        };
        let params = ScoreParams {
            mask: p.mask,
            scale_log2: p.softmax_scale * log2e,
            softcap_pre,
            softcap_post,
            alibi_batch_stride: if p.alibi_per_batch == Some(true) { p.heads_q as u32 } else { 0 },
            alibi_slopes,
            sinks,
            // A packed batch's launch sets its offsets (`gpu::varlen`).
            cu_seqlens_q: 0,
            cu_seqlens_k: 0,
            max_seqlen_q: 0,
            max_seqlen_k: 0,
            seqused_k: 0,
            diagonal_shifts: 0,
        };
        Ok(ScoreArgs { params, _guards: guards })
    }
}
