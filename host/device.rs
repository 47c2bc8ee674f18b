//! A CUDA device: context, stream and the properties the planner needs. Opening one never panics:
//! a machine without a driver gets `Error::NoDriver`.

use crate::error::{DriverContext, Error, Result};
use crate::gpu::launch::LaunchGraphs;
use crate::gpu::scratch::{KeptScratch, TileCounter};
use crate::modules::{Arch, ModuleCache};
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{self, CUdevice_attribute as Attr};
use cudarc::driver::{CudaContext, CudaStream};
use std::sync::{Arc, OnceLock};

/// Device properties read once at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: u32,
    /// Largest dynamic shared memory one block may opt in to.
    pub smem_per_block_optin: usize,
    /// Shared memory per multiprocessor (all resident blocks together).
    pub smem_per_sm: usize,
    pub l2_bytes: usize,
    pub total_mem: usize,
    pub driver_version: i32,
}

impl DeviceInfo {
    /// The PTX flavour this device runs.
    pub fn arch(&self) -> Arch {
        if self.compute_capability == (9, 0) {
            Arch::Sm90a
        } else {
            Arch::Sm80
        }
    }

    /// Whether the Hopper (`wgmma`) kernels run here: they exist only in the sm_90a PTX.
    pub fn runs_wgmma(&self) -> bool {
        self.arch() == Arch::Sm90a
    }
}

/// Whether a CUDA driver can be loaded on this machine (never panics).
pub fn driver_available() -> bool {
    // Our own dlopen rather than cudarc's `is_culib_present`, which exists only in cudarc's
    // dynamic-loading mode: a program that also uses candle's CUDA backend builds cudarc in its
    // dynamic-linking mode (see the `fallback-dynamic-loading` feature in Cargo.toml).
    let names: &[&str] = if cfg!(windows) { &["nvcuda.dll"] } else { &["libcuda.so.1", "libcuda.so"] };
    // SAFETY: loading libcuda runs only its initialisers; no driver function is called.
    names.iter().any(|&name| unsafe { libloading::Library::new(name) }.is_ok())
}

/// `NoDriver` when the library was built without its `gpu` feature (no kernels embedded).
fn kernels_embedded() -> Result<()> {
    if crate::modules::PTX_SM80.is_empty() {
        return Err(Error::NoDriver("ironflash was built without its `gpu` feature (no kernels)".into()));
    }
    Ok(())
}

pub struct Device {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    info: DeviceInfo,
    /// This device's launch graphs (`gpu::launch`), its stream's own; dropped before the modules whose
    /// kernels their nodes name.
    pub(crate) launch_graphs: LaunchGraphs,
    /// The calls' scratch kept between calls, when asked (`keep_workspace`; `gpu::scratch`).
    pub(crate) scratch: KeptScratch,
    /// The persistent forward's tile tickets, this device's own (`gpu::scratch::TileCounter`).
    pub(crate) tile_counter: TileCounter,
    /// Shared by the `Device`s of one context made with `for_stream`: each kernel is compiled once.
    pub(crate) modules: Arc<ModuleCache>,
    /// Created on first use: creating and destroying a handle per call costs a synchronisation each.
    blas: OnceLock<CudaBlas>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("info", &self.info).finish()
    }
}

impl Device {
    /// Open device `ordinal`. Fails with `NoDriver` when libcuda cannot be loaded or has no device, or
    /// when the library was built without its `gpu` feature (no kernels embedded).
    ///
    /// It sets the device's default memory pool to keep freed memory for later allocations
    /// ([`Device::set_pool_release_threshold`] with `u64::MAX`), as a caching allocator does. That pool
    /// is the whole process's on this device: another library's stream-ordered allocations keep their
    /// freed memory too, and memory the pool holds is not free for allocators outside it; set the
    /// threshold back (0 is the driver's default) where that matters.
    pub fn open(ordinal: usize) -> Result<Device> {
        kernels_embedded()?;
        if !driver_available() {
            return Err(Error::NoDriver("libcuda could not be loaded (no NVIDIA driver on this machine)".into()));
        }
        let count =
            CudaContext::device_count().map_err(|e| Error::NoDriver(format!("cuInit/cuDeviceGetCount failed: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoDriver(format!("device {ordinal} requested, the driver sees {count}")));
        }
        let ctx = CudaContext::new(ordinal).during("creating the CUDA context")?;
        let stream = ctx.default_stream();
        let dev = Self::with_stream(ctx, stream)?;
        // The stream-ordered pool keeps what earlier calls freed for the next ones, instead of giving
        // it back to the driver at every synchronisation (which made a synchronised allocating call
        // pay for its allocations again; docs/perf.md). A device without memory pools allocates
        // through cuMemAlloc (cudarc's fallback): nothing to set there.
        if dev.ctx.has_async_alloc() {
            dev.set_pool_release_threshold(u64::MAX)?;
        }
        Ok(dev)
    }

    /// A device over a context and stream another library created (candle's CUDA device, for one):
    /// the kernels launch on `stream`, so they are ordered with that library's work without a
    /// synchronisation. Each `Device` made this way loads the kernels' modules on first use: keep one
    /// per context and make the others with `for_stream`. The memory pool's settings are left as the
    /// other library chose them.
    pub fn on_stream(stream: Arc<CudaStream>) -> Result<Device> {
        kernels_embedded()?;
        Self::with_stream(stream.context().clone(), stream)
    }

    /// This device on another stream of its context, sharing the loaded kernels: for several host
    /// threads (one stream each; `Device` is `Send` and `Sync`) or for capturing ironflash's calls in a
    /// CUDA graph, which the legacy default stream of `Device::open` cannot do.
    ///
    /// Stream capture refuses the events cudarc records and waits on around each buffer once a context
    /// has several streams (its event tracking); for a capture, turn that off
    /// (`CudaContext::disable_event_tracking`) before allocating the buffers, and order work across
    /// streams with events of your own, as in CUDA. A captured forward may launch a kernel that takes
    /// its tiles from a counter this `Device` owns (zero between launches): replay such a graph on this
    /// device's stream, or at least never while another of this device's calls or replays runs.
    pub fn for_stream(&self, stream: Arc<CudaStream>) -> Result<Device> {
        if stream.context().as_ref() != self.ctx.as_ref() {
            return Err(Error::ForeignStream);
        }
        Ok(Device {
            launch_graphs: LaunchGraphs::new(self.ctx.clone(), self.info.driver_version),
            scratch: KeptScratch::new(),
            tile_counter: TileCounter::new(&stream)?,
            ctx: self.ctx.clone(),
            stream,
            info: self.info.clone(),
            modules: self.modules.clone(),
            blas: OnceLock::new(),
        })
    }

    /// How much memory the device's stream-ordered pool keeps after a synchronisation, in bytes, for
    /// the next allocations (`cuMemPoolSetAttribute`, `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`, on the
    /// device's default pool, which every user of the device shares). `Device::open` sets `u64::MAX`
    /// (keep everything); 0 returns all free memory to the driver at each synchronisation (the
    /// driver's default).
    pub fn set_pool_release_threshold(&self, bytes: u64) -> Result<()> {
        let mut pool = std::ptr::null_mut();
        let mut value = bytes;
        // SAFETY: the pool handle is written by the driver for this context's device, and the
        // attribute takes a pointer to a u64.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device())
                .result()
                .during("reading the device's memory pool")?;
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut value as *mut u64).cast(),
            )
            .result()
            .during("setting the memory pool's release threshold")
        }
    }

    /// `AllocatesDuringCapture` when this device's stream is capturing a CUDA graph: a call that
    /// allocates its outputs would leave allocations the graph never frees, so that it could not be
    /// launched twice; the `_into` calls, with the caller's outputs, are the ones to capture.
    pub(crate) fn refuse_capture(&self, call: &'static str) -> Result<()> {
        let status = self.stream.capture_status().during("reading the stream's capture status")?;
        if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Err(Error::AllocatesDuringCapture { call });
        }
        Ok(())
    }

    fn with_stream(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Device> {
        let ordinal = ctx.ordinal();
        let attr = |a| ctx.attribute(a).during("reading a device attribute");
        let compute_capability = ctx.compute_capability().during("reading the compute capability")?;
        if compute_capability.0 < 8 {
            return Err(Error::UnsupportedDevice { ordinal, major: compute_capability.0, minor: compute_capability.1 });
        }
        let mut driver_version = 0;
        // SAFETY: writes one int.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) };
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().during("reading the device name")?,
            compute_capability,
            sm_count: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            smem_per_block_optin: attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize,
            smem_per_sm: attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)? as usize,
            l2_bytes: attr(Attr::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as usize,
            total_mem: ctx.total_mem().during("reading total memory")?,
            driver_version,
        };
        let modules = Arc::new(ModuleCache::new(info.arch()));
        let launch_graphs = LaunchGraphs::new(ctx.clone(), info.driver_version);
        let tile_counter = TileCounter::new(&stream)?;
        Ok(Device {
            launch_graphs,
            scratch: KeptScratch::new(),
            tile_counter,
            ctx,
            stream,
            info,
            modules,
            blas: OnceLock::new(),
        })
    }

    /// This device's cuBLAS handle, bound to its stream (created once, on first use).
    pub fn cublas(&self) -> Result<&CudaBlas> {
        if let Some(b) = self.blas.get() {
            return Ok(b);
        }
        let b = CudaBlas::new(self.stream.clone()).during("creating the cuBLAS handle")?;
        Ok(self.blas.get_or_init(|| b))
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Wait for all work queued on this device's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().during("synchronizing the stream")
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().during("reading free memory")
    }
}
