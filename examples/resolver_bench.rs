//! Resolver benchmark with `dnsperf` on the loopback rig (needs root and the rig's packages,
//! like the tests): `dnsledger resolver` against unbound on the same hierarchy in the same run,
//! one thread each, both sending dnstap to `fstrm_capture`, plus ours with dnstap off and unbound
//! with query name minimisation on (unbound's default; the rig's unbound has it off).
//!
//! - cached: 10 names asked over and over for `BENCH_SECONDS` (default 10);
//! - cache miss: unique names under a wildcard (`r<round>-<n>.wild.example.com A`), each one
//!   an upstream exchange with example.com's server (delegations cached), run through once.
//!
//! Rounds alternate between the resolvers; medians are printed.
//! `cargo build --release && cargo run --release --example resolver_bench`
//! (release binary at target/release/dnsledger, or `DNSLEDGER_BIN`).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{DnstapOut, FstrmCapture, Hierarchy, Unbound, UnboundOptions};

const BLOCK: u8 = 70;
const ROUNDS: usize = 3;
const MISS_NAMES: usize = 20_000;
const CACHED: &[&str] = &[
    "www.example.com A",
    "www.example.com AAAA",
    "mail.example.com A",
    "example.com MX",
    "example.com TXT",
    "txt.example.com TXT",
    "ftp.example.com A",
    "www.bank.com A",
    "www.evil.test A",
    "80.2.0.192.in-addr.arpa PTR",
];

struct Resolver {
    name: &'static str,
    addr: Ipv4Addr,
    pid: u32,
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    ticks / 100.0
}

/// dnsperf against `r`, with the share of one core the resolver used meanwhile.
fn measure(r: &Resolver, client: Ipv4Addr, data: &Path, extra: &[&str]) -> (f64, f64, String) {
    let (cpu0, t0) = (cpu_seconds(r.pid), std::time::Instant::now());
    let (qps, lost) = dnsperf(r.addr, client, data, extra);
    let cpu = (cpu_seconds(r.pid) - cpu0) / t0.elapsed().as_secs_f64();
    (qps, cpu, lost)
}

fn dnsperf(server: Ipv4Addr, client: Ipv4Addr, data: &Path, extra: &[&str]) -> (f64, String) {
    let out = Command::new("dnsperf")
        .args(["-s", &server.to_string(), "-a", &client.to_string(), "-d"])
        .arg(data)
        .args(["-c", "10", "-t", "10"])
        .args(extra)
        .output()
        .expect("dnsperf (Debian package dnsperf)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let qps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no QPS in dnsperf output:\n{text}"));
    let lost = text.lines().find(|l| l.contains("Queries lost:")).unwrap_or("").trim().to_string();
    (qps, lost)
}

fn start_ours(bin: &Path, work: &Path, h: &Hierarchy, listen: Ipv4Addr, dnstap: Option<&Path>) -> Child {
    let config = work.join(format!("resolver-{listen}.toml"));
    // Metrics on 127.0.0.1:19000 + last octet, for the exchange counts printed at the end.
    let mut text = format!(
        "metrics = \"127.0.0.1:{}\"\n[listen]\nudp = [\"{listen}:53\"]\ntcp = [\"{listen}:53\"]\n[access]\nallow = [\"127.{BLOCK}.2.0/24\"]\n\
         [recursion]\nroot_hints = \"{}\"\nallow_servers = [\"127.{BLOCK}.0.0/24\"]\nsource_v4 = \"{listen}\"\n",
        19_000 + u16::from(listen.octets()[3]),
        h.root_hints_path().display()
    );
    if let Some(sock) = dnstap {
        text.push_str(&format!("[dnstap]\nunix = \"{}\"\n", sock.display()));
    }
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(work.join(format!("resolver-{listen}.log"))).unwrap();
    let mut child = Command::new(bin)
        .args(["resolver", "-c"])
        .arg(&config)
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .expect("start dnsledger resolver");
    for _ in 0..200 {
        if std::net::TcpStream::connect(SocketAddr::from((listen, 53))).is_ok() {
            // Something answers: ours, not a resolver left over from an earlier run.
            std::thread::sleep(Duration::from_millis(200));
            if let Ok(Some(status)) = child.try_wait() {
                panic!("resolver on {listen} exited ({status}): another one holds the address? see {}", work.display());
            }
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("resolver on {listen} did not start; see {}", work.display());
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    dnsledger::alloc::configure();
    let bin = std::env::var_os("DNSLEDGER_BIN").map(PathBuf::from).unwrap_or_else(|| "target/release/dnsledger".into());
    assert!(bin.exists(), "{} not built: cargo build --release", bin.display());
    // Queries outstanding in the miss runs: 1 shows the latency of one resolution.
    let outstanding = std::env::var("BENCH_MISS_OUTSTANDING").unwrap_or_else(|_| "200".into());
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let tmp = tempfile::tempdir().unwrap();
    // BENCH_KEEP=1 keeps the work directory (captures, logs) for a look afterwards.
    let work = if std::env::var_os("BENCH_KEEP").is_some() { tmp.keep() } else { tmp.path().to_path_buf() };
    let work = work.as_path();
    let h = Hierarchy::start(BLOCK, work);
    let client = h.client_addr(1);

    let unbound_sock = work.join("unbound.sock");
    let _unbound_capture = FstrmCapture::unix(&unbound_sock, &work.join("unbound.fstrm"));
    let mut options = UnboundOptions::new(DnstapOut::Unix(unbound_sock));
    // Resolver messages only, as ours emits.
    options.client_messages = false;
    let unbound = Unbound::start_with(&h, h.resolver_addr(1), options.clone(), work);
    // unbound as shipped minimises query names (its default, like hickory's recursor, which
    // cannot turn it off); the rig's unbound above does not.
    let qmin_sock = work.join("unbound-qmin.sock");
    let _qmin_capture = FstrmCapture::unix(&qmin_sock, &work.join("unbound-qmin.fstrm"));
    options.dnstap = Some(DnstapOut::Unix(qmin_sock));
    options.extra_server = "qname-minimisation: yes".into();
    let unbound_qmin = Unbound::start_with(&h, h.resolver_addr(2), options, work);
    let ours_sock = work.join("ours.sock");
    let _ours_capture = FstrmCapture::unix(&ours_sock, &work.join("ours.fstrm"));
    let ours = Stopped(start_ours(&bin, work, &h, h.resolver_addr(3), Some(&ours_sock)));
    let ours_off = Stopped(start_ours(&bin, work, &h, h.resolver_addr(4), None));
    let resolvers = [
        Resolver { name: "unbound (dnstap on)", addr: h.resolver_addr(1), pid: unbound.pid() },
        Resolver { name: "unbound, qmin (dnstap on)", addr: h.resolver_addr(2), pid: unbound_qmin.pid() },
        Resolver { name: "dnsledger (dnstap on)", addr: h.resolver_addr(3), pid: ours.0.id() },
        Resolver { name: "dnsledger (dnstap off)", addr: h.resolver_addr(4), pid: ours_off.0.id() },
    ];

    let cached = work.join("cached.txt");
    std::fs::write(&cached, CACHED.join("\n") + "\n").unwrap();
    for r in &resolvers {
        dnsperf(r.addr, client, &cached, &["-q", "200", "-n", "1"]); // warm the cache
    }
    let mut cached_qps = vec![Vec::new(); resolvers.len()];
    let mut miss_qps = vec![Vec::new(); resolvers.len()];
    for round in 0..ROUNDS {
        for (i, r) in resolvers.iter().enumerate() {
            let (qps, cpu, lost) = measure(r, client, &cached, &["-q", "200", "-l", &seconds.to_string()]);
            println!("round {round} cached  {:<24} {qps:>10.0} qps  cpu {:>3.0}%  {lost}", r.name, cpu * 100.0);
            cached_qps[i].push(qps);
            let names = work.join(format!("miss-{round}-{i}.txt"));
            let text: String = (0..MISS_NAMES).map(|n| format!("r{round}-{i}-{n}.wild.example.com A\n")).collect();
            std::fs::write(&names, text).unwrap();
            let (qps, cpu, lost) = measure(r, client, &names, &["-q", &outstanding, "-n", "1"]);
            println!("round {round} miss    {:<24} {qps:>10.0} qps  cpu {:>3.0}%  {lost}", r.name, cpu * 100.0);
            miss_qps[i].push(qps);
        }
    }
    for r in &resolvers[2..] {
        let port = 19_000 + u16::from(r.addr.octets()[3]);
        let text =
            std::process::Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}/metrics")]).output();
        let text = text.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let pick = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or("").to_string();
        println!(
            "{}: {} | {} | {} | {}",
            r.name,
            pick("dnsledger_resolver_queries_udp_total"),
            pick("dnsledger_resolver_upstream_udp_total"),
            pick("dnsledger_resolver_upstream_tcp_total"),
            pick("dnsledger_resolver_cache_answers_total")
        );
    }
    println!("\nmedians of {ROUNDS} rounds (queries/s)");
    println!("{:<24} {:>10} {:>10}", "resolver", "cached", "miss");
    for (i, r) in resolvers.iter().enumerate() {
        println!("{:<24} {:>10.0} {:>10.0}", r.name, median(&mut cached_qps[i]), median(&mut miss_qps[i]));
    }
    if let Ok(seconds) = std::env::var("BENCH_PROFILE_SECONDS") {
        // perf profile of ours (dnstap on) answering from the cache, then missing it.
        for (what, data, extra) in
            [("cached", cached.clone(), vec!["-l", "5"]), ("miss", work.join("miss-0-2.txt"), vec!["-n", "1"])]
        {
            let out = work.join(format!("perf-{what}.data"));
            let mut perf = Command::new("perf")
                .args(["record", "-g", "-p", &ours.0.id().to_string(), "-o"])
                .arg(&out)
                .args(["--", "sleep", &seconds])
                .stderr(Stdio::null())
                .spawn()
                .expect("perf");
            std::thread::sleep(Duration::from_millis(300));
            if what == "miss" {
                let text: String = (0..MISS_NAMES).map(|n| format!("p-{n}.wild.example.com A\n")).collect();
                std::fs::write(&data, text).unwrap();
            }
            dnsperf(resolvers[2].addr, client, &data, &[&["-q", "200"], extra.as_slice()].concat());
            let _ = perf.wait();
            let report = Command::new("perf")
                .args(["report", "--no-children", "--percent-limit", "1", "--stdio", "-g", "none", "-i"])
                .arg(&out)
                .output()
                .expect("perf report");
            println!(
                "\nperf, {what}:\n{}",
                String::from_utf8_lossy(&report.stdout)
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .take(60)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// Our resolver, stopped when dropped: also when the benchmark panics, so that no resolver
/// is left holding the rig's addresses for the next run.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
