//! NCCL, loaded at run time: the few entry points the ring needs (point-to-point sends and receives in
//! groups, an all-gather and an all-reduce), a communicator per rank, and waits that give up after a
//! timeout instead of hanging on a peer that never comes.
//!
//! The library is found as the file `IRONFLASH_NCCL` names, else as `libnccl.so.2` (the name NCCL's
//! own packages and PyTorch's `nvidia-nccl-cu13` wheel install; put its directory on
//! `LD_LIBRARY_PATH`), else `libnccl.so`. cudarc's NCCL bindings look for `libnccl.so` and
//! CUDA-versioned names only, and their communicator panics when NCCL is missing or an abort fails;
//! hence these bindings of our own, on the same dynamic loader (`libloading`) that finds the driver.

use crate::device::Device;
use crate::error::{DriverContext, Error, Result};
use cudarc::driver::{CudaEvent, CudaStream, DevicePtr};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

type NcclComm = *mut c_void;
type NcclResult = c_int;
type CuStream = *mut c_void;

/// `ncclDataType_t` values used here.
const NCCL_UINT8: c_int = 1;
const NCCL_UINT64: c_int = 5;
const NCCL_FLOAT32: c_int = 7;
/// `ncclRedOp_t::ncclSum`.
const NCCL_SUM: c_int = 0;
/// `ncclResult_t::ncclInProgress`: a non-blocking operation still running (not an error).
const NCCL_IN_PROGRESS: NcclResult = 7;

/// The identifier that makes `world` ranks one communicator: rank 0 creates it
/// ([`Communicator::unique_id`]) and hands its 128 bytes to the others (shared memory between threads,
/// a file or the network between processes and hosts).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniqueId {
    pub internal: [u8; 128],
}

struct Nccl {
    _lib: libloading::Library,
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut NcclComm, c_int, UniqueId, c_int) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(NcclComm) -> NcclResult,
    comm_abort: unsafe extern "C" fn(NcclComm) -> NcclResult,
    comm_get_async_error: unsafe extern "C" fn(NcclComm, *mut NcclResult) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    send: unsafe extern "C" fn(*const c_void, usize, c_int, c_int, NcclComm, CuStream) -> NcclResult,
    recv: unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, NcclComm, CuStream) -> NcclResult,
    all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, NcclComm, CuStream) -> NcclResult,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, NcclComm, CuStream) -> NcclResult,
    group_start: unsafe extern "C" fn() -> NcclResult,
    group_end: unsafe extern "C" fn() -> NcclResult,
}

fn library_candidates() -> Vec<String> {
    let mut names: Vec<String> = std::env::var("IRONFLASH_NCCL").ok().into_iter().collect();
    names.extend(["libnccl.so.2", "libnccl.so"].map(String::from));
    names
}

impl Nccl {
    fn load() -> std::result::Result<Nccl, String> {
        let candidates = library_candidates();
        // SAFETY: loading NCCL runs its initialisers, which have no preconditions.
        let lib = candidates
            .iter()
            .find_map(|name| unsafe { libloading::Library::new(name) }.ok())
            .ok_or_else(|| format!("none of {candidates:?} could be loaded (set IRONFLASH_NCCL or LD_LIBRARY_PATH)"))?;
        // SAFETY: each symbol is NCCL's C function of that name, with the signature NCCL 2.x declares
        // in nccl.h; the library lives as long as the pointers (it is kept in the struct, in a static).
        unsafe {
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get($name).map_err(|e| format!("{}: {e}", String::from_utf8_lossy($name)))?
                };
            }
            Ok(Nccl {
                get_version: sym!(b"ncclGetVersion"),
                get_unique_id: sym!(b"ncclGetUniqueId"),
                comm_init_rank: sym!(b"ncclCommInitRank"),
                comm_destroy: sym!(b"ncclCommDestroy"),
                comm_abort: sym!(b"ncclCommAbort"),
                comm_get_async_error: sym!(b"ncclCommGetAsyncError"),
                get_error_string: sym!(b"ncclGetErrorString"),
                send: sym!(b"ncclSend"),
                recv: sym!(b"ncclRecv"),
                all_gather: sym!(b"ncclAllGather"),
                all_reduce: sym!(b"ncclAllReduce"),
                group_start: sym!(b"ncclGroupStart"),
                group_end: sym!(b"ncclGroupEnd"),
                _lib: lib,
            })
        }
    }

    /// `Error::Nccl` unless `code` is success.
    fn check(&self, code: NcclResult, during: &'static str) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: NCCL returns a static string for any code.
        let message = unsafe { CStr::from_ptr((self.get_error_string)(code)) }.to_string_lossy().into_owned();
        Err(Error::Nccl { during, code, message })
    }
}

fn nccl() -> Result<&'static Nccl> {
    static NCCL: OnceLock<std::result::Result<Nccl, String>> = OnceLock::new();
    NCCL.get_or_init(Nccl::load).as_ref().map_err(|why| Error::NoNccl(why.clone()))
}

/// Whether NCCL can be loaded (see the module docs for where it is looked for).
pub fn nccl_available() -> bool {
    nccl().is_ok()
}

/// NCCL's version as `major·10000 + minor·100 + patch`.
pub fn nccl_version() -> Result<i32> {
    let lib = nccl()?;
    let mut version = 0;
    // SAFETY: writes one int.
    lib.check(unsafe { (lib.get_version)(&mut version) }, "reading NCCL's version")?;
    Ok(version)
}

/// One rank's membership in a ring of `world` ranks: an NCCL communicator on its own stream of the
/// rank's device (the ring's transfers run there, beside the kernels on the device's stream), and how
/// long the ring's waits give a peer before they abort the communicator and return
/// [`Error::RingTimeout`] (default 5 minutes; [`Communicator::set_timeout`]).
///
/// NVLink SHARP multicast (`NCCL_NVLS_ENABLE`) is not needed by the ring's point-to-point transfers;
/// set `NCCL_NVLS_ENABLE=0` where it is unavailable or unwanted.
pub struct Communicator {
    comm: NcclComm,
    stream: Arc<CudaStream>,
    ordinal: usize,
    rank: usize,
    world: usize,
    timeout: Duration,
    aborted: bool,
}

// SAFETY: an NCCL communicator may be used from any thread, one at a time (`&mut`/`&` through this
// struct, which is not `Sync`).
unsafe impl Send for Communicator {}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

impl Communicator {
    /// A new identifier for one ring (on one rank; the others get a copy).
    pub fn unique_id() -> Result<UniqueId> {
        let lib = nccl()?;
        let mut id = UniqueId { internal: [0; 128] };
        // SAFETY: writes the 128-byte identifier.
        lib.check(unsafe { (lib.get_unique_id)(&mut id) }, "creating an NCCL unique id")?;
        Ok(id)
    }

    /// Rank `rank` of `world` joins the ring `id` on `dev`'s GPU. Every rank must call this (one per
    /// GPU, in threads or processes); it returns when all have joined.
    pub fn new(dev: &Device, rank: usize, world: usize, id: &UniqueId) -> Result<Self> {
        if world == 0 || rank >= world || world > i32::MAX as usize {
            return Err(Error::BadRingRank { rank, world });
        }
        let lib = nccl()?;
        dev.context().bind_to_thread().during("binding the device's context to this thread")?;
        let stream = dev.context().new_stream().during("creating the ring's communication stream")?;
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` receives the handle; the id is passed by value as nccl.h declares; the
        // device's context is current, so NCCL takes its device.
        let code = unsafe { (lib.comm_init_rank)(&mut comm, world as c_int, *id, rank as c_int) };
        lib.check(code, "joining the NCCL communicator")?;
        let ordinal = dev.info().ordinal;
        let mut comm =
            Communicator { comm, stream, ordinal, rank, world, timeout: Duration::from_secs(300), aborted: false };
        comm.connect()?;
        Ok(comm)
    }

    /// Opens the connections the ring uses (an all-gather, as the handshake's, and a send to the next
    /// rank with a receive from the previous one, as the steps') while every rank is joining. NCCL
    /// connects lazily, at a communicator's first collective or transfer, and that connection is made
    /// inside the enqueue call, on the host, before any event exists to poll: a peer missing then
    /// would hang the call past any timeout. Once connected, a peer that stops coming is seen by
    /// [`wait`](Self::wait).
    fn connect(&mut self) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let stream = self.stream.clone();
        let mine = stream.alloc_zeros::<u64>(1).during("allocating the ring's first exchange")?;
        let all = stream.alloc_zeros::<u64>(self.world + 1).during("allocating the ring's first exchange")?;
        let (src, dst) = (mine.device_ptr(&stream).0, all.device_ptr(&stream).0);
        let (next, prev) = ((self.rank + 1) % self.world, (self.rank + self.world - 1) % self.world);
        // SAFETY: one u64 from each rank into the first `world` of `all`; then this rank's u64 to the
        // next rank and the previous rank's into the last of `all`, on the ring's stream, as every rank
        // does while joining; the buffers live until the wait below.
        unsafe {
            self.all_gather_u64(src, dst, 1)?;
            self.group(|c| {
                c.send(src, 8, next)?;
                c.recv(dst + 8 * self.world as u64, 8, prev)
            })?;
        }
        let done = stream.record_event(None).during("recording the ring's first exchange")?;
        self.wait(&done, "connecting the ring")
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world(&self) -> usize {
        self.world
    }
    /// The device ordinal this rank runs on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// The stream the ring's transfers run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// How long a wait of the ring gives its peers (see the struct docs).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn live(&self) -> Result<&'static Nccl> {
        if self.aborted {
            return Err(Error::RingAborted);
        }
        nccl()
    }

    /// Runs `enqueue` between `ncclGroupStart` and `ncclGroupEnd`, so that its sends and receives
    /// proceed together (a ring's send to the next rank and receive from the previous one cannot
    /// deadlock).
    pub(crate) fn group(&self, enqueue: impl FnOnce(&Self) -> Result<()>) -> Result<()> {
        let lib = self.live()?;
        // SAFETY: group calls nest and take no arguments.
        lib.check(unsafe { (lib.group_start)() }, "starting an NCCL group")?;
        let queued = enqueue(self);
        // The group is closed whatever happened inside it.
        let closed = lib.check(unsafe { (lib.group_end)() }, "ending an NCCL group");
        queued.and(closed)
    }

    fn cu_stream(&self) -> CuStream {
        self.stream.cu_stream() as CuStream
    }

    /// Sends `bytes` from `src` to rank `peer` on the ring's stream.
    ///
    /// # Safety
    /// `src` is a device address of this rank's GPU with `bytes` readable bytes, unchanged until the
    /// send completes on the ring's stream; `peer` posts a matching receive.
    pub(crate) unsafe fn send(&self, src: u64, bytes: usize, peer: usize) -> Result<()> {
        let lib = self.live()?;
        let code = (lib.send)(src as *const c_void, bytes, NCCL_UINT8, peer as c_int, self.comm, self.cu_stream());
        lib.check(code, "enqueuing an NCCL send")
    }

    /// Receives `bytes` from rank `peer` into `dst` on the ring's stream.
    ///
    /// # Safety
    /// `dst` is a device address of this rank's GPU with `bytes` writable bytes, untouched by other work
    /// until the receive completes on the ring's stream; `peer` posts a matching send.
    pub(crate) unsafe fn recv(&self, dst: u64, bytes: usize, peer: usize) -> Result<()> {
        let lib = self.live()?;
        let code = (lib.recv)(dst as *mut c_void, bytes, NCCL_UINT8, peer as c_int, self.comm, self.cu_stream());
        lib.check(code, "enqueuing an NCCL receive")
    }

    /// Every rank's `count` u64 from `src` into `dst` (`world · count`, rank order).
    ///
    /// # Safety
    /// As for [`send`](Self::send) and [`recv`](Self::recv), with `src` of `count` and `dst` of
    /// `world · count` u64; every rank calls it in the same order of collectives.
    pub(crate) unsafe fn all_gather_u64(&self, src: u64, dst: u64, count: usize) -> Result<()> {
        let lib = self.live()?;
        let code =
            (lib.all_gather)(src as *const c_void, dst as *mut c_void, count, NCCL_UINT64, self.comm, self.cu_stream());
        lib.check(code, "enqueuing an NCCL all-gather")
    }

    /// The sum over the ranks of `count` f32 at `buf`, in place.
    ///
    /// # Safety
    /// As for [`all_gather_u64`](Self::all_gather_u64), with `buf` of `count` f32.
    pub(crate) unsafe fn all_reduce_sum_f32(&self, buf: u64, count: usize) -> Result<()> {
        let lib = self.live()?;
        let code = (lib.all_reduce)(
            buf as *const c_void,
            buf as *mut c_void,
            count,
            NCCL_FLOAT32,
            NCCL_SUM,
            self.comm,
            self.cu_stream(),
        );
        lib.check(code, "enqueuing an NCCL all-reduce")
    }

    /// Waits on the host for `event` (recorded after ring work), polling so that a peer that never
    /// comes, or an NCCL failure, ends the wait: past the timeout the communicator is aborted (its
    /// pending transfers cancelled) and every later call on it returns `RingAborted`.
    pub(crate) fn wait(&mut self, event: &CudaEvent, during: &'static str) -> Result<()> {
        let lib = self.live()?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            if event.try_is_complete().during(during)? {
                return Ok(());
            }
            let mut state = 0;
            // SAFETY: writes one int for a live communicator.
            lib.check(unsafe { (lib.comm_get_async_error)(self.comm, &mut state) }, during)?;
            if state != 0 && state != NCCL_IN_PROGRESS {
                self.abort();
                return lib.check(state, during);
            }
            if start.elapsed() > self.timeout {
                self.abort();
                return Err(Error::RingTimeout { during, seconds: self.timeout.as_secs_f64() });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    fn abort(&mut self) {
        if !self.aborted {
            self.aborted = true;
            if let Ok(lib) = nccl() {
                // SAFETY: the communicator is live (not aborted before); abort cancels its work.
                unsafe { (lib.comm_abort)(self.comm) };
            }
        }
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        if self.aborted {
            return;
        }
        let Ok(lib) = nccl() else { return };
        // A clean destroy waits for the ring's work; a failed stream or a hung peer makes it an abort.
        let finished = self.stream.record_event(None).ok().is_some_and(|e| self.wait(&e, "closing the ring").is_ok());
        if finished {
            // SAFETY: the communicator is live and its work has completed.
            unsafe { (lib.comm_destroy)(self.comm) };
        }
    }
}
