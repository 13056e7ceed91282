//! `resolver.toml`: unknown keys are rejected, every problem is reported at once with its key.
//! The optional `[sensor]` table is a whole sensor configuration (docs/CONFIGURATION.md) run in
//! the same process. Reference: docs/RESOLVER.md.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::sensor::config::{Raw as RawSensor, SensorConfig};
use crate::sensor::filter::Cidr;
use crate::sensor::zones::IANA_ROOT_SERVERS;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    recursion: RawRecursion,
    #[serde(default)]
    dnstap: RawDnstap,
    sensor: Option<RawSensor>,
    metrics: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    udp: Option<Vec<String>>,
    tcp: Option<Vec<String>>,
    tcp_idle_seconds: Option<u64>,
    tcp_max_connections: Option<usize>,
    max_inflight: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    allow: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecursion {
    root_hints: Option<PathBuf>,
    ns_cache_size: Option<usize>,
    response_cache_size: Option<u64>,
    answer_cache_size: Option<usize>,
    allow_servers: Option<Vec<String>>,
    deny_servers: Option<Vec<String>>,
    dnssec: Option<String>,
    qname_minimization: Option<String>,
    case_randomization: Option<bool>,
    source_v4: Option<String>,
    source_v6: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnstap {
    unix: Option<PathBuf>,
    tcp: Option<String>,
    identity: Option<String>,
    version: Option<String>,
    queue_frames: Option<usize>,
    resolver_queries: Option<bool>,
    client_messages: Option<bool>,
}

/// DNSSEC handling of the recursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dnssec {
    /// No DNSSEC records asked for (hickory's `SecurityUnaware`).
    Off,
    /// Validate with the built-in IANA trust anchor; bogus answers are SERVFAIL.
    Validate,
}

/// The validated resolver configuration.
#[derive(Debug)]
pub struct ResolverConfig {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tcp_idle: Duration,
    /// TCP connections open at once; past it a new connection is closed at once (counted).
    pub tcp_max_connections: usize,
    pub max_inflight: usize,
    /// Clients allowed to query; everyone else gets REFUSED.
    pub allow: Vec<Cidr>,
    /// Root server addresses (from the hints file, or IANA's).
    pub roots: Vec<IpAddr>,
    pub ns_cache_size: usize,
    pub response_cache_size: u64,
    /// Encoded answers kept by the UDP front (0: none).
    pub answer_cache_size: usize,
    pub allow_servers: Vec<IpNet>,
    /// `None`: hickory's recommended list (loopback, private and special-use ranges).
    pub deny_servers: Option<Vec<IpNet>>,
    pub dnssec: Dnssec,
    pub qname_minimization_relaxed: bool,
    pub case_randomization: bool,
    pub source_v4: Option<IpAddr>,
    pub source_v6: Option<IpAddr>,
    pub dnstap_unix: Option<PathBuf>,
    pub dnstap_tcp: Option<SocketAddr>,
    pub identity: Option<String>,
    pub version: Option<String>,
    pub queue_frames: usize,
    pub resolver_queries: bool,
    /// CLIENT_QUERY / CLIENT_RESPONSE too (personal data: opt-in).
    pub client_messages: bool,
    pub sensor: Option<SensorConfig>,
    pub metrics: Option<SocketAddr>,
}

/// Loopback only unless configured: an open resolver is an amplifier.
const DEFAULT_ALLOW: &[&str] = &["127.0.0.0/8", "::1"];
const DEFAULT_LISTEN: &str = "127.0.0.1:5300";

/// The addresses in a root hints file (`named.root` format: `NAME TTL [IN] A|AAAA ADDRESS`).
pub fn parse_root_hints(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut roots = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split(';').next().unwrap_or("");
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(pos) = fields.iter().position(|f| f.eq_ignore_ascii_case("A") || f.eq_ignore_ascii_case("AAAA"))
        else {
            continue;
        };
        let addr = fields.get(pos + 1).ok_or_else(|| format!("line {}: no address after {}", i + 1, fields[pos]))?;
        roots.push(addr.parse().map_err(|_| format!("line {}: `{addr}` is not an address", i + 1))?);
    }
    if roots.is_empty() {
        return Err("no A or AAAA records".into());
    }
    Ok(roots)
}

impl ResolverConfig {
    /// Parses TOML text; `Err` lists every problem, one per line, each naming its key.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let raw: Raw = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_string()])?;
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| errors.push(format!("{key}: {msg}"));

        let addrs = |key: &str, list: Option<Vec<String>>, err: &mut dyn FnMut(&str, String)| {
            let list = list.unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
            let mut out = Vec::new();
            for (i, a) in list.iter().enumerate() {
                match a.parse() {
                    Ok(a) => out.push(a),
                    Err(_) => err(&format!("{key}[{i}]"), format!("`{a}` is not host:port")),
                }
            }
            out
        };
        let udp = addrs("listen.udp", raw.listen.udp, &mut err);
        let tcp = addrs("listen.tcp", raw.listen.tcp, &mut err);
        if udp.is_empty() && tcp.is_empty() {
            err("listen", "no udp or tcp address".into());
        }
        let tcp_idle = raw.listen.tcp_idle_seconds.unwrap_or(10);
        if tcp_idle == 0 || tcp_idle > 3600 {
            err("listen.tcp_idle_seconds", format!("{tcp_idle}: between 1 and 3600"));
        }
        let tcp_max_connections = raw.listen.tcp_max_connections.unwrap_or(1000);
        if tcp_max_connections == 0 || tcp_max_connections > 100_000 {
            err("listen.tcp_max_connections", format!("{tcp_max_connections}: between 1 and 100000"));
        }
        let max_inflight = raw.listen.max_inflight.unwrap_or(2048);
        if max_inflight == 0 {
            err("listen.max_inflight", "must be at least 1".into());
        }
        let mut allow = Vec::new();
        let list = raw.access.allow.unwrap_or_else(|| DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect());
        for (i, c) in list.iter().enumerate() {
            match c.parse() {
                Ok(c) => allow.push(c),
                Err(e) => err(&format!("access.allow[{i}]"), format!("{e}")),
            }
        }
        let r = raw.recursion;
        let roots = match &r.root_hints {
            None => IANA_ROOT_SERVERS.iter().filter_map(|s| s.parse().ok()).collect(),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => parse_root_hints(&text).unwrap_or_else(|e| {
                    err("recursion.root_hints", format!("{}: {e}", path.display()));
                    Vec::new()
                }),
                Err(e) => {
                    err("recursion.root_hints", format!("{}: {e}", path.display()));
                    Vec::new()
                }
            },
        };
        let nets = |key: &str, list: Vec<String>, err: &mut dyn FnMut(&str, String)| {
            let mut out = Vec::new();
            for (i, n) in list.iter().enumerate() {
                // A bare address is its own /32 or /128.
                let parsed = n.parse::<IpNet>().or_else(|_| n.parse::<IpAddr>().map(IpNet::from));
                match parsed {
                    Ok(n) => out.push(n),
                    Err(_) => err(&format!("{key}[{i}]"), format!("`{n}` is not an address prefix like 10.0.0.0/8")),
                }
            }
            out
        };
        let allow_servers = nets("recursion.allow_servers", r.allow_servers.unwrap_or_default(), &mut err);
        let deny_servers = r.deny_servers.map(|l| nets("recursion.deny_servers", l, &mut err));
        let dnssec = match r.dnssec.as_deref().unwrap_or("off") {
            "off" => Dnssec::Off,
            "validate" => Dnssec::Validate,
            other => {
                err("recursion.dnssec", format!("`{other}`: one of \"off\", \"validate\""));
                Dnssec::Off
            }
        };
        let qname_minimization_relaxed = match r.qname_minimization.as_deref().unwrap_or("strict") {
            "strict" => false,
            "relaxed" => true,
            other => {
                err("recursion.qname_minimization", format!("`{other}`: one of \"strict\", \"relaxed\""));
                false
            }
        };
        let source = |key: &str, v: Option<String>, v4: bool, err: &mut dyn FnMut(&str, String)| {
            let s = v?;
            match s.parse::<IpAddr>() {
                Ok(a) if a.is_ipv4() == v4 => Some(a),
                _ => {
                    err(key, format!("`{s}` is not an IPv{} address", if v4 { 4 } else { 6 }));
                    None
                }
            }
        };
        let source_v4 = source("recursion.source_v4", r.source_v4, true, &mut err);
        let source_v6 = source("recursion.source_v6", r.source_v6, false, &mut err);
        let d = raw.dnstap;
        let dnstap_tcp = d.tcp.as_ref().and_then(|a| match a.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                err("dnstap.tcp", format!("`{a}` is not host:port"));
                None
            }
        });
        if d.unix.is_some() && d.tcp.is_some() {
            err("dnstap", "set unix or tcp, not both".into());
        }
        let queue_frames = d.queue_frames.unwrap_or(16 * 1024);
        if queue_frames == 0 {
            err("dnstap.queue_frames", "must be at least 1".into());
        }
        for (key, v) in [("dnstap.identity", &d.identity), ("dnstap.version", &d.version)] {
            if v.as_ref().is_some_and(|v| v.len() > 255) {
                err(key, "at most 255 bytes".into());
            }
        }
        let sensor = raw.sensor.and_then(|s| match SensorConfig::from_raw(s) {
            Ok(c) => Some(c),
            Err(es) => {
                for e in es {
                    err("sensor", e);
                }
                None
            }
        });
        let metrics = raw.metrics.as_ref().and_then(|m| match m.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                err("metrics", format!("`{m}` is not host:port"));
                None
            }
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ResolverConfig {
            udp,
            tcp,
            tcp_idle: Duration::from_secs(tcp_idle),
            tcp_max_connections,
            max_inflight,
            allow,
            roots,
            ns_cache_size: r.ns_cache_size.unwrap_or(1024),
            response_cache_size: r.response_cache_size.unwrap_or(1 << 20),
            answer_cache_size: r.answer_cache_size.unwrap_or(100_000),
            allow_servers,
            deny_servers,
            dnssec,
            qname_minimization_relaxed,
            case_randomization: r.case_randomization.unwrap_or(false),
            source_v4,
            source_v6,
            dnstap_unix: d.unix,
            dnstap_tcp,
            identity: d.identity,
            version: d.version.or_else(|| Some(format!("dnsledger {}", env!("CARGO_PKG_VERSION")))),
            queue_frames,
            resolver_queries: d.resolver_queries.unwrap_or(true),
            client_messages: d.client_messages.unwrap_or(false),
            sensor,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_reported_with_its_key() {
        let errs = ResolverConfig::parse(
            r#"
            [listen]
            udp = ["127.0.0.1:53", "nowhere"]
            [access]
            allow = ["10.0.0.0/40"]
            [recursion]
            allow_servers = ["127.0.0.0/8", "bogus"]
            dnssec = "maybe"
            source_v4 = "::1"
            [dnstap]
            tcp = "x"
            [sensor]
            [sensor.aggregate]
            window_seconds = 0
            "#,
        )
        .unwrap_err();
        let text = errs.join("\n");
        for key in [
            "listen.udp[1]",
            "access.allow[0]",
            "recursion.allow_servers[1]",
            "recursion.dnssec",
            "recursion.source_v4",
            "dnstap.tcp",
            "sensor: aggregate.window_seconds",
        ] {
            assert!(text.contains(key), "{key} missing from:\n{text}");
        }
        assert_eq!(errs.len(), 7, "{text}");
    }

    #[test]
    fn unknown_keys_are_rejected_also_in_the_sensor_table() {
        assert!(ResolverConfig::parse("[recursion]\nroothints = \"x\"\n").unwrap_err()[0].contains("roothints"));
        assert!(ResolverConfig::parse("[sensor.listen]\nunixx = []\n").unwrap_err()[0].contains("unixx"));
    }

    #[test]
    fn defaults_are_a_closed_resolver_on_iana_roots() {
        let c = ResolverConfig::parse("").unwrap();
        assert_eq!(c.roots.len(), IANA_ROOT_SERVERS.len());
        assert!(c.allow.iter().all(|a| a.addr.is_loopback()));
        assert!(c.deny_servers.is_none() && c.sensor.is_none() && c.dnstap_unix.is_none());
        assert!(!c.client_messages, "client data is opt-in");
        assert_eq!(c.udp, vec![DEFAULT_LISTEN.parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn root_hints_files_in_named_root_format() {
        let hints = ".  3600000  NS  A.ROOT-SERVERS.NET.\n\
                     A.ROOT-SERVERS.NET.  3600000  A  198.41.0.4 ; comment\n\
                     A.ROOT-SERVERS.NET.  3600000  IN AAAA  2001:503:ba3e::2:30\n";
        let roots = parse_root_hints(hints).unwrap();
        assert_eq!(roots, vec!["198.41.0.4".parse::<IpAddr>().unwrap(), "2001:503:ba3e::2:30".parse().unwrap()]);
        assert!(parse_root_hints("a. 1 A nonsense\n").unwrap_err().contains("line 1"));
        assert!(parse_root_hints("; nothing\n").is_err());
    }

    #[test]
    fn every_example_in_the_docs_parses() {
        let doc = include_str!("../../docs/RESOLVER.md");
        let blocks: Vec<&str> = doc.split("```toml").skip(1).map(|b| b.split("```").next().unwrap()).collect();
        assert!(blocks.len() >= 2);
        for b in blocks {
            ResolverConfig::parse(b).unwrap_or_else(|e| panic!("{e:?} in:\n{b}"));
        }
    }
}
