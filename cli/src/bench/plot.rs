//! PNG charts of the results, drawn with plotters' bitmap backend. Text needs a font and a bare machine
//! may have none, so DejaVu Sans (from the `dejavu` crate) is embedded and registered with ab_glyph.

use crate::bench::case::{GridName, Pass, Record, Status};
use plotters::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Once;

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 560);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only on a malformed font, and the embedded one is not.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// A plotting failure, as one line.
fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// One colour per implementation, stable across charts.
fn colour(impl_name: &str) -> RGBColor {
    match impl_name {
        "ironflash-fused" => RGBColor(214, 39, 40),
        "ironflash-fused-det" => RGBColor(227, 119, 194),
        "ironflash-standard" => RGBColor(255, 127, 14),
        "ironflash-cpu" => RGBColor(127, 127, 127),
        "torch-flash" => RGBColor(31, 119, 180),
        "torch-cudnn" => RGBColor(44, 160, 44),
        "torch-efficient" => RGBColor(148, 103, 189),
        "torch-naive" => RGBColor(140, 86, 75),
        _ => RGBColor(23, 190, 207),
    }
}

/// `512`, `16K`, `128K` for a power-of-two exponent.
fn len_label(log2_n: f64) -> String {
    let n = 2f64.powf(log2_n).round() as u64;
    if n >= 1024 && n % 1024 == 0 {
        format!("{}K", n / 1024)
    } else {
        n.to_string()
    }
}

/// Decimal units for a log axis whose ticks are powers of ten: `10 MB`, `1 GB`, `100 GB`.
fn decimal_bytes(b: f64) -> String {
    let (v, unit) = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")]
        .into_iter()
        .find(|(scale, _)| b >= *scale * 0.999)
        .unwrap_or((1.0, "B"));
    format!("{} {unit}", format!("{:.1}", b / v).trim_end_matches(".0"))
}

/// Series of (log2 N, value) per implementation, for the records `keep` selects.
fn series(records: &[&Record], value: impl Fn(&Record) -> Option<f64>) -> Vec<(String, Vec<(f64, f64)>)> {
    let names: BTreeSet<&str> = records.iter().map(|r| r.impl_name.as_str()).collect();
    let mut out = Vec::new();
    for name in names {
        let mut pts: Vec<(f64, f64)> = records
            .iter()
            .filter(|r| r.impl_name == name && r.status == Status::Ok)
            .filter_map(|r| value(r).map(|v| ((r.n_k as f64).log2(), v)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !pts.is_empty() {
            out.push((name.to_string(), pts));
        }
    }
    out
}

fn x_range(records: &[&Record]) -> (f64, f64) {
    let logs = records.iter().map(|r| (r.n_k as f64).log2());
    let lo = logs.clone().fold(f64::INFINITY, f64::min).floor();
    let hi = logs.fold(f64::NEG_INFINITY, f64::max).ceil();
    if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    }
}

/// TFLOP/s against N, one line per implementation, for the records of one grid, head dim and causality.
pub fn throughput_chart(records: &[&Record], title: &str, path: &Path) -> Result<(), String> {
    register_font();
    let lines = series(records, |r| r.tflops);
    let (x0, x1) = x_range(records);
    let y_max = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).fold(1.0, f64::max) * 1.4; // headroom for the legend
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels((x1 - x0) as usize + 1)
        .x_label_formatter(&|x| len_label(*x))
        .x_desc("sequence length N")
        .y_desc("TFLOP/s")
        .label_style((FONT, 15))
        .draw()
        .map_err(err)?;
    for (name, pts) in &lines {
        let c = colour(name);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Peak extra device memory against N (log scale), one line per implementation. A case that ran out of
/// memory is a cross in a band above the measured range, set off by a dashed line and labelled `OOM`
/// on the axis, so that it cannot be read as a measured amount.
pub fn memory_chart(records: &[&Record], title: &str, path: &Path) -> Result<(), String> {
    register_font();
    let lines = series(records, |r| r.extra_mem_bytes.filter(|&b| b > 0).map(|b| b as f64));
    let (x0, x1) = x_range(records);
    let values = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    // Whole decades; with out-of-memory cases, one more above the measured ones holds their band.
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let y_lo = 10f64.powf((if lo.is_finite() { lo } else { 1e6 } / 1.5).log10().floor());
    let measured_hi = 10f64.powf((values.fold(1e8, f64::max) * 6.0).log10().ceil());
    let oom_impls: BTreeSet<&str> =
        records.iter().filter(|r| r.status == Status::Oom).map(|r| r.impl_name.as_str()).collect();
    let y_hi = if oom_impls.is_empty() { measured_hi } else { measured_hi * 10.0 };
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(84)
        .build_cartesian_2d(x0..x1, (y_lo..y_hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels((x1 - x0) as usize + 1)
        .x_label_formatter(&|x| len_label(*x))
        .y_label_formatter(&|y| if *y > measured_hi * 1.01 { "OOM".into() } else { decimal_bytes(*y) })
        .x_desc("sequence length N")
        .y_desc("peak extra device memory (log scale)")
        .label_style((FONT, 15))
        .draw()
        .map_err(err)?;
    for (name, pts) in &lines {
        let c = colour(name);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(err)?;
    }
    // Out-of-memory cases: crosses in the band above the dashed line, one row per implementation,
    // named in the legend.
    if !oom_impls.is_empty() {
        let dashes = DashedLineSeries::new([(x0, measured_hi), (x1, measured_hi)], 6, 4, BLACK.stroke_width(1));
        chart.draw_series(dashes).map_err(err)?;
    }
    for (row, name) in oom_impls.iter().enumerate() {
        let c = colour(name);
        let y = measured_hi * 1.8 * 1.7f64.powi(row as i32 % 3);
        let pts: Vec<(f64, f64)> = records
            .iter()
            .filter(|r| r.impl_name == *name && r.status == Status::Oom)
            .map(|r| ((r.n_k as f64).log2(), y))
            .collect();
        chart
            .draw_series(pts.into_iter().map(|p| Cross::new(p, 7, c.stroke_width(3))))
            .map_err(err)?
            .label(format!("{name}: out of memory"))
            .legend(move |(x, y)| Cross::new((x + 10, y), 5, c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Every chart the records allow, into `dir`: TFLOP/s vs N per (grid, head dim, causal) for the paper
/// and long grids, and memory vs N for the long grid. `device` goes into the titles.
pub fn write_all(records: &[Record], dir: &Path, device: &str) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("plot: cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for grid in [GridName::Paper, GridName::Long] {
        let in_grid: Vec<&Record> = records.iter().filter(|r| r.grid == grid && r.n_q == r.n_k).collect();
        let keys: BTreeSet<(Pass, usize, bool, &str)> =
            in_grid.iter().map(|r| (r.pass, r.d, r.causal, r.dtype.name())).collect();
        for (pass, d, causal, dtype) in keys {
            let sel: Vec<&Record> = in_grid
                .iter()
                .copied()
                .filter(|r| r.pass == pass && r.d == d && r.causal == causal && r.dtype.name() == dtype)
                .collect();
            let mask = if causal { "causal" } else { "non-causal" };
            let (what, prefix) = match pass {
                Pass::Fwd => ("forward", "tflops"),
                Pass::Bwd => ("backward", "tflops_bwd"),
            };
            let title = format!("{what}, {} grid, D={d}, {mask}, {dtype} — {device}", grid.name());
            let file = format!("{prefix}_{}_d{d}_{}.png", grid.name(), if causal { "causal" } else { "full" });
            let path = dir.join(file);
            throughput_chart(&sel, &title, &path)?;
            written.push(path);
        }
    }
    let long: Vec<&Record> = records.iter().filter(|r| r.grid == GridName::Long && r.pass == Pass::Fwd).collect();
    // Memory hardly depends on the mask; draw the non-causal rows when there are any.
    let causal = !long.iter().any(|r| !r.causal);
    let sel: Vec<&Record> = long.into_iter().filter(|r| r.causal == causal).collect();
    if !sel.is_empty() {
        let path = dir.join("memory_long.png");
        let title =
            format!("peak extra memory, B=1 H=16 D=128, {} — {device}", if causal { "causal" } else { "non-causal" });
        memory_chart(&sel, &title, &path)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::case::{Case, DTypeName, MemMethod};

    fn rec(name: &str, grid: GridName, n: usize, ms: f64, mem: u64, status: Status) -> Record {
        let c = Case::fwd(grid, 1, 16, n, 128, false, DTypeName::Bf16);
        let mut r = Record::new(name, &c, status);
        if status == Status::Ok {
            r.set_timing(&[ms]);
            r.extra_mem_bytes = Some(mem);
            r.mem_method = MemMethod::PoolHighWater;
        }
        r
    }

    #[test]
    fn charts_are_written_as_png() {
        let mut recs = Vec::new();
        for (i, n) in [16384usize, 32768, 65536, 131072].into_iter().enumerate() {
            let s = (i as f64 + 1.0).powi(2);
            recs.push(rec("ironflash-fused", GridName::Long, n, 10.0 * s, (n as u64) * 4096, Status::Ok));
            let st = if n >= 65536 { Status::Oom } else { Status::Ok };
            recs.push(rec("ironflash-standard", GridName::Long, n, 20.0 * s, 2 * 16 * (n * n) as u64, st));
            recs.push(rec("torch-flash", GridName::Long, n, 9.0 * s, (n as u64) * 4096, Status::Ok));
        }
        let dir = tempfile::tempdir().unwrap();
        let files = write_all(&recs, dir.path(), "test device").unwrap();
        let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
        assert_eq!(names, ["tflops_long_d128_full.png", "memory_long.png"]);
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display());
            assert!(bytes.len() > 10_000, "{} looks empty", f.display());
        }
    }

    #[test]
    fn no_records_no_charts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_all(&[], dir.path(), "x").unwrap().is_empty());
    }

    #[test]
    fn length_labels() {
        assert_eq!(len_label(9.0), "512");
        assert_eq!(len_label(14.0), "16K");
        assert_eq!(len_label(17.0), "128K");
        assert_eq!(decimal_bytes(1e9), "1 GB");
        assert_eq!(decimal_bytes(1e7), "10 MB");
        assert_eq!(decimal_bytes(2.5e11), "250 GB");
    }
}
