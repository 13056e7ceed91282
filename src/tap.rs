//! `dnsledger tap`: the Frame Streams/dnstap debugging tool. `listen` is a drop-in for
//! `fstrm_capture` (and prints decoded messages when not writing a file), `read` prints a
//! capture file, `replay` sends a file to a listener like `fstrm_replay`.
//!
//! Progress goes to stderr every few seconds and the totals at the end; data goes to stdout.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dnstap::{self, OutputFormat};
use crate::framestream::{
    DNSTAP_CONTENT_TYPE, Endpoint, FileError, FileReader, FileWriter, Listener, ListenerConfig, ListenerStats, Target,
    WriterConfig, WriterStats, listener::ListenError,
};
use crate::metrics::{Counter, Metrics, ReasonCounter, Registry, write_metric, write_reasons};

#[derive(Debug, Error)]
pub enum TapError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("replay: the writer stopped before the file was sent ({sent} of the frames queued)")]
    WriterStopped { sent: u64 },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TapError {
    let what = what.into();
    move |source| TapError::Io { what, source }
}

/// Where `tap listen` puts frames.
pub enum ListenOutput {
    /// An fstrm file, byte-compatible with `fstrm_capture -w`.
    File(PathBuf),
    /// Decoded messages on stdout.
    Print(OutputFormat),
}

pub struct ListenOptions {
    pub endpoint: Endpoint,
    pub output: ListenOutput,
    pub listener: ListenerConfig,
    /// Stop after this many frames.
    pub count: Option<u64>,
    pub progress: bool,
}

/// Decode/print counters for `tap listen` and `tap read`.
#[derive(Debug, Default)]
pub struct TapStats {
    pub frames_written: Counter,
    pub frames_decoded: Counter,
    pub frames_undecodable: ReasonCounter,
}

impl Metrics for TapStats {
    fn render(&self, out: &mut String) {
        write_metric(
            out,
            "dnsledger_tap_frames_written_total",
            "counter",
            "Frames written to the capture file.",
            self.frames_written.get(),
        );
        write_metric(
            out,
            "dnsledger_tap_frames_decoded_total",
            "counter",
            "Frames decoded as dnstap.",
            self.frames_decoded.get(),
        );
        write_reasons(
            out,
            "dnsledger_tap_frames_undecodable_total",
            "Frames that are not valid dnstap, by reason.",
            "reason",
            &self.frames_undecodable,
        );
    }
}

/// Prints one frame; undecodable frames are counted, not fatal.
fn print_frame(frame: Bytes, format: OutputFormat, stats: &TapStats, text: &mut String) {
    match dnstap::decode(frame) {
        Ok(ev) => {
            stats.frames_decoded.inc();
            dnstap::render(&ev, format, text);
        }
        Err(e) => {
            stats.frames_undecodable.inc(e.label());
            tracing::debug!(error = %e, "undecodable frame");
        }
    }
}

/// Consumes batches on a blocking thread (file and stdout writes are blocking I/O).
async fn write_file(
    mut rx: mpsc::Receiver<Vec<Bytes>>,
    path: PathBuf,
    stats: Arc<TapStats>,
    count: Option<u64>,
    shutdown: CancellationToken,
) -> Result<(), TapError> {
    let what = path.display().to_string();
    let mut w = FileWriter::create(&path, DNSTAP_CONTENT_TYPE).map_err(io_err(what.clone()))?;
    let mut seen = 0u64;
    while let Some(mut batch) = rx.recv().await {
        if let Some(c) = count {
            batch.truncate(c.saturating_sub(seen) as usize);
        }
        for f in &batch {
            w.write_frame(f).map_err(io_err(what.clone()))?;
        }
        stats.frames_written.add(batch.len() as u64);
        seen += batch.len() as u64;
        if count.is_some_and(|c| seen >= c) {
            // Exactly `count` frames; what else arrives until the listener stops is not kept.
            shutdown.cancel();
        }
    }
    w.finish().map_err(io_err(what))?;
    Ok(())
}

/// Prints the messages of every frame on stdout (on a blocking thread: stdout may be slow).
fn print_frames(
    mut rx: mpsc::Receiver<Vec<Bytes>>,
    format: OutputFormat,
    stats: Arc<TapStats>,
    count: Option<u64>,
    shutdown: CancellationToken,
) -> Result<(), TapError> {
    let mut seen = 0u64;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut text = String::new();
    while let Some(mut batch) = rx.blocking_recv() {
        if let Some(c) = count {
            batch.truncate(c.saturating_sub(seen) as usize);
        }
        seen += batch.len() as u64;
        for f in batch {
            print_frame(f, format, &stats, &mut text);
        }
        out.write_all(text.as_bytes()).map_err(io_err("stdout"))?;
        out.flush().map_err(io_err("stdout"))?;
        text.clear();
        if count.is_some_and(|c| seen >= c) {
            shutdown.cancel();
        }
    }
    Ok(())
}

fn spawn_progress(label: &'static str, counter: impl Fn() -> u64 + Send + 'static, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = counter();
            eprintln!(
                "{label}: {now} frames, {:.0}/s now, {:.0}s elapsed",
                (now - last) as f64 / 5.0,
                start.elapsed().as_secs_f64()
            );
            last = now;
        }
    });
}

/// Runs `tap listen` until `shutdown` (or `count` frames); returns listener and tap stats.
pub async fn listen(
    opts: ListenOptions,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<(Arc<ListenerStats>, Arc<TapStats>), TapError> {
    let listener = Listener::bind(&opts.endpoint).await?;
    eprintln!("tap listen: listening on {}", listener.describe());
    let listener_stats = Arc::new(ListenerStats::default());
    let tap_stats = Arc::new(TapStats::default());
    registry.register(listener_stats.clone());
    registry.register(tap_stats.clone());
    let (tx, rx) = mpsc::channel(64);
    let consumer = {
        let (stats, shutdown, count) = (tap_stats.clone(), shutdown.clone(), opts.count);
        match opts.output {
            // Writing a file is appends into the page cache through a 1 MiB buffer: done on the
            // I/O thread itself, like fstrm_capture, it saves a cross-thread wake-up per batch
            // (measured: ~0.75x fstrm_capture's rate with a separate writer thread).
            ListenOutput::File(path) => tokio::spawn(write_file(rx, path, stats, count, shutdown)),
            ListenOutput::Print(format) => {
                tokio::task::spawn_blocking(move || print_frames(rx, format, stats, count, shutdown))
            }
        }
    };
    if opts.progress {
        let s = listener_stats.clone();
        spawn_progress("tap listen", move || s.frames_received.get(), shutdown.clone());
    }
    let start = Instant::now();
    crate::framestream::listener::run(listener, Arc::new(opts.listener), tx, listener_stats.clone(), shutdown).await;
    let consumed = consumer.await.map_err(|e| TapError::Io { what: "consumer".into(), source: io::Error::other(e) })?;
    consumed?;
    let secs = start.elapsed().as_secs_f64();
    let frames = listener_stats.frames_received.get();
    eprintln!(
        "tap listen: {frames} frames in {secs:.1}s ({:.0}/s), {} connections, {} streams finished, {} frames dropped {:?}, {} connections failed {:?}, {} undecodable",
        frames as f64 / secs.max(1e-9),
        listener_stats.connections_accepted.get(),
        listener_stats.streams_finished.get(),
        listener_stats.frames_dropped.total(),
        listener_stats.frames_dropped.snapshot(),
        listener_stats.connections_failed.total(),
        listener_stats.connections_failed.snapshot(),
        tap_stats.frames_undecodable.total(),
    );
    Ok((listener_stats, tap_stats))
}

/// Totals of `tap read`.
#[derive(Debug, Default)]
pub struct ReadTotals {
    pub frames: u64,
    pub decoded: u64,
    pub undecodable: u64,
    pub dns_parsed: u64,
    pub dns_malformed: u64,
}

/// Prints every message of an fstrm file.
pub fn read(path: &Path, format: OutputFormat, out: &mut impl Write) -> Result<ReadTotals, TapError> {
    let stats = TapStats::default();
    let mut frames = 0u64;
    let mut text = String::new();
    for frame in FileReader::open(path, DNSTAP_CONTENT_TYPE)? {
        frames += 1;
        print_frame(frame?, format, &stats, &mut text);
        if text.len() > 64 * 1024 {
            out.write_all(text.as_bytes()).map_err(io_err("stdout"))?;
            text.clear();
        }
    }
    out.write_all(text.as_bytes()).map_err(io_err("stdout"))?;
    out.flush().map_err(io_err("stdout"))?;
    Ok(ReadTotals {
        frames,
        decoded: stats.frames_decoded.get(),
        undecodable: stats.frames_undecodable.total(),
        ..Default::default()
    })
}

/// Decodes every frame of a file and parses every DNS message, printing nothing: the
/// throughput check behind `tap read --count-only`.
pub fn scan(path: &Path) -> Result<ReadTotals, TapError> {
    let mut t = ReadTotals::default();
    for frame in FileReader::open(path, DNSTAP_CONTENT_TYPE)? {
        t.frames += 1;
        match dnstap::decode(frame?) {
            Ok(ev) => {
                t.decoded += 1;
                for wire in [&ev.message.query_message, &ev.message.response_message].into_iter().flatten() {
                    match dnstap::parse_dns(wire) {
                        Ok(_) => t.dns_parsed += 1,
                        Err(_) => t.dns_malformed += 1,
                    }
                }
            }
            Err(_) => t.undecodable += 1,
        }
    }
    Ok(t)
}

/// Sends every frame of `path` to a listener, losslessly, optionally at `rate` frames/s.
pub async fn replay(
    path: &Path,
    target: Target,
    rate: Option<u64>,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<u64, TapError> {
    let mut reader = FileReader::open(path, DNSTAP_CONTENT_TYPE)?;
    let stats = Arc::new(WriterStats::default());
    registry.register(stats.clone());
    let mut config = WriterConfig::new(target);
    config.queue_frames = 8192;
    let (sender, writer) = crate::framestream::writer::spawn(config, stats.clone(), shutdown.clone());
    let start = Instant::now();
    let producer = tokio::task::spawn_blocking(move || -> Result<u64, TapError> {
        let mut n = 0u64;
        while let Some(frame) = reader.next_frame()? {
            if let Some(rate) = rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(n as f64 / rate as f64);
                let now = start.elapsed();
                if due > now + Duration::from_millis(1) {
                    std::thread::sleep(due - now);
                }
            }
            if sender.blocking_send(frame).is_err() {
                return Err(TapError::WriterStopped { sent: n });
            }
            n += 1;
        }
        Ok(n)
    });
    let s = stats.clone();
    spawn_progress("tap replay", move || s.frames_sent.get(), shutdown.clone());
    let queued = producer.await.map_err(|e| TapError::Io { what: "reader".into(), source: io::Error::other(e) })??;
    let _ = writer.await;
    let secs = start.elapsed().as_secs_f64();
    let sent = stats.frames_sent.get();
    eprintln!(
        "tap replay: {sent} of {queued} frames sent in {secs:.1}s ({:.0}/s), {} lost in flight, {} dropped at shutdown",
        sent as f64 / secs.max(1e-9),
        stats.frames_lost_in_flight.get(),
        stats.frames_dropped_at_shutdown.get()
    );
    Ok(sent)
}
