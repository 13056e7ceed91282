//! Daily exports: the RRsets a UTC day saw (first seen or last seen that day: new and
//! updated), as zstd-compressed COF NDJSON, `DIR/dnsledger-YYYY-MM-DD.cof.zst`. On a
//! schedule (`[api] export_dir`, `export_at`) or by hand (`dnsledger export`). A file is
//! written to a temporary name and renamed when complete, so a file that exists is whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// `YYYY-MM-DD` of a UTC day number (days since 1970-01-01).
pub fn day_name(day: u64) -> String {
    crate::dnstap::format_time(crate::dnstap::Timestamp { sec: day * 86_400, nsec: 0 }, ' ')[..10].to_string()
}

pub fn file_for(dir: &Path, day: u64) -> PathBuf {
    dir.join(format!("dnsledger-{}.cof.zst", day_name(day)))
}

/// Writes the export of `day`; returns the RRsets written.
pub fn export_day(store: &Store, day: u64, dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let (start, end) = (day * 86_400, (day + 1) * 86_400);
    let path = file_for(dir, day);
    let tmp = path.with_extension("zst.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let mut z = zstd::stream::write::Encoder::new(std::io::BufWriter::new(file), 3)?;
    let mut n = 0u64;
    let mut line = Vec::with_capacity(512);
    for e in store.all(false) {
        let e = e?;
        let seen_that_day = (e.first >= start && e.first < end) || (e.last >= start && e.last < end);
        // Or live across the whole day: seen before and after it.
        let spans = e.first < start && e.last >= end;
        if !(seen_that_day || spans) {
            continue;
        }
        line.clear();
        crate::api::write_cof(&mut line, &e, false, &[]);
        line.push(b'\n');
        z.write_all(&line)?;
        n += 1;
    }
    let mut w = z.finish()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(n)
}

/// The day whose export is due at `now` (the previous UTC day, once `at` seconds of today
/// have passed), if its file does not exist yet.
pub fn due(now: u64, at: u64, dir: &Path) -> Option<u64> {
    let today = now / 86_400;
    if today == 0 || now % 86_400 < at {
        return None;
    }
    let day = today - 1;
    (!file_for(dir, day).exists()).then_some(day)
}

/// Runs the schedule until `shutdown`: checks every minute whether yesterday's file is due.
pub async fn schedule(store: Store, dir: PathBuf, at: u64, shutdown: CancellationToken) {
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if let Some(day) = due(now, at, &dir) {
            let (store, dir2) = (store.clone(), dir.clone());
            tracing::info!(day = %day_name(day), dir = %dir.display(), "daily export starting");
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || export_day(&store, day, &dir2)).await {
                Ok(Ok(n)) => {
                    tracing::info!(day = %day_name(day), rrsets = n, seconds = started.elapsed().as_secs_f64(), "daily export written")
                }
                Ok(Err(e)) => {
                    tracing::error!(day = %day_name(day), error = %e, "daily export failed; retrying in a minute")
                }
                Err(e) => tracing::error!(error = %e, "daily export panicked"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yesterday_is_due_after_the_hour_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let day = 20_000u64;
        let at = 600;
        assert_eq!(due(day * 86_400 + 599, at, dir.path()), None);
        assert_eq!(due(day * 86_400 + 600, at, dir.path()), Some(day - 1));
        std::fs::write(file_for(dir.path(), day - 1), b"").unwrap();
        assert_eq!(due(day * 86_400 + 3600, at, dir.path()), None);
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(file_for(dir.path(), 19_723).file_name().unwrap(), "dnsledger-2024-01-01.cof.zst");
    }
}
