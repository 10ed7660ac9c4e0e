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
    let result = watch(
        &args.coordinator,
        args.batch.as_deref(),
        args.interval,
        &mut display,
    )
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
