//! What sled 0.34 itself manages on one core with keys and values shaped like the store's
//! (see docs/BENCHMARKS.md, "Forwarding"): the ceiling under every sled-backed merge.
//!
//! ```sh
//! cargo build --release --examples && target/release/examples/sled_probe [N=500000] [VALUE_BYTES=150]
//! ```
//!
//! N keys like RRset keys (`R` + reversed owner + type + bailiwick + digest, ~60 bytes) with
//! values of VALUE_BYTES, into trees of a fresh database with a 1 GiB cache (no sync):
//! new keys one by one in random and in sorted order, new keys in atomic batches of 2,000
//! (what a merge is), then overwrites and gets of the existing keys, with the process's
//! resident memory after each. `PROBE_CACHE_MB` sets the cache (default 1024).

use std::time::Instant;

fn main() {
    dnsledger::alloc::configure();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse().expect("N")).unwrap_or(500_000);
    let value_bytes: usize = args.next().map(|a| a.parse().expect("VALUE_BYTES")).unwrap_or(150);
    let cache_mb: u64 = std::env::var("PROBE_CACHE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(cache_mb << 20)
        .mode(sled::Mode::HighThroughput)
        .open()
        .expect("sled");
    let random: Vec<Vec<u8>> = (0..n as u64)
        .map(|i| {
            let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            format!("Rcom.example{}.www{h}.\0\0\x01example{}.com.\0{h:016x}", h % 1000, h % 1000).into_bytes()
        })
        .collect();
    let mut sorted = random.clone();
    sorted.sort();
    let value = vec![7u8; value_bytes];
    let rate = |what: &str, start: Instant| {
        println!("{what}: {:.0}/s, RSS {} MiB", n as f64 / start.elapsed().as_secs_f64(), rss_mib());
    };

    for (what, keys) in [("random", &random), ("sorted", &sorted)] {
        let t = db.open_tree(format!("one-{what}")).expect("tree");
        let start = Instant::now();
        for k in keys {
            t.insert(k.as_slice(), value.as_slice()).expect("insert");
        }
        rate(&format!("new keys one by one, {what} order"), start);
    }
    let t = db.open_tree("batches").expect("tree");
    let start = Instant::now();
    for chunk in random.chunks(2_000) {
        let mut batch = sled::Batch::default();
        for k in chunk {
            batch.insert(k.as_slice(), value.as_slice());
        }
        t.apply_batch(batch).expect("batch");
    }
    rate("new keys in atomic batches of 2,000", start);
    let start = Instant::now();
    for k in &random {
        t.insert(k.as_slice(), value.as_slice()).expect("insert");
    }
    rate("overwrites, random order", start);
    let start = Instant::now();
    for k in &random {
        assert!(t.get(k).expect("get").is_some());
    }
    rate("gets, random order", start);
}

/// The process's resident memory now.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
