//! Benchmark of the query API (see docs/BENCHMARKS.md) on a large store:
//! 1. builds (once, kept in `BENCH_DB`) a store of N synthetic RRsets: owners
//!    `hI.zZ.bench.` (A, one address each from 10.0.0.0/8 in order), every tenth one under
//!    `big.bench.` instead (N/10 names: the wildcard workload);
//! 2. serves it with `dnsledger::api` in this process and measures, over HTTP on loopback
//!    (a new connection per request, as dnsdbq does):
//!    - exact lookups of random owners: p50/p99 latency;
//!    - a wildcard (`*.big.bench`) and a CIDR (`10.0.0.0/12`) streamed as SAF: results/s;
//!    - the same walks straight on the store (no HTTP, no JSON): results/s.
//!
//! ```sh
//! cargo build --release --examples
//! BENCH_DB=/var/tmp/api-bench target/release/examples/api_bench [N=10000000] [LOOKUPS=20000]
//! ```
//!
//! The store is opened with the page cache `dnsledger api` has by default (`BENCH_CACHE_MB`
//! to change it); `BENCH_FAN_IN=8` builds it as a collector would.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dnsledger::api::ApiConfig;
use dnsledger::metrics::Registry;
use dnsledger::sensor::{Kind, Rrset};
use dnsledger::store::{Delta, Fences, Lookup, NamePattern, Store};

fn owner(i: u64) -> String {
    if i.is_multiple_of(10) { format!("h{i}.big.bench.") } else { format!("h{i}.z{}.bench.", i % 100_000) }
}

fn address(i: u64) -> String {
    let a = 0x0a00_0000u32 + i as u32;
    std::net::Ipv4Addr::from(a).to_string()
}

fn build(store: &Store, n: u64) {
    let have = store.len() as u64;
    if have >= n {
        println!("store: {have} RRsets already there");
        return;
    }
    let started = Instant::now();
    let mut batch = Vec::with_capacity(5_000);
    for i in have..n {
        let zone = if i.is_multiple_of(10) { "big.bench.".to_string() } else { format!("z{}.bench.", i % 100_000) };
        batch.push(Delta {
            kind: Kind::Positive,
            rrset: Rrset { rrname: owner(i), rrtype: 1, bailiwick: zone, rdata: vec![address(i)] },
            first: 1_767_225_600 + i % 86_400,
            last: 1_767_225_600 + 86_400 + i % 86_400,
            count: 1 + i % 7,
            sensors: Vec::new(),
        });
        if batch.len() == 5_000 || i + 1 == n {
            store.merge(&batch, false).expect("merge");
            batch.clear();
        }
        if (i + 1) % 1_000_000 == 0 {
            let rate = (i + 1 - have) as f64 / started.elapsed().as_secs_f64();
            println!("store: {} RRsets ({rate:.0}/s)", i + 1);
        }
    }
    store.sync().expect("sync");
    println!("store: built {} RRsets in {:.0}s", n - have, started.elapsed().as_secs_f64());
}

/// One GET over HTTP/1.0; returns (status line, body bytes, result lines).
fn get(addr: SocketAddr, path: &str) -> (String, usize, u64) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nAccept: application/x-ndjson\r\n\r\n").expect("send");
    const OBJ: &[u8] = b"{\"obj\":";
    let mut buf = vec![0u8; 256 * 1024];
    let (mut head, mut total, mut objs) = (Vec::new(), 0usize, 0u64);
    // The last bytes of the previous read: an object marker may straddle two reads.
    let mut data: Vec<u8> = Vec::new();
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        if head.len() < 64 {
            head.extend_from_slice(&buf[..n.min(64)]);
        }
        total += n;
        data.extend_from_slice(&buf[..n]);
        objs += data.windows(OBJ.len()).filter(|w| *w == OBJ).count() as u64;
        let keep = data.len().min(OBJ.len() - 1);
        data.drain(..data.len() - keep);
    }
    let status = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
    (status, total, objs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    dnsledger::alloc::configure();
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map(|a| a.parse().expect("N")).unwrap_or(10_000_000);
    let lookups: usize = args.next().map(|a| a.parse().expect("LOOKUPS")).unwrap_or(20_000);
    let db = std::env::var("BENCH_DB").unwrap_or_else(|_| "target/api-bench-db".into());
    // The page cache `dnsledger api` and the collector use unless told (`--cache-mb`).
    let cache_mb = std::env::var("BENCH_CACHE_MB")
        .ok()
        .map(|v| v.parse().expect("BENCH_CACHE_MB"))
        .unwrap_or(dnsledger::store::SERVER_CACHE_MB);
    // Index entries with copies, as in a store that serves the API.
    // BENCH_FAN_IN=8: the store a collector builds (`--fan-in`); a sensor's merges 4 at a time.
    let fan_in = std::env::var("BENCH_FAN_IN").ok().and_then(|v| v.parse().ok()).unwrap_or(dnsledger::store::FAN_IN);
    let store = Store::open_cached(std::path::Path::new(&db), cache_mb)
        .and_then(Store::with_copies)
        .expect("store")
        .with_fan_in(fan_in);
    println!("store: {cache_mb} MiB page cache");
    build(&store, n);
    println!("store: {:.2} GB on disk", store.size_on_disk().expect("size") as f64 / 1e9);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let mut config = ApiConfig::open("127.0.0.1:0".parse().expect("addr"));
    config.max_limit = 10_000_000;
    config.scan_budget = u64::MAX;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let registry = Registry::default();
    let addr = runtime
        .block_on(dnsledger::api::start(
            config,
            dnsledger::db::Db::Sled(store.clone()),
            None,
            &registry,
            shutdown.clone(),
        ))
        .expect("api");

    // Exact lookups of random owners (xorshift; deterministic).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut lat = Vec::with_capacity(lookups);
    for _ in 0..lookups {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % n;
        let t = Instant::now();
        let (status, _, objs) = get(addr, &format!("/dnsdb/v2/lookup/rrset/name/{}", owner(i)));
        lat.push(t.elapsed());
        assert!(status.contains("200") && objs == 1, "{status} {objs}");
    }
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!("exact lookup over HTTP ({lookups} random owners): p50 {:.3} ms, p99 {:.3} ms", q(0.50), q(0.99));

    for (what, path, lookup) in [
        (
            "wildcard *.big.bench",
            "/dnsdb/v2/lookup/rrset/name/%2A.big.bench?limit=10000000",
            Lookup::Rrset { owner: NamePattern::parse("*.big.bench").expect("p"), rrtype: None, bailiwick: None },
        ),
        ("CIDR 10.0.0.0/12", "/dnsdb/v2/lookup/rdata/ip/10.0.0.0,12?limit=10000000", {
            let (lo, hi) = dnsledger::query::parse_ip_range("10.0.0.0/12").expect("cidr");
            Lookup::RdataIp { lo, hi }
        }),
    ] {
        let mut http = Vec::new();
        let mut direct = Vec::new();
        let mut results = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let (status, bytes, objs) = get(addr, path);
            let secs = t.elapsed().as_secs_f64();
            assert!(status.contains("200"), "{status}");
            results = objs;
            http.push(objs as f64 / secs);
            let t = Instant::now();
            let mut count = 0u64;
            store
                .walk(&lookup, &Fences::default(), None, u64::MAX, |_, _| {
                    count += 1;
                    true
                })
                .expect("walk");
            direct.push(count as f64 / t.elapsed().as_secs_f64());
            let _ = bytes;
        }
        let runs = |v: &[f64]| v.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
        println!(
            "{what}: {results} results; streamed over HTTP {:.0} results/s (median of 3: {}); store walk alone {:.0} results/s ({})",
            median(http.clone()),
            runs(&http),
            median(direct.clone()),
            runs(&direct)
        );
    }
    shutdown.cancel();
    runtime.shutdown_timeout(Duration::from_secs(1));
}
