//! Context-parallel (ring) attention on two GPUs (`ring::gpu`, feature `nccl`): random shapes (odd
//! lengths per rank, batch 1-2, GQA up to 4:1, head dims 64/128/256 and 192/128, causal or not,
//! zig-zag or contiguous shards, sliding windows, softcap, ALiBi per head and per batch entry, sinks,
//! the deterministic backward), both dtypes. Each
//! rank's forward and backward, gathered, must match the single-GPU call on the whole sequence and the
//! f64 reference within the single-GPU bounds (O: bf16 1e-2, f16 5e-3 relative L2; LSE 2e-3 absolute;
//! gradients: bf16 1.5e-2, f16 4e-3 against the exact gradients given the ring's O), with the ring's
//! outputs allocated over poisoned memory; repeated calls must be bitwise equal; a rank with a bad
//! shard must make every rank return a typed error, none hang.
//!
//! Skips with one line where there is no CUDA driver, fewer than two GPUs, or no NCCL
//! (`ring::nccl`: `IRONFLASH_NCCL` or `libnccl.so.2` on the loader's path).

mod common;

#[cfg(feature = "nccl")]
mod ring_tests {
    use super::common::{check_lse, check_o, grad_error_summed, output_tolerance, rel_l2};
    use half::{bf16, f16};
    use ironflash::cpu::{reference_backward_given_o, reference_forward};
    use ironflash::gpu::{self, DeviceTensor};
    use ironflash::ring::cpu::{shard, unshard, unshard_lse};
    use ironflash::ring::gpu as ring;
    use ironflash::ring::nccl::{Communicator, UniqueId};
    use ironflash::ring::{ShardLayout, Sharding};
    use ironflash::{AttnOptions, DType, Device, Element, Error, HostTensor, PerHead};
    use rand::{Rng, SeedableRng};
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    pub const WORLD: usize = 2;

    /// Both GPUs and one communicator per rank, made once; the ring tests take the lock in turn (two
    /// tests' collectives must not interleave on the communicators).
    pub struct Fixture {
        pub devices: Vec<Device>,
        pub comms: Mutex<Vec<Communicator>>,
    }

    /// The two-GPU fixture, or why this machine cannot run the ring.
    pub fn fixture() -> &'static Result<Fixture, String> {
        static F: OnceLock<Result<Fixture, String>> = OnceLock::new();
        F.get_or_init(|| {
            let count = match Device::open(0) {
                Ok(_) => cudarc::driver::CudaContext::device_count().map_err(|e| e.to_string())?,
                Err(Error::NoDriver(why)) => return Err(format!("no CUDA driver ({why})")),
                Err(e) => panic!("a CUDA driver is present but device 0 could not be opened: {e}"),
            };
            if count < WORLD as i32 {
                return Err(format!("the ring tests need {WORLD} GPUs, the driver sees {count}"));
            }
            let id = Communicator::unique_id().map_err(|e| format!("no NCCL: {e}"))?;
            let devices: Vec<Device> = (0..WORLD).map(|r| Device::open(r).expect("opening a GPU")).collect();
            let comms = join_ring(&devices, id);
            Ok(Fixture { devices, comms: Mutex::new(comms) })
        })
    }

    /// One communicator per device for the ring `id`, rank r on device r, joined in threads (each
    /// returns once all have joined).
    fn join_ring(devices: &[Device], id: UniqueId) -> Vec<Communicator> {
        std::thread::scope(|s| {
            let joins: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(r, dev)| s.spawn(move || Communicator::new(dev, r, WORLD, &id).expect("joining the ring")))
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        })
    }

    #[derive(Debug, Clone)]
    struct Case {
        batch: usize,
        seqlen: usize,
        heads_kv: usize,
        group: usize,
        head_dims: (usize, usize),
        causal: bool,
        layout: ShardLayout,
        softcap: Option<f32>,
        window: (Option<usize>, Option<usize>),
        /// ALiBi slopes: 0 none, 1 `[heads_q]`, 2 `[batch, heads_q]`.
        alibi: usize,
        sinks: bool,
        deterministic: bool,
        seed: u64,
    }

    fn cases() -> Vec<Case> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x51_0e);
        let dims = [(64, 64), (128, 128), (256, 256), (192, 128)];
        (0..24)
            .map(|i| {
                let seqlen = rng.random_range(4..=700);
                // From case 14 on, windows (about a chunk wide, so that they cross the chunks' edges)
                // and ALiBi.
                let positional = i >= 14;
                let mut window = |on: bool| on.then(|| rng.random_range(0..=seqlen / 3));
                let window = (window(positional && i % 3 != 2), window(positional && i % 4 == 1));
                Case {
                    batch: 1 + usize::from(i % 4 == 3),
                    seqlen,
                    heads_kv: rng.random_range(1..=2),
                    group: [1, 2, 4][rng.random_range(0..3)],
                    head_dims: dims[i % dims.len()],
                    causal: i % 3 != 1,
                    layout: if i % 5 == 4 { ShardLayout::Contiguous } else { ShardLayout::ZigZag },
                    softcap: (i % 4 == 2).then_some(20.0),
                    window,
                    alibi: if positional { [1, 2, 0][i % 3] } else { 0 },
                    sinks: i % 3 == 0,
                    deterministic: i % 2 == 1,
                    seed: 1000 + i as u64,
                }
            })
            .collect()
    }

    /// Fills the device's memory pool with NaN bytes, so that the ring's uninitialised allocations
    /// show any element they leave unwritten.
    fn poison(dev: &Device) {
        let junk = dev.poisoned::<bf16>([1, 1 << 20, 16, 16]).expect("poison");
        drop(junk);
        dev.synchronize().unwrap();
    }

    struct RankOut {
        o: Vec<f64>,
        lse: Vec<f32>,
        dq: Vec<f64>,
        dk: Vec<f64>,
        dv: Vec<f64>,
        d_sinks: Option<Vec<f32>>,
    }

    fn to_f64<T: Element>(dev: &Device, t: &DeviceTensor<T>) -> Vec<f64> {
        dev.download(t).unwrap().to_f64_contiguous()
    }

    /// One rank's forward and backward on its shards.
    #[allow(clippy::too_many_arguments)]
    fn run_rank<T: Element>(
        dev: &Device,
        comm: &mut Communicator,
        sharding: &Sharding,
        full: [&HostTensor<T>; 4],
        (sinks, slopes): (Option<&[f32]>, Option<&[f32]>),
        c: &Case,
    ) -> ironflash::Result<RankOut> {
        let rank = comm.rank();
        let [q, k, v, d_o] = full.map(|t| dev.upload(&shard(t, sharding, rank)).unwrap());
        let sinks_dev = sinks.map(|s| dev.stream().clone_htod(s).unwrap());
        let slopes_dev = slopes.map(|s| dev.stream().clone_htod(s).unwrap());
        let opts = AttnOptions {
            causal: c.causal,
            softcap: c.softcap,
            sinks: sinks_dev.as_ref().map(PerHead::Device),
            alibi_slopes: slopes_dev.as_ref().map(PerHead::Device),
            deterministic: c.deterministic,
            ..AttnOptions::default()
        }
        .with_window(c.window.0, c.window.1);
        poison(dev);
        let fwd = ring::forward(dev, comm, &q, &k, &v, sharding, &opts)?;
        poison(dev);
        let g = ring::backward(dev, comm, &q, &k, &v, &fwd.o, &fwd.lse, &d_o, sharding, &opts)?;
        Ok(RankOut {
            o: to_f64(dev, &fwd.o),
            lse: dev.download_f32(&fwd.lse).unwrap(),
            dq: to_f64(dev, &g.dq),
            dk: to_f64(dev, &g.dk),
            dv: to_f64(dev, &g.dv),
            d_sinks: g.d_sinks.as_ref().map(|d| dev.download_f32(d).unwrap()),
        })
    }

    /// Every rank's result, the ranks in threads.
    fn run_ring<T: Element>(
        fx: &Fixture,
        comms: &mut [Communicator],
        sharding: &Sharding,
        full: [&HostTensor<T>; 4],
        per_head: (Option<&[f32]>, Option<&[f32]>),
        c: &Case,
    ) -> Vec<ironflash::Result<RankOut>> {
        std::thread::scope(|s| {
            let joins: Vec<_> = comms
                .iter_mut()
                .zip(&fx.devices)
                .map(|(comm, dev)| s.spawn(move || run_rank(dev, comm, sharding, full, per_head, c)))
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        })
    }

    fn check_case<T: Element>(fx: &Fixture, comms: &mut [Communicator], c: &Case) -> Result<String, String> {
        let (d, dv) = c.head_dims;
        let heads_q = c.heads_kv * c.group;
        let n = c.seqlen;
        let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
        let q = HostTensor::<T>::random([c.batch, n, heads_q, d], 1.0, &mut rng);
        let k = HostTensor::<T>::random([c.batch, n, c.heads_kv, d], 1.0, &mut rng);
        let v = HostTensor::<T>::random([c.batch, n, c.heads_kv, dv], 1.0, &mut rng);
        let d_o = HostTensor::<T>::random([c.batch, n, heads_q, dv], 1.0, &mut rng);
        let sinks: Option<Vec<f32>> = c.sinks.then(|| (0..heads_q).map(|_| rng.random_range(-2.0..2.0)).collect());
        let slope_rows = [0, 1, c.batch][c.alibi];
        let slopes: Option<Vec<f32>> =
            (c.alibi > 0).then(|| (0..slope_rows * heads_q).map(|_| rng.random_range(0.01..0.3)).collect());
        let sharding = Sharding { seqlen: n, world: WORLD, layout: c.layout };

        let per_head = (sinks.as_deref(), slopes.as_deref());
        let outs: Vec<RankOut> = run_ring(fx, comms, &sharding, [&q, &k, &v, &d_o], per_head, c)
            .into_iter()
            .collect::<ironflash::Result<_>>()
            .map_err(|e| format!("ring call failed: {e}"))?;
        let gather = |f: &dyn Fn(&RankOut) -> Vec<f64>, row| {
            unshard(&outs.iter().map(f).collect::<Vec<_>>(), &sharding, c.batch, row)
        };
        let o = gather(&|r| r.o.clone(), heads_q * dv);
        let lse = unshard_lse(&outs.iter().map(|r| r.lse.clone()).collect::<Vec<_>>(), &sharding, c.batch, heads_q);
        let dq = gather(&|r| r.dq.clone(), heads_q * d);
        let dk = gather(&|r| r.dk.clone(), c.heads_kv * d);
        let dv_ = gather(&|r| r.dv.clone(), c.heads_kv * dv);

        // The f64 reference, and the gradients given the ring's O (rounded as the GPU backward sees it).
        let host_opts = AttnOptions {
            causal: c.causal,
            softcap: c.softcap,
            sinks: sinks.as_deref().map(PerHead::Host),
            alibi_slopes: slopes.as_deref().map(PerHead::Host),
            ..AttnOptions::default()
        }
        .with_window(c.window.0, c.window.1);
        let want = reference_forward(&q, &k, &v, &host_opts).map_err(|e| e.to_string())?;
        let tol = output_tolerance(T::DTYPE);
        let o_err = check_o(&o, &want.o, tol)?;
        let lse_err = check_lse(&lse, &want.lse, 2e-3 * want.lse.iter().fold(1.0f64, |m, x| m.max(x.abs())))?;
        let o_t = HostTensor::<T>::from_vec(
            o.iter().map(|&x| T::from_f32(x as f32)).collect(),
            ironflash::Layout::contiguous([c.batch, n, heads_q, dv]),
            ironflash::Arg::O,
        )
        .unwrap();
        let want_g = reference_backward_given_o(&q, &k, &v, &o_t, &d_o, &host_opts).map_err(|e| e.to_string())?;
        let g_tol = if T::DTYPE == DType::BF16 { 1.5e-2 } else { 4e-3 };
        let errs = [
            ("dQ", grad_error_summed(&dq, &want_g.dq, n)),
            ("dK", grad_error_summed(&dk, &want_g.dk, n * c.group)),
            ("dV", grad_error_summed(&dv_, &want_g.dv, n * c.group)),
        ];
        for (what, e) in errs {
            if e.is_nan() || e >= g_tol {
                return Err(format!("{what} error {e:.3e} (bound {g_tol:.1e})"));
            }
        }
        if let Some(want_ds) = &want_g.d_sinks {
            for out in &outs {
                let got: Vec<f64> = out.d_sinks.as_ref().ok_or("no d_sinks")?.iter().map(|&x| x as f64).collect();
                let scale = want_ds.iter().fold(1.0f64, |m, x| m.max(x.abs()));
                let worst = got.iter().zip(want_ds).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
                if worst.is_nan() || worst > 1e-2 * scale {
                    return Err(format!("d_sinks off by {worst:.3e} (scale {scale:.3e})"));
                }
            }
        }

        // The single-GPU call on the whole sequence (device 0), same bounds between the two.
        let dev = &fx.devices[0];
        let (qd, kd, vd, dod) =
            (dev.upload(&q).unwrap(), dev.upload(&k).unwrap(), dev.upload(&v).unwrap(), dev.upload(&d_o).unwrap());
        let sinks_dev = sinks.as_deref().map(|s| dev.stream().clone_htod(s).unwrap());
        let slopes_dev = slopes.as_deref().map(|s| dev.stream().clone_htod(s).unwrap());
        let dev_opts = AttnOptions {
            sinks: sinks_dev.as_ref().map(PerHead::Device),
            alibi_slopes: slopes_dev.as_ref().map(PerHead::Device),
            ..host_opts
        };
        let single = gpu::flash_forward(dev, &qd, &kd, &vd, &dev_opts).map_err(|e| e.to_string())?;
        let single_o = to_f64(dev, &single.o);
        let vs_single = rel_l2(&o, &single_o);
        if vs_single >= tol {
            return Err(format!("O against the single-GPU call: {vs_single:.3e}"));
        }
        let single_g = gpu::flash_backward(dev, &qd, &kd, &vd, &single.o, &single.lse, &dod, &dev_opts)
            .map_err(|e| e.to_string())?;
        for (what, ring_g, one) in [("dQ", &dq, &single_g.dq), ("dK", &dk, &single_g.dk), ("dV", &dv_, &single_g.dv)] {
            let e = grad_error_summed(ring_g, &to_f64(dev, one), n);
            if e.is_nan() || e >= g_tol {
                return Err(format!("{what} against the single-GPU call: {e:.3e}"));
            }
        }
        Ok(format!(
            "O {o_err:.2e} (vs single GPU {vs_single:.2e}), LSE {lse_err:.1e}, dQ {:.2e} dK {:.2e} dV {:.2e}",
            errs[0].1, errs[1].1, errs[2].1
        ))
    }

    pub fn ring_matches_single_gpu_and_reference() {
        let Ok(fx) = fixture() else { return };
        let mut comms = fx.comms.lock().unwrap();
        let mut failures = Vec::new();
        for (i, c) in cases().iter().enumerate() {
            for dtype in [DType::BF16, DType::F16] {
                let r = match dtype {
                    DType::BF16 => check_case::<bf16>(fx, &mut comms, c),
                    _ => check_case::<f16>(fx, &mut comms, c),
                };
                match r {
                    Ok(msg) => println!("case {i} {dtype}: {msg}   {c:?}"),
                    Err(why) => {
                        println!("case {i} {dtype} FAILED: {why}   {c:?}");
                        failures.push(format!("case {i} {dtype}: {why}"));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    pub fn ring_is_bitwise_reproducible() {
        let Ok(fx) = fixture() else { return };
        let mut comms = fx.comms.lock().unwrap();
        let c = Case {
            batch: 1,
            seqlen: 1031,
            heads_kv: 2,
            group: 2,
            head_dims: (128, 128),
            causal: true,
            layout: ShardLayout::ZigZag,
            softcap: None,
            window: (Some(300), None),
            alibi: 1,
            sinks: true,
            deterministic: true,
            seed: 7,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
        let q = HostTensor::<bf16>::random([1, c.seqlen, 4, 128], 1.0, &mut rng);
        let k = HostTensor::<bf16>::random([1, c.seqlen, 2, 128], 1.0, &mut rng);
        let v = HostTensor::<bf16>::random([1, c.seqlen, 2, 128], 1.0, &mut rng);
        let d_o = HostTensor::<bf16>::random([1, c.seqlen, 4, 128], 1.0, &mut rng);
        let sinks = [0.5f32, -1.0, 1.5, 0.0];
        let slopes = [0.25f32, 0.125, 0.0625, 0.03125];
        let sharding = Sharding { seqlen: c.seqlen, world: WORLD, layout: c.layout };
        let mut once = || -> Vec<Vec<u64>> {
            run_ring(fx, &mut comms, &sharding, [&q, &k, &v, &d_o], (Some(&sinks), Some(&slopes)), &c)
                .into_iter()
                .map(|r| {
                    let r = r.unwrap();
                    let bits = |x: &[f64]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    [
                        bits(&r.o),
                        r.lse.iter().map(|x| x.to_bits() as u64).collect(),
                        bits(&r.dq),
                        bits(&r.dk),
                        bits(&r.dv),
                    ]
                    .concat()
                })
                .collect()
        };
        let first = once();
        for _ in 0..3 {
            assert!(once() == first, "a repeated ring call differs bitwise");
        }
    }

    /// Rank 1 passes a query shard of the wrong length: it returns the shape error, rank 0 learns that
    /// rank 1 refused, neither waits for a transfer; then ranks called with different options get
    /// `RankMismatch`; the ring works afterwards.
    pub fn a_bad_rank_fails_every_rank_without_hanging() {
        let Ok(fx) = fixture() else { return };
        let mut comms = fx.comms.lock().unwrap();
        for comm in comms.iter_mut() {
            comm.set_timeout(Duration::from_secs(60));
        }
        let sharding = Sharding { seqlen: 300, world: WORLD, layout: ShardLayout::ZigZag };
        let results: Vec<_> = std::thread::scope(|s| {
            let joins: Vec<_> = comms
                .iter_mut()
                .zip(&fx.devices)
                .enumerate()
                .map(|(r, (comm, dev))| {
                    let sharding = &sharding;
                    s.spawn(move || {
                        let len = sharding.shard_len(r) + if r == 1 { 3 } else { 0 };
                        let q = dev.upload(&HostTensor::<bf16>::random_seeded([1, len, 2, 64], 1.0, 1)).unwrap();
                        let kv = dev
                            .upload(&HostTensor::<bf16>::random_seeded([1, sharding.shard_len(r), 2, 64], 1.0, 2))
                            .unwrap();
                        let bad = ring::forward(dev, comm, &q, &kv, &kv, sharding, &AttnOptions::causal()).map(drop);
                        // Then rank 0 causal, rank 1 not: the handshake tells them apart.
                        let q = dev
                            .upload(&HostTensor::<bf16>::random_seeded([1, sharding.shard_len(r), 2, 64], 1.0, 1))
                            .unwrap();
                        let opts = AttnOptions { causal: r == 0, ..AttnOptions::default() };
                        let mismatch = ring::forward(dev, comm, &q, &kv, &kv, sharding, &opts).map(drop);
                        let fine = ring::forward(dev, comm, &q, &kv, &kv, sharding, &AttnOptions::causal()).map(drop);
                        (bad, mismatch, fine)
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        let (bad0, mismatch0, fine0) = &results[0];
        let (bad1, mismatch1, fine1) = &results[1];
        assert!(matches!(bad0, Err(Error::PeerFailed { rank: 1 })), "rank 0: {bad0:?}");
        assert!(matches!(bad1, Err(Error::ShapeMismatch { .. })), "rank 1: {bad1:?}");
        assert!(matches!(mismatch0, Err(Error::RankMismatch { rank: 1, what: "causal", .. })), "rank 0: {mismatch0:?}");
        assert!(matches!(mismatch1, Err(Error::RankMismatch { rank: 0, what: "causal", .. })), "rank 1: {mismatch1:?}");
        assert!(fine0.is_ok() && fine1.is_ok(), "{fine0:?} {fine1:?}");
    }

    /// A peer that never comes (rank 1 joins the ring and then makes no call, as a process that died
    /// would): rank 0's call returns `RingTimeout` once its timeout has passed instead of waiting for
    /// ever, its communicator is aborted (later calls: `RingAborted`), and both communicators drop
    /// without hanging. Its own communicators, not the fixture's, which stay usable.
    pub fn a_dead_peer_times_out() {
        let Ok(fx) = fixture() else { return };
        let _turn = fx.comms.lock().unwrap();
        let mut comms = join_ring(&fx.devices, Communicator::unique_id().unwrap());
        let timeout = Duration::from_secs(3);
        comms[0].set_timeout(timeout);
        let dev = &fx.devices[0];
        let sharding = Sharding { seqlen: 256, world: WORLD, layout: ShardLayout::ZigZag };
        let t = dev.upload(&HostTensor::<bf16>::random_seeded([1, sharding.shard_len(0), 2, 64], 1.0, 1)).unwrap();
        let start = std::time::Instant::now();
        let first = ring::forward(dev, &mut comms[0], &t, &t, &t, &sharding, &AttnOptions::causal()).map(drop);
        let waited = start.elapsed();
        println!("a_dead_peer_times_out: {first:?} after {:.2} s", waited.as_secs_f64());
        assert!(matches!(first, Err(Error::RingTimeout { .. })), "{first:?}");
        assert!(waited >= timeout && waited < timeout + Duration::from_secs(10), "{waited:?}");
        let later = ring::forward(dev, &mut comms[0], &t, &t, &t, &sharding, &AttnOptions::causal()).map(drop);
        assert!(matches!(later, Err(Error::RingAborted)), "{later:?}");
        drop(comms);
    }

    /// Needs no GPU: a communicator of a rank outside the ring is refused before NCCL is touched.
    pub fn bad_ring_rank_is_a_typed_error() {
        let id = UniqueId { internal: [0; 128] };
        if let Ok(dev) = Device::open(0) {
            assert!(matches!(Communicator::new(&dev, 2, 2, &id), Err(Error::BadRingRank { rank: 2, world: 2 })));
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    #[cfg(feature = "nccl")]
    {
        use ring_tests::*;
        let why = fixture().as_ref().err();
        if let Some(why) = why {
            println!("skipped: {why}: the ring tests are reported as ignored");
        }
        let gpu: [(&str, fn()); 4] = [
            ("ring_matches_single_gpu_and_reference", ring_matches_single_gpu_and_reference),
            ("ring_is_bitwise_reproducible", ring_is_bitwise_reproducible),
            ("a_bad_rank_fails_every_rank_without_hanging", a_bad_rank_fails_every_rank_without_hanging),
            ("a_dead_peer_times_out", a_dead_peer_times_out),
        ];
        let mut trials: Vec<_> = gpu
            .into_iter()
            .map(|(name, f)| {
                libtest_mimic::Trial::test(name, move || {
                    f();
                    Ok(())
                })
                .with_ignored_flag(why.is_some())
            })
            .collect();
        trials.push(libtest_mimic::Trial::test("bad_ring_rank_is_a_typed_error", || {
            bad_ring_rank_is_a_typed_error();
            Ok(())
        }));
        libtest_mimic::run(&args, trials).exit_code()
    }
    #[cfg(not(feature = "nccl"))]
    {
        println!("skipped: built without the `nccl` feature: no ring tests");
        libtest_mimic::run(&args, Vec::new()).exit_code()
    }
}
