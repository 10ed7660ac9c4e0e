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

use super::folded::Folded;
use crate::auth::Tenant;
use crate::batch::{Batch, Counts};

/// A batch as the core keeps it: whole, or folded once completed and stored.
enum Entry {
    Full(Box<Batch>),
    Folded(Box<Folded>),
}

/// What ListBatches shows of a batch, whichever way it is kept.
#[derive(Clone, Copy, Debug)]
pub(super) struct Summary {
    pub(super) id: u64,
    pub(super) state: smsmesh::pb::BatchState,
    pub(super) counts: Counts,
    pub(super) accepted_unix_ms: u64,
    pub(super) class: smsmesh::priority::Class,
}

impl Entry {
    fn full(&self) -> Option<&Batch> {
        match self {
            Entry::Full(b) => Some(b),
            Entry::Folded(_) => None,
        }
    }

    fn full_mut(&mut self) -> Option<&mut Batch> {
        match self {
            Entry::Full(b) => Some(b),
            Entry::Folded(_) => None,
        }
    }

    fn tenant(&self) -> &Tenant {
        match self {
            Entry::Full(b) => &b.tenant,
            Entry::Folded(f) => &f.tenant,
        }
    }

    fn summary(&self, id: u64) -> Summary {
        match self {
            Entry::Full(b) => Summary {
                id,
                state: b.state,
                counts: b.counts,
                accepted_unix_ms: b.accepted_unix_ms,
                class: b.class,
            },
            Entry::Folded(f) => Summary {
                id,
                state: f.state(),
                counts: f.counts,
                accepted_unix_ms: f.accepted_unix_ms,
                class: f.class,
            },
        }
    }
}

/// A batch a tenant asked for: whole, or folded.
pub(super) enum Found<'a> {
    Full(&'a Batch),
    Folded(&'a Folded),
}

/// Most batches in the progress snapshot: the newest of those live.
pub(super) const MAX_SNAPSHOT: usize = 1000;

/// The summed counters of retired batches.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Retired {
    /// Their message counters, summed.
    pub(super) counts: Counts,
    /// The same, per class.
    pub(super) by_class: [Counts; smsmesh::priority::CLASSES],
    /// How many completed.
    pub(super) completed: u64,
    /// How many were cancelled.
    pub(super) cancelled: u64,
}

/// Every batch, with an index of those that run.
#[derive(Default)]
pub(super) struct Batches {
    /// Boxed: a map's spare slots then cost a pointer, not a whole batch.
    map: FxHashMap<u64, Entry>,
    /// Retired completed batches to fold once the commit now being made
    /// (which holds the last of their outcomes) is stored.
    to_fold: Vec<u64>,
    /// Whether completed batches fold (only with a store to read them back from).
    folding: bool,
    /// Batches still dispatching, in submission order. Each is in `map`.
    running: Vec<u64>,
    /// Every batch by (acceptance time in Unix ms, order of insertion):
    /// ListBatches' order. The second part tells apart batches accepted in
    /// the same millisecond (after a restart, in the order they were loaded).
    order: BTreeMap<(u64, u64), u64>,
    /// The next insertion order number (the second part of `order`'s keys).
    seq: u64,
    /// Entries of `order` loaded at start, added at once by [`sort_running`](Self::sort_running).
    loaded_order: Vec<((u64, u64), u64)>,
    /// Batches cancelled whose jobs in flight are not all back yet.
    stopping: Vec<u64>,
    /// Counters of the batches retired from the snapshot, summed.
    pub(super) retired: Retired,
    /// Retired batches whose counters changed since (late duplicates), with
    /// their counters before.
    touched_retired: FxHashMap<u64, Counts>,
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
    /// No batches yet; completed ones fold when `durable` (their messages
    /// can be read back from the store).
    pub(super) fn new(durable: bool) -> Self {
        Batches {
            folding: durable,
            ..Batches::default()
        }
    }

    /// Batch `id`.
    pub(super) fn get(&self, id: u64) -> Option<&Batch> {
        self.map.get(&id).and_then(Entry::full)
    }

    /// Batch `id`, mutably.
    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Batch> {
        self.map.get_mut(&id).and_then(Entry::full_mut)
    }

    /// Batch `id` if it is folded.
    pub(super) fn folded_mut(&mut self, id: u64) -> Option<&mut Folded> {
        match self.map.get_mut(&id)? {
            Entry::Folded(f) => Some(f),
            Entry::Full(_) => None,
        }
    }

    /// Batch `id`, whichever way it is kept, if `tenant` owns it: another
    /// tenant's batch is not found, exactly like one that does not exist.
    pub(super) fn found(&self, id: BatchId, tenant: &Tenant) -> Result<Found<'_>, Error> {
        match self.map.get(&id.0).filter(|e| e.tenant() == tenant) {
            Some(Entry::Full(b)) => Ok(Found::Full(b)),
            Some(Entry::Folded(f)) => Ok(Found::Folded(f)),
            None => Err(not_found(id)),
        }
    }

    /// The total and fingerprint of batch `id`, whichever way it is kept.
    pub(super) fn total_and_fingerprint(&self, id: u64) -> Option<(u64, u64)> {
        self.map.get(&id).map(|e| match e {
            Entry::Full(b) => (b.counts.total, b.fingerprint),
            Entry::Folded(f) => (f.counts.total, f.fingerprint),
        })
    }

    /// Batch `id` if `tenant` owns it, mutably.
    pub(super) fn owned_mut(&mut self, id: BatchId, tenant: &Tenant) -> Result<&mut Batch, Error> {
        self.get_mut(id.0)
            .filter(|b| b.tenant == *tenant)
            .ok_or_else(|| not_found(id))
    }

    /// The batch an idempotency key made, if any.
    pub(super) fn by_key(&self, key: &str) -> Option<BatchId> {
        self.idempotency.get(key).copied()
    }

    /// Remembers that idempotency key `key` made batch `id`.
    pub(super) fn key(&mut self, key: String, id: BatchId) {
        match self.map.get_mut(&id.0) {
            Some(Entry::Full(b)) => b.key = Some(key.clone()),
            Some(Entry::Folded(f)) => f.key = Some(key.as_str().into()),
            None => {}
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
    ) -> Vec<(u64, Option<String>, Vec<u16>)> {
        let old: Vec<((u64, u64), u64)> = self
            .order
            .range(..(cutoff_unix_ms, 0))
            .take(scan)
            .map(|(at, id)| (*at, *id))
            .collect();
        let mut gone = Vec::new();
        for (at, id) in old {
            let Some(e) = self.map.get(&id) else {
                self.order.remove(&at);
                continue;
            };
            if e.full().is_some_and(|b| !b.retired) {
                continue; // running, or ended too lately to be out of the snapshot
            }
            let (key, nodes) = match self.map.remove(&id).expect("looked up above") {
                Entry::Full(b) => (b.key, b.nodes.iter().map(|(n, _)| n).collect()),
                Entry::Folded(f) => (
                    f.key.map(String::from),
                    f.nodes.iter().map(|s| s.node).collect(),
                ),
            };
            self.order.remove(&at);
            if let Some(k) = &key {
                self.idempotency.remove(k);
            }
            gone.push((id, key, nodes));
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
        self.seq += 1;
        self.order.insert((b.accepted_unix_ms, self.seq), id);
        self.map.insert(id, Entry::Full(Box::new(b)));
        if ended {
            self.retire(id);
        }
    }

    /// Adds a folded batch (loaded from the store) to the totals and the order.
    pub(super) fn insert_folded(&mut self, id: u64, f: Folded) {
        self.seq += 1;
        self.loaded_order.push(((f.accepted_unix_ms, self.seq), id));
        self.retired.counts += f.counts;
        self.retired.by_class[f.class.index()] += f.counts;
        self.retired.completed += 1;
        self.map.insert(id, Entry::Folded(Box::new(f)));
    }

    /// Makes room for `n` more batches at once (a recovery).
    pub(super) fn reserve(&mut self, n: usize) {
        self.map.reserve(n);
    }

    /// The batches retired since the last call, to fold once what is being
    /// committed now is stored.
    pub(super) fn take_to_fold(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.to_fold)
    }

    /// Whether retired batches wait for a commit to fold.
    pub(super) fn folds_waiting(&self) -> bool {
        !self.to_fold.is_empty()
    }

    /// Folds batch `id` (see [`Folded`]), if it is still a retired completed batch.
    pub(super) fn fold(&mut self, id: u64) -> bool {
        let Some(entry) = self.map.get_mut(&id) else {
            return false;
        };
        let Entry::Full(b) = entry else {
            return false;
        };
        if !b.retired || b.state != smsmesh::pb::BatchState::Completed {
            return false;
        }
        *entry = Entry::Folded(Box::new(Folded::of(b)));
        true
    }

    /// Adds an ended batch's counters to the totals, once; nothing walks it after.
    fn retire(&mut self, id: u64) {
        let Some(b) = self.map.get_mut(&id).and_then(Entry::full_mut) else {
            return;
        };
        if b.retired {
            return;
        }
        b.retired = true;
        b.status_cache = None;
        b.compact();
        if self.folding && b.state == smsmesh::pb::BatchState::Completed {
            self.to_fold.push(id);
        }
        self.retired.counts += b.counts;
        self.retired.by_class[b.class.index()] += b.counts;
        match b.state {
            smsmesh::pb::BatchState::Completed => self.retired.completed += 1,
            smsmesh::pb::BatchState::Cancelled => self.retired.cancelled += 1,
            _ => {}
        }
    }

    /// Results are about to change the counters of these batches: of those
    /// retired, the counters before are kept, so that the change is added to
    /// the totals (at the next [`watched`](Self::watched)).
    pub(super) fn touching(&mut self, ids: impl IntoIterator<Item = u64>) {
        let mut last = None;
        for id in ids {
            // A frame's results are mostly of one batch: look each up once.
            if last == Some(id) {
                continue;
            }
            last = Some(id);
            let before = match self.map.get(&id) {
                Some(Entry::Full(b)) if b.retired => b.counts,
                Some(Entry::Folded(f)) => f.counts,
                _ => continue,
            };
            // The earliest counters since the last publication.
            self.touched_retired.entry(id).or_insert(before);
        }
    }

    /// Puts the running batches in submission order, and the folded ones
    /// in the acceptance order, after a recovery.
    pub(super) fn sort_running(&mut self) {
        if !self.loaded_order.is_empty() {
            // Built at once from sorted entries: a million random inserts take seconds.
            let mut all = std::mem::take(&mut self.loaded_order);
            all.extend(std::mem::take(&mut self.order));
            self.order = all.into_iter().collect();
        }
        let map = &self.map;
        self.running
            .sort_by_key(|id| map.get(id).and_then(Entry::full).map(|b| b.accepted_at));
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
            .and_then(Entry::full_mut)
            .expect("a running batch is in the map, whole")
    }

    /// The running batches, in submission order.
    pub(super) fn running(&self) -> impl Iterator<Item = &Batch> {
        self.running.iter().filter_map(|id| self.get(*id))
    }

    /// The live batches: running, stopping, and ended but not retired yet.
    pub(super) fn live(&self) -> impl Iterator<Item = &Batch> {
        self.running
            .iter()
            .chain(&self.stopping)
            .chain(self.recently_ended.iter().map(|(_, id)| id))
            .filter_map(|id| self.get(*id))
    }

    /// Batch `id` no longer dispatches (it was cancelled); it may still have jobs out.
    pub(super) fn stopped(&mut self, id: u64) {
        self.running.retain(|&r| r != id);
        self.stopping.push(id);
        self.changed = true;
    }

    /// Bookkeeping once batch `id` reached its final state.
    pub(super) fn ended(&mut self, id: u64, now: Instant) {
        if let Some(b) = self.get(id) {
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
            .filter_map(|id| self.get(*id))
    }

    /// The batches that ended since [`states_taken`](Self::states_taken).
    pub(super) fn ended_since_taken(&self) -> impl Iterator<Item = &Batch> {
        self.ended_unstored.iter().filter_map(|id| self.get(*id))
    }

    /// The states of [`unsettled`](Self::unsettled) batches were taken for the store.
    pub(super) fn states_taken(&mut self) {
        self.ended_unstored.clear();
    }

    /// Retires the batches that leave the snapshot: ended longer than `keep`
    /// ago, or beyond the newest [`MAX_SNAPSHOT`] ended ones; and adds the
    /// late changes of retired batches to the totals.
    pub(super) fn retire_due(&mut self, now: Instant, keep: Duration) {
        while let Some(&(t, id)) = self.recently_ended.front() {
            if now.saturating_duration_since(t) <= keep && self.recently_ended.len() <= MAX_SNAPSHOT
            {
                break;
            }
            self.recently_ended.pop_front();
            self.retire(id);
        }
        for (id, before) in std::mem::take(&mut self.touched_retired) {
            let (after, class) = match self.map.get(&id) {
                Some(Entry::Full(b)) => (b.counts, b.class),
                Some(Entry::Folded(f)) => (f.counts, f.class),
                None => continue,
            };
            self.retired.counts.add_change(before, after);
            self.retired.by_class[class.index()].add_change(before, after);
        }
    }

    /// Batches that are not ended: running, or cancelled with jobs still out.
    pub(super) fn unended(&self) -> impl Iterator<Item = u64> + '_ {
        self.running.iter().chain(&self.stopping).copied()
    }

    /// The batches watchers see, in submission order: every one not ended,
    /// and those that ended within the `keep` of the last
    /// [`retire_due`](Self::retire_due), at most [`MAX_SNAPSHOT`] (the newest).
    pub(super) fn watched(&self) -> Vec<u64> {
        let mut ids: Vec<(Instant, u64)> = self
            .unended()
            .chain(self.recently_ended.iter().map(|(_, id)| *id))
            .filter_map(|id| Some((self.get(id)?.accepted_at, id)))
            .collect();
        ids.sort_unstable();
        ids.dedup_by_key(|(_, id)| *id);
        let skip = ids.len().saturating_sub(MAX_SNAPSHOT);
        ids.into_iter().skip(skip).map(|(_, id)| id).collect()
    }

    /// Whether a snapshot made now would be the last one again: nothing
    /// runs or stops, no late result came, and no ended batch is due to
    /// leave the snapshot (it is `keep` old, or one too many).
    pub(super) fn quiet(&self, now: Instant, keep: Duration) -> bool {
        self.running.is_empty()
            && self.stopping.is_empty()
            && self.touched_retired.is_empty()
            && self.recently_ended.len() <= MAX_SNAPSHOT
            && self
                .recently_ended
                .front()
                .is_none_or(|(t, _)| now.saturating_duration_since(*t) <= keep)
    }

    /// Batches of `tenant` for which `keep` holds, newest first: at most
    /// `limit`, accepted before `before` (a position in `order`; `None`:
    /// from the newest), looking at no more than `scan` batches. Returns them
    /// and where to go on, if any batch is left.
    pub(super) fn list(
        &self,
        tenant: &Tenant,
        keep: impl Fn(&Summary) -> bool,
        limit: usize,
        before: Option<(u64, u64)>,
        scan: usize,
    ) -> (Vec<Summary>, Option<(u64, u64)>) {
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
            if let Some(e) = self.map.get(id)
                && e.tenant() == tenant
            {
                let summary = e.summary(*id);
                if keep(&summary) {
                    found.push(summary);
                }
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
