//! One synthetic batch through a fresh mesh, measured: the processes'
//! CPU and memory from /proc, and the median the scenarios' verdicts use.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use smsmesh::pb::{self, BatchState};

use crate::{Run, Setup, mesh};

/// The median of `v` (the mean of the middle two for an even count).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// CPU seconds (user + system) and peak RSS (MiB) of a process, from /proc.
pub(crate) fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0; // USER_HZ is 100 on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm_kib / 1024.0)
}

pub(crate) async fn run(bin: &Path, setup: &Setup) -> anyhow::Result<Run> {
    run_on(bin, setup, &[]).await
}

/// [`run`], with `coord_args` for the coordinator (`--database-url URL`: its store).
pub(crate) async fn run_on(bin: &Path, setup: &Setup, coord_args: &[&str]) -> anyhow::Result<Run> {
    let mesh::Started {
        coord,
        nodes,
        mut client,
        ..
    } = mesh::start(bin, setup, coord_args, None).await?;
    let cpu_before = usage(coord.child.id()).0;
    let started = Instant::now();
    let req = pb::SubmitBatchRequest {
        synthetic: Some(pb::SyntheticBatch {
            count: setup.messages,
            body: None,
            seed: Some(1),
        }),
        ..Default::default()
    };
    let id = client.submit_batch(req).await?.into_inner().batch_id;
    let mut stream = client
        .watch_progress(pb::WatchProgressRequest {
            batch_id: id.clone(),
            interval_ms: 100,
        })
        .await?
        .into_inner();
    let mut last: Option<pb::BatchStatus> = None;
    // (time, finished) when the batch passed 10% and 90%.
    let (mut p10, mut p90) = (None, None);
    while let Some(u) = stream.message().await? {
        if let Some(b) = u.batches.into_iter().next() {
            let done = b.sent + b.failed;
            // The snapshot's own clock: its counts and elapsed time were taken together.
            if p10.is_none() && done * 10 >= b.total {
                p10 = Some((b.elapsed_seconds, done));
            }
            if done * 10 <= b.total * 9 {
                p90 = Some((b.elapsed_seconds, done));
            }
            last = Some(b);
        }
    }
    let steady = match (p10, p90) {
        (Some((t1, d1)), Some((t2, d2))) if t2 > t1 + 0.5 => (d2 - d1) as f64 / (t2 - t1),
        _ => 0.0,
    };
    let wall = started.elapsed().as_secs_f64();
    let b = last.context("no progress")?;
    if b.state != BatchState::Completed as i32 {
        bail!("batch ended as {:?}", b.state);
    }
    let (cpu_after, coord_rss) = usage(coord.child.id());
    let node_rss = nodes
        .iter()
        .map(|n| usage(n.child.id()).1)
        .fold(0.0, f64::max);
    let lat = b.latency.unwrap_or_default();
    let mut per_node: Vec<(String, f64, f64)> = b
        .nodes
        .iter()
        .map(|n| {
            (
                n.node.clone(),
                n.sent as f64 / b.sent.max(1) as f64,
                n.latency.unwrap_or_default().mean_ms,
            )
        })
        .collect();
    per_node.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(Run {
        messages: setup.messages,
        nodes: setup.nodes.len(),
        node_processes: nodes.len(),
        durable: setup.durable,
        seconds: wall,
        msgs_per_sec: setup.messages as f64 / wall,
        latency_p50_ms: lat.p50_ms,
        latency_p95_ms: lat.p95_ms,
        latency_p99_ms: lat.p99_ms,
        coordinator_cpu_s_per_million: (cpu_after - cpu_before) / (setup.messages as f64 / 1e6),
        coordinator_peak_rss_mib: coord_rss,
        node_peak_rss_mib: node_rss,
        sent: b.sent,
        failed: b.failed,
        shares: per_node.iter().map(|(_, s, _)| *s).collect(),
        node_latency_ms: per_node.iter().map(|(_, _, l)| *l).collect(),
        steady_msgs_per_sec: steady,
        store: if coord_args.contains(&"--database-url") {
            "postgres".into()
        } else {
            String::new()
        },
    })
}
