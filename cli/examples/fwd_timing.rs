//! Times the fused forward kernel with CUDA events: B·N = 16K tokens, hidden 2048 (H = 2048/D), bf16,
//! N in {1K, 4K, 8K} (or `--seqlens`), D in {64, 128}, causal off and on. TFLOP/s =
//! 2·B·H·N²·(D + D_v) / t (D_v = V's head dim, D unless given), halved for causal.
//! Then decode shapes (B in {1, 8}, H = 16 on 16 K/V heads and 32 on 8, one query, 8K and 64K keys,
//! D = 128), with the library's split-KV choice and unsplit; GB/s = K and V bytes / t (decode reads
//! each key once).
//!
//! ```text
//! cargo run --release --example fwd_timing              # the library's own call (its launch plan's row)
//! cargo run --release --example fwd_timing -- --all     # every compiled tile of each head dim that fits
//! cargo run --release --example fwd_timing -- --dims 64,128,256
//! cargo run --release --example fwd_timing -- --dims 192v128    # V (and O) of head dim 128
//! cargo run --release --example fwd_timing -- --dims 64,128 --softcap 30  # each row plain, then softcapped
//! cargo run --release --example fwd_timing -- --dims 128 --ctas 132,999999  # persistent rows, CTAs forced
//! cargo run --release --example fwd_timing -- --dims 128 --ctas 132 --tickets  # ... taking tiles by ticket
//! cargo run --release --example fwd_timing -- --dims 128 --settle  # each row run for 250 ms first
//! cargo run --release --example fwd_timing -- --dims 128 --seqlens 3072,6144  # other N (B = 16K / N)
//! cargo run --release --example fwd_timing -- --decode-only --splits 8,32,64   # extra split counts
//! cargo run --release --example fwd_timing -- --decode-only --decode-grid      # B 1/8/64, 4K-64K keys
//! cargo run --release --example fwd_timing -- --decode-only --sinks --window 4096  # decode options
//! cargo run --release --example fwd_timing -- --decode-only --decode-grid --sinks  # the grid with sinks
//! cargo run --release --example fwd_timing -- --decode-only --paged-prefill    # chunked prefill, paged
//! ```
//! With `--window L` the decode rows' GB/s count the bytes of the `L + 1` keys the row sees. With
//! `--ctas`, each row of a persistent kernel (`FwdTile::persistent`) is timed again with each CTA count
//! forced (`gpu::flash_forward_persistent`; a count above the tiles' is one CTA per tile), the kernel
//! that takes its tiles in rounds, or with `--tickets` the one that takes them by ticket. The library's
//! own persistent launches say `persistent` (rounds) or `tickets`.
//! Warm-up launches first, then the median of per-launch event timings. Inputs are random (never zeros).

mod common;

use half::bf16;
use ironflash::{gpu, AttnOptions, Device, HostTensor};
use ironflash_kernels::tiles::{BatchLayout, FwdTile, FWD_TILES};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let all = args.iter().any(|a| a == "--all");
    let decode_only = args.iter().any(|a| a == "--decode-only");
    let dims = common::dims_arg(&args, &[(64, 64), (128, 128)])?;
    let softcap = common::flag_value(&args, "--softcap")?.map(str::parse::<f32>).transpose()?;
    let forced_ctas = common::usizes_arg(&args, "--ctas", &[])?;
    let forced_order =
        if args.iter().any(|a| a == "--tickets") { gpu::TileOrder::Tickets } else { gpu::TileOrder::Rounds };
    // `--settle`: each row runs for `common::SETTLE` before it is timed.
    let settle = args.iter().any(|a| a == "--settle");
    // `--seqlens 3072,6144`: other sequence lengths than 1K, 4K and 8K (B = 16K / N, at least 1).
    let seqlens = common::usizes_arg(&args, "--seqlens", &[1024, 4096, 8192])?;
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    let info = dev.info().clone();
    println!(
        "device: {} (sm_{}{}, {} SMs)",
        info.name, info.compute_capability.0, info.compute_capability.1, info.sm_count
    );
    println!(
        "{:>6} {:>4} {:>4} {:>3} {:>7} {:<30} {:>10} {:>9}",
        "N", "D", "H", "B", "causal", "tile", "median ms", "TFLOP/s"
    );
    let mut rng = rand::rng();
    for (d, dv) in if decode_only { vec![] } else { dims } {
        for &n in &seqlens {
            let (h, b) = (2048 / d, (16 * 1024 / n).max(1));
            let q = dev.upload(&HostTensor::<bf16>::random([b, n, h, d], 1.0, &mut rng))?;
            let k = dev.upload(&HostTensor::<bf16>::random([b, n, h, d], 1.0, &mut rng))?;
            let v = dev.upload(&HostTensor::<bf16>::random([b, n, h, dv], 1.0, &mut rng))?;
            let mut o = dev.poisoned::<bf16>([b, n, h, dv])?;
            let mut lse = dev.poisoned_f32(b * h * n)?;
            for causal in [false, true] {
                let opts = AttnOptions { causal, ..AttnOptions::default() };
                let chosen = gpu::forward_tile(&info, (d, dv), ironflash::DType::BF16, causal)?;
                // What the library's own call launches: the launch plan's row (a dense call that runs
                // persistent takes the first row with a persistent kernel) and whether it runs persistent.
                let p = ironflash::AttnProblem::contiguous_with_head_dim_v([b, n, n, h, h, d], dv, &opts)?;
                let (planned, splits) = gpu::forward_launch_plan(&info, &p, &chosen, ironflash::DType::BF16);
                let planned_order = gpu::forward_grid(&info, &p, &planned, (splits, BatchLayout::Dense), None)?.1;
                let tiles: Vec<FwdTile> = if all {
                    FWD_TILES
                        .iter()
                        .filter(|t| {
                            (t.head_dim, t.head_dim_v) == (d, dv) && t.smem_bytes(2) <= info.smem_per_block_optin
                        })
                        .filter(|t| !t.wgmma || info.runs_wgmma())
                        .copied()
                        .collect()
                } else {
                    vec![planned]
                };
                // Plain, then (with `--softcap`) the same tile softcapped, one after the other.
                let option_sets = [Some((opts, "")), softcap.map(|c| (opts.with_softcap(c), " +softcap"))];
                for tile in tiles {
                    // The launch plan's grid, then each forced CTA count of a persistent kernel.
                    let persistent = tile.persistent(false, BatchLayout::Dense);
                    let grids = std::iter::once(None).chain(forced_ctas.iter().filter(|_| persistent).map(Some));
                    let runs = grids.flat_map(|ctas| option_sets.iter().flatten().map(move |o| (o, ctas)));
                    for ((opts, label), ctas) in runs {
                        let call = || match ctas {
                            Some(&n) => {
                                let tile = Some(&tile);
                                gpu::flash_forward_persistent(
                                    &dev,
                                    &q,
                                    &k,
                                    &v,
                                    &mut o,
                                    &mut lse,
                                    opts,
                                    tile,
                                    n,
                                    forced_order,
                                )
                            }
                            None if all => {
                                gpu::flash_forward_with_tile(&dev, &q, &k, &v, &mut o, &mut lse, opts, &tile)
                            }
                            None => gpu::flash_forward_into(&dev, &q, &k, &v, &mut o, &mut lse, opts),
                        };
                        let median = if settle {
                            common::settled_median_ms(&dev, call)?
                        } else {
                            common::median_ms(&dev, call)?
                        };
                        let label = match ctas {
                            Some(n) if forced_order == gpu::TileOrder::Tickets => format!("{label} ctas={n} tickets"),
                            Some(n) => format!("{label} ctas={n}"),
                            None if !all && planned_order == gpu::TileOrder::Rounds => format!("{label} persistent"),
                            None if !all && planned_order == gpu::TileOrder::Tickets => format!("{label} tickets"),
                            None => label.to_string(),
                        };
                        let flops =
                            2.0 * (b * h) as f64 * (n * n) as f64 * (d + dv) as f64 / if causal { 2.0 } else { 1.0 };
                        let name = format!("{}{label}", tile.symbol(false).trim_end_matches("_bf16"));
                        println!(
                            "{n:>6} {d:>4} {h:>4} {b:>3} {causal:>7} {name:<30} {median:>10.3} {:>9.1}",
                            flops / (median * 1e-3) / 1e12
                        );
                    }
                }
            }
            // Every element written (no NaN left from the poison) on the last configuration.
            let host = dev.download(&o)?;
            assert!(host.data.iter().all(|x| x.is_finite()), "O has unwritten or non-finite elements");
        }
    }
    let extra_splits = common::usizes_arg(&args, "--splits", &[])?;
    let sinks = args.iter().any(|a| a == "--sinks");
    if args.iter().any(|a| a == "--decode-grid") {
        return decode_grid(&dev, sinks);
    }
    if args.iter().any(|a| a == "--paged-prefill") {
        return paged_prefill(&dev);
    }
    let window = common::flag_value(&args, "--window")?.map(str::parse::<usize>).transpose()?;
    decode(&dev, &extra_splits, sinks, window)
}

/// Decode: one query row per (batch, head), non-causal (bottom-right causal is the same for one row),
/// with H = 16 query heads on 16 K/V heads, and with 32 on 8 (GQA, whose query heads of one K/V head
/// the library runs as that head's rows: `pack_query_heads` in `host/gpu/flash.rs`); with `sinks`, one
/// sink logit per query head, with `window`, a left window of that many keys.
fn decode(
    dev: &Device,
    extra_splits: &[usize],
    sinks: bool,
    window: Option<usize>,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("decode (bf16, D = 128, seqlen_q = 1, sinks: {sinks}, left window: {window:?})");
    println!("{:>3} {:>7} {:>6} {:>7} {:>10} {:>8}", "B", "Hq/Hkv", "keys", "splits", "median ms", "GB/s");
    println!("(auto: the library's choice; a number: that many splits forced)");
    let d = 128;
    let mut rng = rand::rng();
    for (h, h_kv) in [(16usize, 16usize), (32, 8)] {
        let sink_logits = dev.stream().clone_htod(&vec![0.25f32; h])?;
        for b in [1usize, 8] {
            for n in [8192usize, 65536] {
                let q = dev.upload(&HostTensor::<bf16>::random([b, 1, h, d], 1.0, &mut rng))?;
                let k = dev.upload(&HostTensor::<bf16>::random([b, n, h_kv, d], 1.0, &mut rng))?;
                let v = dev.upload(&HostTensor::<bf16>::random([b, n, h_kv, d], 1.0, &mut rng))?;
                let mut o = dev.poisoned::<bf16>([b, 1, h, d])?;
                let mut lse = dev.poisoned_f32(b * h)?;
                let mut opts = AttnOptions::default().with_window(window, None);
                if sinks {
                    opts = opts.with_sinks(ironflash::PerHead::Device(&sink_logits));
                }
                let keys = window.map_or(n, |w| n.min(w + 1));
                let kv_bytes = (2 * b * keys * h_kv * d * 2) as f64;
                let mut counts = vec![None, Some(1)];
                counts.extend(extra_splits.iter().filter(|&&s| s != 1).map(|&s| Some(s)));
                for splits in counts {
                    let median = common::median_ms(dev, || match splits {
                        None => gpu::flash_forward_into(dev, &q, &k, &v, &mut o, &mut lse, &opts),
                        Some(n) => gpu::flash_forward_with_splits(dev, &q, &k, &v, &mut o, &mut lse, &opts, None, n),
                    })?;
                    let label = splits.map_or("auto".to_string(), |s| s.to_string());
                    let heads = format!("{h}/{h_kv}");
                    println!(
                        "{b:>3} {heads:>7} {n:>6} {label:>7} {median:>10.3} {:>8.0}",
                        kv_bytes / (median * 1e-3) / 1e9
                    );
                }
                let host = dev.download(&o)?;
                assert!(host.data.iter().all(|x| x.is_finite()), "O has unwritten or non-finite elements");
            }
        }
    }
    Ok(())
}

/// The serving decode grid: B in {1, 8, 64} sequences of one query row, 4K / 16K / 64K keys, 32 query
/// heads on 8 K/V heads, D = 128, bf16 (inputs filled on the device: up to 17 GB of K and V). GB/s =
/// bytes of K and V / time; beside it the device's copy bandwidth (read + write bytes of a 4 GiB
/// device-to-device copy / time); after the dense rows (the library's choice, one split, and the
/// `mma.sync` row that paged calls run), the same keys in a paged cache of 16, 64 and 256 tokens per
/// page (`paged_rows`). Writes `decode_grid_cases.jsonl` for `benches/peers.py` (SDPA on
/// the same dense cache). With `sinks`, the dense rows have one sink logit per query head.
fn decode_grid(dev: &Device, sinks: bool) -> Result<(), Box<dyn std::error::Error>> {
    use ironflash::error::DriverContext;
    use ironflash::{Arg, Layout};
    use ironflash_cli::bench::timing::RandomSource;
    let (h, h_kv, d) = (32usize, 8usize, 128usize);
    let source = RandomSource::<bf16>::new(dev, &mut rand::rng())?;
    let copy_len = 1usize << 31;
    let src = source.buffer(dev, copy_len, 99)?;
    // SAFETY: written by the copies before anything reads it.
    let mut dst = unsafe { dev.stream().alloc::<bf16>(copy_len) }?;
    let copy_ms = common::median_ms(dev, || dev.stream().memcpy_dtod(&src, &mut dst).during("timing a device copy"))?;
    drop((src, dst));
    println!("device copy: {:.0} GB/s (read + write of 4 GiB)", (2 * 2 * copy_len) as f64 / (copy_ms * 1e-3) / 1e9);
    println!("decode grid (bf16, D = 128, Hq/Hkv = 32/8, seqlen_q = 1, sinks on the dense rows: {sinks})");
    let sink_logits = dev.stream().clone_htod(&vec![0.25f32; h])?;
    println!("{:>3} {:>6} {:>7} {:>10} {:>8}", "B", "keys", "splits", "median ms", "GB/s");
    let mut cases = Vec::new();
    for b in [1usize, 8, 64] {
        for n in [4096usize, 16384, 65536] {
            let salt = (b * n) as u64;
            let kv = |salt| -> ironflash::Result<_> {
                let l = Layout::contiguous([b, n, h_kv, d]);
                dev.wrap(Arg::K, source.buffer(dev, l.numel(), salt)?, l)
            };
            let (k, v) = (kv(salt)?, kv(salt + 1)?);
            let ql = Layout::contiguous([b, 1, h, d]);
            let q = dev.wrap(Arg::Q, source.buffer(dev, ql.numel(), salt + 2)?, ql)?;
            let mut o = dev.poisoned::<bf16>([b, 1, h, d])?;
            let mut lse = dev.poisoned_f32(b * h)?;
            let mut opts = AttnOptions::default();
            if sinks {
                opts = opts.with_sinks(ironflash::PerHead::Device(&sink_logits));
            }
            let kv_bytes = (2 * b * n * h_kv * d * 2) as f64;
            // "auto" and "1" as the library picks them (an unsplit call runs the Hopper kernel on
            // sm_90); "mma": the `mma.sync` row the paged rows run, its own split count.
            let mma = ironflash_kernels::tiles::HD128;
            for (label, splits, tile) in [("auto", None, None), ("1", Some(1), None), ("mma", None, Some(&mma))] {
                let median = common::median_ms(dev, || match (splits, tile) {
                    (None, None) => gpu::flash_forward_into(dev, &q, &k, &v, &mut o, &mut lse, &opts),
                    (None, Some(t)) => gpu::flash_forward_with_tile(dev, &q, &k, &v, &mut o, &mut lse, &opts, t),
                    (Some(s), t) => gpu::flash_forward_with_splits(dev, &q, &k, &v, &mut o, &mut lse, &opts, t, s),
                })?;
                println!("{b:>3} {n:>6} {label:>7} {median:>10.3} {:>8.0}", kv_bytes / (median * 1e-3) / 1e9);
            }
            let host = dev.download(&o)?;
            assert!(host.data.iter().all(|x| x.is_finite()), "O has unwritten or non-finite elements");
            drop((k, v));
            paged_rows(dev, &source, (b, n, salt), &q, (&mut o, &mut lse), kv_bytes)?;
            cases.push(format!(
                r#"{{"grid": "decode", "pass": "fwd", "b": {b}, "h": {h}, "h_kv": {h_kv}, "n_q": 1, "n_k": {n}, "d": {d}, "causal": false, "dtype": "bf16"}}"#
            ));
        }
    }
    std::fs::write("decode_grid_cases.jsonl", cases.join("\n") + "\n")?;
    Ok(())
}

/// The decode grid's paged rows: the same sequences' keys in a paged cache (`gpu::flash_forward_paged_into`)
/// of 16, 64 and 256 tokens per page, the pages in a shuffled order, every sequence `n` keys long; then
/// 16 tokens per page in order (`pg16ord`: each sequence's pages consecutive, as the dense cache lies),
/// which separates what the scattered pages cost from what the loader's table lookups cost; then 16
/// shuffled with the `mma.sync` row forced (`pg16mma`, its own split count: where the chooser's row
/// is a Hopper one, what it gains).
fn paged_rows(
    dev: &Device,
    source: &ironflash_cli::bench::timing::RandomSource<bf16>,
    (b, n, salt): (usize, usize, u64),
    q: &gpu::DeviceTensor<bf16>,
    (o, lse): (&mut gpu::DeviceTensor<bf16>, &mut cudarc::driver::CudaSlice<f32>),
    kv_bytes: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let (h_kv, d) = (8usize, 128usize);
    let mut bufs = (source.buffer(dev, b * n * h_kv * d, salt)?, source.buffer(dev, b * n * h_kv * d, salt + 1)?);
    let mma = ironflash_kernels::tiles::HD128;
    let opts = AttnOptions::default();
    for (page_size, shuffled, tile) in
        [(16usize, true, None), (64, true, None), (256, true, None), (16, false, None), (16, true, Some(&mma))]
    {
        let median;
        (median, bufs) = time_over_pages(dev, bufs, (b, n, h_kv, d), (page_size, shuffled), |cache| {
            gpu::flash_forward_paged_into(dev, q, cache, None, None, o, lse, &opts, tile, None)
        })?;
        let label = paged_label(page_size, shuffled, tile.is_some());
        println!("{b:>3} {n:>6} {label:>7} {median:>10.3} {:>8.0}", kv_bytes / (median * 1e-3) / 1e9);
    }
    Ok(())
}

/// The median ms of `call` over the K and V buffers `bufs` as a paged cache of `b` sequences of `n` keys
/// (`h_kv` heads of `d`), every sequence full, `page_size` keys per page, the pages shuffled or each
/// sequence's in order; the cache's error bits checked after; the buffers given back.
#[allow(clippy::type_complexity)]
fn time_over_pages(
    dev: &Device,
    (k_buf, v_buf): (cudarc::driver::CudaSlice<bf16>, cudarc::driver::CudaSlice<bf16>),
    (b, n, h_kv, d): (usize, usize, usize, usize),
    (page_size, shuffled): (usize, bool),
    mut call: impl FnMut(&mut gpu::DevicePagedKv<'_, bf16>) -> ironflash::Result<()>,
) -> Result<(f64, (cudarc::driver::CudaSlice<bf16>, cudarc::driver::CudaSlice<bf16>)), Box<dyn std::error::Error>> {
    use ironflash::{Arg, Layout};
    use rand::seq::SliceRandom;
    let lens = dev.stream().clone_htod(&vec![n as i32; b])?;
    let mut errors = gpu::PagedErrors::new(dev)?;
    let pages = b * n / page_size;
    let mut order: Vec<i32> = (0..pages as i32).collect();
    if shuffled {
        order.shuffle(&mut rand::rng());
    }
    let table = dev.stream().clone_htod(&order)?;
    let l = Layout::contiguous([pages, page_size, h_kv, d]);
    let (mut k, mut v) = (dev.wrap(Arg::K, k_buf, l)?, dev.wrap(Arg::V, v_buf, l)?);
    let median = common::median_ms(dev, || {
        let mut cache = gpu::DevicePagedKv {
            k_pages: &mut k,
            v_pages: &mut v,
            block_table: &table,
            cache_seqlens: &lens,
            errors: &mut errors,
        };
        call(&mut cache)
    })?;
    errors.check(dev)?;
    Ok((median, (k.into_buffer(), v.into_buffer())))
}

/// A paged line's label: `page16` (shuffled pages, the chooser's row), `pg16ord` (in order), `pg16mma`
/// (the `mma.sync` row forced).
fn paged_label(page_size: usize, shuffled: bool, forced_mma: bool) -> String {
    match (forced_mma, shuffled) {
        (true, _) => format!("pg{page_size}mma"),
        (false, true) => format!("page{page_size}"),
        (false, false) => format!("pg{page_size}ord"),
    }
}

/// Chunked prefill over a paged cache: B sequences of `n` cached keys each (shuffled pages of 16, 64 and
/// 256 tokens), a chunk of `chunk` queries per sequence attending causally (bottom-right: the chunk is
/// the cache's last `chunk` tokens), 32 query heads on 8 K/V heads, D = 128, bf16. TFLOP/s on the
/// visible pairs (4·D per pair and query head). Beside them the same keys as a dense cache
/// (`flash_forward_into`), the same tensors as a packed batch of equal sequences
/// (`flash_forward_varlen_into`, `packed`: the sequence lookup a paged kernel shares with a packed one,
/// without the pages), pages of 256 in order (`pg256ord`: each sequence's pages consecutive) and, at 16
/// tokens per page, the `mma.sync` row forced (`pg16mma`).
fn paged_prefill(dev: &Device) -> Result<(), Box<dyn std::error::Error>> {
    use ironflash::{Arg, Layout};
    use ironflash_cli::bench::timing::RandomSource;
    let (h, h_kv, d) = (32usize, 8usize, 128usize);
    let source = RandomSource::<bf16>::new(dev, &mut rand::rng())?;
    println!("chunked prefill over a paged cache (bf16, D = 128, Hq/Hkv = 32/8, causal bottom-right)");
    println!("{:>3} {:>6} {:>6} {:>8} {:>10} {:>9}", "B", "keys", "chunk", "cache", "median ms", "TFLOP/s");
    let mma = ironflash_kernels::tiles::HD128;
    for (b, n, chunk) in [(4usize, 8192usize, 512usize), (4, 8192, 2048), (8, 32768, 2048), (1, 65536, 4096)] {
        let salt = (b * n + chunk) as u64;
        let pairs = chunk * (n - chunk) + chunk * (chunk + 1) / 2;
        let flops = (4 * d * h * b * pairs) as f64;
        let ql = Layout::contiguous([b, chunk, h, d]);
        let q = dev.wrap(Arg::Q, source.buffer(dev, ql.numel(), salt + 2)?, ql)?;
        let mut o = dev.poisoned::<bf16>([b, chunk, h, d])?;
        let mut lse = dev.poisoned_f32(b * h * chunk)?;
        let opts = AttnOptions::causal();
        let dense = Layout::contiguous([b, n, h_kv, d]);
        let buffer = |salt| source.buffer(dev, b * n * h_kv * d, salt);
        let (k, v) = (dev.wrap(Arg::K, buffer(salt)?, dense)?, dev.wrap(Arg::V, buffer(salt + 1)?, dense)?);
        let median = common::median_ms(dev, || gpu::flash_forward_into(dev, &q, &k, &v, &mut o, &mut lse, &opts))?;
        println!("{b:>3} {n:>6} {chunk:>6} {:>8} {median:>10.3} {:>9.1}", "dense", flops / (median * 1e-3) / 1e12);
        let (k_buf_dense, v_buf_dense) = (k.into_buffer(), v.into_buffer());
        // The same memory as one packed batch of `b` sequences.
        let cu = |len: usize| (0..=b).map(|i| (i * len) as i32).collect::<Vec<_>>();
        let (cu_q, cu_k) = (cu(chunk), cu(n));
        let offsets = dev.upload_varlen(
            &ironflash::cpu::varlen::Varlen { cu_seqlens_q: &cu_q, cu_seqlens_k: &cu_k },
            b * chunk,
            b * n,
        )?;
        let packed = |len: usize| Layout::contiguous([1, b * len, h_kv, d]);
        let (kp, vp) = (dev.wrap(Arg::K, k_buf_dense, packed(n))?, dev.wrap(Arg::V, v_buf_dense, packed(n))?);
        let q_packed = Layout::contiguous([1, b * chunk, h, d]);
        let qp = dev.wrap(Arg::Q, q.into_buffer(), q_packed)?;
        let mut op = dev.poisoned::<bf16>([1, b * chunk, h, d])?;
        let view = offsets.view();
        let median = common::median_ms(dev, || {
            gpu::flash_forward_varlen_into(dev, &qp, &kp, &vp, &view, &mut op, &mut lse, &opts)
        })?;
        println!("{b:>3} {n:>6} {chunk:>6} {:>8} {median:>10.3} {:>9.1}", "packed", flops / (median * 1e-3) / 1e12);
        let q = dev.wrap(Arg::Q, qp.into_buffer(), ql)?;
        let mut bufs = (kp.into_buffer(), vp.into_buffer());
        for (page_size, tile, shuffled) in
            [(16usize, None, true), (64, None, true), (256, None, true), (256, None, false), (16, Some(&mma), true)]
        {
            let median;
            (median, bufs) = time_over_pages(dev, bufs, (b, n, h_kv, d), (page_size, shuffled), |cache| {
                gpu::flash_forward_paged_into(dev, &q, cache, None, None, &mut o, &mut lse, &opts, tile, None)
            })?;
            let label = paged_label(page_size, shuffled, tile.is_some());
            println!("{b:>3} {n:>6} {chunk:>6} {label:>8} {median:>10.3} {:>9.1}", flops / (median * 1e-3) / 1e12);
        }
        let host = dev.download(&o)?;
        assert!(host.data.iter().all(|x| x.is_finite()), "O has unwritten or non-finite elements");
    }
    Ok(())
}
