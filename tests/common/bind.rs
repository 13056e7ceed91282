//! A real BIND 9 (`named`) recursive resolver over the rig's [`Hierarchy`], sending dnstap
//! (resolver and client messages) to a unix socket: the second dnstap dialect the sensor must
//! read (identity and version by default, ~1 ms timestamps, frames out of time order).
//!
//! named's `listen-on` only binds addresses configured on an interface, so the listen address
//! is added to `lo` for the resolver's lifetime. `controls { }` keeps rndc off 127.0.0.1:953;
//! `empty-zones-enable no` keeps the TEST-NET reverse zone from being answered locally.
//! Running as root in the foreground (`-g`) needs no `-u`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::hierarchy::Hierarchy;
use super::process::{self, Daemon};

/// Everything about a named instance a test may want to vary.
#[derive(Clone, Debug)]
pub struct BindOptions {
    /// Unix socket for `dnstap-output`; `None` disables dnstap.
    pub dnstap_unix: Option<PathBuf>,
    /// Value of `dnstap-identity`.
    pub identity: String,
    /// Extra statements for the `options { }` block (e.g. `qname-minimization relaxed;`,
    /// which replaces the rig default `off`).
    pub extra_options: String,
}

impl BindOptions {
    pub fn new(dnstap_unix: &Path) -> BindOptions {
        BindOptions {
            dnstap_unix: Some(dnstap_unix.to_path_buf()),
            identity: "bind.rig".to_string(),
            extra_options: String::new(),
        }
    }
}

const START_TIMEOUT: Duration = Duration::from_secs(20);
/// named closes dnstap and exits ~1.3 s after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A running named. Dropping it stops it and removes its address from `lo`.
pub struct Bind {
    daemon: Daemon,
    listen: Ipv4Addr,
    dir: PathBuf,
    address_added: bool,
}

impl Bind {
    /// Starts named on `listen`:53 (`127.B.1.n` by convention) with dnstap to `dnstap_unix`.
    pub fn start(hierarchy: &Hierarchy, listen: Ipv4Addr, dnstap_unix: &Path, workdir: &Path) -> Bind {
        Bind::start_with(hierarchy, listen, BindOptions::new(dnstap_unix), workdir)
    }

    pub fn start_with(hierarchy: &Hierarchy, listen: Ipv4Addr, options: BindOptions, workdir: &Path) -> Bind {
        super::check_rig_address(listen);
        let named = process::binary("named", "bind9");
        process::ensure_port_53_free(listen);
        let dir = workdir.join(format!("named-{listen}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let hints = dir.join("root.hints");
        fs::write(&hints, hierarchy.root_hints()).expect("write root.hints");
        let conf = dir.join("named.conf");
        fs::write(&conf, named_conf(listen, &dir, &hints, &options)).expect("write named.conf");

        add_lo_address(listen);
        // From here on, Drop removes the address even if named fails to start.
        let mut cmd = Command::new(named);
        // -g: foreground, log to stderr; -4: no IPv6 sockets; -n 1: one worker thread
        cmd.args(["-g", "-4", "-n", "1", "-c"]).arg(&conf);
        let daemon = Daemon::spawn(&format!("named {listen}"), cmd, &dir.join("named.log"));
        let mut bind = Bind { daemon, listen, dir, address_added: true };
        let addr = SocketAddr::from((listen, 53));
        bind.daemon.wait_until("listening", START_TIMEOUT, || process::tcp_listening(addr));
        bind
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.listen
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Directory with named.conf, named.log and named's working files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// Graceful stop: SIGTERM, then waits for named to close dnstap and exit. Panics if it
    /// had to be killed (the dnstap stream is then incomplete).
    pub fn stop(&mut self) {
        let graceful = self.daemon.stop(STOP_GRACE);
        self.remove_address();
        assert!(graceful, "named did not exit within {STOP_GRACE:?} of SIGTERM; log:\n{}", self.daemon.log_text());
    }

    fn remove_address(&mut self) {
        if std::mem::take(&mut self.address_added) {
            let _ = Command::new(process::binary("ip", "iproute2"))
                .args(["addr", "del", &format!("{}/32", self.listen), "dev", "lo"])
                .output();
        }
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.daemon.stop(Duration::from_secs(if panicking { 1 } else { 5 }));
        self.remove_address();
        // the daemon field prints its log afterwards if the test is failing
    }
}

/// Adds `addr/32` to `lo`. "File exists" is fine: a run killed before cleaning up left it, and
/// the rig owns the 127.B.1.x addresses anyway.
fn add_lo_address(addr: Ipv4Addr) {
    let out = Command::new(process::binary("ip", "iproute2"))
        .args(["addr", "add", &format!("{addr}/32"), "dev", "lo"])
        .output()
        .expect("run ip addr add");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || stderr.contains("File exists"), "ip addr add {addr}/32 dev lo failed: {stderr}");
}

fn named_conf(listen: Ipv4Addr, dir: &Path, hints: &Path, options: &BindOptions) -> String {
    let dnstap = match &options.dnstap_unix {
        Some(path) => format!(
            "    dnstap {{ resolver; client; }};\n\
             \x20   dnstap-output unix \"{}\";\n\
             \x20   dnstap-identity \"{}\";\n",
            path.display(),
            options.identity
        ),
        None => String::new(),
    };
    format!(
        "options {{\n\
         \x20   directory \"{dir}\";\n\
         \x20   pid-file \"{dir}/named.pid\";\n\
         \x20   session-keyfile \"{dir}/session.key\";\n\
         \x20   managed-keys-directory \"{dir}\";\n\
         \x20   listen-on port 53 {{ {listen}; }};\n\
         \x20   listen-on-v6 {{ none; }};\n\
         \x20   query-source address {listen};\n\
         \x20   recursion yes;\n\
         \x20   allow-query {{ 127.0.0.0/8; }};\n\
         \x20   allow-recursion {{ 127.0.0.0/8; }};\n\
         \x20   empty-zones-enable no;\n\
         \x20   dnssec-validation no;\n\
         {qmin}\
         \x20   notify no;\n\
         \x20   max-cache-size 32m;\n\
         {dnstap}\
         {extra}\
         }};\n\
         controls {{ }};\n\
         zone \".\" {{ type hint; file \"{hints}\"; }};\n",
        dir = dir.display(),
        hints = hints.display(),
        // named refuses a statement given twice: let extra_options override the default
        qmin = if options.extra_options.contains("qname-minimization") { "" } else { "    qname-minimization off;\n" },
        extra = options.extra_options.lines().map(|l| format!("    {}\n", l.trim())).collect::<String>(),
    )
}
