//! The `dnsledger` command line: parse arguments, set up logging, call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use dnsledger::dnstap::OutputFormat;
use dnsledger::framestream::{Endpoint, ListenerConfig, Target};
use dnsledger::metrics::Registry;
use dnsledger::tap;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "dnsledger", version, about = "Passive DNS: dnstap sensor, resolver, relay and collector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Frame Streams / dnstap tools: capture, print, replay.
    #[command(subcommand)]
    Tap(TapCommand),
    /// Passive DNS sensor: dnstap in, authoritative in-bailiwick RRsets into a sled store.
    Sensor(SensorArgs),
    /// Check a sensor configuration file and report every problem.
    /// Recursive resolver (hickory) that emits dnstap of every upstream exchange.
    Resolver(ResolverArgs),
    /// The upstream end of forwarding: sensors' batches over mutual TLS, applied exactly once.
    Collector(CollectorArgs),
    /// A dedup relay: takes batches like a collector, forwards them upstream merged.
    Relay(RelayArgs),
    /// A private CA and certificates for forwarding (mutual TLS).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Check a configuration file and report every problem.
    CheckConfig {
        /// The sensor.toml (or, with --resolver, resolver.toml) to check.
        file: PathBuf,
        /// The file is a resolver.toml.
        #[arg(long)]
        resolver: bool,
    },
    /// Query a store: a local one (stop its sensor first: sled allows one process per store)
    /// or a server's API.
    Query(dnsledger::query::QueryArgs),
    /// Serve the query API over a store on its own.
    Api(ApiServeArgs),
    /// Write one UTC day's new and updated RRsets as zstd-compressed COF
    /// (DIR/dnsledger-YYYY-MM-DD.cof.zst); `[api] export_dir` does it daily.
    Export {
        #[arg(long)]
        db: PathBuf,
        /// The day, YYYY-MM-DD (UTC).
        #[arg(long)]
        day: String,
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Everything in one process: resolver, sensor, store, query API and web portal.
    Serve(ServeArgs),
    /// The ClickHouse backend.
    #[command(subcommand)]
    Clickhouse(ClickhouseCommand),
    /// Merge COF NDJSON files (exports of another passive DNS, or `query --json` output) into
    /// a store. Counts add up: importing a file twice counts it twice.
    Import {
        #[arg(long, required_unless_present = "clickhouse")]
        db: Option<PathBuf>,
        /// Import into a ClickHouse cluster instead: a file with a `[clickhouse]` table.
        #[arg(long, conflicts_with = "db")]
        clickhouse: Option<PathBuf>,
        /// COF files (`-`: standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClickhouseCommand {
    /// Create the database, tables and views on every shard (idempotent; collectors also do
    /// this when they start).
    Init {
        /// A file with a `[clickhouse]` table.
        #[arg(long)]
        config: PathBuf,
    },
    /// Add the index positions a cluster filled by a version before them lacks (rdata right
    /// wildcards, raw lookups of TXT, SOA, ...); idempotent.
    Reindex {
        /// A file with a `[clickhouse]` table.
        #[arg(long)]
        config: PathBuf,
    },
    /// Apply the batches that collectors stored in NATS JetStream (`nats` in the
    /// `[clickhouse]` table) to the cluster, each exactly once.
    Writer {
        /// A file with a `[clickhouse]` table that names the broker.
        #[arg(long)]
        config: PathBuf,
        /// Serve Prometheus metrics on this address.
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
}

#[derive(Args)]
struct CollectorArgs {
    /// Store directory (the embedded sled store).
    #[arg(long, required_unless_present = "clickhouse")]
    db: Option<PathBuf>,
    /// The store's page cache in MiB (sled; more keeps large walks in memory).
    #[arg(long, default_value_t = dnsledger::store::SERVER_CACHE_MB, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    cache_mb: u64,
    /// The store's runs merged this many at a time (2, 4, 8 or 16): more rewrites each RRset
    /// less often as batches arrive, and leaves lookups more runs to read and the store larger
    /// on disk (sensors use 4).
    #[arg(long, default_value_t = dnsledger::collector::DEFAULT_FAN_IN, value_parser = parse_fan_in)]
    fan_in: usize,
    /// Store into a ClickHouse cluster instead: a file with a `[clickhouse]` table.
    #[arg(long, conflicts_with = "db")]
    clickhouse: Option<PathBuf>,
    /// Address senders connect to.
    #[arg(long)]
    listen: SocketAddr,
    /// The collector's certificate chain (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    tls_key: PathBuf,
    /// CA (PEM) that senders' certificates must chain to; a sender's id is its certificate's CN.
    #[arg(long)]
    client_ca: PathBuf,
    /// Most connections at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// A sender (by certificate CN) that is a relay: the sensors its summaries name are
    /// recorded as contributors (repeatable). Other senders are recorded themselves.
    #[arg(long = "relay")]
    relays: Vec<String>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    api: ApiArgs,
}

/// The query API (DNSDB v2, COF, CIRCL) over this process's store.
#[derive(Args, Clone)]
struct ApiArgs {
    /// Serve the query API on this address (no keys, no TLS; see --api-config).
    #[arg(long)]
    api: Option<SocketAddr>,
    /// A file with an `[api]` table: keys, quotas, TLS, limits.
    #[arg(long, conflicts_with = "api")]
    api_config: Option<PathBuf>,
}

impl ApiArgs {
    fn config(&self) -> anyhow::Result<Option<dnsledger::api::ApiConfig>> {
        Ok(match (&self.api, &self.api_config) {
            (Some(addr), _) => Some(dnsledger::api::ApiConfig::open(*addr)),
            (None, Some(path)) => Some(dnsledger::api::ApiConfig::load(path)?),
            (None, None) => None,
        })
    }
}

#[derive(Args)]
struct ApiServeArgs {
    /// Store directory (a sensor's or a collector's, not in use by another process).
    #[arg(long, required_unless_present = "clickhouse")]
    db: Option<PathBuf>,
    /// The store's page cache in MiB (sled; more keeps large walks in memory).
    #[arg(long, default_value_t = dnsledger::store::SERVER_CACHE_MB, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    cache_mb: u64,
    /// Serve a ClickHouse cluster instead: a file with a `[clickhouse]` table.
    #[arg(long, conflicts_with = "db")]
    clickhouse: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a CA: DIR/ca.pem and DIR/ca.key (never overwritten).
    Ca {
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "dnsledger CA")]
        name: String,
    },
    /// Issue a server certificate (collector or relay) for NAME: DIR/NAME.pem, DIR/NAME.key.
    Server {
        #[arg(long)]
        dir: PathBuf,
        /// DNS name senders use (`server_name` in their configuration).
        name: String,
        /// Also valid for this address (repeatable).
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// Issue a client certificate for a sensor or relay; ID is its identity upstream.
    Client {
        #[arg(long)]
        dir: PathBuf,
        id: String,
        /// Validity; 0 makes a certificate that has expired already (to test refusals).
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

#[derive(Args)]
struct RelayArgs {
    #[command(flatten)]
    ingest: CollectorArgs,
    /// The next hop (collector or relay).
    #[arg(long)]
    upstream: SocketAddr,
    /// Name the upstream's certificate must carry.
    #[arg(long)]
    upstream_name: String,
    /// CA (PEM) of the upstream's certificate.
    #[arg(long)]
    upstream_ca: PathBuf,
    /// This relay's client certificate for the upstream (its CN is the relay's id there).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key.
    #[arg(long)]
    key: PathBuf,
    /// Outbox entries kept while the upstream is away (at least 128); past it new batches
    /// fold into the newest entry.
    #[arg(long, default_value_t = 10_000)]
    max_outbox_batches: usize,
    /// Also take raw dnstap, as a sensor configured by this file would ([listen], [pipeline],
    /// [privacy], [aggregate]; its db, [forward] and [api] are not used): what it keeps goes
    /// upstream with the relayed batches.
    #[arg(long)]
    sensor_config: Option<PathBuf>,
}

#[derive(Args)]
struct ResolverArgs {
    /// Configuration file (TOML, see docs/RESOLVER.md); the flags below override it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Serve clients on this address, UDP and TCP (repeatable).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Root hints file (named.root format) instead of the IANA roots.
    #[arg(long)]
    root_hints: Option<PathBuf>,
    /// Send dnstap to this unix socket.
    #[arg(long)]
    dnstap_unix: Option<PathBuf>,
    /// Send dnstap to this TCP address.
    #[arg(long)]
    dnstap_tcp: Option<SocketAddr>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// No periodic summary lines (of the in-process sensor).
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    resolver: ResolverArgs,
    /// Data directory (created if missing): the store lives in DATA/store.
    #[arg(long, default_value = "dnsledger-data")]
    data: PathBuf,
    /// The web portal and query API (HTTP).
    #[arg(long, default_value = "127.0.0.1:8053")]
    http: SocketAddr,
    /// Upstream servers the resolver may ask although private or loopback (repeatable), for a
    /// private root (see --root-hints).
    #[arg(long)]
    allow_servers: Vec<ipnet::IpNet>,
}

#[derive(Args)]
struct SensorArgs {
    /// Configuration file (TOML); the flags below override it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Store directory.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Listen on this unix socket (repeatable).
    #[arg(long)]
    unix: Vec<PathBuf>,
    /// Listen on this TCP address (repeatable).
    #[arg(long)]
    tcp: Vec<SocketAddr>,
    /// Process this fstrm file instead of listening, then exit.
    #[arg(long)]
    read: Option<PathBuf>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// No periodic summary lines.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand)]
enum TapCommand {
    /// Listen for dnstap like fstrm_capture; write an fstrm file or print messages.
    Listen(ListenArgs),
    /// Print the messages of an fstrm dnstap file.
    Read(ReadArgs),
    /// Send an fstrm file to a Frame Streams listener, like fstrm_replay.
    Replay(ReplayArgs),
    /// Write synthetic RESOLVER_RESPONSE frames (Zipf-like name repetition) to an fstrm file.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct GenerateArgs {
    /// Output fstrm file.
    file: PathBuf,
    /// Number of frames.
    #[arg(long, default_value_t = 2_000_000)]
    frames: u64,
    /// Size of the name population.
    #[arg(long, default_value_t = 200_000)]
    names: u64,
    /// Number of zones the names are spread over.
    #[arg(long, default_value_t = 1_000)]
    zones: u64,
    /// Random seed (same seed, same file).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Time of the first frame, epoch seconds.
    #[arg(long, default_value_t = 1_767_225_600)]
    start: u64,
}

#[derive(Args)]
#[group(id = "where", required = true, multiple = false)]
struct Where {
    /// Unix socket path.
    #[arg(long, group = "where")]
    unix: Option<PathBuf>,
    /// TCP address (host:port).
    #[arg(long, group = "where")]
    tcp: Option<SocketAddr>,
}

#[derive(Args)]
struct ListenArgs {
    #[command(flatten)]
    at: Where,
    /// Write frames to this fstrm file instead of printing them.
    #[arg(long, short = 'w')]
    write: Option<PathBuf>,
    /// Output format when printing: text, yaml or json.
    #[arg(long, default_value = "text")]
    format: OutputFormat,
    /// Unix socket file mode, octal (e.g. 660).
    #[arg(long, value_parser = parse_mode)]
    mode: Option<u32>,
    /// TLS certificate (PEM) for a TCP listener; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Largest data frame accepted, bytes (at least 131072).
    #[arg(long, default_value_t = dnsledger::framestream::DATA_FRAME_DEFAULT)]
    max_frame: usize,
    /// Most concurrent connections.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Exit after this many frames.
    #[arg(long)]
    count: Option<u64>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct ReadArgs {
    file: PathBuf,
    /// Output format: text, yaml or json.
    #[arg(long, default_value = "text")]
    format: OutputFormat,
    /// Decode and parse everything, print only the totals (a throughput check).
    #[arg(long)]
    count_only: bool,
}

#[derive(Args)]
struct ReplayArgs {
    file: PathBuf,
    #[command(flatten)]
    to: Where,
    /// Frames per second (default: as fast as the listener takes them).
    #[arg(long)]
    rate: Option<u64>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .map_err(|e| format!("not an octal mode: {e}"))
        .and_then(|m| if m > 0o777 { Err("mode above 777".to_string()) } else { Ok(m) })
}

/// What every long-running command starts with: shutdown on SIGTERM/SIGINT, a metrics
/// registry, and its `/metrics` endpoint when asked for.
async fn service(metrics: Option<SocketAddr>) -> anyhow::Result<(CancellationToken, Registry)> {
    let shutdown = shutdown_on_signals();
    let registry = Registry::default();
    if let Some(addr) = metrics {
        dnsledger::metrics::spawn_endpoint(addr, registry.clone(), shutdown.clone())
            .await
            .with_context(|| format!("metrics on {addr}"))?;
    }
    Ok((shutdown, registry))
}

fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

fn sensor_config(a: &SensorArgs) -> anyhow::Result<dnsledger::sensor::SensorConfig> {
    let mut config = match &a.config {
        Some(path) => load_config(path)?,
        None => dnsledger::sensor::SensorConfig::defaults(),
    };
    if let Some(db) = &a.db {
        config.db = db.clone();
    }
    if !a.unix.is_empty() {
        config.unix = a.unix.clone();
    }
    if !a.tcp.is_empty() {
        config.tcp = a.tcp.clone();
    }
    if a.metrics.is_some() {
        config.metrics = a.metrics;
    }
    if let Some(api) = a.api.config()? {
        config.api = Some(api);
    }
    Ok(config)
}

fn resolver_config(a: &ResolverArgs) -> anyhow::Result<dnsledger::resolver::ResolverConfig> {
    let text = match &a.config {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        None => String::new(),
    };
    let name = a.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "defaults".into());
    let mut config = dnsledger::resolver::ResolverConfig::parse(&text)
        .map_err(|errors| anyhow::anyhow!("{name}: {} problem(s):\n  {}", errors.len(), errors.join("\n  ")))?;
    if !a.listen.is_empty() {
        config.udp = a.listen.clone();
        config.tcp = a.listen.clone();
    }
    if let Some(path) = &a.root_hints {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        config.roots = dnsledger::resolver::config::parse_root_hints(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if a.dnstap_unix.is_some() || a.dnstap_tcp.is_some() {
        config.dnstap_unix = a.dnstap_unix.clone();
        config.dnstap_tcp = a.dnstap_tcp;
    }
    if a.metrics.is_some() {
        config.metrics = a.metrics;
    }
    Ok(config)
}

fn load_config(path: &std::path::Path) -> anyhow::Result<dnsledger::sensor::SensorConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    dnsledger::sensor::SensorConfig::parse(&text).map_err(|errors| {
        anyhow::anyhow!("{}: {} problem(s):\n  {}", path.display(), errors.len(), errors.join("\n  "))
    })
}

/// Clients for the cluster a `[clickhouse]` file describes (call within the runtime).
fn open_cluster(path: &std::path::Path) -> anyhow::Result<dnsledger::clickhouse::Cluster> {
    dnsledger::clickhouse::Cluster::new(dnsledger::clickhouse::ClickHouseConfig::load(path)?)
}

fn parse_fan_in(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| dnsledger::store::valid_fan_in(*n))
        .ok_or_else(|| format!("{s}: give 2, 4, 8 or 16"))
}

async fn run_collector(
    a: CollectorArgs,
    upstream: Option<dnsledger::forward::ForwardConfig>,
    dnstap: Option<dnsledger::sensor::SensorConfig>,
) -> anyhow::Result<()> {
    anyhow::ensure!(a.max_connections > 0, "--max-connections must be at least 1");
    let (shutdown, registry) = service(a.metrics).await?;
    let backend = match (a.db, &a.clickhouse) {
        (_, Some(file)) => {
            dnsledger::collector::Backend::ClickHouse(Box::new(dnsledger::clickhouse::ClickHouseConfig::load(file)?))
        }
        (Some(db), None) => dnsledger::collector::Backend::Sled(db),
        (None, None) => anyhow::bail!("give --db DIR or --clickhouse FILE"),
    };
    let config = dnsledger::collector::CollectorConfig {
        backend,
        listen: a.listen,
        cert: a.tls_cert,
        key: a.tls_key,
        client_ca: a.client_ca,
        max_connections: a.max_connections,
        upstream,
        trusted_relays: a.relays,
        api: a.api.config()?,
        dnstap,
        cache_mb: a.cache_mb,
        fan_in: a.fan_in,
    };
    dnsledger::collector::run(config, &registry, shutdown).await
}

/// hickory-server logs every request with the client's address at info level: kept out of
/// the default logs (privacy), like hickory's other per-query chatter.
const DEFAULT_LOG: &str = "info,hickory_server=error,hickory_resolver=warn,hickory_net=warn,hickory_proto=warn";

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Tap(TapCommand::Generate(a)) => {
            anyhow::ensure!(a.names > 0 && a.zones > 0, "--names and --zones must be positive");
            let spec = dnsledger::generate::GenerateSpec {
                frames: a.frames,
                names: a.names,
                zones: a.zones,
                seed: a.seed,
                start: a.start,
            };
            let n =
                dnsledger::generate::generate(&spec, &a.file).with_context(|| format!("write {}", a.file.display()))?;
            eprintln!("tap generate: {n} frames written to {}", a.file.display());
        }
        Command::CheckConfig { file, resolver: true } => {
            resolver_config(&ResolverArgs {
                config: Some(file.clone()),
                listen: Vec::new(),
                root_hints: None,
                dnstap_unix: None,
                dnstap_tcp: None,
                metrics: None,
                quiet: true,
            })?;
            println!("{}: ok", file.display());
        }
        Command::Collector(a) => run_collector(a, None, None).await?,
        Command::Clickhouse(ClickhouseCommand::Writer { config, metrics }) => {
            let cluster = open_cluster(&config)?;
            let nats = cluster.nats().ok_or_else(|| anyhow::anyhow!("{}: no `nats` URL", config.display()))?;
            cluster.init().await?;
            let (shutdown, registry) = service(metrics).await?;
            let stats = std::sync::Arc::new(dnsledger::clickhouse::nats::WriterStats::default());
            registry.register(stats.clone());
            dnsledger::clickhouse::nats::write(nats, std::sync::Arc::new(cluster), stats, shutdown).await?;
        }
        Command::Clickhouse(ClickhouseCommand::Reindex { config }) => {
            let cluster = open_cluster(&config)?;
            let n = cluster.reindex().await?;
            println!("clickhouse: {n} index positions written");
        }
        Command::Clickhouse(ClickhouseCommand::Init { config }) => {
            let cluster = open_cluster(&config)?;
            cluster.init().await?;
            println!(
                "clickhouse: schema of database {} ready on {} shard(s)",
                cluster.config().database,
                cluster.shard_count()
            );
        }
        Command::Pki(PkiCommand::Ca { dir, name }) => {
            dnsledger::pki::create_ca(&dir, &name)?;
            println!("{}: CA \"{name}\" created (keep ca.key offline)", dir.join("ca.pem").display());
        }
        Command::Pki(PkiCommand::Server { dir, name, ip, days }) => {
            anyhow::ensure!(days > 0, "--days must be positive");
            let pem = dnsledger::pki::issue_server(&dir, &name, &ip, days)?;
            println!("{}: server certificate for {name}", pem.display());
        }
        Command::Pki(PkiCommand::Client { dir, id, days }) => {
            anyhow::ensure!(days >= 0, "--days must not be negative");
            let pem = dnsledger::pki::issue_client(&dir, &id, days)?;
            println!("{}: client certificate for {id}", pem.display());
        }
        Command::Relay(a) => {
            let upstream = dnsledger::forward::ForwardConfig {
                collector: a.upstream,
                server_name: a.upstream_name,
                ca: a.upstream_ca,
                cert: a.cert,
                key: a.key,
                max_outbox_batches: a.max_outbox_batches,
            };
            anyhow::ensure!(
                a.max_outbox_batches >= dnsledger::store::MIN_OUTBOX_LIMIT,
                "--max-outbox-batches must be at least {}",
                dnsledger::store::MIN_OUTBOX_LIMIT
            );
            let dnstap = a.sensor_config.as_deref().map(load_config).transpose()?;
            run_collector(a.ingest, Some(upstream), dnstap).await?
        }
        Command::Resolver(a) => {
            let config = resolver_config(&a)?;
            let (shutdown, registry) = service(config.metrics).await?;
            dnsledger::resolver::run(config, &registry, shutdown, !a.quiet).await?;
        }
        Command::CheckConfig { file, resolver: false } => {
            load_config(&file)?;
            println!("{}: ok", file.display());
        }
        Command::Query(q) if q.follow => dnsledger::query::remote::follow(&q, &mut std::io::stdout().lock()).await?,
        Command::Query(q) if q.server.is_some() => {
            dnsledger::query::remote::run(&q, q.summarize, &mut std::io::stdout().lock()).await?
        }
        Command::Query(q) => dnsledger::query::run(&q, &mut std::io::stdout().lock())?,
        Command::Import { db: _, clickhouse: Some(config), files } => {
            let cluster = open_cluster(&config)?;
            cluster.init().await?;
            for f in &files {
                let n = dnsledger::import::import_clickhouse(&cluster, f).await?;
                eprintln!("import: {}: {n} RRsets merged", f.display());
            }
        }
        Command::Import { db, clickhouse: None, files } => {
            let db = db.ok_or_else(|| anyhow::anyhow!("give --db DIR or --clickhouse FILE"))?;
            let store = dnsledger::store::Store::open(&db)?;
            for f in &files {
                let n = dnsledger::import::import(&store, f)?;
                eprintln!("import: {}: {n} RRsets merged", f.display());
            }
        }
        Command::Serve(a) => {
            let mut config = resolver_config(&a.resolver)?;
            if !a.allow_servers.is_empty() {
                config.allow_servers = a.allow_servers.clone();
            }
            std::fs::create_dir_all(&a.data).with_context(|| format!("create {}", a.data.display()))?;
            let sensor = config.sensor.get_or_insert_with(|| {
                let mut s = dnsledger::sensor::SensorConfig::defaults();
                s.db = a.data.join("store");
                s.sensor_id = "serve".into();
                s
            });
            if sensor.api.is_none() {
                sensor.api = Some(dnsledger::api::ApiConfig::open(a.http));
            }
            eprintln!(
                "serve: DNS on {}, portal and API on http://{}/, store in {}",
                config.udp.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
                sensor.api.as_ref().map(|a| a.listen).unwrap_or(a.http),
                sensor.db.display()
            );
            let (shutdown, registry) = service(config.metrics).await?;
            dnsledger::resolver::run(config, &registry, shutdown, !a.resolver.quiet).await?;
        }
        Command::Export { db, day, dir } => {
            let t = dnsledger::query::parse_time(&day).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(t >= 0 && t % 86_400 == 0, "--day: a date, YYYY-MM-DD");
            anyhow::ensure!(db.is_dir(), "no store at {}", db.display());
            let store = dnsledger::store::Store::open(&db)?;
            let day = t as u64 / 86_400;
            let n = dnsledger::export::export_day(&store, day, &dir)?;
            eprintln!("export: {n} RRsets in {}", dnsledger::export::file_for(&dir, day).display());
        }
        Command::Api(a) => {
            let config = a.api.config()?.ok_or_else(|| anyhow::anyhow!("give --api ADDR or --api-config FILE"))?;
            let (db, what) = match (&a.db, &a.clickhouse) {
                (_, Some(file)) => {
                    let cluster = open_cluster(file)?;
                    let what = format!("ClickHouse database {}", cluster.config().database);
                    (dnsledger::db::Db::ClickHouse(std::sync::Arc::new(cluster)), what)
                }
                (Some(dir), None) => {
                    anyhow::ensure!(dir.is_dir(), "no store at {}", dir.display());
                    (
                        dnsledger::db::Db::Sled(dnsledger::store::Store::open_cached(dir, a.cache_mb)?),
                        dir.display().to_string(),
                    )
                }
                (None, None) => anyhow::bail!("give --db DIR or --clickhouse FILE"),
            };
            let (shutdown, registry) = service(a.metrics).await?;
            let addr = dnsledger::api::start(config, db, None, &registry, shutdown.clone()).await?;
            eprintln!("api: serving {what} on http://{addr}");
            shutdown.cancelled().await;
        }
        Command::Sensor(a) => {
            let config = sensor_config(&a)?;
            let start = std::time::Instant::now();
            let totals = if let Some(file) = &a.read {
                let stats = std::sync::Arc::new(dnsledger::sensor::SensorStats::default());
                let (config, file) = (config.clone(), file.clone());
                tokio::task::spawn_blocking(move || dnsledger::sensor::run_file(&config, &file, stats)).await??
            } else {
                let (shutdown, registry) = service(config.metrics).await?;
                dnsledger::sensor::run(config, &registry, shutdown, !a.quiet).await?
            };
            eprintln!(
                "sensor: {} frames in {:.3}s, {} kept, {} RRset observations, {} RRsets stored",
                totals.frames,
                start.elapsed().as_secs_f64(),
                totals.kept,
                totals.rrsets,
                totals.stored
            );
        }
        Command::Tap(TapCommand::Listen(a)) => {
            let endpoint = match (a.at.unix, a.at.tcp) {
                (Some(path), _) => Endpoint::Unix { path, mode: a.mode },
                (None, Some(addr)) => {
                    let tls = match (&a.tls_cert, &a.tls_key) {
                        (Some(cert), Some(key)) => {
                            Some(dnsledger::tls::dnstap_server_config(cert, key, a.tls_client_ca.as_deref())?)
                        }
                        _ => None,
                    };
                    Endpoint::Tcp { addr, tls }
                }
                (None, None) => bail!("--unix or --tcp is required"),
            };
            let listener = ListenerConfig {
                max_frame: a.max_frame.max(dnsledger::framestream::DATA_FRAME_MIN_LIMIT),
                max_connections: a.max_connections,
                ..ListenerConfig::default()
            };
            let output = match a.write {
                Some(path) => tap::ListenOutput::File(path),
                None => tap::ListenOutput::Print(a.format),
            };
            let (shutdown, registry) = service(a.metrics).await?;
            let opts = tap::ListenOptions { endpoint, output, listener, count: a.count, progress: !a.quiet };
            tap::listen(opts, &registry, shutdown).await?;
        }
        Command::Tap(TapCommand::Read(a)) => {
            let totals = if a.count_only {
                let start = std::time::Instant::now();
                let t = tap::scan(&a.file)?;
                let secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "tap read: {} frames in {secs:.3}s ({:.0} frames/s decoded), {} DNS messages parsed ({:.0}/s), {} malformed",
                    t.frames,
                    t.frames as f64 / secs,
                    t.dns_parsed,
                    t.dns_parsed as f64 / secs,
                    t.dns_malformed
                );
                t
            } else {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                tap::read(&a.file, a.format, &mut out)?
            };
            eprintln!(
                "tap read: {} frames, {} decoded, {} undecodable",
                totals.frames, totals.decoded, totals.undecodable
            );
        }
        Command::Tap(TapCommand::Replay(a)) => {
            let target = match (a.to.unix, a.to.tcp) {
                (Some(p), _) => Target::Unix(p),
                (None, Some(addr)) => Target::Tcp(addr),
                (None, None) => bail!("--unix or --tcp is required"),
            };
            let shutdown = shutdown_on_signals();
            tap::replay(&a.file, target, a.rate, &Registry::default(), shutdown).await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    dnsledger::alloc::configure();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Sensor(_)) {
        dnsledger::alloc::sensor_heap();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DNSLEDGER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One I/O worker (plus the blocking threads that consume and write): measured with
    // fstrm_replay on 2 cores, a second worker only adds work stealing and cross-core wake-ups
    // (tap listen: ~310k frames/s with two workers, ~420k with one). TOKIO_WORKER_THREADS
    // overrides it.
    let workers = std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dnsledger: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `dnsledger query ... | head`: the reader went away, which is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dnsledger: {e:#}");
            ExitCode::FAILURE
        }
    }
}
