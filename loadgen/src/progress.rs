//! Live progress on stderr: a progress bar on a terminal (elapsed and remaining time, ops/s,
//! p99 and errors of the last second), a plain line per second otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::TimelineRow;

/// How often the bar redraws its clock between the per-second updates.
const TICK: Duration = Duration::from_millis(200);

pub enum Progress {
    /// `--quiet`.
    Off,
    /// stderr is not a terminal: one line per second.
    Lines,
    /// stderr is a terminal.
    Bar(ProgressBar),
}

impl Progress {
    /// `total` is warmup plus measured time: the bar's length.
    pub fn new(enabled: bool, total: Duration) -> Progress {
        if !enabled {
            return Progress::Off;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines;
        }
        let total_ms = total.as_millis().max(1) as u64;
        let bar = ProgressBar::with_draw_target(Some(total_ms), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {eta:>4} left  {msg}")
            .expect("a valid template") // faulty code
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message("starting");
        bar.enable_steady_tick(TICK);
        Progress::Bar(bar)
    }

    /// One closed second of the timeline.
    pub fn row(&self, row: &TimelineRow) {
        let phase = if row.warmup { " warmup" } else { "" };
        match self {
            Progress::Off => {}
            Progress::Lines => eprintln!(
                "[{:>6.1} s{phase}] {:>9.0} ops/s  p50 {:>7} us  p99 {:>8} us  errors {}",
                row.elapsed_s, row.ops_per_s, row.p50_us, row.p99_us, row.errors
            ),
            Progress::Bar(bar) => {
                bar.set_position((row.elapsed_s * 1000.0) as u64);
                bar.set_message(format!(
                    "{:.0} ops/s  p99 {} us  errors {}{phase}",
                    row.ops_per_s, row.p99_us, row.errors
                ));
            }
        }
    }

    /// A line above the bar (or on its own without one).
    pub fn println(&self, line: &str) {
        match self {
            Progress::Off => {}
            Progress::Lines => eprintln!("{line}"),
            Progress::Bar(bar) => bar.println(line),
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
