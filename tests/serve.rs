//! `dnsledger serve` the way the README starts it on a machine without the Internet (a
//! private root: `--root-hints` and `--allow-servers`), in a clean directory, over the loopback
//! hierarchy of real NSD servers: it answers dig, and the portal shows the answer's RRset
//! within the flush window.

mod common;
mod tools;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Hierarchy, dig_with};
use tools::browser::Browser;
use tools::{Proc, dnsledger, wait_for};

const BLOCK: u8 = 73;

#[test]
fn serve_answers_dig_and_the_portal_shows_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let h = Hierarchy::start(BLOCK, &work.join("rig"));
    let clean = work.join("checkout");
    std::fs::create_dir_all(&clean).unwrap();
    // The README's command, with the private root of an offline machine.
    let mut cmd = dnsledger();
    cmd.current_dir(&clean).arg("serve").arg("--root-hints").arg(h.root_hints_path());
    cmd.args(["--allow-servers", &format!("127.{BLOCK}.0.0/24")]);
    let mut serve = Proc::spawn("serve", cmd, work);
    let (dns, http): (SocketAddr, SocketAddr) = ("127.0.0.1:5300".parse().unwrap(), "127.0.0.1:8053".parse().unwrap());
    wait_for("serve listening", Duration::from_secs(30), || {
        assert!(serve.is_running(), "serve exited:\n{}", serve.stderr());
        std::net::TcpStream::connect(dns).is_ok() && std::net::TcpStream::connect(http).is_ok()
    });
    assert!(clean.join("dnsledger-data/store").is_dir(), "the data directory is created");

    let a = dig_with(dns, None, "www.example.com", "A", &[]);
    assert_eq!(a.rcode, "NOERROR", "{}", a.output);
    let addresses: Vec<String> = a.answer.iter().filter(|r| r.rtype == "A").map(|r| r.rdata.clone()).collect();
    assert!(!addresses.is_empty(), "{}", a.output);

    // The portal, in a real browser, shows the RRset once the window (10 s) is flushed.
    let b = Browser::start(work);
    b.call("POST", "/url", Some(serde_json::json!({"url": format!("http://{http}/")})));
    wait_for("the answer in the portal", Duration::from_secs(40), || {
        b.search("www.example.com");
        b.names().first().map(String::as_str) == Some("www.example.com.")
    });
    let shown = b.script(
        "return [...document.querySelectorAll('section:first-of-type td.rdata')].map(t => t.textContent).join(' ')",
    );
    for addr in &addresses {
        assert!(shown.as_str().unwrap().contains(addr.as_str()), "{addr} in {shown}");
    }
    let log = serve.terminate();
    assert!(log.contains("portal and API on http://127.0.0.1:8053/"), "{log}");
}
