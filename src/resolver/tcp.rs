//! The TCP front: our own accept loop and connections in place of hickory-server's, so that
//! every message is seen and counted (hickory-server closed connections on bad input without
//! a trace) and connections are bounded in number:
//! - at most `listen.tcp_max_connections` open; a connection past it is closed at once and
//!   counted (`reason="connections"`);
//! - a connection idle for `listen.tcp_idle_seconds`, or stalled inside a message for as long,
//!   is closed; a message shorter than a DNS header closes it too (nothing to answer with);
//! - up to [`PIPELINE`] queries of one connection are resolved or waiting to be written at
//!   once (RFC 7766 pipelining, answers in the order they are ready); past that the connection
//!   is not read, so a client pushing more waits on TCP instead of growing our memory. An
//!   answer never waits for its client inside the resolver (it is queued, and the queue has
//!   room for every answer the connection may have outstanding), so a client that does not
//!   read holds no resolver capacity; an answer that cannot be written within the idle time
//!   closes the connection;
//! - malformed queries get FORMERR and the connection stays open, as over UDP; DNS responses
//!   sent to us are dropped, counted.
//!
//! Queries go through the same [`super::Frontend`] and cache of encoded answers as UDP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::MessageType;
use hickory_proto::rr::Record;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioTime;
use hickory_resolver::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::udp::{self, AnswerCache, HEADER};
use super::{Frontend, ResolverStats};

/// Queries of one connection resolved at once.
pub const PIPELINE: usize = 16;

/// What the TCP front holds to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub idle: Duration,
    /// Connections open at once, shared by every listener.
    pub connections: Arc<Semaphore>,
}

/// Serves one TCP listener until `shutdown`; `cache` is `None` when CLIENT_* dnstap is on.
pub async fn serve(
    listener: TcpListener,
    frontend: Arc<Frontend>,
    cache: Option<Arc<AnswerCache>>,
    stats: Arc<ResolverStats>,
    limits: Limits,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, src) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections close.
                    tracing::warn!(error = %e, "tcp accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
            stats.tcp_dropped.inc("connections");
            continue;
        };
        let conn = Connection {
            frontend: frontend.clone(),
            cache: cache.clone(),
            stats: stats.clone(),
            src,
            idle: limits.idle,
            tasks: tasks.clone(),
        };
        tasks.spawn(conn.run(stream, shutdown.clone(), permit));
    }
}

struct Connection {
    frontend: Arc<Frontend>,
    cache: Option<Arc<AnswerCache>>,
    stats: Arc<ResolverStats>,
    src: SocketAddr,
    idle: Duration,
    tasks: TaskTracker,
}

/// An answer waiting for the writer, with the pipeline slot it holds until written.
type Queued = (Vec<u8>, OwnedSemaphorePermit);

impl Connection {
    /// Reads queries until the client closes, idles, misbehaves or we shut down; the writer
    /// sends every answer of a query already read before the connection closes, unless the
    /// client stops reading them.
    async fn run(self, stream: TcpStream, shutdown: CancellationToken, _permit: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        // Room for every answer outstanding (one per pipeline slot): queueing never waits.
        let (tx, mut rx) = mpsc::channel::<Queued>(PIPELINE);
        let idle = self.idle;
        let stats = self.stats.clone();
        let writer = tokio::spawn(async move {
            while let Some((m, _slot)) = rx.recv().await {
                let mut out = Vec::with_capacity(2 + m.len());
                out.extend_from_slice(&(m.len() as u16).to_be_bytes());
                out.extend_from_slice(&m);
                match tokio::time::timeout(idle, wr.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "tcp write");
                        break;
                    }
                    Err(_) => {
                        // The client does not read: give up on it (queued answers dropped).
                        stats.tcp_dropped.inc("unread");
                        break;
                    }
                }
            }
            let _ = wr.shutdown().await;
        });
        let pipeline = Arc::new(Semaphore::new(PIPELINE));
        let mut stopping = false;
        loop {
            let mut len = [0u8; 2];
            tokio::select! {
                _ = shutdown.cancelled() => {
                    stopping = true;
                    break;
                }
                // The writer gave up on the client: read no more from it.
                _ = tx.closed() => break,
                r = tokio::time::timeout(self.idle, rd.read_exact(&mut len)) => match r {
                    Ok(Ok(_)) => {}
                    // Closed by the client, or idle.
                    Ok(Err(_)) | Err(_) => break,
                },
            }
            let n = usize::from(u16::from_be_bytes(len));
            if n < HEADER {
                self.stats.tcp_dropped.inc("runt");
                break;
            }
            let mut raw = vec![0u8; n];
            if !matches!(tokio::time::timeout(self.idle, rd.read_exact(&mut raw)).await, Ok(Ok(_))) {
                self.stats.tcp_dropped.inc("truncated");
                break;
            }
            // A free pipeline slot: all taken means answers are not being read (or are still
            // resolving); wait for one as long as the connection may idle.
            let slot = tokio::select! {
                _ = shutdown.cancelled() => {
                    stopping = true;
                    break;
                }
                _ = tx.closed() => break,
                s = tokio::time::timeout(self.idle, pipeline.clone().acquire_owned()) => match s {
                    Ok(Ok(slot)) => slot,
                    _ => break,
                },
            };
            let shape = self.cache.as_ref().and_then(|_| udp::shape(&raw));
            if let (Some(cache), Some(s)) = (&self.cache, &shape) {
                let start = Instant::now();
                if let Some(answer) =
                    udp::from_cache(cache, &self.frontend, &self.stats, &raw, s, self.src, Protocol::Tcp)
                {
                    if tx.try_send((answer, slot)).is_err() {
                        break;
                    }
                    self.stats.latency.observe(start.elapsed());
                    continue;
                }
            }
            let offer = self.cache.clone().zip(shape.map(|s| s.key));
            let slot = Arc::new(std::sync::Mutex::new(Some(slot)));
            let reply = Reply { tx: tx.clone(), slot, offer, stats: self.stats.clone() };
            let (frontend, stats, src) = (self.frontend.clone(), self.stats.clone(), self.src);
            self.tasks.spawn(async move { query(raw, src, &frontend, &stats, reply).await });
        }
        drop(tx);
        let _ = writer.await;
        if stopping {
            // Queries the client sent that we did not read would make closing reset the
            // connection, and a reset may discard answers the client has not read yet: take
            // what is in flight for a moment first.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
}

async fn query(raw: Vec<u8>, src: SocketAddr, frontend: &Frontend, stats: &ResolverStats, reply: Reply) {
    let header = [raw[0], raw[1], raw[2], raw[3]];
    let request = match Request::from_bytes(raw, src, Protocol::Tcp) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "malformed query (tcp)");
            stats.tcp_dropped.inc("malformed");
            stats.responses.inc("FORMERR");
            reply.queue(udp::formerr(header).to_vec());
            return;
        }
    };
    if request.metadata.message_type == MessageType::Response {
        stats.tcp_dropped.inc("response");
        return;
    }
    frontend.handle_request::<_, TokioTime>(&request, reply).await;
}

/// Queues an answer for the connection's writer (never waiting: see [`Connection::run`]) and
/// offers it to the cache.
#[derive(Clone)]
struct Reply {
    tx: mpsc::Sender<Queued>,
    /// The query's pipeline slot, released once its answer is written (shared by clones:
    /// hickory's handlers are `Clone`; one query has one answer).
    slot: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    offer: Option<(Arc<AnswerCache>, Vec<u8>)>,
    stats: Arc<ResolverStats>,
}

impl Reply {
    fn queue(&self, wire: Vec<u8>) {
        let Some(slot) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        // Full cannot happen (a slot per queued answer); closed: the connection is gone,
        // which is the client's doing, not a failure to answer.
        if self.tx.try_send((wire, slot)).is_err() {
            self.stats.tcp_dropped.inc("unsent");
        }
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, wire) = udp::encode(response, Protocol::Tcp)?;
        if let Some((cache, key)) = self.offer.take() {
            cache.offer(key, &wire);
        }
        self.queue(wire);
        Ok(info)
    }
}
