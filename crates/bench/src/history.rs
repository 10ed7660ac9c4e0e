//! Scenario (i): a long history. A durable coordinator is filled with
//! one-message batches (64 callers) to 1,000, then to `total`; at each
//! point, once every message is sent, it measures the coordinator's RSS, its
//! idle CPU, and the latency of one caller's submits. Then the coordinator
//! is killed with SIGKILL and started again on its store: the time until it
//! answers GetStatus of the oldest batch is the restart time.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use smsmesh::pb;

use crate::small::{fire, percentile_ms, wait_sent};
use crate::{Scenario, Setup, mesh, usage};

/// One-message submits of the latency probe, one after another.
const PROBE: u64 = 1000;

/// What was measured with some number of batches in the history.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Point {
    pub(crate) batches: u64,
    /// Resident memory now (`VmRSS`), MiB.
    pub(crate) rss_mib: f64,
    /// CPU used while idle (every message sent), in % of one core.
    pub(crate) idle_cpu_percent: f64,
    /// One caller's one-message submits, one after another.
    pub(crate) submit_p50_ms: f64,
    pub(crate) submit_p99_ms: f64,
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
pub(crate) struct History {
    pub(crate) points: Vec<Point>,
    /// From the restart's spawn to its first GetStatus answer.
    pub(crate) restart_seconds: f64,
    /// RSS once the restarted coordinator answers, MiB.
    pub(crate) restart_rss_mib: f64,
    /// RSS 5 s later, once what the load freed can have gone back, MiB.
    pub(crate) settled_rss_mib: f64,
}

/// Resident memory of a process now, MiB.
fn rss_now(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Idle CPU, latency and memory of the coordinator `pid` at `url` now.
async fn measure(pid: u32, url: &str, batches: u64) -> anyhow::Result<Point> {
    // What the last submits left to do (commits, the OS's writeback) settles first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = usage(pid).0;
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let idle = (usage(pid).0 - before) / window.as_secs_f64() * 100.0;
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await?;
    let mut latencies = fire(&[channel], &[], 1, PROBE, 9_000_000).await?;
    latencies.sort_unstable();
    Ok(Point {
        batches,
        rss_mib: rss_now(pid),
        idle_cpu_percent: idle,
        submit_p50_ms: percentile_ms(&latencies, 0.5),
        submit_p99_ms: percentile_ms(&latencies, 0.99),
    })
}

/// Runs the scenario up to `total` batches.
pub(crate) async fn run(bin: &Path, total: u64) -> anyhow::Result<History> {
    let setup = Setup::durable_four(total);
    let mut m = mesh::start(bin, &setup, &["--metrics-listen", "127.0.0.1:0"], None).await?;
    let metrics = m.metrics.context("metrics address")?;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            tonic::transport::Endpoint::from_shared(m.url.clone())?
                .connect()
                .await?,
        );
    }
    let first = m
        .client
        .submit_batch(pb::SubmitBatchRequest {
            messages: vec![pb::SmsMessage {
                to: "+15550000000".into(),
                body: "the oldest batch".into(),
                client_ref: String::new(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await?
        .into_inner()
        .batch_id;
    let pid = m.coord.child.id();
    let mut points = Vec::new();
    let mut filled = 1u64;
    let mut sent = 1u64;
    for target in [1_000, total] {
        let n = target.saturating_sub(filled);
        sent += fire(&channels, &[], 64, n, filled).await?.len() as u64;
        filled = target;
        wait_sent(metrics, sent).await?;
        points.push(measure(pid, &m.url, filled).await?);
        sent += PROBE; // the probe's batches
        wait_sent(metrics, sent).await?;
    }
    // SIGKILL, then the same store again on the same address.
    let (restart, _) = m.restart(bin, &first).await?;
    let restart = restart.as_secs_f64();
    let restart_rss = rss_now(m.coord.child.id());
    // A measuring window, as in `measure`: the allocator returns freed
    // memory to the OS after a delay.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled_rss = rss_now(m.coord.child.id());
    m.nodes.clear();
    Ok(History {
        points,
        restart_seconds: restart,
        restart_rss_mib: restart_rss,
        settled_rss_mib: settled_rss,
    })
}

/// Scenario (i) with `total` batches of history.
pub(crate) async fn scenario(bin: &Path, total: u64) -> anyhow::Result<Scenario> {
    let h = run(bin, total).await?;
    let (small, large) = (&h.points[0], &h.points[1]);
    let line = |p: &Point| {
        format!(
            "{} batches: RSS {:.0} MiB, idle CPU {:.1}%, submit p50 {:.1} ms p99 {:.1} ms",
            p.batches, p.rss_mib, p.idle_cpu_percent, p.submit_p50_ms, p.submit_p99_ms
        )
    };
    // "No worse" within the machine's noise: a millisecond, or a point of CPU.
    let met = large.rss_mib <= 1024.0
        && large.submit_p99_ms <= small.submit_p99_ms.max(1.0) * 1.5 + 1.0
        && large.idle_cpu_percent <= small.idle_cpu_percent + 1.0
        && h.restart_seconds <= 5.0
        && h.settled_rss_mib <= 1024.0;
    Ok(Scenario {
        id: "i".into(),
        title: format!("a history of {total} finished one-message batches, durable"),
        target: "with 1,000,000: RSS ≤ 1 GiB (running, and settled after a restart); submit latency and idle CPU no worse than with 1,000; restart to serving ≤ 5 s".into(),
        result: format!(
            "{}; {}; restart after SIGKILL answered in {:.1} s (RSS then {:.0} MiB, 5 s later {:.0} MiB)",
            line(small),
            line(large),
            h.restart_seconds,
            h.restart_rss_mib,
            h.settled_rss_mib
        ),
        met,
        runs: Vec::new(),
        uploads: Vec::new(),
        history: Some(h),
        smpp: Vec::new(),
        priority: None,
        failover: None,
        callbacks: None,
        machine: None,
    })
}
