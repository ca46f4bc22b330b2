//! A small seeded random number generator for the soak tests (SplitMix64): the same seed
//! gives the same choices, so a failing run can be repeated. Not for anything secret.

/// SplitMix64 (Steele, Lea, Flood 2014): one `u64` of state, good enough statistics for
/// picking faults and client behaviours.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator for one part of a run (a client thread, an upstream connection), so each
    /// part's choices depend only on the seed and its own index, not on scheduling.
    pub fn derive(seed: u64, parts: &[u64]) -> Rng {
        let mut h = seed ^ 0x6a09_e667_f3bc_c908;
        for p in parts {
            h = mix(h ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        Rng(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a string, to derive a generator from text (a sender address).
pub fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The seed of a run: `MXGUARD_SOAK_SEED` when set (to repeat a run), else from the clock.
pub fn seed_from_env() -> u64 {
    match std::env::var("MXGUARD_SOAK_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("MXGUARD_SOAK_SEED={s:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}
