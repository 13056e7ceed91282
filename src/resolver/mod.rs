//! `dnsledger resolver`: a recursive resolver that taps every upstream exchange as dnstap.
//!
//! ```text
//! clients --UDP (udp.rs)/TCP (tcp.rs)--> cache of encoded answers, or Frontend (access
//!     list, in-flight bound, metrics) --> hickory-server Catalog --> Recursion (hickory recursor)
//!                                  | every upstream socket is made by TapProvider (tap.rs)
//!                                  v
//!            RESOLVER_QUERY / RESOLVER_RESPONSE frames with query_zone (zones.rs)
//!                                  v
//!            Emitter (emit.rs): Frame Streams writer to a sensor, and/or the sensor
//!            pipeline in this process ([sensor] in resolver.toml)
//! ```
//! Configuration: [`config`]; reference in docs/RESOLVER.md.

mod client;
pub mod config;
mod emit;
mod tap;
mod tcp;
mod udp;
mod zones;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RecordType};
use hickory_resolver::net::runtime::Time;
use hickory_resolver::net::xfer::Protocol;
use hickory_resolver::recursor::{DnssecConfig, DnssecPolicy, QNameMinimization, Recursor, RecursorOptions};
use hickory_server::server::{Request, RequestHandler, RequestInfo, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, Catalog, LookupControlFlow, LookupError, LookupOptions, MessageResponseBuilder,
    ZoneHandler, ZoneType,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use config::ResolverConfig;
use emit::Emitter;
use tap::{Tap, TapConfig, TapProvider};

use crate::framestream::{Target, WriterConfig, WriterStats};
use crate::metrics::{
    Counter, Histogram, LATENCY_BUCKETS, Metrics, ReasonCounter, Registry, write_metric, write_reasons,
};
use crate::sensor::filter::Cidr;

/// Resolver counters (Prometheus prefix `dnsledger_resolver_`).
#[derive(Debug)]
pub struct ResolverStats {
    pub queries_udp: Counter,
    pub queries_tcp: Counter,
    /// Answered REFUSED without resolving, by reason (`access`, `overload`).
    pub refused: ReasonCounter,
    /// Responses sent, by rcode.
    pub responses: ReasonCounter,
    /// Queries answered without any upstream exchange made on their behalf.
    pub cache_answers: Counter,
    pub upstream_udp: Counter,
    pub upstream_tcp: Counter,
    pub upstream_responses: Counter,
    /// Datagrams or TCP messages that matched no outstanding query (not tapped).
    pub upstream_unmatched: Counter,
    pub dnstap_frames: Counter,
    /// Frames the in-process sensor's queue refused (full).
    pub dnstap_dropped_sensor: Counter,
    pub latency: Histogram,
    /// UDP datagrams not answered as queries, by reason (`runt`, `response`; `malformed` ones
    /// get FORMERR).
    pub dropped: ReasonCounter,
    /// TCP connections or messages not answered as queries, by reason (`connections` past
    /// the limit, `runt`, `truncated`, `response`; `malformed` ones get FORMERR), and answers
    /// not delivered (`unread`: the client stopped reading; `unsent`: it had gone).
    pub tcp_dropped: ReasonCounter,
    /// Queries answered by the UDP front's cache of encoded answers.
    pub answer_cache_hits: Counter,
}

impl Default for ResolverStats {
    fn default() -> Self {
        Self {
            queries_udp: Counter::default(),
            queries_tcp: Counter::default(),
            refused: ReasonCounter::default(),
            responses: ReasonCounter::default(),
            cache_answers: Counter::default(),
            upstream_udp: Counter::default(),
            upstream_tcp: Counter::default(),
            upstream_responses: Counter::default(),
            upstream_unmatched: Counter::default(),
            dnstap_frames: Counter::default(),
            dnstap_dropped_sensor: Counter::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            dropped: ReasonCounter::default(),
            tcp_dropped: ReasonCounter::default(),
            answer_cache_hits: Counter::default(),
        }
    }
}

impl ResolverStats {
    fn upstream_queries(&self, tcp: bool) -> &Counter {
        if tcp { &self.upstream_tcp } else { &self.upstream_udp }
    }
}

impl Metrics for ResolverStats {
    fn render(&self, out: &mut String) {
        let p = "dnsledger_resolver";
        write_metric(
            out,
            &format!("{p}_queries_udp_total"),
            "counter",
            "Client queries over UDP.",
            self.queries_udp.get(),
        );
        write_metric(
            out,
            &format!("{p}_queries_tcp_total"),
            "counter",
            "Client queries over TCP.",
            self.queries_tcp.get(),
        );
        write_reasons(
            out,
            &format!("{p}_refused_total"),
            "Queries refused without resolving.",
            "reason",
            &self.refused,
        );
        write_reasons(out, &format!("{p}_responses_total"), "Responses sent, by rcode.", "rcode", &self.responses);
        write_reasons(
            out,
            &format!("{p}_udp_dropped_total"),
            "UDP datagrams not answered as queries (runts, responses, malformed).",
            "reason",
            &self.dropped,
        );
        write_reasons(
            out,
            &format!("{p}_tcp_dropped_total"),
            "TCP connections or messages not answered as queries (over the connection limit, runts, stalled, responses, malformed), or answers not delivered (unread, unsent).",
            "reason",
            &self.tcp_dropped,
        );
        write_metric(
            out,
            &format!("{p}_answer_cache_hits_total"),
            "counter",
            "Queries answered from the UDP front's cache of encoded answers.",
            self.answer_cache_hits.get(),
        );
        write_metric(
            out,
            &format!("{p}_cache_answers_total"),
            "counter",
            "Queries answered with no upstream exchange of their own (cache hits).",
            self.cache_answers.get(),
        );
        write_metric(
            out,
            &format!("{p}_upstream_udp_total"),
            "counter",
            "Upstream queries sent over UDP.",
            self.upstream_udp.get(),
        );
        write_metric(
            out,
            &format!("{p}_upstream_tcp_total"),
            "counter",
            "Upstream queries sent over TCP.",
            self.upstream_tcp.get(),
        );
        write_metric(
            out,
            &format!("{p}_upstream_responses_total"),
            "counter",
            "Upstream responses matched to their query.",
            self.upstream_responses.get(),
        );
        write_metric(
            out,
            &format!("{p}_upstream_unmatched_total"),
            "counter",
            "Upstream messages matching no outstanding query.",
            self.upstream_unmatched.get(),
        );
        write_metric(
            out,
            &format!("{p}_dnstap_frames_total"),
            "counter",
            "dnstap frames emitted.",
            self.dnstap_frames.get(),
        );
        write_metric(
            out,
            &format!("{p}_dnstap_dropped_sensor_total"),
            "counter",
            "dnstap frames dropped: in-process sensor queue full.",
            self.dnstap_dropped_sensor.get(),
        );
        self.latency.render(out, &format!("{p}_latency_seconds"), "Time from query to response.");
    }
}

tokio::task_local! {
    /// Upstream queries made while serving the current client query (see `cache_answers`).
    static UPSTREAM: Arc<AtomicU32>;
}

/// Called by the tap: UDP exchanges are polled on the task of the client query they serve.
fn count_upstream_on_this_task() {
    let _ = UPSTREAM.try_with(|n| n.fetch_add(1, Ordering::Relaxed));
}

fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        _ => "other",
    }
}

/// The recursor as the catalog's handler for the root zone.
struct Recursion {
    origin: LowerName,
    recursor: Arc<Recursor<TapProvider>>,
}

#[async_trait::async_trait]
impl ZoneHandler for Recursion {
    fn zone_type(&self) -> ZoneType {
        ZoneType::External
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn can_validate_dnssec(&self) -> bool {
        self.recursor.is_validating()
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        _request_info: Option<&RequestInfo<'_>>,
        options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let query = hickory_proto::op::Query::query(name.into(), rtype);
        match self.recursor.resolve(query, Instant::now(), options.dnssec_ok).await {
            Ok(response) => LookupControlFlow::Continue(Ok(AuthLookup::Response(response))),
            Err(e) => {
                tracing::debug!(error = %e, "resolution failed");
                LookupControlFlow::Continue(Err(LookupError::from(e)))
            }
        }
    }

    async fn search(
        &self,
        request: &Request,
        options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<hickory_proto::rr::TSigResponseContext>) {
        let info = match request.request_info() {
            Ok(info) => info,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        (self.lookup(info.query.name(), info.query.query_type(), Some(&info), options).await, None)
    }

    async fn nsec_records(&self, _name: &LowerName, _options: LookupOptions) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Continue(Err(LookupError::ResponseCode(ResponseCode::Refused)))
    }

    async fn nsec3_records(
        &self,
        _info: hickory_server::zone_handler::Nsec3QueryInfo<'_>,
        _options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Continue(Err(LookupError::ResponseCode(ResponseCode::Refused)))
    }

    fn nx_proof_kind(&self) -> Option<&hickory_server::dnssec::NxProofKind> {
        None
    }
}

/// What every client query passes first: counted, checked against the access list, bounded
/// in number, timed.
struct Frontend {
    catalog: Catalog,
    /// Set when CLIENT_* dnstap is asked for.
    client_tap: Option<Arc<client::ClientTap>>,
    allow: Vec<Cidr>,
    inflight: Semaphore,
    stats: Arc<ResolverStats>,
}

impl Frontend {
    /// Whether the access list lets this client query.
    fn allows(&self, client: std::net::SocketAddr) -> bool {
        let ip = client.ip().to_canonical();
        self.allow.iter().any(|c| c.contains(ip))
    }

    async fn refuse<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
        reason: &'static str,
    ) -> ResponseInfo {
        self.stats.refused.inc(reason);
        self.stats.responses.inc("REFUSED");
        let message =
            MessageResponseBuilder::from_message_request(request).error_msg(&request.metadata, ResponseCode::Refused);
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "could not send REFUSED");
                let mut metadata = Metadata::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
                metadata.response_code = ResponseCode::Refused;
                ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Frontend {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, response: R) -> ResponseInfo {
        match request.protocol() {
            Protocol::Tcp => self.stats.queries_tcp.inc(),
            _ => self.stats.queries_udp.inc(),
        }
        if !self.allows(request.src()) {
            return self.refuse(request, response, "access").await;
        }
        // Excess queries are refused at once rather than queued: hickory-server starts a task
        // per datagram, so waiting here would let a flood grow memory without bound.
        let Ok(_permit) = self.inflight.try_acquire() else {
            return self.refuse(request, response, "overload").await;
        };
        let start = Instant::now();
        let upstream = Arc::new(AtomicU32::new(0));
        let info = match &self.client_tap {
            None => UPSTREAM.scope(upstream.clone(), self.catalog.handle_request::<R, T>(request, response)).await,
            Some(tap) => {
                let now = std::time::SystemTime::now();
                tap.query(request.src(), request.protocol(), request.as_slice(), now);
                let recording = client::Recording {
                    inner: response,
                    tap: tap.clone(),
                    client: request.src(),
                    protocol: request.protocol(),
                    query_time: now,
                };
                UPSTREAM.scope(upstream.clone(), self.catalog.handle_request::<_, T>(request, recording)).await
            }
        };
        self.stats.latency.observe(start.elapsed());
        self.stats.responses.inc(rcode_label(info.response_code));
        if upstream.load(Ordering::Relaxed) == 0 {
            self.stats.cache_answers.inc();
        }
        info
    }
}

fn recursor(config: &ResolverConfig, provider: TapProvider) -> anyhow::Result<Recursor<TapProvider>> {
    let defaults = RecursorOptions::default();
    let options = RecursorOptions {
        ns_cache_size: config.ns_cache_size,
        response_cache_size: config.response_cache_size,
        allow_server: config.allow_servers.clone(),
        deny_server: config.deny_servers.clone().unwrap_or(defaults.deny_server.clone()),
        case_randomization: config.case_randomization,
        qname_minimization: if config.qname_minimization_relaxed {
            QNameMinimization::Relaxed
        } else {
            QNameMinimization::Strict
        },
        ..defaults
    };
    let policy = match config.dnssec {
        config::Dnssec::Off => DnssecPolicy::SecurityUnaware,
        config::Dnssec::Validate => DnssecPolicy::ValidateWithStaticKey(DnssecConfig::default()),
    };
    Recursor::new(&config.roots, policy, None, options, provider).map_err(|e| anyhow::anyhow!("recursor: {e}"))
}

/// Root priming (RFC 8109), as unbound and BIND do: asks a root server for the root's NS
/// set before serving. hickory's recursor would otherwise go by the hints alone; the answer
/// is also what passive DNS records about the root.
async fn prime(recursor: &Recursor<TapProvider>) {
    let query = hickory_proto::op::Query::query(Name::root(), RecordType::NS);
    match tokio::time::timeout(Duration::from_secs(10), recursor.resolve(query, Instant::now(), false)).await {
        Ok(Ok(answer)) => tracing::info!(servers = answer.answers.len(), "root primed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "root priming failed; going by the hints"),
        Err(_) => tracing::warn!("root priming timed out; going by the hints"),
    }
}

/// Runs the resolver until `shutdown`: serves clients, taps upstream, emits dnstap, and runs
/// the in-process sensor if configured. On shutdown: stop serving, hand queued frames to the
/// sensor and the writer, let the sensor flush its store.
pub async fn run(
    config: ResolverConfig,
    registry: &Registry,
    shutdown: CancellationToken,
    progress: bool,
) -> anyhow::Result<()> {
    let stats = Arc::new(ResolverStats::default());
    registry.register(stats.clone());

    let target = match (&config.dnstap_unix, config.dnstap_tcp) {
        (Some(path), _) => Some(Target::Unix(path.clone())),
        (None, Some(addr)) => Some(Target::Tcp(addr)),
        (None, None) => None,
    };
    let writer_shutdown = CancellationToken::new();
    let writer = target.map(|target| {
        tracing::info!(%target, "dnstap output");
        let wstats = Arc::new(WriterStats::default());
        registry.register(wstats.clone());
        let wconfig = WriterConfig { queue_frames: config.queue_frames, ..WriterConfig::new(target) };
        crate::framestream::writer::spawn(wconfig, wstats, writer_shutdown.clone())
    });

    let feed_shutdown = CancellationToken::new();
    let mut sensor = None;
    let mut sensor_input = None;
    if let Some(sconfig) = config.sensor.clone() {
        let (frames_tx, frames_rx) = mpsc::channel::<Bytes>(config.queue_frames);
        let (batches_tx, batches_rx) = mpsc::channel::<Vec<Bytes>>(64);
        let feed = emit::spawn_sensor_feed(frames_rx, batches_tx, feed_shutdown.clone());
        let (registry, sensor_shutdown) = (registry.clone(), shutdown.clone());
        tracing::info!(db = %sconfig.db.display(), "sensor pipeline in process");
        sensor = Some((
            feed,
            tokio::spawn(async move {
                crate::sensor::run_fed(sconfig, &registry, sensor_shutdown, progress, Some(batches_rx)).await
            }),
        ));
        sensor_input = Some(frames_tx);
    }

    let emitter = Emitter::new(writer.as_ref().map(|(tx, _)| tx.clone()), sensor_input, stats.clone());
    let client_tap = config.client_messages.then(|| {
        tracing::warn!("CLIENT_* dnstap on: frames carry client addresses and questions");
        Arc::new(client::ClientTap {
            identity: config.identity.clone().map(Bytes::from),
            version: config.version.clone().map(Bytes::from),
            emitter: emitter.clone(),
        })
    });
    let tap = Arc::new(Tap::new(
        TapConfig {
            identity: config.identity.clone().map(Bytes::from),
            version: config.version.clone().map(Bytes::from),
            queries: config.resolver_queries,
            source_v4: config.source_v4,
            source_v6: config.source_v6,
        },
        &config.roots,
        emitter,
        stats.clone(),
    ));
    let recursor = Arc::new(recursor(&config, TapProvider::new(tap))?);
    prime(&recursor).await;
    let mut catalog = Catalog::new();
    let origin = LowerName::from(Name::root());
    catalog.upsert(origin.clone(), vec![Arc::new(Recursion { origin, recursor })]);
    // Every answer must pass the CLIENT_* tap when it is on: no answers from the cache then.
    let cache = (!config.client_messages && config.answer_cache_size > 0)
        .then(|| Arc::new(udp::AnswerCache::new(config.answer_cache_size)));
    let frontend = Arc::new(Frontend {
        catalog,
        client_tap,
        allow: config.allow.clone(),
        inflight: Semaphore::new(config.max_inflight),
        stats: stats.clone(),
    });

    let fronts_shutdown = CancellationToken::new();
    let client_tasks = tokio_util::task::TaskTracker::new();
    for addr in &config.udp {
        let socket = UdpSocket::bind(addr).await.with_context(|| format!("udp {addr}"))?;
        tracing::info!(addr = %socket.local_addr()?, "resolver listening (udp)");
        client_tasks.spawn(udp::serve(
            Arc::new(socket),
            frontend.clone(),
            cache.clone(),
            stats.clone(),
            client_tasks.clone(),
            fronts_shutdown.clone(),
        ));
    }
    let limits =
        tcp::Limits { idle: config.tcp_idle, connections: Arc::new(Semaphore::new(config.tcp_max_connections)) };
    for addr in &config.tcp {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("tcp {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "resolver listening (tcp)");
        client_tasks.spawn(tcp::serve(
            listener,
            frontend.clone(),
            cache.clone(),
            stats.clone(),
            limits.clone(),
            client_tasks.clone(),
            fronts_shutdown.clone(),
        ));
    }
    drop(frontend);

    shutdown.cancelled().await;
    tracing::info!("resolver stopping");
    fronts_shutdown.cancel();
    client_tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), client_tasks.wait()).await.is_err() {
        tracing::warn!("resolver stopping: client queries still resolving after 10 s, dropped");
    }
    // The fronts (and with them the tap and emitter) are going: what is queued is all there is.
    feed_shutdown.cancel();
    writer_shutdown.cancel();
    if let Some((_, task)) = writer {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    if let Some((feed, task)) = sensor {
        let _ = feed.await;
        let totals = task.await??;
        tracing::info!(
            frames = totals.frames,
            kept = totals.kept,
            stored = totals.stored,
            "in-process sensor finished"
        );
    }
    Ok(())
}
