//! Smoke test of the loopback DNS rig (`tests/common`, `tests/rig/`): the hierarchy answers
//! through real unbound and BIND resolvers the way the zone files say, the malicious server
//! poisons neither resolver, and both emit dnstap with resolver responses that the reference
//! tools (`fstrm_capture`, `dnstap-ldns`) can read. If this fails, fix the rig before
//! trusting any sensor test built on it.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;

use common::{Bind, DnstapOut, FstrmCapture, Hierarchy, Unbound, dig, dnstap_quiet, dnstap_yaml};

/// This test's address block: 127.60.0.0/16.
const BLOCK: u8 = 60;

#[test]
fn unbound_and_bind_resolve_the_rig_and_tap_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path();
    let hierarchy = Hierarchy::start(BLOCK, work);

    // unbound, dnstap over a unix socket
    let socket = work.join("unbound.sock");
    let mut capture = FstrmCapture::unix(&socket, &work.join("unbound.dnstap"));
    let mut unbound = Unbound::start(&hierarchy, hierarchy.resolver_addr(1), DnstapOut::Unix(socket), work);
    check_answers(unbound.addr());
    // stop first: unbound flushes its dnstap queue and sends STOP on exit
    unbound.stop();
    check_capture(&hierarchy, &capture.stop(), "unbound.rig");

    // BIND, dnstap over a unix socket
    let socket = work.join("bind.sock");
    let mut capture = FstrmCapture::unix(&socket, &work.join("bind.dnstap"));
    let mut bind = Bind::start(&hierarchy, hierarchy.resolver_addr(2), &socket, work);
    check_answers(bind.addr());
    bind.stop();
    check_capture(&hierarchy, &capture.stop(), "bind.rig");

    assert!(hierarchy.log("evil").contains("www.evil.test"), "the evil server was never asked");
}

/// What a user asking `resolver` sees, for each kind of name in the rig.
fn check_answers(resolver: Ipv4Addr) {
    let a = dig(resolver, "www.example.com", "A");
    assert_eq!((a.rcode.as_str(), a.rdata("A")), ("NOERROR", vec!["192.0.2.80".to_string()]), "{a}");
    assert!(a.has_flag("ra") && !a.has_flag("aa"), "recursive answer expected: {a}");

    let a = dig(resolver, "www.example.com", "AAAA");
    assert_eq!(a.rdata("AAAA"), ["2001:db8::80"], "{a}");

    let a = dig(resolver, "example.com", "MX");
    assert_eq!(a.rdata_sorted("MX"), ["10 mail.example.com.", "20 mx.bank.com."], "{a}");

    let a = dig(resolver, "_sip._tcp.example.com", "SRV");
    assert_eq!(a.rdata("SRV"), ["10 60 5060 sip.example.com."], "{a}");

    // CNAME into another zone on another server
    let a = dig(resolver, "alias.example.com", "A");
    assert_eq!(a.rdata("CNAME"), ["www.other.test."], "{a}");
    assert_eq!(a.rdata("A"), ["192.0.2.90"], "{a}");

    // ~2.1 KB: truncated over UDP upstream, the resolver must retry over TCP
    let a = dig(resolver, "big.example.com", "TXT");
    let expected: Vec<String> = (0..20).map(|i| format!("\"{i:02}-{}\"", "x".repeat(97))).collect();
    assert_eq!((a.rcode.as_str(), a.rdata_sorted("TXT")), ("NOERROR", expected), "{a}");

    let a = dig(resolver, "foo.wild.example.com", "A");
    assert_eq!(a.rdata("A"), ["192.0.2.99"], "{a}");

    let a = dig(resolver, "nx.example.com", "A");
    assert_eq!(a.rcode, "NXDOMAIN", "{a}");
    assert!(a.answer.is_empty(), "{a}");

    let a = dig(resolver, "www.example.com", "MX");
    assert_eq!((a.rcode.as_str(), a.answer.len()), ("NOERROR", 0), "NODATA expected: {a}");

    let a = dig(resolver, "80.2.0.192.in-addr.arpa", "PTR");
    assert_eq!(a.rdata("PTR"), ["www.example.com."], "{a}");

    let a = dig(resolver, "www.glueless.test", "A");
    assert_eq!(a.rdata("A"), ["192.0.2.70"], "{a}");

    // the lame server answers REFUSED at once, so this fails fast
    let a = dig(resolver, "www.lame.test", "A");
    assert_eq!(a.rcode, "SERVFAIL", "{a}");

    // the evil server's own data is fine; its forged bank.com records must not stick
    let a = dig(resolver, "www.evil.test", "A");
    assert_eq!(a.rdata("A"), ["203.0.113.80"], "{a}");
    let a = dig(resolver, "cname.evil.test", "A");
    assert_eq!(a.rdata("CNAME"), ["www.bank.com."], "{a}");
    assert_eq!(a.rdata("A"), ["198.51.100.80"], "forged CNAME target accepted: {a}");
    let a = dig(resolver, "www.bank.com", "A");
    assert_eq!(a.rdata("A"), ["198.51.100.80"], "resolver poisoned: {a}");
    let a = dig(resolver, "bank.com", "NS");
    assert_eq!(a.rdata("NS"), ["ns1.bank.com."], "forged delegation accepted: {a}");
}

/// The capture holds resolver responses from the rig's servers, including the TCP retry and
/// the evil server's answer, up to the last question asked, and nothing from 127.0.0.1.
fn check_capture(hierarchy: &Hierarchy, file: &Path, identity: &str) {
    let yaml = dnstap_yaml(file);
    let responses = yaml.matches("type: RESOLVER_RESPONSE").count();
    assert!(responses >= 10, "only {responses} RESOLVER_RESPONSE messages in {}:\n{yaml}", file.display());
    assert!(yaml.contains(&format!("identity: \"{identity}\"")), "identity {identity} missing:\n{yaml}");
    assert!(!yaml.contains("127.0.0.1"), "the rig must not use 127.0.0.1:\n{yaml}");

    let quiet = dnstap_quiet(file);
    eprintln!("{identity}: {} dnstap messages, {responses} resolver responses", quiet.len());
    let resolver_responses: Vec<&String> = quiet.iter().filter(|l| l.split_whitespace().nth(2) == Some("RR")).collect();
    let from = |server: Ipv4Addr| format!(" RR {server} ");
    assert!(
        resolver_responses.iter().any(|l| l.contains(" TCP ") && l.contains("\"big.example.com.\"")),
        "no TCP retry for big.example.com:\n{}",
        quiet.join("\n")
    );
    // the last question check_answers asks: nothing lost at the end of the stream
    assert!(
        quiet.iter().any(|l| l.contains(" CR ") && l.ends_with("\"bank.com.\" IN NS")),
        "the last messages before the resolver stopped are missing:\n{}",
        quiet.join("\n")
    );
    for server in [hierarchy.root(), hierarchy.example(), hierarchy.evil(), hierarchy.glueless()] {
        assert!(
            resolver_responses.iter().any(|l| l.contains(&from(server))),
            "no response from {server} captured:\n{}",
            quiet.join("\n")
        );
    }
}
