//! A batch's counters and latency statistics, in all and per node, as
//! GetStatus reports them.

use hdrhistogram::Histogram;

/// One node's share of a batch.
#[derive(Debug)]
pub struct NodeShare {
    /// Messages sent by the node.
    pub sent: u64,
    /// Attempts that failed on the node.
    pub failed_attempts: u64,
    /// Jobs of this batch on the node now.
    pub in_flight: u64,
    /// Gateway latency of the node's attempts, microseconds.
    pub latency: Histogram<u32>,
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
    /// Messages with a final outcome.
    pub fn finished(&self) -> u64 {
        self.sent + self.failed + self.cancelled
    }

    /// Messages waiting for dispatch (including retries in backoff).
    pub fn pending(&self) -> u64 {
        self.total - self.finished() - self.in_flight
    }
}

/// A latency histogram: 1 µs to 1 hour, 2 significant digits.
pub fn new_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds")
}
