//! `smsnode`: runs one smsmesh sender node.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use smsmesh_node::metrics::Served;
use smsmesh_node::{Config, Simulated, Stats};

/// A smsmesh sender node: joins the coordinator and sends the SMS it is given
/// through its gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Coordinator URL; several, comma-separated, for a leader and its standbys
    /// (tried in turn until one takes the node).
    #[arg(
        long,
        env = "SMSMESH_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Node name, unique in the mesh. Default: the host name and process id.
    #[arg(long, env = "SMSMESH_NODE_NAME")]
    name: Option<String>,
    /// Most messages sent through the gateway at once.
    #[arg(long, env = "SMSMESH_CONCURRENCY", default_value_t = 100)]
    concurrency: u32,
    /// Jobs held ready beyond --concurrency so a send starts the moment another ends.
    /// Default: a tenth of --concurrency, at least 1.
    #[arg(long, env = "SMSMESH_PREFETCH")]
    prefetch: Option<u32>,
    /// The most the prefetch grows to, when sends finish faster than one coordinator
    /// round trip can refill them (the node measures both). Default: --concurrency,
    /// at most 10,000.
    /// Equal to --prefetch for a fixed prefetch.
    #[arg(long, env = "SMSMESH_PREFETCH_MAX")]
    prefetch_max: Option<u32>,
    /// Gateway: "simulated"; an SMSC to bind to as an SMPP 3.4 client:
    /// smpp://SYSTEM_ID:PASSWORD@HOST:PORT (smpps:// for TLS), options in the
    /// query or as the --smpp-* flags; or an HTTP SMS provider:
    /// https://[USER:PASSWORD@]HOST/PATH, options in the query or as the
    /// --http-* flags (e.g. https://SID:TOKEN@api.twilio.com?profile=twilio).
    #[arg(long, env = "SMSMESH_GATEWAY", default_value = "simulated")]
    gateway: String,
    #[command(flatten)]
    smpp: smsmesh_node::smpp::SmppArgs,
    #[command(flatten)]
    http: smsmesh_node::http::HttpArgs,
    /// Simulated gateway: mean send latency (exponentially distributed); 0ms for none.
    #[arg(long, env = "SMSMESH_MEAN_LATENCY", default_value = "50ms", value_parser = humantime::parse_duration)]
    mean_latency: Duration,
    /// Simulated gateway: probability (0 to 1) that an attempt fails.
    #[arg(long, env = "SMSMESH_FAILURE_RATE", default_value_t = 0.0)]
    failure_rate: f64,
    /// Longest wait between reconnect attempts (backoff starts at 100ms and doubles).
    #[arg(long, env = "SMSMESH_RECONNECT_MAX", default_value = "5s", value_parser = humantime::parse_duration)]
    reconnect_max: Duration,
    /// Runtime threads: 1 runs the node on one thread; 0 one per core; N that many.
    #[arg(long, env = "SMSMESH_WORKER_THREADS", default_value_t = 1)]
    worker_threads: usize,
    /// On SIGTERM, how long to keep trying to hand in finished results.
    #[arg(long, env = "SMSMESH_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// A gateway send that takes longer fails ("timed out"); the coordinator retries
    /// it like any failure. 0: no limit.
    #[arg(long, env = "SMSMESH_SEND_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    send_timeout: Duration,
    /// Results go at most one frame per this long while little credit is free (receipts
    /// never wait): at a connector's rate limit, fewer, fuller frames (0: one per event).
    #[arg(long, env = "SMSMESH_FRAME_GAP", default_value = "5ms", value_parser = humantime::parse_duration)]
    frame_gap: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9101). Off by default.
    #[arg(long, env = "SMSMESH_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// File holding the join token the coordinator asks of nodes (its --node-token-file).
    #[arg(long, env = "SMSMESH_JOIN_TOKEN_FILE", conflicts_with = "join_token")]
    join_token_file: Option<std::path::PathBuf>,
    /// The join token itself (prefer the file: command lines are visible to other users).
    #[arg(long, env = "SMSMESH_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// CA (PEM) the coordinator's certificate must chain to; for an https:// --coordinator.
    #[arg(long, env = "SMSMESH_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, env = "SMSMESH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SMSMESH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Name expected in the coordinator's certificate, if not the URL's host.
    #[arg(long, env = "SMSMESH_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Check the health of the node running with these flags and exit: 0 if it is
    /// connected to its coordinator (GET /healthz on --metrics-listen), 1 if not.
    /// For container health checks.
    #[arg(long, requires = "metrics_listen")]
    health_check: bool,
    /// Run this many nodes in this one process, named NAME-000, NAME-001, …, each
    /// with its own credit, all over one connection and one group stream whose
    /// frames carry many nodes' jobs and results: many small nodes on one host
    /// (load tests, benchmarks) at about the cost of one big node. Their
    /// metrics are served together, each series labelled with its node.
    #[arg(long, env = "SMSMESH_INSTANCES", default_value_t = 1)]
    instances: u32,
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317
    /// (the standard OTEL_* variables are honoured too).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

/// Runs the nodes `served` made from `config` until a shutdown signal has let
/// them all leave; the first error any of them met, if one did.
async fn run_instances(
    mut config: Config,
    served: Vec<Served>,
) -> Result<(), smsmesh_node::NodeError> {
    // One connection and one group stream for all: their frames are packed together.
    let channels = smsmesh::client::addresses(&config.coordinator)
        .into_iter()
        .map(|url| Ok(smsmesh::client::endpoint(url, config.tls.as_ref())?.connect_lazy()))
        .collect::<Result<Vec<_>, String>>()
        .map_err(smsmesh_node::NodeError::Config)?;
    config.group = Some(
        smsmesh_node::group::Group::new(channels, config.join_token.as_deref())
            .map_err(smsmesh_node::NodeError::Config)?,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let nodes: Vec<_> = served
        .into_iter()
        .map(|node| {
            let mut config = config.clone();
            config.name = node.name;
            let mut stop = stop_rx.clone();
            tokio::spawn(smsmesh_node::run(config, node.stats, async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        })
        .collect();
    let all = futures::future::join_all(nodes);
    tokio::pin!(all);
    let finished = tokio::select! {
        done = &mut all => done,
        () = smsmesh::cli::shutdown_signal() => {
            let _ = stop_tx.send(true);
            all.await
        }
    };
    finished.into_iter().try_for_each(|r| {
        r.unwrap_or_else(|e| {
            Err(smsmesh_node::NodeError::Config(format!(
                "a node task failed: {e}"
            )))
        })
    })
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", std::process::id())
}

/// mimalloc rather than glibc's malloc: many small allocations per message,
/// on many threads (BENCHMARKS.md, "Issue 16: the allocator").
#[global_allocator]
static ALLOCATOR: smsmesh_alloc::MiMalloc = smsmesh_alloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    // A node's work is one task, its stream and its gateway's connections: on one
    // thread nothing is handed between threads. More threads only pay for that, at a
    // connector's rate limit (each send wakes a parked thread) and at full speed
    // beside other processes alike (BENCHMARKS.md).
    let runtime = smsmesh::cli::runtime(args.worker_threads);
    match runtime {
        Ok(rt) => rt.block_on(node_main(args)),
        Err(e) => {
            eprintln!("smsnode: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--health-check`: asks the running node's `/healthz`.
async fn health_check(mut addr: std::net::SocketAddr) -> ExitCode {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    match smsmesh::metrics::http_get(addr, "/healthz").await {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((code, body)) => {
            eprintln!("smsnode: unhealthy: HTTP {code}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("smsnode: unhealthy: cannot reach http://{addr}/healthz: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn node_main(args: Args) -> ExitCode {
    if args.health_check
        && let Some(addr) = args.metrics_listen
    {
        return health_check(addr).await;
    }
    let name = args.name.clone().unwrap_or_else(default_name);
    let telemetry = smsmesh::telemetry::init_instance(
        "smsnode",
        Some(&name),
        "info",
        args.otlp_endpoint.as_deref(),
    );
    if !(0.0..=1.0).contains(&args.failure_rate) {
        eprintln!(
            "smsnode: --failure-rate must be between 0 and 1, got {}",
            args.failure_rate
        );
        return ExitCode::from(64);
    }
    if args.concurrency == 0 {
        eprintln!("smsnode: --concurrency must be at least 1");
        return ExitCode::from(64);
    }
    if args.instances == 0 || args.instances > 10_000 {
        eprintln!(
            "smsnode: --instances must be between 1 and 10000, got {}",
            args.instances
        );
        return ExitCode::from(64);
    }
    let mut smpp_stats = None;
    let gateway: Arc<dyn smsmesh_node::Gateway> = if args.gateway == "simulated" {
        Arc::new(Simulated {
            mean_latency: args.mean_latency,
            failure_rate: args.failure_rate,
        })
    } else if args.gateway.starts_with("smpp://") || args.gateway.starts_with("smpps://") {
        let smpp = match smsmesh_node::smpp::SmppConfig::parse(&args.gateway, &args.smpp) {
            Ok(c) => smsmesh_node::smpp::Smpp::start(c, args.reconnect_max),
            Err(e) => {
                eprintln!("smsnode: {e}");
                return ExitCode::from(64);
            }
        };
        smpp_stats = Some(smpp.stats());
        Arc::new(smpp)
    } else if args.gateway.starts_with("http://") || args.gateway.starts_with("https://") {
        match smsmesh_node::http::HttpConfig::parse(&args.gateway, &args.http)
            .and_then(smsmesh_node::http::Http::new)
        {
            Ok(http) => Arc::new(http),
            Err(e) => {
                eprintln!("smsnode: {e}");
                return ExitCode::from(64);
            }
        }
    } else {
        eprintln!(
            "smsnode: unknown --gateway {:?} (\"simulated\", smpp://SYSTEM_ID:PASSWORD@HOST:PORT, or an http(s):// provider URL)",
            args.gateway
        );
        return ExitCode::from(64);
    };
    let mut config = Config::new(args.coordinator, name, args.concurrency, gateway);
    config.drain_timeout = args.drain_timeout;
    config.send_timeout = (!args.send_timeout.is_zero()).then_some(args.send_timeout);
    config.frame_gap = args.frame_gap;
    config.join_token = match (&args.join_token_file, &args.join_token) {
        (Some(f), _) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("smsnode: cannot read the join token {}: {e}", f.display());
                return ExitCode::from(64);
            }
        },
        (None, t) => t.clone(),
    };
    config.tls = match smsmesh::client::ClientTls::from_files(
        args.tls_ca.as_deref(),
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.tls_domain.clone(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("smsnode: {e}");
            return ExitCode::from(64);
        }
    };
    let (floor, ceiling) = smsmesh_node::default_prefetch(args.concurrency);
    config.prefetch = args.prefetch.unwrap_or(floor);
    config.prefetch_max = match args.prefetch_max {
        Some(max) if max < config.prefetch => {
            eprintln!(
                "smsnode: --prefetch-max ({max}) must be at least the prefetch ({})",
                config.prefetch
            );
            return ExitCode::from(64);
        }
        Some(max) => max,
        None => ceiling.max(config.prefetch),
    };
    config.reconnect_max = args.reconnect_max;
    // The nodes of this process: one, or --instances named NAME-000 ….
    let served: Vec<Served> = (0..args.instances)
        .map(|i| Served {
            name: match args.instances {
                1 => config.name.clone(),
                _ => format!("{}-{i:03}", config.name),
            },
            concurrency: config.concurrency,
            stats: {
                let stats = Arc::new(Stats::default());
                if let Some(smpp) = &smpp_stats {
                    let _ = stats.smpp.set(smpp.clone());
                }
                stats
            },
        })
        .collect();
    let mut _metrics = None;
    if let Some(addr) = args.metrics_listen {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("smsnode: cannot serve metrics on {addr}: {e}");
                return ExitCode::from(69);
            }
        };
        if let Ok(addr) = listener.local_addr() {
            println!("smsnode metrics on {addr}"); // scripts and tests read it (port 0)
        }
        let registry = smsmesh_node::metrics::registry_of(served.clone());
        let all: Vec<Arc<Stats>> = served.iter().map(|n| n.stats.clone()).collect();
        // Healthy while every node of the process is connected and its gateway can send.
        _metrics = Some(smsmesh::metrics::spawn(listener, registry, move || {
            use std::sync::atomic::Ordering::Relaxed;
            all.iter()
                .all(|s| s.connected.load(Relaxed) && !s.gateway_down.load(Relaxed))
        }));
    }
    let result = if args.instances == 1 {
        let stats = served[0].stats.clone();
        smsmesh_node::run(config, stats, smsmesh::cli::shutdown_signal()).await
    } else {
        run_instances(config, served).await
    };
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smsnode: {e}");
            ExitCode::from(64)
        }
    }
}
