//! The host runtime on the GPU: calls captured in a CUDA graph and replayed (a training step's forward
//! and backward, and a split-KV decode step) give bitwise the eager results; an allocating call during
//! a capture is a typed error that leaves the capture intact; one `Device` shared by several host
//! threads, each on its own stream or all on one; with the device keeping its workspace, captured steps
//! that allocate nothing; another GPU's stream and tensors refused with typed errors (with two GPUs). Skips with one line without a CUDA driver.

mod common;

use common::device_or_skip;
use cudarc::driver::sys::{self, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};
use half::bf16;
use ironflash::gpu::{self, DeviceTensor, GpuGradients};
use ironflash::{Arg, AttnOptions, Device, Element, Error, HostTensor};
use std::sync::Once;

/// Stream capture refuses cudarc's event tracking (see `Device::for_stream`): every test here turns it
/// off for the shared context before allocating anything, and orders its work on one stream.
fn capture_ready(base: &'static Device) -> Device {
    static OFF: Once = Once::new();
    // SAFETY: without event tracking, work on one buffer from several streams must be ordered by the
    // caller; here no buffer crosses streams (each `Step` is made, used and dropped on one stream, and
    // each thread of `threads_share_a_device` has its own).
    OFF.call_once(|| unsafe { base.context().disable_event_tracking() });
    base.for_stream(base.context().new_stream().unwrap()).unwrap()
}

/// Overwrites a tensor's buffer with NaN in place (the captured graph holds its address).
fn poison<T: Element>(dev: &Device, t: DeviceTensor<T>, arg: Arg) -> DeviceTensor<T> {
    let layout = *t.layout();
    let mut buf = t.into_buffer();
    dev.stream().memcpy_htod(&vec![T::poison(); buf.len()], &mut buf).unwrap();
    dev.wrap(arg, buf, layout).unwrap()
}

fn poison_f32(dev: &Device, buf: &mut CudaSlice<f32>) {
    dev.stream().memcpy_htod(&vec![f32::NAN; buf.len()], buf).unwrap();
}

fn bits<T: Element>(dev: &Device, t: &DeviceTensor<T>) -> Vec<f32> {
    dev.download(t).unwrap().data.iter().map(|x| x.to_f32()).collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

struct Step {
    q: DeviceTensor<bf16>,
    k: DeviceTensor<bf16>,
    v: DeviceTensor<bf16>,
    d_o: DeviceTensor<bf16>,
    o: DeviceTensor<bf16>,
    lse: CudaSlice<f32>,
    grads: GpuGradients<bf16>,
}

impl Step {
    /// Inputs and poisoned outputs of `[batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim]`, V of
    /// head dim `dv`.
    fn new(dev: &Device, [b, sq, sk, hq, hkv, d]: [usize; 6], dv: usize, seed: u64) -> Step {
        let up = |shape, s| dev.upload(&HostTensor::<bf16>::random_seeded(shape, 1.0, seed + s)).unwrap();
        let (q, k) = (up([b, sq, hq, d], 0), up([b, sk, hkv, d], 1));
        let (v, d_o) = (up([b, sk, hkv, dv], 2), up([b, sq, hq, dv], 3));
        let grads = GpuGradients {
            dq: dev.poisoned([b, sq, hq, d]).unwrap(),
            dk: dev.poisoned([b, sk, hkv, d]).unwrap(),
            dv: dev.poisoned([b, sk, hkv, dv]).unwrap(),
            d_sinks: None,
        };
        let (o, lse) = (dev.poisoned([b, sq, hq, dv]).unwrap(), dev.poisoned_f32(b * hq * sq).unwrap());
        Step { q, k, v, d_o, o, lse, grads }
    }

    /// Forward, then (with `backward`) the backward, all into the preallocated outputs.
    fn run(&mut self, dev: &Device, opts: &AttnOptions, backward: bool) -> ironflash::Result<()> {
        gpu::flash_forward_into(dev, &self.q, &self.k, &self.v, &mut self.o, &mut self.lse, opts)?;
        if backward {
            let (q, k, v, o, lse, d_o) = (&self.q, &self.k, &self.v, &self.o, &self.lse, &self.d_o);
            gpu::flash_backward_into(dev, q, k, v, o, lse, d_o, &mut self.grads, opts)?;
        }
        Ok(())
    }

    fn outputs(&self, dev: &Device) -> Vec<Vec<f32>> {
        let g = &self.grads;
        vec![
            bits(dev, &self.o),
            dev.download_f32(&self.lse).unwrap(),
            bits(dev, &g.dq),
            bits(dev, &g.dk),
            bits(dev, &g.dv),
        ]
    }

    fn poison(&mut self, dev: &Device) {
        let take = |t: &mut DeviceTensor<bf16>, arg| {
            let placeholder = dev.poisoned::<bf16>([1, 1, 1, 8]).unwrap();
            let old = std::mem::replace(t, placeholder);
            *t = poison(dev, old, arg);
        };
        take(&mut self.o, Arg::O);
        take(&mut self.grads.dq, Arg::DQ);
        take(&mut self.grads.dk, Arg::DK);
        take(&mut self.grads.dv, Arg::DV);
        poison_f32(dev, &mut self.lse);
    }
}

/// Captures `step` (eager once first: the kernels load outside the capture), checks that an allocating
/// call inside the capture is refused without breaking it, and replays the graph twice on poisoned
/// outputs: bitwise the eager results each time. Returns how many allocation nodes the graph holds.
fn capture_and_replay(dev: &Device, mut step: Step, opts: &AttnOptions, backward: bool) -> usize {
    step.run(dev, opts, backward).unwrap();
    dev.synchronize().unwrap();
    let eager = step.outputs(dev);
    step.poison(dev);
    dev.synchronize().unwrap();

    let stream = dev.stream().clone();
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    step.run(dev, opts, backward).unwrap();
    let refused = gpu::flash_forward(dev, &step.q, &step.k, &step.v, opts).unwrap_err();
    assert!(matches!(refused, Error::AllocatesDuringCapture { .. }), "{refused}");
    let graph = stream.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("a captured graph");
    for replay in 0..2 {
        graph.launch().unwrap();
        dev.synchronize().unwrap();
        let got = step.outputs(dev);
        for (i, (g, e)) in got.iter().zip(&eager).enumerate() {
            assert!(same_bits(g, e), "replay {replay}: output {i} differs from the eager call");
        }
        step.poison(dev);
        dev.synchronize().unwrap();
    }
    allocation_nodes(&graph)
}

/// The allocation nodes of a captured graph (the stream-ordered allocations its calls made).
fn allocation_nodes(graph: &CudaGraph) -> usize {
    let mut count = 0;
    // SAFETY: the graph is live; the first call writes the node count, the second that many handles.
    let nodes = unsafe {
        sys::cuGraphGetNodes(graph.cu_graph(), std::ptr::null_mut(), &mut count).result().unwrap();
        let mut nodes = vec![std::ptr::null_mut(); count];
        sys::cuGraphGetNodes(graph.cu_graph(), nodes.as_mut_ptr(), &mut count).result().unwrap();
        nodes
    };
    let kind = |node| {
        let mut kind = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
        // SAFETY: `node` is one of the live graph's nodes.
        unsafe { sys::cuGraphNodeGetType(node, &mut kind) }.result().unwrap();
        kind
    };
    nodes.into_iter().filter(|&node| kind(node) == sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_ALLOC).count()
}

fn graph_replays_a_training_step_bitwise() {
    let Some(base) = device_or_skip("graph_replays_a_training_step_bitwise") else { return };
    let dev = capture_ready(base);
    // Deterministic: the fast backward's dQ adds in a run-dependent order.
    let opts = AttnOptions { causal: true, deterministic: true, ..AttnOptions::default() };
    capture_and_replay(&dev, Step::new(&dev, [2, 333, 333, 8, 2, 128], 128, 10), &opts, true);
    let windowed = AttnOptions { window: ironflash::Window { left: Some(64), right: Some(0) }, ..opts };
    capture_and_replay(&dev, Step::new(&dev, [1, 200, 260, 4, 4, 64], 64, 20), &windowed, true);
    // V of head dim 128 under Q and K of 192.
    capture_and_replay(&dev, Step::new(&dev, [1, 150, 170, 4, 2, 192], 128, 25), &opts, true);
}

fn graph_replays_a_decode_step_bitwise() {
    let Some(base) = device_or_skip("graph_replays_a_decode_step_bitwise") else { return };
    let dev = capture_ready(base);
    // One query row per sequence against 8K keys: the split-KV forward and its combine (their f32
    // workspace is allocated and freed inside the graph).
    let dims = [2, 1, 8192, 16, 4, 128];
    let p = ironflash::AttnProblem::contiguous(dims, &AttnOptions::default()).unwrap();
    let tile = gpu::forward_tile(dev.info(), (128, 128), ironflash::DType::BF16, false).unwrap();
    assert!(gpu::forward_launch_plan(dev.info(), &p, &tile, ironflash::DType::BF16).1 > 1, "not split");
    capture_and_replay(&dev, Step::new(&dev, dims, 128, 30), &AttnOptions::default(), false);
}

/// With `Device::keep_workspace(true)`, a training step (forward and deterministic backward) and a
/// split-KV decode step captured after an eager run of the same shapes hold no allocation node and
/// replay bitwise; without it, their captures hold the scratch's allocations (which the count sees).
fn kept_workspace_captures_without_allocation() {
    let Some(base) = device_or_skip("kept_workspace_captures_without_allocation") else { return };
    let dev = capture_ready(base);
    let opts = AttnOptions { causal: true, deterministic: true, ..AttnOptions::default() };
    let decode = [2, 1, 8192, 16, 4, 128];
    for keep in [false, true, true] {
        dev.keep_workspace(keep).unwrap();
        let train = capture_and_replay(&dev, Step::new(&dev, [2, 333, 333, 8, 2, 128], 128, 70), &opts, true);
        let step = capture_and_replay(&dev, Step::new(&dev, decode, 128, 75), &AttnOptions::default(), false);
        assert_eq!((train == 0, step == 0), (keep, keep), "keep {keep}: {train} and {step} allocation nodes");
    }
    dev.keep_workspace(false).unwrap();
}

/// Four training steps (`dims(t)`, seeds from `seed`) run alone on `alone_on`, then from four host
/// threads at once, thread t on `devs[t]`, three rounds each: every thread gets bitwise its step's
/// outputs alone.
fn threads_match_alone(alone_on: &Device, devs: [&Device; 4], dims: impl Fn(usize) -> [usize; 6] + Sync, seed: u64) {
    let opts = AttnOptions { causal: true, deterministic: true, ..AttnOptions::default() };
    let alone: Vec<Vec<Vec<f32>>> = (0..4)
        .map(|t| {
            let mut s = Step::new(alone_on, dims(t), dims(t)[5], seed + t as u64);
            s.run(alone_on, &opts, true).unwrap();
            s.outputs(alone_on)
        })
        .collect();
    std::thread::scope(|scope| {
        for (t, (want, dev)) in alone.iter().zip(devs).enumerate() {
            let (opts, dims) = (&opts, &dims);
            scope.spawn(move || {
                for _ in 0..3 {
                    let mut s = Step::new(dev, dims(t), dims(t)[5], seed + t as u64);
                    s.run(dev, opts, true).unwrap();
                    dev.synchronize().unwrap();
                    let got = s.outputs(dev);
                    assert!(got.iter().zip(want).all(|(g, w)| same_bits(g, w)), "thread {t} differs");
                }
            });
        }
    });
}

/// Four host threads share one `Device` (each through `for_stream`, on a stream of its own) and run
/// forward and backward at once: each gets bitwise what the same call gives alone. The shared `Device`
/// starts with no kernel loaded, so the threads also load kernels at the same time.
fn threads_share_a_device() {
    let Some(base) = device_or_skip("threads_share_a_device") else { return };
    let main = capture_ready(base);
    // A device of its own on this context with no kernel loaded: the threads compile kernels at once.
    let cold = Device::on_stream(main.context().new_stream().unwrap()).unwrap();
    let devs: Vec<Device> = (0..4).map(|_| cold.for_stream(cold.context().new_stream().unwrap()).unwrap()).collect();
    let dims = |t: usize| [1, 257 + 64 * t, 257 + 64 * t, 4, 2, [64, 128, 192, 256][t]];
    threads_match_alone(&main, [&devs[0], &devs[1], &devs[2], &devs[3]], dims, 40);
}

/// The same from four host threads on one `Device` (one stream, so one set of launch graphs whose nodes
/// the threads rewrite in turns).
fn threads_share_one_stream() {
    let Some(base) = device_or_skip("threads_share_one_stream") else { return };
    let dev = capture_ready(base);
    let dims = |t: usize| [2, 129 + 96 * t, 200 + 64 * t, 4, [4, 2, 1, 2][t], [64, 128, 96, 256][t]];
    threads_match_alone(&dev, [&dev; 4], dims, 60);
}

/// Another GPU's stream and tensors are refused with typed errors (`ForeignStream`, `DeviceMismatch`
/// naming the argument), and the second GPU's own device gives bitwise the first one's results. Needs
/// two GPUs; says so in one line and returns with one.
fn another_gpu_is_refused() {
    let Some(base) = device_or_skip("another_gpu_is_refused") else { return };
    let count = cudarc::driver::CudaContext::device_count().unwrap();
    if count < 2 {
        eprintln!("skipped: `another_gpu_is_refused` needs two GPUs, this machine has {count}");
        return;
    }
    let other = Device::open(1).unwrap();
    let refused = base.for_stream(other.context().new_stream().unwrap()).unwrap_err();
    assert!(matches!(refused, Error::ForeignStream), "{refused}");

    let opts = AttnOptions { causal: true, ..AttnOptions::default() };
    let shape = [2, 300, 4, 128];
    let host: Vec<HostTensor<bf16>> = (0..4).map(|i| HostTensor::random_seeded(shape, 1.0, 80 + i)).collect();
    let on = |dev: &Device| -> Vec<DeviceTensor<bf16>> { host.iter().map(|t| dev.upload(t).unwrap()).collect() };
    let (mine, theirs) = (on(base), on(&other));
    let mismatch = |e: Error, want: Arg| match e {
        Error::DeviceMismatch { arg, got: 1, expected: 0 } if arg == want => {}
        e => panic!("expected DeviceMismatch for {want:?}, got {e}"),
    };
    mismatch(gpu::flash_forward(base, &theirs[0], &mine[1], &mine[2], &opts).unwrap_err(), Arg::Q);
    mismatch(gpu::flash_forward(base, &mine[0], &mine[1], &theirs[2], &opts).unwrap_err(), Arg::V);
    let mut o = other.poisoned::<bf16>(shape).unwrap();
    let mut lse = base.poisoned_f32(2 * 4 * 300).unwrap();
    mismatch(gpu::flash_forward_into(base, &mine[0], &mine[1], &mine[2], &mut o, &mut lse, &opts).unwrap_err(), Arg::O);
    let fwd = gpu::flash_forward(base, &mine[0], &mine[1], &mine[2], &opts).unwrap();
    let d_o = &theirs[3];
    let refused = gpu::flash_backward(base, &mine[0], &mine[1], &mine[2], &fwd.o, &fwd.lse, d_o, &opts).unwrap_err();
    mismatch(refused, Arg::DO);

    let there = gpu::flash_forward(&other, &theirs[0], &theirs[1], &theirs[2], &opts).unwrap();
    assert!(same_bits(&bits(&other, &there.o), &bits(base, &fwd.o)), "the second GPU's O differs from the first's");
}

/// Host-only: `Device` can be shared across threads.
fn device_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Device>();
}

fn main() -> std::process::ExitCode {
    common::gpu_main(
        gpu_tests![
            graph_replays_a_training_step_bitwise,
            graph_replays_a_decode_step_bitwise,
            threads_share_a_device,
            threads_share_one_stream,
            kept_workspace_captures_without_allocation,
            another_gpu_is_refused
        ],
        gpu_tests![device_is_send_and_sync],
    )
}
