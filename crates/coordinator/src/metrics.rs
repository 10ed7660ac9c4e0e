//! The coordinator's Prometheus metrics.
//!
//! Nothing is counted twice for them: the reactor already keeps every
//! figure, and publishes them with each progress snapshot (every 200 ms, and
//! at once when a batch ends). A scrape reads the last snapshot, so metrics
//! cost dispatch nothing; the store's commit latency comes from its writer
//! thread.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use smsmesh::metrics::{Buckets, counter, family, gauge};
use smsmesh::priority::Class;
use tokio::sync::watch;

use crate::core::Snapshot;

/// Reads the reactor's published figures at scrape time.
#[derive(Debug)]
pub struct CoordinatorCollector {
    progress: watch::Receiver<Arc<Snapshot>>,
    commit_latency: Arc<Mutex<Buckets>>,
}

/// A registry holding every coordinator metric.
pub fn registry(
    progress: watch::Receiver<Arc<Snapshot>>,
    commit_latency: Arc<Mutex<Buckets>>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(CoordinatorCollector {
        progress,
        commit_latency,
    }));
    registry
}

fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn i(v: u64) -> ConstGauge {
    ConstGauge::new(sat(v))
}

impl Collector for CoordinatorCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.progress.borrow().clone();
        let m = &snap.metrics;
        let c = &m.messages;
        let e = &mut e;
        counter(
            e,
            "smsmesh_messages_accepted",
            "Messages in accepted batches.",
            c.total,
        )?;
        family(
            e,
            "smsmesh_messages",
            "Messages that reached a final outcome, by outcome.",
            MetricType::Counter,
            [
                ([("outcome", "sent")], ConstCounter::new(c.sent)),
                ([("outcome", "failed")], ConstCounter::new(c.failed)),
                ([("outcome", "cancelled")], ConstCounter::new(c.cancelled)),
            ],
        )?;
        family(
            e,
            "smsmesh_class_messages",
            "Messages that reached a final outcome, by class (emergency, high, normal, bulk) and outcome.",
            MetricType::Counter,
            Class::ALL.into_iter().flat_map(|class| {
                let c = &m.by_class[class.index()];
                [
                    ("sent", c.sent),
                    ("failed", c.failed),
                    ("cancelled", c.cancelled),
                ]
                .map(|(o, v)| {
                    (
                        [("class", class.name()), ("outcome", o)],
                        ConstCounter::new(v),
                    )
                })
            }),
        )?;
        family(
            e,
            "smsmesh_class_pending_messages",
            "Messages waiting for dispatch, by class.",
            MetricType::Gauge,
            Class::ALL.into_iter().map(|class| {
                (
                    [("class", class.name())],
                    i(m.by_class[class.index()].pending()),
                )
            }),
        )?;
        family(
            e,
            "smsmesh_class_paused",
            "1 while an operator has paused the class (SetClassPaused), else 0.",
            MetricType::Gauge,
            Class::ALL.into_iter().map(|class| {
                (
                    [("class", class.name())],
                    i(u64::from(m.paused[class.index()])),
                )
            }),
        )?;
        gauge(
            e,
            "smsmesh_messages_in_flight",
            "Messages on a node now.",
            sat(c.in_flight),
        )?;
        gauge(
            e,
            "smsmesh_messages_pending",
            "Messages waiting for dispatch, including retries in backoff.",
            sat(c.pending()),
        )?;
        counter(
            e,
            "smsmesh_retries",
            "Failed attempts scheduled again.",
            c.retried,
        )?;
        counter(
            e,
            "smsmesh_requeued",
            "Jobs taken back from a node that went away and dispatched again.",
            c.requeued,
        )?;
        counter(
            e,
            "smsmesh_resent",
            "Messages dispatched again after a coordinator restart because they may have been sent (upper bound).",
            c.resent,
        )?;
        counter(
            e,
            "smsmesh_duplicates",
            "Results for messages that already had a final outcome.",
            c.duplicates,
        )?;
        counter(
            e,
            "smsmesh_batches_accepted",
            "Batches accepted since the coordinator started.",
            m.batches_accepted,
        )?;
        gauge(
            e,
            "smsmesh_batches_running",
            "Batches not ended yet.",
            sat(m.batches_running),
        )?;
        family(
            e,
            "smsmesh_batches_ended",
            "Batches that ended, by final state.",
            MetricType::Counter,
            [
                (
                    [("state", "completed")],
                    ConstCounter::new(m.batches_completed),
                ),
                (
                    [("state", "cancelled")],
                    ConstCounter::new(m.batches_cancelled),
                ),
            ],
        )?;
        family(
            e,
            "smsmesh_batch_pending_messages",
            "Messages of a running batch waiting for dispatch.",
            MetricType::Gauge,
            m.pending_by_batch
                .iter()
                .map(|(id, n)| ([("batch_id", id.as_str())], i(*n))),
        )?;
        gauge(
            e,
            "smsmesh_nodes_connected",
            "Nodes with a stream now.",
            snap.nodes_connected.into(),
        )?;
        counter(
            e,
            "smsmesh_node_joins",
            "Node streams opened (a reconnect opens a new one).",
            m.node_joins,
        )?;
        counter(
            e,
            "smsmesh_node_protocol_errors",
            "Node streams closed because the node broke the protocol.",
            m.node_protocol_errors,
        )?;
        counter(
            e,
            "smsmesh_jobs_expired",
            "Jobs taken back from nodes that held them past --job-timeout, and sent elsewhere.",
            m.jobs_expired,
        )?;
        counter(
            e,
            "smsmesh_handoff_results_refused",
            "Results handed in by nodes for an attempt that was never dispatched, refused.",
            m.handoffs_refused,
        )?;
        counter(
            e,
            "smsmesh_attempts_unknown",
            "Attempts whose outcome the gateway never learned (no submit_sm_resp in time): retried, so the message may go out twice.",
            m.attempts_unknown,
        )?;
        counter(
            e,
            "smsmesh_attempts_throttled",
            "Attempts the provider throttled, put back to be sent again without using an attempt.",
            m.attempts_throttled,
        )?;
        family(
            e,
            "smsmesh_receipts",
            "Delivery receipts from providers, by what became of them: matched to a waiting message, early (came before their id, then matched), interim (ENROUTE/ACCEPTD), unmatched (no message waited for their id).",
            MetricType::Counter,
            [
                ("matched", m.receipts.matched),
                ("early", m.receipts.early),
                ("interim", m.receipts.interim),
                ("unmatched", m.receipts.unmatched),
            ]
            .into_iter()
            .map(|(k, v)| ([("result", k)], ConstCounter::new(v))),
        )?;
        counter(
            e,
            "smsmesh_delivery_timeouts",
            "Sent messages with no final delivery receipt within --dlr-timeout (delivery unknown).",
            m.receipts.timed_out,
        )?;
        gauge(
            e,
            "smsmesh_awaiting_receipt_messages",
            "Sent messages waiting for a final delivery receipt.",
            m.awaiting_receipt as i64,
        )?;
        gauge(
            e,
            "smsmesh_early_receipts_held",
            "Delivery receipts held now for an id no result has named yet (stored; given up after 10 minutes).",
            m.early_receipts_held as i64,
        )?;
        counter(
            e,
            "smsmesh_credits_granted",
            "Credits granted by nodes.",
            m.credits_granted,
        )?;
        gauge(
            e,
            "smsmesh_credits_outstanding",
            "Credits granted by connected nodes and not used yet.",
            sat(m.nodes.iter().map(|n| n.credit).sum()),
        )?;
        family(
            e,
            "smsmesh_attempts",
            "Send attempts reported by nodes, by node and outcome.",
            MetricType::Counter,
            m.nodes.iter().flat_map(|n| {
                [
                    (
                        [("node", n.name.as_str()), ("outcome", "sent")],
                        ConstCounter::new(n.attempts_sent),
                    ),
                    (
                        [("node", n.name.as_str()), ("outcome", "failed")],
                        ConstCounter::new(n.attempts_failed),
                    ),
                ]
            }),
        )?;
        let connected = || m.nodes.iter().filter(|n| n.connected);
        family(
            e,
            "smsmesh_node_in_flight",
            "Jobs a connected node holds now.",
            MetricType::Gauge,
            connected().map(|n| ([("node", n.name.as_str())], i(n.in_flight))),
        )?;
        family(
            e,
            "smsmesh_node_credits_outstanding",
            "Credits a connected node granted and that are not used yet.",
            MetricType::Gauge,
            connected().map(|n| ([("node", n.name.as_str())], i(n.credit))),
        )?;
        family(
            e,
            "smsmesh_node_concurrency",
            "Concurrency a connected node declared.",
            MetricType::Gauge,
            connected().map(|n| ([("node", n.name.as_str())], i(n.concurrency))),
        )?;
        m.latency.encode(
            e,
            "smsmesh_send_latency_seconds",
            "Send time of each attempt as the node measured it: from its start to its outcome, the gateway's latency and the node's own delay.",
        )?;
        let commit = self.commit_latency.lock().expect("metrics lock").clone();
        commit.encode(
            e,
            "smsmesh_store_commit_seconds",
            "Duration of each group commit of the store.",
        )?;
        Ok(())
    }
}
