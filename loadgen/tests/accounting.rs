//! The verification's verdicts (the table in `loadgen::verify`) and the `.hgrm` printer.

use hdrhistogram::Histogram;
use loadgen::hgrm::percentile_distribution;
use loadgen::verify::{judge, parse_value, value_for, write_id, FinalRead, History, Verdict};

const SIZES: (usize, usize) = (32, 64);

fn read(id: Option<u64>, key: u64, version: u64) -> FinalRead {
    FinalRead {
        value: id.map(|id| value_for(id, key, SIZES.0, SIZES.1)),
        version,
    }
}

fn verdict(h: &History, key: u64, r: &FinalRead) -> Verdict {
    judge(h, key, &h.keys[&key], r, SIZES)
}

#[test]
fn values_name_their_write_and_key() {
    let id = write_id(3, 17);
    let v = value_for(id, 99, 32, 64);
    assert!((32..=64).contains(&v.len()));
    assert_eq!(parse_value(&v), Some((id, 99)));
    assert_eq!(value_for(id, 99, 32, 64), v, "a pure function");
}

#[test]
fn the_last_acknowledged_put_read_back_is_ok_and_an_older_one_is_lost() {
    let mut h = History::default();
    let (a, b) = (write_id(0, 0), write_id(0, 1));
    h.ack_put(5, a, 1);
    h.ack_put(5, b, 2);
    h.set_attempted(0, 2);
    assert_eq!(verdict(&h, 5, &read(Some(b), 5, 2)), Verdict::Ok);
    assert_eq!(verdict(&h, 5, &read(Some(a), 5, 1)), Verdict::Lost);
    assert_eq!(verdict(&h, 5, &read(None, 5, 0)), Verdict::Lost);
}

#[test]
fn unacknowledged_writes_that_show_up_are_recovered() {
    let mut h = History::default();
    let (a, b) = (write_id(0, 0), write_id(0, 1));
    h.ack_put(5, a, 1);
    h.unacked_put(5, b);
    h.unacked_put(6, write_id(0, 2));
    h.set_attempted(0, 3);
    assert_eq!(verdict(&h, 5, &read(Some(b), 5, 2)), Verdict::Recovered);
    assert_eq!(
        verdict(&h, 6, &read(Some(write_id(0, 2)), 6, 1)),
        Verdict::Recovered
    );
    assert_eq!(verdict(&h, 6, &read(None, 6, 0)), Verdict::Ok);
}

#[test]
fn values_never_written_to_the_key_are_unexpected() {
    let mut h = History::default();
    let a = write_id(0, 0);
    h.ack_put(5, a, 1);
    h.ack_put(6, write_id(0, 1), 1);
    h.set_attempted(0, 2);
    // Another key's value, an id never attempted, and garbage.
    assert_eq!(
        verdict(&h, 5, &read(Some(write_id(0, 1)), 6, 3)),
        Verdict::Unexpected
    );
    assert_eq!(
        verdict(&h, 5, &read(Some(write_id(0, 9)), 5, 3)),
        Verdict::Unexpected
    );
    let garbage = FinalRead {
        value: Some(b"hello".to_vec()),
        version: 3,
    };
    assert_eq!(verdict(&h, 5, &garbage), Verdict::Unexpected);
}

#[test]
fn an_acknowledged_delete_must_stay_deleted() {
    let mut h = History::default();
    let a = write_id(0, 0);
    h.ack_put(5, a, 1);
    h.ack_delete(5, 2);
    h.set_attempted(0, 1);
    assert_eq!(verdict(&h, 5, &read(None, 5, 0)), Verdict::Ok);
    assert_eq!(verdict(&h, 5, &read(Some(a), 5, 1)), Verdict::Lost);
}

#[test]
fn histories_of_threads_merge_by_highest_version() {
    let mut h1 = History::default();
    let mut h2 = History::default();
    h1.ack_put(1, write_id(0, 0), 4);
    h1.set_attempted(0, 1);
    h2.ack_put(1, write_id(1, 0), 3);
    h2.set_attempted(1, 1);
    h1.merge(h2);
    assert_eq!(h1.acknowledged, 2);
    assert_eq!(h1.keys[&1].acked, Some((4, Some(write_id(0, 0)))));
}

#[test]
fn hgrm_has_the_columns_and_footer_of_java_hdrhistogram() {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    for v in 1..=1000u64 {
        h.record(v).unwrap();
    }
    let text = percentile_distribution(&h, 1.0);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "       Value     Percentile TotalCount 1/(1-Percentile)"
    );
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], "       1.000 0.000000000000          1           1.00");
    assert!(
        lines.contains(&"     500.000 0.500000000000        500           2.00"),
        "{text}"
    );
    let last = lines[lines.len() - 4];
    assert_eq!(last, "    1000.000 1.000000000000       1000");
    assert_eq!(
        lines[lines.len() - 3],
        "#[Mean    =      500.500, StdDeviation   =      288.675]"
    );
    assert_eq!(
        lines[lines.len() - 2],
        "#[Max     =     1000.000, Total count    =         1000]"
    );
    assert_eq!(
        lines[lines.len() - 1],
        "#[Buckets =           22, SubBuckets     =         2048]"
    );
}

#[test]
fn results_directories_are_named_by_utc_time() {
    use std::time::{Duration, UNIX_EPOCH};
    let t = UNIX_EPOCH + Duration::from_secs(1_795_557_271);
    let (compact, iso) = loadgen::report::utc_timestamps(t);
    assert_eq!(compact, "20261124T215431Z");
    assert_eq!(iso, "2026-11-24T21:54:31Z");
    let (_, epoch) = loadgen::report::utc_timestamps(UNIX_EPOCH);
    assert_eq!(epoch, "1970-01-01T00:00:00Z");
    let (_, leap) = loadgen::report::utc_timestamps(UNIX_EPOCH + Duration::from_secs(951_782_400));
    assert_eq!(leap, "2000-02-29T00:00:00Z");
}
