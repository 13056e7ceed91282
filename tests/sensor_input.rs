//! The sensor's inputs: the shared captures give the same store from a file and over a socket;
//! senders at once add up exactly; broken DNS inside valid frames is counted, never fatal; a
//! sensor killed with SIGKILL under load keeps everything it had flushed, and SIGTERM flushes
//! everything; window bounds change when windows are written, not what is stored; referrals
//! teach delegations (and repeated ones with new glue still do).

mod tools;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dnsledger::dnstap::{DnstapEvent, DnstapMessage, MessageType, SocketFamily, SocketProtocol, Timestamp, encode};
use dnsledger::sensor::{Pipeline, SensorConfig, SensorStats};
use dnsledger::store::{Entry, Store};
use hickory_proto::rr::Name;
use tools::{Proc, dnsledger, metric, run, wait_for, wait_for_socket};

fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("sensor.toml");
    std::fs::write(
        &path,
        format!("db = \"{}\"\n{extra}\n[privacy]\nprivate_networks = []\n", dir.join("db").display()),
    )
    .unwrap();
    path
}

fn entries(db: &Path) -> Vec<Entry> {
    let s = Store::open(db).unwrap();
    let mut v: Vec<Entry> = s.all(false).map(|e| e.unwrap()).collect();
    v.sort_by(|a, b| a.rrset.cmp(&b.rrset));
    v
}

/// `dnsledger tap generate`'s frames, written to `input.dnstap` in `dir`.
fn generated(dir: &Path, frames: u64, names: u64, zones: u64) -> std::path::PathBuf {
    let input = dir.join("input.dnstap");
    let mut generate = dnsledger();
    generate.args(["tap", "generate", "--frames", &frames.to_string(), "--names", &names.to_string()]);
    generate.args(["--zones", &zones.to_string()]).arg(&input);
    run(generate);
    input
}

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

#[test]
fn captures_give_the_same_store_from_file_and_socket() {
    for capture in ["unbound-resolver.dnstap", "bind-resolver.dnstap"] {
        let by_file = tempfile::tempdir().unwrap();
        let cfg = config(by_file.path(), "");
        let mut cmd = dnsledger();
        cmd.args(["sensor", "-c"]).arg(&cfg).arg("--read").arg(data(capture));
        run(cmd);

        let by_socket = tempfile::tempdir().unwrap();
        let sock = by_socket.path().join("s.sock");
        let cfg = config(by_socket.path(), &format!("[listen]\nunix = [\"{}\"]", sock.display()));
        let mut cmd = dnsledger();
        cmd.args(["sensor", "-q", "-c"]).arg(&cfg);
        let sensor = Proc::spawn("sensor", cmd, by_socket.path());
        wait_for_socket(&sock);
        let mut replay = dnsledger();
        replay.args(["tap", "replay"]).arg(data(capture)).arg("--unix").arg(&sock);
        run(replay);
        sensor.terminate();

        let (a, b) = (entries(&by_file.path().join("db")), entries(&by_socket.path().join("db")));
        assert!(a.len() > 20, "{capture}: {} RRsets", a.len());
        assert!(a == b, "{capture}: file and socket stores differ");
        assert!(a.iter().all(|e| !e.rrset.rdata.contains(&"6.6.6.6".to_string())), "forged record stored");

        // The query tool reads the same store: COF lines, wildcard owners, address prefixes.
        let cof = |args: &[&str]| -> Vec<serde_json::Value> {
            let mut q = dnsledger();
            q.args(["query", "--db"]).arg(by_file.path().join("db")).arg("--json").args(args);
            String::from_utf8(run(q).stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        };
        let bank = cof(&["rrset", "*.bank.com"]);
        assert!(!bank.is_empty(), "{capture}: nothing under bank.com");
        for o in &bank {
            assert!(o["rrname"].as_str().unwrap().ends_with(".bank.com."), "{o}");
            assert!(o["time_first"].is_u64() && o["time_last"].is_u64() && o["count"].is_u64(), "{o}");
            assert!(o["rdata"].is_array() && o["rrtype"].is_string() && o["bailiwick"].is_string(), "{o}");
        }
        let www = a.iter().find(|e| e.rrset.rrname == "www.bank.com." && e.rrset.rrtype == 1).expect("www.bank.com A");
        let ip = &www.rrset.rdata[0];
        let by_ip = cof(&["rdata", "ip", &format!("{ip}/32")]);
        assert!(by_ip.iter().any(|o| o["rrname"] == "www.bank.com."), "{capture}: rdata ip {ip}: {by_ip:?}");
        assert!(cof(&["rdata", "ip", "6.6.6.0/24"]).is_empty(), "forged address findable");
        // A bailiwick narrows an owner's RRsets to one zone's, given in any case.
        let in_zone = cof(&["rrset", "www.bank.com", "A", "Bank.COM"]);
        assert_eq!(in_zone.len(), 1, "{capture}: {in_zone:?}");
        assert_eq!(in_zone[0]["bailiwick"], "bank.com.");
        assert!(cof(&["rrset", "www.bank.com", "A", "com"]).is_empty(), "{capture}: bailiwick com");
    }
}

/// Several resolvers feeding one sensor at once (two `fstrm_replay` and one `tap replay` on its
/// unix socket, one `tap replay` over TCP, all started together): every RRset is stored with
/// exactly four times the count one pass of the file gives, seen first and last at the same
/// times; nothing lost, nothing counted twice.
#[test]
fn concurrent_senders_add_up_exactly() {
    tools::require("fstrm_replay", "fstrm-bin");
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), 20_000, 2_000, 50);

    let once = dir.path().join("once");
    std::fs::create_dir(&once).unwrap();
    let mut cmd = dnsledger();
    cmd.args(["sensor", "-q", "-c"]).arg(config(&once, "")).arg("--read").arg(&input);
    run(cmd);

    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    let sock = many.join("s.sock");
    let tcp = SocketAddr::from(([127, 0, 0, 1], tools::free_port()));
    let cfg = config(&many, &format!("[listen]\nunix = [\"{}\"]\ntcp = [\"{tcp}\"]", sock.display()));
    let mut cmd = dnsledger();
    cmd.args(["sensor", "-q", "-c"]).arg(&cfg);
    let sensor = Proc::spawn("sensor", cmd, &many);
    wait_for_socket(&sock);
    let mut senders = Vec::new();
    for _ in 0..2 {
        let mut c = std::process::Command::new("fstrm_replay");
        c.args(["-t", "protobuf:dnstap.Dnstap", "-u"]).arg(&sock).arg("-r").arg(&input);
        senders.push(c);
    }
    let mut c = dnsledger();
    c.args(["tap", "replay"]).arg(&input).arg("--unix").arg(&sock);
    senders.push(c);
    let mut c = dnsledger();
    c.args(["tap", "replay"]).arg(&input).arg("--tcp").arg(tcp.to_string());
    senders.push(c);
    let children: Vec<_> = senders
        .iter_mut()
        .map(|c| c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap())
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a sender failed");
    }
    sensor.terminate();

    let (a, b) = (entries(&once.join("db")), entries(&many.join("db")));
    assert!(a.len() > 1_000, "{} RRsets", a.len());
    assert_eq!(a.len(), b.len(), "RRsets stored once and from four senders");
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.rrset, b.rrset);
        assert_eq!((b.count, b.first, b.last), (4 * a.count, a.first, a.last), "{:?}", a.rrset);
    }
}

/// A pipeline on a new store in a temporary directory (returned with it), with `extra` under
/// `[aggregate]`.
fn aggregating(extra: &str) -> (Pipeline, Arc<SensorStats>, tempfile::TempDir) {
    let db = tempfile::tempdir().unwrap();
    let cfg = SensorConfig::parse(&format!("db = \"{}\"\n[aggregate]\n{extra}", db.path().display())).unwrap();
    let stats = Arc::new(SensorStats::default());
    (Pipeline::new(&cfg, Store::open(&cfg.db).unwrap(), stats.clone()), stats, db)
}

/// Every stored RRset with its count, first and last seen, sorted.
fn counted(p: &Pipeline) -> Vec<(dnsledger::sensor::Rrset, u64, u64, u64)> {
    let mut v: Vec<_> = p.store().all(false).map(|e| e.unwrap()).map(|e| (e.rrset, e.count, e.first, e.last)).collect();
    v.sort();
    v
}

/// The window's bounds (distinct RRsets, bytes) decide when windows are written, never what is
/// stored: one window for everything, windows of 500 RRsets and windows of 1 MiB give the same
/// RRsets with the same counts, first and last seen.
#[test]
fn window_bounds_change_when_windows_are_written_not_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), 100_000, 60_000, 100);
    let stored = |extra: &str| {
        let (mut p, stats, _db) = aggregating(extra);
        for f in dnsledger::framestream::FileReader::open(&input, dnsledger::framestream::DNSTAP_CONTENT_TYPE).unwrap()
        {
            p.frame(f.unwrap()).unwrap();
        }
        p.finish().unwrap();
        (counted(&p), stats.flushes.get())
    };
    let (one, flushes) = stored("window_keys = 4000000000\nwindow_mb = 65536");
    assert_eq!(flushes, 1);
    assert!(one.len() > 10_000, "{} RRsets", one.len());
    for extra in ["window_keys = 500", "window_keys = 4000000000\nwindow_mb = 1"] {
        let (v, flushes) = stored(extra);
        // Several MiB of distinct RRsets: several windows either way.
        assert!(flushes > 2, "{extra}: {flushes} flushes");
        assert!(v == one, "{extra}: stored differently");
    }
}

/// Windows that fill up (the sensor under load) are merged without compaction, up to a bound on
/// the store's runs; once a window is flushed by age instead (the load has eased), the store
/// thread compacts in the background (`compact_when_idle`, the default). What is stored is the
/// same as with one window.
#[test]
fn compaction_waits_while_windows_fill_up_and_catches_up_after() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), 100_000, 60_000, 100);
    let frames: Vec<Bytes> =
        dnsledger::framestream::FileReader::open(&input, dnsledger::framestream::DNSTAP_CONTENT_TYPE)
            .unwrap()
            .map(|f| f.unwrap())
            .collect();
    let (mut one, _, _one_db) = aggregating("window_keys = 4000000000\nwindow_mb = 65536");
    for f in &frames {
        one.frame(f.clone()).unwrap();
    }
    one.finish().unwrap();

    let (mut p, stats, _db) = aggregating("window_keys = 1000\nwindow_seconds = 1");
    let mut rest = frames.iter();
    // Fourteen full windows written: one run each, none compacted (the fifteenth may be being
    // written: the hand-over does not wait for it).
    for f in rest.by_ref() {
        p.frame(f.clone()).unwrap();
        if stats.flushes.get() == 14 {
            break;
        }
    }
    let runs = p.store().runs().0;
    assert!((14..=15).contains(&runs), "{runs} runs");
    // Past 16 runs, merges under load compact as they go: the runs stay bounded.
    let mut most = 0;
    for f in rest.by_ref().take(20_000) {
        p.frame(f.clone()).unwrap();
        most = most.max(p.store().runs().0);
    }
    assert!(stats.flushes.get() > 20, "{} windows", stats.flushes.get());
    assert!(most <= 16, "{most} runs");
    // Full windows until there are runs to compact again.
    for f in rest.by_ref() {
        p.frame(f.clone()).unwrap();
        if p.store().runs().0 >= 10 {
            break;
        }
    }
    assert!(p.store().runs().0 >= 10, "{} runs", p.store().runs().0);
    // The load eases: a window flushed by age, then compaction until no size class is full.
    std::thread::sleep(Duration::from_millis(1_100));
    p.tick().unwrap();
    wait_for("compaction to catch up", Duration::from_secs(60), || p.store().runs().0 < 8);
    for f in rest {
        p.frame(f.clone()).unwrap();
    }
    p.finish().unwrap();
    assert!(counted(&p) == counted(&one), "stored differently");
}

/// A RESOLVER_RESPONSE from 192.0.2.53 for zone example.com. carrying `wire`.
fn frame(wire: Vec<u8>) -> Bytes {
    frame_in("example.com.", wire)
}

/// A RESOLVER_RESPONSE from 192.0.2.53 for `zone` carrying `wire`.
fn frame_in(zone: &str, wire: Vec<u8>) -> Bytes {
    frame_from([192, 0, 2, 53], Some(zone), wire)
}

/// A RESOLVER_RESPONSE from `server`, with `query_zone` only when given.
fn frame_from(server: [u8; 4], zone: Option<&str>, wire: Vec<u8>) -> Bytes {
    let t = Timestamp { sec: 1_767_225_600, nsec: 0 };
    let ev = DnstapEvent {
        identity: None,
        version: None,
        message: DnstapMessage {
            kind: MessageType::ResolverResponse,
            socket_family: Some(SocketFamily::Inet),
            socket_protocol: Some(SocketProtocol::Udp),
            query_address: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            response_address: Some(IpAddr::from(server)),
            query_port: Some(5353),
            response_port: Some(53),
            query_time: Some(t),
            response_time: Some(t),
            query_zone: zone.map(|z| Name::from_ascii(z).unwrap()),
            query_message: None,
            response_message: Some(Bytes::from(wire)),
        },
    };
    Bytes::from(encode(&ev))
}

/// Header of an authoritative response with the given section counts.
fn header(qd: u16, an: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x84, 0x00];
    for n in [qd, an, 0, 0] {
        m.extend_from_slice(&n.to_be_bytes());
    }
    m
}

fn name(labels: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for l in labels {
        v.push(l.len() as u8);
        v.extend_from_slice(l);
    }
    v.push(0);
    v
}

/// One question and one answer record for it (owner by compression pointer).
fn answer(owner: &[&[u8]], rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut m = header(1, 1);
    m.extend(name(owner));
    m.extend_from_slice(&rtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(&[0xc0, 12]);
    m.extend_from_slice(&rtype.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0x0e, 0x10]);
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(rdata);
    m
}

#[test]
fn broken_dns_inside_valid_frames_is_counted_never_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        SensorConfig::parse(&format!("db = \"{}\"\n[privacy]\nprivate_networks = []", dir.path().display())).unwrap();
    let stats = Arc::new(SensorStats::default());
    let mut p = Pipeline::new(&cfg, Store::open(&cfg.db).unwrap(), stats.clone());

    let good = answer(&[b"www", b"example", b"com"], 1, &[192, 0, 2, 80]);
    let unknown = answer(&[b"x", b"example", b"com"], 65280, &[0xde, 0xad]);
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 3);
    let mut compression_loop = header(1, 0);
    compression_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let long_label = [b'a'; 63];
    let too_long =
        answer(&[&long_label, &long_label, &long_label, &long_label, b"example", b"com"], 1, &[192, 0, 2, 1]);
    let mut absurd_counts = header(1, 65_535);
    absurd_counts.extend(name(&[b"www", b"example", b"com"]));
    absurd_counts.extend_from_slice(&[0, 1, 0, 1]);
    let broken =
        [b"\x12\x34 not dns at all".to_vec(), truncated, compression_loop, too_long, absurd_counts, Vec::new()];

    p.frame(frame(good)).unwrap();
    for b in &broken {
        p.frame(frame(b.clone())).unwrap();
    }
    p.frame(Bytes::from_static(b"\xff\xff garbage protobuf")).unwrap();
    p.frame(frame(unknown)).unwrap();
    p.finish().unwrap();

    assert_eq!(stats.frames_in.get(), 9);
    assert_eq!(stats.frames_dropped.get("dns_malformed"), broken.len() as u64, "{:?}", stats.frames_dropped.snapshot());
    assert_eq!(stats.frames_dropped.get("protobuf"), 1);
    let stored = p.store().all(false).map(|e| e.unwrap()).collect::<Vec<_>>();
    let mut got: Vec<(String, u16, Vec<String>)> =
        stored.into_iter().map(|e| (e.rrset.rrname, e.rrset.rrtype, e.rrset.rdata)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("www.example.com.".to_string(), 1, vec!["192.0.2.80".to_string()]),
            ("x.example.com.".to_string(), 65280, vec!["\\# 2 dead".to_string()]),
        ]
    );
}

fn stored_observations_after(cmd: std::process::Command, db: &Path) -> u64 {
    run(cmd);
    stored_observations(db)
}

fn stored_observations(db: &Path) -> u64 {
    entries(db).iter().map(|e| e.count).sum()
}

#[test]
fn sigkill_keeps_what_was_flushed_and_sigterm_flushes_all() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), 300_000, 50_000, 100);

    let sock = dir.path().join("s.sock");
    let port = tools::free_port();
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "metrics = \"{metrics}\"\n[listen]\nunix = [\"{}\"]\n[aggregate]\nwindow_seconds = 1\nwindow_keys = 5000",
            sock.display()
        ),
    );
    let start = || {
        let mut cmd = dnsledger();
        cmd.args(["sensor", "-q", "-c"]).arg(&cfg);
        let p = Proc::spawn("sensor", cmd, dir.path());
        wait_for_socket(&sock);
        p
    };

    // Under load, after some flushes: SIGKILL.
    let sensor = start();
    let mut replay = dnsledger();
    replay.args(["tap", "replay", "--rate", "50000"]).arg(&input).arg("--unix").arg(&sock);
    let replay = Proc::spawn("replay", replay, dir.path());
    let flushed = "dnsledger_sensor_observations_flushed_total";
    wait_for("a few flushes", Duration::from_secs(60), || metric(metrics, flushed).is_some_and(|n| n > 50_000));
    let before_kill = metric(metrics, flushed).unwrap();
    sensor.signal("KILL");
    drop(sensor);
    drop(replay);
    let db = dir.path().join("db");
    let after_kill = stored_observations(&db);
    assert!(after_kill >= before_kill, "flushed {before_kill} observations, store has {after_kill}");

    // Restart on the same store, send the whole file, stop cleanly: everything is there,
    // counted once.
    let sensor = start();
    let mut replay = dnsledger();
    replay.args(["tap", "replay"]).arg(&input).arg("--unix").arg(&sock);
    run(replay);
    let log = sensor.terminate();
    let observations = tools::sensor_observations(&log);
    // The same file read directly gives the same number of observations.
    let other = tempfile::tempdir().unwrap();
    let mut read = dnsledger();
    read.args(["sensor", "-c"]).arg(config(other.path(), "")).arg("--read").arg(&input);
    let direct = stored_observations_after(read, &other.path().join("db"));
    assert_eq!(observations, direct, "observations over the socket vs from the file");
    assert_eq!(stored_observations(&db), after_kill + observations, "nothing lost, nothing counted twice");
}

/// A store that can no longer be written (its directory removed under the sensor: sled's
/// next new file fails, and its own last flush would then wait for good) is retried, reported
/// and given up on at shutdown: after SIGTERM the sensor ends, with a failure.
#[test]
fn a_store_that_cannot_be_written_does_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), 20_000, 5_000, 10);
    let sock = dir.path().join("s.sock");
    let metrics: SocketAddr = format!("127.0.0.1:{}", tools::free_port()).parse().unwrap();
    // With the outbox, each flush writes one large value, which sled keeps in a file of its own.
    let cfg = config(
        dir.path(),
        &format!(
            "metrics = \"{metrics}\"\n[listen]\nunix = [\"{}\"]\n[aggregate]\nwindow_seconds = 1\noutbox = true",
            sock.display()
        ),
    );
    let mut cmd = dnsledger();
    cmd.args(["sensor", "-q", "-c"]).arg(&cfg);
    let sensor = Proc::spawn("sensor", cmd, dir.path());
    wait_for_socket(&sock);
    let replay = || {
        let mut replay = dnsledger();
        replay.args(["tap", "replay"]).arg(&input).arg("--unix").arg(&sock);
        replay
    };
    run(replay());
    let flushes = "dnsledger_sensor_flushes_total";
    wait_for("a flush", Duration::from_secs(30), || metric(metrics, flushes).is_some_and(|n| n > 0));
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    // The sensor stops reading while it cannot write: the replay may wait for good.
    let _replay = Proc::spawn("replay", replay(), dir.path());
    let errors = "dnsledger_sensor_flush_errors_total";
    wait_for("a failed flush", Duration::from_secs(30), || metric(metrics, errors).is_some_and(|n| n > 0));
    sensor.signal("TERM");
    // Five attempts a second apart once closing, then the exit.
    let (ok, err) = sensor.wait(Duration::from_secs(30));
    assert!(!ok, "a sensor that could not write its store exits with a failure:\n{err}");
    assert!(err.contains("write failed; retrying"), "the failed writes are reported:\n{err}");
    assert!(err.contains("No such file or directory"), "with their cause:\n{err}");
    assert!(err.contains("\ndnsledger: store"), "and the exit names the failure:\n{err}");
}

/// (owner, type, bailiwick, rdata) of a stored RRset.
type StoredRow = (String, u16, String, Vec<String>);

/// Runs `frames` through an in-process pipeline; returns the stored rows, the stats and the
/// negative answers.
fn pipeline_rows(frames: impl Iterator<Item = Bytes>, extra: &str) -> (Vec<StoredRow>, Arc<SensorStats>, Vec<Entry>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SensorConfig::parse(&format!("db = \"{}\"\n{extra}", dir.path().display())).unwrap();
    let stats = Arc::new(SensorStats::default());
    let mut p = Pipeline::new(&cfg, Store::open(&cfg.db).unwrap(), stats.clone());
    for f in frames {
        p.frame(f).unwrap();
    }
    p.finish().unwrap();
    let mut rows: Vec<_> = p
        .store()
        .all(false)
        .map(|e| e.unwrap())
        .map(|e| (e.rrset.rrname, e.rrset.rrtype, e.rrset.bailiwick, e.rrset.rdata))
        .collect();
    rows.sort();
    let negative = p.store().all(true).map(|e| e.unwrap()).collect();
    (rows, stats, negative)
}

fn capture_frames(name: &str) -> Vec<Bytes> {
    dnsledger::framestream::FileReader::open(&data(name), dnsledger::framestream::DNSTAP_CONTENT_TYPE)
        .unwrap()
        .map(|f| f.unwrap())
        .collect()
}

/// Without `query_zone` the sensor must find each answer's bailiwick from the delegations it
/// has accepted, starting at the root hints: the capture with every `query_zone` removed gives
/// the same store, and the poisoning still fails.
#[test]
fn bailiwick_is_reconstructed_without_query_zone() {
    let privacy = "[privacy]\nprivate_networks = []";
    for capture in ["unbound-resolver.dnstap", "bind-resolver.dnstap"] {
        let frames = capture_frames(capture);
        let (with_zone, _, _) = pipeline_rows(frames.iter().cloned(), privacy);
        // The captures' root server is 127.53.0.1 (block 53 of the rig that recorded them).
        let stripped = frames.iter().map(|f| {
            let mut ev = dnsledger::dnstap::decode(f.clone()).unwrap();
            ev.message.query_zone = None;
            Bytes::from(encode(&ev))
        });
        let hints = format!("[pipeline]\nroot_hints = [\"127.53.0.1\"]\n{privacy}");
        let (without, stats, _) = pipeline_rows(stripped, &hints);
        assert!(with_zone.len() > 20, "{capture}");
        let missing: Vec<_> = with_zone.iter().filter(|r| !without.contains(r)).collect();
        let extra: Vec<_> = without.iter().filter(|r| !with_zone.contains(r)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{capture}: missing {missing:#?}\nextra {extra:#?}\ndrops {:?}",
            stats.frames_dropped.snapshot()
        );
        // Without hints for this hierarchy nothing can be placed: dropped, counted, not guessed.
        let stripped = frames.iter().map(|f| {
            let mut ev = dnsledger::dnstap::decode(f.clone()).unwrap();
            ev.message.query_zone = None;
            Bytes::from(encode(&ev))
        });
        let (none, stats, _) = pipeline_rows(stripped, privacy);
        assert!(none.is_empty(), "{capture}: stored without a known bailiwick: {none:?}");
        assert!(stats.frames_dropped.get("no_bailiwick") > 0);
    }
}

/// Negative answers are opt-in and kept apart from the RRsets.
#[test]
fn negative_answers_are_kept_apart_when_asked_for() {
    let frames = capture_frames("unbound-resolver.dnstap");
    let privacy = "[privacy]\nprivate_networks = []";
    let (rows_off, stats_off, neg_off) = pipeline_rows(frames.iter().cloned(), privacy);
    assert!(neg_off.is_empty());
    assert!(stats_off.rrsets_dropped.get("negative") > 0, "the capture has negative answers");
    let (rows_on, _, neg_on) =
        pipeline_rows(frames.iter().cloned(), &format!("[pipeline]\nnegative = true\n{privacy}"));
    assert_eq!(rows_on, rows_off, "negative answers do not change the RRsets");
    let nx =
        neg_on.iter().find(|e| e.rrset.rrname == "nonexistent.example.com.").expect("nonexistent.example.com NXDOMAIN");
    assert_eq!(nx.rrset.bailiwick, "example.com.");
    assert!(nx.rrset.rdata[0].starts_with("ns1.example.com. hostmaster.example.com."), "{nx:?}");
}

/// A record with an uncompressed owner.
fn record(owner: &[&[u8]], rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut m = name(owner);
    m.extend_from_slice(&rtype.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0x0e, 0x10]);
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(rdata);
    m
}

/// A referral to bank.com. at ns1.bank.com. with `glue` for it.
fn bank_referral(glue: [u8; 4]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x80, 0x00, 0, 1, 0, 0, 0, 1, 0, 1];
    m.extend(name(&[b"www", b"bank", b"com"]));
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend(record(&[b"bank", b"com"], 2, &name(&[b"ns1", b"bank", b"com"])));
    m.extend(record(&[b"ns1", b"bank", b"com"], 1, &glue));
    m
}

/// In a referral only the delegation and the addresses of the servers it names are data; an
/// unrelated address record slipped into the additional section (a poisoning attempt shaped
/// like glue) is not.
#[test]
fn referral_keeps_only_glue_for_its_own_name_servers() {
    let mut m = bank_referral([198, 51, 100, 53]);
    // Two more additional records.
    m[11] = 3;
    m.extend(record(&[b"www", b"bank", b"com"], 1, &[6, 6, 6, 6]));
    m.extend(record(&[b"bank", b"com"], 16, b"\x05hello"));
    let (rows, stats, _) = pipeline_rows(std::iter::once(frame_in("com.", m)), "[privacy]\nprivate_networks = []");
    let rows: Vec<(String, u16)> = rows.into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(rows, [("bank.com.".to_string(), 2), ("ns1.bank.com.".to_string(), 1)]);
    assert_eq!(stats.rrsets_dropped.get("referral_additional"), 2, "{:?}", stats.rrsets_dropped.snapshot());
}

/// The sensor skips referrals it has learned from already; one that repeats the delegation
/// with another glue address still teaches that address. Answers without `query_zone` from
/// both addresses are placed in bank.com.
#[test]
fn a_referral_seen_again_with_other_glue_still_teaches_it() {
    let com = [192, 0, 2, 53];
    let frames = [
        frame_from(com, Some("com."), bank_referral([198, 51, 100, 53])),
        frame_from(com, Some("com."), bank_referral([198, 51, 100, 53])),
        frame_from(com, Some("com."), bank_referral([198, 51, 100, 54])),
        frame_from([198, 51, 100, 53], None, answer(&[b"www", b"bank", b"com"], 1, &[192, 0, 2, 80])),
        frame_from([198, 51, 100, 54], None, answer(&[b"mail", b"bank", b"com"], 1, &[192, 0, 2, 25])),
    ];
    let (rows, stats, _) = pipeline_rows(frames.into_iter(), "[privacy]\nprivate_networks = []");
    let answers: Vec<(&str, &str)> =
        rows.iter().filter(|r| r.1 == 1 && r.0 != "ns1.bank.com.").map(|r| (r.0.as_str(), r.2.as_str())).collect();
    assert_eq!(answers, [("mail.bank.com.", "bank.com."), ("www.bank.com.", "bank.com.")]);
    assert_eq!(stats.frames_dropped.get("no_bailiwick"), 0);
}

/// Names are stored as they were on the wire: an IDN label stays in its `xn--` form (as
/// DNSDB and dnsdbq have it; hickory's `Display` would give Unicode) and bytes outside
/// printable ASCII are written `\DDD` in decimal (RFC 1035 5.1; hickory writes octal), in
/// owners and in rdata names alike, so a user finds them by the names they would type.
#[test]
fn names_are_stored_as_sent() {
    let idn: &[&[u8]] = &[b"xn--bcher-kva", b"example", b"com"];
    let odd: &[&[u8]] = &[b"a b", b"x.y", b"example", b"com"];
    let frames =
        [frame(answer(idn, 1, &[192, 0, 2, 7])), frame(answer(odd, 5, &name(&[b"xn--caf-dma", b"example", b"com"])))];
    let (rows, _, _) = pipeline_rows(frames.into_iter(), "[privacy]\nprivate_networks = []");
    let rows: Vec<(String, u16, String)> = rows.into_iter().map(|r| (r.0, r.1, r.3.join(" "))).collect();
    assert_eq!(
        rows,
        [
            ("a\\032b.x\\.y.example.com.".to_string(), 5, "xn--caf-dma.example.com.".to_string()),
            ("xn--bcher-kva.example.com.".to_string(), 1, "192.0.2.7".to_string()),
        ]
    );
}

#[test]
fn the_roots_own_rrsets_and_a_tlds_are_stored() {
    // Their store keys are shorter than most (5 bytes for the root's): the flush orders a
    // window on the first 24 bytes of each key.
    let frames = [
        frame_in(".", answer(&[], 2, &name(&[b"a", b"root-servers", b"net"]))),
        frame_in(".", answer(&[b"com"], 2, &name(&[b"a", b"gtld-servers", b"net"]))),
        frame_in(".", answer(&[], 2, &name(&[b"a", b"root-servers", b"net"]))),
    ];
    let (rows, stats, _) = pipeline_rows(frames.into_iter(), "");
    assert_eq!(
        rows,
        [
            (".".to_string(), 2, ".".to_string(), vec!["a.root-servers.net.".to_string()]),
            ("com.".to_string(), 2, ".".to_string(), vec!["a.gtld-servers.net.".to_string()]),
        ]
    );
    assert_eq!(stats.observations_flushed.get(), 3);
}
