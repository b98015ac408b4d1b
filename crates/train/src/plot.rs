//! Training curves as one PNG: panels of CE per copy, R-Drop KL, learning rate, gradient norm,
//! validation loss, BLEU, chrF and dropout consistency, several runs overlaid with a legend.
//!
//! Read from runs' `metrics.jsonl`; drawn with plotters' bitmap backend and a font compiled into
//! the binary (Ubuntu Light from `epaint_default_fonts`), so nothing depends on system fonts.

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// What the horizontal axis counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Optimiser updates.
    Updates,
    /// Hours of training (`wall_s`, summed over resumes).
    Wall,
}

/// One run's records, with the name its legend shows.
pub struct Run {
    /// Legend label: the run folder's name.
    pub name: String,
    /// The parsed lines of its `metrics.jsonl` (unparsable lines left out).
    pub records: Vec<serde_json::Value>,
}

impl Run {
    /// Reads `dir/metrics.jsonl` (or a metrics file given directly); the legend name is the run
    /// folder's name. Lines that are not JSON (a record cut by a kill) are passed over.
    pub fn load(path: &Path) -> Result<Run> {
        if !path.exists() {
            return Err(Error::Other(format!(
                "{}: no such run directory or metrics file",
                path.display()
            )));
        }
        let file = if path.is_dir() {
            path.join("metrics.jsonl")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(path)
        };
        let name = std::fs::canonicalize(dir)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        let records = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok(Run { name, records })
    }
}

/// One run's curve in one panel: its index (colour), name (legend) and points.
type Series<'a> = (usize, &'a str, Vec<(f64, f64)>);

/// Line colours that stay apart on white (matplotlib's first seven).
const COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// The panels: (record kind, field, title).
const PANELS: [(&str, &str, &str); 8] = [
    ("train", "ce", "train CE per token (per copy)"),
    ("train", "kl", "train KL per token (R-Drop)"),
    ("train", "lr", "learning rate"),
    ("train", "grad_norm", "gradient norm"),
    ("valid", "loss", "valid label-smoothed CE"),
    ("valid", "bleu", "valid BLEU"),
    ("valid", "chrf", "valid chrF"),
    (
        "valid",
        "consistency_kl",
        "dropout consistency (valid KL, 2 passes)",
    ),
];

fn font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is a constant compiled in: registering it cannot fail at run time.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// `(x, y)` points of one field of one kind of record.
fn points(run: &Run, kind: &str, field: &str, x: XAxis) -> Vec<(f64, f64)> {
    run.records
        .iter()
        .filter(|r| r["kind"] == kind)
        .filter_map(|r| {
            let xv = match x {
                XAxis::Updates => r["update"].as_f64()?,
                XAxis::Wall => r["wall_s"].as_f64()? / 3600.0,
            };
            Some((xv, r[field].as_f64()?))
        })
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect()
}

/// A tick label short enough for a panel: learning rates in scientific notation.
fn tick(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.1e}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn range(v: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = v.clone().fold(f64::INFINITY, f64::min);
    let hi = v.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-9);
    (lo - pad, hi + pad)
}

/// Draws the runs' curves into a PNG of `size` pixels at `out`.
pub fn plot(runs: &[Run], x: XAxis, out: &Path, size: (u32, u32)) -> Result<()> {
    font();
    let fail = |e: String| Error::Plot {
        path: out.to_path_buf(),
        message: e,
    };
    let root = BitMapBackend::new(out, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let xlabel = match x {
        XAxis::Updates => "update",
        XAxis::Wall => "hours of training",
    };
    for (area, (kind, field, title)) in root.split_evenly((2, 4)).iter().zip(PANELS) {
        let series: Vec<Series> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.name.as_str(), points(r, kind, field, x)))
            .filter(|s| !s.2.is_empty())
            .collect();
        let all = series.iter().flat_map(|s| s.2.iter());
        let (x0, x1) = range(all.clone().map(|p| p.0));
        let (y0, y1) = range(all.map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 17))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(xlabel)
            .x_labels(5)
            .y_labels(6)
            .label_style(("sans-serif", 12))
            .x_label_formatter(&|v| match x {
                XAxis::Updates => format!("{v:.0}"),
                XAxis::Wall => format!("{v:.2}"),
            })
            .y_label_formatter(&|v| tick(*v))
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        if series.is_empty() {
            continue;
        }
        for (i, name, pts) in &series {
            let color = COLORS[*i % COLORS.len()].to_rgba();
            let few = pts.len() <= 40;
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| fail(e.to_string()))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            if few {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(|e| fail(e.to_string()))?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// Loads the runs at `paths` and plots them (the `rdrop plot` command).
pub fn plot_paths(paths: &[PathBuf], x: XAxis, out: &Path) -> Result<()> {
    let runs = paths
        .iter()
        .map(|p| Run::load(p))
        .collect::<Result<Vec<_>>>()?;
    plot(&runs, x, out, (1800, 820))
}
