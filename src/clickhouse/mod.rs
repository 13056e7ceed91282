//! The collector's database on a ClickHouse cluster, beside the embedded sled store.
//!
//! Writing (a collector applying a sender's batch):
//!
//! ```text
//! batch (sender, stream, first..seq) -> rows by shard (registrable domain of the owner)
//!   -> per shard, per target (landing, rrsets_in, index_in): marker row present? skip
//!      : INSERT the shard's rows + a marker row, one deterministic block
//! ```
//!
//! Exactly once, with any number of stateless collectors: a batch's rows for one shard and
//! one target table are one INSERT block whose bytes depend only on the batch (rows sorted by
//! key, plus a marker row keyed by sender, stream and sequence range), and every target is a
//! `Replicated*MergeTree`, whose block deduplication (through ZooKeeper/Keeper) drops a block
//! it has stored already. Two collectors applying the same retried batch at the same time, or
//! one collector retrying after another died between its INSERTs and its acknowledgement,
//! write identical blocks: one is kept. Retries later than the deduplication window (the last
//! `dedup_window` blocks of a table) find the marker row, written in the same block as the
//! data, and skip that table. Senders retry a batch with the same range and content
//! (`forward`'s pinned in-flight range), which is what makes the block identical. The full
//! argument is in docs/CLICKHOUSE.md.
//!
//! Reading: [`crate::store::Ordered`] over the `Distributed` tables, in the sled store's key
//! order, so the query API's walks, paging and cursors are the same code on both backends.

pub mod nats;
mod read;
pub mod schema;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::psl::SuffixList;
use crate::store::keys::rrset_key;
use crate::store::{Delta, index_keys};

/// The `[clickhouse]` table of a collector's (or `dnsledger api`'s) configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// One HTTP URL per shard, in the order of the cluster's shards in `remote_servers`.
    pub shards: Vec<String>,
    /// The cluster name in `remote_servers` (for the `Distributed` tables).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// Replicated tables live at `{zookeeper_path}/{database}/s{N}/{table}`; the replica name
    /// is the server's `{replica}` macro.
    #[serde(default = "default_zk")]
    pub zookeeper_path: String,
    /// Blocks per table whose identity ZooKeeper keeps for deduplication.
    #[serde(default = "default_window")]
    pub dedup_window: u64,
    /// The CA (PEM) that `https://` shard URLs must present a certificate of.
    pub ca: Option<PathBuf>,
    /// Seconds an INSERT or a query may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The Public Suffix List that decides shards (every collector must use the same one);
    /// Debian's by default.
    pub public_suffix_list: Option<PathBuf>,
    /// Through NATS JetStream: collectors store batches in this broker's stream and
    /// `dnsledger clickhouse writer` applies them to the cluster.
    pub nats: Option<String>,
    #[serde(default = "default_nats_stream")]
    pub nats_stream: String,
    /// Bytes the stream may hold; past it collectors refuse batches (senders keep them).
    #[serde(default = "default_nats_max_bytes")]
    pub nats_max_bytes: i64,
}

fn default_nats_stream() -> String {
    "DNSLEDGER".into()
}
fn default_nats_max_bytes() -> i64 {
    1 << 30
}

fn default_cluster() -> String {
    "dnsledger".into()
}
fn default_database() -> String {
    "dnsledger".into()
}
fn default_user() -> String {
    "default".into()
}
fn default_zk() -> String {
    "/clickhouse/dnsledger".into()
}
fn default_window() -> u64 {
    10_000
}
fn default_timeout() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    clickhouse: ClickHouseConfig,
}

impl ClickHouseConfig {
    /// Parses a file with a `[clickhouse]` table; every problem in one error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let c = toml::from_str::<File>(text).map_err(|e| e.to_string())?.clickhouse;
        let mut problems = Vec::new();
        if c.shards.is_empty() {
            problems.push("shards: at least one URL".to_string());
        }
        for u in &c.shards {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                problems.push(format!("shards: {u:?} is not an http:// or https:// URL"));
            }
        }
        for (name, v) in [("database", &c.database), ("cluster", &c.cluster)] {
            if v.is_empty() || !v.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                problems.push(format!("{name}: {v:?}: letters, digits and _ only"));
            }
        }
        if !c.zookeeper_path.starts_with('/') || c.zookeeper_path.contains(['\'', '\\']) {
            problems.push(format!("zookeeper_path: {:?} must start with / (no quotes)", c.zookeeper_path));
        }
        if c.dedup_window < 100 {
            problems.push("dedup_window: at least 100".into());
        }
        if let Some(u) = &c.nats
            && !u.starts_with("nats://")
        {
            problems.push(format!("nats: {u:?} is not a nats:// URL"));
        }
        if c.nats_stream.is_empty()
            || !c.nats_stream.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            problems.push(format!("nats_stream: {:?}: letters, digits, _ and - only", c.nats_stream));
        }
        if c.nats_max_bytes < 1 << 20 {
            problems.push("nats_max_bytes: at least 1048576".into());
        }
        if c.timeout_secs == 0 {
            problems.push("timeout_secs: at least 1".into());
        }
        if c.shards.iter().any(|u| u.starts_with("https://")) && c.ca.is_none() {
            problems.push("ca: https:// shard URLs need the CA (PEM) their certificates chain to".into());
        }
        if problems.is_empty() { Ok(c) } else { Err(problems.join("; ")) }
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// Errors talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("clickhouse shard {shard} ({url}): {source}")]
    Shard { shard: usize, url: String, source: clickhouse::error::Error },
    #[error("clickhouse shard {shard} ({url}): INSERT into {table}: {message}")]
    Insert { shard: usize, url: String, table: String, message: String },
    #[error("clickhouse: {0}")]
    Other(String),
}

/// A connection to every shard of the cluster.
pub struct Cluster {
    config: ClickHouseConfig,
    shards: Vec<clickhouse::Client>,
    /// INSERTs go their own way (see [`wire`]).
    inserters: Vec<wire::Inserter>,
    psl: SuffixList,
    /// For blocking reads from the API's walker threads.
    handle: tokio::runtime::Handle,
    /// The live feed's stream (with NATS), connected when first read.
    feed: tokio::sync::OnceCell<nats::Feed>,
}

/// One row of a batch as every target table takes it (`index_in` takes only `idx`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRow {
    pub sensor: String,
    pub stream: u64,
    pub first_seq: u64,
    pub seq: u64,
    pub key: Vec<u8>,
    pub rrname: String,
    pub rrtype: u16,
    pub bailiwick: String,
    pub rdata: Vec<String>,
    pub negative: u8,
    pub time_first: u64,
    pub time_last: u64,
    pub count: u64,
    pub sensors: Vec<String>,
}

#[derive(Clone, Debug)]
struct IndexRow {
    idx: Vec<serde_bytes::ByteBuf>,
}

#[derive(Clone, Debug)]
struct DomainRow {
    domain: String,
    first: u64,
}

/// A [`BatchRow`] borrowed, as `apply` encodes it from a delta (no copies of the RRset).
struct RowRef<'a, S> {
    b: BatchRange<'a>,
    key: &'a [u8],
    rrname: &'a str,
    rrtype: u16,
    bailiwick: &'a str,
    rdata: &'a [String],
    negative: u8,
    time_first: u64,
    time_last: u64,
    count: u64,
    sensors: &'a [S],
}

impl<S: AsRef<[u8]>> wire::RowBinary for RowRef<'_, S> {
    fn put(&self, out: &mut Vec<u8>) {
        wire::put_bytes(out, self.b.sender.as_bytes());
        for n in [self.b.stream, self.b.first, self.b.last] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        wire::put_bytes(out, self.key);
        wire::put_bytes(out, self.rrname.as_bytes());
        out.extend_from_slice(&self.rrtype.to_le_bytes());
        wire::put_bytes(out, self.bailiwick.as_bytes());
        wire::put_strings(out, self.rdata);
        out.push(self.negative);
        for n in [self.time_first, self.time_last, self.count] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        wire::put_strings(out, self.sensors);
    }
}

impl wire::RowBinary for BatchRow {
    fn put(&self, out: &mut Vec<u8>) {
        let b = BatchRange { sender: &self.sensor, stream: self.stream, first: self.first_seq, last: self.seq };
        RowRef {
            b,
            key: &self.key,
            rrname: &self.rrname,
            rrtype: self.rrtype,
            bailiwick: &self.bailiwick,
            rdata: &self.rdata,
            negative: self.negative,
            time_first: self.time_first,
            time_last: self.time_last,
            count: self.count,
            sensors: &self.sensors,
        }
        .put(out)
    }
}

/// The size at which a batch's index rows for one shard go into another INSERT.
const INDEX_CHUNK: usize = 16 << 20;

/// One shard's part of a batch, each table's rows in RowBinary.
#[derive(Default)]
struct ShardPart {
    landing: Vec<u8>,
    rrsets: Vec<u8>,
    /// In INSERTs of about [`INDEX_CHUNK`] bytes; the marker row ends the last one.
    index: Vec<Vec<u8>>,
    domains: Vec<u8>,
}

impl wire::RowBinary for IndexRow {
    fn put(&self, out: &mut Vec<u8>) {
        wire::put_strings(out, &self.idx);
    }
}

impl wire::RowBinary for DomainRow {
    fn put(&self, out: &mut Vec<u8>) {
        wire::put_bytes(out, self.domain.as_bytes());
        out.extend_from_slice(&self.first.to_le_bytes());
    }
}

/// A batch's identity: who sent it and which sequence numbers of which stream it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRange<'a> {
    pub sender: &'a str,
    pub stream: u64,
    pub first: u64,
    pub last: u64,
}

/// What applying a batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written now (at least one table of one shard lacked it).
    Applied,
    /// Every table of every shard had it already.
    Duplicate,
}

/// The marker key of a batch: 0xFF, sender, 0x00, stream, first, last (never an RRset key).
pub fn marker(b: &BatchRange) -> Vec<u8> {
    let mut k = vec![0xff];
    k.extend_from_slice(b.sender.as_bytes());
    k.push(0);
    for n in [b.stream, b.first, b.last] {
        k.extend_from_slice(&n.to_be_bytes());
    }
    k
}

/// A byte string as a ClickHouse string literal.
pub(crate) fn literal(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('\'');
    for &b in bytes {
        match b {
            // `?` is the client's bind placeholder, even inside a literal.
            b'?' => s.push_str("\\x3F"),
            b'\'' | b'\\' => {
                s.push('\\');
                s.push(b as char);
            }
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02X}")),
        }
    }
    s.push('\'');
    s
}

/// Stable FNV-1a (shard choice must never change between versions).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

impl Cluster {
    /// Clients for every shard (no connection is made yet). Call from within the runtime.
    pub fn new(config: ClickHouseConfig) -> anyhow::Result<Self> {
        let psl = SuffixList::load(config.public_suffix_list.as_deref())
            .map_err(|e| anyhow::anyhow!("public_suffix_list {:?}: {e}", config.public_suffix_list))?;
        let timeout = Duration::from_secs(config.timeout_secs);
        let tls = match &config.ca {
            Some(ca) => Some(crate::tls::client_config_anonymous(ca).map_err(|e| anyhow::anyhow!("ca: {e}"))?),
            None => None,
        };
        let shards = config
            .shards
            .iter()
            .map(|url| {
                let client = match &tls {
                    // HTTPS with our CA (and plain HTTP for http:// URLs), HTTP/1.1.
                    Some(tls) => {
                        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                        http.enforce_http(false);
                        http.set_keepalive(Some(Duration::from_secs(60)));
                        let https = hyper_rustls::HttpsConnectorBuilder::new()
                            .with_tls_config((**tls).clone())
                            .https_or_http()
                            .enable_http1()
                            .wrap_connector(http);
                        let pool = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                            .pool_idle_timeout(Duration::from_secs(2))
                            .build(https);
                        clickhouse::Client::with_http_client(pool)
                    }
                    None => clickhouse::Client::default(),
                };
                client
                    .with_url(url)
                    .with_user(&config.user)
                    .with_password(&config.password)
                    .with_option("max_execution_time", config.timeout_secs.to_string())
                    .with_option("max_query_size", (16 << 20).to_string())
                    .with_option("output_format_json_quote_64bit_integers", "0")
                    .with_option("send_timeout", timeout.as_secs().to_string())
                    .with_option("receive_timeout", timeout.as_secs().to_string())
            })
            .collect();
        let settings = [
            ("max_execution_time", config.timeout_secs.to_string()),
            ("insert_deduplicate", "1".to_string()),
            ("send_timeout", timeout.as_secs().to_string()),
            ("receive_timeout", timeout.as_secs().to_string()),
        ];
        let inserters = config
            .shards
            .iter()
            .map(|url| wire::Inserter::new(url, &config.user, &config.password, &settings, tls.as_deref(), timeout))
            .collect();
        Ok(Self { config, shards, inserters, psl, handle: tokio::runtime::Handle::current(), feed: Default::default() })
    }

    pub fn config(&self) -> &ClickHouseConfig {
        &self.config
    }

    /// The broker between collectors and writers, if configured.
    pub fn nats(&self) -> Option<nats::NatsConfig> {
        self.config.nats.as_ref().map(|url| nats::NatsConfig {
            url: url.clone(),
            stream: self.config.nats_stream.clone(),
            max_bytes: self.config.nats_max_bytes,
        })
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn err(&self, shard: usize, source: clickhouse::error::Error) -> ClusterError {
        ClusterError::Shard { shard: shard + 1, url: self.config.shards[shard].clone(), source }
    }

    /// Creates the database, tables and views on every shard (idempotent).
    pub async fn init(&self) -> Result<(), ClusterError> {
        let c = &self.config;
        for (i, client) in self.shards.iter().enumerate() {
            let zk = format!("{}/{}/s{}", c.zookeeper_path, c.database, i + 1);
            for sql in schema::statements(&c.database, &c.cluster, &zk, c.dedup_window) {
                client.query(&sql).execute().await.map_err(|e| self.err(i, e))?;
            }
        }
        Ok(())
    }

    /// Adds the index positions that a cluster written before they existed lacks (`G`:
    /// forward rdata target names, `V`: other rdata by digest), shard by shard, reading each
    /// shard's RRsets in pages of 10,000 keys. Idempotent: a position written twice is one
    /// position. Returns how many positions were written.
    pub async fn reindex(&self) -> Result<u64, ClusterError> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Stored {
            #[serde(with = "serde_bytes")]
            key: Vec<u8>,
            rrname: String,
            rrtype: u16,
            bailiwick: String,
            rdata: Vec<String>,
        }
        const PAGE: usize = 10_000;
        let db = &self.config.database;
        let mut written = 0u64;
        for (shard, client) in self.shards.iter().enumerate() {
            let mut after: Vec<u8> = Vec::new();
            loop {
                let sql = format!(
                    "SELECT key, any(rrname) AS rrname, any(rrtype) AS rrtype, any(bailiwick) AS bailiwick, \
                     any(rdata) AS rdata FROM {db}.rrsets WHERE key > {} AND key < '\\xFF' \
                     GROUP BY key ORDER BY key LIMIT {PAGE}",
                    literal(&after)
                );
                let rows: Vec<Stored> = client.query(&sql).fetch_all().await.map_err(|e| self.err(shard, e))?;
                let Some(last) = rows.last() else { break };
                after = last.key.clone();
                let idx: Vec<IndexRow> = rows
                    .iter()
                    .filter_map(|r| {
                        let rrset = crate::sensor::Rrset {
                            rrname: r.rrname.clone(),
                            rrtype: r.rrtype,
                            bailiwick: r.bailiwick.clone(),
                            rdata: r.rdata.clone(),
                        };
                        let positions: Vec<serde_bytes::ByteBuf> = index_keys(&rrset, &r.key)
                            .into_iter()
                            .filter(|k| [crate::store::TAG_BY_TARGET_FWD, crate::store::TAG_BY_VALUE].contains(&k[0]))
                            .map(serde_bytes::ByteBuf::from)
                            .collect();
                        (!positions.is_empty()).then_some(IndexRow { idx: positions })
                    })
                    .collect();
                if !idx.is_empty() {
                    self.insert(shard, "index_in", &wire::rows(&idx)).await?;
                    written += idx.iter().map(|r| r.idx.len() as u64).sum::<u64>();
                }
                if rows.len() < PAGE {
                    break;
                }
            }
            tracing::info!(shard = shard + 1, positions = written, "reindex: shard done");
        }
        Ok(written)
    }

    /// The shard that holds an owner name: by its registrable domain (the name itself when
    /// it has none), so a zone's subtree stays on one shard.
    pub fn shard_of(&self, rrname: &str) -> usize {
        self.shard_of_domain(&self.domain_of(rrname))
    }

    /// The shard of a registrable domain (or of a name that has none), as [`Cluster::domain_of`]
    /// gives it.
    fn shard_of_domain(&self, domain: &str) -> usize {
        (fnv1a(domain.as_bytes()) % self.shards.len() as u64) as usize
    }

    /// The registrable domain of an owner name (the name itself when it has none).
    pub fn domain_of(&self, rrname: &str) -> String {
        self.registrable(rrname).unwrap_or_else(|| format!("{}.", rrname.trim_end_matches('.')))
    }

    /// The registrable domain of an owner name, if it has one (not a public suffix itself).
    pub fn registrable(&self, rrname: &str) -> Option<String> {
        self.psl.registrable(rrname)
    }

    /// Applies one batch exactly once (see the module docs). `deltas` are attributed already
    /// (their `sensors` are who is behind them).
    pub async fn apply(&self, b: BatchRange<'_>, deltas: &[Delta]) -> Result<Outcome, ClusterError> {
        let (mark, parts) = self.parts(b, deltas);
        let tasks = parts.into_iter().enumerate().map(|(shard, part)| self.apply_shard(shard, b, mark.clone(), part));
        let results = futures_util::future::join_all(tasks).await;
        let mut applied = false;
        for r in results {
            applied |= r?;
        }
        Ok(if applied { Outcome::Applied } else { Outcome::Duplicate })
    }

    /// A batch's marker, and its rows for each shard as the INSERTs carry them.
    fn parts(&self, b: BatchRange<'_>, deltas: &[Delta]) -> (Vec<u8>, Vec<ShardPart>) {
        struct Item<'d> {
            shard: usize,
            negative: bool,
            key: Vec<u8>,
            delta: &'d Delta,
        }
        let n = self.shards.len();
        let mut items = Vec::with_capacity(deltas.len());
        let mut index: Vec<Vec<IndexRow>> = vec![Vec::new(); n];
        let mut domains: Vec<std::collections::BTreeMap<String, u64>> = vec![Default::default(); n];
        for d in deltas {
            let key = rrset_key(&d.rrset);
            let registrable = self.registrable(&d.rrset.rrname);
            let shard = match &registrable {
                Some(domain) => self.shard_of_domain(domain),
                None => self.shard_of_domain(&format!("{}.", d.rrset.rrname.trim_end_matches('.'))),
            };
            let negative = d.kind != crate::sensor::Kind::Positive;
            if !negative {
                let idx = index_keys(&d.rrset, &key).into_iter().map(serde_bytes::ByteBuf::from).collect();
                index[shard].push(IndexRow { idx });
                if let Some(domain) = registrable {
                    let first = domains[shard].entry(domain).or_insert(d.first);
                    *first = (*first).min(d.first);
                }
            }
            items.push(Item { shard, negative, key, delta: d });
        }
        // Deterministic blocks: each shard's rows sorted (stable: equal keys keep the batch's
        // order), positive ones first, the marker last.
        items.sort_by(|x, y| (x.shard, x.negative, &x.key).cmp(&(y.shard, y.negative, &y.key)));
        let mark = marker(&b);
        let mut marker_row = Vec::new();
        let empty = RowRef::<&str> {
            b,
            key: &mark,
            rrname: "",
            rrtype: 0,
            bailiwick: "",
            rdata: &[],
            negative: 0,
            time_first: 0,
            time_last: 0,
            count: 0,
            sensors: &[],
        };
        wire::RowBinary::put(&empty, &mut marker_row);
        let mut parts: Vec<ShardPart> = (0..n).map(|_| ShardPart::default()).collect();
        let mut at = 0;
        for (shard, part) in parts.iter_mut().enumerate() {
            let end = at + items[at..].iter().take_while(|i| i.shard == shard).count();
            part.landing.reserve((end - at) * 192 + marker_row.len());
            let mut positive_end = 0;
            for it in &items[at..end] {
                let d = it.delta;
                let mut sensors: Vec<&str> = d.sensors.iter().map(String::as_str).collect();
                sensors.sort_unstable();
                sensors.dedup();
                let row = RowRef {
                    b,
                    key: &it.key,
                    rrname: &d.rrset.rrname,
                    rrtype: d.rrset.rrtype,
                    bailiwick: &d.rrset.bailiwick,
                    rdata: &d.rrset.rdata,
                    negative: u8::from(it.negative),
                    time_first: d.first,
                    time_last: d.last,
                    count: d.count,
                    sensors: &sensors,
                };
                wire::RowBinary::put(&row, &mut part.landing);
                if !it.negative {
                    positive_end = part.landing.len();
                }
            }
            at = end;
            part.rrsets.reserve(positive_end + marker_row.len());
            part.rrsets.extend_from_slice(&part.landing[..positive_end]);
            part.rrsets.extend_from_slice(&marker_row);
            part.landing.extend_from_slice(&marker_row);
        }
        for ((part, mut index), domains) in parts.iter_mut().zip(index).zip(domains) {
            index.sort_by(|x, y| x.idx.cmp(&y.idx));
            index.push(IndexRow { idx: vec![serde_bytes::ByteBuf::from(mark.clone())] });
            // The index in INSERTs of about INDEX_CHUNK bytes, the marker in the last: an RRset's
            // index rows carry its key once per rdata item, so a batch's index can be many times
            // the batch. Unlike counts, positions may be written twice (rdata_index is a set),
            // so a collector dying between these INSERTs costs nothing.
            let mut chunk = Vec::new();
            for row in &index {
                wire::RowBinary::put(row, &mut chunk);
                if chunk.len() >= INDEX_CHUNK {
                    part.index.push(std::mem::take(&mut chunk));
                }
            }
            if !chunk.is_empty() {
                part.index.push(chunk);
            }
            part.domains = wire::rows(domains.into_iter().map(|(domain, first)| DomainRow { domain, first }));
        }
        (mark, parts)
    }

    /// One shard's part of a batch; `true` if anything was written.
    async fn apply_shard(
        &self,
        shard: usize,
        b: BatchRange<'_>,
        mark: Vec<u8>,
        part: ShardPart,
    ) -> Result<bool, ClusterError> {
        let client = &self.shards[shard];
        let db = &self.config.database;
        let m = literal(&mark);
        let sender = literal(b.sender.as_bytes());
        let sql = format!(
            "SELECT (SELECT count() FROM {db}.landing WHERE sensor = {sender} AND stream = {} AND seq = {} AND key = {m}), \
             (SELECT count() FROM {db}.rrsets WHERE key = {m}), (SELECT count() FROM {db}.rdata_index WHERE pos = {m})",
            b.stream, b.last
        );
        let limit = Duration::from_secs(self.config.timeout_secs);
        let (landing, rrsets, index) = tokio::time::timeout(limit, client.query(&sql).fetch_one::<(u64, u64, u64)>())
            .await
            .map_err(|_| ClusterError::Other(format!("clickhouse shard {}: no answer in {limit:?}", shard + 1)))?
            .map_err(|e| self.err(shard, e))?;
        tracing::debug!(shard = shard + 1, stream = b.stream, last = b.last, landing, rrsets, index, "markers present");
        let mut wrote = false;
        // Domains (first seen is a min: writing it twice changes nothing) go first, so that a
        // batch whose markers are all present has its domains too.
        if (landing == 0 || rrsets == 0 || index == 0) && !part.domains.is_empty() {
            self.insert(shard, "domains_in", &part.domains).await?;
        }
        // The views' targets first, the landing table (the audit trail) last.
        if rrsets == 0 {
            self.insert(shard, "rrsets_in", &part.rrsets).await?;
            wrote = true;
        }
        if index == 0 {
            for chunk in &part.index {
                self.insert(shard, "index_in", chunk).await?;
            }
            wrote = true;
        }
        if landing == 0 {
            self.insert(shard, "landing", &part.landing).await?;
            wrote = true;
        }
        Ok(wrote)
    }

    /// One INSERT of `rows` (RowBinary) into `table` on `shard`: one block (what deduplication
    /// compares), all of it committed or none (see [`wire`]).
    async fn insert(&self, shard: usize, table: &str, rows: &[u8]) -> Result<(), ClusterError> {
        let fail = |message: String| ClusterError::Insert {
            shard: shard + 1,
            url: self.config.shards[shard].clone(),
            table: table.to_string(),
            message,
        };
        let body = wire::block(rows).map_err(fail)?;
        self.inserters[shard].insert(&format!("{}.{table}", self.config.database), body).await.map_err(fail)
    }

    /// The live feed (written by `clickhouse writer`), when NATS is configured.
    pub fn has_feed(&self) -> bool {
        self.config.nats.is_some()
    }

    async fn feed(&self) -> Result<&nats::Feed, crate::store::StoreError> {
        let config = self.nats().ok_or_else(|| crate::store::StoreError::Backend("no NATS: no live feed".into()))?;
        self.feed
            .get_or_try_init(|| nats::Feed::connect(&config))
            .await
            .map_err(|e| crate::store::StoreError::Backend(e.to_string()))
    }

    /// The newest feed token. Blocking.
    pub fn feed_durable(&self) -> Result<u64, crate::store::StoreError> {
        self.handle.block_on(async { self.feed().await?.durable().await })
    }

    /// Feed entries after `after` (see `Store::feed_read`). Blocking.
    pub fn feed_read(
        &self,
        after: u64,
        max: usize,
        keep: impl Fn(&crate::store::FeedItem) -> bool,
    ) -> Result<crate::store::FeedRead, crate::store::StoreError> {
        self.handle.block_on(async { self.feed().await?.read(after, max, keep).await })
    }

    /// [`Cluster::unavailable`] from a blocking thread.
    pub fn unavailable_blocking(&self) -> Vec<usize> {
        self.handle.block_on(self.unavailable())
    }

    /// Shards that do not answer a query within a second (1-based numbers).
    pub async fn unavailable(&self) -> Vec<usize> {
        let checks = self.shards.iter().enumerate().map(|(i, c)| async move {
            let ok = tokio::time::timeout(Duration::from_secs(1), c.query("SELECT 1").fetch_one::<u8>()).await;
            (i, matches!(ok, Ok(Ok(1))))
        });
        futures_util::future::join_all(checks).await.into_iter().filter(|(_, ok)| !ok).map(|(i, _)| i + 1).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::{Kind, Rrset};

    #[test]
    fn the_documented_configuration_parses_and_bad_ones_say_why() {
        let doc = include_str!("../../docs/CLICKHOUSE.md");
        let block = doc.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
        let c = ClickHouseConfig::parse(block).expect("docs/CLICKHOUSE.md example");
        assert_eq!((c.shards.len(), c.dedup_window, c.database.as_str()), (2, 10_000, "dnsledger"));
        let bad = ClickHouseConfig::parse(
            "[clickhouse]\nshards = [\"ftp://x\"]\ndatabase = \"a;b\"\nzookeeper_path = \"x\"\ndedup_window = 5\n",
        )
        .unwrap_err();
        for part in ["ftp://x", "database", "zookeeper_path", "dedup_window"] {
            assert!(bad.contains(part), "{bad}");
        }
        assert!(ClickHouseConfig::parse("[clickhouse]\nshards = []\nsurprise = 1\n").unwrap_err().contains("surprise"));
    }

    /// The INSERTs' bodies hold the rows in the order the previous algorithm gave them
    /// (deduplication compares retries' blocks, across versions too): per shard, the rows
    /// sorted stably by (negative, key) then the marker; `rrsets_in` the positive ones. (The
    /// column encoding itself is checked by the real server in tests/clickhouse.rs.)
    #[test]
    fn a_batch_becomes_the_same_rows_in_the_same_order_as_before() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _in = rt.enter();
        let config = ClickHouseConfig::parse(
            "[clickhouse]\nshards = [\"http://127.0.0.1:9\", \"http://127.0.0.1:10\", \"http://127.0.0.1:11\"]\n",
        )
        .unwrap();
        let cluster = Cluster::new(config).unwrap();
        let delta = |i: u64, kind| Delta {
            kind,
            rrset: Rrset {
                rrname: format!("h{}.z{}.example.", i % 5, i % 2),
                rrtype: 1,
                bailiwick: format!("z{}.example.", i % 2),
                rdata: vec![format!("192.0.2.{}", i % 5), "192.0.2.200".into()],
            },
            first: 100 + i,
            last: 200 + i,
            count: i,
            sensors: vec!["s2".into(), "s1".into(), "s2".into()],
        };
        // Positive and negative, repeated keys (kept in batch order), two of three shards.
        let deltas: Vec<Delta> =
            (0..12).map(|i| delta(i, if i % 3 == 0 { Kind::NxDomain } else { Kind::Positive })).collect();
        let b = BatchRange { sender: "sensor-a", stream: 7, first: 3, last: 4 };
        let (mark, parts) = cluster.parts(b, &deltas);
        assert_eq!(mark, marker(&b));
        let row = |d: &Delta, key: Vec<u8>, negative: u8| BatchRow {
            sensor: "sensor-a".into(),
            stream: 7,
            first_seq: 3,
            seq: 4,
            key,
            rrname: d.rrset.rrname.clone(),
            rrtype: d.rrset.rrtype,
            bailiwick: d.rrset.bailiwick.clone(),
            rdata: d.rrset.rdata.clone(),
            negative,
            time_first: d.first,
            time_last: d.last,
            count: d.count,
            sensors: vec!["s1".into(), "s2".into()],
        };
        let marker_row = BatchRow {
            sensor: "sensor-a".into(),
            stream: 7,
            first_seq: 3,
            seq: 4,
            key: mark.clone(),
            rrname: String::new(),
            rrtype: 0,
            bailiwick: String::new(),
            rdata: vec![],
            negative: 0,
            time_first: 0,
            time_last: 0,
            count: 0,
            sensors: vec![],
        };
        let mut used = 0;
        for (shard, part) in parts.iter().enumerate() {
            let mine: Vec<&Delta> = deltas.iter().filter(|d| cluster.shard_of(&d.rrset.rrname) == shard).collect();
            let mut rows: Vec<BatchRow> =
                mine.iter().map(|d| row(d, rrset_key(&d.rrset), u8::from(d.kind != Kind::Positive))).collect();
            rows.sort_by(|x, y| (x.negative, &x.key).cmp(&(y.negative, &y.key)));
            let positive = wire::rows(rows.iter().filter(|r| r.negative == 0).chain([&marker_row]));
            rows.push(marker_row.clone());
            assert_eq!(part.landing, wire::rows(&rows), "landing, shard {shard}");
            assert_eq!(part.rrsets, positive, "rrsets_in, shard {shard}");
            let mut index: Vec<IndexRow> = mine
                .iter()
                .filter(|d| d.kind == Kind::Positive)
                .map(|d| IndexRow {
                    idx: index_keys(&d.rrset, &rrset_key(&d.rrset))
                        .into_iter()
                        .map(serde_bytes::ByteBuf::from)
                        .collect(),
                })
                .collect();
            index.sort_by(|x, y| x.idx.cmp(&y.idx));
            index.push(IndexRow { idx: vec![serde_bytes::ByteBuf::from(mark.clone())] });
            assert_eq!(part.index, vec![wire::rows(&index)], "index_in, shard {shard}");
            used += usize::from(!mine.is_empty());
        }
        assert_eq!((parts.len(), used), (3, 2), "an empty shard gets only the marker");
    }

    #[test]
    fn markers_sort_after_every_rrset_key_and_name_their_batch() {
        let b = BatchRange { sender: "s1", stream: 7, first: 3, last: 5 };
        let m = marker(&b);
        assert_eq!(m[0], 0xff);
        assert_ne!(m, marker(&BatchRange { last: 6, ..b }));
        let r = Rrset { rrname: "zzz.".into(), rrtype: 65535, bailiwick: ".".into(), rdata: vec!["x".into()] };
        assert!(rrset_key(&r) < m);
    }
}
