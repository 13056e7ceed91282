//! The `[api]` table (of `sensor.toml`, or a file of its own for `dnsledger collector
//! --api-config` and `dnsledger api --config`): listen address, optional TLS, limits, API keys
//! with their quotas. Unknown keys are refused; every problem is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections: Option<usize>,
    max_queries: Option<usize>,
    default_limit: Option<u64>,
    max_limit: Option<u64>,
    max_offset: Option<u64>,
    scan_budget: Option<u64>,
    max_page: Option<u64>,
    max_feeds: Option<usize>,
    feed_retain: Option<u64>,
    export_dir: Option<PathBuf>,
    export_at: Option<String>,
    public_suffix_list: Option<PathBuf>,
    day_rows: Option<bool>,
    quota_file: Option<PathBuf>,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    key: String,
    queries_per_day: Option<u64>,
    max_concurrent: Option<usize>,
}

/// One API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Shown in logs instead of the key.
    pub name: String,
    pub key: String,
    /// Queries per UTC day (`None`: unlimited). Ping and rate_limit are free.
    pub queries_per_day: Option<u64>,
    /// Queries running at once (`None`: only the server-wide bound).
    pub max_concurrent: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate chain and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Queries running at once; more are answered 503.
    pub max_queries: usize,
    pub default_limit: u64,
    /// The largest `limit` (DNSDB's `results_max`); `limit=0` means this.
    pub max_limit: u64,
    /// The largest `offset` (DNSDB's `offset_max`); past it, page with the cursor.
    pub max_offset: u64,
    /// Index entries one request may examine; a query that needs more ends `limited` with a
    /// cursor to resume from.
    pub scan_budget: u64,
    /// Results per page of the COF and CIRCL endpoints (buffered to give the cursor in a
    /// header); DNSDB SAF responses stream instead.
    pub max_page: u64,
    /// Live feed consumers at once; more get 503.
    pub max_feeds: usize,
    /// Entries of the feed log the store keeps (a consumer away longer misses the oldest, and
    /// is told so).
    pub feed_retain: u64,
    /// Daily COF exports: the directory, and the time of day (seconds after 00:00 UTC) when
    /// the previous day's file is written.
    pub export: Option<(PathBuf, u64)>,
    /// The Public Suffix List for the feed's new domains (default: Debian's, if installed).
    pub public_suffix_list: Option<PathBuf>,
    /// Keep per-day rows for `aggr=false` (costs the store about a third of its write speed
    /// and doubles its size; docs/BENCHMARKS.md).
    pub day_rows: bool,
    /// Where the keys' daily query counts are kept across restarts (`None`: in memory only).
    pub quota_file: Option<PathBuf>,
    /// No keys: the API is open (keep it on loopback).
    pub keys: Vec<ApiKey>,
}

impl ApiConfig {
    /// Defaults for `--api ADDR`: no keys, no TLS.
    pub fn open(listen: SocketAddr) -> Self {
        Self::from_raw(RawApi { listen: Some(listen.to_string()), ..RawApi::default() })
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    pub fn from_raw(raw: RawApi) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| errors.push(format!("api.{key}: {msg}"));
        let listen = match raw.listen.as_deref().map(str::parse) {
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => {
                err("listen", format!("`{}` is not host:port", raw.listen.as_deref().unwrap_or_default()));
                None
            }
            None => {
                err("listen", "required (host:port)".into());
                None
            }
        };
        let tls = match (raw.tls_cert, raw.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                err("tls_cert", "tls_cert and tls_key go together".into());
                None
            }
        };
        let mut positive = |key: &str, v: Option<u64>, default: u64| {
            let v = v.unwrap_or(default);
            if v == 0 {
                err(key, "must be at least 1".into());
            }
            v
        };
        let max_limit = positive("max_limit", raw.max_limit, 1_000_000);
        let default_limit = positive("default_limit", raw.default_limit, 10_000.min(max_limit));
        let max_offset = raw.max_offset.unwrap_or(1_000_000);
        let scan_budget = positive("scan_budget", raw.scan_budget, 20_000_000);
        let max_page = positive("max_page", raw.max_page, 10_000);
        let max_connections = positive("max_connections", raw.max_connections.map(|v| v as u64), 256) as usize;
        let max_queries = positive("max_queries", raw.max_queries.map(|v| v as u64), 32) as usize;
        let max_feeds = positive("max_feeds", raw.max_feeds.map(|v| v as u64), 16) as usize;
        let feed_retain = positive("feed_retain", raw.feed_retain, 1_000_000);
        let export_at = match raw.export_at.as_deref().unwrap_or("00:10").split_once(':') {
            Some((h, m)) => match (h.parse::<u64>(), m.parse::<u64>()) {
                (Ok(h), Ok(m)) if h < 24 && m < 60 => h * 3600 + m * 60,
                _ => {
                    err("export_at", "HH:MM (UTC)".into());
                    0
                }
            },
            None => {
                err("export_at", "HH:MM (UTC)".into());
                0
            }
        };
        if raw.export_at.is_some() && raw.export_dir.is_none() {
            err("export_at", "needs export_dir".into());
        }
        let export = raw.export_dir.map(|d| (d, export_at));
        if default_limit > max_limit {
            err("default_limit", format!("{default_limit} is above max_limit {max_limit}"));
        }
        let mut keys: Vec<ApiKey> = Vec::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            let at = format!("keys[{i}]");
            if k.key.len() < 16 || !k.key.bytes().all(|b| b.is_ascii_graphic()) {
                err(&at, "key: at least 16 printable characters, no spaces".into());
            }
            if k.name.is_empty() || k.name.len() > 64 || !k.name.bytes().all(|b| b.is_ascii_graphic()) {
                err(&at, "name: 1 to 64 printable characters".into());
            }
            if keys.iter().any(|o| o.key == k.key) {
                err(&at, "key: used twice".into());
            }
            if keys.iter().any(|o| o.name == k.name) {
                err(&at, format!("name `{}` used twice", k.name));
            }
            if k.max_concurrent == Some(0) {
                err(&at, "max_concurrent: must be at least 1".into());
            }
            keys.push(ApiKey {
                name: k.name,
                key: k.key,
                queries_per_day: k.queries_per_day,
                max_concurrent: k.max_concurrent,
            });
        }
        match listen {
            Some(listen) if errors.is_empty() => Ok(Self {
                listen,
                tls,
                max_connections,
                max_queries,
                default_limit,
                max_limit,
                max_offset,
                scan_budget,
                max_page,
                max_feeds,
                feed_retain,
                export,
                public_suffix_list: raw.public_suffix_list,
                day_rows: raw.day_rows.unwrap_or(false),
                quota_file: raw.quota_file,
                keys,
            }),
            _ => Err(errors),
        }
    }

    /// Parses the text of a file holding an `[api]` table.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            api: RawApi,
        }
        let file: File = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        Self::from_raw(file.api)
    }

    /// Reads a file holding an `[api]` table.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}:\n  {}", path.display(), e.join("\n  ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported() {
        let raw: RawApi = toml::from_str(
            r#"
            listen = "nowhere"
            tls_cert = "c.pem"
            max_limit = 0
            keys = [{ name = "a", key = "short" }, { name = "a", key = "short" }]
            "#,
        )
        .unwrap();
        let errs = ApiConfig::from_raw(raw).unwrap_err();
        for want in ["api.listen", "api.tls_cert", "api.max_limit", "keys[0]: key", "used twice"] {
            assert!(errs.iter().any(|e| e.contains(want)), "{want} in {errs:?}");
        }
        assert!(toml::from_str::<RawApi>("listen = \"127.0.0.1:1\"\nbogus = 1").is_err());
    }

    #[test]
    fn every_example_in_the_docs_parses() {
        let doc = include_str!("../../docs/API.md");
        let blocks: Vec<&str> = doc.split("```toml").skip(1).map(|b| b.split("```").next().unwrap()).collect();
        assert!(!blocks.is_empty());
        for b in blocks {
            let c = ApiConfig::parse(b).unwrap_or_else(|e| panic!("{e:?} in:\n{b}"));
            assert!(c.tls.is_some() && c.keys.len() == 2, "{b}");
        }
    }

    #[test]
    fn defaults() {
        let c = ApiConfig::open("127.0.0.1:8080".parse().unwrap());
        assert_eq!((c.default_limit, c.max_limit, c.keys.len()), (10_000, 1_000_000, 0));
    }
}
