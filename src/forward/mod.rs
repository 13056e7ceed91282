//! Forwarding: the sensor's outbox to the next hop (collector or relay) over mutual TLS.
//!
//! ```text
//! sled outbox (oldest first) -> Batch (zstd) -> TLS -> collector: merge + mark, sync -> Ack
//!                            <- delete the batch from the outbox only after OK/DUPLICATE
//! ```
//! One batch is in flight at a time, so acknowledgements are never out of order and a
//! retried batch is recognised by its (stream, sequence range). Up to 64 waiting outbox
//! entries travel as one batch with identical RRsets summed (for a relay, the window in which
//! its senders' RRsets merge); the range lets the next hop recognise what it holds already. Failures back off exponentially
//! with jitter; nothing leaves the outbox without an acknowledgement of durability.
//! Wire format: [`wire`]; who the sender is: [`identity`] (the collector's side).

pub mod identity;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Counter, Gauge, Histogram, LATENCY_BUCKETS, Metrics, ReasonCounter, write_metric, write_reasons};
use crate::store::{Delta, Store};
use wire::{BatchId, Status};

/// Where and how to forward (the `[forward]` table of sensor.toml).
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    pub collector: SocketAddr,
    /// Name the collector's certificate must carry.
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Outbox entries kept while the next hop is away; past it flushes fold into the newest.
    pub max_outbox_batches: usize,
}

/// Forwarder counters (Prometheus prefix `dnsledger_forward_`).
#[derive(Debug)]
pub struct ForwardStats {
    pub batches_sent: Counter,
    pub batches_acked: Counter,
    pub batches_duplicate: Counter,
    pub batches_rejected: Counter,
    /// Batches refused because part of their range was applied before (then resent).
    pub batches_overlap: Counter,
    pub summaries_acked: Counter,
    pub bytes_sent: Counter,
    /// Connection or exchange failures, by reason; each is followed by a retry.
    pub failures: ReasonCounter,
    pub outbox_batches: Gauge,
    /// Age in seconds of the oldest batch waiting.
    pub outbox_age_seconds: Gauge,
    pub round_trip: Histogram,
}

impl Default for ForwardStats {
    fn default() -> Self {
        Self {
            batches_sent: Counter::default(),
            batches_acked: Counter::default(),
            batches_duplicate: Counter::default(),
            batches_rejected: Counter::default(),
            batches_overlap: Counter::default(),
            summaries_acked: Counter::default(),
            bytes_sent: Counter::default(),
            failures: ReasonCounter::default(),
            outbox_batches: Gauge::default(),
            outbox_age_seconds: Gauge::default(),
            round_trip: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Metrics for ForwardStats {
    fn render(&self, out: &mut String) {
        let p = "dnsledger_forward";
        for (name, help, v) in [
            ("batches_sent_total", "Batches sent (retries included).", self.batches_sent.get()),
            ("batches_acked_total", "Batches acknowledged as applied and durable.", self.batches_acked.get()),
            (
                "batches_duplicate_total",
                "Batches acknowledged as already applied (retries).",
                self.batches_duplicate.get(),
            ),
            ("batches_rejected_total", "Batches the next hop refused (kept, retried).", self.batches_rejected.get()),
            ("batches_overlap_total", "Batches partly applied before (the rest resent).", self.batches_overlap.get()),
            ("summaries_acked_total", "RRset summaries acknowledged.", self.summaries_acked.get()),
            ("bytes_sent_total", "Batch bytes sent (compressed).", self.bytes_sent.get()),
        ] {
            write_metric(out, &format!("{p}_{name}"), "counter", help, v);
        }
        write_reasons(out, &format!("{p}_failures_total"), "Failed exchanges, by reason.", "reason", &self.failures);
        write_metric(out, &format!("{p}_outbox_batches"), "gauge", "Batches waiting.", self.outbox_batches.get());
        write_metric(
            out,
            &format!("{p}_outbox_age_seconds"),
            "gauge",
            "Age of the oldest waiting batch.",
            self.outbox_age_seconds.get(),
        );
        self.round_trip.render(out, &format!("{p}_round_trip_seconds"), "Batch sent to acknowledgement.");
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const IDLE_POLL: Duration = Duration::from_millis(200);

/// A pseudo-random fraction in [0.5, 1.5) for jitter (no RNG dependency needed for this).
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    0.5 + f64::from(nanos % 1000) / 1000.0
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

type Conn = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(config: &ForwardConfig, tls: &TlsConnector) -> Result<Conn, (&'static str, String)> {
    let name = ServerName::try_from(config.server_name.clone()).map_err(|e| ("config", e.to_string()))?;
    let tcp = tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(config.collector))
        .await
        .map_err(|_| ("connect", "timed out".to_string()))?
        .map_err(|e| ("connect", e.to_string()))?;
    tcp.set_nodelay(true).map_err(|e| ("connect", e.to_string()))?;
    tokio::time::timeout(EXCHANGE_TIMEOUT, tls.connect(name, tcp))
        .await
        .map_err(|_| ("tls", "handshake timed out".to_string()))?
        .map_err(|e| ("tls", e.to_string()))
}

/// Sends one batch and waits for its acknowledgement.
async fn exchange(conn: &mut Conn, body: &[u8], sequence: u64) -> Result<wire::pb::Ack, (&'static str, String)> {
    let io = async {
        wire::write_message(conn, body).await.map_err(|e| ("send", e.to_string()))?;
        let reply = wire::read_message(conn)
            .await
            .map_err(|e| ("receive", e.to_string()))?
            .ok_or(("receive", "connection closed".to_string()))?;
        let ack = wire::decode_ack(&reply).map_err(|e| ("ack", e.to_string()))?;
        if ack.sequence != sequence {
            return Err(("ack", format!("acknowledged {} for {sequence}", ack.sequence)));
        }
        Ok(ack)
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, io).await.map_err(|_| ("timeout", "no acknowledgement".to_string()))?
}

/// Outbox entries combined into one batch at most (a relay's window across its senders);
/// half the smallest outbox bound, so the entry a full outbox folds into is never in flight.
const MERGE_BATCHES: usize = crate::store::MIN_OUTBOX_LIMIT / 2;
/// Summaries in one batch at most (before combining identical RRsets).
const MERGE_DELTAS: usize = 50_000;

/// The oldest outbox entries as one batch: (first, last, deltas), identical RRsets summed.
async fn next_batch(store: &Store) -> Result<Option<(u64, u64, Vec<Delta>)>, String> {
    let store = store.clone();
    let taken = tokio::task::spawn_blocking(move || store.outbox_take(MERGE_BATCHES, MERGE_DELTAS))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (Some(first), Some(last)) = (taken.first().map(|t| t.0), taken.last().map(|t| t.0)) else {
        return Ok(None);
    };
    if taken.len() == 1 {
        return Ok(taken.into_iter().next().map(|(_, d)| (first, last, d)));
    }
    let mut entries = taken.into_iter().map(|(_, d)| d);
    let start = entries.next().unwrap_or_default();
    let deltas = entries.fold(start, |acc, more| crate::store::fold(acc, &more));
    Ok(Some((first, last, deltas)))
}

/// Forwards the outbox until `shutdown` (the batch in flight is finished or abandoned to the
/// next run; it stays in the outbox either way).
pub async fn run(config: ForwardConfig, store: Store, stats: Arc<ForwardStats>, shutdown: CancellationToken) {
    let tls = match crate::tls::client_config(&config.ca, &config.cert, &config.key) {
        Ok(c) => TlsConnector::from(c),
        Err(e) => {
            tracing::error!(error = %e, "forwarding disabled: TLS configuration");
            return;
        }
    };
    let stream = match store.stream_id() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "forwarding disabled: store");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    let mut conn: Option<Conn> = None;
    let mut waiting_since: Option<(u64, Instant)> = None;
    while !shutdown.is_cancelled() {
        stats.outbox_batches.set(store.outbox_len() as i64);
        let batch = match next_batch(&store).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox");
                stats.failures.inc("store");
                None
            }
        };
        let Some((first, sequence, deltas)) = batch else {
            waiting_since = None;
            stats.outbox_age_seconds.set(0);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(IDLE_POLL) => continue,
            }
        };
        let since = match waiting_since {
            Some((s, t)) if s == first => t,
            _ => {
                waiting_since = Some((first, Instant::now()));
                Instant::now()
            }
        };
        stats.outbox_age_seconds.set(since.elapsed().as_secs() as i64);

        let result = async {
            if conn.is_none() {
                conn = Some(connect(&config, &tls).await?);
                tracing::info!(collector = %config.collector, "forwarding connected");
            }
            let body = wire::encode_batch(BatchId { stream, first, sequence }, now_secs(), &deltas);
            stats.batches_sent.inc();
            stats.bytes_sent.add(body.len() as u64);
            let start = Instant::now();
            let ack = exchange(conn.as_mut().expect("connected above"), &body, sequence).await?;
            stats.round_trip.observe(start.elapsed());
            Ok::<_, (&'static str, String)>(ack)
        };
        let outcome = tokio::select! {
            r = result => r,
            _ = shutdown.cancelled() => break,
        };
        match outcome {
            Ok(ack) if ack.status == Status::Ok as i32 || ack.status == Status::Duplicate as i32 => {
                if ack.status == Status::Ok as i32 {
                    stats.batches_acked.inc();
                    stats.summaries_acked.add(deltas.len() as u64);
                } else {
                    stats.batches_duplicate.inc();
                }
                if let Err(e) = store.outbox_remove_through(sequence) {
                    // Sent again later and acknowledged as a duplicate: no double count.
                    tracing::error!(error = %e, sequence, "could not delete an acknowledged batch");
                }
                backoff = BACKOFF_MIN;
            }
            Ok(ack) if ack.applied_through >= first && ack.applied_through < sequence => {
                // Part of the range went through before (an earlier, smaller batch whose ack
                // was lost): drop that part and send the rest at once.
                stats.batches_overlap.inc();
                if let Err(e) = store.outbox_remove_through(ack.applied_through) {
                    tracing::error!(error = %e, "could not delete acknowledged batches");
                }
            }
            Ok(ack) => {
                stats.batches_rejected.inc();
                tracing::error!(sequence, reason = %ack.message, "batch rejected by the next hop; kept, will retry");
                conn = None;
                sleep_or_stop(&shutdown, &mut backoff).await;
            }
            Err((reason, detail)) => {
                stats.failures.inc(reason);
                tracing::warn!(reason, error = %detail, retry_in = ?backoff, "forwarding failed; will retry");
                conn = None;
                sleep_or_stop(&shutdown, &mut backoff).await;
            }
        }
    }
    stats.outbox_batches.set(store.outbox_len() as i64);
}

async fn sleep_or_stop(shutdown: &CancellationToken, backoff: &mut Duration) {
    let wait = backoff.mul_f64(jitter());
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}
