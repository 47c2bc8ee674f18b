//! The calls' scratch: the backward's workspace (delta, the f32 dQ accumulator, the dQ counters) and
//! the split-KV forward's partial results. By default each call takes its scratch from the
//! stream-ordered pool and frees it after its kernels (a capture records that as allocation nodes).
//! With `Device::keep_workspace(true)` the device keeps one buffer per kind of scratch between calls,
//! grown (outside a capture) when a call needs more: once a shape has run, its `_into` calls allocate
//! nothing, and a graph captured then holds no allocation.
//!
//! A call holds its kind's buffer (a lock) from taking it until it returns, after its launches: a
//! buffer is only replaced while no call of its device holds it, and its free is stream-ordered after
//! every kernel enqueued before. Calls of one device run on one stream, so two calls that use the same
//! buffer one after the other never overlap on the GPU. Each kind is taken at most once per call, so a
//! call never waits for itself.

use crate::device::Device;
use crate::error::{DriverContext, Result};
use cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::{Mutex, MutexGuard};

/// A kind of scratch: each has a kept buffer of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// The backward's delta, dQ accumulator and counters.
    Backward = 0,
    /// The split-KV forward's partial O and LSE.
    SplitKv = 1,
}

const KINDS: usize = 2;

/// A device's kept buffers (`Device::keep_workspace`).
pub(crate) struct KeptScratch {
    /// `None`: nothing kept (the default); the calls take their scratch from the pool.
    buffers: Mutex<Option<[Option<CudaSlice<u8>>; KINDS]>>,
    /// One lock per kind, held by the call using that kind's buffer.
    in_use: [Mutex<()>; KINDS],
}

/// One call's scratch of one kind: part of the device's kept buffer (held until dropped), or a pool
/// allocation freed (stream-ordered, after the call's kernels) when dropped.
pub(crate) enum Scratch<'d> {
    Kept { ptr: u64, _held: MutexGuard<'d, ()> },
    Pooled(CudaSlice<u8>),
}

impl Scratch<'_> {
    /// The scratch's device address.
    pub(crate) fn ptr(&mut self, stream: &cudarc::driver::CudaStream) -> u64 {
        match self {
            Scratch::Kept { ptr, .. } => *ptr,
            Scratch::Pooled(buf) => buf.device_ptr_mut(stream).0,
        }
    }
}

impl KeptScratch {
    pub(crate) fn new() -> Self {
        KeptScratch { buffers: Mutex::new(None), in_use: [Mutex::new(()), Mutex::new(())] }
    }
}

impl Device {
    /// Keep the calls' scratch between calls (`keep`), or give it back and take it from the
    /// stream-ordered pool at each call (the default). Kept, the backward's workspace (delta, the f32
    /// dQ accumulator: four bytes per element of dQ, the dQ counters) and the split-KV forward's
    /// partial results each stay in a buffer this device holds, grown when a call needs more (outside a
    /// capture; a capture that needs more takes it from the pool): once a shape has run, its `_into`
    /// calls allocate nothing, and a CUDA graph captured then holds no allocation but reads and writes
    /// these buffers, so keep them (and this device) while such a graph may run. Each `Device`, one per
    /// stream, keeps its own.
    pub fn keep_workspace(&self, keep: bool) -> Result<()> {
        // The calls holding a buffer finish first (their locks, then the buffers: the lock order of
        // `scratch`); the frees are stream-ordered after their kernels.
        let _held: Vec<_> = self.scratch.in_use.iter().map(|m| m.lock().unwrap_or_else(|e| e.into_inner())).collect();
        let mut buffers = self.scratch.buffers.lock().unwrap_or_else(|e| e.into_inner());
        match (keep, buffers.is_some()) {
            (true, false) => *buffers = Some([None, None]),
            (false, true) => *buffers = None,
            _ => {}
        }
        Ok(())
    }

    /// `bytes` of scratch of `kind` for one call (see the module's doc).
    pub(crate) fn scratch(&self, kind: Kind, bytes: usize, what: &'static str) -> Result<Scratch<'_>> {
        let pooled = || {
            // SAFETY: the calls write their scratch before reading it (each caller says how).
            unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.during(what).map(Scratch::Pooled)
        };
        if self.scratch.buffers.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return pooled();
        }
        // Lock order, here and in `keep_workspace`: the kind's lock, then the buffers.
        let held = self.scratch.in_use[kind as usize].lock().unwrap_or_else(|e| e.into_inner());
        let mut buffers = self.scratch.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(kept) = buffers.as_mut() else { return pooled() };
        let slot = &mut kept[kind as usize];
        let buf = match slot {
            Some(buf) if buf.len() >= bytes => buf,
            _ => {
                let capturing = self.stream.capture_status().during("reading the stream's capture status")?
                    != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
                if capturing {
                    return pooled();
                }
                // The old buffer's free is stream-ordered after the kernels of the calls that used it.
                *slot = None;
                // SAFETY: as for `pooled`.
                slot.insert(unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.during(what)?)
            }
        };
        let ptr = buf.device_ptr_mut(&self.stream).0;
        Ok(Scratch::Kept { ptr, _held: held })
    }
}

/// The persistent forward's tile tickets (`abi::FwdParams::tile_counter`, `fwd::schedule` in the
/// kernels): two u32 of this device's, zeroed when it is made and zero again after each launch (its
/// last CTA resets them), so that no call clears them. A device's launches are ordered on its one
/// stream, so no two of its kernels use them at once (a CUDA graph captured from its calls uses them
/// too: launch such a graph on this device's stream, or on no other while this device's calls run).
pub(crate) struct TileCounter {
    /// The two words, kept for as long as the device.
    _buf: CudaSlice<u32>,
    addr: u64,
}

impl TileCounter {
    pub(crate) fn new(stream: &std::sync::Arc<CudaStream>) -> Result<TileCounter> {
        let buf = stream.alloc_zeros::<u32>(2).during("allocating the tile counter")?;
        // Read once: the kernels on this stream are its only users, ordered by the stream.
        let addr = buf.device_ptr(stream).0;
        Ok(TileCounter { _buf: buf, addr })
    }

    /// Its device address.
    pub(crate) fn addr(&self) -> u64 {
        self.addr
    }
}
