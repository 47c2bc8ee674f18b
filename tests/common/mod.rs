//! Shared by the integration tests: the GPU-or-skip rule, error metrics tied to precision, and input
//! generators. Each test file includes it with `mod common;`, so not every item is used everywhere.
#![allow(dead_code)]

use ironflash::{DType, Device};
use std::sync::OnceLock;

/// This machine's device 0, opened once per test binary; `Err(why)` when there is no CUDA driver. Any
/// other failure to open a present driver is a test failure, not a skip.
fn shared_device() -> &'static Result<Device, String> {
    static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();
    DEVICE.get_or_init(|| match Device::open(0) {
        Ok(d) => Ok(d),
        Err(ironflash::Error::NoDriver(why)) => Err(why),
        Err(e) => panic!("a CUDA driver is present but device 0 could not be opened: {e}"),
    })
}

/// The main of a GPU test file (`harness = false`, libtest's command line through `libtest-mimic`):
/// runs `tests` where a CUDA driver is present; without one, prints one `skipped:` line with the
/// reason and reports them as ignored (not as passed: nothing ran). `host_tests` need no GPU and
/// always run.
pub fn gpu_main(tests: &[(&'static str, fn())], host_tests: &[(&'static str, fn())]) -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let missing = shared_device().as_ref().err();
    if let Some(why) = missing {
        println!("skipped: no CUDA driver ({why}): {} GPU tests reported as ignored", tests.len());
    }
    let no_gpu = missing.is_some();
    let trials = tests
        .iter()
        .map(|t| (t, no_gpu))
        .chain(host_tests.iter().map(|t| (t, false)))
        .map(|(&(name, test), ignored)| {
            libtest_mimic::Trial::test(name, move || {
                test();
                Ok(())
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// The list `gpu_main` takes: each test function with its name.
#[macro_export]
macro_rules! gpu_tests {
    ($($test:ident),* $(,)?) => {
        &[$((stringify!($test), $test as fn())),*]
    };
}

/// The device for a GPU test, or `None` when this machine has no CUDA driver (the test then returns at
/// once; `gpu_main` reports such tests as ignored unless `--include-ignored` asks for them, and the
/// first call here says so in one line on stderr).
pub fn device_or_skip(test: &str) -> Option<&'static Device> {
    match shared_device() {
        Ok(d) => Some(d),
        Err(why) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!("skipped: no CUDA driver, `{test}` and the GPU tests after it return at once: {why}")
            });
            None
        }
    }
}

/// ‖a − b‖₂ / ‖b‖₂ (b the reference); NaN anywhere gives NaN, which fails every bound.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if a.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    (num / den.max(1e-300)).sqrt()
}

/// max |a − b|, NaN if any element of `a` is NaN.
pub fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| if x.is_nan() { f64::NAN } else { (x - y).abs() }).fold(0.0, |m, d| {
        if d.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(d)
        }
    })
}

/// Output error bound (relative L2 against the f64 reference) per dtype, as the issues state it.
pub fn output_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1e-2,
        DType::F16 => 5e-3,
        DType::F32 => 1e-5,
        // The FP8 forward's bound and its reasons: tests/gpu_fp8.rs.
        DType::F8E4M3 => 6e-2,
    }
}

/// O against the f64 reference: relative L2 below `tol`, or, where the reference is 0 everywhere (every
/// query sees no key), exactly 0 in full. The error (0 in that case), or what failed.
pub fn check_o(got: &[f64], want: &[f64], tol: f64) -> Result<f64, String> {
    let err = rel_l2(got, want);
    let all_zero = want.iter().all(|&w| w == 0.0);
    if (all_zero && got.iter().any(|&g| g != 0.0)) || (!all_zero && (err.is_nan() || err >= tol)) {
        return Err(format!("O rel_l2 {err:.3e} (bound {tol:.0e}), max_abs {:.3e}", max_abs(got, want)));
    }
    Ok(if all_zero { 0.0 } else { err })
}

/// LSE values (finite ones) compared by max absolute difference; -inf must match -inf exactly.
pub fn check_lse(got: &[f32], want: &[f64], tol: f64) -> Result<f64, String> {
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w == f64::NEG_INFINITY {
            if g != f32::NEG_INFINITY {
                return Err(format!("lse[{i}] = {g}, want -inf (fully masked row)"));
            }
            continue;
        }
        let d = (g as f64 - w).abs();
        if d.is_nan() || d > tol {
            return Err(format!("lse[{i}] = {g}, want {w} (|diff| {d} > {tol})"));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

/// ‖got − want‖₂ / max(‖want‖₂, 1e-3·√n): a gradient's relative L2, with a floor (an RMS of 1e-3) for
/// gradients that cancel to ~0 in exact arithmetic (e.g. dQ with a single key, where dP = delta exactly
/// and a kernel's result is f32 rounding noise around 0). Inputs are uniform in [-1, 1), so real
/// gradients are well above the floor. NaN anywhere gives NaN, which fails every bound.
pub fn grad_error(got: &[f64], want: &[f64]) -> f64 {
    grad_error_summed(got, want, 1)
}

/// As [`grad_error`] for a gradient each element of which sums `terms` products (dK and dV: the
/// queries of the key's head group; dQ: the keys): the f32 rounding noise left where those terms cancel
/// to ~0 grows as √terms (measured: dK of a single key summed over 400 queries at head dim 192, f16,
/// 2.6e-6 RMS against an exact 0), so the floor's RMS is 1e-3 · max(1, √terms / 8).
pub fn grad_error_summed(got: &[f64], want: &[f64], terms: usize) -> f64 {
    if got.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let num: f64 = got.iter().zip(want).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = want.iter().map(|y| y * y).sum::<f64>().sqrt();
    let floor_rms = 1e-3 * ((terms as f64).sqrt() / 8.0).max(1.0);
    num / den.max(floor_rms * (want.len() as f64).sqrt())
}

/// Head dims of Q/K and of V the GPU property tests draw: equal, and DeepSeek-V3's 192 / 128.
pub const HEAD_DIM_PAIRS: [(usize, usize); 7] =
    [(32, 32), (64, 64), (96, 96), (128, 128), (192, 192), (256, 256), (192, 128)];

/// Which forward kernels a GPU test case runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kernels {
    /// The chooser's (Hopper's on compute capability 9.0).
    Chosen,
    /// The `mma.sync` rows forced (the same as chosen below compute capability 9.0).
    MmaSync,
    /// The forward split over this many key ranges (a backward as chosen).
    Split(usize),
    /// A persistent kernel of the head dims' TMA row with this many CTAs, taking its tiles in this order
    /// (`gpu::flash_forward_persistent`), as chosen where no such row runs on the device (a backward as
    /// chosen).
    Persistent(usize, ironflash::gpu::TileOrder),
}

/// The row with a persistent kernel for head dims `dims` that runs on `dev` (the Hopper TMA rows).
pub fn persistent_row(
    dev: &ironflash::Device,
    dims: (usize, usize),
) -> Option<&'static ironflash_kernels::tiles::FwdTile> {
    let info = dev.info();
    ironflash_kernels::tiles::FWD_TILES.iter().find(|t| {
        (t.head_dim, t.head_dim_v) == dims
            && t.persistent(false, ironflash_kernels::tiles::BatchLayout::Dense)
            && info.runs_wgmma()
            && t.smem_bytes(2) <= info.smem_per_block_optin
    })
}

/// A GPU property test: `check` on `cases` fresh draws of `strategy` (`IRONFLASH_PROPTEST_CASES`
/// overrides the count, e.g. small under compute-sanitizer; proptest shrinks a failure, and its
/// `PROPTEST_MAX_SHRINK_ITERS` bounds that), then one line with the worst error `check` returned,
/// labelled `what`. Skips as `device_or_skip` does.
pub fn run_property<C: std::fmt::Debug + Clone>(
    test: &str,
    cases: u32,
    strategy: impl proptest::strategy::Strategy<Value = C>,
    what: &str,
    check: impl Fn(&'static Device, &C) -> Result<f64, String>,
) {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let Some(dev) = device_or_skip(test) else { return };
    let cases = std::env::var("IRONFLASH_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    // `IRONFLASH_PROPTEST_TRACE` prints each case before it runs (a case that hangs is the last one
    // printed); the first failure is printed at once, since proptest reports it only after shrinking.
    let trace = std::env::var_os("IRONFLASH_PROPTEST_TRACE").is_some();
    let failed = std::sync::atomic::AtomicBool::new(false);
    let worst = std::sync::Mutex::new(0.0f64);
    runner
        .run(&strategy, |c| {
            if trace {
                eprintln!("{test}: case {c:?}");
            }
            let e = check(dev, &c).inspect_err(|e| {
                if !failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("{test}: first failure (shrinking follows): {e}");
                }
            });
            let e = e.map_err(TestCaseError::fail)?;
            let mut w = worst.lock().unwrap();
            *w = w.max(e);
            Ok(())
        })
        .unwrap();
    println!("{test}: worst {what} {:.2e}", *worst.lock().unwrap());
}
