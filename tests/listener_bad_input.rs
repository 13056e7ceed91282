//! The listener under bad and hostile input: every case is counted, closes at most the
//! offending connection, and never disturbs the others. Also backpressure, concurrency and the
//! writer's reconnect and overflow behaviour. Runs the library in-process so the counters can
//! be read directly.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use dnsledger::framestream::codec::{encode_control, encode_data};
use dnsledger::framestream::listener::{self, Endpoint, Listener, ListenerConfig, ListenerStats};
use dnsledger::framestream::writer::{self, Target, WriterConfig, WriterStats};
use dnsledger::framestream::{ControlFrame, ControlType, DNSTAP_CONTENT_TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Harness {
    addr: std::net::SocketAddr,
    stats: Arc<ListenerStats>,
    rx: mpsc::Receiver<Vec<Bytes>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: ListenerConfig, channel: usize) -> Harness {
    let l = Listener::bind(&Endpoint::Tcp { addr: "127.0.0.1:0".parse().unwrap(), tls: None }).await.unwrap();
    let addr = l.tcp_addr().unwrap();
    let stats = Arc::new(ListenerStats::default());
    let (tx, rx) = mpsc::channel(channel);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(listener::run(l, Arc::new(config), tx, stats.clone(), shutdown.clone()));
    Harness { addr, stats, rx, shutdown, task }
}

fn control(kind: ControlType, ct: Option<&[u8]>) -> Vec<u8> {
    let frame = match ct {
        Some(ct) => ControlFrame::with_content_type(kind, ct),
        None => ControlFrame::new(kind),
    };
    let mut b = BytesMut::new();
    encode_control(&frame, &mut b).unwrap();
    b.to_vec()
}

fn data(payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_data(payload, usize::MAX, &mut b).unwrap();
    b.to_vec()
}

/// A well-behaved bidirectional sender: READY, ACCEPT, START, frames, STOP, FINISH.
async fn good_stream(addr: std::net::SocketAddr, tag: u32, frames: u32) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&control(ControlType::Ready, Some(DNSTAP_CONTENT_TYPE))).await.unwrap();
    let accept = control(ControlType::Accept, Some(DNSTAP_CONTENT_TYPE));
    let mut got = vec![0u8; accept.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, accept, "ACCEPT with our content type");
    s.write_all(&control(ControlType::Start, Some(DNSTAP_CONTENT_TYPE))).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..frames {
        buf.extend(data(format!("{tag}:{i}").as_bytes()));
    }
    s.write_all(&buf).await.unwrap();
    s.write_all(&control(ControlType::Stop, None)).await.unwrap();
    let finish = control(ControlType::Finish, None);
    let mut got = vec![0u8; finish.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, finish, "FINISH after STOP");
}

async fn collect(rx: &mut mpsc::Receiver<Vec<Bytes>>, n: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("frames in time").unwrap();
        out.extend(batch);
    }
    out
}

/// Opens a raw connection and writes `bytes`. With `close`, half-closes and reads until the
/// listener closes its side (closing with the listener's ACCEPT unread would make the kernel
/// reset the connection and discard what the listener has not read yet).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], close: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close {
        s.shutdown().await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await.expect("listener closes");
    }
    s
}

async fn wait_for_counter(what: &str, f: impl Fn() -> u64, want: u64) {
    for _ in 0..500 {
        if f() >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: wanted {want}, have {}", f());
}

fn started(ct: &[u8]) -> Vec<u8> {
    let mut v = control(ControlType::Ready, Some(ct));
    v.extend(control(ControlType::Start, Some(ct)));
    v
}

#[tokio::test]
async fn each_bad_input_is_counted_and_only_its_connection_closes() {
    each_bad_input(false).await;
}

/// The same once each stream has started is read with blocking reads (as the sensor reads).
#[tokio::test]
async fn each_bad_input_is_counted_and_only_its_connection_closes_with_blocking_reads() {
    each_bad_input(true).await;
}

async fn each_bad_input(blocking_reads: bool) {
    let config = ListenerConfig { stall_timeout: Duration::from_millis(300), blocking_reads, ..Default::default() };
    let mut h = start(config, 64).await;
    // A good stream runs alongside every bad one, drained as it flows (the listener applies
    // backpressure, so an unread channel would hold the sender back).
    let long = tokio::spawn(good_stream(h.addr, 1, 20_000));
    let mut rx = std::mem::replace(&mut h.rx, mpsc::channel(1).1);
    let consumer = tokio::spawn(async move { collect(&mut rx, 20_000 + 4).await });

    // Truncated frame: the peer disconnects mid-frame.
    let mut bytes = started(DNSTAP_CONTENT_TYPE);
    bytes.extend(data(b"complete"));
    bytes.extend(&data(b"cut short")[..6]);
    let _ = raw(h.addr, &bytes, true).await;
    wait_for_counter("truncated", || h.stats.frames_dropped.get("truncated"), 1).await;

    // Oversized data frame: skipped, the stream goes on.
    let mut bytes = started(DNSTAP_CONTENT_TYPE);
    let mut big = BytesMut::new();
    big.put_u32(2 << 20);
    bytes.extend(&big);
    bytes.extend(vec![0u8; 2 << 20]);
    bytes.extend(data(b"after-oversized"));
    bytes.extend(control(ControlType::Stop, None));
    let _ = raw(h.addr, &bytes, true).await;
    wait_for_counter("oversized", || h.stats.frames_dropped.get("oversized"), 1).await;

    // Oversized control frame.
    let _ = raw(h.addr, &[0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 4], false).await;
    wait_for_counter("control_too_large", || h.stats.connections_failed.get("control_too_large"), 1).await;

    // Malformed control frame: field longer than the frame.
    let _ = raw(h.addr, &[0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 99], false).await;
    wait_for_counter("control_malformed", || h.stats.connections_failed.get("control_malformed"), 1).await;

    // Wrong content type: refused without ACCEPT.
    let mut s = raw(h.addr, &control(ControlType::Ready, Some(b"protobuf:other.Thing")), false).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await.expect("closed");
    assert!(reply.is_empty(), "no ACCEPT for a foreign content type");
    wait_for_counter("content_type_refused", || h.stats.connections_failed.get("content_type_refused"), 1).await;

    // Data before START.
    let _ = raw(h.addr, &data(b"too early"), false).await;
    wait_for_counter("data_before_start", || h.stats.connections_failed.get("data_before_start"), 1).await;

    // A peer that stalls mid-frame is cut off after the stall timeout.
    let mut bytes = started(DNSTAP_CONTENT_TYPE);
    bytes.extend(&data(b"stalling frame")[..8]);
    let _stalled = raw(h.addr, &bytes, false).await;
    wait_for_counter("stalled", || h.stats.connections_failed.get("stalled"), 1).await;

    // Unbound style: STOP, then close without reading FINISH.
    let mut bytes = started(DNSTAP_CONTENT_TYPE);
    bytes.extend(data(b"unbound-like"));
    bytes.extend(control(ControlType::Stop, None));
    drop(raw(h.addr, &bytes, true).await);

    // Unidirectional: START without READY.
    let mut bytes = control(ControlType::Start, Some(DNSTAP_CONTENT_TYPE));
    bytes.extend(data(b"unidirectional"));
    bytes.extend(control(ControlType::Stop, None));
    let _ = raw(h.addr, &bytes, true).await;

    long.await.unwrap();
    let frames = consumer.await.unwrap();
    for want in [&b"complete"[..], b"after-oversized", b"unbound-like", b"unidirectional", b"1:19999"] {
        assert!(frames.iter().any(|f| f.as_ref() == want), "{:?} not delivered", String::from_utf8_lossy(want));
    }
    assert_eq!(frames.len(), 20_004, "exactly the good frames");
    assert_eq!(h.stats.connections_blocking.get() > 0, blocking_reads, "read with blocking reads");
    assert!(!h.task.is_finished(), "listener still running");
    h.shutdown.cancel();
    h.task.await.unwrap();
}

#[tokio::test]
async fn random_bytes_never_take_the_listener_down() {
    random_bytes(false).await;
}

#[tokio::test]
async fn random_bytes_never_take_the_listener_down_with_blocking_reads() {
    random_bytes(true).await;
}

async fn random_bytes(blocking_reads: bool) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let config = ListenerConfig { stall_timeout: Duration::from_millis(100), blocking_reads, ..Default::default() };
    let mut h = start(config, 64).await;
    let mut runner = TestRunner::new(Config { cases: 64, ..Config::default() });
    let strategy = proptest::collection::vec(any::<u8>(), 0..2048);
    let inputs: Vec<Vec<u8>> =
        (0..64).map(|_| proptest::strategy::ValueTree::current(&strategy.new_tree(&mut runner).unwrap())).collect();
    // Also random bytes after a valid handshake.
    let n = inputs.len();
    for (i, bytes) in inputs.into_iter().enumerate() {
        let mut all = if i % 2 == 0 { started(DNSTAP_CONTENT_TYPE) } else { Vec::new() };
        all.extend(bytes);
        drop(raw(h.addr, &all, true).await);
    }
    wait_for_counter("connections", || h.stats.connections_accepted.get(), n as u64).await;
    good_stream(h.addr, 7, 100).await;
    let frames = collect(&mut h.rx, 100).await;
    assert!(frames.iter().any(|f| f.as_ref() == b"7:99"));
    assert_eq!(h.stats.connections_blocking.get() > 0, blocking_reads, "read with blocking reads");
    h.shutdown.cancel();
    h.task.await.unwrap();
}

#[tokio::test]
async fn two_hundred_concurrent_connections_all_delivered() {
    two_hundred_concurrent(false).await;
}

#[tokio::test]
async fn two_hundred_concurrent_connections_all_delivered_with_blocking_reads() {
    two_hundred_concurrent(true).await;
}

async fn two_hundred_concurrent(blocking_reads: bool) {
    let mut h = start(ListenerConfig { blocking_reads, ..Default::default() }, 16).await;
    let senders: Vec<_> = (0..200).map(|tag| tokio::spawn(good_stream(h.addr, tag, 50))).collect();
    let frames = collect(&mut h.rx, 200 * 50).await;
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(frames.len(), 10_000);
    let mut distinct: Vec<&[u8]> = frames.iter().map(|f| f.as_ref()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10_000, "no frame duplicated or lost");
    wait_for_counter("finished", || h.stats.streams_finished.get(), 200).await;
    assert_eq!(h.stats.connections_blocking.get() > 0, blocking_reads, "read with blocking reads");
    h.shutdown.cancel();
    h.task.await.unwrap();
}

/// A sink that copies each frame and drops it at once, as the sensor's stages do: the
/// connection's read buffer is then its own again.
#[derive(Clone, Default)]
struct Copying(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl listener::FrameSink for Copying {
    const BLOCKING: bool = true;

    fn deliver(&self, batch: &mut Vec<Bytes>) -> impl std::future::Future<Output = bool> + Send {
        std::future::ready(self.deliver_blocking(batch))
    }

    fn deliver_blocking(&self, batch: &mut Vec<Bytes>) -> bool {
        self.0.lock().unwrap().extend(batch.drain(..).map(|f| f.to_vec()));
        true
    }
}

/// Frames of every size, cut anywhere by small reads, and frames larger than the read buffer
/// arrive whole and in order, whether downstream keeps them (a channel) or drops them at once
/// (the stages, which leave the buffer to be reused).
#[tokio::test]
async fn frames_cut_anywhere_arrive_whole_whatever_their_size() {
    frames_cut_anywhere(false).await;
}

#[tokio::test]
async fn frames_cut_anywhere_arrive_whole_whatever_their_size_with_blocking_reads() {
    frames_cut_anywhere(true).await;
}

async fn frames_cut_anywhere(blocking_reads: bool) {
    let sizes: Vec<usize> = (0..3000u64)
        .map(|i| match i % 500 {
            // Not first: the small frames before it run through a buffer of the configured
            // size, and those after it through the buffer shrunk back from its size.
            499 => 300_000,
            250 => 5_000,
            _ => 1 + (i.wrapping_mul(2_654_435_761) % 1_500) as usize,
        })
        .collect();
    let payload = |i: usize, n: usize| -> Vec<u8> { (0..n).map(|j| (i * 31 + j * 7) as u8).collect() };
    let mut stream = started(DNSTAP_CONTENT_TYPE);
    for (i, &n) in sizes.iter().enumerate() {
        stream.extend(data(&payload(i, n)));
    }
    stream.extend(control(ControlType::Stop, None));
    let config = ListenerConfig { read_buffer: 1024, batch_frames: 7, blocking_reads, ..Default::default() };

    // Kept downstream.
    let mut h = start(config.clone(), 4).await;
    let writer = raw(h.addr, &stream, true);
    let (frames, _) = tokio::join!(collect(&mut h.rx, sizes.len()), writer);
    // Dropped at once.
    let l = Listener::bind(&Endpoint::Tcp { addr: "127.0.0.1:0".parse().unwrap(), tls: None }).await.unwrap();
    let addr = l.tcp_addr().unwrap();
    let (sink, stats, shutdown) = (Copying::default(), Arc::new(ListenerStats::default()), CancellationToken::new());
    let task = tokio::spawn(listener::run(l, Arc::new(config), sink.clone(), stats.clone(), shutdown.clone()));
    drop(raw(addr, &stream, true).await);
    wait_for_counter("finished", || stats.streams_finished.get(), 1).await;
    let copied = std::mem::take(&mut *sink.0.lock().unwrap());

    for got in [frames.iter().map(|f| f.to_vec()).collect::<Vec<_>>(), copied] {
        assert_eq!(got.len(), sizes.len());
        for (i, (frame, &n)) in got.iter().zip(&sizes).enumerate() {
            assert!(frame == &payload(i, n), "frame {i} ({n} bytes) differs");
        }
    }
    assert_eq!(stats.frames_dropped.total() + h.stats.frames_dropped.total(), 0);
    // The buffer grown for each of the six large frames went back to its size after it.
    for s in [&stats, &h.stats] {
        assert!(s.buffers_shrunk.get() >= 6, "{} shrinks", s.buffers_shrunk.get());
        assert_eq!(s.connections_blocking.get() > 0, blocking_reads, "read with blocking reads");
    }
    for (shutdown, task) in [(h.shutdown, h.task), (shutdown, task)] {
        shutdown.cancel();
        task.await.unwrap();
    }
}

#[tokio::test]
async fn slow_downstream_means_backpressure_not_loss() {
    slow_downstream(false).await;
}

#[tokio::test]
async fn slow_downstream_means_backpressure_not_loss_with_blocking_reads() {
    slow_downstream(true).await;
}

async fn slow_downstream(blocking_reads: bool) {
    // One-batch channel and a consumer that sleeps before reading anything.
    let mut h = start(ListenerConfig { batch_frames: 16, blocking_reads, ..Default::default() }, 1).await;
    let sender = tokio::spawn(good_stream(h.addr, 3, 50_000));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!sender.is_finished(), "the sender must be held back while downstream is full");
    let frames = collect(&mut h.rx, 50_000).await;
    sender.await.unwrap();
    assert_eq!(frames.len(), 50_000);
    assert_eq!(frames.last().unwrap().as_ref(), b"3:49999");
    assert_eq!(h.stats.frames_dropped.total(), 0);
    assert_eq!(h.stats.connections_blocking.get() > 0, blocking_reads, "read with blocking reads");
    h.shutdown.cancel();
    h.task.await.unwrap();
}

#[tokio::test]
async fn unix_socket_mode_and_stale_socket_replacement() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dnstap.sock");
    // A stale socket from a dead process is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let l = Listener::bind(&Endpoint::Unix { path: path.clone(), mode: Some(0o660) }).await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
    // A live socket is not stolen; a regular file is not deleted.
    let err = Listener::bind(&Endpoint::Unix { path: path.clone(), mode: None }).await.err().expect("in use");
    assert!(err.to_string().contains("another process"), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let err = Listener::bind(&Endpoint::Unix { path: file.clone(), mode: None }).await.err().expect("not a socket");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let stats = Arc::new(ListenerStats::default());
    let (tx, mut rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(listener::run(l, Arc::new(ListenerConfig::default()), tx, stats, shutdown.clone()));
    let mut s = UnixStream::connect(&path).await.unwrap();
    let mut bytes = control(ControlType::Start, Some(DNSTAP_CONTENT_TYPE));
    bytes.extend(data(b"via unix"));
    s.write_all(&bytes).await.unwrap();
    assert_eq!(collect(&mut rx, 1).await[0].as_ref(), b"via unix");
    shutdown.cancel();
    task.await.unwrap();
    assert!(!path.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn writer_delivers_reconnects_and_counts_overflow() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let stats = Arc::new(WriterStats::default());
    let mut config = WriterConfig::new(Target::Tcp(addr));
    config.queue_frames = 100;
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let (sender, task) = writer::spawn(config, stats.clone(), shutdown.clone());
    // Nobody listening yet: the queue fills, overflow is counted, the caller never waits.
    for i in 0..150u32 {
        sender.try_send(Bytes::from(format!("early {i}")));
    }
    assert_eq!(stats.frames_dropped_queue_full.get(), 50);

    // The listener appears; the writer connects and drains its queue.
    let l = Listener::bind(&Endpoint::Tcp { addr, tls: None }).await.unwrap();
    let lstats = Arc::new(ListenerStats::default());
    let (tx, mut rx) = mpsc::channel(16);
    let lshutdown = CancellationToken::new();
    let ltask =
        tokio::spawn(listener::run(l, Arc::new(ListenerConfig::default()), tx, lstats.clone(), lshutdown.clone()));
    let frames = collect(&mut rx, 100).await;
    assert_eq!(frames[0].as_ref(), b"early 0");
    assert_eq!(frames[99].as_ref(), b"early 99");
    for i in 0..1000u32 {
        sender.send(Bytes::from(format!("late {i}"))).await.unwrap();
    }
    let frames = collect(&mut rx, 1000).await;
    assert_eq!(frames[999].as_ref(), b"late 999");
    // Dropping the last sender drains, sends STOP and gets FINISH.
    drop(sender);
    task.await.unwrap();
    wait_for_counter("streams finished", || lstats.streams_finished.get(), 1).await;
    assert_eq!(stats.frames_sent.get(), 1100);
    lshutdown.cancel();
    ltask.await.unwrap();
}
