//! `smsmon`: live progress of smsmesh batches; `smsmon export`, a batch's
//! messages as CSV; `smsmon submit`, a CSV of numbers sent as one batch.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use smsmesh_monitor::{Display, watch};
use tracing::Instrument;

/// Shows live progress of batches: a bar per batch with sent, failed, rate,
/// latency, ETA and per-node shares; plain lines when not on a terminal.
/// `smsmon export` writes a batch's messages as CSV instead; `smsmon submit`
/// sends one body to every number of a CSV file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Coordinator URL (a bare host:port is http://); several, comma-separated, for a
    /// leader and its standbys (the one that serves is used).
    #[arg(
        long,
        global = true,
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
    #[arg(long, global = true, env = "SMSMESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA (PEM) the coordinator's certificate must chain to; for an https:// --coordinator.
    #[arg(long, global = true, env = "SMSMESH_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Name expected in the coordinator's certificate, if not the URL's host.
    #[arg(long, global = true, env = "SMSMESH_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317
    /// (the standard OTEL_* variables are honoured too).
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Writes the messages of a batch as CSV (a header row, then one row per
    /// message in index order): message_id, state, attempts, node, to,
    /// client_ref, segments, last_error, accepted_unix_ms,
    /// last_attempt_unix_ms, final_unix_ms, sender, provider_ids,
    /// receipt_state, receipt_error, receipt_unix_ms, body.
    Export {
        /// The batch.
        #[arg(long)]
        batch: String,
        /// Only messages in this state (pending, in-flight, retry-wait,
        /// sent, failed, cancelled, delivered, undelivered, expired,
        /// rejected, delivery-unknown); repeat or separate with commas.
        #[arg(long, value_delimiter = ',', value_parser = smsmesh_monitor::export::parse_state)]
        state: Vec<smsmesh::pb::MessageState>,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Sends one body to every number of a CSV file, as one batch (a streamed
    /// upload: millions of numbers are fine). Column 1 is the number in E.164
    /// form, column 2 an optional client_ref; a header row is skipped. Prints
    /// the batch id; nothing is accepted if any line is bad.
    Submit {
        /// The CSV file of numbers ("-" for standard input).
        #[arg(long)]
        to_file: std::path::PathBuf,
        /// The text every recipient gets.
        #[arg(long)]
        body: String,
        /// Attempts per message (default: the coordinator's).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Makes a repeated submit of the same file answer the first batch
        /// instead of sending again.
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Numbers per chunk of the upload.
        #[arg(long, default_value_t = 10_000)]
        chunk_size: usize,
        /// Who the messages are from: a name of up to 11 GSM characters, a
        /// short code or an E.164 number (default: each node's --smpp-sender).
        #[arg(long, default_value = "")]
        sender: String,
        /// The batch's class: emergency (needs a token with the
        /// smsmesh:emergency scope), high, normal or bulk.
        #[arg(long, default_value = "normal", value_parser = smsmesh::priority::Class::parse)]
        priority: smsmesh::priority::Class,
        /// Where the coordinator POSTs the batch's events (each message's
        /// outcome and delivery state, and the batch's end); default: the
        /// tenant's, if the coordinator has one for it.
        #[arg(long, default_value = "")]
        callback_url: String,
        /// Then show the batch's progress until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Pauses the dispatch of a class (bulk, normal or high) for every
    /// tenant; jobs already at nodes finish. An operator command: the token
    /// needs the smsmesh:operator scope.
    Pause {
        /// The class.
        #[arg(value_parser = smsmesh::priority::Class::parse)]
        class: smsmesh::priority::Class,
    },
    /// Resumes the dispatch of a paused class.
    Resume {
        /// The class.
        #[arg(value_parser = smsmesh::priority::Class::parse)]
        class: smsmesh::priority::Class,
    },
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
    let result = match &args.command {
        None => watch(&target, args.batch.as_deref(), args.interval, &mut display)
            .instrument(span)
            .await
            .map(|_| ()),
        Some(Command::Export {
            batch,
            state,
            output,
        }) => export(&target, batch, state, output.as_deref()).await,
        Some(Command::Submit {
            to_file,
            body,
            max_attempts,
            idempotency_key,
            chunk_size,
            sender,
            priority,
            callback_url,
            watch: then_watch,
        }) => {
            let upload = smsmesh_monitor::submit::Upload {
                body: body.clone(),
                max_attempts: *max_attempts,
                idempotency_key: idempotency_key.clone(),
                chunk: *chunk_size,
                sender: sender.clone(),
                class: *priority,
                callback_url: callback_url.clone(),
            };
            match submit(&target, &upload, to_file).await {
                Ok(id) if *then_watch => watch(&target, Some(&id), args.interval, &mut display)
                    .await
                    .map(|_| ()),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(Command::Pause { class }) => set_paused(&target, *class, true).await,
        Some(Command::Resume { class }) => set_paused(&target, *class, false).await,
    };
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smsmon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `smsmon submit`: uploads the file (or standard input) and prints the batch id.
async fn submit(
    target: &smsmesh_monitor::Target,
    upload: &smsmesh_monitor::submit::Upload,
    path: &std::path::Path,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let input: Box<dyn std::io::Read + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let r = smsmesh_monitor::submit::submit(target, upload, input).await?;
    let replayed = if r.replayed {
        " (the idempotency key had made it before: nothing new was accepted)"
    } else {
        ""
    };
    eprintln!(
        "smsmon: batch {} accepted, {} messages{replayed}",
        r.batch_id, r.accepted
    );
    println!("{}", r.batch_id);
    Ok(r.batch_id)
}

/// `smsmon pause` / `smsmon resume`: says which classes are paused after.
async fn set_paused(
    target: &smsmesh_monitor::Target,
    class: smsmesh::priority::Class,
    paused: bool,
) -> anyhow::Result<()> {
    let mut client = target.connect().await?;
    let r = client
        .set_class_paused(smsmesh::pb::SetClassPausedRequest {
            priority: class.to_proto() as i32,
            paused,
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "SetClassPaused: {}: {}",
                s.code(),
                smsmesh::client::describe(&s)
            )
        })?
        .into_inner();
    let now: Vec<&str> = r
        .paused
        .iter()
        .filter_map(|&p| smsmesh::priority::Class::from_proto(p, "paused").ok())
        .map(|c| c.name())
        .collect();
    eprintln!(
        "smsmon: {class} {}; paused now: {}",
        if paused { "paused" } else { "resumed" },
        if now.is_empty() {
            "none".to_string()
        } else {
            now.join(", ")
        }
    );
    Ok(())
}

/// `smsmon export`: to a file (written whole, or not left behind) or to stdout.
async fn export(
    target: &smsmesh_monitor::Target,
    batch: &str,
    states: &[smsmesh::pb::MessageState],
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let Some(path) = output else {
        let stdout = std::io::stdout().lock();
        smsmesh_monitor::export::export(target, batch, states, std::io::BufWriter::new(stdout))
            .await?;
        return Ok(());
    };
    let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let written =
        smsmesh_monitor::export::export(target, batch, states, std::io::BufWriter::new(file)).await;
    match written {
        Ok(rows) => {
            eprintln!("smsmon: {rows} messages written to {}", path.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}
