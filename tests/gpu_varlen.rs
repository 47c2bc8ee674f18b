//! Packed variable-length batches on the GPU (`gpu::flash_forward_varlen`, `gpu::flash_backward_varlen`):
//! random mixes of sequence lengths (0 and 1 included, queries and keys of their own lengths), crossed
//! with causality, windows, softcap, ALiBi (per head or per sequence), sinks, GQA up to 32:1, every head
//! dim and both dtypes, on the chosen kernels (Hopper's on compute capability 9.0), the `mma.sync` rows forced
//! and split-KV forced, against the f64 varlen references (`cpu::reference_forward_varlen`,
//! `cpu::reference_backward_varlen`) on fresh random inputs, outputs and gradients poisoned. The
//! backward runs on the packed forward's O and LSE (a training step end to end), fast or deterministic.
//! Each sequence's result is also bitwise the dense call's on that sequence alone (same kernel row;
//! the backward's in deterministic mode), and repeated calls are bitwise equal; another sequence's
//! infinities and NaNs never reach it. Skips with one line without a CUDA driver.
//!
//! Bounds: as `gpu_forward` (O relative L2 bf16 1e-2, f16 5e-3; LSE absolute 2e-3 of its magnitude) and
//! `gpu_score` (gradients bf16 1.5e-2, f16 2e-3, against the exact gradients given the O the backward is
//! handed; the sinks' gradient against the size of its terms).

mod common;

use common::{check_lse, check_o, device_or_skip, grad_error_summed, output_tolerance, Kernels, HEAD_DIM_PAIRS};
use half::{bf16, f16};
use ironflash::cpu::varlen::{reference_backward_varlen, reference_forward_varlen, Varlen};
use ironflash::gpu::{self, DeviceVarlen, GpuGradients};
use ironflash::{Arg, AttnOptions, DType, Device, Element, Error, HostTensor, Layout, PerHead};
use ironflash_kernels::tiles::{self, FwdTile};
use ironflash_kernels::tiles_bwd::{self, BwdTile};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
struct Case {
    /// Query and key lengths per sequence.
    lens: Vec<(usize, usize)>,
    heads_kv: usize,
    group: usize,
    head_dim: usize,
    head_dim_v: usize,
    causal: bool,
    window: (Option<usize>, Option<usize>),
    softcap: Option<f32>,
    /// Some(per_sequence): ALiBi slopes `[heads_q]` or `[batch, heads_q]`.
    alibi: Option<bool>,
    sinks: bool,
    /// Token and head strides padded (not contiguous).
    padded: bool,
    kernels: Kernels,
    /// The backward's deterministic mode.
    deterministic: bool,
    seed: u64,
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 1 => Just(1usize), 3 => 2usize..=70, 2 => 100usize..=300]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let window = prop_oneof![
        3 => Just((None, None)),
        1 => (0usize..40).prop_map(|l| (Some(l), None)),
        1 => (0usize..200, 0usize..60).prop_map(|(l, r)| (Some(l), Some(r))),
    ];
    let kernels =
        prop_oneof![3 => Just(Kernels::Chosen), 2 => Just(Kernels::MmaSync), 1 => (2usize..6).prop_map(Kernels::Split)];
    // Self-attention (equal lengths) half the time, else each side its own.
    // A tensor has at least one token (the library's shapes have no empty dimension): a draw whose
    // sequences hold no query (or no key) at all gets one in its first sequence.
    let lens = prop::collection::vec((length(), length(), any::<bool>()), 1..=6).prop_map(|v| {
        let mut lens: Vec<(usize, usize)> = v.into_iter().map(|(q, k, same)| (q, if same { q } else { k })).collect();
        if lens.iter().all(|l| l.0 == 0) {
            lens[0].0 = 1;
        }
        if lens.iter().all(|l| l.1 == 0) {
            lens[0].1 = 1;
        }
        lens
    });
    (
        (
            lens,
            1usize..=2,
            prop::sample::select(vec![1usize, 2, 4, 8, 32]),
            prop::sample::select(HEAD_DIM_PAIRS.to_vec()),
        ),
        (any::<bool>(), window, prop::option::weighted(0.3, prop::sample::select(vec![2.0f32, 8.0, 30.0]))),
        (prop::option::weighted(0.3, any::<bool>()), prop::bool::weighted(0.3), prop::bool::weighted(0.3)),
        (kernels, prop::bool::weighted(0.3), any::<u64>()),
    )
        .prop_map(
            |((lens, hkv, group, (d, dv)), (causal, window, softcap), (alibi, sinks, padded), (k, det, seed))| Case {
                lens,
                heads_kv: hkv,
                group,
                head_dim: d,
                head_dim_v: dv,
                causal,
                window,
                softcap,
                alibi,
                sinks,
                padded,
                kernels: k,
                deterministic: det,
                seed,
            },
        )
}

#[derive(Clone)]
struct Inputs<T> {
    q: HostTensor<T>,
    k: HostTensor<T>,
    v: HostTensor<T>,
    cu_q: Vec<i32>,
    cu_k: Vec<i32>,
    scale: f32,
    slopes: Vec<f32>,
    sinks: Vec<f32>,
    /// The upstream gradient, shaped like O.
    d_o: HostTensor<T>,
}

fn offsets(lens: impl Iterator<Item = usize>) -> Vec<i32> {
    let mut cu = vec![0i32];
    for l in lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    cu
}

/// `[1, tokens, heads, dim]`, contiguous or with padded token and head strides.
fn layout(tokens: usize, heads: usize, dim: usize, padded: bool) -> Layout {
    if !padded {
        return Layout::contiguous([1, tokens, heads, dim]);
    }
    let (hs, ts) = (dim + 8, heads * (dim + 8) + 16);
    Layout { shape: [1, tokens, heads, dim], strides: [tokens * ts, ts, hs, 1] }
}

fn inputs<T: Element>(c: &Case) -> Inputs<T> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
    let (cu_q, cu_k) = (offsets(c.lens.iter().map(|l| l.0)), offsets(c.lens.iter().map(|l| l.1)));
    let (tq, tk) = (*cu_q.last().unwrap() as usize, *cu_k.last().unwrap() as usize);
    let hq = c.heads_kv * c.group;
    let q = HostTensor::<T>::random_with_layout(layout(tq, hq, c.head_dim, c.padded), 1.0, &mut rng);
    let k = HostTensor::<T>::random_with_layout(layout(tk, c.heads_kv, c.head_dim, c.padded), 1.0, &mut rng);
    let v = HostTensor::<T>::random_with_layout(layout(tk, c.heads_kv, c.head_dim_v, c.padded), 1.0, &mut rng);
    let scale = rng.random_range(1.0..3.0) / (c.head_dim as f32).sqrt();
    let n_slopes = if c.alibi == Some(true) { c.lens.len() * hq } else { hq };
    let slopes = (0..n_slopes).map(|_| 2f32.powf(-rng.random_range(0.0..8.0))).collect();
    let sinks = (0..hq).map(|_| rng.random_range(-3.0..3.0)).collect();
    let d_o = HostTensor::<T>::random_with_layout(layout(tq, hq, c.head_dim_v, c.padded), 1.0, &mut rng);
    Inputs { q, k, v, cu_q, cu_k, scale, slopes, sinks, d_o }
}

fn options<'a>(c: &Case, scale: f32, slopes: PerHead<'a>, sinks: PerHead<'a>) -> AttnOptions<'a> {
    let mut o = AttnOptions {
        causal: c.causal,
        softmax_scale: Some(scale),
        deterministic: c.deterministic,
        ..AttnOptions::default()
    }
    .with_window(c.window.0, c.window.1);
    o.softcap = c.softcap;
    if c.alibi.is_some() {
        o.alibi_slopes = Some(slopes);
    }
    if c.sinks {
        o.sinks = Some(sinks);
    }
    o
}

fn mma_sync_tile(c: &Case) -> &'static FwdTile {
    let dims = (c.head_dim, c.head_dim_v);
    tiles::FWD_TILES.iter().find(|t| (t.head_dim, t.head_dim_v) == dims && !t.wgmma).unwrap()
}

/// The varlen call of a case into poisoned O and LSE; their contents.
fn gpu_varlen<T: Element>(dev: &Device, c: &Case, x: &Inputs<T>) -> Result<(HostTensor<T>, Vec<f32>), Error> {
    gpu_varlen_tile(dev, c, x, None)
}

/// `gpu_varlen` with the forward row `tile` forced (where given).
fn gpu_varlen_tile<T: Element>(
    dev: &Device,
    c: &Case,
    x: &Inputs<T>,
    tile: Option<&FwdTile>,
) -> Result<(HostTensor<T>, Vec<f32>), Error> {
    let slopes = dev.stream().clone_htod(&x.slopes).unwrap();
    let sinks = dev.stream().clone_htod(&x.sinks).unwrap();
    let opts = options(c, x.scale, PerHead::Device(&slopes), PerHead::Device(&sinks));
    let (q, k, v) = (dev.upload(&x.q)?, dev.upload(&x.k)?, dev.upload(&x.v)?);
    let seqs = Varlen { cu_seqlens_q: &x.cu_q, cu_seqlens_k: &x.cu_k };
    let offsets = dev.upload_varlen(&seqs, x.q.shape()[1], x.k.shape()[1])?;
    let [_, tq, hq, _] = x.q.shape();
    let mut o = dev.poisoned::<T>([1, tq, hq, c.head_dim_v])?;
    let mut lse = dev.poisoned_f32(hq * tq)?;
    let view = offsets.view();
    // The row: `tile`, or the `mma.sync` one the case asks for; the split the case asks for.
    let tile = tile.or((c.kernels == Kernels::MmaSync).then(|| mma_sync_tile(c)));
    let splits = if let Kernels::Split(n) = c.kernels { Some(n) } else { None };
    if tile.is_none() && splits.is_none() {
        gpu::flash_forward_varlen_into(dev, &q, &k, &v, &view, &mut o, &mut lse, &opts)?;
    } else {
        gpu::flash_forward_varlen_with_splits(dev, &q, &k, &v, &view, &mut o, &mut lse, &opts, tile, splits)?;
    }
    Ok((dev.download(&o)?, dev.download_f32(&lse)?))
}

fn run_case<T: Element>(dev: &Device, c: &Case) -> Result<f64, String> {
    run_case_tile::<T>(dev, c, None)
}

/// `run_case` with the forward row `tile` forced.
fn run_case_tile<T: Element>(dev: &Device, c: &Case, tile: Option<&FwdTile>) -> Result<f64, String> {
    let name = format!("{} {c:?} {}", T::DTYPE, tile.map_or("", |t| t.symbols[0]));
    let x = inputs::<T>(c);
    let seqs = Varlen { cu_seqlens_q: &x.cu_q, cu_seqlens_k: &x.cu_k };
    let host_opts = options(c, x.scale, PerHead::Host(&x.slopes), PerHead::Host(&x.sinks));
    let want = reference_forward_varlen(&x.q, &x.k, &x.v, &seqs, &host_opts).map_err(|e| e.to_string())?;
    let (o, lse) = gpu_varlen_tile(dev, c, &x, tile).map_err(|e| format!("{name}: {e}"))?;
    let err =
        check_o(&o.to_f64_contiguous(), &want.o, output_tolerance(T::DTYPE)).map_err(|e| format!("{name}: {e}"))?;
    let lse_scale = want.lse.iter().filter(|l| l.is_finite()).fold(1.0f64, |m, l| m.max(l.abs()));
    check_lse(&lse, &want.lse, 2e-3 * lse_scale).map_err(|e| format!("{name}: {e}"))?;
    Ok(err)
}

fn property<T: Element>(test: &str, cases: u32) {
    common::run_property(test, cases, case_strategy(), "O", |dev, c| run_case::<T>(dev, c));
}

fn varlen_forward_matches_reference_bf16() {
    property::<bf16>("varlen_forward_matches_reference_bf16", 96);
}

fn varlen_forward_matches_reference_f16() {
    property::<f16>("varlen_forward_matches_reference_f16", 64);
}

fn base(head_dim: usize, lens: &[(usize, usize)]) -> Case {
    Case {
        lens: lens.to_vec(),
        heads_kv: 2,
        group: 4,
        head_dim,
        head_dim_v: head_dim,
        causal: false,
        window: (None, None),
        softcap: None,
        alibi: None,
        sinks: false,
        padded: false,
        kernels: Kernels::Chosen,
        deterministic: false,
        seed: 5,
    }
}

/// Long sequences (several query and key blocks each, beside empty and one-token ones) with every
/// option, on each kernel family and split, at every head dim.
fn long_sequences_every_option_every_head_dim() {
    let Some(dev) = device_or_skip("long_sequences_every_option_every_head_dim") else { return };
    let lens = [(700, 900), (0, 5), (1, 1), (333, 333), (5, 0), (1, 1000)];
    for (d, dv) in HEAD_DIM_PAIRS {
        for kernels in [Kernels::Chosen, Kernels::MmaSync, Kernels::Split(3)] {
            let b = Case { head_dim: d, head_dim_v: dv, kernels, padded: true, ..base(d, &lens) };
            let all = Case {
                causal: true,
                window: (Some(300), None),
                softcap: Some(20.0),
                alibi: Some(true),
                sinks: true,
                ..b.clone()
            };
            for c in [b, all] {
                run_case::<bf16>(dev, &c).unwrap();
                run_case::<f16>(dev, &Case { seed: c.seed + 1, ..c }).unwrap();
            }
        }
    }
}

/// Each sequence of a packed call is bitwise the dense call on that sequence alone with the same kernel
/// row (the same arithmetic in the same order), and repeated packed calls are bitwise equal. One
/// exception: a dense call of one query row whose window cuts keys off, with grouped query heads, runs
/// them as rows over the window's keys only (`flash::pack_query_heads`), so its key blocks start at
/// the window's first key, where the packed call's start at a multiple of the block: the same sums in
/// another grouping, equal up to rounding (LSE within 1e-6 relative, O within 2^-7 of its row's size).
fn each_sequence_is_bitwise_the_dense_call() {
    let Some(dev) = device_or_skip("each_sequence_is_bitwise_the_dense_call") else { return };
    for (d, kernels) in
        [(128, Kernels::Chosen), (128, Kernels::MmaSync), (64, Kernels::Chosen), (256, Kernels::MmaSync)]
    {
        let c = Case {
            causal: true,
            window: (Some(200), None),
            softcap: Some(10.0),
            sinks: true,
            kernels,
            ..base(d, &[(300, 500), (129, 129), (0, 3), (64, 1), (1, 700)])
        };
        let x = inputs::<bf16>(&c);
        let (o, lse) = gpu_varlen(dev, &c, &x).unwrap();
        let (o2, lse2) = gpu_varlen(dev, &c, &x).unwrap();
        assert!(o.data == o2.data && lse.iter().map(|l| l.to_bits()).eq(lse2.iter().map(|l| l.to_bits())));
        let hq = c.heads_kv * c.group;
        let tq = x.q.shape()[1];
        let sinks = dev.stream().clone_htod(&x.sinks).unwrap();
        let opts = options(&c, x.scale, PerHead::Host(&[]), PerHead::Device(&sinks));
        let tile = match kernels {
            Kernels::MmaSync => *mma_sync_tile(&c),
            _ => gpu::forward_tile(dev.info(), (d, d), DType::BF16, true).unwrap(),
        };
        for (b, &(lq, lk)) in c.lens.iter().enumerate() {
            if lq == 0 || lk == 0 {
                continue;
            }
            let (q0, k0) = (x.cu_q[b] as usize, x.cu_k[b] as usize);
            let slice = |t: &HostTensor<bf16>, from: usize, n: usize| {
                let [_, _, h, dim] = t.shape();
                let mut out = HostTensor::filled([1, n, h, dim], bf16::ZERO);
                for s in 0..n {
                    for hh in 0..h {
                        for e in 0..dim {
                            out.set(0, s, hh, e, t.get(0, from + s, hh, e));
                        }
                    }
                }
                dev.upload(&out).unwrap()
            };
            let (q, k, v) = (slice(&x.q, q0, lq), slice(&x.k, k0, lk), slice(&x.v, k0, lk));
            let mut od = dev.poisoned::<bf16>([1, lq, hq, d]).unwrap();
            let mut lsed = dev.poisoned_f32(hq * lq).unwrap();
            gpu::flash_forward_with_splits(dev, &q, &k, &v, &mut od, &mut lsed, &opts, Some(&tile), 1).unwrap();
            let (od, lsed) = (dev.download(&od).unwrap(), dev.download_f32(&lsed).unwrap());
            let window_cut = c.window.0.is_some_and(|left| lk > left + 1);
            let regrouped = lq == 1 && c.group > 1 && window_cut;
            for h in 0..hq {
                for i in 0..lq {
                    let at = || format!("d {d} {kernels:?} seq {b} head {h} row {i}");
                    let (packed, dense) = (lse[h * tq + q0 + i], lsed[h * lq + i]);
                    if regrouped {
                        assert!((packed - dense).abs() <= 1e-6 * packed.abs().max(1.0), "{}: {packed} {dense}", at());
                    } else {
                        assert_eq!(packed.to_bits(), dense.to_bits(), "{}", at());
                    }
                    // P is rounded to bf16 against another running max there: within 2^-7 of the row's
                    // largest |O| (a wrong key range moves O by its own size).
                    let row_max = (0..d).map(|e| o.get(0, q0 + i, h, e).to_f32().abs()).fold(0.0, f32::max);
                    for e in 0..d {
                        let (packed, dense) = (o.get(0, q0 + i, h, e), od.get(0, i, h, e));
                        if regrouped {
                            let (p, q) = (packed.to_f32(), dense.to_f32());
                            assert!((p - q).abs() <= row_max / 128.0, "{} col {e}: {p} {q} (row max {row_max})", at());
                        } else {
                            assert_eq!(packed, dense, "{} col {e}", at());
                        }
                    }
                }
            }
        }
    }
}

/// Non-finite values in one sequence never reach another: a sequence's last query and key blocks run
/// on into the next sequence's rows (the TMA rows' boxes read them; the `cp.async` rows stop at the
/// sequence's end), where a masked score's zero times an infinite or NaN value would not be zero. With
/// the middle sequence's Q, K and V full of infinities and NaNs, the other sequences' O and LSE are
/// bitwise those of the clean call, at every head dim, causal or not.
fn other_sequences_values_never_leak() {
    let Some(dev) = device_or_skip("other_sequences_values_never_leak") else { return };
    for (d, dv) in HEAD_DIM_PAIRS {
        for causal in [false, true] {
            let c = Case { head_dim: d, head_dim_v: dv, causal, ..base(d, &[(300, 500), (200, 300), (77, 130)]) };
            assert_middle_sequence_stays_inside(dev, &c, None);
        }
    }
}

/// Every Hopper forward row forced on a packed batch (the chooser takes only some of them for packed
/// calls, e.g. not the head-dim-64 TMA row): against the reference with plain, causal and softcapped
/// ALiBi calls, in both element types; on the TMA rows, whose boxes run into the next sequence's rows,
/// a middle sequence of NaN and infinities leaves the others' O and LSE bitwise as they were.
fn packed_forward_every_hopper_row() {
    let Some(dev) = device_or_skip("packed_forward_every_hopper_row") else { return };
    if !dev.info().runs_wgmma() {
        println!("packed_forward_every_hopper_row: needs compute capability 9.0, skipped on {}", dev.info().name);
        return;
    }
    let lens = [(150, 170), (37, 90), (0, 3), (81, 81), (200, 330), (129, 1)];
    for tile in tiles::FWD_TILES.iter().filter(|t| t.wgmma) {
        let tile_base = || Case { head_dim_v: tile.head_dim_v, ..base(tile.head_dim, &lens) };
        let cases = [
            tile_base(),
            Case { causal: true, seed: 6, ..tile_base() },
            Case { softcap: Some(30.0), alibi: Some(true), seed: 7, ..tile_base() },
        ];
        let mut worst = 0f64;
        for c in &cases {
            worst = worst.max(run_case_tile::<bf16>(dev, c, Some(tile)).unwrap());
            worst = worst.max(run_case_tile::<f16>(dev, c, Some(tile)).unwrap());
        }
        println!("packed_forward_every_hopper_row {}: worst O {worst:.2e}", tile.symbols[0]);
        if !tile.tma {
            continue;
        }
        for c in &cases {
            assert_middle_sequence_stays_inside(dev, c, Some(tile));
        }
    }
}

/// With sequence 1's Q, K and V full of NaN and infinities, every other sequence's O and LSE are bitwise
/// those of the clean call (on the forward row `tile` where given).
fn assert_middle_sequence_stays_inside(dev: &Device, c: &Case, tile: Option<&FwdTile>) {
    let clean = inputs::<bf16>(c);
    let mut dirty = clean.clone();
    let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    for (t, from, to) in [
        (&mut dirty.q, clean.cu_q[1], clean.cu_q[2]),
        (&mut dirty.k, clean.cu_k[1], clean.cu_k[2]),
        (&mut dirty.v, clean.cu_k[1], clean.cu_k[2]),
    ] {
        let [_, _, heads, dim] = t.shape();
        for s in from as usize..to as usize {
            for h in 0..heads {
                for e in 0..dim {
                    t.set(0, s, h, e, bf16::from_f32(bad[(s + h + e) % 3]));
                }
            }
        }
    }
    let (o, lse) = gpu_varlen_tile(dev, c, &clean, tile).unwrap();
    let (o_dirty, lse_dirty) = gpu_varlen_tile(dev, c, &dirty, tile).unwrap();
    let [_, tq, hq, _] = clean.q.shape();
    let row = tile.map_or("chosen", |t| t.symbols[0]);
    for b in (0..c.lens.len()).filter(|&b| b != 1) {
        for i in clean.cu_q[b] as usize..clean.cu_q[b + 1] as usize {
            for h in 0..hq {
                let at = || format!("{row} {c:?} token {i} head {h}");
                assert_eq!(lse[h * tq + i].to_bits(), lse_dirty[h * tq + i].to_bits(), "{}", at());
                for e in 0..c.head_dim_v {
                    let (want, got) = (o.get(0, i, h, e), o_dirty.get(0, i, h, e));
                    assert!(got.to_f32().is_finite() && got == want, "{} col {e}: {got} {want}", at());
                }
            }
        }
    }
}

/// Bad packed input: typed errors naming the argument, no launch.
fn bad_varlen_input_gives_typed_errors() {
    let Some(dev) = device_or_skip("bad_varlen_input_gives_typed_errors") else { return };
    let up = |shape| dev.upload(&HostTensor::<bf16>::random_seeded(shape, 1.0, 3)).unwrap();
    let (q, k, v) = (up([1, 10, 4, 64]), up([1, 12, 2, 64]), up([1, 12, 2, 64]));
    let opts = AttnOptions::default();
    let good = dev.upload_varlen(&Varlen { cu_seqlens_q: &[0, 4, 10], cu_seqlens_k: &[0, 6, 12] }, 10, 12).unwrap();
    assert_eq!((good.max_seqlen_q, good.max_seqlen_k), (6, 6));
    gpu::flash_forward_varlen(dev, &q, &k, &v, &good.view(), &opts).unwrap();

    let bad_upload = dev.upload_varlen(&Varlen { cu_seqlens_q: &[0, 6, 4, 10], cu_seqlens_k: &[0, 2, 6, 12] }, 10, 12);
    assert!(matches!(bad_upload, Err(Error::BadSeqlenOffsets { arg: Arg::CuSeqlensQ, .. })), "{bad_upload:?}");
    let short = dev.upload_varlen(&Varlen { cu_seqlens_q: &[0, 4], cu_seqlens_k: &[0, 12] }, 10, 12);
    assert!(matches!(short, Err(Error::BadSeqlenOffsets { arg: Arg::CuSeqlensQ, .. })), "{short:?}");

    let batched = up([2, 5, 4, 64]);
    let e = gpu::flash_forward_varlen(dev, &batched, &k, &v, &good.view(), &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::Q, what: "batch", .. }), "{e:?}");

    let three = dev.stream().clone_htod(&[0i32, 2, 6, 12]).unwrap();
    let mismatched = DeviceVarlen { cu_seqlens_k: &three, ..good.view() };
    let e = gpu::flash_forward_varlen(dev, &q, &k, &v, &mismatched, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::CuSeqlensK, what: "length", .. }), "{e:?}");

    let one = dev.stream().clone_htod(&[0i32]).unwrap();
    let lonely = DeviceVarlen { cu_seqlens_q: &one, cu_seqlens_k: &one, ..good.view() };
    let e = gpu::flash_forward_varlen(dev, &q, &k, &v, &lonely, &opts).unwrap_err();
    assert!(matches!(e, Error::BadSeqlenOffsets { arg: Arg::CuSeqlensQ, .. }), "{e:?}");

    let too_long = DeviceVarlen { max_seqlen_k: 13, ..good.view() };
    let e = gpu::flash_forward_varlen(dev, &q, &k, &v, &too_long, &opts).unwrap_err();
    assert!(matches!(e, Error::BadSeqlenOffsets { arg: Arg::CuSeqlensK, .. }), "{e:?}");

    let slopes = dev.stream().clone_htod(&[0.5f32; 3]).unwrap();
    let alibi = AttnOptions::default().with_alibi(PerHead::Device(&slopes));
    let e = gpu::flash_forward_varlen(dev, &q, &k, &v, &good.view(), &alibi).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::AlibiSlopes, .. }), "{e:?}");
    // One slope row per sequence is fine.
    let per_seq = dev.stream().clone_htod(&[0.5f32; 8]).unwrap();
    let alibi = AttnOptions::default().with_alibi(PerHead::Device(&per_seq));
    gpu::flash_forward_varlen(dev, &q, &k, &v, &good.view(), &alibi).unwrap();

    let mut o = dev.poisoned::<bf16>([1, 10, 4, 64]).unwrap();
    let mut short_lse = dev.poisoned_f32(39).unwrap();
    let e = gpu::flash_forward_varlen_into(dev, &q, &k, &v, &good.view(), &mut o, &mut short_lse, &opts).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { arg: Arg::Lse, .. } | Error::BufferTooSmall { arg: Arg::Lse, .. }),
        "{e:?}"
    );
}

/// Offsets the host cannot check (device data) that run past the tensors, and maxima below the
/// sequences' lengths: clamped by the kernels, so the forward and the backward (fast and deterministic:
/// no wait for a turn that never comes) complete (compute-sanitizer's memcheck sample includes this
/// test).
fn offsets_past_the_tensors_stay_inside() {
    let Some(dev) = device_or_skip("offsets_past_the_tensors_stay_inside") else { return };
    let up = |shape| dev.upload(&HostTensor::<bf16>::random_seeded(shape, 1.0, 4)).unwrap();
    let (q, k, v) = (up([1, 130, 4, 128]), up([1, 200, 2, 128]), up([1, 200, 2, 128]));
    let cu_q = dev.stream().clone_htod(&[0i32, 100, 1000, -7]).unwrap();
    let cu_k = dev.stream().clone_htod(&[0i32, 150, 5000, 3]).unwrap();
    let seqs = DeviceVarlen { cu_seqlens_q: &cu_q, cu_seqlens_k: &cu_k, max_seqlen_q: 130, max_seqlen_k: 200 };
    let d_o = up([1, 130, 4, 128]);
    for (causal, deterministic) in [(false, false), (true, false), (true, true)] {
        let opts = AttnOptions { causal, deterministic, ..AttnOptions::default() };
        let out = gpu::flash_forward_varlen(dev, &q, &k, &v, &seqs, &opts).unwrap();
        gpu::flash_backward_varlen(dev, &q, &k, &v, &out.o, &out.lse, &d_o, &seqs, &opts).unwrap();
    }
    // Maxima below the sequences' lengths: the longer sequences are cut to them.
    let short = DeviceVarlen { max_seqlen_q: 70, max_seqlen_k: 90, ..seqs };
    let opts = AttnOptions { causal: true, deterministic: true, ..AttnOptions::default() };
    let out = gpu::flash_forward_varlen(dev, &q, &k, &v, &short, &opts).unwrap();
    gpu::flash_backward_varlen(dev, &q, &k, &v, &out.o, &out.lse, &d_o, &short, &opts).unwrap();
    dev.stream().synchronize().unwrap();
}

fn mma_sync_bwd_tile(c: &Case) -> &'static BwdTile {
    let dims = (c.head_dim, c.head_dim_v);
    tiles_bwd::BWD_TILES.iter().find(|t| (t.head_dim, t.head_dim_v) == dims && !t.wgmma).unwrap()
}

/// Gradients downloaded: dQ, dK, dV (contiguous) and the sinks' gradient.
struct Grads<T> {
    dq: HostTensor<T>,
    dk: HostTensor<T>,
    dv: HostTensor<T>,
    d_sinks: Option<Vec<f32>>,
}

/// The packed backward of a case on the given O and LSE, into poisoned gradients: the `mma.sync` row
/// forced for `Kernels::MmaSync`, else the chosen one.
fn gpu_backward<T: Element>(
    dev: &Device,
    c: &Case,
    x: &Inputs<T>,
    o: &HostTensor<T>,
    lse: &[f32],
) -> Result<Grads<T>, Error> {
    gpu_backward_tile(dev, c, x, o, lse, forced_bwd_tile(c))
}

/// The backward row a case forces: the `mma.sync` one for `Kernels::MmaSync`, else none.
fn forced_bwd_tile(c: &Case) -> Option<&'static BwdTile> {
    match c.kernels {
        Kernels::MmaSync => Some(mma_sync_bwd_tile(c)),
        _ => None,
    }
}

/// As [`gpu_backward`], on `tile` where given, else the chosen row.
fn gpu_backward_tile<T: Element>(
    dev: &Device,
    c: &Case,
    x: &Inputs<T>,
    o: &HostTensor<T>,
    lse: &[f32],
    tile: Option<&BwdTile>,
) -> Result<Grads<T>, Error> {
    let slopes = dev.stream().clone_htod(&x.slopes).unwrap();
    let sinks = dev.stream().clone_htod(&x.sinks).unwrap();
    let opts = options(c, x.scale, PerHead::Device(&slopes), PerHead::Device(&sinks));
    let (q, k, v) = (dev.upload(&x.q)?, dev.upload(&x.k)?, dev.upload(&x.v)?);
    let (o, d_o) = (dev.upload(o)?, dev.upload(&x.d_o)?);
    let lse = dev.stream().clone_htod(lse).unwrap();
    let seqs = Varlen { cu_seqlens_q: &x.cu_q, cu_seqlens_k: &x.cu_k };
    let offsets = dev.upload_varlen(&seqs, x.q.shape()[1], x.k.shape()[1])?;
    let mut grads = GpuGradients {
        dq: dev.poisoned::<T>(x.q.shape())?,
        dk: dev.poisoned::<T>(x.k.shape())?,
        dv: dev.poisoned::<T>(x.v.shape())?,
        d_sinks: if c.sinks { Some(dev.poisoned_f32(x.sinks.len())?) } else { None },
    };
    let view = offsets.view();
    match tile {
        Some(t) => gpu::flash_backward_varlen_with_tile(dev, &q, &k, &v, &o, &lse, &d_o, &view, &mut grads, &opts, t),
        None => gpu::flash_backward_varlen_into(dev, &q, &k, &v, &o, &lse, &d_o, &view, &mut grads, &opts),
    }?;
    Ok(Grads {
        dq: dev.download(&grads.dq)?,
        dk: dev.download(&grads.dk)?,
        dv: dev.download(&grads.dv)?,
        d_sinks: grads.d_sinks.as_ref().map(|s| dev.download_f32(s)).transpose()?,
    })
}

/// Per query head, `Σ_i exp(sink − LSE_i)·‖dO_i‖·‖O_i‖` over its query tokens: the size of the terms the
/// sinks' gradient sums (each |delta| is at most ‖dO‖·‖O‖).
fn d_sinks_scale<T: Element>(x: &Inputs<T>, o: &HostTensor<T>, lse: &[f32]) -> Vec<f64> {
    let [_, tq, hq, dv] = o.shape();
    let norm = |t: &HostTensor<T>, i, h| (0..dv).map(|e| t.get(0, i, h, e).to_f64().powi(2)).sum::<f64>().sqrt();
    (0..hq)
        .map(|h| {
            (0..tq)
                .map(|i| (x.sinks[h] as f64 - lse[h * tq + i] as f64).exp() * norm(o, i, h) * norm(&x.d_o, i, h))
                .sum()
        })
        .collect()
}

/// Gradient bounds (relative L2; see the module docs).
fn grad_bounds(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2e-3,
        _ => 1.5e-2,
    }
}

/// A training step of one case (the packed forward, then the packed backward on its O and LSE) against
/// the exact gradients given that O; the worst gradient error.
fn run_backward_case<T: Element>(dev: &Device, c: &Case) -> Result<f64, String> {
    run_backward_case_tile::<T>(dev, c, forced_bwd_tile(c))
}

/// As [`run_backward_case`], the backward on `tile` where given.
fn run_backward_case_tile<T: Element>(dev: &Device, c: &Case, tile: Option<&BwdTile>) -> Result<f64, String> {
    let name = format!("{} {c:?}", T::DTYPE);
    let x = inputs::<T>(c);
    let seqs = Varlen { cu_seqlens_q: &x.cu_q, cu_seqlens_k: &x.cu_k };
    let host_opts = options(c, x.scale, PerHead::Host(&x.slopes), PerHead::Host(&x.sinks));
    let (o, lse) = gpu_varlen(dev, c, &x).map_err(|e| format!("{name}: forward: {e}"))?;
    let want = reference_backward_varlen(&x.q, &x.k, &x.v, &o, &x.d_o, &seqs, &host_opts).map_err(|e| e.to_string())?;
    let got = gpu_backward_tile(dev, c, &x, &o, &lse, tile).map_err(|e| format!("{name}: {e}"))?;
    let tol = grad_bounds(T::DTYPE);
    let (keys, queries) = (c.lens.iter().map(|l| l.1).max().unwrap(), c.lens.iter().map(|l| l.0).max().unwrap());
    let mut worst = 0.0f64;
    let mut report = Vec::new();
    for (g, t, w, terms) in [
        ("dq", &got.dq, &want.dq, keys),
        ("dk", &got.dk, &want.dk, queries * c.group),
        ("dv", &got.dv, &want.dv, queries * c.group),
    ] {
        let e = grad_error_summed(&t.to_f64_contiguous(), w, terms);
        report.push(format!("{g} {e:.2e}"));
        if e.is_nan() || e >= tol {
            return Err(format!("{name}: {g} error {e:.3e} > {tol} [{}]", report.join(", ")));
        }
        worst = worst.max(e);
    }
    if let (Some(got), Some(want)) = (&got.d_sinks, &want.d_sinks) {
        let scale = d_sinks_scale(&x, &o, &lse);
        let e = got
            .iter()
            .zip(want)
            .zip(&scale)
            .map(|((&g, w), s)| if g.is_nan() { f64::NAN } else { (g as f64 - w).abs() / s.max(1e-30) })
            .fold(0.0, f64::max);
        report.push(format!("d_sinks {e:.2e}"));
        if e.is_nan() || e >= tol {
            return Err(format!("{name}: d_sinks error {e:.3e} > {tol}: {got:?} vs {want:?}"));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

fn backward_property<T: Element>(test: &str, cases: u32) {
    common::run_property(test, cases, case_strategy(), "gradient", |dev, c| run_backward_case::<T>(dev, c));
}

fn varlen_backward_matches_reference_bf16() {
    backward_property::<bf16>("varlen_backward_matches_reference_bf16", 64);
}

fn varlen_backward_matches_reference_f16() {
    backward_property::<f16>("varlen_backward_matches_reference_f16", 48);
}

/// The backward of long sequences beside empty and one-token ones, with every option, on both kernel
/// families, fast and deterministic, at every head dim.
fn backward_long_sequences_every_option_every_head_dim() {
    let Some(dev) = device_or_skip("backward_long_sequences_every_option_every_head_dim") else { return };
    let lens = [(700, 900), (0, 5), (1, 1), (333, 333), (5, 0), (1, 1000)];
    for (d, dv) in HEAD_DIM_PAIRS {
        for (kernels, deterministic) in [(Kernels::Chosen, false), (Kernels::MmaSync, true)] {
            let b = Case { head_dim: d, head_dim_v: dv, kernels, deterministic, padded: true, ..base(d, &lens) };
            let all = Case {
                causal: true,
                window: (Some(300), None),
                softcap: Some(20.0),
                alibi: Some(true),
                sinks: true,
                ..b.clone()
            };
            for c in [b, all] {
                run_backward_case::<bf16>(dev, &c).unwrap();
                run_backward_case::<f16>(dev, &Case { seed: c.seed + 1, ..c }).unwrap();
            }
        }
    }
}

/// Every Hopper backward row on packed batches, forced (the chooser takes the TMA rows), fast and
/// deterministic, against the reference, with sequences whose last query block ends inside the next
/// sequence's rows. Then, on each TMA row (whose last box of a sequence reads those rows), a sequence's
/// gradients are bitwise the same when every later sequence's Q and dO rows hold NaN (in deterministic
/// mode: the fast mode adds a query block's dQ parts in a run-dependent order, which changes the
/// rounding once three or more key blocks reach it).
fn packed_backward_every_hopper_row() {
    let Some(dev) = device_or_skip("packed_backward_every_hopper_row") else { return };
    if !dev.info().runs_wgmma() {
        println!("packed_backward_every_hopper_row: needs compute capability 9.0, skipped on {}", dev.info().name);
        return;
    }
    let lens = [(150, 170), (37, 90), (0, 3), (81, 81), (200, 130)];
    for tile in tiles_bwd::BWD_TILES.iter().filter(|t| t.wgmma) {
        let d = tile.head_dim;
        let tile_base = |lens: &[(usize, usize)]| Case { head_dim_v: tile.head_dim_v, ..base(d, lens) };
        for deterministic in [false, true] {
            let c = Case { causal: true, deterministic, ..tile_base(&lens) };
            let e = run_backward_case_tile::<bf16>(dev, &c, Some(tile)).unwrap();
            println!("packed_backward_every_hopper_row {} deterministic {deterministic}: {e:.2e}", tile.symbols[0]);
        }
        if !tile.tma {
            continue;
        }
        let c = Case { seed: 9, deterministic: true, ..tile_base(&lens) };
        let x = inputs::<bf16>(&c);
        let (o, lse) = gpu_varlen(dev, &c, &x).unwrap();
        let clean = gpu_backward_tile(dev, &c, &x, &o, &lse, Some(tile)).unwrap();
        let mut poisoned = x.clone();
        let [_, tq, hq, dim] = x.q.shape();
        let first = lens[0].0;
        for i in first..tq {
            for h in 0..hq {
                for e in 0..dim {
                    poisoned.q.set(0, i, h, e, bf16::NAN);
                }
                for e in 0..tile.head_dim_v {
                    poisoned.d_o.set(0, i, h, e, bf16::NAN);
                }
            }
        }
        let got = gpu_backward_tile(dev, &c, &poisoned, &o, &lse, Some(tile)).unwrap();
        let bits = |t: &HostTensor<bf16>, rows: usize| {
            (0..rows)
                .flat_map(|i| (0..t.shape()[2]).flat_map(move |h| (0..t.shape()[3]).map(move |e| (i, h, e))))
                .map(|(i, h, e)| t.get(0, i, h, e).to_bits())
                .collect::<Vec<_>>()
        };
        assert!(bits(&got.dq, first) == bits(&clean.dq, first), "{}: dq of sequence 0", tile.symbols[0]);
        assert!(bits(&got.dk, lens[0].1) == bits(&clean.dk, lens[0].1), "{}: dk of sequence 0", tile.symbols[0]);
        assert!(bits(&got.dv, lens[0].1) == bits(&clean.dv, lens[0].1), "{}: dv of sequence 0", tile.symbols[0]);
    }
}

/// `rows` consecutive tokens of a `[1, tokens, heads, dim]` tensor from token `from`, as a contiguous
/// host tensor.
fn token_rows<T: Element>(t: &HostTensor<T>, from: usize, rows: usize) -> HostTensor<T> {
    let [_, _, h, dim] = t.shape();
    let mut out = HostTensor::filled([1, rows, h, dim], T::from_f32(0.0));
    for s in 0..rows {
        for hh in 0..h {
            for e in 0..dim {
                out.set(0, s, hh, e, t.get(0, from + s, hh, e));
            }
        }
    }
    out
}

/// Deterministic mode: each sequence's gradients are bitwise the dense deterministic backward's on that
/// sequence alone with the same kernel row (the same products, the dQ parts added in the same key-block
/// order), the rows of empty sequences are zero, and repeated calls are bitwise equal.
fn deterministic_backward_is_bitwise_the_dense_call() {
    let Some(dev) = device_or_skip("deterministic_backward_is_bitwise_the_dense_call") else { return };
    let rows = [(128, Kernels::Chosen), (128, Kernels::MmaSync), (64, Kernels::Chosen), (96, Kernels::Chosen)];
    for (d, kernels) in rows.into_iter().chain([(256, Kernels::MmaSync)]) {
        let c = Case {
            causal: true,
            window: (Some(200), None),
            softcap: Some(10.0),
            alibi: Some(false),
            sinks: true,
            kernels,
            deterministic: true,
            ..base(d, &[(300, 500), (129, 129), (0, 3), (64, 1), (1, 700), (40, 0)])
        };
        let x = inputs::<bf16>(&c);
        let (o, lse) = gpu_varlen(dev, &c, &x).unwrap();
        let g = gpu_backward(dev, &c, &x, &o, &lse).unwrap();
        let again = gpu_backward(dev, &c, &x, &o, &lse).unwrap();
        assert!(g.dq.data == again.dq.data && g.dk.data == again.dk.data && g.dv.data == again.dv.data);
        let hq = c.heads_kv * c.group;
        let tq = x.q.shape()[1];
        let slopes = dev.stream().clone_htod(&x.slopes).unwrap();
        let sinks = dev.stream().clone_htod(&x.sinks).unwrap();
        let opts = options(&c, x.scale, PerHead::Device(&slopes), PerHead::Device(&sinks));
        let tile = match kernels {
            Kernels::MmaSync => *mma_sync_bwd_tile(&c),
            _ => gpu::backward_tile(dev.info(), (d, d), DType::BF16).unwrap(),
        };
        for (b, &(lq, lk)) in c.lens.iter().enumerate() {
            let (q0, k0) = (x.cu_q[b] as usize, x.cu_k[b] as usize);
            let rows_equal = |got: &HostTensor<bf16>, first: usize, rows: usize, want: Option<&HostTensor<bf16>>| {
                let [_, _, h, dim] = got.shape();
                for s in 0..rows {
                    for hh in 0..h {
                        for e in 0..dim {
                            let w = want.map_or(bf16::ZERO, |w| w.get(0, s, hh, e));
                            let got = got.get(0, first + s, hh, e);
                            assert_eq!(got.to_bits(), w.to_bits(), "seq {b} row {s} head {hh} col {e}");
                        }
                    }
                }
            };
            if lq == 0 || lk == 0 {
                // Nothing attends: the sequence's dQ rows (no keys) and dK, dV rows (no queries) are 0.
                rows_equal(&g.dq, q0, lq, None);
                rows_equal(&g.dk, k0, lk, None);
                rows_equal(&g.dv, k0, lk, None);
                continue;
            }
            let up = |t: &HostTensor<bf16>, from, n| dev.upload(&token_rows(t, from, n)).unwrap();
            let (q, k, v) = (up(&x.q, q0, lq), up(&x.k, k0, lk), up(&x.v, k0, lk));
            let (od, d_o) = (up(&o, q0, lq), up(&x.d_o, q0, lq));
            let lse_seq: Vec<f32> = (0..hq).flat_map(|h| lse[h * tq + q0..h * tq + q0 + lq].to_vec()).collect();
            let lse_seq = dev.stream().clone_htod(&lse_seq).unwrap();
            let mut dense = GpuGradients {
                dq: dev.poisoned::<bf16>([1, lq, hq, d]).unwrap(),
                dk: dev.poisoned::<bf16>([1, lk, c.heads_kv, d]).unwrap(),
                dv: dev.poisoned::<bf16>([1, lk, c.heads_kv, d]).unwrap(),
                d_sinks: Some(dev.poisoned_f32(hq).unwrap()),
            };
            gpu::flash_backward_with_tile(dev, &q, &k, &v, &od, &lse_seq, &d_o, &mut dense, &opts, &tile).unwrap();
            rows_equal(&g.dq, q0, lq, Some(&dev.download(&dense.dq).unwrap()));
            rows_equal(&g.dk, k0, lk, Some(&dev.download(&dense.dk).unwrap()));
            rows_equal(&g.dv, k0, lk, Some(&dev.download(&dense.dv).unwrap()));
        }
    }
}

/// Bad input to the packed backward: typed errors naming the argument, no launch.
fn bad_varlen_backward_input_gives_typed_errors() {
    let Some(dev) = device_or_skip("bad_varlen_backward_input_gives_typed_errors") else { return };
    let up = |shape| dev.upload(&HostTensor::<bf16>::random_seeded(shape, 1.0, 3)).unwrap();
    let (q, k, v) = (up([1, 10, 4, 64]), up([1, 12, 2, 64]), up([1, 12, 2, 64]));
    let (o, d_o) = (up([1, 10, 4, 64]), up([1, 10, 4, 64]));
    let opts = AttnOptions::default();
    let good = dev.upload_varlen(&Varlen { cu_seqlens_q: &[0, 4, 10], cu_seqlens_k: &[0, 6, 12] }, 10, 12).unwrap();
    let lse = gpu::flash_forward_varlen(dev, &q, &k, &v, &good.view(), &opts).unwrap().lse;
    let view = good.view();
    let backward = |q, k, v, o, lse, d_o, seqs: &DeviceVarlen, opts: &AttnOptions| {
        gpu::flash_backward_varlen(dev, q, k, v, o, lse, d_o, seqs, opts).map(|_| ())
    };
    backward(&q, &k, &v, &o, &lse, &d_o, &view, &opts).unwrap();

    let short_lse = dev.poisoned_f32(39).unwrap();
    let e = backward(&q, &k, &v, &o, &short_lse, &d_o, &view, &opts).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { arg: Arg::Lse, .. } | Error::BufferTooSmall { arg: Arg::Lse, .. }),
        "{e:?}"
    );
    let batched = up([2, 5, 4, 64]);
    let e = backward(&batched, &k, &v, &batched, &lse, &batched, &view, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::Q, what: "batch", .. }), "{e:?}");
    let three = dev.stream().clone_htod(&[0i32, 2, 6, 12]).unwrap();
    let mismatched = DeviceVarlen { cu_seqlens_k: &three, ..view };
    let e = backward(&q, &k, &v, &o, &lse, &d_o, &mismatched, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::CuSeqlensK, what: "length", .. }), "{e:?}");
    let too_long = DeviceVarlen { max_seqlen_q: 11, ..view };
    let e = backward(&q, &k, &v, &o, &lse, &d_o, &too_long, &opts).unwrap_err();
    assert!(matches!(e, Error::BadSeqlenOffsets { arg: Arg::CuSeqlensQ, .. }), "{e:?}");
    let wrong_d_o = up([1, 9, 4, 64]);
    let e = backward(&q, &k, &v, &o, &lse, &wrong_d_o, &view, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::DO, .. }), "{e:?}");
    let slopes = dev.stream().clone_htod(&[0.5f32; 3]).unwrap();
    let alibi = AttnOptions::default().with_alibi(PerHead::Device(&slopes));
    let e = backward(&q, &k, &v, &o, &lse, &d_o, &view, &alibi).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::AlibiSlopes, .. }), "{e:?}");
    let wrong_tile = tiles_bwd::BWD_TILES.iter().find(|t| t.head_dim == 128).unwrap();
    let mut grads = gpu::flash_backward_varlen(dev, &q, &k, &v, &o, &lse, &d_o, &view, &opts).unwrap();
    let e = gpu::flash_backward_varlen_with_tile(dev, &q, &k, &v, &o, &lse, &d_o, &view, &mut grads, &opts, wrong_tile)
        .unwrap_err();
    assert!(matches!(e, Error::NoTileConfig(_)), "{e:?}");
}

fn main() -> std::process::ExitCode {
    common::gpu_main(
        gpu_tests![
            varlen_forward_matches_reference_bf16,
            varlen_forward_matches_reference_f16,
            long_sequences_every_option_every_head_dim,
            each_sequence_is_bitwise_the_dense_call,
            other_sequences_values_never_leak,
            packed_forward_every_hopper_row,
            bad_varlen_input_gives_typed_errors,
            offsets_past_the_tensors_stay_inside,
            varlen_backward_matches_reference_bf16,
            varlen_backward_matches_reference_f16,
            backward_long_sequences_every_option_every_head_dim,
            deterministic_backward_is_bitwise_the_dense_call,
            bad_varlen_backward_input_gives_typed_errors,
            packed_backward_every_hopper_row,
        ],
        &[],
    )
}
