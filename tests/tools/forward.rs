//! Forwarding helpers shared by the forwarding and ClickHouse tests: sensors with a
//! `[forward]` table, collectors and relays with the test PKI, store contents.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dnsledger::store::Store;

use super::{Proc, dnsledger, metric, wait_for};

pub const SERVER_NAME: &str = "collector.rig.test";

pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("data").join(name)
}

/// A collector or relay with the rig's server certificate, accepting clients of its CA.
pub fn start_ingest(
    kind: &str,
    work: &Path,
    (store_flag, store): (&str, &Path),
    listen: SocketAddr,
    metrics: SocketAddr,
    extra: Vec<std::ffi::OsString>,
) -> Proc {
    let pki = work.join("pki");
    let mut cmd = dnsledger();
    cmd.arg(kind)
        .args(extra)
        .arg(store_flag)
        .arg(store)
        .args(["--listen", &listen.to_string(), "--metrics", &metrics.to_string()])
        .arg("--tls-cert")
        .arg(pki.join("server.pem"))
        .arg("--tls-key")
        .arg(pki.join("server.key"))
        .arg("--client-ca")
        .arg(pki.join("ca.pem"));
    let mut p = Proc::spawn(&format!("{kind}-{}", listen.port()), cmd, work);
    wait_for(&format!("{kind} listening"), Duration::from_secs(20), || {
        assert!(p.is_running(), "{kind} exited:\n{}", p.stderr());
        std::net::TcpStream::connect(listen).is_ok()
    });
    p
}

/// Everything in a store: (rrname, type, bailiwick, rdata) -> (first, last, count).
pub type Contents = BTreeMap<(String, u16, String, Vec<String>), (u64, u64, u64)>;

pub fn contents(db: &Path) -> Contents {
    let store = Store::open(db).unwrap();
    let mut out = Contents::new();
    for negative in [false, true] {
        for e in store.all(negative) {
            let e = e.unwrap();
            out.insert((e.rrset.rrname, e.rrset.rrtype, e.rrset.bailiwick, e.rrset.rdata), (e.first, e.last, e.count));
        }
    }
    out
}

pub fn replay(file: &Path, sock: &Path) {
    let out = super::run({
        let mut c = dnsledger();
        c.args(["tap", "replay"]).arg(file).arg("--unix").arg(sock);
        c
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub fn sensor_toml(work: &Path, name: &str, upstream: SocketAddr, metrics: SocketAddr) -> (PathBuf, PathBuf, PathBuf) {
    let pki = work.join("pki");
    let (db, sock, config) =
        (work.join(format!("{name}.db")), work.join(format!("{name}.sock")), work.join(format!("{name}.toml")));
    std::fs::write(
        &config,
        format!(
            "db = \"{}\"\nmetrics = \"{metrics}\"\n[listen]\nunix = [\"{}\"]\n[pipeline]\nnegative = true\n\
             [privacy]\nprivate_networks = []\n[aggregate]\nwindow_seconds = 1\n\
             [forward]\ncollector = \"{upstream}\"\nserver_name = \"{SERVER_NAME}\"\n\
             ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            db.display(),
            sock.display(),
            pki.join("ca.pem").display(),
            pki.join(format!("{name}.pem")).display(),
            pki.join(format!("{name}.key")).display(),
        ),
    )
    .unwrap();
    (db, sock, config)
}

/// Starts `dnsledger sensor -c config` and waits for its dnstap socket.
pub fn spawn_sensor(name: &str, config: &Path, sock: &Path, work: &Path) -> Proc {
    let mut cmd = dnsledger();
    cmd.args(["sensor", "-q", "-c"]).arg(config);
    let p = Proc::spawn(name, cmd, work);
    super::wait_for_socket(sock);
    p
}

/// Whether a sensor has everything it observed in its store (and so its outbox).
pub fn flushed(metrics: SocketAddr) -> bool {
    let observed = metric(metrics, "dnsledger_sensor_rrsets_observed_total");
    observed.is_some() && observed == metric(metrics, "dnsledger_sensor_observations_flushed_total")
}

/// Waits until a sensor has everything it observed in its store and its outbox is empty.
pub fn settle(metrics: SocketAddr) {
    // Wait until the sensor has flushed all it observed and observed nothing more for 600 ms:
    // right after a replay, a sensor that has not read its first frame yet has flushed all of
    // its 0 observations (a loaded machine showed that). A restarted sensor with nothing new
    // to read settles at 0.
    let start = std::time::Instant::now();
    loop {
        wait_for("windows flushed", Duration::from_secs(30), || flushed(metrics));
        let before = metric(metrics, "dnsledger_sensor_rrsets_observed_total");
        std::thread::sleep(Duration::from_millis(600));
        if metric(metrics, "dnsledger_sensor_rrsets_observed_total") == before && flushed(metrics) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the sensor never settled");
    }
    // The forwarder polls an empty outbox every 200 ms and sets the gauge on each round (the
    // 600 ms above covered it).
    wait_for("outbox drained", Duration::from_secs(60), || {
        metric(metrics, "dnsledger_forward_outbox_batches") == Some(0)
    });
}
