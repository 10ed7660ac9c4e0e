//! Scenario (j): real delivery over SMPP, all as release processes on this
//! machine: `smsmesh-smsc` (the test SMSC, zero delay, a receipt for every
//! segment), a durable `smscoord`, and `smsnode` processes bound to the SMSC
//! (one transceiver bind each, window 64, concurrency 128). The SMSC and each node run on one
//! runtime thread: they share the 2 cores, and a process's second thread
//! would only hand its work back and forth. Four runs:
//! - one node: submit_sm a second, and receipts matched a second;
//! - four nodes: segments a second, receipts matched a second, and the
//!   coordinator's peak RSS once every receipt is matched;
//! - one node limited to R segments a second: the rate measured between 10%
//!   and 90% of the batch, against R;
//! - four nodes again, the SMSC keeping every receipt until the last message
//!   is accepted and then sending them all (`--receipts-after`): receipts
//!   matched a second on their own, and the coordinator's peak RSS; then
//!   the coordinator is killed with SIGKILL and started again on that store
//!   (up to a million decided deliveries in it): the time until it answers,
//!   its peak RSS, and the time until every message is counted delivered
//!   again (receipts whose decisions were not committed come again).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use smsmesh::pb;
use smsmesh_testkit::{Proc, stdout_addrs};

use crate::{Scenario, mesh, usage};

/// Each node's `--concurrency` (`SMSMESH_BENCH_SMPP_CONCURRENCY` to change
/// it): two windows of 64, one in flight and one ready. 256 sent 3–5% less
/// (more sends parked on the window), 80 about as much as 256.
const NODE_CONCURRENCY: u32 = 128;

/// Runtime threads of each node and of the SMSC (`--worker-threads`).
const NODE_THREADS: usize = 1;

/// What one SMPP run measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct SmppRun {
    pub(crate) nodes: usize,
    pub(crate) messages: u64,
    /// The per-connector limit (0: none).
    pub(crate) rate_limit: u32,
    /// Whether the SMSC kept every receipt until the last message was accepted.
    pub(crate) receipts_backlog: bool,
    /// Messages (one segment each) sent a second, 10% to 90% of the batch.
    pub(crate) sent_per_sec: f64,
    /// Receipts matched a second, from the first receipt counted to the last.
    pub(crate) receipts_per_sec: f64,
    /// From the submit until every message was delivered.
    pub(crate) all_delivered_seconds: f64,
    pub(crate) coordinator_peak_rss_mib: f64,
    /// CPU seconds (user + system) per million messages, from the submit to
    /// the last receipt: all nodes together, the coordinator, the test SMSC.
    pub(crate) node_cpu_s_per_million: f64,
    pub(crate) coordinator_cpu_s_per_million: f64,
    pub(crate) smsc_cpu_s_per_million: f64,
    /// The backlog run only (else 0): the coordinator killed with SIGKILL
    /// once every receipt was matched and started again on its store, until
    /// it answered GetStatus.
    pub(crate) restart_seconds: f64,
    /// The restarted coordinator's peak RSS (`VmHWM`) by then, MiB.
    pub(crate) restart_peak_rss_mib: f64,
    /// From the SIGKILL until every message counted delivered again (the
    /// receipts whose decisions were not yet committed come again).
    pub(crate) recounted_seconds: f64,
}

/// Polls the batch until `done` holds, recording (time, sent, delivered).
pub(crate) async fn follow(
    client: &mut pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    batch: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<(Instant, u64, u64)>> {
    let end = Instant::now() + deadline;
    let mut seen = Vec::new();
    loop {
        let s = smsmesh_testkit::batch_status(client, batch).await?;
        seen.push((Instant::now(), s.sent, s.delivered));
        if s.delivered + s.undelivered + s.delivery_unknown >= s.total && s.sent == s.total {
            return Ok(seen);
        }
        if Instant::now() > end {
            bail!("batch {batch} not delivered within {deadline:?}: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The rate at which `f` of the samples grew between 10% and 90% of `total`.
pub(crate) fn rate(
    seen: &[(Instant, u64, u64)],
    total: u64,
    f: fn(&(Instant, u64, u64)) -> u64,
) -> f64 {
    let at = |share: f64| {
        let want = (total as f64 * share) as u64;
        seen.iter().find(|s| f(s) >= want).copied()
    };
    match (at(0.1), at(0.9)) {
        (Some(a), Some(b)) if b.0 > a.0 => (f(&b) - f(&a)) as f64 / (b.0 - a.0).as_secs_f64(),
        _ => 0.0,
    }
}

/// One run: `nodes` SMPP nodes, a synthetic batch of `messages`; with
/// `backlog`, the SMSC sends every receipt once the last message is accepted.
async fn run(
    bin: &Path,
    nodes: usize,
    messages: u64,
    rate_limit: u32,
    backlog: bool,
) -> anyhow::Result<SmppRun> {
    let receipts_after = if backlog { messages } else { 0 };
    let mut smsc = Proc {
        child: Command::new(bin.join("smsmesh-smsc"))
            .args(["--listen", "127.0.0.1:0"])
            .args(["--receipts-after", &receipts_after.to_string()])
            .args(["--worker-threads", &NODE_THREADS.to_string()])
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()?,
    };
    let smsc_addr = stdout_addrs(&mut smsc.child, &["smsmesh-smsc listening on "])?[0];
    let extra = std::env::var("SMSMESH_BENCH_SMPP_QUERY").unwrap_or_default();
    let gateway = format!("smpp://bench:secret@{smsc_addr}?window=64&rate={rate_limit}{extra}");
    let concurrency = std::env::var("SMSMESH_BENCH_SMPP_CONCURRENCY")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(NODE_CONCURRENCY);
    let (mut m, node_procs) =
        mesh::with_gateway(bin, &gateway, "smpp", (nodes, NODE_THREADS), concurrency).await?;
    let pid = m.coord.child.id();
    let node_pids: Vec<u32> = node_procs.iter().map(|n| n.child.id()).collect();
    let smsc_pid = smsc.child.id();
    let cpu = |pids: &[u32]| pids.iter().map(|p| usage(*p).0).sum::<f64>();
    let before = [cpu(&node_pids), cpu(&[pid]), cpu(&[smsc_pid])];
    let started = Instant::now();
    let batch =
        smsmesh_testkit::submit(&mut m.client, smsmesh_testkit::synthetic(messages, 7)).await;
    let seen = follow(&mut m.client, &batch, Duration::from_secs(600)).await?;
    let done = seen.last().map_or(started, |s| s.0);
    let after = [cpu(&node_pids), cpu(&[pid]), cpu(&[smsc_pid])];
    let per_million = |i: usize| (after[i] - before[i]) / (messages as f64 / 1e6);
    let coordinator_peak_rss_mib = usage(pid).1;
    let (mut restart_seconds, mut restart_peak_rss_mib, mut recounted_seconds) = (0.0, 0.0, 0.0);
    if backlog {
        // SIGKILL at once: decisions not yet committed are lost with it, and
        // their receipts, unanswered to the SMSC, must come again.
        let killed = Instant::now();
        let (took, _) = m.restart(bin, &batch).await?;
        restart_seconds = took.as_secs_f64();
        restart_peak_rss_mib = usage(m.coord.child.id()).1;
        follow(&mut m.client, &batch, Duration::from_secs(120)).await?;
        recounted_seconds = killed.elapsed().as_secs_f64();
        let status = smsmesh_testkit::batch_status(&mut m.client, &batch).await?;
        if status.delivered != messages {
            bail!(
                "after a restart, {} of {messages} delivered: {status:?}",
                status.delivered
            );
        }
    }
    Ok(SmppRun {
        nodes,
        messages,
        rate_limit,
        receipts_backlog: backlog,
        sent_per_sec: rate(&seen, messages, |s| s.1),
        receipts_per_sec: rate(&seen, messages, |s| s.2),
        all_delivered_seconds: (done - started).as_secs_f64(),
        coordinator_peak_rss_mib,
        node_cpu_s_per_million: per_million(0),
        coordinator_cpu_s_per_million: per_million(1),
        smsc_cpu_s_per_million: per_million(2),
        restart_seconds,
        restart_peak_rss_mib,
        recounted_seconds,
    })
}

/// Scenario (j): the three runs, with `n` messages for the unlimited ones.
pub(crate) async fn scenario(bin: &Path, n: u64) -> anyhow::Result<Scenario> {
    if !bin.join("smsmesh-smsc").exists() {
        bail!(
            "smsmesh-smsc not found next to smsmesh-bench: build with `cargo build --release --workspace --bins`"
        );
    }
    let four = run(bin, 4, n, 0, false).await?;
    let one = run(bin, 1, n, 0, false).await?;
    let limit = 2_000;
    let limited = run(bin, 1, u64::from(limit) * 30, limit, false).await?;
    let backlog = run(bin, 4, n, 0, true).await?;
    let off = (limited.sent_per_sec - f64::from(limit)).abs() / f64::from(limit) * 100.0;
    let result = format!(
        "1 node: {:.0} submit_sm/s, receipts matched {:.0}/s; 4 nodes: {:.0} segments/s, receipts matched {:.0}/s, {} delivered after {:.1} s, coordinator peak RSS {:.0} MiB, CPU s per M messages: nodes {:.1}, coordinator {:.1}, SMSC {:.1}; limit {limit}/s held at {:.0}/s ({off:.1}% off) over {:.0} s; a backlog of {} receipts matched at {:.0}/s, coordinator peak RSS {:.0} MiB; killed with SIGKILL then, restarted on its store answering in {:.2} s (peak RSS {:.0} MiB), every message counted delivered again {:.1} s after the kill",
        one.sent_per_sec,
        one.receipts_per_sec,
        four.sent_per_sec,
        four.receipts_per_sec,
        four.messages,
        four.all_delivered_seconds,
        four.coordinator_peak_rss_mib,
        four.node_cpu_s_per_million,
        four.coordinator_cpu_s_per_million,
        four.smsc_cpu_s_per_million,
        limited.sent_per_sec,
        limited.all_delivered_seconds,
        backlog.messages,
        backlog.receipts_per_sec,
        backlog.coordinator_peak_rss_mib,
        backlog.restart_seconds,
        backlog.restart_peak_rss_mib,
        backlog.recounted_seconds,
    );
    Ok(Scenario {
        id: "j".into(),
        title: format!("SMPP to the test SMSC at zero delay, durable, one-segment messages ({n} per unlimited run), nodes and SMSC of {NODE_THREADS} runtime thread"),
        target: "1 node ≥ 50,000 submit_sm/s; 4 nodes ≥ 150,000 segments/s; a limit held within 2% over 30 s; receipts matched ≥ 100,000/s with coordinator RSS ≤ 512 MiB (for 1,000,000; as sent and as a backlog)".into(),
        met: one.sent_per_sec >= 50_000.0
            && four.sent_per_sec >= 150_000.0
            && off <= 2.0
            && four.receipts_per_sec >= 100_000.0
            && four.coordinator_peak_rss_mib <= 512.0
            && backlog.receipts_per_sec >= 100_000.0
            && backlog.coordinator_peak_rss_mib <= 512.0,
        result,
        runs: Vec::new(),
        uploads: Vec::new(),
        history: None,
        smpp: vec![one, four, limited, backlog],
        priority: None,
        failover: None,
        callbacks: None,
        machine: None,
    })
}
