//! Scenario (k): classes of traffic on the setup, all release
//! processes on this machine: a durable `smscoord` with authentication (so
//! tenants are real), 4 `smsnode` processes of concurrency 500 at 20 ms.
//! - An emergency batch of 20,000, `repeat` times on the idle mesh and
//!   `repeat` times while eight bulk batches (1,000,000 each at scale 1) run:
//!   its time from SubmitBatch's answer to completion, and to its first
//!   message dispatched (GetStatus polled every 2 ms).
//! - Fairness: tenant "big" (10,000,000 at scale 1) and tenant "small"
//!   (100,000) in bulk together: the small one's time against its time
//!   alone on half the mesh (two nodes).
//! - Throughput of the bulk batches alone against bulk and normal batches
//!   together (the same number of messages).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use smsmesh::pb;

use crate::{Scenario, Setup, median, mesh};

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

/// What scenario (k) measured.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Priority {
    /// Seconds from SubmitBatch's answer until the emergency batch completed: idle mesh.
    pub(crate) idle_seconds: Vec<f64>,
    /// The same while the bulk batches run.
    pub(crate) loaded_seconds: Vec<f64>,
    /// Milliseconds until the first emergency message was dispatched, while bulk runs.
    pub(crate) loaded_first_dispatch_ms: Vec<f64>,
    /// Seconds the small tenant's batch took beside the big one's, and alone on half the mesh.
    pub(crate) fair_small_seconds: f64,
    pub(crate) half_mesh_small_seconds: f64,
    /// Messages a second: bulk alone, then bulk and normal together.
    pub(crate) single_class_rate: f64,
    pub(crate) mixed_class_rate: f64,
}

/// A mesh with authentication on and tokens for `tenants` (the first with
/// the emergency scope).
struct Authed {
    mesh: mesh::Started,
    tokens: Vec<String>,
    _files: (tempfile::NamedTempFile, tempfile::NamedTempFile),
}

async fn start(bin: &Path, nodes: usize, tenants: &[&str]) -> anyhow::Result<Authed> {
    let secret = tempfile::NamedTempFile::new()?;
    std::fs::write(
        secret.path(),
        "bench-secret-0123456789abcdef0123456789abcdef\n",
    )?;
    let node_token = tempfile::NamedTempFile::new()?;
    std::fs::write(node_token.path(), "bench-node-token-0123456789abcdef\n")?;
    let secret_path = secret.path().to_str().context("temp path")?.to_string();
    let node_path = node_token.path().to_str().context("temp path")?.to_string();
    let mut tokens = Vec::new();
    // SMSMESH_BENCH_BASELINE=1: for a build before classes (it has no
    // --token-scope and ignores `priority`), to measure the same runs there.
    let baseline = std::env::var_os("SMSMESH_BENCH_BASELINE").is_some();
    for (i, t) in tenants.iter().enumerate() {
        let mut mint = std::process::Command::new(bin.join("smscoord"));
        mint.args(["--jwt-secret-file", &secret_path]);
        if i == 0 && !baseline {
            mint.args(["--token-scope", "smsmesh:emergency"]);
        }
        let out = mint.args(["--mint-token", t]).output()?;
        if !out.status.success() {
            bail!("--mint-token: {}", String::from_utf8_lossy(&out.stderr));
        }
        tokens.push(String::from_utf8(out.stdout)?.trim().to_string());
    }
    let setup = Setup {
        messages: 0,
        durable: true,
        nodes: vec![(500, Duration::from_millis(20)); nodes],
        per_process: 1,
    };
    let args = [
        "--jwt-secret-file",
        &secret_path,
        "--node-token-file",
        &node_path,
    ];
    let mesh = mesh::start(bin, &setup, &args, tokens.first().map(String::as_str)).await?;
    Ok(Authed {
        mesh,
        tokens,
        _files: (secret, node_token),
    })
}

async fn submit(
    client: &mut Client,
    token: &str,
    count: u64,
    priority: pb::Priority,
) -> anyhow::Result<String> {
    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seed = SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut req = smsmesh_testkit::synthetic(count, seed);
    req.priority = priority as i32;
    let r = client
        .submit_batch(mesh::request(req, Some(token))?)
        .await?;
    Ok(r.into_inner().batch_id)
}

async fn status(client: &mut Client, token: &str, id: &str) -> anyhow::Result<pb::BatchStatus> {
    let req = pb::GetStatusRequest {
        target: Some(pb::get_status_request::Target::BatchId(id.into())),
    };
    match client
        .get_status(mesh::request(req, Some(token))?)
        .await?
        .into_inner()
        .status
    {
        Some(pb::get_status_response::Status::Batch(b)) => Ok(b),
        other => bail!("not a batch status: {other:?}"),
    }
}

/// Submits a batch and follows it: (seconds to completion, ms to first dispatch).
async fn timed(
    client: &mut Client,
    token: &str,
    count: u64,
    priority: pb::Priority,
) -> anyhow::Result<(f64, f64)> {
    let id = submit(client, token, count, priority).await?;
    let start = Instant::now();
    let mut first = None;
    loop {
        let s = status(client, token, &id).await?;
        if first.is_none() && s.in_flight + s.sent + s.failed > 0 {
            first = Some(start.elapsed().as_secs_f64() * 1000.0);
        }
        if s.state == pb::BatchState::Completed as i32 {
            return Ok((start.elapsed().as_secs_f64(), first.unwrap_or(0.0)));
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("batch {id} not done in 600 s: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Messages a second of `batches` (each of `count`, classes in turn) from submit to the last completion.
async fn throughput(
    client: &mut Client,
    token: &str,
    classes: &[pb::Priority],
    count: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut ids = Vec::new();
    for &c in classes {
        ids.push(submit(client, token, count, c).await?);
    }
    for id in ids {
        loop {
            let s = status(client, token, &id).await?;
            if s.state == pb::BatchState::Completed as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok((classes.len() as u64 * count) as f64 / start.elapsed().as_secs_f64())
}

fn p99(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Scenario (k), with bulk batches of `bulk` messages and the big tenant's of `big`.
pub(crate) async fn scenario(
    bin: &Path,
    bulk: u64,
    big: u64,
    repeat: u32,
) -> anyhow::Result<Scenario> {
    let urgent = 20_000;
    let small = (big / 100).max(1000);
    let mut k = Priority::default();

    // Emergency, idle and under bulk.
    let mut m = start(bin, 4, &["alerts"]).await?;
    let token = m.tokens[0].clone();
    let client = &mut m.mesh.client;
    for _ in 0..repeat {
        k.idle_seconds.push(
            timed(client, &token, urgent, pb::Priority::Emergency)
                .await?
                .0,
        );
    }
    let mut bulks = Vec::new();
    for _ in 0..8 {
        bulks.push(submit(client, &token, bulk, pb::Priority::Bulk).await?);
    }
    for _ in 0..repeat {
        // Bulk fills every node first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (secs, first) = timed(client, &token, urgent, pb::Priority::Emergency).await?;
        k.loaded_seconds.push(secs);
        k.loaded_first_dispatch_ms.push(first);
    }
    let left = status(client, &token, &bulks[7]).await?;
    if left.state != pb::BatchState::Running as i32 {
        bail!("the bulk batches ended before the last emergency run: make them larger");
    }
    drop(m);

    // Throughput: one class, then two.
    let mut m = start(bin, 4, &["alerts"]).await?;
    let token = m.tokens[0].clone();
    let client = &mut m.mesh.client;
    let per = bulk / 2;
    k.single_class_rate = throughput(client, &token, &[pb::Priority::Bulk; 4], per).await?;
    let mixed = [
        pb::Priority::Bulk,
        pb::Priority::Normal,
        pb::Priority::Bulk,
        pb::Priority::Normal,
    ];
    k.mixed_class_rate = throughput(client, &token, &mixed, per).await?;
    drop(m);

    // Fairness: small beside big, then small alone on half the mesh.
    let mut m = start(bin, 4, &["big", "small"]).await?;
    let (big_token, small_token) = (m.tokens[0].clone(), m.tokens[1].clone());
    let client = &mut m.mesh.client;
    submit(client, &big_token, big, pb::Priority::Bulk).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    k.fair_small_seconds = timed(client, &small_token, small, pb::Priority::Bulk)
        .await?
        .0;
    drop(m);
    let mut m = start(bin, 2, &["small"]).await?;
    let token = m.tokens[0].clone();
    k.half_mesh_small_seconds = timed(&mut m.mesh.client, &token, small, pb::Priority::Bulk)
        .await?
        .0;
    drop(m);

    let (idle, loaded) = (median(&k.idle_seconds), median(&k.loaded_seconds));
    let ratio = loaded / idle;
    let first_p99 = p99(&k.loaded_first_dispatch_ms);
    let fair = k.fair_small_seconds / k.half_mesh_small_seconds;
    let mix = k.mixed_class_rate / k.single_class_rate;
    let result = format!(
        "emergency {urgent}: idle {idle:.2} s, under 8 × {bulk} bulk {loaded:.2} s ({ratio:.2}×; runs {:?} / {:?}), first dispatch p99 {first_p99:.0} ms (runs {:?}); small tenant ({small}) beside big ({big}) {:.2} s vs alone on half the mesh {:.2} s ({fair:.2}×); throughput bulk only {:.0}/s, bulk + normal {:.0}/s ({:+.1}%)",
        k.idle_seconds
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>(),
        k.loaded_seconds
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>(),
        k.loaded_first_dispatch_ms
            .iter()
            .map(|s| format!("{s:.0}"))
            .collect::<Vec<_>>(),
        k.fair_small_seconds,
        k.half_mesh_small_seconds,
        k.single_class_rate,
        k.mixed_class_rate,
        (mix - 1.0) * 100.0,
    );
    Ok(Scenario {
        id: "k".into(),
        title: "Classes of traffic: 4 nodes of concurrency 500 at 20 ms, durable, authenticated".into(),
        target: "emergency under bulk ≤ 1.2× idle; first dispatch p99 ≤ 50 ms; small tenant ≤ 1.2× its time on half the mesh; mixed-class throughput within 5% of one class".into(),
        met: ratio <= 1.2 && first_p99 <= 50.0 && fair <= 1.2 && (mix - 1.0).abs() <= 0.05,
        result,
        runs: Vec::new(),
        uploads: Vec::new(),
        history: None,
        smpp: Vec::new(),
        priority: Some(k),
        failover: None,
        callbacks: None,
        machine: None,
    })
}
