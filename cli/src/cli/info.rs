//! `ironflash info`: device properties, and which forward tile each head dim gets on it, and why.

use super::summary::device_line;
use super::{open_device, JobResult};
use ironflash::problem::supported_head_dim_pairs;
use ironflash::DType;
use ironflash_kernels::tiles::{choose_fwd, FwdTile, FWD_TILES, SMEM_RESERVED_PER_CTA};
use std::process::ExitCode;

const KIB: usize = 1024;

pub fn run(ordinal: usize) -> JobResult {
    let dev = open_device(ordinal, "showing the tile choice for reference devices")?;
    match &dev {
        Some(d) => {
            let i = d.info();
            println!("{}", device_line(d));
            println!(
                "  compute capability    {}.{} (PTX: {:?})",
                i.compute_capability.0,
                i.compute_capability.1,
                i.arch()
            );
            println!("  multiprocessors       {}", i.sm_count);
            println!(
                "  shared memory         {} KiB per block (opt-in), {} KiB per SM",
                i.smem_per_block_optin / KIB,
                i.smem_per_sm / KIB
            );
            println!("  L2 cache              {} MiB", i.l2_bytes >> 20);
            println!("  memory                {:.1} GiB", i.total_mem as f64 / (1u64 << 30) as f64);
            println!("\nforward tiles on this device (bf16/f16; what the fused forward launches):");
            let launcher = |dims, causal| ironflash::gpu::flash::forward_tile(i, dims, DType::BF16, causal).ok();
            print_tiles(i.smem_per_block_optin, i.smem_per_sm, launcher);
        }
        None => {
            println!("\nforward tiles the chooser would pick (bf16/f16) on reference budgets:");
            for (name, optin, per_sm, sm90a) in [
                ("A100", 164 * KIB, 164 * KIB, false),
                ("H100", 227 * KIB, 228 * KIB, true),
                ("48 KiB device", 48 * KIB, 48 * KIB, false),
            ] {
                println!("\n{name} ({} KiB per block, {} KiB per SM):", optin / KIB, per_sm / KIB);
                print_tiles(optin, per_sm, |(d, dv), causal| {
                    choose_fwd(d, dv, 2, causal, optin, per_sm, sm90a).copied()
                });
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(t: &FwdTile) -> String {
    if t.wgmma {
        return format!(
            "Br={:<3} Bc={:<3} warps={} stages={} wgmma (2 compute + 1 loader warpgroups)",
            t.block_m, t.block_n, t.warps, t.stages
        );
    }
    format!(
        "Br={:<3} Bc={:<3} warps={} stages={} Q in {:<9}",
        t.block_m,
        t.block_n,
        t.warps,
        t.stages,
        if t.q_in_regs { "registers" } else { "smem" }
    )
}

/// Per head dim: the chosen row, its shared memory and occupancy by shared memory, and why the rows
/// before it (the chooser takes the first that fits) were passed over.
fn print_tiles(optin: usize, per_sm: usize, choose: impl Fn((usize, usize), bool) -> Option<FwdTile>) {
    for (d, dv) in supported_head_dim_pairs() {
        let chosen = choose((d, dv), false);
        let chosen = chosen.as_ref();
        let mut why = Vec::new();
        for t in FWD_TILES.iter().filter(|t| (t.head_dim, t.head_dim_v) == (d, dv)) {
            if Some(t) == chosen {
                break;
            }
            let bytes = t.smem_bytes(2);
            if bytes > optin {
                why.push(format!("{} needs {} KiB > {} KiB per block", describe_short(t), bytes / KIB, optin / KIB));
            } else {
                why.push(format!(
                    "{} needs {} KiB + {} B reserved > {} KiB per SM",
                    describe_short(t),
                    bytes / KIB,
                    SMEM_RESERVED_PER_CTA,
                    per_sm / KIB
                ));
            }
        }
        let label = if dv == d { format!("D={d}") } else { format!("D={d}/{dv}") };
        match chosen {
            Some(t) => {
                let bytes = t.smem_bytes(2);
                println!(
                    "  {label:<9} {}  {:>3} KiB smem, {} CTA/SM by smem, {}",
                    describe(t),
                    bytes.div_ceil(KIB),
                    t.ctas_per_sm_by_smem(2, per_sm),
                    if why.is_empty() {
                        "first choice: fits".to_string()
                    } else {
                        format!("fallback: {}", why.join("; "))
                    }
                );
            }
            None => println!("  {label:<9} none fits: {}", why.join("; ")),
        }
        if choose((d, dv), true).as_ref() != chosen {
            println!(
                "        causal: {}",
                choose((d, dv), true).map(|t| describe(&t)).unwrap_or_else(|| "none fits".into())
            );
        }
    }
}

fn describe_short(t: &FwdTile) -> String {
    format!("{}x{}", t.block_m, t.block_n)
}
