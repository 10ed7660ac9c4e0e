//! Scenario (n): the HTTP provider gateway. One `smsnode` sends a
//! synthetic batch through `--gateway http://…` to a provider stub served
//! by this process (an HTTP/1.1 server answering each send at once, with an
//! id): what one node's HTTP gateway sends a second, keep-alive included.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{Run, Scenario, median, mesh, usage};

/// Serves the provider stub on a free port; returns its address and its request count.
async fn stub() -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicU64>)> {
    let count = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counted = count.clone();
    let app = axum::Router::new().fallback(move || {
        let n = counted.fetch_add(1, Ordering::Relaxed);
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                format!(r#"{{"id":"p-{n}"}}"#),
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, count))
}

/// One run: `messages` through one node of `concurrency` to the stub.
async fn run(bin: &Path, messages: u64, concurrency: u32) -> anyhow::Result<Run> {
    let (provider, count) = stub().await?;
    let gateway = format!("http://{provider}/send");
    let concurrency = concurrency.to_string();
    let (mut m, nodes) =
        mesh::with_gateway(bin, &gateway, "http", (1, 0), concurrency.parse()?).await?;
    let pid = m.coord.child.id();
    let node = &nodes[0];
    let node_cpu = usage(node.child.id()).0;
    let started = Instant::now();
    let batch =
        smsmesh_testkit::submit(&mut m.client, smsmesh_testkit::synthetic(messages, 7)).await;
    let mut seen = Vec::new();
    loop {
        let s = smsmesh_testkit::batch_status(&mut m.client, &batch).await?;
        seen.push((Instant::now(), s.sent, 0));
        if s.sent + s.failed >= messages {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not sent within 600 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (node_cpu_after, node_rss) = usage(node.child.id());
    let steady = crate::smpp::rate(&seen, messages, |s| s.1);
    let sent = seen.last().map_or(0, |s| s.1);
    anyhow::ensure!(
        count.load(Ordering::Relaxed) >= sent,
        "the stub saw fewer requests than were sent"
    );
    Ok(Run {
        messages,
        nodes: 1,
        node_processes: 1,
        durable: true,
        seconds,
        msgs_per_sec: messages as f64 / seconds,
        steady_msgs_per_sec: steady,
        coordinator_peak_rss_mib: usage(pid).1,
        node_peak_rss_mib: node_rss,
        // Here: the node's CPU seconds per million sends.
        coordinator_cpu_s_per_million: (node_cpu_after - node_cpu) / (messages as f64 / 1e6),
        sent,
        store: "http".into(),
        ..Run::default()
    })
}

/// Scenario (n): `repeat` runs of `messages`.
pub(crate) async fn scenario(bin: &Path, messages: u64, repeat: u32) -> anyhow::Result<Scenario> {
    let mut runs = Vec::new();
    for _ in 0..repeat.max(1) {
        runs.push(run(bin, messages, 256).await?);
    }
    let steady: Vec<f64> = runs.iter().map(|r| r.steady_msgs_per_sec).collect();
    let m = median(&steady);
    let (lo, hi) = (
        steady.iter().copied().fold(f64::INFINITY, f64::min),
        steady.iter().copied().fold(0.0, f64::max),
    );
    Ok(Scenario {
        id: "n".into(),
        title: format!(
            "HTTP provider gateway: one node of concurrency 256, {messages} messages, to a keep-alive stub, durable"
        ),
        target: "≥ 20,000 sends/s per node".into(),
        result: format!(
            "median {m:.0} sends/s steady ({lo:.0}–{hi:.0}, {} runs); node {:.1} CPU s per M, peak RSS {:.0} MiB",
            runs.len(),
            median(
                &runs
                    .iter()
                    .map(|r| r.coordinator_cpu_s_per_million)
                    .collect::<Vec<_>>()
            ),
            runs.iter().map(|r| r.node_peak_rss_mib).fold(0.0, f64::max),
        ),
        met: m >= 20_000.0,
        runs,
        ..Scenario::default()
    })
}
