//! Scenario (m): the HTTP/JSON API against gRPC. 64 callers submit
//! one-message batches to a durable coordinator, over gRPC and then over
//! HTTP (a keep-alive connection per caller), in interleaved runs: what the
//! REST face costs per request.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::small::{each_caller, fire, submit_run, wait_sent};
use crate::{Run, Scenario, Setup, median, mesh, usage};

/// `callers` concurrent callers POST `batches` one-message batches in all to
/// `/v1/batches` at `http`, one after another each. Returns each call's latency in µs.
async fn fire_http(http: SocketAddr, callers: usize, batches: u64) -> anyhow::Result<Vec<u64>> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(callers)
        .build_http();
    let url = format!("http://{http}/v1/batches");
    each_caller(callers, batches, 0, move |_, n| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = format!(
                r#"{{"messages":[{{"to":"+1555{:07}","body":"Your code is {:06}"}}]}}"#,
                n % 10_000_000,
                n % 1_000_000
            );
            let req = http::Request::post(&url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let resp = client.request(req).await?;
            let status = resp.status();
            let answer = resp.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                bail!(
                    "POST /v1/batches: {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            Ok(())
        }
    })
    .await
}

/// One run: `batches` one-message batches from `callers` callers, over HTTP
/// when `http`, else over gRPC.
async fn run(bin: &Path, callers: usize, batches: u64, http: bool) -> anyhow::Result<Run> {
    let setup = Setup::durable_four(batches);
    let args = [
        "--metrics-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let mut mesh = mesh::start(bin, &setup, &args, None).await?;
    let metrics = mesh.metrics.context("metrics address")?;
    let cpu_before = usage(mesh.coord.child.id()).0;
    let started = Instant::now();
    let latencies = if http {
        fire_http(mesh.http.context("http address")?, callers, batches).await?
    } else {
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(
                tonic::transport::Endpoint::from_shared(mesh.url.clone())?
                    .connect()
                    .await?,
            );
        }
        fire(&channels, &[], callers, batches, 0).await?
    };
    let submitted = started.elapsed().as_secs_f64();
    let total = latencies.len() as u64;
    wait_sent(metrics, total).await?;
    let (cpu_after, rss) = usage(mesh.coord.child.id());
    mesh.nodes.clear();
    Ok(Run {
        store: if http { "http".into() } else { String::new() },
        ..submit_run(
            latencies,
            submitted,
            setup.nodes.len(),
            cpu_after - cpu_before,
            rss,
        )
    })
}

/// Scenario (m): `repeat` rounds of a gRPC run then an HTTP run.
pub(crate) async fn scenario(bin: &Path, batches: u64, repeat: u32) -> anyhow::Result<Scenario> {
    let callers = 64;
    let (mut grpc, mut rest) = (Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) {
        grpc.push(run(bin, callers, batches, false).await?);
        rest.push(run(bin, callers, batches, true).await?);
    }
    let rate = |runs: &[Run]| median(&runs.iter().map(|r| r.msgs_per_sec).collect::<Vec<_>>());
    let p99 = |runs: &[Run]| median(&runs.iter().map(|r| r.latency_p99_ms).collect::<Vec<_>>());
    let spread = |runs: &[Run]| {
        let v: Vec<f64> = runs.iter().map(|r| r.msgs_per_sec).collect();
        (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        )
    };
    let (g, r) = (rate(&grpc), rate(&rest));
    let ((g_lo, g_hi), (r_lo, r_hi)) = (spread(&grpc), spread(&rest));
    Ok(Scenario {
        id: "m".into(),
        title: format!(
            "one-message batches from {callers} callers, durable: REST/JSON against gRPC, interleaved"
        ),
        target: "REST within 80% of gRPC".into(),
        result: format!(
            "gRPC {g:.0} batches/s ({g_lo:.0}–{g_hi:.0}), p99 {:.1} ms; REST {r:.0} batches/s ({r_lo:.0}–{r_hi:.0}), p99 {:.1} ms: REST at {:.0}% of gRPC (medians of {} runs each)",
            p99(&grpc),
            p99(&rest),
            r / g * 100.0,
            grpc.len()
        ),
        met: r >= 0.8 * g,
        runs: grpc.into_iter().chain(rest).collect(),
        ..Scenario::default()
    })
}
