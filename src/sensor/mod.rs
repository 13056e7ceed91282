//! `dnsledger sensor`: dnstap in, authoritative in-bailiwick client-free RRsets out, aggregated
//! into sled.
//!
//! ```text
//! ingest thread: listeners (unix, TCP): accept, handshake (and TLS connections throughout)
//! connection threads (a started unix or plain TCP stream), each:
//!     read -> decode -> classify/authoritative/bailiwick/scrub/RRsets (extract) -> aggregate window
//! store thread: flush: Store::merge (RRsets, indexes, outbox) -> sync
//! ```
//!
//! Each connection runs the frames it reads through the stages itself (see `Stages` for why),
//! on the ingest thread or, once its stream has started, with blocking reads on a thread of
//! its own (`ListenerConfig::blocking_reads`); a connection does not read while its frames go
//! through the stages, so a slow pipeline pushes back on the sender through the socket. A
//! window is flushed when it holds `window_keys` distinct RRsets or `window_mb` of them, or is
//! `window_seconds` old, and on shutdown, in atomic store batches of `FLUSH_CHUNK` RRsets.

pub mod config;
pub mod extract;
pub mod filter;
mod priority;
mod window;
pub(crate) mod wire;
pub mod zones;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::SensorConfig;
pub use extract::{ExtractConfig, Extractor, Kind, Observation, Rrset};
pub use filter::{Cidr, PrivacyFilter};
pub use zones::ZoneMap;

use crate::dnstap::{self, TapView};
use crate::framestream::{
    DNSTAP_CONTENT_TYPE, Endpoint, FileReader, FrameSink, Listener, ListenerConfig, ListenerStats,
};
use crate::metrics::{Counter, Gauge, Metrics, ReasonCounter, Registry, Tally, write_metric, write_reasons};
use crate::store::{Delta, Store, StoreError};
use window::Window;

/// Pipeline counters (Prometheus prefix `dnsledger_sensor_`).
#[derive(Debug, Default)]
pub struct SensorStats {
    pub frames_in: Counter,
    /// Frames by dnstap message type (only those that decoded).
    pub frames_by_type: ReasonCounter,
    pub frames_kept: Counter,
    /// Frames that contributed nothing, by reason (message type, rcode, not authoritative...).
    pub frames_dropped: ReasonCounter,
    pub rrsets_observed: Counter,
    pub rrsets_dropped: ReasonCounter,
    pub window_keys: Gauge,
    /// Frames without `query_zone` waiting for the delegation that places them.
    pub frames_deferred: Gauge,
    pub flushes: Counter,
    pub flush_errors: Counter,
    /// Windows the stages had ready while the store thread was busy (writing the last one,
    /// or compacting): they waited.
    pub store_waits: Counter,
    pub keys_new: Counter,
    pub keys_updated: Counter,
    /// Observations written to the store (the sum of the flushed counts).
    pub observations_flushed: Counter,
    pub outbox_batches: Gauge,
    /// Flushes folded into the newest outbox entry because the outbox was full.
    pub outbox_folds: Counter,
    /// Flushes added past the outbox limit (the newest entry was in flight or full).
    pub outbox_over_limit: Counter,
}

impl Metrics for SensorStats {
    fn render(&self, out: &mut String) {
        let p = "dnsledger_sensor";
        write_metric(
            out,
            &format!("{p}_frames_in_total"),
            "counter",
            "Frames into the pipeline.",
            self.frames_in.get(),
        );
        write_reasons(
            out,
            &format!("{p}_frames_by_type_total"),
            "Decoded frames by dnstap type.",
            "type",
            &self.frames_by_type,
        );
        write_metric(
            out,
            &format!("{p}_frames_kept_total"),
            "counter",
            "Frames that gave RRsets.",
            self.frames_kept.get(),
        );
        write_reasons(
            out,
            &format!("{p}_frames_dropped_total"),
            "Frames dropped, by reason.",
            "reason",
            &self.frames_dropped,
        );
        write_metric(
            out,
            &format!("{p}_rrsets_observed_total"),
            "counter",
            "RRset observations accepted.",
            self.rrsets_observed.get(),
        );
        write_reasons(
            out,
            &format!("{p}_rrsets_dropped_total"),
            "RRsets dropped, by reason.",
            "reason",
            &self.rrsets_dropped,
        );
        write_metric(
            out,
            &format!("{p}_window_keys"),
            "gauge",
            "Distinct RRsets in the open window.",
            self.window_keys.get(),
        );
        write_metric(
            out,
            &format!("{p}_frames_deferred"),
            "gauge",
            "Frames without query_zone waiting for a delegation.",
            self.frames_deferred.get(),
        );
        write_metric(
            out,
            &format!("{p}_flushes_total"),
            "counter",
            "Windows flushed to the store.",
            self.flushes.get(),
        );
        write_metric(
            out,
            &format!("{p}_flush_errors_total"),
            "counter",
            "Failed flushes (retried).",
            self.flush_errors.get(),
        );
        write_metric(
            out,
            &format!("{p}_store_waits_total"),
            "counter",
            "Windows ready while the store thread was busy writing or compacting (the stages waited).",
            self.store_waits.get(),
        );
        write_metric(
            out,
            &format!("{p}_keys_new_total"),
            "counter",
            "RRsets stored for the first time.",
            self.keys_new.get(),
        );
        write_metric(
            out,
            &format!("{p}_keys_updated_total"),
            "counter",
            "Stored RRsets updated.",
            self.keys_updated.get(),
        );
        write_metric(
            out,
            &format!("{p}_observations_flushed_total"),
            "counter",
            "Observations durably in the store.",
            self.observations_flushed.get(),
        );
        write_metric(
            out,
            &format!("{p}_outbox_batches"),
            "gauge",
            "Batches waiting in the outbox.",
            self.outbox_batches.get(),
        );
        write_metric(
            out,
            &format!("{p}_outbox_folds_total"),
            "counter",
            "Flushes folded into the newest outbox entry (outbox full).",
            self.outbox_folds.get(),
        );
        write_metric(
            out,
            &format!("{p}_outbox_over_limit_total"),
            "counter",
            "Flushes added past the outbox limit (newest entry in flight or at its size cap).",
            self.outbox_over_limit.get(),
        );
    }
}

/// The pipeline state: extractor, open window, store.
pub struct Pipeline {
    extractor: Extractor,
    window: Window,
    opened: Instant,
    window_age: Duration,
    window_keys: usize,
    window_bytes: usize,
    store: Store,
    flusher: Flusher,
    stats: Arc<SensorStats>,
    scratch: Vec<Observation>,
    /// Per-frame counts, published to `stats` once per batch ([`Pipeline::publish`]) instead
    /// of three atomic adds per frame (1% of the stages' instructions).
    frames: u64,
    kept: u64,
    observed: u64,
    types: Tally,
    frame_drops: Tally,
    rrset_drops: Tally,
    deferred: VecDeque<(Instant, Bytes)>,
}

/// At most this many frames wait for a delegation, for at most `DEFER_AGE`.
const DEFER_MAX: usize = 10_000;
const DEFER_AGE: Duration = Duration::from_secs(5);
/// RRsets per store merge: each is one sorted run (`store/runs.rs`) and one sync. A larger
/// window (the default holds 200,000) is split to bound the memory of a merge (its RRsets
/// decoded, their run entries), into parts of equal size up to an eighth more than this
/// ([`merge_part`]).
const FLUSH_CHUNK: usize = 50_000;

/// The size of the parts a window of `n` RRsets is merged in. A window is taken once it has
/// reached its bound, so it holds a few RRsets more (those of the frame that reached it): split
/// at exactly `FLUSH_CHUNK`, each window would add a run of a few entries and a sync.
fn merge_part(n: usize) -> usize {
    let parts = n.div_ceil(FLUSH_CHUNK + FLUSH_CHUNK / 8).max(1);
    n.div_ceil(parts).max(1)
}

impl Pipeline {
    pub fn new(config: &SensorConfig, store: Store, stats: Arc<SensorStats>) -> Self {
        let filter =
            PrivacyFilter::new(&config.internal_zones, config.exclude_special_use, config.private_networks.clone());
        let zones = ZoneMap::with_roots(1_000_000, &config.root_hints);
        let extract = ExtractConfig { auth_responses: config.auth_responses, negative: config.negative };
        stats.outbox_batches.set(store.outbox_len() as i64);
        Self {
            extractor: Extractor::new(extract, filter, zones),
            window: Window::default(),
            opened: Instant::now(),
            window_age: config.window,
            window_keys: config.window_keys,
            window_bytes: usize::try_from(config.window_mb << 20).unwrap_or(usize::MAX),
            flusher: Flusher::start(
                store.clone(),
                config.outbox,
                config.compact_when_idle,
                priority::StorePriority::new(config.idle_priority),
                stats.clone(),
            ),
            store,
            stats,
            scratch: Vec::new(),
            frames: 0,
            kept: 0,
            observed: 0,
            types: Tally::default(),
            frame_drops: Tally::default(),
            rrset_drops: Tally::default(),
            deferred: VecDeque::new(),
        }
    }

    /// Runs one frame through the stages into the open window.
    pub fn frame(&mut self, frame: Bytes) -> Result<(), StoreError> {
        self.frames += 1;
        let generation = self.extractor.zones.generation;
        self.process(frame, None, true)?;
        if self.extractor.zones.generation != generation && !self.deferred.is_empty() {
            self.retry_deferred()?;
        }
        Ok(())
    }

    /// Decodes, extracts and aggregates one frame (counted by type the `first` time, not when
    /// retried). A frame without `query_zone` whose server is not known yet is deferred
    /// (bounded): resolvers such as BIND log out of order, so the delegation that places it
    /// may arrive just after it. `since`: when a retried frame was first deferred (the clock is
    /// read only for a frame deferred the first time, not for every frame).
    fn process(&mut self, frame: Bytes, since: Option<Instant>, first: bool) -> Result<(), StoreError> {
        // Borrowed from the frame; from `decode` for frames the view leaves to it.
        let decoded;
        let tap = match dnstap::view(&frame) {
            Some(Ok(tap)) => tap,
            None => match dnstap::decode(frame.clone()) {
                Ok(ev) => {
                    decoded = ev;
                    TapView::of(&decoded)
                }
                Err(e) => {
                    self.frame_drops.add(e.label());
                    return Ok(());
                }
            },
            Some(Err(e)) => {
                self.frame_drops.add(e.label());
                return Ok(());
            }
        };
        if first {
            self.types.add(extract::type_label(tap.kind));
        }
        self.extractor.recycle(&mut self.scratch);
        let result = self.extractor.extract(&tap, &mut self.scratch, &mut self.rrset_drops);
        let placeable_later = tap.query_zone.is_none();
        match result {
            Ok(()) => self.kept += 1,
            Err("no_bailiwick") if placeable_later && self.deferred.len() < DEFER_MAX => {
                self.stats.frames_deferred.set(self.deferred.len() as i64 + 1);
                // A copy the first time: the frame shares its connection's read buffer, which
                // could not be reused while the frame waits.
                let frame = if since.is_none() { Bytes::copy_from_slice(&frame) } else { frame };
                self.deferred.push_back((since.unwrap_or_else(Instant::now), frame));
                return Ok(());
            }
            Err(reason) => self.frame_drops.add(reason),
        }
        self.observed += self.scratch.len() as u64;
        // Handed back to the extractor at the next frame.
        for o in &self.scratch {
            self.window.add(o.kind, &o.rrset, o.time);
        }
        if self.window.len() >= self.window_keys || self.window.bytes() >= self.window_bytes || self.window.full() {
            self.flush(true)?;
        }
        Ok(())
    }

    /// Tries the deferred frames again, as long as doing so teaches new delegations.
    fn retry_deferred(&mut self) -> Result<(), StoreError> {
        loop {
            let generation = self.extractor.zones.generation;
            let pending = std::mem::take(&mut self.deferred);
            for (since, frame) in pending {
                self.process(frame, Some(since), false)?;
            }
            self.stats.frames_deferred.set(self.deferred.len() as i64);
            if self.extractor.zones.generation == generation || self.deferred.is_empty() {
                return Ok(());
            }
        }
    }

    /// Drops deferred frames older than `age` (all of them with `Duration::ZERO`).
    fn expire_deferred(&mut self, age: Duration) {
        while self.deferred.front().is_some_and(|(since, _)| since.elapsed() >= age) {
            self.deferred.pop_front();
            self.frame_drops.add("no_bailiwick");
        }
        self.stats.frames_deferred.set(self.deferred.len() as i64);
    }

    /// Flushes if the window is old enough.
    pub fn tick(&mut self) -> Result<(), StoreError> {
        self.publish();
        self.expire_deferred(DEFER_AGE);
        if !self.window.is_empty() && self.opened.elapsed() >= self.window_age {
            self.flush(false)?;
        }
        Ok(())
    }

    /// Hands the open window to the flusher thread and opens a new one. The flusher writes it
    /// while the stages go on (the two cores overlap); at most one more window waits for it, so
    /// a slow store holds the pipeline back, and with it the senders. Errors are retried there.
    /// `full`: the window reached its size bound (the sensor is under load), not its age.
    fn flush(&mut self, full: bool) -> Result<(), StoreError> {
        self.opened = Instant::now();
        if self.window.is_empty() {
            return Ok(());
        }
        let entries = self.window.take();
        self.stats.window_keys.set(0);
        self.flusher.send(entries, full)
    }

    /// End of input: what still has no bailiwick is dropped, the window written, and this
    /// returns once everything is on disk.
    pub fn finish(&mut self) -> Result<(), StoreError> {
        self.expire_deferred(Duration::ZERO);
        self.publish();
        // The last window is written at normal priority.
        self.flusher.priority.raise_for_good();
        self.flush(false)?;
        self.flusher.close()
    }

    /// Adds the counts gathered since the last call to the shared stats; sets the window gauge.
    pub fn publish(&mut self) {
        for (n, counter) in [
            (&mut self.frames, &self.stats.frames_in),
            (&mut self.kept, &self.stats.frames_kept),
            (&mut self.observed, &self.stats.rrsets_observed),
        ] {
            counter.add(std::mem::take(n));
        }
        self.stats.window_keys.set(self.window.len() as i64);
        self.types.publish(&self.stats.frames_by_type);
        self.frame_drops.publish(&self.stats.frames_dropped);
        self.rrset_drops.publish(&self.stats.rrsets_dropped);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// The thread that writes windows to the store, in order, in atomic batches of
/// `FLUSH_CHUNK` RRsets. A window is handed over only when the thread is free (a rendezvous,
/// not a queue): at most two windows are in memory, the one aggregating and the one being
/// written (a queued third cost ~40 MiB of peak RSS on 1M names, at no gain in speed). A
/// failed batch is retried (every second) until it succeeds; once closing, after 5 attempts
/// the error is returned and what was not written is lost with the process, as an unflushed
/// window would be.
///
/// With `[store] compact_when_idle` (the default), compaction yields to what comes in: windows
/// are merged with [`Store::merge_under_load`], which leaves compaction for later (up to a
/// bound on the runs, past which merges compact as they go). Once a window comes that did not
/// fill up (the load has eased: it was flushed by age), the thread compacts in steps of
/// [`IDLE_COMPACT_STEP`] entries until none is due, taking the next window between two steps;
/// not once closing (the last window), nor while a window waits. Without it, every merge
/// compacts a step (`Store::merge`).
///
/// With `[store] idle_priority` (the default), the thread runs at idle CPU priority while
/// nothing waits for it, and at normal priority while a window does ([`priority`]).
struct Flusher {
    tx: Option<std::sync::mpsc::SyncSender<Handed>>,
    priority: Arc<priority::StorePriority>,
    thread: Option<std::thread::JoinHandle<Result<(), StoreError>>>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    store: Store,
    outbox: bool,
    when_idle: bool,
    stats: Arc<SensorStats>,
    /// Writes were given up on (closing with a failing store): every later window and close
    /// says so, and nothing more is written.
    gave_up: Option<String>,
    /// Windows handed over so far.
    sent: u64,
}

/// A window handed to the flusher thread.
struct Handed {
    entries: window::Taken,
    /// It reached its size bound.
    full: bool,
    /// Its number, from 1.
    seq: u64,
}

/// Unregisters the store thread from its priority when it ends, however it ends.
struct Unregister<'a>(&'a priority::StorePriority);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.unregister();
    }
}

/// Entries of runs the flusher thread compacts between two looks for a window, when the load
/// has eased: about 50 ms of this machine's core (docs/BENCHMARKS.md), the longest a window
/// then waits for it.
const IDLE_COMPACT_STEP: u64 = 100_000;

impl Flusher {
    fn start(
        store: Store,
        outbox: bool,
        when_idle: bool,
        priority: priority::StorePriority,
        stats: Arc<SensorStats>,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Handed>(0);
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let priority = Arc::new(priority);
        let thread = {
            let (store, stats, closing, priority) = (store.clone(), stats.clone(), closing.clone(), priority.clone());
            std::thread::Builder::new()
                .name("sensor-flush".into())
                .spawn(move || {
                    use std::sync::mpsc::TryRecvError;
                    let mut pool = Vec::new();
                    // Compaction left by merges under load, or by an earlier run of the sensor.
                    let mut catch_up = when_idle;
                    priority.register();
                    let _unregister = Unregister(&priority);
                    loop {
                        let w = if catch_up && !closing.load(std::sync::atomic::Ordering::Relaxed) {
                            match rx.try_recv() {
                                Ok(w) => w,
                                Err(TryRecvError::Empty) => {
                                    priority.lower();
                                    catch_up = store.compact_step(IDLE_COMPACT_STEP);
                                    continue;
                                }
                                Err(TryRecvError::Disconnected) => break,
                            }
                        } else {
                            match rx.recv() {
                                Ok(w) => w,
                                Err(_) => break,
                            }
                        };
                        // Nothing waits for the thread while it writes this one (until the
                        // stages have the next).
                        priority.took(w.seq);
                        write_window(&store, &w.entries, &mut pool, outbox, when_idle, &stats, &closing)?;
                        catch_up = when_idle && !w.full;
                    }
                    Ok(())
                })
                .expect("spawn the flush thread")
        };
        Self {
            tx: Some(tx),
            priority,
            thread: Some(thread),
            closing,
            store,
            outbox,
            when_idle,
            stats,
            gave_up: None,
            sent: 0,
        }
    }

    fn send(&mut self, entries: window::Taken, full: bool) -> Result<(), StoreError> {
        use std::sync::mpsc::TrySendError;
        self.given_up()?;
        self.sent += 1;
        let w = Handed { entries, full, seq: self.sent };
        match &self.tx {
            Some(tx) => {
                let sent = match tx.try_send(w) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(w)) => {
                        // Still writing the last window: the stages wait for it, at normal
                        // priority.
                        self.stats.store_waits.inc();
                        self.priority.raise(w.seq);
                        tx.send(w).map_err(drop)
                    }
                    Err(TrySendError::Disconnected(_)) => Err(()),
                };
                // The thread has given up (only when closing): report why.
                if sent.is_err() { self.close() } else { Ok(()) }
            }
            // After close: write synchronously.
            None => write_window(
                &self.store,
                &w.entries,
                &mut Vec::new(),
                self.outbox,
                self.when_idle,
                &self.stats,
                &self.closing,
            )
            .inspect_err(|e| self.give_up(e)),
        }
    }

    /// Writes are given up on (closing with a failing store, or the thread panicked): the
    /// store is not flushed at exit, and every later window and close says so.
    fn give_up(&mut self, e: &StoreError) {
        self.store.abandon();
        self.gave_up.get_or_insert_with(|| e.to_string());
    }

    fn given_up(&self) -> Result<(), StoreError> {
        match &self.gave_up {
            Some(e) => Err(StoreError::Backend(format!("writes given up on: {e}"))),
            None => Ok(()),
        }
    }

    /// Waits until everything sent is written.
    fn close(&mut self) -> Result<(), StoreError> {
        self.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        self.priority.raise_for_good();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let written = t.join().unwrap_or_else(|_| Err(StoreError::FlushPanicked));
            if let Err(e) = &written {
                self.give_up(e);
            }
            return written;
        }
        self.given_up()
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if self.thread.is_some()
            && let Err(e) = self.close()
        {
            tracing::error!(error = %e, "store writes lost at shutdown");
        }
    }
}

/// `pool`: deltas kept from window to window, decoded into ([`window::delta_into`]).
/// `when_idle`: merged with [`Store::merge_under_load`].
fn write_window(
    store: &Store,
    entries: &window::Taken,
    pool: &mut Vec<Delta>,
    outbox: bool,
    when_idle: bool,
    stats: &SensorStats,
    closing: &std::sync::atomic::AtomicBool,
) -> Result<(), StoreError> {
    // Written in store-key order, so that each outbox entry (5,000 summaries) and each merge
    // of a window split in parts (`merge_part`) covers a narrow key range: forwarding batches
    // compress to ~10 bytes per summary instead of ~17 (docs/BENCHMARKS.md, "Forwarding"),
    // and a merge's entries arrive nearly sorted. The order is kept as a prefix of each key
    // up to the rdata digest, its first 24 bytes (ties keep the window's order): 32 bytes per
    // entry with its place, read off the encoded entries (decoding them twice took a fifth of
    // this thread).
    let mut key = Vec::with_capacity(256);
    let mut order: Vec<(u128, u64, u64)> = entries
        .iter()
        .map(|(place, e)| {
            key.clear();
            window::key_start(e.key, &mut key);
            // The first 24 bytes as two big-endian integers, which order as the bytes do:
            // compared in a few instructions instead of a byte-slice comparison.
            let (mut high, mut low) = ([0u8; 16], [0u8; 8]);
            let n = key.len().min(16);
            high[..n].copy_from_slice(&key[..n]);
            // (A key may be shorter than 16 bytes: the root's RRsets have 5.)
            if let Some(rest) = key.get(16..) {
                let m = rest.len().min(8);
                low[..m].copy_from_slice(&rest[..m]);
            }
            (u128::from_be_bytes(high), u64::from_be_bytes(low), place)
        })
        .collect();
    order.sort_unstable();
    for part in order.chunks(merge_part(order.len())) {
        // Decoded a chunk at a time: only the batch being written is in owned form.
        for (n, (_, _, place)) in part.iter().enumerate() {
            let e = entries.get(*place);
            match pool.get_mut(n) {
                Some(d) => window::delta_into(e, d),
                None => pool.push(window::delta(e)),
            }
        }
        let chunk = &pool[..part.len()];
        let st = retry("store write", stats, closing, || {
            if when_idle { store.merge_under_load(chunk, outbox) } else { store.merge(chunk, outbox) }
        })?;
        // Applied: from here on only the sync is retried, never the merge.
        retry("store sync", stats, closing, || store.sync())?;
        stats.keys_new.add(st.new_keys);
        stats.keys_updated.add(st.updated_keys);
        if st.outbox_folded {
            stats.outbox_folds.inc();
        }
        if st.outbox_over_limit {
            stats.outbox_over_limit.inc();
        }
        stats.observations_flushed.add(chunk.iter().map(|d| d.count).sum());
    }
    // Deltas that held a large RRset are not kept for the next window.
    pool.retain(|d| d.rrset.heap_bytes() <= extract::KEEP_RRSET_BYTES);
    stats.flushes.inc();
    stats.outbox_batches.set(store.outbox_len() as i64);
    tracing::debug!(rrsets = entries.len(), "window written");
    Ok(())
}

/// Runs `op` until it succeeds, every second; once closing, gives up after 5 attempts.
fn retry<T>(
    what: &str,
    stats: &SensorStats,
    closing: &std::sync::atomic::AtomicBool,
    mut op: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut attempts = 0;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) => {
                stats.flush_errors.inc();
                attempts += 1;
                tracing::error!(error = %e, attempts, "{what} failed; retrying");
                if closing.load(std::sync::atomic::Ordering::Relaxed) && attempts >= 5 {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Counts of a finished run, for the totals line.
#[derive(Debug, Default)]
pub struct Totals {
    pub frames: u64,
    pub kept: u64,
    pub rrsets: u64,
    pub stored: usize,
}

fn totals(stats: &SensorStats, store: &Store) -> Totals {
    Totals {
        frames: stats.frames_in.get(),
        kept: stats.frames_kept.get(),
        rrsets: stats.rrsets_observed.get(),
        stored: store.len(),
    }
}

/// Runs the pipeline over an fstrm file (what `--read` does), then flushes.
pub fn run_file(config: &SensorConfig, path: &Path, stats: Arc<SensorStats>) -> anyhow::Result<Totals> {
    let store = Store::open_with(&config.db, config.compression, config.cache_mb)?;
    let mut p = Pipeline::new(config, store, stats.clone());
    for frame in FileReader::open(path, DNSTAP_CONTENT_TYPE)? {
        p.frame(frame?)?;
    }
    p.finish()?;
    Ok(totals(&stats, p.store()))
}

/// Runs the sensor until `shutdown`: the ingest thread (listeners and stages), the store
/// thread, a periodic summary line.
pub async fn run(
    config: SensorConfig,
    registry: &Registry,
    shutdown: CancellationToken,
    progress: bool,
) -> anyhow::Result<Totals> {
    run_fed(config, registry, shutdown, progress, None).await
}

/// [`run`] with a second input: batches of frames from this process (the resolver's tap).
/// The feed is read until its senders are gone, also after `shutdown`, so nothing handed
/// over is lost.
pub async fn run_fed(
    config: SensorConfig,
    registry: &Registry,
    shutdown: CancellationToken,
    progress: bool,
    feed: Option<mpsc::Receiver<Vec<Bytes>>>,
) -> anyhow::Result<Totals> {
    if config.unix.is_empty() && config.tcp.is_empty() && feed.is_none() {
        anyhow::bail!("no listener: set listen.unix or listen.tcp (or --unix/--tcp)");
    }
    if let Some(f) = &config.forward {
        // A forwarding setup that cannot work is a start-up error, not a silent idle outbox.
        crate::tls::client_config(&f.ca, &f.cert, &f.key).map_err(|e| anyhow::anyhow!("forward: {e}"))?;
    }
    let mut store = Store::open_with(&config.db, config.compression, config.cache_mb)?;
    if let Some(f) = &config.forward {
        store = store.with_outbox_limit(f.max_outbox_batches);
    }
    if let Some(api) = &config.api {
        store = crate::api::with_feed(store, api)?;
        crate::api::start(
            api.clone(),
            crate::db::Db::Sled(store.clone()),
            Some(config.sensor_id.clone()),
            registry,
            shutdown.clone(),
        )
        .await?;
    }
    run_on(config, store, registry, shutdown, progress, feed).await
}

/// [`run_fed`] over a store opened already (a relay's, which also takes raw dnstap): the
/// listeners and the pipeline, and the forwarder if `config.forward` is set.
pub async fn run_on(
    config: SensorConfig,
    store: Store,
    registry: &Registry,
    shutdown: CancellationToken,
    progress: bool,
    feed: Option<mpsc::Receiver<Vec<Bytes>>>,
) -> anyhow::Result<Totals> {
    let stats = Arc::new(SensorStats::default());
    let lstats = Arc::new(ListenerStats::default());
    registry.register(stats.clone());
    registry.register(lstats.clone());
    registry.register(Arc::new(store.clone()));
    let lconfig = Arc::new(ListenerConfig {
        max_frame: config.max_frame,
        max_connections: config.max_connections,
        blocking_reads: true,
        ..ListenerConfig::default()
    });
    let mut endpoints: Vec<Endpoint> =
        config.unix.iter().map(|p| Endpoint::Unix { path: p.clone(), mode: config.unix_mode }).collect();
    endpoints.extend(config.tcp.iter().map(|a| Endpoint::Tcp { addr: *a, tls: None }));
    let mut listeners = Vec::new();
    for e in &endpoints {
        let l = Listener::bind(e).await?;
        tracing::info!(listen = %l.describe(), "sensor listening");
        listeners.push(l);
    }

    let p = Pipeline::new(&config, store, stats.clone());
    {
        // On shutdown a store that keeps failing is given up on after a few attempts, so that
        // the process ends (what it could not write is reported).
        let (closing, shutdown) = (p.flusher.closing.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            closing.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let forward_store = p.store().clone();
    let ingest = {
        let (stages, shutdown) = (Stages(Arc::new(Mutex::new(p))), shutdown.clone());
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name("sensor-ingest".into()).spawn(move || {
            let _ = done.send(ingest(listeners, lconfig, lstats, stages, feed, shutdown));
        })?;
        result
    };
    if progress {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(10));
            t.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = t.tick() => {}
                }
                tracing::info!(
                    frames = stats.frames_in.get(),
                    kept = stats.frames_kept.get(),
                    rrsets = stats.rrsets_observed.get(),
                    new = stats.keys_new.get(),
                    dropped = stats.frames_dropped.total(),
                    window = stats.window_keys.get(),
                    "sensor summary"
                );
            }
        });
    }
    let forwarder = config.forward.clone().map(|f| {
        let fstats = Arc::new(crate::forward::ForwardStats::default());
        registry.register(fstats.clone());
        tracing::info!(collector = %f.collector, "forwarding the outbox");
        tokio::spawn(crate::forward::run(f, forward_store.clone(), fstats, shutdown.clone()))
    });
    let result = ingest.await.unwrap_or_else(|_| Err(anyhow::anyhow!("the sensor's ingest thread panicked")));
    if result.is_err() {
        // Nothing is taken in any more: the forwarder (and an API) stop too.
        shutdown.cancel();
    }
    if let Some(f) = forwarder {
        let _ = f.await;
    }
    result
}

/// The ingest thread: the listeners (and the feed) on a runtime of their own, each connection
/// running what it reads through the stages in place ([`Stages`]); then the final flush.
fn ingest(
    listeners: Vec<Listener>,
    config: Arc<ListenerConfig>,
    lstats: Arc<ListenerStats>,
    stages: Stages,
    feed: Option<mpsc::Receiver<Vec<Bytes>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<Totals> {
    // Connections whose stream has started are read on threads of the runtime's blocking pool
    // (`ListenerConfig::blocking_reads`), named for it, each for as long as it lasts: room for
    // as many as may be open, up to `max_connections` per listener (a connection past the
    // pool's size would wait for a thread).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sensor-conn")
        .max_blocking_threads(config.max_connections.max(1).saturating_mul(listeners.len().max(1)).saturating_add(1))
        .build()?;
    runtime.block_on(async {
        let listeners = listeners.into_iter().map(Listener::into_current_runtime).collect::<Result<Vec<_>, _>>()?;
        let mut tasks: Vec<_> = listeners
            .into_iter()
            .map(|l| {
                let run = crate::framestream::listener::run(
                    l,
                    config.clone(),
                    stages.clone(),
                    lstats.clone(),
                    shutdown.clone(),
                );
                tokio::spawn(run)
            })
            .collect();
        if let Some(mut feed) = feed {
            let stages = stages.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(mut batch) = feed.recv().await {
                    if !stages.deliver(&mut batch).await {
                        return;
                    }
                }
            }));
        }
        // While idle, old windows are closed on a timer.
        let ticker = {
            let (stages, shutdown) = (stages.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut t = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = t.tick() => stages.tick(),
                    }
                }
            })
        };
        for t in tasks {
            let _ = t.await;
        }
        let _ = ticker.await;
        Ok::<_, io::Error>(())
    })?;
    // After a panic in the stages, what they had aggregated is still written.
    let (mut p, panicked) = match stages.0.lock() {
        Ok(p) => (p, false),
        Err(poisoned) => (poisoned.into_inner(), true),
    };
    p.finish()?;
    if panicked {
        anyhow::bail!("the sensor's stages panicked (what they had aggregated was written)");
    }
    Ok(totals(&p.stats, p.store()))
}

/// The stages, run by each connection on the frames it has read, on the thread that reads it
/// (connections read on threads of their own take the lock in turn, a batch at a time). A
/// connection reads what its socket holds (up to a batch), runs it through the stages and
/// only then reads again: while the stages run, the sender's frames pile up in the socket and
/// the next read takes them all in one call. Handing each read to another thread instead cost
/// a wake-up and a task switch per read, and a sender that writes a frame per syscall
/// (`fstrm_replay`) was read in smaller pieces: 6,291 reads against 1,646 in 2 s of a replay
/// (`strace -c`, docs/BENCHMARKS.md).
#[derive(Clone)]
struct Stages(Arc<Mutex<Pipeline>>);

impl Stages {
    fn run(&self, batch: &mut Vec<Bytes>) -> bool {
        let Ok(mut p) = self.0.lock() else {
            // A panic in the stages: nothing more can be taken in.
            batch.clear();
            return false;
        };
        let result = batch.drain(..).try_for_each(|f| p.frame(f));
        p.publish();
        if let Err(e) = result {
            // Only when the store thread has given up (shutting down with a failing store):
            // frames after it in this batch are not processed, and the connection stops.
            tracing::error!(error = %e, "store writes failing");
            return false;
        }
        true
    }

    fn tick(&self) {
        if let Ok(mut p) = self.0.lock() {
            if let Err(e) = p.tick() {
                tracing::error!(error = %e, "store writes failing");
            }
            p.publish();
        }
    }
}

impl FrameSink for Stages {
    const BLOCKING: bool = true;

    fn deliver(&self, batch: &mut Vec<Bytes>) -> impl Future<Output = bool> + Send {
        std::future::ready(self.run(batch))
    }

    fn deliver_blocking(&self, batch: &mut Vec<Bytes>) -> bool {
        self.run(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_just_past_its_bound_is_one_merge_and_a_larger_one_equal_parts() {
        for n in [1, 49_999, 50_000, 50_003, 56_250] {
            assert_eq!(merge_part(n), n);
        }
        for n in [56_251, 100_000, 200_003, 1_000_000] {
            let part = merge_part(n);
            assert!(part <= FLUSH_CHUNK + FLUSH_CHUNK / 8, "{n}: {part}");
            // The last part is as large as the others, within one per part.
            let parts = n.div_ceil(part);
            assert!(n - part * (parts - 1) + parts >= part, "{n}: {part}");
        }
    }
}
