//! A node's Prometheus metrics, read from its [`Stats`] at scrape time (the
//! node counts in atomics as it works; nothing else is kept for metrics).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use smsmesh::metrics::{Buckets, family};

use crate::Stats;

/// One node whose metrics a registry serves.
#[derive(Debug, Clone)]
pub struct Served {
    /// Its name: the `node` label of its series.
    pub name: String,
    /// Its most gateway sends at once.
    pub concurrency: u32,
    /// What it counts as it works.
    pub stats: Arc<Stats>,
}

/// Reads the [`Stats`] of the nodes of a process at scrape time.
#[derive(Debug)]
struct NodeCollector {
    nodes: Vec<Served>,
}

/// A registry of one node's metrics. Every series carries the node's name
/// as the `node` label, as the coordinator's per-node metrics do.
pub fn registry(name: &str, concurrency: u32, stats: Arc<Stats>) -> Registry {
    registry_of(vec![Served {
        name: name.to_string(),
        concurrency,
        stats,
    }])
}

/// A registry of the metrics of every node of the process (`--instances`):
/// one family per metric, one series per node, told apart by the `node` label.
pub fn registry_of(nodes: Vec<Served>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector { nodes }));
    registry
}

impl NodeCollector {
    /// One series per node of `value(stats)`, as a family of `M`.
    fn each<'a, M: prometheus_client::encoding::EncodeMetric + 'a>(
        &'a self,
        value: impl Fn(&Served) -> M + 'a,
    ) -> impl Iterator<Item = ([(&'static str, &'a str); 1], M)> + 'a {
        self.nodes
            .iter()
            .map(move |n| ([("node", n.name.as_str())], value(n)))
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut e;
        let counter =
            |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: &dyn Fn(&Stats) -> u64| {
                family(
                    e,
                    name,
                    help,
                    MetricType::Counter,
                    self.each(|n| ConstCounter::new(v(&n.stats))),
                )
            };
        let gauge =
            |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: &dyn Fn(&Served) -> i64| {
                family(
                    e,
                    name,
                    help,
                    MetricType::Gauge,
                    self.each(|n| ConstGauge::new(v(n))),
                )
            };
        counter(
            e,
            "smsnode_jobs_received",
            "Jobs received from the coordinator.",
            &|s| get(&s.jobs),
        )?;
        family(
            e,
            "smsnode_attempts",
            "Gateway send attempts, by outcome.",
            MetricType::Counter,
            self.nodes.iter().flat_map(|n| {
                [
                    (
                        [("node", n.name.as_str()), ("outcome", "sent")],
                        get(&n.stats.sent),
                    ),
                    (
                        [("node", n.name.as_str()), ("outcome", "failed")],
                        get(&n.stats.failed),
                    ),
                ]
                .map(|(l, v)| (l, ConstCounter::new(v)))
            }),
        )?;
        gauge(
            e,
            "smsnode_in_flight",
            "Jobs held now (sending and prefetched).",
            &|n| get(&n.stats.in_flight) as i64,
        )?;
        gauge(
            e,
            "smsnode_receipts_waiting",
            "Delivery receipts taken from the gateway and not yet sent to the coordinator.",
            &|n| get(&n.stats.receipts_waiting) as i64,
        )?;
        counter(
            e,
            "smsnode_receipts_acked",
            "Delivery receipts the coordinator stored (acked), in all: each is answered to the SMSC once acked.",
            &|s| get(&s.receipts_acked),
        )?;
        gauge(
            e,
            "smsnode_receipts_unacked",
            "Delivery receipts sent to the coordinator and not yet stored (acked) by it.",
            &|n| get(&n.stats.receipts_unacked) as i64,
        )?;
        gauge(
            e,
            "smsnode_connected",
            "1 while a stream to the coordinator is open.",
            &|n| i64::from(n.stats.connected.load(Ordering::Relaxed)),
        )?;
        gauge(
            e,
            "smsnode_gateway_up",
            "1 while the gateway can send (for SMPP: while bound); no credit is granted otherwise.",
            &|n| i64::from(!n.stats.gateway_down.load(Ordering::Relaxed)),
        )?;
        gauge(
            e,
            "smsnode_concurrency",
            "Most gateway sends at once.",
            &|n| i64::from(n.concurrency),
        )?;
        gauge(
            e,
            "smsnode_prefetch",
            "Jobs kept ready beyond the send slots now (sized to the coordinator round trip).",
            &|n| get(&n.stats.prefetch) as i64,
        )?;
        counter(
            e,
            "smsnode_credits_granted",
            "Credits granted to the coordinator.",
            &|s| get(&s.credits_granted),
        )?;
        counter(
            e,
            "smsnode_streams",
            "Streams to the coordinator opened (1 + reconnects).",
            &|s| get(&s.sessions),
        )?;
        counter(
            e,
            "smsnode_reconnects",
            "Streams opened after the first.",
            &|s| get(&s.sessions).saturating_sub(1),
        )?;
        counter(
            e,
            "smsnode_results_handed_in",
            "Results handed in on a later stream than their job came on.",
            &|s| get(&s.handed_in),
        )?;
        counter(
            e,
            "smsnode_jobs_over_credit",
            "Jobs received beyond the credit granted (a coordinator bug if not zero).",
            &|s| get(&s.over_credit),
        )?;
        // The SMPP connector's counters (one connector per process, shared by its nodes).
        if let Some(smpp) = self.nodes.first().and_then(|n| n.stats.smpp.get()) {
            let c = |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: &AtomicU64| {
                family(
                    e,
                    name,
                    help,
                    MetricType::Counter,
                    [(Vec::<(&str, &str)>::new(), ConstCounter::new(get(v)))],
                )
            };
            c(
                e,
                "smsnode_smpp_binds",
                "SMPP binds made (1 + rebinds).",
                &smpp.binds,
            )?;
            c(
                e,
                "smsnode_smpp_bind_failures",
                "SMPP connects or binds that failed.",
                &smpp.bind_failures,
            )?;
            c(
                e,
                "smsnode_smpp_submits",
                "submit_sm sent, one per segment.",
                &smpp.submits,
            )?;
            c(
                e,
                "smsnode_smpp_accepted",
                "submit_sm_resp with ESME_ROK.",
                &smpp.accepted,
            )?;
            c(
                e,
                "smsnode_smpp_rejected",
                "submit_sm_resp with an error status other than ESME_RTHROTTLED.",
                &smpp.rejected,
            )?;
            c(
                e,
                "smsnode_smpp_throttled",
                "submit_sm_resp with ESME_RTHROTTLED (the connector paused).",
                &smpp.throttled,
            )?;
            c(
                e,
                "smsnode_smpp_unknown",
                "submit_sm with no response in time or a bind lost before it: the outcome is unknown and a retry may duplicate.",
                &smpp.unknown,
            )?;
            c(
                e,
                "smsnode_smpp_receipts",
                "Delivery receipts received (deliver_sm).",
                &smpp.receipts,
            )?;
            c(
                e,
                "smsnode_smpp_bad_receipts",
                "deliver_sm receipts that could not be read.",
                &smpp.bad_receipts,
            )?;
        }
        let latency: Vec<Buckets> = self
            .nodes
            .iter()
            .map(|n| n.stats.latency.0.lock().expect("metrics lock").clone())
            .collect();
        Buckets::encode_family(
            e,
            "smsnode_send_latency_seconds",
            "Send time of each attempt: from its start to its outcome, the gateway's latency and the node's own delay.",
            self.nodes
                .iter()
                .zip(&latency)
                .map(|(n, b)| ([("node", n.name.as_str())], b)),
        )
    }
}
