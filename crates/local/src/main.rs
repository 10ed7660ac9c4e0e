//! `smsmesh-local`: the whole mesh on one machine. Starts an embedded
//! coordinator and local nodes, submits one synthetic batch, shows the live
//! monitor, and prints a summary when the batch ends.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use clap::Parser;
use smsmesh::pb;
use smsmesh_monitor::{Display, human, watch};
use smsmesh_testkit::{CoordinatorConfig, Mesh, NodeSpec, synthetic};

/// Runs a coordinator, N nodes and one synthetic batch on this machine, with
/// the live monitor and a summary at the end.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Messages in the batch.
    #[arg(long, short = 'n', default_value_t = 200_000)]
    messages: u64,
    /// Number of sender nodes.
    #[arg(long, default_value_t = 4)]
    nodes: u32,
    /// Concurrency of each node.
    #[arg(long, default_value_t = 1000)]
    concurrency: u32,
    /// Mean latency of the simulated gateway.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    mean_latency: Duration,
    /// Probability that an attempt fails (failed attempts are retried).
    #[arg(long, default_value_t = 0.02)]
    failure_rate: f64,
    /// Attempts per message.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Where the coordinator listens (grpcurl and smsmon can reach it there meanwhile).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Store directory of the coordinator. Default: a fresh temporary directory,
    /// removed at the end.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Keep the coordinator's state in memory only (no store).
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    plain: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = smsmesh::telemetry::init("smsmesh-local", "warn", None);
    if !(0.0..=1.0).contains(&args.failure_rate) {
        anyhow::bail!("--failure-rate must be between 0 and 1");
    }
    let temp = tempfile::tempdir()?;
    let data_dir = match (&args.data_dir, args.in_memory) {
        (_, true) => None,
        (Some(d), false) => Some(d.clone()),
        (None, false) => Some(temp.path().to_path_buf()),
    };
    let store = data_dir.as_ref().map_or("in memory".to_string(), |d| {
        format!("store in {}", d.display())
    });
    let config = CoordinatorConfig {
        data_dir,
        ..CoordinatorConfig::default()
    };
    let mesh = Mesh::start_on(args.listen, config).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot start the coordinator on {}: {e} (try --listen 127.0.0.1:0)",
            args.listen
        )
    })?;
    println!(
        "coordinator on {} ({store}) with {} nodes (concurrency {}, mean latency {:?}, failure rate {})",
        mesh.url(),
        args.nodes,
        args.concurrency,
        args.mean_latency,
        args.failure_rate
    );
    // The prefetch smsnode has by default.
    let (prefetch, prefetch_max) = smsmesh_node::default_prefetch(args.concurrency);
    let nodes: Vec<_> = (0..args.nodes)
        .map(|i| {
            mesh.node(
                NodeSpec::new(&format!("node-{}", i + 1))
                    .concurrency(args.concurrency)
                    .prefetch(prefetch)
                    .prefetch_max(prefetch_max)
                    .latency(args.mean_latency)
                    .failure_rate(args.failure_rate),
            )
        })
        .collect();

    let mut client = mesh.client().await?;
    let mut req = synthetic(args.messages, rand_seed());
    req.max_attempts = Some(args.max_attempts);
    let start = Instant::now();
    let resp = client
        .submit_batch(req)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!(
        "batch {} accepted: {} messages",
        resp.batch_id, resp.accepted
    );

    let mut display = Display::new(args.plain);
    let last = watch(
        &smsmesh_monitor::Target::plain(&mesh.url()),
        Some(&resp.batch_id),
        Duration::from_millis(250),
        &mut display,
    )
    .await?;
    let wall = start.elapsed();
    let b = last.ok_or_else(|| anyhow::anyhow!("no progress received"))?;
    summary(&b, wall, &nodes);
    for n in nodes {
        n.stop(Duration::from_secs(10)).await?;
    }
    mesh.stop().await?;
    Ok(())
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn summary(b: &pb::BatchStatus, wall: Duration, nodes: &[smsmesh_testkit::Node]) {
    let lat = b.latency.unwrap_or_default();
    let secs = wall.as_secs_f64();
    println!();
    println!("== summary ==");
    println!(
        "batch        {} ({})",
        b.batch_id,
        smsmesh_monitor::state_name(b.state)
    );
    println!(
        "messages     {} total: {} sent, {} failed, {} cancelled",
        b.total, b.sent, b.failed, b.cancelled
    );
    println!(
        "accounted    {}",
        if b.sent + b.failed + b.cancelled == b.total {
            "every message has exactly one outcome"
        } else {
            "MISMATCH"
        }
    );
    println!(
        "retries      {} retried attempts, {} requeued from lost nodes",
        b.retried, b.requeued
    );
    println!(
        "time         {:.2} s wall, {}/s",
        secs,
        human(b.total as f64 / secs)
    );
    println!(
        "latency      mean {:.2} ms, p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms (send time: gateway and node delay)",
        lat.mean_ms, lat.p50_ms, lat.p95_ms, lat.p99_ms
    );
    for n in &b.nodes {
        let pct = n.sent as f64 * 100.0 / b.sent.max(1) as f64;
        println!(
            "  {:<10} sent {:>10} ({pct:5.1}%), failed attempts {:>8}",
            n.node, n.sent, n.failed_attempts
        );
    }
    let over: u64 = nodes
        .iter()
        .map(|n| n.stats.over_credit.load(Relaxed))
        .sum();
    println!("flow control jobs beyond granted credit: {over}");
}
