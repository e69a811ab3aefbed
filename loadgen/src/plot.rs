//! The two plots a run writes next to `summary.json`, as plain SVG written by hand (no font
//! or drawing libraries needed):
//!
//! - `latency.svg`: latency (µs, log scale) by percentile, one line per operation, the
//!   percentile on the usual `1/(1-p)` log scale (50%, 90%, 99%, 99.9%, ...).
//! - `timeline.svg`: ops/s per second (top panel) and p99 latency (bottom panel, log scale),
//!   the warm-up shaded and each fault marked by a vertical line and a short label.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::hgrm::TICKS_PER_HALF_DISTANCE;
use crate::report::{FaultRecord, TimelineRow};

pub const LATENCY_SVG: &str = "latency.svg";
pub const TIMELINE_SVG: &str = "timeline.svg";

const WIDTH: f64 = 900.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
const FAULT_COLOR: &str = "#c00000";

/// A rectangle of the picture, with the data ranges it maps.
struct Panel {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    /// Data range on x.
    xr: (f64, f64),
    /// Data range on y (log10 of the value for log panels).
    yr: (f64, f64),
}

impl Panel {
    fn px(&self, x: f64) -> f64 {
        let (a, b) = self.xr;
        let t = if b > a { (x - a) / (b - a) } else { 0.0 };
        self.x0 + t.clamp(0.0, 1.0) * self.w
    }

    fn py(&self, y: f64) -> f64 {
        let (a, b) = self.yr;
        let t = if b > a { (y - a) / (b - a) } else { 0.0 };
        self.y0 + self.h - t.clamp(0.0, 1.0) * self.h
    }

    fn frame(&self, out: &mut String) {
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
            self.x0, self.y0, self.w, self.h
        );
    }

    fn x_tick(&self, out: &mut String, x: f64, label: &str) {
        let px = self.px(x);
        let bottom = self.y0 + self.h;
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{bottom:.1}" stroke="#ddd"/>"##,
            self.y0
        );
        let _ = writeln!(
            out,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            esc(label)
        );
    }

    fn y_tick(&self, out: &mut String, y: f64, label: &str) {
        let py = self.py(y);
        let right = self.x0 + self.w;
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{py:.1}" x2="{right:.1}" y2="{py:.1}" stroke="#ddd"/>"##,
            self.x0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            self.x0 - 6.0,
            py + 4.0,
            esc(label)
        );
    }

    fn polyline(&self, out: &mut String, points: &[(f64, f64)], color: &str) {
        if points.is_empty() {
            return;
        }
        let pts: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            pts.join(" ")
        );
    }

    /// A label turned upright along the left edge.
    fn y_title(&self, out: &mut String, title: &str) {
        let (x, y) = (self.x0 - 58.0, self.y0 + self.h / 2.0);
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
            esc(title)
        );
    }
}

fn header(out: &mut String, height: f64, title: &str) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        esc(title)
    );
}

/// `latency.svg`: one line per `(operation, histogram)`; empty histograms are left out.
pub fn latency_svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let height = 520.0;
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
    let y_lo = all.clone().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_hi = all.map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (y_lo, y_hi) = if y_lo.is_finite() {
        (y_lo.floor(), y_hi.ceil().max(y_lo.floor() + 1.0))
    } else {
        (0.0, 3.0)
    };
    let panel = Panel {
        x0: LEFT,
        y0: 40.0,
        w: WIDTH - LEFT - RIGHT - 110.0,
        h: height - 40.0 - 60.0,
        xr: (0.0, x_max),
        yr: (y_lo, y_hi),
    };
    let mut out = String::new();
    header(&mut out, height, title);
    panel.x_tick(&mut out, 2f64.log10(), "50%");
    for d in 1..=(x_max as u32) {
        panel.x_tick(&mut out, f64::from(d), &percentile_label(d));
    }
    for d in (y_lo as i32)..=(y_hi as i32) {
        panel.y_tick(&mut out, f64::from(d), &duration_label(d));
    }
    panel.frame(&mut out);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        panel.x0 + panel.w / 2.0,
        height - 18.0
    );
    panel.y_title(&mut out, "latency (log scale)");
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        panel.polyline(&mut out, points, color);
        legend(
            &mut out,
            panel.x0 + panel.w + 15.0,
            panel.y0 + 10.0 + 20.0 * i as f64,
            color,
            name,
        );
    }
    if lines.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no successful operations</text>"#,
            panel.x0 + panel.w / 2.0,
            panel.y0 + panel.h / 2.0
        );
    }
    out.push_str("</svg>\n");
    out
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
    let height = 620.0;
    let t_max = rows
        .iter()
        .map(|r| r.elapsed_s)
        .chain(faults.iter().map(|f| f.0))
        .fold(1.0_f64, f64::max);
    // A short last row is a moment's rate, not an interval's: left out of both lines.
    let rows: Vec<TimelineRow> = rows.iter().filter(|r| !r.is_partial()).cloned().collect();
    let rows = rows.as_slice();
    let ops_max = rows.iter().map(|r| r.ops_per_s).fold(0.0_f64, f64::max);
    let ops_top = nice_ceiling(ops_max);
    let p99: Vec<f64> = rows.iter().map(|r| (r.p99_us.max(1) as f64).log10()).collect();
    let y_lo = p99.iter().copied().fold(f64::INFINITY, f64::min);
    let y_hi = p99.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (y_lo, y_hi) = if y_lo.is_finite() {
        (y_lo.floor(), y_hi.ceil().max(y_lo.floor() + 1.0))
    } else {
        (0.0, 3.0)
    };
    let w = WIDTH - LEFT - RIGHT;
    let top = Panel {
        x0: LEFT,
        y0: 70.0,
        w,
        h: 220.0,
        xr: (0.0, t_max),
        yr: (0.0, ops_top),
    };
    let bottom = Panel {
        x0: LEFT,
        y0: 330.0,
        w,
        h: 220.0,
        xr: (0.0, t_max),
        yr: (y_lo, y_hi),
    };
    let mut out = String::new();
    header(&mut out, height, title);

    // The warm-up, shaded: up to the end of its last row.
    if let Some(end) = rows
        .iter()
        .filter(|r| r.warmup)
        .map(|r| r.elapsed_s)
        .reduce(f64::max)
    {
        for p in [&top, &bottom] {
            let _ = writeln!(
                out,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#eeeeee"/>"##,
                p.x0,
                p.y0,
                p.px(end) - p.x0,
                p.h
            );
        }
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#777">warm-up</text>"##,
            top.x0 + 4.0,
            top.y0 + top.h - 6.0
        );
    }
    let step = time_step(t_max);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        top.x_tick(&mut out, t, &format!("{t:.0}"));
        bottom.x_tick(&mut out, t, &format!("{t:.0}"));
        t += step;
    }
    // 5 steps of 1, 2 or 10 times a power of ten; 4 of 5 for a top of 2 times one.
    let steps = if (ops_top / 10f64.powf(ops_top.log10().floor())).round() == 2.0 {
        4
    } else {
        5
    };
    for i in 0..=steps {
        let v = ops_top * f64::from(i) / f64::from(steps);
        top.y_tick(&mut out, v, &format!("{v:.0}"));
    }
    for d in (y_lo as i32)..=(y_hi as i32) {
        bottom.y_tick(&mut out, f64::from(d), &duration_label(d));
    }
    top.frame(&mut out);
    bottom.frame(&mut out);
    top.y_title(&mut out, "ops/s");
    bottom.y_title(&mut out, "p99 latency (log scale)");
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the start of the load</text>"#,
        bottom.x0 + bottom.w / 2.0,
        height - 18.0
    );
    let ops: Vec<(f64, f64)> = rows.iter().map(|r| (r.elapsed_s, r.ops_per_s)).collect();
    top.polyline(&mut out, &ops, COLORS[0]);
    let p99_points: Vec<(f64, f64)> = rows.iter().zip(&p99).map(|(r, &y)| (r.elapsed_s, y)).collect();
    bottom.polyline(&mut out, &p99_points, COLORS[1]);

    for (i, (at, label)) in faults.iter().enumerate() {
        let x = top.px(*at);
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{FAULT_COLOR}" stroke-dasharray="4 3"/>"#,
            top.y0 - 2.0,
            bottom.y0 + bottom.h
        );
        // Staggered, so that faults close together stay readable.
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" fill="{FAULT_COLOR}">{}</text>"#,
            x + 3.0,
            top.y0 - 6.0 - 13.0 * (i % 2) as f64,
            esc(label)
        );
    }
    out.push_str("</svg>\n");
    out
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
    let height = 480.0;
    let legend_w = 170.0;
    let mut xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let x_max = xs.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    let y_top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1).chain(s.bars.iter().map(|b| b.2)))
        .fold(0.0f64, f64::max);
    let y_max = nice_ceiling(y_top.max(0.01));
    let panel = Panel {
        x0: LEFT,
        y0: 45.0,
        w: WIDTH - LEFT - RIGHT - legend_w,
        h: height - 45.0 - 60.0,
        xr: (0.0, x_max * 1.05),
        yr: (0.0, y_max),
    };
    let mut out = String::new();
    header(&mut out, height, title);
    for k in 0..=5 {
        let y = y_max * f64::from(k) / 5.0;
        panel.y_tick(&mut out, y, &format!("{}", (y * 1e4).round() / 1e4));
    }
    for &x in &xs {
        panel.x_tick(&mut out, x, &x_label_of(x));
    }
    panel.frame(&mut out);
    panel.y_title(&mut out, y_title);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        panel.x0 + panel.w / 2.0,
        panel.y0 + panel.h + 38.0,
        esc(x_title)
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[s.color % COLORS.len()];
        let mut points = s.points.clone();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if s.dashed {
            let pts: Vec<String> = points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", panel.px(x), panel.py(y)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4" points="{}"/>"#,
                pts.join(" ")
            );
        } else {
            panel.polyline(&mut out, &points, color);
            for &(x, low, high) in &s.bars {
                let _ = writeln!(
                    out,
                    r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{color}"/>"#,
                    panel.px(x),
                    panel.py(low),
                    panel.py(high)
                );
            }
            for &(x, y) in &points {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                    panel.px(x),
                    panel.py(y)
                );
            }
        }
        legend(
            &mut out,
            panel.x0 + panel.w + 15.0,
            panel.y0 + 10.0 + 20.0 * i as f64,
            color,
            &s.name,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn legend(out: &mut String, x: f64, y: f64, color: &str, name: &str) {
    let _ = writeln!(
        out,
        r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/>"#,
        x + 20.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
        x + 26.0,
        y + 4.0,
        esc(name)
    );
}

/// `90%`, `99%`, `99.9%`, ... for `1/(1-p) = 10^d`.
fn percentile_label(d: u32) -> String {
    let nines = d as usize;
    if nines <= 2 {
        format!("{}%", 100 - 10u32.pow(2 - d))
    } else {
        format!("99.{}%", "9".repeat(nines - 2))
    }
}

/// `1 µs`, `10 µs`, `100 µs`, `1 ms`, ... for `10^d` microseconds.
fn duration_label(d: i32) -> String {
    let d = d.max(0) as u32;
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(3), "99.9%");
        assert_eq!(percentile_label(4), "99.99%");
        assert_eq!(duration_label(0), "1 µs");
        assert_eq!(duration_label(2), "100 µs");
        assert_eq!(duration_label(3), "1 ms");
        assert_eq!(duration_label(7), "10 s");
        assert_eq!(nice_ceiling(1234.0), 2000.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
