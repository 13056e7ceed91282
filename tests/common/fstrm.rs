//! The reference dnstap peers from Debian: `fstrm_capture` (fstrm-bin) as a listener that
//! writes what resolvers send into a Frame Streams file, and `dnstap-ldns` to read such files
//! back as text. Tests use them to check the rig itself and as known-good peers for interop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{self, Daemon};

const START_TIMEOUT: Duration = Duration::from_secs(10);
/// fstrm_capture finishes its file ~2 s after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "protobuf:dnstap.Dnstap";

/// A running `fstrm_capture`. Dropping it stops it.
pub struct FstrmCapture {
    daemon: Daemon,
    output: PathBuf,
}

impl FstrmCapture {
    /// Listens on the unix socket `socket` (created by fstrm_capture) and writes to `output`.
    /// Returns once the socket exists, so a resolver started next connects at once.
    pub fn unix(socket: &Path, output: &Path) -> FstrmCapture {
        let mut cmd = Command::new(process::binary("fstrm_capture", "fstrm-bin"));
        cmd.args(["-t", CONTENT_TYPE, "-u"]).arg(socket).arg("-w").arg(output);
        let mut daemon = Daemon::spawn("fstrm_capture", cmd, &log_path(output));
        daemon.wait_until("listening", START_TIMEOUT, || socket.exists());
        FstrmCapture { daemon, output: output.to_path_buf() }
    }

    /// Listens on TCP `addr` and writes to `output`. Returns once the port is listening.
    pub fn tcp(addr: SocketAddr, output: &Path) -> FstrmCapture {
        super::check_loopback(addr);
        let mut cmd = Command::new(process::binary("fstrm_capture", "fstrm-bin"));
        cmd.args(["-t", CONTENT_TYPE, "-a", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-w"]).arg(output);
        let mut daemon = Daemon::spawn("fstrm_capture", cmd, &log_path(output));
        daemon.wait_until("listening", START_TIMEOUT, || process::tcp_listening(addr));
        FstrmCapture { daemon, output: output.to_path_buf() }
    }

    /// Stops the capture (SIGTERM makes fstrm_capture write the STOP frame and close the
    /// file) and returns the file's path.
    pub fn stop(&mut self) -> PathBuf {
        assert!(
            self.daemon.stop(STOP_GRACE),
            "fstrm_capture did not exit within {STOP_GRACE:?}; log:\n{}",
            self.daemon.log_text()
        );
        self.output.clone()
    }

    pub fn output(&self) -> &Path {
        &self.output
    }

    /// fstrm_capture's own messages ("closed output file ... (wrote N frames, ...)").
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }
}

fn log_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".fstrm_capture.log");
    output.with_file_name(name)
}

/// `dnstap-ldns -q -r FILE`: one line per message, e.g.
/// `2026-11-28 05:43:22.345821 RR 127.60.0.10 TCP 2338b "big.example.com." IN TXT`
/// (the mnemonic is the third field: CQ/CR client, RQ/RR resolver).
pub fn dnstap_quiet(file: &Path) -> Vec<String> {
    let mut cmd = Command::new(process::binary("dnstap-ldns", "dnstap-ldns"));
    cmd.arg("-q").arg("-r").arg(file);
    process::run(&mut cmd).lines().map(str::to_string).collect()
}

/// `dnstap-ldns -y -r FILE`: the YAML form, with `type: RESOLVER_RESPONSE`, identity, version,
/// addresses and the dig-style dump of every message.
pub fn dnstap_yaml(file: &Path) -> String {
    let mut cmd = Command::new(process::binary("dnstap-ldns", "dnstap-ldns"));
    cmd.arg("-y").arg("-r").arg(file);
    process::run(&mut cmd)
}
