//! `dnsledger query`: lookups in a local store, printed as COF NDJSON or aligned text.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hickory_proto::rr::RecordType;

use crate::sensor::Cidr;
use crate::store::{Entry, Fences, Lookup, NamePattern, Store};

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Store directory (the sensor's `db`).
    #[arg(long)]
    pub db: PathBuf,
    /// Print COF NDJSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Most results.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub limit: usize,
    /// Only RRsets first seen after this time (epoch seconds; negative: seconds before now).
    #[arg(long, global = true, allow_hyphen_values = true)]
    pub first_after: Option<i64>,
    /// Only RRsets first seen before this time.
    #[arg(long, global = true, allow_hyphen_values = true)]
    pub first_before: Option<i64>,
    /// Only RRsets last seen after this time.
    #[arg(long, global = true, allow_hyphen_values = true)]
    pub last_after: Option<i64>,
    /// Only RRsets last seen before this time.
    #[arg(long, global = true, allow_hyphen_values = true)]
    pub last_before: Option<i64>,
    #[command(subcommand)]
    pub what: QueryWhat,
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

fn fence(v: Option<i64>, now: u64) -> Option<u64> {
    v.map(|t| if t < 0 { now.saturating_sub(t.unsigned_abs()) } else { t as u64 })
}

pub fn run(args: &QueryArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let fences = Fences {
        first_after: fence(args.first_after, now),
        first_before: fence(args.first_before, now),
        last_after: fence(args.last_after, now),
        last_before: fence(args.last_before, now),
    };
    if !args.db.is_dir() {
        bail!("no store at {}", args.db.display());
    }
    let store = Store::open(&args.db)?;
    let entries = match &args.what {
        QueryWhat::Rrset { name, rrtype, bailiwick } => {
            let owner = NamePattern::parse(name).map_err(anyhow::Error::msg)?;
            let rrtype = rrtype.as_deref().filter(|t| !t.eq_ignore_ascii_case("ANY")).map(parse_rrtype).transpose()?;
            let bailiwick = bailiwick.as_deref().map(absolute);
            store.lookup(&Lookup::Rrset { owner, rrtype, bailiwick }, &fences, args.limit)?
        }
        QueryWhat::Rdata(RdataWhat::Ip { addr }) => {
            let (lo, hi) = parse_ip_range(addr)?;
            store.lookup(&Lookup::RdataIp { lo, hi }, &fences, args.limit)?
        }
        QueryWhat::Rdata(RdataWhat::Name { name, rrtype }) => {
            let target = NamePattern::parse(name).map_err(anyhow::Error::msg)?;
            let rrtype = rrtype.as_deref().filter(|t| !t.eq_ignore_ascii_case("ANY")).map(parse_rrtype).transpose()?;
            store.lookup(&Lookup::RdataName { target, rrtype }, &fences, args.limit)?
        }
    };
    print(&entries, args.json, out)?;
    Ok(())
}

/// COF lines, or text: one block per RRset like dnsdbq's presentation output.
pub fn print(entries: &[Entry], json: bool, out: &mut impl Write) -> std::io::Result<()> {
    for e in entries {
        if json {
            writeln!(out, "{}", e.to_cof())?;
        } else {
            writeln!(out, ";; bailiwick: {}", e.rrset.bailiwick)?;
            writeln!(out, ";;     count: {}", e.count)?;
            writeln!(
                out,
                ";; first seen: {}",
                crate::dnstap::format_time(crate::dnstap::Timestamp { sec: e.first, nsec: 0 }, ' ')
            )?;
            writeln!(
                out,
                ";;  last seen: {}",
                crate::dnstap::format_time(crate::dnstap::Timestamp { sec: e.last, nsec: 0 }, ' ')
            )?;
            let t = crate::dns::rrtype_name(e.rrset.rrtype.into());
            let width = e.rrset.rrname.len().max(24);
            for d in &e.rrset.rdata {
                writeln!(out, "{:<width$}  {:<6} {}", e.rrset.rrname, t, d)?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
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
}
