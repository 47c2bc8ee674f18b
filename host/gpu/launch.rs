//! The one launch path: every kernel a call runs reaches the driver here, the call's launches together
//! (a backward's delta, main and dQ kernels; a split forward and its combine).
//!
//! Launching each kernel costs the host 3.6-5.3 µs of driver time on the H200 machines this project
//! measures on (the suite's driver-primitive rows, `bench::overhead`), so a backward's three launches
//! alone took it past the 10 µs a call may cost. Replacing the parameters of an executable graph of
//! the same launches and launching that graph costs 2-3.7 µs for all three: each device keeps one such
//! graph per shape of chain (its number of launches and which of them are programmatic dependents),
//! built on the first call, and a call only rewrites its nodes. A stream that is capturing a graph of
//! the caller's gets the launches themselves, which the capture records as kernel nodes; so does every
//! stream on a driver older than CUDA 12.3.

use crate::device::Device;
use crate::error::{DriverContext, Error, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, DeviceRepr, DriverError, LaunchConfig};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// A `#[repr(C)]` parameter struct from `ironflash_kernels::abi`, passed by value as one of a kernel's
/// parameters (`.param .align 8 .b8 name[size]` in the PTX).
#[repr(transparent)]
pub(crate) struct KernelParams<P>(pub P);

// SAFETY: the abi structs are #[repr(C)], Copy, and hold only integers, floats and device addresses;
// the kernels declare the same struct as their by-value parameter.
unsafe impl<P: Copy> DeviceRepr for KernelParams<P> {}

/// One kernel launch of a call: the function, its configuration, its by-value parameter structs in
/// the kernel's order, and whether it is the programmatic dependent of the launch before it in the
/// call (`programmatic`: the device runs the sm_90a PTX, whose kernels pair
/// `griddepcontrol.launch_dependents` in the first with `griddepcontrol.wait` in this one; see
/// `ironflash_kernels::ptx::griddep`): its CTAs may be scheduled while the first kernel's last CTAs
/// still run, and wait for its results themselves.
pub(crate) struct Launch<'a> {
    function: &'a CudaFunction,
    kernel: &'static str,
    cfg: LaunchConfig,
    /// Addresses of the parameter structs, which the driver copies during the launch.
    args: Vec<*mut c_void>,
    programmatic: bool,
    params: PhantomData<&'a ()>,
}

impl<'a> Launch<'a> {
    pub(crate) fn new<P: Copy>(
        function: &'a CudaFunction,
        kernel: &'static str,
        cfg: LaunchConfig,
        params: &'a KernelParams<P>,
    ) -> Self {
        Launch { function, kernel, cfg, args: Vec::with_capacity(3), programmatic: false, params: PhantomData }
            .arg(params)
    }

    /// The kernel's next parameter (a TMA kernel's tensor maps, an FP8 kernel's descales).
    pub(crate) fn arg<P: Copy>(mut self, params: &'a KernelParams<P>) -> Self {
        self.args.push((params as *const KernelParams<P>).cast_mut().cast());
        self
    }

    /// This launch as the programmatic dependent of the call's launch before it (see [`Launch`]).
    pub(crate) fn programmatic(mut self, yes: bool) -> Self {
        self.programmatic = yes;
        self
    }

    /// Whether the grid has any block (a packed batch without keys has no key block to launch).
    pub(crate) fn has_blocks(&self) -> bool {
        let (x, y, z) = self.cfg.grid_dim;
        x > 0 && y > 0 && z > 0
    }

    fn node_params(&self) -> sys::CUDA_KERNEL_NODE_PARAMS {
        let LaunchConfig { grid_dim, block_dim, shared_mem_bytes } = self.cfg;
        sys::CUDA_KERNEL_NODE_PARAMS {
            func: self.function.cu_function(),
            gridDimX: grid_dim.0,
            gridDimY: grid_dim.1,
            gridDimZ: grid_dim.2,
            blockDimX: block_dim.0,
            blockDimY: block_dim.1,
            blockDimZ: block_dim.2,
            sharedMemBytes: shared_mem_bytes,
            // The driver reads the parameter structs through these addresses; it never writes them.
            kernelParams: self.args.as_ptr().cast_mut(),
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: std::ptr::null_mut(),
        }
    }

    fn error(&self, source: DriverError) -> Error {
        Error::Launch { kernel: self.kernel.into(), source }
    }
}

/// Enqueues a call's `launches`, in order, on `dev`'s stream (nothing for none).
///
/// # Safety
/// For each launch: its parameter structs are the ones its kernel declares, in order; every address in
/// them is live until the kernel completes in stream order; its configuration is one the kernel runs
/// with (block size, dynamic shared memory within the function's raised limit). A programmatic launch's
/// kernel calls `griddepcontrol.wait` before it reads anything the launch before it writes, and the
/// launch before it is the one that writes it.
pub(crate) unsafe fn enqueue(dev: &Device, launches: &[Launch]) -> Result<()> {
    if launches.is_empty() {
        return Ok(());
    }
    dev.ctx.bind_to_thread().during("binding the context to this thread")?;
    let status = dev.stream.capture_status().during("reading the stream's capture status")?;
    if status == sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE && dev.launch_graphs.usable {
        dev.launch_graphs.enqueue(dev.stream.cu_stream(), launches)
    } else {
        launch_each(dev.stream.cu_stream(), launches)
    }
}

/// The launches one by one (a capture records each as a kernel node, programmatic ones with
/// programmatic edges).
///
/// # Safety
/// As [`enqueue`]'s, with the context bound to this thread.
unsafe fn launch_each(stream: sys::CUstream, launches: &[Launch]) -> Result<()> {
    for launch in launches {
        let LaunchConfig { grid_dim, block_dim, shared_mem_bytes } = launch.cfg;
        let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: grid_dim.0,
            gridDimY: grid_dim.1,
            gridDimZ: grid_dim.2,
            blockDimX: block_dim.0,
            blockDimY: block_dim.1,
            blockDimZ: block_dim.2,
            sharedMemBytes: shared_mem_bytes,
            hStream: stream,
            attrs: &mut attr,
            numAttrs: u32::from(launch.programmatic),
        };
        let args = launch.args.as_ptr().cast_mut();
        sys::cuLaunchKernelEx(&config, launch.function.cu_function(), args, std::ptr::null_mut())
            .result()
            .map_err(|source| launch.error(source))?;
    }
    Ok(())
}

/// A device's executable graphs, one per shape of chain, made on first use and kept for the device's
/// life. Each `Device` (one stream) has its own: a graph is launched on that stream only, so two
/// launches of one graph never race, and the lock orders the rewrite of its nodes with the launch.
pub(crate) struct LaunchGraphs {
    ctx: Arc<CudaContext>,
    /// The driver has the graph calls used here (`cuGraphAddDependencies_v2`, for programmatic edges,
    /// came with CUDA 12.3); an older one gets the launches one by one.
    usable: bool,
    chains: Mutex<Vec<Chain>>,
}

/// An executable graph of kernel nodes in a line, each the dependent of the one before it
/// (`programmatic[i]`: node i's edge from node i - 1 is a programmatic one).
struct Chain {
    programmatic: Vec<bool>,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    nodes: Vec<sys::CUgraphNode>,
}

// SAFETY: the graph handles are used only under `LaunchGraphs`' lock (or by `Drop`, with no other
// user left); the driver's graph objects are not tied to a host thread.
unsafe impl Send for Chain {}

impl LaunchGraphs {
    /// `driver_version` as `cuDriverGetVersion` gives it (12030 for CUDA 12.3).
    pub(crate) fn new(ctx: Arc<CudaContext>, driver_version: i32) -> Self {
        LaunchGraphs { ctx, usable: driver_version >= 12030, chains: Mutex::new(Vec::new()) }
    }

    /// # Safety
    /// As [`enqueue`]'s, with the context bound to this thread and `stream` not capturing.
    unsafe fn enqueue(&self, stream: sys::CUstream, launches: &[Launch]) -> Result<()> {
        let mut chains = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        let shape = |c: &Chain| c.programmatic.iter().copied().eq(launches.iter().map(|l| l.programmatic));
        let i = match chains.iter().position(shape) {
            Some(i) => {
                let chain = &chains[i];
                for (node, launch) in chain.nodes.iter().zip(launches) {
                    sys::cuGraphExecKernelNodeSetParams_v2(chain.exec, *node, &launch.node_params())
                        .result()
                        .map_err(|source| launch.error(source))?;
                }
                i
            }
            None => {
                chains.push(Chain::new(launches)?);
                chains.len() - 1
            }
        };
        let chain = &chains[i];
        sys::cuGraphLaunch(chain.exec, stream).result().map_err(|source| launches[0].error(source))
    }
}

impl Chain {
    /// The chain of `launches`, with their parameters.
    ///
    /// # Safety
    /// The context is bound to this thread; each launch's parameters are its kernel's.
    unsafe fn new(launches: &[Launch]) -> Result<Chain> {
        let mut graph = std::ptr::null_mut();
        sys::cuGraphCreate(&mut graph, 0).result().during("creating a launch graph")?;
        let mut chain = Chain {
            programmatic: launches.iter().map(|l| l.programmatic).collect(),
            graph,
            exec: std::ptr::null_mut(),
            nodes: Vec::with_capacity(launches.len()),
        };
        for launch in launches {
            let mut node = std::ptr::null_mut();
            sys::cuGraphAddKernelNode_v2(&mut node, graph, std::ptr::null(), 0, &launch.node_params())
                .result()
                .map_err(|source| launch.error(source))?;
            if let Some(&before) = chain.nodes.last() {
                // A programmatic edge leaves the first kernel's programmatic port: the dependent may
                // start once every CTA of the first has called `griddepcontrol.launch_dependents` (or
                // exited), as the launch attribute lets it in a stream.
                let (port, kind) = if launch.programmatic {
                    (
                        sys::CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC as u8,
                        sys::CUgraphDependencyType_enum::CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC as u8,
                    )
                } else {
                    (0, sys::CUgraphDependencyType_enum::CU_GRAPH_DEPENDENCY_TYPE_DEFAULT as u8)
                };
                let edge = sys::CUgraphEdgeData { from_port: port, to_port: 0, type_: kind, reserved: [0; 5] };
                sys::cuGraphAddDependencies_v2(graph, &before, &node, &edge, 1)
                    .result()
                    .during("linking a launch graph's kernels")?;
            }
            chain.nodes.push(node);
        }
        sys::cuGraphInstantiateWithFlags(&mut chain.exec, graph, 0)
            .result()
            .map_err(|source| launches[0].error(source))?;
        Ok(chain)
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        // SAFETY: the handles were made by `Chain::new` and nothing launches them any more; a launch
        // still in flight keeps the executable graph alive until it completes (the driver frees it
        // then).
        unsafe {
            if !self.exec.is_null() {
                sys::cuGraphExecDestroy(self.exec);
            }
            sys::cuGraphDestroy(self.graph);
        }
    }
}

impl Drop for LaunchGraphs {
    fn drop(&mut self) {
        let chains = std::mem::take(self.chains.get_mut().unwrap_or_else(|e| e.into_inner()));
        // The graphs belong to this device's context, bound for their destruction (without it they are
        // left to the context's own teardown).
        if !chains.is_empty() && self.ctx.bind_to_thread().is_ok() {
            drop(chains);
        } else {
            std::mem::forget(chains);
        }
    }
}
