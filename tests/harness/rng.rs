//! Random choices of a test, replayable from a printed seed.

/// A small xorshift generator for a test's random choices, replayable from its seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the environment variable `var` if set, else from the clock; returns the
    /// seed too, for the test to print.
    pub fn from_env(var: &str) -> (u64, Rng) {
        let seed = std::env::var(var).map(|s| s.parse().expect("the seed is a number")).unwrap_or_else(|_| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        (seed, Rng(seed))
    }

    pub fn from_seed(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
