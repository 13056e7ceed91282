//! Benchmark of forwarding (see docs/BENCHMARKS.md): a sensor's outbox from the synthetic
//! workload, then
//! 1. the wire: the outbox batches encoded as forwarding `Batch`es (zstd): bytes per summary;
//! 2. the collector's merge: every batch applied exactly once into a fresh store
//!    (`Store::merge_from`, one sync per batch as the collector does, with the collector's
//!    fan-in; `BENCH_FAN_IN=4` for a sensor's): summaries/s.
//!
//! ```sh
//! cargo build --release --examples && target/release/examples/forward_bench [FRAMES] [NAMES]
//! ```

use std::sync::Arc;
use std::time::Instant;

use dnsledger::forward::wire::{BatchId, decode_batch, encode_batch};
use dnsledger::framestream::{DNSTAP_CONTENT_TYPE, FileReader};
use dnsledger::generate::{GenerateSpec, generate};
use dnsledger::sensor::{Pipeline, SensorConfig, SensorStats};
use dnsledger::store::{Applied, Store};

fn main() {
    dnsledger::alloc::configure();
    let mut args = std::env::args().skip(1);
    let frames: u64 = args.next().map(|a| a.parse().expect("FRAMES")).unwrap_or(2_000_000);
    let names: u64 = args.next().map(|a| a.parse().expect("NAMES")).unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.dnstap");
    generate(&GenerateSpec { frames, names, zones: 1_000, seed: 1, start: 1_767_225_600 }, &input).expect("generate");

    let sensor_db = dir.path().join("sensor");
    let config = SensorConfig::parse(&format!("db = \"{}\"\n[aggregate]\noutbox = true\n", sensor_db.display()))
        .expect("config");
    let stats = Arc::new(SensorStats::default());
    let mut p = Pipeline::new(&config, Store::open(&sensor_db).expect("store"), stats.clone());
    for f in FileReader::open(&input, DNSTAP_CONTENT_TYPE).expect("input") {
        p.frame(f.expect("frame")).expect("pipeline");
    }
    p.finish().expect("flush");
    let sensor = p.store().clone();
    // Outbox entries combined as the forwarder combines them: up to 64 entries or 50,000
    // summaries per batch, identical RRsets summed.
    let mut batches: Vec<(u64, u64, Vec<dnsledger::store::Delta>)> = Vec::new();
    for (seq, deltas) in sensor.outbox_batches().expect("outbox") {
        match batches.last_mut() {
            Some((first, last, acc)) if *last + 1 - *first < 64 && acc.len() + deltas.len() <= 50_000 => {
                *last = seq;
                *acc = dnsledger::store::fold(std::mem::take(acc), &deltas);
            }
            _ => batches.push((seq, seq, deltas)),
        }
    }
    let summaries: usize = batches.iter().map(|(_, _, d)| d.len()).sum();
    println!(
        "input: {frames} frames over {names} names -> {} observations, {} outbox batches, {summaries} summaries",
        stats.rrsets_observed.get(),
        batches.len()
    );

    // 1. On the wire.
    let start = Instant::now();
    let wire: Vec<Vec<u8>> = batches
        .iter()
        .map(|(first, last, deltas)| encode_batch(BatchId { stream: 1, first: *first, sequence: *last }, 0, deltas))
        .collect();
    let encode = start.elapsed();
    let bytes: usize = wire.iter().map(Vec::len).sum();
    let start = Instant::now();
    let decoded: Vec<_> = wire.iter().map(|w| decode_batch(w).expect("decode")).collect();
    let decode = start.elapsed();
    println!(
        "wire: {bytes} bytes, {:.1} bytes per summary (zstd level 3); encode {:.0} summaries/s, decode+validate {:.0} summaries/s",
        bytes as f64 / summaries as f64,
        summaries as f64 / encode.as_secs_f64(),
        summaries as f64 / decode.as_secs_f64()
    );

    // 2. The collector's merge.
    // As `dnsledger collector` opens its store (`--fan-in`; BENCH_FAN_IN to change it here).
    let fan_in = std::env::var("BENCH_FAN_IN").ok().and_then(|v| v.parse().ok());
    let collector = Store::open(&dir.path().join("collector"))
        .expect("store")
        .with_fan_in(fan_in.unwrap_or(dnsledger::collector::DEFAULT_FAN_IN));
    let start = Instant::now();
    let cpu = cpu_secs();
    for (id, deltas) in &decoded {
        match collector.merge_from("sensor-a", id.stream, (id.first, id.sequence), deltas, false, false).expect("merge")
        {
            Applied::Merged(_) => collector.sync().expect("sync"),
            other => panic!("{other:?}"),
        }
    }
    let merge = start.elapsed();
    let cpu = cpu_secs() - cpu;
    let (runs, run_bytes) = collector.runs();
    println!(
        "collector merge: {:.0} summaries/s ({} batches, {:.1}s, one sync per batch), {} RRsets; \
         CPU {cpu:.2} s (all threads) = {:.0} summaries per CPU second; {:.1} MB on disk ({runs} runs of {:.1} MB)",
        summaries as f64 / merge.as_secs_f64(),
        decoded.len(),
        merge.as_secs_f64(),
        collector.len(),
        summaries as f64 / cpu,
        collector.size_on_disk().expect("size") as f64 / 1e6,
        run_bytes as f64 / 1e6
    );
}

/// This process's CPU time so far (user + system), in seconds.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields 14 and 15 (utime, stime, in clock ticks of 1/100 s), counted after the
    // parenthesised command name.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
    f.iter().sum::<u64>() as f64 / 100.0
}
