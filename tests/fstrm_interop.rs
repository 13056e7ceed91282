//! Interop with the reference Frame Streams and dnstap tools from Debian (fstrm-bin,
//! dnstap-ldns, the Go `dnstap` CLI): bytes we receive, write and send must be exactly what
//! they produce and accept.

mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dnsledger::framestream::{DNSTAP_CONTENT_TYPE, FileWriter};
use tools::{Proc, dnsledger, frames_of, require, run, wait_for_socket};

const CT: &str = "protobuf:dnstap.Dnstap";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A file of many frames with sizes from 1 byte up to 200 KiB (above the 64 KiB limit some
/// peers have), contents derived from the index so that any mix-up shows.
fn synthetic_file(dir: &Path) -> PathBuf {
    let path = dir.join("synthetic.fstrm");
    let mut w = FileWriter::create(&path, DNSTAP_CONTENT_TYPE).unwrap();
    for i in 0..5000u32 {
        let len = match i % 500 {
            0 => 200 * 1024,
            250 => 70 * 1024,
            _ => 1 + (i as usize * 7919) % 1500,
        };
        let payload: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
        w.write_frame(&payload).unwrap();
    }
    w.finish().unwrap();
    path
}

fn fstrm_capture_unix(dir: &Path, name: &str) -> (Proc, PathBuf, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let out = dir.join(format!("{name}.fstrm"));
    let mut cmd = Command::new("fstrm_capture");
    cmd.args(["-t", CT, "-u"]).arg(&sock).arg("-w").arg(&out);
    let p = Proc::spawn(name, cmd, dir);
    wait_for_socket(&sock);
    (p, sock, out)
}

fn tap_listen_unix(dir: &Path, name: &str) -> (Proc, PathBuf, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let out = dir.join(format!("{name}.fstrm"));
    let mut cmd = dnsledger();
    cmd.args(["tap", "listen", "--quiet", "--unix"]).arg(&sock).arg("--write").arg(&out);
    let p = Proc::spawn(name, cmd, dir);
    wait_for_socket(&sock);
    (p, sock, out)
}

fn fstrm_replay(input: &Path, args: &[&str]) {
    let mut cmd = Command::new("fstrm_replay");
    cmd.args(["-t", CT]).args(args).arg("-r").arg(input);
    run(cmd);
}

fn stop_fstrm_capture(p: Proc) {
    p.signal("INT");
    let (_, err) = p.wait(Duration::from_secs(10));
    assert!(err.contains("closed output file"), "fstrm_capture did not close its file: {err}");
}

#[test]
fn fstrm_replay_over_unix_to_tap_listen_is_byte_identical() {
    require("fstrm_replay", "fstrm-bin");
    let dir = tempfile::tempdir().unwrap();
    let synthetic = synthetic_file(dir.path());
    for input in [data("unbound-resolver.dnstap"), data("bind-resolver.dnstap"), synthetic] {
        let (theirs, their_sock, their_out) = fstrm_capture_unix(dir.path(), "fstrm_capture");
        let (ours, our_sock, our_out) = tap_listen_unix(dir.path(), "tap_listen");
        fstrm_replay(&input, &["-u", their_sock.to_str().unwrap()]);
        fstrm_replay(&input, &["-u", our_sock.to_str().unwrap()]);
        stop_fstrm_capture(theirs);
        let log = ours.terminate();
        let expected = frames_of(&input);
        assert_eq!(frames_of(&our_out).len(), expected.len(), "{log}");
        assert!(frames_of(&our_out) == expected, "frames differ from the input ({})", input.display());
        assert!(
            std::fs::read(&our_out).unwrap() == std::fs::read(&their_out).unwrap(),
            "tap listen's file differs from fstrm_capture's for {}",
            input.display()
        );
        assert!(log.contains(&format!("{} frames", expected.len())), "{log}");
    }
}

#[test]
fn fstrm_replay_over_tcp_to_tap_listen() {
    require("fstrm_replay", "fstrm-bin");
    let dir = tempfile::tempdir().unwrap();
    let input = synthetic_file(dir.path());
    let port = tools::free_port();
    let out = dir.path().join("tcp.fstrm");
    let mut cmd = dnsledger();
    cmd.args(["tap", "listen", "--quiet", "--tcp", &format!("127.0.0.1:{port}"), "--write"]).arg(&out);
    let ours = Proc::spawn("tap_listen", cmd, dir.path());
    tools::wait_for("tcp listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    fstrm_replay(&input, &["-a", "127.0.0.1", "-p", &port.to_string()]);
    let log = ours.terminate();
    assert!(frames_of(&out) == frames_of(&input), "frames differ over TCP: {log}");
}

/// What dnstap-ldns prints for a file (its text output is independent of how the file was
/// framed, so equal output means equal messages).
fn dnstap_ldns(path: &Path) -> String {
    let mut cmd = Command::new("dnstap-ldns");
    cmd.arg("-r").arg(path);
    String::from_utf8(run(cmd).stdout).unwrap()
}

fn go_dnstap_yaml(path: &Path) -> String {
    let mut cmd = Command::new("dnstap");
    cmd.arg("-r").arg(path).arg("-y");
    String::from_utf8(run(cmd).stdout).unwrap()
}

#[test]
fn tap_replay_to_fstrm_capture_decodes_with_the_reference_tools() {
    require("fstrm_capture", "fstrm-bin");
    require("dnstap-ldns", "dnstap-ldns");
    require("dnstap", "golang-github-dnstap-golang-dnstap-cli");
    let dir = tempfile::tempdir().unwrap();
    for input in [data("unbound-resolver.dnstap"), data("bind-resolver.dnstap")] {
        let (capture, sock, out) = fstrm_capture_unix(dir.path(), "fstrm_capture");
        let mut cmd = dnsledger();
        cmd.args(["tap", "replay"]).arg(&input).arg("--unix").arg(&sock);
        let out_cmd = run(cmd);
        stop_fstrm_capture(capture);
        let log = String::from_utf8_lossy(&out_cmd.stderr);
        assert!(frames_of(&out) == frames_of(&input), "fstrm_capture got other frames: {log}");
        let ldns = dnstap_ldns(&out);
        assert!(ldns.lines().count() >= frames_of(&input).len(), "{ldns}");
        assert_eq!(ldns, dnstap_ldns(&input));
        assert_eq!(go_dnstap_yaml(&out), go_dnstap_yaml(&input));
    }
}

#[test]
fn files_written_by_tap_listen_read_with_dnstap_ldns() {
    require("dnstap-ldns", "dnstap-ldns");
    let dir = tempfile::tempdir().unwrap();
    let input = data("unbound-resolver.dnstap");
    let (ours, sock, out) = tap_listen_unix(dir.path(), "tap_listen");
    let mut cmd = dnsledger();
    cmd.args(["tap", "replay"]).arg(&input).arg("--unix").arg(&sock);
    run(cmd);
    ours.terminate();
    let text = dnstap_ldns(&out);
    assert_eq!(text, dnstap_ldns(&input));
    assert!(text.contains("RR 127.53.0.10 UDP"), "{text}");
}

/// `tap read --format yaml` prints what the Go `dnstap -y` prints, line for line, except EDNS
/// option lines (COOKIE, EDE), which we do not render.
#[test]
fn captures_decode_completely_and_match_go_dnstap_yaml() {
    require("dnstap", "golang-github-dnstap-golang-dnstap-cli");
    let without_edns_options = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !(l.starts_with("    ; ") && !l.starts_with("    ; EDNS:") && l.contains(": ")))
            .map(str::to_string)
            .collect()
    };
    for input in [data("unbound-resolver.dnstap"), data("bind-resolver.dnstap")] {
        let mut cmd = dnsledger();
        cmd.args(["tap", "read", "--format", "yaml"]).arg(&input);
        let out = run(cmd);
        let totals = String::from_utf8_lossy(&out.stderr).to_string();
        let n = frames_of(&input).len();
        assert!(totals.contains(&format!("{n} frames, {n} decoded, 0 undecodable")), "{totals}");
        let ours = without_edns_options(&String::from_utf8(out.stdout).unwrap());
        let go = without_edns_options(&go_dnstap_yaml(&input));
        assert_eq!(ours.len(), go.len(), "{}", input.display());
        for (i, (a, b)) in ours.iter().zip(&go).enumerate() {
            assert_eq!(a, b, "line {} of {}", i + 1, input.display());
        }
    }
}

#[test]
fn tap_read_json_lines_carry_query_zone_and_answers() {
    let mut cmd = dnsledger();
    cmd.args(["tap", "read", "--format", "json"]).arg(data("unbound-resolver.dnstap"));
    let out = String::from_utf8(run(cmd).stdout).unwrap();
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), frames_of(&data("unbound-resolver.dnstap")).len());
    let www = lines
        .iter()
        .find(|v| {
            v["type"] == "RESOLVER_RESPONSE" && v["response_message"]["question"][0]["name"] == "www.example.com."
        })
        .expect("a RESOLVER_RESPONSE for www.example.com");
    assert_eq!(www["query_zone"], "example.com.");
    assert_eq!(www["response_address"], "127.53.0.10");
    assert!(www["response_message"]["flags"].as_array().unwrap().contains(&"aa".into()));
    assert_eq!(www["response_message"]["answer"][0]["type"], "A");
}
