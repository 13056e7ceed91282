//! The aggregation window: each distinct RRset seen since the last flush with its first seen,
//! last seen and count.
//!
//! An RRset is kept as one byte string (kind, type, owner and bailiwick in wire format, rdata,
//! each length-prefixed) instead of its owned strings, and the strings are not allocated one by
//! one: each is a *record* written after the one before into chunks of [`CHUNK`] bytes,
//! `[hash u64][first u64][last u64][count u64][key length u32][key]`, all little-endian. An
//! open-addressing table of `u64` slots finds them: each slot holds the record's place and 23
//! bits of its key's hash, so a probe rejects another key without reading its record, and a
//! repeat costs one read of the table and one of its record, where a map of boxed keys read
//! its bucket, then the key behind a pointer (the window is large and its reads miss the
//! caches: with a large window the map's lookups were a quarter of the ingest thread's
//! samples, docs/BENCHMARKS.md). A record takes its key's length and 36 bytes, with no
//! allocator overhead; the table 16 to 32 bytes per record (it doubles when half full, and
//! keeps its size from window to window). The store thread gets the chunks ([`Taken`]) and
//! reads the records where they lie.
//!
//! A key's length is a `u32`: a key is an RRset of one frame in presentation format (a few
//! times the frame's size at most), and frames are at most `DATA_FRAME_MAX_LIMIT` (64 MiB).

use std::hash::BuildHasher;

use foldhash::SharedSeed;
use foldhash::quality::SeedableRandomState;

use super::extract::{Kind, Rrset, WireRrset};
use crate::dns::push_wire_name;
use crate::store::Delta;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agg {
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

/// Records are written into chunks of this many bytes; a record larger than that gets a chunk
/// of its own.
const CHUNK: usize = 1 << 20;
/// A slot: the hash's tag in the top 24 bits (23 of the hash and a top bit always set, so that
/// no slot in use is 0), the chunk's number in the next [`CHUNK_BITS`], the record's offset in
/// the chunk in the low [`OFF_BITS`].
const OFF_BITS: u32 = 20;
const CHUNK_BITS: u32 = 20;
const TAG_SHIFT: u32 = OFF_BITS + CHUNK_BITS;
/// The most chunks a window may have. Two chunks in a row hold more than [`CHUNK`] bytes
/// between them, so a window has at most two chunks per MiB of records, and one frame adds at
/// most one per RRset (fewer than 65,536): the pipeline flushes at `window_mb`, at most
/// [`MAX_WINDOW_MB`], long before [`Window::full`] (a backstop) is reached.
const MAX_CHUNKS: usize = 1 << CHUNK_BITS;
/// The largest `aggregate.window_mb`.
pub const MAX_WINDOW_MB: u64 = 65_536;
const _: () = assert!(2 * MAX_WINDOW_MB as usize + 2 * 65_536 < MAX_CHUNKS);
/// A record's header: hash, first, last, count, key length.
const HEADER: usize = 36;
/// Observations are counted in batches of this many ([`Window::apply`]): first their slots
/// and records are read, one after the other without waiting, so that the CPU overlaps their
/// cache misses; then each is counted, from cache.
const BATCH: usize = 32;

/// A window entry where it lies in a [`Taken`] window: the encoded RRset and its aggregate.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub key: &'a [u8],
    pub agg: Agg,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The chunk and offset of a slot's record (or of a place [`Taken::iter`] gave).
fn place(slot: u64) -> (usize, usize) {
    ((slot >> OFF_BITS) as usize & (MAX_CHUNKS - 1), slot as usize & ((1 << OFF_BITS) - 1))
}

/// The length of the key of the record at `off` of `chunk`.
fn key_len(chunk: &[u8], off: usize) -> usize {
    u32::from_le_bytes(chunk[off + 32..off + 36].try_into().expect("4 bytes")) as usize
}

/// The record at `off` of `chunk`, and the offset of the next one.
fn record(chunk: &[u8], off: usize) -> (Entry<'_>, usize) {
    let n = key_len(chunk, off);
    let agg = Agg { first: u64_at(chunk, off + 8), last: u64_at(chunk, off + 16), count: u64_at(chunk, off + 24) };
    let start = off + HEADER;
    (Entry { key: &chunk[start..start + n], agg }, start + n)
}

fn tag(hash: u64) -> u64 {
    (hash >> TAG_SHIFT) | 1 << (63 - TAG_SHIFT)
}

/// The table's hasher is foldhash's (std's SipHash was 5% of the stages' instructions), with its
/// seeds drawn from the system's randomness (std's `RandomState`), not foldhash's own (addresses
/// and the clock): its keys come from DNS answers, which an attacker shapes, and a hash anyone
/// can compute (FxHash) would let crafted names collide. foldhash is not a keyed PRF as SipHash
/// is (it calls itself minimally DoS-resistant); what a flood of colliding names could cost is
/// bounded by the window's size (`window_keys`).
#[derive(Debug)]
pub struct Window {
    chunks: Vec<Vec<u8>>,
    /// A power of two long (or empty), at most half full.
    slots: Vec<u64>,
    len: usize,
    bytes: usize,
    hasher: SeedableRandomState,
    /// The batch waiting to be counted: its keys back to back, and where each starts with
    /// its hash and time.
    pending: Vec<u8>,
    pending_at: Vec<Pending>,
}

#[derive(Debug)]
struct Pending {
    start: usize,
    hash: u64,
    time: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            slots: Vec::new(),
            len: 0,
            bytes: 0,
            hasher: seeded(),
            pending: Vec::new(),
            pending_at: Vec::with_capacity(BATCH),
        }
    }
}

/// foldhash's state, seeded from the system's randomness.
pub(crate) fn seeded() -> SeedableRandomState {
    static SHARED: std::sync::OnceLock<SharedSeed> = std::sync::OnceLock::new();
    let random = || std::collections::hash_map::RandomState::new().hash_one(0u64);
    SeedableRandomState::with_seed(random(), SHARED.get_or_init(|| SharedSeed::from_u64(random())))
}

impl Window {
    /// Counts one observation of `rrset` at `time` (in a batch: [`Window::apply`]).
    pub fn add(&mut self, kind: Kind, rrset: &WireRrset, time: u64) {
        let start = self.pending.len();
        encode(kind, rrset, &mut self.pending);
        let hash = self.hasher.hash_one(&self.pending[start..]);
        self.pending_at.push(Pending { start, hash, time });
        if self.pending_at.len() >= BATCH {
            self.apply();
        }
    }

    /// Counts the observations added since the last batch.
    pub fn apply(&mut self) {
        if self.pending_at.is_empty() {
            return;
        }
        self.warm();
        let (keys, at) = (std::mem::take(&mut self.pending), std::mem::take(&mut self.pending_at));
        for (i, p) in at.iter().enumerate() {
            let end = at.get(i + 1).map_or(keys.len(), |n| n.start);
            self.count(&keys[p.start..end], p.hash, p.time);
        }
        (self.pending, self.pending_at) = (keys, at);
        self.pending.clear();
        self.pending_at.clear();
        // After a batch of very large RRsets, their room is not kept.
        if self.pending.capacity() > CHUNK {
            self.pending = Vec::new();
        }
    }

    /// Reads the first slot of each waiting key and, where its tag matches, the record's
    /// first and last bytes. Nothing here waits on the one before, so their cache misses
    /// overlap; the results are only there to be read.
    fn warm(&self) {
        if self.slots.is_empty() {
            return;
        }
        let mask = self.slots.len() - 1;
        let mut sink = 0u64;
        for p in &self.pending_at {
            let s = self.slots[p.hash as usize & mask];
            if s >> TAG_SHIFT == tag(p.hash) {
                let (c, off) = place(s);
                let chunk = &self.chunks[c];
                sink = sink.wrapping_add(u64::from(chunk[off + HEADER + key_len(chunk, off).saturating_sub(1)]));
            }
        }
        std::hint::black_box(sink);
    }

    /// Counts one observation of the RRset encoded as `key`.
    fn count(&mut self, key: &[u8], hash: u64, time: u64) {
        if let Some(i) = self.find(key, hash) {
            // A repeat: its aggregate, in place.
            let s = self.slots[i];
            let (c, off) = place(s);
            let chunk = &mut self.chunks[c];
            let first = u64_at(chunk, off + 8).min(time);
            let last = u64_at(chunk, off + 16).max(time);
            let count = u64_at(chunk, off + 24) + 1;
            chunk[off + 8..off + 16].copy_from_slice(&first.to_le_bytes());
            chunk[off + 16..off + 24].copy_from_slice(&last.to_le_bytes());
            chunk[off + 24..off + 32].copy_from_slice(&count.to_le_bytes());
            return;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let at = self.append(key, hash, time);
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = tag(hash) << TAG_SHIFT | at;
        self.len += 1;
    }

    /// The slot of the record of `key`, if there is one.
    fn find(&self, key: &[u8], hash: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let (mask, tag) = (self.slots.len() - 1, tag(hash));
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s >> TAG_SHIFT == tag {
                let (c, off) = place(s);
                let (e, _) = record(&self.chunks[c], off);
                if e.key == key {
                    return Some(i);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Writes the record of `key` (counted once, at `time`); its place in a slot's low bits.
    fn append(&mut self, key: &[u8], hash: u64, time: u64) -> u64 {
        let need = HEADER + key.len();
        let fits = self.chunks.last().is_some_and(|c| c.len() + need <= c.capacity() && c.len() < 1 << OFF_BITS);
        if !fits {
            self.chunks.push(Vec::with_capacity(need.max(CHUNK)));
        }
        let n = self.chunks.len() - 1;
        let chunk = &mut self.chunks[n];
        let off = chunk.len();
        chunk.extend_from_slice(&hash.to_le_bytes());
        chunk.extend_from_slice(&time.to_le_bytes());
        chunk.extend_from_slice(&time.to_le_bytes());
        chunk.extend_from_slice(&1u64.to_le_bytes());
        chunk.extend_from_slice(&(key.len() as u32).to_le_bytes());
        chunk.extend_from_slice(key);
        self.bytes += need;
        (n as u64) << OFF_BITS | off as u64
    }

    /// Doubles the table and places every record again, reading the chunks in order.
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(1024);
        self.slots.clear();
        self.slots.resize(n, 0);
        let mask = n - 1;
        for (c, chunk) in self.chunks.iter().enumerate() {
            let mut off = 0;
            while off < chunk.len() {
                let hash = u64_at(chunk, off);
                let mut i = hash as usize & mask;
                while self.slots[i] != 0 {
                    i = (i + 1) & mask;
                }
                self.slots[i] = tag(hash) << TAG_SHIFT | (c as u64) << OFF_BITS | off as u64;
                off = record(chunk, off).1;
            }
        }
    }

    /// Distinct RRsets in the window (those of the waiting batch not yet counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was added since the last `take`, counted or waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.pending_at.is_empty()
    }

    /// The bytes its records take (keys and headers; the waiting batch not yet counted).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the window is near the most chunks it can address (a backstop: `window_mb`
    /// flushes it long before).
    pub fn full(&self) -> bool {
        self.chunks.len() >= MAX_CHUNKS - 2
    }

    /// Empties the window, handing over its records. The table keeps its size for the next.
    pub fn take(&mut self) -> Taken {
        self.apply();
        self.slots.fill(0);
        let taken = Taken { chunks: std::mem::take(&mut self.chunks), len: self.len };
        (self.len, self.bytes) = (0, 0);
        taken
    }
}

/// A window's records, handed to the store thread.
#[derive(Debug, Default)]
pub struct Taken {
    chunks: Vec<Vec<u8>>,
    len: usize,
}

impl Taken {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Each entry, with its place for [`Taken::get`].
    pub fn iter(&self) -> impl Iterator<Item = (u64, Entry<'_>)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            let mut off = 0;
            std::iter::from_fn(move || {
                (off < chunk.len()).then(|| {
                    let (e, next) = record(chunk, off);
                    let place = (c as u64) << OFF_BITS | off as u64;
                    off = next;
                    (place, e)
                })
            })
        })
    }

    /// The entry at a place [`Taken::iter`] gave.
    pub fn get(&self, at: u64) -> Entry<'_> {
        let (c, off) = place(at);
        record(&self.chunks[c], off).0
    }
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Positive => 0,
        Kind::NxDomain => 1,
        Kind::NoData => 2,
    }
}

fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends the RRset's key to `out`.
fn encode(kind: Kind, rrset: &WireRrset, out: &mut Vec<u8>) {
    out.push(kind_byte(kind));
    out.extend_from_slice(&rrset.rrtype.to_le_bytes());
    push_bytes(out, &rrset.owner);
    push_bytes(out, &rrset.bailiwick);
    out.extend_from_slice(&(rrset.rdata.len() as u32).to_le_bytes());
    for r in &rrset.rdata {
        push_bytes(out, r.as_bytes());
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

    fn bytes(&mut self) -> &'a [u8] {
        let n = self.u32() as usize;
        let b = &self.key[self.at..self.at + n];
        self.at += n;
        b
    }

    fn str(&mut self) -> &'a str {
        std::str::from_utf8(self.bytes()).expect("the window's own UTF-8")
    }

    /// A name in wire format, written as text into `s`. Room for the text is made first (as
    /// long as the wire form unless there are escapes): pushed a character at a time into a
    /// new delta's empty string, it grew three or four times per name (9% of the store
    /// thread's instructions on a sensor's first window; 5% fewer in all with the room made).
    fn name_into(&mut self, s: &mut String) {
        let wire = self.bytes();
        s.clear();
        s.reserve(wire.len());
        push_wire_name(wire, s);
    }
}

/// The start of an entry's store key ([`crate::store::keys::rrset_key_start`]), read off the
/// entry without decoding it.
pub fn key_start(key: &[u8], out: &mut Vec<u8>) {
    let rrtype = u16::from_le_bytes([key[1], key[2]]);
    let mut r = Reader { key, at: 3 };
    let owner = r.bytes();
    let bailiwick = r.bytes();
    crate::store::keys::rrset_key_start_wire(out, owner, rrtype, bailiwick);
}

/// The store delta of a window entry.
pub fn delta(e: Entry) -> Delta {
    let rrset = Rrset { rrname: String::new(), rrtype: 0, bailiwick: String::new(), rdata: Vec::new() };
    let mut d = Delta { kind: Kind::Positive, rrset, first: 0, last: 0, count: 0, sensors: Vec::new() };
    delta_into(e, &mut d);
    d
}

/// [`delta`] into `d`, reusing its strings' memory: the store thread decodes every entry of
/// every window, and allocating each string afresh cost 6% of its instructions. Reads what
/// [`encode`] wrote (the window's own bytes: a failure is a bug).
pub fn delta_into(Entry { key, agg: a }: Entry, d: &mut Delta) {
    d.kind = match key[0] {
        0 => Kind::Positive,
        1 => Kind::NxDomain,
        _ => Kind::NoData,
    };
    d.rrset.rrtype = u16::from_le_bytes([key[1], key[2]]);
    let mut r = Reader { key, at: 3 };
    r.name_into(&mut d.rrset.rrname);
    r.name_into(&mut d.rrset.bailiwick);
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

    /// A name given as text without escapes, in wire format.
    fn wire(name: &str) -> Vec<u8> {
        let mut w = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            w.push(label.len() as u8);
            w.extend_from_slice(label.as_bytes());
        }
        w.push(0);
        w
    }

    fn rrset(name: &str, rdata: &[&str]) -> WireRrset {
        WireRrset {
            owner: wire(name),
            rrtype: 1,
            bailiwick: wire("example.com."),
            rdata: rdata.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// 75,000 observations drawn from 30,000 RRsets (most seen a few times), through many
    /// doublings of the table; some records fill most of a chunk, some are larger than one.
    /// Every count, first and last seen is the one a plain map of the RRsets gives.
    #[test]
    fn every_repeat_finds_its_record_across_growth_and_chunks() {
        let mut w = Window::default();
        let mut reference = std::collections::HashMap::new();
        let mut x: u64 = 1;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            x >> 33
        };
        for step in 0..75_000u64 {
            let i = next() % 30_000;
            let big = match i % 5_000 {
                0 => "x".repeat(CHUNK + 1000),
                1 => "y".repeat(CHUNK * 3 / 5),
                _ => String::new(),
            };
            let r = rrset(&format!("n{i}.example.com."), &[&format!("192.0.2.{}", i % 250), &big]);
            let time = 1_000 + next() % 10_000;
            w.add(Kind::Positive, &r, time);
            let a = reference.entry(r.to_rrset()).or_insert(Agg { first: time, last: time, count: 0 });
            (a.first, a.last, a.count) = (a.first.min(time), a.last.max(time), a.count + 1);
            // Counted in batches: after `apply`, every observation so far.
            if step % 7 == 0 {
                w.apply();
                assert_eq!(w.len(), reference.len(), "after {step} observations");
            }
        }
        assert!(w.bytes() > 4 * CHUNK, "{} bytes", w.bytes());
        let taken = w.take();
        assert_eq!(taken.len(), reference.len());
        let mut seen = 0;
        for (_, e) in taken.iter() {
            let d = delta(e);
            assert_eq!(reference.get(&d.rrset), Some(&e.agg), "{}", d.rrset.rrname);
            seen += 1;
        }
        assert_eq!(seen, reference.len());
        // The emptied window starts again from nothing.
        assert!(w.is_empty() && w.bytes() == 0);
        w.add(Kind::Positive, &rrset("a.example.com.", &["192.0.2.1"]), 5);
        assert_eq!(w.take().iter().map(|(_, e)| e.agg.count).collect::<Vec<_>>(), [1]);
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
        // Waiting in the batch: not counted yet, but the window is not empty (a tick flushes it).
        assert_eq!((w.len(), w.is_empty()), (0, false));
        let taken = w.take();
        assert_eq!(taken.len(), 4);
        let mut deltas: Vec<Delta> = taken.iter().map(|(_, e)| delta(e)).collect();
        assert!(w.is_empty());
        // Decoded into deltas that held other RRsets (more rdata, fewer, longer names): the same,
        // and each place gives its entry back.
        let mut reused = deltas.clone();
        reused.rotate_left(1);
        for ((place, e), d) in taken.iter().zip(&mut reused) {
            assert_eq!(taken.get(place).key, e.key);
            delta_into(taken.get(place), d);
        }
        assert_eq!(reused, deltas);
        deltas.sort_by_key(|d| d.first);
        let got: Vec<(Kind, Rrset, u64, u64, u64)> =
            deltas.into_iter().map(|d| (d.kind, d.rrset, d.first, d.last, d.count)).collect();
        let (a, b, c) = (a.to_rrset(), b.to_rrset(), c.to_rrset());
        assert_eq!((a.rrname.as_str(), a.bailiwick.as_str()), ("www.example.com.", "example.com."));
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
