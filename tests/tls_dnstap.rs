//! dnstap over TLS: a live unbound (`dnstap-tls: yes`, with a client certificate) into
//! `dnsledger tap listen --tls-cert --tls-key --tls-client-ca`, certificates made with the
//! openssl command line. Peers that do not speak TLS, or have no client certificate, are
//! refused and counted; the listener keeps serving.
//!
//! Address block: 67.

mod common;
mod tools;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{DnstapOut, Hierarchy, Unbound, UnboundOptions, dig};
use tools::{Proc, dnsledger, run, wait_for};

const SERVER_NAME: &str = "dnstap.rig.test";

#[test]
fn unbound_sends_dnstap_over_mutual_tls() {
    tools::require("openssl", "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    tools::make_certs(work, SERVER_NAME, &["client"]);
    let h = Hierarchy::start(67, work);

    let addr: SocketAddr = format!("127.0.0.1:{}", tools::free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", tools::free_port()).parse().unwrap();
    let out = work.join("tls.dnstap");
    let mut cmd = dnsledger();
    cmd.args(["tap", "listen", "--quiet", "--tcp", &addr.to_string(), "--metrics", &metrics.to_string()])
        .arg("--tls-cert")
        .arg(work.join("server.pem"))
        .arg("--tls-key")
        .arg(work.join("server.key"))
        .arg("--tls-client-ca")
        .arg(work.join("ca.pem"))
        .arg("--write")
        .arg(&out);
    let listener = Proc::spawn("tap-listen", cmd, work);
    wait_for("TLS listener", Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok());

    // Not TLS at all: a Frame Streams READY in the clear.
    let failed = "dnsledger_framestream_connections_failed_total{reason=\"tls_handshake\"}";
    let metric = |addr, name| tools::metric(addr, name).unwrap_or(0);
    let before = metric(metrics, failed);
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain.write_all(b"\0\0\0\0\0\0\0\x22\0\0\0\x04\0\0\0\x01\0\0\0\x16protobuf:dnstap.Dnstap").unwrap();
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink);
    wait_for("plain peer counted", Duration::from_secs(10), || metric(metrics, failed) > before);
    // TLS without a client certificate.
    let before = metric(metrics, failed);
    let mut s_client = Command::new("openssl");
    s_client
        .args(["s_client", "-connect", &addr.to_string(), "-servername", SERVER_NAME, "-CAfile"])
        .arg(work.join("ca.pem"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ = s_client.status();
    wait_for("certificate-less peer counted", Duration::from_secs(10), || metric(metrics, failed) > before);

    let options = UnboundOptions::new(DnstapOut::Tls {
        addr,
        server_name: SERVER_NAME.into(),
        ca: work.join("ca.pem"),
        client: Some((work.join("client.pem"), work.join("client.key"))),
    });
    let mut u = Unbound::start_with(&h, h.resolver_addr(1), options, work);
    let a = dig(u.addr(), "www.example.com", "A");
    assert_eq!(a.rdata("A"), ["192.0.2.80"], "{a}");
    u.stop();
    let log = listener.terminate();

    let mut read = dnsledger();
    read.args(["tap", "read", "--format", "json"]).arg(&out);
    let text = String::from_utf8(run(read).stdout).unwrap();
    let responses: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "RESOLVER_RESPONSE")
        .collect();
    assert!(
        responses.iter().any(|v| v["response_message"]["answer"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["name"] == "www.example.com." && r["rdata"] == "192.0.2.80"))),
        "no resolver response with www.example.com A over TLS; listener log:\n{log}"
    );
}
