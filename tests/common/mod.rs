//! Test support shared by the integration tests (`mod common;`): a loopback DNS rig of real
//! servers. [`Hierarchy`] runs the authoritative side (NSD instances plus a malicious
//! server, zones in `tests/rig/`), [`Unbound`] and [`Bind`] are real recursive resolvers over
//! it that emit dnstap, [`FstrmCapture`] and [`dnstap_quiet`]/[`dnstap_yaml`] are the
//! reference dnstap peers, and [`dig()`] asks questions the way a user would.
//!
//! Everything lives in one block `127.B.0.0/16` chosen by the test (servers on `127.B.0.x`,
//! resolvers on `127.B.1.x`, clients on `127.B.2.x`, all port 53), so tests with different
//! blocks run in parallel. The rig needs root (port 53, `ip addr add`), as CI has. Every
//! process is stopped by pid when its handle is dropped, and its log is printed if the test
//! is failing.
//!
//! Block numbers in use: 60 (rig_smoke), 61-64 (live_resolvers), 65-66 (sensor_live), 67 (tls_dnstap),
//! 68-69, 71-72 (resolver_live), 70 (examples/resolver_bench).

// Each test crate uses a different part of this module.
#![allow(dead_code)]

mod bind;
mod dig;
mod fstrm;
mod hierarchy;
mod process;
mod unbound;

use std::net::{Ipv4Addr, SocketAddr};

// Re-exports are the API; a given test crate uses only some of them.
#[allow(unused_imports)]
pub use bind::{Bind, BindOptions};
#[allow(unused_imports)]
pub use dig::{DigAnswer, DigRecord, dig, dig_with};
#[allow(unused_imports)]
pub use fstrm::{FstrmCapture, dnstap_quiet, dnstap_yaml};
#[allow(unused_imports)]
pub use hierarchy::{Hierarchy, SERVERS, Server, Software, host, rig_dir};
#[allow(unused_imports)]
pub use process::{Daemon, binary};
#[allow(unused_imports)]
pub use unbound::{DnstapOut, Unbound, UnboundOptions};

/// Panics unless `addr` is a loopback address outside block 0 (`127.0.0.0/16`): the rig never
/// touches anything but loopback, and leaves 127.0.0.1 and its neighbours to the host's own
/// services (Debian's packaged daemons, should they run, sit on 127.0.0.1:53).
pub fn check_rig_address(addr: Ipv4Addr) {
    let [a, b, ..] = addr.octets();
    assert!(a == 127 && b != 0, "rig addresses must be in 127.B.0.0/16 with B != 0, not {addr}");
}

/// Loopback only, 127.0.0.1 allowed: for listeners a test runs itself on a spare port
/// (such as a dnstap collector on 127.0.0.1:0).
pub fn check_loopback(addr: SocketAddr) {
    assert!(addr.ip().is_loopback(), "the rig only uses loopback addresses, not {addr}");
}
