//! The `.hgrm` percentile distribution text of Java HdrHistogram's
//! `outputPercentileDistribution`, which the `hdrhistogram` crate does not print: what
//! HdrHistogram's plotter and most tooling read.
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!      101.000 0.000000000000          1           1.00
//!      ...
//!     2047.000 1.000000000000       1000
//! #[Mean    =      412.123, StdDeviation   =       98.765]
//! #[Max     =     2047.000, Total count    =         1000]
//! #[Buckets =           22, SubBuckets     =         2048]
//! ```

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Percentile steps per halving of the distance to 100%, as Java's default.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The distribution of `h` with its values divided by `scale` (1.0 keeps the recorded unit).
pub fn percentile_distribution(h: &Histogram<u64>, scale: f64) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if h.is_empty() {
        footer(&mut out, h, scale, digits);
        return out;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / scale;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{value:>12.digits$} {q:>2.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:>12.digits$} {q:>2.12} {total:>10}");
        }
    }
    footer(&mut out, h, scale, digits);
    out
}

fn footer(out: &mut String, h: &Histogram<u64>, scale: f64, digits: usize) {
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.digits$}, StdDeviation   = {:>12.digits$}]",
        h.mean() / scale,
        h.stdev() / scale
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.digits$}, Total count    = {:>12}]",
        h.max() as f64 / scale,
        h.len()
    );
    // Java's subBucketCount: the power of two that holds 2 * 10^sigfig.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    );
}
