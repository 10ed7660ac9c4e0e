//! Progress as others see it: the snapshot published to watchers
//! (WatchProgress, smsmon) and to `/metrics`, and a batch's status as
//! GetStatus reports it.

use std::sync::Arc;
use std::time::Instant;

use rustc_hash::{FxHashMap, FxHashSet};
use smsmesh::{BatchId, pb};

use super::Core;
use super::batches::Batches;
use super::folded::Folded;
use super::sessions::Sessions;
use crate::batch::{self, Batch, Content};

/// What progress watchers see: every running batch and those ended recently.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Status of each batch in the snapshot (an ended batch's is shared
    /// from one snapshot to the next, not made again).
    pub batches: Vec<Arc<pb::BatchStatus>>,
    /// Nodes connected now.
    pub nodes_connected: u32,
    /// Mesh-wide figures for `/metrics`.
    pub metrics: MeshMetrics,
}

/// Mesh-wide figures, as of the last snapshot: what `/metrics` shows.
#[derive(Clone, Debug)]
pub struct MeshMetrics {
    /// Message counters summed over every batch this coordinator knows.
    pub messages: batch::Counts,
    /// Batches accepted since the coordinator started.
    pub batches_accepted: u64,
    /// Batches running now.
    pub batches_running: u64,
    /// Batches that completed.
    pub batches_completed: u64,
    /// Batches cancelled.
    pub batches_cancelled: u64,
    /// Pending messages of each running batch: (batch id, pending), with
    /// `--metrics-per-batch` only.
    pub pending_by_batch: Vec<(String, u64)>,
    /// Per node name, connected or not.
    pub nodes: Vec<NodeMetrics>,
    /// Gateway latency of every attempt reported, as nodes measured it.
    pub latency: smsmesh::metrics::Buckets,
    /// Credits granted by nodes, in all.
    pub credits_granted: u64,
    /// Node streams opened (joins and re-joins).
    pub node_joins: u64,
    /// Node streams closed for breaking the protocol.
    pub node_protocol_errors: u64,
    /// Handed-in results refused because no such attempt was dispatched.
    pub handoffs_refused: u64,
    /// Jobs taken back from nodes because their lease ran out.
    pub jobs_expired: u64,
    /// Attempts whose outcome the gateway never learned (a retry may duplicate).
    pub attempts_unknown: u64,
    /// Attempts the provider throttled, put back without using an attempt.
    pub attempts_throttled: u64,
    /// Delivery receipts, as matched so far.
    pub receipts: super::ReceiptStats,
    /// Sent messages waiting for a final receipt now.
    pub awaiting_receipt: u64,
    /// Receipts held now for an id no result has named yet.
    pub early_receipts_held: u64,
    /// Message counters per class (most urgent first), over every batch.
    pub by_class: [batch::Counts; smsmesh::priority::CLASSES],
    /// Which classes are paused now.
    pub paused: [bool; smsmesh::priority::CLASSES],
}

impl Default for MeshMetrics {
    fn default() -> Self {
        MeshMetrics {
            messages: batch::Counts::default(),
            batches_accepted: 0,
            batches_running: 0,
            batches_completed: 0,
            batches_cancelled: 0,
            pending_by_batch: Vec::new(),
            nodes: Vec::new(),
            latency: smsmesh::metrics::Buckets::latency(),
            credits_granted: 0,
            node_joins: 0,
            node_protocol_errors: 0,
            handoffs_refused: 0,
            jobs_expired: 0,
            attempts_unknown: 0,
            attempts_throttled: 0,
            receipts: super::ReceiptStats::default(),
            awaiting_receipt: 0,
            early_receipts_held: 0,
            by_class: Default::default(),
            paused: [false; smsmesh::priority::CLASSES],
        }
    }
}

/// One node's figures.
#[derive(Clone, Debug, Default)]
pub struct NodeMetrics {
    /// Its name.
    pub name: String,
    /// Whether it has a stream now.
    pub connected: bool,
    /// Attempts it reported sent / failed, since the coordinator started.
    pub attempts_sent: u64,
    /// Attempts it reported failed.
    pub attempts_failed: u64,
    /// Jobs it holds now.
    pub in_flight: u64,
    /// Credit it granted and that is not used yet.
    pub credit: u64,
    /// The concurrency it declared.
    pub concurrency: u64,
}

impl Core {
    /// Whether a state change is waiting to be published.
    pub fn publish_due(&self) -> bool {
        self.batches.changed || self.sessions.changed || self.watched() != self.statuses_published
    }

    /// Whether a progress stream is open.
    fn watched(&self) -> bool {
        self.watching.receiver_count() > 0
    }

    /// Publishes a progress snapshot to watchers (unless nothing in it can
    /// have changed since the last: nothing runs, and no event came).
    pub fn publish(&mut self, now: Instant) {
        if !self.publish_due() && self.batches.quiet(now, self.config.keep_ended_in_progress) {
            return;
        }
        self.batches.changed = false;
        self.sessions.changed = false;
        self.statuses_published = self.watched();
        let keep = self.config.keep_ended_in_progress;
        self.batches.retire_due(now, keep);
        let unended: Vec<u64> = self.batches.unended().collect();
        for id in unended {
            if let Some(b) = self.batches.get_mut(id) {
                update_rate(b, now);
            }
        }
        // Statuses are made only for someone to see them: with no progress
        // stream open, a snapshot carries the figures for `/metrics` alone.
        let ids = if self.statuses_published {
            self.batches.watched()
        } else {
            Vec::new()
        };
        let mut batches = Vec::with_capacity(ids.len());
        for &id in &ids {
            let Some(b) = self.batches.get_mut(id) else {
                continue;
            };
            // An ended batch's status is made again only when its counters change.
            let delivery = self.receipts.counts(id);
            let status = match &b.status_cache {
                Some(cached) if cached.0 == b.counts && cached.1 == delivery => cached.2.clone(),
                _ => {
                    let mut status = batch_status(b, &self.sessions, now);
                    status.class_paused = self.paused[b.class.index()] && !b.is_ended();
                    let status = Arc::new(with_delivery(status, delivery));
                    if b.is_ended() {
                        b.status_cache = Some(Box::new((b.counts, delivery, status.clone())));
                    }
                    status
                }
            };
            batches.push(status);
        }
        let mut metrics = mesh_metrics(&self.batches, &self.sessions);
        metrics.receipts = self.receipts.stats;
        metrics.awaiting_receipt = self.receipts.awaiting() as u64;
        metrics.early_receipts_held = self.receipts.early_held() as u64;
        metrics.paused = self.paused;
        if self.config.metrics_per_batch {
            metrics.pending_by_batch = self
                .batches
                .running()
                .map(|b| (b.id.to_string(), b.counts.pending()))
                .collect();
        }
        self.progress.send_replace(Arc::new(Snapshot {
            batches,
            nodes_connected: self.sessions.len() as u32,
            metrics,
        }));
    }
}

/// Mesh-wide figures: counters summed over every batch, and node state now.
fn mesh_metrics(batches: &Batches, sessions: &Sessions) -> MeshMetrics {
    let stats = &sessions.stats;
    let mut m = MeshMetrics {
        batches_accepted: batches.accepted,
        latency: stats.latency.clone(),
        credits_granted: stats.credits_granted,
        node_joins: stats.joins,
        node_protocol_errors: stats.protocol_errors,
        handoffs_refused: stats.handoffs_refused,
        jobs_expired: stats.jobs_expired,
        attempts_unknown: stats.unknown,
        attempts_throttled: stats.throttled,
        ..MeshMetrics::default()
    };
    // Retired batches as summed when they retired; the live ones as they are.
    m.messages = batches.retired.counts;
    m.by_class = batches.retired.by_class;
    m.batches_completed = batches.retired.completed;
    m.batches_cancelled = batches.retired.cancelled;
    for b in batches.live().filter(|b| !b.retired) {
        m.messages += b.counts;
        m.by_class[b.class.index()] += b.counts;
        match b.state {
            pb::BatchState::Completed => m.batches_completed += 1,
            pb::BatchState::Cancelled => m.batches_cancelled += 1,
            _ => {}
        }
    }
    m.batches_running = batches.running_ids().len() as u64;
    // Every name a job went to, and every node connected now.
    let mut at: FxHashMap<u16, usize> = FxHashMap::default();
    let mut entry = |m: &mut MeshMetrics, n: u16| -> usize {
        *at.entry(n).or_insert_with(|| {
            let (sent, failed) = stats.attempts.get(n as usize).copied().unwrap_or_default();
            m.nodes.push(NodeMetrics {
                name: sessions.names.name(n).to_string(),
                attempts_sent: sent,
                attempts_failed: failed,
                ..NodeMetrics::default()
            });
            m.nodes.len() - 1
        })
    };
    for (n, _) in sessions.names.all() {
        entry(&mut m, n as u16);
    }
    for s in sessions.iter() {
        let i = entry(&mut m, s.node);
        let n = &mut m.nodes[i];
        n.connected = true;
        n.in_flight += s.held.len() as u64;
        n.credit += u64::from(s.credit);
        n.concurrency += u64::from(s.concurrency);
    }
    m
}

/// The status of batch `b`, as GetStatus and watchers see it.
pub(super) fn batch_status(b: &Batch, sessions: &Sessions, now: Instant) -> pb::BatchStatus {
    let c = b.counts;
    let connected: FxHashSet<u16> = sessions.iter().map(|s| s.node).collect();
    let mut shares: Vec<_> = b.nodes.iter().collect();
    shares.sort_unstable_by_key(|(n, _)| *n);
    let nodes = shares
        .into_iter()
        .map(|(n, s)| pb::NodeBreakdown {
            node: sessions.names.name(n).to_string(),
            sent: s.sent,
            failed_attempts: s.failed_attempts,
            in_flight: s.in_flight,
            latency: Some(s.latency.summary()),
            connected: connected.contains(&n),
        })
        .collect();
    let remaining = c.total - c.finished();
    let eta = if b.is_ended() || b.rate <= 0.0 {
        0.0
    } else {
        remaining as f64 / b.rate
    };
    let end = b.ended_at.unwrap_or(now);
    pb::BatchStatus {
        batch_id: b.id.to_string(),
        state: b.state as i32,
        total: c.total,
        pending: c.pending(),
        in_flight: c.in_flight,
        sent: c.sent,
        failed: c.failed,
        cancelled: c.cancelled,
        retried: c.retried,
        requeued: c.requeued,
        latency: Some(b.latency.summary()),
        nodes,
        max_attempts: u32::from(b.max_attempts),
        rate_per_sec: if b.is_ended() { 0.0 } else { b.rate },
        eta_seconds: eta,
        elapsed_seconds: end.saturating_duration_since(b.accepted_at).as_secs_f64(),
        resent: c.resent,
        duplicates: c.duplicates,
        tenant: b.tenant.as_str().to_string(),
        priority: b.class.to_proto() as i32,
        retry_wait: b.retries.len() as u64,
        accepted_unix_ms: b.accepted_unix_ms,
        synthetic_seed: match b.content {
            Content::Synthetic { seed, .. } => Some(seed),
            Content::Explicit(_) | Content::List { .. } => None,
        },
        ..Default::default()
    }
}

/// A batch's status with its delivery counts.
pub(super) fn with_delivery(mut s: pb::BatchStatus, d: super::DeliveryCounts) -> pb::BatchStatus {
    s.delivered = d.delivered;
    s.undelivered = d.undelivered;
    s.awaiting_receipt = d.awaiting;
    s.delivery_unknown = d.unknown;
    s
}

/// The status of folded batch `id`.
pub(super) fn folded_status(id: BatchId, f: &Folded, sessions: &Sessions) -> pb::BatchStatus {
    let c = f.counts;
    let connected: FxHashSet<u16> = sessions.iter().map(|s| s.node).collect();
    pb::BatchStatus {
        batch_id: id.to_string(),
        state: f.state() as i32,
        total: c.total,
        pending: c.pending(),
        in_flight: c.in_flight,
        sent: c.sent,
        failed: c.failed,
        cancelled: c.cancelled,
        retried: c.retried,
        requeued: c.requeued,
        latency: Some(f.latency()),
        nodes: f
            .nodes
            .iter()
            .map(|s| pb::NodeBreakdown {
                node: sessions.names.name(s.node).to_string(),
                sent: s.sent,
                failed_attempts: s.failed_attempts,
                in_flight: 0,
                // Each node's send time is not kept once a batch is folded.
                latency: None,
                connected: connected.contains(&s.node),
            })
            .collect(),
        max_attempts: u32::from(f.max_attempts),
        rate_per_sec: 0.0,
        eta_seconds: 0.0,
        elapsed_seconds: f64::from(f.elapsed_ms) / 1000.0,
        resent: c.resent,
        duplicates: c.duplicates,
        tenant: f.tenant.as_str().to_string(),
        retry_wait: 0,
        accepted_unix_ms: f.accepted_unix_ms,
        synthetic_seed: f.seed,
        ..Default::default()
    }
}

/// Updates the batch's smoothed finish rate.
fn update_rate(b: &mut Batch, now: Instant) {
    let (prev, at) = b.rate_sample;
    let dt = now.saturating_duration_since(at).as_secs_f64();
    if dt < 0.05 {
        return;
    }
    // Messages that went out (sent, or failed for good): cancelled ones are no throughput.
    let finished = b.counts.sent + b.counts.failed;
    let inst = finished.saturating_sub(prev) as f64 / dt;
    // Smooth over about two seconds.
    let alpha = 1.0 - (-dt / 2.0).exp();
    b.rate = if prev == 0 && b.rate == 0.0 {
        inst
    } else {
        alpha * inst + (1.0 - alpha) * b.rate
    };
    b.rate_sample = (finished, now);
}
