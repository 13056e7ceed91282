//! Test support for driving real processes: our `dnsledger` binary and the reference Frame
//! Streams / dnstap tools from Debian. A [`Proc`] is killed when dropped and, if the test is
//! failing, prints what the process wrote to stderr.

#![allow(dead_code)]

pub mod browser;
pub mod clickhouse;
pub mod feed;
pub mod fixture;
pub mod forward;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the `dnsledger` binary built for these tests.
pub fn dnsledger() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dnsledger"));
    c.env("DNSLEDGER_LOG", "info");
    c
}

/// Fails with an installation hint if a Debian tool is missing.
pub fn require(tool: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false);
    assert!(found, "`{tool}` not found: install the Debian package {package} (.ci/run does)");
}

/// A child process with its stderr captured to a file.
pub struct Proc {
    pub name: String,
    child: Child,
    stderr: PathBuf,
    stdout: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let stderr = dir.join(format!("{name}.stderr"));
        let stdout = dir.join(format!("{name}.stdout"));
        cmd.stdout(Stdio::from(File::create(&stdout).unwrap()));
        cmd.stderr(Stdio::from(File::create(&stderr).unwrap()));
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.into(), child, stderr, stdout }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns stderr.
    pub fn terminate(mut self) -> String {
        self.signal("TERM");
        let status = wait_timeout(&mut self.child, Duration::from_secs(20));
        let err = self.stderr();
        assert!(status.is_some(), "{} did not exit after SIGTERM:\n{err}", self.name);
        err
    }

    /// Waits for the process to exit by itself (bounded).
    pub fn wait(mut self, limit: Duration) -> (bool, String) {
        let status = wait_timeout(&mut self.child, limit);
        let err = self.stderr();
        let status = status.unwrap_or_else(|| panic!("{} still running after {limit:?}:\n{err}", self.name));
        (status, err)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<bool> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.success());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.stderr());
        }
    }
}

/// Waits until `cond` holds (bounded), panicking with `what` otherwise.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a unix socket to appear.
pub fn wait_for_socket(path: &Path) {
    wait_for(&format!("socket {}", path.display()), Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    });
}

/// Runs a command to completion, panicking with its stderr if it fails.
pub fn run(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A free TCP port on 127.0.0.1 (bound then released), below the kernel's ephemeral range: a
/// port from that range (what binding port 0 gives) can be taken, before the test binds it, as
/// the source port of an outgoing connection (the likely reason, not confirmed, why a
/// ClickHouse shard once failed to start five times in a row while the others connected to
/// ZooKeeper). Ports are tried from a start that differs per process (nextest runs tests in
/// parallel processes) and per call.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u32 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if low > 11_024 {
        let span = low - 11_024;
        let start = std::process::id().wrapping_mul(7_919).wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed) * 613);
        for i in 0..span {
            let port = (10_000 + (start.wrapping_add(i * 101)) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Data frames of an fstrm file, decoded by our reader.
pub fn frames_of(path: &Path) -> Vec<Vec<u8>> {
    dnsledger::framestream::FileReader::open(path, dnsledger::framestream::DNSTAP_CONTENT_TYPE)
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|f| f.unwrap().to_vec())
        .collect()
}

/// The value of one Prometheus metric line (`name{labels}` as written) from `GET /metrics`;
/// `None` if the endpoint or the line is not there.
pub fn metric(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The observation count of the sensor's totals line (`sensor: ... N RRset observations ...`).
pub fn sensor_observations(log: &str) -> u64 {
    log.split(" RRset observations")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no totals line:\n{log}"))
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    run(cmd);
}

/// With the openssl command line, in `dir`: a CA (`ca.pem`, `ca.key`), a server certificate
/// for `server_name` and 127.0.0.1 (`server.pem`, `server.key`), and one client certificate
/// per name, with that name as its CN (`NAME.pem`, `NAME.key`).
pub fn make_certs(dir: &Path, server_name: &str, clients: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let ec = |out: &str| {
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", out].map(String::from)
    };
    openssl(dir, &ec("ca.key").each_ref().map(String::as_str));
    openssl(dir, &["req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=rig CA", "-days", "2", "-out", "ca.pem"]);
    let mut certs = vec![(
        "server".to_string(),
        format!("subjectAltName=DNS:{server_name},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
    )];
    certs.extend(clients.iter().map(|c| (c.to_string(), "extendedKeyUsage=clientAuth\n".to_string())));
    for (name, ext) in certs {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(dir, &ec(&format!("{name}.key")).each_ref().map(String::as_str));
        let (key, csr, pem, extfile) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(dir, &["req", "-new", "-key", &key, "-subj", &format!("/CN={name}"), "-out", &csr]);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        );
    }
}
