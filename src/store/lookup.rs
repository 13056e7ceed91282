//! Lookups over the store's indexes, shared by `dnsledger query` and the HTTP API.
//!
//! A lookup walks one index in key order and hands each matching RRset to a visitor together
//! with its *position* (the index key it was found under). Positions are what paging rests on:
//! resuming strictly after a position never repeats or skips an RRset that existed when the
//! first page was read, whatever was added since (new RRsets land where their keys sort).
//! An RRset reachable through several entries of one index (two addresses in the same CIDR,
//! two targets below one zone) is reported only at its smallest entry, so a stream has each
//! RRset once without remembering what it sent.
//!
//! Every walk has a budget of index entries it may examine; a lookup whose filters admit
//! little of a large range stops at the budget and says where, instead of scanning the store.

use std::ops::Bound;

use super::keys::{decode_value, owner_prefix, reverse_name};
use super::{
    Entry, Fences, NamePattern, Store, StoreError, TAG_BY_IP, TAG_BY_NAME, TAG_BY_TARGET, TAG_BY_TARGET_FWD, TAG_RRSET,
    ip_key, rdata_ip, rdata_target, tagged, value_prefix,
};

/// What to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// RRsets by owner name, optionally one type and one bailiwick (absolute, lower case).
    Rrset { owner: NamePattern, rrtype: Option<u16>, bailiwick: Option<String> },
    /// RRsets whose rdata names a host (NS, CNAME, PTR, DNAME, MX, SRV targets).
    RdataName { target: NamePattern, rrtype: Option<u16> },
    /// A/AAAA RRsets with an address in `[lo, hi]` (16 bytes, IPv4 mapped).
    RdataIp { lo: [u8; 16], hi: [u8; 16] },
    /// RRsets of a type without addresses or names in rdata (TXT, SOA, ...) holding this
    /// rdata (presentation format, as stored).
    RdataValue { rrtype: u16, rdata: String },
}

/// Why a walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The index range is exhausted.
    Exhausted,
    /// The visitor asked to stop after the RRset at this position.
    Stopped(Vec<u8>),
    /// The examination budget ran out; resume after this position.
    Budget(Vec<u8>),
}

/// A position that does not belong to the lookup it is used with.
#[derive(Debug, thiserror::Error)]
#[error("the cursor does not belong to this query")]
pub struct ForeignCursor;

/// How a lookup walks its index.
enum Walk {
    /// Keys with this prefix; with `below = Some(n)`, skip keys whose byte `n` ends the owner
    /// (the zone apex itself, for `*.zone`). The RRset key follows the first 0x00 at or after
    /// `key_at`, or starts at `key_at` when `sep` is false.
    Prefix { prefix: Vec<u8>, below: Option<usize>, key_at: usize, sep: bool },
    /// Keys in `[lo, hi]` of the address index.
    Range { lo: Vec<u8>, hi: Vec<u8> },
}

impl Lookup {
    fn walk(&self) -> Walk {
        match self {
            Lookup::Rrset { owner: NamePattern::Exact(n), .. } => {
                Walk::Prefix { prefix: tagged(TAG_RRSET, &owner_prefix(n)), below: None, key_at: 1, sep: false }
            }
            Lookup::Rrset { owner: NamePattern::Below(z), .. } => {
                let prefix = tagged(TAG_RRSET, reverse_name(z).as_bytes());
                let n = prefix.len();
                Walk::Prefix { prefix, below: Some(n), key_at: 1, sep: false }
            }
            Lookup::Rrset { owner: NamePattern::RightWildcard(p), .. } => {
                Walk::Prefix { prefix: tagged(TAG_BY_NAME, p.as_bytes()), below: None, key_at: 1, sep: true }
            }
            Lookup::RdataName { target: NamePattern::Exact(n), .. } => {
                Walk::Prefix { prefix: tagged(TAG_BY_TARGET, &owner_prefix(n)), below: None, key_at: 1, sep: true }
            }
            Lookup::RdataName { target: NamePattern::Below(z), .. } => {
                let prefix = tagged(TAG_BY_TARGET, reverse_name(z).as_bytes());
                let n = prefix.len();
                Walk::Prefix { prefix, below: Some(n), key_at: 1, sep: true }
            }
            Lookup::RdataName { target: NamePattern::RightWildcard(p), .. } => {
                Walk::Prefix { prefix: tagged(TAG_BY_TARGET_FWD, p.as_bytes()), below: None, key_at: 1, sep: true }
            }
            Lookup::RdataIp { lo, hi } => Walk::Range { lo: tagged(TAG_BY_IP, lo), hi: tagged(TAG_BY_IP, hi) },
            Lookup::RdataValue { rrtype, rdata } => {
                let prefix = value_prefix(*rrtype, rdata);
                let key_at = prefix.len();
                Walk::Prefix { prefix, below: None, key_at, sep: false }
            }
        }
    }

    fn admits(&self, e: &Entry, fences: &Fences) -> bool {
        let typed = |t: &Option<u16>| t.is_none_or(|t| e.rrset.rrtype == t);
        fences.admit(e)
            && match self {
                Lookup::Rrset { rrtype, bailiwick, .. } => {
                    typed(rrtype) && bailiwick.as_ref().is_none_or(|b| &e.rrset.bailiwick == b)
                }
                Lookup::RdataName { target, rrtype } => {
                    typed(rrtype) && e.rrset.rdata.iter().any(|d| target_matches(target, e.rrset.rrtype, d))
                }
                Lookup::RdataIp { .. } => true,
                Lookup::RdataValue { rrtype, rdata } => e.rrset.rrtype == *rrtype && e.rrset.rdata.contains(rdata),
            }
    }

    /// For indexes where one RRset has several entries: the smallest entry of `e` that this
    /// lookup walks, which is the one the RRset is reported at.
    fn first_entry(&self, e: &Entry, rkey: &[u8]) -> Option<Vec<u8>> {
        match self {
            Lookup::RdataIp { lo, hi } => e
                .rrset
                .rdata
                .iter()
                .filter_map(|d| rdata_ip(e.rrset.rrtype, d).map(ip_key))
                .filter(|a| a >= lo && a <= hi)
                .min()
                .map(|a| [&[TAG_BY_IP][..], &a, rkey].concat()),
            Lookup::RdataName { target, .. } => e
                .rrset
                .rdata
                .iter()
                .filter(|d| target_matches(target, e.rrset.rrtype, d))
                .filter_map(|d| rdata_target(e.rrset.rrtype, d))
                .map(|t| match target {
                    NamePattern::RightWildcard(_) => [&[TAG_BY_TARGET_FWD][..], t.as_bytes(), &[0], rkey].concat(),
                    _ => [&[TAG_BY_TARGET][..], &owner_prefix(&t), rkey].concat(),
                })
                .min(),
            _ => None,
        }
    }

    /// Whether `pos` is a position this lookup could have produced.
    fn owns(&self, pos: &[u8]) -> bool {
        match self.walk() {
            Walk::Prefix { prefix, .. } => pos.starts_with(&prefix),
            Walk::Range { lo, hi } => pos >= &lo[..] && pos.get(..hi.len()).is_some_and(|p| p <= &hi[..]),
        }
    }
}

fn target_matches(pattern: &NamePattern, rrtype: u16, rdata: &str) -> bool {
    rdata_target(rrtype, rdata).is_some_and(|t| pattern.matches(&NamePattern::Exact(t)))
}

/// An ordered key space a lookup walks: the sled tree, or the ClickHouse tables, which hold the
/// same keys (RRset keys tagged `R`, index keys tagged `F`, `I`, `T`, `G`, `V`) and RRset values in the
/// same encoding ([`super::keys::encode_value`]).
pub trait Ordered {
    /// Keys from `start` (below `end` when given), in key order; RRset keys with their values,
    /// index keys with their RRset's value or an empty one (the walk then fetches the RRset).
    fn scan(&self, start: Bound<Vec<u8>>, end: Option<Vec<u8>>) -> Box<dyn Iterator<Item = Scanned> + '_>;
    /// The values of these RRset keys (tagged, sorted), in the same order; `None` if absent.
    fn get_sorted(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<sled::IVec>>, StoreError>;
}

/// One key (and value) of a scan.
pub type Scanned = Result<(sled::IVec, sled::IVec), StoreError>;

impl Ordered for Store {
    fn scan(&self, start: Bound<Vec<u8>>, end: Option<Vec<u8>>) -> Box<dyn Iterator<Item = Scanned> + '_> {
        Box::new(self.scan_range(start, end))
    }

    fn get_sorted(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<sled::IVec>>, StoreError> {
        self.runs.get_sorted(&self.t, keys)
    }
}

/// The smallest key above every key that starts with `prefix` (`None`: no such key).
pub(super) fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xff {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

impl Walk {
    /// Where a walk from the beginning starts, and the bound it never passes.
    fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            // `*.zone`: the zone's own entries (prefix + 0x00) sort first; start past them.
            Walk::Prefix { prefix, below: Some(_), .. } => ([&prefix[..], &[1]].concat(), successor(prefix)),
            Walk::Prefix { prefix, .. } => (prefix.clone(), successor(prefix)),
            Walk::Range { lo, hi } => (lo.clone(), successor(hi)),
        }
    }
}

impl Store {
    /// Walks `lookup` over this store: see [`walk`].
    pub fn walk(
        &self,
        lookup: &Lookup,
        fences: &Fences,
        after: Option<&[u8]>,
        budget: u64,
        visit: impl FnMut(&[u8], Entry) -> bool,
    ) -> Result<Ended, StoreError> {
        walk(self, lookup, fences, after, budget, visit)
    }

    /// The first `limit` RRsets of a lookup (for the command line and tests).
    pub fn lookup(&self, lookup: &Lookup, fences: &Fences, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.walk(lookup, fences, None, u64::MAX, |_, e| {
            out.push(e);
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Index entries a lookup spans: see [`count_entries`].
    pub fn count_entries(&self, lookup: &Lookup, cap: u64) -> Result<(u64, bool), StoreError> {
        count_entries(self, lookup, cap)
    }

    /// Validates a position given back by a client against the lookup it came from.
    pub fn check_cursor(lookup: &Lookup, pos: &[u8]) -> Result<(), ForeignCursor> {
        if lookup.owns(pos) { Ok(()) } else { Err(ForeignCursor) }
    }
}

/// Walks `lookup` over `db` from the start (or strictly after `after`), calling `visit` with
/// each admitted RRset and its position until it returns false, the index is exhausted, or
/// `budget` index entries have been examined.
pub fn walk<O: Ordered + ?Sized>(
    db: &O,
    lookup: &Lookup,
    fences: &Fences,
    after: Option<&[u8]>,
    budget: u64,
    mut visit: impl FnMut(&[u8], Entry) -> bool,
) -> Result<Ended, StoreError> {
    if after.is_some_and(|a| !lookup.owns(a)) {
        return Ok(Ended::Exhausted);
    }
    let walk = lookup.walk();
    let (from, end) = walk.bounds();
    let start = match after {
        Some(a) => Bound::Excluded(a.to_vec()),
        None => Bound::Included(from),
    };
    let budget = budget.max(1);
    let mut examined = 0u64;
    // The last entry examined: where a walk stopped by its budget resumes.
    let mut prev: Option<sled::IVec> = None;
    // Index walks fetch their RRsets in batches, in RRset-key order: consecutive gets
    // then land in the same sled pages (random gets were 10x slower on a large store).
    // Batches start small, so that a walk that stops early fetches little ahead.
    let index = match &walk {
        Walk::Prefix { prefix, .. } => prefix[0] != TAG_RRSET,
        Walk::Range { .. } => true,
    };
    let mut pending: Vec<(sled::IVec, usize)> = Vec::new();
    let mut batch = 16usize;
    for item in db.scan(start, end) {
        let (k, v) = item?;
        let rkey_at = match &walk {
            Walk::Prefix { prefix, below, key_at, sep } => {
                if !k.starts_with(prefix) {
                    break;
                }
                if below.is_some_and(|n| k.get(n) == Some(&0)) {
                    continue;
                }
                if *sep {
                    match k[*key_at..].iter().position(|b| *b == 0) {
                        Some(p) => key_at + p + 1,
                        None => continue,
                    }
                } else {
                    *key_at
                }
            }
            Walk::Range { hi, .. } => {
                if k.len() < hi.len() || k[..hi.len()] > hi[..] {
                    break;
                }
                hi.len()
            }
        };
        if examined == budget {
            if let Some(end) = visit_pending(db, &mut pending, lookup, fences, &mut visit)? {
                return Ok(end);
            }
            let at = prev.as_deref().map(<[u8]>::to_vec).or_else(|| after.map(<[u8]>::to_vec)).unwrap_or_default();
            return Ok(Ended::Budget(at));
        }
        examined += 1;
        prev = Some(k.clone());
        // An index entry that carries its RRset's value (see `index` in mod.rs) is a result
        // as it stands; one without (older stores, ClickHouse) is fetched.
        if index && v.is_empty() {
            pending.push((k, rkey_at));
            if pending.len() >= batch {
                if let Some(end) = visit_pending(db, &mut pending, lookup, fences, &mut visit)? {
                    return Ok(end);
                }
                batch = (batch * 2).min(1024);
            }
            continue;
        }
        if !pending.is_empty()
            && let Some(end) = visit_pending(db, &mut pending, lookup, fences, &mut visit)?
        {
            return Ok(end);
        }
        let entry = decode_value(&v).ok_or_else(|| StoreError::Corrupt(k.to_vec()))?;
        if !lookup.admits(&entry, fences) {
            continue;
        }
        if index
            && let Some(first) = lookup.first_entry(&entry, &k[rkey_at..])
            && first[..] != k[..]
        {
            continue;
        }
        if !visit(&k, entry) {
            return Ok(Ended::Stopped(k.to_vec()));
        }
    }
    if let Some(end) = visit_pending(db, &mut pending, lookup, fences, &mut visit)? {
        return Ok(end);
    }
    Ok(Ended::Exhausted)
}

/// Fetches the RRsets of a batch of index entries (sorted by RRset key), then visits them in
/// index order; `Some` if the visitor stopped.
fn visit_pending<O: Ordered + ?Sized>(
    db: &O,
    pending: &mut Vec<(sled::IVec, usize)>,
    lookup: &Lookup,
    fences: &Fences,
    visit: &mut impl FnMut(&[u8], Entry) -> bool,
) -> Result<Option<Ended>, StoreError> {
    if pending.is_empty() {
        return Ok(None);
    }
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_unstable_by(|&a, &b| pending[a].0[pending[a].1..].cmp(&pending[b].0[pending[b].1..]));
    let keys: Vec<Vec<u8>> = order.iter().map(|&i| tagged(TAG_RRSET, &pending[i].0[pending[i].1..])).collect();
    let mut values: Vec<Option<sled::IVec>> = vec![None; pending.len()];
    for (i, v) in order.into_iter().zip(db.get_sorted(&keys)?) {
        values[i] = v;
    }
    for (i, (k, at)) in pending.drain(..).enumerate() {
        // An index entry is written in the same batch as its RRset; a missing one means a
        // foreign or damaged store, not a result.
        let Some(v) = values[i].take() else { continue };
        let rkey = &k[at..];
        let entry = decode_value(&v).ok_or_else(|| StoreError::Corrupt(rkey.to_vec()))?;
        if !lookup.admits(&entry, fences) {
            continue;
        }
        if let Some(first) = lookup.first_entry(&entry, rkey)
            && first[..] != k[..]
        {
            continue;
        }
        if !visit(&k, entry) {
            return Ok(Some(Ended::Stopped(k.to_vec())));
        }
    }
    Ok(None)
}

/// Index entries a lookup spans in `db` (an upper bound on its results: before filters and
/// fences), counted up to `cap`; `true` when the count is complete.
pub fn count_entries<O: Ordered + ?Sized>(db: &O, lookup: &Lookup, cap: u64) -> Result<(u64, bool), StoreError> {
    let walk = lookup.walk();
    let (start, end) = walk.bounds();
    let mut n = 0u64;
    for item in db.scan(Bound::Included(start), end) {
        let (k, _) = item?;
        match &walk {
            Walk::Prefix { prefix, below, .. } => {
                if !k.starts_with(prefix) {
                    break;
                }
                if below.is_some_and(|n| k.get(n) == Some(&0)) {
                    continue;
                }
            }
            Walk::Range { hi, .. } => {
                if k.len() < hi.len() || k[..hi.len()] > hi[..] {
                    break;
                }
            }
        }
        n += 1;
        if n >= cap {
            return Ok((n, false));
        }
    }
    Ok((n, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::{Kind, Rrset};
    use crate::store::Delta;

    /// An RRset in `example.com.` seen `count` times between times 1 and 2.
    fn positive(rrname: &str, rrtype: u16, rdata: Vec<String>, count: u64) -> Delta {
        let rrset = Rrset { rrname: rrname.into(), rrtype, bailiwick: "example.com.".into(), rdata };
        Delta { kind: Kind::Positive, rrset, first: 1, last: 2, count, sensors: Vec::new() }
    }

    /// A store as one serving the API keeps it (index entries with copies).
    fn store_with(n: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap().with_copies().unwrap();
        let deltas: Vec<Delta> = (0..n)
            .map(|i| Delta {
                kind: Kind::Positive,
                // Two addresses in 10.0.0.0/8 per RRset: reachable twice through the index.
                rrset: Rrset {
                    rrname: format!("h{i}.example.com."),
                    rrtype: 1,
                    bailiwick: "example.com.".into(),
                    rdata: vec![format!("10.0.{}.{}", i / 200, i % 200), format!("10.1.{}.{}", i / 200, i % 200)],
                },
                first: i as u64,
                last: i as u64 + 10,
                count: 1,
                sensors: Vec::new(),
            })
            .collect();
        s.merge(&deltas, false).unwrap();
        (dir, s)
    }

    /// Pages of `size` resumed from each page's last position.
    fn pages(s: &Store, l: &Lookup, size: usize, budget: u64) -> Vec<String> {
        let (mut out, mut after): (Vec<String>, Option<Vec<u8>>) = (Vec::new(), None);
        loop {
            let mut page = 0;
            let ended = s
                .walk(l, &Fences::default(), after.as_deref(), budget, |_, e| {
                    out.push(e.rrset.rrname);
                    page += 1;
                    page < size
                })
                .unwrap();
            match ended {
                Ended::Exhausted => return out,
                Ended::Stopped(p) | Ended::Budget(p) => after = Some(p),
            }
        }
    }

    #[test]
    fn paging_and_budgets_resume_without_repeats_or_gaps() {
        let (_dir, s) = store_with(500);
        let (lo, hi) = "10.0.0.0/8".parse::<crate::sensor::Cidr>().unwrap().range();
        for l in [
            Lookup::RdataIp { lo, hi },
            Lookup::Rrset { owner: NamePattern::parse("*.example.com").unwrap(), rrtype: None, bailiwick: None },
            Lookup::Rrset { owner: NamePattern::parse("h1.example.*").unwrap(), rrtype: Some(1), bailiwick: None },
        ] {
            let all = s.lookup(&l, &Fences::default(), usize::MAX).unwrap();
            let mut want: Vec<String> = all.into_iter().map(|e| e.rrset.rrname).collect();
            let mut unique = want.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), want.len(), "{l:?}: each RRset once");
            for (size, budget) in [(7, u64::MAX), (1000, 13), (1, 1)] {
                let mut got = pages(&s, &l, size, budget);
                assert_eq!(got.len(), want.len(), "{l:?} pages of {size}, budget {budget}");
                got.sort();
                want.sort();
                assert_eq!(got, want);
            }
        }
        let (lo, hi) = "10.0.0.0/8".parse::<crate::sensor::Cidr>().unwrap().range();
        assert_eq!(s.lookup(&Lookup::RdataIp { lo, hi }, &Fences::default(), usize::MAX).unwrap().len(), 500);
    }

    #[test]
    fn index_entries_without_values_are_fetched_with_the_same_results() {
        let (_dir, s) = store_with(300);
        let (lo, hi) = "10.0.0.0/8".parse::<crate::sensor::Cidr>().unwrap().range();
        let lookups = [
            Lookup::RdataIp { lo, hi },
            Lookup::Rrset { owner: NamePattern::parse("h1.example.*").unwrap(), rrtype: None, bailiwick: None },
        ];
        let before: Vec<Vec<Entry>> =
            lookups.iter().map(|l| s.lookup(l, &Fences::default(), usize::MAX).unwrap()).collect();
        // A store written before index entries carried values: every other entry is bare.
        s.move_runs_to_tree();
        let mut bare = 0;
        for (i, item) in s.t.iter().enumerate() {
            let (k, _) = item.unwrap();
            if [TAG_BY_IP, TAG_BY_NAME].contains(&k[0]) && i % 2 == 0 {
                s.t.insert(k, &[]).unwrap();
                bare += 1;
            }
        }
        assert!(bare > 300);
        for (l, want) in lookups.iter().zip(before) {
            assert_eq!(s.lookup(l, &Fences::default(), usize::MAX).unwrap(), want, "{l:?}");
            for size in [1, 7] {
                assert_eq!(pages(&s, l, size, u64::MAX).len(), want.len(), "{l:?} pages of {size}");
            }
        }
        // A merge rewrites the copies (bare or not): the index answers with the new counters.
        let again = s.lookup(&lookups[0], &Fences::default(), 2).unwrap();
        let deltas: Vec<Delta> = again
            .iter()
            .map(|e| Delta {
                kind: Kind::Positive,
                rrset: e.rrset.clone(),
                first: 0,
                last: 1_000,
                count: 5,
                sensors: Vec::new(),
            })
            .collect();
        s.merge(&deltas, false).unwrap();
        for (old, new) in again.iter().zip(s.lookup(&lookups[0], &Fences::default(), 2).unwrap()) {
            assert_eq!((new.first, new.last, new.count), (0, 1_000, old.count + 5), "{}", old.rrset.rrname);
        }
    }

    #[test]
    fn copies_are_made_where_asked_and_kept_current_by_every_later_writer() {
        let dir = tempfile::tempdir().unwrap();
        let one = |count: u64| Delta {
            kind: Kind::Positive,
            rrset: Rrset {
                rrname: "www.example.com.".into(),
                rrtype: 1,
                bailiwick: "example.com.".into(),
                rdata: vec!["10.0.0.1".into()],
            },
            first: 1,
            last: 2,
            count,
            sensors: Vec::new(),
        };
        let copy = |s: &Store| s.scan_prefix(&[TAG_BY_IP]).next().unwrap().unwrap().1;
        let ip = |s: &Store| {
            let (lo, hi) = "10.0.0.0/8".parse::<crate::sensor::Cidr>().unwrap().range();
            s.lookup(&Lookup::RdataIp { lo, hi }, &Fences::default(), 10).unwrap()[0].count
        };
        {
            // A sensor that only forwards: bare entries, nothing to keep current.
            let s = Store::open(dir.path()).unwrap();
            s.merge(&[one(1)], false).unwrap();
            assert!(copy(&s).is_empty());
            // Serving the API from now on: an RRset indexed bare stays bare (walks fetch it),
            // with the right counters.
            let s = s.with_copies().unwrap();
            s.merge(&[one(1)], false).unwrap();
            assert!(copy(&s).is_empty());
            assert_eq!(ip(&s), 2);
            s.sync().unwrap();
        }
        // A new RRset gets copies, and they are kept current after the store is opened again
        // without asking.
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap().with_copies().unwrap();
            s.merge(&[one(2)], false).unwrap();
            assert_eq!(super::super::keys::value_counters(&copy(&s)), Some((1, 2, 2)));
            s.sync().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        s.merge(&[one(5)], false).unwrap();
        assert_eq!(super::super::keys::value_counters(&copy(&s)), Some((1, 2, 7)));
        assert_eq!(ip(&s), 7);
    }

    #[test]
    fn two_rdata_with_one_target_are_one_index_entry_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap().with_copies().unwrap();
        let mx = positive("example.com.", 15, vec!["10 mx.example.net.".into(), "20 mx.example.net.".into()], 3);
        s.merge(std::slice::from_ref(&mx), false).unwrap();
        s.merge(std::slice::from_ref(&mx), false).unwrap();
        let l = Lookup::RdataName { target: NamePattern::parse("mx.example.net").unwrap(), rrtype: None };
        let got = s.lookup(&l, &Fences::default(), 10).unwrap();
        assert_eq!(got.iter().map(|e| e.count).collect::<Vec<_>>(), [6], "its own count, not twice");
        assert_eq!(s.scan_prefix(&[TAG_BY_TARGET]).count(), 1);
    }

    #[test]
    fn entries_too_large_for_a_run_are_refused_before_anything_is_written() {
        let (_dir, s) = store_with(3);
        let before = s.len();
        let mut big =
            positive("big.example.com.", 16, vec![format!("\"{}\"", "a".repeat(super::super::runs::MAX_VALUE))], 1);
        assert!(s.merge(std::slice::from_ref(&big), true).is_err());
        assert_eq!((s.len(), s.outbox_len()), (before, 0));
        big.rrset.rdata = vec!["\"small\"".into()];
        s.merge(std::slice::from_ref(&big), true).unwrap();
        assert_eq!(s.len(), before + 1);
    }

    #[test]
    fn large_rrsets_keep_bare_index_entries_and_are_still_found() {
        let (_dir, s) = store_with(0);
        let big = positive("pool.example.com.", 1, (0..20).map(|i| format!("10.9.0.{i}")).collect(), 1);
        s.merge(std::slice::from_ref(&big), false).unwrap();
        s.merge(std::slice::from_ref(&big), false).unwrap();
        // 20 copies of a 20-address value on every merge would be 20x its size: bare instead.
        let entries: Vec<_> = s.scan_prefix(&[TAG_BY_IP]).map(|r| r.unwrap()).collect();
        assert_eq!(entries.len(), 20);
        assert!(entries.iter().all(|(_, v)| v.is_empty()));
        let (lo, hi) = "10.9.0.0/24".parse::<crate::sensor::Cidr>().unwrap().range();
        let got = s.lookup(&Lookup::RdataIp { lo, hi }, &Fences::default(), 100).unwrap();
        assert_eq!(got.iter().map(|e| e.count).collect::<Vec<_>>(), [2], "once, with its counters");
    }

    #[test]
    fn right_wildcards_over_rdata_names_use_their_index_and_old_stores_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let ns = |i: usize| Delta {
            kind: Kind::Positive,
            rrset: Rrset {
                rrname: format!("z{i}.example."),
                rrtype: 2,
                bailiwick: "example.".into(),
                // Two targets under ns.provider.*: the RRset is reported once.
                rdata: vec![format!("a{i}.ns.provider.net."), format!("b{i}.ns.provider.net.")],
            },
            first: 1,
            last: 2,
            count: 1,
            sensors: Vec::new(),
        };
        let l = Lookup::RdataName { target: NamePattern::parse("a1.ns.provider.*").unwrap(), rrtype: None };
        let all = Lookup::RdataName { target: NamePattern::parse("a1.*").unwrap(), rrtype: Some(2) };
        {
            let s = Store::open(dir.path()).unwrap();
            s.merge(&(0..20).map(ns).collect::<Vec<_>>(), false).unwrap();
            assert_eq!(s.lookup(&l, &Fences::default(), 100).unwrap().len(), 1);
            assert_eq!(s.lookup(&all, &Fences::default(), 100).unwrap().len(), 1);
            // A store from before `G` entries: none, and not marked.
            s.move_runs_to_tree();
            for item in s.t.scan_prefix([TAG_BY_TARGET_FWD]) {
                s.t.remove(item.unwrap().0).unwrap();
            }
            s.t.remove(super::super::META_INDEXES).unwrap();
            assert!(s.lookup(&l, &Fences::default(), 100).unwrap().is_empty());
            s.sync().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let got = s.lookup(&l, &Fences::default(), 100).unwrap();
        assert_eq!(got.iter().map(|e| e.rrset.rrname.as_str()).collect::<Vec<_>>(), ["z1.example."]);
        assert_eq!(s.count_entries(&l, 100).unwrap(), (1, true));
    }

    #[test]
    fn cursors_of_other_lookups_are_refused() {
        let (_dir, s) = store_with(3);
        let a = Lookup::Rrset { owner: NamePattern::parse("*.example.com").unwrap(), rrtype: None, bailiwick: None };
        let b = Lookup::Rrset { owner: NamePattern::parse("*.example.net").unwrap(), rrtype: None, bailiwick: None };
        let mut pos = Vec::new();
        s.walk(&a, &Fences::default(), None, u64::MAX, |p, _| {
            pos = p.to_vec();
            false
        })
        .unwrap();
        assert!(Store::check_cursor(&a, &pos).is_ok());
        assert!(Store::check_cursor(&b, &pos).is_err());
        let (lo, hi) = "10.0.0.0/8".parse::<crate::sensor::Cidr>().unwrap().range();
        assert!(Store::check_cursor(&Lookup::RdataIp { lo, hi }, &pos).is_err());
    }
}
