//! Child processes of the rig: finding the binaries (with the Debian package to install when
//! one is missing), spawning daemons with their output in a log file, waiting until they
//! serve, and stopping them and every process they forked, by pid. A daemon's log is printed
//! when it is dropped while the test is failing, so a red test shows why.
//!
//! Daemons stay in the test's process group on purpose: a Ctrl-C on `cargo test` then reaches
//! them too instead of leaving servers on port 53 behind.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Debian keeps daemons in sbin, which the PATH of a `cargo test` run may lack.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// How many trailing log lines a failing test shows per daemon (BIND's banner alone is 40).
const LOG_TAIL_LINES: usize = 150;

/// Finds `name` in PATH or the sbin directories, or panics naming the package to install.
pub fn binary(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(EXTRA_DIRS.iter().map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return candidate;
        }
    }
    panic!("`{name}` not found in PATH or /usr/sbin: install the Debian package {package} (see .ci/run)");
}

/// The system Python first: a pyenv shim in PATH costs a noticeable start-up per spawn and may
/// point at an interpreter the CI image does not have.
pub fn python3() -> PathBuf {
    let system = Path::new("/usr/bin/python3");
    if is_executable(system) { system.to_path_buf() } else { binary("python3", "python3") }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The rig binds port 53 and adds addresses to `lo`: both need root. Reads the effective uid
/// from /proc because std has no getuid.
pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(
        euid,
        Some("0"),
        "the DNS rig binds port 53 on 127.x addresses and adds addresses to lo: run the tests as root (CI does)"
    );
}

/// Runs a short helper command to completion; panics with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    text
}

/// Panics with a helpful message if something already serves `addr`:53, typically a server
/// left behind by a test run that was killed before it could clean up.
pub fn ensure_port_53_free(addr: Ipv4Addr) {
    if let Err(e) = UdpSocket::bind((addr, 53)) {
        let who = Command::new(binary("ss", "iproute2"))
            .args(["-H", "-lnup", &format!("src {addr}:53")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "{addr}:53 is not free ({e}); a server from an earlier, killed test run? \
             Stop it by its pid:\n{who}"
        );
    }
}

/// A long-running server started by the rig. Output goes to `log`; dropping it stops it.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `cmd` with stdin closed and stdout and stderr appended to `log` (daemons that
    /// also write a log file of their own are pointed at the same file).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Daemon {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log.display()));
        let err = out.try_clone().expect("duplicate log file handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Daemon { name: name.to_string(), child, log: log.to_path_buf(), status: None }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// The exit status, if the process has exited (reaping it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap_or(None);
        }
        self.status
    }

    /// Polls `ready` until it holds; panics with the log if the daemon exits or `timeout`
    /// passes first (a generous timeout: the machine may be busy compiling).
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return;
            }
            if let Some(status) = self.exit_status() {
                panic!(
                    "{} exited ({status}) before {what}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!("{} not {what} after {timeout:?}; log {}:\n{}", self.name, self.log.display(), self.log_text());
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the process and everything it forked (NSD's
    /// server processes) to exit; then SIGKILLs what is left. Returns true if the daemon exited
    /// by itself, i.e. had the chance to flush (dnstap STOP, output files).
    pub fn stop(&mut self, grace: Duration) -> bool {
        if self.exit_status().is_some() {
            return true;
        }
        // Taken before the signal: once the parent is gone, its children are re-parented and
        // can no longer be found from it.
        let family = descendants(self.pid());
        signal("TERM", self.pid());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exit_status().is_some() && family.iter().all(|p| !p.alive()) {
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not exit within {grace:?} of SIGTERM: killing it", self.name);
        for p in family.iter().filter(|p| p.alive()) {
            signal("KILL", p.pid);
        }
        if self.exit_status().is_none() {
            signal("KILL", self.pid());
            self.status = self.child.wait().ok();
        }
        false
    }

    /// Prints the tail of the log to stderr (captured by the test harness and shown for
    /// failing tests).
    pub fn print_log(&self) {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        eprintln!("----- {} (pid {}), log {} -----", self.name, self.pid(), self.log.display());
        for line in tail {
            eprintln!("{line}");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        // A failing test gets no grace period: its logs matter, not a clean shutdown.
        self.stop(Duration::from_secs(if panicking { 1 } else { 5 }));
        if panicking {
            self.print_log();
        }
    }
}

/// Sends a signal with kill(1): std can only SIGKILL its own child, and NSD needs SIGTERM to
/// take its forked servers down with it.
fn signal(sig: &str, pid: u32) {
    let _ =
        Command::new("kill").args(["-s", sig, &pid.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// A process identified by pid and start time, so a recycled pid is not mistaken for it.
struct Proc {
    pid: u32,
    start: u64,
}

impl Proc {
    fn alive(&self) -> bool {
        // zombies count as gone: they hold no sockets, and their new parent may never reap them
        matches!(proc_stat(self.pid), Some(s) if s.start == self.start && s.state != 'Z')
    }
}

struct Stat {
    state: char,
    ppid: u32,
    start: u64,
}

/// Parses /proc/PID/stat; fields after the parenthesised command name: state, ppid, ..., and
/// the start time 20 fields after the state.
fn proc_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// All live processes below `root` in the process tree.
fn descendants(root: u32) -> Vec<Proc> {
    let mut children: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some(stat) = proc_stat(pid) {
            children.entry(stat.ppid).or_default().push((pid, stat.start));
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(parent) = todo.pop() {
        for &(pid, start) in children.get(&parent).into_iter().flatten() {
            found.push(Proc { pid, start });
            todo.push(pid);
        }
    }
    found
}

/// True once a socket listens on TCP `addr`. Read from /proc/net/tcp rather than probed with
/// a connection: a probe would leave a trace in the resolver (and come from 127.0.0.1, as std
/// cannot choose a TCP source address).
pub fn tcp_listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(addr) = addr else { return false };
    // "01013C7F:0035" for 127.60.1.1:53: the address as the kernel's native-endian u32, the port as a number
    let wanted = format!("{:08X}:{:04X}", u32::from_ne_bytes(addr.ip().octets()), addr.port());
    const LISTEN: &str = "0A";
    fs::read_to_string("/proc/net/tcp").unwrap_or_default().lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        local == Some(wanted.as_str()) && state == Some(LISTEN)
    })
}

/// Sends `zone SOA` (RD=0) to `server`:53 from `source` and reports whether an authoritative
/// NOERROR answer came back: the server is up and has loaded the zone.
pub fn soa_answered(server: Ipv4Addr, source: Ipv4Addr, zone: &str) -> bool {
    let Ok(sock) = UdpSocket::bind((source, 0)) else { return false };
    if sock.set_read_timeout(Some(Duration::from_millis(200))).is_err() {
        return false;
    }
    let id: u16 = 0x5a17;
    let mut query = Vec::with_capacity(64);
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // flags 0, QDCOUNT 1
    for label in zone.split('.').filter(|l| !l.is_empty()) {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 6, 0, 1]); // root label, type SOA, class IN
    if sock.send_to(&query, (server, 53)).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) if n >= 12 => {
            let qr_aa = buf[2] & 0x84 == 0x84;
            let rcode = buf[3] & 0x0f;
            buf[..2] == id.to_be_bytes() && qr_aa && rcode == 0
        }
        _ => false,
    }
}
