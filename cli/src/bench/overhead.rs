//! What a call costs beyond its kernels (the suite's call-overhead tables; also `cargo run --release
//! --example call_overhead`): the allocating calls (`flash_forward`, `flash_backward`) against the
//! `_into` calls with preallocated outputs, each with a synchronisation after every call (a training
//! step's loss read-back, a serving loop) and back to back, and the host's time to enqueue one call;
//! each with the device's memory pool giving freed memory back to the driver at every synchronisation
//! (release threshold 0, the driver's default) and keeping it (`u64::MAX`, what `Device::open` sets),
//! then with the device also keeping the calls' scratch (`Device::keep_workspace`).
//! bf16, D = 128, H = 16: B = 16, N = 1K (forward and backward) and decode B = 1, one query, 8K keys
//! (forward); medians of 50 calls after 5 warm-up calls, host wall clock. Then what the driver's
//! primitives that a call is made of cost the host ([`driver_primitives`]): the floor under a call's
//! enqueue.

use cudarc::driver::{sys, DeviceRepr, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use half::bf16;
use ironflash::gpu::{self, DeviceTensor, GpuGradients};
use ironflash::{AttnOptions, Device, HostTensor};
use serde::Serialize;
use std::time::Instant;

const REPS: usize = 50;

/// One call's costs, µs.
#[derive(Debug, Clone, Serialize)]
pub struct CallRow {
    pub shape: &'static str,
    /// What the memory pool keeps after a synchronisation: "nothing" or "everything"; "everything,
    /// workspace kept" with the device keeping the calls' scratch as well.
    pub pool_keeps: &'static str,
    pub call: &'static str,
    pub synchronised_us: f64,
    pub back_to_back_us: f64,
    pub enqueue_us: f64,
}

/// One driver primitive's host cost, µs.
#[derive(Debug, Clone, Serialize)]
pub struct PrimitiveRow {
    pub primitive: String,
    pub host_us: f64,
}

/// The call rows (see the module's doc). Leaves the pool keeping everything, as `Device::open` does.
pub fn call_rows(dev: &Device) -> Result<Vec<CallRow>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    for (shape, [b, sq, sk]) in [("B=16 N=1K", [16, 1024, 1024]), ("decode B=1 Sk=8K", [1, 1, 8192])] {
        let h = 16;
        let mut seed = 0;
        let mut up = |dims| {
            seed += 1;
            dev.upload(&HostTensor::<bf16>::random_seeded(dims, 1.0, seed))
        };
        let (q, k, v, d_o) = (up([b, sq, h, 128])?, up([b, sk, h, 128])?, up([b, sk, h, 128])?, up([b, sq, h, 128])?);
        let opts = AttnOptions::default();
        // The pool's setting, then the device keeping the calls' scratch too (`Device::keep_workspace`).
        let settings =
            [("nothing", 0u64, false), ("everything", u64::MAX, false), ("everything, workspace kept", u64::MAX, true)];
        for (pool_keeps, threshold, keep) in settings {
            dev.set_pool_release_threshold(threshold)?;
            dev.keep_workspace(keep)?;
            let mut o = dev.poisoned::<bf16>([b, sq, h, 128])?;
            let mut lse = dev.poisoned_f32(b * h * sq)?;
            let mut row = |call, [synchronised_us, back_to_back_us, enqueue_us]: [f64; 3]| {
                rows.push(CallRow { shape, pool_keeps, call, synchronised_us, back_to_back_us, enqueue_us });
            };
            row("flash_forward", timings(dev, || gpu::flash_forward(dev, &q, &k, &v, &opts).map(drop))?);
            row(
                "flash_forward_into",
                timings(dev, || gpu::flash_forward_into(dev, &q, &k, &v, &mut o, &mut lse, &opts))?,
            );
            if sq == 1 {
                continue;
            }
            let fwd = gpu::flash_forward(dev, &q, &k, &v, &opts)?;
            let zeros = |t: &DeviceTensor<bf16>| dev.poisoned::<bf16>(t.shape());
            let mut grads = GpuGradients { dq: zeros(&q)?, dk: zeros(&k)?, dv: zeros(&v)?, d_sinks: None };
            row(
                "flash_backward",
                timings(dev, || gpu::flash_backward(dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &opts).map(drop))?,
            );
            row(
                "flash_backward_into",
                timings(dev, || gpu::flash_backward_into(dev, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, &mut grads, &opts))?,
            );
        }
    }
    dev.keep_workspace(false)?;
    Ok(rows)
}

/// The two tables in Markdown.
pub fn markdown(calls: &[CallRow], primitives: &[PrimitiveRow]) -> String {
    let mut s = String::from(
        "| shape | pool keeps | call | synchronised, µs | back to back, µs | host enqueue, µs |\n\
         | --- | --- | --- | ---: | ---: | ---: |\n",
    );
    for r in calls {
        s += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.shape, r.pool_keeps, r.call, r.synchronised_us, r.back_to_back_us, r.enqueue_us
        );
    }
    s += &format!("\n| driver primitive | host µs (median of {PRIMITIVE_REPS}) |\n| --- | ---: |\n");
    for r in primitives {
        s += &format!("| {} | {:.2} |\n", r.primitive, r.host_us);
    }
    s
}

/// A kernel parameter block of the backward's size class (its `BwdParams` is a few hundred bytes).
#[derive(Clone, Copy)]
#[repr(C)]
struct LargeParams([u64; 48]);
// SAFETY: plain old data, passed by value as the kernel's one parameter.
unsafe impl DeviceRepr for LargeParams {}

/// An empty kernel taking such a block, in hand-written PTX (loaded through the driver's JIT).
const EMPTY_PTX: &str = ".version 8.0\n.target sm_80\n.address_size 64\n\
    .visible .entry empty(.param .align 8 .b8 p[384]) { ret; }\n";

/// Median host µs of each driver primitive a call is made of, each repeated back to back: a launch; a
/// stream-ordered allocation and its free (cudarc creates and destroys two events with each); the
/// capture-status query; an executable graph of three launches in a line (a backward's delta, main and
/// dQ kernels) launched as it is, and with each node's parameters rewritten first (what the library
/// does for a call's launches).
pub fn driver_primitives(dev: &Device) -> Result<Vec<PrimitiveRow>, Box<dyn std::error::Error>> {
    let module = dev.context().load_module(Ptx::from_src(EMPTY_PTX))?;
    let empty = module.load_function("empty")?;
    let stream = dev.stream();
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    let mut block = LargeParams([0; 48]);
    let mut rows = Vec::new();
    let mut row = |what: &str, mut f: Box<dyn FnMut() -> Result<(), DriverError> + '_>| -> Result<(), DriverError> {
        let mut t = Vec::with_capacity(PRIMITIVE_REPS);
        for _ in 0..PRIMITIVE_REPS {
            let e = Instant::now();
            f()?;
            t.push(e.elapsed().as_secs_f64() * 1e6);
        }
        stream.synchronize()?;
        rows.push(PrimitiveRow { primitive: what.into(), host_us: median(&mut t) });
        Ok(())
    };
    // SAFETY: the kernel reads and writes nothing.
    row("launch", Box::new(|| unsafe { stream.launch_builder(&empty).arg(&block).launch(cfg) }.map(drop)))?;
    // SAFETY: the allocations are never read.
    row("alloc 4 MiB + free (stream-ordered)", Box::new(|| unsafe { stream.alloc::<u32>(1 << 20) }.map(drop)))?;
    row("capture-status query", Box::new(|| stream.capture_status().map(drop)))?;

    let mut args = [(&mut block as *mut LargeParams).cast::<std::ffi::c_void>()];
    let node_params = sys::CUDA_KERNEL_NODE_PARAMS {
        func: empty.cu_function(),
        gridDimX: 1,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: 32,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        kernelParams: args.as_mut_ptr(),
        extra: std::ptr::null_mut(),
        kern: std::ptr::null_mut(),
        ctx: std::ptr::null_mut(),
    };
    let (mut graph, mut exec) = (std::ptr::null_mut(), std::ptr::null_mut());
    let mut nodes = [std::ptr::null_mut(); 3];
    // SAFETY: the graph and its nodes are made here and outlive their uses; the driver copies the
    // parameter block at each node's creation and update.
    unsafe {
        sys::cuGraphCreate(&mut graph, 0).result()?;
        for i in 0..3 {
            let deps: Vec<_> = nodes[..i].last().copied().into_iter().collect();
            sys::cuGraphAddKernelNode_v2(&mut nodes[i], graph, deps.as_ptr(), deps.len(), &node_params).result()?;
        }
        sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0).result()?;
    }
    let cu_stream = stream.cu_stream();
    // SAFETY: the executable graph is live and its kernels touch no memory.
    row("graph of 3 launches: launch", Box::new(|| unsafe { sys::cuGraphLaunch(exec, cu_stream) }.result()))?;
    row(
        "graph of 3 launches: 3 parameter rewrites + launch",
        Box::new(|| {
            // SAFETY: as above; the nodes belong to the graph the executable was made from.
            unsafe {
                for node in nodes {
                    sys::cuGraphExecKernelNodeSetParams_v2(exec, node, &node_params).result()?;
                }
                sys::cuGraphLaunch(exec, cu_stream).result()
            }
        }),
    )?;
    // SAFETY: nothing uses the graph any more (`row` synchronised).
    unsafe {
        sys::cuGraphExecDestroy(exec).result()?;
        sys::cuGraphDestroy(graph).result()?;
    }
    Ok(rows)
}

const PRIMITIVE_REPS: usize = 1000;

/// Median µs per call synchronised after each call, per call back to back (one synchronisation after
/// `REPS` calls, best of three rounds), and the median host time of one call's enqueue (back to back).
fn timings(dev: &Device, mut call: impl FnMut() -> ironflash::Result<()>) -> ironflash::Result<[f64; 3]> {
    for _ in 0..5 {
        call()?;
    }
    dev.synchronize()?;
    let mut synced = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let t = Instant::now();
        call()?;
        dev.synchronize()?;
        synced.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut back_to_back = f64::INFINITY;
    let mut enqueue = Vec::with_capacity(3 * REPS);
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..REPS {
            let e = Instant::now();
            call()?;
            enqueue.push(e.elapsed().as_secs_f64() * 1e6);
        }
        dev.synchronize()?;
        back_to_back = back_to_back.min(t.elapsed().as_secs_f64() * 1e6 / REPS as f64);
    }
    Ok([median(&mut synced), back_to_back, median(&mut enqueue)])
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
