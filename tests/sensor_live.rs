//! The sensor against real resolvers, live: unbound and BIND resolve a set of questions
//! through the loopback hierarchy (tests/rig) with dnstap to `dnsledger sensor`; the store
//! must then hold exactly the RRsets the authoritative servers said inside their bailiwick
//! (the table below, written from the zone files), none of the evil server's forgeries, counts
//! that add up to the observations the sensor accepted, and not one byte about the client.
//!
//! Address blocks: 65 (unbound), 66 (BIND).

mod common;
mod tools;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use common::{Bind, DnstapOut, Hierarchy, Unbound, dig_with};
use dnsledger::store::{Entry, Store};
use tools::{Proc, dnsledger, wait_for_socket};

/// The questions, in order (order matters: resolvers cache).
const QUERIES: &[(&str, &str)] = &[
    ("www.example.com", "A"),
    ("www.example.com", "AAAA"),
    ("example.com", "MX"),
    ("example.com", "TXT"),
    ("_sip._tcp.example.com", "SRV"),
    ("txt.example.com", "TXT"),
    ("ftp.example.com", "A"),
    ("alias.example.com", "A"),
    ("big.example.com", "TXT"),
    ("foo.wild.example.com", "A"),
    ("nx.example.com", "A"),
    ("www.example.com", "MX"),
    ("80.2.0.192.in-addr.arpa", "PTR"),
    ("www.glueless.test", "A"),
    ("www.lame.test", "A"),
    ("www.bank.com", "A"),
    ("www.evil.test", "A"),
    ("cname.evil.test", "A"),
];

/// What the store must hold, `{B}` standing for the block: (owner, type, bailiwick, rdata).
/// other.test is configured as an internal zone, so nothing under it (nor alias.example.com's
/// CNAME pointing into it) is recorded.
const EXPECTED: &[(&str, &str, &str, &[&str])] = &[
    // Root priming and the root's referrals (delegation data and glue, bailiwick the root).
    (".", "NS", ".", &["a.root-servers.rig."]),
    ("a.root-servers.rig.", "A", ".", &["127.{B}.0.1"]),
    ("com.", "NS", ".", &["ns.nic.com."]),
    ("ns.nic.com.", "A", ".", &["127.{B}.0.2"]),
    ("test.", "NS", ".", &["ns.nic.test."]),
    ("ns.nic.test.", "A", ".", &["127.{B}.0.3"]),
    ("2.0.192.in-addr.arpa.", "NS", ".", &["ns-rev.nic.test."]),
    ("ns-rev.nic.test.", "A", ".", &["127.{B}.0.4"]),
    // TLD referrals.
    ("example.com.", "NS", "com.", &["ns1.example.com."]),
    ("ns1.example.com.", "A", "com.", &["127.{B}.0.10"]),
    ("bank.com.", "NS", "com.", &["ns1.bank.com."]),
    ("ns1.bank.com.", "A", "com.", &["127.{B}.0.11"]),
    ("glueless.test.", "NS", "test.", &["ns.example.com."]),
    ("lame.test.", "NS", "test.", &["ns.lame.test."]),
    ("ns.lame.test.", "A", "test.", &["127.{B}.0.10"]),
    ("evil.test.", "NS", "test.", &["ns.evil.test."]),
    ("ns.evil.test.", "A", "test.", &["127.{B}.0.66"]),
    // example.com, authoritative.
    ("example.com.", "NS", "example.com.", &["ns1.example.com."]),
    ("ns1.example.com.", "A", "example.com.", &["127.{B}.0.10"]),
    ("www.example.com.", "A", "example.com.", &["192.0.2.80"]),
    ("www.example.com.", "AAAA", "example.com.", &["2001:db8::80"]),
    ("example.com.", "MX", "example.com.", &["10 mail.example.com.", "20 mx.bank.com."]),
    ("example.com.", "TXT", "example.com.", &["\"v=spf1 ip4:192.0.2.0/24 -all\""]),
    ("mail.example.com.", "A", "example.com.", &["192.0.2.25"]),
    ("mail.example.com.", "AAAA", "example.com.", &["2001:db8::25"]),
    ("_sip._tcp.example.com.", "SRV", "example.com.", &["10 60 5060 sip.example.com."]),
    ("sip.example.com.", "A", "example.com.", &["192.0.2.60"]),
    ("txt.example.com.", "TXT", "example.com.", &["\"hello\" \"world\""]),
    ("ftp.example.com.", "CNAME", "example.com.", &["www.example.com."]),
    ("big.example.com.", "TXT", "example.com.", BIG_TXT),
    ("foo.wild.example.com.", "A", "example.com.", &["192.0.2.99"]),
    ("ns.example.com.", "A", "example.com.", &["127.{B}.0.12"]),
    // The reverse zone, glueless.test, bank.com, evil.test (its honest part).
    ("2.0.192.in-addr.arpa.", "NS", "2.0.192.in-addr.arpa.", &["ns-rev.nic.test."]),
    ("80.2.0.192.in-addr.arpa.", "PTR", "2.0.192.in-addr.arpa.", &["www.example.com."]),
    ("glueless.test.", "NS", "glueless.test.", &["ns.example.com."]),
    ("www.glueless.test.", "A", "glueless.test.", &["192.0.2.70"]),
    ("bank.com.", "NS", "bank.com.", &["ns1.bank.com."]),
    ("ns1.bank.com.", "A", "bank.com.", &["127.{B}.0.11"]),
    ("www.bank.com.", "A", "bank.com.", &["198.51.100.80"]),
    ("evil.test.", "NS", "evil.test.", &["ns.evil.test."]),
    ("www.evil.test.", "A", "evil.test.", &["203.0.113.80"]),
    ("cname.evil.test.", "CNAME", "evil.test.", &["www.bank.com."]),
];

const BIG_TXT: &[&str] = &["BIG"];

/// RRsets some resolvers fetch and others do not (they depend on the resolver's own lookups
/// of name server addresses, not on the questions): allowed, not required.
const OPTIONAL: &[(&str, &str, &str, &[&str])] = &[
    ("ns.nic.com.", "A", "com.", &["127.{B}.0.2"]),
    ("ns.nic.test.", "A", "test.", &["127.{B}.0.3"]),
    ("test.", "NS", "test.", &["ns.nic.test."]),
    ("com.", "NS", "com.", &["ns.nic.com."]),
    ("ns-rev.nic.test.", "A", "test.", &["127.{B}.0.4"]),
    ("ns.evil.test.", "A", "evil.test.", &["127.{B}.0.66"]),
];

type Row = (String, String, String, Vec<String>);

fn big_txt() -> Vec<String> {
    (0..20).map(|i| format!("\"{i:02}-{}\"", "x".repeat(97))).collect()
}

fn rows(table: &[(&str, &str, &str, &[&str])], block: u8) -> BTreeSet<Row> {
    table
        .iter()
        .map(|(n, t, b, r)| {
            let mut rdata: Vec<String> = if *r == BIG_TXT {
                big_txt()
            } else {
                r.iter().map(|d| d.replace("{B}", &block.to_string())).collect()
            };
            rdata.sort();
            (n.to_string(), t.to_string(), b.to_string(), rdata)
        })
        .collect()
}

fn row(e: &Entry) -> Row {
    (
        e.rrset.rrname.clone(),
        dnsledger::dns::rrtype_name(e.rrset.rrtype.into()),
        e.rrset.bailiwick.clone(),
        e.rrset.rdata.clone(),
    )
}

enum Resolver {
    Unbound,
    Bind,
}

struct Run {
    _tmp: tempfile::TempDir,
    db: PathBuf,
    entries: Vec<Entry>,
    observations: u64,
    outbox: u64,
    client: Ipv4Addr,
    ports: Vec<u16>,
    ids: Vec<u16>,
    block: u8,
    /// The store's runs, unpacked (compressed in its files).
    unpacked: Vec<u8>,
}

fn run(block: u8, resolver: Resolver) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().to_path_buf();
    let h = Hierarchy::start(block, &work);
    let db = work.join("store");
    let sock = work.join("sensor.sock");
    let config = work.join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            "db = \"{}\"\n[listen]\nunix = [\"{}\"]\n[pipeline]\nroot_hints = [\"{}\"]\n\
             [privacy]\nprivate_networks = []\ninternal_zones = [\"other.test\"]\n\
             [aggregate]\noutbox = true\n",
            db.display(),
            sock.display(),
            h.root()
        ),
    )
    .unwrap();
    let mut cmd = dnsledger();
    cmd.args(["sensor", "-q", "-c"]).arg(&config);
    let sensor = Proc::spawn("sensor", cmd, &work);
    wait_for_socket(&sock);

    let listen = h.resolver_addr(1);
    let client = h.client_addr(1);
    let mut ports = Vec::new();
    let mut ids = Vec::new();
    let mut ask = |server: Ipv4Addr| {
        for (i, (name, rrtype)) in QUERIES.iter().enumerate() {
            let port = 41_000 + block as u16 * 50 + i as u16;
            let source = format!("{client}#{port}");
            let a = dig_with(SocketAddr::from((server, 53)), None, name, rrtype, &["-b", &source]);
            assert_ne!(a.rcode, "TIMEOUT", "{name} {rrtype}: {}", a.output);
            if let Some(id) = a.output.split("id: ").nth(1).and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            {
                ids.push(id.parse().unwrap());
            }
            ports.push(port);
        }
    };
    match resolver {
        Resolver::Unbound => {
            let mut u = Unbound::start(&h, listen, DnstapOut::Unix(sock.clone()), &work);
            ask(u.addr());
            u.stop();
        }
        Resolver::Bind => {
            let mut b = Bind::start(&h, listen, &sock, &work);
            ask(b.addr());
            b.stop();
        }
    }
    let log = sensor.terminate();
    let observations = tools::sensor_observations(&log);
    let store = Store::open(&db).unwrap();
    let entries: Vec<Entry> = store.all(false).map(|e| e.unwrap()).collect();
    // The outbox holds what would go upstream: the same observations, once.
    let outbox: u64 = store.outbox_batches().unwrap().iter().flat_map(|(_, d)| d.iter().map(|d| d.count)).sum();
    let unpacked = store.unpacked_runs().unwrap();
    drop(store);
    Run { _tmp: tmp, db, entries, observations, outbox, client, ports, ids, block, unpacked }
}

fn check(r: &Run) {
    let got: BTreeSet<Row> = r.entries.iter().map(row).collect();
    let expected = rows(EXPECTED, r.block);
    let optional = rows(OPTIONAL, r.block);
    let missing: Vec<&Row> = expected.difference(&got).collect();
    let unexpected: Vec<&Row> = got.difference(&expected).filter(|x| !optional.contains(*x)).collect();
    assert!(missing.is_empty() && unexpected.is_empty(), "missing: {missing:#?}\nunexpected: {unexpected:#?}");

    // The forgeries, by name, for a clear message should the table ever be loosened.
    for e in &r.entries {
        assert!(!e.rrset.rdata.iter().any(|d| d == "6.6.6.6"), "forged www.bank.com A stored: {e:?}");
        assert!(
            !(e.rrset.rrname == "bank.com." && e.rrset.rdata.iter().any(|d| d == "ns.evil.test.")),
            "forged bank.com NS stored: {e:?}"
        );
        assert!(e.count >= 1 && e.first <= e.last, "{e:?}");
    }

    // Exact counts: every accepted observation is in the store once.
    let total: u64 = r.entries.iter().map(|e| e.count).sum();
    assert_eq!(total, r.observations, "stored counts vs observations the sensor accepted");
    assert_eq!(r.outbox, r.observations, "outbox deltas vs observations");
    // Asked once, answered once (the resolver caches): counted once. The big TXT arrives
    // twice, truncated over UDP (dropped) and whole over TCP.
    let count = |name: &str, t: &str| {
        r.entries
            .iter()
            .find(|e| e.rrset.rrname == name && dnsledger::dns::rrtype_name(e.rrset.rrtype.into()) == t)
            .map(|e| e.count)
    };
    for (name, t) in [
        ("big.example.com.", "TXT"),
        ("www.example.com.", "AAAA"),
        ("txt.example.com.", "TXT"),
        ("foo.wild.example.com.", "A"),
        ("_sip._tcp.example.com.", "SRV"),
    ] {
        assert_eq!(count(name, t), Some(1), "{name} {t}");
    }
    privacy(r);
}

/// Every byte under the store directory, and the RRsets and index entries of its runs unpacked
/// (they are compressed in the files), with the outbox payloads, searched
/// for the client's address (text, reverse, binary, IPv4-mapped), the client's ports next to
/// its address or as text, and the DNS ids. A decimal string that legitimately occurs in the
/// stored data (say an id that is also part of an SOA serial) cannot prove anything and is
/// skipped.
fn privacy(r: &Run) {
    let mut bytes = r.unpacked.clone();
    read_all(&r.db, &mut bytes);
    assert!(bytes.len() > 1000, "store files found");
    // The control: stored rdata is found where a client address would be.
    let rdata = r.entries.iter().find(|e| e.rrset.rrtype == 1).map(|e| e.rrset.rdata[0].clone()).unwrap_or_default();
    assert!(!rdata.is_empty() && bytes.windows(rdata.len()).any(|w| w == rdata.as_bytes()), "the search sees {rdata}");
    let o = r.client.octets();
    let stored_text: String = r
        .entries
        .iter()
        .flat_map(|e| [e.rrset.rrname.clone(), e.rrset.bailiwick.clone(), e.rrset.rdata.join(" ")])
        .collect::<Vec<_>>()
        .join(" ");
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("client address text".into(), r.client.to_string().into_bytes()),
        ("client address reversed".into(), format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0]).into_bytes()),
        ("client address binary".into(), o.to_vec()),
        ("client address mapped".into(), r.client.to_ipv6_mapped().octets().to_vec()),
    ];
    for p in &r.ports {
        let mut b = o.to_vec();
        b.extend_from_slice(&p.to_be_bytes());
        needles.push((format!("client address+port {p}"), b));
        if !stored_text.contains(&p.to_string()) {
            needles.push((format!("client port {p} text"), p.to_string().into_bytes()));
        }
    }
    // Ids below 10000 are too short to search for as text without matching by chance.
    for id in r.ids.iter().filter(|id| **id >= 10_000) {
        if !stored_text.contains(&id.to_string()) {
            needles.push((format!("query id {id} text"), format!("{id}").into_bytes()));
        }
    }
    assert!(r.ids.len() == QUERIES.len(), "ids read from dig: {:?}", r.ids);
    for (what, needle) in needles {
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle.as_slice()) {
            panic!("{what} found in the store at byte {at}");
        }
    }
}

fn read_all(dir: &Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            read_all(&p, out);
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
}

#[test]
fn unbound_into_the_sensor() {
    check(&run(65, Resolver::Unbound));
}

#[test]
fn bind_into_the_sensor() {
    check(&run(66, Resolver::Bind));
}
