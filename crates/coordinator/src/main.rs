//! `smscoord`: runs the smsmesh coordinator.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use smsmesh_coordinator::Config;

/// The smsmesh coordinator: accepts SMS batches over gRPC and dispatches them
/// to sender nodes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to serve gRPC on (clients and nodes).
    #[arg(long, env = "SMSMESH_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9100). Off by default.
    #[arg(long, env = "SMSMESH_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "SMSMESH_DATA_DIR", default_value = "smsmesh-data")]
    data_dir: std::path::PathBuf,
    /// Keep state in memory only: every batch is lost when the coordinator stops.
    #[arg(long, env = "SMSMESH_IN_MEMORY")]
    in_memory: bool,
    /// Largest batch accepted, in messages.
    #[arg(long, env = "SMSMESH_MAX_BATCH_SIZE", default_value_t = 50_000_000)]
    max_batch_size: u64,
    /// Attempts per message when a batch does not say.
    #[arg(long, env = "SMSMESH_DEFAULT_MAX_ATTEMPTS", default_value_t = 3)]
    default_max_attempts: u32,
    /// Backoff before the first retry (doubles each failure, with jitter).
    #[arg(long, env = "SMSMESH_RETRY_BASE", default_value = "200ms", value_parser = humantime::parse_duration)]
    retry_base: Duration,
    /// Longest retry backoff.
    #[arg(long, env = "SMSMESH_RETRY_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    retry_max: Duration,
    /// How often nodes must send a heartbeat.
    #[arg(long, env = "SMSMESH_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// A node silent this long is dropped and its jobs go to other nodes.
    #[arg(long, env = "SMSMESH_NODE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    node_timeout: Duration,
    /// After a restart, how long messages that may have been in flight wait before going
    /// out again (reconnecting nodes hand in their results meanwhile).
    #[arg(long, env = "SMSMESH_RESUME_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    resume_grace: Duration,
    /// Most jobs in one frame to a node.
    #[arg(long, env = "SMSMESH_MAX_JOBS_PER_FRAME", default_value_t = 512)]
    max_jobs_per_frame: usize,
    /// Of a traced batch, the share of messages whose send on the node is a span
    /// (every 1/ratio-th message, the first always); 0 for none.
    #[arg(long, env = "SMSMESH_TRACE_MESSAGE_RATIO", default_value_t = 0.01)]
    trace_message_ratio: f64,
    /// Check the health of the coordinator listening on --listen and exit: 0 if its
    /// gRPC health service says SERVING, 1 if not. For container health checks.
    #[arg(long)]
    health_check: bool,
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317
    /// (the standard OTEL_* variables are honoured too).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

impl Args {
    fn config(&self) -> Result<Config, String> {
        if self.default_max_attempts == 0 {
            return Err("--default-max-attempts must be at least 1".into());
        }
        if self.max_jobs_per_frame == 0 {
            return Err("--max-jobs-per-frame must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.trace_message_ratio) {
            return Err("--trace-message-ratio must be between 0 and 1".into());
        }
        if self.node_timeout <= self.heartbeat_interval {
            return Err("--node-timeout must be longer than --heartbeat-interval".into());
        }
        Ok(Config {
            data_dir: (!self.in_memory).then(|| self.data_dir.clone()),
            max_batch_size: self.max_batch_size,
            default_max_attempts: self.default_max_attempts,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            heartbeat_interval: self.heartbeat_interval,
            node_timeout: self.node_timeout,
            max_jobs_per_frame: self.max_jobs_per_frame,
            resume_grace: self.resume_grace,
            trace_message_ratio: self.trace_message_ratio,
            ..Config::default()
        })
    }
}

/// `--health-check`: asks the running coordinator's gRPC health service.
async fn health_check(mut addr: SocketAddr) -> ExitCode {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let r = client
            .check(HealthCheckRequest::default())
            .await
            .map_err(|s| s.message().to_string())?;
        Ok::<_, String>(r.into_inner().status)
    };
    match tokio::time::timeout(Duration::from_secs(5), check).await {
        Ok(Ok(s)) if s == ServingStatus::Serving as i32 => ExitCode::SUCCESS,
        Ok(Ok(s)) => {
            eprintln!("smscoord: unhealthy: status {s}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("smscoord: unhealthy: {addr}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("smscoord: unhealthy: {addr} did not answer within 5s");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.health_check {
        return health_check(args.listen).await;
    }
    let telemetry = smsmesh::telemetry::init("smscoord", "info", args.otlp_endpoint.as_deref());
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smscoord: {e}");
            return ExitCode::from(64); // EX_USAGE
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("smscoord: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(69); // EX_UNAVAILABLE
        }
    };
    let metrics = match args.metrics_listen {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("smscoord: cannot serve metrics on {addr}: {e}");
                return ExitCode::from(69);
            }
        },
    };
    // Scripts and tests read the addresses from here (useful with port 0).
    if let Ok(addr) = listener.local_addr() {
        println!("smscoord listening on {addr}");
    }
    if let Some(addr) = metrics.as_ref().and_then(|l| l.local_addr().ok()) {
        println!("smscoord metrics on {addr}");
    }
    let result = smsmesh_coordinator::run_with_metrics(
        config,
        listener,
        metrics,
        smsmesh::cli::shutdown_signal(),
    )
    .await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smscoord: {e:#}");
            ExitCode::FAILURE
        }
    }
}
