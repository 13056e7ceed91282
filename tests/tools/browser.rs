//! A headless Debian chromium driven over WebDriver (chromedriver), for the portal tests.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Proc, free_port, require, wait_for};

/// A WebDriver session on Debian's chromium (headless) through chromedriver.
pub struct Browser {
    driver: SocketAddr,
    session: String,
    _proc: Proc,
}

fn webdriver(addr: SocketAddr, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    // chromedriver may keep the connection open: read the head, then Content-Length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let (head_end, length) = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "chromedriver closed the connection");
        raw.extend_from_slice(&buf[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                .unwrap_or(0);
            break (at + 4, length);
        }
    };
    while raw.len() < head_end + length {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "chromedriver closed the connection early");
        raw.extend_from_slice(&buf[..n]);
    }
    let raw = String::from_utf8_lossy(&raw).to_string();
    let json = &raw[head_end..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert!(v["value"]["error"].is_null(), "webdriver {method} {path}: {v}");
    v["value"].clone()
}

impl Browser {
    pub fn start(dir: &Path) -> Browser {
        require("chromedriver", "chromium-driver");
        require("chromium", "chromium");
        let port = free_port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"));
        // Chromium's profile and scratch directories go under the test's own directory, removed
        // with it (in /tmp they outlived every run).
        let tmp = dir.join("browser-tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        cmd.env("TMPDIR", &tmp);
        let proc = Proc::spawn("chromedriver", cmd, dir);
        let driver: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("chromedriver", Duration::from_secs(20), || std::net::TcpStream::connect(driver).is_ok());
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1400"]}}}});
        let v = webdriver(driver, "POST", "/session", Some(caps));
        Browser { driver, session: v["sessionId"].as_str().unwrap().to_string(), _proc: proc }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        webdriver(self.driver, method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn script(&self, js: &str) -> serde_json::Value {
        self.call("POST", "/execute/sync", Some(serde_json::json!({"script": js, "args": []})))
    }

    pub fn element(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(serde_json::json!({"using": "css selector", "value": css})));
        v.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string()
    }

    /// Types into the search box, submits, and waits for the status line to settle.
    pub fn search(&self, q: &str) -> String {
        let input = self.element("#q");
        self.call("POST", &format!("/element/{input}/clear"), Some(serde_json::json!({})));
        self.call("POST", &format!("/element/{input}/value"), Some(serde_json::json!({"text": q})));
        // The previous answer's status must not pass for this one's.
        self.script("document.getElementById('status').textContent = ''");
        let button = self.element("#search");
        self.call("POST", &format!("/element/{button}/click"), Some(serde_json::json!({})));
        self.settled()
    }

    pub fn settled(&self) -> String {
        let mut status = String::new();
        wait_for("the portal's answer", Duration::from_secs(20), || {
            status = self.script("return document.getElementById('status').textContent").as_str().unwrap().to_string();
            !status.is_empty() && !status.starts_with("Searching")
        });
        status
    }

    /// Owner names in the result tables, in order.
    pub fn names(&self) -> Vec<String> {
        let v = self.script(
            "return [...document.querySelectorAll('section table tbody tr td:first-child > a:first-child')].map(a => a.textContent)",
        );
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ =
            std::panic::catch_unwind(|| webdriver(self.driver, "DELETE", &format!("/session/{}", self.session), None));
    }
}
