//! The jobs one node holds, kept in two generations by when they were
//! dispatched, so that job leases expire without a timestamp per job.

use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;

/// A job: (batch, index).
type Job = (u64, u32);

/// The jobs a node holds.
pub(super) struct Held {
    /// Jobs dispatched in the current lease period.
    young: FxHashSet<Job>,
    /// Jobs dispatched in the period before.
    old: FxHashSet<Job>,
    /// When the current period began.
    since: Instant,
}

impl Held {
    pub(super) fn new(now: Instant) -> Self {
        Held {
            young: FxHashSet::default(),
            old: FxHashSet::default(),
            since: now,
        }
    }

    /// The node holds `job` from now on.
    pub(super) fn insert(&mut self, job: Job) {
        self.young.insert(job);
    }

    /// The node no longer holds `job`; false if it did not.
    pub(super) fn remove(&mut self, job: &Job) -> bool {
        self.young.remove(job) || self.old.remove(job)
    }

    /// How many jobs the node holds.
    pub(super) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether the node holds none.
    pub(super) fn is_empty(&self) -> bool {
        self.young.is_empty() && self.old.is_empty()
    }

    /// Every job held.
    pub(super) fn into_jobs(self) -> impl Iterator<Item = Job> {
        self.young.into_iter().chain(self.old)
    }

    /// Once a `lease` period has passed, takes back the jobs dispatched in
    /// the period before it: a job is taken back between one and two leases
    /// after it was dispatched.
    pub(super) fn expire(&mut self, now: Instant, lease: Duration) -> Vec<Job> {
        if now.saturating_duration_since(self.since) < lease {
            return Vec::new();
        }
        self.since = now;
        let gone = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
        gone.into_iter().collect()
    }
}
