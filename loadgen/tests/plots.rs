//! The plots on synthetic histograms and timelines: SVG with lines and labels.

use hdrhistogram::Histogram;
use loadgen::plot::{fault_markers, latency_svg, timeline_svg};
use loadgen::report::{timeline_csv, FaultRecord, TimelineRow};

fn looks_like_svg(text: &str) {
    assert!(text.starts_with("<svg") || text.starts_with("<?xml"), "{text}");
    assert!(text.trim_end().ends_with("</svg>"), "{text}");
    assert!(text.contains("<polyline") || text.contains("<path"), "{text}");
    assert_eq!(
        text.matches("<text").count(),
        text.matches("</text>").count(),
        "{text}"
    );
}

/// Whether the SVG has a text element that says `t` (plotters writes `>\nt\n<`).
fn has_text(svg: &str, t: &str) -> bool {
    let t = t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    svg.contains(&format!(">{t}<")) || svg.contains(&format!(">\n{t}\n<"))
}

fn histogram(base: u64) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for i in 0..10_000u64 {
        h.record(base + i % 500 + if i % 1000 == 0 { 50_000 } else { 0 })
            .unwrap();
    }
    h
}

#[test]
fn latency_plot_has_a_line_per_operation_and_percentile_ticks() {
    let (get, put, delete) = (histogram(100), histogram(300), Histogram::<u64>::new(3).unwrap());
    let svg = latency_svg(
        "tiny <closed>: 1234 ops/s",
        &[("get", &get), ("put", &put), ("delete", &delete)],
    );
    looks_like_svg(&svg);
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plot-latency.svg"),
        &svg,
    )
    .unwrap();
    // A line and a legend entry per operation with values: the empty delete is left out.
    assert_eq!(
        svg.matches(r##"stroke="#1F77B4""##).count(),
        2,
        "get: line and legend"
    );
    assert_eq!(
        svg.matches(r##"stroke="#D62728""##).count(),
        2,
        "put: line and legend"
    );
    assert!(!svg.contains(r##"stroke="#2CA02C""##), "no third line: {svg}");
    assert!(has_text(&svg, "tiny <closed>: 1234 ops/s"), "{svg}");
    for label in [
        "get",
        "put",
        "50%",
        "90%",
        "99%",
        "99.9%",
        "99.99%",
        "100 µs",
        "1 ms",
        "percentile",
    ] {
        assert!(has_text(&svg, label), "{label}: {svg}");
    }
    assert!(!has_text(&svg, "delete"), "{svg}");
    // Nothing measured still makes a picture.
    let empty = latency_svg("empty", &[]);
    assert!(empty.starts_with("<svg") && has_text(&empty, "no successful operations"));
}

#[test]
fn timeline_plot_marks_the_faults() {
    let rows: Vec<TimelineRow> = (1..=8)
        .map(|s| TimelineRow {
            elapsed_s: f64::from(s),
            interval_s: 1.0,
            warmup: s <= 2,
            ops_per_s: if s == 5 { 200.0 } else { 1500.0 },
            p50_us: 200,
            p99_us: if s == 5 { 90_000 } else { 900 },
            errors: 0,
            faults: Vec::new(),
        })
        .collect();
    let faults = [
        FaultRecord {
            at_s: 2.0,
            action: "kill".into(),
            nodes: vec!["127.0.0.1:7101".into(), "127.0.0.1:7102".into()],
            groups: Vec::new(),
            what: "nodes 1, 2".into(),
            error: None,
        },
        FaultRecord {
            at_s: 3.5,
            action: "restart".into(),
            nodes: vec!["127.0.0.1:7101".into()],
            groups: Vec::new(),
            what: "node 1".into(),
            error: None,
        },
        FaultRecord {
            at_s: 4.0,
            action: "partition".into(),
            nodes: vec![
                "10.78.5.10:7000".into(),
                "10.78.5.11:7000".into(),
                "10.78.5.12:7000".into(),
            ],
            groups: vec![
                vec!["10.78.5.10:7000".into(), "10.78.5.11:7000".into()],
                vec!["10.78.5.12:7000".into()],
            ],
            what: "nodes 0, 1 (...) | 2 (...)".into(),
            error: None,
        },
        FaultRecord {
            at_s: 5.0,
            action: "heal".into(),
            nodes: Vec::new(),
            groups: Vec::new(),
            what: "the network".into(),
            error: None,
        },
    ];
    let markers = fault_markers(&faults, 2.0);
    assert_eq!(
        markers,
        vec![
            (4.0, "kill x2".to_string()),
            (5.5, "restart".to_string()),
            (6.0, "partition 2|1".to_string()),
            (7.0, "heal".to_string())
        ]
    );
    assert_eq!(
        faults[2].timeline_entries(),
        vec!["partition 10.78.5.10:7000 10.78.5.11:7000 | 10.78.5.12:7000".to_string()]
    );
    assert_eq!(faults[3].timeline_entries(), vec!["heal".to_string()]);
    let svg = timeline_svg("failure: 1400 ops/s", &rows, &markers);
    looks_like_svg(&svg);
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plot-timeline.svg"),
        &svg,
    )
    .unwrap();
    // One line each for ops/s and p99, in the first two colors.
    assert_eq!(svg.matches(r##"stroke="#1F77B4""##).count(), 1, "ops/s");
    assert_eq!(svg.matches(r##"stroke="#D62728""##).count(), 1, "p99");
    for label in [
        "kill x2",
        "restart",
        "partition 2|1",
        "heal",
        "ops/s",
        "p99 latency (log scale)",
        "warm-up",
        "failure: 1400 ops/s",
        "seconds since the start of the load",
    ] {
        assert!(has_text(&svg, label), "{label}: {svg}");
    }
    // Each fault: a dashed line through both panels (drawn as short segments) and a label.
    assert_eq!(
        svg.matches(r##"fill="#C00000""##).count(),
        4,
        "one label per fault"
    );
    assert!(
        svg.matches(r##"stroke="#C00000""##).count() >= 4 * 2 * 2,
        "dashed fault lines"
    );
    // No rows at all still makes a picture.
    assert!(timeline_svg("empty", &[], &[]).starts_with("<svg"));
}

/// The run's last row, shorter than half a second, is a moment's rate (a few operations over
/// a few milliseconds read as a collapse, or a spike): the timeline plot leaves it out, and
/// `timeline.csv` says how long it is.
#[test]
fn a_short_last_interval_is_not_drawn_as_a_rate() {
    let full: Vec<TimelineRow> = (1..=6)
        .map(|s| TimelineRow {
            elapsed_s: f64::from(s),
            interval_s: 1.0,
            warmup: false,
            ops_per_s: 1500.0,
            p50_us: 200,
            p99_us: 900,
            errors: 0,
            faults: Vec::new(),
        })
        .collect();
    let mut with_tail = full.clone();
    with_tail.push(TimelineRow {
        elapsed_s: 6.051,
        interval_s: 0.051,
        ops_per_s: 99.0,
        p99_us: 250_000,
        ..full[0].clone()
    });
    // A fault after the tail keeps the time axis the same for both.
    let faults = [(7.0, "kill 127.0.0.1:7101".to_string())];
    assert_eq!(
        timeline_svg("t", &with_tail, &faults),
        timeline_svg("t", &full, &faults)
    );
    let csv = timeline_csv(&with_tail);
    assert!(
        csv.lines()
            .last()
            .unwrap()
            .starts_with("6.051,0.051,measure,99.0,"),
        "{csv}"
    );
}
