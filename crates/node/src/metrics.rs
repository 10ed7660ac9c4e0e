//! A node's Prometheus metrics, read from its [`Stats`] at scrape time (the
//! node counts in atomics as it works; nothing else is kept for metrics).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use smsmesh::metrics::{counter, family, gauge};

use crate::Stats;

/// Reads a node's [`Stats`] at scrape time.
#[derive(Debug)]
struct NodeCollector {
    stats: Arc<Stats>,
    concurrency: u32,
}

/// A registry of the node's metrics. Every series carries the node's name
/// as the `node` label, as the coordinator's per-node metrics do.
pub fn registry(name: &str, concurrency: u32, stats: Arc<Stats>) -> Registry {
    let mut registry =
        Registry::with_labels([("node".into(), name.to_string().into())].into_iter());
    registry.register_collector(Box::new(NodeCollector { stats, concurrency }));
    registry
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut e;
        counter(
            e,
            "smsnode_jobs_received",
            "Jobs received from the coordinator.",
            get(&s.jobs),
        )?;
        family(
            e,
            "smsnode_attempts",
            "Gateway send attempts, by outcome.",
            MetricType::Counter,
            [
                ([("outcome", "sent")], ConstCounter::new(get(&s.sent))),
                ([("outcome", "failed")], ConstCounter::new(get(&s.failed))),
            ],
        )?;
        gauge(
            e,
            "smsnode_in_flight",
            "Jobs held now (sending and prefetched).",
            get(&s.in_flight) as i64,
        )?;
        gauge(
            e,
            "smsnode_connected",
            "1 while a stream to the coordinator is open.",
            i64::from(s.connected.load(Ordering::Relaxed)),
        )?;
        gauge(
            e,
            "smsnode_concurrency",
            "Most gateway sends at once.",
            i64::from(self.concurrency),
        )?;
        gauge(
            e,
            "smsnode_prefetch",
            "Jobs kept ready beyond the send slots now (sized to the coordinator round trip).",
            get(&s.prefetch) as i64,
        )?;
        counter(
            e,
            "smsnode_credits_granted",
            "Credits granted to the coordinator.",
            get(&s.credits_granted),
        )?;
        counter(
            e,
            "smsnode_streams",
            "Streams to the coordinator opened (1 + reconnects).",
            get(&s.sessions),
        )?;
        counter(
            e,
            "smsnode_reconnects",
            "Streams opened after the first.",
            get(&s.sessions).saturating_sub(1),
        )?;
        counter(
            e,
            "smsnode_results_handed_in",
            "Results handed in on a later stream than their job came on.",
            get(&s.handed_in),
        )?;
        counter(
            e,
            "smsnode_jobs_over_credit",
            "Jobs received beyond the credit granted (a coordinator bug if not zero).",
            get(&s.over_credit),
        )?;
        let latency = s.latency.0.lock().expect("metrics lock").clone();
        latency.encode(
            e,
            "smsnode_send_latency_seconds",
            "Gateway latency of each attempt.",
        )
    }
}
