//! `smsmon`: live progress of smsmesh batches.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use smsmesh_monitor::{Display, watch};
use tracing::Instrument;

/// Shows live progress of batches: a bar per batch with sent, failed, rate,
/// latency, ETA and per-node shares; plain lines when not on a terminal.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Coordinator URL.
    #[arg(
        long,
        env = "SMSMESH_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Watch only this batch (and exit when it ends). Default: every batch.
    #[arg(long)]
    batch: Option<String>,
    /// Time between updates.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Plain lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Bearer token (a JWT naming your tenant); not needed with --insecure-no-auth.
    #[arg(long, env = "SMSMESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA (PEM) the coordinator's certificate must chain to; for an https:// --coordinator.
    #[arg(long, env = "SMSMESH_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Name expected in the coordinator's certificate, if not the URL's host.
    #[arg(long, env = "SMSMESH_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317
    /// (the standard OTEL_* variables are honoured too).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Warnings only: log lines would break the bars.
    let telemetry = smsmesh::telemetry::init("smsmon", "warn", args.otlp_endpoint.as_deref());
    let mut display = Display::new(args.plain);
    let span = tracing::info_span!("watch", batch_id = args.batch.as_deref().unwrap_or("all"));
    let tls = match smsmesh::client::ClientTls::from_files(
        args.tls_ca.as_deref(),
        None,
        None,
        args.tls_domain.clone(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("smsmon: {e}");
            return ExitCode::from(64);
        }
    };
    let target = smsmesh_monitor::Target {
        url: args.coordinator.clone(),
        tls,
        token: args.token.clone(),
    };
    let result = watch(&target, args.batch.as_deref(), args.interval, &mut display)
        .instrument(span)
        .await;
    telemetry.shutdown().await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smsmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}
