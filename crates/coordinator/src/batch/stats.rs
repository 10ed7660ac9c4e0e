//! A batch's counters and latency statistics, in all and per node, as
//! GetStatus reports them.

use rustc_hash::FxHashMap;

use super::latency::Latency;

/// Each node's share of a batch: a map while the batch runs, and a boxed
/// slice, sorted by node, once the batch is compacted (a map of one entry
/// takes a few hundred bytes; a finished batch keeps only what it reports).
#[derive(Debug, Default)]
pub struct NodeShares {
    map: FxHashMap<u16, NodeShare>,
    frozen: Box<[(u16, NodeShare)]>,
}

impl NodeShares {
    /// The share of `node`, made if it has none yet.
    pub fn get_mut(&mut self, node: u16) -> &mut NodeShare {
        if !self.frozen.is_empty() {
            // A compacted batch seldom hears of again (a late duplicate): thaw it.
            let frozen = std::mem::take(&mut self.frozen);
            self.map.extend(frozen.into_vec());
        }
        self.map.entry(node).or_default()
    }

    /// Whether `node` has a share (a job of the batch went to it).
    pub fn contains(&self, node: u16) -> bool {
        self.map.contains_key(&node) || self.frozen.iter().any(|(n, _)| *n == node)
    }

    /// Every node's share, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &NodeShare)> {
        self.map
            .iter()
            .map(|(n, s)| (*n, s))
            .chain(self.frozen.iter().map(|(n, s)| (*n, s)))
    }

    /// Keeps the shares in as little memory as they need.
    pub fn freeze(&mut self) {
        let mut all: Vec<(u16, NodeShare)> = std::mem::take(&mut self.map).into_iter().collect();
        all.extend(std::mem::take(&mut self.frozen).into_vec());
        all.sort_unstable_by_key(|(n, _)| *n);
        for (_, s) in &mut all {
            s.latency.shrink();
        }
        self.frozen = all.into_boxed_slice();
    }
}

/// One node's share of a batch.
#[derive(Debug, Default)]
pub struct NodeShare {
    /// Messages sent by the node.
    pub sent: u64,
    /// Attempts that failed on the node.
    pub failed_attempts: u64,
    /// Jobs of this batch on the node now.
    pub in_flight: u64,
    /// Send time of the node's attempts.
    pub latency: Latency,
}

/// Counters of a batch; `pending` is derived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages in the batch.
    pub total: u64,
    /// Messages on a node now.
    pub in_flight: u64,
    /// Final: sent.
    pub sent: u64,
    /// Final: failed after all attempts.
    pub failed: u64,
    /// Final: cancelled before being sent.
    pub cancelled: u64,
    /// Failed attempts scheduled again.
    pub retried: u64,
    /// Jobs put back because their node went away.
    pub requeued: u64,
    /// Results for messages that already had a final outcome (re-sends).
    pub duplicates: u64,
    /// Messages dispatched again after a coordinator restart because they may have been sent.
    pub resent: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, c: Counts) {
        self.total += c.total;
        self.in_flight += c.in_flight;
        self.sent += c.sent;
        self.failed += c.failed;
        self.cancelled += c.cancelled;
        self.retried += c.retried;
        self.requeued += c.requeued;
        self.duplicates += c.duplicates;
        self.resent += c.resent;
    }
}

impl Counts {
    /// Adds what changed from `before` to `after` (counters of an ended
    /// batch only grow: a late duplicate).
    pub fn add_change(&mut self, before: Counts, after: Counts) {
        let f = |total: &mut u64, b: u64, a: u64| *total = (*total + a).saturating_sub(b);
        f(&mut self.total, before.total, after.total);
        f(&mut self.in_flight, before.in_flight, after.in_flight);
        f(&mut self.sent, before.sent, after.sent);
        f(&mut self.failed, before.failed, after.failed);
        f(&mut self.cancelled, before.cancelled, after.cancelled);
        f(&mut self.retried, before.retried, after.retried);
        f(&mut self.requeued, before.requeued, after.requeued);
        f(&mut self.duplicates, before.duplicates, after.duplicates);
        f(&mut self.resent, before.resent, after.resent);
    }

    /// Messages with a final outcome.
    pub fn finished(&self) -> u64 {
        self.sent + self.failed + self.cancelled
    }

    /// Messages waiting for dispatch (including retries in backoff).
    pub fn pending(&self) -> u64 {
        self.total - self.finished() - self.in_flight
    }
}
