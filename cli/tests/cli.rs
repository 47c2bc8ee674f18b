//! The `ironflash` binary as a user runs it: the default job (on the CPU path when there is no GPU),
//! `--help`, a CPU-only `bench`, and errors as one line.

use std::process::{Command, Output};

fn ironflash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ironflash")).args(args).output().expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn default_job_checks_and_times_the_available_paths() {
    let out = ironflash(&[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("correctness against the exact f64 reference"), "{stdout}");
    assert!(stdout.contains("timing"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    if ironflash::device::driver_available() {
        assert!(stdout.contains("device 0:"), "{stdout}");
    } else {
        assert!(stdout.contains("no GPU:") && stdout.contains("running the CPU path"), "{stdout}");
        assert!(stdout.contains("4 of 4 checks passed") && stdout.contains("CPU path only"), "{stdout}");
        let cpu_rows = stdout.lines().filter(|l| l.starts_with("ironflash-cpu") && l.contains("pass")).count();
        assert_eq!(cpu_rows, 4, "{stdout}");
    }
}

#[test]
fn help_names_every_subcommand() {
    let out = ironflash(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["info", "check", "bench", "--device"] {
        assert!(help.contains(word), "{word} missing:\n{help}");
    }
    let bench = text(&ironflash(&["bench", "--help"]).stdout);
    for flag in ["--grid", "--shape", "--dtype", "--impl", "--quick", "--json", "--markdown", "--plots", "--merge"] {
        assert!(bench.contains(flag), "{flag} missing:\n{bench}");
    }
}

#[test]
fn errors_are_one_line() {
    for args in [&["bench", "--shape", "1,2,3"][..], &["check", "--head-dims", "80"], &["nonsense"]] {
        let out = ironflash(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}:\n{stderr}");
        assert!(stderr.starts_with("ironflash: error:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    }
}

#[test]
fn cpu_bench_writes_table_and_json() {
    if ironflash::device::driver_available() {
        return; // on a GPU machine the suite is run on purpose, not from the tests
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let args =
        ["bench", "--impl", "cpu", "--shape", "1,2,128,64", "--causal", "on", "--reps", "1", "--out-dir", out_dir];
    let out = ironflash(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("| ironflash-cpu | fwd | 1 | 2 | 128 | 64 | yes | bf16 |"), "{stdout}");
    assert!(stdout.contains("no CUDA driver"), "{stdout}");
    let jsonl = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 1);
    assert!(jsonl.contains("\"impl\":\"ironflash-cpu\""));
}
