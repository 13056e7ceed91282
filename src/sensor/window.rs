//! The aggregation window: each distinct RRset seen since the last flush with its first seen,
//! last seen and count. An RRset is kept as one byte string (kind, type, owner, bailiwick,
//! rdata, each length-prefixed) instead of its owned strings: one allocation per entry in
//! place of four or more, so a window of a given size takes much less memory (measured in
//! docs/BENCHMARKS.md) and merges as many repeats.

use std::collections::HashMap;

use foldhash::SharedSeed;
use foldhash::quality::SeedableRandomState;

use super::extract::{Kind, Rrset};
use crate::store::Delta;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agg {
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

/// A window's entry: the encoded RRset and its aggregate.
pub type Entry = (Box<[u8]>, Agg);

/// The map's hasher is foldhash's (std's SipHash was 5% of the stages' instructions), with its
/// seeds drawn from the system's randomness (std's `RandomState`), not foldhash's own (addresses
/// and the clock): its keys come from DNS answers, which an attacker shapes, and a hash anyone
/// can compute (FxHash) would let crafted names collide. foldhash is not a keyed PRF as SipHash
/// is (it calls itself minimally DoS-resistant); what a flood of colliding names could cost is
/// bounded by the window's size (`window_keys`).
#[derive(Debug)]
pub struct Window {
    map: HashMap<Box<[u8]>, Agg, SeedableRandomState>,
    scratch: Vec<u8>,
}

impl Default for Window {
    fn default() -> Self {
        Self { map: HashMap::with_hasher(seeded()), scratch: Vec::new() }
    }
}

/// foldhash's state, seeded from the system's randomness.
fn seeded() -> SeedableRandomState {
    use std::hash::BuildHasher;
    static SHARED: std::sync::OnceLock<SharedSeed> = std::sync::OnceLock::new();
    let random = || std::collections::hash_map::RandomState::new().hash_one(0u64);
    SeedableRandomState::with_seed(random(), SHARED.get_or_init(|| SharedSeed::from_u64(random())))
}

impl Window {
    /// Counts one observation of `rrset` at `time`.
    pub fn add(&mut self, kind: Kind, rrset: &Rrset, time: u64) {
        encode(kind, rrset, &mut self.scratch);
        match self.map.get_mut(self.scratch.as_slice()) {
            Some(a) => {
                a.first = a.first.min(time);
                a.last = a.last.max(time);
                a.count += 1;
            }
            None => {
                self.map.insert(self.scratch.as_slice().into(), Agg { first: time, last: time, count: 1 });
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Empties the window, handing over its entries.
    pub fn take(&mut self) -> Vec<Entry> {
        self.map.drain().collect()
    }
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Positive => 0,
        Kind::NxDomain => 1,
        Kind::NoData => 2,
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode(kind: Kind, rrset: &Rrset, out: &mut Vec<u8>) {
    out.clear();
    out.push(kind_byte(kind));
    out.extend_from_slice(&rrset.rrtype.to_le_bytes());
    push_str(out, &rrset.rrname);
    push_str(out, &rrset.bailiwick);
    out.extend_from_slice(&(rrset.rdata.len() as u32).to_le_bytes());
    for r in &rrset.rdata {
        push_str(out, r);
    }
}

struct Reader<'a> {
    key: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> u32 {
        let v = u32::from_le_bytes(self.key[self.at..self.at + 4].try_into().expect("4 bytes"));
        self.at += 4;
        v
    }

    fn str(&mut self) -> &'a str {
        let n = self.u32() as usize;
        let s = std::str::from_utf8(&self.key[self.at..self.at + n]).expect("the window's own UTF-8");
        self.at += n;
        s
    }
}

/// The start of an entry's store key ([`crate::store::keys::rrset_key_start`]), read off the
/// entry without decoding it.
pub fn key_start(key: &[u8], out: &mut Vec<u8>) {
    let rrtype = u16::from_le_bytes([key[1], key[2]]);
    let mut r = Reader { key, at: 3 };
    let owner = r.str();
    let bailiwick = r.str();
    crate::store::keys::rrset_key_start(out, owner, rrtype, bailiwick);
}

/// The store delta of a window entry.
pub fn delta(e: &Entry) -> Delta {
    let rrset = Rrset { rrname: String::new(), rrtype: 0, bailiwick: String::new(), rdata: Vec::new() };
    let mut d = Delta { kind: Kind::Positive, rrset, first: 0, last: 0, count: 0, sensors: Vec::new() };
    delta_into(e, &mut d);
    d
}

/// [`delta`] into `d`, reusing its strings' memory: the store thread decodes every entry of
/// every window, and allocating each string afresh cost 6% of its instructions. Reads what
/// [`encode`] wrote (the window's own bytes: a failure is a bug).
pub fn delta_into((key, a): &Entry, d: &mut Delta) {
    d.kind = match key[0] {
        0 => Kind::Positive,
        1 => Kind::NxDomain,
        _ => Kind::NoData,
    };
    d.rrset.rrtype = u16::from_le_bytes([key[1], key[2]]);
    let mut r = Reader { key, at: 3 };
    set(&mut d.rrset.rrname, r.str());
    set(&mut d.rrset.bailiwick, r.str());
    let n = r.u32() as usize;
    d.rrset.rdata.truncate(n);
    for i in 0..n {
        match d.rrset.rdata.get_mut(i) {
            Some(s) => set(s, r.str()),
            None => d.rrset.rdata.push(r.str().to_string()),
        }
    }
    (d.first, d.last, d.count) = (a.first, a.last, a.count);
    d.sensors.clear();
}

fn set(s: &mut String, v: &str) {
    s.clear();
    s.push_str(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrset(name: &str, rdata: &[&str]) -> Rrset {
        Rrset {
            rrname: name.into(),
            rrtype: 1,
            bailiwick: "example.com.".into(),
            rdata: rdata.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn a_window_sums_observations_per_rrset_and_gives_them_back() {
        let mut w = Window::default();
        let a = rrset("www.example.com.", &["192.0.2.1", "192.0.2.2"]);
        // Same owner and type, other rdata; an rdata string that runs into the next: distinct.
        let b = rrset("www.example.com.", &["192.0.2.1"]);
        let c = rrset("www.example.com.", &["192.0.2.1192.0.2.2"]);
        w.add(Kind::Positive, &a, 20);
        w.add(Kind::Positive, &a, 10);
        w.add(Kind::Positive, &a, 30);
        w.add(Kind::Positive, &b, 5);
        w.add(Kind::Positive, &c, 6);
        w.add(Kind::NoData, &b, 7);
        assert_eq!(w.len(), 4);
        let entries = w.take();
        let mut deltas: Vec<Delta> = entries.iter().map(delta).collect();
        assert!(w.is_empty());
        // Decoded into deltas that held other RRsets (more rdata, fewer, longer names): the same.
        let mut reused = deltas.clone();
        reused.rotate_left(1);
        for (e, d) in entries.iter().zip(&mut reused) {
            delta_into(e, d);
        }
        assert_eq!(reused, deltas);
        deltas.sort_by_key(|d| d.first);
        let got: Vec<(Kind, Rrset, u64, u64, u64)> =
            deltas.into_iter().map(|d| (d.kind, d.rrset, d.first, d.last, d.count)).collect();
        assert_eq!(
            got,
            [
                (Kind::Positive, b.clone(), 5, 5, 1),
                (Kind::Positive, c, 6, 6, 1),
                (Kind::NoData, b, 7, 7, 1),
                (Kind::Positive, a, 10, 30, 3),
            ]
        );
    }
}
