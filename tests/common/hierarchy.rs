//! The authoritative side of the rig: a root, two TLDs, a reverse zone and second-level zones,
//! each on its own loopback address in one block `127.B.0.0/24`, port 53. Zone files live in
//! `tests/rig/zones/` with `{B}` where the block goes; this module renders them into the
//! work directory, starts one NSD per address (one NSD serving several addresses would answer
//! for every zone it has on all of them and short-circuit the delegations) plus the
//! malicious `tests/rig/evil_server.py`, waits until each answers for its zone, and stops
//! them all on drop.
//!
//! Resolvers ([`super::Unbound`], [`super::Bind`]) take the root hints from here. By
//! convention resolvers listen on `127.B.1.n` and clients (dig, probes) send from
//! `127.B.2.n`, so everything a test does stays inside its block and off 127.0.0.1.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{self, Daemon};

/// Host part (last octet) of each server address in `127.B.0.x`.
pub mod host {
    pub const ROOT: u8 = 1;
    pub const COM: u8 = 2;
    pub const TEST: u8 = 3;
    pub const REVERSE: u8 = 4;
    pub const EXAMPLE: u8 = 10;
    pub const BANK: u8 = 11;
    pub const GLUELESS: u8 = 12;
    pub const OTHER: u8 = 13;
    pub const EVIL: u8 = 66;
    /// Delegated to (dead.test) but nothing listens: resolvers wait and retry.
    pub const DEAD: u8 = 99;
}

/// Which program serves an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Software {
    Nsd,
    /// `tests/rig/evil_server.py`: adds out-of-bailiwick records to its answers.
    Evil,
}

/// One authoritative server of the rig, as a test sees it.
#[derive(Clone, Copy, Debug)]
pub struct Server {
    /// Short name, also the stem of its config and log files.
    pub name: &'static str,
    pub host: u8,
    /// Zones it is authoritative for (the root is "."), without trailing dots otherwise.
    pub zones: &'static [&'static str],
    pub software: Software,
}

/// The address map. lame.test is delegated to EXAMPLE's address, which does not serve it.
pub const SERVERS: &[Server] = &[
    Server { name: "root", host: host::ROOT, zones: &["."], software: Software::Nsd },
    Server { name: "com", host: host::COM, zones: &["com"], software: Software::Nsd },
    Server { name: "test", host: host::TEST, zones: &["test"], software: Software::Nsd },
    Server { name: "reverse", host: host::REVERSE, zones: &["2.0.192.in-addr.arpa"], software: Software::Nsd },
    Server { name: "example", host: host::EXAMPLE, zones: &["example.com"], software: Software::Nsd },
    Server { name: "bank", host: host::BANK, zones: &["bank.com"], software: Software::Nsd },
    Server { name: "glueless", host: host::GLUELESS, zones: &["glueless.test"], software: Software::Nsd },
    Server { name: "other", host: host::OTHER, zones: &["other.test"], software: Software::Nsd },
    Server { name: "evil", host: host::EVIL, zones: &["evil.test"], software: Software::Evil },
];

/// Placeholder for the block number in `tests/rig/zones/*.zone`.
const BLOCK_PLACEHOLDER: &str = "{B}";

/// Generous: NSD needs ~0.5 s to load, more while cargo compiles on the same two cores.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `tests/rig/` in the source tree.
pub fn rig_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("rig")
}

/// The running authoritative servers of one block. Dropping it stops them all.
pub struct Hierarchy {
    block: u8,
    dir: PathBuf,
    daemons: Vec<Daemon>,
}

impl Hierarchy {
    /// Renders the zones and configs for `block` under `workdir/hierarchy/`, starts every
    /// server and returns once each answers authoritatively for its zone.
    ///
    /// Blocks must be distinct among tests that run at the same time; 0 is refused because
    /// 127.0.0.x is where the host's own services (and 127.0.0.1) live.
    pub fn start(block: u8, workdir: &Path) -> Hierarchy {
        assert!((1..=254).contains(&block), "rig block must be 1..=254 (127.B.0.x), not {block}");
        process::require_root();
        let nsd = process::binary("nsd", "nsd");
        let python = process::python3();

        let dir = workdir.join("hierarchy");
        let zones_dir = dir.join("zones");
        fs::create_dir_all(&zones_dir).unwrap_or_else(|e| panic!("create {}: {e}", zones_dir.display()));
        render_zones(block, &zones_dir);
        fs::write(dir.join("root.hints"), root_hints(block)).expect("write root.hints");

        let mut hierarchy = Hierarchy { block, dir: dir.clone(), daemons: Vec::new() };
        for server in SERVERS {
            process::ensure_port_53_free(hierarchy.addr(server.host));
        }
        // Start all, then wait for all: the NSDs load their zones in parallel.
        for server in SERVERS {
            let addr = hierarchy.addr(server.host);
            let log = dir.join(format!("{}.log", server.name));
            let cmd = match server.software {
                Software::Nsd => {
                    let conf = dir.join(format!("nsd-{}.conf", server.name));
                    fs::write(&conf, nsd_conf(server, addr, &dir, &zones_dir, &log)).expect("write nsd.conf");
                    let mut cmd = Command::new(&nsd);
                    // -d: foreground, so the pid we hold is NSD's (its xfrd process, which
                    // takes the server processes down on SIGTERM)
                    cmd.arg("-d").arg("-c").arg(&conf);
                    cmd
                }
                Software::Evil => {
                    let mut cmd = Command::new(&python);
                    cmd.arg(rig_dir().join("evil_server.py")).arg(addr.to_string());
                    cmd
                }
            };
            let name = format!("{} server {addr} ({:?})", server.name, server.software);
            hierarchy.daemons.push(Daemon::spawn(&name, cmd, &log));
        }
        let probe_source = hierarchy.client_addr(254);
        for (server, daemon) in SERVERS.iter().zip(hierarchy.daemons.iter_mut()) {
            let addr = Ipv4Addr::new(127, block, 0, server.host);
            daemon.wait_until("answering for its zone", START_TIMEOUT, || {
                process::soa_answered(addr, probe_source, server.zones[0])
            });
        }
        hierarchy
    }

    pub fn block(&self) -> u8 {
        self.block
    }

    /// `127.B.0.host`: a server address of this block (see [`host`]).
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.block, 0, host)
    }

    pub fn root(&self) -> Ipv4Addr {
        self.addr(host::ROOT)
    }
    pub fn com(&self) -> Ipv4Addr {
        self.addr(host::COM)
    }
    pub fn test_tld(&self) -> Ipv4Addr {
        self.addr(host::TEST)
    }
    pub fn reverse(&self) -> Ipv4Addr {
        self.addr(host::REVERSE)
    }
    pub fn example(&self) -> Ipv4Addr {
        self.addr(host::EXAMPLE)
    }
    pub fn bank(&self) -> Ipv4Addr {
        self.addr(host::BANK)
    }
    pub fn glueless(&self) -> Ipv4Addr {
        self.addr(host::GLUELESS)
    }
    pub fn other(&self) -> Ipv4Addr {
        self.addr(host::OTHER)
    }
    pub fn evil(&self) -> Ipv4Addr {
        self.addr(host::EVIL)
    }
    /// Address dead.test is delegated to; nothing answers there.
    pub fn dead(&self) -> Ipv4Addr {
        self.addr(host::DEAD)
    }

    /// `127.B.1.n`: where to run resolver number `n` of this block.
    pub fn resolver_addr(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.block, 1, n)
    }

    /// `127.B.2.n`: a client source address of this block ([`super::dig`] uses n = 1).
    pub fn client_addr(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.block, 2, n)
    }

    /// The servers with their addresses in this block: the ground truth for "which server
    /// serves which zone".
    pub fn servers(&self) -> Vec<(Ipv4Addr, Server)> {
        SERVERS.iter().map(|s| (self.addr(s.host), *s)).collect()
    }

    /// Address of the server authoritative for `zone` ("." for the root; a trailing dot is
    /// ignored). Panics for a zone the rig does not serve.
    pub fn server_of(&self, zone: &str) -> Ipv4Addr {
        let zone = if zone == "." { zone } else { zone.trim_end_matches('.') };
        let server = SERVERS
            .iter()
            .find(|s| s.zones.iter().any(|z| z.eq_ignore_ascii_case(zone)))
            .unwrap_or_else(|| panic!("the rig serves no zone {zone:?}"));
        self.addr(server.host)
    }

    /// Root hints text pointing at this block's root server.
    pub fn root_hints(&self) -> String {
        root_hints(self.block)
    }

    /// The root hints file written by [`Hierarchy::start`].
    pub fn root_hints_path(&self) -> PathBuf {
        self.dir.join("root.hints")
    }

    /// Directory with the rendered zones, configs and server logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Log of one server by its [`Server::name`] (e.g. "evil": one line per query).
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Prints every server's log (done automatically when dropped during a panic).
    pub fn print_logs(&self) {
        self.daemons.iter().for_each(Daemon::print_log);
    }
}

impl Drop for Hierarchy {
    fn drop(&mut self) {
        // Stop the servers in parallel (each may take a moment to exit); each Daemon prints
        // its log afterwards if the test is failing.
        let grace = Duration::from_secs(if std::thread::panicking() { 1 } else { 5 });
        std::thread::scope(|s| {
            for daemon in &mut self.daemons {
                s.spawn(move || daemon.stop(grace));
            }
        });
    }
}

fn root_hints(block: u8) -> String {
    format!(
        ".                    3600000  NS  a.root-servers.rig.\n\
         a.root-servers.rig.  3600000  A   127.{block}.0.1\n"
    )
}

/// Copies `tests/rig/zones/*.zone` with the block filled in.
fn render_zones(block: u8, into: &Path) {
    let src = rig_dir().join("zones");
    let entries = fs::read_dir(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "zone") {
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let rendered = text.replace(BLOCK_PLACEHOLDER, &block.to_string());
            fs::write(into.join(entry.file_name()), rendered).expect("write rendered zone");
        }
    }
}

fn zone_file_name(zone: &str) -> String {
    if zone == "." { "root.zone".to_string() } else { format!("{zone}.zone") }
}

/// One NSD per address, everything it writes inside the work directory, no remote control
/// (it would listen on 127.0.0.1:8952), one server process to spare the CPUs.
/// Response rate limiting is off (`rrl-ratelimit: 0`): at its default of 200 answers/s per
/// client /24, NSD truncates or drops answers under a benchmark's load (answers synthesised
/// from one wildcard share one bucket), which measures the resolvers' TCP fallback instead.
fn nsd_conf(server: &Server, addr: Ipv4Addr, dir: &Path, zones_dir: &Path, log: &Path) -> String {
    let state = |suffix: &str| dir.join(format!("nsd-{}.{suffix}", server.name)).display().to_string();
    let mut conf = format!(
        "server:\n\
         \x20   ip-address: {addr}\n\
         \x20   port: 53\n\
         \x20   do-ip6: no\n\
         \x20   username: \"\"\n\
         \x20   chroot: \"\"\n\
         \x20   zonesdir: \"{zones}\"\n\
         \x20   database: \"\"\n\
         \x20   zonelistfile: \"{zonelist}\"\n\
         \x20   xfrdfile: \"{xfrd}\"\n\
         \x20   xfrdir: \"{dir}\"\n\
         \x20   pidfile: \"{pid}\"\n\
         \x20   logfile: \"{log}\"\n\
         \x20   server-count: 1\n\
         \x20   reuseport: no\n\
         \x20   verbosity: 1\n\
         \x20   rrl-ratelimit: 0\n\
         remote-control:\n\
         \x20   control-enable: no\n",
        zones = zones_dir.display(),
        zonelist = state("zonelist"),
        xfrd = state("xfrd.state"),
        dir = dir.display(),
        pid = state("pid"),
        log = log.display(),
    );
    for zone in server.zones {
        conf.push_str(&format!("zone:\n    name: \"{zone}\"\n    zonefile: \"{}\"\n", zone_file_name(zone)));
    }
    conf
}
