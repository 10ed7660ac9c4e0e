//! Scenario (h): a broadcast to a long explicit list. One client streams
//! `n` numbers with one body to a durable coordinator (SubmitBatchStream,
//! chunks of 50,000) while zero-latency nodes wait; the figures are the time
//! to upload and be accepted, the time from the first chunk until every
//! message was sent, the coordinator's peak RSS and the store's size.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use smsmesh::pb::{self, BatchState, submit_batch_stream_request::Part};

use crate::{Scenario, Setup, median, mesh, usage};

/// Numbers per chunk of the upload.
const CHUNK: u64 = 50_000;

/// What one upload measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Upload {
    pub(crate) recipients: u64,
    /// From the first part sent to the commit's answer.
    pub(crate) accepted_seconds: f64,
    /// From the first part sent until every message was sent.
    pub(crate) all_sent_seconds: f64,
    pub(crate) coordinator_peak_rss_mib: f64,
    /// The store file once every message was sent.
    pub(crate) store_mib: f64,
    pub(crate) coordinator_cpu_s: f64,
}

/// Recipient `i`'s number (distinct for 10^10 recipients).
fn number(i: u64) -> String {
    format!("+1{:010}", 2_000_000_000 + i)
}

/// The parts of an upload of `n` recipients with one body: a header, chunks
/// of numbers, a commit. Made lazily, one chunk at a time, as the stream is
/// sent.
pub(crate) fn parts(n: u64) -> impl Iterator<Item = pb::SubmitBatchStreamRequest> + Send {
    let header = pb::SubmitBatchStreamRequest {
        part: Some(Part::Header(pb::UploadHeader {
            body: "Emergency alert: a storm warning is in effect for your area until 18:00. Stay indoors and away from windows.".into(),
            ..Default::default()
        })),
    };
    let chunks = (0..n.div_ceil(CHUNK)).map(move |c| {
        let to = (c * CHUNK..n.min((c + 1) * CHUNK)).map(number).collect();
        pb::SubmitBatchStreamRequest {
            part: Some(Part::Recipients(pb::RecipientChunk {
                to,
                client_ref: Vec::new(),
            })),
        }
    });
    let commit = pb::SubmitBatchStreamRequest {
        part: Some(Part::Commit(pb::UploadCommit { total: n })),
    };
    std::iter::once(header)
        .chain(chunks)
        .chain(std::iter::once(commit))
}

/// Streams an upload of `n` recipients to a fresh durable mesh and follows it.
pub(crate) async fn run(bin: &Path, n: u64) -> anyhow::Result<Upload> {
    let setup = Setup::durable_four(n);
    let mut m = mesh::start(bin, &setup, &[], None).await?;
    let pid = m.coord.child.id();
    let cpu_before = usage(pid).0;
    let parts = parts(n);
    let started = Instant::now();
    let r = m
        .client
        .submit_batch_stream(tokio_stream::iter(parts))
        .await?
        .into_inner();
    let accepted = started.elapsed().as_secs_f64();
    if r.accepted != n {
        bail!("accepted {} of {n}", r.accepted);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let b = m
            .client
            .get_status(pb::GetStatusRequest {
                target: Some(pb::get_status_request::Target::BatchId(r.batch_id.clone())),
            })
            .await?
            .into_inner();
        let Some(pb::get_status_response::Status::Batch(b)) = b.status else {
            bail!("no batch status");
        };
        if b.state == BatchState::Completed as i32 {
            if b.sent != n {
                bail!("completed with {} sent of {n}", b.sent);
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("{} of {n} sent after 600 s", b.sent);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_sent = started.elapsed().as_secs_f64();
    let (cpu_after, rss) = usage(pid);
    let store = std::fs::metadata(m._data.path().join("smsmesh.redb"))
        .context("the store file")?
        .len();
    m.nodes.clear();
    Ok(Upload {
        recipients: n,
        accepted_seconds: accepted,
        all_sent_seconds: all_sent,
        coordinator_peak_rss_mib: rss,
        store_mib: store as f64 / (1024.0 * 1024.0),
        coordinator_cpu_s: cpu_after - cpu_before,
    })
}

/// Scenario (h): `repeat` uploads of `n` recipients, judged by their medians.
pub(crate) async fn scenario(bin: &Path, n: u64, repeat: u32) -> anyhow::Result<Scenario> {
    let mut uploads = Vec::new();
    for _ in 0..repeat {
        uploads.push(run(bin, n).await?);
    }
    // Median, lowest and highest of one figure over the runs.
    let spread = |f: fn(&Upload) -> f64| {
        let v: Vec<f64> = uploads.iter().map(f).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (median(&v), lo, hi)
    };
    let acc = spread(|u| u.accepted_seconds);
    let sent = spread(|u| u.all_sent_seconds);
    let rss = spread(|u| u.coordinator_peak_rss_mib);
    let store = spread(|u| u.store_mib);
    let show =
        |(m, lo, hi): (f64, f64, f64), unit: &str| format!("{m:.1} {unit} ({lo:.1}–{hi:.1})");
    Ok(Scenario {
        id: "h".into(),
        title: format!(
            "one streamed upload of {n} explicit recipients with one body, durable, 4 zero-latency nodes"
        ),
        target: "accepted ≤ 30 s, all sent ≤ 60 s from the first chunk, coordinator RSS ≤ 1 GiB, store ≤ 400 MiB (for 14,000,000)".into(),
        result: format!(
            "accepted after {}, all sent after {}, coordinator peak RSS {}, store {}: median (range) of {} runs",
            show(acc, "s"),
            show(sent, "s"),
            show(rss, "MiB"),
            show(store, "MiB"),
            uploads.len()
        ),
        met: acc.0 <= 30.0 && sent.0 <= 60.0 && rss.0 <= 1024.0 && store.0 <= 400.0,
        runs: Vec::new(),
        uploads,
        history: None,
        smpp: Vec::new(),
        priority: None,
        failover: None,
        callbacks: None,
        machine: None,
    })
}
