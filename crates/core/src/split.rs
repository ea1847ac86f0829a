//! Weighted splitting: which bucket a request falls in, and which subset owns
//! that bucket.
//!
//! Weights are kept in basis points (hundredths of a percent), so the bucket
//! space has exactly 10,000 buckets and every weight the contract allows
//! (percent with two decimals) is a whole number of buckets.
//!
//! Everything here is plain integer arithmetic on `u64`, so the same key gives
//! the same bucket natively and in WebAssembly (the wasm-bindgen tests assert
//! it) and across releases (the frozen vectors below assert that: changing the
//! hash would move sticky users between versions on upgrade).

/// Number of buckets: 100 percent with two decimals.
pub const BUCKETS: u32 = 10_000;

/// FNV-1a over the service name, a separator and the key, finished with
/// MurmurHash3's 64-bit avalanche so that nearby keys ("user1", "user2") land
/// in unrelated buckets.
pub fn sticky_bucket(service: &str, key: &[u8]) -> u32 {
    bucket_of(avalanche(fnv1a64(&[service.as_bytes(), &[0xff], key])))
}

/// 64-bit FNV-1a over `parts`, read as one byte stream. Also the content
/// hash the rules source uses to tell an unchanged document.
pub(crate) fn fnv1a64(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    parts
        .iter()
        .flat_map(|part| part.iter())
        .fold(OFFSET, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Maps a uniformly distributed `u64` onto `0..BUCKETS` without modulo bias
/// (multiply-shift on the high 32 bits).
fn bucket_of(h: u64) -> u32 {
    let high = h >> 32;
    // high < 2^32 and BUCKETS < 2^14, so the product fits in u64 and the
    // result is < BUCKETS.
    ((high * u64::from(BUCKETS)) >> 32) as u32
}

/// Buckets for requests without a sticky key.
///
/// A Weyl sequence with the golden-ratio step visits the bucket space with
/// low discrepancy: any run of N consecutive requests is split within a few
/// buckets of the exact weights, where a random draw would be off by about
/// 0.5 percentage point at N = 10,000 and so break the one-point bound one
/// run in twenty. Each gateway worker has its own sequence; the start is
/// seeded from the clock so that gateways do not walk in step.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeylSequence {
    state: u64,
}

impl WeylSequence {
    const STEP: u64 = 0x9e37_79b9_7f4a_7c15;

    pub fn new(seed: u64) -> Self {
        WeylSequence {
            state: avalanche(seed),
        }
    }

    pub fn next_bucket(&mut self) -> u32 {
        self.state = self.state.wrapping_add(Self::STEP);
        bucket_of(self.state)
    }
}

/// Who owns each bucket of a service. Built once when the rules compile.
///
/// Layout, for the non-default subsets in declared order: the first grows up
/// from bucket 0, the second grows down from the top, any further ones stack
/// above the first; the default subset owns what is left in the middle.
/// So with one or two weighted subsets (canary; or blue-green plus a canary),
/// raising a subset's weight only takes buckets from the default: sticky users
/// move into the raised subset and never out of any other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightTable {
    /// `(first bucket, end bucket exclusive, subset index)`; ranges are disjoint.
    ranges: Vec<(u32, u32, usize)>,
}

impl WeightTable {
    /// `weighted` holds `(subset index, weight in basis points)` for the
    /// non-default subsets in declared order; the caller has checked that the
    /// weights sum to at most `BUCKETS`.
    pub fn new(weighted: &[(usize, u32)]) -> Self {
        let mut ranges = Vec::new();
        let mut bottom = 0u32;
        let mut top = BUCKETS;
        for (position, &(subset, weight)) in weighted.iter().enumerate() {
            let weight = weight.min(top.saturating_sub(bottom));
            if weight == 0 {
                continue;
            }
            if position == 1 {
                ranges.push((top - weight, top, subset));
                top -= weight;
            } else {
                ranges.push((bottom, bottom + weight, subset));
                bottom += weight;
            }
        }
        WeightTable { ranges }
    }

    /// True when no subset has a weight: the default takes everything and no
    /// bucket needs to be drawn.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges of buckets owned by the weighted subsets, as
    /// `(first bucket, end bucket exclusive, subset index)` in layout order;
    /// every bucket outside them belongs to the default subset. For tools
    /// that explain a decision.
    pub fn ranges(&self) -> impl Iterator<Item = (u32, u32, usize)> + '_ {
        self.ranges.iter().copied()
    }

    /// The weighted ranges and, filling the gaps, `default`: `(first, last
    /// inclusive, subset index)` in bucket order, covering every bucket once.
    pub fn layout(&self, default: usize) -> Vec<(u32, u32, usize)> {
        let mut ranges = self.ranges.clone();
        ranges.sort_unstable();
        let mut layout = Vec::new();
        let mut next = 0;
        for (start, end, subset) in ranges {
            if start > next {
                layout.push((next, start - 1, default));
            }
            layout.push((start, end - 1, subset));
            next = end;
        }
        if next < BUCKETS {
            layout.push((next, BUCKETS - 1, default));
        }
        layout
    }

    /// Each of `subsets` subsets' share in basis points, `default` taking
    /// the rest.
    pub fn shares(&self, default: usize, subsets: usize) -> Vec<u32> {
        let mut shares = vec![0u32; subsets];
        for (start, last, subset) in self.layout(default) {
            if let Some(share) = shares.get_mut(subset) {
                *share += last + 1 - start;
            }
        }
        shares
    }

    /// The subset owning `bucket`, or `None` for the default.
    pub fn owner(&self, bucket: u32) -> Option<usize> {
        self.ranges
            .iter()
            .find(|(start, end, _)| (*start..*end).contains(&bucket))
            .map(|&(_, _, subset)| subset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_buckets_are_frozen() {
        // These values are part of the contract with running fleets: if they
        // change, sticky users change version on upgrade.
        assert_eq!(sticky_bucket("bservice", b"user-1"), FROZEN[0]);
        assert_eq!(sticky_bucket("bservice", b"user-2"), FROZEN[1]);
        assert_eq!(sticky_bucket("other", b"user-1"), FROZEN[2]);
        assert_eq!(sticky_bucket("", b""), FROZEN[3]);
    }

    pub(crate) const FROZEN: [u32; 4] = [104, 9895, 215, 1083];

    #[test]
    fn sticky_buckets_spread_evenly() {
        let mut counts = [0u32; 100];
        for i in 0..100_000u32 {
            let bucket = sticky_bucket("svc", format!("user{i}").as_bytes());
            assert!(bucket < BUCKETS);
            counts[(bucket / 100) as usize] += 1;
        }
        // 1,000 expected per percent; a fair hash stays well inside ±15%.
        for (percent, &count) in counts.iter().enumerate() {
            assert!((850..1150).contains(&count), "percent {percent}: {count}");
        }
    }

    #[test]
    fn weyl_sequence_is_exact_over_ten_thousand() {
        for seed in [0u64, 1, 42, u64::MAX] {
            let mut sequence = WeylSequence::new(seed);
            let table = WeightTable::new(&[(1, 500)]);
            let hits = (0..10_000)
                .filter(|_| table.owner(sequence.next_bucket()).is_some())
                .count();
            assert!((490..=510).contains(&hits), "seed {seed}: {hits}");
        }
    }

    #[test]
    fn layout_keeps_sticky_users_when_a_weight_rises() {
        // Two weighted subsets: raising either one only takes from the default.
        let before = WeightTable::new(&[(1, 500), (2, 1000)]);
        let after_first = WeightTable::new(&[(1, 2000), (2, 1000)]);
        let after_second = WeightTable::new(&[(1, 500), (2, 3000)]);
        for bucket in 0..BUCKETS {
            let old = before.owner(bucket);
            for (raised, after) in [(1, &after_first), (2, &after_second)] {
                let new = after.owner(bucket);
                assert!(
                    new == old || new == Some(raised),
                    "bucket {bucket}: {old:?} -> {new:?}"
                );
            }
        }
    }

    #[test]
    fn layout_gives_each_subset_its_exact_share() {
        let table = WeightTable::new(&[(1, 1234), (2, 5), (3, 4000)]);
        let mut counts = [0u32; 4];
        for bucket in 0..BUCKETS {
            counts[table.owner(bucket).unwrap_or(0)] += 1;
        }
        assert_eq!(counts, [BUCKETS - 1234 - 5 - 4000, 1234, 5, 4000]);
    }

    #[test]
    fn zero_and_full_weights() {
        assert!(WeightTable::new(&[(1, 0)]).is_empty());
        let full = WeightTable::new(&[(1, BUCKETS)]);
        assert!((0..BUCKETS).all(|b| full.owner(b) == Some(1)));
    }
}
