//! A real ClickHouse cluster on loopback for tests: Debian's `zookeeper` (standalone) and two
//! `clickhouse-server` 18.16 shards as an unprivileged user, with a `remote_servers` cluster
//! `dnsledger`, data in the test's temporary directory. Everything is killed when dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Proc, free_port, require, wait_for};

/// The user the servers run as (ClickHouse refuses to own files as root in some setups, and
/// tests should not run databases as root).
const NOBODY: &str = "65534";

pub struct Shard {
    pub http: u16,
    /// HTTPS (with the test PKI's server certificate), when started with TLS.
    pub https: Option<u16>,
    tcp: u16,
    interserver: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

pub struct ClickHouse {
    pub shards: Vec<Shard>,
    _zk: Proc,
    /// One cluster at a time per test binary: three JVMs and six servers on two cores made
    /// ZooKeeper sessions time out.
    _turn: std::sync::MutexGuard<'static, ()>,
    /// A file with the `[clickhouse]` table for dnsledger.
    pub config: PathBuf,
    work: PathBuf,
}

fn chown_nobody(path: &Path) {
    let ok = Command::new("chown").args(["-R", &format!("{NOBODY}:{NOBODY}")]).arg(path).status().unwrap();
    assert!(ok.success(), "chown {}", path.display());
}

impl ClickHouse {
    /// Starts ZooKeeper and `n` shards under `work` and waits until all answer.
    pub fn start(work: &Path, n: usize) -> ClickHouse {
        Self::start_with(work, n, None)
    }

    /// [`ClickHouse::start`] with HTTPS on every shard, using `pki`'s `server.pem`/`server.key`
    /// (from `make_certs`); the config then names `https://` URLs and `pki/ca.pem`.
    pub fn start_with(work: &Path, n: usize, pki: Option<&Path>) -> ClickHouse {
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        require("clickhouse-server", "clickhouse-server");
        require("java", "default-jre-headless");
        assert!(Path::new("/usr/share/java/zookeeper.jar").is_file(), "install the Debian package zookeeper");
        // The servers run unprivileged: they must be able to reach their directories.
        let mut p = work.to_path_buf();
        loop {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            if mode & 0o005 != 0o005 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
            }
            if !p.pop() || p.as_os_str().is_empty() || p == Path::new("/") {
                break;
            }
        }
        let zk_dir = work.join("zk");
        std::fs::create_dir_all(zk_dir.join("data")).unwrap();
        let zk_port = free_port();
        std::fs::write(
            zk_dir.join("zoo.cfg"),
            format!(
                "tickTime=2000\ndataDir={}\nclientPort={zk_port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=srvr\n",
                zk_dir.join("data").display()
            ),
        )
        .unwrap();
        let mut zk = Command::new("java");
        zk.args(["-Xmx256m", "-cp", "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"])
            .arg(format!("-Dzookeeper.log.dir={}", zk_dir.display()))
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(zk_dir.join("zoo.cfg"));
        let mut zk = Proc::spawn("zookeeper", zk, work);
        wait_for("zookeeper", Duration::from_secs(30), || {
            assert!(zk.is_running(), "zookeeper exited:\n{}", zk.stderr());
            // `srvr` answers "Mode: standalone" only once the server takes sessions (before,
            // it accepts connections and closes them mid-handshake).
            four_letter(zk_port, b"srvr").contains("Mode: standalone")
        });

        let mut shards: Vec<Shard> = (0..n)
            .map(|i| Shard {
                http: free_port(),
                https: pki.map(|_| free_port()),
                tcp: free_port(),
                interserver: free_port(),
                dir: work.join(format!("ch{}", i + 1)),
                proc: None,
            })
            .collect();
        let users = work.join("ch-users.xml");
        std::fs::write(
            &users,
            "<?xml version=\"1.0\"?>\n<yandex><profiles><default></default></profiles>\
             <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>\
             <profile>default</profile><quota>default</quota></default></users>\
             <quotas><default></default></quotas></yandex>\n",
        )
        .unwrap();
        let replicas: String = shards
            .iter()
            .map(|s| format!("<shard><replica><host>127.0.0.1</host><port>{}</port></replica></shard>", s.tcp))
            .collect();
        for (i, s) in shards.iter().enumerate() {
            for sub in ["data", "tmp", "log"] {
                std::fs::create_dir_all(s.dir.join(sub)).unwrap();
            }
            let d = s.dir.display();
            let tls = match (pki, s.https) {
                (Some(pki), Some(port)) => {
                    std::fs::copy(pki.join("server.pem"), s.dir.join("server.pem")).unwrap();
                    std::fs::copy(pki.join("server.key"), s.dir.join("server.key")).unwrap();
                    format!(
                        "<https_port>{port}</https_port><openSSL><server>\
                         <certificateFile>{d}/server.pem</certificateFile><privateKeyFile>{d}/server.key</privateKeyFile>\
                         <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>\
                         <cacheSessions>true</cacheSessions><disableProtocols>sslv2,sslv3</disableProtocols>\
                         <preferServerCiphers>true</preferServerCiphers></server></openSSL>"
                    )
                }
                _ => String::new(),
            };
            std::fs::write(
                s.dir.join("config.xml"),
                format!(
                    "<?xml version=\"1.0\"?>\n<yandex>\
                     <logger><level>information</level><log>{d}/log/server.log</log>\
                     <errorlog>{d}/log/error.log</errorlog><console>0</console></logger>\
                     <listen_host>127.0.0.1</listen_host><http_port>{}</http_port><tcp_port>{}</tcp_port>\
                     <interserver_http_port>{}</interserver_http_port>\
                     <interserver_http_host>127.0.0.1</interserver_http_host>\
                     <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path>\
                     <users_config>{}</users_config><default_profile>default</default_profile>\
                     <default_database>default</default_database><mark_cache_size>268435456</mark_cache_size>\
                     <zookeeper><node><host>127.0.0.1</host><port>{zk_port}</port></node></zookeeper>\
                     <macros><replica>r1</replica><shard>{}</shard></macros>\
                     <remote_servers><dnsledger>{replicas}</dnsledger></remote_servers>{tls}</yandex>\n",
                    s.http,
                    s.tcp,
                    s.interserver,
                    users.display(),
                    i + 1
                ),
            )
            .unwrap();
            chown_nobody(&s.dir);
        }
        for (i, s) in shards.iter_mut().enumerate() {
            start_shard(work, s, i);
        }
        let config = work.join("clickhouse.toml");
        let urls: Vec<String> = shards
            .iter()
            .map(|s| match s.https {
                Some(port) => format!("\"https://127.0.0.1:{port}\""),
                None => format!("\"http://127.0.0.1:{}\"", s.http),
            })
            .collect();
        let ca = pki.map(|p| format!("ca = \"{}\"\n", p.join("ca.pem").display())).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "[clickhouse]\nshards = [{}]\ncluster = \"dnsledger\"\ndatabase = \"dnsledger\"\n\
                 zookeeper_path = \"/clickhouse/test\"\ntimeout_secs = 20\n{ca}",
                urls.join(", ")
            ),
        )
        .unwrap();
        ClickHouse { shards, _zk: zk, _turn: turn, config, work: work.to_path_buf() }
    }

    /// Kills shard `i` (0-based) with SIGKILL.
    pub fn kill_shard(&mut self, i: usize) {
        if let Some(p) = self.shards[i].proc.take() {
            p.signal("KILL");
            let _ = p.wait(Duration::from_secs(20));
        }
    }

    /// Starts shard `i` again on its data.
    pub fn restart_shard(&mut self, i: usize) {
        let work = self.work.clone();
        start_shard(&work, &mut self.shards[i], i);
    }

    /// Runs a query on shard `i` over HTTP; the body as text.
    pub fn query(&self, i: usize, sql: &str) -> String {
        http_post(self.shards[i].http, sql).unwrap_or_else(|e| panic!("query {sql}: {e}"))
    }
}

fn start_shard(work: &Path, s: &mut Shard, i: usize) {
    let port = s.http;
    // A shard restarted right after a kill -9 can exit at once (its previous ZooKeeper session
    // or files not yet released; seen once in a loaded CI run): start it again, a few times.
    for attempt in 1..=5 {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "/usr/sbin/clickhouse-server"])
            .arg(format!("--config-file={}", s.dir.join("config.xml").display()));
        let mut p = Proc::spawn(&format!("clickhouse{}", i + 1), cmd, work);
        let mut exited = false;
        // Why it exited is in its error log (its stderr only says where the logs are).
        let errors = || {
            let log = std::fs::read_to_string(s.dir.join("log/error.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        wait_for("clickhouse shard", Duration::from_secs(60), || {
            if !p.is_running() {
                assert!(
                    attempt < 5,
                    "clickhouse shard {} exited {attempt} times:\n{}\n{}",
                    i + 1,
                    p.stderr(),
                    errors()
                );
                exited = true;
                return true;
            }
            http_post(port, "SELECT 1").is_ok_and(|b| b.trim() == "1")
        });
        if !exited {
            s.proc = Some(p);
            return;
        }
        eprintln!("clickhouse shard {} exited at start (attempt {attempt}):\n{}\n{}", i + 1, p.stderr(), errors());
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn four_letter(port: u16, word: &[u8]) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(word).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A minimal HTTP/1.0 POST (no client library needed in tests).
pub fn http_post(port: u16, body: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    write!(s, "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{}: {body}", head.lines().next().unwrap_or_default()));
    }
    Ok(body.to_string())
}
