//! The feed log: every RRset the store sees for the first time, and every domain it sees
//! delegated for the first time, numbered in the order they were merged. Written in the same
//! atomic batch as the merge that created them, so the log and the RRsets never disagree;
//! served (by the API's live feed) only up to what the last sync made durable, so a number a
//! consumer was given is never reused after a crash.
//!
//! Keys: `W` + sequence (8, BE) -> `0` + RRset key (a new RRset) or `1` + first seen (8) +
//! name (a new domain); `D` + name: domains seen; `Mfeed_seq`, `Mfeed_lo`: the last number
//! given and the oldest kept. At most `retain` entries are kept; older ones are trimmed in the
//! merges that add new ones.
//!
//! A "new domain" is a registrable domain (public suffix + one label, by the Public Suffix
//! List, see `crate::psl`) that no RRset stored before had its owner in.

use std::sync::atomic::Ordering;

use super::keys::decode_value;
use super::{Entry, Store, StoreError, TAG_RRSET, tagged, u64_of};
use crate::sensor::Rrset;

const TAG_FEED: u8 = b'W';
const TAG_DOMAIN: u8 = b'D';
const META_FEED_SEQ: &[u8] = b"Mfeed_seq";
const META_FEED_LO: &[u8] = b"Mfeed_lo";

/// One feed entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// An RRset seen for the first time (with its counters as they are now).
    Rrset(Entry),
    /// A domain seen delegated for the first time.
    Domain { name: String, first: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    pub seq: u64,
    pub item: FeedItem,
}

/// What a read of the feed found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedRead {
    pub entries: Vec<FeedEntry>,
    /// The last sequence number examined (filtered or not); resume after it.
    pub through: u64,
    /// The oldest sequence number still kept (entries before it were trimmed).
    pub oldest: u64,
}

fn feed_key(seq: u64) -> Vec<u8> {
    tagged(TAG_FEED, &seq.to_be_bytes())
}

impl Store {
    /// Keeps a feed log of at most `retain` entries (0: no feed), new domains judged by
    /// `suffixes`.
    pub fn with_feed(mut self, retain: u64, suffixes: std::sync::Arc<crate::psl::SuffixList>) -> Self {
        self.feed_retain = retain;
        self.suffixes = suffixes;
        self
    }

    /// Adds the feed entries of a merge's new RRsets to its batch.
    pub(super) fn feed_add(&self, batch: &mut sled::Batch, new: &[(&Rrset, Vec<u8>, u64)]) -> Result<(), StoreError> {
        if self.feed_retain == 0 || new.is_empty() {
            return Ok(());
        }
        let mut seq = self.t.get(META_FEED_SEQ)?.map(|v| u64_of(&v)).unwrap_or(0);
        let mut domains: Vec<String> = Vec::new();
        for (r, rkey, first) in new {
            seq += 1;
            batch.insert(feed_key(seq), [&[0u8][..], rkey].concat());
            let Some(domain) = self.suffixes.registrable(&r.rrname) else { continue };
            if domains.contains(&domain) {
                continue;
            }
            let dkey = tagged(TAG_DOMAIN, domain.as_bytes());
            if self.t.get(&dkey)?.is_none() {
                batch.insert(dkey, &[]);
                seq += 1;
                batch.insert(feed_key(seq), [&[1u8][..], &first.to_be_bytes(), domain.as_bytes()].concat());
                domains.push(domain);
            }
        }
        batch.insert(META_FEED_SEQ, &seq.to_be_bytes());
        let mut lo = self.t.get(META_FEED_LO)?.map(|v| u64_of(&v)).unwrap_or(1);
        // At most twice what this merge adds (plus some), so that lowering `retain` shrinks
        // the log over the next merges instead of in one huge batch.
        let mut budget = 2 * new.len() + 1_000;
        while seq + 1 - lo > self.feed_retain && budget > 0 {
            batch.remove(feed_key(lo));
            lo += 1;
            budget -= 1;
        }
        batch.insert(META_FEED_LO, &lo.to_be_bytes());
        Ok(())
    }

    /// The last feed number written (durable or not).
    pub(super) fn feed_written(&self) -> Result<u64, StoreError> {
        Ok(self.t.get(META_FEED_SEQ)?.map(|v| u64_of(&v)).unwrap_or(0))
    }

    /// The last feed number made durable (what may be served).
    pub fn feed_durable(&self) -> u64 {
        self.feed_durable.load(Ordering::Acquire)
    }

    /// Up to `max` durable entries after `after` that `keep` accepts; examines at most
    /// `max * 16` entries.
    pub fn feed_read(&self, after: u64, max: usize, keep: impl Fn(&FeedItem) -> bool) -> Result<FeedRead, StoreError> {
        let durable = self.feed_durable();
        let oldest = self.t.get(META_FEED_LO)?.map(|v| u64_of(&v)).unwrap_or(1);
        let mut read = FeedRead { entries: Vec::new(), through: after, oldest };
        if after >= durable {
            return Ok(read);
        }
        let mut examined = 0usize;
        for item in self.t.range(feed_key(after + 1)..=feed_key(durable)) {
            let (k, v) = item?;
            let seq = u64_of(&k[1..]);
            let corrupt = || StoreError::Corrupt(k.to_vec());
            let entry = match v.first() {
                Some(0) => match self.get_merged(&tagged(TAG_RRSET, &v[1..]))? {
                    Some(r) => FeedItem::Rrset(decode_value(&r).ok_or_else(corrupt)?),
                    None => return Err(corrupt()),
                },
                Some(1) if v.len() >= 9 => FeedItem::Domain {
                    first: u64_of(&v[1..9]),
                    name: String::from_utf8(v[9..].to_vec()).map_err(|_| corrupt())?,
                },
                _ => return Err(corrupt()),
            };
            read.through = seq;
            if keep(&entry) {
                read.entries.push(FeedEntry { seq, item: entry });
                if read.entries.len() >= max {
                    break;
                }
            }
            examined += 1;
            if examined >= max.saturating_mul(16) {
                break;
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::Kind;
    use crate::store::Delta;

    fn delta(name: &str, rrtype: u16, rdata: &str) -> Delta {
        Delta {
            kind: Kind::Positive,
            rrset: Rrset { rrname: name.into(), rrtype, bailiwick: "com.".into(), rdata: vec![rdata.into()] },
            first: 10,
            last: 20,
            count: 1,
            sensors: Vec::new(),
        }
    }

    fn all(s: &Store) -> Vec<(u64, String)> {
        s.feed_read(0, 1000, |_| true)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| {
                (
                    e.seq,
                    match e.item {
                        FeedItem::Rrset(e) => e.rrset.rrname,
                        FeedItem::Domain { name, .. } => format!("domain {name}"),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn new_rrsets_and_domains_once_durable_only_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let psl = std::sync::Arc::new(crate::psl::SuffixList::parse("com\n"));
        let s = Store::open(dir.path()).unwrap().with_feed(5, psl.clone());
        s.merge(&[delta("a.com.", 2, "ns.a.com."), delta("www.a.com.", 1, "192.0.2.1")], false).unwrap();
        // Not synced: nothing served yet.
        assert!(all(&s).is_empty());
        s.sync().unwrap();
        assert_eq!(all(&s), [(1, "a.com.".into()), (2, "domain a.com.".into()), (3, "www.a.com.".into())]);
        // Seen again: no new entries; a new NS set of a known domain is an RRset only.
        s.merge(&[delta("a.com.", 2, "ns.a.com."), delta("a.com.", 2, "ns2.a.com.")], false).unwrap();
        s.merge(&[delta("com.", 2, "a.gtld."), delta("b.com.", 1, "192.0.2.2")], false).unwrap();
        s.sync().unwrap();
        let got = all(&s);
        assert_eq!(got.first().map(|e| e.0), Some(3), "trimmed to 5: {got:?}");
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|(_, n)| n != "domain com."), "a public suffix is not a domain: {got:?}");
        assert!(got.iter().any(|(_, n)| n == "domain b.com."), "{got:?}");
        let read = s.feed_read(4, 1, |_| true).unwrap();
        assert_eq!((read.entries.len(), read.through, read.oldest), (1, 5, 3));
        // Reopened: the log and its numbers survive.
        drop(s);
        let s = Store::open(dir.path()).unwrap().with_feed(5, psl);
        assert_eq!(all(&s), got);
    }
}
