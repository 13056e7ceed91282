//! The live feed as a SOC consumes it: `dnsledger query --follow` reading
//! `/feed/v1/rrsets` of a sensor while it ingests real unbound dnstap, then synthetic, across a
//! SIGKILL and restart of the sensor (the consumer reconnects by itself). Every RRset the
//! store ends with is received exactly once, and so is every new registrable domain.

mod tools;

use std::collections::BTreeSet;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tools::feed::lines;

use dnsledger::store::Store;
use tools::{Proc, dnsledger, free_port, wait_for, wait_for_socket};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn replay(file: &Path, sock: &Path) {
    let mut c = dnsledger();
    c.args(["tap", "replay"]).arg(file).arg("--unix").arg(sock);
    tools::run(c);
}

fn start_sensor(work: &Path, config: &Path, sock: &Path, api: SocketAddr, name: &str) -> Proc {
    let _ = std::fs::remove_file(sock);
    let mut cmd = dnsledger();
    cmd.args(["sensor", "-q", "-c"]).arg(config);
    let p = Proc::spawn(name, cmd, work);
    wait_for_socket(sock);
    wait_for("the API", Duration::from_secs(20), || std::net::TcpStream::connect(api).is_ok());
    p
}

/// Waits until the consumer's output stops growing (two flush windows without a new line).
fn settle(out: &Path) -> usize {
    let mut last = (lines(out).len(), std::time::Instant::now());
    wait_for("the feed to settle", Duration::from_secs(60), || {
        let n = lines(out).len();
        if n != last.0 {
            last = (n, std::time::Instant::now());
        }
        n > 0 && last.1.elapsed() > Duration::from_secs(3)
    });
    last.0
}

#[test]
fn a_follower_gets_every_new_rrset_once_across_a_sensor_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let (db, sock, config) = (work.join("db"), work.join("dnstap.sock"), work.join("sensor.toml"));
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(
        &config,
        format!(
            "db = \"{}\"\n[listen]\nunix = [\"{}\"]\n[privacy]\nprivate_networks = []\n\
             [aggregate]\nwindow_seconds = 1\n[api]\nlisten = \"{api}\"\nday_rows = true\n",
            db.display(),
            sock.display()
        ),
    )
    .unwrap();
    let sensor = start_sensor(work, &config, &sock, api, "sensor-1");

    let state = work.join("feed.token");
    let mut follow = dnsledger();
    follow.args(["query", "--server", &format!("http://{api}"), "--follow", "--token", "0", "-j"]);
    follow.arg("--state").arg(&state);
    let consumer = Proc::spawn("consumer", follow, work);

    replay(&data("unbound-resolver.dnstap"), &sock);
    let before_crash = settle(&consumer_stdout(work));
    sensor.signal("KILL");
    drop(sensor);
    let sensor = start_sensor(work, &config, &sock, api, "sensor-2");
    // New names after the restart: synthetic resolver traffic (the BIND capture of the same
    // questions would only repeat the unbound capture's RRsets).
    let synthetic = work.join("synthetic.dnstap");
    let mut generate = dnsledger();
    generate.args(["tap", "generate", "--frames", "3000", "--names", "500", "--zones", "20"]).arg(&synthetic);
    tools::run(generate);
    replay(&synthetic, &sock);
    wait_for("more after the restart", Duration::from_secs(60), || lines(&consumer_stdout(work)).len() > before_crash);
    settle(&consumer_stdout(work));
    // aggr=false: per-day rows of the same RRsets, whose counts add up to the aggregates.
    let saf = |query: &str| -> Vec<serde_json::Value> {
        let mut raw = std::net::TcpStream::connect(api).unwrap();
        use std::io::{Read, Write};
        write!(raw, "GET /dnsdb/v2/lookup/rrset/name/%2A.example.com?{query} HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).unwrap();
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        assert!(body.trim_end().ends_with("{\"cond\":\"succeeded\"}"), "{body}");
        body.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["obj"].is_object())
            .map(|v| v["obj"].clone())
            .collect()
    };
    let key = |o: &serde_json::Value| {
        (o["rrname"].to_string(), o["rrtype"].to_string(), o["bailiwick"].to_string(), o["rdata"].to_string())
    };
    let aggregates = saf("");
    let rows = saf("aggr=false");
    assert!(!aggregates.is_empty() && rows.len() >= aggregates.len());
    for a in &aggregates {
        let mine: Vec<&serde_json::Value> = rows.iter().filter(|r| key(r) == key(a)).collect();
        let total: u64 = mine.iter().map(|r| r["count"].as_u64().unwrap()).sum();
        assert_eq!(total, a["count"].as_u64().unwrap(), "{a}");
        for r in mine {
            let (f, l) = (r["time_first"].as_u64().unwrap(), r["time_last"].as_u64().unwrap());
            assert!(f >= a["time_first"].as_u64().unwrap() && l <= a["time_last"].as_u64().unwrap(), "{r} in {a}");
        }
    }
    // A token this feed never gave (another store's) is refused, not waited for.
    let mut raw = std::net::TcpStream::connect(api).unwrap();
    use std::io::{Read, Write};
    raw.write_all(b"GET /feed/v1/rrsets?after=999999999 HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    let log = consumer.terminate();
    assert!(log.contains("reconnecting"), "the consumer saw the sensor go away: {log}");
    sensor.terminate();

    let got = lines(&consumer_stdout(work));
    let (received, domains) = tools::feed::received(&got);
    let last_token = got.last().unwrap()["token"].as_u64().unwrap();
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), last_token.to_string());
    let store = Store::open(&db).unwrap();
    let stored: BTreeSet<_> = store
        .all(false)
        .map(|e| {
            let e = e.unwrap();
            (e.rrset.rrname, dnsledger::dns::rrtype_name(e.rrset.rrtype.into()), e.rrset.bailiwick, e.rrset.rdata)
        })
        .collect();
    assert!(stored.len() > 20, "{}", stored.len());
    assert_eq!(received, stored, "the feed delivered exactly the store's RRsets");
    // New domains: the registrable domains (Public Suffix List, Debian's) of what was stored.
    let psl = dnsledger::psl::SuffixList::load(None).unwrap();
    assert!(!psl.is_empty(), "install the Debian package publicsuffix (.ci/run does)");
    let registrable: BTreeSet<String> = stored.iter().filter_map(|(n, ..)| psl.registrable(n)).collect();
    assert_eq!(domains, registrable, "each registrable domain announced once");
    assert!(domains.contains("example.com."), "{domains:?}");
}

fn consumer_stdout(work: &Path) -> PathBuf {
    work.join("consumer.stdout")
}
