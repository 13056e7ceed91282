//! Query results as response bodies: DNSDB SAF streams (COF objects or one summary), COF and
//! CIRCL pages, estimates. The store walk runs on a blocking thread and hands ~32 KiB chunks
//! to the body through a bounded channel.

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode, header};
use tokio::sync::mpsc;

use super::request::{Params, cursor_string};
use super::{Api, Body, NDJSON, Slots, response};
use crate::store::{Ended, Entry, Lookup};

const CHUNK: usize = 32 * 1024;
/// How long a response waits for a client to take the next chunk before giving up on it.
const SEND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
const CHUNKS_BUFFERED: usize = 8;

/// How a walk ended, for the terminator.
enum End {
    Done,
    /// The limit cut the results; resume with this cursor.
    Limited(String),
    /// The scan budget ran out before the limit; resume with this cursor.
    Budget(String),
    MaxCount,
    ClientGone,
    /// The scan budget ran out while the offset was still being skipped.
    OffsetTooFar,
    Failed(String),
}

/// Walks `lookup` honouring offset, limit and cursor; `emit` returns false when the client is
/// gone. Also returns the shards that were unavailable before or after the walk (ClickHouse):
/// when there are any, the results are partial.
fn walk(api: &Api, lookup: &Lookup, p: &Params, emit: impl FnMut(&Entry) -> Emit) -> (End, Vec<usize>) {
    let mut down = api.db.unavailable();
    let end = walk_db(api, lookup, p, emit);
    down.extend(api.db.unavailable());
    down.sort_unstable();
    down.dedup();
    (end, down)
}

/// What to tell a client whose results are partial.
fn partial_note(down: &[usize]) -> Option<String> {
    (!down.is_empty()).then(|| {
        let list = down.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        format!("partial results: shard(s) {list} of the cluster unavailable")
    })
}

fn walk_db(api: &Api, lookup: &Lookup, p: &Params, mut emit: impl FnMut(&Entry) -> Emit) -> End {
    let (mut skipped, mut sent) = (0u64, 0u64);
    // The position of the last RRset sent or skipped whole: where the next page resumes.
    let mut last = p.cursor.clone().unwrap_or_default();
    let mut stop: Option<End> = None;
    // `aggr=false`: the results are per-day rows, fenced one by one (not by their RRset's
    // aggregate), and limit and offset count rows; a page that ends inside an RRset's rows
    // says in its cursor which RRset and the day of the last row sent.
    let rows = !p.aggr && api.db.keeps_days();
    let fences = if rows { crate::store::Fences::default() } else { p.fences };
    let ended = api.db.walk(lookup, &fences, p.cursor.as_deref(), api.config.scan_budget, |pos, e| {
        // Resuming inside an RRset's rows: RRsets before it were added since the cursor was
        // made (they sort before the cursor's position, so they are not part of this paging).
        if let Some((at, _)) = &p.cursor_rows
            && pos < &at[..]
        {
            return true;
        }
        let day_rows: Vec<Entry>;
        let mut results: &[Entry] = if rows {
            match api.db.days_of(&e.rrset) {
                Ok(days) => {
                    day_rows = days
                        .into_iter()
                        .map(|r| Entry { first: r.first, last: r.last, count: r.count, ..e.clone() })
                        .filter(|r| p.fences.admit(r))
                        .collect();
                    &day_rows
                }
                Err(err) => {
                    stop = Some(End::Failed(err.to_string()));
                    return false;
                }
            }
        } else {
            std::slice::from_ref(&e)
        };
        // Rows of this RRset that earlier pages sent: those of the cursor's day and before
        // (rows are oldest first; a row added since for an earlier day is skipped with them).
        if let Some((at, day)) = &p.cursor_rows
            && at[..] == pos[..]
        {
            let done = results.iter().take_while(|r| r.first / 86_400 <= *day).count();
            results = &results[done..];
        }
        if skipped < p.offset && !results.is_empty() {
            let skip = (p.offset - skipped).min(results.len() as u64);
            skipped += skip;
            results = &results[skip as usize..];
        }
        if results.is_empty() {
            last.clear();
            last.extend_from_slice(pos);
            return true;
        }
        if sent == p.limit {
            stop = Some(End::Limited(cursor_string(&last, None)));
            return false;
        }
        let room = (p.limit - sent).min(results.len() as u64) as usize;
        let cut = room < results.len();
        for r in &results[..room] {
            let gone = match emit(r) {
                Emit::Go => None,
                Emit::Gone => Some(End::ClientGone),
                Emit::Enough => Some(End::MaxCount),
            };
            if gone.is_some() {
                stop = gone;
                return false;
            }
            sent += 1;
        }
        if cut {
            let day = results[room - 1].first / 86_400;
            stop = Some(End::Limited(cursor_string(&last, Some((pos, day)))));
            return false;
        }
        last.clear();
        last.extend_from_slice(pos);
        true
    });
    match ended {
        Err(e) => End::Failed(e.to_string()),
        // A cursor from the middle of the skipped offset could not be resumed correctly
        // (with the offset it skips too much, without it too little).
        Ok(Ended::Budget(_)) if skipped < p.offset => End::OffsetTooFar,
        // Stopped while skipping towards a rows cursor's RRset: keep skipping next time.
        Ok(Ended::Budget(pos)) => match &p.cursor_rows {
            Some((at, day)) if pos[..] < at[..] => End::Budget(cursor_string(&pos, Some((at, *day)))),
            _ => End::Budget(cursor_string(&pos, None)),
        },
        Ok(_) => stop.unwrap_or(End::Done),
    }
}

enum Emit {
    Go,
    Gone,
    /// Summaries: max_count reached.
    Enough,
}

/// One COF object. `sensors`: contributors to report (COF `sensor_id` is one string; all of
/// them go in `sensor_ids`).
pub fn write_cof(out: &mut Vec<u8>, e: &Entry, humantime: bool, sensors: &[String]) {
    let str = |out: &mut Vec<u8>, s: &str| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    out.extend_from_slice(b"{\"count\":");
    let _ = write!(out, "{}", e.count);
    for (name, t) in [("time_first", e.first), ("time_last", e.last)] {
        let _ = write!(out, ",\"{name}\":");
        if humantime {
            let _ =
                write!(out, "\"{}Z\"", crate::dnstap::format_time(crate::dnstap::Timestamp { sec: t, nsec: 0 }, 'T'));
        } else {
            let _ = write!(out, "{t}");
        }
    }
    out.extend_from_slice(b",\"rrname\":");
    str(out, &e.rrset.rrname);
    out.extend_from_slice(b",\"rrtype\":");
    str(out, &crate::dns::rrtype_name(e.rrset.rrtype.into()));
    out.extend_from_slice(b",\"bailiwick\":");
    str(out, &e.rrset.bailiwick);
    out.extend_from_slice(b",\"rdata\":[");
    for (i, d) in e.rrset.rdata.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        str(out, d);
    }
    out.push(b']');
    if let Some(first) = sensors.first() {
        out.extend_from_slice(b",\"sensor_id\":");
        str(out, first);
        out.extend_from_slice(b",\"sensor_ids\":[");
        for (i, s) in sensors.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            str(out, s);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// A DNSDB SAF response: begin, objects (or one summary), terminator.
pub fn saf(api: Arc<Api>, lookup: Lookup, p: Params, summarize: bool, slots: Slots) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_BUFFERED);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _slots = slots;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 4096);
        buf.extend_from_slice(b"{\"cond\":\"begin\"}\n");
        let flush = |buf: &mut Vec<u8>, force: bool| -> bool {
            if buf.len() < CHUNK && !force {
                return true;
            }
            let chunk = Bytes::from(std::mem::replace(buf, Vec::with_capacity(CHUNK + 4096)));
            // A client that stops reading gives its slot back after SEND_DEADLINE.
            matches!(handle.block_on(tokio::time::timeout(SEND_DEADLINE, tx.send(chunk))), Ok(Ok(())))
        };
        let mut summary = (0u64, 0u64, u64::MAX, 0u64); // count, results, first, last
        let (end, down) = walk(&api, &lookup, &p, |e| {
            if summarize {
                summary.0 = summary.0.saturating_add(e.count);
                summary.1 += 1;
                summary.2 = summary.2.min(e.first);
                summary.3 = summary.3.max(e.last);
                if p.max_count.is_some_and(|m| summary.0 >= m) {
                    return Emit::Enough;
                }
                // Nothing is sent until the end: look now and then whether the client left.
                if summary.1.is_multiple_of(4096) && tx.is_closed() {
                    return Emit::Gone;
                }
                return Emit::Go;
            }
            buf.extend_from_slice(b"{\"obj\":");
            write_cof(&mut buf, e, p.humantime, &[]);
            buf.extend_from_slice(b"}\n");
            api.stats.results.inc();
            if flush(&mut buf, false) { Emit::Go } else { Emit::Gone }
        });
        if summarize && summary.1 > 0 {
            let _ = writeln!(
                buf,
                "{{\"obj\":{{\"count\":{},\"num_results\":{},\"time_first\":{},\"time_last\":{}}}}}",
                summary.0, summary.1, summary.2, summary.3
            );
        }
        let partial = partial_note(&down);
        if partial.is_some() {
            api.stats.cut.inc("partial");
        }
        let also = partial.as_deref().map(|n| format!("; {n}")).unwrap_or_default();
        let terminator = match &end {
            // Everything that could be read was sent, but not everything was readable.
            End::Done | End::MaxCount if partial.is_some() => {
                format!("{{\"cond\":\"failed\",\"msg\":\"{}\"}}", partial.as_deref().unwrap_or_default())
            }
            End::Done | End::MaxCount => "{\"cond\":\"succeeded\"}".to_string(),
            End::Limited(c) => {
                api.stats.cut.inc("limit");
                format!("{{\"cond\":\"limited\",\"msg\":\"Result limit reached{also}\",\"cursor\":\"{c}\"}}")
            }
            End::Budget(c) => {
                api.stats.cut.inc("budget");
                format!(
                    "{{\"cond\":\"limited\",\"msg\":\"Scan limit reached ({} index entries); resume with the cursor{also}\",\"cursor\":\"{c}\"}}",
                    api.config.scan_budget,
                )
            }
            End::ClientGone => {
                api.stats.cut.inc("client_gone");
                return;
            }
            End::OffsetTooFar => {
                api.stats.cut.inc("budget");
                "{\"cond\":\"failed\",\"msg\":\"scan limit reached while skipping the offset; page with the cursor instead\"}".to_string()
            }
            End::Failed(e) => {
                api.stats.cut.inc("store_error");
                tracing::error!(error = %e, "query failed in the store");
                "{\"cond\":\"failed\",\"msg\":\"store error\"}".to_string()
            }
        };
        if matches!(end, End::MaxCount) {
            api.stats.cut.inc("max_count");
        }
        buf.extend_from_slice(terminator.as_bytes());
        buf.push(b'\n');
        flush(&mut buf, true);
    });
    response(StatusCode::OK, NDJSON, Body::Stream(rx))
}

/// A COF or CIRCL page: plain COF lines with sensor ids; the cursor of the next page (if
/// any) in `x-dribble-cursor` (what pypdns follows) and `x-cursor`. Buffered (at most
/// `max_page` results) so that the cursor can lead the body.
pub async fn page(api: Arc<Api>, lookup: Lookup, p: Params, slots: Slots) -> Response<Body> {
    let worker = api.clone();
    let done = tokio::task::spawn_blocking(move || {
        let _slots = slots;
        let mut out = Vec::new();
        let (end, down) = walk(&worker, &lookup, &p, |e| {
            let mut sensors = worker.db.contributors(e);
            sensors.truncate(256);
            if sensors.is_empty()
                && let Some(own) = &worker.own_sensor
            {
                sensors.push(own.clone());
            }
            write_cof(&mut out, e, p.humantime, &sensors);
            out.push(b'\n');
            worker.stats.results.inc();
            Emit::Go
        });
        (out, end, down)
    })
    .await;
    let (out, end, down) = match done {
        Ok(v) => v,
        Err(_) => return super::text(StatusCode::INTERNAL_SERVER_ERROR, "Error: the query failed\n".into()),
    };
    let cursor = match end {
        End::Limited(c) | End::Budget(c) => Some(c),
        End::OffsetTooFar => {
            api.stats.cut.inc("budget");
            return super::text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "Error: scan limit reached while skipping the offset; page with the cursor instead\n".into(),
            );
        }
        End::Failed(e) => {
            api.stats.cut.inc("store_error");
            tracing::error!(error = %e, "query failed in the store");
            return super::text(StatusCode::INTERNAL_SERVER_ERROR, "Error: store error\n".into());
        }
        _ => None,
    };
    let mut r = response(StatusCode::OK, NDJSON, Body::Full(Some(Bytes::from(out))));
    if let Some(note) = partial_note(&down).and_then(|n| header::HeaderValue::from_str(&n).ok()) {
        api.stats.cut.inc("partial");
        r.headers_mut().insert("x-dnsledger-partial", note);
    }
    if let Some(c) = cursor.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
        api.stats.cut.inc("limit");
        r.headers_mut().insert("x-dribble-cursor", c.clone());
        r.headers_mut().insert("x-cursor", c);
    }
    r
}

/// How many index entries a lookup spans (an upper bound on its results), counted up to the
/// scan budget.
pub async fn estimate(api: Arc<Api>, lookup: Lookup, slots: Slots) -> Response<Body> {
    let worker = api.clone();
    let counted = tokio::task::spawn_blocking(move || {
        let _slots = slots;
        worker.db.count_entries(&lookup, worker.config.scan_budget)
    })
    .await;
    match counted {
        Ok(Ok((n, exact))) => super::json(StatusCode::OK, format!("{{\"estimate\":{n},\"exact_bound\":{exact}}}\n")),
        _ => super::text(StatusCode::INTERNAL_SERVER_ERROR, "Error: store error\n".into()),
    }
}

/// How long an idle feed waits between looks at the store, and between keep-alive lines.
const FEED_POLL: std::time::Duration = std::time::Duration::from_millis(200);
const FEED_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);
const FEED_BATCH: usize = 1_000;

/// The live feed: NDJSON lines `{"token":N,"type":"rrset","obj":{COF}}` and
/// `{"token":N,"type":"domain","domain":NAME,"time_first":T}`, in the order the store merged
/// them, from `after` on, for as long as the client stays (idle: `{"cond":"ongoing"}` every
/// 15 s). The first line, `{"cond":"begin","token":N}`, says where it starts; a consumer that
/// reconnects with `after` = the last token it handled misses nothing still kept, and gets
/// nothing twice. Entries trimmed before a consumer came back are announced by a `gap` line.
pub fn feed(api: Arc<Api>, p: super::request::FeedParams, slots: Slots) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_BUFFERED);
    tokio::spawn(async move {
        let _slots = slots;
        let mut after = match p.after {
            Some(a) => a,
            None => {
                let db = api.db.clone();
                match tokio::task::spawn_blocking(move || db.feed_durable()).await {
                    Ok(Ok(at)) => at,
                    _ => {
                        let _ = tx.send(Bytes::from_static(b"{\"cond\":\"failed\",\"msg\":\"store error\"}\n")).await;
                        return;
                    }
                }
            }
        };
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { matches!(tokio::time::timeout(SEND_DEADLINE, tx.send(b)).await, Ok(Ok(()))) }
        };
        if !send(Bytes::from(format!("{{\"cond\":\"begin\",\"token\":{after}}}\n"))).await {
            return;
        }
        let mut idle = std::time::Instant::now();
        let p = Arc::new(p);
        loop {
            if api.shutdown.is_cancelled() {
                let line = format!(
                    "{{\"cond\":\"failed\",\"msg\":\"the server is shutting down; reconnect with after={after}\",\"token\":{after}}}\n"
                );
                let _ = send(Bytes::from(line)).await;
                return;
            }
            let (db, filter) = (api.db.clone(), p.clone());
            let read =
                tokio::task::spawn_blocking(move || db.feed_read(after, FEED_BATCH, |item| feed_admits(&filter, item)))
                    .await;
            let read = match read {
                Ok(Ok(r)) => r,
                _ => {
                    api.stats.cut.inc("store_error");
                    let _ = send(Bytes::from_static(b"{\"cond\":\"failed\",\"msg\":\"store error\"}\n")).await;
                    return;
                }
            };
            let mut out = Vec::new();
            // Entries trimmed before they could be read (after=0 asks for "the oldest kept").
            if after > 0 && read.oldest > after.saturating_add(1) && read.through > after {
                let _ = writeln!(
                    out,
                    "{{\"cond\":\"gap\",\"msg\":\"entries {}..{} are no longer kept\",\"oldest\":{}}}",
                    after + 1,
                    read.oldest - 1,
                    read.oldest
                );
            }
            for e in &read.entries {
                match &e.item {
                    crate::store::FeedItem::Rrset(entry) => {
                        let _ = write!(out, "{{\"token\":{},\"type\":\"rrset\",\"obj\":", e.seq);
                        write_cof(&mut out, entry, false, &[]);
                        out.extend_from_slice(b"}\n");
                        api.stats.results.inc();
                    }
                    crate::store::FeedItem::Domain { name, first } => {
                        let _ = write!(out, "{{\"token\":{},\"type\":\"domain\",\"domain\":", e.seq);
                        let _ = serde_json::to_writer(&mut out, name);
                        let _ = writeln!(out, ",\"time_first\":{first}}}");
                    }
                }
            }
            let advanced = read.through > after;
            after = read.through;
            if !out.is_empty() {
                idle = std::time::Instant::now();
                if !send(Bytes::from(out)).await {
                    api.stats.cut.inc("client_gone");
                    return;
                }
            } else if idle.elapsed() >= FEED_KEEPALIVE {
                idle = std::time::Instant::now();
                // The token lets a consumer whose filter matched nothing for a while resume
                // from here rather than rescan.
                if !send(Bytes::from(format!("{{\"cond\":\"ongoing\",\"token\":{after}}}\n"))).await {
                    return;
                }
            }
            if !advanced {
                tokio::select! {
                    _ = tokio::time::sleep(FEED_POLL) => {}
                    _ = api.shutdown.cancelled() => {}
                    _ = tx.closed() => return,
                }
            }
        }
    });
    response(StatusCode::OK, NDJSON, Body::Stream(rx))
}

fn feed_admits(p: &super::request::FeedParams, item: &crate::store::FeedItem) -> bool {
    let under = |name: &str| p.zone.as_deref().is_none_or(|z| crate::store::keys::at_or_below(name, z));
    match item {
        crate::store::FeedItem::Rrset(e) => {
            p.rrsets && p.rrtype.is_none_or(|t| t == e.rrset.rrtype) && under(&e.rrset.rrname)
        }
        crate::store::FeedItem::Domain { name, .. } => p.domains && under(name),
    }
}
