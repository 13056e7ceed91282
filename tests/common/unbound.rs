//! A real unbound recursive resolver over the rig's [`Hierarchy`], sending dnstap to a unix
//! socket or TCP address: the main source of dnstap for the sensor's end-to-end tests.
//!
//! Configured the way DOMAIN.md found necessary: loopback upstreams allowed, the default
//! local zones that would hide `test.` and the TEST-NET-1 reverse zone switched off, only the
//! iterator module (no DNSSEC), qname minimisation off so the upstream queries are
//! predictable. Queries leave from the listen address, so nothing uses 127.0.0.1.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::hierarchy::Hierarchy;
use super::process::{self, Daemon};

/// Where a resolver sends its dnstap stream.
#[derive(Clone, Debug)]
pub enum DnstapOut {
    /// Unix socket path (the listener must exist before the resolver starts, or the resolver
    /// only connects after its reconnect back-off).
    Unix(PathBuf),
    /// Plain TCP (unbound's `dnstap-ip`, TLS off).
    Tcp(SocketAddr),
    /// TCP with TLS: the server is authenticated as `server_name` against the CA bundle `ca`;
    /// with `client`, unbound presents that (certificate, key) pair.
    Tls { addr: SocketAddr, server_name: String, ca: PathBuf, client: Option<(PathBuf, PathBuf)> },
}

/// Everything about an unbound instance a test may want to vary.
#[derive(Clone, Debug)]
pub struct UnboundOptions {
    /// `None`: dnstap disabled.
    pub dnstap: Option<DnstapOut>,
    /// `false` writes `dnstap-bidirectional: no`: START without the READY/ACCEPT handshake.
    pub bidirectional: bool,
    /// Value of the dnstap identity field.
    pub identity: String,
    /// Extra lines for the `server:` section (e.g. `qname-minimisation: yes`), indented or not.
    pub extra_server: String,
    /// Log CLIENT_QUERY / CLIENT_RESPONSE as well as the RESOLVER_* messages.
    pub client_messages: bool,
}

impl UnboundOptions {
    pub fn new(dnstap: DnstapOut) -> UnboundOptions {
        UnboundOptions {
            dnstap: Some(dnstap),
            bidirectional: true,
            identity: "unbound.rig".to_string(),
            extra_server: String::new(),
            client_messages: true,
        }
    }
}

/// Generous for a loaded machine; unbound is normally up in ~0.1 s.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// unbound exits within ~30 ms of SIGTERM; the rest is slack for a loaded machine.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// unbound 1.17 hands dnstap messages from its worker to its output thread on a 1 s timer (or
/// once 32 are queued) and drops what is still queued when it exits: measured, the last second
/// of messages went missing on an immediate SIGTERM. Waiting out the timer first loses nothing.
const DNSTAP_HANDOVER_WAIT: Duration = Duration::from_millis(1500);

/// A running unbound. Dropping it stops it (SIGTERM, then SIGKILL after a grace period).
pub struct Unbound {
    daemon: Daemon,
    listen: Ipv4Addr,
    dir: PathBuf,
}

impl Unbound {
    /// Starts unbound on `listen`:53 (an address of the hierarchy's block, `127.B.1.n` by
    /// convention) with dnstap of resolver and client messages to `dnstap`.
    pub fn start(hierarchy: &Hierarchy, listen: Ipv4Addr, dnstap: DnstapOut, workdir: &Path) -> Unbound {
        Unbound::start_with(hierarchy, listen, UnboundOptions::new(dnstap), workdir)
    }

    pub fn start_with(hierarchy: &Hierarchy, listen: Ipv4Addr, options: UnboundOptions, workdir: &Path) -> Unbound {
        super::check_rig_address(listen);
        let unbound = process::binary("unbound", "unbound");
        process::ensure_port_53_free(listen);
        let dir = workdir.join(format!("unbound-{listen}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let hints = dir.join("root.hints");
        fs::write(&hints, hierarchy.root_hints()).expect("write root.hints");
        let conf = dir.join("unbound.conf");
        fs::write(&conf, unbound_conf(listen, &dir, &hints, &options)).expect("write unbound.conf");

        let mut cmd = Command::new(unbound);
        // -d: foreground; logging goes to stderr (logfile ""), which Daemon puts in the log
        cmd.arg("-d").arg("-c").arg(&conf);
        let mut daemon = Daemon::spawn(&format!("unbound {listen}"), cmd, &dir.join("unbound.log"));
        let addr = SocketAddr::from((listen, 53));
        daemon.wait_until("listening", START_TIMEOUT, || process::tcp_listening(addr));
        Unbound { daemon, listen, dir }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.listen
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Directory with unbound.conf and unbound.log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// Graceful stop that loses no dnstap message: waits 1.5 s for unbound's worker to hand
    /// its queued messages to the output thread, then SIGTERM, and waits for unbound to send
    /// STOP and exit. Panics if it had to be killed (the dnstap stream is then incomplete).
    pub fn stop(&mut self) {
        if self.daemon.exit_status().is_none() {
            std::thread::sleep(DNSTAP_HANDOVER_WAIT);
        }
        assert!(
            self.daemon.stop(STOP_GRACE),
            "unbound did not exit within {STOP_GRACE:?} of SIGTERM; log:\n{}",
            self.daemon.log_text()
        );
    }
}

fn unbound_conf(listen: Ipv4Addr, dir: &Path, hints: &Path, options: &UnboundOptions) -> String {
    let mut conf = format!(
        "server:\n\
         \x20   interface: {listen}\n\
         \x20   port: 53\n\
         \x20   outgoing-interface: {listen}\n\
         \x20   do-ip4: yes\n\
         \x20   do-ip6: no\n\
         \x20   do-udp: yes\n\
         \x20   do-tcp: yes\n\
         \x20   access-control: 127.0.0.0/8 allow\n\
         \x20   username: \"\"\n\
         \x20   chroot: \"\"\n\
         \x20   directory: \"{dir}\"\n\
         \x20   pidfile: \"{dir}/unbound.pid\"\n\
         \x20   use-syslog: no\n\
         \x20   logfile: \"\"\n\
         \x20   log-time-ascii: yes\n\
         \x20   verbosity: 1\n\
         \x20   num-threads: 1\n\
         \x20   root-hints: \"{hints}\"\n\
         \x20   module-config: \"iterator\"\n\
         \x20   qname-minimisation: no\n\
         \x20   do-not-query-localhost: no\n\
         \x20   local-zone: \"test.\" nodefault\n\
         \x20   local-zone: \"2.0.192.in-addr.arpa.\" nodefault\n",
        dir = dir.display(),
        hints = hints.display(),
    );
    for line in options.extra_server.lines() {
        conf.push_str(&format!("    {}\n", line.trim()));
    }
    // remote control would listen on 127.0.0.1:8953
    conf.push_str("remote-control:\n    control-enable: no\n");
    if let Some(out) = &options.dnstap {
        conf.push_str("dnstap:\n    dnstap-enable: yes\n");
        match out {
            DnstapOut::Unix(path) => conf.push_str(&format!("    dnstap-socket-path: \"{}\"\n", path.display())),
            // The compiled-in socket path (/run/dnstap.sock) wins over dnstap-ip unless blanked.
            DnstapOut::Tcp(addr) => conf.push_str(&format!(
                "    dnstap-socket-path: \"\"\n    dnstap-ip: \"{}@{}\"\n    dnstap-tls: no\n",
                addr.ip(),
                addr.port()
            )),
            DnstapOut::Tls { addr, server_name, ca, client } => {
                conf.push_str(&format!(
                    "    dnstap-socket-path: \"\"\n    dnstap-ip: \"{}@{}\"\n    dnstap-tls: yes\n\
                     \x20   dnstap-tls-server-name: \"{server_name}\"\n    dnstap-tls-cert-bundle: \"{}\"\n",
                    addr.ip(),
                    addr.port(),
                    ca.display()
                ));
                if let Some((cert, key)) = client {
                    conf.push_str(&format!(
                        "    dnstap-tls-client-cert-file: \"{}\"\n    dnstap-tls-client-key-file: \"{}\"\n",
                        cert.display(),
                        key.display()
                    ));
                }
            }
        }
        conf.push_str(&format!(
            "    dnstap-bidirectional: {}\n\
             \x20   dnstap-send-identity: yes\n\
             \x20   dnstap-send-version: yes\n\
             \x20   dnstap-identity: \"{}\"\n\
             \x20   dnstap-log-resolver-query-messages: yes\n\
             \x20   dnstap-log-resolver-response-messages: yes\n\
             \x20   dnstap-log-client-query-messages: {client}\n\
             \x20   dnstap-log-client-response-messages: {client}\n",
            if options.bidirectional { "yes" } else { "no" },
            options.identity,
            client = if options.client_messages { "yes" } else { "no" },
        ));
    }
    conf
}
