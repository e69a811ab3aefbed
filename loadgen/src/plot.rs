//! The plots loadgen writes, drawn with the `plotters` crate (its SVG backend: axes, ticks,
//! legends and text come from the library, as in `bench`'s plots):
//!
//! - `latency.svg`: latency (µs, log scale) by percentile, one line per operation, the
//!   percentile on the usual `1/(1-p)` log scale (50%, 90%, 99%, 99.9%, ...).
//! - `timeline.svg`: ops/s per second (top panel) and p99 latency (bottom panel, log scale),
//!   the warm-up shaded and each fault marked by a vertical line and a short label.
//! - [`xy_svg`]: the experiments' line charts (`data-loss.svg`, `kill-rate.svg`,
//!   `partition-faults.svg`): measured points joined by lines with a bar for the trials'
//!   spread, predictions dashed.
//!
//! Log axes are drawn on log10 of the values, with ticks at whole decades labelled in the
//! values' units (`1 ms`, `99.9%`).

use std::fmt::Write as _;

use std::ops::Range;

use hdrhistogram::Histogram;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::hgrm::TICKS_PER_HALF_DISTANCE;
use crate::report::{FaultRecord, TimelineRow};

pub const LATENCY_SVG: &str = "latency.svg";
pub const TIMELINE_SVG: &str = "timeline.svg";

const WIDTH: u32 = 900;
const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];
const FAULT_COLOR: RGBColor = RGBColor(0xc0, 0x00, 0x00);
const WARMUP_COLOR: RGBColor = RGBColor(0xee, 0xee, 0xee);
const FONT: &str = "sans-serif";

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), Box<dyn std::error::Error>>;

/// A linear axis over `range` with its ticks at `ticks` exactly (plotters chooses round
/// values itself; a log axis drawn on log10 of its values needs its ticks at whole decades,
/// and the experiments' charts at the values measured).
#[derive(Clone)]
struct Axis {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Axis {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Axis {
        Axis { range, ticks }
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let t = if span > 0.0 {
            (value - self.range.start) / span
        } else {
            0.0
        };
        limit.0 + (t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for Axis {
    fn format(value: &f64) -> String {
        format!("{value}")
    }
}

/// An SVG of `height` pixels drawn by `draw`; a drawing error (none is expected from the SVG
/// backend) still gives a picture, which says what went wrong.
fn svg(height: u32, draw: impl FnOnce(&Area) -> Drawn) -> String {
    let mut out = String::new();
    let failed = {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root).map_err(|e| e.to_string()))
            .and_then(|()| root.present().map_err(|e| e.to_string()));
        drawn.err()
    };
    match failed {
        None => out,
        Some(e) => {
            let mut out = String::new();
            let _ = writeln!(
                out,
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}"><text x="20" y="40">cannot draw: {}</text></svg>"#,
                e.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
            );
            out
        }
    }
}

/// `latency.svg`: one line per `(operation, histogram)`; empty histograms are left out.
pub fn latency_svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let mut lines: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    for &(name, h) in series {
        if h.is_empty() {
            continue;
        }
        let mut points = Vec::new();
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            let q = v.quantile_iterated_to();
            if q >= 1.0 {
                break;
            }
            let value = (v.value_iterated_to().max(1)) as f64;
            points.push(((1.0 / (1.0 - q)).log10(), value.log10()));
        }
        // The maximum, at the right end of the line.
        let last_x = points.last().map_or(0.0, |p| p.0);
        points.push((last_x + 0.3, (h.max().max(1) as f64).log10()));
        lines.push((name, points));
    }
    let all = lines.iter().flat_map(|(_, p)| p.iter());
    let x_max = all.clone().map(|p| p.0).fold(2.0_f64, f64::max).ceil().min(7.0);
    let (y_lo, y_hi) = decades(all.map(|p| p.1));
    svg(520, |root| {
        let mut x_ticks = vec![2f64.log10()];
        x_ticks.extend((1..=x_max as u32).map(f64::from));
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(12)
            .margin_right(36)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(
                Axis::new(0.0..x_max, x_ticks),
                Axis::new(y_lo..y_hi, whole(y_lo, y_hi)),
            )?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (log scale)")
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| duration_label(*y))
            .draw()?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
        if lines.is_empty() {
            chart.draw_series(std::iter::once(Text::new(
                "no successful operations",
                (x_max * 0.35, (y_lo + y_hi) / 2.0),
                (FONT, 14),
            )))?;
        } else {
            legend(&mut chart)?;
        }
        Ok(())
    })
}

/// The `timeline.svg` markers of `faults`: the time since the start of the load (their
/// `at_s` counts from the end of the warm-up) and a short label such as `kill x2`.
pub fn fault_markers(faults: &[FaultRecord], warmup_s: f64) -> Vec<(f64, String)> {
    faults
        .iter()
        .map(|f| {
            let mut label = f.action.clone();
            if !f.groups.is_empty() {
                let sizes: Vec<String> = f.groups.iter().map(|g| g.len().to_string()).collect();
                let _ = write!(label, " {}", sizes.join("|"));
            } else if f.nodes.len() > 1 {
                let _ = write!(label, " x{}", f.nodes.len());
            }
            if f.error.is_some() {
                label.push_str(" (failed)");
            }
            ((f.at_s + warmup_s).max(0.0), label)
        })
        .collect()
}

/// `timeline.svg`: ops/s and p99 per row, and the `(elapsed_s, label)` fault markers.
pub fn timeline_svg(title: &str, rows: &[TimelineRow], faults: &[(f64, String)]) -> String {
    let t_max = rows
        .iter()
        .map(|r| r.elapsed_s)
        .chain(faults.iter().map(|f| f.0))
        .fold(1.0_f64, f64::max);
    // A short last row is a moment's rate, not an interval's: left out of both lines.
    let rows: Vec<&TimelineRow> = rows.iter().filter(|r| !r.is_partial()).collect();
    let ops_top = nice_ceiling(rows.iter().map(|r| r.ops_per_s).fold(0.0_f64, f64::max));
    let p99: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.elapsed_s, (r.p99_us.max(1) as f64).log10()))
        .collect();
    let (y_lo, y_hi) = decades(p99.iter().map(|p| p.1));
    let warmup_end = rows
        .iter()
        .filter(|r| r.warmup)
        .map(|r| r.elapsed_s)
        .reduce(f64::max);
    let step = time_step(t_max);
    let t_ticks: Vec<f64> = (0..)
        .map(|k| f64::from(k) * step)
        .take_while(|t| *t <= t_max + 1e-9)
        .collect();
    svg(640, |root| {
        let root = root.titled(title, (FONT, 18))?;
        let (upper, lower) = root.split_vertically(290);
        // Fault labels go above the top panel: staggered, so that faults close together stay
        // readable.
        let mut top = ChartBuilder::on(&upper)
            .margin(12)
            .margin_top(40)
            .x_label_area_size(25)
            .y_label_area_size(80)
            .build_cartesian_2d(
                Axis::new(0.0..t_max, t_ticks.clone()),
                Axis::new(0.0..ops_top, ops_ticks(ops_top)),
            )?;
        top.configure_mesh()
            .y_desc("ops/s")
            .x_label_formatter(&|t| format!("{t:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        let mut bottom = ChartBuilder::on(&lower)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(
                Axis::new(0.0..t_max, t_ticks),
                Axis::new(y_lo..y_hi, whole(y_lo, y_hi)),
            )?;
        bottom
            .configure_mesh()
            .x_desc("seconds since the start of the load")
            .y_desc("p99 latency (log scale)")
            .x_label_formatter(&|t| format!("{t:.0}"))
            .y_label_formatter(&|y| duration_label(*y))
            .draw()?;
        if let Some(end) = warmup_end {
            top.draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (end, ops_top)],
                WARMUP_COLOR.filled(),
            )))?;
            bottom.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y_lo), (end, y_hi)],
                WARMUP_COLOR.filled(),
            )))?;
            top.draw_series(std::iter::once(Text::new(
                "warm-up",
                (0.0, ops_top * 0.08),
                (FONT, 12).into_font().color(&RGBColor(0x77, 0x77, 0x77)),
            )))?;
        }
        top.draw_series(LineSeries::new(
            rows.iter().map(|r| (r.elapsed_s, r.ops_per_s)),
            COLORS[0].stroke_width(2),
        ))?;
        bottom.draw_series(LineSeries::new(p99.iter().copied(), COLORS[1].stroke_width(2)))?;
        for (i, (at, label)) in faults.iter().enumerate() {
            let style = FAULT_COLOR.stroke_width(1);
            top.draw_series(DashedLineSeries::new([(*at, 0.0), (*at, ops_top)], 4, 3, style))?;
            bottom.draw_series(DashedLineSeries::new([(*at, y_lo), (*at, y_hi)], 4, 3, style))?;
            let (x, _) = top.backend_coord(&(*at, ops_top));
            upper.draw(&Text::new(
                label.clone(),
                (x + 3, 16 + 13 * (i % 2) as i32),
                (FONT, 12).into_font().color(&FAULT_COLOR),
            ))?;
        }
        Ok(())
    })
}

/// One line of an [`xy_svg`] chart.
#[derive(Clone, Debug)]
pub struct XySeries {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Which of the palette's colors (series that belong together share one).
    pub color: usize,
    /// A dashed line without markers (a prediction), else a solid line with a dot per point.
    pub dashed: bool,
    /// Optional vertical bars, `(x, low, high)` each (e.g. the spread of the trials).
    pub bars: Vec<(f64, f64, f64)>,
}

/// A line chart on linear axes starting at 0: x ticks at every distinct x of the series
/// (labelled by `x_label_of`), y up to a round number.
pub fn xy_svg(
    title: &str,
    x_title: &str,
    y_title: &str,
    series: &[XySeries],
    x_label_of: &dyn Fn(f64) -> String,
) -> String {
    let mut xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let x_max = xs.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    let y_top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1).chain(s.bars.iter().map(|b| b.2)))
        .fold(0.0f64, f64::max);
    let y_max = nice_ceiling(y_top.max(0.01));
    let y_ticks: Vec<f64> = (0..=5).map(|k| y_max * f64::from(k) / 5.0).collect();
    svg(480, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(
                Axis::new(0.0..x_max * 1.05, xs.clone()),
                Axis::new(0.0..y_max, y_ticks),
            )?;
        chart
            .configure_mesh()
            .x_desc(x_title)
            .y_desc(y_title)
            .x_label_formatter(&|x| x_label_of(*x))
            .y_label_formatter(&|y| format!("{}", (y * 1e4).round() / 1e4))
            .draw()?;
        for s in series {
            let color = COLORS[s.color % COLORS.len()];
            let mut points = s.points.clone();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let drawn = if s.dashed {
                chart.draw_series(DashedLineSeries::new(points, 6, 4, color.stroke_width(2)))?
            } else {
                chart.draw_series(s.bars.iter().map(|&(x, low, high)| {
                    ErrorBar::new_vertical(x, low, (low + high) / 2.0, high, color.stroke_width(1), 8)
                }))?;
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
                chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?
            };
            drawn
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
        legend(&mut chart)?;
        Ok(())
    })
}

/// The series' legend, in the upper left corner over a white box.
fn legend<'a, X, Y>(chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>) -> Drawn
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 12))
        .draw()?;
    Ok(())
}

/// The whole decades around `values` (log10 of the values): `(floor(min), ceil(max))`, at
/// least one decade apart; `(0, 3)` (1 µs to 1 ms) without values.
fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    } else {
        (0.0, 3.0)
    }
}

/// 5 steps of 1, 2 or 10 times a power of ten up to `top`; 4 for a top of 2 times one.
fn ops_ticks(top: f64) -> Vec<f64> {
    let steps = if (top / 10f64.powf(top.log10().floor())).round() == 2.0 {
        4
    } else {
        5
    };
    (0..=steps)
        .map(|i| top * f64::from(i) / f64::from(steps))
        .collect()
}

/// The whole numbers from `lo` to `hi`.
fn whole(lo: f64, hi: f64) -> Vec<f64> {
    ((lo as i32)..=(hi as i32)).map(f64::from).collect()
}

/// `50%`, `90%`, `99%`, `99.9%`, ... for `x = log10(1/(1-p))`.
fn percentile_label(x: f64) -> String {
    if (x - 2f64.log10()).abs() < 1e-9 {
        return "50%".into();
    }
    let d = x.round().max(0.0) as u32;
    match d {
        0 => "0%".into(),
        1 | 2 => format!("{}%", 100 - 10u32.pow(2 - d)),
        _ => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// `1 µs`, `10 µs`, `100 µs`, `1 ms`, ... for `y = log10` of microseconds.
fn duration_label(y: f64) -> String {
    let d = y.round().max(0.0) as u32;
    let (unit, base) = match d {
        0..=2 => ("µs", 0),
        3..=5 => ("ms", 3),
        _ => ("s", 6),
    };
    format!("{} {unit}", 10u64.pow(d - base))
}

/// A round number at or above `v` (1, 2 or 5 times a power of ten).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// Seconds between ticks, for about 10 ticks or fewer.
fn time_step(t_max: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|s| t_max / s <= 12.0)
        .unwrap_or(3600.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(2f64.log10()), "50%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
        assert_eq!(duration_label(0.0), "1 µs");
        assert_eq!(duration_label(2.0), "100 µs");
        assert_eq!(duration_label(3.0), "1 ms");
        assert_eq!(duration_label(7.0), "10 s");
        assert_eq!(nice_ceiling(1234.0), 2000.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(decades([2.3, 4.1].into_iter()), (2.0, 5.0));
        assert_eq!(decades(std::iter::empty()), (0.0, 3.0));
    }
}
