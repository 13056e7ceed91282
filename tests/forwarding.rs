//! Forwarding sensor -> collector and sensors -> relay -> collector over mutual TLS, with the
//! real dnstap captures of `tests/data` replayed into live sensors: the collector's store must
//! equal the sensors' (summed), count for count, also when the collector or the relay is
//! killed (-9) mid-stream and restarted and while it is down. Peers without a valid
//! certificate, and garbage, are refused and counted while the collector keeps serving.

mod tools;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dnsledger::store::Store;
use tools::forward::{
    Contents, SERVER_NAME, contents, data, flushed, replay, sensor_toml, settle, spawn_sensor, start_ingest,
};
use tools::{Proc, dnsledger, free_port, metric, wait_for, wait_for_socket};

fn start_collector(work: &Path, db: &Path, listen: SocketAddr, metrics: SocketAddr) -> Proc {
    start_collector_with(work, db, listen, metrics, &[])
}

fn start_collector_with(work: &Path, db: &Path, listen: SocketAddr, metrics: SocketAddr, extra: &[&str]) -> Proc {
    start_ingest("collector", work, ("--db", db), listen, metrics, extra.iter().map(Into::into).collect())
}

#[test]
fn the_collector_ends_with_the_sensors_counts_through_crashes_and_outages() {
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    tools::make_certs(&work.join("pki"), SERVER_NAME, &["sensor-a"]);
    let collector_db = work.join("collector.db");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let collector_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let collector = start_collector(work, &collector_db, listen, collector_metrics);

    let sensor_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (sensor_db, sock, config) = sensor_toml(work, "sensor-a", listen, sensor_metrics);
    let sensor = spawn_sensor("sensor", &config, &sock, work);
    let acked = || metric(sensor_metrics, "dnsledger_forward_batches_acked_total").unwrap_or(0);
    let waiting = || metric(sensor_metrics, "dnsledger_forward_outbox_batches");

    // A first stream, forwarded.
    replay(&data("unbound-resolver.dnstap"), &sock);
    wait_for("first batches acknowledged", Duration::from_secs(30), || acked() >= 1 && waiting() == Some(0));

    // The collector dies (kill -9) and stays down while the sensor keeps ingesting.
    collector.signal("KILL");
    let _ = collector.wait(Duration::from_secs(10));
    replay(&data("bind-resolver.dnstap"), &sock);
    replay(&data("unbound-resolver.dnstap"), &sock);
    wait_for("batches waiting in the outbox", Duration::from_secs(30), || waiting().unwrap_or(0) >= 1);
    wait_for("the sensor to notice the outage", Duration::from_secs(30), || {
        metric(sensor_metrics, "dnsledger_forward_failures_total{reason=\"connect\"}").unwrap_or(0) >= 1
    });

    // Back up: the outbox drains.
    let collector = start_collector(work, &collector_db, listen, collector_metrics);
    wait_for("outbox drained", Duration::from_secs(60), || waiting() == Some(0));
    let before = acked();
    replay(&data("bind-resolver.dnstap"), &sock);
    wait_for("a new batch acknowledged", Duration::from_secs(30), || acked() > before);
    settle(sensor_metrics);
    let log = sensor.terminate();
    assert!(!log.contains("panicked"), "{log}");
    let collector_log = collector.terminate();

    let at_sensor = contents(&sensor_db);
    let at_collector = contents(&collector_db);
    assert!(at_sensor.len() > 20, "{}", at_sensor.len());
    let differ: Vec<_> = at_sensor.iter().filter(|(k, v)| at_collector.get(*k) != Some(*v)).collect();
    assert!(differ.is_empty(), "sensor entries the collector lacks or counts differently: {differ:#?}");
    assert_eq!(at_sensor.len(), at_collector.len(), "the collector has entries the sensor lacks");
    let store = Store::open(&collector_db).unwrap();
    let marks = store.sender_marks().unwrap();
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!(marks[0].0, "sensor-a", "the sender is who its certificate says");
    let (key, _) = at_sensor.iter().next().unwrap();
    let rrset = dnsledger::sensor::Rrset {
        rrname: key.0.clone(),
        rrtype: key.1,
        bailiwick: key.2.clone(),
        rdata: key.3.clone(),
    };
    assert_eq!(store.contributors(&rrset).unwrap(), vec!["sensor-a".to_string()]);
    assert!(collector_log.contains("sender connected"), "{collector_log}");

    // Nothing about clients or resolvers crossed: the captures' client (127.53.9.1) and
    // resolvers (127.53.1.1, 127.53.1.2) appear nowhere in the collector's files.
    // The files as they are, and the runs' blocks, which are compressed in them, unpacked.
    let mut bytes = store.unpacked_runs().unwrap();
    drop(store);
    for entry in std::fs::read_dir(&collector_db).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    for ip in CAPTURE_HOSTS {
        assert_none_of(&bytes, address_forms(ip), "the collector's store");
    }
}

/// The captures' client (127.53.9.1) and resolvers (127.53.1.1, 127.53.1.2).
const CAPTURE_HOSTS: [[u8; 4]; 3] = [[127, 53, 9, 1], [127, 53, 1, 1], [127, 53, 1, 2]];

/// `ip` as text, reversed (as in a PTR name), binary and IPv4-mapped.
fn address_forms(ip: [u8; 4]) -> Vec<(String, Vec<u8>)> {
    let text = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
    vec![
        (format!("{text} (text)"), text.clone().into_bytes()),
        (format!("{text} (reversed)"), format!("{}.{}.{}.{}", ip[3], ip[2], ip[1], ip[0]).into_bytes()),
        (format!("{text} (binary)"), ip.to_vec()),
        (format!("{text} (mapped)"), std::net::Ipv4Addr::from(ip).to_ipv6_mapped().octets().to_vec()),
    ]
}

/// Asserts that `bytes` hold stored rdata (the root's glue: the search sees what is there) and
/// none of `needles`.
fn assert_none_of(bytes: &[u8], needles: Vec<(String, Vec<u8>)>, place: &str) {
    let control = b"127.53.0.1";
    assert!(bytes.windows(control.len()).any(|w| w == control), "the search of {place} sees rdata (the root's glue)");
    for (what, needle) in needles {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_slice()), "{what} found in {place}");
    }
}

#[test]
fn peers_without_a_valid_certificate_and_garbage_are_refused_and_counted() {
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let pki = work.join("pki");
    tools::make_certs(&pki, SERVER_NAME, &["sensor-a"]);
    tools::make_certs(&work.join("other"), SERVER_NAME, &["sensor-a"]);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut collector = start_collector(work, &work.join("collector.db"), listen, metrics);

    // Plaintext.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(listen).unwrap();
        s.write_all(&[0, 0, 0, 5, 1, 2, 3, 4, 5]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
    }
    // TLS without a client certificate, and with one from another CA (same CN).
    let s_client = |cert: Option<(&Path, &Path)>, input: &[u8]| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &listen.to_string(), "-servername", SERVER_NAME, "-CAfile"])
            .arg(pki.join("ca.pem"))
            .arg("-quiet");
        if let Some((c, k)) = cert {
            cmd.arg("-cert").arg(c).arg("-key").arg(k);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(input);
            let _ = stdin.flush();
            // -quiet implies -ign_eof: s_client stays until killed.
            std::thread::sleep(Duration::from_millis(1500));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    s_client(None, b"");
    let other = work.join("other");
    s_client(Some((&other.join("sensor-a.pem"), &other.join("sensor-a.key"))), b"");
    wait_for("refusals counted", Duration::from_secs(10), || {
        metric(metrics, "dnsledger_collector_connections_total{outcome=\"tls_handshake\"}").unwrap_or(0) >= 3
    });
    assert_eq!(metric(metrics, "dnsledger_collector_connections_total{outcome=\"accepted\"}"), None);

    // A valid sender that sends garbage: a framed body that is not a batch is rejected with a
    // reason; an oversized length closes the connection.
    let valid = (pki.join("sensor-a.pem"), pki.join("sensor-a.key"));
    let out = s_client(Some((&valid.0, &valid.1)), &[0, 0, 0, 4, b'j', b'u', b'n', b'k']);
    assert!(!out.stdout.is_empty(), "a REJECTED ack comes back");
    s_client(Some((&valid.0, &valid.1)), &[0xff, 0xff, 0xff, 0xff]);
    wait_for("garbage counted", Duration::from_secs(10), || {
        metric(metrics, "dnsledger_collector_batches_rejected_total{reason=\"decompress\"}") == Some(1)
            && metric(metrics, "dnsledger_collector_batches_rejected_total{reason=\"too_large\"}") == Some(1)
    });
    assert!(collector.is_running(), "{}", collector.stderr());
    assert_eq!(metric(metrics, "dnsledger_collector_batches_applied_total"), Some(0));
}

fn start_relay(work: &Path, listen: SocketAddr, metrics: SocketAddr, upstream: SocketAddr) -> Proc {
    start_relay_with(work, listen, metrics, upstream, Vec::new())
}

/// [`start_relay`] with more arguments.
fn start_relay_with(
    work: &Path,
    listen: SocketAddr,
    metrics: SocketAddr,
    upstream: SocketAddr,
    more: Vec<std::ffi::OsString>,
) -> Proc {
    let pki = work.join("pki");
    let mut extra: Vec<std::ffi::OsString> = vec![
        "--upstream".into(),
        upstream.to_string().into(),
        "--upstream-name".into(),
        SERVER_NAME.into(),
        "--upstream-ca".into(),
        pki.join("ca.pem").into(),
        "--cert".into(),
        pki.join("relay-1.pem").into(),
        "--key".into(),
        pki.join("relay-1.key").into(),
    ];
    extra.extend(more);
    start_ingest("relay", work, ("--db", &work.join("relay.db")), listen, metrics, extra)
}

#[test]
fn two_sensors_through_a_relay_that_is_killed_add_up_at_the_collector() {
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    tools::make_certs(&work.join("pki"), SERVER_NAME, &["sensor-a", "sensor-b", "relay-1"]);
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (collector_addr, collector_metrics, relay_addr, relay_metrics) = (port(), port(), port(), port());
    let collector_db = work.join("collector.db");
    let collector =
        start_collector_with(work, &collector_db, collector_addr, collector_metrics, &["--relay", "relay-1"]);
    let relay = start_relay(work, relay_addr, relay_metrics, collector_addr);

    let mut sensors = Vec::new();
    for name in ["sensor-a", "sensor-b"] {
        let metrics = port();
        let (db, sock, config) = sensor_toml(work, name, relay_addr, metrics);
        let p = spawn_sensor(name, &config, &sock, work);
        sensors.push((p, db, sock, metrics));
    }
    replay(&data("unbound-resolver.dnstap"), &sensors[0].2);
    replay(&data("unbound-resolver.dnstap"), &sensors[1].2);
    replay(&data("bind-resolver.dnstap"), &sensors[1].2);
    for s in &sensors {
        settle(s.3);
    }

    // The relay dies mid-stream and stays down while both sensors ingest; then it returns.
    relay.signal("KILL");
    let _ = relay.wait(Duration::from_secs(10));
    replay(&data("bind-resolver.dnstap"), &sensors[0].2);
    replay(&data("unbound-resolver.dnstap"), &sensors[1].2);
    wait_for("sensors notice the relay is gone", Duration::from_secs(30), || {
        sensors.iter().all(|s| metric(s.3, "dnsledger_forward_failures_total{reason=\"connect\"}").unwrap_or(0) >= 1)
    });
    let relay = start_relay(work, relay_addr, relay_metrics, collector_addr);
    for s in &sensors {
        settle(s.3);
    }
    std::thread::sleep(Duration::from_millis(600));
    wait_for("relay outbox drained", Duration::from_secs(60), || {
        metric(relay_metrics, "dnsledger_forward_outbox_batches") == Some(0)
    });
    let relay_log = relay.terminate();
    let collector_log = collector.terminate();
    let mut expected = Contents::new();
    for (p, db, _, _) in sensors {
        p.terminate();
        for (k, (f, l, c)) in contents(&db) {
            let e = expected.entry(k).or_insert((f, l, 0));
            e.0 = e.0.min(f);
            e.1 = e.1.max(l);
            e.2 += c;
        }
    }
    let got = contents(&collector_db);
    let differ: Vec<_> = expected.iter().filter(|(k, v)| got.get(*k) != Some(*v)).collect();
    assert!(differ.is_empty(), "summed sensor entries the collector lacks or counts differently: {differ:#?}");
    assert_eq!(expected.len(), got.len());
    let store = Store::open(&collector_db).unwrap();
    let marks = store.sender_marks().unwrap();
    assert_eq!(marks.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), vec!["relay-1"], "{marks:?}");
    // The relay named the sensors behind each RRset, and the collector trusts it to.
    let (key, _) = expected.iter().find(|(k, _)| k.0 == "www.example.com." && k.1 == 1).unwrap();
    let rrset = dnsledger::sensor::Rrset {
        rrname: key.0.clone(),
        rrtype: key.1,
        bailiwick: key.2.clone(),
        rdata: key.3.clone(),
    };
    assert_eq!(store.contributors(&rrset).unwrap(), vec!["sensor-a", "sensor-b"]);
    assert!(relay_log.contains("relaying upstream"), "{relay_log}");
    assert!(collector_log.contains("sender=\"relay-1\""), "{collector_log}");
}

#[test]
fn certificates_from_dnsledger_pki_verify_with_openssl_and_carry_forwarding() {
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let pki = work.join("pki");
    let pki_cmd = |args: &[&str]| {
        let out = tools::run({
            let mut c = dnsledger();
            c.arg("pki").args(args).arg("--dir").arg(&pki);
            c
        });
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    pki_cmd(&["ca"]);
    pki_cmd(&["server", SERVER_NAME, "--ip", "127.0.0.1"]);
    pki_cmd(&["client", "sensor-a"]);
    pki_cmd(&["client", "sensor-old", "--days", "0"]);
    let again = dnsledger().args(["pki", "client", "sensor-a", "--dir"]).arg(&pki).output().unwrap();
    assert!(!again.status.success(), "a key is never overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not overwritten"));
    let verify = tools::run({
        let mut c = Command::new("openssl");
        c.arg("verify")
            .arg("-CAfile")
            .arg(pki.join("ca.pem"))
            .arg(pki.join("sensor-a.pem"))
            .arg(pki.join(format!("{SERVER_NAME}.pem")));
        c
    });
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    // The layout start_collector expects.
    std::fs::copy(pki.join(format!("{SERVER_NAME}.pem")), pki.join("server.pem")).unwrap();
    std::fs::copy(pki.join(format!("{SERVER_NAME}.key")), pki.join("server.key")).unwrap();

    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (listen, collector_metrics, sensor_metrics) = (port(), port(), port());
    let collector_db = work.join("collector.db");
    let collector = start_collector(work, &collector_db, listen, collector_metrics);
    // An expired certificate from the right CA is refused.
    let expired = Command::new("openssl")
        .args(["s_client", "-connect", &listen.to_string(), "-servername", SERVER_NAME, "-quiet", "-CAfile"])
        .arg(pki.join("ca.pem"))
        .arg("-cert")
        .arg(pki.join("sensor-old.pem"))
        .arg("-key")
        .arg(pki.join("sensor-old.key"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    drop(expired);
    wait_for("expired certificate refused", Duration::from_secs(10), || {
        collector.stderr().contains("certificate expired")
    });
    let (db, sock, config) = sensor_toml(work, "sensor-a", listen, sensor_metrics);
    let sensor = spawn_sensor("sensor", &config, &sock, work);
    replay(&data("unbound-resolver.dnstap"), &sock);
    settle(sensor_metrics);
    sensor.terminate();
    let log = collector.terminate();
    assert_eq!(contents(&db), contents(&collector_db));
    assert!(!log.contains("sender=\"sensor-old\""), "{log}");
    assert_eq!(Store::open(&collector_db).unwrap().sender_marks().unwrap()[0].0, "sensor-a");
}

#[test]
fn a_sensor_killed_before_forwarding_sends_what_it_had_flushed_after_a_restart() {
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    tools::make_certs(&work.join("pki"), SERVER_NAME, &["sensor-a"]);
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (listen, collector_metrics, sensor_metrics) = (port(), port(), port());
    // No collector yet: the sensor flushes into its outbox and cannot forward.
    let (db, sock, config) = sensor_toml(work, "sensor-a", listen, sensor_metrics);
    let start_sensor = || spawn_sensor("sensor", &config, &sock, work);
    let sensor = start_sensor();
    replay(&data("unbound-resolver.dnstap"), &sock);
    replay(&data("bind-resolver.dnstap"), &sock);
    wait_for("windows flushed", Duration::from_secs(30), || flushed(sensor_metrics));
    assert!(metric(sensor_metrics, "dnsledger_sensor_outbox_batches").unwrap() >= 1);
    // The store's own gauges: what was flushed is in its runs.
    assert!(metric(sensor_metrics, "dnsledger_store_rrsets").unwrap() >= 1);
    assert!(metric(sensor_metrics, "dnsledger_store_runs").unwrap() >= 1);
    assert!(metric(sensor_metrics, "dnsledger_store_run_bytes").unwrap() > 0);
    sensor.signal("KILL");
    let _ = sensor.wait(Duration::from_secs(10));
    let _ = std::fs::remove_file(&sock);

    let collector_db = work.join("collector.db");
    let collector = start_collector(work, &collector_db, listen, collector_metrics);
    let sensor = start_sensor();
    settle(sensor_metrics);
    sensor.terminate();
    collector.terminate();
    let at_sensor = contents(&db);
    assert!(at_sensor.len() > 20);
    assert_eq!(at_sensor, contents(&collector_db), "everything flushed before the kill reached the collector, once");
}

#[test]
fn a_relay_also_takes_raw_dnstap_and_forwards_what_a_sensor_would_keep() {
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    tools::make_certs(&work.join("pki"), SERVER_NAME, &["sensor-a", "relay-1"]);
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (collector_addr, collector_metrics, relay_addr, relay_metrics) = (port(), port(), port(), port());
    let collector_db = work.join("collector.db");
    let collector = start_collector(work, &collector_db, collector_addr, collector_metrics);
    // The relay's dnstap input: the settings of a sensor file (its db is not used).
    let (_, relay_sock, relay_sensor) = sensor_toml(work, "relay-input", relay_addr, port());
    let relay = start_relay_with(
        work,
        relay_addr,
        relay_metrics,
        collector_addr,
        vec!["--sensor-config".into(), relay_sensor.clone().into()],
    );
    wait_for_socket(&relay_sock);
    // A sensor behind the relay too, and raw dnstap straight into the relay, at the same time.
    let sensor_metrics = port();
    let (sensor_db, sock, config) = sensor_toml(work, "sensor-a", relay_addr, sensor_metrics);
    let sensor = spawn_sensor("sensor-a", &config, &sock, work);
    let direct = std::thread::spawn({
        let relay_sock = relay_sock.clone();
        move || replay(&data("unbound-resolver.dnstap"), &relay_sock)
    });
    replay(&data("bind-resolver.dnstap"), &sock);
    direct.join().unwrap();
    settle(sensor_metrics);
    wait_for("the relay's own observations flushed and forwarded", Duration::from_secs(60), || {
        metric(relay_metrics, "dnsledger_sensor_rrsets_observed_total").is_some_and(|n| n > 0)
            && metric(relay_metrics, "dnsledger_sensor_rrsets_observed_total")
                == metric(relay_metrics, "dnsledger_sensor_observations_flushed_total")
            && metric(relay_metrics, "dnsledger_forward_outbox_batches") == Some(0)
    });
    std::thread::sleep(Duration::from_millis(600));
    wait_for("the relay's outbox drained", Duration::from_secs(60), || {
        metric(relay_metrics, "dnsledger_forward_outbox_batches") == Some(0)
    });
    sensor.terminate();
    relay.terminate();
    collector.terminate();

    // What a sensor with the relay's settings keeps of the same capture, plus the sensor's.
    let reference_db = work.join("reference.db");
    let reference = work.join("reference.toml");
    std::fs::write(
        &reference,
        std::fs::read_to_string(&relay_sensor)
            .unwrap()
            .replace(&work.join("relay-input.db").display().to_string(), &reference_db.display().to_string()),
    )
    .unwrap();
    let mut read = dnsledger();
    read.args(["sensor", "-q", "-c"]).arg(&reference).arg("--read").arg(data("unbound-resolver.dnstap"));
    tools::run(read);
    let mut expected = contents(&reference_db);
    for (k, (f, l, c)) in contents(&sensor_db) {
        let e = expected.entry(k).or_insert((f, l, 0));
        *e = (e.0.min(f), e.1.max(l), e.2 + c);
    }
    let at_collector = contents(&collector_db);
    assert!(expected.len() > 20, "{}", expected.len());
    assert_eq!(at_collector, expected, "the collector has the sensor's and the relay's own RRsets, counted once");
}

#[test]
fn a_collector_killed_while_batches_flow_ends_with_exact_counts() {
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    tools::make_certs(&work.join("pki"), SERVER_NAME, &["sensor-a"]);
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (listen, collector_metrics, sensor_metrics) = (port(), port(), port());
    let collector_db = work.join("collector.db");
    let collector = start_collector(work, &collector_db, listen, collector_metrics);
    let (sensor_db, sock, config) = sensor_toml(work, "sensor-a", listen, sensor_metrics);
    let sensor = spawn_sensor("sensor", &config, &sock, work);
    let acked = || metric(sensor_metrics, "dnsledger_forward_batches_acked_total").unwrap_or(0);

    // Five seconds of synthetic dnstap (one-second windows: a batch a second, thousands of
    // RRsets each); the collector is killed (-9) as soon as batches are being applied, so
    // that the kill lands inside a merge or between a merge and its acknowledgement as often
    // as the timing allows.
    let synthetic = work.join("synthetic.dnstap");
    let mut generate = dnsledger();
    generate.args(["tap", "generate", "--frames", "100000", "--names", "30000", "--zones", "300"]).arg(&synthetic);
    tools::run(generate);
    let mut c = dnsledger();
    c.args(["tap", "replay", "--rate", "20000", "--unix"]).arg(&sock).arg(&synthetic);
    let feeder = std::thread::spawn(move || tools::run(c));
    wait_for("batches flowing", Duration::from_secs(60), || {
        metric(collector_metrics, "dnsledger_collector_batches_applied_total").unwrap_or(0) >= 1
    });
    collector.signal("KILL");
    let _ = collector.wait(Duration::from_secs(10));
    let before = acked();
    let collector = start_collector(work, &collector_db, listen, collector_metrics);
    feeder.join().unwrap();
    settle(sensor_metrics);
    assert!(acked() > before, "batches acknowledged after the restart");
    sensor.terminate();
    collector.terminate();
    let (at_sensor, at_collector) = (contents(&sensor_db), contents(&collector_db));
    assert!(at_sensor.len() > 10_000, "{}", at_sensor.len());
    assert_eq!(at_sensor, at_collector, "every RRset counted once, through the kill");
}

/// The batches exactly as a sensor sends them, read where a collector reads them (past TLS)
/// and decompressed: none holds an address of the captures' client or resolvers (as text,
/// reversed, binary, IPv4-mapped, or binary with any of their ports).
#[test]
fn the_batches_a_sensor_sends_hold_no_client_or_resolver_address() {
    use dnsledger::forward::wire;
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let pki = work.join("pki");
    tools::make_certs(&pki, SERVER_NAME, &["sensor-a"]);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));

    // A recording collector: the rig's server certificate, clients of its CA; each batch
    // decoded as the collector decodes it, kept decompressed, acknowledged OK.
    let tls =
        dnsledger::tls::server_config(&pki.join("server.pem"), &pki.join("server.key"), Some(&pki.join("ca.pem")))
            .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind(listen)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, usize)>();
    rt.spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = acceptor.accept(tcp).await else { return };
                while let Ok(Some(body)) = wire::read_message(&mut conn).await {
                    let (id, deltas) = wire::decode_batch(&body).expect("a batch the collector accepts");
                    let raw = zstd::stream::decode_all(&body[..]).expect("zstd");
                    let _ = tx.send((raw, deltas.len()));
                    let ack = wire::encode_ack(id.sequence, wire::Status::Ok, "", id.sequence);
                    if wire::write_message(&mut conn, &ack).await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    let sensor_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (_, sock, config) = sensor_toml(work, "sensor-a", listen, sensor_metrics);
    let sensor = spawn_sensor("sensor", &config, &sock, work);
    replay(&data("unbound-resolver.dnstap"), &sock);
    replay(&data("bind-resolver.dnstap"), &sock);
    wait_for("everything acknowledged", Duration::from_secs(30), || {
        flushed(sensor_metrics)
            && metric(sensor_metrics, "dnsledger_forward_outbox_batches") == Some(0)
            && metric(sensor_metrics, "dnsledger_forward_batches_acked_total").unwrap_or(0) >= 1
    });
    drop(sensor);
    let (mut bytes, mut summaries) = (Vec::new(), 0);
    while let Ok((raw, n)) = rx.try_recv() {
        bytes.extend(raw);
        summaries += n;
    }
    assert!(summaries > 50, "{summaries} summaries received");

    // The ports each address used in the captures.
    let mut ports: std::collections::BTreeMap<String, std::collections::BTreeSet<u16>> = Default::default();
    for capture in ["unbound-resolver.dnstap", "bind-resolver.dnstap"] {
        let mut read = dnsledger();
        read.args(["tap", "read", "--format", "json"]).arg(data(capture));
        for line in String::from_utf8(tools::run(read).stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for side in ["query", "response"] {
                if let (Some(a), Some(p)) = (v[format!("{side}_address")].as_str(), v[format!("{side}_port")].as_u64())
                {
                    ports.entry(a.to_string()).or_default().insert(p as u16);
                }
            }
        }
    }
    for ip in CAPTURE_HOSTS {
        let text = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
        let used = ports.get(&text).cloned().unwrap_or_default();
        assert!(!used.is_empty(), "{text} is in the captures");
        let mut needles = address_forms(ip);
        needles.extend(
            used.iter().map(|p| (format!("{text} (binary with port {p})"), [&ip[..], &p.to_be_bytes()].concat())),
        );
        assert_none_of(&bytes, needles, "the batches");
    }
}

/// `--fan-in` takes the powers of two a store can merge by, and says so otherwise.
#[test]
fn a_collector_refuses_a_fan_in_it_cannot_use() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["0", "1", "3", "32", "eight"] {
        let mut cmd = dnsledger();
        cmd.args(["collector", "--listen", "127.0.0.1:1", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .args(["--client-ca", "ca.pem", "--fan-in", bad])
            .arg("--db")
            .arg(tmp.path().join("db"));
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--fan-in") && err.contains("2, 4, 8 or 16"), "{bad}: {err}");
        assert!(!tmp.path().join("db").exists(), "{bad}: a store was made");
    }
}
