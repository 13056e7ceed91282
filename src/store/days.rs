//! Per-day rows: for each RRset and UTC day, the first and last time it was seen that day and
//! how often (what DNSDB's `aggr=false` answers, one row per period). Written in the merge's
//! batch when the store keeps them (a store serving the API does); a delta is counted on the
//! day of its first observation (a sensor's deltas span one flush window, so this is exact
//! but for windows across midnight and deltas folded over an outage).
//!
//! Keys: `Y` + RRset key + day (4, BE) -> first (8) last (8) count (8); `Mdays` marks a store
//! that keeps them.

use super::keys::rrset_key;
use super::{Delta, Store, StoreError, tagged, u64_of};
use crate::sensor::Rrset;

const TAG_DAY: u8 = b'Y';
const META_DAYS: &[u8] = b"Mdays";

/// One RRset's activity on one UTC day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayRow {
    /// Days since 1970-01-01.
    pub day: u32,
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

impl Store {
    /// Keeps per-day rows from now on.
    pub fn with_days(mut self) -> Self {
        self.days = true;
        self
    }

    /// Whether this store has been keeping per-day rows.
    pub fn keeps_days(&self) -> bool {
        self.days || self.t.get(META_DAYS).ok().flatten().is_some()
    }

    pub(super) fn day_add(&self, batch: &mut sled::Batch, rkey: &[u8], d: &Delta) -> Result<(), StoreError> {
        let day = (d.first / 86_400) as u32;
        let key = [&tagged(TAG_DAY, rkey)[..], &day.to_be_bytes()].concat();
        let (first, last, count) = match self.t.get(&key)? {
            Some(v) if v.len() == 24 => {
                let (f, l, c) = (u64_of(&v[..8]), u64_of(&v[8..16]), u64_of(&v[16..]));
                (f.min(d.first), l.max(d.last), c.saturating_add(d.count))
            }
            Some(_) => return Err(StoreError::Corrupt(key)),
            None => (d.first, d.last, d.count),
        };
        batch.insert(key, [first.to_be_bytes(), last.to_be_bytes(), count.to_be_bytes()].concat());
        batch.insert(META_DAYS, &[1]);
        Ok(())
    }

    /// The per-day rows of an RRset, oldest first.
    pub fn days_of(&self, rrset: &Rrset) -> Result<Vec<DayRow>, StoreError> {
        let prefix = tagged(TAG_DAY, &rrset_key(rrset));
        let mut out = Vec::new();
        for item in self.t.scan_prefix(&prefix) {
            let (k, v) = item?;
            if k.len() != prefix.len() + 4 || v.len() != 24 {
                return Err(StoreError::Corrupt(k.to_vec()));
            }
            let day =
                u32::from_be_bytes([k[prefix.len()], k[prefix.len() + 1], k[prefix.len() + 2], k[prefix.len() + 3]]);
            out.push(DayRow { day, first: u64_of(&v[..8]), last: u64_of(&v[8..16]), count: u64_of(&v[16..]) });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::Kind;

    #[test]
    fn deltas_land_on_their_days_and_sum() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap().with_days();
        let r = Rrset {
            rrname: "a.example.".into(),
            rrtype: 1,
            bailiwick: "example.".into(),
            rdata: vec!["192.0.2.1".into()],
        };
        let d = |first: u64, last: u64, count: u64| Delta {
            kind: Kind::Positive,
            rrset: r.clone(),
            first,
            last,
            count,
            sensors: Vec::new(),
        };
        s.merge(&[d(100, 110, 2)], false).unwrap();
        s.merge(&[d(50, 60, 1)], false).unwrap();
        s.merge(&[d(86_400 * 3 + 5, 86_400 * 3 + 9, 4)], false).unwrap();
        assert_eq!(
            s.days_of(&r).unwrap(),
            [
                DayRow { day: 0, first: 50, last: 110, count: 3 },
                DayRow { day: 3, first: 259_205, last: 259_209, count: 4 }
            ]
        );
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert!(s.keeps_days());
        let other = Store::open(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(!other.keeps_days());
    }
}
