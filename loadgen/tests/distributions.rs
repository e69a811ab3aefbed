//! Key distributions, checked statistically over many seeded draws (deterministic: the seed
//! is fixed, so these never flake; the tolerances leave room for other seeds too).

use chordkv_core::rng::Rng;
use loadgen::keys::{zeta, KeySpace, Purpose, Zipfian};
use loadgen::workload::Distribution;

const DRAWS: usize = 100_000;

fn counts(keys: u64, distribution: Distribution, purpose: Purpose, seed: u64) -> Vec<u64> {
    let space = KeySpace::new(keys, distribution);
    let mut chooser = space.chooser(0, 1);
    let mut rng = Rng::new(seed);
    let mut counts = vec![0u64; keys as usize];
    for _ in 0..DRAWS {
        let k = chooser.next(purpose, &mut rng);
        assert!(k < keys, "key {k} outside 0..{keys}");
        counts[k as usize] += 1;
    }
    counts
}

#[test]
fn uniform_covers_the_keyspace_evenly() {
    let keys = 1000;
    let c = counts(keys, Distribution::Uniform, Purpose::Read, 7);
    assert!(c.iter().all(|&n| n > 0), "some key was never drawn");
    let expected = DRAWS as f64 / keys as f64;
    let (min, max) = (*c.iter().min().unwrap() as f64, *c.iter().max().unwrap() as f64);
    // 100 expected per key, standard deviation 10: 5 sigma either way.
    assert!(
        min > expected * 0.5 && max < expected * 1.5,
        "min {min} max {max}"
    );
}

#[test]
fn hotspot_sends_the_hot_fraction_of_operations_to_the_hot_fraction_of_keys() {
    let keys = 1000;
    for (data, ops) in [(0.2, 0.8), (0.1, 0.95), (0.5, 0.5)] {
        let d = Distribution::Hotspot {
            hot_data_fraction: data,
            hot_op_fraction: ops,
        };
        let c = counts(keys, d, Purpose::Read, 11);
        let hot = (keys as f64 * data) as usize;
        let hot_share = c[..hot].iter().sum::<u64>() as f64 / DRAWS as f64;
        assert!(
            (hot_share - ops).abs() < 0.01,
            "{data}/{ops}: hot share {hot_share}"
        );
        // Within each set, keys are equally likely.
        let hot_mean = DRAWS as f64 * ops / hot as f64;
        let hot_max = *c[..hot].iter().max().unwrap() as f64;
        assert!(
            hot_max < hot_mean * 1.5,
            "{data}/{ops}: hot max {hot_max} mean {hot_mean}"
        );
        // Cold keys are drawn too (at 5% of 100k draws over 900 keys, a few may be missed).
        let cold_seen = c[hot..].iter().filter(|&&n| n > 0).count() as f64;
        assert!(
            cold_seen > 0.95 * (keys as usize - hot) as f64,
            "{data}/{ops}: {cold_seen} cold keys seen"
        );
    }
}

#[test]
fn zipfian_top_ranks_match_theory() {
    let keys = 1000;
    for theta in [0.99, 0.8, 0.5] {
        let c = counts(keys, Distribution::Zipfian { theta }, Purpose::Read, 3);
        let zetan = zeta(keys, theta);
        // P(rank i) = 1 / ((i+1)^theta * zetan) for the first ranks, which YCSB's generator
        // draws exactly.
        for (rank, &n) in c.iter().enumerate().take(2) {
            let p = 1.0 / ((rank as f64 + 1.0).powf(theta) * zetan);
            let f = n as f64 / DRAWS as f64;
            assert!(
                (f / p - 1.0).abs() < 0.05,
                "theta {theta} rank {rank}: freq {f} theory {p}"
            );
        }
        let ratio = c[0] as f64 / c[1] as f64;
        let theory = 2f64.powf(theta);
        assert!(
            (ratio / theory - 1.0).abs() < 0.06,
            "theta {theta}: top ratio {ratio} theory {theory}"
        );
        // Popularity falls with rank: the first 10 ranks take more than ranks 10..100 do per key.
        let head: u64 = c[..10].iter().sum();
        let next: u64 = c[10..100].iter().sum();
        assert!(head as f64 / 10.0 > next as f64 / 90.0 * 2.0, "theta {theta}");
    }
}

#[test]
fn zipfian_rank_frequency_slope_is_minus_theta() {
    // log f(rank) against log rank over the well-populated ranks: a least-squares slope near
    // -theta (the generator approximates the tail, so the tolerance is loose).
    let keys = 10_000;
    let theta = 0.99;
    let c = counts(keys, Distribution::Zipfian { theta }, Purpose::Read, 5);
    let pts: Vec<(f64, f64)> = (0..50)
        .map(|i| (((i + 1) as f64).ln(), (c[i].max(1) as f64).ln()))
        .collect();
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
    let (mx, my) = (sx / n, sy / n);
    let cov: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let slope = cov / var;
    assert!((slope + theta).abs() < 0.15, "slope {slope}");
}

#[test]
fn zipfian_constant_is_computed_once_and_shared() {
    let z = Zipfian::new(1000, 0.99);
    assert!((z.zetan() - zeta(1000, 0.99)).abs() < 1e-9);
    let mut rng = Rng::new(1);
    assert!((0..10_000).all(|_| z.sample(&mut rng) < 1000));
}

#[test]
fn hotkey_is_always_the_same_key() {
    let c = counts(100, Distribution::Hotkey, Purpose::Read, 1);
    assert_eq!(c[0], DRAWS as u64);
}

#[test]
fn sequential_walks_the_keyspace_in_order() {
    let space = KeySpace::new(10, Distribution::Sequential);
    let mut rng = Rng::new(1);
    let mut second = space.chooser(1, 2);
    let drawn: Vec<u64> = (0..12).map(|_| second.next(Purpose::Read, &mut rng)).collect();
    assert_eq!(drawn, [5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6]);
}

#[test]
fn latest_writes_in_sequence_and_reads_recent_keys() {
    let space = KeySpace::new(1000, Distribution::Latest);
    let mut chooser = space.chooser(0, 1);
    let mut rng = Rng::new(1);
    let written: Vec<u64> = (0..500).map(|_| chooser.next(Purpose::Write, &mut rng)).collect();
    assert_eq!(written, (0..500).collect::<Vec<u64>>());
    let reads: Vec<u64> = (0..10_000)
        .map(|_| chooser.next(Purpose::Read, &mut rng))
        .collect();
    assert!(reads.iter().all(|&k| k < 500), "a read of a key never written");
    let newest = reads.iter().filter(|&&k| k == 499).count();
    let oldest = reads.iter().filter(|&&k| k == 0).count();
    assert!(newest > 10 * oldest.max(1), "newest {newest} oldest {oldest}");
}
