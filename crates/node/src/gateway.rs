//! Gateways: what actually sends an SMS. A node has one.
//!
//! Only the simulated gateway exists so far; SMPP and HTTP gateways will
//! implement the same trait.

use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng;
use smsmesh::pb;

/// Sends one message; resolves to `Err(reason)` when the attempt failed.
pub trait Gateway: Send + Sync + 'static {
    /// The kind, as the node reports it in Hello (e.g. "simulated").
    fn kind(&self) -> &'static str;
    /// Sends `job`.
    fn send(&self, job: &pb::Job) -> BoxFuture<'static, Result<(), String>>;
}

/// A gateway that only waits and sometimes fails: latency drawn from an
/// exponential distribution around `mean_latency`, failures at `failure_rate`.
#[derive(Clone, Debug)]
pub struct Simulated {
    /// Mean of the exponential latency; zero means no delay.
    pub mean_latency: Duration,
    /// Probability (0 to 1) that an attempt fails.
    pub failure_rate: f64,
}

impl Gateway for Simulated {
    fn kind(&self) -> &'static str {
        "simulated"
    }

    fn send(&self, _job: &pb::Job) -> BoxFuture<'static, Result<(), String>> {
        let mut rng = rand::rng();
        let fail = self.failure_rate > 0.0 && rng.random::<f64>() < self.failure_rate;
        let delay = if self.mean_latency.is_zero() {
            Duration::ZERO
        } else {
            // Inverse transform: -mean * ln(1 - u), u in [0, 1).
            let u: f64 = rng.random();
            self.mean_latency
                .mul_f64(-(1.0 - u).ln())
                .min(self.mean_latency * 50)
        };
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail {
                Err("simulated gateway failure (submit_sm rejected)".to_string())
            } else {
                Ok(())
            }
        })
    }
}
