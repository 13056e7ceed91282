//! Benchmark of the Frame Streams / dnstap layer (see docs/BENCHMARKS.md).
//!
//! ```sh
//! cargo build --release --examples && target/release/examples/tap_bench [FRAMES] [ROUNDS]
//! ```
//!
//! 1. Builds an fstrm file of FRAMES (default 2,000,000) real resolver frames: the unbound and
//!    BIND captures in `tests/data/` repeated.
//! 2. Capture: `fstrm_replay` sends the file over a unix socket, alternately to `fstrm_capture`
//!    and to `dnsledger tap listen --write`, ROUNDS times each (default 5), side by side in the
//!    same run. Reports frames/s (frames / time from the replay's start until the listener's
//!    file holds every frame) and checks that no frame was lost.
//! 3. Decode, one thread: reading the file through the Frame Streams reader, decoding the
//!    dnstap protobuf, and parsing the DNS messages; median of ROUNDS.
//!
//! Needs `fstrm-bin` and a release build of `dnsledger` (`target/release/dnsledger`, or the
//! path in `DNSLEDGER_BIN`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dnsledger::dnstap;
use dnsledger::framestream::{DNSTAP_CONTENT_TYPE, FileReader, FileWriter};

fn main() {
    dnsledger::alloc::configure();
    let mut args = std::env::args().skip(1);
    let frames: u64 = args.next().map(|a| a.parse().expect("FRAMES")).unwrap_or(2_000_000);
    let rounds: usize = args.next().map(|a| a.parse().expect("ROUNDS")).unwrap_or(5);
    let bin = std::env::var_os("DNSLEDGER_BIN").map(PathBuf::from).unwrap_or_else(|| "target/release/dnsledger".into());
    assert!(bin.exists(), "{} not found: cargo build --release", bin.display());

    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.dnstap");
    let bytes = make_input(&input, frames);
    println!("input: {frames} frames, {:.1} MB, real unbound and BIND resolver traffic", bytes as f64 / 1e6);

    let mut theirs = Vec::new();
    let mut ours = Vec::new();
    for round in 0..rounds {
        let t = capture(dir.path(), &input, frames, Listener::FstrmCapture, &bin);
        let o = capture(dir.path(), &input, frames, Listener::TapListen, &bin);
        println!("round {}: fstrm_capture {:>9.0} frames/s   tap listen {:>9.0} frames/s", round + 1, t, o);
        theirs.push(t);
        ours.push(o);
    }
    let (t, o) = (median(&mut theirs), median(&mut ours));
    println!(
        "capture, median of {rounds}: fstrm_capture {t:.0} frames/s, tap listen {o:.0} frames/s, ratio {:.2}",
        o / t
    );

    let mut decode = Vec::new();
    let mut parse = Vec::new();
    for _ in 0..rounds {
        let (d, p) = decode_rates(&input, frames);
        decode.push(d);
        parse.push(p);
    }
    println!(
        "decode, one thread, median of {rounds}: framing + dnstap protobuf {:.0} frames/s; \
         with every DNS message parsed {:.0} frames/s",
        median(&mut decode),
        median(&mut parse)
    );
}

/// Writes `frames` frames cycling through the real captures; returns the file size.
fn make_input(path: &Path, frames: u64) -> u64 {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut sample = Vec::new();
    for name in ["unbound-resolver.dnstap", "bind-resolver.dnstap"] {
        for f in FileReader::open(&data.join(name), DNSTAP_CONTENT_TYPE).expect("capture") {
            sample.push(f.expect("frame"));
        }
    }
    let mut w = FileWriter::create(path, DNSTAP_CONTENT_TYPE).expect("create input");
    for i in 0..frames {
        w.write_frame(&sample[i as usize % sample.len()]).expect("write");
    }
    w.finish().expect("finish");
    std::fs::metadata(path).expect("input").len()
}

#[derive(Clone, Copy)]
enum Listener {
    FstrmCapture,
    TapListen,
}

/// One capture run; returns frames/s.
fn capture(dir: &Path, input: &Path, frames: u64, which: Listener, bin: &Path) -> f64 {
    let sock = dir.join("bench.sock");
    let out = dir.join("out.dnstap");
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&out);
    let mut child = match which {
        Listener::FstrmCapture => spawn(
            Command::new("fstrm_capture").args(["-t", "protobuf:dnstap.Dnstap", "-u"]).arg(&sock).arg("-w").arg(&out),
        ),
        Listener::TapListen => {
            spawn(Command::new(bin).args(["tap", "listen", "--quiet", "--unix"]).arg(&sock).arg("--write").arg(&out))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "listener did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = Instant::now();
    let status = Command::new("fstrm_replay")
        .args(["-t", "protobuf:dnstap.Dnstap", "-u"])
        .arg(&sock)
        .arg("-r")
        .arg(input)
        .stderr(Stdio::null())
        .status()
        .expect("fstrm_replay (fstrm-bin) installed");
    assert!(status.success(), "fstrm_replay failed");
    // The listener has everything once the stream is finished; stop it to flush the file.
    let elapsed = start.elapsed();
    stop(&mut child);
    let got = FileReader::open(&out, DNSTAP_CONTENT_TYPE).expect("output").count() as u64;
    assert_eq!(got, frames, "frames lost");
    frames as f64 / elapsed.as_secs_f64()
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start listener")
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// (frames/s framing + protobuf decode, frames/s with the DNS messages parsed too).
fn decode_rates(input: &Path, frames: u64) -> (f64, f64) {
    // The file is read once into the page cache by the first pass; time the passes after it.
    let start = Instant::now();
    let mut decoded = 0u64;
    for f in FileReader::open(input, DNSTAP_CONTENT_TYPE).expect("input") {
        if dnstap::decode(f.expect("frame")).is_ok() {
            decoded += 1;
        }
    }
    let decode = decoded as f64 / start.elapsed().as_secs_f64();
    assert_eq!(decoded, frames, "every frame decodes");

    let start = Instant::now();
    let mut parsed = 0u64;
    for f in FileReader::open(input, DNSTAP_CONTENT_TYPE).expect("input") {
        let ev = dnstap::decode(f.expect("frame")).expect("dnstap");
        for wire in [&ev.message.query_message, &ev.message.response_message].into_iter().flatten() {
            if dnstap::parse_dns(wire).is_ok() {
                parsed += 1;
            }
        }
    }
    assert!(parsed >= frames, "every frame has a DNS message");
    (decode, frames as f64 / start.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
