//! Frame Streams listener: unix socket or TCP (optionally TLS), many concurrent connections
//! under a cap, each isolated in its own task.
//!
//! A connection decodes frames with the codec, drives the reader handshake and hands data
//! frames downstream in batches to a [`FrameSink`]: a bounded channel, or the sensor's stages
//! run in place. With [`ListenerConfig::blocking_reads`], a unix or plain TCP connection whose
//! stream has started is read with blocking reads on a thread of the runtime's blocking pool
//! ([`IntoBlocking`] says why). When downstream is slow the hand-over waits, so the connection stops reading
//! and the kernel pushes back on the peer: nothing is dropped for lack of room. An oversized
//! frame is counted and skipped; a protocol violation (bad control frame, data before START,
//! wrong content type) closes that connection only.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{ControlFrame, DATA_FRAME_DEFAULT, DNSTAP_CONTENT_TYPE, Frame, FrameCodec, encode_control};
use super::error::{FrameError, HandshakeError};
use super::handshake::{ReaderHandshake, ReaderStep};
use crate::metrics::{Counter, Gauge, Metrics, ReasonCounter, write_metric, write_reasons};

/// Where to listen.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix { path: PathBuf, mode: Option<u32> },
    Tcp { addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>> },
}

/// Listener tuning; the defaults suit a sensor beside a busy resolver.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub content_type: Bytes,
    /// Largest data frame accepted (never below 128 KiB).
    pub max_frame: usize,
    pub max_connections: usize,
    /// Initial read buffer per connection.
    pub read_buffer: usize,
    /// Most frames handed downstream in one batch.
    pub batch_frames: usize,
    /// A handshake, or a frame once begun, must complete within this time.
    pub stall_timeout: Duration,
    /// Once its stream has started, a unix or plain TCP connection is read with blocking
    /// reads on a thread of its own (see [`IntoBlocking`]), if the sink can take batches there.
    pub blocking_reads: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            content_type: Bytes::from_static(DNSTAP_CONTENT_TYPE),
            max_frame: DATA_FRAME_DEFAULT,
            max_connections: 512,
            read_buffer: 256 * 1024,
            batch_frames: 256,
            stall_timeout: Duration::from_secs(30),
            blocking_reads: false,
        }
    }
}

#[derive(Debug, Error)]
pub enum ListenError {
    #[error("{path}: another process is listening on this socket")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {what}: {source}")]
    Bind { what: String, source: io::Error },
}

/// Why a connection ended early.
#[derive(Debug, Error)]
enum ConnError {
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("stalled for {0:?} inside a frame or the handshake")]
    Stalled(Duration),
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
}

impl ConnError {
    fn label(&self) -> &'static str {
        match self {
            Self::Frame(e) => e.label(),
            Self::Handshake(e) => e.label(),
            Self::Stalled(_) => "stalled",
            Self::Tls(_) => "tls_handshake",
        }
    }
}

/// Listener counters (Prometheus prefix `dnsledger_framestream_`).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub connections_accepted: Counter,
    pub connections_active: Gauge,
    /// Connections closed by a violation or I/O error, by reason.
    pub connections_failed: ReasonCounter,
    /// Streams that ended with STOP.
    pub streams_finished: Counter,
    pub frames_received: Counter,
    pub bytes_received: Counter,
    /// Data frames dropped, by reason (oversized, truncated at disconnect).
    pub frames_dropped: ReasonCounter,
    /// Read buffers grown for a large frame and shrunk back once it was out of them.
    pub buffers_shrunk: Counter,
    /// Connections read with blocking reads on a thread of their own once started.
    pub connections_blocking: Counter,
}

impl Metrics for ListenerStats {
    fn render(&self, out: &mut String) {
        let p = "dnsledger_framestream";
        write_metric(
            out,
            &format!("{p}_connections_accepted_total"),
            "counter",
            "Connections accepted.",
            self.connections_accepted.get(),
        );
        write_metric(
            out,
            &format!("{p}_connections_active"),
            "gauge",
            "Open connections.",
            self.connections_active.get(),
        );
        write_reasons(
            out,
            &format!("{p}_connections_failed_total"),
            "Connections closed on error, by reason.",
            "reason",
            &self.connections_failed,
        );
        write_metric(
            out,
            &format!("{p}_streams_finished_total"),
            "counter",
            "Streams ended by STOP.",
            self.streams_finished.get(),
        );
        write_metric(
            out,
            &format!("{p}_frames_received_total"),
            "counter",
            "Data frames received.",
            self.frames_received.get(),
        );
        write_metric(
            out,
            &format!("{p}_bytes_received_total"),
            "counter",
            "Data frame payload bytes received.",
            self.bytes_received.get(),
        );
        write_reasons(
            out,
            &format!("{p}_frames_dropped_total"),
            "Data frames dropped, by reason.",
            "reason",
            &self.frames_dropped,
        );
        write_metric(
            out,
            &format!("{p}_buffers_shrunk_total"),
            "counter",
            "Read buffers grown for a large frame and shrunk back after it.",
            self.buffers_shrunk.get(),
        );
        write_metric(
            out,
            &format!("{p}_connections_blocking_total"),
            "counter",
            "Connections read with blocking reads on a thread of their own once their stream started.",
            self.connections_blocking.get(),
        );
    }
}

/// Where a connection hands its data frames: a batch at a time, in order per connection.
pub trait FrameSink: Clone + Send + Sync + 'static {
    /// Whether [`FrameSink::deliver_blocking`] may be called (from a thread outside the
    /// runtime, by a connection read with blocking reads).
    const BLOCKING: bool = false;

    /// Takes every frame out of `batch` (whose room the connection reuses), waiting while
    /// downstream has no room. False when downstream has gone away: the connection then ends.
    fn deliver(&self, batch: &mut Vec<Bytes>) -> impl Future<Output = bool> + Send;

    /// [`FrameSink::deliver`], blocking the calling thread. Only called when `BLOCKING`.
    fn deliver_blocking(&self, batch: &mut Vec<Bytes>) -> bool {
        batch.clear();
        false
    }
}

/// A bounded channel: the send waits for room.
impl FrameSink for mpsc::Sender<Vec<Bytes>> {
    const BLOCKING: bool = true;

    fn deliver(&self, batch: &mut Vec<Bytes>) -> impl Future<Output = bool> + Send {
        let frames = std::mem::take(batch);
        async move { self.send(frames).await.is_ok() }
    }

    fn deliver_blocking(&self, batch: &mut Vec<Bytes>) -> bool {
        self.blocking_send(std::mem::take(batch)).is_ok()
    }
}

enum Socket {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener, Option<TlsAcceptor>),
}

/// A bound listening socket.
pub struct Listener {
    socket: Socket,
}

/// Removes a stale unix socket left by a dead process; refuses to touch a live socket or a
/// file that is not a socket.
fn clear_stale_socket(path: &Path) -> Result<(), ListenError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket { path: path.into() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::InUse { path: path.into() }),
        Err(_) => {
            tracing::info!(path = %path.display(), "replacing stale socket");
            std::fs::remove_file(path).map_err(|source| ListenError::Bind { what: path.display().to_string(), source })
        }
    }
}

impl Listener {
    pub async fn bind(endpoint: &Endpoint) -> Result<Self, ListenError> {
        let socket = match endpoint {
            Endpoint::Unix { path, mode } => {
                clear_stale_socket(path)?;
                let bind_err = |source| ListenError::Bind { what: path.display().to_string(), source };
                let listener = UnixListener::bind(path).map_err(bind_err)?;
                if let Some(mode) = mode {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode)).map_err(bind_err)?;
                }
                Socket::Unix(listener, path.clone())
            }
            Endpoint::Tcp { addr, tls } => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ListenError::Bind { what: addr.to_string(), source })?;
                Socket::Tcp(listener, tls.clone().map(TlsAcceptor::from))
            }
        };
        Ok(Self { socket })
    }

    /// Where the listener is, for logs and tests (`unix:PATH` or `tcp:ADDR`).
    pub fn describe(&self) -> String {
        match &self.socket {
            Socket::Unix(_, path) => format!("unix:{}", path.display()),
            Socket::Tcp(l, tls) => {
                let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                if tls.is_some() { format!("tls:{addr}") } else { format!("tcp:{addr}") }
            }
        }
    }

    /// Moves the socket to the runtime this is called in, for a listener bound in one runtime
    /// and served on another: served where it was bound, every readiness event would cross
    /// threads. Call it inside the serving runtime.
    pub fn into_current_runtime(self) -> io::Result<Self> {
        let socket = match self.socket {
            Socket::Unix(l, path) => Socket::Unix(UnixListener::from_std(l.into_std()?)?, path),
            Socket::Tcp(l, tls) => Socket::Tcp(TcpListener::from_std(l.into_std()?)?, tls),
        };
        Ok(Self { socket })
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            Socket::Tcp(l, _) => l.local_addr().ok(),
            Socket::Unix(..) => None,
        }
    }
}

/// Accepts connections until `shutdown`, then waits for open connections to hand over what
/// they have read. Data frames go to `out` in batches, in order per connection.
pub async fn run(
    listener: Listener,
    config: Arc<ListenerConfig>,
    out: impl FrameSink,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let tracker = TaskTracker::new();
    tracing::info!(listen = %listener.describe(), "frame streams listener ready");
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        macro_rules! spawn_conn {
            ($stream:expr, $peer:expr) => {{
                let (config, out, stats, shutdown) = (config.clone(), out.clone(), stats.clone(), shutdown.clone());
                stats.connections_accepted.inc();
                stats.connections_active.inc();
                let peer: String = $peer;
                tracker.spawn(async move {
                    let result = $stream.await;
                    let result = match result {
                        Ok(stream) => serve_connection(stream, &config, &out, &stats, &shutdown).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(()) => tracing::debug!(%peer, "frame stream closed"),
                        Err(e) => {
                            stats.connections_failed.inc(e.label());
                            tracing::warn!(%peer, error = %e, "frame stream connection closed");
                        }
                    }
                    stats.connections_active.dec();
                    drop(permit);
                });
            }};
        }
        match &listener.socket {
            Socket::Unix(l, _) => tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => spawn_conn!(async { Ok::<_, ConnError>(stream) }, "unix".to_string()),
                    Err(e) => accept_failed(e).await,
                },
            },
            Socket::Tcp(l, tls) => tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = l.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        match tls.clone() {
                            None => spawn_conn!(async { Ok::<_, ConnError>(stream) }, peer.to_string()),
                            Some(acceptor) => {
                                let stall = config.stall_timeout;
                                spawn_conn!(
                                    async move {
                                        match tokio::time::timeout(stall, acceptor.accept(stream)).await {
                                            Ok(Ok(s)) => Ok(s),
                                            Ok(Err(e)) => Err(ConnError::Tls(e)),
                                            Err(_) => Err(ConnError::Stalled(stall)),
                                        }
                                    },
                                    peer.to_string()
                                )
                            }
                        }
                    }
                    Err(e) => accept_failed(e).await,
                },
            },
        }
    }
    tracker.close();
    tracker.wait().await;
    if let Socket::Unix(_, path) = &listener.socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(listen = %listener.describe(), "frame streams listener stopped");
}

async fn accept_failed(e: io::Error) {
    // Out of file descriptors and the like: back off rather than spin.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn send_control<S: AsyncWrite + Unpin>(stream: &mut S, frame: &ControlFrame) -> io::Result<()> {
    stream.write_all(&control_bytes(frame)?).await?;
    stream.flush().await
}

/// [`send_control`] on a blocking socket.
fn write_control(socket: &mut impl std::io::Write, frame: &ControlFrame) -> io::Result<()> {
    socket.write_all(&control_bytes(frame)?)?;
    socket.flush()
}

fn control_bytes(frame: &ControlFrame) -> io::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(64);
    encode_control(frame, &mut buf).map_err(io::Error::other)?;
    Ok(buf)
}

/// A connection's reading state: the codec, the handshake, the read buffer and the batch
/// being gathered.
struct Conn {
    codec: FrameCodec,
    handshake: ReaderHandshake,
    buf: BytesMut,
    /// Whether `buf` has grown past twice its size (for a large frame).
    grown: bool,
    batch: Vec<Bytes>,
}

/// The least room a read is given: a quarter of the read buffer, at least a byte.
fn min_room(config: &ListenerConfig) -> usize {
    (config.read_buffer / 4).max(1)
}

/// What decoding the buffered bytes came to.
enum Decoded {
    /// Everything buffered is decoded: read more.
    More,
    /// The batch is full: hand it over, then decode on.
    Full,
    /// This control frame is to be sent back, then decoding goes on.
    Reply(ControlFrame),
    /// The stream ended (STOP): hand the batch over and send this FINISH, if any.
    Finished(Option<ControlFrame>),
}

impl Conn {
    fn new(config: &ListenerConfig) -> Self {
        Self {
            codec: FrameCodec::new(config.max_frame),
            handshake: ReaderHandshake::new(&config.content_type),
            buf: BytesMut::with_capacity(config.read_buffer),
            grown: false,
            batch: Vec::new(),
        }
    }

    /// Decodes what is buffered into the batch, up to the next thing the connection must do.
    /// On an error the batch still holds the frames before it (to be handed over).
    fn decode(&mut self, config: &ListenerConfig, stats: &ListenerStats) -> Result<Decoded, ConnError> {
        loop {
            let Some(frame) = self.codec.decode(&mut self.buf)? else { return Ok(Decoded::More) };
            match frame {
                Frame::Data(payload) => {
                    self.handshake.on_data()?;
                    self.batch.push(payload);
                    if self.batch.len() >= config.batch_frames {
                        return Ok(Decoded::Full);
                    }
                }
                Frame::Oversized { len } => {
                    stats.frames_dropped.inc("oversized");
                    tracing::warn!(len, limit = self.codec.max_data(), "oversized data frame dropped");
                }
                Frame::Control(control) => match self.handshake.on_control(&control)? {
                    ReaderStep::Continue => {}
                    ReaderStep::Reply(reply) => return Ok(Decoded::Reply(reply)),
                    ReaderStep::Finished(finish) => return Ok(Decoded::Finished(finish)),
                },
            }
        }
    }

    /// A buffer grown for a large frame that is out of it now goes back to its size, not kept
    /// for the rest of the connection (the frames decoded keep the large one until they are
    /// dropped).
    fn shrink(&mut self, config: &ListenerConfig, stats: &ListenerStats) {
        if self.grown && self.buf.len() <= config.read_buffer / 2 {
            let mut small = BytesMut::with_capacity(config.read_buffer);
            small.extend_from_slice(&self.buf);
            self.buf = small;
            self.grown = false;
            stats.buffers_shrunk.inc();
        }
    }

    /// Whether the buffer needs room before the next read ([`Conn::make_room`], after the batch
    /// is handed over: the frames decoded share the buffer until they are dropped, and handed
    /// over first they leave it to this connection alone, so that `reserve` can move what is
    /// left of a frame cut short to its front instead of allocating a new buffer, which, past
    /// glibc's mapping threshold, is mapped and faulted in anew).
    fn needs_room(&self, config: &ListenerConfig) -> bool {
        self.buf.capacity() - self.buf.len() < min_room(config)
    }

    fn make_room(&mut self, config: &ListenerConfig) {
        let room = min_room(config);
        self.buf.reserve(config.read_buffer.saturating_sub(self.buf.len()).max(room));
        self.grown |= self.buf.capacity() > 2 * config.read_buffer;
    }

    /// The stream ended with the peer closing: fine between frames of a started stream (or
    /// before anything), a truncated frame otherwise.
    fn closed(&self, stats: &ListenerStats) -> Result<(), ConnError> {
        if !self.codec.is_idle(&self.buf) {
            stats.frames_dropped.inc("truncated");
            return Err(ConnError::Frame(FrameError::Io(io::ErrorKind::UnexpectedEof.into())));
        }
        tracing::debug!(started = self.handshake.is_started(), "peer closed without STOP");
        Ok(())
    }
}

/// Reads one connection to its end. Returns Ok on STOP, on a peer that closes between
/// frames, and on shutdown. With `config.blocking_reads`, a unix or plain TCP connection
/// whose stream has started is read on a thread of its own ([`serve_blocking`]).
async fn serve_connection<S: AsyncRead + AsyncWrite + IntoBlocking + Unpin, O: FrameSink>(
    mut stream: S,
    config: &Arc<ListenerConfig>,
    out: &O,
    stats: &Arc<ListenerStats>,
    shutdown: &CancellationToken,
) -> Result<(), ConnError> {
    let mut c = Conn::new(config);
    loop {
        // Decode everything already buffered.
        loop {
            match c.decode(config, stats) {
                Ok(Decoded::More) => break,
                Ok(Decoded::Full) => {
                    if !deliver(&mut c.batch, out, stats).await {
                        return Ok(());
                    }
                }
                Ok(Decoded::Reply(reply)) => {
                    if let Err(e) = send_control(&mut stream, &reply).await {
                        return Err(ConnError::Frame(e.into()));
                    }
                }
                Ok(Decoded::Finished(finish)) => {
                    deliver(&mut c.batch, out, stats).await;
                    stats.streams_finished.inc();
                    if let Some(finish) = finish {
                        // unbound closes right after STOP: a failed FINISH is normal.
                        let _ = send_control(&mut stream, &finish).await;
                    }
                    return Ok(());
                }
                Err(e) => {
                    deliver(&mut c.batch, out, stats).await;
                    return Err(e);
                }
            }
        }
        if config.blocking_reads && O::BLOCKING && S::CAN && c.handshake.is_started() {
            if !deliver(&mut c.batch, out, stats).await {
                return Ok(());
            }
            let socket = stream.into_blocking().map_err(|e| ConnError::Frame(e.into()))?;
            stats.connections_blocking.inc();
            let (config, out, stats, shutdown) = (config.clone(), out.clone(), stats.clone(), shutdown.clone());
            return tokio::task::spawn_blocking(move || serve_blocking(socket, c, &config, &out, &stats, &shutdown))
                .await
                .unwrap_or_else(|e| Err(ConnError::Frame(FrameError::Io(io::Error::other(e)))));
        }
        c.shrink(config, stats);
        if c.needs_room(config) {
            if !deliver(&mut c.batch, out, stats).await {
                return Ok(());
            }
            c.make_room(config);
        }
        if !c.batch.is_empty() {
            // Senders such as fstrm_replay write one frame per syscall: keep reading what is
            // already in the socket and hand over only when it is empty (or the batch full),
            // so that downstream is woken once per batch, not once per frame.
            match read_ready(&mut stream, &mut c.buf).await {
                Some(Ok(n)) if n > 0 => continue,
                Some(Ok(_)) | Some(Err(_)) | None => {}
            }
            if !deliver(&mut c.batch, out, stats).await {
                return Ok(());
            }
        }
        // Between frames of a started stream a quiet peer may wait forever; inside a frame or
        // the handshake it must make progress.
        let between_frames = c.codec.is_idle(&c.buf) && c.handshake.is_started();
        let read = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = async {
                if between_frames {
                    Ok(stream.read_buf(&mut c.buf).await)
                } else {
                    tokio::time::timeout(config.stall_timeout, stream.read_buf(&mut c.buf)).await
                }
            } => r,
        };
        match read {
            Err(_) => {
                if !c.codec.is_idle(&c.buf) {
                    stats.frames_dropped.inc("truncated");
                }
                return Err(ConnError::Stalled(config.stall_timeout));
            }
            Ok(Ok(0)) => return c.closed(stats),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if !c.codec.is_idle(&c.buf) {
                    stats.frames_dropped.inc("truncated");
                }
                return Err(ConnError::Frame(e.into()));
            }
        }
    }
}

/// A stream that can be read with blocking reads on a thread of its own: a unix or TCP socket,
/// taken out of the runtime (not TLS).
///
/// The runtime keeps every socket it reads registered with its `epoll` instance, and then
/// every write of the sender runs the kernel's `epoll` callback for it, whether or not the
/// reader waits. A reader blocked in `recv` only is woken when it waits: with a minimal
/// reader in C doing 0.7 µs of work per frame, `fstrm_replay` sent 2M frames in 2.48 s to
/// the blocking one against 2.63 s to the `epoll` one (medians of 6; `fstrm_capture` 2.62 s;
/// docs/BENCHMARKS.md, seventeenth session).
pub trait IntoBlocking: Sized {
    /// Whether the stream can be read so (false for TLS, read through the runtime).
    const CAN: bool;
    type Blocking: std::os::fd::AsRawFd + std::io::Write + Send + 'static;

    /// The socket taken out of the runtime, in blocking mode.
    fn into_blocking(self) -> io::Result<Self::Blocking>;
}

/// A tokio socket and its std form, which have the same methods but no trait for them.
macro_rules! into_blocking {
    ($tokio:ty, $std:ty) => {
        impl IntoBlocking for $tokio {
            const CAN: bool = true;
            type Blocking = $std;

            fn into_blocking(self) -> io::Result<Self::Blocking> {
                let s = self.into_std()?;
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(BLOCKING_WAIT))?;
                s.set_write_timeout(Some(BLOCKING_WAIT))?;
                Ok(s)
            }
        }
    };
}
into_blocking!(tokio::net::UnixStream, std::os::unix::net::UnixStream);
into_blocking!(tokio::net::TcpStream, std::net::TcpStream);

impl<S> IntoBlocking for tokio_rustls::server::TlsStream<S> {
    const CAN: bool = false;
    type Blocking = std::os::unix::net::UnixStream;

    fn into_blocking(self) -> io::Result<Self::Blocking> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// How long a blocking read waits before the connection looks at shutdown and stalls.
const BLOCKING_WAIT: Duration = Duration::from_millis(100);

/// [`serve_connection`] from the start of the stream on, with blocking reads on this thread
/// (one of the runtime's blocking pool): read what the socket holds, decode it, hand the batch
/// over (each read takes all the socket holds, up to its room), read again. Control frames,
/// errors and the peer closing are handled as [`serve_connection`] handles them; a frame begun
/// must complete within `stall_timeout`; shutdown is seen within [`BLOCKING_WAIT`].
fn serve_blocking<T: std::os::fd::AsRawFd + std::io::Write, O: FrameSink>(
    mut socket: T,
    mut c: Conn,
    config: &ListenerConfig,
    out: &O,
    stats: &ListenerStats,
    shutdown: &CancellationToken,
) -> Result<(), ConnError> {
    // Since when a frame begun has waited.
    let mut stalled = None::<std::time::Instant>;
    loop {
        loop {
            match c.decode(config, stats) {
                Ok(Decoded::More) => break,
                Ok(Decoded::Full) => {
                    if !deliver_blocking(&mut c.batch, out, stats) {
                        return Ok(());
                    }
                }
                Ok(Decoded::Reply(reply)) => {
                    write_control(&mut socket, &reply).map_err(|e| ConnError::Frame(e.into()))?;
                }
                Ok(Decoded::Finished(finish)) => {
                    deliver_blocking(&mut c.batch, out, stats);
                    stats.streams_finished.inc();
                    if let Some(finish) = finish {
                        // unbound closes right after STOP: a failed FINISH is normal.
                        let _ = write_control(&mut socket, &finish);
                    }
                    return Ok(());
                }
                Err(e) => {
                    deliver_blocking(&mut c.batch, out, stats);
                    return Err(e);
                }
            }
        }
        c.shrink(config, stats);
        // No batch waits across a read (which may block): the arms below have none to hand over.
        if !deliver_blocking(&mut c.batch, out, stats) || shutdown.is_cancelled() {
            return Ok(());
        }
        if c.needs_room(config) {
            c.make_room(config);
        }
        match recv_blocking(socket.as_raw_fd(), &mut c.buf) {
            Ok(0) => return c.closed(stats),
            Ok(_) => stalled = None,
            // The read timeout passed (EAGAIN); a TCP timeout (ETIMEDOUT) is an error below.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if c.codec.is_idle(&c.buf) {
                    stalled = None;
                } else if stalled.get_or_insert_with(std::time::Instant::now).elapsed() >= config.stall_timeout {
                    stats.frames_dropped.inc("truncated");
                    return Err(ConnError::Stalled(config.stall_timeout));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !c.codec.is_idle(&c.buf) {
                    stats.frames_dropped.inc("truncated");
                }
                return Err(ConnError::Frame(e.into()));
            }
        }
    }
}

/// A blocking `recv` into `buf`'s spare room (at least one byte of it): the bytes read, 0 when
/// the peer has closed, `WouldBlock` when the socket's read timeout passed first.
fn recv_blocking(fd: std::os::fd::RawFd, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`; recv writes at
    // most that many, and `fd` is the open socket of the stream that lends it.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: recv initialised the first `n` bytes of the spare room.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// [`deliver`] from a blocking thread.
fn deliver_blocking(batch: &mut Vec<Bytes>, out: &impl FrameSink, stats: &ListenerStats) -> bool {
    batch.is_empty() || {
        count_received(batch, stats);
        out.deliver_blocking(batch)
    }
}

/// Reads only if data is already waiting: `None` when the read would block. (Dropping a
/// pending `read_buf` loses nothing: it is cancel-safe.)
async fn read_ready<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Option<io::Result<usize>> {
    let mut read = std::pin::pin!(stream.read_buf(buf));
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match read.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Hands the batch downstream, waiting for room. False when downstream has gone away.
async fn deliver(batch: &mut Vec<Bytes>, out: &impl FrameSink, stats: &ListenerStats) -> bool {
    if batch.is_empty() {
        return true;
    }
    count_received(batch, stats);
    out.deliver(batch).await
}

fn count_received(batch: &[Bytes], stats: &ListenerStats) {
    stats.frames_received.add(batch.len() as u64);
    stats.bytes_received.add(batch.iter().map(|f| f.len() as u64).sum());
}
