//! Raw HTTP request -> validated query. Everything a client sends (path segments, parameters)
//! is checked here, before the store is touched; a bad query becomes an [`ApiError`] with a
//! status and a message naming what was wrong.

use std::net::IpAddr;

use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, Restrict};
use percent_encoding::percent_decode_str;

use crate::sensor::Cidr;
use crate::store::{Fences, Lookup, NamePattern};

/// A refusal: HTTP status and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub msg: String,
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> Self {
        Self { status: 400, msg: msg.into() }
    }
    pub fn status(status: u16, msg: impl Into<String>) -> Self {
        Self { status, msg: msg.into() }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Ping,
    RateLimit,
    /// DNSDB v2 `lookup` (SAF stream of COF objects) or `summarize` (one summary object).
    Dnsdb {
        summarize: bool,
        lookup: Lookup,
    },
    /// Plain COF NDJSON, with sensor ids.
    Cof(Lookup),
    /// CIRCL `/pdns/query/{q}`: a name (exact or wildcard), an address or a prefix.
    Circl(Lookup),
    /// How many index entries a lookup would examine (an upper bound on its results).
    Estimate(Lookup),
    /// The live feed of new RRsets and new domains.
    Feed,
}

/// Parameters of the live feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedParams {
    /// Resume after this token (absent: from now on; 0: from the oldest entry kept).
    pub after: Option<u64>,
    /// Only names at or below this zone (absolute, lower case).
    pub zone: Option<String>,
    /// Only RRsets of this type (new domains are not sent then).
    pub rrtype: Option<u16>,
    pub rrsets: bool,
    pub domains: bool,
}

pub fn parse_feed_params(query: Option<&str>) -> Result<FeedParams, ApiError> {
    let mut p = FeedParams { after: None, zone: None, rrtype: None, rrsets: true, domains: true };
    for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v)?;
        match k {
            "after" => {
                p.after =
                    Some(v.parse().map_err(|_| ApiError::bad(format!("`after={v}`: expected a token (a number)")))?)
            }
            "zone" => p.zone = Some(exact_name(&v)?),
            "rrtype" => p.rrtype = rrtype(&v)?,
            "type" => match v.as_str() {
                "rrset" => p.domains = false,
                "domain" => p.rrsets = false,
                _ => return Err(ApiError::bad(format!("`type={v}`: rrset or domain"))),
            },
            "swclient" | "version" => {}
            other => return Err(ApiError::bad(format!("unknown parameter `{other}`"))),
        }
    }
    if p.rrtype.is_some() {
        p.domains = false;
    }
    Ok(p)
}

/// Query parameters, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Results at most (0 in the request means "the server's maximum").
    pub limit: u64,
    pub offset: u64,
    pub fences: Fences,
    pub max_count: Option<u64>,
    pub humantime: bool,
    /// `false`: one row per RRset and UTC day (DNSDB's `aggr=false`).
    pub aggr: bool,
    /// Resume strictly after this position (from a previous response's cursor).
    pub cursor: Option<Vec<u8>>,
    /// `aggr=false` pages cut inside an RRset's rows: the RRset's position and the day (days
    /// since 1970) of the last row sent; RRsets before that position are skipped (added since),
    /// and so are its rows of that day and before.
    pub cursor_rows: Option<(Vec<u8>, u64)>,
}

/// Server limits that parameters are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_limit: u64,
    pub max_limit: u64,
    pub max_offset: u64,
}

/// Parses a path (percent-encoded, as received) into an endpoint.
pub fn parse_path(path: &str) -> Result<Endpoint, ApiError> {
    let raw: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match raw.as_slice() {
        ["dnsdb", "v2", "ping"] => Ok(Endpoint::Ping),
        ["dnsdb", "v2", "rate_limit"] => Ok(Endpoint::RateLimit),
        ["feed", "v1", "rrsets"] => Ok(Endpoint::Feed),
        ["dnsdb", "v2", verb @ ("lookup" | "summarize"), rest @ ..] => {
            let rest = rest.iter().map(|s| decode(s)).collect::<Result<Vec<_>, _>>()?;
            Ok(Endpoint::Dnsdb { summarize: *verb == "summarize", lookup: parse_lookup(&rest)? })
        }
        ["cof", "v1", "lookup", rest @ ..] => {
            let rest = rest.iter().map(|s| decode(s)).collect::<Result<Vec<_>, _>>()?;
            Ok(Endpoint::Cof(parse_lookup(&rest)?))
        }
        ["dnsledger", "v1", "estimate", rest @ ..] => {
            let rest = rest.iter().map(|s| decode(s)).collect::<Result<Vec<_>, _>>()?;
            Ok(Endpoint::Estimate(parse_lookup(&rest)?))
        }
        ["pdns", "query", _, ..] => {
            // pypdns sends the query unquoted, so a prefix's slash splits it.
            let q = raw[2..].iter().map(|s| decode(s)).collect::<Result<Vec<_>, _>>()?.join("/");
            Ok(Endpoint::Circl(circl_lookup(&q)?))
        }
        _ => Err(ApiError::status(404, format!("no such endpoint: {path}"))),
    }
}

fn decode(s: &str) -> Result<String, ApiError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::bad("a path segment is not UTF-8 after percent-decoding"))
}

/// `rrset/name/OWNER[/TYPE[/BAILIWICK]]`, `rrset/raw/HEX[/TYPE[/BAILIWICK]]`,
/// `rdata/name/NAME[/TYPE]`, `rdata/ip/ADDR|ADDR,LEN|LO-HI`, `rdata/raw/HEX[/TYPE]`.
pub fn parse_lookup(seg: &[String]) -> Result<Lookup, ApiError> {
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["rrset", "name", owner, rest @ ..] if rest.len() <= 2 => Ok(Lookup::Rrset {
            owner: pattern(owner)?,
            rrtype: rest.first().map(|t| rrtype(t)).transpose()?.flatten(),
            bailiwick: rest.get(1).map(|b| exact_name(b)).transpose()?,
        }),
        ["rrset", "raw", hex, rest @ ..] if rest.len() <= 2 => {
            let bytes = unhex(hex)?;
            let mut d = BinDecoder::new(&bytes);
            let name =
                Name::read(&mut d).map_err(|e| ApiError::bad(format!("`{hex}` is not a wire-format name: {e}")))?;
            if !d.is_empty() {
                return Err(ApiError::bad(format!("`{hex}`: bytes after the wire-format name")));
            }
            Ok(Lookup::Rrset {
                owner: NamePattern::Exact(crate::dns::name_text(&name.to_lowercase())),
                rrtype: rest.first().map(|t| rrtype(t)).transpose()?.flatten(),
                bailiwick: rest.get(1).map(|b| exact_name(b)).transpose()?,
            })
        }
        ["rdata", "name", name, rest @ ..] if rest.len() <= 1 => Ok(Lookup::RdataName {
            target: pattern(name)?,
            rrtype: rest.first().map(|t| rrtype(t)).transpose()?.flatten(),
        }),
        ["rdata", "ip", ip] => {
            let (lo, hi) = ip_range(ip)?;
            Ok(Lookup::RdataIp { lo, hi })
        }
        ["rdata", "raw", hex, rest @ ..] if rest.len() <= 1 => {
            raw_rdata(&unhex(hex)?, rest.first().map(|t| rrtype(t)).transpose()?.flatten())
        }
        [first, ..] if !["rrset", "rdata"].contains(first) => {
            Err(ApiError::status(404, format!("no such lookup: {first} (rrset or rdata)")))
        }
        ["rrset" | "rdata", kind, ..] if !["name", "raw", "ip"].contains(kind) => {
            Err(ApiError::status(404, format!("no such lookup: {}/{kind}", s[0])))
        }
        [] | [_] | [_, _] => Err(ApiError::status(404, "incomplete lookup path")),
        _ => Err(ApiError::bad(format!("too many or misplaced path segments in `{}`", s.join("/")))),
    }
}

/// A CIRCL query: an address, a prefix, or a name (wildcards allowed).
fn circl_lookup(q: &str) -> Result<Lookup, ApiError> {
    if (q.parse::<IpAddr>().is_ok() || (q.contains('/') && q.contains(|c: char| c == ':' || c.is_ascii_digit())))
        && let Ok((lo, hi)) = ip_range(q)
    {
        return Ok(Lookup::RdataIp { lo, hi });
    }
    Ok(Lookup::Rrset { owner: pattern(q)?, rrtype: None, bailiwick: None })
}

/// Names longer than this (in presentation) are refused before any parsing.
const MAX_NAME_TEXT: usize = 1024;

/// An owner or target: exact, `*.zone` or `prefix.*`, each part a valid DNS name.
pub fn pattern(s: &str) -> Result<NamePattern, ApiError> {
    if s.len() > MAX_NAME_TEXT {
        return Err(ApiError::bad("name too long"));
    }
    let t = s.trim();
    if t == "*" || t == "*." {
        return Err(ApiError::bad(
            "a bare `*` matches everything; give a zone (*.example.com) or a prefix (www.example.*)",
        ));
    }
    let p = NamePattern::parse(t).map_err(ApiError::bad)?;
    let check = |n: &str| {
        Name::from_ascii(n).map_err(|e| ApiError::bad(format!("`{s}` is not a valid DNS name: {e}"))).map(|_| ())
    };
    match &p {
        NamePattern::Exact(n) | NamePattern::Below(n) => check(n)?,
        NamePattern::RightWildcard(prefix) => check(prefix)?,
    }
    if matches!(&p, NamePattern::Below(z) if z == ".") {
        return Err(ApiError::bad("`*.` matches every name; give a zone"));
    }
    Ok(p)
}

/// An exact, absolute, lower-case name (bailiwicks).
fn exact_name(s: &str) -> Result<String, ApiError> {
    match pattern(s)? {
        NamePattern::Exact(n) => Ok(n),
        _ => Err(ApiError::bad(format!("`{s}`: no wildcards here"))),
    }
}

/// A type mnemonic, `TYPEnnn` or `ANY` (= none).
pub fn rrtype(s: &str) -> Result<Option<u16>, ApiError> {
    if s.eq_ignore_ascii_case("ANY") {
        return Ok(None);
    }
    if s.eq_ignore_ascii_case("ANY-DNSSEC") {
        return Err(ApiError::bad("ANY-DNSSEC: DNSSEC records are not kept by this server"));
    }
    crate::query::parse_rrtype(s).map(Some).map_err(|e| ApiError::bad(e.to_string()))
}

/// `ADDR`, `ADDR,LEN` (or `/LEN`) or `LO-HI`.
pub fn ip_range(s: &str) -> Result<([u8; 16], [u8; 16]), ApiError> {
    crate::query::parse_ip_range(s).map_err(|e| ApiError::bad(e.to_string()))
}

const MAX_HEX: usize = 2 * 65_535;

/// Hex digits to bytes (raw names and rdata, cursors).
pub fn unhex(s: &str) -> Result<Vec<u8>, ApiError> {
    if s.len() > MAX_HEX || !s.len().is_multiple_of(2) || s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad("expected an even number of hex digits"));
    }
    let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
    Ok(s.as_bytes().chunks(2).map(|p| digit(p[0]) << 4 | digit(p[1])).collect())
}

/// Raw rdata: what the store's indexes can answer (addresses and names in rdata).
fn raw_rdata(bytes: &[u8], rrtype: Option<u16>) -> Result<Lookup, ApiError> {
    let ip_exact = |ip: IpAddr| {
        let c = Cidr { addr: ip, len: if ip.is_ipv4() { 32 } else { 128 } };
        let (lo, hi) = c.range();
        Lookup::RdataIp { lo, hi }
    };
    let t = match rrtype {
        Some(t) => RecordType::from(t),
        None => match bytes.len() {
            4 => RecordType::A,
            16 => RecordType::AAAA,
            _ => RecordType::NS,
        },
    };
    let mut d = BinDecoder::new(bytes);
    let len = Restrict::new(bytes.len() as u16);
    let rdata = RData::read(&mut d, t, len).map_err(|e| ApiError::bad(format!("raw rdata as {t}: {e}")))?;
    match &rdata {
        RData::A(a) => Ok(ip_exact(IpAddr::V4(a.0))),
        RData::AAAA(a) => Ok(ip_exact(IpAddr::V6(a.0))),
        _ => {
            let text = crate::dns::rdata_text(&rdata);
            let code = u16::from(t);
            match crate::store::rdata_target(code, &text) {
                Some(target) => Ok(Lookup::RdataName {
                    target: NamePattern::Exact(target),
                    rrtype: if rrtype.is_some() { Some(code) } else { None },
                }),
                None => Ok(Lookup::RdataValue { rrtype: code, rdata: text }),
            }
        }
    }
}

/// Parses the query string against the server's limits.
pub fn parse_params(query: Option<&str>, limits: Limits, now: u64) -> Result<Params, ApiError> {
    let mut p = Params {
        limit: limits.default_limit,
        offset: 0,
        fences: Fences::default(),
        max_count: None,
        humantime: false,
        aggr: true,
        cursor: None,
        cursor_rows: None,
    };
    let mut seen = std::collections::HashSet::new();
    for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(&k.replace('+', " "))?;
        let v = decode(&v.replace('+', " "))?;
        if !seen.insert(k.clone()) {
            return Err(ApiError::bad(format!("parameter `{k}` given twice")));
        }
        let int =
            |v: &str| v.trim().parse::<i64>().map_err(|_| ApiError::bad(format!("`{k}={v}`: expected an integer")));
        let time = |v: &str| -> Result<Option<u64>, ApiError> {
            let t = int(v)?;
            Ok(Some(if t < 0 { now.saturating_sub(t.unsigned_abs()) } else { t as u64 }))
        };
        let count = |v: &str| -> Result<u64, ApiError> {
            let n = int(v)?;
            u64::try_from(n).map_err(|_| ApiError::bad(format!("`{k}={v}`: must not be negative")))
        };
        let boolean = |v: &str| match v.to_ascii_lowercase().as_str() {
            "" | "1" | "t" | "true" | "y" | "yes" => Ok(true),
            "0" | "f" | "false" | "n" | "no" => Ok(false),
            _ => Err(ApiError::bad(format!("`{k}={v}`: expected true or false"))),
        };
        match k.as_str() {
            "limit" => {
                let n = count(&v)?;
                if n > limits.max_limit {
                    return Err(ApiError::bad(format!(
                        "limit {n} is above this server's maximum, {}",
                        limits.max_limit
                    )));
                }
                p.limit = if n == 0 { limits.max_limit } else { n };
            }
            "offset" => {
                let n = count(&v)?;
                if n > limits.max_offset {
                    return Err(ApiError::status(
                        416,
                        format!(
                            "offset {n} is above this server's maximum, {}; page with the cursor",
                            limits.max_offset
                        ),
                    ));
                }
                p.offset = n;
            }
            "time_first_before" => p.fences.first_before = time(&v)?,
            "time_first_after" => p.fences.first_after = time(&v)?,
            "time_last_before" => p.fences.last_before = time(&v)?,
            "time_last_after" => p.fences.last_after = time(&v)?,
            "max_count" => p.max_count = Some(count(&v)?),
            "humantime" => p.humantime = boolean(&v)?,
            "aggr" => p.aggr = boolean(&v)?,
            "cursor" => {
                (p.cursor, p.cursor_rows) =
                    parse_cursor(&v).map_err(|_| ApiError::bad("`cursor`: not a cursor from this server"))?
            }
            // Client identification that dnsdbq and dnsdb2 send with every query.
            "swclient" | "version" => {}
            other => return Err(ApiError::bad(format!("unknown parameter `{other}`"))),
        }
    }
    Ok(p)
}

/// Hex of a position, for cursors.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cursor: `POS` (resume after this position) or, for a page of per-day rows that ended
/// inside an RRset, `[POS]-AT-DAY` (resume after POS, or from the start without it, at the
/// RRset at position AT, with its rows after day DAY).
pub type Cursor = (Option<Vec<u8>>, Option<(Vec<u8>, u64)>);

/// The cursor of a response: see [`Cursor`].
pub fn cursor_string(after: &[u8], rows: Option<(&[u8], u64)>) -> String {
    match rows {
        None => hex(after),
        Some((at, n)) => format!("{}-{}-{n}", hex(after), hex(at)),
    }
}

/// Parses what [`cursor_string`] makes.
pub fn parse_cursor(s: &str) -> Result<Cursor, ApiError> {
    let parts: Vec<&str> = s.split('-').collect();
    match parts[..] {
        [pos] => Ok((Some(unhex(pos)?), None)),
        [after, at, n] => {
            let after = if after.is_empty() { None } else { Some(unhex(after)?) };
            let n = n.parse().map_err(|_| ApiError::bad("bad cursor"))?;
            Ok((after, Some((unhex(at)?, n))))
        }
        _ => Err(ApiError::bad("bad cursor")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { default_limit: 10_000, max_limit: 1_000_000, max_offset: 1_000_000 };

    fn lookup(path: &str) -> Result<Lookup, ApiError> {
        match parse_path(path)? {
            Endpoint::Dnsdb { lookup, .. } | Endpoint::Cof(lookup) | Endpoint::Circl(lookup) => Ok(lookup),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dnsdbq_paths_parse() {
        let l = lookup("/dnsdb/v2/lookup/rrset/name/%2A.Example.com/A/example.com").unwrap();
        assert_eq!(
            l,
            Lookup::Rrset {
                owner: NamePattern::Below("example.com.".into()),
                rrtype: Some(1),
                bailiwick: Some("example.com.".into())
            }
        );
        assert!(matches!(lookup("/dnsdb/v2/lookup/rrset/name/www.example.%2A").unwrap(),
            Lookup::Rrset { owner: NamePattern::RightWildcard(p), .. } if p == "www.example."));
        for ip in ["192.0.2.0%2C24", "192.0.2.0,24", "2001%3Adb8%3A%3A,48", "192.0.2.1-192.0.2.9"] {
            assert!(matches!(lookup(&format!("/dnsdb/v2/lookup/rdata/ip/{ip}")).unwrap(), Lookup::RdataIp { .. }));
        }
        // `\x03sio\x02io\x00` and an A record's 4 bytes.
        assert!(matches!(lookup("/dnsdb/v2/lookup/rrset/raw/0373696f02696f00/A").unwrap(),
            Lookup::Rrset { owner: NamePattern::Exact(n), rrtype: Some(1), .. } if n == "sio.io."));
        // Raw names are written as the sensor stores them: `xn--` kept, other bytes escaped.
        assert!(matches!(lookup("/dnsdb/v2/lookup/rrset/raw/0d786e2d2d62636865722d6b766102696f00").unwrap(),
            Lookup::Rrset { owner: NamePattern::Exact(n), .. } if n == "xn--bcher-kva.io."));
        assert!(matches!(lookup("/dnsdb/v2/lookup/rrset/raw/03612062026f7300").unwrap(),
            Lookup::Rrset { owner: NamePattern::Exact(n), .. } if n == "a\\032b.os."));
        // Unicode names are looked up in their IDNA form.
        assert!(matches!(lookup("/dnsdb/v2/lookup/rrset/name/b%C3%BCcher.io").unwrap(),
            Lookup::Rrset { owner: NamePattern::Exact(n), .. } if n == "xn--bcher-kva.io."));
        assert!(matches!(lookup("/dnsdb/v2/lookup/rdata/raw/c0000201").unwrap(), Lookup::RdataIp { .. }));
        // Other types: the rdata in the store's presentation format (`v=spf1 -all` as TXT).
        assert_eq!(
            lookup("/dnsdb/v2/lookup/rdata/raw/0b763d73706631202d616c6c/TXT").unwrap(),
            Lookup::RdataValue { rrtype: 16, rdata: "\"v=spf1 -all\"".into() }
        );
        assert!(matches!(
            lookup("/dnsdb/v2/summarize/rdata/name/ns1.example.com/NS").unwrap(),
            Lookup::RdataName { rrtype: Some(2), .. }
        ));
        assert!(matches!(lookup("/pdns/query/192.0.2.0/24").unwrap(), Lookup::RdataIp { .. }));
        assert!(matches!(lookup("/pdns/query/www.example.com").unwrap(), Lookup::Rrset { .. }));
    }

    #[test]
    fn bad_queries_are_400_with_a_reason() {
        for path in [
            "/dnsdb/v2/lookup/rrset/name/*",
            "/dnsdb/v2/lookup/rrset/name/%2A",
            "/dnsdb/v2/lookup/rrset/name/*.",
            "/dnsdb/v2/lookup/rrset/name/a..b.com",
            "/dnsdb/v2/lookup/rrset/name/w*w.example.com",
            "/dnsdb/v2/lookup/rrset/name/www.example.com/NOTATYPE",
            "/dnsdb/v2/lookup/rdata/ip/300.1.2.3",
            "/dnsdb/v2/lookup/rdata/ip/192.0.2.0,33",
            "/dnsdb/v2/lookup/rdata/ip/192.0.2.9-192.0.2.1",
            "/dnsdb/v2/lookup/rdata/raw/zz",
            "/dnsdb/v2/lookup/rdata/raw/a%C3%A9b",
            "/dnsdb/v2/lookup/rdata/raw/+f",
            // A TXT string of 10 bytes with 2 there.
            "/dnsdb/v2/lookup/rdata/raw/0a0b0c/TXT",
            "/dnsdb/v2/lookup/rrset/raw/03616263",
            "/dnsdb/v2/lookup/rrset/name/a/A/b/c",
        ] {
            let e = lookup(path).unwrap_err();
            assert_eq!(e.status, 400, "{path}: {e:?}");
            assert!(!e.msg.is_empty());
        }
        let long = format!("/dnsdb/v2/lookup/rrset/name/{}.com", "a".repeat(64));
        assert_eq!(lookup(&long).unwrap_err().status, 400);
        assert_eq!(parse_path("/dnsdb/v2/lookup/nothing/name/x").unwrap_err().status, 404);
        assert_eq!(parse_path("/nope").unwrap_err().status, 404);
    }

    #[test]
    fn parameters_are_checked() {
        let p = parse_params(Some("swclient=dnsdbq&version=2.6.4&limit=5&time_first_after=-100&aggr=t"), LIMITS, 1000)
            .unwrap();
        assert_eq!((p.limit, p.fences.first_after), (5, Some(900)));
        assert_eq!(parse_params(Some("limit=0"), LIMITS, 0).unwrap().limit, 1_000_000);
        assert_eq!(parse_params(Some("offset=2000000"), LIMITS, 0).unwrap_err().status, 416);
        assert!(!parse_params(Some("aggr=f"), LIMITS, 0).unwrap().aggr);
        for bad in ["limit=2000000", "limit=-1", "limit=x", "aggr=maybe", "bogus=1", "limit=1&limit=2", "cursor=zz"] {
            assert_eq!(parse_params(Some(bad), LIMITS, 0).unwrap_err().status, 400, "{bad}");
        }
        assert!(parse_params(Some("humantime=True&aggr=True"), LIMITS, 0).unwrap().humantime);
    }
}
