//! Latency-by-percentile plots (PNG) of one or several run reports, drawn
//! like HdrHistogram's plots: the percentile axis is logarithmic in
//! `1 / (1 - percentile)`, so 90%, 99%, 99.9% and 99.99% are equally spaced
//! and the tail gets the room it deserves.
//!
//! Text is drawn with a subset of DejaVu Sans embedded in the binary
//! (`loadgen/assets/`, licence beside it), so no system fonts are needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::combinators::{BindKeyPoints, IntoLogRange};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::error::LoadgenError;
use crate::report::{PercentilePoint, RunReport};

static EMBEDDED_FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const FONT_FAMILY: &str = "sans-serif";
const PLOT_SIZE: (u32, u32) = (1280, 720);
/// Tableau 10: distinct on white and for most colour-blind readers.
const SERIES_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// The percentile axis reaches at least 99.9% and at most 99.99999%.
const MIN_TAIL_SCALE: f64 = 1e3;
const MAX_TAIL_SCALE: f64 = 1e7;

/// Registers the embedded font with plotters once; false if it does not load.
fn embedded_font_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| register_font(FONT_FAMILY, FontStyle::Normal, EMBEDDED_FONT).is_ok())
}

/// The x coordinate of a percentile: 1 / (1 - p).
fn tail_scale(percentile: f64) -> f64 {
    100.0 / (100.0 - percentile)
}

/// `1 / (1 - p)` back to a percentile label: 1 -> "0%", 10 -> "90%", 1000 -> "99.9%".
fn percentile_label(scale: f64) -> String {
    let percentile = 100.0 * (1.0 - 1.0 / scale);
    let text = format!("{percentile:.5}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// Enough decimals for the latency axis labels to differ, and no more.
fn latency_label_decimals(axis_end_ms: f64) -> usize {
    if axis_end_ms >= 20.0 {
        0
    } else if axis_end_ms >= 2.0 {
        1
    } else if axis_end_ms >= 0.2 {
        2
    } else {
        3
    }
}

/// One line of a plot: a latency distribution and its legend.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotCurve {
    /// The legend's name of the line.
    pub label: String,
    /// HdrHistogram's percentile iteration (see [`crate::report::percentile_points`]).
    pub points: Vec<PercentilePoint>,
    pub p99_us: u64,
    pub slowest_us: u64,
    /// Requests behind the curve.
    pub count: u64,
}

impl PlotCurve {
    /// The curve of one run's measured requests.
    pub fn of_report(report: &RunReport) -> PlotCurve {
        PlotCurve {
            label: report.label.clone(),
            points: report.percentiles.clone(),
            p99_us: report.latency.p99_us,
            slowest_us: report.latency.slowest_us,
            count: report.count,
        }
    }

    /// (percentile axis coordinate, latency in ms) along the curve.
    fn coordinates(&self, axis_end: f64) -> Vec<(f64, f64)> {
        let mut coordinates: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter(|point| point.percentile < 100.0)
            .map(|point| {
                (
                    tail_scale(point.percentile).min(axis_end),
                    point.latency_us as f64 / 1000.0,
                )
            })
            .collect();
        if self.count > 0 {
            coordinates.push((axis_end, self.slowest_us as f64 / 1000.0));
        }
        coordinates
    }
}

/// Plots are PNG files: `path` must end in `.png` (any case).
pub fn check_png_path(path: &Path) -> Result<(), LoadgenError> {
    let is_png = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("png"));
    if is_png {
        return Ok(());
    }
    Err(LoadgenError::InvalidOption(format!(
        "plots are png files, {} does not end in .png",
        path.display()
    )))
}

/// Draws the latency-by-percentile curves of `reports` into the PNG `out`.
pub fn plot_percentiles(
    reports: &[RunReport],
    out: &Path,
    title: Option<&str>,
) -> Result<(), LoadgenError> {
    let curves: Vec<PlotCurve> = reports.iter().map(PlotCurve::of_report).collect();
    plot_curves(&curves, out, title)
}

/// Draws `curves` into the PNG `out`, one colour each, with a legend.
pub fn plot_curves(
    curves: &[PlotCurve],
    out: &Path,
    title: Option<&str>,
) -> Result<(), LoadgenError> {
    let plot_error = |reason: String| LoadgenError::Plot {
        path: out.to_path_buf(),
        reason,
    };
    if curves.is_empty() {
        return Err(plot_error("no runs to plot".to_string()));
    }
    if !embedded_font_registered() {
        return Err(plot_error("the embedded font does not load".to_string()));
    }
    let deepest_percentile = curves
        .iter()
        .flat_map(|curve| curve.points.iter())
        .map(|point| point.percentile)
        .filter(|percentile| *percentile < 100.0)
        .fold(0.0f64, f64::max);
    let axis_end = 10f64
        .powf(tail_scale(deepest_percentile).log10().ceil())
        .clamp(MIN_TAIL_SCALE, MAX_TAIL_SCALE);
    let slowest_ms = curves
        .iter()
        .map(|curve| curve.slowest_us as f64 / 1000.0)
        .fold(0.0f64, f64::max);
    let latency_axis_end = if slowest_ms > 0.0 {
        slowest_ms * 1.05
    } else {
        1.0
    };
    let mut key_points = vec![1.0, 2.0];
    let mut decade = 10.0;
    while decade <= axis_end {
        key_points.push(decade);
        decade *= 10.0;
    }

    let root = BitMapBackend::new(out, PLOT_SIZE).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                title.unwrap_or("Latency by percentile (from the intended send time)"),
                (FONT_FAMILY, 26),
            )
            .margin(24)
            .x_label_area_size(56)
            .y_label_area_size(84)
            .build_cartesian_2d(
                (1.0f64..axis_end).log_scale().with_key_points(key_points),
                0.0f64..latency_axis_end,
            )?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|scale| percentile_label(*scale))
            .y_label_formatter(&|latency| {
                let decimals = latency_label_decimals(latency_axis_end);
                format!("{latency:.decimals$}")
            })
            .label_style((FONT_FAMILY, 16))
            .axis_desc_style((FONT_FAMILY, 18))
            .draw()?;
        for (index, curve) in curves.iter().enumerate() {
            let color = SERIES_COLORS[index % SERIES_COLORS.len()];
            let label = format!(
                "{} (p99 {:.3} ms, max {:.3} ms, {} requests)",
                curve.label,
                curve.p99_us as f64 / 1000.0,
                curve.slowest_us as f64 / 1000.0,
                curve.count
            );
            chart
                .draw_series(LineSeries::new(
                    curve.coordinates(axis_end),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT_FAMILY, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| plot_error(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(1e5), "99.999%");
        assert!((tail_scale(99.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn the_embedded_font_loads() {
        assert!(embedded_font_registered());
    }
}
