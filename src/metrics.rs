//! Prometheus metrics: lock-free counters owned by each stage, a registry that renders them in
//! the text exposition format, and a minimal HTTP endpoint (`GET /metrics`).
//!
//! Labels are low-cardinality by construction: reasons are `&'static str` from error `label()`s,
//! never names or addresses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts by reason (a bounded set of static labels). Off the hot path: used for drops/errors.
#[derive(Debug, Default)]
pub struct ReasonCounter(Mutex<BTreeMap<&'static str, u64>>);

impl ReasonCounter {
    pub fn inc(&self, reason: &'static str) {
        self.add(reason, 1);
    }
    pub fn add(&self, reason: &'static str, n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(reason).or_default() += n;
    }
    pub fn get(&self, reason: &str) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(reason).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Per-reason counts kept by one thread without locking, added to a shared [`ReasonCounter`]
/// now and then: for counting on a hot path (one tally per frame would otherwise lock).
#[derive(Debug, Default)]
pub struct Tally(Vec<(&'static str, u64)>);

impl Tally {
    pub fn add(&mut self, reason: &'static str) {
        match self.0.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.0.push((reason, 1)),
        }
    }

    /// Moves the counts into `to`.
    pub fn publish(&mut self, to: &ReasonCounter) {
        for (reason, n) in self.0.drain(..) {
            to.add(reason, n);
        }
    }
}

/// A latency histogram with fixed buckets (seconds), lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Buckets for DNS latencies: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the histogram (cumulative buckets, `+Inf`, sum, count).
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Something that can write its metrics in Prometheus text format.
pub trait Metrics: Send + Sync {
    fn render(&self, out: &mut String);
}

/// Writes one counter or gauge with its HELP and TYPE lines.
pub fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// Writes a counter family with one label.
pub fn write_reasons(out: &mut String, name: &str, help: &str, label: &str, reasons: &ReasonCounter) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (reason, n) in reasons.snapshot() {
        let _ = writeln!(out, "{name}{{{label}=\"{reason}\"}} {n}");
    }
}

/// The set of metric sources a process exposes.
#[derive(Default, Clone)]
pub struct Registry {
    sources: Arc<Mutex<Vec<Arc<dyn Metrics>>>>,
}

impl Registry {
    pub fn register(&self, source: Arc<dyn Metrics>) {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).push(source);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in self.sources.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            s.render(&mut out);
        }
        out
    }
}

const MAX_REQUEST: usize = 8192;

/// Serves `GET /metrics` until `shutdown`. Requests are bounded in size and time.
pub async fn serve(listener: TcpListener, registry: Registry, shutdown: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let (status, body) = if buf.starts_with(b"GET /metrics ") || buf.starts_with(b"GET /metrics?") {
                ("200 OK", registry.render())
            } else {
                ("404 Not Found", "not found; try /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds `addr` and serves metrics in the background.
pub async fn spawn_endpoint(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "metrics endpoint listening");
    tokio::spawn(serve(listener, registry, shutdown));
    Ok(local)
}
