//! `dnsledger collector`: the upstream end of forwarding. Accepts sensors (and relays) over
//! mutual TLS, takes each sender's id from its certificate, and applies every batch exactly
//! once into the same store module the sensor uses (RRsets, indexes, contributors):
//!
//! ```text
//! TLS accept (client cert must chain to the CA) -> id = certificate CN
//!   -> read Batch (bounded) -> decode + validate -> one writer: merge + (sender, stream,
//!      sequence) mark in one sled batch -> sync -> Ack OK | DUPLICATE | REJECTED
//! ```
//! Nothing is acknowledged before it is durable; a bad batch is refused with a reason and
//! counted, and the connection or the collector go on.
//!
//! With a ClickHouse cluster as its backend (`--clickhouse`), a collector keeps no state: it
//! applies each batch straight into the cluster (see [`crate::clickhouse`] for why that is
//! exactly once with any number of collectors), or, with NATS configured, stores it in a
//! JetStream stream that `dnsledger clickhouse writer` applies.
//!
//! `dnsledger relay` is the same ingest with an upstream: applied batches also go to the
//! store's outbox in the same atomic batch (so the downstream ack means "durably in my
//! outbox"), and the forwarder ships the outbox upstream, merging identical RRsets of up to
//! 64 waiting entries (from any of its senders) into one batch. A relay may also take raw
//! dnstap (`--sensor-config`): the sensor pipeline on the same store and outbox.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::clickhouse::{BatchRange, Cluster, Outcome};
use crate::db::Db;
use crate::forward::identity::sender_id;
use crate::forward::wire::{self, Status};
use crate::metrics::{
    Counter, Histogram, LATENCY_BUCKETS, Metrics, ReasonCounter, Registry, write_metric, write_reasons,
};
use crate::store::{Applied, Delta, Store};

/// Where a collector keeps what it applies.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The embedded sled store in this directory.
    Sled(PathBuf),
    /// A ClickHouse cluster (any number of collectors may write to it).
    ClickHouse(Box<crate::clickhouse::ClickHouseConfig>),
}

/// A collector's store merges its runs eight at a time, where a sensor's merges four: a
/// collector takes every sensor's batches, and the larger fan-in rewrites each RRset less
/// often (docs/BENCHMARKS.md, "Forwarding": merges ~1.2x as fast on the issue's workload;
/// lookups 15-20% slower and 60% more disk in a benchmark).
pub const DEFAULT_FAN_IN: usize = 8;

#[derive(Clone, Debug)]
pub struct CollectorConfig {
    pub backend: Backend,
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Senders must present a certificate this CA signed.
    pub client_ca: PathBuf,
    pub max_connections: usize,
    /// Relay mode: what is applied also goes to this store's outbox, forwarded upstream.
    pub upstream: Option<crate::forward::ForwardConfig>,
    /// Senders (relays) whose summaries name the sensors behind them; recorded as given.
    pub trusted_relays: Vec<String>,
    /// The query API over the collector's store.
    pub api: Option<crate::api::ApiConfig>,
    /// Relay mode: also take raw dnstap, through the sensor pipeline into the relay's store
    /// (and so its outbox). Its `db`, `[forward]` and `[api]` are not used.
    pub dnstap: Option<crate::sensor::SensorConfig>,
    /// The sled store's page cache, MiB.
    pub cache_mb: u64,
    /// Runs of the sled store merged this many at a time ([`Store::with_fan_in`]).
    pub fan_in: usize,
}

/// Collector counters (Prometheus prefix `dnsledger_collector_`).
#[derive(Debug)]
pub struct CollectorStats {
    /// Connections by outcome (`accepted`, `tls_handshake`, `no_identity`, `limit`).
    pub connections: ReasonCounter,
    pub batches_applied: Counter,
    pub batches_duplicate: Counter,
    /// Refused batches by reason.
    pub batches_rejected: ReasonCounter,
    pub summaries_applied: Counter,
    pub apply_time: Histogram,
}

impl Default for CollectorStats {
    fn default() -> Self {
        Self {
            connections: ReasonCounter::default(),
            batches_applied: Counter::default(),
            batches_duplicate: Counter::default(),
            batches_rejected: ReasonCounter::default(),
            summaries_applied: Counter::default(),
            apply_time: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Metrics for CollectorStats {
    fn render(&self, out: &mut String) {
        let p = "dnsledger_collector";
        write_reasons(out, &format!("{p}_connections_total"), "Connections, by outcome.", "outcome", &self.connections);
        write_metric(
            out,
            &format!("{p}_batches_applied_total"),
            "counter",
            "Batches applied.",
            self.batches_applied.get(),
        );
        write_metric(
            out,
            &format!("{p}_batches_duplicate_total"),
            "counter",
            "Batches received again (retries), not applied again.",
            self.batches_duplicate.get(),
        );
        write_reasons(
            out,
            &format!("{p}_batches_rejected_total"),
            "Batches refused, by reason.",
            "reason",
            &self.batches_rejected,
        );
        write_metric(
            out,
            &format!("{p}_summaries_applied_total"),
            "counter",
            "RRset summaries applied.",
            self.summaries_applied.get(),
        );
        self.apply_time.render(out, &format!("{p}_apply_seconds"), "Batch merge and sync.");
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A sender idle this long is disconnected (it reconnects when it has data).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the collector until `shutdown`.
pub async fn run(config: CollectorConfig, registry: &Registry, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tls = crate::tls::server_config(&config.cert, &config.key, Some(&config.client_ca))?;
    if let Some(f) = &config.upstream {
        crate::tls::client_config(&f.ca, &f.cert, &f.key).map_err(|e| anyhow::anyhow!("upstream: {e}"))?;
    }
    let path = match &config.backend {
        Backend::Sled(path) => path.clone(),
        Backend::ClickHouse(ch) => {
            anyhow::ensure!(config.upstream.is_none(), "a relay keeps its outbox in sled, not ClickHouse");
            return run_clickhouse(&config, (**ch).clone(), tls, registry, shutdown).await;
        }
    };
    let mut store = Store::open_cached(&path, config.cache_mb)?.with_fan_in(config.fan_in);
    if let Some(f) = &config.upstream {
        store = store.with_outbox_limit(f.max_outbox_batches);
    }
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("listen {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, db = %path.display(), "collector listening");
    if let Some(api) = &config.api {
        store = crate::api::with_feed(store, api)?;
        crate::api::start(api.clone(), Db::Sled(store.clone()), None, registry, shutdown.clone()).await?;
    }
    let stats = Arc::new(CollectorStats::default());
    registry.register(stats.clone());
    // A relay that also takes dnstap runs the sensor pipeline, which registers the store.
    if config.dnstap.is_none() {
        registry.register(Arc::new(store.clone()));
    }
    let acceptor = TlsAcceptor::from(tls);
    let outbox = config.upstream.is_some();
    let trusted_relays = Arc::new(config.trusted_relays.clone());
    let sensor = match config.dnstap.clone() {
        Some(mut s) if config.upstream.is_some() => {
            s.outbox = true;
            s.forward = None;
            s.api = None;
            let (store, registry, shutdown) = (store.clone(), registry.clone(), shutdown.clone());
            Some(tokio::spawn(async move { crate::sensor::run_on(s, store, &registry, shutdown, false, None).await }))
        }
        Some(_) => anyhow::bail!("raw dnstap is taken by a relay (which forwards it), not by a collector"),
        None => None,
    };
    let forwarder = config.upstream.clone().map(|f| {
        let fstats = Arc::new(crate::forward::ForwardStats::default());
        registry.register(fstats.clone());
        tracing::info!(upstream = %f.collector, "relaying upstream");
        tokio::spawn(crate::forward::run(f, store.clone(), fstats, shutdown.clone()))
    });
    // One writer: batches from all senders are applied one at a time, so a sender's mark is
    // read and written without a race.
    let writer = Writer::Sled(Arc::new(Mutex::new(store)), outbox);
    accept(&config, listener, acceptor, stats, writer.clone(), trusted_relays, shutdown).await;
    if let Some(s) = sensor {
        // Its last window is flushed into the store (and outbox) before the store is synced.
        match s.await {
            Ok(Ok(t)) => tracing::info!(frames = t.frames, rrsets = t.rrsets, "relay's dnstap input stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "relay's dnstap input failed"),
            Err(e) => tracing::error!(error = %e, "relay's dnstap input panicked"),
        }
    }
    if let Some(f) = forwarder {
        let _ = f.await;
    }
    if let Writer::Sled(store, _) = writer {
        store.lock().await.sync()?;
    }
    Ok(())
}

/// The collector over a ClickHouse cluster: no local state, so any number of collectors may
/// run side by side; each applies what it receives straight into the cluster.
async fn run_clickhouse(
    config: &CollectorConfig,
    ch: crate::clickhouse::ClickHouseConfig,
    tls: Arc<rustls::ServerConfig>,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cluster = Arc::new(Cluster::new(ch)?);
    // The cluster may come up after us: retry the schema until it answers.
    let mut wait = Duration::from_millis(200);
    loop {
        match cluster.init().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "ClickHouse schema not ready; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("listen {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        shards = cluster.shard_count(),
        database = %cluster.config().database,
        "collector listening (ClickHouse)"
    );
    if let Some(api) = &config.api {
        crate::api::start(api.clone(), Db::ClickHouse(cluster.clone()), None, registry, shutdown.clone()).await?;
    }
    let stats = Arc::new(CollectorStats::default());
    registry.register(stats.clone());
    let trusted_relays = Arc::new(config.trusted_relays.clone());
    let writer = match cluster.nats() {
        None => Writer::ClickHouse(cluster),
        Some(n) => {
            // The broker may come up after us too.
            let mut wait = Duration::from_millis(200);
            let js = loop {
                match crate::clickhouse::nats::connect(&n).await {
                    Ok(js) => break js,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "NATS not ready; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(wait) => {}
                        }
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                }
            };
            tracing::info!(url = %n.url, stream = %n.stream, "batches go through NATS JetStream");
            Writer::Nats(Box::new(js))
        }
    };
    accept(config, listener, TlsAcceptor::from(tls), stats, writer, trusted_relays, shutdown).await;
    Ok(())
}

/// Where batches are applied.
#[derive(Clone)]
enum Writer {
    /// The sled store (one writer at a time), and whether applied batches go to its outbox.
    Sled(Arc<Mutex<Store>>, bool),
    ClickHouse(Arc<Cluster>),
    /// The JetStream stream that `dnsledger clickhouse writer` applies to the cluster.
    Nats(Box<async_nats::jetstream::Context>),
}

async fn accept(
    config: &CollectorConfig,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stats: Arc<CollectorStats>,
    writer: Writer,
    trusted_relays: Arc<Vec<String>>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.connections.inc("limit");
            tracing::warn!(%peer, "connection refused: at max_connections");
            continue;
        };
        let (acceptor, stats, writer, shutdown) = (acceptor.clone(), stats.clone(), writer.clone(), shutdown.clone());
        let relays = trusted_relays.clone();
        tokio::spawn(async move {
            serve(tcp, peer, acceptor, stats, writer, relays, shutdown).await;
            drop(permit);
        });
    }
}

/// Applies one batch: into sled (merge and mark in one atomic batch, then sync), or into
/// ClickHouse (exactly once by deterministic, deduplicated blocks).
async fn apply(
    writer: &Writer,
    sender: &str,
    id: wire::BatchId,
    deltas: Vec<Delta>,
    trusted: bool,
    body: &[u8],
) -> Result<Applied, String> {
    match writer {
        Writer::Sled(store, outbox) => {
            let store = store.clone().lock_owned().await;
            let (sender, outbox) = (sender.to_string(), *outbox);
            tokio::task::spawn_blocking(move || {
                let applied =
                    store.merge_from(&sender, id.stream, (id.first, id.sequence), &deltas, outbox, trusted)?;
                // Also before a DUPLICATE or an overlap: the earlier merge it refers to may
                // not be durable yet (its own sync may have failed); cheap when it is.
                store.sync()?;
                Ok::<_, crate::store::StoreError>(applied)
            })
            .await
            .map_err(|e| format!("store task: {e}"))?
            .map_err(|e| e.to_string())
        }
        Writer::ClickHouse(cluster) => {
            let deltas = crate::store::attribute(&deltas, sender, trusted);
            let range = BatchRange { sender, stream: id.stream, first: id.first, last: id.sequence };
            match cluster.apply(range, &deltas).await.map_err(|e| e.to_string())? {
                Outcome::Applied => Ok(Applied::Merged(Default::default())),
                Outcome::Duplicate => Ok(Applied::Duplicate { through: id.sequence }),
            }
        }
        Writer::Nats(js) => {
            let range = BatchRange { sender, stream: id.stream, first: id.first, last: id.sequence };
            // Stored durably by the broker: acknowledged as applied (the writer takes it on).
            match crate::clickhouse::nats::publish(js, range, trusted, body).await.map_err(|e| e.to_string())? {
                Outcome::Applied => Ok(Applied::Merged(Default::default())),
                Outcome::Duplicate => Ok(Applied::Duplicate { through: id.sequence }),
            }
        }
    }
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    stats: Arc<CollectorStats>,
    writer: Writer,
    trusted_relays: Arc<Vec<String>>,
    shutdown: CancellationToken,
) {
    let mut conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            stats.connections.inc("tls_handshake");
            tracing::warn!(%peer, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            stats.connections.inc("tls_handshake");
            tracing::warn!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let sender = conn.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| sender_id(c));
    let Some(sender) = sender else {
        stats.connections.inc("no_identity");
        tracing::warn!(%peer, "client certificate has no usable CN (1-64 of A-Z a-z 0-9 . _ -): refused");
        return;
    };
    stats.connections.inc("accepted");
    let trusted = trusted_relays.contains(&sender);
    tracing::info!(%peer, sender, trusted_relay = trusted, "sender connected");
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = tokio::time::timeout(IDLE_TIMEOUT, wire::read_message(&mut conn)) => m,
        };
        let body = match message {
            Err(_) => return,
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                // Broken framing: the stream cannot be trusted past this point.
                stats.batches_rejected.inc(e.label());
                tracing::warn!(sender, error = %e, "bad message; closing the connection");
                return;
            }
        };
        let (status, sequence, text, through) = match wire::decode_batch(&body) {
            Err(e) => {
                stats.batches_rejected.inc(e.label());
                tracing::warn!(sender, error = %e, "batch rejected");
                (Status::Rejected, 0, e.to_string(), 0)
            }
            Ok((id, deltas)) => {
                let start = std::time::Instant::now();
                let n = deltas.len() as u64;
                let applied = apply(&writer, &sender, id, deltas, trusted, &body).await;
                stats.apply_time.observe(start.elapsed());
                match applied {
                    Ok(Applied::Merged(_)) => {
                        stats.batches_applied.inc();
                        stats.summaries_applied.add(n);
                        (Status::Ok, id.sequence, String::new(), id.sequence)
                    }
                    Ok(Applied::Duplicate { through }) => {
                        stats.batches_duplicate.inc();
                        (Status::Duplicate, id.sequence, String::new(), through)
                    }
                    Ok(Applied::Overlap { through }) => {
                        stats.batches_rejected.inc("overlap");
                        tracing::info!(
                            sender,
                            first = id.first,
                            last = id.sequence,
                            through,
                            "batch overlaps what was applied; sender resends the rest"
                        );
                        (Status::Rejected, id.sequence, format!("applied through {through}"), through)
                    }
                    Ok(Applied::Gap { expected }) => {
                        stats.batches_rejected.inc("sequence_gap");
                        tracing::error!(sender, got = id.first, expected, "sequence gap: batch refused");
                        (Status::Rejected, id.sequence, format!("sequence gap: expected {expected}"), expected - 1)
                    }
                    Err(e) => {
                        stats.batches_rejected.inc("store");
                        tracing::error!(sender, error = %e, "store failed; batch not acknowledged");
                        (Status::Rejected, id.sequence, "store failure".into(), 0)
                    }
                }
            }
        };
        if let Err(e) = wire::write_message(&mut conn, &wire::encode_ack(sequence, status, &text, through)).await {
            tracing::debug!(sender, error = %e, "ack not delivered");
            return;
        }
    }
}
