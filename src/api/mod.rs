//! The query API over a store: DNSDB API v2 (SAF streams of COF objects, summaries,
//! `rate_limit`, `ping`), plain COF, CIRCL's `/pdns/query`, and a result-count estimate.
//! Served by the collector, by a sensor over its local store, and by `dnsledger api`.
//!
//! ```text
//! TCP accept (bounded) -> [TLS] -> HTTP/1.1 (hyper) -> request::parse_path + parse_params
//!   -> key + quota + concurrency -> blocking walk of the store (lookup::walk)
//!   -> bounded channel of ~32 KiB chunks -> chunked response body
//! ```
//! A response streams in constant memory: the walk runs on a blocking thread and waits when
//! the client reads slowly (the channel holds at most 8 chunks); a client that goes away
//! stops the walk. Every request ends in a status and a counted outcome; a bad query never
//! reaches the store.

pub mod config;
mod quota;
pub mod request;
mod respond;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use config::{ApiConfig, ApiKey, RawApi};
use request::{ApiError, Endpoint, Limits};
pub use respond::write_cof;

use crate::db::Db;
use crate::metrics::{
    Counter, Histogram, LATENCY_BUCKETS, Metrics, ReasonCounter, Registry, write_metric, write_reasons,
};
use crate::store::Store;

/// API counters (Prometheus prefix `dnsledger_api_`).
#[derive(Debug)]
pub struct ApiStats {
    /// Requests by endpoint (`lookup`, `summarize`, `cof`, `circl`, `estimate`, `ping`,
    /// `rate_limit`, `feed`, `portal`, `other`).
    pub requests: ReasonCounter,
    /// Responses by status code.
    pub responses: ReasonCounter,
    /// Queries refused before the store, by reason (`bad_request`, `not_found`, `key`,
    /// `quota`, `busy`, `accept`, `method`, `offset`).
    pub refused: ReasonCounter,
    /// RRsets sent.
    pub results: Counter,
    /// Queries that ended early: `limit`, `budget`, `max_count`, `client_gone`, `store_error`.
    pub cut: ReasonCounter,
    pub connections: Counter,
    pub connection_errors: Counter,
    /// Time from request to the end of the response body.
    pub duration: Histogram,
}

impl Default for ApiStats {
    fn default() -> Self {
        Self {
            requests: ReasonCounter::default(),
            responses: ReasonCounter::default(),
            refused: ReasonCounter::default(),
            results: Counter::default(),
            cut: ReasonCounter::default(),
            connections: Counter::default(),
            connection_errors: Counter::default(),
            duration: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Metrics for ApiStats {
    fn render(&self, out: &mut String) {
        let p = "dnsledger_api";
        write_reasons(out, &format!("{p}_requests_total"), "Requests, by endpoint.", "endpoint", &self.requests);
        write_reasons(out, &format!("{p}_responses_total"), "Responses, by status.", "status", &self.responses);
        write_reasons(out, &format!("{p}_refused_total"), "Queries refused, by reason.", "reason", &self.refused);
        write_metric(out, &format!("{p}_results_total"), "counter", "RRsets sent.", self.results.get());
        write_reasons(out, &format!("{p}_cut_total"), "Queries that ended early, by reason.", "reason", &self.cut);
        write_metric(
            out,
            &format!("{p}_connections_total"),
            "counter",
            "Connections accepted.",
            self.connections.get(),
        );
        write_metric(
            out,
            &format!("{p}_connection_errors_total"),
            "counter",
            "Connections that failed (TLS, HTTP framing, timeouts).",
            self.connection_errors.get(),
        );
        self.duration.render(out, &format!("{p}_request_seconds"), "Request to end of response.");
    }
}

/// Shared state of one API server.
pub struct Api {
    db: Db,
    config: ApiConfig,
    stats: Arc<ApiStats>,
    /// Queries running at once (server-wide).
    queries: Arc<Semaphore>,
    /// Live feed consumers connected.
    feeds: Arc<Semaphore>,
    /// Ends live feeds (which never end on their own) at shutdown.
    shutdown: CancellationToken,
    /// Queries used today per key.
    quotas: quota::Quotas,
    /// Per key: queries running now.
    running: Vec<Arc<AtomicUsize>>,
    /// Reported as the sensor of every RRset of a sensor's own store (which records no
    /// contributors).
    own_sensor: Option<String>,
}

/// A response body: whole, or chunks from a walk.
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }
}

const NDJSON: &str = "application/x-ndjson";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Holds a query's slots (server-wide and per key) until the response body is done.
struct Slots {
    _server: tokio::sync::OwnedSemaphorePermit,
    key: Option<Arc<AtomicUsize>>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Some(k) = &self.key {
            k.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Api {
    pub fn new(
        db: Db,
        config: ApiConfig,
        own_sensor: Option<String>,
        stats: Arc<ApiStats>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            db,
            queries: Arc::new(Semaphore::new(config.max_queries)),
            feeds: Arc::new(Semaphore::new(config.max_feeds)),
            shutdown,
            running: config.keys.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect(),
            quotas: quota::Quotas::load(
                config.keys.iter().map(|k| k.name.clone()).collect(),
                config.quota_file.clone(),
                now() / 86_400,
            ),
            config,
            stats,
            own_sensor,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            default_limit: self.config.default_limit,
            max_limit: self.config.max_limit,
            max_offset: self.config.max_offset,
        }
    }

    /// The key a request presents: `X-API-Key`, or `Authorization` as CIRCL clients send it
    /// (Basic with the key as password or user, `Bearer KEY`, or the key itself).
    fn key_of(&self, req: &Request<Incoming>) -> Result<Option<usize>, ApiError> {
        if self.config.keys.is_empty() {
            return Ok(None);
        }
        let mut offered: Vec<String> = Vec::new();
        if let Some(k) = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) {
            offered.push(k.trim().to_string());
        }
        if let Some(a) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            let a = a.trim();
            if let Some(b) = a.strip_prefix("Basic ").or_else(|| a.strip_prefix("basic ")) {
                use base64::Engine as _;
                if let Ok(text) = base64::engine::general_purpose::STANDARD.decode(b.trim())
                    && let Ok(text) = String::from_utf8(text)
                {
                    let (user, pass) = text.split_once(':').unwrap_or((&text, ""));
                    offered.push(pass.to_string());
                    offered.push(user.to_string());
                }
            } else if let Some(t) = a.strip_prefix("Bearer ") {
                offered.push(t.trim().to_string());
            } else {
                offered.push(a.to_string());
            }
        }
        if offered.is_empty() {
            return Err(ApiError::status(403, "Error: missing API key (X-API-Key header)"));
        }
        // Compared in constant time per key, so response times do not leak key prefixes.
        let same =
            |a: &[u8], b: &[u8]| a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        for o in &offered {
            if let Some(i) = self.config.keys.iter().position(|k| same(k.key.as_bytes(), o.as_bytes())) {
                return Ok(Some(i));
            }
        }
        Err(ApiError::status(403, "Error: API key not valid"))
    }

    /// Takes one query from the key's daily quota.
    fn charge(&self, key: usize) -> Result<(), ApiError> {
        let Some(quota) = self.config.keys[key].queries_per_day else { return Ok(()) };
        self.quotas.charge(key, quota, now() / 86_400)
    }

    fn slots(&self, key: Option<usize>) -> Result<Slots, ApiError> {
        let busy = || ApiError::status(503, "Error: too many queries at once; retry shortly");
        let server = self.queries.clone().try_acquire_owned().map_err(|_| busy())?;
        Ok(Slots { _server: server, key: self.key_slot(key)? })
    }

    /// One of the key's `max_concurrent` (held until the guard holding it drops).
    fn key_slot(&self, key: Option<usize>) -> Result<Option<Arc<AtomicUsize>>, ApiError> {
        let busy = || ApiError::status(503, "Error: too many queries at once for this key; retry shortly");
        Ok(match key {
            Some(i) => {
                let r = self.running[i].clone();
                let n = r.fetch_add(1, Ordering::Relaxed);
                if self.config.keys[i].max_concurrent.is_some_and(|m| n >= m) {
                    r.fetch_sub(1, Ordering::Relaxed);
                    return Err(busy());
                }
                Some(r)
            }
            None => None,
        })
    }

    /// `/dnsdb/v2/rate_limit` in the form dnsdbq -I prints.
    fn rate_limit(&self, key: Option<usize>) -> String {
        let c = &self.config;
        let (limit, remaining, reset) = match key.and_then(|k| c.keys[k].queries_per_day.map(|q| (k, q))) {
            Some((k, quota)) => {
                let day = now() / 86_400;
                let used = self.quotas.used(k, day);
                (quota.to_string(), quota.saturating_sub(used).to_string(), ((day + 1) * 86_400).to_string())
            }
            None => ("\"unlimited\"".into(), "\"n/a\"".into(), "\"n/a\"".into()),
        };
        format!(
            "{{\"rate\":{{\"reset\":{reset},\"limit\":{limit},\"remaining\":{remaining},\"results_max\":{},\"offset_max\":{}}}}}\n",
            c.max_limit, c.max_offset
        )
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let (label, result) = self.route(&req).await;
        self.stats.requests.inc(label);
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.stats.refused.inc(match e.status {
                    400 => "bad_request",
                    403 => "key",
                    404 => "not_found",
                    405 => "method",
                    415 => "accept",
                    416 => "offset",
                    429 => "quota",
                    503 => "busy",
                    _ => "other",
                });
                // The message echoes what the client sent: not logged.
                tracing::debug!(status = e.status, "query refused");
                // dnsdbq shows the first line of an error body; dnsdb2 raises it.
                let body = format!("{}\n", e.msg);
                text(StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST), body)
            }
        };
        self.stats.responses.inc(status_label(resp.status()));
        self.stats.duration.observe(started.elapsed());
        resp
    }

    async fn route(self: &Arc<Self>, req: &Request<Incoming>) -> (&'static str, Result<Response<Body>, ApiError>) {
        // Labelled by the path's prefix, so that refused queries count under their endpoint.
        let path = req.uri().path();
        if let Some((content_type, body)) = portal_asset(path) {
            let mut r = response(StatusCode::OK, content_type, Body::Full(Some(Bytes::from_static(body.as_bytes()))));
            r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
            return ("portal", Ok(r));
        }
        let label = [
            ("/dnsdb/v2/lookup/", "lookup"),
            ("/dnsdb/v2/summarize/", "summarize"),
            ("/dnsdb/v2/ping", "ping"),
            ("/dnsdb/v2/rate_limit", "rate_limit"),
            ("/cof/", "cof"),
            ("/pdns/", "circl"),
            ("/dnsledger/v1/estimate/", "estimate"),
            ("/feed/", "feed"),
        ]
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map_or("other", |(_, label)| label);
        match request::parse_path(path) {
            Ok(endpoint) => (label, self.answer(req, endpoint).await),
            Err(e) => (label, Err(e)),
        }
    }

    async fn answer(self: &Arc<Self>, req: &Request<Incoming>, endpoint: Endpoint) -> Result<Response<Body>, ApiError> {
        if req.method() != hyper::Method::GET {
            return Err(ApiError::status(405, "Error: only GET is served"));
        }
        let key = self.key_of(req)?;
        if key.is_none() && !addressed_by_ip(req) {
            return Err(ApiError::status(
                403,
                "Error: without API keys this server answers only requests to an IP address or localhost \
                 (a guard against DNS rebinding); configure keys to serve it under a name",
            ));
        }
        if !accepts_json(req) {
            return Err(ApiError::status(415, format!("Error: responses are {NDJSON} or application/json")));
        }
        if endpoint == Endpoint::Feed {
            let params = request::parse_feed_params(req.uri().query())?;
            if !self.db.has_feed() {
                return Err(ApiError::status(
                    404,
                    "Error: no live feed here: a ClickHouse cluster has one when its batches go through NATS",
                ));
            }
            let db = self.db.clone();
            let at = match tokio::task::spawn_blocking(move || db.feed_durable()).await {
                Ok(Ok(at)) => at,
                _ => return Err(ApiError::status(503, "Error: the feed is unavailable; retry later")),
            };
            if let Some(after) = params.after.filter(|a| *a > at) {
                return Err(ApiError::bad(format!(
                    "Error: token {after} is ahead of this feed (at {at}): a token of another store?"
                )));
            }
            let busy = || ApiError::status(503, "Error: too many feed consumers; retry later");
            let permit = self.feeds.clone().try_acquire_owned().map_err(|_| busy())?;
            let slots = Slots { _server: permit, key: self.key_slot(key)? };
            if let Some(k) = key {
                self.charge(k)?;
            }
            return Ok(respond::feed(self.clone(), params, slots));
        }
        let params = request::parse_params(req.uri().query(), self.limits(), now())?;
        match endpoint {
            Endpoint::Ping => Ok(json(StatusCode::OK, "{\"ping\":\"ok\"}\n".into())),
            Endpoint::RateLimit => Ok(json(StatusCode::OK, self.rate_limit(key))),
            Endpoint::Dnsdb { summarize, lookup } => {
                self.check_cursor(&lookup, &params)?;
                // A summary is over the aggregates when there are no rows.
                if !summarize {
                    self.check_rows(&params)?;
                }
                self.charge_and_slot(key).map(|slots| respond::saf(self.clone(), lookup, params, summarize, slots))
            }
            Endpoint::Cof(lookup) | Endpoint::Circl(lookup) => {
                let mut params = params;
                circl_paging(req, &mut params, self.config.max_page)?;
                self.check_cursor(&lookup, &params)?;
                self.check_rows(&params)?;
                let slots = self.charge_and_slot(key)?;
                Ok(respond::page(self.clone(), lookup, params, slots).await)
            }
            Endpoint::Estimate(lookup) => {
                let slots = self.charge_and_slot(key)?;
                Ok(respond::estimate(self.clone(), lookup, slots).await)
            }
            // Answered above (it has parameters of its own).
            Endpoint::Feed => Err(ApiError::status(404, "Error: no such endpoint")),
        }
    }

    /// `aggr=false` needs the per-day rows.
    fn check_rows(&self, params: &request::Params) -> Result<(), ApiError> {
        if !params.aggr && !self.db.keeps_days() {
            return Err(ApiError::bad(
                "aggr=false: this store keeps no per-day rows (`day_rows = true` in the [api] of the process writing it)",
            ));
        }
        Ok(())
    }

    fn check_cursor(&self, lookup: &crate::store::Lookup, params: &request::Params) -> Result<(), ApiError> {
        let bad = |e: crate::store::ForeignCursor| ApiError::bad(format!("cursor: {e}"));
        if let Some(c) = &params.cursor {
            Store::check_cursor(lookup, c).map_err(bad)?;
        }
        if let Some((at, _)) = &params.cursor_rows {
            Store::check_cursor(lookup, at).map_err(bad)?;
            if params.aggr {
                return Err(ApiError::bad("cursor: it pages per-day rows (aggr=false)"));
            }
        }
        Ok(())
    }

    fn charge_and_slot(&self, key: Option<usize>) -> Result<Slots, ApiError> {
        let slots = self.slots(key)?;
        if let Some(k) = key {
            self.charge(k)?;
        }
        Ok(slots)
    }
}

/// pypdns pages with `dribble-paginate-count` / `dribble-paginate-cursor` headers; COF
/// pages are bounded by `max_page`.
fn circl_paging(req: &Request<Incoming>, params: &mut request::Params, max_page: u64) -> Result<(), ApiError> {
    let h = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(n) = h("dribble-paginate-count") {
        params.limit = n.parse().map_err(|_| ApiError::bad("dribble-paginate-count: expected an integer"))?;
    }
    if let Some(c) = h("dribble-paginate-cursor").filter(|c| !c.is_empty()) {
        (params.cursor, params.cursor_rows) = request::parse_cursor(c)
            .map_err(|_| ApiError::bad("dribble-paginate-cursor: not a cursor from this server"))?;
    }
    if params.limit > max_page || params.limit == 0 {
        params.limit = max_page;
    }
    Ok(())
}

/// The web portal: a page, a script and a style sheet, built into the binary (no CDN).
fn portal_asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", include_str!("portal/index.html"))),
        "/portal.js" => Some(("text/javascript; charset=utf-8", include_str!("portal/portal.js"))),
        "/portal.css" => Some(("text/css; charset=utf-8", include_str!("portal/portal.css"))),
        _ => None,
    }
}

/// Whether the request's Host is an address or localhost (or absent, as HTTP/1.0 allows): a
/// page from elsewhere that rebinds its own name to our address cannot pass this.
fn addressed_by_ip(req: &Request<Incoming>) -> bool {
    let Some(host) = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()) else { return true };
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').filter(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok()).map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn accepts_json(req: &Request<Incoming>) -> bool {
    let Some(accept) = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return true };
    accept.split(',').map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).any(|t| {
        matches!(t.as_str(), "*/*" | "application/*" | "application/json" | "application/x-ndjson" | "text/plain" | "")
    })
}

fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        415 => "415",
        416 => "416",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", Body::Full(Some(Bytes::from(body))))
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    response(status, "application/json", Body::Full(Some(Bytes::from(body))))
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r.headers_mut().insert("x-content-type-options", header::HeaderValue::from_static("nosniff"));
    r
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The store as the process serving the API over it must open it: with the feed log, index
/// entries carrying copies of their RRsets, and per-day rows if configured.
pub fn with_feed(store: Store, config: &ApiConfig) -> anyhow::Result<Store> {
    let list = crate::psl::SuffixList::load(config.public_suffix_list.as_deref())
        .with_context(|| format!("public_suffix_list {:?}", config.public_suffix_list))?;
    if list.is_empty() {
        tracing::warn!(
            "no public suffix list (install Debian's publicsuffix): new domains are judged by their last label"
        );
    }
    // Index entries with copies of their RRsets: CIDR and rdata-name walks in index order.
    let store = store.with_feed(config.feed_retain, Arc::new(list)).with_copies()?;
    Ok(if config.day_rows { store.with_days() } else { store })
}

/// Binds the API and serves it until `shutdown`; returns the bound address.
pub async fn start(
    config: ApiConfig,
    db: Db,
    own_sensor: Option<String>,
    registry: &Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(TlsAcceptor::from(crate::tls::server_config(cert, key, None)?)),
        None => None,
    };
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("API on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(ApiStats::default());
    registry.register(stats.clone());
    if config.export.is_some() && db.sled().is_none() {
        anyhow::bail!("[api] export_dir: daily exports are written from a sled store, not from ClickHouse");
    }
    let api = Arc::new(Api::new(db, config, own_sensor, stats, shutdown.clone()));
    tracing::info!(%addr, tls = tls.is_some(), keys = api.config.keys.len(), "query API listening");
    if let Some((dir, at)) = &api.config.export
        && let Some(store) = api.db.sled()
    {
        tokio::spawn(crate::export::schedule(store.clone(), dir.clone(), *at, shutdown.clone()));
    }
    if api.config.keys.iter().any(|k| k.queries_per_day.is_some()) {
        if api.quotas.persistent() {
            let (api, shutdown) = (api.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    let stop = tokio::select! {
                        _ = shutdown.cancelled() => true,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                    };
                    let saver = api.clone();
                    let _ = tokio::task::spawn_blocking(move || saver.quotas.save(now() / 86_400)).await;
                    if stop {
                        return;
                    }
                }
            });
        } else {
            tracing::warn!("API keys have daily quotas but no [api] quota_file: a restart resets them");
        }
    }
    tokio::spawn(serve(listener, api, tls, shutdown));
    Ok(addr)
}

async fn serve(listener: TcpListener, api: Arc<Api>, tls: Option<TlsAcceptor>, shutdown: CancellationToken) {
    let connections = Arc::new(Semaphore::new(api.config.max_connections));
    loop {
        // At the connection bound, stop accepting until one closes (the kernel queues the rest).
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        api.stats.connections.inc();
        let (api, tls, shutdown) = (api.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => connection(TokioIo::new(s), api.clone(), shutdown).await,
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("TLS handshake timed out".into()),
                },
                None => connection(TokioIo::new(stream), api.clone(), shutdown).await,
            };
            if let Err(e) = result {
                api.stats.connection_errors.inc();
                tracing::debug!(error = %e, "API connection failed");
            }
        });
    }
}

async fn connection<I>(io: I, api: Arc<Api>, shutdown: CancellationToken) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r.map_err(|e| e.to_string()),
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await.map_err(|e| e.to_string())
        }
    }
}
