//! Live resolvers -> `dnsledger tap listen`, compared with `fstrm_capture`.
//!
//! Each case runs the same dig traffic twice through a cold resolver over the loopback
//! hierarchy: once with its dnstap going to `dnsledger tap listen --write`, once to the
//! reference `fstrm_capture`. The two files must hold the same number of frames and the same
//! resolver responses (ids, ports and times aside, which differ between any two runs), and
//! ours must decode with `dnstap-ldns`.
//!
//! Address blocks: 61 (unbound unix), 62 (unbound TCP), 63 (unbound unidirectional),
//! 64 (BIND unix).

mod common;
mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{Bind, DnstapOut, FstrmCapture, Hierarchy, Unbound, UnboundOptions, dig, dnstap_quiet};
use tools::{Proc, dnsledger, frames_of, run, wait_for_socket};

/// The traffic: every kind of name in the rig (see tests/rig/README.md).
const QUERIES: &[(&str, &str)] = &[
    ("www.example.com", "A"),
    ("www.example.com", "AAAA"),
    ("example.com", "MX"),
    ("_sip._tcp.example.com", "SRV"),
    ("alias.example.com", "A"),
    ("nonexistent.example.com", "A"),
    ("www.bank.com", "A"),
    ("www.glueless.test", "A"),
    ("80.2.0.192.in-addr.arpa", "PTR"),
];

enum Resolver {
    Unbound { bidirectional: bool },
    Bind,
}

enum Transport {
    Unix,
    Tcp,
}

/// Runs the traffic through a fresh resolver whose dnstap goes to `out`.
fn traffic(h: &Hierarchy, resolver: &Resolver, out: DnstapOut, work: &Path) {
    let listen = h.resolver_addr(1);
    match resolver {
        Resolver::Unbound { bidirectional } => {
            let mut options = UnboundOptions::new(out);
            options.bidirectional = *bidirectional;
            let mut u = Unbound::start_with(h, listen, options, work);
            for (name, rrtype) in QUERIES {
                dig(u.addr(), name, rrtype);
            }
            // unbound sends what it has queued, then STOP, on a clean stop.
            u.stop();
        }
        Resolver::Bind => {
            let DnstapOut::Unix(sock) = out else { panic!("BIND's dnstap-output is a unix socket") };
            let mut b = Bind::start(h, listen, &sock, work);
            for (name, rrtype) in QUERIES {
                dig(b.addr(), name, rrtype);
            }
            b.stop();
        }
    }
}

/// One capture by `tap listen` (dnstap from `resolver`) and one by `fstrm_capture` (from
/// `reference`, normally the same) of the same traffic.
fn capture_both(
    block: u8,
    resolver: Resolver,
    reference: Resolver,
    transport: Transport,
) -> (PathBuf, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let h = Hierarchy::start(block, work);
    let ours = work.join("tap-listen.dnstap");
    let theirs = work.join("fstrm_capture.dnstap");

    let sock = work.join("dnstap.sock");
    let tcp: SocketAddr = format!("127.0.0.1:{}", tools::free_port()).parse().unwrap();
    let mut cmd = dnsledger();
    cmd.args(["tap", "listen", "--quiet"]);
    let out = match transport {
        Transport::Unix => {
            cmd.arg("--unix").arg(&sock);
            DnstapOut::Unix(sock.clone())
        }
        Transport::Tcp => {
            cmd.args(["--tcp", &tcp.to_string()]);
            DnstapOut::Tcp(tcp)
        }
    };
    cmd.arg("--write").arg(&ours);
    let listener = Proc::spawn("tap-listen", cmd, work);
    match transport {
        Transport::Unix => wait_for_socket(&sock),
        Transport::Tcp => tools::wait_for("tap listen on TCP", std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(tcp).is_ok()
        }),
    }
    traffic(&h, &resolver, out.clone(), work);
    let log = listener.terminate();
    assert!(log.contains("tap listen:"), "totals line missing:\n{log}");

    let mut capture = match &out {
        DnstapOut::Unix(sock) => FstrmCapture::unix(sock, &theirs),
        DnstapOut::Tcp(addr) => FstrmCapture::tcp(*addr, &theirs),
        DnstapOut::Tls { .. } => unreachable!("fstrm_capture has no TLS"),
    };
    traffic(&h, &reference, out, work);
    capture.stop();
    (ours, theirs, tmp)
}

/// The resolver responses of a file as our JSON lines, stripped of what differs between two
/// runs of the same traffic (message ids, query ports, times), sorted.
fn resolver_responses(file: &Path) -> Vec<String> {
    let mut cmd = dnsledger();
    cmd.args(["tap", "read", "--format", "json"]).arg(file);
    let text = String::from_utf8(run(cmd).stdout).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] != "RESOLVER_RESPONSE" {
            continue;
        }
        let m = v.as_object_mut().unwrap();
        for volatile in ["query_port", "query_time", "response_time"] {
            m.remove(volatile);
        }
        if let Some(msg) = m.get_mut("response_message").and_then(|r| r.as_object_mut()) {
            msg.remove("id");
        }
        out.push(v.to_string());
    }
    out.sort();
    out
}

fn compare(ours: &Path, theirs: &Path) {
    let (our_frames, their_frames) = (frames_of(ours), frames_of(theirs));
    assert!(our_frames.len() > QUERIES.len() * 2, "too little dnstap: {}", our_frames.len());
    assert_eq!(our_frames.len(), their_frames.len(), "frame count: tap listen vs fstrm_capture");
    let (a, b) = (resolver_responses(ours), resolver_responses(theirs));
    assert!(a.len() >= QUERIES.len(), "resolver responses: {}", a.len());
    assert_eq!(a, b, "decoded resolver responses differ");
    // dnstap-ldns reads our file, every frame.
    assert_eq!(dnstap_quiet(ours).len(), our_frames.len(), "dnstap-ldns decodes every frame");
}

#[test]
fn unbound_over_unix_socket() {
    let (ours, theirs, _tmp) = capture_both(
        61,
        Resolver::Unbound { bidirectional: true },
        Resolver::Unbound { bidirectional: true },
        Transport::Unix,
    );
    compare(&ours, &theirs);
}

#[test]
fn unbound_over_tcp() {
    let (ours, theirs, _tmp) = capture_both(
        62,
        Resolver::Unbound { bidirectional: true },
        Resolver::Unbound { bidirectional: true },
        Transport::Tcp,
    );
    compare(&ours, &theirs);
}

/// `fstrm_capture` (fstrm 0.6) only speaks the bidirectional handshake: fed by a unidirectional
/// unbound it writes an empty file (measured: 0 data frames where `tap listen` got 56). So the
/// reference run here is a bidirectional unbound; the traffic and the messages are the same.
#[test]
fn unbound_unidirectional() {
    let (ours, theirs, _tmp) = capture_both(
        63,
        Resolver::Unbound { bidirectional: false },
        Resolver::Unbound { bidirectional: true },
        Transport::Unix,
    );
    compare(&ours, &theirs);
}

#[test]
fn bind_over_unix_socket() {
    let (ours, theirs, _tmp) = capture_both(64, Resolver::Bind, Resolver::Bind, Transport::Unix);
    compare(&ours, &theirs);
}
