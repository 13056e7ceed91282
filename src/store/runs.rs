//! Sorted runs: how merges reach sled without one sled key per RRset and index entry.
//!
//! sled takes 50-60k inserts per second here, and every new RRset costs it four or five
//! (the RRset and its index entries, each a copy-on-write of a tree node); it takes ~300 MB/s
//! of values a few KiB long (docs/BENCHMARKS.md). So a merge writes its RRsets and index
//! entries, sorted, as one *run*: blocks of about [`BLOCK_BYTES`] under `B` + run id + block
//! number, and a directory entry `Mrun` + run id holding the first key of each block. Runs are
//! immutable. A key may be in several runs (and in the tree itself, where stores written before
//! runs keep their entries); a read combines them ([`combine`]): counters summed, first and last
//! widened, which is commutative, so runs can be merged in any grouping.
//!
//! Runs of a similar size are merged (compacted) once the store's fan-in of them exist
//! ([`FAN_IN`] unless [`Runs::set_fan_in`] gives another), so a store of
//! n entries has O(log n) runs and each entry is rewritten O(log n) times. A compaction writes
//! its output under a new id marked `Mcompacting` (removed at open if it never finished), then
//! swaps the directory in one atomic batch that also marks the inputs `Mgarbage`; their blocks
//! are deleted once no reader holds them, or at the next open.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sled::IVec;

use super::keys::{set_counters, value_counters};
use super::{Scanned, StoreError};

/// A block is sealed once its entries pass this many bytes (stored compressed).
pub const BLOCK_BYTES: usize = 16 << 10;
/// zstd's level for blocks: its fastest.
const BLOCK_LEVEL: i32 = 1;
/// The first byte of a stored block: its entries compressed with zstd, each key whole (the
/// first format; read, no longer written) ...
const BLOCK_ZSTD: u8 = 1;
/// ... or each key as the length of the prefix it shares with the one before and the rest
/// (sorted keys share most of their bytes: zstd, 45% of the sensor's store thread, spends
/// 10% fewer instructions and the runs are 11% smaller; docs/BENCHMARKS.md) ...
const BLOCK_ZSTD_PREFIX: u8 = 2;
/// ... or the same entries compressed with LZ4 ([`Codec::Lz4`]).
const BLOCK_LZ4_PREFIX: u8 = 3;
/// A block is also sealed once its keys, whole, pass this many bytes, so that reading one
/// (which rebuilds them) costs a bounded amount whatever the keys share; a stored block whose
/// keys come to more than this and one more key is refused as corrupt.
const BLOCK_KEY_BYTES: usize = 64 << 10;
/// The largest key and value an entry may have (checked before a merge writes anything:
/// [`Entries::check`]); a block holds at most one entry past [`BLOCK_BYTES`].
pub const MAX_KEY: usize = 16 << 10;
pub const MAX_VALUE: usize = 2 << 20;
const MAX_BLOCK: usize = BLOCK_BYTES + MAX_KEY + MAX_VALUE + 64;
/// After a compaction fails, none is tried for this long.
const COMPACT_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);
/// Runs of one size class merged at once, unless the store is given another fan-in
/// (`Store::with_fan_in`): a larger one rewrites each entry less often (fewer size classes)
/// and leaves readers more runs to look through (up to `fan_in - 1` per class).
pub const FAN_IN: usize = 4;
/// The fan-ins a store may have: powers of two from 2 to 16.
pub fn valid_fan_in(n: usize) -> bool {
    n.is_power_of_two() && (2..=16).contains(&n)
}
/// Past this many runs per unit of fan-in a compaction finishes at once, whatever its budget
/// (32 runs at a fan-in of 4).
const MAX_RUNS_PER_FAN_IN: usize = 8;
/// A merge under load leaves compaction for later ([`Runs::may_defer`]) while the store has
/// fewer than this many runs per unit of fan-in (16 at a fan-in of 4): half the bound above,
/// so that deferring never brings on the stall of a compaction finished at once.
const DEFER_RUNS_PER_FAN_IN: usize = MAX_RUNS_PER_FAN_IN / 2;
/// A compaction's output goes to sled in batches of about this many bytes ...
const COMPACT_BATCH_BYTES: usize = 1 << 20;
/// ... and is flushed every this many: sled holds what it has not written in memory.
const COMPACT_FLUSH_BYTES: u64 = 16 << 20;

const TAG_BLOCK: u8 = b'B';
const META_RUN: &[u8] = b"Mrun";
const META_GARBAGE: &[u8] = b"Mgarbage";
const META_COMPACTING: &[u8] = b"Mcompacting";

fn id_key(prefix: &[u8], id: u64) -> Vec<u8> {
    [prefix, &id.to_be_bytes()[..]].concat()
}

fn block_key(id: u64, n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(TAG_BLOCK);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// One stored value of a key from two sources: index entries without a value (bare) stay bare
/// (the reader fetches the RRset); otherwise counters are combined (first = min, last = max,
/// count = sum) and the rest, equal for equal keys, kept.
pub fn combine(key: &[u8], a: IVec, b: &[u8]) -> Result<IVec, StoreError> {
    let mut v = a.to_vec();
    combine_into(key, &mut v, b)?;
    Ok(v.into())
}

/// [`combine`] into `acc`.
pub fn combine_into(key: &[u8], acc: &mut Vec<u8>, b: &[u8]) -> Result<(), StoreError> {
    if acc.is_empty() || b.is_empty() {
        acc.clear();
        return Ok(());
    }
    let corrupt = || StoreError::Corrupt(key.to_vec());
    let (f1, l1, c1) = value_counters(acc).ok_or_else(corrupt)?;
    let (f2, l2, c2) = value_counters(b).ok_or_else(corrupt)?;
    set_counters(acc, f1.min(f2), l1.max(l2), c1.saturating_add(c2));
    Ok(())
}

/// A merge's run entries, keys and values in one buffer (no allocation per entry); several
/// entries may share one value (an RRset's index entries carry copies of its value). Kept
/// from merge to merge ([`Entries::clear`]): buffers of tens of MB allocated afresh for every
/// merge cost the store thread a page fault per 4 KiB touched (perf: most of its time in
/// the kernel; 63-70k page faults in a benchmark run against 47-49k once kept).
#[derive(Default)]
pub struct Entries {
    buf: Vec<u8>,
    spans: Vec<Span>,
    /// The sort's second array of spans.
    scratch: Vec<Span>,
}

/// Past this many bytes of buffers, [`Entries::clear`] gives them back: a merge much larger
/// than the sensor's (50,000 RRsets: buffers of about 30-50 MB) does not hold its memory for
/// good.
const KEEP_ENTRY_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, Default)]
struct Span {
    key: (usize, usize),
    value: (usize, usize),
    /// The key's first eight bytes, big-endian (zero-padded): most comparisons in a sort end
    /// there, without reading the keys.
    head: u64,
}

/// A value already in an [`Entries`] buffer.
#[derive(Clone, Copy)]
pub struct ValueRef(usize, usize);

impl Entries {
    /// Empties it for the next merge, keeping the buffers unless they are over
    /// [`KEEP_ENTRY_BYTES`].
    pub fn clear(&mut self) {
        let spans = (self.spans.capacity() + self.scratch.capacity()) * std::mem::size_of::<Span>();
        if self.buf.capacity() + spans > KEEP_ENTRY_BYTES {
            *self = Self::default();
        }
        self.buf.clear();
        self.spans.clear();
        self.scratch.clear();
    }

    /// Adds a value for [`Entries::push`].
    pub fn value(&mut self, v: &[u8]) -> ValueRef {
        self.buf.extend_from_slice(v);
        ValueRef(self.buf.len() - v.len(), v.len())
    }

    /// Adds an entry: a key (written by `key` into the buffer) and a value added before; its
    /// number, for [`Entries::key_at`] (until [`Entries::sort`]).
    pub fn push(&mut self, key: impl FnOnce(&mut Vec<u8>), value: ValueRef) -> usize {
        let start = self.buf.len();
        key(&mut self.buf);
        let mut head = [0u8; 8];
        let k = &self.buf[start..];
        head[..k.len().min(8)].copy_from_slice(&k[..k.len().min(8)]);
        let head = u64::from_be_bytes(head);
        self.spans.push(Span { key: (start, self.buf.len() - start), value: (value.0, value.1), head });
        self.spans.len() - 1
    }

    /// The key of entry `at`.
    pub fn key_at(&self, at: usize) -> &[u8] {
        self.key(&self.spans[at])
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    fn key(&self, s: &Span) -> &[u8] {
        &self.buf[s.key.0..s.key.0 + s.key.1]
    }

    fn val(&self, s: &Span) -> &[u8] {
        &self.buf[s.value.0..s.value.0 + s.value.1]
    }

    /// Refuses entries a run cannot hold (keys over [`MAX_KEY`], values over [`MAX_VALUE`]).
    pub fn check(&self) -> Result<(), StoreError> {
        match self.spans.iter().find(|s| s.key.1 > MAX_KEY || s.value.1 > MAX_VALUE) {
            Some(s) => Err(StoreError::Backend(format!(
                "an entry of {} bytes of key and {} of value is over the store's limits ({MAX_KEY}, {MAX_VALUE})",
                s.key.1, s.value.1
            ))),
            None => Ok(()),
        }
    }

    /// Sorts by key and combines the values of equal keys ([`combine`]).
    pub fn sort(&mut self) -> Result<(), StoreError> {
        // By tag (the first byte) first, keeping the order within each: a merge's RRsets
        // arrive sorted by owner, type and bailiwick (the sensor's windows, the outbox batches
        // made of them), so that tag's part is nearly sorted and sorts quickly; then each part.
        let mut counts = [0usize; 256];
        for s in &self.spans {
            counts[(s.head >> 56) as usize] += 1;
        }
        let mut starts = [0usize; 256];
        let mut at = 0;
        for (start, n) in starts.iter_mut().zip(counts) {
            *start = at;
            at += n;
        }
        self.scratch.clear();
        self.scratch.resize(self.spans.len(), Span::default());
        let mut next = starts;
        for s in &self.spans {
            let tag = (s.head >> 56) as usize;
            self.scratch[next[tag]] = *s;
            next[tag] += 1;
        }
        std::mem::swap(&mut self.spans, &mut self.scratch);
        let Entries { buf, spans, .. } = self;
        let key = |s: &Span| &buf[s.key.0..s.key.0 + s.key.1];
        for (start, n) in starts.into_iter().zip(counts).filter(|(_, n)| *n > 1) {
            spans[start..start + n].sort_unstable_by(|a, b| a.head.cmp(&b.head).then_with(|| key(a).cmp(key(b))));
        }
        // Equal keys combined in place: `kept` entries are kept at the front.
        let mut kept = 0usize;
        let mut acc = Vec::new();
        for i in 0..spans.len() {
            let s = spans[i];
            let last = kept.checked_sub(1).map(|l| spans[l]);
            match last {
                Some(last) if buf[last.key.0..last.key.0 + last.key.1] == buf[s.key.0..s.key.0 + s.key.1] => {
                    acc.clear();
                    acc.extend_from_slice(&buf[last.value.0..last.value.0 + last.value.1]);
                    combine_into(&buf[s.key.0..s.key.0 + s.key.1], &mut acc, &buf[s.value.0..s.value.0 + s.value.1])?;
                    spans[kept - 1].value = (buf.len(), acc.len());
                    buf.extend_from_slice(&acc);
                }
                _ => {
                    spans[kept] = s;
                    kept += 1;
                }
            }
        }
        spans.truncate(kept);
        Ok(())
    }
}

/// A block, as stored: `format(1) length(4)` and, compressed with zstd
/// ([`BLOCK_ZSTD_PREFIX`]) or LZ4 ([`BLOCK_LZ4_PREFIX`]), `count(4)` and the entries in key
/// order, each `shared(2) rest length(2) rest value length(4) value` where the key is the first
/// `shared` bytes of the key before it (0 for the first) and `rest`. Blocks of the first format
/// ([`BLOCK_ZSTD`]) hold `count(4)`, `count` offsets (4 each, from the end of the offsets) and
/// entries `key length(2) key value length(4) value`.
///
/// Read, it is decompressed and indexed at once: keys whole in `keys`, values in `data`.
#[derive(Default)]
struct Block {
    data: Vec<u8>,
    keys: Vec<u8>,
    /// Per entry: key start and length in `keys`, value start and length in `data`.
    index: Vec<[u32; 4]>,
}

thread_local! {
    /// zstd's contexts, made once per thread (making one costs as much as compressing a block),
    /// and the buffer blocks are compressed into.
    static ZSTD: std::cell::RefCell<(zstd::block::Compressor, zstd::block::Decompressor, Vec<u8>)> =
        std::cell::RefCell::new((zstd::block::Compressor::new(), zstd::block::Decompressor::new(), Vec::new()));
}

/// How a run's blocks are compressed. A merge's fresh run is compacted (rewritten) once
/// `fan_in` of its size exist, so it is written with LZ4, about twice zstd's speed at 2.1x
/// against 3.1x on these blocks; what compaction writes, which stays, with zstd. The extra
/// bytes are those of the fresh runs not yet compacted: up to `fan_in - 1` per size class,
/// more while compaction lags (docs/BENCHMARKS.md, twelfth session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Lz4,
}

fn pack(raw: &[u8], codec: Codec) -> Result<Vec<u8>, StoreError> {
    ZSTD.with_borrow_mut(|(c, _, scratch)| {
        // Into the thread's scratch, then copied out at its size: a block waits in memory
        // until its batch is written, and the bound is well above what a block takes.
        let (format, n) = match codec {
            Codec::Lz4 => {
                let bound = lz4_flex::block::get_maximum_output_size(raw.len());
                if scratch.len() < bound {
                    scratch.resize(bound, 0);
                }
                // Into a buffer of the bound's size this cannot fail.
                let n = lz4_flex::block::compress_into(raw, scratch)
                    .map_err(|e| StoreError::Backend(format!("lz4: {e}")))?;
                (BLOCK_LZ4_PREFIX, n)
            }
            Codec::Zstd => {
                scratch.clear();
                scratch.reserve(zstd::zstd_safe::compress_bound(raw.len()));
                // Into a buffer of the bound's size this fails only when zstd cannot allocate.
                let n = c
                    .compress_to_buffer(raw, scratch, BLOCK_LEVEL)
                    .map_err(|e| StoreError::Backend(format!("zstd: {e}")))?;
                (BLOCK_ZSTD_PREFIX, n)
            }
        };
        let mut out = Vec::with_capacity(5 + n);
        out.push(format);
        out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        out.extend_from_slice(&scratch[..n]);
        Ok(out)
    })
}

/// [`unpack_into`] new buffers.
#[cfg(test)]
fn unpack(stored: &[u8]) -> Option<Block> {
    let mut b = Block::default();
    unpack_into(stored, &mut b)?;
    Some(b)
}

/// Reads the block stored as `stored` into the buffers of `b`; `None` if it is corrupt: any
/// entry out of bounds, a shared prefix longer than the key before it, a key over
/// [`MAX_KEY`], keys not in increasing order, keys that rebuilt come to more than the block
/// may hold, bytes past the last entry (`b` then holds nothing usable).
///
/// The buffers go from block to block: a compaction reads thousands, and buffers of 16-80 KiB
/// allocated and freed for each kept glibc busy with its free lists (`malloc_consolidate`,
/// `unlink_chunk` and `cfree` were 11% of a collector's merge, these buffers part of it).
fn unpack_into(stored: &[u8], b: &mut Block) -> Option<()> {
    let Block { data, keys, index } = b;
    data.clear();
    keys.clear();
    index.clear();
    let (&format, rest) = stored.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if !matches!(format, BLOCK_ZSTD | BLOCK_ZSTD_PREFIX | BLOCK_LZ4_PREFIX) || len > MAX_BLOCK {
        return None;
    }
    if format == BLOCK_LZ4_PREFIX {
        data.resize(len, 0);
        if lz4_flex::block::decompress_into(&rest[4..], data).ok()? != len {
            return None;
        }
    } else {
        data.reserve(len);
        ZSTD.with_borrow_mut(|(_, d, _)| d.decompress_to_buffer(&rest[4..], data).ok())?;
        if data.len() != len {
            return None;
        }
    }
    let data = &*data;
    let count = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    keys.reserve(len / 2);
    index.reserve(count.min(len / 8));
    let u16_at = |at: usize| Some(u16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?) as usize);
    let u32_at = |at: usize| Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize);
    let mut at = 4;
    let mut last = (0usize, 0usize);
    // Whole keys of the first format are all in the block; rebuilt ones within the budget.
    let key_limit = if format == BLOCK_ZSTD { len } else { BLOCK_KEY_BYTES + MAX_KEY };
    for i in 0..count {
        let key_start = keys.len();
        if format == BLOCK_ZSTD {
            let entries = 4usize.checked_add(count.checked_mul(4)?)?;
            at = entries.checked_add(u32_at(4 + 4 * i)?)?;
            let n = u16_at(at)?;
            keys.extend_from_slice(data.get(at + 2..at + 2 + n)?);
            at += 2 + n;
        } else {
            let (shared, n) = (u16_at(at)?, u16_at(at + 2)?);
            if shared > last.1 || shared + n > MAX_KEY || key_start + shared + n > key_limit {
                return None;
            }
            keys.extend_from_within(last.0..last.0 + shared);
            keys.extend_from_slice(data.get(at + 4..at + 4 + n)?);
            at += 4 + n;
        }
        // Keys in increasing order, as a block's binary search needs.
        if keys.len() > key_limit || (i > 0 && keys[last.0..key_start] >= keys[key_start..]) {
            return None;
        }
        let v = u32_at(at)?;
        data.get(at + 4..(at + 4).checked_add(v)?)?;
        last = (key_start, keys.len() - key_start);
        index.push([key_start as u32, last.1 as u32, (at + 4) as u32, v as u32]);
        at += 4 + v;
    }
    (format == BLOCK_ZSTD || at == data.len()).then_some(())
}

impl Block {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn entry(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let [k, kn, v, vn] = self.index.get(i)?.map(|x| x as usize);
        Some((&self.keys[k..k + kn], &self.data[v..v + vn]))
    }

    /// The first entry at or past `key` (strictly past it if not `inclusive`).
    fn seek(&self, key: &[u8], inclusive: bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let [k, kn, _, _] = self.index[mid].map(|x| x as usize);
            let k = &self.keys[k..k + kn];
            if k < key || (!inclusive && k == key) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// One immutable run.
pub struct Run {
    id: u64,
    entries: u64,
    bytes: u64,
    /// The first key of each block.
    firsts: Vec<Vec<u8>>,
    last: Vec<u8>,
}

impl Run {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.firsts.iter().map(|f| f.len() + 2).sum::<usize>());
        v.extend_from_slice(&self.entries.to_be_bytes());
        v.extend_from_slice(&self.bytes.to_be_bytes());
        for k in std::iter::once(&self.last).chain(&self.firsts) {
            v.extend_from_slice(&(k.len() as u16).to_be_bytes());
            v.extend_from_slice(k);
        }
        v
    }

    fn decode(id: u64, v: &[u8]) -> Option<Run> {
        let entries = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
        let bytes = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
        let mut at = 16;
        let mut keys = Vec::new();
        while at < v.len() {
            let n = u16::from_be_bytes(v.get(at..at + 2)?.try_into().ok()?) as usize;
            keys.push(v.get(at + 2..at + 2 + n)?.to_vec());
            at += 2 + n;
        }
        if keys.len() < 2 {
            return None;
        }
        let last = keys.remove(0);
        Some(Run { id, entries, bytes, firsts: keys, last })
    }

    /// The entry count's logarithm to the base `fan_in` (a power of two): runs of one class
    /// are merged together.
    fn class(&self, fan_in: usize) -> u32 {
        self.entries.max(1).ilog2() / fan_in.trailing_zeros().max(1)
    }

    /// Whether any key in `[start, end)` can be in this run.
    fn overlaps(&self, start: &Bound<Vec<u8>>, end: Option<&[u8]>) -> bool {
        let after_start = match start {
            Bound::Included(s) => self.last >= *s,
            Bound::Excluded(s) => self.last > *s,
            Bound::Unbounded => true,
        };
        after_start && end.is_none_or(|e| self.firsts[0].as_slice() < e)
    }

    /// The block that holds `key` if any does.
    fn block_of(&self, key: &[u8]) -> usize {
        self.firsts.partition_point(|f| f.as_slice() <= key).saturating_sub(1)
    }

    /// Reads block `n` into `b` (its buffers reused).
    fn block_into(&self, t: &sled::Tree, n: usize, b: &mut Block) -> Result<(), StoreError> {
        let k = block_key(self.id, n as u32);
        t.get(&k)?.and_then(|v| unpack_into(&v, b)).ok_or(StoreError::Corrupt(k))
    }

    /// The value of `key` in this run; `cache` keeps the last block read, for sorted lookups.
    fn get(&self, t: &sled::Tree, key: &[u8], cache: &mut Option<(usize, Block)>) -> Result<Option<IVec>, StoreError> {
        if key > self.last.as_slice() || key < self.firsts[0].as_slice() {
            return Ok(None);
        }
        let n = self.block_of(key);
        if cache.as_ref().is_none_or(|(at, _)| *at != n) {
            let (_, mut b) = cache.take().unwrap_or_default();
            self.block_into(t, n, &mut b)?;
            *cache = Some((n, b));
        }
        let Some((_, b)) = cache.as_ref() else { return Ok(None) };
        match b.entry(b.seek(key, true)) {
            Some((k, v)) if k == key => Ok(Some(v.into())),
            _ => Ok(None),
        }
    }
}

/// The length of the prefix `a` and `b` share, eight bytes at a time.
fn prefix_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default())
            ^ u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        if x != 0 {
            return i + (x.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..n].iter().zip(&b[i..n]).take_while(|(x, y)| x == y).count()
}

/// Blocks to write: (key, block).
type Blocks = Vec<(Vec<u8>, Vec<u8>)>;

/// Builds a run's blocks from entries pushed in key order.
pub struct RunWriter {
    id: u64,
    codec: Codec,
    data: Vec<u8>,
    /// Entries in the open block, and the bytes of their keys whole.
    count: u32,
    key_bytes: usize,
    firsts: Vec<Vec<u8>>,
    last: Vec<u8>,
    sealed: Blocks,
    sealed_bytes: usize,
    entries: u64,
    bytes: u64,
}

impl RunWriter {
    fn new(id: u64, codec: Codec) -> Self {
        Self {
            id,
            codec,
            data: Vec::with_capacity(BLOCK_BYTES + 1024),
            count: 0,
            key_bytes: 0,
            firsts: Vec::new(),
            last: Vec::new(),
            sealed: Vec::new(),
            sealed_bytes: 0,
            entries: 0,
            bytes: 0,
        }
    }

    /// Adds one entry; keys must come in increasing order, within [`MAX_KEY`] and
    /// [`MAX_VALUE`] (a run that breaks either is refused as corrupt).
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        // Past the prefix it shares with the key before, a key in increasing order has a
        // greater byte, or the key before ends there.
        let common = if self.entries > 0 { prefix_len(&self.last, key) } else { 0 };
        let increasing =
            self.entries == 0 || (common < key.len() && (common == self.last.len() || key[common] > self.last[common]));
        if !increasing || key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(StoreError::Corrupt(key.to_vec()));
        }
        let shared = if self.count == 0 {
            self.firsts.push(key.to_vec());
            self.data.extend_from_slice(&[0; 4]);
            0
        } else {
            common
        };
        self.count += 1;
        self.key_bytes += key.len();
        self.data.extend_from_slice(&(shared as u16).to_be_bytes());
        self.data.extend_from_slice(&((key.len() - shared) as u16).to_be_bytes());
        self.data.extend_from_slice(&key[shared..]);
        self.data.extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.data.extend_from_slice(value);
        self.last.clear();
        self.last.extend_from_slice(key);
        self.entries += 1;
        if self.data.len() >= BLOCK_BYTES || self.key_bytes >= BLOCK_KEY_BYTES {
            self.seal()?;
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<(), StoreError> {
        if self.count == 0 {
            return Ok(());
        }
        self.data[..4].copy_from_slice(&self.count.to_be_bytes());
        let b = pack(&self.data, self.codec)?;
        self.bytes += b.len() as u64;
        self.sealed_bytes += b.len();
        self.sealed.push((block_key(self.id, self.firsts.len() as u32 - 1), b));
        self.count = 0;
        self.key_bytes = 0;
        self.data.clear();
        Ok(())
    }

    /// The blocks sealed since the last call, to be written.
    fn take_sealed(&mut self) -> Blocks {
        self.sealed_bytes = 0;
        std::mem::take(&mut self.sealed)
    }

    /// Seals the last block: the run (`None` if it is empty) and its unwritten blocks.
    fn finish(mut self) -> Result<(Option<Run>, Blocks), StoreError> {
        self.seal()?;
        let run = (self.entries > 0).then(|| Run {
            id: self.id,
            entries: self.entries,
            bytes: self.bytes,
            firsts: std::mem::take(&mut self.firsts),
            last: std::mem::take(&mut self.last),
        });
        Ok((run, self.sealed))
    }
}

/// The runs of a store.
pub struct Runs {
    live: RwLock<Arc<Vec<Arc<Run>>>>,
    /// Runs compacted away whose blocks may still be read.
    graveyard: Mutex<Vec<Arc<Run>>>,
    /// The compaction under way, if any.
    compaction: Mutex<Option<Compaction>>,
    /// No compaction before this (one failed).
    paused_until: Mutex<Option<std::time::Instant>>,
    /// Compactions finished, and failed (for metrics).
    pub compactions: AtomicU64,
    pub compaction_errors: AtomicU64,
    next_id: AtomicU64,
    fan_in: AtomicUsize,
}

impl Runs {
    /// Loads the directory; finishes what a crash interrupted (blocks of an unfinished
    /// compaction, blocks of runs compacted away).
    pub fn open(t: &sled::Tree) -> Result<Self, StoreError> {
        let mut live = Vec::new();
        let mut max_id = 0;
        for item in t.scan_prefix(META_RUN) {
            let (k, v) = item?;
            let id = id_of(&k).ok_or_else(|| StoreError::Corrupt(k.to_vec()))?;
            live.push(Arc::new(Run::decode(id, &v).ok_or_else(|| StoreError::Corrupt(k.to_vec()))?));
            max_id = max_id.max(id);
        }
        for prefix in [META_GARBAGE, META_COMPACTING] {
            for item in t.scan_prefix(prefix) {
                let (k, _) = item?;
                let id = id_of(&k).ok_or_else(|| StoreError::Corrupt(k.to_vec()))?;
                max_id = max_id.max(id);
                discard(t, id)?;
            }
        }
        Ok(Self {
            live: RwLock::new(Arc::new(live)),
            graveyard: Mutex::default(),
            compaction: Mutex::default(),
            paused_until: Mutex::default(),
            compactions: AtomicU64::new(0),
            compaction_errors: AtomicU64::new(0),
            next_id: AtomicU64::new(max_id + 1),
            fan_in: AtomicUsize::new(FAN_IN),
        })
    }

    /// Merges runs `n` at a time from now on ([`valid_fan_in`]; others are ignored). Not
    /// recorded in the store: the size classes are worked out again at each compaction.
    pub fn set_fan_in(&self, n: usize) {
        if valid_fan_in(n) {
            self.fan_in.store(n, Ordering::Relaxed);
        }
    }

    /// The runs now, oldest first.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Run>>> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds a run of `entries` (sorted: [`Entries::sort`]) to `batch`; [`Runs::publish`] it
    /// once the batch is applied.
    pub fn stage(&self, entries: &Entries, batch: &mut sled::Batch) -> Result<Option<Arc<Run>>, StoreError> {
        let mut w = RunWriter::new(self.next_id.fetch_add(1, Ordering::Relaxed), Codec::Lz4);
        for s in &entries.spans {
            w.push(entries.key(s), entries.val(s))?;
        }
        let (run, blocks) = w.finish()?;
        let Some(run) = run else { return Ok(None) };
        for (k, v) in blocks {
            batch.insert(k, v);
        }
        batch.insert(id_key(META_RUN, run.id), run.encode());
        Ok(Some(Arc::new(run)))
    }

    pub fn publish(&self, run: Arc<Run>) {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let mut runs = live.as_ref().clone();
        runs.push(run);
        *live = Arc::new(runs);
    }

    /// Whether a merge under load may leave compaction for later: fewer than
    /// [`DEFER_RUNS_PER_FAN_IN`] times the fan-in runs.
    pub fn may_defer(&self) -> bool {
        self.snapshot().len() < DEFER_RUNS_PER_FAN_IN * self.fan_in.load(Ordering::Relaxed)
    }

    /// Whether [`Runs::compact`] has work: a compaction under way or a full size class (and
    /// none paused after a failure).
    pub fn compaction_due(&self) -> bool {
        if self.paused_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| std::time::Instant::now() < t) {
            return false;
        }
        self.compaction.lock().unwrap_or_else(|e| e.into_inner()).is_some()
            || full_class(&self.snapshot(), self.fan_in.load(Ordering::Relaxed)).is_some()
    }

    /// Merges runs while some size class has the fan-in's worth of them, reading at most `budget`
    /// entries of them (`None`: until no class is full) so that the merge that calls it stays
    /// quick; a compaction left unfinished goes on at the next call (its inputs stay readable
    /// until it is done). Then deletes the blocks of runs no reader holds any more. One caller
    /// at a time (the store's merge lock).
    pub fn compact(&self, t: &sled::Tree, budget: Option<u64>) -> Result<(), StoreError> {
        let mut state = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
        if self.paused_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| std::time::Instant::now() < t) {
            return Ok(());
        }
        let mut budget = budget.unwrap_or(u64::MAX);
        let fan_in = self.fan_in.load(Ordering::Relaxed);
        // Far behind (runs written faster than the budgets merge them): catch up now.
        if self.snapshot().len() > MAX_RUNS_PER_FAN_IN * fan_in {
            budget = u64::MAX;
        }
        loop {
            if state.is_none() {
                let runs = self.snapshot();
                let Some(class) = full_class(&runs, fan_in) else { break };
                let inputs: Vec<Arc<Run>> = runs.iter().filter(|r| r.class(fan_in) == class).cloned().collect();
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                match Compaction::start(t, id, inputs) {
                    Ok(c) => *state = Some(c),
                    Err(e) => {
                        *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(std::time::Instant::now() + COMPACT_PAUSE);
                        let _ = discard(t, id);
                        return Err(e);
                    }
                }
            }
            let Some(c) = state.as_mut() else { break };
            match c.step(t, &mut budget) {
                Err(e) => {
                    // Its output is deleted now (or at the next open: `Mcompacting`), and no
                    // compaction is tried for a while: a run that cannot be read would fail
                    // the same way at every merge.
                    let id = c.id;
                    *state = None;
                    *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(std::time::Instant::now() + COMPACT_PAUSE);
                    let _ = discard(t, id);
                    return Err(e);
                }
                Ok(false) => break,
                Ok(true) => {
                    if let Some(c) = state.take() {
                        self.finish(t, c)?;
                    }
                }
            }
        }
        drop(state);
        self.reap(t)
    }

    /// Swaps a finished compaction's output in for its inputs (one atomic batch).
    fn finish(&self, t: &sled::Tree, c: Compaction) -> Result<(), StoreError> {
        let Compaction { id, inputs, writer, started, .. } = c;
        let (run, blocks) = writer.finish()?;
        let run = run.map(Arc::new);
        let mut batch = sled::Batch::default();
        for (k, v) in blocks {
            batch.insert(k, v);
        }
        if let Some(run) = &run {
            batch.insert(id_key(META_RUN, id), run.encode());
        }
        for r in &inputs {
            batch.remove(id_key(META_RUN, r.id));
            batch.insert(id_key(META_GARBAGE, r.id), &[]);
        }
        batch.remove(id_key(META_COMPACTING, id));
        t.apply_batch(batch)?;
        // Durable before any input block is deleted (`reap`), whatever sled replays after a
        // crash.
        t.flush()?;
        let entries_in: u64 = inputs.iter().map(|r| r.entries).sum();
        {
            let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
            let mut runs: Vec<Arc<Run>> =
                live.iter().filter(|r| !inputs.iter().any(|i| i.id == r.id)).cloned().collect();
            if let Some(run) = &run {
                tracing::debug!(
                    runs = inputs.len(),
                    entries_in,
                    entries_out = run.entries,
                    bytes = run.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "store: runs merged"
                );
                runs.push(run.clone());
            }
            *live = Arc::new(runs);
        }
        self.graveyard.lock().unwrap_or_else(|e| e.into_inner()).extend(inputs);
        self.compactions.fetch_add(1, Ordering::Relaxed);
        if entries_in > 1_000_000 {
            tracing::info!(entries_in, ms = started.elapsed().as_millis() as u64, "store: large runs merged");
        }
        Ok(())
    }

    /// Deletes the blocks of compacted-away runs that no reader holds; a run whose deletion
    /// fails stays in the graveyard (and its `Mgarbage` mark for the next open).
    fn reap(&self, t: &sled::Tree) -> Result<(), StoreError> {
        let mut graveyard = self.graveyard.lock().unwrap_or_else(|e| e.into_inner());
        let mut result = Ok(());
        let mut kept = Vec::new();
        for run in graveyard.drain(..) {
            if Arc::strong_count(&run) > 1 || result.is_err() {
                kept.push(run);
                continue;
            }
            let mut batch = sled::Batch::default();
            for n in 0..run.firsts.len() {
                batch.remove(block_key(run.id, n as u32));
            }
            batch.remove(id_key(META_GARBAGE, run.id));
            if let Err(e) = t.apply_batch(batch) {
                result = Err(e.into());
                kept.push(run);
            }
        }
        *graveyard = kept;
        result
    }

    /// Keys in `[start, end)` of the tree itself and of every run, merged in key order.
    pub fn scan<'a>(&self, t: &'a sled::Tree, start: Bound<Vec<u8>>, end: Option<Vec<u8>>) -> Merged<'a> {
        let end_bound = end.clone().map_or(Bound::Unbounded, Bound::Excluded);
        let mut sources: Vec<Box<dyn Iterator<Item = Scanned> + 'a>> =
            vec![Box::new(t.range::<Vec<u8>, _>((start.clone(), end_bound)).map(|r| r.map_err(StoreError::from)))];
        for run in self.snapshot().iter().filter(|r| r.overlaps(&start, end.as_deref())) {
            sources.push(Box::new(RunIter::new(t, run.clone(), start.clone(), end.clone())));
        }
        Merged::new(sources)
    }

    /// The values of `keys` (sorted) combined over the tree and every run.
    pub fn get_sorted(&self, t: &sled::Tree, keys: &[Vec<u8>]) -> Result<Vec<Option<IVec>>, StoreError> {
        let runs = self.snapshot();
        let mut caches: Vec<Option<(usize, Block)>> = runs.iter().map(|_| None).collect();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut got = t.get(key)?;
            for (run, cache) in runs.iter().zip(&mut caches) {
                if let Some(v) = run.get(t, key, cache)? {
                    got = Some(match got {
                        Some(a) => combine(key, a, &v)?,
                        None => v,
                    });
                }
            }
            out.push(got);
        }
        Ok(out)
    }

    /// Drops every run and its blocks (tests: [`super::Store::move_runs_to_tree`]).
    #[cfg(test)]
    pub fn clear(&self, t: &sled::Tree) {
        for k in t.scan_prefix([TAG_BLOCK]).keys().chain(t.scan_prefix(META_RUN).keys()) {
            t.remove(k.unwrap()).unwrap();
        }
        *self.live.write().unwrap() = Arc::default();
    }

    /// Every entry of every run, key and value, one after the other: what the blocks hold,
    /// with the keys whole.
    pub fn unpacked(&self, t: &sled::Tree) -> Result<Vec<u8>, StoreError> {
        let (mut out, mut b) = (Vec::new(), Block::default());
        for run in self.snapshot().iter() {
            for n in 0..run.firsts.len() {
                run.block_into(t, n, &mut b)?;
                for (k, v) in (0..b.len()).filter_map(|i| b.entry(i)) {
                    out.extend_from_slice(k);
                    out.extend_from_slice(v);
                }
            }
        }
        Ok(out)
    }

    /// Runs now and the bytes of their blocks.
    pub fn stats(&self) -> (usize, u64) {
        let runs = self.snapshot();
        (runs.len(), runs.iter().map(|r| r.bytes).sum())
    }
}

/// The smallest size class with at least `fan_in` runs. A compaction takes all the runs of
/// its class: more than `fan_in` after merges under load left it for later.
fn full_class(runs: &[Arc<Run>], fan_in: usize) -> Option<u32> {
    let mut classes: Vec<u32> = runs.iter().map(|r| r.class(fan_in)).collect();
    classes.sort_unstable();
    classes.windows(fan_in).find(|w| w[0] == w[fan_in - 1]).map(|w| w[0])
}

/// Deletes the blocks of run `id` and its `Mcompacting` / `Mgarbage` marks.
fn discard(t: &sled::Tree, id: u64) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for block in t.scan_prefix(id_key(&[TAG_BLOCK], id)).keys() {
        batch.remove(block?);
    }
    batch.remove(id_key(META_COMPACTING, id));
    batch.remove(id_key(META_GARBAGE, id));
    t.apply_batch(batch)?;
    Ok(())
}

fn id_of(k: &[u8]) -> Option<u64> {
    k.len().checked_sub(8).and_then(|at| k[at..].try_into().ok()).map(u64::from_be_bytes)
}

/// Runs being merged into one, a step at a time.
struct Compaction {
    id: u64,
    inputs: Vec<Arc<Run>>,
    cursors: Vec<Cursor>,
    writer: RunWriter,
    key: Vec<u8>,
    value: Vec<u8>,
    started: std::time::Instant,
    /// Output bytes flushed so far.
    flushed: u64,
}

impl Compaction {
    fn start(t: &sled::Tree, id: u64, inputs: Vec<Arc<Run>>) -> Result<Self, StoreError> {
        t.insert(id_key(META_COMPACTING, id), &[])?;
        let cursors = inputs.iter().map(|r| Cursor::new(t, r.clone())).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id,
            inputs,
            cursors,
            writer: RunWriter::new(id, Codec::Zstd),
            key: Vec::new(),
            value: Vec::new(),
            started: std::time::Instant::now(),
            flushed: 0,
        })
    }

    /// Merges entries until the inputs end (true) or `budget` entries were read (false).
    fn step(&mut self, t: &sled::Tree, budget: &mut u64) -> Result<bool, StoreError> {
        let cursors = &mut self.cursors;
        let (k, v) = (&mut self.key, &mut self.value);
        loop {
            if *budget == 0 {
                return Ok(false);
            }
            // The smallest key among the inputs, and its value combined over all of them.
            let mut first: Option<usize> = None;
            for (i, c) in cursors.iter().enumerate() {
                if let Some(ck) = c.key()
                    && first.is_none_or(|f| ck < cursors[f].key().unwrap_or_default())
                {
                    first = Some(i);
                }
            }
            let Some(first) = first else { return Ok(true) };
            k.clear();
            k.extend_from_slice(cursors[first].key().unwrap_or_default());
            v.clear();
            v.extend_from_slice(cursors[first].value());
            cursors[first].advance(t)?;
            *budget = budget.saturating_sub(1);
            for c in cursors.iter_mut() {
                if c.key() == Some(&k[..]) {
                    combine_into(k, v, c.value())?;
                    c.advance(t)?;
                    *budget = budget.saturating_sub(1);
                }
            }
            self.writer.push(k, v)?;
            if self.writer.sealed_bytes >= COMPACT_BATCH_BYTES {
                let mut batch = sled::Batch::default();
                for (k, v) in self.writer.take_sealed() {
                    batch.insert(k, v);
                }
                t.apply_batch(batch)?;
                if self.writer.bytes - self.flushed >= COMPACT_FLUSH_BYTES {
                    t.flush()?;
                    self.flushed = self.writer.bytes;
                }
            }
        }
    }
}

/// A run read from its start, one entry at a time, borrowing from the block it is in.
struct Cursor {
    run: Arc<Run>,
    block: usize,
    cur: Option<Block>,
    pos: usize,
}

impl Cursor {
    fn new(t: &sled::Tree, run: Arc<Run>) -> Result<Self, StoreError> {
        let mut c = Self { run, block: 0, cur: None, pos: 0 };
        c.load(t)?;
        Ok(c)
    }

    /// Reads the block at `self.block` (if any), skipping empty ones; a block whose last
    /// entry does not decode is corrupt (and so would be any before it).
    fn load(&mut self, t: &sled::Tree) -> Result<(), StoreError> {
        let mut b = self.cur.take().unwrap_or_default();
        self.pos = 0;
        while self.block < self.run.firsts.len() {
            self.run.block_into(t, self.block, &mut b)?;
            if b.len() > 0 {
                self.cur = Some(b);
                return Ok(());
            }
            self.block += 1;
        }
        Ok(())
    }

    fn key(&self) -> Option<&[u8]> {
        self.cur.as_ref().and_then(|b| b.entry(self.pos)).map(|(k, _)| k)
    }

    fn value(&self) -> &[u8] {
        self.cur.as_ref().and_then(|b| b.entry(self.pos)).map_or(&[][..], |(_, v)| v)
    }

    fn advance(&mut self, t: &sled::Tree) -> Result<(), StoreError> {
        self.pos += 1;
        if self.cur.as_ref().is_some_and(|b| self.pos >= b.len()) {
            self.block += 1;
            self.load(t)?;
        }
        Ok(())
    }
}

/// The entries of one run in `[start, end)`, read a block at a time.
struct RunIter<'a> {
    t: &'a sled::Tree,
    run: Arc<Run>,
    start: Option<Bound<Vec<u8>>>,
    end: Option<Vec<u8>>,
    block: usize,
    cur: Option<Block>,
    /// The buffers of the block read before, for the next.
    spare: Block,
    pos: usize,
    done: bool,
}

impl<'a> RunIter<'a> {
    fn new(t: &'a sled::Tree, run: Arc<Run>, start: Bound<Vec<u8>>, end: Option<Vec<u8>>) -> Self {
        let block = match &start {
            Bound::Included(k) | Bound::Excluded(k) => run.block_of(k),
            Bound::Unbounded => 0,
        };
        Self { t, run, start: Some(start), end, block, cur: None, spare: Block::default(), pos: 0, done: false }
    }

    fn step(&mut self) -> Result<Option<(IVec, IVec)>, StoreError> {
        loop {
            if self.cur.is_none() {
                if self.block >= self.run.firsts.len() {
                    return Ok(None);
                }
                let mut b = std::mem::take(&mut self.spare);
                self.run.block_into(self.t, self.block, &mut b)?;
                self.pos = match self.start.take() {
                    Some(Bound::Included(k)) => b.seek(&k, true),
                    Some(Bound::Excluded(k)) => b.seek(&k, false),
                    _ => 0,
                };
                self.cur = Some(b);
            }
            let Some(b) = &self.cur else { continue };
            if self.pos < b.len() {
                let (k, v) =
                    b.entry(self.pos).ok_or_else(|| StoreError::Corrupt(block_key(self.run.id, self.block as u32)))?;
                if self.end.as_deref().is_some_and(|e| k >= e) {
                    return Ok(None);
                }
                self.pos += 1;
                return Ok(Some((k.into(), v.into())));
            }
            if let Some(b) = self.cur.take() {
                self.spare = b;
            }
            self.block += 1;
        }
    }
}

impl Iterator for RunIter<'_> {
    type Item = Scanned;

    fn next(&mut self) -> Option<Scanned> {
        if self.done {
            return None;
        }
        let r = self.step().transpose();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

/// Several key-ordered sources as one, equal keys combined ([`combine`]).
pub struct Merged<'a> {
    sources: Vec<Box<dyn Iterator<Item = Scanned> + 'a>>,
    heads: Vec<Option<(IVec, IVec)>>,
    started: bool,
    failed: bool,
}

impl<'a> Merged<'a> {
    fn new(sources: Vec<Box<dyn Iterator<Item = Scanned> + 'a>>) -> Self {
        Self { heads: Vec::with_capacity(sources.len()), sources, started: false, failed: false }
    }

    fn step(&mut self) -> Result<Option<(IVec, IVec)>, StoreError> {
        if !self.started {
            self.started = true;
            for s in &mut self.sources {
                self.heads.push(s.next().transpose()?);
            }
        }
        let Some(first) =
            (0..self.heads.len()).filter(|&i| self.heads[i].is_some()).min_by(|&a, &b| self.key(a).cmp(self.key(b)))
        else {
            return Ok(None);
        };
        let (k, mut v) = self.heads[first].take().unwrap_or_default();
        self.heads[first] = self.sources[first].next().transpose()?;
        for i in 0..self.heads.len() {
            if self.heads[i].as_ref().is_some_and(|(hk, _)| *hk == k) {
                let (_, hv) = self.heads[i].take().unwrap_or_default();
                v = combine(&k, v, &hv)?;
                self.heads[i] = self.sources[i].next().transpose()?;
            }
        }
        Ok(Some((k, v)))
    }

    fn key(&self, i: usize) -> &[u8] {
        self.heads[i].as_ref().map_or(&[][..], |(k, _)| &k[..])
    }
}

impl Iterator for Merged<'_> {
    type Item = Scanned;

    fn next(&mut self) -> Option<Scanned> {
        if self.failed {
            return None;
        }
        let r = self.step().transpose();
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(first: u64, last: u64, count: u64) -> Vec<u8> {
        let r = crate::sensor::Rrset {
            rrname: "a.".into(),
            rrtype: 1,
            bailiwick: ".".into(),
            rdata: vec!["10.0.0.1".into()],
        };
        super::super::keys::encode_value(first, last, count, &r)
    }

    fn counters(v: &[u8]) -> (u64, u64, u64) {
        value_counters(v).unwrap()
    }

    /// Every entry of the blocks, in order.
    fn read_all(blocks: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for stored in blocks {
            let b = unpack(stored).expect("a block that reads");
            for i in 0..b.len() {
                let (k, v) = b.entry(i).unwrap();
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        out
    }

    #[test]
    fn the_writer_takes_keys_in_increasing_order_only() {
        // Keys of lengths around the 8-byte steps of `prefix_len`, bytes on both sides of
        // 0x80 (compared unsigned), keys that are prefixes of others.
        let alphabet = [0x00u8, 0x01, 0x7f, 0x80, 0xff];
        let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
        for len in [1usize, 7, 8, 9, 16, 17] {
            for (i, &x) in alphabet.iter().enumerate() {
                let mut k = vec![b'k'; len];
                k[len - 1] = x;
                keys.push(k.clone());
                k[len / 2] = alphabet[(i + 2) % alphabet.len()];
                keys.push(k);
            }
        }
        for a in &keys {
            for b in &keys {
                let naive = a.iter().zip(b).take_while(|(x, y)| x == y).count();
                assert_eq!(prefix_len(a, b), naive, "{a:?} {b:?}");
                let mut w = RunWriter::new(1, Codec::Zstd);
                w.push(a, b"").unwrap();
                assert_eq!(w.push(b, b"").is_ok(), b > a, "{a:?} then {b:?}");
            }
        }
    }

    #[test]
    fn blocks_of_every_format_read_as_written_and_broken_ones_are_refused() {
        // Keys sharing prefixes of every length (none, part, all but the last byte, a key
        // that is the prefix of the next), empty values, across several blocks.
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for i in 0..3_000u32 {
            let k = format!("Rcom.example.{}.{}", i / 7, "x".repeat((i % 5) as usize)).into_bytes();
            let v = if i % 3 == 0 { Vec::new() } else { vec![i as u8; (i % 200) as usize] };
            entries.push((k, v));
        }
        entries.sort();
        entries.dedup_by(|a, b| a.0 == b.0);
        for (codec, format) in [(Codec::Zstd, BLOCK_ZSTD_PREFIX), (Codec::Lz4, BLOCK_LZ4_PREFIX)] {
            let mut w = RunWriter::new(1, codec);
            for (k, v) in &entries {
                w.push(k, v).unwrap();
            }
            let (run, blocks) = w.finish().unwrap();
            let blocks: Vec<Vec<u8>> = blocks.into_iter().map(|(_, b)| b).collect();
            assert!(blocks.len() > 3 && blocks.iter().all(|b| b[0] == format), "{codec:?}");
            assert_eq!(run.unwrap().entries as usize, entries.len());
            assert_eq!(read_all(&blocks), entries, "{codec:?}");
            // A block cut short is refused; one with any byte changed (a disk's corruption)
            // is refused or read, never a panic (the decoders check every bound).
            for b in &blocks {
                assert!(unpack(&b[..b.len() - 1]).is_none(), "{codec:?}: a block cut short");
            }
            for at in 0..blocks[0].len() {
                let mut bad = blocks[0].clone();
                bad[at] ^= 0x5a;
                let _ = unpack(&bad);
            }
        }

        // The first format, as stores written before the prefixes hold it: the same entries.
        let v1: Vec<Vec<u8>> = entries
            .chunks(100)
            .map(|chunk| {
                let mut raw = (chunk.len() as u32).to_be_bytes().to_vec();
                let mut body = Vec::new();
                for (k, v) in chunk {
                    raw.extend_from_slice(&(body.len() as u32).to_be_bytes());
                    body.extend_from_slice(&(k.len() as u16).to_be_bytes());
                    body.extend_from_slice(k);
                    body.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    body.extend_from_slice(v);
                }
                raw.extend_from_slice(&body);
                let mut b = pack(&raw, Codec::Zstd).unwrap();
                b[0] = BLOCK_ZSTD;
                b
            })
            .collect();
        assert_eq!(read_all(&v1), entries);

        // Raw blocks of the prefix format, broken one way each.
        let entry = |shared: u16, rest: &[u8], v: &[u8]| {
            let mut e = shared.to_be_bytes().to_vec();
            e.extend_from_slice(&(rest.len() as u16).to_be_bytes());
            e.extend_from_slice(rest);
            e.extend_from_slice(&(v.len() as u32).to_be_bytes());
            e.extend_from_slice(v);
            e
        };
        for codec in [Codec::Zstd, Codec::Lz4] {
            let block =
                |n: u32, parts: &[Vec<u8>]| pack(&[n.to_be_bytes().to_vec(), parts.concat()].concat(), codec).unwrap();
            let good_raw = [2u32.to_be_bytes().to_vec(), entry(0, b"abc", b"1"), entry(2, b"d", b"22")].concat();
            let good = pack(&good_raw, codec).unwrap();
            assert_eq!(read_all(&[good]), [(b"abc".to_vec(), b"1".to_vec()), (b"abd".to_vec(), b"22".to_vec())]);
            for (why, b) in [
                ("shares more than the key before has", block(2, &[entry(0, b"abc", b"1"), entry(4, b"d", b"")])),
                ("the first entry shares a prefix", block(1, &[entry(1, b"abc", b"1")])),
                ("more entries counted than held", block(3, &[entry(0, b"abc", b"1"), entry(2, b"d", b"")])),
                ("bytes past the last entry", block(1, &[entry(0, b"abc", b"1"), vec![0]])),
                ("a value past the end", block(1, &[entry(0, b"abc", b"1")[..9].to_vec()])),
                ("keys out of order", block(2, &[entry(0, b"abd", b""), entry(2, b"c", b"")])),
                ("the same key twice", block(2, &[entry(0, b"abc", b""), entry(3, b"", b"")])),
                ("a key over the limit", block(1, &[entry(0, &vec![b'a'; MAX_KEY + 1], b"")])),
                (
                    // Each entry is 4 bytes but rebuilds a 16 KiB key: more than a block may hold.
                    "keys over the block's budget",
                    block(
                        40,
                        &std::iter::once(entry(0, &vec![b'a'; MAX_KEY - 1], b""))
                            .chain((1..40).map(|i| entry((MAX_KEY - 2) as u16, &[b'b' + i as u8], b"")))
                            .collect::<Vec<_>>(),
                    ),
                ),
            ] {
                assert!(unpack(&b).is_none(), "{codec:?}: {why}");
            }
            let mut unknown = block(1, &[entry(0, b"abc", b"1")]);
            unknown[0] = 4;
            assert!(unpack(&unknown).is_none(), "{codec:?}: an unknown format");
            // A length field that is not the block's: one more or less, or over the most a
            // block may hold.
            let raw = good_raw.len() as u32;
            for len in [raw - 1, raw + 1, MAX_BLOCK as u32 + 1] {
                let mut lying = pack(&good_raw, codec).unwrap();
                lying[1..5].copy_from_slice(&len.to_be_bytes());
                assert!(unpack(&lying).is_none(), "{codec:?}: length {len} for {raw} bytes");
            }
        }
        // Long keys that share most of their bytes: the writer seals a block once its keys,
        // whole, pass the budget, and every block reads back.
        let long: Vec<(Vec<u8>, Vec<u8>)> =
            (0..100u32).map(|i| ([vec![b'k'; 10_000], i.to_be_bytes().to_vec()].concat(), vec![1])).collect();
        let mut w = RunWriter::new(2, Codec::Lz4);
        for (k, v) in &long {
            w.push(k, v).unwrap();
        }
        let (_, blocks) = w.finish().unwrap();
        let blocks: Vec<Vec<u8>> = blocks.into_iter().map(|(_, b)| b).collect();
        assert!(blocks.len() >= 100 * 10_000 / BLOCK_KEY_BYTES, "{} blocks", blocks.len());
        assert_eq!(read_all(&blocks), long);
    }

    #[test]
    fn runs_and_the_tree_read_as_one_sorted_key_space_and_compaction_keeps_it() {
        // The same 24 runs: a larger fan-in leaves more of them (up to 7 a size class, not 3).
        let left = [FAN_IN, 8].map(key_space_and_compaction);
        assert!(left[1] > left[0], "runs left: {left:?} for fan-ins 4 and 8");
    }

    /// The runs left after compacting 24 with `fan_in`.
    fn key_space_and_compaction(fan_in: usize) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let t = db.open_tree("t").unwrap();
        let runs = Runs::open(&t).unwrap();
        runs.set_fan_in(fan_in);
        let key = |i: u32| format!("R{i:06}").into_bytes();
        // An entry in the tree itself (a store from before runs) and in runs.
        t.insert(key(5), value(50, 60, 1)).unwrap();
        // 24 runs over overlapping key ranges; key i is in the runs r with i % (r + 1) == 0.
        let mut want = std::collections::BTreeMap::new();
        want.insert(key(5), (50, 60, 1));
        for r in 0..24u64 {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..3_000u32)
                .filter(|i| (*i as u64).is_multiple_of(r + 1))
                .map(|i| (key(i), value(100 + r, 200 + r, r + 1)))
                .collect();
            for (k, _) in &entries {
                let e = want.entry(k.clone()).or_insert((u64::MAX, 0, 0));
                *e = (e.0.min(100 + r), e.1.max(200 + r), e.2 + r + 1);
            }
            let mut staged = Entries::default();
            for (k, v) in &entries {
                let v = staged.value(v);
                staged.push(|b| b.extend_from_slice(k), v);
            }
            staged.sort().unwrap();
            let mut batch = sled::Batch::default();
            let run = runs.stage(&staged, &mut batch).unwrap().unwrap();
            t.apply_batch(batch).unwrap();
            runs.publish(run);
        }
        let check = |runs: &Runs| {
            let got: Vec<(Vec<u8>, (u64, u64, u64))> = runs
                .scan(&t, Bound::Included(b"R".to_vec()), Some(b"S".to_vec()))
                .map(|r| r.unwrap())
                .map(|(k, v)| (k.to_vec(), counters(&v)))
                .collect();
            assert_eq!(got, want.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>());
            // A range, from an exclusive start, and sorted point lookups (one absent).
            let got: Vec<Vec<u8>> =
                runs.scan(&t, Bound::Excluded(key(100)), Some(key(110))).map(|r| r.unwrap().0.to_vec()).collect();
            assert_eq!(got, (101..110).map(key).collect::<Vec<_>>());
            let keys = vec![key(0), key(5), key(7), key(2_999), key(3_000)];
            let got = runs.get_sorted(&t, &keys).unwrap();
            for (k, v) in keys.iter().zip(got) {
                assert_eq!(v.map(|v| counters(&v)), want.get(k).copied(), "{}", String::from_utf8_lossy(k));
            }
        };
        check(&runs);
        let before = runs.stats().0;
        // A step at a time: reads stay whole between steps.
        for _ in 0..5 {
            runs.compact(&t, Some(2_000)).unwrap();
            check(&runs);
        }
        runs.compact(&t, None).unwrap();
        let (after, _) = runs.stats();
        assert!(after < before, "fan-in {fan_in}: {before} runs -> {after}");
        // No size class is left with a fan-in's worth of runs.
        let mut classes: Vec<u32> = runs.snapshot().iter().map(|r| r.class(fan_in)).collect();
        classes.sort_unstable();
        assert!(classes.windows(fan_in).all(|w| w[0] != w[fan_in - 1]), "fan-in {fan_in}: classes {classes:?}");
        check(&runs);
        // Reopened: the same, and no block of a merged-away run is left.
        drop(runs);
        let runs = Runs::open(&t).unwrap();
        check(&runs);
        let live: Vec<u64> = runs.snapshot().iter().map(|r| r.id).collect();
        for k in t.scan_prefix([TAG_BLOCK]).keys() {
            let id = u64::from_be_bytes(k.unwrap()[1..9].try_into().unwrap());
            assert!(live.contains(&id), "block of run {id} left behind");
        }
        assert_eq!(t.scan_prefix(META_GARBAGE).count(), 0);
        after
    }

    #[test]
    fn bare_index_entries_stay_bare_and_an_interrupted_compaction_is_undone_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let t = db.open_tree("t").unwrap();
        assert!(combine(b"I", IVec::from(&value(1, 2, 3)[..]), &[]).unwrap().is_empty());
        assert!(combine(b"I", IVec::default(), &value(1, 2, 3)).unwrap().is_empty());
        assert_eq!(counters(&combine(b"R", IVec::from(&value(5, 6, 1)[..]), &value(1, 9, 2)).unwrap()), (1, 9, 3));
        assert!(matches!(combine(b"R", IVec::from(&b"short"[..]), &value(1, 2, 3)), Err(StoreError::Corrupt(_))));
        // Blocks of a compaction that never swapped the directory in.
        t.insert(id_key(META_COMPACTING, 7), &[]).unwrap();
        t.insert(block_key(7, 0), &b"partial"[..]).unwrap();
        let runs = Runs::open(&t).unwrap();
        assert_eq!(t.scan_prefix([TAG_BLOCK]).count(), 0);
        assert_eq!(t.scan_prefix(META_COMPACTING).count(), 0);
        assert!(runs.next_id.load(Ordering::Relaxed) > 7);
    }
}
