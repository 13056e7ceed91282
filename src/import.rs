//! `dnsledger import`: COF NDJSON (a CIRCL or DNSDB export, or our own `--json` output; SAF
//! `{"obj":...}` lines too) merged into a store. Import adds: each line's count is added to
//! what the store has (importing a file twice counts it twice); times widen first/last seen.
//! Lines that are not valid COF are refused with their line number, and nothing of a file is
//! merged unless all of it parses.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::sensor::{Kind, Rrset};
use crate::store::{Delta, Store};

#[derive(Deserialize)]
struct Line {
    obj: Option<Cof>,
    cond: Option<String>,
    #[serde(flatten)]
    cof: Option<Cof>,
}

#[derive(Deserialize)]
struct Cof {
    rrname: String,
    rrtype: serde_json::Value,
    rdata: serde_json::Value,
    time_first: Option<u64>,
    time_last: Option<u64>,
    zone_time_first: Option<u64>,
    zone_time_last: Option<u64>,
    count: Option<u64>,
    bailiwick: Option<String>,
}

/// Lines longer than this are refused (an RRset is far smaller).
const MAX_LINE: usize = 1024 * 1024;
const BATCH: usize = 2_000;

fn delta(c: Cof) -> anyhow::Result<Delta> {
    // A literal wildcard owner (`*.example.com.`) is a name like any other here.
    let rrname = hickory_proto::rr::Name::from_ascii(&c.rrname)
        .map_err(|e| anyhow::anyhow!("rrname: {e}"))?
        .to_lowercase()
        .to_string();
    let rrname = crate::query::absolute(&rrname);
    let rrtype = match &c.rrtype {
        serde_json::Value::String(s) => crate::query::parse_rrtype(s)?,
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()).context("rrtype: 0-65535")?,
        _ => bail!("rrtype: a mnemonic or a number"),
    };
    let mut rdata: Vec<String> = match c.rdata {
        serde_json::Value::String(s) => vec![s],
        serde_json::Value::Array(a) => a
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => bail!("rdata: strings only"),
            })
            .collect::<anyhow::Result<_>>()?,
        _ => bail!("rdata: a string or an array of strings"),
    };
    if rdata.is_empty() {
        bail!("rdata: empty");
    }
    // Names in rdata as the sensor writes them: lower case, absolute (so that rdata-name
    // lookups find them).
    for d in rdata.iter_mut() {
        let absolute = |t: &str| crate::query::absolute(t);
        let fields: Vec<&str> = d.split_whitespace().collect();
        let fixed = match (rrtype, fields.as_slice()) {
            (2 | 5 | 12 | 39, [t]) => Some(absolute(t)),
            (15, [pref, t]) => Some(format!("{pref} {}", absolute(t))),
            (33, [p, w, port, t]) => Some(format!("{p} {w} {port} {}", absolute(t))),
            _ => None,
        };
        if let Some(f) = fixed {
            *d = f;
        }
    }
    rdata.sort_unstable();
    rdata.dedup();
    let bailiwick = match c.bailiwick {
        Some(b) => crate::query::absolute(&b),
        None => ".".into(),
    };
    let (Some(first), Some(last)) = (c.time_first.or(c.zone_time_first), c.time_last.or(c.zone_time_last)) else {
        bail!("time_first and time_last (or zone_time_first and zone_time_last) are required");
    };
    if first > last {
        bail!("time_first is after time_last");
    }
    let count = c.count.unwrap_or(1);
    if count == 0 || count > 1 << 48 {
        bail!("count: 1 to 2^48");
    }
    Ok(Delta {
        kind: Kind::Positive,
        rrset: Rrset { rrname, rrtype, bailiwick, rdata },
        first,
        last,
        count,
        sensors: Vec::new(),
    })
}

/// Reads every line of `path` (or stdin for `-`), then merges. Returns RRsets merged.
pub fn import(store: &Store, path: &Path) -> anyhow::Result<u64> {
    let deltas = read(path)?;
    for chunk in deltas.chunks(BATCH) {
        store.merge(chunk, false)?;
    }
    store.sync()?;
    Ok(deltas.len() as u64)
}

/// [`import`] into a ClickHouse cluster: each chunk is a batch of its own import stream (a new
/// one per run), applied exactly once like a sensor's.
pub async fn import_clickhouse(cluster: &crate::clickhouse::Cluster, path: &Path) -> anyhow::Result<u64> {
    let deltas = read(path)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let stream = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    for (i, chunk) in deltas.chunks(BATCH).enumerate() {
        let seq = i as u64 + 1;
        let range = crate::clickhouse::BatchRange { sender: "import", stream, first: seq, last: seq };
        // Applying a batch again is harmless (it is recognised), so transient failures of the
        // cluster are retried.
        let mut attempt = 0;
        while let Err(e) = cluster.apply(range, chunk).await {
            attempt += 1;
            if attempt == 5 {
                return Err(e.into());
            }
            tracing::warn!(error = %e, attempt, "import batch failed; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(500 << attempt)).await;
        }
    }
    Ok(deltas.len() as u64)
}

/// Every RRset of a COF file, repeated RRsets summed; nothing unless all of it parses.
fn read(path: &Path) -> anyhow::Result<Vec<Delta>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("{}", path.display()))?))
    };
    let mut deltas = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.with_context(|| format!("{}", path.display()))?;
        if line.len() > MAX_LINE {
            errors.push(format!("line {}: longer than {MAX_LINE} bytes", i + 1));
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: Result<Line, _> = serde_json::from_slice(&line);
        match parsed {
            Ok(Line { obj: Some(c), .. }) | Ok(Line { cof: Some(c), cond: None, .. }) => match delta(c) {
                Ok(d) => deltas.push(d),
                Err(e) => errors.push(format!("line {}: {e}", i + 1)),
            },
            Ok(Line { cond: Some(_), .. }) => {}
            Ok(_) => errors.push(format!("line {}: not a COF object", i + 1)),
            Err(e) => errors.push(format!("line {}: {e}", i + 1)),
        }
        if errors.len() >= 20 {
            break;
        }
    }
    if !errors.is_empty() {
        bail!("{}: nothing imported:\n  {}", path.display(), errors.join("\n  "));
    }
    // A file may hold an RRset more than once (two days' exports): one delta each, summed,
    // since a merge takes each RRset at most once.
    Ok(crate::store::fold(Vec::new(), &deltas))
}
