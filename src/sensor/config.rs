//! `sensor.toml`: unknown keys are rejected, and every problem is reported at once with the
//! key named. See docs/CONFIGURATION.md.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::rr::Name;
use serde::Deserialize;

use super::filter::{Cidr, PRIVATE_NETWORKS};
use super::zones::IANA_ROOT_SERVERS;
use crate::forward::ForwardConfig;
use crate::framestream::{DATA_FRAME_MAX_LIMIT, DATA_FRAME_MIN_LIMIT};

/// The file as written; also the `[sensor]` table of `resolver.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    db: Option<PathBuf>,
    sensor_id: Option<String>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    pipeline: RawPipeline,
    #[serde(default)]
    privacy: RawPrivacy,
    #[serde(default)]
    aggregate: RawAggregate,
    #[serde(default)]
    store: RawStore,
    forward: Option<RawForward>,
    metrics: Option<String>,
    api: Option<crate::api::RawApi>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    collector: String,
    server_name: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    max_outbox_batches: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default)]
    unix: Vec<PathBuf>,
    #[serde(default)]
    tcp: Vec<String>,
    unix_mode: Option<String>,
    max_frame: Option<usize>,
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    auth_responses: Option<bool>,
    negative: Option<bool>,
    root_hints: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    internal_zones: Option<Vec<String>>,
    exclude_special_use: Option<bool>,
    private_networks: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    compression: Option<bool>,
    cache_mb: Option<u64>,
    compact_when_idle: Option<bool>,
    idle_priority: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregate {
    window_seconds: Option<u64>,
    window_keys: Option<usize>,
    window_mb: Option<u64>,
    outbox: Option<bool>,
}

/// RRsets a window holds unless configured (`aggregate.window_keys`). Under load a window
/// fills by this bound, and a larger one merges more repeats before the store sees them: over
/// the benchmark's 2M frames (260,113 RRsets) 200,000 sent the store 348k RRsets against
/// 50,000's 638k and took the store thread's CPU from 2.1 to 1.0 s, for about 110 bytes of
/// memory per RRset, twice (the window aggregating and the one being written): 172-175 ->
/// 211-212 MiB peak at 1M RRsets (docs/BENCHMARKS.md).
pub const DEFAULT_WINDOW_KEYS: usize = 200_000;

/// The validated sensor configuration.
#[derive(Clone, Debug)]
pub struct SensorConfig {
    pub db: PathBuf,
    pub sensor_id: String,
    pub unix: Vec<PathBuf>,
    pub tcp: Vec<SocketAddr>,
    pub unix_mode: Option<u32>,
    pub max_frame: usize,
    pub max_connections: usize,
    pub auth_responses: bool,
    pub negative: bool,
    pub root_hints: Vec<IpAddr>,
    pub internal_zones: Vec<Name>,
    pub exclude_special_use: bool,
    pub private_networks: Vec<Cidr>,
    pub window: Duration,
    pub window_keys: usize,
    /// The most bytes a window's records may take, MiB.
    pub window_mb: u64,
    pub outbox: bool,
    pub compression: bool,
    /// sled's page cache, MiB.
    pub cache_mb: u64,
    /// Merges leave compaction for when the load eases (`Store::merge_under_load`).
    pub compact_when_idle: bool,
    /// The store thread runs at idle CPU priority while it is ahead (`sensor::priority`).
    pub idle_priority: bool,
    /// Forward the outbox to a collector or relay (implies the outbox).
    pub forward: Option<ForwardConfig>,
    pub metrics: Option<SocketAddr>,
    /// The query API over this sensor's store.
    pub api: Option<crate::api::ApiConfig>,
}

impl SensorConfig {
    /// Parses TOML text; `Err` lists every problem, one per line, each naming its key.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let raw: Raw = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_string()])?;
        Self::from_raw(raw)
    }

    /// Validates a parsed file (or table).
    pub(crate) fn from_raw(raw: Raw) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut err = |key: &str, msg: String| errors.push(format!("{key}: {msg}"));

        let db = raw.db.unwrap_or_else(|| PathBuf::from("dnsledger-sensor.db"));
        let sensor_id = raw.sensor_id.unwrap_or_else(|| "sensor".into());
        if sensor_id.is_empty() || sensor_id.len() > 64 {
            err("sensor_id", "1 to 64 characters".into());
        }
        let mut tcp = Vec::new();
        for (i, a) in raw.listen.tcp.iter().enumerate() {
            match a.parse() {
                Ok(a) => tcp.push(a),
                Err(_) => err(&format!("listen.tcp[{i}]"), format!("`{a}` is not host:port")),
            }
        }
        let unix_mode = raw.listen.unix_mode.as_ref().and_then(|m| match u32::from_str_radix(m, 8) {
            Ok(v) if v <= 0o777 => Some(v),
            _ => {
                err("listen.unix_mode", format!("`{m}` is not an octal file mode like \"660\""));
                None
            }
        });
        let max_frame = raw.listen.max_frame.unwrap_or(crate::framestream::DATA_FRAME_DEFAULT);
        if max_frame < DATA_FRAME_MIN_LIMIT {
            err("listen.max_frame", format!("{max_frame} is below the minimum {DATA_FRAME_MIN_LIMIT}"));
        }
        if max_frame > DATA_FRAME_MAX_LIMIT {
            err("listen.max_frame", format!("{max_frame} is above the maximum {DATA_FRAME_MAX_LIMIT}"));
        }
        let max_connections = raw.listen.max_connections.unwrap_or(512);
        if max_connections == 0 {
            err("listen.max_connections", "must be at least 1".into());
        }
        let mut root_hints = Vec::new();
        let hints =
            raw.pipeline.root_hints.unwrap_or_else(|| IANA_ROOT_SERVERS.iter().map(|s| s.to_string()).collect());
        for (i, h) in hints.iter().enumerate() {
            match h.parse() {
                Ok(a) => root_hints.push(a),
                Err(_) => err(&format!("pipeline.root_hints[{i}]"), format!("`{h}` is not an IP address")),
            }
        }
        let mut internal_zones = Vec::new();
        for (i, z) in raw.privacy.internal_zones.unwrap_or_default().iter().enumerate() {
            match Name::from_ascii(z) {
                Ok(mut n) => {
                    n.set_fqdn(true);
                    internal_zones.push(n)
                }
                Err(e) => err(&format!("privacy.internal_zones[{i}]"), format!("`{z}`: {e}")),
            }
        }
        let mut private_networks = Vec::new();
        let nets =
            raw.privacy.private_networks.unwrap_or_else(|| PRIVATE_NETWORKS.iter().map(|s| s.to_string()).collect());
        for (i, n) in nets.iter().enumerate() {
            match n.parse() {
                Ok(c) => private_networks.push(c),
                Err(e) => err(&format!("privacy.private_networks[{i}]"), format!("{e}")),
            }
        }
        let window_seconds = raw.aggregate.window_seconds.unwrap_or(10);
        if window_seconds == 0 || window_seconds > 3600 {
            err("aggregate.window_seconds", format!("{window_seconds}: between 1 and 3600"));
        }
        let window_keys = raw.aggregate.window_keys.unwrap_or(DEFAULT_WINDOW_KEYS);
        // A bound, not a size to allocate: past u32::MAX RRsets memory runs out first.
        if window_keys == 0 || window_keys > u32::MAX as usize {
            err("aggregate.window_keys", format!("{window_keys}: between 1 and {}", u32::MAX));
        }
        // A window addresses its records in at most 2^20 chunks of 1 MiB (src/sensor/window.rs).
        let window_mb = raw.aggregate.window_mb.unwrap_or(64);
        if window_mb == 0 || window_mb > super::window::MAX_WINDOW_MB {
            err("aggregate.window_mb", format!("{window_mb}: between 1 and {}", super::window::MAX_WINDOW_MB));
        }
        let compression = raw.store.compression.unwrap_or(false);
        if compression && !cfg!(feature = "compression") {
            err("store.compression", "this build has no compression: build with `--features compression`".into());
        }
        let cache_mb = raw.store.cache_mb.unwrap_or(crate::store::DEFAULT_CACHE_MB);
        if !(1..=1 << 20).contains(&cache_mb) {
            err("store.cache_mb", format!("{cache_mb}: between 1 and 1048576 (MiB)"));
        }
        let metrics = raw.metrics.as_ref().and_then(|m| match m.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                err("metrics", format!("`{m}` is not host:port"));
                None
            }
        });
        let forward = raw.forward.and_then(|f| {
            if f.server_name.is_empty() {
                err("forward.server_name", "empty".into());
            }
            let max_outbox_batches = f.max_outbox_batches.unwrap_or(10_000);
            if max_outbox_batches < crate::store::MIN_OUTBOX_LIMIT {
                err("forward.max_outbox_batches", format!("at least {}", crate::store::MIN_OUTBOX_LIMIT));
            }
            match f.collector.parse() {
                Ok(collector) => Some(ForwardConfig {
                    collector,
                    server_name: f.server_name,
                    ca: f.ca,
                    cert: f.cert,
                    key: f.key,
                    max_outbox_batches,
                }),
                Err(_) => {
                    err("forward.collector", format!("`{}` is not host:port", f.collector));
                    None
                }
            }
        });
        let api = raw.api.and_then(|a| match crate::api::ApiConfig::from_raw(a) {
            Ok(a) => Some(a),
            Err(e) => {
                errors.extend(e);
                None
            }
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SensorConfig {
            db,
            sensor_id,
            unix: raw.listen.unix,
            tcp,
            unix_mode,
            max_frame,
            max_connections,
            auth_responses: raw.pipeline.auth_responses.unwrap_or(false),
            negative: raw.pipeline.negative.unwrap_or(false),
            root_hints,
            internal_zones,
            exclude_special_use: raw.privacy.exclude_special_use.unwrap_or(true),
            private_networks,
            window: Duration::from_secs(window_seconds),
            window_keys,
            window_mb,
            outbox: raw.aggregate.outbox.unwrap_or(false) || forward.is_some(),
            compression,
            cache_mb,
            compact_when_idle: raw.store.compact_when_idle.unwrap_or(true),
            idle_priority: raw.store.idle_priority.unwrap_or(true),
            forward,
            metrics,
            api,
        })
    }

    /// The defaults (as if the file were empty).
    pub fn defaults() -> Self {
        Self::parse("").expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_reported_with_its_key() {
        let errs = SensorConfig::parse(
            r#"
            [listen]
            tcp = ["127.0.0.1:6000", "nonsense"]
            unix_mode = "999"
            max_frame = 1000
            [privacy]
            private_networks = ["10.0.0.0/33"]
            [aggregate]
            window_seconds = 0
            window_keys = 4294967296
            window_mb = 0
            "#,
        )
        .unwrap_err();
        let text = errs.join("\n");
        for key in [
            "listen.tcp[1]",
            "listen.unix_mode",
            "listen.max_frame",
            "privacy.private_networks[0]",
            "aggregate.window_seconds",
            "aggregate.window_keys",
            "aggregate.window_mb",
        ] {
            assert!(text.contains(key), "{key} missing from:\n{text}");
        }
        assert_eq!(errs.len(), 7, "{text}");
    }

    #[test]
    #[cfg(not(feature = "compression"))]
    fn compression_needs_the_feature() {
        let errs = SensorConfig::parse("[store]\ncompression = true\n").unwrap_err();
        assert!(errs[0].starts_with("store.compression:"), "{errs:?}");
    }

    #[test]
    fn frame_limit_has_a_ceiling() {
        let errs = SensorConfig::parse("[listen]\nmax_frame = 67108865\n").unwrap_err();
        assert!(errs[0].starts_with("listen.max_frame:") && errs[0].contains("above"), "{errs:?}");
        assert_eq!(SensorConfig::parse("[listen]\nmax_frame = 67108864\n").unwrap().max_frame, 64 << 20);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let errs = SensorConfig::parse("[listen]\nunixx = [\"/tmp/x\"]\n").unwrap_err();
        assert!(errs[0].contains("unixx"), "{errs:?}");
    }

    #[test]
    fn every_example_in_the_docs_parses() {
        let doc = include_str!("../../docs/CONFIGURATION.md");
        let blocks: Vec<&str> = doc.split("```toml").skip(1).map(|b| b.split("```").next().unwrap()).collect();
        assert!(blocks.len() >= 2);
        for b in blocks {
            let c = SensorConfig::parse(b).unwrap_or_else(|e| panic!("{e:?} in:\n{b}"));
            assert!(!c.unix.is_empty(), "{b}");
        }
    }

    #[test]
    fn defaults_are_private() {
        let c = SensorConfig::defaults();
        assert!(c.exclude_special_use && !c.private_networks.is_empty() && !c.outbox);
        assert_eq!(c.root_hints.len(), IANA_ROOT_SERVERS.len());
    }
}
