//! The zipfian key sampler the simulator and loadgen draw keys with, over the core's seeded
//! [`Rng`].

use chordkv_core::rng::Rng;

/// YCSB's `ZipfianGenerator` (Gray et al., "Quickly generating billion-record synthetic
/// databases", SIGMOD 1994): rank 0 is the most popular. The zeta constant costs O(n) and
/// is computed once per run; draws are O(1).
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    zetan: f64,
    alpha: f64,
    eta: f64,
    /// 1 + 0.5^theta: below it (times zetan), the draw is rank 1.
    half_pow_theta_plus_one: f64,
}

/// sum over i in 1..=n of 1 / i^theta.
pub fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    /// Ranks `0..items` (at least one), `0 < theta < 1`.
    pub fn new(items: u64, theta: f64) -> Zipfian {
        let items = items.max(1);
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2.min(items), theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = if items <= 2 {
            0.0
        } else {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        Zipfian {
            items,
            theta,
            zetan,
            alpha,
            eta,
            half_pow_theta_plus_one: 1.0 + 0.5f64.powf(theta),
        }
    }

    pub fn items(&self) -> u64 {
        self.items
    }

    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// The zeta constant: the probability of rank 0 is 1 / zetan.
    pub fn zetan(&self) -> f64 {
        self.zetan
    }

    /// A rank in `0..items`.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        if uz < 1.0 || self.items == 1 {
            return 0;
        }
        if uz < self.half_pow_theta_plus_one {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}
