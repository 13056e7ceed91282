//! Frame Streams writer: a client that connects to a unix or TCP listener, performs the
//! bidirectional handshake and streams data frames from a bounded queue.
//!
//! Producers either wait for room ([`FrameSender::send`], lossless: `tap replay`) or never wait
//! ([`FrameSender::try_send`], the resolver's emitter: DNS service must not block on dnstap;
//! overflow is counted). The connection is re-established with exponential backoff. When all
//! senders are gone (or on shutdown) the queue is drained, STOP is sent and FINISH awaited.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::codec::{
    ControlFrame, DATA_FRAME_DEFAULT, DNSTAP_CONTENT_TYPE, Frame, FrameCodec, encode_control, encode_data,
};
use super::handshake::WriterHandshake;
use crate::metrics::{Counter, Gauge, Metrics, write_metric};

/// Where the writer connects.
#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub target: Target,
    pub content_type: Bytes,
    /// Frames the queue holds before `try_send` drops.
    pub queue_frames: usize,
    pub max_frame: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Bound on the handshake and on waiting for FINISH.
    pub handshake_timeout: Duration,
    /// Bytes gathered from the queue into one write.
    pub write_batch_bytes: usize,
}

impl WriterConfig {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            content_type: Bytes::from_static(DNSTAP_CONTENT_TYPE),
            queue_frames: 16 * 1024,
            max_frame: DATA_FRAME_DEFAULT,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            write_batch_bytes: 256 * 1024,
        }
    }
}

/// Writer counters (Prometheus prefix `dnsledger_framestream_writer_`).
#[derive(Debug, Default)]
pub struct WriterStats {
    pub frames_sent: Counter,
    pub bytes_sent: Counter,
    /// Refused by `try_send` because the queue was full (or the writer had stopped).
    pub frames_dropped_queue_full: Counter,
    /// Written into a connection that then failed; the peer may not have them.
    pub frames_lost_in_flight: Counter,
    /// Left in the queue at shutdown with no connection to send them on.
    pub frames_dropped_at_shutdown: Counter,
    /// Rejected because they exceed the frame limit or are empty.
    pub frames_invalid: Counter,
    pub connects: Counter,
    pub connect_failures: Counter,
    pub connected: Gauge,
}

impl Metrics for WriterStats {
    fn render(&self, out: &mut String) {
        let p = "dnsledger_framestream_writer";
        write_metric(
            out,
            &format!("{p}_frames_sent_total"),
            "counter",
            "Data frames written to the peer.",
            self.frames_sent.get(),
        );
        write_metric(
            out,
            &format!("{p}_bytes_sent_total"),
            "counter",
            "Data frame payload bytes written.",
            self.bytes_sent.get(),
        );
        write_metric(
            out,
            &format!("{p}_frames_dropped_queue_full_total"),
            "counter",
            "Frames dropped because the queue was full.",
            self.frames_dropped_queue_full.get(),
        );
        write_metric(
            out,
            &format!("{p}_frames_lost_in_flight_total"),
            "counter",
            "Frames written to a connection that then failed.",
            self.frames_lost_in_flight.get(),
        );
        write_metric(
            out,
            &format!("{p}_frames_dropped_at_shutdown_total"),
            "counter",
            "Frames still queued at shutdown without a connection.",
            self.frames_dropped_at_shutdown.get(),
        );
        write_metric(
            out,
            &format!("{p}_frames_invalid_total"),
            "counter",
            "Frames refused as empty or over the limit.",
            self.frames_invalid.get(),
        );
        write_metric(
            out,
            &format!("{p}_connects_total"),
            "counter",
            "Successful connections and handshakes.",
            self.connects.get(),
        );
        write_metric(
            out,
            &format!("{p}_connect_failures_total"),
            "counter",
            "Failed connection or handshake attempts.",
            self.connect_failures.get(),
        );
        write_metric(out, &format!("{p}_connected"), "gauge", "1 while connected.", self.connected.get());
    }
}

/// The producer side of a writer.
#[derive(Clone)]
pub struct FrameSender {
    tx: mpsc::Sender<Bytes>,
    stats: Arc<WriterStats>,
}

impl FrameSender {
    /// Queues a frame without waiting; false (and counted) when the queue is full.
    pub fn try_send(&self, frame: Bytes) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(_) => {
                self.stats.frames_dropped_queue_full.inc();
                false
            }
        }
    }

    /// Queues a frame, waiting for room. Err when the writer has stopped.
    pub async fn send(&self, frame: Bytes) -> Result<(), Bytes> {
        self.tx.send(frame).await.map_err(|e| e.0)
    }

    /// Blocking variant of [`send`](Self::send) for producers on plain threads.
    pub fn blocking_send(&self, frame: Bytes) -> Result<(), Bytes> {
        self.tx.blocking_send(frame).map_err(|e| e.0)
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Starts the writer task. It ends once every `FrameSender` is dropped (after draining) or,
/// on `shutdown`, after sending what is queued if connected.
pub fn spawn(
    config: WriterConfig,
    stats: Arc<WriterStats>,
    shutdown: CancellationToken,
) -> (FrameSender, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.queue_frames.max(1));
    let sender = FrameSender { tx, stats: stats.clone() };
    let task = tokio::spawn(run(config, rx, stats, shutdown));
    (sender, task)
}

async fn connect(config: &WriterConfig) -> io::Result<(Box<dyn Stream>, WriterHandshake)> {
    let mut stream: Box<dyn Stream> = match &config.target {
        Target::Unix(path) => Box::new(UnixStream::connect(path).await?),
        Target::Tcp(addr) => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    };
    let mut handshake = WriterHandshake::new(&config.content_type);
    let handshake_io = async {
        write_control(&mut stream, &handshake.ready()).await?;
        let accept = read_control(&mut stream).await?;
        let start = handshake
            .on_control(&accept)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no START after ACCEPT"))?;
        write_control(&mut stream, &start).await
    };
    tokio::time::timeout(config.handshake_timeout, handshake_io)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
    Ok((stream, handshake))
}

async fn write_control(stream: &mut Box<dyn Stream>, frame: &ControlFrame) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(64);
    encode_control(frame, &mut buf).map_err(io::Error::other)?;
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Reads until one control frame arrives (a reader sends nothing else).
async fn read_control(stream: &mut Box<dyn Stream>) -> io::Result<ControlFrame> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match codec.decode(&mut buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
            Some(Frame::Control(c)) => return Ok(c),
            Some(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "data frame from the reader")),
            None => {}
        }
        if buf.len() > 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "reader sent too much"));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn run(
    config: WriterConfig,
    mut rx: mpsc::Receiver<Bytes>,
    stats: Arc<WriterStats>,
    shutdown: CancellationToken,
) {
    let mut backoff = config.backoff_min;
    let mut pending: Option<Bytes> = None;
    let mut closing = false;
    loop {
        // Connect, unless there is nothing left to send.
        if pending.is_none() && closing && rx.is_empty() {
            break;
        }
        let connected = tokio::select! {
            r = connect(&config) => r,
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                rx.close();
                continue;
            }
        };
        let (mut stream, mut handshake) = match connected {
            Ok(c) => c,
            Err(e) => {
                stats.connect_failures.inc();
                if closing {
                    // Shutting down with the peer unreachable: what is queued cannot be sent.
                    let mut left = pending.take().map_or(0, |_| 1);
                    while rx.try_recv().is_ok() {
                        left += 1;
                    }
                    stats.frames_dropped_at_shutdown.add(left);
                    tracing::warn!(target = %config.target, error = %e, dropped = left, "frame streams writer stopped without a connection");
                    return;
                }
                tracing::warn!(target = %config.target, error = %e, retry_in = ?backoff, "frame streams connect failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => { closing = true; rx.close(); }
                }
                backoff = (backoff * 2).min(config.backoff_max);
                continue;
            }
        };
        stats.connects.inc();
        stats.connected.set(1);
        backoff = config.backoff_min;
        tracing::info!(target = %config.target, "frame streams writer connected");

        let mut buf = BytesMut::with_capacity(config.write_batch_bytes + 4096);
        let ended_cleanly = loop {
            let first = match pending.take() {
                Some(f) => Some(f),
                None => tokio::select! {
                    f = rx.recv() => f,
                    _ = shutdown.cancelled(), if !closing => { closing = true; rx.close(); continue; }
                },
            };
            let Some(first) = first else { break true };
            let mut batch = 0u64;
            let mut bytes = 0u64;
            let mut next = Some(first);
            while let Some(frame) = next.take() {
                if encode_data(&frame, config.max_frame, &mut buf).is_ok() {
                    batch += 1;
                    bytes += frame.len() as u64;
                } else {
                    stats.frames_invalid.inc();
                }
                if buf.len() < config.write_batch_bytes {
                    next = rx.try_recv().ok();
                }
            }
            if let Err(e) = stream.write_all(&buf).await {
                stats.frames_lost_in_flight.add(batch);
                tracing::warn!(target = %config.target, error = %e, lost = batch, "frame streams connection failed");
                buf.clear();
                break false;
            }
            buf.clear();
            stats.frames_sent.add(batch);
            stats.bytes_sent.add(bytes);
        };
        stats.connected.set(0);
        if ended_cleanly {
            let stop = handshake.stop();
            let finish = async {
                write_control(&mut stream, &stop).await?;
                let f = read_control(&mut stream).await?;
                handshake.on_control(&f).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                Ok::<_, io::Error>(())
            };
            match tokio::time::timeout(config.handshake_timeout, finish).await {
                Ok(Ok(())) => tracing::info!(target = %config.target, "frame streams writer finished"),
                Ok(Err(e)) => tracing::debug!(error = %e, "no FINISH from reader"),
                Err(_) => tracing::debug!("timed out waiting for FINISH"),
            }
            let _ = stream.shutdown().await;
            return;
        }
    }
}
