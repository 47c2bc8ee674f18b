//! Builds the GPU kernels (the `ironflash-kernels` crate, `kernels-gpu/` in the repository; no_std
//! Rust) to PTX, once per architecture, with the pinned nightly, and leaves them in OUT_DIR for
//! `host/modules.rs` to embed: per architecture the PTX laid out as a common part followed by the
//! kernel entries, and an index of the entries (`ironflash_{arch}_entries.rs`), so that the host loads
//! one small module per kernel it uses.
//!
//! Why this way: rustc's own LLVM emits PTX for `nvptx64-nvidia-cuda`, but the registry has no prebuilt
//! `core` for that target and no bitcode linker. So `core` is built from rust-src (`-Zbuild-std=core`),
//! the kernel crate is a fat-LTO cdylib (one LLVM module holding everything it calls), and the PTX is
//! that module's `--emit=asm`. The final link step is replaced by `true`: nothing needs linking.
//!
//! Where from: the kernels crate is a build-dependency, and says where its source is
//! (`ironflash_kernels::SOURCE_DIR`: the path checkout, or the unpacked package of a registry
//! consumer). It is compiled from a copy in OUT_DIR, a workspace of its own, so that neither a read-only
//! source directory nor the repository's workspace gets in the way.

use std::path::{Path, PathBuf};
use std::process::Command;

const NIGHTLY: &str = "nightly-2026-05-20";
/// (file stem, `-C target-cpu`): sm_80 runs on Ampere, Ada and Hopper; sm_90a is the Hopper path.
const ARCHES: [(&str, &str); 2] = [("sm80", "sm_80"), ("sm90a", "sm_90a")];

fn main() {
    let source = PathBuf::from(ironflash_kernels::SOURCE_DIR);
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    println!("cargo:rerun-if-changed={}", source.join("Cargo.toml").display());
    watch_sources(&source.join("src"));
    println!("cargo:rerun-if-env-changed=IRONFLASH_KERNEL_LLVM_ARGS");
    println!("cargo:rerun-if-env-changed=DOCS_RS");

    if std::env::var_os("DOCS_RS").is_some() || std::env::var_os("CARGO_FEATURE_GPU").is_none() {
        // docs.rs builds the documentation only, without rustup's nightly or the network, and a
        // CPU-only consumer turns the `gpu` feature off: empty PTX stands in (`Device::open` then
        // answers `Error::NoDriver`).
        for (stem, _) in ARCHES {
            if let Err(msg) = write_modules(&out, stem, "", &[]) {
                fail(&msg);
            }
        }
        return;
    }

    ensure_toolchain();
    let kernels = out.join("kernels-src");
    if let Err(e) = copy_kernels(&source, &kernels) {
        fail(&format!("copying the kernels' source from {} to {}: {e}", source.display(), kernels.display()));
    }

    // Both architectures build in parallel, each in its own target dir (core is built per target-cpu).
    let handles: Vec<_> = ARCHES
        .iter()
        .map(|&(stem, cpu)| {
            let (kernels, out) = (kernels.clone(), out.clone());
            std::thread::spawn(move || build_arch(&kernels, &out, stem, cpu))
        })
        .collect();
    for h in handles {
        if let Err(msg) = h.join().unwrap() {
            fail(&msg);
        }
    }
}

/// Ends the build with `msg` (cargo shows a build script's stderr when it fails), not with a panic's
/// backtrace noise.
fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}

/// The kernels crate's manifest and `src/` into `to` (replaced), the manifest made a workspace root.
fn copy_kernels(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    copy_dir(&from.join("src"), &to.join("src"))?;
    let manifest = std::fs::read_to_string(from.join("Cargo.toml"))?;
    std::fs::write(to.join("Cargo.toml"), format!("{manifest}\n[workspace]\n"))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest)?;
        } else {
            std::fs::copy(&path, &dest)?;
        }
    }
    Ok(())
}

fn watch_sources(dir: &Path) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            watch_sources(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

/// A command for the pinned nightly, with the outer (stable) cargo's environment removed so that the
/// child does not inherit its toolchain, flags or jobserver.
fn nightly(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", NIGHTLY, program]);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO")
            || k.starts_with("RUSTC")
            || k == "RUSTFLAGS"
            || k == "RUSTUP_TOOLCHAIN"
            || k == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

fn ensure_toolchain() {
    let has_src = nightly("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib/src/rust/library/core").exists()
        })
        .unwrap_or(false);
    if has_src {
        return;
    }
    let install = format!("rustup toolchain install {NIGHTLY} --profile minimal -c rust-src -c llvm-tools");
    if Command::new("rustup").arg("--version").output().is_err() {
        fail(&format!(
            "ironflash builds its GPU kernels with Rust {NIGHTLY} through rustup, which is not on PATH. \
             Install rustup (https://rustup.rs), then run: {install}"
        ));
    }
    // Once per machine, and large (the toolchain and core's source): say so rather than sit silent.
    println!("cargo:warning=ironflash: installing Rust {NIGHTLY} with rustup for its GPU kernels (once per machine)");
    let status = Command::new("rustup")
        .args(["toolchain", "install", NIGHTLY, "--profile", "minimal", "-c", "rust-src", "-c", "llvm-tools"])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        fail(&format!("ironflash builds its GPU kernels with Rust {NIGHTLY} and could not install it. Run: {install}"));
    }
}

fn build_arch(kernels: &Path, out: &Path, stem: &str, cpu: &str) -> Result<(), String> {
    let target_dir = out.join(format!("kernels-{stem}"));
    let mut cmd = nightly("cargo");
    // The kernel crate is a path dependency of the host, so it cannot carry a profile of its own:
    // the nvptx build gets its profile here (abort on panic, one fat-LTO codegen unit).
    cmd.current_dir(kernels).args([
        "--config",
        "profile.release.panic=\"abort\"",
        "--config",
        "profile.release.lto=\"fat\"",
        "--config",
        "profile.release.codegen-units=1",
        "--config",
        "profile.release.opt-level=3",
        "rustc",
        "--release",
        "--lib",
        "--target",
        "nvptx64-nvidia-cuda",
        "-Zbuild-std=core",
        "--crate-type",
        "cdylib",
        "--target-dir",
    ]);
    cmd.arg(&target_dir);
    cmd.args(["--", "-C", &format!("target-cpu={cpu}"), "--emit=asm", "-C", "linker=true"]);
    // Full unrolling of the register-tile loops keeps fragments in registers (no local memory).
    cmd.args(["-C", "llvm-args=-unroll-threshold=4000"]);
    if let Ok(extra) = std::env::var("IRONFLASH_KERNEL_LLVM_ARGS") {
        for a in extra.split_whitespace() {
            cmd.args(["-C", &format!("llvm-args={a}")]);
        }
    }
    let output = cmd.output().map_err(|e| format!("could not run rustup/cargo for the kernels: {e}"))?;
    if !output.status.success() {
        return Err(format!("building the kernels for {cpu} failed:\n{}", String::from_utf8_lossy(&output.stderr)));
    }
    let asm = target_dir.join("nvptx64-nvidia-cuda/release/deps/ironflash_kernels.s");
    let ptx = std::fs::read_to_string(&asm).map_err(|e| format!("reading {}: {e}", asm.display()))?;
    check_complete(&ptx, cpu)?;
    let ptx = apply_launch_bounds(&ptx, cpu)?;
    let ptx = apply_param_align(&ptx, cpu)?;
    let entries: Vec<(&str, std::ops::Range<usize>)> = ironflash_kernels::ptx_split::entries(&ptx).collect();
    let defined = ptx.matches("\n.visible .entry ").count();
    if entries.len() != defined {
        return Err(format!("the {cpu} PTX defines {defined} kernels, {} of them found whole", entries.len()));
    }
    write_modules(out, stem, &ptx, &entries)
}

/// Writes `ironflash_{stem}.ptx`, the common part of `ptx` (everything but the kernel entries) followed
/// by the entries, and `ironflash_{stem}_entries.rs`, the index the host reads: `COMMON_LEN`, and per
/// kernel its name and byte range in that file. The common part plus one entry is a complete module.
fn write_modules(out: &Path, stem: &str, ptx: &str, entries: &[(&str, std::ops::Range<usize>)]) -> Result<(), String> {
    let mut laid_out = String::with_capacity(ptx.len());
    let mut last = 0;
    for (_, r) in entries {
        laid_out.push_str(&ptx[last..r.start]);
        last = r.end;
    }
    laid_out.push_str(&ptx[last..]);
    let common_len = laid_out.len();
    let mut index =
        format!("pub const COMMON_LEN: usize = {common_len};\npub const ENTRIES: &[(&str, usize, usize)] = &[\n");
    for (name, r) in entries {
        let start = laid_out.len();
        laid_out.push_str(&ptx[r.clone()]);
        index.push_str(&format!("    (\"{name}\", {start}, {}),\n", laid_out.len()));
    }
    index.push_str("];\n");
    let write = |file: String, text: &str| {
        let path = out.join(file);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    write(format!("ironflash_{stem}.ptx"), &laid_out)?;
    write(format!("ironflash_{stem}_entries.rs"), &index)
}

/// Rust has no launch-bounds attribute for `ptx-kernel` functions; a kernel asks for them with a
/// module-level comment `// ironflash-launch-bounds SYMBOL THREADS MIN_CTAS_PER_SM` (from `global_asm!`),
/// and this turns it into the entry's `.maxntid THREADS, 1, 1` and `.minnctapersm MIN` directives
/// (PTX ISA §11.4, performance-tuning directives), so that ptxas fits the registers to that many
/// threads, as `__launch_bounds__` does in CUDA C++. A comment naming no entry of this PTX fails the
/// build.
fn apply_launch_bounds(ptx: &str, cpu: &str) -> Result<String, String> {
    let mut out = ptx.to_string();
    for [symbol, threads, min_ctas] in directives(ptx, cpu, "launch-bounds")? {
        let (threads, min_ctas): (u32, u32) = match (threads.parse(), min_ctas.parse()) {
            (Ok(t), Ok(m)) => (t, m),
            _ => return Err(format!("{cpu} PTX: malformed launch-bounds comment for {symbol}")),
        };
        let header = format!(".entry {symbol}(");
        let start = out.find(&header).ok_or_else(|| format!("{cpu} PTX: launch bounds for {symbol}, no such entry"))?;
        // The parameter list closes with a line holding only ")"; the body's "{" follows.
        let close = out[start..].find("\n)\n").ok_or_else(|| format!("{cpu} PTX: no parameter list for {symbol}"))?;
        let at = start + close + 3;
        out.insert_str(at, &format!(".maxntid {threads}, 1, 1\n.minnctapersm {min_ctas}\n"));
    }
    Ok(out)
}

/// rustc declares a by-value kernel parameter with its type's alignment, at most 16 bytes (a larger one
/// is a compiler error), but TMA tensor maps must sit 64-byte aligned; a kernel that takes them as
/// parameter `INDEX` says so with a module-level comment `// ironflash-param-align SYMBOL INDEX 64`, and
/// this rewrites that parameter's `.align 16` to `.align 64` (ptxas then places it on a 64-byte boundary
/// of the parameter bank, as for CUDA C++'s `__grid_constant__ const CUtensorMap`). A comment whose
/// parameter is not declared `.align 16` fails the build.
fn apply_param_align(ptx: &str, cpu: &str) -> Result<String, String> {
    let mut out = ptx.to_string();
    for [symbol, index, align] in directives(ptx, cpu, "param-align")? {
        let declared = format!(".param .align 16 .b8 {symbol}_param_{index}[");
        let at = out
            .find(&declared)
            .ok_or_else(|| format!("{cpu} PTX: no 16-byte aligned parameter {index} of {symbol}"))?;
        out.replace_range(at..at + declared.len(), &format!(".param .align {align} .b8 {symbol}_param_{index}["));
    }
    Ok(out)
}

/// The three fields of every `// ironflash-NAME A B C` comment of the PTX (the kernels' requests to this
/// script), or an error naming a malformed one.
fn directives<'a>(ptx: &'a str, cpu: &str, name: &str) -> Result<Vec<[&'a str; 3]>, String> {
    let prefix = format!("// ironflash-{name} ");
    let mut found = Vec::new();
    for line in ptx.lines() {
        let Some(spec) = line.trim().strip_prefix(prefix.as_str()) else { continue };
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [a, b, c] = fields[..] else { return Err(format!("{cpu} PTX: malformed {name} comment: {line}")) };
        found.push([a, b, c]);
    }
    Ok(found)
}

/// A PTX that declares but does not define a function would fail at module load on the user's GPU;
/// fail the build instead, naming the symbol.
fn check_complete(ptx: &str, cpu: &str) -> Result<(), String> {
    let undefined: Vec<&str> =
        ptx.lines().filter(|l| l.trim_start().starts_with(".extern .func")).map(str::trim).collect();
    if !undefined.is_empty() {
        return Err(format!("the {cpu} PTX calls functions it does not define:\n{}", undefined.join("\n")));
    }
    if !ptx.contains(".entry") {
        return Err(format!("the {cpu} PTX has no kernel entry points"));
    }
    Ok(())
}
