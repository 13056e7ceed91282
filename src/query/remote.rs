//! `dnsledger query --server URL`: the same questions asked of a DNSDB v2 API (ours or
//! another), over HTTP/1.1 or HTTPS (trusting the CA given with `--ca`). SAF lines are read as
//! they arrive; results print as they come unless a sort needs them all.

use std::io::Write;
use std::pin::Pin;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tokio::net::TcpStream;

use super::{QueryArgs, QueryWhat, RdataWhat, finish, now, print_one};
use crate::api::Body;
use crate::sensor::Rrset;
use crate::store::Entry;

/// Path segments keep letters, digits and `.-_`; everything else is percent-encoded (as
/// dnsdbq does).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_');

/// Lines of a response longer than this are refused (an RRset is far smaller).
const MAX_LINE: usize = 16 * 1024 * 1024;

struct Server {
    tls: bool,
    host: String,
    port: u16,
    /// Path before `/dnsdb/v2` (usually empty).
    base: String,
}

fn parse_server(url: &str) -> anyhow::Result<Server> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("--server: `{url}`: expected http://HOST[:PORT] or https://HOST[:PORT]")
    };
    let (authority, base) = rest.split_once('/').map(|(a, b)| (a, format!("/{b}"))).unwrap_or((rest, String::new()));
    let base = base.trim_end_matches('/').trim_end_matches("/dnsdb/v2").to_string();
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').context("--server: `[` without `]`")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().context("--server: port")?,
            None => default_port,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().context("--server: port")?),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        bail!("--server: `{url}` has no host");
    }
    Ok(Server { tls, host, port, base })
}

/// The DNSDB v2 path and query string of a query.
pub fn request_path(args: &QueryArgs, summarize: bool) -> String {
    let enc = |s: &str| utf8_percent_encode(s, SEGMENT).to_string();
    let verb = if summarize { "summarize" } else { "lookup" };
    let Some(what) = &args.what else { return String::new() };
    let mut path = match what {
        QueryWhat::Rrset { name, rrtype, bailiwick } => {
            let mut p = format!("/dnsdb/v2/{verb}/rrset/name/{}", enc(name));
            if rrtype.is_some() || bailiwick.is_some() {
                p += &format!("/{}", enc(rrtype.as_deref().unwrap_or("ANY")));
            }
            if let Some(b) = bailiwick {
                p += &format!("/{}", enc(b));
            }
            p
        }
        QueryWhat::Rdata(RdataWhat::Ip { addr }) => {
            format!("/dnsdb/v2/{verb}/rdata/ip/{}", enc(&addr.replace('/', ",")))
        }
        QueryWhat::Rdata(RdataWhat::Name { name, rrtype }) => {
            let mut p = format!("/dnsdb/v2/{verb}/rdata/name/{}", enc(name));
            if let Some(t) = rrtype {
                p += &format!("/{}", enc(t));
            }
            p
        }
    };
    path += "?swclient=dnsledger";
    if let Some(l) = args.limit {
        path += &format!("&limit={l}");
    }
    if let Some(c) = &args.cursor {
        path += &format!("&cursor={}", enc(c));
    }
    if args.offset > 0 {
        path += &format!("&offset={}", args.offset);
    }
    let f = args.fences(now());
    for (name, v) in [
        ("time_first_after", f.first_after),
        ("time_first_before", f.first_before),
        ("time_last_after", f.last_after),
        ("time_last_before", f.last_before),
    ] {
        if let Some(v) = v {
            path += &format!("&{name}={v}");
        }
    }
    path
}

#[derive(Deserialize)]
struct SafLine {
    cond: Option<String>,
    msg: Option<String>,
    cursor: Option<String>,
    obj: Option<Obj>,
}

#[derive(Deserialize)]
struct Obj {
    rrname: Option<String>,
    rrtype: Option<String>,
    bailiwick: Option<String>,
    rdata: Option<RdataField>,
    time_first: Option<u64>,
    time_last: Option<u64>,
    zone_time_first: Option<u64>,
    zone_time_last: Option<u64>,
    count: Option<u64>,
    num_results: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RdataField {
    One(String),
    Many(Vec<String>),
}

impl Obj {
    fn entry(self) -> anyhow::Result<Entry> {
        let rrtype = self.rrtype.as_deref().map(super::parse_rrtype).transpose()?.unwrap_or(0);
        Ok(Entry {
            rrset: Rrset {
                rrname: self.rrname.unwrap_or_default(),
                rrtype,
                bailiwick: self.bailiwick.unwrap_or_default(),
                rdata: match self.rdata {
                    Some(RdataField::One(s)) => vec![s],
                    Some(RdataField::Many(v)) => v,
                    None => Vec::new(),
                },
            },
            first: self.time_first.or(self.zone_time_first).unwrap_or(0),
            last: self.time_last.or(self.zone_time_last).unwrap_or(0),
            count: self.count.unwrap_or(0),
            sensors: Vec::new(),
        })
    }
}

async fn get(
    server: &Server,
    path: &str,
    key: Option<&str>,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<hyper::Response<Incoming>> {
    let tcp = TcpStream::connect((server.host.as_str(), server.port))
        .await
        .with_context(|| format!("connect {}:{}", server.host, server.port))?;
    let req = {
        let mut r = Request::get(format!("{}{path}", server.base))
            .header(
                header::HOST,
                if server.host.contains(':') {
                    format!("[{}]:{}", server.host, server.port)
                } else {
                    format!("{}:{}", server.host, server.port)
                },
            )
            .header(header::ACCEPT, "application/x-ndjson");
        if let Some(k) = key {
            r = r.header("X-API-Key", k);
        }
        r.body(Body::Full(None))?
    };
    if server.tls {
        let ca = ca.ok_or_else(|| anyhow::anyhow!("https needs --ca (the PEM of the CA that signed the server)"))?;
        let config = crate::tls::client_config_anonymous(ca)?;
        let name = rustls_pki_types::ServerName::try_from(server.host.clone()).context("--server: host name")?;
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.context("TLS handshake")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender.send_request(req).await?)
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(sender.send_request(req).await?)
    }
}

async fn next_chunk(body: &mut Incoming) -> anyhow::Result<Option<Bytes>> {
    use hyper::body::Body as _;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The start (at most ~4 KiB) of an error response's body, for the user.
async fn error_text(body: &mut Incoming) -> anyhow::Result<String> {
    let mut text = Vec::new();
    while let Some(c) = next_chunk(body).await? {
        text.extend_from_slice(&c);
        if text.len() > 4096 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&text).trim().to_string())
}

/// Asks the server; prints results (and the terminator's message and cursor to stderr).
pub async fn run(args: &QueryArgs, summarize: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let Some(url) = &args.server else { bail!("no --server") };
    let server = parse_server(url)?;
    if args.what.is_none() {
        bail!("what to look up: rrset NAME, rdata ip ADDR or rdata name NAME (or --follow)");
    }
    let path = request_path(args, summarize);
    let resp = get(&server, &path, args.key.as_deref(), args.ca.as_deref()).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        bail!("{status}: {}", error_text(&mut body).await?);
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut collected = Vec::new();
    let mut ended = false;
    let streaming = args.sort.is_none();
    if streaming && args.format() == super::Format::Csv && !summarize {
        writeln!(out, "time_first,time_last,count,bailiwick,rrname,rrtype,rdata")?;
    }
    while let Some(chunk) = next_chunk(&mut body).await? {
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = std::str::from_utf8(&line[..line.len() - 1]).context("response is not UTF-8")?.trim();
            if line.is_empty() {
                continue;
            }
            let saf: SafLine = serde_json::from_str(line).with_context(|| format!("not a SAF line: {line:.200}"))?;
            if let Some(obj) = saf.obj {
                if summarize {
                    writeln!(
                        out,
                        "count: {}; num_results: {}; first seen: {}; last seen: {}",
                        obj.count.unwrap_or(0),
                        obj.num_results.unwrap_or(0),
                        obj.time_first.unwrap_or(0),
                        obj.time_last.unwrap_or(0)
                    )?;
                    continue;
                }
                let e = obj.entry()?;
                if streaming {
                    print_one(&e, args.format(), out)?;
                } else {
                    collected.push(e);
                }
            }
            match saf.cond.as_deref() {
                Some("begin") | Some("ongoing") | None => {}
                Some("succeeded") => ended = true,
                Some("limited") => {
                    ended = true;
                    eprintln!("query: limited: {}", saf.msg.unwrap_or_default());
                    if let Some(c) = saf.cursor {
                        eprintln!("query: more results: resume with cursor {c}");
                    }
                }
                Some("failed") => bail!("the server failed: {}", saf.msg.unwrap_or_default()),
                Some(other) => bail!("unknown SAF condition `{other}`"),
            }
        }
        if pending.len() > MAX_LINE {
            bail!("a response line longer than {MAX_LINE} bytes");
        }
    }
    if !ended {
        bail!("the response ended without a SAF terminator (truncated)");
    }
    if !streaming {
        finish(args, &mut collected, out)?;
    }
    Ok(())
}

/// `--follow`: reads the live feed, printing each line and then recording its token (in
/// `--state` if given); reconnects with back-off after any failure, resuming after the last
/// token handled. Ends on SIGINT or SIGTERM, between lines.
pub async fn follow(args: &QueryArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let Some(url) = &args.server else { bail!("no --server") };
    let server = parse_server(url)?;
    let mut token: Option<u64> = args.token;
    if token.is_none()
        && let Some(state) = &args.state
        && let Ok(text) = std::fs::read_to_string(state)
    {
        token = Some(text.trim().parse().with_context(|| format!("{}: not a token", state.display()))?);
    }
    let stop = {
        let t = tokio_util::sync::CancellationToken::new();
        let c = t.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            c.cancel();
        });
        t
    };
    let mut backoff = std::time::Duration::from_millis(250);
    loop {
        let mut path = "/feed/v1/rrsets?swclient=dnsledger".to_string();
        if let Some(t) = token {
            path += &format!("&after={t}");
        }
        if let Some(z) = &args.zone {
            path += &format!("&zone={}", utf8_percent_encode(z, SEGMENT));
        }
        if let Some(t) = &args.rrtype {
            path += &format!("&rrtype={}", utf8_percent_encode(t, SEGMENT));
        }
        let mut delivered = false;
        let result = tokio::select! {
            r = follow_once(&server, &path, args, &mut token, &mut delivered, out) => r,
            _ = stop.cancelled() => return Ok(()),
        };
        if delivered {
            backoff = std::time::Duration::from_millis(250);
        }
        match result {
            Ok(()) => eprintln!("query: the feed ended; reconnecting"),
            Err(e) if e.to_string().starts_with("refused") => return Err(e),
            Err(e) => eprintln!("query: feed: {e:#}; reconnecting in {backoff:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

async fn follow_once(
    server: &Server,
    path: &str,
    args: &QueryArgs,
    token: &mut Option<u64>,
    delivered: &mut bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let save = |seq: u64| -> anyhow::Result<()> {
        if let Some(state) = &args.state {
            let tmp = state.with_extension("tmp");
            std::fs::write(&tmp, format!("{seq}\n")).with_context(|| format!("{}", tmp.display()))?;
            std::fs::rename(&tmp, state).with_context(|| format!("{}", state.display()))?;
        }
        Ok(())
    };
    let resp = get(server, path, args.key.as_deref(), args.ca.as_deref()).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if status.is_client_error() {
        bail!("refused: {status}: {}", error_text(&mut body).await?);
    }
    if !status.is_success() {
        bail!("{status}");
    }
    let mut pending: Vec<u8> = Vec::new();
    // The server sends at least a keep-alive line every 15 s; silence means a dead connection.
    while let Some(chunk) = tokio::time::timeout(std::time::Duration::from_secs(45), next_chunk(&mut body))
        .await
        .map_err(|_| anyhow::anyhow!("no data for 45 s"))??
    {
        *delivered = true;
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let text = std::str::from_utf8(&line).context("feed line is not UTF-8")?.trim();
            let v: serde_json::Value = serde_json::from_str(text).with_context(|| format!("feed line: {text:.200}"))?;
            match v["cond"].as_str() {
                Some("begin") | Some("ongoing") => {
                    // Where the server is: recorded, so that a quiet filter does not make a
                    // reconnect rescan (or, without state, start from "now" again).
                    if let Some(t) = v["token"].as_u64()
                        && token.is_none_or(|old| t > old)
                    {
                        *token = Some(t);
                        save(t)?;
                    }
                    continue;
                }
                Some("gap") => {
                    eprintln!("query: feed: {}", v["msg"].as_str().unwrap_or("entries were missed"));
                    continue;
                }
                Some("failed") => bail!("{}", v["msg"].as_str().unwrap_or("the feed failed")),
                Some(_) => continue,
                None => {}
            }
            let Some(seq) = v["token"].as_u64() else { bail!("feed line without a token: {text:.200}") };
            match (args.format(), v["type"].as_str()) {
                (super::Format::Json, _) => writeln!(out, "{text}")?,
                (_, Some("domain")) => {
                    writeln!(out, "{seq} domain {} {}", v["domain"].as_str().unwrap_or(""), v["time_first"])?
                }
                _ => {
                    let o = &v["obj"];
                    let rdata: Vec<&str> = o["rdata"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|d| d.as_str()).collect())
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{seq} rrset {} {} {}",
                        o["rrname"].as_str().unwrap_or(""),
                        o["rrtype"].as_str().unwrap_or(""),
                        rdata.join(" | ")
                    )?
                }
            }
            out.flush()?;
            *token = Some(seq);
            save(seq)?;
        }
        if pending.len() > MAX_LINE {
            bail!("a feed line longer than {MAX_LINE} bytes");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        q: QueryArgs,
    }

    #[test]
    fn paths_are_what_dnsdbq_sends() {
        let args = |a: &[&str]| Cli::parse_from([&["q", "--server", "http://h:1"], a].concat()).q;
        let a = args(&["-l", "5", "-c", "-A", "1704067200", "-B", "1735689600", "rrset", "*.example.com"]);
        assert_eq!(
            request_path(&a, false),
            "/dnsdb/v2/lookup/rrset/name/%2A.example.com?swclient=dnsledger&limit=5&time_first_after=1704067200&time_last_before=1735689600"
        );
        let a = args(&["rdata", "ip", "2001:db8::/48"]);
        assert_eq!(request_path(&a, true), "/dnsdb/v2/summarize/rdata/ip/2001%3Adb8%3A%3A%2C48?swclient=dnsledger");
        let a = args(&["rrset", "example.com", "--", "MX", "example.com"]);
        assert!(request_path(&a, false).starts_with("/dnsdb/v2/lookup/rrset/name/example.com/MX/example.com?"));
        assert!(parse_server("ftp://x").is_err());
        let s = parse_server("http://[::1]").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 80));
        let s = parse_server("https://api.example:8443/dnsdb/v2").unwrap();
        assert_eq!((s.tls, s.host.as_str(), s.port, s.base.as_str()), (true, "api.example", 8443, ""));
    }
}
