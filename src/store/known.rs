//! Which RRset keys a store holds, as 128-bit fingerprints in memory: a merge tells new RRsets
//! (which get bare index entries and a feed entry) without reading the store.
//!
//! A sorted array (16 bytes per key) and a small set of recent additions folded into it now
//! and then; a hash set of every key would take twice the memory (35 MiB at a million keys),
//! and more while it grows. A batch is looked up in fingerprint order, each search starting
//! where the previous one ended, so the array is read forward once per batch.

use fxhash::FxHashSet;

#[derive(Default)]
pub struct Known {
    sorted: Vec<u128>,
    recent: FxHashSet<u128>,
}

impl Known {
    /// Whether each of `prints` is known (in their order).
    pub fn contains_all(&self, prints: &[u128]) -> Vec<bool> {
        let mut order: Vec<u32> = (0..prints.len() as u32).collect();
        order.sort_unstable_by_key(|&i| prints[i as usize]);
        let mut out = vec![false; prints.len()];
        let mut rest = &self.sorted[..];
        for i in order {
            let p = prints[i as usize];
            // Galloping: the first power-of-two step past `p`, then a binary search below it.
            let mut step = 1;
            while step < rest.len() && rest[step - 1] < p {
                step *= 2;
            }
            let at = rest[..step.min(rest.len())].partition_point(|&x| x < p);
            rest = &rest[at..];
            out[i as usize] = rest.first() == Some(&p) || self.recent.contains(&p);
        }
        out
    }

    pub fn extend(&mut self, prints: impl IntoIterator<Item = u128>) {
        self.recent.extend(prints);
        if self.recent.len() > 65_536 + self.sorted.len() / 8 {
            self.fold();
        }
    }

    fn fold(&mut self) {
        self.sorted.reserve_exact(self.recent.len());
        self.sorted.extend(self.recent.drain());
        self.sorted.sort_unstable();
        self.sorted.dedup();
        self.recent.shrink_to(0);
    }

    /// The set of these fingerprints (the store's keys at open).
    pub fn from_prints(mut sorted: Vec<u128>) -> Self {
        sorted.sort_unstable();
        sorted.dedup();
        sorted.shrink_to_fit();
        Self { sorted, recent: FxHashSet::default() }
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_find_exactly_the_keys_added_before_across_folds() {
        let mut k = Known::default();
        let print = |i: u64| u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) << 7 | u128::from(i % 97);
        // 300,000 keys in batches of 10,000: folded into the array several times.
        for b in 0..30u64 {
            let batch: Vec<u128> = (b * 10_000..(b + 1) * 10_000).map(print).collect();
            // This batch's keys and, every other one, a key of each earlier batch.
            let mut probe = batch.clone();
            probe.extend((0..b * 10_000).step_by(2).map(print));
            let got = k.contains_all(&probe);
            assert!(got[..batch.len()].iter().all(|&g| !g), "batch {b}: new keys found");
            assert!(got[batch.len()..].iter().all(|&g| g), "batch {b}: old keys missed");
            k.extend(batch);
        }
        assert_eq!(k.len(), 300_000);
        assert!(!k.sorted.is_empty(), "folded at least once");
        assert_eq!(k.contains_all(&[print(300_000), print(0)]), [false, true]);
    }
}
