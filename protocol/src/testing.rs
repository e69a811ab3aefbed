//! What the crate's unit tests share.

/// SplitMix64: a tiny deterministic generator for the random-bytes tests (seeded, so that a
/// failure replays).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n`; 0 when `n` is 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub(crate) fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

impl Rng {
    /// Appends fewer than `below` random bytes to `buf`.
    pub(crate) fn noise(&mut self, buf: &mut Vec<u8>, below: usize) {
        buf.extend((0..self.below(below)).map(|_| self.byte()));
    }

    /// Changes 1 to `most` bytes of `buf` (which must not be empty): each, by a coin toss, to
    /// `replacement` or with one bit flipped.
    pub(crate) fn change_bytes(
        &mut self,
        buf: &mut [u8],
        most: usize,
        mut replacement: impl FnMut(&mut Rng) -> u8,
    ) {
        for _ in 0..1 + self.below(most) {
            let at = self.below(buf.len());
            buf[at] = if self.below(2) == 0 {
                replacement(self)
            } else {
                buf[at] ^ (1 << self.below(8))
            };
        }
    }
}

/// The driver of the codecs' "random bytes never panic" tests: `inputs` times, empties a
/// buffer, lets `make(i, rng, buf)` fill it and hands it to `feed`, which returns how many
/// messages it decoded. Returns the total, which a test should check is large: the inputs must
/// reach deep into the parser, not only its first checks.
pub(crate) fn feed_random_inputs(
    seed: u64,
    inputs: usize,
    mut make: impl FnMut(usize, &mut Rng, &mut Vec<u8>),
    mut feed: impl FnMut(&[u8]) -> usize,
) -> usize {
    let mut rng = Rng(seed);
    let mut buf = Vec::with_capacity(512);
    let mut decoded = 0;
    for i in 0..inputs {
        buf.clear();
        make(i, &mut rng, &mut buf);
        decoded += feed(&buf);
    }
    decoded
}
