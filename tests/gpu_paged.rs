//! Attention over a paged KV cache on the GPU (`gpu::flash_forward_paged`): random caches (lengths 0 and
//! up, shuffled non-contiguous block tables, page sizes 1, 7, 16, 64 and 256, spare pages), queries
//! 1..N tokens per sequence, new keys and values appended across page boundaries, rotary embeddings
//! (interleaved or not) on the new keys and the queries, crossed with causality, windows, softcap, ALiBi,
//! sinks, GQA up to 32:1, every head dim and both dtypes, split-KV forced or not, against the f64
//! reference (`cpu::reference_forward_paged`) on fresh random inputs, O and LSE poisoned. The cache's
//! pages after the call are bitwise the reference's (the append and its rotation), and no error bit is
//! raised. Bad device data (a page index outside the cache, a length beyond the pages) completes and is
//! reported by `PagedErrors::check`; bad host input is a typed error. Skips with one line without a CUDA
//! driver.
//!
//! Bounds: as `gpu_forward` (O relative L2 bf16 1e-2, f16 5e-3; LSE absolute 2e-3 of its magnitude).

mod common;

use common::{check_lse, check_o, device_or_skip, output_tolerance, HEAD_DIM_PAIRS};
use half::{bf16, f16};
use ironflash::cpu::paged::{reference_forward_paged, KvAppend, PagedKv, Rotary};
use ironflash::gpu::{self, DeviceKvAppend, DevicePagedKv, DeviceRotary, PagedErrors};
use ironflash::{Arg, AttnOptions, Device, Element, Error, HostTensor, PerHead};
use ironflash_kernels::tiles;
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
struct Case {
    /// Cached tokens per sequence.
    lens: Vec<usize>,
    seqlen_q: usize,
    /// New tokens per sequence (0: no append).
    new: usize,
    page_size: usize,
    /// Pages in each table row beyond what the sequence needs.
    spare_pages: usize,
    heads_kv: usize,
    group: usize,
    head_dim: usize,
    head_dim_v: usize,
    causal: bool,
    window: (Option<usize>, Option<usize>),
    softcap: Option<f32>,
    alibi: Option<bool>,
    sinks: bool,
    /// Some((rotary_dim, interleaved)).
    rotary: Option<(usize, bool)>,
    splits: Option<usize>,
    /// A forced row (`None`: the chooser's).
    tile: Option<tiles::FwdTile>,
    seed: u64,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let lens = prop::collection::vec(prop_oneof![1 => Just(0usize), 3 => 1usize..=80, 2 => 100usize..=400], 1..=4);
    let seqlen_q = prop_oneof![3 => Just(1usize), 2 => 2usize..=40];
    let new = prop_oneof![2 => Just(0usize), 2 => Just(1usize), 1 => 2usize..=17];
    let window = prop_oneof![
        3 => Just((None, None)),
        1 => (0usize..60).prop_map(|l| (Some(l), None)),
        1 => (0usize..200, 0usize..20).prop_map(|(l, r)| (Some(l), Some(r))),
    ];
    let rotary = prop::option::weighted(0.4, (prop::sample::select(vec![0.5f64, 1.0]), any::<bool>()));
    (
        (lens, seqlen_q, new, prop::sample::select(vec![1usize, 7, 16, 64, 256]), 0usize..=2),
        (1usize..=2, prop::sample::select(vec![1usize, 2, 4, 8, 32]), prop::sample::select(HEAD_DIM_PAIRS.to_vec())),
        (any::<bool>(), window, prop::option::weighted(0.3, prop::sample::select(vec![5.0f32, 30.0]))),
        (prop::option::weighted(0.3, any::<bool>()), prop::bool::weighted(0.3), rotary),
        (prop::option::weighted(0.3, 2usize..=5), any::<u64>()),
    )
        .prop_map(
            |(
                (lens, seqlen_q, new, page_size, spare_pages),
                (heads_kv, group, (head_dim, head_dim_v)),
                (causal, window, softcap),
                (alibi, sinks, rotary),
                (splits, seed),
            )| {
                // Rotary over half or all of the head dim, in pairs.
                let rotary = rotary.map(|(share, inter)| (((head_dim as f64 * share) as usize) & !1, inter));
                Case {
                    lens,
                    seqlen_q,
                    new,
                    page_size,
                    spare_pages,
                    heads_kv,
                    group,
                    head_dim,
                    head_dim_v,
                    causal,
                    window,
                    softcap,
                    alibi,
                    sinks,
                    rotary,
                    splits,
                    tile: None,
                    seed,
                }
            },
        )
}

struct Inputs<T> {
    q: HostTensor<T>,
    k_pages: HostTensor<T>,
    v_pages: HostTensor<T>,
    table: Vec<i32>,
    lens: Vec<i32>,
    k_new: Option<HostTensor<T>>,
    v_new: Option<HostTensor<T>>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    scale: f32,
    slopes: Vec<f32>,
    sinks: Vec<f32>,
}

fn inputs<T: Element>(c: &Case) -> Inputs<T> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
    let batch = c.lens.len();
    let longest = c.lens.iter().max().unwrap() + c.new;
    let pages_per_seq = longest.div_ceil(c.page_size).max(1) + c.spare_pages;
    let num_pages = batch * pages_per_seq + 3;
    // A shuffled table over all pages: non-contiguous, spare pages unused.
    let mut pages: Vec<i32> = (0..num_pages as i32).collect();
    pages.shuffle(&mut rng);
    let table = pages[..batch * pages_per_seq].to_vec();
    let hq = c.heads_kv * c.group;
    let q = HostTensor::<T>::random([batch, c.seqlen_q, hq, c.head_dim], 1.0, &mut rng);
    let k_pages = HostTensor::<T>::random([num_pages, c.page_size, c.heads_kv, c.head_dim], 1.0, &mut rng);
    let v_pages = HostTensor::<T>::random([num_pages, c.page_size, c.heads_kv, c.head_dim_v], 1.0, &mut rng);
    let (k_new, v_new) = if c.new > 0 {
        (
            Some(HostTensor::<T>::random([batch, c.new, c.heads_kv, c.head_dim], 1.0, &mut rng)),
            Some(HostTensor::<T>::random([batch, c.new, c.heads_kv, c.head_dim_v], 1.0, &mut rng)),
        )
    } else {
        (None, None)
    };
    let half = c.rotary.map_or(1, |r| r.0 / 2).max(1);
    let positions = longest + c.seqlen_q + 1;
    let angle: Vec<f64> =
        (0..positions * half).map(|i| (i / half) as f64 * 10000f64.powf(-((i % half) as f64) / half as f64)).collect();
    let cos = angle.iter().map(|a| a.cos() as f32).collect();
    let sin = angle.iter().map(|a| a.sin() as f32).collect();
    let scale = rng.random_range(1.0..3.0) / (c.head_dim as f32).sqrt();
    let n_slopes = if c.alibi == Some(true) { batch * hq } else { hq };
    let slopes = (0..n_slopes).map(|_| 2f32.powf(-rng.random_range(0.0..8.0))).collect();
    let sinks = (0..hq).map(|_| rng.random_range(-3.0..3.0)).collect();
    let lens = c.lens.iter().map(|&l| l as i32).collect();
    Inputs { q, k_pages, v_pages, table, lens, k_new, v_new, cos, sin, scale, slopes, sinks }
}

fn options<'a>(c: &Case, scale: f32, slopes: PerHead<'a>, sinks: PerHead<'a>) -> AttnOptions<'a> {
    let mut o = AttnOptions { causal: c.causal, softmax_scale: Some(scale), ..AttnOptions::default() }
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

/// What a GPU call left: O, the LSE and the cache's pages.
struct Outcome<T> {
    o: HostTensor<T>,
    lse: Vec<f32>,
    k_pages: HostTensor<T>,
    v_pages: HostTensor<T>,
}

fn gpu_paged<T: Element>(dev: &Device, c: &Case, x: &Inputs<T>) -> Result<Outcome<T>, Error> {
    let up_f32 = |v: &[f32]| dev.stream().clone_htod(v).unwrap();
    let (slopes, sinks) = (up_f32(&x.slopes), up_f32(&x.sinks));
    let opts = options(c, x.scale, PerHead::Device(&slopes), PerHead::Device(&sinks));
    let q = dev.upload(&x.q)?;
    let (mut k_pages, mut v_pages) = (dev.upload(&x.k_pages)?, dev.upload(&x.v_pages)?);
    let table = dev.stream().clone_htod(&x.table).unwrap();
    let lens = dev.stream().clone_htod(&x.lens).unwrap();
    let mut errors = PagedErrors::new(dev)?;
    let new = match (&x.k_new, &x.v_new) {
        (Some(k), Some(v)) => Some((dev.upload(k)?, dev.upload(v)?)),
        _ => None,
    };
    let (cos, sin) = (up_f32(&x.cos), up_f32(&x.sin));
    let rotary =
        c.rotary.map(|(rotary_dim, interleaved)| DeviceRotary { cos: &cos, sin: &sin, rotary_dim, interleaved });
    let [b, sq, hq, _] = x.q.shape();
    let mut o = dev.poisoned::<T>([b, sq, hq, c.head_dim_v])?;
    let mut lse = dev.poisoned_f32(b * hq * sq)?;
    let mut cache = DevicePagedKv {
        k_pages: &mut k_pages,
        v_pages: &mut v_pages,
        block_table: &table,
        cache_seqlens: &lens,
        errors: &mut errors,
    };
    let append = new.as_ref().map(|(k, v)| DeviceKvAppend { k, v });
    let tile = c.tile.as_ref();
    gpu::flash_forward_paged_into(dev, &q, &mut cache, append, rotary, &mut o, &mut lse, &opts, tile, c.splits)?;
    errors.check(dev)?;
    Ok(Outcome {
        o: dev.download(&o)?,
        lse: dev.download_f32(&lse)?,
        k_pages: dev.download(&k_pages)?,
        v_pages: dev.download(&v_pages)?,
    })
}

fn run_case<T: Element>(dev: &Device, c: &Case) -> Result<f64, String> {
    let name = format!("{} {c:?}", T::DTYPE);
    let x = inputs::<T>(c);
    let host_opts = options(c, x.scale, PerHead::Host(&x.slopes), PerHead::Host(&x.sinks));
    let (mut k_pages, mut v_pages) = (x.k_pages.clone(), x.v_pages.clone());
    let cache = PagedKv { k_pages: &mut k_pages, v_pages: &mut v_pages, block_table: &x.table, cache_seqlens: &x.lens };
    let append = match (&x.k_new, &x.v_new) {
        (Some(k), Some(v)) => Some(KvAppend { k, v }),
        _ => None,
    };
    let rotary = c.rotary.map(|(rotary_dim, interleaved)| Rotary { cos: &x.cos, sin: &x.sin, rotary_dim, interleaved });
    let want = reference_forward_paged(&x.q, cache, append, rotary, &host_opts).map_err(|e| e.to_string())?;
    let got = gpu_paged(dev, c, &x).map_err(|e| format!("{name}: {e}"))?;
    let same = |a: &HostTensor<T>, b: &HostTensor<T>| a.to_f64_contiguous() == b.to_f64_contiguous();
    if !same(&got.k_pages, &k_pages) || !same(&got.v_pages, &v_pages) {
        return Err(format!("{name}: the cache's pages after the append differ from the reference's"));
    }
    let err = check_o(&got.o.to_f64_contiguous(), &want.o, output_tolerance(T::DTYPE));
    let err = err.map_err(|e| format!("{name}: {e}"))?;
    let lse_scale = want.lse.iter().filter(|l| l.is_finite()).fold(1.0f64, |m, l| m.max(l.abs()));
    check_lse(&got.lse, &want.lse, 2e-3 * lse_scale).map_err(|e| format!("{name}: {e}"))?;
    Ok(err)
}

fn property<T: Element>(test: &str, cases: u32) {
    common::run_property(test, cases, case_strategy(), "O", |dev, c| run_case::<T>(dev, c));
}

fn paged_matches_reference_bf16() {
    property::<bf16>("paged_matches_reference_bf16", 96);
}

fn paged_matches_reference_f16() {
    property::<f16>("paged_matches_reference_f16", 64);
}

fn base(head_dim: usize) -> Case {
    Case {
        lens: vec![700, 0, 1, 333, 129],
        seqlen_q: 1,
        new: 0,
        page_size: 16,
        spare_pages: 1,
        heads_kv: 2,
        group: 4,
        head_dim,
        head_dim_v: head_dim,
        causal: true,
        window: (None, None),
        softcap: None,
        alibi: None,
        sinks: false,
        rotary: None,
        splits: None,
        tile: None,
        seed: 11,
    }
}

/// A chunked prefill of 37 queries over `plain`'s caches with 9 new tokens, rotary over half the head dim
/// (`interleaved` or not), a left window of 300, softcap, ALiBi per sequence and sinks.
fn prefill_of(plain: &Case, interleaved: bool) -> Case {
    Case {
        seqlen_q: 37,
        new: 9,
        window: (Some(300), None),
        softcap: Some(20.0),
        alibi: Some(true),
        sinks: true,
        rotary: Some((plain.head_dim / 2, interleaved)),
        ..plain.clone()
    }
}

/// Decode (one query, GQA packed as rows, split-KV) and chunked prefill (37 queries) over long caches,
/// with an append crossing pages, rotary and every option, at every head dim and every page size.
fn decode_and_prefill_every_head_dim_and_page_size() {
    let Some(dev) = device_or_skip("decode_and_prefill_every_head_dim_and_page_size") else { return };
    for (d, dv) in HEAD_DIM_PAIRS {
        for page_size in [1, 7, 16, 64, 256] {
            let plain = Case { head_dim: d, head_dim_v: dv, page_size, ..base(d) };
            let prefill = prefill_of(&plain, page_size % 2 == 1);
            let decode = Case { new: 1, rotary: Some((d, false)), splits: Some(3), ..plain.clone() };
            for c in [plain, prefill, decode] {
                run_case::<bf16>(dev, &c).unwrap();
            }
        }
        run_case::<f16>(dev, &Case { head_dim: d, head_dim_v: dv, new: 3, seed: 12, ..base(d) }).unwrap();
    }
}

/// Every row with a paged kernel forced, at each page size it takes (the TMA rows: sizes whose boxes fill
/// whole 8-row groups; the `mma.sync` rows: any) and at one it refuses, on decode and chunked prefill
/// with every option, split where the row can: on a Hopper device the chooser takes the TMA rows where
/// they fit, so this keeps the `mma.sync` rows' paged kernels under test there too, and runs the TMA
/// rows at page sizes of 8, 24 and 512 keys (boxes of 8, 8 and the whole block) and on blocks whose last
/// boxes lie past the sequence's keys (not issued).
fn every_paged_row_and_page_size() {
    let Some(dev) = device_or_skip("every_paged_row_and_page_size") else { return };
    let wgmma = dev.info().runs_wgmma();
    let mut runs = 0;
    for t in tiles::FWD_TILES.iter().filter(|t| !t.paged_symbols[0].is_empty() && (wgmma || !t.wgmma)) {
        let (d, dv) = (t.head_dim, t.head_dim_v);
        // The `mma.sync` rows' page sizes are the random tests' too: a few here.
        let sizes: &[usize] = if t.tma { &[1, 7, 8, 16, 24, 64, 256, 512] } else { &[1, 24, 256] };
        for &page_size in sizes {
            let plain = Case { head_dim: d, head_dim_v: dv, page_size, tile: Some(*t), ..base(d) };
            if t.paged_box_rows(page_size).is_none() {
                // Refused before anything is launched (the call would append first).
                let c = Case { new: 2, ..plain };
                let e = gpu_paged(dev, &c, &inputs::<bf16>(&c)).map(|_| ()).unwrap_err();
                assert!(matches!(e, Error::NoTileConfig(_)), "{t:?} page {page_size}: {e:?}");
                continue;
            }
            let prefill = Case { lens: vec![301, 0, 129, 1000], spare_pages: 2, ..prefill_of(&plain, false) };
            let split = (!t.wgmma).then(|| Case { new: 1, splits: Some(3), ..plain.clone() });
            let f16_case = Case { new: 3, seed: 12, causal: false, ..plain.clone() };
            for c in [Some(plain), Some(prefill), split].into_iter().flatten() {
                run_case::<bf16>(dev, &c).unwrap();
                runs += 1;
            }
            run_case::<f16>(dev, &f16_case).unwrap();
        }
    }
    println!("every_paged_row_and_page_size: {runs} bf16 cases");
}

/// The TMA rows' paged kernels on a few cases, for compute-sanitizer (memcheck, racecheck, synccheck):
/// head dims 64 and 128, pages of 16 and 24 keys (boxes of 16 and 8), decode and a chunked prefill with
/// an append, a window, softcap, ALiBi and sinks.
fn paged_tma_sanitizer_sample() {
    let Some(dev) = device_or_skip("paged_tma_sanitizer_sample") else { return };
    if !dev.info().runs_wgmma() {
        println!("paged_tma_sanitizer_sample: no TMA rows on this device");
        return;
    }
    for t in tiles::FWD_TILES.iter().filter(|t| t.tma && matches!(t.head_dim, 64 | 128)) {
        for page_size in [16, 24] {
            let plain = Case { lens: vec![300, 0, 77], page_size, tile: Some(*t), ..base(t.head_dim) };
            let prefill = Case {
                seqlen_q: 20,
                new: 5,
                window: (Some(100), None),
                softcap: Some(20.0),
                alibi: Some(false),
                sinks: true,
                ..plain.clone()
            };
            for c in [plain, prefill] {
                run_case::<bf16>(dev, &c).unwrap();
            }
        }
    }
}

/// Device data the host cannot check: a page index outside the cache and a length beyond the pages
/// complete without touching memory outside the buffers (compute-sanitizer's memcheck sample includes
/// this test) and are reported by `PagedErrors::check`, once.
fn bad_device_data_raises_error_bits() {
    let Some(dev) = device_or_skip("bad_device_data_raises_error_bits") else { return };
    // With new tokens (the paged step checks the lengths) and without (the forward does).
    for new in [2, 0] {
        let c = Case { lens: vec![40, 50], seqlen_q: 3, new, spare_pages: 0, ..base(64) };
        let x = inputs::<bf16>(&c);
        let pages_per_seq = x.table.len() / 2;
        for (bad_table, bad_lens, want) in [
            (Some((1, 100_000)), None, Arg::BlockTable),
            (Some((pages_per_seq + 1, -3)), None, Arg::BlockTable),
            (None, Some([40, 1_000]), Arg::CacheSeqlens),
            (None, Some([-5, 50]), Arg::CacheSeqlens),
        ] {
            let mut x = inputs::<bf16>(&c);
            if let Some((at, page)) = bad_table {
                x.table[at] = page;
            }
            if let Some(lens) = bad_lens {
                x.lens = lens.to_vec();
            }
            let e = gpu_paged(dev, &c, &x).map(|_| ()).unwrap_err();
            assert!(matches!(&e, Error::BadPagedCache { arg, .. } if *arg == want), "new {new}: {e:?}");
        }
        // The bits were cleared: a good call after them checks clean.
        gpu_paged(dev, &c, &x).unwrap();
    }
}

/// Bad host input: typed errors naming the argument, no launch.
fn bad_paged_input_gives_typed_errors() {
    let Some(dev) = device_or_skip("bad_paged_input_gives_typed_errors") else { return };
    let up = |shape| dev.upload(&HostTensor::<bf16>::random_seeded(shape, 1.0, 3)).unwrap();
    let q = up([2, 1, 4, 64]);
    let (mut k_pages, mut v_pages) = (up([6, 16, 2, 64]), up([6, 16, 2, 64]));
    let table = dev.stream().clone_htod(&[0i32, 1, 2, 3]).unwrap();
    let lens = dev.stream().clone_htod(&[10i32, 20]).unwrap();
    let mut errors = PagedErrors::new(dev).unwrap();
    let opts = AttnOptions::default();
    let call = |q: &gpu::DeviceTensor<bf16>,
                k: &mut gpu::DeviceTensor<bf16>,
                v: &mut gpu::DeviceTensor<bf16>,
                table: &cudarc::driver::CudaSlice<i32>,
                errors: &mut PagedErrors,
                append: Option<DeviceKvAppend<bf16>>,
                rotary: Option<DeviceRotary>| {
        let mut cache = DevicePagedKv { k_pages: k, v_pages: v, block_table: table, cache_seqlens: &lens, errors };
        gpu::flash_forward_paged(dev, q, &mut cache, append, rotary, &opts).map(|_| ())
    };
    call(&q, &mut k_pages, &mut v_pages, &table, &mut errors, None, None).unwrap();

    let odd_table = dev.stream().clone_htod(&[0i32, 1, 2]).unwrap();
    let e = call(&q, &mut k_pages, &mut v_pages, &odd_table, &mut errors, None, None).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::BlockTable, .. }), "{e:?}");
    let mut other_v = up([5, 16, 2, 64]);
    let e = call(&q, &mut k_pages, &mut other_v, &table, &mut errors, None, None).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::V, .. }), "{e:?}");
    let wide_q = up([3, 1, 4, 64]);
    let e = call(&wide_q, &mut k_pages, &mut v_pages, &table, &mut errors, None, None).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::CacheSeqlens, .. }), "{e:?}");
    let (k_new, v_new) = (up([2, 3, 1, 64]), up([2, 3, 2, 64]));
    let e =
        call(&q, &mut k_pages, &mut v_pages, &table, &mut errors, Some(DeviceKvAppend { k: &k_new, v: &v_new }), None)
            .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::K, .. }), "{e:?}");
    let cos = dev.stream().clone_htod(&[1.0f32; 64]).unwrap();
    let odd = DeviceRotary { cos: &cos, sin: &cos, rotary_dim: 7, interleaved: false };
    let e = call(&q, &mut k_pages, &mut v_pages, &table, &mut errors, None, Some(odd)).unwrap_err();
    assert!(matches!(e, Error::BadPagedCache { arg: Arg::Rotary, .. }), "{e:?}");
    // A forced tile without paged kernels (a Hopper row without TMA loads).
    let (mut o, mut lse) = (dev.poisoned::<bf16>([2, 1, 4, 64]).unwrap(), dev.poisoned_f32(8).unwrap());
    let wgmma = tiles::FWD_TILES.iter().find(|t| t.wgmma && !t.tma && t.head_dim == 64).unwrap();
    let mut cache = DevicePagedKv {
        k_pages: &mut k_pages,
        v_pages: &mut v_pages,
        block_table: &table,
        cache_seqlens: &lens,
        errors: &mut errors,
    };
    let e = gpu::flash_forward_paged_into(dev, &q, &mut cache, None, None, &mut o, &mut lse, &opts, Some(wgmma), None)
        .unwrap_err();
    assert!(matches!(e, Error::NoTileConfig(_)), "{e:?}");
    errors.check(dev).unwrap();
}

fn main() -> std::process::ExitCode {
    common::gpu_main(
        gpu_tests![
            paged_matches_reference_bf16,
            paged_matches_reference_f16,
            decode_and_prefill_every_head_dim_and_page_size,
            every_paged_row_and_page_size,
            paged_tma_sanitizer_sample,
            bad_device_data_raises_error_bits,
            bad_paged_input_gives_typed_errors,
        ],
        &[],
    )
}
