//! The ClickHouse backend beside sled (docs/BENCHMARKS.md): the same N synthetic RRsets (the
//! api_bench generator: owners `hI.zZ.bench.`, every tenth under `big.bench.`, one address
//! each from 10.0.0.0/8) applied as collector batches of B summaries
//! - into the cluster by W concurrent collectors (exactly-once path: markers, deduplicated
//!   blocks): sustained summaries/s;
//! - into a sled store by the sled collector's merge (one writer, synced per batch);
//!
//! then, for both: bytes on disk per RRset (ClickHouse: active parts of every table on every
//! shard, after `OPTIMIZE ... FINAL`; sled: the directory), exact lookups of random owners
//! (p50/p99 of the lookup walk, no HTTP) and a wildcard (`*.big.bench`) and a CIDR
//! (`10.0.0.0/12`) walk in results/s.
//!
//! ```sh
//! examples/clickhouse-local.sh /var/tmp/chb     # a 2-shard cluster with ZooKeeper
//! cargo build --release --examples
//! BENCH_CLICKHOUSE=/var/tmp/chb/clickhouse.toml BENCH_SLED=/var/tmp/chb-sled \
//!     target/release/examples/clickhouse_bench [N=1000000] [B=10000] [W=2] [LOOKUPS=2000]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use dnsledger::clickhouse::{BatchRange, ClickHouseConfig, Cluster};
use dnsledger::db::Db;
use dnsledger::sensor::{Kind, Rrset};
use dnsledger::store::{Delta, Fences, Lookup, NamePattern, Store};

fn owner(i: u64) -> String {
    if i.is_multiple_of(10) { format!("h{i}.big.bench.") } else { format!("h{i}.z{}.bench.", i % 100_000) }
}

fn delta(i: u64) -> Delta {
    let zone = if i.is_multiple_of(10) { "big.bench.".to_string() } else { format!("z{}.bench.", i % 100_000) };
    Delta {
        kind: Kind::Positive,
        rrset: Rrset {
            rrname: owner(i),
            rrtype: 1,
            bailiwick: zone,
            rdata: vec![std::net::Ipv4Addr::from(0x0a00_0000u32 + i as u32).to_string()],
        },
        first: 1_767_225_600 + i % 86_400,
        last: 1_767_225_600 + 86_400 + i % 86_400,
        count: 1 + i % 7,
        sensors: vec!["bench".into()],
    }
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

fn arg(i: usize, default: u64) -> u64 {
    std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn median_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

fn http(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--data-binary", sql, url])
        .output()
        .expect("curl (Debian package curl)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lookup latencies and streaming rates over one database.
fn queries(name: &str, db: &Db, n: u64, lookups: u64) {
    let mut lat = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..lookups {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % n;
        let l = Lookup::Rrset { owner: NamePattern::Exact(owner(i)), rrtype: None, bailiwick: None };
        let t = Instant::now();
        let mut found = 0;
        db.walk(&l, &Fences::default(), None, u64::MAX, |_, _| {
            found += 1;
            true
        })
        .expect("walk");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(found, 1, "{}", owner(i));
    }
    let (p50, p99) = median_p99(lat);
    println!("{name}: exact lookup p50 {p50:.2} ms, p99 {p99:.2} ms ({lookups} random owners)");
    let (lo, hi) = "10.0.0.0/12".parse::<dnsledger::sensor::Cidr>().expect("cidr").range();
    for (what, l) in [
        (
            "wildcard *.big.bench",
            Lookup::Rrset { owner: NamePattern::parse("*.big.bench").expect("p"), rrtype: None, bailiwick: None },
        ),
        ("CIDR 10.0.0.0/12", Lookup::RdataIp { lo, hi }),
    ] {
        let t = Instant::now();
        let mut got = 0u64;
        db.walk(&l, &Fences::default(), None, u64::MAX, |_, _| {
            got += 1;
            got < 200_000
        })
        .expect("walk");
        let s = t.elapsed().as_secs_f64();
        println!("{name}: {what}: {got} results in {s:.2} s = {:.0} results/s", got as f64 / s);
    }
}

fn main() {
    dnsledger::alloc::configure();
    let (n, batch, writers, lookups) = (arg(1, 1_000_000), arg(2, 10_000), arg(3, 2), arg(4, 2_000));
    let config = ClickHouseConfig::load(std::path::Path::new(
        &std::env::var("BENCH_CLICKHOUSE").expect("BENCH_CLICKHOUSE=clickhouse.toml"),
    ))
    .expect("config");
    let sled_dir = std::env::var("BENCH_SLED").expect("BENCH_SLED=a directory for the sled store");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let batches: Arc<Vec<Vec<Delta>>> =
        Arc::new((0..n).step_by(batch as usize).map(|s| (s..(s + batch).min(n)).map(delta).collect()).collect());

    // ClickHouse: W collectors, each applying every W-th batch.
    let (cluster, secs, cpu) = rt.block_on(async {
        let clusters: Vec<Arc<Cluster>> =
            (0..writers).map(|_| Arc::new(Cluster::new(config.clone()).expect("cluster"))).collect();
        clusters[0].init().await.expect("schema");
        let cpu = cpu_secs();
        let t = Instant::now();
        let tasks: Vec<_> = clusters
            .iter()
            .enumerate()
            .map(|(w, c)| {
                let (c, batches) = (c.clone(), batches.clone());
                tokio::spawn(async move {
                    let sender = format!("bench-{w}");
                    for (seq, b) in batches.iter().enumerate().skip(w).step_by(writers as usize) {
                        let seq = seq as u64 + 1;
                        let range = BatchRange { sender: &sender, stream: 1, first: seq, last: seq };
                        c.apply(range, b).await.expect("apply");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writer");
        }
        (clusters[0].clone(), t.elapsed().as_secs_f64(), cpu_secs() - cpu)
    });
    println!(
        "clickhouse: {n} summaries in {secs:.1} s = {:.0} summaries/s ({writers} collectors, batches of {batch}); \
         the collectors' CPU: {cpu:.2} s = {:.0} summaries per CPU second",
        n as f64 / secs,
        n as f64 / cpu
    );

    if std::env::var_os("BENCH_CLICKHOUSE_ONLY").is_some() {
        return;
    }
    // sled: the collector's merge path, synced per batch.
    let store = Store::open(std::path::Path::new(&sled_dir)).expect("sled");
    let t = Instant::now();
    for (seq, b) in batches.iter().enumerate() {
        let seq = seq as u64 + 1;
        store.merge_from("bench", 1, (seq, seq), b, false, false).expect("merge");
        store.sync().expect("sync");
    }
    let secs = t.elapsed().as_secs_f64();
    println!("sled: {n} summaries in {secs:.1} s = {:.0} summaries/s (one writer, synced per batch)", n as f64 / secs);

    // Bytes per RRset.
    let db = &config.database;
    let mut bytes = 0u64;
    for url in &config.shards {
        for table in ["rrsets", "rdata_index", "landing"] {
            http(url, &format!("OPTIMIZE TABLE {db}.{table} FINAL"));
        }
        let b = http(url, &format!("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{db}' AND active"));
        bytes += b.trim().parse::<u64>().unwrap_or(0);
    }
    println!(
        "clickhouse: {bytes} bytes on disk = {:.0} bytes/RRset (all tables, landing included)",
        bytes as f64 / n as f64
    );
    std::thread::sleep(Duration::from_secs(1));
    let sled_bytes = store.size_on_disk().expect("size");
    println!("sled: {sled_bytes} bytes on disk = {:.0} bytes/RRset", sled_bytes as f64 / n as f64);

    queries("sled", &Db::Sled(store), n, lookups);
    let db = Db::ClickHouse(cluster);
    // Walks on the cluster block on the runtime: run them outside it.
    queries("clickhouse", &db, n, lookups);
    drop(rt);
}
