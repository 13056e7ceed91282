//! The query API as analysts use it: Debian's `dnsdbq`, the `dnsdb2` and `pypdns` Python
//! clients (installed by .ci/run), plain HTTP for what they cannot show (SAF terminators,
//! cursors, status codes), against `dnsledger api` over a store built with `dnsledger import`
//! from a COF fixture whose times and addresses sit on the edges the semantics turn on.

mod tools;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tools::browser::Browser;
use tools::fixture::{FIXTURE, PAGED, Reply, fixture_lines, get};
use tools::{Proc, dnsledger, free_port, require, run, wait_for};

const KEY: &str = "analyst-key-0123456789";
const LIMITED_KEY: &str = "limited-key-0123456789";

struct Server {
    addr: SocketAddr,
    proc: Proc,
    _dir: tempfile::TempDir,
}

/// Imports the fixture into a fresh store and serves it; with `keys`, two keys (one limited
/// to 3 queries a day).
fn serve(keys: bool) -> Server {
    serve_with(keys, "", &[])
}

/// [`serve`] with more `[api]` lines and more arguments.
fn serve_with(keys: bool, extra: &str, args: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cof = dir.path().join("fixture.ndjson");
    std::fs::write(&cof, fixture_lines()).unwrap();
    let db = dir.path().join("db");
    let mut import = dnsledger();
    import.arg("import").arg("--db").arg(&db).arg(&cof);
    let out = run(import);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{} RRsets merged", FIXTURE.len() as u64 + PAGED)));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = dnsledger();
    cmd.arg("api").arg("--db").arg(&db);
    if keys || !extra.is_empty() {
        let conf = dir.path().join("api.toml");
        let mut text = format!("[api]\nlisten = \"{addr}\"\nmax_limit = 1000\nmax_offset = 100\n{extra}\n");
        if keys {
            text += &format!(
                "[[api.keys]]\nname = \"analyst\"\nkey = \"{KEY}\"\n\
                 [[api.keys]]\nname = \"trial\"\nkey = \"{LIMITED_KEY}\"\nqueries_per_day = 3\n"
            );
        }
        std::fs::write(&conf, text).unwrap();
        cmd.arg("--api-config").arg(conf);
    } else {
        cmd.arg("--api").arg(addr.to_string());
    }
    cmd.args(args);
    let proc = Proc::spawn("api", cmd, dir.path());
    wait_for("the API", Duration::from_secs(20), || std::net::TcpStream::connect(addr).is_ok());
    Server { addr, proc, _dir: dir }
}

fn key() -> String {
    format!("X-API-Key: {KEY}")
}

/// The SAF lines of a 200 answer: (objects, terminator).
fn saf(r: &Reply) -> (Vec<serde_json::Value>, serde_json::Value) {
    assert_eq!(r.status, 200, "{}", r.body);
    let lines: Vec<serde_json::Value> = r.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.first().unwrap()["cond"], "begin", "{}", r.body);
    assert!(r.body.ends_with('\n'), "every SAF line ends with a newline");
    let term = lines.last().unwrap().clone();
    let objs = lines[1..lines.len() - 1].iter().map(|l| l["obj"].clone()).collect();
    (objs, term)
}

/// `rrname/rrtype` of each object, sorted.
fn names(objs: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> =
        objs.iter().map(|o| format!("{}/{}", o["rrname"].as_str().unwrap(), o["rrtype"].as_str().unwrap())).collect();
    v.sort();
    v
}

fn lookup(s: &Server, path: &str) -> Vec<String> {
    let (objs, term) = saf(&get(s.addr, path, &[&key()]));
    assert_eq!(term["cond"], "succeeded", "{path}");
    names(&objs)
}

#[test]
fn time_fences_are_independent_predicates_overlap_and_strict() {
    let s = serve(false);
    // Overlap (dnsdbq -A 250 -B 320): last seen after 250 and first seen before 320.
    let got = lookup(&s, "/dnsdb/v2/lookup/rrset/name/%2A.example.com?time_last_after=250&time_first_before=320");
    assert_eq!(got, ["deep.b.example.com./AAAA", "www.example.com./A"]);
    // Strict (dnsdbq -c -A 120 -B 380): first seen after 120 and last seen before 380.
    let got = lookup(&s, "/dnsdb/v2/lookup/rrset/name/%2A.example.com?time_first_after=120&time_last_before=380");
    assert_eq!(got, ["deep.b.example.com./AAAA"]);
    // Each fence alone, on the apex's RRsets (A 100-200, NS 100-400, MX 120-180).
    let apex = |q: &str| lookup(&s, &format!("/dnsdb/v2/lookup/rrset/name/example.com?{q}"));
    assert_eq!(apex("time_first_before=110"), ["example.com./A", "example.com./NS"]);
    assert_eq!(apex("time_first_after=110"), ["example.com./MX"]);
    assert_eq!(apex("time_last_before=300"), ["example.com./A", "example.com./MX"]);
    assert_eq!(apex("time_last_after=300"), ["example.com./NS"]);
    // Relative fences: everything in the fixture is decades old.
    assert!(apex("time_last_after=-86400").is_empty());
    assert_eq!(apex("time_last_before=-86400").len(), 3);
}

#[test]
fn wildcards_at_the_apex_and_below_and_cidr_edges() {
    let s = serve(false);
    // `*.example.com` is strictly below the apex.
    assert_eq!(
        lookup(&s, "/dnsdb/v2/lookup/rrset/name/%2A.example.com"),
        ["deep.b.example.com./AAAA", "www.example.com./A"]
    );
    // The apex itself with a type and bailiwick.
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rrset/name/example.com/NS/com"), ["example.com./NS"]);
    assert!(lookup(&s, "/dnsdb/v2/lookup/rrset/name/example.com/NS/example.com").is_empty());
    // Right wildcard: the label boundary matters (www.example.* is not www.examples.*).
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rrset/name/www.example.%2A"), ["www.example.com./A", "www.example.net./A"]);
    assert_eq!(
        lookup(&s, "/dnsdb/v2/lookup/rrset/name/example.%2A"),
        ["example.com./A", "example.com./MX", "example.com./NS", "example.net./TXT"]
    );
    // Without keys, only requests addressed to an IP or localhost (DNS rebinding guard).
    let rebound = get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com", &["Host: pdns.attacker.example"]);
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    let local =
        get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com", &[&format!("Host: localhost:{}", s.addr.port())]);
    assert_eq!(local.status, 200, "{}", local.body);
    // IPv4 prefix edges: .0 and .255 inside, the neighbours outside.
    assert_eq!(
        lookup(&s, "/dnsdb/v2/lookup/rdata/ip/192.0.2.0%2C24"),
        ["example.com./A", "www.example.com./A", "www.example.net./A"]
    );
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/ip/192.0.2.255"), ["www.example.net./A"]);
    assert_eq!(
        lookup(&s, "/dnsdb/v2/lookup/rdata/ip/192.0.1.255-192.0.3.0"),
        ["edge.example.org./A", "example.com./A", "low.example.org./A", "www.example.com./A", "www.example.net./A"]
    );
    // www.example.com has two addresses in the /24: reported once.
    let (objs, _) = saf(&get(s.addr, "/dnsdb/v2/lookup/rdata/ip/192.0.2.80,31", &[]));
    assert_eq!(objs.len(), 1);
    // IPv6 edges.
    assert_eq!(
        lookup(&s, "/dnsdb/v2/lookup/rdata/ip/2001%3Adb8%3A%3A,32"),
        ["deep.b.example.com./AAAA", "v6edge.example.org./AAAA"]
    );
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/ip/2001:db9::,128"), ["v6out.example.org./AAAA"]);
    // Names in rdata: exact, below a zone, by type.
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/name/www.example.com"), ["alias.example.org./CNAME"]);
    assert_eq!(
        lookup(&s, "/dnsdb/v2/lookup/rdata/name/%2A.example.com"),
        ["alias.example.org./CNAME", "example.com./MX", "example.com./NS"]
    );
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/name/%2A.example.com/NS"), ["example.com./NS"]);
    // Right wildcards over rdata names, label by label (`ns` is not `ns1`); an NS set with
    // two matching targets is reported once.
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/name/ns1.example.%2A"), ["example.com./NS"]);
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/name/ns.example.%2A"), Vec::<String>::new());
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/name/%2A.com/NS"), ["example.com./NS"]);
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/name/www.%2A"), ["alias.example.org./CNAME"]);
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/name/mail.example.%2A"), ["example.com./MX"]);
    // Raw: the wire name of example.com, and 192.0.2.1 as 4 bytes.
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rrset/raw/076578616d706c6503636f6d00/MX"), ["example.com./MX"]);
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/raw/c0000201"), ["example.com./A"]);
    // Raw rdata of other types: TXT `v=spf1 -all` in wire format.
    assert_eq!(lookup(&s, "/dnsdb/v2/lookup/rdata/raw/0b763d73706631202d616c6c/TXT"), ["example.net./TXT"]);
    assert!(lookup(&s, "/dnsdb/v2/lookup/rdata/raw/0b763d73706631202d616c6d/TXT").is_empty());
}

#[test]
fn limit_offset_and_cursor_page_consistently() {
    let s = serve(false);
    let base = "/dnsdb/v2/lookup/rrset/name/%2A.paged.example";
    let (all, term) = saf(&get(s.addr, base, &[]));
    assert_eq!((all.len() as u64, term["cond"].as_str()), (PAGED, Some("succeeded")));
    // A limit that cuts: `limited`, with a cursor; a limit equal to the results: succeeded.
    let (first, term) = saf(&get(s.addr, &format!("{base}?limit=7"), &[]));
    assert_eq!((first.len(), term["cond"].as_str()), (7, Some("limited")));
    assert_eq!(first[..], all[..7]);
    let (_, term_exact) = saf(&get(s.addr, &format!("{base}?limit={PAGED}"), &[]));
    assert_eq!(term_exact["cond"], "succeeded");
    // Cursor pages concatenate to the whole answer, in order, nothing twice.
    let mut pages = first.clone();
    let mut cursor = term["cursor"].as_str().unwrap().to_string();
    loop {
        let (objs, term) = saf(&get(s.addr, &format!("{base}?limit=7&cursor={cursor}"), &[]));
        pages.extend(objs);
        match term["cond"].as_str() {
            Some("limited") => cursor = term["cursor"].as_str().unwrap().to_string(),
            Some("succeeded") => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pages, all);
    // Offset pages are slices of the whole.
    let (objs, _) = saf(&get(s.addr, &format!("{base}?limit=5&offset=10"), &[]));
    assert_eq!(objs[..], all[10..15]);
    // A cursor of another query is refused.
    let r = get(s.addr, &format!("/dnsdb/v2/lookup/rrset/name/%2A.example.com?cursor={cursor}"), &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    // Summaries: count and span over the answer; max_count stops early.
    let (objs, term) = saf(&get(s.addr, "/dnsdb/v2/summarize/rrset/name/%2A.paged.example", &[]));
    assert_eq!(term["cond"], "succeeded");
    let sum: u64 = (1..=PAGED).sum();
    assert_eq!(objs[0]["count"], sum);
    assert_eq!(objs[0]["num_results"], PAGED);
    assert_eq!((objs[0]["time_first"].as_u64(), objs[0]["time_last"].as_u64()), (Some(1000), Some(2000 + PAGED - 1)));
    let (objs, _) = saf(&get(s.addr, "/dnsdb/v2/summarize/rrset/name/%2A.paged.example?max_count=10", &[]));
    assert!(objs[0]["count"].as_u64().unwrap() >= 10 && objs[0]["num_results"].as_u64().unwrap() < PAGED);
    // COF pages carry the cursor in a header (pypdns's x-dribble-cursor).
    let r = get(s.addr, "/cof/v1/lookup/rrset/name/%2A.paged.example?limit=10", &[]);
    assert_eq!(r.body.lines().count(), 10);
    assert!(r.headers.contains("x-dribble-cursor: "), "{}", r.headers);
    // Estimates bound the answer.
    let r = get(s.addr, "/dnsledger/v1/estimate/rrset/name/%2A.paged.example", &[]);
    let est: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(est["estimate"], PAGED);
}

/// Per-day rows (aggr=false, dnsdbq's -g): limit and offset count rows, cursor pages cut
/// inside an RRset's rows resume there, fences apply to each row.
#[test]
fn per_day_rows_page_by_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    const DAY: u64 = 86_400;
    const START: u64 = 20_000 * DAY;
    // An RRset `r{owner}.rows.example.` seen on `day` (relative to START) `count` times.
    let seen = |owner: &str, day: i64, count: u64| dnsledger::store::Delta {
        kind: dnsledger::sensor::Kind::Positive,
        rrset: dnsledger::sensor::Rrset {
            rrname: format!("r{owner}.rows.example."),
            rrtype: 1,
            bailiwick: "rows.example.".into(),
            rdata: vec![format!("203.0.113.{}", owner.len())],
        },
        first: (START as i64 + day * DAY as i64) as u64 + 60,
        last: (START as i64 + day * DAY as i64) as u64 + 120,
        count,
        sensors: Vec::new(),
    };
    let merge = |deltas: &[dnsledger::store::Delta]| {
        let store = dnsledger::store::Store::open(&db).unwrap().with_days();
        store.merge(deltas, false).unwrap();
        store.sync().unwrap();
    };
    // Three RRsets, each seen on 4 days (counts 1..=4); a store that keeps per-day rows.
    for day in 0..4 {
        merge(&["0", "1", "2"].map(|o| seen(o, day, day as u64 + 1)));
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let serve_rows = || {
        let mut cmd = dnsledger();
        cmd.arg("api").arg("--db").arg(&db).arg("--api").arg(addr.to_string());
        let proc = Proc::spawn("api", cmd, dir.path());
        wait_for("the API", Duration::from_secs(20), || std::net::TcpStream::connect(addr).is_ok());
        proc
    };
    let s = Server { addr, proc: serve_rows(), _dir: tempfile::tempdir().unwrap() };

    let base = "/dnsdb/v2/lookup/rrset/name/%2A.rows.example?aggr=false";
    let (all, term) = saf(&get(s.addr, base, &[]));
    assert_eq!((all.len(), term["cond"].as_str()), (12, Some("succeeded")));
    for o in &all {
        let (f, l) = (o["time_first"].as_u64().unwrap(), o["time_last"].as_u64().unwrap());
        assert_eq!(f / DAY, l / DAY, "one row per day: {o}");
        assert_eq!(o["count"].as_u64().unwrap(), (f - START) / DAY + 1, "{o}");
    }
    // Cursor pages of 5 rows cut inside RRsets (4 rows each) and concatenate to the whole.
    let mut pages = Vec::new();
    let mut url = format!("{base}&limit=5");
    loop {
        let (objs, term) = saf(&get(s.addr, &url, &[]));
        pages.push(objs.len());
        match term["cond"].as_str() {
            Some("limited") => url = format!("{base}&limit=5&cursor={}", term["cursor"].as_str().unwrap()),
            Some("succeeded") => break,
            other => panic!("{other:?}"),
        }
        if pages.len() > 10 {
            panic!("no end: {pages:?}");
        }
    }
    assert_eq!(pages, [5, 5, 2]);
    let mut joined = Vec::new();
    let mut url = format!("{base}&limit=5");
    loop {
        let (objs, term) = saf(&get(s.addr, &url, &[]));
        joined.extend(objs);
        let Some(c) = term["cursor"].as_str() else { break };
        url = format!("{base}&limit=5&cursor={c}");
    }
    assert_eq!(joined, all);
    // Offset pages (dnsdbq -g -l 5 -O N) are slices of the whole.
    for offset in [0, 5, 10] {
        let (objs, _) = saf(&get(s.addr, &format!("{base}&limit=5&offset={offset}"), &[]));
        assert_eq!(objs[..], all[offset..(offset + 5).min(12)], "offset {offset}");
    }
    let (objs, _) = dnsdbq(&s, &["-r", "*.rows.example", "-g", "-l", "5", "-O", "5", "-j"]);
    let rows = |v: &[serde_json::Value]| -> Vec<(String, u64)> {
        v.iter().map(|o| (o["rrname"].as_str().unwrap().to_string(), o["time_first"].as_u64().unwrap())).collect()
    };
    assert_eq!(rows(&objs), rows(&all[5..10]), "dnsdbq -g -O 5");
    // Fences are per row: only the rows of the last two days.
    let after = START + 2 * DAY;
    let (objs, _) = saf(&get(s.addr, &format!("{base}&time_first_after={after}"), &[]));
    assert_eq!(objs.len(), 6);
    assert!(objs.iter().all(|o| o["time_first"].as_u64().unwrap() > after));
    // COF pages too.
    let r = get(s.addr, "/cof/v1/lookup/rrset/name/%2A.rows.example?aggr=false&limit=5", &[]);
    assert_eq!(r.body.lines().count(), 5, "{}", r.body);
    assert!(r.headers.contains("x-cursor: "), "{}", r.headers);
    // A rows cursor belongs to aggr=false.
    let (_, term) = saf(&get(s.addr, &format!("{base}&limit=5"), &[]));
    let c = term["cursor"].as_str().unwrap();
    let r = get(s.addr, &format!("/dnsdb/v2/lookup/rrset/name/%2A.rows.example?cursor={c}"), &[]);
    assert_eq!(r.status, 400, "{}", r.body);

    // Data added between pages: a row of r1 for a day before the one the cursor stopped at,
    // and a new RRset between r0 and r1 (`r0a` sorts there). Neither is sent on the next page
    // (both are before the cursor) and nothing is sent twice.
    let (page1, term) = saf(&get(s.addr, &format!("{base}&limit=5"), &[]));
    let cursor = term["cursor"].as_str().unwrap().to_string();
    let Server { proc, .. } = s;
    drop(proc);
    merge(&[seen("1", -1, 50), seen("0a", 0, 60)]);
    let s = Server { addr, proc: serve_rows(), _dir: tempfile::tempdir().unwrap() };
    let (mut pages, mut cursor) = (page1, cursor);
    loop {
        let (objs, term) = saf(&get(s.addr, &format!("{base}&limit=5&cursor={cursor}"), &[]));
        pages.extend(objs);
        match term["cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, all, "the pages are the rows as they were when paging began");
    let (now, _) = saf(&get(s.addr, base, &[]));
    assert_eq!(now.len(), 14, "a fresh query has both additions");
}

#[test]
fn bad_queries_keys_and_quotas_get_dnsdb_status_codes() {
    let quotas = tempfile::tempdir().unwrap();
    let quota_file = format!("quota_file = \"{}\"", quotas.path().join("quotas.json").display());
    let s = serve_with(true, &quota_file, &[]);
    for path in [
        "/dnsdb/v2/lookup/rrset/name/*",
        "/dnsdb/v2/lookup/rrset/name/%2A",
        "/dnsdb/v2/lookup/rrset/name/a..example.com",
        "/dnsdb/v2/lookup/rrset/name/ww*w.example.com",
        "/dnsdb/v2/lookup/rrset/name/example.com/NOSUCHTYPE",
        "/dnsdb/v2/lookup/rdata/ip/192.0.2.300",
        "/dnsdb/v2/lookup/rdata/ip/192.0.2.0,40",
        "/dnsdb/v2/lookup/rdata/ip/2001:db8::,129",
        "/dnsdb/v2/lookup/rdata/raw/xyz0",
        "/dnsdb/v2/lookup/rrset/raw/ff",
        "/dnsdb/v2/lookup/rrset/name/example.com?limit=1000000000",
        "/dnsdb/v2/lookup/rrset/name/example.com?limit=-5",
        "/dnsdb/v2/lookup/rrset/name/example.com?time_first_after=yesterday",
        "/dnsdb/v2/lookup/rrset/name/example.com?cursor=00",
        "/dnsdb/v2/lookup/rrset/name/example.com?no_such_parameter=1",
        // An imported store has no per-day rows to answer aggr=false with.
        "/dnsdb/v2/lookup/rrset/name/example.com?aggr=false",
    ] {
        let r = get(s.addr, path, &[&key()]);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.body.trim().len() > 5, "{path}: a message");
    }
    let long = format!("/dnsdb/v2/lookup/rrset/name/{}.example.com", "x".repeat(70));
    assert_eq!(get(s.addr, &long, &[&key()]).status, 400);
    assert_eq!(get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com?offset=101", &[&key()]).status, 416);
    assert_eq!(get(s.addr, "/dnsdb/v2/lookup/nothing/here/x", &[&key()]).status, 404);
    assert_eq!(get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com", &["Accept: text/html"]).status, 403);
    assert_eq!(get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com", &[&key(), "Accept: text/html"]).status, 415);
    // Keys: missing, wrong, right; CIRCL clients' Authorization forms.
    assert_eq!(get(s.addr, "/dnsdb/v2/ping", &[]).status, 403);
    assert_eq!(get(s.addr, "/dnsdb/v2/ping", &["X-API-Key: wrong-key-0123456789"]).status, 403);
    assert_eq!(get(s.addr, "/dnsdb/v2/ping", &[&key()]).body, "{\"ping\":\"ok\"}\n");
    assert_eq!(get(s.addr, "/pdns/query/example.com", &[&format!("Authorization: {KEY}")]).status, 200);
    // Quota: 3 queries, then 429; rate_limit shows it and does not count.
    for _ in 0..3 {
        let r = get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com", &[&format!("X-API-Key: {LIMITED_KEY}")]);
        assert_eq!(r.status, 200);
    }
    let r = get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com", &[&format!("X-API-Key: {LIMITED_KEY}")]);
    assert_eq!(r.status, 429, "{}", r.body);
    let rate = get(s.addr, "/dnsdb/v2/rate_limit", &[&format!("X-API-Key: {LIMITED_KEY}")]);
    let rate: serde_json::Value = serde_json::from_str(&rate.body).unwrap();
    assert_eq!((rate["rate"]["limit"].as_u64(), rate["rate"]["remaining"].as_u64()), (Some(3), Some(0)));
    // The other key is not affected, and the server is still up.
    assert_eq!(get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com", &[&key()]).status, 200);
    let Server { mut proc, .. } = s;
    assert!(proc.is_running());
    // The day's counts outlive a crash (kill -9 after the once-a-second write).
    std::thread::sleep(Duration::from_millis(1500));
    drop(proc);
    let s = serve_with(true, &quota_file, &[]);
    let r = get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com", &[&format!("X-API-Key: {LIMITED_KEY}")]);
    assert_eq!(r.status, 429, "after a restart: {}", r.body);
    assert_eq!(get(s.addr, "/dnsdb/v2/lookup/rrset/name/example.com", &[&key()]).status, 200);
}

fn dnsdbq(s: &Server, args: &[&str]) -> (Vec<serde_json::Value>, String) {
    require("dnsdbq", "dnsdbq");
    let out = Command::new("dnsdbq")
        .env("DNSDB_SERVER", format!("http://{}", s.addr))
        .env("DNSDB_API_KEY", KEY)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "dnsdbq {args:?}: {stderr}");
    let objs = stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    (objs, stdout + &stderr)
}

#[test]
fn dnsdbq_runs_every_kind_of_query_against_us() {
    let s = serve(true);
    let q = |args: &[&str]| names(&dnsdbq(&s, &[&["-j"], args].concat()).0);
    assert_eq!(q(&["-r", "example.com/NS"]), ["example.com./NS"]);
    assert_eq!(q(&["-r", "example.com/NS/com"]), ["example.com./NS"]);
    assert_eq!(q(&["-r", "*.example.com"]), ["deep.b.example.com./AAAA", "www.example.com./A"]);
    assert_eq!(q(&["-r", "www.example.*"]), ["www.example.com./A", "www.example.net./A"]);
    assert_eq!(q(&["-n", "www.example.com"]), ["alias.example.org./CNAME"]);
    assert_eq!(q(&["-n", "*.example.com", "-t", "NS"]), ["example.com./NS"]);
    assert_eq!(q(&["-i", "192.0.2.1"]), ["example.com./A"]);
    assert_eq!(q(&["-i", "192.0.2.0/24"]), ["example.com./A", "www.example.com./A", "www.example.net./A"]);
    assert_eq!(q(&["-i", "192.0.2.0,24"]).len(), 3);
    assert_eq!(q(&["-i", "2001:db8::/32"]), ["deep.b.example.com./AAAA", "v6edge.example.org./AAAA"]);
    assert_eq!(q(&["-i", "192.0.1.255-192.0.2.1"]), ["example.com./A", "low.example.org./A"]);
    // Time fences the way dnsdbq builds them: overlap (-A/-B) and strict (-c).
    assert_eq!(
        q(&["-r", "*.example.com", "-A", "250", "-B", "320"]),
        ["deep.b.example.com./AAAA", "www.example.com./A"]
    );
    assert_eq!(q(&["-r", "*.example.com", "-c", "-A", "120", "-B", "380"]), ["deep.b.example.com./AAAA"]);
    // Text output has the records and times.
    let (_, text) = dnsdbq(&s, &["-r", "www.example.com/A"]);
    assert!(text.contains("www.example.com.  A  192.0.2.80"), "{text}");
    assert!(text.contains(";; count: 7; bailiwick: example.com."), "{text}");
    // Summarize.
    let (objs, _) = dnsdbq(&s, &["-j", "-V", "summarize", "-r", "*.paged.example"]);
    assert_eq!(objs[0]["num_results"], PAGED);
    // A limit (the `limited` terminator is checked over plain HTTP: dnsdbq expects it
    // quietly when it asked for the limit itself).
    let (objs, _) = dnsdbq(&s, &["-j", "-l", "5", "-r", "*.paged.example"]);
    assert_eq!(objs.len(), 5);
    let (objs, _) = dnsdbq(&s, &["-j", "-l", "5", "-O", "28", "-r", "*.paged.example"]);
    assert_eq!(objs.len(), 2);
    // Rate limit info, and an error message shown to the user.
    let (_, text) = dnsdbq(&s, &["-I"]);
    assert!(text.contains("results_max: 1000"), "{text}");
    let (_, text) = dnsdbq(&s, &["-r", "a..example.com"]);
    assert!(text.contains("not a valid DNS name"), "{text}");
}

/// The Python clients, from the virtualenv .ci/run makes (or $DNSLEDGER_PYTHON).
fn python() -> String {
    let py = std::env::var("DNSLEDGER_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/py/bin/python").to_string());
    assert!(
        Path::new(&py).is_file(),
        "{py} not found: .ci/run creates it (python3 -m venv target/py && target/py/bin/pip install dnsdb2 pypdns)"
    );
    py
}

fn python_lines(script: &str) -> Vec<String> {
    let out = Command::new(python()).arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

#[test]
fn dnsdb2_and_pypdns_work_unchanged() {
    let s = serve(true);
    let url = format!("http://{}", s.addr);
    let got: BTreeSet<String> = python_lines(&format!(
        r#"
import dnsdb2
c = dnsdb2.Client("{KEY}", server="{url}")
assert c.ping()
for o in c.lookup_rrset("*.example.com"):
    print("rrset", o["rrname"], o["rrtype"])
for o in c.lookup_rdata_ip("192.0.2.0/24"):
    print("ip", o["rrname"])
for o in c.lookup_rdata_name("www.example.com"):
    print("name", o["rrname"], o["rrtype"])
for o in c.summarize_rrset("*.paged.example"):
    print("summary", o["count"], o["num_results"])
try:
    list(c.lookup_rrset("*.paged.example", limit=3))
except dnsdb2.QueryLimited:
    print("limited")
try:
    list(c.lookup_rrset("example.com", rrtype="NOSUCHTYPE"))
except dnsdb2.QueryError as e:
    print("error")
print("rate", c.rate_limit()["rate"]["limit"])
"#
    ))
    .into_iter()
    .collect();
    let sum: u64 = (1..=PAGED).sum();
    for want in [
        "rrset deep.b.example.com. AAAA".to_string(),
        "rrset www.example.com. A".into(),
        "ip example.com.".into(),
        "ip www.example.net.".into(),
        "name alias.example.org. CNAME".into(),
        format!("summary {sum} {PAGED}"),
        "limited".into(),
        "error".into(),
        "rate unlimited".into(),
    ] {
        assert!(got.contains(&want), "{want} in {got:?}");
    }
    let got: BTreeSet<String> = python_lines(&format!(
        r#"
import pypdns
p = pypdns.PyPDNS(url="{url}/pdns/query", auth_token="{KEY}")
for r in p.rfc_query("www.example.com"):
    print("name", r.rrname, r.rrtype, sorted(r.rdata) if isinstance(r.rdata, list) else r.rdata)
for r in p.rfc_query("192.0.2.0/24"):
    print("ip", r.rrname)
n = sum(1 for _ in p.iter_query("*.paged.example"))
print("paged", n)
try:
    pypdns.PyPDNS(url="{url}/pdns/query", auth_token="wrong-key-0123456789").rfc_query("example.com")
except pypdns.errors.PDNSError as e:
    print("refused", type(e).__name__)
"#
    ))
    .into_iter()
    .collect();
    for want in [
        "name www.example.com. A ['192.0.2.80', '192.0.2.81']".to_string(),
        "ip example.com.".into(),
        "ip www.example.net.".into(),
        format!("paged {PAGED}"),
        "refused ForbiddenError".into(),
    ] {
        assert!(got.contains(&want), "{want} in {got:?}");
    }
}

#[test]
fn dnsledger_query_asks_a_server_like_a_local_store() {
    let s = serve(true);
    let ask = |args: &[&str]| {
        let mut c = dnsledger();
        c.arg("query").args(["--server", &format!("http://{}", s.addr), "--key", KEY]).args(args);
        String::from_utf8(run(c).stdout).unwrap()
    };
    let json = ask(&["-j", "rrset", "*.example.com"]);
    let objs: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(names(&objs), ["deep.b.example.com./AAAA", "www.example.com./A"]);
    let csv = ask(&["-p", "csv", "-k", "count", "--reverse", "rdata", "ip", "192.0.2.0/24"]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "time_first,time_last,count,bailiwick,rrname,rrtype,rdata");
    assert!(rows[1].contains(",7,example.com.,www.example.com.,A,192.0.2.8"), "{csv}");
    assert_eq!(rows.len(), 1 + 2 + 1 + 1, "one row per rdata: {csv}");
    let summary = ask(&["--summarize", "rrset", "*.paged.example"]);
    assert!(summary.contains(&format!("num_results: {PAGED}")), "{summary}");
    let mut wrong = dnsledger();
    wrong.arg("query").args(["--server", &format!("http://{}", s.addr), "--key", "nope", "rrset", "example.com"]);
    let out = wrong.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
}

#[test]
fn https_and_hostile_http_are_handled_and_counted() {
    let pki = tempfile::tempdir().unwrap();
    tools::make_certs(pki.path(), "api.test", &[]);
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        pki.path().join("server.pem").display(),
        pki.path().join("server.key").display()
    );
    let s = serve_with(false, &tls, &["--metrics", &metrics.to_string()]);
    // HTTPS with the CA: answers.
    let mut c = dnsledger();
    c.arg("query").args(["--server", &format!("https://127.0.0.1:{}", s.addr.port())]);
    c.arg("--ca").arg(pki.path().join("ca.pem")).args(["-j", "rrset", "*.example.com"]);
    let out = String::from_utf8(run(c).stdout).unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
    // Without the CA the client refuses the server.
    let mut c = dnsledger();
    c.arg("query").args(["--server", &format!("https://127.0.0.1:{}", s.addr.port())]);
    c.arg("--ca").arg(pki.path().join("server.pem")).args(["rrset", "example.com"]);
    assert!(!c.output().unwrap().status.success());
    // Plaintext to the TLS port, an endless header, garbage: no answer, no crash.
    let plain = get(s.addr, "/dnsdb/v2/ping", &[]);
    assert_ne!(plain.status, 200);
    let huge = format!("X-Filler: {}", "a".repeat(200_000));
    let mut raw = std::net::TcpStream::connect(s.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = raw.write_all(format!("GET / HTTP/1.1\r\n{huge}\r\n\r\n").as_bytes());
    let _ = raw.read_to_end(&mut Vec::new());
    let mut raw = std::net::TcpStream::connect(s.addr).unwrap();
    let _ = raw.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3]);
    drop(raw);
    wait_for("failed connections counted", Duration::from_secs(10), || {
        tools::metric(metrics, "dnsledger_api_connection_errors_total").unwrap_or(0) >= 3
    });
    let mut c = dnsledger();
    c.arg("query").args(["--server", &format!("https://127.0.0.1:{}", s.addr.port())]);
    c.arg("--ca").arg(pki.path().join("ca.pem")).args(["-j", "rrset", "a..b"]);
    assert!(!c.output().unwrap().status.success());
    // Still serving; the work is counted.
    let mut c = dnsledger();
    c.arg("query").args(["--server", &format!("https://127.0.0.1:{}", s.addr.port())]);
    c.arg("--ca").arg(pki.path().join("ca.pem")).args(["-j", "rrset", "www.example.com"]);
    assert_eq!(String::from_utf8(run(c).stdout).unwrap().lines().count(), 1);
    assert_eq!(tools::metric(metrics, "dnsledger_api_results_total"), Some(3));
    assert_eq!(tools::metric(metrics, "dnsledger_api_refused_total{reason=\"bad_request\"}"), Some(1));
    // Two answered, one refused (a..b); the client with the wrong CA never got to ask.
    assert_eq!(tools::metric(metrics, "dnsledger_api_requests_total{endpoint=\"lookup\"}"), Some(3));
}

#[test]
fn the_portal_searches_pivots_and_draws_timelines_in_a_real_browser() {
    let s = serve(true);
    let dir = tempfile::tempdir().unwrap();
    let b = Browser::start(dir.path());
    b.call("POST", "/url", Some(serde_json::json!({"url": format!("http://{}/", s.addr)})));
    // Without the key the page says what to do; with it (entered once) searches work.
    let status = b.search("www.example.com");
    assert!(status.contains("wants an API key"), "{status}");
    let details = b.element("#key-box summary");
    b.call("POST", &format!("/element/{details}/click"), Some(serde_json::json!({})));
    let key = b.element("#key");
    b.call("POST", &format!("/element/{key}/value"), Some(serde_json::json!({"text": KEY})));
    b.script("document.getElementById('key').dispatchEvent(new Event('change'))");
    // A wildcard: the records below the zone, then the records pointing below it; one
    // timeline bar per RRset, placed by time.
    let status = b.search("*.example.com");
    assert_eq!(status, "5 RRsets found.");
    assert_eq!(
        b.names(),
        ["deep.b.example.com.", "www.example.com.", "example.com.", "example.com.", "alias.example.org."]
    );
    let bars = b.script(
        "return [...document.querySelectorAll('section:first-of-type svg.timeline rect.bar')].map(r => [+r.getAttribute('x'), +r.getAttribute('width')])",
    );
    let bars = bars.as_array().unwrap();
    assert_eq!(bars.len(), 2);
    // deep.b (150..350) starts before www (300..400) and both end inside the axis.
    let (x0, x1) = (bars[0][0].as_f64().unwrap(), bars[1][0].as_f64().unwrap());
    assert!(x0 < x1, "{bars:?}");
    // A name: its records and the records pointing at it (the CNAME alias).
    let status = b.search("www.example.com");
    assert_eq!(status, "2 RRsets found.");
    assert_eq!(b.names(), ["www.example.com.", "alias.example.org."]);
    // An address and a prefix.
    b.search("192.0.2.1");
    assert_eq!(b.names(), ["example.com."]);
    b.search("192.0.2.0/24");
    assert_eq!(b.names(), ["example.com.", "www.example.com.", "www.example.net."]);
    // Pivot: click the address of www.example.com -> the names on it.
    let link = b.element("td.rdata a.pivot[href='#q=192.0.2.81']");
    b.call("POST", &format!("/element/{link}/click"), Some(serde_json::json!({})));
    wait_for("the pivot", Duration::from_secs(20), || b.names() == ["www.example.com."]);
    // Pivot: an NS target -> the zones using it.
    b.search("example.com");
    let link = b.element("td.rdata a.pivot[href='#q=ns2.example.com.']");
    b.call("POST", &format!("/element/{link}/click"), Some(serde_json::json!({})));
    wait_for("the NS pivot", Duration::from_secs(20), || b.names() == ["example.com."]);
    let titles = b.script("return [...document.querySelectorAll('section h2')].map(h => h.textContent).join('|')");
    assert!(titles.as_str().unwrap().contains("Records pointing at ns2.example.com."), "{titles}");
    // The screenshot of a result page, kept with the build.
    b.search("*.example.com");
    let png = b.call("GET", "/screenshot", None);
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal.png");
    std::fs::write(&shot, png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    // Bad input gets a helpful message, never an error page.
    for (q, says) in [
        ("bad name!", "no spaces"),
        ("exa_mple..com", "not a DNS name"),
        ("192.0.2.0/40", "not a prefix"),
        ("*", "would match everything"),
    ] {
        let status = b.search(q);
        assert!(status.contains(says), "{q}: {status}");
        let class = b.script("return document.getElementById('status').className");
        assert_eq!(class, "alert", "{q}");
    }
}

#[test]
fn daily_exports_are_compressed_cof_of_the_days_rrsets() {
    let dir = tempfile::tempdir().unwrap();
    let cof = dir.path().join("fixture.ndjson");
    // One more RRset, seen only on 2024-01-01.
    let day = 1_704_067_200u64;
    let extra = serde_json::json!({"rrname": "later.example.net.", "rrtype": "TXT", "bailiwick": "example.net.",
        "rdata": ["\"2024\""], "time_first": day + 10, "time_last": day + 20, "count": 2});
    // Given twice: summed (the merge takes each RRset once per batch).
    std::fs::write(&cof, format!("{}{extra}\n{extra}\n", fixture_lines())).unwrap();
    let db = dir.path().join("db");
    let mut import = dnsledger();
    import.arg("import").arg("--db").arg(&db).arg(&cof);
    run(import);
    let read = |d: &str| -> Vec<serde_json::Value> {
        let mut c = dnsledger();
        c.args(["export", "--day", d, "--db"]).arg(&db).arg("--dir").arg(dir.path().join("out"));
        run(c);
        let file = dir.path().join("out").join(format!("dnsledger-{d}.cof.zst"));
        let mut text = String::new();
        zstd::stream::read::Decoder::new(std::fs::File::open(file).unwrap())
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let epoch = read("1970-01-01");
    assert_eq!(epoch.len() as u64, FIXTURE.len() as u64 + PAGED);
    let later = read("2024-01-01");
    assert_eq!(later.len(), 1);
    assert_eq!(later[0]["rrname"], "later.example.net.");
    assert_eq!((later[0]["count"].as_u64(), later[0]["rdata"][0].as_str()), (Some(4), Some("\"2024\"")));
    assert!(read("2023-12-31").is_empty());
}
