//! The results as text: a Markdown table per grid (stdout, docs/perf.md) and JSON lines (one `Record`
//! per line, the format `peers.py` prints too).

use crate::bench::case::{GridName, Record, Status};
use std::fmt::Write as _;

/// Serialise records as JSON lines.
pub fn to_jsonl(records: &[Record]) -> String {
    let mut s = String::new();
    for r in records {
        // A Record holds only numbers, strings and enums: serialisation cannot fail.
        s.push_str(&serde_json::to_string(r).expect("a Record always serialises"));
        s.push('\n');
    }
    s
}

/// Parse JSON lines: every line that starts with `{` must be a record; other lines (a peer's log
/// messages, blank lines) are returned separately so that the caller can show them.
pub fn parse_jsonl(text: &str) -> (Vec<Record>, Vec<String>) {
    let (mut records, mut other) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with('{') {
            match serde_json::from_str::<Record>(line) {
                Ok(r) => records.push(r),
                Err(e) => other.push(format!("unreadable record ({e}): {line}")),
            }
        } else {
            other.push(line.to_string());
        }
    }
    (records, other)
}

/// Display order of implementations: ours first, then the peers, each in a fixed order.
fn impl_rank(name: &str) -> (usize, String) {
    const ORDER: &[&str] = &[
        "ironflash-fused",
        "ironflash-fused-det",
        "ironflash-standard",
        "ironflash-cpu",
        "torch-flash",
        "torch-cudnn",
        "torch-efficient",
        "torch-naive",
    ];
    (ORDER.iter().position(|&o| o == name).unwrap_or(ORDER.len()), name.to_string())
}

/// Records sorted for reading: by grid, pass, head dim, causal, lengths, batch, then implementation.
pub fn sorted(records: &[Record]) -> Vec<Record> {
    let mut v = records.to_vec();
    v.sort_by(|a, b| {
        let key = |r: &Record| (r.grid, r.pass, r.d, r.causal, r.n_k, r.n_q, r.b, r.h, impl_rank(&r.impl_name));
        key(a).cmp(&key(b))
    });
    v
}

/// Bytes as KiB below 1 MiB, MiB below 1 GiB, GiB above.
pub fn format_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else if mib < 1024.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{:.2} GiB", mib / 1024.0)
    }
}

fn format_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.4}")
    } else if ms < 100.0 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.1}")
    }
}

fn status_cell(r: &Record) -> String {
    match r.status {
        Status::Ok => "ok".into(),
        Status::Oom => "**OOM**".into(),
        Status::Unsupported => format!("unsupported: {}", one_line(&r.note)),
        Status::Error => format!("error: {}", one_line(&r.note)),
    }
}

/// A note made safe for one Markdown cell.
fn one_line(s: &str) -> String {
    let s = s.lines().next().unwrap_or("").replace('|', "/");
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(79).collect::<String>())
    } else {
        s
    }
}

const HEADER: &str = "| impl | pass | B | H | N | D | causal | dtype | ms (median) | min..max | TFLOP/s | % peak | GB/s | extra mem | status |\n\
                      |---|---|--:|--:|--:|--:|---|---|--:|--:|--:|--:|--:|--:|---|\n";

fn row(r: &Record) -> String {
    let dash = || "–".to_string();
    let h = if r.h_kv == r.h { r.h.to_string() } else { format!("{}/{}", r.h, r.h_kv) };
    let n = r.case().n_label();
    let ms = r.ms.map(format_ms).unwrap_or_else(dash);
    let range = match (r.ms_min, r.ms_max) {
        (Some(a), Some(b)) => format!("{}..{}", format_ms(a), format_ms(b)),
        _ => dash(),
    };
    // Three significant digits below 1 (the CPU and decode rows), one decimal above.
    let adaptive = |x: f64| if x >= 1.0 || x == 0.0 { format!("{x:.1}") } else { format!("{x:.3}") };
    let tflops = r.tflops.map(adaptive).unwrap_or_else(dash);
    let frac = r.peak_frac.map(|f| format!("{:.1}%", 100.0 * f)).unwrap_or_else(dash);
    let gbs = r.gb_s.map(|g| if g >= 10.0 { format!("{g:.0}") } else { adaptive(g) }).unwrap_or_else(dash);
    let mem = r.extra_mem_bytes.map(format_bytes).unwrap_or_else(dash);
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        r.impl_name,
        r.pass.name(),
        r.b,
        h,
        n,
        r.d,
        if r.causal { "yes" } else { "no" },
        r.dtype.name(),
        ms,
        range,
        tflops,
        frac,
        gbs,
        mem,
        status_cell(r)
    )
}

/// One Markdown table per grid, each under a `###` heading.
pub fn markdown(records: &[Record]) -> String {
    let records = sorted(records);
    let mut s = String::new();
    let mut grids: Vec<GridName> = records.iter().map(|r| r.grid).collect();
    grids.dedup();
    for g in grids {
        let _ = writeln!(s, "### {} grid\n", g.name());
        s.push_str(HEADER);
        for r in records.iter().filter(|r| r.grid == g) {
            s.push_str(&row(r));
        }
        s.push('\n');
    }
    s
}

/// Only the rows of one head dim (the closing note of issue 5 quotes D = 128).
pub fn markdown_for_head_dim(records: &[Record], d: usize) -> String {
    let keep: Vec<Record> = records.iter().filter(|r| r.d == d).cloned().collect();
    markdown(&keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::case::{Case, DTypeName, MemMethod};

    fn sample() -> Vec<Record> {
        let c = Case::fwd(GridName::Long, 1, 16, 65536, 128, true, DTypeName::Bf16);
        let mut fused = Record::new("ironflash-fused", &c, Status::Ok);
        fused.set_timing(&[10.0, 12.0, 11.0]);
        fused.extra_mem_bytes = Some(3 << 20);
        fused.mem_method = MemMethod::PoolHighWater;
        fused.set_derived(Some(800.0));
        let oom = Record::new("ironflash-standard", &c, Status::Oom).with_note("out of memory | at 64K");
        let small = Case::fwd(GridName::Paper, 32, 16, 512, 128, false, DTypeName::Bf16);
        let mut peer = Record::new("torch-flash", &small, Status::Ok);
        peer.set_timing(&[0.5]);
        peer.extra_mem_bytes = Some(5 << 30);
        peer.mem_method = MemMethod::TorchPeak;
        vec![oom, fused, peer]
    }

    #[test]
    fn jsonl_round_trips_and_skips_log_lines() {
        let recs = sample();
        let text = format!("peers: starting\n{}\n{{broken\n", to_jsonl(&recs));
        let (back, other) = parse_jsonl(&text);
        assert_eq!(back, recs);
        assert_eq!(other.len(), 2);
        assert!(other[1].starts_with("unreadable record"));
        let line = to_jsonl(&recs[..1]);
        for key in
            ["\"impl\":", "\"n_q\":", "\"tflops\":", "\"peak_frac\":", "\"extra_mem_bytes\":", "\"status\":\"oom\""]
        {
            assert!(line.contains(key), "{key} missing from {line}");
        }
    }

    #[test]
    fn markdown_has_one_table_per_grid_in_order() {
        let md = markdown(&sample());
        let paper = md.find("### paper grid").unwrap();
        let long = md.find("### long grid").unwrap();
        assert!(paper < long);
        let fused = md.find("| ironflash-fused | fwd | 1 | 16 | 65536 | 128 | yes | bf16 | 11.000 | 10.000..12.000 |");
        let standard = md.find("| ironflash-standard |").unwrap();
        assert!(fused.unwrap() < standard, "fused sorts before standard:\n{md}");
        assert!(md.contains("**OOM**"));
        assert!(md.contains("| 3.0 MiB |") && md.contains("| 5.00 GiB |"));
        // Every table row has the header's 15 columns; a '|' inside a note is escaped.
        for line in md.lines().filter(|l| l.starts_with("| ")) {
            assert_eq!(line.matches('|').count(), 16, "{line}");
        }
        let tflops = 4.0 * 16.0 * 65536f64.powi(2) * 128.0 / 2.0 / 11e-3 / 1e12;
        assert!(md.contains(&format!("| {tflops:.1} | {:.1}% |", 100.0 * tflops / 800.0)));
    }

    #[test]
    fn head_dim_filter_and_byte_format() {
        let md = markdown_for_head_dim(&sample(), 64);
        assert!(md.is_empty());
        assert_eq!(format_bytes(512 << 20), "512.0 MiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 << 30), "3.00 GiB");
    }
}
