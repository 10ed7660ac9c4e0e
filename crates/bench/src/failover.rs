//! Scenario (l): the coordinator on PostgreSQL. Its durable throughput
//! against the embedded store's, run by run and interleaved; then a
//! 1,000,000-message batch whose leader is killed with SIGKILL a third of the
//! way through: how soon the standby serves, and whether the batch completes
//! with nothing lost. Then two restarts: on a list of 14 times as many
//! recipients, uploaded without nodes, and on a history of a fifth as many
//! finished one-message batches; for each, how soon the coordinator answers
//! and its peak RSS (the load reads it all back). Needs a PostgreSQL server
//! (`SMSMESH_TEST_POSTGRES`; `.ci/postgres DIR PORT` starts one): each run
//! gets a fresh database.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use smsmesh::pb::{self, BatchState};
use smsmesh_testkit::{Proc, database, leads, postgres_url, stdout_addrs};

use crate::{Run, Scenario, Setup, median, run_on};

/// What scenario (l) measured besides throughput.
#[derive(Debug, Serialize)]
pub(crate) struct Standby {
    /// The leader lost by SIGKILL, then by a cut.
    runs: Vec<Failover>,
    /// A restart on a stored list.
    reload: Reload,
    /// A restart on a history of finished one-message batches.
    history: Reload,
}

/// A coordinator on PostgreSQL stopped and started again on what it
/// stored: a list batch, or a history of finished batches.
#[derive(Debug, Serialize)]
pub(crate) struct Reload {
    /// Recipients of the list, or batches of the history.
    count: u64,
    /// From the first submit to the answer to the last.
    uploaded_s: f64,
    /// From the restart's spawn until it answers GetStatus of the batch.
    restart_seconds: f64,
    /// Its peak RSS by then (`VmHWM`), MiB.
    restart_peak_rss_mib: f64,
}

/// What a failover run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Failover {
    /// How the leader was lost: "kill" (SIGKILL) or "cut" (its database
    /// connections frozen, as by a network partition).
    how: String,
    messages: u64,
    /// With a cut: from the cut to the leader's exit (it steps down).
    stepped_down_after_s: f64,
    /// Messages sent when the leader was killed.
    sent_at_kill: u64,
    /// From the kill (or cut) to the standby's health saying SERVING.
    serving_after_s: f64,
    /// From the kill to the batch's count moving on the new leader.
    sending_again_after_s: f64,
    /// From the submit to the batch's end, kill included.
    seconds: f64,
    sent: u64,
    failed: u64,
    /// Accepted messages without a final outcome at the end (must be 0).
    lost: u64,
    /// Messages dispatched again after the takeover (they may have gone out before).
    resent: u64,
    /// Results for messages that already had a final outcome (not counted twice).
    duplicates: u64,
}

pub(crate) async fn scenario(bin: &Path, messages: u64, repeat: u32) -> anyhow::Result<Scenario> {
    if postgres_url().is_none() {
        bail!(
            "scenario (l) needs a PostgreSQL server: SMSMESH_TEST_POSTGRES=postgres://USER@HOST:PORT/DB (.ci/postgres DIR PORT starts one)"
        );
    }
    let setup = Setup::durable_four(messages);
    let mut runs: Vec<Run> = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..repeat {
        let embedded = run_on(bin, &setup, &[]).await?;
        let url = database("bench").await.context("no PostgreSQL")?;
        let pg = run_on(bin, &setup, &["--database-url", &url]).await?;
        ratios.push(pg.msgs_per_sec / embedded.msgs_per_sec);
        runs.push(embedded);
        runs.push(pg);
    }
    let rates = |store: &str| {
        runs.iter()
            .filter(|r| r.store == store)
            .map(|r| format!("{:.0}", r.msgs_per_sec))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let runs_lost = [
        failover(bin, messages, false).await?,
        failover(bin, messages, true).await?,
    ];
    let reload = reload(bin, 14 * messages).await?;
    let history = reload_history(bin, messages / 5).await?;
    let ratio = median(&ratios);
    let met = ratio >= 0.30
        && runs_lost
            .iter()
            .all(|f| f.serving_after_s <= 10.0 && f.lost == 0);
    let line = |f: &Failover| {
        let stepped = if f.how == "cut" {
            format!(
                "the leader stepped down {:.1} s after the cut, ",
                f.stepped_down_after_s
            )
        } else {
            String::new()
        };
        format!(
            "{}: {stepped}standby serving {:.1} s after, sending again after {:.1} s, batch done in {:.1} s, sent {} failed {} lost {} resent {} duplicates {}",
            f.how,
            f.serving_after_s,
            f.sending_again_after_s,
            f.seconds,
            f.sent,
            f.failed,
            f.lost,
            f.resent,
            f.duplicates
        )
    };
    Ok(Scenario {
        id: "l".into(),
        title: format!("{messages} messages, 4 nodes, on PostgreSQL: throughput, and a standby taking over"),
        target: "PostgreSQL ≥ 30% of the embedded store's msg/s (median of interleaved pairs); after SIGKILL of the leader mid-batch the standby serves within 10 s and the batch completes, lost 0".into(),
        result: format!(
            "PostgreSQL at median {:.0}% of embedded ({}) — embedded msg/s {}, PostgreSQL msg/s {}; failover by {}; by {}; a list of {} uploaded in {:.1} s, then a restart on it answering in {:.1} s (peak RSS {:.0} MiB); {} one-message batches submitted and sent in {:.1} s, then a restart on them answering in {:.1} s (peak RSS {:.0} MiB)",
            100.0 * ratio,
            ratios.iter().map(|r| format!("{:.0}%", 100.0 * r)).collect::<Vec<_>>().join(", "),
            rates(""),
            rates("postgres"),
            line(&runs_lost[0]),
            line(&runs_lost[1]),
            reload.count,
            reload.uploaded_s,
            reload.restart_seconds,
            reload.restart_peak_rss_mib,
            history.count,
            history.uploaded_s,
            history.restart_seconds,
            history.restart_peak_rss_mib,
        ),
        met,
        runs,
        uploads: Vec::new(),
        history: None,
        smpp: Vec::new(),
        priority: None,
        failover: Some(Standby {
            runs: runs_lost.into(),
            reload,
            history,
        }),
        callbacks: None,
        machine: None,
    })
}

/// A coordinator process on `url`, with its address.
fn coordinator(bin: &Path, url: &str) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut proc = Proc {
        child: Command::new(bin.join("smscoord"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--plaintext",
                "--insecure-no-auth",
            ])
            .args(["--database-url", url])
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()?,
    };
    let addr = stdout_addrs(&mut proc.child, &["smscoord listening on "])?[0];
    Ok((proc, addr))
}

async fn status(addr: SocketAddr, id: &str) -> Option<pb::BatchStatus> {
    let mut c = pb::coordinator_client::CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    let r = c
        .get_status(pb::GetStatusRequest {
            target: Some(pb::get_status_request::Target::BatchId(id.to_string())),
        })
        .await
        .ok()?
        .into_inner();
    match r.status? {
        pb::get_status_response::Status::Batch(b) => Some(b),
        _ => None,
    }
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A batch whose leader is lost a third of the way: killed, or (`cut`) cut
/// off from the database by a proxy that stops forwarding.
async fn failover(bin: &Path, messages: u64, cut: bool) -> anyhow::Result<Failover> {
    let url = database("failover").await.context("no PostgreSQL")?;
    // With a cut, the leader reaches the database through a proxy.
    let (base, db) = url.rsplit_once('/').context("a database URL")?;
    let (user, server) = base.rsplit_once('@').context("a URL with a user")?;
    let proxy = smsmesh_testkit::Proxy::start(server.parse()?).await?;
    let leader_url = if cut {
        format!("{user}@{}/{db}", proxy.addr)
    } else {
        url.clone()
    };
    let (mut a, a_addr) = coordinator(bin, &leader_url)?;
    until(
        Duration::from_secs(60),
        "the first coordinator leads",
        || async { leads(a_addr).await.then_some(()) },
    )
    .await?;
    let (_b, b_addr) = coordinator(bin, &url)?;
    let urls = format!("http://{a_addr},http://{b_addr}");
    let _nodes: Vec<Proc> = (0..4)
        .map(|i| {
            Command::new(bin.join("smsnode"))
                .args(["--coordinator", &urls, "--name", &format!("node-{i}")])
                .args(["--concurrency", "1000", "--mean-latency", "1ms"])
                .env("RUST_LOG", "error")
                .spawn()
                .map(|child| Proc { child })
        })
        .collect::<Result<_, _>>()?;
    let mut client =
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{a_addr}")).await?;
    let started = Instant::now();
    let id = client
        .submit_batch(pb::SubmitBatchRequest {
            synthetic: Some(pb::SyntheticBatch {
                count: messages,
                body: None,
                seed: Some(3),
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .batch_id;
    let third = messages / 3;
    let at_kill = until(Duration::from_secs(300), "a third sent", || async {
        status(a_addr, &id).await.filter(|b| b.sent >= third)
    })
    .await?;
    let killed = Instant::now();
    let mut stepped_down = Duration::ZERO;
    if cut {
        proxy.freeze();
        a.wait(Duration::from_secs(30)).await?;
        stepped_down = killed.elapsed();
    } else {
        a.kill9();
    }
    until(Duration::from_secs(60), "the standby serves", || async {
        leads(b_addr).await.then_some(())
    })
    .await?;
    let serving_after = killed.elapsed();
    until(Duration::from_secs(60), "sending again", || async {
        status(b_addr, &id)
            .await
            .filter(|b| b.sent + b.failed > at_kill.sent + at_kill.failed)
    })
    .await?;
    let sending_again = killed.elapsed();
    let end = until(Duration::from_secs(600), "the batch ends", || async {
        status(b_addr, &id)
            .await
            .filter(|b| b.state != BatchState::Running as i32)
    })
    .await?;
    Ok(Failover {
        how: if cut { "cut" } else { "kill" }.into(),
        messages,
        stepped_down_after_s: stepped_down.as_secs_f64(),
        sent_at_kill: at_kill.sent,
        serving_after_s: serving_after.as_secs_f64(),
        sending_again_after_s: sending_again.as_secs_f64(),
        seconds: started.elapsed().as_secs_f64(),
        sent: end.sent,
        failed: end.failed,
        lost: messages.saturating_sub(end.sent + end.failed),
        resent: end.resent,
        duplicates: end.duplicates,
    })
}

/// A list of `n` recipients uploaded to a coordinator on PostgreSQL without
/// nodes (so the batch stays whole in the store), the coordinator stopped,
/// then started again on it: how soon it answers, and its peak RSS by then.
async fn reload(bin: &Path, n: u64) -> anyhow::Result<Reload> {
    let url = database("reload").await.context("no PostgreSQL")?;
    let (mut first, addr) = coordinator(bin, &url)?;
    until(Duration::from_secs(60), "the coordinator leads", || async {
        leads(addr).await.then_some(())
    })
    .await?;
    let mut client =
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{addr}")).await?;
    let started = Instant::now();
    let r = client
        .submit_batch_stream(tokio_stream::iter(crate::upload::parts(n)))
        .await?
        .into_inner();
    let uploaded = started.elapsed().as_secs_f64();
    if r.accepted != n {
        bail!("accepted {} of {n}", r.accepted);
    }
    let (restart_seconds, restart_peak_rss_mib) =
        stop_and_restart(bin, &url, &mut first, &r.batch_id).await?;
    Ok(Reload {
        count: n,
        uploaded_s: uploaded,
        restart_seconds,
        restart_peak_rss_mib,
    })
}

/// `n` one-message batches from 64 callers to a coordinator on PostgreSQL
/// with 4 nodes, each sent; then the coordinator stopped and started again
/// on them: how soon it answers GetStatus of the first, and its peak RSS.
async fn reload_history(bin: &Path, n: u64) -> anyhow::Result<Reload> {
    let url = database("history").await.context("no PostgreSQL")?;
    let setup = Setup::durable_four(n);
    let args = ["--database-url", &url, "--metrics-listen", "127.0.0.1:0"];
    let mut m = crate::mesh::start(bin, &setup, &args, None).await?;
    let metrics = m.metrics.context("metrics address")?;
    let channel = tonic::transport::Endpoint::from_shared(m.url.clone())?
        .connect()
        .await?;
    let started = Instant::now();
    let first = m
        .client
        .submit_batch(pb::SubmitBatchRequest {
            synthetic: Some(pb::SyntheticBatch {
                count: 1,
                body: None,
                seed: Some(1),
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .batch_id;
    let sent = 1 + crate::small::fire(&[channel], &[], 64, n - 1, 0)
        .await?
        .len() as u64;
    crate::small::wait_sent(metrics, sent).await?;
    let submitted = started.elapsed().as_secs_f64();
    let (restart_seconds, restart_peak_rss_mib) =
        stop_and_restart(bin, &url, &mut m.coord, &first).await?;
    Ok(Reload {
        count: n,
        uploaded_s: submitted,
        restart_seconds,
        restart_peak_rss_mib,
    })
}

/// Stops `coord` (SIGTERM: the lead is released, and the restart need not
/// wait for it to run out), starts a coordinator on `url` again, and waits
/// until it answers GetStatus of batch `id`: the seconds from its spawn, and
/// its peak RSS (`VmHWM`, MiB) by then.
async fn stop_and_restart(
    bin: &Path,
    url: &str,
    coord: &mut Proc,
    id: &str,
) -> anyhow::Result<(f64, f64)> {
    coord.term();
    coord.wait(Duration::from_secs(60)).await?;
    let started = Instant::now();
    let (again, addr) = coordinator(bin, url)?;
    until(Duration::from_secs(300), "the restart answers", || {
        status(addr, id)
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((seconds, crate::usage(again.child.id()).1))
}
