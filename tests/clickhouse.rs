//! The ClickHouse backend against a real cluster: Debian's clickhouse-server 18.16 as two
//! shards with ZooKeeper, on loopback (tests/tools/clickhouse.rs).
//! - The query API over the cluster answers the API fixture exactly as over a sled store.
//! - Exactly once: the same batch applied at once by two collectors, and batches whose
//!   collector died mid-way (cancelled at every stage) then retried, count once; an INSERT
//!   cut short commits nothing.
//! - End to end: a sensor forwarding real dnstap to a collector on the cluster; the collector
//!   killed (-9) mid-stream and another one taking over; a shard killed while the sensor keeps
//!   ingesting (queries say they are partial, the outbox holds the data) and restarted: the
//!   cluster ends with exactly the sensor's counts.

mod tools;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use dnsledger::clickhouse::{BatchRange, BatchRow, ClickHouseConfig, Cluster, Outcome, wire};
use dnsledger::sensor::{Kind, Rrset};
use dnsledger::store::Delta;
use tools::clickhouse::ClickHouse;
use tools::fixture::{PAGED, fixture_lines, get};
use tools::forward::{Contents, SERVER_NAME, contents, data, replay, sensor_toml, settle, spawn_sensor, start_ingest};
use tools::{Proc, dnsledger, free_port, metric, run, wait_for};

/// One cluster at a time: each test starts ZooKeeper and two clickhouse-server shards, and
/// five such clusters at once on a 2-core machine compete for the cores and for the ports
/// `free_port` hands out. A user runs one cluster.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything in the cluster, read straight from ClickHouse (not through our code): positive
/// RRsets re-aggregated from `rrsets_all`, negative ones summed from `landing_all`.
fn cluster_contents(ch: &ClickHouse) -> Contents {
    let mut out = Contents::new();
    let queries = [
        "SELECT any(rrname) AS n, any(rrtype) AS t, any(bailiwick) AS b, any(rdata) AS r, minMerge(time_first) AS f, \
         maxMerge(time_last) AS l, sumMerge(count) AS c FROM dnsledger.rrsets_all WHERE key < '\\xFF' GROUP BY key",
        "SELECT any(rrname) AS n, any(rrtype) AS t, any(bailiwick) AS b, any(rdata) AS r, min(time_first) AS f, \
         max(time_last) AS l, sum(count) AS c FROM dnsledger.landing_all WHERE negative = 1 GROUP BY key",
    ];
    for q in queries {
        let body = ch.query(0, &format!("{q} FORMAT JSONEachRow"));
        // 18.16 quotes 64-bit integers in JSON.
        let num = |v: &serde_json::Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap();
        for line in body.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let rdata = v["r"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
            let key = (
                v["n"].as_str().unwrap().to_string(),
                v["t"].as_u64().unwrap() as u16,
                v["b"].as_str().unwrap().to_string(),
                rdata,
            );
            let val = (num(&v["f"]), num(&v["l"]), num(&v["c"]));
            assert!(out.insert(key.clone(), val).is_none(), "{key:?} twice");
        }
    }
    out
}

fn assert_same(at_sensor: &Contents, at_cluster: &Contents) {
    // (key, at the sensor, in the cluster): whether a failure is a double count or a loss.
    let differ: Vec<_> = at_sensor
        .iter()
        .filter(|(k, v)| at_cluster.get(*k) != Some(*v))
        .map(|(k, v)| (k, v, at_cluster.get(k)))
        .collect();
    let (more, less) = differ.iter().fold((0u64, 0u64), |(m, l), (_, s, c)| match c {
        Some(c) if c.2 > s.2 => (m + c.2 - s.2, l),
        Some(c) => (m, l + s.2 - c.2),
        None => (m, l + s.2),
    });
    assert!(
        differ.is_empty(),
        "{} sensor entries the cluster lacks or counts differently ({more} observations more in the cluster, \
         {less} fewer); the first of them: {:#?}",
        differ.len(),
        &differ[..differ.len().min(20)]
    );
    let extra: Vec<_> = at_cluster.keys().filter(|k| !at_sensor.contains_key(*k)).collect();
    assert!(extra.is_empty(), "entries the sensor never had: {extra:#?}");
}

fn serve_api(work: &Path, name: &str, store: (&str, &Path)) -> (SocketAddr, Proc) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = dnsledger();
    cmd.arg("api").arg(store.0).arg(store.1).args(["--api", &addr.to_string()]);
    let mut p = Proc::spawn(name, cmd, work);
    wait_for("the API", Duration::from_secs(30), || {
        assert!(p.is_running(), "{name} exited:\n{}", p.stderr());
        std::net::TcpStream::connect(addr).is_ok()
    });
    (addr, p)
}

#[test]
fn the_cluster_answers_every_query_exactly_as_the_sled_store_does() {
    let _one = one_cluster();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let ch = ClickHouse::start(work, 2);
    let cof = work.join("fixture.ndjson");
    std::fs::write(&cof, fixture_lines()).unwrap();
    let db = work.join("sled");
    for store in [("--db", db.as_path()), ("--clickhouse", ch.config.as_path())] {
        let mut import = dnsledger();
        import.arg("import").arg(store.0).arg(store.1).arg(&cof);
        let out = run(import);
        let n = tools::fixture::FIXTURE.len() as u64 + PAGED;
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{n} RRsets merged")), "{out:?}");
    }
    // The fixture's RRsets are spread over both shards (by registrable domain).
    for i in 0..2 {
        let n: u64 =
            ch.query(i, "SELECT uniqExact(key) FROM dnsledger.rrsets WHERE key < '\\xFF'").trim().parse().unwrap();
        assert!(n > 0, "shard {} holds nothing", i + 1);
    }
    let (sled, _a) = serve_api(work, "api-sled", ("--db", &db));
    let (cluster, _b) = serve_api(work, "api-clickhouse", ("--clickhouse", &ch.config));

    let mut paths: Vec<String> = [
        "lookup/rrset/name/example.com",
        "lookup/rrset/name/example.com/NS",
        "lookup/rrset/name/example.com/ANY/com",
        "lookup/rrset/name/*.example.com",
        "lookup/rrset/name/*.example.com/A",
        "lookup/rrset/name/*.paged.example",
        "lookup/rrset/name/www.example.*",
        "lookup/rrset/name/example.*",
        "lookup/rrset/name/nothing.example",
        "lookup/rrset/raw/076578616d706c6503636f6d00",
        "lookup/rdata/name/www.example.com",
        "lookup/rdata/name/ns1.example.com/NS",
        "lookup/rdata/name/*.example.com",
        "lookup/rdata/name/mail.example.*",
        "lookup/rdata/ip/192.0.2.80",
        "lookup/rdata/ip/192.0.2.0,24",
        "lookup/rdata/ip/192.0.3.0/24",
        "lookup/rdata/ip/192.0.2.255-192.0.3.0",
        "lookup/rdata/ip/2001:db8::,32",
        "lookup/rdata/ip/198.51.100.0,24",
        "lookup/rdata/raw/c0000250",
        "lookup/rdata/raw/0b763d73706631202d616c6c/TXT",
        "lookup/rdata/name/ns1.example.*",
        "summarize/rrset/name/*.example.com",
        "summarize/rdata/ip/198.51.100.0,24",
    ]
    .iter()
    .map(|p| format!("/dnsdb/v2/{p}"))
    .collect();
    for fences in [
        "time_first_before=150",
        "time_first_after=150",
        "time_last_before=400",
        "time_last_after=200",
        "time_first_after=100&time_last_before=401",
        "limit=3",
        "limit=3&offset=2",
        "humantime=true",
    ] {
        paths.push(format!("/dnsdb/v2/lookup/rrset/name/*.example.com?{fences}"));
        paths.push(format!("/dnsdb/v2/lookup/rdata/ip/198.51.100.0,24?{fences}"));
    }
    paths.extend(
        ["/cof/v1/lookup/rrset/name/*.paged.example?limit=5", "/pdns/query/example.com", "/pdns/query/192.0.2.80"]
            .map(String::from),
    );
    paths.push("/dnsledger/v1/estimate/rdata/ip/198.51.100.0,24".into());
    paths.extend(["/dnsdb/v2/lookup/rrset/name/*", "/dnsdb/v2/lookup/rdata/ip/300.1.2.3"].map(String::from));
    let mut results = 0;
    for path in &paths {
        let (a, b) = (get(sled, path, &[]), get(cluster, path, &[]));
        assert_eq!((a.status, &a.body), (b.status, &b.body), "{path}");
        results += a.body.matches("\"rrname\"").count();
    }
    assert!(results > 200, "the comparisons compared answers, not empty pages ({results} objects)");

    // Paging with cursors: the same pages, and together every RRset once.
    for base in
        ["/dnsdb/v2/lookup/rrset/name/*.paged.example?limit=7", "/dnsdb/v2/lookup/rdata/ip/198.51.100.0,24?limit=7"]
    {
        let (mut cursor, mut seen) = (String::new(), 0);
        loop {
            let path = if cursor.is_empty() { base.to_string() } else { format!("{base}&cursor={cursor}") };
            let (a, b) = (get(sled, &path, &[]), get(cluster, &path, &[]));
            assert_eq!(a.body, b.body, "{path}");
            seen += a.body.matches("\"obj\"").count();
            let last: serde_json::Value = serde_json::from_str(a.body.lines().last().unwrap()).unwrap();
            match last["cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => break,
            }
        }
        assert_eq!(seen as u64, PAGED, "{base}");
    }

    // A cluster filled before `G` and `V` index positions existed: without them, rdata right
    // wildcards and raw TXT lookups miss; `dnsledger clickhouse reindex` adds them.
    let newer =
        ["/dnsdb/v2/lookup/rdata/name/ns1.example.*", "/dnsdb/v2/lookup/rdata/raw/0b763d73706631202d616c6c/TXT"];
    for i in 0..2 {
        ch.query(i, "ALTER TABLE dnsledger.rdata_index DELETE WHERE substring(pos, 1, 1) IN ('G', 'V')");
    }
    wait_for("the deletions", Duration::from_secs(60), || {
        (0..2).all(|i| ch.query(i, "SELECT count() FROM system.mutations WHERE is_done = 0").trim() == "0")
    });
    for path in newer {
        let (a, b) = (get(sled, path, &[]), get(cluster, path, &[]));
        assert_ne!(a.body, b.body, "{path}: the positions are gone");
    }
    let mut reindex = dnsledger();
    reindex.args(["clickhouse", "reindex", "--config"]).arg(&ch.config);
    let out = run(reindex);
    assert!(String::from_utf8_lossy(&out.stdout).contains("index positions written"), "{out:?}");
    let mut again = dnsledger();
    again.args(["clickhouse", "reindex", "--config"]).arg(&ch.config);
    run(again);
    for path in newer.iter().copied().chain(["/dnsdb/v2/lookup/rdata/name/mail.example.*"]) {
        let (a, b) = (get(sled, path, &[]), get(cluster, path, &[]));
        assert_eq!((a.status, &a.body), (b.status, &b.body), "{path} after reindex (twice)");
        assert!(a.body.contains("\"rrname\""), "{path}: {}", a.body);
    }

    // aggr=false: the cluster computes per-day rows from its landing table. One RRset seen on
    // two days (two imports, so two batches): one row per day, summing to the aggregate.
    for (name, line) in [
        (
            "day0.ndjson",
            r#"{"rrname":"twodays.example.net.","rrtype":"A","bailiwick":"example.net.","rdata":["192.0.2.7"],"time_first":100,"time_last":200,"count":2}"#,
        ),
        (
            "day2.ndjson",
            r#"{"rrname":"twodays.example.net.","rrtype":"A","bailiwick":"example.net.","rdata":["192.0.2.7"],"time_first":172900,"time_last":173000,"count":3}"#,
        ),
    ] {
        std::fs::write(work.join(name), format!("{line}\n")).unwrap();
        let mut import = dnsledger();
        import.arg("import").arg("--clickhouse").arg(&ch.config).arg(work.join(name));
        run(import);
    }
    let objs = |path: &str| -> Vec<(u64, u64, u64)> {
        let r = get(cluster, path, &[]);
        assert!(r.body.ends_with("{\"cond\":\"succeeded\"}\n"), "{path}: {}", r.body);
        r.body
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["obj"].is_object())
            .map(|v| {
                let o = &v["obj"];
                (o["time_first"].as_u64().unwrap(), o["time_last"].as_u64().unwrap(), o["count"].as_u64().unwrap())
            })
            .collect()
    };
    assert_eq!(objs("/dnsdb/v2/lookup/rrset/name/twodays.example.net"), vec![(100, 173000, 5)]);
    assert_eq!(
        objs("/dnsdb/v2/lookup/rrset/name/twodays.example.net?aggr=false"),
        vec![(100, 200, 2), (172900, 173000, 3)]
    );
    // Fences apply per row.
    assert_eq!(
        objs("/dnsdb/v2/lookup/rrset/name/twodays.example.net?aggr=false&time_first_after=1000"),
        vec![(172900, 173000, 3)]
    );
    // The fixture's RRsets were each seen on one day: their rows are their aggregates.
    assert_eq!(
        objs("/dnsdb/v2/lookup/rrset/name/*.paged.example?aggr=false"),
        objs("/dnsdb/v2/lookup/rrset/name/*.paged.example")
    );
}

fn delta(i: u64, count: u64) -> Delta {
    Delta {
        kind: if i % 10 == 9 { Kind::NxDomain } else { Kind::Positive },
        rrset: Rrset {
            rrname: format!("h{i}.zone{}.example.", i % 7),
            rrtype: 1,
            bailiwick: format!("zone{}.example.", i % 7),
            rdata: vec![format!("10.9.{}.{}", i / 250, i % 250)],
        },
        first: 1_000 + i,
        last: 2_000 + i,
        count,
        sensors: vec!["sensor-x".into()],
    }
}

#[test]
fn batches_count_once_when_collectors_race_or_die_mid_way_and_retry() {
    let _one = one_cluster();
    let tmp = tempfile::tempdir().unwrap();
    let ch = ClickHouse::start(tmp.path(), 2);
    let config = ClickHouseConfig::load(&ch.config).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let expected: BTreeMap<String, u64> = rt.block_on(async {
        // Two collectors: separate clients, nothing shared but the cluster.
        let a = Cluster::new(config.clone()).unwrap();
        let b = Cluster::new(config.clone()).unwrap();
        a.init().await.unwrap();
        let mut expected = BTreeMap::new();
        // Batches 1-5: both collectors get the same batch at the same time, twice.
        for seq in 1..=5u64 {
            let deltas: Vec<Delta> = (0..300).map(|i| delta(i, seq)).collect();
            let range = BatchRange { sender: "sensor-x", stream: 7, first: seq, last: seq };
            let (x, y, z, w) = tokio::join!(
                a.apply(range, &deltas),
                b.apply(range, &deltas),
                a.apply(range, &deltas),
                b.apply(range, &deltas)
            );
            let outcomes = [x.unwrap(), y.unwrap(), z.unwrap(), w.unwrap()];
            assert!(outcomes.contains(&Outcome::Applied), "{outcomes:?}");
            for d in &deltas {
                *expected.entry(d.rrset.rrname.clone()).or_default() += d.count;
            }
        }
        // Batches 6-25: a collector dies after some of its INSERTs (cancelled at a different
        // moment each time), then the sender's retry reaches the other collector.
        for seq in 6..=25u64 {
            let deltas: Vec<Delta> = (0..300).map(|i| delta(i, 100 * seq)).collect();
            let range = BatchRange { sender: "sensor-x", stream: 7, first: seq, last: seq };
            let cut = Duration::from_millis((seq - 6) * 7);
            let _ = tokio::time::timeout(cut, a.apply(range, &deltas)).await;
            b.apply(range, &deltas).await.unwrap();
            // A late retry of something applied long ago: recognised.
            assert_eq!(a.apply(range, &deltas).await.unwrap(), Outcome::Duplicate);
            for d in &deltas {
                *expected.entry(d.rrset.rrname.clone()).or_default() += d.count;
            }
        }
        expected
    });
    let body = ch.query(
        1,
        "SELECT n, c FROM (SELECT any(rrname) AS n, sumMerge(count) AS c FROM dnsledger.rrsets_all WHERE key < '\\xFF' \
         GROUP BY key UNION ALL SELECT any(rrname) AS n, sum(count) AS c FROM dnsledger.landing_all \
         WHERE negative = 1 GROUP BY key) FORMAT TabSeparated",
    );
    let got: BTreeMap<String, u64> =
        body.lines().map(|l| l.split_once('\t').unwrap()).map(|(n, c)| (n.to_string(), c.parse().unwrap())).collect();
    assert_eq!(got.len(), 300);
    assert_eq!(got, expected, "every RRset counted exactly once per batch");
    // And the markers say which batches landed: 25, on each shard.
    for i in 0..2 {
        let marks = ch.query(i, "SELECT count() FROM dnsledger.landing WHERE key >= '\\xFF'");
        assert_eq!(marks.trim(), "25", "shard {}", i + 1);
    }
}

/// `rows` rows of a batch from `sensor`, as a collector writes them to `landing`.
fn landing_rows(sensor: &str, rows: u64) -> Vec<BatchRow> {
    (0..rows)
        .map(|i| BatchRow {
            sensor: sensor.to_string(),
            stream: 1,
            first_seq: 1,
            seq: 1,
            key: format!("key{i:06}").into_bytes(),
            rrname: format!("h{i}.cut.example."),
            rrtype: 1,
            bailiwick: "cut.example.".to_string(),
            rdata: vec![format!("10.8.{}.{}", i / 250, i % 250)],
            negative: 0,
            time_first: 1_700_000_000,
            time_last: 1_700_000_000 + i,
            count: 1,
            sensors: vec![sensor.to_string()],
        })
        .collect()
}

/// POSTs an INSERT into `landing` whose body is `body`, of which only the first `keep` bytes
/// are sent before the connection is dropped (a client killed mid-way); the status line when
/// all of it was sent.
fn post_insert(port: u16, params: &str, body: &[u8], keep: usize) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST /?{params}&query=INSERT%20INTO%20dnsledger.landing%20FORMAT%20RowBinary HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..keep]).unwrap();
    s.flush().unwrap();
    if keep < body.len() {
        std::thread::sleep(Duration::from_millis(200));
        return None;
    }
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.lines().next().map(str::to_string)
}

#[test]
fn an_insert_cut_short_commits_nothing_and_its_retry_counts_once() {
    let _one = one_cluster();
    let tmp = tempfile::tempdir().unwrap();
    let ch = ClickHouse::start(tmp.path(), 1);
    let config = ClickHouseConfig::load(&ch.config).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { Cluster::new(config).unwrap().init().await.unwrap() });
    let port = ch.shards[0].http;
    let landed = |sensor: &str| -> u64 {
        ch.query(0, &format!("SELECT count() FROM dnsledger.landing WHERE sensor = '{sensor}'")).trim().parse().unwrap()
    };
    let n = 2_000u64;
    // Our INSERT body: the rows as one compressed block. Cut inside the block's header, in the
    // middle, and one byte short of the end.
    let block = wire::block(&wire::rows(landing_rows("framed", n))).unwrap();
    for keep in [20, block.len() / 2, block.len() - 1] {
        assert_eq!(post_insert(port, "decompress=1", &block, keep), None);
    }
    // The control: the same rows as plain RowBinary, cut after the first half of the rows.
    // ClickHouse 18.16 commits those; that is why our INSERTs are one block.
    let control = landing_rows("plain", n);
    let half = wire::rows(&control[..n as usize / 2]).len();
    assert_eq!(post_insert(port, "insert_deduplicate=1", &wire::rows(&control), half), None);
    wait_for("the plain INSERT's cut part to be committed", Duration::from_secs(20), || landed("plain") > 0);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(landed("framed"), 0, "a cut block committed rows");
    // The retry (twice, as two collectors might): every row once.
    for _ in 0..2 {
        let status = post_insert(port, "decompress=1&insert_deduplicate=1", &block, block.len());
        assert!(status.as_deref().unwrap_or_default().contains(" 200 "), "{status:?}");
    }
    assert_eq!(landed("framed"), n);
    let sum = ch.query(0, "SELECT sum(time_last - 1700000000) FROM dnsledger.landing WHERE sensor = 'framed'");
    assert_eq!(sum.trim().parse::<u64>().unwrap(), n * (n - 1) / 2, "the rows arrive intact");
}

#[test]
fn a_sensor_forwarding_to_the_cluster_ends_exact_through_collector_kills_and_a_shard_outage() {
    let _one = one_cluster();
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let mut ch = ClickHouse::start(work, 2);
    tools::make_certs(&work.join("pki"), SERVER_NAME, &["sensor-a"]);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let collector = |metrics: SocketAddr| {
        start_ingest(
            "collector",
            work,
            ("--clickhouse", &ch.config),
            listen,
            metrics,
            vec!["--api".into(), api.to_string().into()],
        )
    };
    let collector_a = collector(SocketAddr::from(([127, 0, 0, 1], free_port())));

    let sensor_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (sensor_db, sock, config) = sensor_toml(work, "sensor-a", listen, sensor_metrics);
    let sensor = spawn_sensor("sensor", &config, &sock, work);
    let acked = || metric(sensor_metrics, "dnsledger_forward_batches_acked_total").unwrap_or(0);
    let waiting = || metric(sensor_metrics, "dnsledger_forward_outbox_batches");

    replay(&data("unbound-resolver.dnstap"), &sock);
    wait_for("first batches acknowledged", Duration::from_secs(60), || acked() >= 1 && waiting() == Some(0));

    // Many batches in a row (synthetic dnstap, one-second windows); the collector is killed
    // while they flow and another collector process takes over its address.
    let synthetic = work.join("synthetic.dnstap");
    let mut generate = dnsledger();
    generate.args(["tap", "generate", "--frames", "100000", "--names", "20000", "--zones", "400"]).arg(&synthetic);
    run(generate);
    let feeder = {
        let mut c = dnsledger();
        c.args(["tap", "replay", "--rate", "20000", "--unix"]).arg(&sock).arg(&synthetic);
        std::thread::spawn(move || run(c))
    };
    let before = acked();
    wait_for("batches flowing", Duration::from_secs(60), || acked() > before);
    collector_a.signal("KILL");
    let _ = collector_a.wait(Duration::from_secs(10));
    let collector_b = collector(SocketAddr::from(([127, 0, 0, 1], free_port())));
    feeder.join().unwrap();
    settle(sensor_metrics);

    // A shard dies: ingest stops (the collector refuses batches it cannot store, the sensor
    // keeps them), queries say their answers are partial.
    ch.kill_shard(1);
    replay(&data("bind-resolver.dnstap"), &sock);
    wait_for("batches held by the sensor", Duration::from_secs(60), || waiting().unwrap_or(0) >= 1);
    wait_for("the collector refusing what it cannot store", Duration::from_secs(60), || {
        metric(sensor_metrics, "dnsledger_forward_batches_rejected_total").unwrap_or(0) >= 1
    });
    let r = get(api, "/dnsdb/v2/lookup/rrset/name/*.example", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let last = r.body.lines().last().unwrap();
    assert!(!last.contains("succeeded") && last.contains("partial results: shard(s) 2 "), "{last}");
    let r = get(api, "/cof/v1/lookup/rrset/name/*.example", &[]);
    assert!(r.headers.contains("x-dnsledger-partial: partial results: shard(s) 2"), "{}", r.headers);

    // Back: the outbox drains, and the cluster has exactly what the sensor has.
    ch.restart_shard(1);
    settle(sensor_metrics);
    let log = sensor.terminate();
    assert!(!log.contains("panicked"), "{log}");
    let at_sensor = contents(&sensor_db);
    assert!(at_sensor.len() > 1000, "{}", at_sensor.len());
    assert_same(&at_sensor, &cluster_contents(&ch));
    let r = get(api, "/dnsdb/v2/lookup/rrset/name/*.d1.example", &[]);
    assert!(r.body.ends_with("{\"cond\":\"succeeded\"}\n") && r.body.contains("h1.d1.example."), "{}", r.body);
    let log = collector_b.terminate();
    assert!(log.contains("collector listening (ClickHouse)"), "{log}");

    // Nothing about clients or resolvers is stored: the tables have no such columns, and the
    // capture's client (127.53.9.1) and resolvers (127.53.1.1, .2) appear in no value.
    let columns = ch.query(0, "SELECT name FROM system.columns WHERE database = 'dnsledger' FORMAT TabSeparated");
    for c in columns.lines() {
        assert!(
            ["sensor", "stream", "first_seq", "seq", "key", "rrname", "rrtype", "bailiwick", "rdata", "negative"]
                .contains(&c)
                || ["time_first", "time_last", "count", "sensors", "pos", "idx", "domain", "first"].contains(&c),
            "unexpected column {c}"
        );
    }
    for ip in ["127.53.9.1", "127.53.1.1", "127.53.1.2", "1.9.53.127"] {
        let n = ch.query(
            0,
            &format!(
                "SELECT count() FROM dnsledger.landing_all WHERE position(concat(rrname, bailiwick, \
                 arrayStringConcat(rdata, ' ')), '{ip}') > 0"
            ),
        );
        assert_eq!(n.trim(), "0", "{ip} stored");
    }
    let control = ch.query(0, "SELECT count() FROM dnsledger.landing_all WHERE has(rdata, '127.53.0.1')");
    assert_ne!(control.trim(), "0", "the search sees stored rdata (the root's glue)");
}

/// Also the regression test of two bugs it found: a writer killed mid-INSERT left part of a
/// block committed (see `an_insert_cut_short_commits_nothing_and_its_retry_counts_once`), and
/// a batch with over 5,000 new RRsets stalled the writer's feed publication for good.
#[test]
fn with_nats_jetstream_in_the_path_counts_stay_exact_when_the_writer_is_killed() {
    let _one = one_cluster();
    tools::require("openssl", "openssl");
    tools::require("nats-server", "nats-server");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let ch = ClickHouse::start(work, 2);
    let nats_port = free_port();
    let mut broker = std::process::Command::new("nats-server");
    broker.args(["-js", "-a", "127.0.0.1", "-p", &nats_port.to_string(), "-sd"]).arg(work.join("jetstream"));
    let _broker = Proc::spawn("nats-server", broker, work);
    wait_for("nats-server", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_ok());
    let config = work.join("clickhouse-nats.toml");
    let mut text = std::fs::read_to_string(&ch.config).unwrap();
    text += &format!("nats = \"nats://127.0.0.1:{nats_port}\"\n");
    std::fs::write(&config, text).unwrap();

    tools::make_certs(&work.join("pki"), SERVER_NAME, &["sensor-a"]);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _collector = start_ingest(
        "collector",
        work,
        ("--clickhouse", &config),
        listen,
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        vec!["--api".into(), api.to_string().into()],
    );
    // A live-feed consumer from the start (the writer publishes the feed).
    let mut follow = dnsledger();
    follow.args(["query", "--server", &format!("http://{api}"), "--follow", "--token", "0", "-j"]);
    let follower = Proc::spawn("follower", follow, work);
    let writer_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let writer = |name: &str| {
        let mut c = dnsledger();
        c.env("DNSLEDGER_LOG", "info,dnsledger::clickhouse=debug");
        c.args(["clickhouse", "writer", "--metrics", &writer_metrics.to_string(), "--config"]).arg(&config);
        Proc::spawn(name, c, work)
    };
    let first_writer = writer("writer-1");

    let sensor_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (sensor_db, sock, sensor_config) = sensor_toml(work, "sensor-a", listen, sensor_metrics);
    let sensor = spawn_sensor("sensor", &sensor_config, &sock, work);
    replay(&data("unbound-resolver.dnstap"), &sock);
    let applied = || metric(writer_metrics, "dnsledger_writer_batches_applied_total").unwrap_or(0);
    wait_for("the writer applying", Duration::from_secs(60), || applied() >= 1);

    // The writer dies (-9) while batches flow; a new one takes over the durable consumer.
    let synthetic = work.join("synthetic.dnstap");
    let mut generate = dnsledger();
    generate.args(["tap", "generate", "--frames", "60000", "--names", "15000", "--zones", "300"]).arg(&synthetic);
    run(generate);
    let mut c = dnsledger();
    c.args(["tap", "replay", "--rate", "20000", "--unix"]).arg(&sock).arg(&synthetic);
    let feeder = std::thread::spawn(move || run(c));
    std::thread::sleep(Duration::from_millis(1500));
    first_writer.signal("KILL");
    let _ = first_writer.wait(Duration::from_secs(10));
    feeder.join().unwrap();
    replay(&data("bind-resolver.dnstap"), &sock);
    let second_writer = writer("writer-2");
    settle(sensor_metrics);
    let log = sensor.terminate();
    assert!(!log.contains("panicked"), "{log}");
    let at_sensor = contents(&sensor_db);
    assert!(at_sensor.len() > 1000, "{}", at_sensor.len());
    // The writer drains the stream on its own time.
    wait_for("the cluster to hold what the sensor has", Duration::from_secs(120), || {
        cluster_contents(&ch).values().map(|v| v.2).sum::<u64>() >= at_sensor.values().map(|v| v.2).sum::<u64>()
    });
    assert_same(&at_sensor, &cluster_contents(&ch));
    let log = second_writer.terminate();
    assert!(log.contains("writer consuming"), "{log}");

    // The feed: every RRset the cluster holds exactly once (the writer's kill and the
    // redeliveries included), and each new registrable domain once.
    let wanted = positive_rrsets(&ch);
    let out = work.join("follower.stdout");
    let lines = || tools::feed::lines(&out);
    wait_for("the feed to deliver every RRset", Duration::from_secs(60), || {
        lines().iter().filter(|l| l["type"] == "rrset").count() >= wanted.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    follower.terminate();
    let (received, domains) = tools::feed::received(&lines());
    assert_eq!(received, wanted, "the feed delivered exactly the cluster's RRsets");
    let psl = dnsledger::psl::SuffixList::load(None).unwrap();
    let registrable: std::collections::BTreeSet<String> =
        wanted.iter().filter_map(|(n, ..)| psl.registrable(n)).collect();
    assert_eq!(domains, registrable, "each registrable domain once");
}

/// The positive RRsets of the cluster: (owner, type mnemonic, bailiwick, rdata).
fn positive_rrsets(ch: &ClickHouse) -> std::collections::BTreeSet<(String, String, String, Vec<String>)> {
    let body = ch.query(
        0,
        "SELECT any(rrname) AS n, any(rrtype) AS t, any(bailiwick) AS b, any(rdata) AS r \
         FROM dnsledger.rrsets_all WHERE key < '\\xFF' GROUP BY key FORMAT JSONEachRow",
    );
    body.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let t = v["t"].as_u64().unwrap_or_else(|| v["t"].as_str().unwrap().parse().unwrap()) as u16;
            let rdata = v["r"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
            (
                v["n"].as_str().unwrap().to_string(),
                dnsledger::dns::rrtype_name(t.into()),
                v["b"].as_str().unwrap().to_string(),
                rdata,
            )
        })
        .collect()
}

#[test]
fn shards_are_reached_over_https_with_the_configured_ca_and_refused_with_another() {
    let _one = one_cluster();
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    tools::make_certs(&work.join("pki"), SERVER_NAME, &[]);
    tools::make_certs(&work.join("other-pki"), SERVER_NAME, &[]);
    let ch = ClickHouse::start_with(work, 2, Some(&work.join("pki")));
    let config = std::fs::read_to_string(&ch.config).unwrap();
    assert!(config.contains("https://127.0.0.1:"), "{config}");

    let cof = work.join("fixture.ndjson");
    std::fs::write(&cof, fixture_lines()).unwrap();
    let mut import = dnsledger();
    import.arg("import").arg("--clickhouse").arg(&ch.config).arg(&cof);
    let out = run(import);
    assert!(String::from_utf8_lossy(&out.stderr).contains("RRsets merged"), "{out:?}");
    let (api, _p) = serve_api(work, "api-https", ("--clickhouse", &ch.config));
    let r = get(api, "/dnsdb/v2/lookup/rrset/name/*.example.com", &[]);
    assert!(r.body.contains("www.example.com.") && r.body.ends_with("{\"cond\":\"succeeded\"}\n"), "{}", r.body);

    // The same cluster with a CA that did not sign its certificate: refused, and said why.
    let wrong = work.join("wrong-ca.toml");
    std::fs::write(
        &wrong,
        config.replace(
            &work.join("pki/ca.pem").display().to_string(),
            &work.join("other-pki/ca.pem").display().to_string(),
        ),
    )
    .unwrap();
    let mut init = dnsledger();
    init.args(["clickhouse", "init", "--config"]).arg(&wrong);
    let out = init.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shard 1") && err.to_lowercase().contains("certificate"), "{err}");
}
