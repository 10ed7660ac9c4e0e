//! Prometheus metrics: the `/metrics` endpoint every smsmesh program serves
//! on its own port (`--metrics-listen`), and helpers to write metrics whose
//! values are read at scrape time.
//!
//! Metrics are written with `prometheus-client` in the OpenMetrics text
//! format, which Prometheus scrapes natively. Programs keep their counters
//! where they are cheapest to keep (the coordinator in its reactor, a node in
//! atomics) and a [`Collector`](prometheus_client::collector::Collector)
//! turns them into metrics when Prometheus asks.

use std::future::Future;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the send-latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds (seconds) of the store-commit histogram buckets.
pub const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` from `registry` on `listener` until `shutdown`
/// completes, and `GET /healthz`: 200 while `healthy()` says so, else 503
/// (for container health checks and Kubernetes probes).
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    healthy: impl Fn() -> bool + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(header::CONTENT_TYPE, "text/plain")],
                            "cannot encode metrics".to_string(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || async move {
                if healthy() {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .route(
            "/",
            axum::routing::get(|| async { "smsmesh: GET /metrics, GET /healthz\n" }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A `/metrics` endpoint running in the background; it stops when dropped.
pub struct Endpoint {
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `registry` on `listener` in a background task (see [`serve`])
/// until the returned [`Endpoint`] is dropped.
pub fn spawn(
    listener: tokio::net::TcpListener,
    registry: Registry,
    healthy: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> Endpoint {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await; // a send or the sender's drop
        };
        if let Err(e) = serve(listener, Arc::new(registry), healthy, stopped).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    Endpoint { _stop: stop }
}

/// Writes one unlabelled counter (`name` without the `_total` suffix, which is added).
pub fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes one unlabelled gauge.
pub fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Writes a family of series of one metric type, one per label set.
pub fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, m) in series {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram as counts per bucket (not cumulative; the last counts
/// everything above the last bound), with the sum of observations.
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    /// Upper bounds, seconds.
    pub bounds: &'static [f64],
    /// `bounds.len() + 1` counts.
    pub counts: Vec<u64>,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Buckets {
    /// Empty buckets with these bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Buckets {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Empty buckets for send latency ([`LATENCY_BUCKETS`]).
    pub fn latency() -> Self {
        Self::new(&LATENCY_BUCKETS)
    }

    /// Adds one observation of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        let i = self.bounds.partition_point(|&b| b < seconds);
        self.counts[i] += 1;
        self.sum += seconds;
    }

    /// Adds `n` observations of `seconds` each.
    pub fn observe_n(&mut self, seconds: f64, n: u64) {
        let i = self.bounds.partition_point(|&b| b < seconds);
        self.counts[i] += n;
        self.sum += seconds * n as f64;
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Writes one histogram per label set, as one family.
    pub fn encode_family<'a, L: EncodeLabelSet + 'a>(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, &'a Buckets)>,
    ) -> std::fmt::Result {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, b) in series {
            metric
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    b.sum,
                    b.count(),
                    &b.bucket_counts(),
                    None,
                )?;
        }
        Ok(())
    }

    /// (upper bound, count) per bucket, the last one unbounded.
    fn bucket_counts(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }

    /// Writes the histogram.
    pub fn encode(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
    ) -> std::fmt::Result {
        let buckets = self.bucket_counts();
        encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                self.sum,
                self.count(),
                &buckets,
                None,
            )
    }
}

/// `GET http://{addr}{path}` over a plain HTTP/1.0 connection: the status code
/// and the body. Enough for health checks, `/metrics` and Prometheus's API
/// (no TLS, no redirects, no chunked bodies: HTTP/1.0 servers do not chunk).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let raw = String::from_utf8(raw).map_err(|_| bad("response is not UTF-8"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bad HTTP status line"))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_observation_once_at_its_upper_bound() {
        let mut b = Buckets::new(&LATENCY_BUCKETS);
        b.observe(0.001); // on a bound: that bucket
        b.observe(0.0011);
        b.observe(100.0); // above all: the overflow bucket
        b.observe_n(0.05, 3);
        assert_eq!(b.counts[0], 1);
        assert_eq!(b.counts[1], 1);
        assert_eq!(b.counts[5], 3);
        assert_eq!(*b.counts.last().unwrap(), 1);
        assert_eq!(b.count(), 6);
        assert!((b.sum - (0.001 + 0.0011 + 100.0 + 0.15)).abs() < 1e-9);
    }
}
