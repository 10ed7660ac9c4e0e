//! Scenario (o): status callbacks. A durable coordinator with 4
//! zero-latency nodes sends batches whose events go to a receiver in this
//! process (a real HTTP server that checks every signature). Three batches
//! in one mesh, each measured by its send rate:
//!
//! 1. without a callback URL (the baseline);
//! 2. with one, the receiver up: how fast events reach it;
//! 3. with one, the receiver refusing connections for `outage`: dispatch
//!    must not slow down, and once the receiver is back every event of the
//!    batch must arrive.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use smsmesh_testkit::CallbackReceiver;

use crate::{Scenario, Setup, mesh, usage};

const SECRET: &str = "bench-callback-secret-0123456789";

/// What scenario (o) measured.
#[derive(Debug, Serialize, Default)]
pub(crate) struct Callbacks {
    messages: u64,
    /// Send rate of the batch without callbacks, messages/s (steady).
    baseline_msgs_per_sec: f64,
    /// Send rate of the batch with callbacks, receiver up.
    with_callbacks_msgs_per_sec: f64,
    /// Events a second delivered to the receiver (from the first event to the last).
    events_per_sec: f64,
    /// Requests the receiver took for those events.
    requests: u64,
    /// Send rate of the batch sent while the receiver was down.
    receiver_down_msgs_per_sec: f64,
    /// How long the receiver was down.
    outage_s: f64,
    /// From the receiver's return to the last event of the outage's batch.
    catch_up_s: f64,
    /// From the receiver's return to the first retried request (the backoff then).
    retry_wait_s: f64,
    /// Events a second once the retries reached the receiver (the backlog drained).
    drain_events_per_sec: f64,
    /// Events of every batch with callbacks that never arrived.
    lost: u64,
    /// Events that arrived more than once.
    duplicates: u64,
    coordinator_peak_rss_mib: f64,
}

async fn status(
    client: &mut smsmesh::pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    id: &str,
) -> anyhow::Result<smsmesh::pb::BatchStatus> {
    smsmesh_testkit::batch_status(client, id).await
}

/// Submits a synthetic batch of `n` (to `url`, if given) and waits until it
/// is sent; returns its id and its steady send rate.
async fn send(
    m: &mut mesh::Started,
    n: u64,
    seed: u64,
    url: Option<String>,
) -> anyhow::Result<(String, f64)> {
    let mut req = smsmesh_testkit::synthetic(n, seed);
    req.callback_url = url.unwrap_or_default();
    let id = smsmesh_testkit::submit(&mut m.client, req).await;
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let s = status(&mut m.client, &id).await?;
        seen.push((Instant::now(), s.sent, 0));
        if s.sent + s.failed >= n {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not sent within 600 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((id, crate::smpp::rate(&seen, n, |s| s.1)))
}

/// Waits until the receiver has `n` distinct events; returns when it first
/// had more than `from` and when it had them all.
async fn wait_events(
    r: &CallbackReceiver,
    from: usize,
    n: usize,
    within: Duration,
) -> anyhow::Result<(Instant, Instant)> {
    let started = Instant::now();
    let mut first = None;
    loop {
        let got = r.distinct();
        let now = Instant::now();
        if got > from && first.is_none() {
            first = Some(now);
        }
        if got >= n {
            return Ok((first.unwrap_or(now), now));
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "{got} of {n} events arrived within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Scenario (o) with batches of `n` and a receiver outage of `outage`.
pub(crate) async fn scenario(bin: &Path, n: u64, outage: Duration) -> anyhow::Result<Scenario> {
    let dir = tempfile::tempdir()?;
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("*={SECRET}\n"))?;
    let setup = Setup::durable_four(n);
    let secrets = secrets.to_str().context("a UTF-8 path")?;
    let mut m = mesh::start(bin, &setup, &["--callback-secrets", secrets], None).await?;
    let pid = m.coord.child.id();
    let mut receiver = CallbackReceiver::start(SECRET.as_bytes()).await?;
    let url = receiver.url();

    let (_, baseline) = send(&mut m, n, 1, None).await?;
    let (_, with_callbacks) = send(&mut m, n, 2, Some(url.clone())).await?;
    let want = n as usize + 1;
    let (first, last) = wait_events(&receiver, 0, want, Duration::from_secs(600)).await?;
    let events_per_sec = n as f64 / last.duration_since(first).as_secs_f64().max(1e-3);
    let requests = receiver.requests();

    receiver.stop();
    let down = Instant::now();
    let (_, receiver_down) = send(&mut m, n, 3, Some(url.clone())).await?;
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let outage_s = down.elapsed().as_secs_f64();
    receiver.restart().await?;
    let back = Instant::now();
    let (resumed, done) = wait_events(&receiver, want, 2 * want, Duration::from_secs(900)).await?;
    let catch_up_s = done.duration_since(back).as_secs_f64();
    let retry_wait_s = resumed.duration_since(back).as_secs_f64();
    let drain_events_per_sec = n as f64 / done.duration_since(resumed).as_secs_f64().max(1e-3);
    let (got, duplicates) = receiver.seen(|s| (s.ids.len() as u64, s.duplicates));
    let result = Callbacks {
        messages: n,
        baseline_msgs_per_sec: baseline,
        with_callbacks_msgs_per_sec: with_callbacks,
        events_per_sec,
        requests,
        receiver_down_msgs_per_sec: receiver_down,
        outage_s,
        catch_up_s,
        retry_wait_s,
        drain_events_per_sec,
        lost: (2 * want as u64).saturating_sub(got),
        duplicates,
        coordinator_peak_rss_mib: usage(pid).1,
    };
    anyhow::ensure!(
        receiver.bad_signatures() == 0,
        "a request with a bad signature"
    );
    let slower = |x: f64| 100.0 * (1.0 - x / baseline);
    Ok(Scenario {
        id: "o".into(),
        title: format!(
            "status callbacks: batches of {n} (4 zero-latency nodes, durable) without callbacks, with a receiver, and with the receiver down for {:.0} s",
            outage.as_secs_f64()
        ),
        target:
            "≥ 100,000 events/s delivered; receiver down 60 s: nothing lost, dispatch no slower than with the receiver up"
                .into(),
        result: format!(
            "{events_per_sec:.0} events/s in {requests} requests; sends/s: {baseline:.0} without callbacks, {with_callbacks:.0} with ({:+.1}% slower), {receiver_down:.0} with the receiver down ({:+.1}% slower); receiver down {outage_s:.0} s, every event there {catch_up_s:.1} s after it came back (first retry after {retry_wait_s:.1} s of backoff, then {drain_events_per_sec:.0} events/s), {} lost, {duplicates} twice; coordinator peak RSS {:.0} MiB",
            slower(with_callbacks),
            slower(receiver_down),
            result.lost,
            result.coordinator_peak_rss_mib,
        ),
        // A dead receiver must not slow dispatch: against the batch with a live one.
        met: events_per_sec >= 100_000.0
            && result.lost == 0
            && receiver_down >= 0.9 * with_callbacks,
        callbacks: Some(result),
        ..Scenario::default()
    })
}
