//! The fused forward kernel against the f64 reference on fresh random inputs with poisoned outputs:
//! every dtype, head dim, sequence lengths on and off the tile edges, causal or not, GQA/MQA, padded
//! strides for q/k/v and (through `flash_forward_into`) for O, random scales; large-magnitude scores;
//! long sequences checked on sampled rows; decode shapes; split-KV (chosen by the heuristic on decode
//! shapes, and forced on any shape); determinism; typed errors.
//! Skips with one line without a CUDA driver.

mod common;

use common::{check_lse, check_o, device_or_skip, max_abs, output_tolerance, rel_l2, HEAD_DIM_PAIRS};
use cudarc::driver::DevicePtr;
use half::{bf16, f16};
use ironflash::gpu::TileOrder;
use ironflash::{cpu, gpu, AttnOptions, Device, Element, Error, HostTensor, Layout};
use ironflash_kernels::tiles::{self, FwdTile};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::SeedableRng;
use std::sync::Mutex;

/// One random problem. Paddings are in elements (multiples of 8): `[head, seq, batch]` extra stride.
#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    seqlen_q: usize,
    seqlen_k: usize,
    heads_kv: usize,
    group: usize,
    head_dim: usize,
    /// V's (and O's) head dim.
    head_dim_v: usize,
    causal: bool,
    scale: f32,
    amplitude: f32,
    pad_q: [usize; 3],
    pad_kv: [usize; 3],
    /// Some: O goes through `flash_forward_into` with this padding.
    pad_o: Option<[usize; 3]>,
    /// Force the table's other (smaller) row for this head dim, when it has one.
    small_tile: bool,
    /// Force this row (ahead of `small_tile`).
    tile: Option<FwdTile>,
    /// Some: force this split-KV count (through `flash_forward_with_splits`, O padded by `pad_o`).
    splits: Option<usize>,
    /// Some: force a persistent kernel's CTA count and tile order (through `flash_forward_persistent`,
    /// with `tile`).
    ctas: Option<(usize, TileOrder)>,
    seed: u64,
}

fn padded(shape: [usize; 4], pad: [usize; 3]) -> Layout {
    let [_, s, h, d] = shape;
    let head = d + pad[0];
    let seq = h * head + pad[1];
    Layout { shape, strides: [s * seq + pad[2], seq, head, 1] }
}

fn seqlen() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=5, 60usize..=70, 124usize..=132, 1usize..=600]
}

fn pad() -> impl Strategy<Value = [usize; 3]> {
    prop_oneof![Just([0, 0, 0]), prop::array::uniform3(prop::sample::select(vec![0usize, 8, 24]))]
}

fn case(large_scores: bool) -> impl Strategy<Value = Case> {
    (
        (
            1usize..=2,
            seqlen(),
            seqlen(),
            1usize..=2,
            prop::sample::select(vec![1usize, 2, 3]),
            prop::sample::select(HEAD_DIM_PAIRS.to_vec()),
        ),
        (
            any::<bool>(),
            0.05f32..0.5,
            any::<bool>(),
            pad(),
            pad(),
            prop::option::of(pad()),
            prop::bool::weighted(0.2),
            any::<u64>(),
        ),
    )
        .prop_map(
            move |(
                (batch, seqlen_q, seqlen_k, heads_kv, group, (head_dim, head_dim_v)),
                (causal, scale, negative, pad_q, pad_kv, pad_o, small_tile, seed),
            )| {
                let (scale, amplitude) = if large_scores { (scale * 10.0, 4.0) } else { (scale, 1.0) };
                Case {
                    batch,
                    seqlen_q,
                    seqlen_k,
                    heads_kv,
                    group,
                    head_dim,
                    head_dim_v,
                    causal,
                    // A negative scale is valid too: the kernel takes the max after scaling.
                    scale: if negative && !large_scores { -scale } else { scale },
                    amplitude,
                    pad_q,
                    pad_kv,
                    pad_o,
                    small_tile,
                    tile: None,
                    splits: None,
                    ctas: None,
                    seed,
                }
            },
        )
}

/// Random problems with a forced split count (2..=9, often more splits than a CTA has key blocks, so
/// that empty splits occur) and the chooser's tile.
fn split_case() -> impl Strategy<Value = Case> {
    (case(false), 2usize..=9).prop_map(|(c, s)| Case { splits: Some(s), small_tile: false, ..c })
}

/// One of the table's rows for a head dim other than the chooser's pick that fit this device (picked by
/// `seed`), so that every compiled variant is exercised on the GPU at hand.
fn other_tile(dev: &Device, dims: (usize, usize), chosen: &FwdTile, seed: u64) -> Option<FwdTile> {
    let info = dev.info();
    let others: Vec<FwdTile> = tiles::FWD_TILES
        .iter()
        .filter(|t| (t.head_dim, t.head_dim_v) == dims && *t != chosen && t.smem_bytes(2) <= info.smem_per_block_optin)
        // Hopper rows run only on compute capability 9.0.
        .filter(|t| !t.wgmma || info.runs_wgmma())
        .copied()
        .collect();
    (!others.is_empty()).then(|| others[(seed % others.len() as u64) as usize])
}

/// Worst errors seen, per dtype, printed at the end of a property run.
#[derive(Default, Debug)]
struct Worst {
    rel_l2: f64,
    max_abs: f64,
    lse: f64,
    cases: usize,
}

fn run_case<T: Element>(dev: &Device, c: &Case, worst: &Mutex<Worst>) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
    let (hq, d, dv) = (c.heads_kv * c.group, c.head_dim, c.head_dim_v);
    let q = HostTensor::<T>::random_with_layout(padded([c.batch, c.seqlen_q, hq, d], c.pad_q), c.amplitude, &mut rng);
    let k = HostTensor::<T>::random_with_layout(
        padded([c.batch, c.seqlen_k, c.heads_kv, d], c.pad_kv),
        c.amplitude,
        &mut rng,
    );
    let v = HostTensor::<T>::random_with_layout(padded([c.batch, c.seqlen_k, c.heads_kv, dv], c.pad_kv), 1.0, &mut rng);
    let opts = AttnOptions { causal: c.causal, softmax_scale: Some(c.scale), ..Default::default() };
    let reference = cpu::reference_forward(&q, &k, &v, &opts).map_err(|e| e.to_string())?;
    let (q_dev, k_dev, v_dev) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap(), dev.upload(&v).unwrap());

    let chosen = gpu::forward_tile(dev.info(), (d, dv), T::DTYPE, c.causal).map_err(|e| e.to_string())?;
    let small = c.tile.or_else(|| c.small_tile.then(|| other_tile(dev, (d, dv), &chosen, c.seed >> 7)).flatten());
    let (o, lse) = match (c.pad_o, small) {
        _ if c.ctas.is_some() => {
            let mut o = dev.poisoned::<T>([c.batch, c.seqlen_q, hq, dv]).unwrap();
            let mut lse = dev.poisoned_f32(reference.lse.len()).unwrap();
            let (ctas, order) = c.ctas.unwrap();
            let tile = c.tile.as_ref();
            gpu::flash_forward_persistent(dev, &q_dev, &k_dev, &v_dev, &mut o, &mut lse, &opts, tile, ctas, order)
                .map_err(|e| e.to_string())?;
            (dev.download(&o).unwrap(), dev.download_f32(&lse).unwrap())
        }
        _ if c.splits.is_some() => {
            let layout = padded([c.batch, c.seqlen_q, hq, dv], c.pad_o.unwrap_or([0; 3]));
            let mut o = dev.upload(&HostTensor { data: vec![T::poison(); layout.span()], layout }).unwrap();
            let mut lse = dev.poisoned_f32(reference.lse.len()).unwrap();
            gpu::flash_forward_with_splits(
                dev,
                &q_dev,
                &k_dev,
                &v_dev,
                &mut o,
                &mut lse,
                &opts,
                None,
                c.splits.unwrap(),
            )
            .map_err(|e| e.to_string())?;
            (dev.download(&o).unwrap(), dev.download_f32(&lse).unwrap())
        }
        (_, Some(tile)) => {
            let mut o = dev.poisoned::<T>([c.batch, c.seqlen_q, hq, dv]).unwrap();
            let mut lse = dev.poisoned_f32(reference.lse.len()).unwrap();
            gpu::flash_forward_with_tile(dev, &q_dev, &k_dev, &v_dev, &mut o, &mut lse, &opts, &tile)
                .map_err(|e| e.to_string())?;
            (dev.download(&o).unwrap(), dev.download_f32(&lse).unwrap())
        }
        (Some(pad_o), None) => {
            let layout = padded([c.batch, c.seqlen_q, hq, dv], pad_o);
            let poisoned = HostTensor { data: vec![T::poison(); layout.span()], layout };
            let mut o = dev.upload(&poisoned).unwrap();
            let mut lse = dev.poisoned_f32(reference.lse.len() + 3).unwrap();
            gpu::flash_forward_into(dev, &q_dev, &k_dev, &v_dev, &mut o, &mut lse, &opts).map_err(|e| e.to_string())?;
            let o = dev.download(&o).unwrap();
            let lse = dev.download_f32(&lse).unwrap();
            // Nothing outside the logical elements (padding, the LSE's spare tail) may be written.
            let mut touched = vec![false; o.data.len()];
            let [b, s, h, _] = o.layout.shape;
            for (bi, si, hi) in (0..b).flat_map(|bi| (0..s).flat_map(move |si| (0..h).map(move |hi| (bi, si, hi)))) {
                let base = o.layout.offset(bi, si, hi, 0);
                touched[base..base + dv].iter_mut().for_each(|x| *x = true);
            }
            if o.data.iter().zip(&touched).any(|(x, &t)| !t && !x.to_f32().is_nan()) {
                return Err("O padding was overwritten".into());
            }
            if lse[reference.lse.len()..].iter().any(|x| !x.is_nan()) {
                return Err("LSE written past its end".into());
            }
            (o, lse[..reference.lse.len()].to_vec())
        }
        (None, None) => {
            let mut o = dev.poisoned::<T>([c.batch, c.seqlen_q, hq, dv]).unwrap();
            let mut lse = dev.poisoned_f32(reference.lse.len()).unwrap();
            gpu::flash_forward_into(dev, &q_dev, &k_dev, &v_dev, &mut o, &mut lse, &opts).map_err(|e| e.to_string())?;
            (dev.download(&o).unwrap(), dev.download_f32(&lse).unwrap())
        }
    };
    let o = o.to_f64_contiguous();
    let abs = max_abs(&o, &reference.o);
    let lse_err = check_lse(&lse, &reference.lse, 2e-3 * c.amplitude as f64 * c.amplitude as f64)?;
    // A problem whose every row is masked has a zero reference: then O must be exactly 0.
    let err = check_o(&o, &reference.o, output_tolerance(T::DTYPE))?;
    let mut w = worst.lock().unwrap();
    w.rel_l2 = w.rel_l2.max(err);
    w.max_abs = w.max_abs.max(abs);
    w.lse = w.lse.max(lse_err);
    w.cases += 1;
    Ok(())
}

/// `IRONFLASH_PROPTEST_CASES` overrides the number of cases (e.g. small under compute-sanitizer).
fn property<T: Element>(name: &str, cases: u32, large_scores: bool, forced_splits: bool) {
    let strategy = if forced_splits { split_case().boxed() } else { case(large_scores).boxed() };
    property_of::<T>(name, cases, strategy)
}

fn property_of<T: Element>(name: &str, cases: u32, strategy: BoxedStrategy<Case>) {
    let Some(dev) = device_or_skip(name) else { return };
    let cases = std::env::var("IRONFLASH_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    let worst = Mutex::new(Worst::default());
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&strategy, |c| run_case::<T>(dev, &c, &worst).map_err(TestCaseError::fail));
    println!("{name}: {} {:?}", T::DTYPE, worst.lock().unwrap());
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn forward_matches_reference_bf16() {
    property::<bf16>("forward_matches_reference_bf16", 48, false, false);
}

fn forward_matches_reference_f16() {
    property::<f16>("forward_matches_reference_f16", 48, false, false);
}

fn forward_large_scores_bf16() {
    property::<bf16>("forward_large_scores_bf16", 16, true, false);
}

fn forward_large_scores_f16() {
    // f16 holds inputs of ±4 exactly enough; the scores are f32 inside the kernel.
    property::<f16>("forward_large_scores_f16", 16, true, false);
}

/// Every head dim with the chooser's tile only: on compute capability 9.0 the `wgmma` kernels
/// (`HD32_WGMMA` .. `HD256_WGMMA`, `HD192_V128_WGMMA`), over the same axes as above (tails around the
/// 128-row and key blocks, causal with fully masked rows, GQA, padded strides, negative and large
/// scales).
fn hopper_case(large_scores: bool) -> BoxedStrategy<Case> {
    (case(large_scores), prop::sample::select(HEAD_DIM_PAIRS.to_vec()))
        .prop_map(|(c, (head_dim, head_dim_v))| Case { head_dim, head_dim_v, small_tile: false, ..c })
        .boxed()
}

fn hopper_head_dims_chosen_tile_bf16() {
    property_of::<bf16>("hopper_head_dims_chosen_tile_bf16", 48, hopper_case(false));
    property_of::<bf16>("hopper_head_dims_chosen_tile_bf16 (large scores)", 16, hopper_case(true));
}

fn hopper_head_dims_chosen_tile_f16() {
    property_of::<f16>("hopper_head_dims_chosen_tile_f16", 48, hopper_case(false));
}

fn forced_splits_match_reference_bf16() {
    property::<bf16>("forced_splits_match_reference_bf16", 32, false, true);
}

fn forced_splits_match_reference_f16() {
    property::<f16>("forced_splits_match_reference_f16", 32, false, true);
}

/// Every TMA row (`FwdTile::tma`) the device runs, forced, over random problems of its head dims: tails
/// of the 128-row and key blocks (the boxes' zero fill past the tensors), causal with fully masked rows,
/// GQA, seqlen_q != seqlen_k, padded strides of Q, K and V (the maps' strides), negative and large scales.
fn tma_rows_match_reference() {
    let Some(dev) = device_or_skip("tma_rows_match_reference") else { return };
    let rows: Vec<FwdTile> = tiles::FWD_TILES
        .iter()
        .filter(|t| t.tma && t.smem_bytes(2) <= dev.info().smem_per_block_optin && dev.info().runs_wgmma())
        .copied()
        .collect();
    if rows.is_empty() {
        println!("tma_rows_match_reference: no TMA row runs on this device, skipped");
        return;
    }
    for tile in rows {
        let strategy = (case(false), any::<bool>())
            .prop_map(move |(c, large)| {
                let (scale, amplitude) = if large { (c.scale * 10.0, 4.0) } else { (c.scale, 1.0) };
                Case { head_dim: tile.head_dim, head_dim_v: tile.head_dim_v, tile: Some(tile), scale, amplitude, ..c }
            })
            .boxed();
        let name = format!("tma_rows_match_reference {}", tile.symbol(false));
        property_of::<bf16>(&name, 24, strategy.clone());
        property_of::<f16>(&name, 8, strategy);
    }
}

/// The persistent kernels (`FwdTile::persistent`: the dense TMA rows), taking their tiles in rounds or
/// by ticket, with their CTA count forced low, so that each CTA computes many tiles one after another,
/// carrying its ring of stages and its barriers' phases from tile to tile: tiles of unequal lengths and
/// tiles without keys (causal, seqlen_q > seqlen_k), the last query block's tail, GQA, more heads than
/// usual (more tiles), padded strides, large scores; CTA counts from 1 (one CTA for every tile) to more
/// than the tiles (CTAs without any). Launches of the ticket kernels follow one another on the stream, so
/// each relies on the one before having left the counter at zero.
fn persistent_tiles_match_reference() {
    let Some(dev) = device_or_skip("persistent_tiles_match_reference") else { return };
    let info = dev.info();
    let rows: Vec<FwdTile> = tiles::FWD_TILES
        .iter()
        .filter(|t| t.persistent(false, tiles::BatchLayout::Dense))
        .filter(|t| t.smem_bytes(2) <= info.smem_per_block_optin && info.runs_wgmma())
        .copied()
        .collect();
    if rows.is_empty() {
        println!("persistent_tiles_match_reference: no persistent row runs on this device, skipped");
        return;
    }
    for tile in rows {
        let ctas = prop::sample::select(vec![1usize, 2, 3, 7, 40, 1000]);
        let order = prop::sample::select(vec![TileOrder::Rounds, TileOrder::Tickets]);
        let strategy = (case(false), any::<bool>(), (ctas, order), 1usize..=4)
            .prop_map(move |(c, large, ctas, more_heads)| {
                let (scale, amplitude) = if large { (c.scale * 10.0, 4.0) } else { (c.scale, 1.0) };
                Case {
                    head_dim: tile.head_dim,
                    head_dim_v: tile.head_dim_v,
                    heads_kv: c.heads_kv * more_heads,
                    tile: Some(tile),
                    ctas: Some(ctas),
                    pad_o: None,
                    scale,
                    amplitude,
                    ..c
                }
            })
            .boxed();
        let name = format!("persistent_tiles_match_reference {}", tile.symbol(false));
        property_of::<bf16>(&name, 24, strategy.clone());
        property_of::<f16>(&name, 8, strategy);
    }
}

/// Long sequences: the GPU computes everything, the reference a few windows of query rows (for a window
/// [r0, r0+n) the rows see exactly the keys [0, r0 + n + seqlen_k - seqlen_q) when causal).
fn long_case<T: Element>(name: &str, seqlen: usize, causal: bool, seed: u64) {
    let Some(dev) = device_or_skip(name) else { return };
    let (b, hq, hkv, d) = (1, 4, 2, 128);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let q = HostTensor::<T>::random([b, seqlen, hq, d], 1.0, &mut rng);
    let k = HostTensor::<T>::random([b, seqlen, hkv, d], 1.0, &mut rng);
    let v = HostTensor::<T>::random([b, seqlen, hkv, d], 1.0, &mut rng);
    let opts = AttnOptions { causal, ..AttnOptions::default() };
    let out =
        gpu::flash_forward(dev, &dev.upload(&q).unwrap(), &dev.upload(&k).unwrap(), &dev.upload(&v).unwrap(), &opts)
            .unwrap();
    let o = dev.download(&out.o).unwrap();
    let lse = dev.download_f32(&out.lse).unwrap();
    let n = 48;
    for r0 in [0, seqlen / 2 - 17, seqlen - n] {
        let keys = if causal { r0 + n } else { seqlen };
        let rows = |t: &HostTensor<T>, from: usize, count: usize| {
            let [_, _, h, _] = t.shape();
            let mut sub = HostTensor::<T>::filled([b, count, h, d], T::from_f32(0.0));
            for s in 0..count {
                for hi in 0..h {
                    for di in 0..d {
                        sub.set(0, s, hi, di, t.get(0, from + s, hi, di));
                    }
                }
            }
            sub
        };
        let reference =
            cpu::reference_forward(&rows(&q, r0, n), &rows(&k, 0, keys), &rows(&v, 0, keys), &opts).unwrap();
        let got = rows(&o, r0, n).to_f64_contiguous();
        let err = rel_l2(&got, &reference.o);
        let got_lse: Vec<f32> = (0..hq).flat_map(|h| lse[h * seqlen + r0..h * seqlen + r0 + n].to_vec()).collect();
        let lse_err = check_lse(&got_lse, &reference.lse, 2e-3).unwrap_or_else(|e| panic!("{name} rows {r0}..: {e}"));
        println!(
            "{name}: seqlen {seqlen} causal {causal} rows {r0}..{}: rel_l2 {err:.2e} max_abs {:.2e} lse {lse_err:.1e}",
            r0 + n,
            max_abs(&got, &reference.o)
        );
        assert!(err < output_tolerance(T::DTYPE), "{name}: rows {r0}..: rel_l2 {err}");
    }
}

fn long_sequence_16k() {
    long_case::<bf16>("long_sequence_16k", 16 * 1024, false, 11);
    long_case::<f16>("long_sequence_16k", 16 * 1024, true, 12);
}

fn long_sequence_32k() {
    long_case::<bf16>("long_sequence_32k", 32 * 1024, true, 13);
    long_case::<bf16>("long_sequence_32k", 32 * 1024, false, 14);
}

fn fixed_case<T: Element>(dev: &Device, dims: [usize; 6], causal: bool, seed: u64) {
    let [batch, seqlen_q, seqlen_k, heads_kv, group, head_dim] = dims;
    let c = Case {
        batch,
        seqlen_q,
        seqlen_k,
        heads_kv,
        group,
        head_dim,
        head_dim_v: head_dim,
        causal,
        scale: 1.0 / (head_dim as f32).sqrt(),
        amplitude: 1.0,
        pad_q: [0; 3],
        pad_kv: [0; 3],
        pad_o: None,
        small_tile: false,
        tile: None,
        splits: None,
        ctas: None,
        seed,
    };
    let worst = Mutex::new(Worst::default());
    run_case::<T>(dev, &c, &worst).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    println!("{dims:?} causal {causal}: {:?}", worst.lock().unwrap());
}

/// A decode shape through `flash_forward_into` with padded O strides, asserting that the heuristic
/// splits it (the shapes below are far from filling an H100 or A100).
fn decode_case<T: Element>(dev: &Device, dims: [usize; 6], causal: bool, pad_o: [usize; 3], seed: u64) {
    let [batch, seqlen_q, seqlen_k, heads_kv, group, head_dim] = dims;
    let opts = AttnOptions { causal, ..Default::default() };
    let dims = [batch, seqlen_q, seqlen_k, heads_kv * group, heads_kv, head_dim];
    let p = ironflash::AttnProblem::contiguous(dims, &opts).unwrap();
    let tile = gpu::forward_tile(dev.info(), (head_dim, head_dim), T::DTYPE, causal).unwrap();
    let (_, splits) = gpu::forward_launch_plan(dev.info(), &p, &tile, T::DTYPE);
    let c = Case {
        batch,
        seqlen_q,
        seqlen_k,
        heads_kv,
        group,
        head_dim,
        head_dim_v: head_dim,
        causal,
        scale: 1.0 / (head_dim as f32).sqrt(),
        amplitude: 1.0,
        // q padded as O: a single-row GQA decode runs its query heads as rows, a strided view of both.
        pad_q: pad_o,
        pad_kv: [8, 0, 0],
        pad_o: Some(pad_o),
        small_tile: false,
        tile: None,
        splits: None,
        ctas: None,
        seed,
    };
    let worst = Mutex::new(Worst::default());
    run_case::<T>(dev, &c, &worst).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    println!("decode {dims:?} causal {causal} {} splits {splits}: {:?}", T::DTYPE, worst.lock().unwrap());
    if seqlen_k >= 2 * 16 * tile.block_n && dev.info().sm_count >= 40 {
        assert!(splits > 1, "{dims:?}: the heuristic did not split");
    }
}

fn split_kv_decode() {
    let Some(dev) = device_or_skip("split_kv_decode") else { return };
    // [batch, seqlen_q, seqlen_k, heads_kv, group, head_dim]: seqlen_q 1..16, tails of seqlen_k, GQA,
    // every head dim, both dtypes, causal on and off (with seqlen_q > 1 causal rows see different key
    // ranges, and the last split of the shortest rows is partly masked).
    let shapes: [([usize; 6], bool); 14] = [
        ([1, 1, 65536, 2, 8, 128], false),
        ([1, 1, 65536 - 37, 1, 4, 128], true),
        ([4, 1, 8192 + 5, 2, 2, 64], false),
        ([2, 16, 8192 - 1, 2, 4, 128], true),
        ([3, 7, 4099, 1, 2, 32], true),
        ([1, 3, 12345, 2, 1, 96], false),
        ([2, 16, 4096, 1, 3, 192], true),
        ([1, 2, 20000, 1, 2, 256], false),
        ([1, 9, 16384, 4, 1, 256], true),
        ([4, 1, 2048 + 63, 1, 1, 32], false),
        ([1, 5, 30001, 2, 1, 64], true),
        ([2, 1, 10000, 1, 4, 96], true),
        // Llama-style GQA decode (32 query heads on 8), and MQA with 16 query heads per K/V head.
        ([3, 1, 9000, 8, 4, 128], true),
        ([2, 1, 7000, 1, 16, 64], false),
    ];
    for (i, (dims, causal)) in shapes.into_iter().enumerate() {
        let pad_o = [[0, 0, 0], [8, 24, 0], [24, 8, 8]][i % 3];
        if i % 2 == 0 {
            decode_case::<bf16>(dev, dims, causal, pad_o, 40 + i as u64);
        } else {
            decode_case::<f16>(dev, dims, causal, pad_o, 40 + i as u64);
        }
    }
}

fn split_kv_fully_masked_rows_and_empty_splits() {
    let Some(dev) = device_or_skip("split_kv_fully_masked_rows_and_empty_splits") else { return };
    // Causal with more queries than keys: the first rows see no key (O = 0, LSE = -inf), and with many
    // splits of few blocks most splits of the early query blocks are empty.
    for (dims, splits) in [([1, 300, 37, 2, 2, 64], 7), ([1, 1000, 1, 1, 1, 32], 3), ([2, 200, 150, 1, 2, 128], 64)] {
        let [batch, seqlen_q, seqlen_k, heads_kv, group, head_dim] = dims;
        let c = Case {
            batch,
            seqlen_q,
            seqlen_k,
            heads_kv,
            group,
            head_dim,
            head_dim_v: head_dim,
            causal: true,
            scale: 0.1,
            amplitude: 1.0,
            pad_q: [0; 3],
            pad_kv: [0; 3],
            pad_o: Some([8, 0, 0]),
            small_tile: false,
            tile: None,
            splits: Some(splits),
            ctas: None,
            seed: 50,
        };
        let worst = Mutex::new(Worst::default());
        run_case::<bf16>(dev, &c, &worst).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

fn seqlen_one_and_decode() {
    let Some(dev) = device_or_skip("seqlen_one_and_decode") else { return };
    for causal in [false, true] {
        fixed_case::<bf16>(dev, [1, 1, 1, 1, 1, 128], causal, 21);
        fixed_case::<f16>(dev, [2, 1, 1, 2, 4, 64], causal, 22);
        // Decode: one query against 8K keys (bottom-right causal: the query sees every key).
        fixed_case::<bf16>(dev, [2, 1, 8192, 2, 4, 128], causal, 23);
        fixed_case::<f16>(dev, [1, 1, 8192, 1, 8, 256], causal, 24);
    }
    // More queries than keys, causal: the first seqlen_q - seqlen_k rows are fully masked (O = 0, LSE = -inf).
    fixed_case::<bf16>(dev, [1, 300, 37, 2, 2, 64], true, 25);
    fixed_case::<bf16>(dev, [1, 1000, 1, 1, 1, 32], true, 26);
}

/// A buffer wrapped without a copy (`Device::wrap`) runs like an uploaded tensor; a layout that needs
/// more elements than the buffer holds is a typed error naming the argument.
fn wrapped_buffers() {
    let Some(dev) = device_or_skip("wrapped_buffers") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let shape = [1, 70, 2, 64];
    let host: Vec<HostTensor<bf16>> = (0..3).map(|_| HostTensor::random(shape, 1.0, &mut rng)).collect();
    let wrap = |t: &HostTensor<bf16>| {
        let buf = dev.stream().clone_htod(&t.data).unwrap();
        dev.wrap(ironflash::Arg::Q, buf, t.layout).unwrap()
    };
    let (q, k, v) = (wrap(&host[0]), wrap(&host[1]), wrap(&host[2]));
    let opts = AttnOptions::causal();
    let out = gpu::flash_forward(dev, &q, &k, &v, &opts).unwrap();
    let want = cpu::reference_forward(&host[0], &host[1], &host[2], &opts).unwrap();
    let err = rel_l2(&dev.download(&out.o).unwrap().to_f64_contiguous(), &want.o);
    assert!(err < output_tolerance(bf16::DTYPE), "wrapped buffers: O error {err}");

    let short = dev.stream().clone_htod(&host[0].data[..100]).unwrap();
    match dev.wrap(ironflash::Arg::K, short, host[0].layout) {
        Err(e) => {
            assert!(matches!(e, Error::BufferTooSmall { arg: ironflash::Arg::K, needed: 8960, len: 100, .. }), "{e}")
        }
        Ok(_) => panic!("a 100-element buffer took a [1, 70, 2, 64] layout"),
    }

    // A view one element into a buffer (as a candle tensor at an odd offset is lent): not 16-byte aligned.
    let whole = dev.stream().clone_htod(&host[0].data).unwrap();
    let at = whole.device_ptr(dev.stream()).0 + 2;
    // SAFETY: a second handle over `whole`'s memory from element 1, given up with `leak` below and never
    // used after `whole` is dropped.
    let view = unsafe { dev.stream().upgrade_device_ptr::<bf16>(at, whole.len() - 1) };
    let layout = Layout { shape: [1, 69, 2, 64], strides: [69 * 128, 128, 64, 1] };
    match dev.try_wrap(ironflash::Arg::V, view, layout) {
        Err(lent_back) => {
            let (e, view) = *lent_back;
            let _ = view.leak();
            assert!(matches!(e, Error::MisalignedBuffer { arg: ironflash::Arg::V, .. }), "{e}");
        }
        Ok(t) => {
            let _ = t.into_buffer().leak();
            panic!("a buffer 2 bytes past an allocation was wrapped");
        }
    }
}

fn deterministic() {
    let Some(dev) = device_or_skip("deterministic") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let q = dev.upload(&HostTensor::<bf16>::random([2, 1000, 8, 128], 1.0, &mut rng)).unwrap();
    let k = dev.upload(&HostTensor::<bf16>::random([2, 1500, 2, 128], 1.0, &mut rng)).unwrap();
    let v = dev.upload(&HostTensor::<bf16>::random([2, 1500, 2, 128], 1.0, &mut rng)).unwrap();
    for causal in [false, true] {
        let opts = AttnOptions { causal, ..AttnOptions::default() };
        let a = gpu::flash_forward(dev, &q, &k, &v, &opts).unwrap();
        let b = gpu::flash_forward(dev, &q, &k, &v, &opts).unwrap();
        let (oa, ob) = (dev.download(&a.o).unwrap(), dev.download(&b.o).unwrap());
        assert!(oa.data.iter().zip(&ob.data).all(|(x, y)| x.to_bits() == y.to_bits()), "O differs, causal {causal}");
        let (la, lb) = (dev.download_f32(&a.lse).unwrap(), dev.download_f32(&b.lse).unwrap());
        assert!(la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()), "LSE differs, causal {causal}");
    }
}

fn deterministic_split_kv() {
    let Some(dev) = device_or_skip("deterministic_split_kv") else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(32);
    let q = dev.upload(&HostTensor::<bf16>::random([2, 4, 8, 128], 1.0, &mut rng)).unwrap();
    let k = dev.upload(&HostTensor::<bf16>::random([2, 20000, 2, 128], 1.0, &mut rng)).unwrap();
    let v = dev.upload(&HostTensor::<bf16>::random([2, 20000, 2, 128], 1.0, &mut rng)).unwrap();
    for causal in [false, true] {
        let opts = AttnOptions { causal, ..AttnOptions::default() };
        let runs: Vec<_> = (0..3)
            .map(|_| {
                let mut o = dev.poisoned::<bf16>([2, 4, 8, 128]).unwrap();
                let mut lse = dev.poisoned_f32(2 * 8 * 4).unwrap();
                gpu::flash_forward_with_splits(dev, &q, &k, &v, &mut o, &mut lse, &opts, None, 37).unwrap();
                (dev.download(&o).unwrap(), dev.download_f32(&lse).unwrap())
            })
            .collect();
        for (o, lse) in &runs[1..] {
            assert!(o.data.iter().zip(&runs[0].0.data).all(|(x, y)| x.to_bits() == y.to_bits()), "O, causal {causal}");
            assert!(lse.iter().zip(&runs[0].1).all(|(x, y)| x.to_bits() == y.to_bits()), "LSE, causal {causal}");
        }
    }
}

fn typed_errors() {
    let Some(dev) = device_or_skip("typed_errors") else { return };
    let mut rng = rand::rng();
    let up = |shape, rng: &mut rand::rngs::ThreadRng| dev.upload(&HostTensor::<bf16>::random(shape, 1.0, rng)).unwrap();
    let opts = AttnOptions::default();

    let t32 = dev.upload(&HostTensor::<f32>::random([1, 4, 1, 64], 1.0, &mut rng)).unwrap();
    let e = gpu::flash_forward(dev, &t32, &t32, &t32, &opts).unwrap_err();
    assert!(matches!(e, Error::UnsupportedDtype { .. }), "{e}");

    let q80 = up([1, 4, 1, 80], &mut rng);
    let e = gpu::flash_forward(dev, &q80, &q80, &q80, &opts).unwrap_err();
    assert!(matches!(e, Error::UnsupportedHeadDim { head_dim: 80, .. }), "{e}");

    // A head stride of 68 elements breaks the 16-byte alignment of rows.
    let odd = Layout { shape: [1, 4, 2, 64], strides: [4 * 2 * 68, 2 * 68, 68, 1] };
    let q = dev.upload(&HostTensor::<bf16>::random_with_layout(odd, 1.0, &mut rng)).unwrap();
    let k = up([1, 4, 2, 64], &mut rng);
    let e = gpu::flash_forward(dev, &q, &k, &k, &opts).unwrap_err();
    assert!(matches!(e, Error::MisalignedStrides { arg: ironflash::Arg::Q, .. }), "{e}");

    let q = up([1, 4, 2, 64], &mut rng);
    let e = gpu::flash_forward(dev, &q, &up([1, 4, 3, 64], &mut rng), &up([1, 4, 3, 64], &mut rng), &opts).unwrap_err();
    assert!(matches!(e, Error::HeadsNotMultiple { .. }), "{e}");

    // O whose heads overlap (head stride 0).
    let overlapping = Layout { shape: [1, 4, 2, 64], strides: [4 * 64, 64, 0, 1] };
    let mut o = dev.upload(&HostTensor::<bf16>::random_with_layout(overlapping, 1.0, &mut rng)).unwrap();
    let mut lse = dev.poisoned_f32(8).unwrap();
    let e = gpu::flash_forward_into(dev, &q, &k, &k, &mut o, &mut lse, &opts).unwrap_err();
    assert!(matches!(e, Error::OverlappingOutput { arg: ironflash::Arg::O, .. }), "{e}");

    let mut o = dev.poisoned::<bf16>([1, 4, 2, 64]).unwrap();
    let mut short = dev.poisoned_f32(7).unwrap();
    let e = gpu::flash_forward_into(dev, &q, &k, &k, &mut o, &mut short, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: ironflash::Arg::Lse, .. }), "{e}");

    let mut wrong = dev.poisoned::<bf16>([1, 5, 2, 64]).unwrap();
    let e = gpu::flash_forward_into(dev, &q, &k, &k, &mut wrong, &mut lse, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: ironflash::Arg::O, .. }), "{e}");

    let mut o = dev.poisoned::<bf16>([1, 4, 2, 64]).unwrap();
    let e = gpu::flash_forward_with_tile(dev, &q, &k, &k, &mut o, &mut lse, &opts, &tiles::HD128).unwrap_err();
    assert!(matches!(e, Error::NoTileConfig(_)), "{e}");

    for splits in [0, gpu::MAX_SPLITS + 1] {
        let e = gpu::flash_forward_with_splits(dev, &q, &k, &k, &mut o, &mut lse, &opts, None, splits).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    }
}

fn split_heuristic() {
    // Host-only. B=1, H=16, one query block on 132 SMs x 2 CTAs: one wave as full as it gets (16
    // splits: 256 of 264 slots) at 64K keys (1024 blocks of 64); at 8K keys (128 blocks) at least 8
    // blocks per split. 128 CTAs that need every slot: 2 splits; 128 bandwidth-bound ones (one per
    // SM is enough): none.
    assert_eq!(gpu::num_splits_heuristic(16, 264, 264, 1024), 16);
    assert_eq!(gpu::num_splits_heuristic(16, 264, 132, 128), 16);
    assert_eq!(gpu::num_splits_heuristic(8, 264, 132, 128), 16);
    assert_eq!(gpu::num_splits_heuristic(128, 264, 264, 1024), 2);
    assert_eq!(gpu::num_splits_heuristic(128, 264, 132, 1024), 1);
    // A grid that fills 80% of a wave is not split; nor is one with too few key blocks.
    assert_eq!(gpu::num_splits_heuristic(212, 264, 264, 1024), 1);
    assert_eq!(gpu::num_splits_heuristic(16, 264, 264, 7), 1);
    // Never more than MAX_SPLITS or one wave, nor fewer than 8 blocks per split.
    for (ctas, blocks) in [(1, 100_000), (2, 64), (3, 1000), (100, 1 << 20)] {
        let s = gpu::num_splits_heuristic(ctas, 264, 132, blocks);
        assert!(s <= gpu::MAX_SPLITS && ctas * s <= 264 && (s == 1 || blocks / s >= 8), "{ctas} {blocks}: {s}");
    }
}

fn ptx_defines_every_forward_kernel() {
    // Host-only (no GPU): every symbol of the tile table, and the combine, has a module of its own in both
    // architectures' PTX (the index `Device` loads kernels through), which defines it.
    use ironflash::modules::Arch;
    let combine = [ironflash_kernels::abi::FWD_COMBINE_BF16, ironflash_kernels::abi::FWD_COMBINE_F16];
    for t in tiles::FWD_TILES {
        for s in t.symbols.into_iter().chain(t.split_symbols).chain(combine).filter(|s| !s.is_empty()) {
            for arch in [Arch::Sm80, Arch::Sm90a] {
                let module = arch.kernel_module(s);
                // Hopper rows exist only in the sm_90a PTX.
                if t.wgmma && arch == Arch::Sm80 && t.symbols.contains(&s) {
                    assert!(module.is_none(), "{s} in the {} PTX", arch.name());
                    continue;
                }
                let module = module.unwrap_or_else(|| panic!("{s} missing from the {} PTX", arch.name()));
                assert!(module.contains(&format!(".entry {s}(")) && module.matches(".entry ").count() == 1);
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    common::gpu_main(
        gpu_tests![
            forward_matches_reference_bf16,
            forward_matches_reference_f16,
            forward_large_scores_bf16,
            forward_large_scores_f16,
            hopper_head_dims_chosen_tile_bf16,
            hopper_head_dims_chosen_tile_f16,
            tma_rows_match_reference,
            persistent_tiles_match_reference,
            forced_splits_match_reference_bf16,
            forced_splits_match_reference_f16,
            long_sequence_16k,
            long_sequence_32k,
            split_kv_decode,
            split_kv_fully_masked_rows_and_empty_splits,
            seqlen_one_and_decode,
            wrapped_buffers,
            deterministic,
            deterministic_split_kv,
            typed_errors,
        ],
        gpu_tests![split_heuristic, ptx_defines_every_forward_kernel,],
    )
}
