//! `dnsledger resolver` against the loopback hierarchy (tests/rig), side by side with unbound:
//! the same questions must get the same answers; its dnstap, received by `fstrm_capture`, must
//! decode with `dnstap-ldns` and the Go `dnstap` tool and name the same zone and server as
//! unbound's for the same upstream questions; and its in-process sensor must build the same
//! passive DNS store as a sensor fed by unbound.
//!
//! Address blocks: 68 (side by side), 69 (bad clients), 71 (client messages), 72 (DNSSEC).

mod common;
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{DnstapOut, FstrmCapture, Hierarchy, Unbound, UnboundOptions, dig_with, dnstap_quiet};
use dnsledger::dnstap::{MessageType, decode, parse_dns};
use dnsledger::store::Store;
use tools::{Proc, dnsledger, wait_for};

/// Questions with answers both resolvers must agree on (order matters: resolvers cache).
const QUERIES: &[(&str, &str)] = &[
    ("www.example.com", "A"),
    ("www.example.com", "AAAA"),
    ("example.com", "MX"),
    ("example.com", "TXT"),
    ("example.com", "NS"),
    ("_sip._tcp.example.com", "SRV"),
    ("txt.example.com", "TXT"),
    ("ftp.example.com", "A"),
    ("alias.example.com", "A"),
    ("big.example.com", "TXT"),
    ("foo.wild.example.com", "A"),
    ("a.b.wild.example.com", "TXT"),
    ("wild.example.com", "A"),
    ("nx.example.com", "A"),
    ("www.example.com", "MX"),
    ("80.2.0.192.in-addr.arpa", "PTR"),
    ("www.other.test", "A"),
    ("www.glueless.test", "A"),
    ("www.lame.test", "A"),
    ("www.bank.com", "A"),
    ("bank.com", "NS"),
    ("www.evil.test", "A"),
    ("cname.evil.test", "A"),
    ("nx.evil.test", "A"),
    ("nosuchtld", "A"),
];

/// A resolver's answer as a user compares it: rcode and the answer RRsets (names lower-cased,
/// TTLs aside, rdata sorted).
type Answer = (String, BTreeSet<(String, String, String)>);

fn answer(server: SocketAddr, client: Ipv4Addr, name: &str, rtype: &str, extra: &[&str]) -> Answer {
    let a = dig_with(server, Some(client), name, rtype, extra);
    let records = a.answer.iter().map(|r| (r.name.to_lowercase(), r.rtype.clone(), r.rdata.clone())).collect();
    (a.rcode, records)
}

/// Writes `work/resolver.toml` for a resolver on `listen`:53 of the rig: clients of the block
/// allowed, the rig's root hints, upstream servers of the block allowed; `listen` and
/// `recursion` add keys to those tables, `rest` adds tables.
fn resolver_toml(h: &Hierarchy, listen: Ipv4Addr, work: &Path, metrics: SocketAddr, extra: [&str; 3]) -> PathBuf {
    let [listen_extra, recursion_extra, rest] = extra;
    let path = work.join("resolver.toml");
    std::fs::write(
        &path,
        format!(
            "metrics = \"{metrics}\"\n\
             [listen]\nudp = [\"{listen}:53\"]\ntcp = [\"{listen}:53\"]\n{listen_extra}\
             [access]\nallow = [\"127.{b}.2.0/24\"]\n\
             [recursion]\nroot_hints = \"{hints}\"\nallow_servers = [\"127.{b}.0.0/24\"]\n{recursion_extra}{rest}",
            b = h.block(),
            hints = h.root_hints_path().display(),
        ),
    )
    .unwrap();
    path
}

fn free_metrics() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tools::free_port()))
}

fn start_resolver(config: &Path, listen: Ipv4Addr, work: &Path) -> Proc {
    let mut cmd = dnsledger();
    // The default log filter, as users run it (it keeps hickory's per-client lines out).
    cmd.env_remove("DNSLEDGER_LOG").args(["resolver", "-c"]).arg(config);
    let mut p = Proc::spawn("resolver", cmd, work);
    let addr = SocketAddr::from((listen, 53));
    wait_for("resolver listening", Duration::from_secs(20), || {
        assert!(p.is_running(), "resolver exited:\n{}", p.stderr());
        std::net::TcpStream::connect(addr).is_ok()
    });
    p
}

/// RESOLVER_RESPONSE frames of a capture: (server, qname lower-cased, qtype) -> query_zones,
/// plus the protocols seen.
struct Responses {
    zones: BTreeMap<(IpAddr, String, String), BTreeSet<Option<String>>>,
    ports: BTreeSet<u16>,
    tcp: usize,
}

fn responses(file: &Path) -> Responses {
    let mut r = Responses { zones: BTreeMap::new(), ports: BTreeSet::new(), tcp: 0 };
    for frame in tools::frames_of(file) {
        let ev = decode(frame.into()).expect("our own frames decode");
        let m = &ev.message;
        if m.kind != MessageType::ResolverResponse {
            continue;
        }
        let dns = parse_dns(m.response_message.as_ref().expect("response message")).expect("response parses");
        let Some(q) = dns.queries.first() else { continue };
        let key = (
            m.response_address.expect("response_address"),
            q.name().to_lowercase().to_ascii(),
            q.query_type().to_string(),
        );
        r.zones.entry(key).or_default().insert(m.query_zone.as_ref().map(|z| z.to_ascii()));
        r.ports.insert(m.response_port.expect("response_port"));
        if m.socket_protocol == Some(dnsledger::dnstap::SocketProtocol::Tcp) {
            r.tcp += 1;
        }
    }
    r
}

type Row = (String, String, String, Vec<String>);

fn store_rows(db: &Path) -> BTreeSet<Row> {
    let store = Store::open(db).unwrap();
    store
        .all(false)
        .map(|e| {
            let e = e.unwrap();
            (
                e.rrset.rrname.clone(),
                dnsledger::dns::rrtype_name(e.rrset.rrtype.into()),
                e.rrset.bailiwick.clone(),
                e.rrset.rdata.clone(),
            )
        })
        .collect()
}

#[test]
fn answers_taps_and_stores_like_unbound() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let h = Hierarchy::start(68, work);
    let client = h.client_addr(1);

    // unbound, with its dnstap captured by fstrm_capture.
    let unbound_sock = work.join("unbound.sock");
    let mut unbound_capture = FstrmCapture::unix(&unbound_sock, &work.join("unbound.fstrm"));
    let mut unbound =
        Unbound::start_with(&h, h.resolver_addr(1), UnboundOptions::new(DnstapOut::Unix(unbound_sock)), work);

    // Ours, dnstap to fstrm_capture and, in process, to a sensor store.
    let ours_sock = work.join("ours.sock");
    let mut ours_capture = FstrmCapture::unix(&ours_sock, &work.join("ours.fstrm"));
    let listen = h.resolver_addr(3);
    let ours_db = work.join("ours.db");
    let metrics = free_metrics();
    let config = resolver_toml(
        &h,
        listen,
        work,
        metrics,
        [
            "",
            &format!("source_v4 = \"{listen}\"\n"),
            &format!(
                "[dnstap]\nunix = \"{}\"\nidentity = \"dnsledger.rig\"\n[sensor]\ndb = \"{}\"\n\
                 [sensor.privacy]\nprivate_networks = []\ninternal_zones = [\"other.test\"]\n",
                ours_sock.display(),
                ours_db.display()
            ),
        ],
    );
    let resolver = start_resolver(&config, listen, work);

    for (name, rtype) in QUERIES {
        let theirs = answer(SocketAddr::from((unbound.addr(), 53)), client, name, rtype, &[]);
        let mine = answer(SocketAddr::from((listen, 53)), client, name, rtype, &[]);
        assert_eq!(mine, theirs, "{name} {rtype}: ours (left) differs from unbound (right)");
    }
    // Over TCP too, and a second time from the cache.
    for (name, rtype) in [("www.example.com", "A"), ("big.example.com", "TXT")] {
        let theirs = answer(SocketAddr::from((unbound.addr(), 53)), client, name, rtype, &["+tcp"]);
        let mine = answer(SocketAddr::from((listen, 53)), client, name, rtype, &["+tcp"]);
        assert_eq!(mine, theirs, "{name} {rtype} over TCP");
    }
    let big = answer(SocketAddr::from((listen, 53)), client, "big.example.com", "TXT", &[]);
    assert_eq!(big.1.len(), 20, "the large TXT set arrives whole");
    let forged = answer(SocketAddr::from((listen, 53)), client, "cname.evil.test", "A", &[]);
    assert!(forged.1.iter().all(|(_, _, d)| d != "6.6.6.6"), "forged record served: {forged:?}");

    let hits = tools::metric(metrics, "dnsledger_resolver_cache_answers_total").unwrap();
    assert!(hits >= 2, "repeated questions answered from the cache: {hits}");
    let upstream = tools::metric(metrics, "dnsledger_resolver_upstream_udp_total").unwrap();
    assert!(upstream > 0);

    unbound.stop();
    let log = resolver.terminate();
    assert!(log.contains("in-process sensor finished"), "{log}");
    let theirs_file = unbound_capture.stop();
    let ours_file = ours_capture.stop();

    // Real dnstap readers decode every frame of ours.
    let lines = dnstap_quiet(&ours_file);
    let rr = lines.iter().filter(|l| l.split_whitespace().nth(2) == Some("RR")).count();
    let rq = lines.iter().filter(|l| l.split_whitespace().nth(2) == Some("RQ")).count();
    assert!(rr > 20 && rq >= rr, "dnstap-ldns: {rq} RQ, {rr} RR:\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains(" RR ") && l.contains(" TCP ")), "the TCP retry is tapped");
    assert!(
        !lines.iter().any(|l| matches!(l.split_whitespace().nth(2), Some("CQ" | "CR"))),
        "client messages are opt-in"
    );
    let go = Command::new(common::binary("dnstap", "golang-github-dnstap-golang-dnstap-cli"))
        .arg("-r")
        .arg(&ours_file)
        .arg("-y")
        .output()
        .unwrap();
    assert!(go.status.success(), "{}", String::from_utf8_lossy(&go.stderr));
    let yaml = String::from_utf8_lossy(&go.stdout);
    assert_eq!(yaml.matches("type: RESOLVER_RESPONSE").count(), rr);
    assert!(yaml.contains("identity: \"dnsledger.rig\"") && yaml.contains("query_zone: \"example.com.\""), "{yaml}");

    // query_zone and server: where both resolvers asked a server the same question, they name
    // the same zone; every response of ours has one, and the server is a rig address, port 53.
    let ours = responses(&ours_file);
    let theirs = responses(&theirs_file);
    assert_eq!(ours.ports, BTreeSet::from([53]));
    assert!(ours.tcp >= 1);
    for ((server, qname, qtype), zones) in &ours.zones {
        assert!(!zones.contains(&None), "no query_zone for {qname} {qtype} at {server}");
        let IpAddr::V4(v4) = server else { panic!("{server}") };
        assert_eq!(&v4.octets()[..3], &[127, 68, 0], "{qname} asked of {server}");
    }
    let common_keys: Vec<_> = ours.zones.keys().filter(|k| theirs.zones.contains_key(*k)).collect();
    assert!(common_keys.len() >= 20, "too few shared upstream questions: {common_keys:?}");
    for k in common_keys {
        assert_eq!(ours.zones[k], theirs.zones[k], "query_zone for {k:?}: ours (left), unbound (right)");
    }

    // The same passive DNS: unbound's dnstap through the sensor vs ours in process.
    let sensor_config = work.join("sensor.toml");
    let theirs_db = work.join("theirs.db");
    std::fs::write(
        &sensor_config,
        format!(
            "db = \"{}\"\n[privacy]\nprivate_networks = []\ninternal_zones = [\"other.test\"]\n",
            theirs_db.display()
        ),
    )
    .unwrap();
    let out = tools::run({
        let mut c = dnsledger();
        c.args(["sensor", "-q", "-c"]).arg(&sensor_config).arg("--read").arg(&theirs_file);
        c
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs_rows = store_rows(&theirs_db);
    let ours_rows = store_rows(&ours_db);
    let only_theirs: Vec<_> = theirs_rows.difference(&ours_rows).collect();
    // hickory minimises qnames with NS probes (unbound here does not): `ftp.example.com NS`
    // is answered with the CNAME and, for the empty rest, example.com's SOA in the authority
    // section: authoritative, in-bailiwick data that only the prober sees.
    let probe_only = |r: &&Row| r.0 == "example.com." && r.1 == "SOA" && r.2 == "example.com.";
    let only_ours: Vec<_> = ours_rows.difference(&theirs_rows).filter(|r| !probe_only(r)).collect();
    assert!(
        only_theirs.is_empty() && only_ours.is_empty(),
        "only from unbound: {only_theirs:#?}\nonly from ours: {only_ours:#?}"
    );
    assert!(ours_rows.len() > 30);

    // What a user asks of the store the resolver built: `dnsledger query`.
    let query = |args: &[&str]| {
        let out = tools::run({
            let mut c = dnsledger();
            c.arg("query").arg("--db").arg(&ours_db).arg("--json").args(args);
            c
        });
        String::from_utf8(out.stdout).unwrap()
    };
    let www = query(&["rrset", "www.example.com"]);
    assert!(www.contains("\"rdata\":[\"192.0.2.80\"]") && www.contains("\"bailiwick\":\"example.com.\""), "{www}");
    let bank = query(&["rrset", "bank.com", "NS"]);
    assert!(bank.contains("ns1.bank.com.") && !bank.contains("ns.evil.test."), "{bank}");
    let by_ip = query(&["rdata", "ip", "198.51.100.0/24"]);
    assert!(by_ip.contains("www.bank.com.") && !by_ip.contains("6.6.6.6"), "{by_ip}");
}

/// A DNS query on the wire: id, flags, one question (`www.example.com A` unless `qname` says).
fn query_bytes(id: u16, qname: &str) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in qname.split('.').filter(|l| !l.is_empty()) {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// Sends one datagram from `from`, returns the rcode of the reply (None: no reply in 5 s; a
/// loaded CI machine once took more than 2 s to answer one).
fn udp_exchange(from: Ipv4Addr, to: SocketAddr, bytes: &[u8]) -> Option<u8> {
    let s = std::net::UdpSocket::bind((from, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(bytes, to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    assert!(n >= 12, "short reply");
    Some(buf[3] & 0x0f)
}

#[test]
fn bad_clients_are_answered_or_dropped_and_the_resolver_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let h = Hierarchy::start(69, work);
    let client = h.client_addr(1);
    let listen = h.resolver_addr(3);
    let server = SocketAddr::from((listen, 53));
    let metrics = free_metrics();
    let config = resolver_toml(
        &h,
        listen,
        work,
        metrics,
        ["max_inflight = 4\ntcp_idle_seconds = 2\ntcp_max_connections = 100\n", "", ""],
    );
    let mut resolver = start_resolver(&config, listen, work);
    let ok = |what: &str| {
        let a = answer(server, client, "www.example.com", "A", &[]);
        assert_eq!(a.0, "NOERROR", "after {what}");
        // Over TCP, once connections held by earlier steps have gone (the idle time is 2 s).
        wait_for(&format!("a TCP answer after {what}"), Duration::from_secs(10), || {
            answer(server, client, "www.example.com", "A", &["+tcp"]).0 == "NOERROR"
        });
    };
    ok("start");

    // Malformed queries with a readable header: FORMERR (rcode 1).
    let mut bad_count = query_bytes(1, "www.example.com");
    bad_count[5] = 40; // 40 questions announced, one present
    assert_eq!(udp_exchange(client, server, &bad_count), Some(1));
    let mut loop_name = query_bytes(2, "");
    loop_name.truncate(12);
    loop_name.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // a name pointing at itself
    assert_eq!(udp_exchange(client, server, &loop_name), Some(1));
    let mut long_name = query_bytes(3, "");
    long_name.truncate(12);
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend_from_slice(&[b'a'; 63]);
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]); // a name over 255 bytes
    assert_eq!(udp_exchange(client, server, &long_name), Some(1));
    // Shorter than a header, a response, an oversized datagram of garbage: no reply.
    assert_eq!(udp_exchange(client, server, &[1, 2, 3]), None);
    let mut response = query_bytes(4, "www.example.com");
    response[2] |= 0x80;
    assert_eq!(udp_exchange(client, server, &response), None);
    let garbage: Vec<u8> = (0..60_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = udp_exchange(client, server, &garbage);
    ok("malformed datagrams");
    // hickory-server dropped runts and responses without a trace; the UDP front counts them.
    let dropped = |reason: &str| {
        tools::metric(metrics, &format!("dnsledger_resolver_udp_dropped_total{{reason=\"{reason}\"}}")).unwrap_or(0)
    };
    assert!(
        dropped("runt") >= 1 && dropped("response") >= 1 && dropped("malformed") >= 3,
        "runt {}, response {}, malformed {}",
        dropped("runt"),
        dropped("response"),
        dropped("malformed")
    );

    // A repeated question is answered from the cache of encoded answers, made the client's:
    // its id, its spelling of the name (0x20), the same records.
    let exchange = |id: u16, name: &str| -> Vec<u8> {
        let s = std::net::UdpSocket::bind((client, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&query_bytes(id, name), server).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    };
    let hits = || tools::metric(metrics, "dnsledger_resolver_answer_cache_hits_total").unwrap_or(0);
    let first = exchange(0x1111, "www.example.com");
    let stored = std::time::Instant::now();
    let before = hits();
    let q = query_bytes(0x4242, "wWw.eXample.COM");
    let again = exchange(0x4242, "wWw.eXample.COM");
    assert_eq!(hits(), before + 1, "the second answer came from the cache");
    assert_eq!(&again[..2], &[0x42, 0x42], "the client's id");
    assert_eq!(&again[12..q.len()], &q[12..], "the client's spelling of the question");
    assert_eq!(again.len(), first.len());
    assert_eq!((again[2..12].to_vec(), again[3] & 0x0f), (first[2..12].to_vec(), 0), "same flags and counts");
    assert!(u16::from_be_bytes([again[6], again[7]]) >= 1, "with its answer");
    if stored.elapsed() < Duration::from_millis(900) {
        assert_eq!(&again[q.len()..], &first[q.len()..], "same records, TTLs too (less than a second apart)");
    }

    // Over TCP (RFC 7766 framing): pipelined queries are each answered on the one connection,
    // a malformed one with FORMERR, and the connection stays open; a response sent to us gets
    // nothing. (std's TcpStream connects from 127.0.0.1, outside the access list: REFUSED.)
    use std::io::{Read, Write};
    let framed = |m: &[u8]| -> Vec<u8> { [&(m.len() as u16).to_be_bytes()[..], m].concat() };
    let read_message = |t: &mut std::net::TcpStream| -> Option<Vec<u8>> {
        let mut len = [0u8; 2];
        t.read_exact(&mut len).ok()?;
        let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
        t.read_exact(&mut m).ok()?;
        Some(m)
    };
    let connect = || {
        let t = std::net::TcpStream::connect(server).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        t
    };
    let tcp_dropped = |reason: &str| {
        tools::metric(metrics, &format!("dnsledger_resolver_tcp_dropped_total{{reason=\"{reason}\"}}")).unwrap_or(0)
    };
    let mut t = connect();
    let mut bad = query_bytes(0x0202, "www.example.com");
    bad[5] = 40;
    let mut response = query_bytes(0x0404, "www.example.com");
    response[2] |= 0x80;
    let burst = [
        framed(&query_bytes(0x0101, "www.example.com")),
        framed(&bad),
        framed(&response),
        framed(&query_bytes(0x0303, "www.example.org")),
    ]
    .concat();
    t.write_all(&burst).unwrap();
    let mut replies: Vec<(u16, u8)> = (0..3)
        .map(|_| read_message(&mut t).map(|m| (u16::from_be_bytes([m[0], m[1]]), m[3] & 0x0f)).unwrap())
        .collect();
    replies.sort();
    assert_eq!(replies, [(0x0101, 5), (0x0202, 1), (0x0303, 5)]);
    t.write_all(&framed(&query_bytes(0x0505, "www.example.com"))).unwrap();
    assert_eq!(read_message(&mut t).map(|m| m[..2].to_vec()), Some(vec![5, 5]), "still open");
    drop(t);
    // A message shorter than a header closes the connection at once; a length prefix promising
    // more than is sent, after the idle time (2 s here).
    let mut runt = connect();
    runt.write_all(&[0, 3, 1, 2, 3]).unwrap();
    let mut stalled = connect();
    stalled.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    for t in [&mut runt, &mut stalled] {
        assert_eq!(t.read(&mut [0u8; 16]).unwrap_or(0), 0, "closed by the resolver");
    }
    let counts = || (tcp_dropped("malformed"), tcp_dropped("response"), tcp_dropped("runt"), tcp_dropped("truncated"));
    let start = std::time::Instant::now();
    while counts() != (1, 1, 1, 1) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(counts(), (1, 1, 1, 1), "TCP drops: malformed, response, runt, truncated");
    // More connections than allowed (100 here): the excess is closed at once and counted, and
    // once the idle ones go, TCP clients are served again.
    let before = tcp_dropped("connections");
    let idle: Vec<std::net::TcpStream> = (0..300).map(|_| connect()).collect();
    wait_for("excess connections counted", Duration::from_secs(10), || tcp_dropped("connections") - before >= 200);
    ok("300 connections with 100 allowed");
    drop(idle);
    // A client that sends queries and never reads the answers: once nothing can be written to
    // it for the idle time, the connection is given up (counted); everyone else is served.
    let long = ["a".repeat(60), "b".repeat(60), "c".repeat(60), "d".repeat(60)].join(".");
    let burst = framed(&query_bytes(0x0606, &long)).repeat(1000);
    let flood = std::thread::spawn(move || {
        let mut t = std::net::TcpStream::connect(server).unwrap();
        let mut sent = 0;
        // Up to 270 MB: more than socket buffers hold, so the writes end only if we are cut off.
        while sent < 1000 && t.write_all(&burst).is_ok() {
            sent += 1;
        }
        sent
    });
    wait_for("the unread connection given up", Duration::from_secs(60), || tcp_dropped("unread") >= 1);
    ok("a client that does not read");
    assert!(flood.join().unwrap() < 1000, "the connection was closed before all was sent");

    // Outside the access list: REFUSED (rcode 5), counted.
    let stranger = Ipv4Addr::new(127, 69, 3, 1);
    let refused = || tools::metric(metrics, "dnsledger_resolver_refused_total{reason=\"access\"}").unwrap_or(0);
    // (The TCP queries from 127.0.0.1 above were refused too.)
    let before = refused();
    assert_eq!(udp_exchange(stranger, server, &query_bytes(5, "www.example.com")), Some(5));
    assert_eq!(refused(), before + 1);

    // More queries in flight than allowed (names under a server that never answers):
    // the excess is refused at once, counted, and service resumes when they end.
    let waiting: Vec<std::thread::JoinHandle<Option<u8>>> = (0..8)
        .map(|i| {
            std::thread::spawn(move || udp_exchange(client, server, &query_bytes(100 + i, &format!("q{i}.dead.test"))))
        })
        .collect();
    let replies: Vec<Option<u8>> = waiting.into_iter().map(|w| w.join().unwrap()).collect();
    let refused = replies.iter().filter(|r| **r == Some(5)).count();
    assert!(refused >= 4, "8 slow queries, 4 allowed in flight: {replies:?}");
    assert!(tools::metric(metrics, "dnsledger_resolver_refused_total{reason=\"overload\"}").unwrap() >= 4);
    wait_for("in-flight queries to finish", Duration::from_secs(90), || {
        answer(server, client, "www.other.test", "A", &[]).0 == "NOERROR"
    });
    ok("overload");
    assert!(resolver.is_running(), "{}", resolver.stderr());
    let log = resolver.terminate();
    assert!(!log.contains("127.69.2.1"), "a client address reached the log:\n{log}");
}

#[test]
fn client_messages_when_asked_for_record_what_the_client_got() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let h = Hierarchy::start(71, work);
    let client = h.client_addr(1);
    let listen = h.resolver_addr(3);
    let server = SocketAddr::from((listen, 53));
    let sock = work.join("dnstap.sock");
    let mut capture = FstrmCapture::unix(&sock, &work.join("client.fstrm"));
    let rest = format!("[dnstap]\nunix = \"{}\"\nclient_messages = true\nresolver_queries = false\n", sock.display());
    let config = resolver_toml(&h, listen, work, free_metrics(), ["", "", &rest]);
    let resolver = start_resolver(&config, listen, work);
    let udp = dig_with(server, Some(client), "www.example.com", "A", &[]);
    let tcp = dig_with(server, Some(client), "big.example.com", "TXT", &["+tcp"]);
    assert_eq!((udp.rcode.as_str(), tcp.answer.len()), ("NOERROR", 20));
    let log = resolver.terminate();
    assert!(log.contains("CLIENT_* dnstap on"), "{log}");
    let file = capture.stop();

    let mut queries = Vec::new();
    let mut responses = Vec::new();
    for frame in tools::frames_of(&file) {
        let m = decode(frame.into()).unwrap().message;
        match m.kind {
            MessageType::ClientQuery => queries.push(m),
            MessageType::ClientResponse => responses.push(m),
            MessageType::ResolverResponse => {}
            other => panic!("unexpected {other:?} (resolver_queries = false)"),
        }
    }
    assert_eq!((queries.len(), responses.len()), (2, 2));
    for (q, r) in queries.iter().zip(&responses) {
        assert_eq!(q.query_address, Some(IpAddr::V4(client)));
        assert_eq!(r.query_port, q.query_port);
        let asked = parse_dns(q.query_message.as_ref().unwrap()).unwrap();
        let got = parse_dns(r.response_message.as_ref().unwrap()).unwrap();
        assert_eq!(asked.metadata.id, got.metadata.id, "the response answers that query");
    }
    let udp_response = parse_dns(responses[0].response_message.as_ref().unwrap()).unwrap();
    let addrs: Vec<String> = udp_response.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(addrs, udp.rdata("A"), "CLIENT_RESPONSE holds what dig got");
    let tcp_response = parse_dns(responses[1].response_message.as_ref().unwrap()).unwrap();
    assert_eq!(tcp_response.answers.len(), 20);
    assert_eq!(responses[1].socket_protocol, Some(dnsledger::dnstap::SocketProtocol::Tcp));
    // dnstap-ldns reads them as client messages.
    let lines = dnstap_quiet(&file);
    assert_eq!(lines.iter().filter(|l| l.split_whitespace().nth(2) == Some("CR")).count(), 2, "{lines:?}");
}

#[test]
fn dnssec_validation_rejects_a_private_root_the_iana_anchor_cannot_vouch_for() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let h = Hierarchy::start(72, work);
    let client = h.client_addr(1);
    let listen = h.resolver_addr(3);
    let server = SocketAddr::from((listen, 53));
    let metrics = free_metrics();
    let config = resolver_toml(&h, listen, work, metrics, ["", "dnssec = \"validate\"\n", ""]);
    let resolver = start_resolver(&config, listen, work);
    // The rig's root is unsigned: with the IANA trust anchor nothing under it can be proven,
    // so a validating resolver must not hand out its answers.
    let a = answer(server, client, "www.example.com", "A", &["+dnssec"]);
    assert_eq!(a.0, "SERVFAIL", "{a:?}");
    assert!(a.1.is_empty());
    // It did ask the rig (this is validation failing, not the network).
    assert!(tools::metric(metrics, "dnsledger_resolver_upstream_responses_total").unwrap() > 0);
    resolver.terminate();
}
