//! A completed batch kept small. Once a durable coordinator's completed
//! batch is out of the progress snapshot and its outcomes are stored, it is
//! *folded*: only what its status reports stays in memory (counters, send
//! time, each node's share), about 250 bytes, not its messages. What one of
//! its messages was and became is read from the store when asked for.
//!
//! Cancelled batches are not folded: a node may still hand in a send of a
//! message the cancel caught, and only the message's state tells that apart
//! from a duplicate.

use smsmesh::pb::{self, BatchState};

use crate::auth::Tenant;
use crate::batch::{Batch, Content, Counts};

/// One node's share of a folded batch.
#[derive(Clone, Copy, Debug)]
pub(super) struct FoldedShare {
    /// The node (index in the name table).
    pub(super) node: u16,
    /// Messages it sent.
    pub(super) sent: u64,
    /// Attempts that failed on it.
    pub(super) failed_attempts: u64,
}

/// What a folded batch keeps.
#[derive(Debug)]
pub(super) struct Folded {
    /// Who owns it.
    pub(super) tenant: Tenant,
    /// Attempts per message.
    pub(super) max_attempts: u8,
    /// Its class.
    pub(super) class: smsmesh::priority::Class,
    /// From acceptance to completion, milliseconds (saturating).
    pub(super) elapsed_ms: u32,
    /// Its counters (a late duplicate still adds to them).
    pub(super) counts: Counts,
    /// When it was accepted, Unix ms.
    pub(super) accepted_unix_ms: u64,
    /// Fingerprint of the request that made it.
    pub(super) fingerprint: u64,
    /// The seed of a synthetic batch.
    pub(super) seed: Option<u64>,
    /// Its idempotency key, as stored.
    pub(super) key: Option<Box<str>>,
    /// Send time of all attempts: count, then mean, p50, p95, p99 and max in ms.
    pub(super) latency: (u64, [f32; 5]),
    /// Each node's share, by node.
    pub(super) nodes: Box<[FoldedShare]>,
}

impl Folded {
    /// The folded form of completed batch `b`.
    pub(super) fn of(b: &Batch) -> Folded {
        let l = b.latency.summary();
        let mut nodes: Vec<FoldedShare> = b
            .nodes
            .iter()
            .map(|(node, s)| FoldedShare {
                node,
                sent: s.sent,
                failed_attempts: s.failed_attempts,
            })
            .collect();
        nodes.sort_unstable_by_key(|s| s.node);
        let end = b.ended_at.unwrap_or(b.accepted_at);
        Folded {
            tenant: b.tenant.clone(),
            max_attempts: b.max_attempts,
            class: b.class,
            elapsed_ms: end
                .saturating_duration_since(b.accepted_at)
                .as_millis()
                .min(u128::from(u32::MAX)) as u32,
            counts: b.counts,
            accepted_unix_ms: b.accepted_unix_ms,
            fingerprint: b.fingerprint,
            seed: match b.content {
                Content::Synthetic { seed, .. } => Some(seed),
                _ => None,
            },
            key: b.key.as_deref().map(Box::from),
            latency: (
                l.count,
                [l.mean_ms, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms].map(|v| v as f32),
            ),
            nodes: nodes.into_boxed_slice(),
        }
    }

    /// Its state: folded batches are completed ones.
    pub(super) fn state(&self) -> BatchState {
        BatchState::Completed
    }

    /// Send time as GetStatus reports it.
    pub(super) fn latency(&self) -> pb::Latency {
        let (count, [mean, p50, p95, p99, max]) = self.latency;
        pb::Latency {
            count,
            mean_ms: f64::from(mean),
            p50_ms: f64::from(p50),
            p95_ms: f64::from(p95),
            p99_ms: f64::from(p99),
            max_ms: f64::from(max),
        }
    }
}
