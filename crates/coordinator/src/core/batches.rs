//! The batches a core knows: each one's state, which of them still run,
//! the idempotency keys that made them, and which ended lately.
//!
//! What is walked per publish or per event is only the live batches:
//! running, stopping (cancelled, with jobs out) and recently ended. A batch
//! that has been ended for a while is *retired*: its counters are added to
//! [`Retired`] once, and nothing walks it again.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use smsmesh::{BatchId, Error};

use crate::auth::Tenant;
use crate::batch::{Batch, Counts};

/// Most batches in the progress snapshot: the newest of those live.
pub(super) const MAX_SNAPSHOT: usize = 1000;

/// The summed counters of retired batches.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Retired {
    /// Their message counters, summed.
    pub(super) counts: Counts,
    /// How many completed.
    pub(super) completed: u64,
    /// How many were cancelled.
    pub(super) cancelled: u64,
}

/// Every batch, with an index of those that run.
#[derive(Default)]
pub(super) struct Batches {
    map: FxHashMap<u64, Batch>,
    /// Batches still dispatching, in submission order. Each is in `map`.
    running: Vec<u64>,
    /// Every batch by (acceptance time in Unix ms, order of insertion):
    /// ListBatches' order. The second part tells apart batches accepted in
    /// the same millisecond (after a restart, in the order they were loaded).
    order: BTreeMap<(u64, u64), u64>,
    /// Batches cancelled whose jobs in flight are not all back yet.
    stopping: Vec<u64>,
    /// Counters of the batches retired from the snapshot, summed.
    pub(super) retired: Retired,
    /// Retired batches whose counters changed since (late duplicates).
    touched_retired: Vec<u64>,
    /// Idempotency key (as stored) → the batch it made.
    idempotency: FxHashMap<String, BatchId>,
    /// Batches that ended, for the progress snapshot: (when, id).
    recently_ended: VecDeque<(Instant, u64)>,
    /// Batches that ended since their state was last taken for the store.
    ended_unstored: Vec<u64>,
    /// Batches accepted since the coordinator started.
    pub(super) accepted: u64,
    /// Set when a batch was accepted, cancelled or ended: watchers should see it at once.
    pub(super) changed: bool,
}

impl Batches {
    /// Batch `id`.
    pub(super) fn get(&self, id: u64) -> Option<&Batch> {
        self.map.get(&id)
    }

    /// Batch `id`, mutably.
    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Batch> {
        self.map.get_mut(&id)
    }

    /// Batch `id` if `tenant` owns it: another tenant's batch is not found,
    /// exactly like one that does not exist.
    pub(super) fn owned(&self, id: BatchId, tenant: &Tenant) -> Result<&Batch, Error> {
        self.map
            .get(&id.0)
            .filter(|b| b.tenant == *tenant)
            .ok_or_else(|| not_found(id))
    }

    /// Batch `id` if `tenant` owns it, mutably.
    pub(super) fn owned_mut(&mut self, id: BatchId, tenant: &Tenant) -> Result<&mut Batch, Error> {
        self.map
            .get_mut(&id.0)
            .filter(|b| b.tenant == *tenant)
            .ok_or_else(|| not_found(id))
    }

    /// The batch an idempotency key made, if any.
    pub(super) fn by_key(&self, key: &str) -> Option<BatchId> {
        self.idempotency.get(key).copied()
    }

    /// Remembers that idempotency key `key` made batch `id`.
    pub(super) fn key(&mut self, key: String, id: BatchId) {
        if let Some(b) = self.map.get_mut(&id.0) {
            b.key = Some(key.clone());
        }
        self.idempotency.insert(key, id);
    }

    /// Removes ended batches accepted before `cutoff_unix_ms` (retired ones
    /// only), looking at no more than `scan` of the oldest. Returns each
    /// removed id with its idempotency key. Their counters stay in the totals.
    pub(super) fn expire(
        &mut self,
        cutoff_unix_ms: u64,
        scan: usize,
    ) -> Vec<(u64, Option<String>)> {
        let old: Vec<((u64, u64), u64)> = self
            .order
            .range(..(cutoff_unix_ms, 0))
            .take(scan)
            .map(|(at, id)| (*at, *id))
            .collect();
        let mut gone = Vec::new();
        for (at, id) in old {
            let Some(b) = self.map.get(&id) else {
                self.order.remove(&at);
                continue;
            };
            if b.retired.is_none() {
                continue; // running, or ended too lately to be out of the snapshot
            }
            let b = self.map.remove(&id).expect("looked up above");
            self.order.remove(&at);
            if let Some(k) = &b.key {
                self.idempotency.remove(k);
            }
            gone.push((id, b.key));
        }
        gone
    }

    /// Adds a batch; it runs unless it is already cancelled or ended (when
    /// loaded from the store). One that ended is retired at once.
    pub(super) fn insert(&mut self, b: Batch) {
        let id = b.id.0;
        let ended = b.is_ended();
        if b.is_running() {
            self.running.push(id);
        } else if !ended {
            self.stopping.push(id);
        }
        self.changed = true;
        let seq = self.order.len() as u64;
        self.order.insert((b.accepted_unix_ms, seq), id);
        self.map.insert(id, b);
        if ended {
            self.retire(id);
        }
    }

    /// Adds an ended batch's counters to the totals, once; nothing walks it after.
    fn retire(&mut self, id: u64) {
        let Some(b) = self.map.get_mut(&id) else {
            return;
        };
        if b.retired.is_some() {
            return;
        }
        b.retired = Some(b.counts);
        b.status_cache = None;
        self.retired.counts += b.counts;
        match b.state {
            smsmesh::pb::BatchState::Completed => self.retired.completed += 1,
            smsmesh::pb::BatchState::Cancelled => self.retired.cancelled += 1,
            _ => {}
        }
    }

    /// Results changed the counters of these batches: those retired have
    /// their change added to the totals (at the next [`watched`](Self::watched)).
    pub(super) fn touched(&mut self, ids: impl IntoIterator<Item = u64>) {
        let mut last = None;
        for id in ids {
            // A frame's results are mostly of one batch: look each up once.
            if last == Some(id) {
                continue;
            }
            last = Some(id);
            if self.map.get(&id).is_some_and(|b| b.retired.is_some()) {
                self.touched_retired.push(id);
            }
        }
    }

    /// Puts the running batches in submission order (after a recovery).
    pub(super) fn sort_running(&mut self) {
        let map = &self.map;
        self.running.sort_by_key(|id| map[id].accepted_at);
    }

    /// Ids of the running batches, in submission order.
    pub(super) fn running_ids(&self) -> &[u64] {
        &self.running
    }

    /// The `k`-th running batch.
    pub(super) fn running_mut(&mut self, k: usize) -> &mut Batch {
        let id = self.running[k];
        self.map
            .get_mut(&id)
            .expect("a running batch is in the map")
    }

    /// The running batches, in submission order.
    pub(super) fn running(&self) -> impl Iterator<Item = &Batch> {
        self.running.iter().map(|id| &self.map[id])
    }

    /// The live batches: running, stopping, and ended but not retired yet.
    pub(super) fn live(&self) -> impl Iterator<Item = &Batch> {
        self.running
            .iter()
            .chain(&self.stopping)
            .chain(self.recently_ended.iter().map(|(_, id)| id))
            .filter_map(|id| self.map.get(id))
    }

    /// Batch `id` no longer dispatches (it was cancelled); it may still have jobs out.
    pub(super) fn stopped(&mut self, id: u64) {
        self.running.retain(|&r| r != id);
        self.stopping.push(id);
        self.changed = true;
    }

    /// Bookkeeping once batch `id` reached its final state.
    pub(super) fn ended(&mut self, id: u64, now: Instant) {
        if let Some(b) = self.map.get(&id) {
            tracing::info!(batch = %b.id, state = ?b.state, sent = b.counts.sent, failed = b.counts.failed, cancelled = b.counts.cancelled, "batch ended");
        }
        self.running.retain(|&r| r != id);
        self.stopping.retain(|&r| r != id);
        self.recently_ended.push_back((now, id));
        self.ended_unstored.push(id);
        self.changed = true;
    }

    /// The batches whose state the store may lack: those running, and those
    /// that ended since [`states_taken`](Self::states_taken) (their last
    /// counters).
    pub(super) fn unsettled(&self) -> impl Iterator<Item = &Batch> {
        self.running
            .iter()
            .chain(&self.ended_unstored)
            .filter_map(|id| self.map.get(id))
    }

    /// The states of [`unsettled`](Self::unsettled) batches were taken for the store.
    pub(super) fn states_taken(&mut self) {
        self.ended_unstored.clear();
    }

    /// The batches watchers see, in submission order: every one not ended,
    /// and those that ended within `keep`, at most [`MAX_SNAPSHOT`] (the
    /// newest). Batches ended longer ago, or beyond the newest
    /// [`MAX_SNAPSHOT`] ended ones, are retired here.
    pub(super) fn watched(&mut self, now: Instant, keep: Duration) -> Vec<u64> {
        while let Some(&(t, id)) = self.recently_ended.front() {
            if now.saturating_duration_since(t) <= keep && self.recently_ended.len() <= MAX_SNAPSHOT
            {
                break;
            }
            self.recently_ended.pop_front();
            self.retire(id);
        }
        for id in std::mem::take(&mut self.touched_retired) {
            if let Some(b) = self.map.get_mut(&id)
                && let Some(before) = b.retired.replace(b.counts)
            {
                self.retired.counts.add_change(before, b.counts);
            }
        }
        let mut ids: Vec<u64> = self
            .running
            .iter()
            .chain(&self.stopping)
            .chain(self.recently_ended.iter().map(|(_, id)| id))
            .copied()
            .collect();
        let map = &self.map;
        ids.sort_by_key(|id| map[id].accepted_at);
        ids.dedup();
        if ids.len() > MAX_SNAPSHOT {
            ids.drain(..ids.len() - MAX_SNAPSHOT);
        }
        ids
    }

    /// Batches of `tenant` for which `keep` holds, newest first: at most
    /// `limit`, accepted before `before` (a position in `order`; `None`:
    /// from the newest), looking at no more than `scan` batches. Returns them
    /// and where to go on, if any batch is left.
    pub(super) fn list(
        &self,
        tenant: &Tenant,
        keep: impl Fn(&Batch) -> bool,
        limit: usize,
        before: Option<(u64, u64)>,
        scan: usize,
    ) -> (Vec<&Batch>, Option<(u64, u64)>) {
        let range = match before {
            Some(at) => self.order.range(..at),
            None => self.order.range(..),
        };
        let mut found = Vec::new();
        let mut last = None;
        for (looked, (&at, id)) in range.rev().enumerate() {
            if looked == scan || found.len() == limit {
                return (found, last);
            }
            last = Some(at);
            if let Some(b) = self.map.get(id)
                && b.tenant == *tenant
                && keep(b)
            {
                found.push(b);
            }
        }
        (found, None)
    }

    /// When the next retry backoff (or resume grace) of a running batch ends, if any.
    pub(super) fn next_retry_due(&self) -> Option<Instant> {
        self.running().filter_map(Batch::next_retry).min()
    }

    /// Messages of `tenant` not finished yet (pending or in flight).
    pub(super) fn tenant_unfinished(&self, tenant: &Tenant) -> u64 {
        self.running()
            .filter(|b| b.tenant == *tenant)
            .map(|b| b.counts.total - b.counts.finished())
            .sum()
    }
}

fn not_found(id: BatchId) -> Error {
    Error::NotFound(format!(
        "batch {id} not found (ended batches are kept for --retention, then removed)"
    ))
}
