//! The passive DNS store on sled, shared by the sensor (its local database) and the collector.
//!
//! One sled tree. RRsets and their index entries are written in sorted runs (`runs.rs`):
//! compressed blocks under `B`, a directory entry per run under `Mrun`; reads merge the runs
//! (and, in stores written before runs, the same keys in the tree itself), combining a key's
//! counters. The key space they hold, tagged by the first byte:
//! - `R` + RRset key: cumulative RRsets (key and value as in [`keys`]); `N`: NXDOMAIN/NODATA.
//! - `F` + forward owner name, `0x00`, RRset key: for right wildcards (`www.example.*`).
//! - `I` + 16-byte address (IPv4 mapped) + RRset key: A/AAAA rdata, for prefix/range scans.
//! - `T` + reversed target name, `0x00`, RRset key: NS, CNAME, PTR, DNAME, MX, SRV targets.
//! - `G` + forward target name, `0x00`, RRset key: the same targets, for right wildcards
//!   (`ns1.example.*`).
//! - `V` + rrtype (2) + digest of one rdata (16) + RRset key: the rdata of every other type
//!   (TXT, SOA, CAA, ...), for raw rdata lookups.
//! - `C` + RRset key + `0x00` + sender id: which senders contributed an RRset.
//!
//! Plain sled keys:
//! - `O` + sequence number: the deltas of one flush, for the next hop (opt-in).
//! - `M...`: counters (stored RRsets, outbox sequence), the outbox stream id, the runs.
//! - `S` + sender id: (stream, last applied sequence) of each sender (collector side), written
//!   in the same batch as the merge it marks: exactly once.
//! - `W`, `D`, `Y`: the feed log and its domains, per-day rows (`feed.rs`, `days.rs`).
//!
//! A merge is one atomic sled batch (its run, counters, outbox entries, sender mark): either
//! all of it is applied or none. [`Store::sync`] then makes it durable; a failed sync is
//! retried on its own, never by merging again, so nothing is counted twice.

mod days;
mod feed;
pub mod keys;
mod known;
mod lookup;
mod runs;
pub use runs::{FAN_IN, valid_fan_in};

pub use days::DayRow;
pub use feed::{FeedEntry, FeedItem, FeedRead};
pub use lookup::{Ended, ForeignCursor, Lookup, Ordered, Scanned, count_entries, walk};

use std::net::IpAddr;
use std::path::Path;

use thiserror::Error;

use crate::dns::rrtype_name;
use crate::sensor::{Kind, Rrset};
use keys::{decode_value, encode_value, encode_value_into, owner_prefix, rrset_key};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt value under key {0:02x?}")]
    Corrupt(Vec<u8>),
    #[error("store: {0}")]
    Backend(String),
    #[error("store: the flush thread panicked")]
    FlushPanicked,
    #[error(
        "store: a write failed with an I/O error earlier, after which sled may never finish a flush: restart to reopen the store"
    )]
    Broken,
}

/// One stored RRset with its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub rrset: Rrset,
    pub first: u64,
    pub last: u64,
    pub count: u64,
    /// The sensors behind it, when the database keeps them with the RRset (ClickHouse); the
    /// sled store keeps contributors apart ([`Store::contributors`]) and leaves this empty.
    pub sensors: Vec<String>,
}

impl Entry {
    /// Passive DNS Common Output Format (one NDJSON object).
    pub fn to_cof(&self) -> serde_json::Value {
        serde_json::json!({
            "rrname": self.rrset.rrname,
            "rrtype": rrtype_name(self.rrset.rrtype.into()),
            "rdata": self.rrset.rdata,
            "time_first": self.first,
            "time_last": self.last,
            "count": self.count,
            "bailiwick": self.rrset.bailiwick,
        })
    }
}

/// One aggregated delta of a flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub kind: Kind,
    pub rrset: Rrset,
    pub first: u64,
    pub last: u64,
    pub count: u64,
    /// The sensors behind it, when it passed a relay (empty: the sender itself).
    pub sensors: Vec<String>,
}

/// DNSDB-style time fences, each an independent predicate (epoch seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fences {
    pub first_before: Option<u64>,
    pub first_after: Option<u64>,
    pub last_before: Option<u64>,
    pub last_after: Option<u64>,
}

impl Fences {
    pub fn admit(&self, e: &Entry) -> bool {
        self.first_before.is_none_or(|t| e.first < t)
            && self.first_after.is_none_or(|t| e.first > t)
            && self.last_before.is_none_or(|t| e.last < t)
            && self.last_after.is_none_or(|t| e.last > t)
    }
}

/// An owner-name pattern: exact, `*.zone` (names strictly below), or `prefix.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Below(String),
    RightWildcard(String),
}

impl NamePattern {
    /// Parses `www.example.com`, `*.example.com` or `www.example.*` (case-insensitive; the
    /// trailing dot is optional). A name typed in Unicode (`bücher.example`) is looked up in
    /// its IDNA form (`xn--bcher-kva.example.`), the form names are stored in.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty name".into());
        }
        let s = if s.is_ascii() { s.to_ascii_lowercase() } else { idna(s)? };
        let fqdn = |n: &str| if n.ends_with('.') { n.to_string() } else { format!("{n}.") };
        if let Some(zone) = s.strip_prefix("*.") {
            if zone.contains('*') {
                return Err(format!("`{s}`: one wildcard, at one end"));
            }
            return Ok(Self::Below(fqdn(zone)));
        }
        if let Some(prefix) = s.strip_suffix(".*") {
            if prefix.contains('*') || prefix.is_empty() {
                return Err(format!("`{s}`: one wildcard, at one end"));
            }
            return Ok(Self::RightWildcard(format!("{prefix}.")));
        }
        if s.contains('*') {
            return Err(format!("`{s}`: wildcards go at the start (*.example.com) or the end (www.example.*)"));
        }
        Ok(Self::Exact(fqdn(&s)))
    }
}

/// A name or pattern in Unicode to its ASCII (IDNA) form, lower case, wildcards and the
/// trailing dot kept.
fn idna(s: &str) -> Result<String, String> {
    let (head, rest) = s.strip_prefix("*.").map_or(("", s), |r| ("*.", r));
    let (rest, tail) = rest.strip_suffix(".*").map_or((rest, ""), |r| (r, ".*"));
    let (name, dot) = rest.strip_suffix('.').map_or((rest, ""), |r| (r, "."));
    let ascii = hickory_proto::rr::Name::from_utf8(name)
        .map_err(|e| format!("`{s}` is not a domain name: {e}"))?
        .to_ascii()
        .to_ascii_lowercase();
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    Ok(format!("{head}{ascii}{dot}{tail}"))
}

/// Counts of one merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    pub new_keys: u64,
    pub updated_keys: u64,
    pub outbox_seq: Option<u64>,
    /// The outbox was full: the deltas went into its newest entry.
    pub outbox_folded: bool,
    /// The outbox was full but its newest entry could not take more (in flight, or at
    /// [`FOLD_CAP`]): a new entry was added past the limit.
    pub outbox_over_limit: bool,
}

/// What [`Store::merge_from`] did with a sender's batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Merged(MergeStats),
    /// All of it applied before (the mark is at `through`); nothing changed.
    Duplicate {
        through: u64,
    },
    /// Part of it applied before: refused, nothing changed; the sender resends from
    /// `through + 1`.
    Overlap {
        through: u64,
    },
    /// Sequences were skipped: refused, nothing changed.
    Gap {
        expected: u64,
    },
}

/// A handle on the store; clones share it (sled is internally synchronised).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Everything lives in this one tree under a one-byte tag, so that a flush is a single
    /// atomic batch.
    t: sled::Tree,
    /// Outbox entries kept at most; past it new deltas are folded into the newest entry.
    outbox_limit: usize,
    /// Held while the outbox is changed or read for sending; the value is the last sequence
    /// taken for sending and not yet removed (0: none), which a fold must not touch.
    outbox_lock: std::sync::Arc<std::sync::Mutex<u64>>,
    /// Held through a merge's reads and its write: merges of one store from several threads
    /// (a relay's batches and its own dnstap) never lose each other's counts. It holds the
    /// merges' entry buffers, kept from one to the next.
    merge_lock: std::sync::Arc<std::sync::Mutex<runs::Entries>>,
    /// Feed entries kept (0: no feed log).
    feed_retain: u64,
    /// The last feed number a sync made durable (shared by clones).
    feed_durable: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// A merge or compaction failed with an I/O error (shared by clones): [`Store::sync`]
    /// refuses from then on.
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Public suffixes, for the feed's new domains.
    suffixes: std::sync::Arc<crate::psl::SuffixList>,
    /// Keep per-day rows (`days.rs`).
    days: bool,
    /// Index entries carry copies of their RRset's value (see `index`): stores that serve
    /// the query API. Once on, on for good (recorded in the store): a merge that skipped the
    /// copies would leave them stale.
    copies: bool,
    /// The sorted runs RRsets and index entries are written in (`runs.rs`).
    runs: std::sync::Arc<runs::Runs>,
    /// A 128-bit fingerprint of every stored RRset key (`R` and `N`): which RRsets of a merge
    /// are new, without reading the store (a new RRset gets its bare index entries and its
    /// feed entry).
    /// `None` until the first merge: a store only read (`dnsledger query`, the API) never
    /// pays for it.
    known: std::sync::Arc<std::sync::Mutex<Option<known::Known>>>,
    /// The same for contributor entries (`C`, a collector's or relay's): a merge writes the
    /// entry of an RRset and sender only if it is not stored already. Rewriting it with every
    /// merge that carries the RRset was 30% of the bytes such a merge compresses (docs/BENCHMARKS.md).
    /// `None` until the first merge with contributors (a sensor never has one).
    known_contributors: std::sync::Arc<std::sync::Mutex<Option<known::Known>>>,
    /// The fingerprints' keys: random, drawn at open (the set is rebuilt at open, never
    /// stored), so that no one can craft two RRsets with one fingerprint.
    print_keys: (std::hash::RandomState, std::hash::RandomState),
}

/// sled's page cache in MiB unless configured: small, for sensors (a memory goal); servers of
/// large stores want more (`--cache-mb`, `[store] cache_mb`): a walk over pages that do not fit
/// re-reads and re-decodes them.
pub const DEFAULT_CACHE_MB: u64 = 32;

/// The cache of a store served by `dnsledger api` or a collector unless configured.
pub const SERVER_CACHE_MB: u64 = 512;

/// The smallest outbox bound: twice what the forwarder takes at once, so that the entry that
/// folding rewrites is never one being sent.
pub const MIN_OUTBOX_LIMIT: usize = 128;

/// Summaries an outbox entry holds at most when a merge adds it: a large merge (a sensor's
/// whole window) becomes several entries, each well inside a forwarding batch.
pub const OUTBOX_ENTRY: usize = 5_000;

/// Entries of runs a merge compacts per entry it writes (see `runs::Runs::compact`).
const COMPACT_PER_ENTRY: u64 = 8;

/// Summaries a folded outbox entry may hold: well inside what one forwarding batch carries
/// (the forwarder's 50,000, the receiver's size limits), so a folded entry stays sendable.
pub const FOLD_CAP: usize = 25_000;

/// Adds `more` to the sorted, unique list `into` (at most `MAX_SENSORS` names).
pub fn union_sensors(into: &mut Vec<String>, more: &[String]) {
    for s in more {
        // Bounded like the wire format allows; past it the first names are kept.
        if into.len() >= crate::forward::wire::MAX_SENSORS {
            return;
        }
        if let Err(i) = into.binary_search(s) {
            into.insert(i, s.clone());
        }
    }
}

/// Deltas of several flushes as one: identical RRsets summed (first = min, last = max).
pub fn fold(mut into: Vec<Delta>, more: &[Delta]) -> Vec<Delta> {
    let mut at: std::collections::HashMap<(Kind, Rrset), usize> =
        into.iter().enumerate().map(|(i, d)| ((d.kind, d.rrset.clone()), i)).collect();
    for d in more {
        match at.get(&(d.kind, d.rrset.clone())) {
            Some(&i) => {
                let e = &mut into[i];
                e.first = e.first.min(d.first);
                e.last = e.last.max(d.last);
                e.count = e.count.saturating_add(d.count);
                union_sensors(&mut e.sensors, &d.sensors);
            }
            None => {
                at.insert((d.kind, d.rrset.clone()), into.len());
                into.push(d.clone());
            }
        }
    }
    into
}

const TAG_RRSET: u8 = b'R';
const TAG_NEGATIVE: u8 = b'N';
const TAG_BY_NAME: u8 = b'F';
const TAG_BY_IP: u8 = b'I';
const TAG_BY_TARGET: u8 = b'T';
pub(crate) const TAG_BY_TARGET_FWD: u8 = b'G';
pub(crate) const TAG_BY_VALUE: u8 = b'V';
/// The index generation every RRset has entries of: 2 = with `G` and `V` entries (stores from
/// before get them at open).
const META_INDEXES: &[u8] = b"Mindexes";
/// The last RRset key an unfinished upgrade did.
const META_INDEXES_AT: &[u8] = b"Mindexes_at";
const INDEXES: u8 = 2;
/// Set once a store's index entries carry copies.
const META_COPIES: &[u8] = b"Mcopies";
const TAG_OUTBOX: u8 = b'O';
const META_OUTBOX_SEQ: &[u8] = b"Moutbox_seq";
const META_RRSETS: &[u8] = b"Mrrsets";
const META_STREAM: &[u8] = b"Mstream";
/// The outbox range in flight (first, last): a retry resends exactly it (see `outbox_take`).
const META_PINNED: &[u8] = b"Mpinned";
const TAG_SENDER: u8 = b'S';
const TAG_CONTRIBUTOR: u8 = b'C';

fn tagged(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(rest.len() + 1);
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

impl Store {
    /// Index entries carry copies of their RRset's value from now on (a store that serves the
    /// query API: address and rdata-name walks read in index order). Recorded in the store, so
    /// every later merge keeps the copies current whoever opens it.
    pub fn with_copies(mut self) -> Result<Self, StoreError> {
        if !self.copies {
            self.t.insert(META_COPIES, &[1])?;
            self.copies = true;
        }
        Ok(self)
    }

    /// Bounds the outbox to `limit` entries (at least [`MIN_OUTBOX_LIMIT`]): past it, flushes
    /// fold into the newest entry, so nothing is lost while the next hop is away.
    pub fn with_outbox_limit(mut self, limit: usize) -> Self {
        self.outbox_limit = limit.max(MIN_OUTBOX_LIMIT);
        self
    }

    /// Merges its runs `n` at a time (a power of two from 2 to 16; [`FAN_IN`] unless
    /// set): a collector's choice, fewer rewrites per entry for more runs to read (and, in a
    /// benchmark, more disk).
    pub fn with_fan_in(self, n: usize) -> Self {
        self.runs.set_fan_in(n);
        self
    }

    /// Opens (or creates) the store in `dir` with the default cache, compressed if it was
    /// created so.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_cached(dir, DEFAULT_CACHE_MB)
    }

    /// Opens (or creates) the store in `dir` with `cache_mb` MiB of page cache.
    pub fn open_cached(dir: &Path, cache_mb: u64) -> Result<Self, StoreError> {
        let compressed = std::fs::read_to_string(dir.join("conf")).is_ok_and(|c| c.contains("use_compression: true"));
        Self::open_with(dir, compressed, cache_mb)
    }

    /// Opens (or creates) the store; `compression` (zstd, needs the `compression` feature) must
    /// match how an existing store was created; `cache_mb`: sled's page cache, in MiB.
    pub fn open_with(dir: &Path, compression: bool, cache_mb: u64) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open { path: dir.display().to_string(), source };
        if compression && !cfg!(feature = "compression") {
            return Err(open_err(sled::Error::Unsupported(
                "this store is compressed; build dnsledger with `--features compression`".into(),
            )));
        }
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mb.max(1) << 20)
            .mode(sled::Mode::HighThroughput)
            .use_compression(compression);
        // A handle just closed (a restart in this process, a process exiting) can hold sled's
        // file lock for a moment from its flusher thread: wait up to 2 s for it.
        let mut waited = 0;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e)) if waited < 40 && e.to_string().contains("could not acquire lock") => {
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => break r.map_err(open_err)?,
            }
        };
        let t = db.open_tree("pdns").map_err(StoreError::Sled)?;
        let runs = std::sync::Arc::new(runs::Runs::open(&t)?);
        // A range pinned before a restart is still in flight: never folded into.
        let pinned = t.get(META_PINNED).map_err(StoreError::Sled)?.filter(|v| v.len() == 16).map(|v| u64_of(&v[8..]));
        let mut store = Self {
            db,
            t,
            outbox_limit: usize::MAX,
            outbox_lock: std::sync::Arc::new(std::sync::Mutex::new(pinned.unwrap_or(0))),
            merge_lock: Default::default(),
            feed_retain: 0,
            feed_durable: Default::default(),
            broken: Default::default(),
            suffixes: Default::default(),
            days: false,
            copies: false,
            runs,
            known: Default::default(),
            known_contributors: Default::default(),
            print_keys: (std::hash::RandomState::new(), std::hash::RandomState::new()),
        };
        store.upgrade_indexes()?;
        store.copies = store.t.get(META_COPIES)?.is_some();
        // What a previous process wrote is on disk now.
        let written = store.feed_written()?;
        store.feed_durable = std::sync::Arc::new(written.into());
        Ok(store)
    }

    /// Gives a store written before `G` and `V` entries existed those entries, once: the RRset
    /// tree is read through in batches of 5,000 RRsets, each written with the last key done, so
    /// an upgrade cut short (a restart) resumes where it stopped; progress is logged.
    fn upgrade_indexes(&self) -> Result<(), StoreError> {
        if self.t.get(META_INDEXES)?.is_some_and(|v| v.first().is_some_and(|g| *g >= INDEXES)) {
            return Ok(());
        }
        let total = self.len().max(1) as u64;
        let start = match self.t.get(META_INDEXES_AT)? {
            Some(at) => std::ops::Bound::Excluded(at.to_vec()),
            None => std::ops::Bound::Included(vec![TAG_RRSET]),
        };
        let (mut rrsets, mut added) = (0u64, 0u64);
        let mut batch = sled::Batch::default();
        for item in self.t.range::<Vec<u8>, _>((start, std::ops::Bound::Excluded(vec![TAG_RRSET + 1]))) {
            let (k, v) = item?;
            let e = decode_value(&v).ok_or_else(|| StoreError::Corrupt(k.to_vec()))?;
            for key in
                index_keys(&e.rrset, &k[1..]).into_iter().filter(|k| [TAG_BY_TARGET_FWD, TAG_BY_VALUE].contains(&k[0]))
            {
                batch.insert(key, &[]);
                added += 1;
            }
            rrsets += 1;
            if rrsets.is_multiple_of(5_000) {
                batch.insert(META_INDEXES_AT, k);
                self.t.apply_batch(std::mem::take(&mut batch))?;
                if rrsets.is_multiple_of(200_000) {
                    tracing::info!(
                        rrsets,
                        entries = added,
                        percent = (rrsets * 100 / total).min(100),
                        "store upgrade: indexing rdata for right wildcards and raw lookups"
                    );
                }
            }
        }
        batch.insert(META_INDEXES, &[INDEXES]);
        batch.remove(META_INDEXES_AT);
        self.t.apply_batch(batch)?;
        self.db.flush()?;
        if rrsets > 0 {
            tracing::info!(rrsets, entries = added, "store upgrade: done");
        }
        Ok(())
    }

    /// Adds a flush's deltas (each RRset at most once): counters summed, first/last widened,
    /// index entries for RRsets seen for the first time; with `outbox`, the deltas are also
    /// queued for the next hop. One atomic batch; [`Store::sync`] makes it durable.
    pub fn merge(&self, deltas: &[Delta], outbox: bool) -> Result<MergeStats, StoreError> {
        self.merge_with(deltas, outbox, sled::Batch::default(), None, false)
    }

    /// [`Store::merge`] for a writer that compacts when it has time (the sensor's store
    /// thread, between windows once the load eases): the merge leaves compaction for
    /// [`Store::compact_step`] while the store has fewer than 16 runs per 4 of fan-in, and
    /// compacts as `merge` does past that. Under load the writer's CPU goes to what comes in,
    /// and a compaction done later takes all the runs of a size class at once, rewriting each
    /// entry once where compacting `fan_in` at a time rewrites it once per size class.
    pub fn merge_under_load(&self, deltas: &[Delta], outbox: bool) -> Result<MergeStats, StoreError> {
        self.merge_with(deltas, outbox, sled::Batch::default(), None, true)
    }

    /// Compacts, reading at most about `budget` entries of runs (a step, so that a merge waiting
    /// for it waits little). Returns whether more compaction is due (`Store::compact_counted`
    /// on a failure).
    pub fn compact_step(&self, budget: u64) -> bool {
        let _merging = self.merge_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.compact_counted(budget) && self.runs.compaction_due()
    }

    /// `runs::Runs::compact` with at most about `budget` entries read; under the merge lock. A
    /// failure is counted and logged, not returned: it follows an applied merge, which must not
    /// fail (its caller would merge again and count twice). The failed compaction's inputs stay
    /// as they are, its output is deleted and compaction pauses for a minute. Whether it
    /// succeeded.
    fn compact_counted(&self, budget: u64) -> bool {
        match self.runs.compact(&self.t, Some(budget)) {
            Ok(()) => true,
            Err(e) => {
                self.runs.compaction_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e, "store: compaction failed; tried again later");
                self.failed_write(&e);
                false
            }
        }
    }

    /// Applies a sender's batch exactly once. A batch covers the sender's outbox entries
    /// `first..=last` of one stream; the sender's mark (stream, last) is written in the same
    /// atomic batch as the merge, so a crash leaves both or neither. Within a stream a batch
    /// must start right after the mark: all of it applied before is a
    /// [`Applied::Duplicate`], part of it an [`Applied::Overlap`] (the sender drops what is
    /// applied and resends the rest), a jump is refused ([`Applied::Gap`]) rather than
    /// silently losing what is missing. A new stream (a sender whose store was re-created)
    /// starts a new sequence space. With `trust_sensors` (the sender is a relay the operator
    /// trusts), the sensors a delta names are recorded as its contributors; otherwise the
    /// sender is, whatever the delta claims.
    pub fn merge_from(
        &self,
        sender: &str,
        stream: u64,
        (first, last): (u64, u64),
        deltas: &[Delta],
        outbox: bool,
        trust_sensors: bool,
    ) -> Result<Applied, StoreError> {
        let mark_key = tagged(TAG_SENDER, sender.as_bytes());
        if let Some(mark) = self.t.get(&mark_key)?
            && mark.len() == 16
            && u64_of(&mark[..8]) == stream
        {
            let through = u64_of(&mark[8..]);
            if last <= through {
                return Ok(Applied::Duplicate { through });
            }
            if first <= through {
                return Ok(Applied::Overlap { through });
            }
            if first != through + 1 {
                return Ok(Applied::Gap { expected: through + 1 });
            }
        }
        let mut batch = sled::Batch::default();
        let mut mark = stream.to_be_bytes().to_vec();
        mark.extend_from_slice(&last.to_be_bytes());
        batch.insert(mark_key, mark);
        // The outbox carries who is behind each delta (a relay's next hop records them);
        // without one the contributors are taken as the entries are made, with no copy.
        let attributed;
        let deltas = if outbox {
            attributed = attribute(deltas, sender, trust_sensors);
            &attributed[..]
        } else {
            deltas
        };
        Ok(Applied::Merged(self.merge_with(deltas, outbox, batch, Some((sender, trust_sensors)), false)?))
    }

    /// The (stream, last sequence) applied from each sender.
    pub fn sender_marks(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.scan_prefix([TAG_SENDER]) {
            let (k, v) = item?;
            if v.len() != 16 {
                return Err(StoreError::Corrupt(k.to_vec()));
            }
            out.push((String::from_utf8_lossy(&k[1..]).into_owned(), u64_of(&v[..8]), u64_of(&v[8..])));
        }
        Ok(out)
    }

    /// The senders that contributed an RRset.
    pub fn contributors(&self, rrset: &Rrset) -> Result<Vec<String>, StoreError> {
        let mut prefix = tagged(TAG_CONTRIBUTOR, &rrset_key(rrset));
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.scan_prefix(&prefix) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// This store's outbox stream id: random, made once when the store is created, so the next
    /// hop can tell a re-created store (sequences starting over) from a replay.
    pub fn stream_id(&self) -> Result<u64, StoreError> {
        if let Some(v) = self.t.get(META_STREAM)? {
            return Ok(u64_of(&v));
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let id = (nanos as u64) ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        match self.t.compare_and_swap(META_STREAM, None as Option<&[u8]>, Some(&id.to_be_bytes()[..]))? {
            Ok(()) => Ok(id),
            Err(current) => Ok(current.current.map(|v| u64_of(&v)).unwrap_or(id)),
        }
    }

    /// The oldest outbox batches, in order, up to `max_batches` or until `max_deltas` would
    /// be passed (at least one batch when there is any).
    pub fn outbox_take(&self, max_batches: usize, max_deltas: usize) -> Result<Vec<(u64, Vec<Delta>)>, StoreError> {
        let mut in_flight = self.outbox_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(u64, Vec<Delta>)> = Vec::new();
        // A range sent before and not acknowledged is sent again as it was, even after a
        // restart: the next hop may have applied it (ClickHouse recognises a batch by its
        // exact range and content).
        if let Some((first, last)) = self.pinned()? {
            for item in self.t.range(tagged(TAG_OUTBOX, &first.to_be_bytes())..=tagged(TAG_OUTBOX, &last.to_be_bytes()))
            {
                let (k, v) = item?;
                let deltas = decode_deltas(&v).ok_or_else(|| StoreError::Corrupt(k.to_vec()))?;
                out.push((u64_of(&k[1..]), deltas));
            }
            if out.first().map(|o| o.0) == Some(first) && out.last().map(|o| o.0) == Some(last) {
                *in_flight = (*in_flight).max(last);
                return Ok(out);
            }
            out.clear();
        }
        let mut n = 0;
        for item in self.t.scan_prefix([TAG_OUTBOX]).take(max_batches) {
            let (k, v) = item?;
            let deltas = decode_deltas(&v).ok_or_else(|| StoreError::Corrupt(k.to_vec()))?;
            if !out.is_empty() && n + deltas.len() > max_deltas {
                break;
            }
            n += deltas.len();
            out.push((u64_of(&k[1..]), deltas));
        }
        if let (Some((first, _)), Some((last, _))) = (out.first(), out.last()) {
            *in_flight = (*in_flight).max(*last);
            let mut pin = first.to_be_bytes().to_vec();
            pin.extend_from_slice(&last.to_be_bytes());
            self.t.insert(META_PINNED, pin)?;
            self.t.flush()?;
        }
        Ok(out)
    }

    /// The outbox range taken and not yet acknowledged.
    fn pinned(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(self.t.get(META_PINNED)?.filter(|v| v.len() == 16).map(|v| (u64_of(&v[..8]), u64_of(&v[8..]))))
    }

    /// Deletes outbox entries up to `sequence` (acknowledged by the next hop).
    pub fn outbox_remove_through(&self, sequence: u64) -> Result<(), StoreError> {
        let mut in_flight = self.outbox_lock.lock().unwrap_or_else(|e| e.into_inner());
        if *in_flight <= sequence {
            *in_flight = 0;
        }
        let mut batch = sled::Batch::default();
        for item in self.t.range(tagged(TAG_OUTBOX, &0u64.to_be_bytes())..=tagged(TAG_OUTBOX, &sequence.to_be_bytes()))
        {
            batch.remove(item?.0);
        }
        if self.pinned()?.is_some_and(|(first, _)| first <= sequence) {
            batch.remove(META_PINNED);
        }
        self.t.apply_batch(batch)?;
        Ok(())
    }

    /// Adds `deltas` to the outbox as entries of at most [`OUTBOX_ENTRY`] summaries; the last
    /// entry's sequence.
    fn append_outbox(&self, batch: &mut sled::Batch, deltas: &[Delta]) -> Result<u64, StoreError> {
        let mut seq = self.t.get(META_OUTBOX_SEQ)?.map(|v| u64_of(&v)).unwrap_or(0);
        for chunk in deltas.chunks(OUTBOX_ENTRY) {
            seq += 1;
            batch.insert(tagged(TAG_OUTBOX, &seq.to_be_bytes()), encode_deltas(chunk));
        }
        batch.insert(META_OUTBOX_SEQ, &seq.to_be_bytes());
        Ok(seq)
    }

    fn merge_with(
        &self,
        deltas: &[Delta],
        outbox: bool,
        batch: sled::Batch,
        contributors: Option<(&str, bool)>,
        under_load: bool,
    ) -> Result<MergeStats, StoreError> {
        let merged = self.merge_unchecked(deltas, outbox, batch, contributors, under_load);
        if let Err(e) = &merged {
            self.failed_write(e);
        }
        merged
    }

    /// After a write that failed with an I/O error, sled may never finish a flush: when it
    /// could not create the file for a large value (its directory removed, say), the space it
    /// had reserved in its log is never filled, and every flush waits for it for good. Which
    /// errors do that cannot be told from outside, so any I/O error of a merge or compaction
    /// stops [`Store::sync`] until the store is reopened; a writer that retries then holds
    /// its data and reports, rather than hang.
    fn failed_write(&self, e: &StoreError) {
        if matches!(e, StoreError::Sled(sled::Error::Io(_)))
            && !self.broken.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tracing::error!(error = %e, "store: a write failed with an I/O error; no more syncs until it is reopened");
        }
    }

    fn merge_unchecked(
        &self,
        deltas: &[Delta],
        outbox: bool,
        mut batch: sled::Batch,
        contributors: Option<(&str, bool)>,
        under_load: bool,
    ) -> Result<MergeStats, StoreError> {
        let mut merging = self.merge_lock.lock().unwrap_or_else(|e| e.into_inner());
        let entries = &mut *merging;
        entries.clear();
        let mut stats = MergeStats::default();
        let mut new_positive = 0u64;
        let mut fresh = Vec::new();
        let mut new_prints = fxhash::FxHashSet::default();
        let mut new_credits = fxhash::FxHashSet::default();
        // Contributor entries this merge may write: (fingerprint, delta, sender).
        let mut credits: Vec<(u128, usize, &str)> = Vec::new();
        {
            // First each RRset's own entry (its key fingerprinted), then, once it is known
            // which RRsets are new, their index entries.
            let (mut v, mut scratch) = (Vec::new(), Vec::new());
            let mut own = Vec::with_capacity(deltas.len());
            let mut prints = Vec::with_capacity(deltas.len());
            for d in deltas {
                encode_value_into(&mut v, d.first, d.last, d.count, &d.rrset);
                let value = entries.value(&v);
                let tag = if d.kind == Kind::Positive { TAG_RRSET } else { TAG_NEGATIVE };
                let at = entries.push(|b| keys::rrset_key_into(b, tag, &d.rrset), value);
                prints.push(self.fingerprint(entries.key_at(at)));
                // `C` + RRset key + 0 + sender: who contributed it (see `attribute`); only
                // the ones not stored yet, below.
                if let Some((sender, trust)) = contributors {
                    let names: &[String] = if trust && !d.sensors.is_empty() { &d.sensors } else { &[] };
                    for name in names.iter().map(String::as_str).chain(names.is_empty().then_some(sender)) {
                        scratch.clear();
                        contributor_key(&mut scratch, &entries.key_at(at)[1..], name);
                        credits.push((self.fingerprint(&scratch), own.len(), name));
                    }
                }
                own.push((at, value, v.len()));
            }
            if !credits.is_empty() {
                let prints: Vec<u128> = credits.iter().map(|c| c.0).collect();
                let stored = {
                    let mut known = self.known_contributors.lock().unwrap_or_else(|e| e.into_inner());
                    if known.is_none() {
                        *known = Some(self.load_prints(&[TAG_CONTRIBUTOR], "contributor entries")?);
                    }
                    known.as_ref().map(|k| k.contains_all(&prints)).unwrap_or_default()
                };
                let bare = entries.value(&[]);
                for ((print, i, name), stored) in credits.iter().zip(stored) {
                    if stored || !new_credits.insert(*print) {
                        continue;
                    }
                    scratch.clear();
                    scratch.extend_from_slice(&entries.key_at(own[*i].0)[1..]);
                    entries.push(|k| contributor_key(k, &scratch, name), bare);
                }
            }
            let known = {
                let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
                if known.is_none() {
                    *known = Some(self.load_prints(&[TAG_NEGATIVE, TAG_RRSET], "RRsets")?);
                }
                known.as_ref().map(|k| k.contains_all(&prints)).unwrap_or_default()
            };
            let mut rkey = Vec::new();
            for (((d, (at, value, len)), print), known) in deltas.iter().zip(own).zip(prints).zip(known) {
                let positive = d.kind == Kind::Positive;
                rkey.clear();
                rkey.extend_from_slice(&entries.key_at(at)[1..]);
                if positive && self.days {
                    self.day_add(&mut batch, &rkey, d)?;
                }
                let new = !known && !new_prints.contains(&print);
                // A known RRset's index entries are there already; only copies need writing.
                if positive && (new || self.copies) {
                    index(entries, &d.rrset, &rkey, value, len, new, self.copies);
                }
                if !new {
                    stats.updated_keys += 1;
                    continue;
                }
                stats.new_keys += 1;
                new_prints.insert(print);
                if positive {
                    new_positive += 1;
                    if self.feed_retain > 0 {
                        fresh.push((&d.rrset, rkey.clone(), d.first));
                    }
                }
            }
        }
        // Refused before anything is written (a retry is safe): entries a run cannot hold.
        entries.check()?;
        // One entry per key: the same key twice in a batch is combined.
        entries.sort()?;
        let written = entries.len() as u64;
        let run = self.runs.stage(entries, &mut batch)?;
        entries.clear();
        self.feed_add(&mut batch, &fresh)?;
        if new_positive > 0 {
            let n = self.t.get(META_RRSETS)?.map(|v| u64_of(&v)).unwrap_or(0) + new_positive;
            batch.insert(META_RRSETS, &n.to_be_bytes());
        }
        // The outbox decision and the write happen under the outbox lock, so the forwarder
        // never takes an entry between a fold's read and its write.
        let in_flight = self.outbox_lock.lock().unwrap_or_else(|e| e.into_inner());
        if outbox && self.outbox_limit != usize::MAX && self.outbox_len() >= self.outbox_limit {
            // Full (the next hop is away): fold into the newest entry instead of adding one,
            // so the outbox stops growing by entries while counts stay exact; unless that
            // entry is in flight or has reached FOLD_CAP summaries (a batch must stay
            // sendable), in which case a new entry is added past the limit (counted).
            let (k, v) =
                self.t.scan_prefix([TAG_OUTBOX]).next_back().ok_or(StoreError::Corrupt(vec![TAG_OUTBOX]))??;
            let old = decode_deltas(&v).ok_or_else(|| StoreError::Corrupt(k.to_vec()))?;
            let newest = u64_of(&k[1..]);
            let folded = fold(old, deltas);
            if newest > *in_flight && folded.len() <= FOLD_CAP {
                batch.insert(k.clone(), encode_deltas(&folded));
                stats.outbox_seq = Some(newest);
                stats.outbox_folded = true;
            } else {
                stats.outbox_seq = Some(self.append_outbox(&mut batch, deltas)?);
                stats.outbox_over_limit = true;
            }
        } else if outbox {
            stats.outbox_seq = Some(self.append_outbox(&mut batch, deltas)?);
        }
        // All or nothing: if this fails nothing was applied and the merge may be retried.
        self.t.apply_batch(batch)?;
        drop(in_flight);
        if let Some(run) = run {
            self.runs.publish(run);
        }
        if let Some(known) = self.known.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            known.extend(new_prints);
        }
        if let Some(known) = self.known_contributors.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            known.extend(new_credits);
        }
        // Compaction a step at a time, in proportion to what was written: enough to keep up
        // (each entry is rewritten once per size class), never a long stall of this merge.
        // Under load, left for `compact_step` while the runs are few enough.
        if !(under_load && self.runs.may_defer()) {
            self.compact_counted(COMPACT_PER_ENTRY * written + 50_000);
        }
        Ok(stats)
    }

    /// Moves everything in runs into the tree itself: a store as written before runs existed.
    #[cfg(test)]
    pub(crate) fn move_runs_to_tree(&self) {
        let all: Vec<_> =
            self.scan_range(std::ops::Bound::Included(vec![b'C']), Some(vec![b'W'])).map(|r| r.unwrap()).collect();
        for (k, v) in all {
            self.t.insert(k, v).unwrap();
        }
        self.runs.clear(&self.t);
    }

    /// A 128-bit fingerprint of a stored key: two SipHash-1-3 passes with random keys. Two
    /// keys share one with a chance of about n^2 / 2^129: none in practice, where 64 bits
    /// would give a few in a billion at a million RRsets.
    fn fingerprint(&self, key: &[u8]) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.print_keys.0.hash_one(key)) << 64) | u128::from(self.print_keys.1.hash_one(key))
    }

    /// Fingerprints every stored key under `tags` (before the first merge that needs them).
    fn load_prints(&self, tags: &[u8], what: &str) -> Result<known::Known, StoreError> {
        let started = std::time::Instant::now();
        let mut prints = Vec::with_capacity(self.len().min(1 << 24));
        for &tag in tags {
            for item in self.runs.scan(&self.t, std::ops::Bound::Included(vec![tag]), Some(vec![tag + 1])) {
                prints.push(self.fingerprint(&item?.0));
            }
        }
        let known = known::Known::from_prints(prints);
        if known.len() > 0 {
            tracing::info!(
                keys = known.len(),
                ms = started.elapsed().as_millis() as u64,
                "store: stored {what} fingerprinted (once, at the first merge)"
            );
        }
        Ok(known)
    }

    /// Keys in `[start, end)` over the tree and the runs, in key order, values combined.
    pub(crate) fn scan_range(
        &self,
        start: std::ops::Bound<Vec<u8>>,
        end: Option<Vec<u8>>,
    ) -> impl Iterator<Item = lookup::Scanned> + '_ {
        self.runs.scan(&self.t, start, end)
    }

    /// Keys starting with `prefix`, in key order, values combined.
    fn scan_prefix<'a>(&'a self, prefix: &[u8]) -> impl Iterator<Item = lookup::Scanned> + use<'a> {
        self.scan_range(std::ops::Bound::Included(prefix.to_vec()), lookup::successor(prefix))
    }

    /// The value of one key, combined over the tree and the runs.
    fn get_merged(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.runs.get_sorted(&self.t, &[key.to_vec()])?.pop().flatten())
    }

    /// Makes everything merged so far durable. Retry this, never the merge, when it fails:
    /// the merge is applied already.
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.broken.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::Broken);
        }
        let written = self.feed_written()?;
        self.db.flush()?;
        self.feed_durable.fetch_max(written, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// For a store given up on (its writes keep failing): leaves sled's own last flush, when
    /// the last handle is dropped, out of the process's exit. After a write that failed
    /// half-way (a file sled could not create, its directory removed under it) that flush
    /// waits for good, and the process would never end. What was synced before stays.
    pub fn abandon(&self) {
        std::mem::forget(self.db.clone());
        std::mem::forget(self.t.clone());
    }

    /// Number of stored RRsets (positive).
    pub fn len(&self) -> usize {
        self.t.get(META_RRSETS).ok().flatten().map(|v| u64_of(&v) as usize).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.t.scan_prefix([TAG_OUTBOX]).count()
    }

    /// Outbox batches in order, decoded.
    pub fn outbox_batches(&self) -> Result<Vec<(u64, Vec<Delta>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.scan_prefix([TAG_OUTBOX]) {
            let (k, v) = item?;
            out.push((u64_of(&k[1..]), decode_deltas(&v).ok_or_else(|| StoreError::Corrupt(k.to_vec()))?));
        }
        Ok(out)
    }

    /// Runs the RRsets and index entries are in now, and the bytes of their blocks.
    pub fn runs(&self) -> (usize, u64) {
        self.runs.stats()
    }

    /// Every entry of the runs, key (whole) and value, one after the other: what a search of
    /// the store's files for a string (an audit that no client address was stored) must read
    /// besides the files, where the blocks are compressed and keys share prefixes.
    pub fn unpacked_runs(&self) -> Result<Vec<u8>, StoreError> {
        self.runs.unpacked(&self.t)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Every stored RRset (positive or negative tree), in key order.
    pub fn all(&self, negative: bool) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        self.scan_prefix(&[if negative { TAG_NEGATIVE } else { TAG_RRSET }]).map(|r| {
            let (k, v) = r?;
            decode_value(&v).ok_or_else(|| StoreError::Corrupt(k.to_vec()))
        })
    }
}

/// The store's own metrics (prefix `dnsledger_store_`).
impl crate::metrics::Metrics for Store {
    fn render(&self, out: &mut String) {
        use crate::metrics::write_metric;
        use std::sync::atomic::Ordering::Relaxed;
        let (runs, bytes) = self.runs();
        write_metric(out, "dnsledger_store_rrsets", "gauge", "RRsets stored.", self.len());
        write_metric(out, "dnsledger_store_runs", "gauge", "Sorted runs the RRsets and index entries are in.", runs);
        write_metric(out, "dnsledger_store_run_bytes", "gauge", "Bytes of the runs' blocks (compressed).", bytes);
        write_metric(
            out,
            "dnsledger_store_compactions_total",
            "counter",
            "Runs merged into one.",
            self.runs.compactions.load(Relaxed),
        );
        write_metric(
            out,
            "dnsledger_store_compaction_errors_total",
            "counter",
            "Compactions that failed (tried again at the next merge).",
            self.runs.compaction_errors.load(Relaxed),
        );
    }
}

impl NamePattern {
    /// Whether an exact name (given as a pattern) matches this pattern.
    fn matches(&self, name: &NamePattern) -> bool {
        let NamePattern::Exact(n) = name else { return false };
        match self {
            NamePattern::Exact(e) => e == n,
            NamePattern::Below(z) => n != z && keys::at_or_below(n, z),
            NamePattern::RightWildcard(p) => n.starts_with(p.as_str()),
        }
    }
}

/// Who is behind each delta: the sensors a trusted relay names, otherwise the sender.
pub fn attribute(deltas: &[Delta], sender: &str, trust_sensors: bool) -> Vec<Delta> {
    deltas
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if !trust_sensors || d.sensors.is_empty() {
                d.sensors = vec![sender.to_string()];
            }
            d
        })
        .collect()
}

/// A contributor entry's key: `C` + RRset key (without its tag) + 0 + sender.
fn contributor_key(k: &mut Vec<u8>, rkey: &[u8], sender: &str) {
    k.push(TAG_CONTRIBUTOR);
    k.extend_from_slice(rkey);
    k.push(0);
    k.extend_from_slice(sender.as_bytes());
}

/// RRsets with more rdata than this, or a value larger than [`MAX_COPY_BYTES`], keep bare
/// index entries: their copies would cost (rdata x value size) bytes per merge.
const MAX_COPIES: usize = 8;
const MAX_COPY_BYTES: usize = 1024;

/// Index entries of a positive RRset (`new`: stored for the first time). In a store with
/// `copies` (one serving the query API), the rdata entries (addresses, names) of a small
/// RRset hold a copy of its value `v`, written with every merge (a read sums them like the RRset's own): a walk over them reads its results in index order instead of fetching each
/// RRset by key, a random read (CIDR walks were 10x slower for it, docs/BENCHMARKS.md). The
/// forward-name entries (right wildcards) and raw-value entries, rarer lookups, and every entry
/// of a large RRset stay bare, as every entry of stores written before this was; walks fetch
/// the RRsets of bare entries. Whether an RRset gets copies never changes once the store has
/// them (its rdata and its value's size are fixed). The copies cost the writer 10-30% and
/// 13-23% more disk on the synthetic workloads (docs/BENCHMARKS.md), hence only where queries
/// are served.
fn index(out: &mut runs::Entries, r: &Rrset, rkey: &[u8], v: runs::ValueRef, len: usize, new: bool, copies: bool) {
    let copies = copies && r.rdata.len() <= MAX_COPIES && len <= MAX_COPY_BYTES;
    let bare = out.value(&[]);
    let mut push = |k: &[u8]| {
        if copies && ![TAG_BY_NAME, TAG_BY_TARGET_FWD, TAG_BY_VALUE].contains(&k[0]) {
            out.push(|b| b.extend_from_slice(k), v);
        } else if new {
            out.push(|b| b.extend_from_slice(k), bare);
        }
    };
    if r.rdata.len() < 2 {
        // One rdata: its keys differ by tag.
        index_keys_each(r, rkey, push);
        return;
    }
    // Once each: two rdata can give one key (`10 mx.a.` and `20 mx.a.`, or `::1` and `0::1`),
    // and a merge sums a key's copies.
    let mut keys = index_keys(r, rkey);
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        push(&k);
    }
}

/// The index keys of a positive RRset (`rkey`: its RRset key): `F` forward owner, `I` rdata
/// addresses, `T` and `G` rdata names (reversed and forward), `V` other rdata; each ends with
/// the RRset key.
pub fn index_keys(r: &Rrset, rkey: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(1 + r.rdata.len());
    index_keys_each(r, rkey, |k| out.push(k.to_vec()));
    out
}

/// [`index_keys`], each built in one buffer and handed to `f`.
fn index_keys_each(r: &Rrset, rkey: &[u8], mut f: impl FnMut(&[u8])) {
    let mut k = Vec::with_capacity(128);
    let mut emit = |k: &mut Vec<u8>, parts: &[&[u8]]| {
        k.clear();
        for p in parts {
            k.extend_from_slice(p);
        }
        k.extend_from_slice(rkey);
        f(k);
    };
    emit(&mut k, &[&[TAG_BY_NAME], r.rrname.as_bytes(), &[0]]);
    for rdata in &r.rdata {
        let ip = rdata_ip(r.rrtype, rdata);
        if let Some(ip) = ip {
            emit(&mut k, &[&[TAG_BY_IP], &ip_key(ip)]);
        }
        if let Some(target) = rdata_target(r.rrtype, rdata) {
            emit(&mut k, &[&[TAG_BY_TARGET], &owner_prefix(&target)]);
            emit(&mut k, &[&[TAG_BY_TARGET_FWD], target.as_bytes(), &[0]]);
        } else if ip.is_none() {
            emit(&mut k, &[&value_prefix(r.rrtype, rdata)]);
        }
    }
}

/// The `V` index prefix of one rdata (presentation format, as stored) of type `rrtype`.
pub(crate) fn value_prefix(rrtype: u16, rdata: &str) -> Vec<u8> {
    let mut k = tagged(TAG_BY_VALUE, &rrtype.to_be_bytes());
    k.extend_from_slice(&keys::rdata_digest(std::slice::from_ref(&rdata.to_string())));
    k
}

fn u64_of(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The address of A/AAAA rdata.
fn rdata_ip(rrtype: u16, rdata: &str) -> Option<IpAddr> {
    match rrtype {
        1 | 28 => rdata.parse().ok(),
        _ => None,
    }
}

/// The name a record points at: NS, CNAME, PTR, DNAME (whole rdata), MX (exchange), SRV
/// (target).
pub fn rdata_target(rrtype: u16, rdata: &str) -> Option<String> {
    let t = match rrtype {
        2 | 5 | 12 | 39 => rdata,
        15 => rdata.split_whitespace().nth(1)?,
        33 => rdata.split_whitespace().nth(3)?,
        _ => return None,
    };
    Some(t.to_ascii_lowercase())
}

/// Marks the outbox encoding with sensor lists (the older one began with a u32 count, whose
/// first byte is never this).
const DELTAS_V2: u8 = 0xfe;

fn encode_deltas(deltas: &[Delta]) -> Vec<u8> {
    let mut out = vec![DELTAS_V2];
    out.extend_from_slice(&(deltas.len() as u32).to_be_bytes());
    for d in deltas {
        out.push(match d.kind {
            Kind::Positive => 0,
            Kind::NxDomain => 1,
            Kind::NoData => 2,
        });
        let v = encode_value(d.first, d.last, d.count, &d.rrset);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(&v);
        out.extend_from_slice(&(d.sensors.len() as u16).to_be_bytes());
        for s in &d.sensors {
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

fn decode_deltas(mut b: &[u8]) -> Option<Vec<Delta>> {
    let take = |b: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (h, t) = b.split_at_checked(n)?;
        *b = t;
        Some(h.to_vec())
    };
    let v2 = b.first() == Some(&DELTAS_V2);
    if v2 {
        b = &b[1..];
    }
    let n = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let kind = match take(&mut b, 1)?[0] {
            0 => Kind::Positive,
            1 => Kind::NxDomain,
            2 => Kind::NoData,
            _ => return None,
        };
        let len = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
        let e = decode_value(&take(&mut b, len)?)?;
        let mut sensors = Vec::new();
        if v2 {
            let k = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
            for _ in 0..k {
                let l = take(&mut b, 1)?[0] as usize;
                sensors.push(String::from_utf8(take(&mut b, l)?).ok()?);
            }
        }
        out.push(Delta { kind, rrset: e.rrset, first: e.first, last: e.last, count: e.count, sensors });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_senders_batches_apply_exactly_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let d = |count| Delta {
            kind: Kind::Positive,
            rrset: rr("www.example.com.", 1, "example.com.", &["192.0.2.1"]),
            first: 10,
            last: 20,
            count,
            sensors: Vec::new(),
        };
        assert!(matches!(s.merge_from("s1", 7, (1, 1), &[d(2)], false, false).unwrap(), Applied::Merged(_)));
        assert_eq!(s.merge_from("s1", 7, (1, 1), &[d(2)], false, false).unwrap(), Applied::Duplicate { through: 1 });
        assert_eq!(s.merge_from("s1", 7, (3, 3), &[d(5)], false, false).unwrap(), Applied::Gap { expected: 2 });
        assert!(matches!(s.merge_from("s1", 7, (2, 4), &[d(3)], false, false).unwrap(), Applied::Merged(_)));
        // 4..6 merged by a relay after 4 went through alone: refused, the sender resends 5..6.
        assert_eq!(s.merge_from("s1", 7, (4, 6), &[d(9)], false, false).unwrap(), Applied::Overlap { through: 4 });
        assert!(matches!(s.merge_from("s1", 7, (5, 6), &[d(1)], false, false).unwrap(), Applied::Merged(_)));
        assert!(matches!(s.merge_from("s2", 1, (40, 40), &[d(1)], false, false).unwrap(), Applied::Merged(_)));
        // s1's store was re-created: a new stream, sequences start over.
        assert!(matches!(s.merge_from("s1", 8, (1, 1), &[d(10)], false, false).unwrap(), Applied::Merged(_)));
        let e: Vec<Entry> = s.all(false).map(|e| e.unwrap()).collect();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].count, 2 + 3 + 1 + 1 + 10);
        assert_eq!(s.contributors(&e[0].rrset).unwrap(), vec!["s1".to_string(), "s2".to_string()]);
        assert_eq!(s.sender_marks().unwrap(), vec![("s1".into(), 8, 1), ("s2".into(), 1, 40)]);

        // Sensors named by a trusted relay are recorded; an untrusted sender's claims are not.
        let mut claimed = d(1);
        claimed.rrset.rrname = "relayed.example.com.".into();
        claimed.sensors = vec!["far-1".into(), "far-2".into()];
        s.merge_from("relay", 1, (1, 1), std::slice::from_ref(&claimed), false, true).unwrap();
        s.merge_from("liar", 1, (1, 1), std::slice::from_ref(&claimed), false, false).unwrap();
        assert_eq!(s.contributors(&claimed.rrset).unwrap(), vec!["far-1", "far-2", "liar"]);
    }

    #[test]
    fn a_contributor_entry_is_written_once_per_rrset_and_sender_across_merges_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let r = rr("www.example.com.", 1, "example.com.", &["192.0.2.1"]);
        let d = Delta { kind: Kind::Positive, rrset: r.clone(), first: 10, last: 20, count: 1, sensors: Vec::new() };
        let c_key = |sender: &str| [&[TAG_CONTRIBUTOR][..], &rrset_key(&r), &[0], sender.as_bytes()].concat();
        // How many times the runs hold `key` (one per run that wrote it).
        let written = |s: &Store, key: &[u8]| {
            let all = s.unpacked_runs().unwrap();
            all.windows(key.len()).filter(|w| *w == key).count()
        };
        {
            let s = Store::open(dir.path()).unwrap();
            for seq in 1..=3 {
                s.merge_from("s1", 1, (seq, seq), std::slice::from_ref(&d), false, false).unwrap();
            }
            assert_eq!(written(&s, &c_key("s1")), 1);
        }
        let s = Store::open(dir.path()).unwrap();
        s.merge_from("s1", 1, (4, 4), std::slice::from_ref(&d), false, false).unwrap();
        assert_eq!(written(&s, &c_key("s1")), 1, "known again after reopening");
        s.merge_from("s2", 1, (1, 1), &[d.clone(), d.clone()], false, false).unwrap();
        assert_eq!(written(&s, &c_key("s2")), 1);
        assert_eq!(s.contributors(&r).unwrap(), vec!["s1", "s2"]);
        assert_eq!(s.all(false).map(|e| e.unwrap().count).collect::<Vec<_>>(), vec![6]);
    }

    #[test]
    fn a_full_outbox_folds_new_flushes_into_its_newest_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap().with_outbox_limit(0);
        assert_eq!(s.outbox_limit, MIN_OUTBOX_LIMIT);
        let d = |name: &str, count| Delta {
            kind: Kind::Positive,
            rrset: rr(name, 1, "example.", &["192.0.2.7"]),
            first: count,
            last: count,
            count,
            sensors: Vec::new(),
        };
        let mut total = 0;
        for i in 0..MIN_OUTBOX_LIMIT as u64 + 10 {
            let st = s.merge(&[d("a.example.", i + 1), d(&format!("n{}.example.", i % 3), 1)], true).unwrap();
            assert_eq!(st.outbox_folded, i >= MIN_OUTBOX_LIMIT as u64);
            total += i + 2;
        }
        assert_eq!(s.outbox_len(), MIN_OUTBOX_LIMIT);
        let batches = s.outbox_batches().unwrap();
        let sum: u64 = batches.iter().flat_map(|(_, d)| d.iter().map(|d| d.count)).sum();
        assert_eq!(sum, total, "nothing lost, nothing doubled");
        let newest = &batches.last().unwrap().1;
        let a = newest.iter().find(|d| d.rrset.rrname == "a.example.").unwrap();
        assert_eq!((a.first, a.last), (MIN_OUTBOX_LIMIT as u64, MIN_OUTBOX_LIMIT as u64 + 10));
        assert_eq!(newest.len(), 4, "one entry per distinct RRset");
    }

    #[test]
    fn a_fold_never_touches_the_entry_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap().with_outbox_limit(0);
        let d = |n: u64| Delta {
            kind: Kind::Positive,
            rrset: rr(&format!("n{n}.example."), 1, "example.", &["192.0.2.7"]),
            first: 1,
            last: 1,
            count: 1,
            sensors: Vec::new(),
        };
        for i in 0..MIN_OUTBOX_LIMIT as u64 {
            s.merge(&[d(i)], true).unwrap();
        }
        // The forwarder takes everything (the limit's minimum allows it with this many).
        let taken = s.outbox_take(usize::MAX, usize::MAX).unwrap();
        assert_eq!(taken.len(), MIN_OUTBOX_LIMIT);
        let st = s.merge(&[d(999)], true).unwrap();
        assert!(!st.outbox_folded && st.outbox_over_limit, "a new entry, not the one being sent");
        s.outbox_remove_through(taken.last().unwrap().0).unwrap();
        let left = s.outbox_take(10, 100).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1[0].rrset.rrname, "n999.example.", "the delta survived the ack");
    }

    #[test]
    fn the_outbox_is_read_oldest_first_and_emptied_by_acks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let stream = s.stream_id().unwrap();
        assert_eq!(s.stream_id().unwrap(), stream, "made once");
        let d = Delta {
            kind: Kind::Positive,
            rrset: rr("a.example.", 1, "example.", &["192.0.2.9"]),
            first: 1,
            last: 1,
            count: 1,
            sensors: vec!["s1".into()],
        };
        s.merge(std::slice::from_ref(&d), true).unwrap();
        s.merge(std::slice::from_ref(&d), true).unwrap();
        assert_eq!(s.outbox_take(1, 100).unwrap()[0].0, 1);
        s.outbox_remove_through(1).unwrap();
        assert_eq!(s.outbox_take(1, 100).unwrap(), vec![(2, vec![d.clone()])]);
        s.outbox_remove_through(2).unwrap();
        assert!(s.outbox_take(1, 100).unwrap().is_empty());
        for _ in 0..4 {
            s.merge(std::slice::from_ref(&d), true).unwrap();
        }
        let taken = s.outbox_take(3, 100).unwrap();
        assert_eq!(taken.iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![3, 4, 5]);
        // Not acknowledged: the same range again, whatever the limits, also after a restart.
        assert_eq!(s.outbox_take(10, 2).unwrap(), taken);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.outbox_take(1, 100).unwrap(), taken);
        s.outbox_remove_through(5).unwrap();
        assert_eq!(s.outbox_take(10, 2).unwrap().len(), 1, "unpinned by the ack");
        s.outbox_remove_through(6).unwrap();
        for _ in 0..3 {
            s.merge(std::slice::from_ref(&d), true).unwrap();
        }
        assert_eq!(s.outbox_take(10, 2).unwrap().len(), 2, "stops before passing max_deltas");
    }

    fn rr(name: &str, t: u16, bw: &str, rdata: &[&str]) -> Rrset {
        Rrset {
            rrname: name.into(),
            rrtype: t,
            bailiwick: bw.into(),
            rdata: rdata.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn rrset(owner: &str, rrtype: Option<u16>, bailiwick: Option<&str>) -> Lookup {
        Lookup::Rrset { owner: NamePattern::parse(owner).unwrap(), rrtype, bailiwick: bailiwick.map(String::from) }
    }

    fn rdata_name(target: &str) -> Lookup {
        Lookup::RdataName { target: NamePattern::parse(target).unwrap(), rrtype: None }
    }

    fn delta(r: Rrset, first: u64, last: u64, count: u64) -> Delta {
        Delta { kind: Kind::Positive, rrset: r, first, last, count, sensors: Vec::new() }
    }

    /// A merge that fails with an I/O error (here: sled cannot create the file for the
    /// outbox entry, a value too large for its log, because the store's directory is gone)
    /// stops syncs with an error; sled's flush would wait for good.
    #[test]
    fn a_write_failed_with_an_io_error_stops_syncs_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let s = Store::open(&db).unwrap();
        let deltas: Vec<Delta> = (0..20_000)
            .map(|i| delta(rr(&format!("www{i}.example.com."), 1, "example.com.", &["192.0.2.1"]), 1, 2, 1))
            .collect();
        s.merge(&deltas[..10], true).unwrap();
        s.sync().unwrap();
        std::fs::remove_dir_all(&db).unwrap();
        let failed = s.merge(&deltas, true).unwrap_err();
        assert!(matches!(failed, StoreError::Sled(sled::Error::Io(_))), "{failed}");
        assert!(matches!(s.sync(), Err(StoreError::Broken)));
        s.abandon();
    }

    #[test]
    fn unicode_names_are_looked_up_in_their_idna_form() {
        let p = |s: &str| NamePattern::parse(s).unwrap();
        assert_eq!(p("Bücher.Example"), NamePattern::Exact("xn--bcher-kva.example.".into()));
        assert_eq!(p("bücher.example."), NamePattern::Exact("xn--bcher-kva.example.".into()));
        assert_eq!(p("*.bücher.example"), NamePattern::Below("xn--bcher-kva.example.".into()));
        assert_eq!(p("www.bücher.*"), NamePattern::RightWildcard("www.xn--bcher-kva.".into()));
        assert_eq!(p("WWW.Example.com"), NamePattern::Exact("www.example.com.".into()));
        assert!(NamePattern::parse("a..ü").is_err());
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let idn = rr("xn--bcher-kva.example.", 1, "example.", &["192.0.2.7"]);
        s.merge(&[delta(idn, 1, 2, 1)], false).unwrap();
        let got = s.lookup(&rrset("bücher.example", None, None), &Fences::default(), 10).unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn many_merges_through_compactions_keep_every_count_and_index_entry() {
        // 5,000 RRsets, 60 merges of 2,000 deltas (some RRsets twice in a merge's input
        // order, never twice in one merge), so runs are merged at several sizes; checked
        // against a model after the merges, after reopening, and after more merges.
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let rrset_of = |i: u64| {
            rr(
                &format!("h{i}.z{}.example.", i % 37),
                1,
                "example.",
                &[&format!("10.{}.{}.{}", i % 7, (i / 256) % 256, i % 256)],
            )
        };
        type Model = std::collections::BTreeMap<u64, (u64, u64, u64)>;
        let mut model = Model::new();
        let mut merge_some = |s: &Store, model: &mut Model, merges: usize, under_load: bool| {
            for _ in 0..merges {
                let mut picked: std::collections::BTreeMap<u64, Delta> = Default::default();
                while picked.len() < 2_000 {
                    let i = next() % 5_000;
                    let t = 1_000 + next() % 1_000;
                    let c = 1 + next() % 5;
                    picked.insert(i, delta(rrset_of(i), t, t + next() % 100, c));
                }
                for (i, d) in &picked {
                    let e = model.entry(*i).or_insert((u64::MAX, 0, 0));
                    *e = (e.0.min(d.first), e.1.max(d.last), e.2 + d.count);
                }
                let deltas: Vec<Delta> = picked.into_values().collect();
                if under_load {
                    s.merge_under_load(&deltas, false).unwrap();
                } else {
                    s.merge(&deltas, false).unwrap();
                }
            }
        };
        let check = |s: &Store, model: &Model| {
            assert_eq!(s.len(), model.len());
            let mut all: Vec<(String, u64, u64, u64)> =
                s.all(false).map(|e| e.unwrap()).map(|e| (e.rrset.rrname, e.first, e.last, e.count)).collect();
            all.sort();
            let mut want: Vec<(String, u64, u64, u64)> =
                model.iter().map(|(i, (f, l, c))| (rrset_of(*i).rrname, *f, *l, *c)).collect();
            want.sort();
            assert_eq!(all, want);
            // Every RRset once through its address index, with its counters.
            let (lo, hi) = "10.0.0.0/8".parse::<crate::sensor::Cidr>().unwrap().range();
            let by_ip = s.lookup(&Lookup::RdataIp { lo, hi }, &Fences::default(), usize::MAX).unwrap();
            assert_eq!(by_ip.len(), model.len());
            assert_eq!(by_ip.iter().map(|e| e.count).sum::<u64>(), model.values().map(|v| v.2).sum::<u64>());
        };
        {
            let s = Store::open(dir.path()).unwrap();
            merge_some(&s, &mut model, 60, false);
            assert!(s.runs().0 < 20, "runs are merged: {:?}", s.runs());
            check(&s, &model);
            s.sync().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        check(&s, &model);
        merge_some(&s, &mut model, 10, false);
        check(&s, &model);
        // Under load, merges leave compaction for later up to 16 runs (fan-in 4) ...
        let start = s.runs().0;
        assert!(start < 16, "{start} runs");
        merge_some(&s, &mut model, 15 - start, true);
        assert_eq!(s.runs().0, 15);
        check(&s, &model);
        // ... and past that compact as `merge` does: the runs stay bounded.
        let mut most = 0;
        for _ in 0..20 {
            merge_some(&s, &mut model, 1, true);
            most = most.max(s.runs().0);
        }
        assert!(most <= 16, "{most} runs");
        check(&s, &model);
        // Once the load eases, steps catch up until no size class is full.
        merge_some(&s, &mut model, 15 - s.runs().0, true);
        let mut steps = 0;
        while s.compact_step(5_000) {
            steps += 1;
        }
        assert!(steps > 1, "{steps} steps");
        assert!(!s.runs.compaction_due());
        assert!(s.runs().0 < 12, "{:?}", s.runs());
        check(&s, &model);
        drop(s);
        check(&Store::open(dir.path()).unwrap(), &model);
    }

    #[test]
    fn merges_sum_counts_and_widen_times_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let www = rr("www.example.com.", 1, "example.com.", &["192.0.2.80"]);
        {
            let s = Store::open(dir.path()).unwrap();
            let st = s.merge(&[delta(www.clone(), 100, 200, 3)], true).unwrap();
            assert_eq!((st.new_keys, st.outbox_seq), (1, Some(1)));
        }
        let s = Store::open(dir.path()).unwrap();
        s.merge(&[delta(www.clone(), 50, 150, 2)], true).unwrap();
        let got = s.lookup(&rrset("WWW.example.com", None, None), &Fences::default(), 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].first, got[0].last, got[0].count), (50, 200, 5));
        let batches = s.outbox_batches().unwrap();
        assert_eq!(batches.iter().map(|(seq, d)| (*seq, d[0].count)).collect::<Vec<_>>(), [(1, 3), (2, 2)]);
    }

    #[test]
    fn wildcards_indexes_and_fences() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.merge(
            &[
                delta(rr("example.com.", 15, "example.com.", &["10 mail.example.com.", "20 mx.bank.com."]), 10, 20, 1),
                delta(rr("www.example.com.", 1, "example.com.", &["192.0.2.80"]), 10, 20, 1),
                delta(rr("a.b.example.com.", 28, "example.com.", &["2001:db8::1"]), 30, 40, 1),
                delta(rr("www.example.net.", 1, "example.net.", &["192.0.2.81"]), 30, 40, 1),
                delta(rr("www.badexample.com.", 5, "badexample.com.", &["www.example.com."]), 30, 40, 1),
                // An escaped dot is not a label boundary: a\.example.com. is not below
                // example.com., and must not hide the set from `*.example.com`.
                delta(rr("hostile.test.", 15, "test.", &["10 mail.example.com.", "20 a\\.example.com."]), 30, 40, 1),
            ],
            false,
        )
        .unwrap();
        let all = Fences::default();
        let names = |v: Vec<Entry>| {
            let mut n: Vec<String> = v.into_iter().map(|e| e.rrset.rrname).collect();
            n.sort();
            n
        };
        let below = s.lookup(&rrset("*.example.com", None, None), &all, 100).unwrap();
        assert_eq!(names(below), ["a.b.example.com.", "www.example.com."]);
        let right = s.lookup(&rrset("www.example.*", None, None), &all, 100).unwrap();
        assert_eq!(names(right), ["www.example.com.", "www.example.net."]);
        let (lo, hi) = "192.0.2.0/24".parse::<crate::sensor::Cidr>().unwrap().range();
        assert_eq!(
            names(s.lookup(&Lookup::RdataIp { lo, hi }, &all, 100).unwrap()),
            ["www.example.com.", "www.example.net."]
        );
        let target = s.lookup(&rdata_name("mx.bank.com"), &all, 100).unwrap();
        assert_eq!(names(target), ["example.com."]);
        // Two targets below example.com in one MX set: reported once.
        let target = s.lookup(&rdata_name("*.example.com"), &all, 100).unwrap();
        assert_eq!(names(target), ["example.com.", "hostile.test.", "www.badexample.com."]);
        let target = s.lookup(&rdata_name("www.example.*"), &all, 100).unwrap();
        assert_eq!(names(target), ["www.badexample.com."]);
        let late = Fences { first_after: Some(25), ..Fences::default() };
        let got = s.lookup(&rrset("*.example.com", None, None), &late, 100).unwrap();
        assert_eq!(names(got), ["a.b.example.com."]);
        let typed = s.lookup(&rrset("example.com", Some(15), Some("example.com.")), &all, 100);
        assert_eq!(typed.unwrap().len(), 1);
        assert_eq!(s.lookup(&rrset("*.example.com", None, None), &all, 1).unwrap().len(), 1);
        for bad in ["", "w*w.example.com", "*.example.*"] {
            assert!(NamePattern::parse(bad).is_err(), "{bad}");
        }
    }
}
