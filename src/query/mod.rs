//! `dnsledger query`: lookups in a local store or on a server's API (`remote`), printed as
//! dnsdbq-like text, COF NDJSON or CSV.

pub mod remote;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hickory_proto::rr::RecordType;

use crate::sensor::Cidr;
use crate::store::{Entry, Fences, Lookup, NamePattern, Store};

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Store directory (a sensor's `db`, or a collector's), read directly.
    #[arg(long, conflicts_with = "server", required_unless_present = "server")]
    pub db: Option<PathBuf>,
    /// A dnsledger (or DNSDB v2) API, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: Option<String>,
    /// API key for --server (or the DNSLEDGER_API_KEY environment variable).
    #[arg(long, env = "DNSLEDGER_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// CA certificate (PEM) that an https server's certificate chains to.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Output: text (dnsdbq-like blocks), json (COF NDJSON) or csv.
    #[arg(long, short = 'p', global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Same as --format json.
    #[arg(long, short = 'j', global = true)]
    pub json: bool,
    /// Sort by this field (descending with --reverse).
    #[arg(long, short = 'k', global = true, value_enum)]
    pub sort: Option<SortKey>,
    #[arg(long, global = true, requires = "sort")]
    pub reverse: bool,
    /// Most results (default: 10,000 locally, the server's default otherwise).
    #[arg(long, short = 'l', global = true)]
    pub limit: Option<usize>,
    /// Skip this many results first (servers only).
    #[arg(long, short = 'O', global = true, default_value_t = 0)]
    pub offset: u64,
    /// Only RRsets first seen after this time: epoch seconds, `-SECONDS` or `-N[smhdw]` ago, or
    /// `YYYY-MM-DD[THH:MM:SS]` (UTC).
    #[arg(long, global = true, allow_hyphen_values = true, value_parser = parse_time)]
    pub first_after: Option<i64>,
    /// Only RRsets first seen before this time.
    #[arg(long, global = true, allow_hyphen_values = true, value_parser = parse_time)]
    pub first_before: Option<i64>,
    /// Only RRsets last seen after this time.
    #[arg(long, global = true, allow_hyphen_values = true, value_parser = parse_time)]
    pub last_after: Option<i64>,
    /// Only RRsets last seen before this time.
    #[arg(long, global = true, allow_hyphen_values = true, value_parser = parse_time)]
    pub last_before: Option<i64>,
    /// dnsdbq's -A: seen after (overlap: last seen after; with --complete, first seen after).
    #[arg(long, short = 'A', global = true, allow_hyphen_values = true, value_parser = parse_time)]
    pub after: Option<i64>,
    /// dnsdbq's -B: seen before (overlap: first seen before; with --complete, last seen
    /// before).
    #[arg(long, short = 'B', global = true, allow_hyphen_values = true, value_parser = parse_time)]
    pub before: Option<i64>,
    /// dnsdbq's -c: -A/-B require the whole time span inside the fences.
    #[arg(long, short = 'c', global = true)]
    pub complete: bool,
    /// Resume after the cursor a limited answer gave.
    #[arg(long, global = true)]
    pub cursor: Option<String>,
    /// One summary (count, results, first and last seen) instead of the RRsets.
    #[arg(long, global = true)]
    pub summarize: bool,
    /// Follow the server's live feed of new RRsets and new domains (--server only), resuming
    /// after reconnects; no lookup is given then.
    #[arg(long, requires = "server", conflicts_with_all = ["summarize", "sort"])]
    pub follow: bool,
    /// --follow: start after this token (0: the oldest entry the server keeps; default: now,
    /// or the token in --state).
    #[arg(long, requires = "follow")]
    pub token: Option<u64>,
    /// --follow: keep the last token handled in this file and resume from it.
    #[arg(long, requires = "follow")]
    pub state: Option<PathBuf>,
    /// --follow: only names at or below this zone.
    #[arg(long, requires = "follow")]
    pub zone: Option<String>,
    /// --follow: only RRsets of this type.
    #[arg(long, requires = "follow")]
    pub rrtype: Option<String>,
    #[command(subcommand)]
    pub what: Option<QueryWhat>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Csv,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    First,
    Last,
    Count,
    Name,
    Data,
}

#[derive(Subcommand, Debug)]
pub enum QueryWhat {
    /// RRsets by owner: NAME, *.ZONE or PREFIX.*, optionally one type and bailiwick.
    Rrset { name: String, rrtype: Option<String>, bailiwick: Option<String> },
    /// RRsets by rdata.
    #[command(subcommand)]
    Rdata(RdataWhat),
}

#[derive(Subcommand, Debug)]
pub enum RdataWhat {
    /// A/AAAA rdata: an address, a prefix (ADDR/LEN) or a range (LO-HI).
    Ip { addr: String },
    /// Names in rdata (NS, CNAME, PTR, DNAME, MX, SRV targets), optionally one type.
    Name { name: String, rrtype: Option<String> },
}

/// Parses an rrtype mnemonic (`A`, `mx`) or `TYPEnnn`.
pub fn parse_rrtype(s: &str) -> anyhow::Result<u16> {
    let upper = s.to_ascii_uppercase();
    if let Some(n) = upper.strip_prefix("TYPE") {
        return n.parse().with_context(|| format!("`{s}` is not a type"));
    }
    match upper.parse::<RecordType>() {
        Ok(RecordType::Unknown(_)) | Err(_) => bail!("`{s}` is not a DNS type (use a mnemonic like A or TYPE65280)"),
        Ok(t) => Ok(u16::from(t)),
    }
}

/// Parses `ADDR`, `ADDR/LEN`, `ADDR,LEN` (dnsdbq's spelling) or `LO-HI` into a 16-byte range.
pub fn parse_ip_range(s: &str) -> anyhow::Result<([u8; 16], [u8; 16])> {
    if let Some((lo, hi)) = s.split_once('-') {
        let lo: Cidr = lo.parse()?;
        let hi: Cidr = hi.parse()?;
        if lo.addr.is_ipv4() != hi.addr.is_ipv4() {
            bail!("`{s}`: both ends of a range must be the same family");
        }
        let (lo, hi) = (lo.range().0, hi.range().1);
        if lo > hi {
            bail!("`{s}`: the range ends before it starts");
        }
        return Ok((lo, hi));
    }
    let c: Cidr = s.replace(',', "/").parse()?;
    Ok(c.range())
}

/// `example.com` -> `example.com.` (lower case).
pub fn absolute(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') { n } else { n + "." }
}

/// Parses a time like dnsdbq: epoch seconds, `-SECONDS` or `-N[smhdw]` (ago),
/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS` (UTC). Relative times come back negative.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    if let Some(rel) = s.strip_prefix('-').or(Some(s)).filter(|r| r.len() > 1 && r.ends_with(['s', 'm', 'h', 'd', 'w']))
        && let Ok(n) = rel[..rel.len() - 1].parse::<i64>()
    {
        let unit = match rel.as_bytes()[rel.len() - 1] {
            b's' => 1,
            b'm' => 60,
            b'h' => 3600,
            b'd' => 86_400,
            _ => 604_800,
        };
        return n.checked_mul(unit).map(|v| -v).ok_or_else(|| format!("`{s}`: too far"));
    }
    let bad = || format!("`{s}`: expected epoch seconds, -N[smhdw] or YYYY-MM-DD[THH:MM:SS]");
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00:00"));
    let d: Vec<i64> = date.split('-').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let t: Vec<i64> = time.split(':').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let (&[y, mo, day], &[h, mi, sec]) = (&d[..], &t[..]) else { return Err(bad()) };
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..61).contains(&sec)
    {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + sec;
    if t < 0 { Err(bad()) } else { Ok(t) }
}

fn fence(v: Option<i64>, now: u64) -> Option<u64> {
    v.map(|t| if t < 0 { now.saturating_sub(t.unsigned_abs()) } else { t as u64 })
}

impl QueryArgs {
    /// The four fences, with dnsdbq's -A/-B mapped by its overlap or complete (-c) mode.
    pub fn fences(&self, now: u64) -> Fences {
        let mut f = Fences {
            first_after: fence(self.first_after, now),
            first_before: fence(self.first_before, now),
            last_after: fence(self.last_after, now),
            last_before: fence(self.last_before, now),
        };
        if self.complete {
            f.first_after = f.first_after.or(fence(self.after, now));
            f.last_before = f.last_before.or(fence(self.before, now));
        } else {
            f.last_after = f.last_after.or(fence(self.after, now));
            f.first_before = f.first_before.or(fence(self.before, now));
        }
        f
    }

    fn format(&self) -> Format {
        if self.json { Format::Json } else { self.format }
    }

    fn lookup(&self) -> anyhow::Result<Lookup> {
        let types =
            |t: &Option<String>| t.as_deref().filter(|t| !t.eq_ignore_ascii_case("ANY")).map(parse_rrtype).transpose();
        let Some(what) = &self.what else { bail!("what to look up: rrset NAME, rdata ip ADDR or rdata name NAME") };
        Ok(match what {
            QueryWhat::Rrset { name, rrtype, bailiwick } => Lookup::Rrset {
                owner: NamePattern::parse(name).map_err(anyhow::Error::msg)?,
                rrtype: types(rrtype)?,
                bailiwick: match bailiwick.as_deref().map(NamePattern::parse).transpose().map_err(anyhow::Error::msg)? {
                    None => None,
                    Some(NamePattern::Exact(zone)) => Some(zone),
                    Some(_) => bail!("a bailiwick is one zone, without wildcards"),
                },
            },
            QueryWhat::Rdata(RdataWhat::Ip { addr }) => {
                let (lo, hi) = parse_ip_range(addr)?;
                Lookup::RdataIp { lo, hi }
            }
            QueryWhat::Rdata(RdataWhat::Name { name, rrtype }) => Lookup::RdataName {
                target: NamePattern::parse(name).map_err(anyhow::Error::msg)?,
                rrtype: types(rrtype)?,
            },
        })
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Queries a local store.
pub fn run(args: &QueryArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let Some(db) = &args.db else { bail!("give --db DIR or --server URL") };
    let lookup = args.lookup()?;
    if !db.is_dir() {
        bail!("no store at {}", db.display());
    }
    let store = Store::open(db)?;
    let after = args
        .cursor
        .as_deref()
        .map(crate::api::request::unhex)
        .transpose()
        .map_err(|_| anyhow::anyhow!("--cursor: not a cursor"))?;
    if let Some(a) = &after {
        Store::check_cursor(&lookup, a)?;
    }
    let mut entries = Vec::new();
    let mut last = Vec::new();
    let ended = store.walk(&lookup, &args.fences(now()), after.as_deref(), u64::MAX, |pos, e| {
        if entries.len() == args.limit.unwrap_or(10_000) {
            return false;
        }
        entries.push(e);
        last = pos.to_vec();
        true
    })?;
    if matches!(ended, crate::store::Ended::Stopped(_)) {
        eprintln!("query: limited: more results: resume with --cursor {}", crate::api::request::hex(&last));
    }
    if args.summarize {
        let count: u64 = entries.iter().map(|e| e.count).sum();
        let first = entries.iter().map(|e| e.first).min().unwrap_or(0);
        let last = entries.iter().map(|e| e.last).max().unwrap_or(0);
        writeln!(out, "count: {count}; num_results: {}; first seen: {first}; last seen: {last}", entries.len())?;
        return Ok(());
    }
    finish(args, &mut entries, out)?;
    Ok(())
}

/// Sorts (if asked) and prints.
fn finish(args: &QueryArgs, entries: &mut [Entry], out: &mut impl Write) -> std::io::Result<()> {
    if let Some(key) = args.sort {
        entries.sort_by(|a, b| {
            let o = match key {
                SortKey::First => a.first.cmp(&b.first),
                SortKey::Last => a.last.cmp(&b.last),
                SortKey::Count => a.count.cmp(&b.count),
                SortKey::Name => crate::store::keys::reverse_name(&a.rrset.rrname)
                    .cmp(&crate::store::keys::reverse_name(&b.rrset.rrname)),
                SortKey::Data => a.rrset.rdata.cmp(&b.rrset.rdata),
            };
            if args.reverse { o.reverse() } else { o }
        });
    }
    if args.format() == Format::Csv {
        writeln!(out, "time_first,time_last,count,bailiwick,rrname,rrtype,rdata")?;
    }
    for e in entries.iter() {
        print_one(e, args.format(), out)?;
    }
    Ok(())
}

/// One RRset: a COF line, CSV rows (one per rdata, like dnsdbq) or a dnsdbq-like text block.
pub fn print_one(e: &Entry, format: Format, out: &mut impl Write) -> std::io::Result<()> {
    let t = crate::dns::rrtype_name(e.rrset.rrtype.into());
    let time = |s: u64| crate::dnstap::format_time(crate::dnstap::Timestamp { sec: s, nsec: 0 }, ' ');
    match format {
        Format::Json => writeln!(out, "{}", e.to_cof()),
        Format::Csv => {
            for d in &e.rrset.rdata {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    csv(&time(e.first)),
                    csv(&time(e.last)),
                    e.count,
                    csv(&e.rrset.bailiwick),
                    csv(&e.rrset.rrname),
                    t,
                    csv(d)
                )?;
            }
            Ok(())
        }
        Format::Text => {
            writeln!(out, ";; bailiwick: {}", e.rrset.bailiwick)?;
            writeln!(out, ";;     count: {}", e.count)?;
            writeln!(out, ";; first seen: {}", time(e.first))?;
            writeln!(out, ";;  last seen: {}", time(e.last))?;
            let width = e.rrset.rrname.len().max(24);
            for d in &e.rrset.rdata {
                writeln!(out, "{:<width$}  {:<6} {}", e.rrset.rrname, t, d)?;
            }
            writeln!(out)
        }
    }
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_ranges_parse_like_dnsdbq() {
        assert_eq!(parse_rrtype("mx").unwrap(), 15);
        assert_eq!(parse_rrtype("TYPE65280").unwrap(), 65280);
        assert!(parse_rrtype("BOGUS").is_err());
        let (lo, hi) = parse_ip_range("192.0.2.0,24").unwrap();
        assert_eq!((lo[15], hi[15]), (0, 255));
        let (lo, hi) = parse_ip_range("192.0.2.10-192.0.2.20").unwrap();
        assert_eq!((lo[15], hi[15]), (10, 20));
        assert!(parse_ip_range("192.0.2.1-2001:db8::1").is_err());
        assert!(parse_ip_range("192.0.2.20-192.0.2.10").is_err());
        assert!(parse_ip_range("not-an-ip").is_err());
    }

    #[test]
    fn times_parse_like_dnsdbq() {
        assert_eq!(parse_time("1704067200"), Ok(1_704_067_200));
        assert_eq!(parse_time("2024-01-01"), Ok(1_704_067_200));
        assert_eq!(parse_time("2025-01-01T00:00:01"), Ok(1_735_689_601));
        assert_eq!(parse_time("-3600"), Ok(-3600));
        assert_eq!(parse_time("1d"), Ok(-86_400));
        assert_eq!(parse_time("-2w"), Ok(-1_209_600));
        for bad in ["yesterday", "2024-13-01", "2024-01", "1x"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
