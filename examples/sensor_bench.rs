//! Benchmark of the sensor pipeline (see docs/BENCHMARKS.md).
//!
//! ```sh
//! cargo build --release --examples && target/release/examples/sensor_bench [FRAMES] [NAMES]
//! ```
//!
//! Generates FRAMES (default 2,000,000) synthetic RESOLVER_RESPONSE frames over NAMES (default
//! 200,000) names with Zipf-like repetition (`dnsledger tap generate`), then:
//! 1. the full pipeline from the file, store included (default configuration; the store is
//!    written on a second thread): frames/s, peak
//!    RSS, stored RRsets, bytes on disk per RRset;
//! 2. the stages alone (decode, classify, bailiwick, scrub, RRsets, aggregate) with one final
//!    flush timed apart: frames/s of the stages, RRsets/s of the store;
//! 3. over a unix socket: `fstrm_replay` into `dnsledger sensor` (release binary, or
//!    `DNSLEDGER_BIN`) against `fstrm_capture` on the same input: frames/s and loss.
//!
//! `BENCH_COMPRESSION=1` with `--features compression` measures sled's zstd compression;
//! `BENCH_WINDOW_KEYS=N` sets phase 1's window bound, `BENCH_FULL_ONLY=1` stops after it,
//! `BENCH_STAGES_ONLY=1` runs the stages of phase 2 alone, without their flush (to profile them),
//! `BENCH_CACHE_MB=N` sets sled's cache, `BENCH_KEEP=1` keeps the work directory;
//! `BENCH_API=1` gives phase 1 the store a sensor serving the API keeps (the feed log),
//! `BENCH_API=days` with per-day rows too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dnsledger::framestream::{DNSTAP_CONTENT_TYPE, FileReader};
use dnsledger::generate::{GenerateSpec, generate};
use dnsledger::sensor::{Pipeline, SensorConfig, SensorStats};
use dnsledger::store::Store;

fn main() {
    dnsledger::alloc::configure();
    dnsledger::alloc::sensor_heap();
    let mut args = std::env::args().skip(1);
    let frames: u64 = args.next().map(|a| a.parse().expect("FRAMES")).unwrap_or(2_000_000);
    let names: u64 = args.next().map(|a| a.parse().expect("NAMES")).unwrap_or(200_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    // BENCH_KEEP=1 keeps the work directory (input, stores) for a look afterwards.
    let dir = if std::env::var_os("BENCH_KEEP").is_some() { tmp.keep() } else { tmp.path().to_path_buf() };
    let input = dir.as_path().join("input.dnstap");
    let spec = GenerateSpec { frames, names, zones: 1_000, seed: 1, start: 1_767_225_600 };
    generate(&spec, &input).expect("generate");
    println!("input: {frames} frames over {names} names, {:.1} MB", size(&input) as f64 / 1e6);

    // BENCH_STAGES_ONLY=1: phase 2's stages only, without its flush (for a profile of them).
    let stages_only = std::env::var_os("BENCH_STAGES_ONLY").is_some();
    if !stages_only {
        full_pipeline(dir.as_path(), &input, frames);
    }

    if std::env::var_os("BENCH_FULL_ONLY").is_some() {
        return;
    }
    // 2. The stages alone: one window for the whole input, flushed once at the end.
    let db = dir.as_path().join("stages");
    let cfg_stages = config(&db, "[aggregate]\nwindow_seconds = 3600\nwindow_keys = 100000000\nwindow_mb = 65536\n");
    let stats = Arc::new(SensorStats::default());
    let mut p = Pipeline::new(
        &cfg_stages,
        Store::open_with(&db, cfg_stages.compression, cfg_stages.cache_mb).expect("store"),
        stats.clone(),
    );
    let start = Instant::now();
    for f in FileReader::open(&input, DNSTAP_CONTENT_TYPE).expect("input") {
        p.frame(f.expect("frame")).expect("pipeline");
    }
    let stages = start.elapsed();
    p.publish();
    let keys = stats.window_keys.get();
    if stages_only {
        println!("stages only: {:.0} frames/s, {keys} RRsets in the window", frames as f64 / stages.as_secs_f64());
        // Returned from, not exited: the work directory (the input, hundreds of MB) is removed.
        return;
    }
    let start = Instant::now();
    p.finish().expect("flush");
    let flush = start.elapsed();
    println!(
        "stages only: {:.0} frames/s; one flush of {keys} RRsets: {:.1}s ({:.0} RRsets/s into sled)",
        frames as f64 / stages.as_secs_f64(),
        flush.as_secs_f64(),
        keys as f64 / flush.as_secs_f64()
    );
    drop(p);

    // 3. Over a unix socket, against fstrm_capture.
    let bin = std::env::var_os("DNSLEDGER_BIN").map(PathBuf::from).unwrap_or_else(|| "target/release/dnsledger".into());
    if !bin.exists() {
        println!("socket: skipped, {} not built", bin.display());
        return;
    }
    let sock = dir.as_path().join("bench.sock");
    let capture = Command::new("fstrm_capture")
        .args(["-t", "protobuf:dnstap.Dnstap", "-u"])
        .arg(&sock)
        .arg("-w")
        .arg(dir.as_path().join("capture.dnstap"))
        .stderr(Stdio::null())
        .spawn()
        .expect("fstrm_capture (fstrm-bin)");
    let (theirs, their_cpu) = replay(&sock, &input, capture);
    let cfg = dir.as_path().join("sensor.toml");
    std::fs::write(
        &cfg,
        format!("db = \"{}\"\n[listen]\nunix = [\"{}\"]\n", dir.as_path().join("sock-db").display(), sock.display()),
    )
    .expect("config");
    let sensor =
        Command::new(&bin).args(["sensor", "-q", "-c"]).arg(&cfg).stderr(Stdio::piped()).spawn().expect("sensor");
    let (ours, our_cpu, log) = replay_sensor(&sock, &input, sensor);
    println!(
        "socket: fstrm_capture {:.0} frames/s ({:.2} us of CPU per frame), sensor {:.0} frames/s (replay start to sensor \
         exit; {:.2} us of CPU per frame during the replay); sensor says: {}",
        frames as f64 / theirs.as_secs_f64(),
        their_cpu * 1e6 / frames as f64,
        frames as f64 / ours.as_secs_f64(),
        our_cpu * 1e6 / frames as f64,
        log.lines().find(|l| l.starts_with("sensor:")).unwrap_or("(no totals line)")
    );
}

/// With `BENCH_COMPRESSION=1` (and `--features compression`) the stores are compressed.
/// Phase 1: the full pipeline from the file, default configuration (see the header).
fn full_pipeline(dir: &Path, input: &Path, frames: u64) {
    // 1. Full pipeline, default configuration.
    let db = dir.join("full");
    // BENCH_WINDOW_KEYS: another window bound for this phase (the default is 200,000).
    let window = std::env::var("BENCH_WINDOW_KEYS").map(|k| format!("[aggregate]\nwindow_keys = {k}\n"));
    let cfg_full = config(&db, window.as_deref().unwrap_or(""));
    println!("window_keys {}, sled cache {} MiB", cfg_full.window_keys, cfg_full.cache_mb);
    let stats = Arc::new(SensorStats::default());
    let start = Instant::now();
    let mut store = Store::open_with(&db, cfg_full.compression, cfg_full.cache_mb).expect("store");
    // BENCH_API=1: the store as a sensor serving the API keeps it (feed log, per-day rows).
    if let Some(v) = std::env::var_os("BENCH_API") {
        let mut api = dnsledger::api::ApiConfig::open("127.0.0.1:0".parse().expect("addr"));
        api.day_rows = v == "days";
        store = dnsledger::api::with_feed(store, &api).expect("feed");
        println!("store with the feed log{} (BENCH_API)", if api.day_rows { " and per-day rows" } else { "" });
    }
    let mut p = Pipeline::new(&cfg_full, store, stats.clone());
    for f in FileReader::open(input, DNSTAP_CONTENT_TYPE).expect("input") {
        p.frame(f.expect("frame")).expect("pipeline");
    }
    p.finish().expect("flush");
    let elapsed = start.elapsed();
    let stored = p.store().len();
    let disk = p.store().size_on_disk().expect("size");
    let (runs, run_bytes) = p.store().runs();
    drop(p);
    println!(
        "full pipeline (stages and store writes on two threads): {:.0} frames/s ({:.1}s), {} observations, {} RRsets stored, \
         {} flushes, peak RSS {} MiB, {:.0} bytes on disk per RRset ({:.1} MB; {runs} runs of {:.1} MB)",
        frames as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        stats.rrsets_observed.get(),
        stored,
        stats.flushes.get(),
        peak_rss_mib(),
        disk as f64 / stored.max(1) as f64,
        disk as f64 / 1e6,
        run_bytes as f64 / 1e6
    );
}

fn config(db: &Path, extra: &str) -> SensorConfig {
    let compression = if std::env::var_os("BENCH_COMPRESSION").is_some() { "compression = true\n" } else { "" };
    // BENCH_CACHE_MB: sled's cache (the sensor's default is 32 MiB).
    let cache = std::env::var("BENCH_CACHE_MB").map(|mb| format!("cache_mb = {mb}\n")).unwrap_or_default();
    SensorConfig::parse(&format!("db = \"{}\"\n{extra}\n[store]\n{compression}{cache}", db.display())).expect("config")
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn wait_socket(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "listener did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn fstrm_replay(sock: &Path, input: &Path) {
    let ok = Command::new("fstrm_replay")
        .args(["-t", "protobuf:dnstap.Dnstap", "-u"])
        .arg(sock)
        .arg("-r")
        .arg(input)
        .stderr(Stdio::null())
        .status()
        .expect("fstrm_replay")
        .success();
    assert!(ok, "fstrm_replay failed");
}

/// The CPU time (user and system, all threads) a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses): state is field 3, utime 14 and stime 15, in
    // clock ticks of 1/100 s (USER_HZ on Linux).
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 / 100.0
}

/// Replays the input into a listener: the replay's time and the listener's CPU time in it.
fn replay(sock: &Path, input: &Path, mut listener: std::process::Child) -> (Duration, f64) {
    wait_socket(sock);
    let start = Instant::now();
    fstrm_replay(sock, input);
    let t = start.elapsed();
    let cpu = cpu_seconds(listener.id());
    let _ = Command::new("kill").arg(listener.id().to_string()).status();
    let _ = listener.wait();
    let _ = std::fs::remove_file(sock);
    (t, cpu)
}

/// [`replay`] into the sensor, timed to its exit (its final flush included), with its log.
fn replay_sensor(sock: &Path, input: &Path, sensor: std::process::Child) -> (Duration, f64, String) {
    wait_socket(sock);
    let start = Instant::now();
    fstrm_replay(sock, input);
    let cpu = cpu_seconds(sensor.id());
    let _ = Command::new("kill").arg(sensor.id().to_string()).status();
    let out = sensor.wait_with_output().expect("sensor");
    (start.elapsed(), cpu, String::from_utf8_lossy(&out.stderr).into_owned())
}
