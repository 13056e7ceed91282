//! The query API's test fixture (COF RRsets whose times and addresses sit on the edges the
//! semantics turn on) and a plain HTTP/1.0 client, shared by the API tests of both backends.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// rrname, rrtype, bailiwick, rdata, first, last, count.
pub type Row = (&'static str, &'static str, &'static str, &'static [&'static str], u64, u64, u64);

pub const FIXTURE: &[Row] = &[
    ("example.com.", "A", "example.com.", &["192.0.2.1"], 100, 200, 5),
    ("www.example.com.", "A", "example.com.", &["192.0.2.80", "192.0.2.81"], 300, 400, 7),
    ("deep.b.example.com.", "AAAA", "example.com.", &["2001:db8::1"], 150, 350, 2),
    ("example.com.", "NS", "com.", &["ns1.example.com.", "ns2.example.com."], 100, 400, 3),
    ("example.com.", "MX", "example.com.", &["10 mail.example.com."], 120, 180, 1),
    ("www.example.net.", "A", "example.net.", &["192.0.2.255"], 500, 600, 1),
    ("edge.example.org.", "A", "example.org.", &["192.0.3.0"], 500, 600, 1),
    ("low.example.org.", "A", "example.org.", &["192.0.1.255"], 500, 600, 1),
    ("v6edge.example.org.", "AAAA", "example.org.", &["2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"], 500, 600, 1),
    ("v6out.example.org.", "AAAA", "example.org.", &["2001:db9::"], 500, 600, 1),
    ("alias.example.org.", "CNAME", "example.org.", &["www.example.com."], 500, 600, 1),
    ("example.net.", "TXT", "example.net.", &["\"v=spf1 -all\""], 500, 600, 1),
];

/// 30 more RRsets under paged.example., for paging.
pub const PAGED: u64 = 30;

pub fn fixture_lines() -> String {
    let mut out = String::new();
    for (name, t, bw, rdata, first, last, count) in FIXTURE {
        out += &serde_json::json!({"rrname": name, "rrtype": t, "bailiwick": bw, "rdata": rdata,
            "time_first": first, "time_last": last, "count": count})
        .to_string();
        out.push('\n');
    }
    for i in 0..PAGED {
        // SAF-wrapped lines import too (a saved DNSDB answer).
        out += &serde_json::json!({"obj": {"rrname": format!("n{i}.paged.example."), "rrtype": "A",
            "bailiwick": "paged.example.", "rdata": [format!("198.51.100.{i}")],
            "time_first": 1000 + i, "time_last": 2000 + i, "count": i + 1}})
        .to_string();
        out.push('\n');
    }
    out
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// A GET over HTTP/1.0 (the body ends at close, no chunking), with extra header lines.
pub fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Reply {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\n");
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
        req += &format!("Host: {addr}\r\n");
    }
    for h in headers {
        req += h;
        req += "\r\n";
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, headers: head.to_ascii_lowercase(), body: body.to_string() }
}
