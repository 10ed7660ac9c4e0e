//! Scenario (g): transactional traffic. Many callers each submit
//! one-message batches, one after another, to a durable coordinator; the
//! figures are batches accepted per second, the submit latency callers see,
//! and whether every message was then sent.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use smsmesh::pb;

use crate::{Run, Setup, mesh, usage};

/// What the callers did.
pub(crate) struct Small {
    /// The run, with `messages` = batches and the latencies those of SubmitBatch.
    pub(crate) run: Run,
    /// Seconds from the first submit until every message was sent.
    pub(crate) all_sent_seconds: f64,
}

/// `callers` concurrent callers submit `batches` one-message batches in all,
/// spread over `tenants` tenants (caller *c* is tenant *c* mod `tenants`;
/// with more than one, the coordinator checks JWTs).
pub(crate) async fn run(
    bin: &Path,
    callers: usize,
    tenants: usize,
    batches: u64,
) -> anyhow::Result<Small> {
    let setup = Setup {
        messages: batches,
        durable: true,
        nodes: vec![(1000, Duration::ZERO); 4],
        per_process: 1,
    };
    let secret = tempfile::NamedTempFile::new()?;
    std::fs::write(
        secret.path(),
        "bench-secret-0123456789abcdef0123456789abcdef\n",
    )?;
    let secret_path = secret.path().to_str().context("temp path")?.to_string();
    let node_token = tempfile::NamedTempFile::new()?;
    std::fs::write(node_token.path(), "bench-node-token-0123456789abcdef\n")?;
    let node_token_path = node_token.path().to_str().context("temp path")?.to_string();
    let mut coord_args = vec!["--metrics-listen", "127.0.0.1:0"];
    let mut tokens = Vec::new();
    if tenants > 1 {
        coord_args.extend(["--jwt-secret-file", &secret_path]);
        coord_args.extend(["--node-token-file", &node_token_path]);
        for t in 0..tenants {
            let out = std::process::Command::new(bin.join("smscoord"))
                .args(["--jwt-secret-file", &secret_path, "--mint-token"])
                .arg(format!("tenant-{t}"))
                .output()?;
            if !out.status.success() {
                bail!("--mint-token: {}", String::from_utf8_lossy(&out.stderr));
            }
            tokens.push(String::from_utf8(out.stdout)?.trim().to_string());
        }
    }
    let mut mesh =
        mesh::start(bin, &setup, &coord_args, tokens.first().map(String::as_str)).await?;
    let metrics = mesh.metrics.context("metrics address")?;
    // A few connections, as a fleet of API servers would have.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            tonic::transport::Endpoint::from_shared(mesh.url.clone())?
                .connect()
                .await?,
        );
    }
    let cpu_before = usage(mesh.coord.child.id()).0;
    let started = Instant::now();
    let latencies = fire(&channels, &tokens, callers, batches, 0).await?;
    let submitted = started.elapsed().as_secs_f64();
    let total = latencies.len() as u64;
    wait_sent(metrics, total).await?;
    let all_sent = started.elapsed().as_secs_f64();
    let (cpu_after, rss) = usage(mesh.coord.child.id());
    let node_rss = mesh
        .nodes
        .iter()
        .map(|n| usage(n.child.id()).1)
        .fold(0.0, f64::max);
    let run = Run {
        node_processes: mesh.nodes.len(),
        node_peak_rss_mib: node_rss,
        ..submit_run(
            latencies,
            submitted,
            setup.nodes.len(),
            cpu_after - cpu_before,
            rss,
        )
    };
    mesh.nodes.clear();
    Ok(Small {
        run,
        all_sent_seconds: all_sent,
    })
}

/// A durable run of one-message submits: their `latencies` (µs), the
/// `seconds` they took, the `nodes`, the coordinator's CPU seconds and peak
/// RSS over it. Each submit is one message, all of them sent.
pub(crate) fn submit_run(
    mut latencies: Vec<u64>,
    seconds: f64,
    nodes: usize,
    cpu_s: f64,
    rss_mib: f64,
) -> Run {
    latencies.sort_unstable();
    let pct = |p: f64| percentile_ms(&latencies, p);
    let total = latencies.len() as u64;
    Run {
        messages: total,
        nodes,
        node_processes: nodes,
        durable: true,
        seconds,
        msgs_per_sec: total as f64 / seconds,
        latency_p50_ms: pct(0.50),
        latency_p95_ms: pct(0.95),
        latency_p99_ms: pct(0.99),
        coordinator_cpu_s_per_million: cpu_s / (total as f64 / 1e6),
        coordinator_peak_rss_mib: rss_mib,
        sent: total,
        ..Run::default()
    }
}

/// The `p` percentile of sorted latencies in µs, in milliseconds.
pub(crate) fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    sorted_us
        .get(((sorted_us.len() as f64 * p) as usize).min(sorted_us.len().saturating_sub(1)))
        .map_or(0.0, |us| *us as f64 / 1000.0)
}

/// `callers` concurrent callers make `batches` calls in all, one after
/// another each: caller *c* makes `call(c, n)` for its share of message
/// numbers *n* (caller *c*'s block, from `offset`). Returns each call's
/// latency in µs.
pub(crate) async fn each_caller<F, Fut>(
    callers: usize,
    batches: u64,
    offset: u64,
    call: F,
) -> anyhow::Result<Vec<u64>>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let per_caller = batches / callers as u64;
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_caller as usize);
                for i in 0..per_caller {
                    let t = Instant::now();
                    call(c, offset + c as u64 * per_caller + i).await?;
                    latencies.push(t.elapsed().as_micros() as u64);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(latencies)
}

/// `callers` concurrent callers (spread over `channels`, caller *c* with
/// token *c* mod the tokens, if any) submit `batches` one-message batches in
/// all, one after another; message numbers start at `offset`. Returns each
/// SubmitBatch's latency in µs.
pub(crate) async fn fire(
    channels: &[tonic::transport::Channel],
    tokens: &[String],
    callers: usize,
    batches: u64,
    offset: u64,
) -> anyhow::Result<Vec<u64>> {
    let (channels, tokens) = (channels.to_vec(), tokens.to_vec());
    each_caller(callers, batches, offset, move |c, n| {
        let mut client =
            pb::coordinator_client::CoordinatorClient::new(channels[c % channels.len()].clone());
        let token = (!tokens.is_empty()).then(|| tokens[c % tokens.len()].clone());
        async move {
            let req = pb::SubmitBatchRequest {
                messages: vec![pb::SmsMessage {
                    to: format!("+1555{:07}", n % 10_000_000),
                    body: format!("Your code is {:06}", n % 1_000_000),
                    client_ref: String::new(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            client
                .submit_batch(mesh::request(req, token.as_deref())?)
                .await?;
            Ok(())
        }
    })
    .await
}

/// Waits until the coordinator's `/metrics` at `metrics` counts `total` sent messages.
pub(crate) async fn wait_sent(metrics: std::net::SocketAddr, total: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, text) = smsmesh::metrics::http_get(metrics, "/metrics").await?;
        let sent = text
            .lines()
            .find_map(|l| l.strip_prefix("smsmesh_messages_total{outcome=\"sent\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if sent >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {sent} of {total} messages were sent within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
