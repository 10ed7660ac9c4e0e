//! `smsmon`: live progress of smsmesh batches.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use smsmesh_monitor::{Display, watch};

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut display = Display::new(args.plain);
    match watch(
        &args.coordinator,
        args.batch.as_deref(),
        args.interval,
        &mut display,
    )
    .await
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smsmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}
