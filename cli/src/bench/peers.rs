//! PyTorch peers: `benches/peers.py` times `scaled_dot_product_attention` with each backend and a naive
//! matmul-softmax-matmul on the suite's own cases, and prints `Record`s as JSON lines; this module runs
//! it and merges its rows into ours.

use crate::bench::case::{Case, Record};
use crate::bench::report::parse_jsonl;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Exit code by which peers.py says that PyTorch (or CUDA under it) is not there.
pub const NO_TORCH_EXIT: i32 = 3;

/// What running the peers gave.
#[derive(Debug, Clone, PartialEq)]
pub struct PeersOutcome {
    pub records: Vec<Record>,
    /// One line for the report: what ran, or why nothing did.
    pub summary: String,
}

/// Where peers.py is: as given, else `benches/peers.py` under the working directory (a copy of the
/// repository), else in the repository this binary was built from (this crate sits in its `cli/`).
pub fn locate_script(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return p.exists().then(|| p.to_path_buf());
    }
    let candidates =
        [PathBuf::from("benches/peers.py"), Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/peers.py")];
    candidates.into_iter().find(|p| p.exists())
}

/// The cases as JSON lines, the input of peers.py.
pub fn cases_jsonl(cases: &[Case]) -> String {
    let mut s = String::new();
    for c in cases {
        s.push_str(&serde_json::to_string(c).expect("a Case always serialises"));
        s.push('\n');
    }
    s
}

/// Run peers.py on `cases`. Its stderr (progress) goes to ours; its stdout holds the records.
pub fn run(python: &str, script: &Path, cases: &[Case], quick: bool, work_dir: &Path) -> PeersOutcome {
    let none = |why: String| PeersOutcome { records: Vec::new(), summary: why };
    if cases.is_empty() {
        return none("peers: no cases to run".into());
    }
    let cases_path = work_dir.join("peer_cases.jsonl");
    let written = std::fs::create_dir_all(work_dir)
        .and_then(|_| std::fs::File::create(&cases_path))
        .and_then(|mut f| f.write_all(cases_jsonl(cases).as_bytes()));
    if let Err(e) = written {
        return none(format!("peers: not run: cannot write {}: {e}", cases_path.display()));
    }
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--cases")
        .arg(&cases_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if quick {
        cmd.arg("--quick");
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => return none(format!("peers: not run: cannot start {python}: {e}")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let (records, other) = parse_jsonl(&text);
    let code = out.status.code();
    if code == Some(NO_TORCH_EXIT) {
        let why = other.last().cloned().unwrap_or_else(|| "PyTorch with CUDA not found".into());
        return none(format!("peers: PyTorch rows omitted: {why}"));
    }
    let mut summary = match code {
        Some(0) => format!("peers: {} rows from {}", records.len(), script.display()),
        _ => format!("peers: {} failed ({}); {} rows kept", script.display(), out.status, records.len()),
    };
    if let Some(version) = other.iter().find(|l| l.starts_with("torch ")) {
        summary.push_str(&format!(" ({version})"));
    }
    PeersOutcome { records, summary }
}

/// Two row lists in one: a row of `newer` for a case not in `cases` is dropped (a stale or mismatched
/// file), and one for an implementation and case that `older` already has replaces it (a partial rerun
/// merged with `--merge` wins).
pub fn merge(older: Vec<Record>, newer: Vec<Record>, cases: &[Case]) -> Vec<Record> {
    let mut all = older;
    for r in newer.into_iter().filter(|r| cases.contains(&r.case())) {
        match all.iter_mut().find(|o| o.impl_name == r.impl_name && o.case() == r.case()) {
            Some(old) => *old = r,
            None => all.push(r),
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::case::{DTypeName, GridName, Status};

    #[test]
    fn merge_keeps_peer_rows_of_our_cases() {
        let c = Case::fwd(GridName::Paper, 8, 16, 2048, 128, false, DTypeName::Bf16);
        let other = Case { causal: true, ..c };
        let ours = vec![Record::new("ironflash-fused", &c, Status::Ok)];
        let peers = vec![Record::new("torch-flash", &c, Status::Ok), Record::new("torch-flash", &other, Status::Ok)];
        let merged = merge(ours, peers, &[c]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1].impl_name, "torch-flash");
        let rerun = vec![Record::new("torch-flash", &c, Status::Oom)];
        let merged = merge(merged, rerun, &[c]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1].status, Status::Oom, "the later row replaces the earlier one");
    }

    #[test]
    fn a_peer_line_in_python_form_parses() {
        // What peers.py prints (json.dumps of a dict, null for missing values, ints for bytes).
        let line = r#"{"impl": "torch-cudnn", "grid": "decode", "pass": "fwd", "b": 64, "h": 16, "h_kv": 16, "n_q": 1, "n_k": 65536, "d": 128, "causal": false, "dtype": "bf16", "status": "ok", "ms": 0.91, "ms_min": 0.9, "ms_max": 0.95, "reps": 20, "tflops": 37.7, "peak_frac": null, "extra_mem_bytes": 2097152, "mem_method": "torch_peak", "note": ""}"#;
        let (recs, other) = parse_jsonl(&format!("torch 2.11.0\n{line}\n"));
        assert_eq!(other, vec!["torch 2.11.0".to_string()]);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0].case(),
            Case { n_q: 1, ..Case::fwd(GridName::Decode, 64, 16, 65536, 128, false, DTypeName::Bf16) }
        );
        assert_eq!(recs[0].extra_mem_bytes, Some(2 << 20));
    }

    #[test]
    fn cases_file_is_one_json_object_per_line() {
        let c = Case::fwd(GridName::Long, 1, 16, 16384, 128, true, DTypeName::F16);
        let text = cases_jsonl(&[c, c]);
        assert_eq!(text.lines().count(), 2);
        let back: Case = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(text.contains("\"dtype\":\"f16\"") && text.contains("\"grid\":\"long\""));
    }

    #[test]
    fn missing_python_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let c = Case::fwd(GridName::Custom, 1, 1, 64, 64, false, DTypeName::Bf16);
        let out = run("/nonexistent/python3", Path::new("benches/peers.py"), &[c], true, dir.path());
        assert!(out.records.is_empty());
        assert!(out.summary.contains("cannot start"), "{}", out.summary);
    }
}
