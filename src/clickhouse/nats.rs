//! Optional transport between collectors and ClickHouse: a NATS JetStream work queue.
//!
//! ```text
//! collector: batch -> publish (Nats-Msg-Id = sender/stream/first/last) -> PubAck (stored)
//!            -> Ack OK | DUPLICATE to the sender
//! writer:    durable pull consumer -> Cluster::apply (exactly once) -> ack the message
//! ```
//!
//! The stream is file-backed, bounded (`nats_max_bytes`, new messages refused when full: the
//! collector then refuses the batch and the sender keeps it), and a work queue (a message is
//! deleted once a writer acknowledged it). JetStream drops a message whose id it saw within
//! its duplicate window, so a batch retried through another collector is stored once; a writer
//! killed after applying and before acknowledging gets the message again, and the cluster
//! recognises the batch (its markers and deduplicated blocks).
//!
//! The writer also feeds the live feed: before applying a batch it asks the cluster which of
//! its RRsets (and registrable domains) are new, and publishes one message per new item to
//! a second stream (`{stream}_FEED`, subject `dnsledger.feed`, the newest `FEED_KEEP`
//! messages). Each message's id is the item itself (the RRset key, the domain), so an item
//! announced by a batch whose writer died before applying it, and again by its redelivery or
//! by a later batch holding the same RRset, is stored once (within `FEED_DEDUP`). The API
//! serves `/feed/v1/rrsets` from it, tokens being stream sequences.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{BatchRange, Cluster, ClusterError, Outcome};
use crate::forward::wire;
use crate::metrics::{Counter, Metrics, ReasonCounter, write_metric, write_reasons};
use crate::store::keys::{decode_value, encode_entry, rrset_key};
use crate::store::{Delta, Entry, FeedEntry, FeedItem, FeedRead, StoreError};

const SUBJECT: &str = "dnsledger.batches";
const FEED_SUBJECT: &str = "dnsledger.feed";
/// Feed messages kept (the oldest are dropped past it; a consumer away longer sees a gap).
const FEED_KEEP: i64 = 1_000_000;
const CONSUMER: &str = "clickhouse-writer";
/// A message not acknowledged this long is delivered again.
const ACK_WAIT: Duration = Duration::from_secs(20);
/// How long the feed stream remembers an item's id: an RRset announced as new by a batch
/// whose writer died before applying it, then by another batch (or by the same one delivered
/// again), is published once within this window.
const FEED_DEDUP: Duration = Duration::from_secs(3600);
const VERSION: u8 = 1;
/// Feed publications awaiting their acknowledgement. async-nats lets 5,000 be pending and
/// makes the next publish wait for one to end, and an acknowledgement only ends when it is
/// awaited: sending all of a batch's 6,000 new RRsets before awaiting any hung until the
/// batch's time limit, on every delivery.
const FEED_ACKS_IN_FLIGHT: usize = 1_000;

/// Where the broker is.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    pub url: String,
    pub stream: String,
    pub max_bytes: i64,
}

/// A batch as it travels through the broker: who sent it (from its certificate), whether its
/// summaries' sensor lists are to be trusted (a relay), and the batch as the sender sent it.
pub fn encode(sender: &str, trusted: bool, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + sender.len() + 4);
    out.push(VERSION);
    out.push(u8::from(trusted));
    out.push(sender.len() as u8);
    out.extend_from_slice(sender.as_bytes());
    out.extend_from_slice(body);
    out
}

fn decode(m: &[u8]) -> Option<(String, bool, &[u8])> {
    let (&version, rest) = m.split_first()?;
    let (&trusted, rest) = rest.split_first()?;
    let (&n, rest) = rest.split_first()?;
    if version != VERSION || rest.len() < n as usize {
        return None;
    }
    let sender = String::from_utf8(rest[..n as usize].to_vec()).ok()?;
    Some((sender, trusted == 1, &rest[n as usize..]))
}

/// The message id JetStream deduplicates on.
pub fn message_id(b: &BatchRange) -> String {
    format!("{}/{}/{}/{}", b.sender, b.stream, b.first, b.last)
}

/// A connection to the stream, creating it if needed.
pub async fn connect(config: &NatsConfig) -> Result<jetstream::Context, ClusterError> {
    let client = async_nats::connect(&config.url).await.map_err(|e| ClusterError::Other(format!("nats: {e}")))?;
    let js = jetstream::new(client);
    js.get_or_create_stream(stream::Config {
        name: config.stream.clone(),
        subjects: vec![SUBJECT.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_bytes: config.max_bytes,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::Other(format!("nats stream {}: {e}", config.stream)))?;
    js.get_or_create_stream(stream::Config {
        name: feed_stream(config),
        subjects: vec![FEED_SUBJECT.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_messages: FEED_KEEP,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: FEED_DEDUP,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::Other(format!("nats stream {}: {e}", feed_stream(config))))?;
    Ok(js)
}

fn feed_stream(config: &NatsConfig) -> String {
    format!("{}_FEED", config.stream)
}

fn encode_item(item: &FeedItem) -> Vec<u8> {
    match item {
        FeedItem::Rrset(e) => [&b"R"[..], &encode_entry(e)].concat(),
        FeedItem::Domain { name, first } => [&b"D"[..], &first.to_be_bytes(), name.as_bytes()].concat(),
    }
}

fn decode_item(m: &[u8]) -> Option<FeedItem> {
    match m.split_first()? {
        (b'R', v) => decode_value(v).map(FeedItem::Rrset),
        (b'D', v) if v.len() >= 8 => Some(FeedItem::Domain {
            first: u64::from_be_bytes(v[..8].try_into().ok()?),
            name: String::from_utf8(v[8..].to_vec()).ok()?,
        }),
        _ => None,
    }
}

/// What a batch adds to the feed: its RRsets the cluster does not hold yet, then the
/// registrable domains it has not seen (with the earliest first-seen among their RRsets).
async fn novelties(cluster: &Cluster, deltas: &[Delta]) -> Result<Vec<FeedItem>, StoreError> {
    let positive: Vec<&Delta> = deltas.iter().filter(|d| d.kind == crate::sensor::Kind::Positive).collect();
    let keys: Vec<Vec<u8>> = positive.iter().map(|d| rrset_key(&d.rrset)).collect();
    let existing = cluster.existing_keys(&keys).await?;
    let mut items = Vec::new();
    let mut domains: std::collections::BTreeMap<String, u64> = Default::default();
    for (d, k) in positive.iter().zip(&keys) {
        if existing.contains(k) {
            continue;
        }
        let e =
            Entry { rrset: d.rrset.clone(), first: d.first, last: d.last, count: d.count, sensors: d.sensors.clone() };
        items.push(FeedItem::Rrset(e));
        if let Some(domain) = cluster.registrable(&d.rrset.rrname) {
            let first = domains.entry(domain).or_insert(d.first);
            *first = (*first).min(d.first);
        }
    }
    let names: Vec<String> = domains.keys().cloned().collect();
    let seen = cluster.existing_domains(&names).await?;
    items.extend(
        domains.into_iter().filter(|(n, _)| !seen.contains(n)).map(|(name, first)| FeedItem::Domain { name, first }),
    );
    Ok(items)
}

/// The feed as the API reads it: the last token, and entries after a token.
pub struct Feed {
    js: jetstream::Context,
    stream: String,
}

impl Feed {
    pub async fn connect(config: &NatsConfig) -> Result<Self, ClusterError> {
        Ok(Self { js: connect(config).await?, stream: feed_stream(config) })
    }

    async fn state(&self) -> Result<(jetstream::stream::Stream, u64, u64), StoreError> {
        let s = self.js.get_stream(&self.stream).await.map_err(|e| StoreError::Backend(format!("nats feed: {e}")))?;
        let (first, last) = (s.cached_info().state.first_sequence, s.cached_info().state.last_sequence);
        Ok((s, first, last))
    }

    /// The newest token.
    pub async fn durable(&self) -> Result<u64, StoreError> {
        Ok(self.state().await?.2)
    }

    /// Up to `max` entries after `after` that `keep` admits (see `Store::feed_read`).
    pub async fn read(&self, after: u64, max: usize, keep: impl Fn(&FeedItem) -> bool) -> Result<FeedRead, StoreError> {
        let (stream, oldest, last) = self.state().await?;
        let mut read = FeedRead { entries: Vec::new(), through: after, oldest: oldest.max(1) };
        let mut seq = after.max(oldest.saturating_sub(1));
        while seq < last && read.entries.len() < max {
            seq += 1;
            let m = match stream.get_raw_message(seq).await {
                Ok(m) => m,
                // Dropped between the state and now (the oldest go first).
                Err(_) => continue,
            };
            read.through = seq;
            match decode_item(&m.payload) {
                Some(item) if keep(&item) => read.entries.push(FeedEntry { seq, item }),
                Some(_) => {}
                None => tracing::warn!(seq, "nats feed: not a feed entry; skipped"),
            }
        }
        Ok(read)
    }
}

/// Stores a batch in the stream; `Duplicate` if JetStream had it already.
pub async fn publish(
    js: &jetstream::Context,
    b: BatchRange<'_>,
    trusted: bool,
    body: &[u8],
) -> Result<Outcome, ClusterError> {
    let publish = jetstream::message::PublishMessage::build()
        .message_id(message_id(&b))
        .payload(encode(b.sender, trusted, body).into());
    let ack = js
        .send_publish(SUBJECT, publish)
        .await
        .map_err(|e| ClusterError::Other(format!("nats publish: {e}")))?
        .await
        .map_err(|e| ClusterError::Other(format!("nats publish: {e}")))?;
    Ok(if ack.duplicate { Outcome::Duplicate } else { Outcome::Applied })
}

/// Writer counters (Prometheus prefix `dnsledger_writer_`).
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches_applied: Counter,
    pub batches_duplicate: Counter,
    pub summaries_applied: Counter,
    /// Messages not applied, by reason (`decode`: dropped; `cluster`, `feed`, `timeout`:
    /// delivered again later).
    pub failures: ReasonCounter,
}

impl Metrics for WriterStats {
    fn render(&self, out: &mut String) {
        let p = "dnsledger_writer";
        write_metric(
            out,
            &format!("{p}_batches_applied_total"),
            "counter",
            "Batches applied to the cluster.",
            self.batches_applied.get(),
        );
        write_metric(
            out,
            &format!("{p}_batches_duplicate_total"),
            "counter",
            "Batches the cluster had already (redeliveries).",
            self.batches_duplicate.get(),
        );
        write_metric(
            out,
            &format!("{p}_summaries_applied_total"),
            "counter",
            "Summaries applied.",
            self.summaries_applied.get(),
        );
        write_reasons(
            out,
            &format!("{p}_failures_total"),
            "Messages not applied, by reason.",
            "reason",
            &self.failures,
        );
    }
}

/// Applies the stream's batches to the cluster until `shutdown`; a message is acknowledged only
/// after its batch is in the cluster.
pub async fn write(
    config: NatsConfig,
    cluster: Arc<Cluster>,
    stats: Arc<WriterStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let js = connect(&config).await?;
    let stream = js.get_stream(&config.stream).await.map_err(|e| anyhow::anyhow!("nats stream: {e}"))?;
    let mut consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: 64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("nats consumer: {e}"))?;
    tracing::info!(stream = %config.stream, "writer consuming");
    let mut idle_since = std::time::Instant::now();
    loop {
        // One short pull request at a time (16 messages, 2 s): nothing outlives a writer that
        // dies, so what it held is redelivered to the next one after `ack_wait`.
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            b = consumer.batch().max_messages(16).expires(Duration::from_secs(2)).messages() => b,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "nats: pull failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut got = 0;
        // Every wait is bounded: a pull that never ends, or a batch the cluster never answers
        // for, is given up on (the message, not acknowledged, comes again after `ack_wait`).
        loop {
            let message = match tokio::time::timeout(Duration::from_secs(10), batch.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("nats: a pull request stalled; pulling again");
                    break;
                }
            };
            match message {
                Ok(m) => {
                    got += 1;
                    let limit = Duration::from_secs(2 * cluster.config().timeout_secs);
                    // While a batch is worked on, JetStream is told so every ACK_WAIT / 2: a batch
                    // that takes longer than ACK_WAIT is not delivered to another writer meanwhile
                    // (harmless, it is recognised, but it doubles the load on a cluster that is
                    // slow already).
                    let work = tokio::time::timeout(limit, handle(&m, &js, &cluster, &stats));
                    tokio::pin!(work);
                    let mut progress =
                        tokio::time::interval_at(tokio::time::Instant::now() + ACK_WAIT / 2, ACK_WAIT / 2);
                    let done = loop {
                        tokio::select! {
                            done = &mut work => break done,
                            _ = progress.tick() => {
                                let _ = m.ack_with(jetstream::AckKind::Progress).await;
                            }
                        }
                    };
                    if done.is_err() {
                        stats.failures.inc("timeout");
                        tracing::warn!(?limit, "a batch took too long; it will be delivered again");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "nats: receive failed");
                    break;
                }
            }
        }
        if got > 0 {
            idle_since = std::time::Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(30) {
            idle_since = std::time::Instant::now();
            if let Ok(info) = consumer.info().await {
                tracing::info!(
                    pending = info.num_pending,
                    ack_pending = info.num_ack_pending,
                    redelivered = info.num_redelivered,
                    "writer idle"
                );
            }
        }
    }
}

/// Applies one message's batch and acknowledges it, or leaves it to be delivered again.
async fn handle(message: &jetstream::Message, js: &jetstream::Context, cluster: &Cluster, stats: &WriterStats) {
    let Some((sender, trusted, body)) = decode(&message.payload) else {
        stats.failures.inc("decode");
        tracing::error!("nats: a message that is not a dnsledger batch; dropped");
        let _ = message.ack_with(jetstream::AckKind::Term).await;
        return;
    };
    let (id, deltas) = match wire::decode_batch(body) {
        Ok(b) => b,
        Err(e) => {
            stats.failures.inc("decode");
            tracing::error!(sender, error = %e, "nats: undecodable batch; dropped");
            let _ = message.ack_with(jetstream::AckKind::Term).await;
            return;
        }
    };
    let deltas = crate::store::attribute(&deltas, &sender, trusted);
    let range = BatchRange { sender: &sender, stream: id.stream, first: id.first, last: id.sequence };
    // The feed first: what is new is only known before the batch is applied. Published
    // again on a redelivery, with the same ids, it is dropped as a duplicate.
    if let Err(e) = feed(js, cluster, &deltas).await {
        stats.failures.inc("feed");
        tracing::warn!(sender, error = %e, "feed not published; the batch will be delivered again");
        let _ = message.ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(2)))).await;
        return;
    }
    tracing::debug!(sender, first = range.first, last = range.last, "feed published");
    match cluster.apply(range, &deltas).await {
        Ok(outcome) => {
            tracing::debug!(sender, first = range.first, last = range.last, ?outcome, "batch applied");
            if outcome == Outcome::Applied {
                stats.batches_applied.inc();
                stats.summaries_applied.add(deltas.len() as u64);
            } else {
                stats.batches_duplicate.inc();
            }
            // If this ack is lost the message comes again and is recognised.
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, "nats: ack failed; the batch will be delivered again");
            }
        }
        Err(e) => {
            stats.failures.inc("cluster");
            tracing::warn!(sender, error = %e, "cluster unavailable; the batch will be delivered again");
            let _ = message.ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(2)))).await;
        }
    }
}

/// Publishes a batch's new RRsets and domains to the feed stream and waits until stored.
async fn feed(js: &jetstream::Context, cluster: &Cluster, deltas: &[Delta]) -> anyhow::Result<()> {
    let items = novelties(cluster, deltas).await?;
    tracing::debug!(new = items.len(), "novelties found");
    let mut acks = std::collections::VecDeque::with_capacity(FEED_ACKS_IN_FLIGHT);
    for item in &items {
        if acks.len() == FEED_ACKS_IN_FLIGHT
            && let Some(oldest) = acks.pop_front()
        {
            oldest.await?;
        }
        let id = match item {
            FeedItem::Rrset(e) => format!("rrset/{}", crate::api::request::hex(&rrset_key(&e.rrset))),
            FeedItem::Domain { name, .. } => format!("domain/{name}"),
        };
        let publish = jetstream::message::PublishMessage::build().message_id(id).payload(encode_item(item).into());
        acks.push_back(js.send_publish(FEED_SUBJECT, publish).await?);
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let m = encode("sensor-a", true, b"\x28\xb5batch");
        assert_eq!(decode(&m), Some(("sensor-a".to_string(), true, &b"\x28\xb5batch"[..])));
        assert_eq!(decode(&[2, 0, 0]), None);
        assert_eq!(decode(&[VERSION, 0, 9, b'x']), None);
        assert_eq!(message_id(&BatchRange { sender: "s", stream: 1, first: 2, last: 3 }), "s/1/2/3");
        let d = FeedItem::Domain { name: "example.com.".into(), first: 9 };
        assert_eq!(decode_item(&encode_item(&d)), Some(d));
        assert_eq!(decode_item(b"X"), None);
    }
}
