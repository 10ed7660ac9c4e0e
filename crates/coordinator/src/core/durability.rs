//! What the core owes the store, and what waits for the store: outcomes and
//! batch states not yet handed to it, dispatch reservations (fresh messages
//! are dispatched only below a mark already stored), and acks (a node's
//! results are acked only once stored).
//!
//! Without a store the same path runs: a group is "stored" the moment it is
//! taken, and reservations cover every message.

use std::time::Instant;

use rustc_hash::FxHashMap;

use super::{Core, Outbox, SessionId};
use crate::batch::Batch;
use crate::store::{Outcome, ReceiptWrite, StoredBatchState, WriteSet};

/// The dispatch reservation a new batch is stored with: its first messages,
/// up to this many, may go out as soon as the batch itself is stored,
/// without a commit of their own. It is the smallest reservation made later
/// (see `reservation_due`).
pub const INITIAL_RESERVATION: u32 = 256;

/// Outcomes enough for a group commit to go without waiting for the commit interval.
const URGENT_OUTCOMES: usize = 4096;

/// What becomes true once a group of writes is stored.
#[derive(Debug, Default)]
pub struct Committed {
    /// Acks for Results frames whose outcomes are in the group.
    pub acks: Vec<(SessionId, u64)>,
    /// Dispatch reservations in the group: (batch, mark).
    pub reservations: Vec<(u64, u32)>,
    /// Completed batches retired before the group was taken: all their
    /// outcomes are stored once it is, so they may fold.
    pub fold: Vec<u64>,
    /// Rows of callback events in the group, for the callback sender.
    pub callbacks: Vec<(u64, std::sync::Arc<crate::store::CallbackRow>)>,
}

/// Acks of nodes' Results frames, per session, on their way: recorded, then
/// stored, then sent (with the next Jobs frame, on a tick, or at once when no
/// Jobs frame will come).
#[derive(Default)]
pub(super) struct Acks {
    /// Highest Results seq recorded and not yet in a group being stored.
    due: FxHashMap<SessionId, u64>,
    /// Highest Results seq stored and not yet acked to the node.
    ready: FxHashMap<SessionId, u64>,
}

impl Acks {
    /// The session's Results frame `seq` is recorded: its ack is due once stored.
    pub(super) fn recorded(&mut self, sid: SessionId, seq: u64) {
        let due = self.due.entry(sid).or_insert(seq);
        *due = (*due).max(seq);
    }

    /// Takes the acks that the next group stores.
    fn take_due(&mut self) -> Vec<(SessionId, u64)> {
        self.due.drain().collect()
    }

    /// The session's frames up to `seq` are stored: their ack may go out.
    /// Returns the highest stored seq not yet acked.
    fn stored(&mut self, sid: SessionId, seq: u64) -> u64 {
        let ready = self.ready.entry(sid).or_insert(seq);
        *ready = (*ready).max(seq);
        *ready
    }

    /// Takes the ack that waits to be sent to `sid`, if any.
    pub(super) fn take_ready(&mut self, sid: SessionId) -> Option<u64> {
        self.ready.remove(&sid)
    }

    /// Takes every ack that waits to be sent.
    pub(super) fn take_all_ready(&mut self) -> Vec<(SessionId, u64)> {
        self.ready.drain().collect()
    }

    /// The session is gone: nothing more is acked to it.
    pub(super) fn forget(&mut self, sid: SessionId) {
        self.due.remove(&sid);
        self.ready.remove(&sid);
    }
}

/// Changes not yet handed to the store, and what the store holds of each batch.
pub(super) struct Durability {
    /// Whether a store backs this core (then dispatch waits for reservations).
    durable: bool,
    /// Changes not yet handed to the store.
    write: WriteSet,
    /// Where in `write.receipts` each message's latest wait is: a later write
    /// of the same message replaces it there, so a message sent and decided
    /// within one group is stored once, not inserted and then removed.
    waits_at: FxHashMap<(u64, u32), usize>,
    /// Batch state last handed to the store, per batch.
    pub(super) stored: FxHashMap<u64, StoredBatchState>,
    /// Acks on their way to nodes.
    pub(super) acks: Acks,
    /// Callback events, stored with the outcomes they report.
    pub(super) events: super::callbacks::Events,
}

impl Durability {
    pub(super) fn new(durable: bool) -> Self {
        Durability {
            durable,
            write: WriteSet::default(),
            waits_at: FxHashMap::default(),
            stored: FxHashMap::default(),
            acks: Acks::default(),
            events: super::callbacks::Events::default(),
        }
    }

    /// Whether a store backs this core.
    pub(super) fn is_durable(&self) -> bool {
        self.durable
    }

    /// The state the store holds of a batch, at recovery.
    pub(super) fn restored(&mut self, state: StoredBatchState) {
        self.stored.insert(state.id, state);
    }

    /// A final outcome, to store.
    pub(super) fn outcome(&mut self, o: Outcome) {
        self.write.outcomes.push(o);
    }

    /// Receipt waits, decided deliveries and early receipts, to store.
    pub(super) fn receipts(&mut self, writes: Vec<ReceiptWrite>) {
        for w in &writes {
            if let ReceiptWrite::Final {
                batch,
                index,
                record,
            } = w
            {
                self.events.delivery(*batch, *index, record);
            }
        }
        if !self.durable {
            return;
        }
        for w in writes {
            let receipts = &mut self.write.receipts;
            let (key, wait) = match &w {
                ReceiptWrite::Wait { batch, index, .. } => ((*batch, *index), true),
                ReceiptWrite::Final { batch, index, .. } => ((*batch, *index), false),
                // Early receipts are written and removed in order.
                ReceiptWrite::Early { .. } | ReceiptWrite::EarlyGone { .. } => {
                    receipts.push(w);
                    continue;
                }
            };
            match (self.waits_at.get(&key).copied(), wait) {
                // Supersedes the wait not yet stored (a Final still removes a
                // wait row an earlier group may have stored).
                (Some(at), true) => receipts[at] = w,
                (Some(at), false) => {
                    receipts[at] = w;
                    self.waits_at.remove(&key);
                }
                (None, true) => {
                    self.waits_at.insert(key, receipts.len());
                    receipts.push(w);
                }
                (None, false) => receipts.push(w),
            }
        }
    }

    /// Takes the changes not yet handed to the store.
    fn take_write(&mut self) -> WriteSet {
        self.waits_at.clear();
        std::mem::take(&mut self.write)
    }

    /// A batch past its retention, to remove from the store.
    pub(super) fn deleted(&mut self, id: u64, key: Option<String>) {
        self.stored.remove(&id);
        self.events.forget(id);
        if self.durable {
            self.write.deleted.push((id, key));
        }
    }

    /// Callback rows delivered (or given up), to remove from the store.
    pub(super) fn callbacks_done(&mut self, seqs: Vec<u64>) {
        if self.durable {
            self.write.callbacks_done.extend(seqs);
        }
    }

    /// A node name seen for the first time, to store.
    pub(super) fn node_named(&mut self, n: u16, name: &str) {
        self.write.nodes.push((n, name.to_string()));
    }

    /// A new batch was stored with a reservation of `reserved` messages.
    pub(super) fn stored_with(&mut self, id: u64, reserved: u32) {
        if self.durable && reserved > 0 {
            self.stored.insert(
                id,
                StoredBatchState {
                    id,
                    dispatched: reserved,
                    ..Default::default()
                },
            );
        }
    }

    /// Stores batch `b`'s state with the next group whatever else changes (a cancel).
    pub(super) fn state_now(&mut self, b: &Batch, capacity: u64) {
        let state = self.state_of(b, capacity);
        self.stored.insert(state.id, state.clone());
        self.write.batches.push(state);
    }

    /// The mark of a new dispatch reservation for `b`, when it runs low.
    fn reservation_due(&self, b: &Batch, capacity: u64) -> Option<u32> {
        if !self.durable || !b.is_running() {
            return None;
        }
        let total = b.counts.total as u32;
        let stored = self.stored.get(&b.id.0).map_or(0, |s| s.dispatched);
        let left = stored.saturating_sub(b.next_fresh);
        // Reserve what the nodes can hold at once (256 to 65,536 messages), refilled at
        // half: dispatch rarely waits for a commit, and after a crash at most that many
        // messages more than were really in flight are counted as re-sent.
        let step = capacity.clamp(256, 65_536) as u32;
        (stored < total && left < step / 2).then(|| b.next_fresh.saturating_add(step).min(total))
    }

    /// The state to store for `b` now (with a new reservation if one is due).
    fn state_of(&self, b: &Batch, capacity: u64) -> StoredBatchState {
        let stored = self.stored.get(&b.id.0).map_or(0, |s| s.dispatched);
        StoredBatchState {
            id: b.id.0,
            cancelled: b.is_cancelled(),
            dispatched: self
                .reservation_due(b, capacity)
                .unwrap_or(stored)
                .max(stored),
            resent: b.counts.resent,
            requeued: b.counts.requeued,
            duplicates: b.counts.duplicates,
            cancelled_ms: b.cancelled_ms,
        }
    }

    /// Whether `b`'s stored state is behind.
    fn behind(&self, b: &Batch, capacity: u64) -> bool {
        self.stored.get(&b.id.0) != Some(&self.state_of(b, capacity))
    }
}

impl Core {
    /// Takes the changes to store, and what to do once they are stored.
    pub fn take_writes(&mut self) -> (WriteSet, Committed) {
        let mut held = Vec::new();
        self.receipts.store_held(&mut held);
        self.durability.receipts(held);
        let capacity = self.sessions.capacity();
        let d = &mut self.durability;
        let mut reservations = Vec::new();
        for b in self.batches.unsettled() {
            let state = d.state_of(b, capacity);
            let before = d.stored.get(&state.id);
            if before == Some(&state) {
                continue;
            }
            if state.dispatched > before.map_or(0, |s| s.dispatched) {
                reservations.push((state.id, state.dispatched));
            }
            d.stored.insert(state.id, state.clone());
            d.write.batches.push(state);
        }
        for b in self.batches.ended_since_taken() {
            d.events.ended(b);
        }
        self.batches.states_taken();
        let acks = d.acks.take_due();
        let fold = self.batches.take_to_fold();
        let callbacks = d.events.take();
        if d.durable {
            d.write.callbacks.extend(callbacks.iter().cloned());
        }
        (
            d.take_write(),
            Committed {
                acks,
                reservations,
                fold,
                callbacks,
            },
        )
    }

    /// Whether changes or acks wait for [`take_writes`](Self::take_writes).
    pub fn has_writes(&self) -> bool {
        let d = &self.durability;
        !d.write.is_empty()
            || d.events.any()
            || !d.acks.due.is_empty()
            || self.states_behind()
            || self.batches.folds_waiting()
    }

    /// Whether waiting changes should be stored without waiting for the commit
    /// interval: a full group, a new node, or a batch state (a reservation that
    /// dispatch may wait for, a cancel, a batch's end).
    pub fn commit_urgent(&self) -> bool {
        let w = &self.durability.write;
        w.outcomes.len() >= URGENT_OUTCOMES
            || !w.nodes.is_empty()
            || !w.batches.is_empty()
            || self.states_behind()
    }

    /// Whether a running (or just ended) batch's stored state is behind.
    fn states_behind(&self) -> bool {
        let capacity = self.sessions.capacity();
        self.batches
            .unsettled()
            .any(|b| self.durability.behind(b, capacity))
    }

    /// A group was stored: its reservations may be used and its acks sent.
    pub fn on_committed(&mut self, done: Committed, now: Instant, outbox: &mut impl Outbox) {
        for (id, reserved) in done.reservations {
            if let Some(b) = self.batches.get_mut(id) {
                b.reserved = b.reserved.max(reserved);
            }
        }
        for id in done.fold {
            if self.batches.fold(id) {
                // Its state is stored and settled: nothing compares against it again.
                self.durability.stored.remove(&id);
                // The store answers for its messages, their deliveries included.
                self.receipts.forget_decided(id);
            }
        }
        // An ack only lets the node forget results it keeps: it waits for the next Jobs
        // frame to the node (one write for both), or the next tick. A leaving node, or one
        // that will get no more jobs, has it now.
        let idle = self.batches.running_ids().is_empty();
        let mut now_due = Vec::new();
        for (sid, seq) in done.acks {
            let Some(s) = self.sessions.get(sid) else {
                continue;
            };
            let seq = self.durability.acks.stored(sid, seq);
            if idle || s.going_away {
                self.durability.acks.take_ready(sid);
                now_due.push((sid, seq));
            }
        }
        self.send_acks(now_due, now, outbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoredDelivery, StoredWait};
    use prost::Message;

    fn wait(index: u32, delivered: u32) -> ReceiptWrite {
        let wait = StoredWait {
            delivered,
            ids: vec![format!("id{index}")],
            ..Default::default()
        };
        ReceiptWrite::wait(7, index, &wait)
    }

    fn last(index: u32) -> ReceiptWrite {
        let delivery = StoredDelivery {
            state: 1,
            ..Default::default()
        };
        ReceiptWrite::decided(7, index, &delivery)
    }

    fn shown(d: &Durability) -> Vec<String> {
        d.write
            .receipts
            .iter()
            .map(|w| match w {
                ReceiptWrite::Wait { index, record, .. } => {
                    let wait = StoredWait::decode(record.as_slice()).unwrap();
                    format!("wait {index}/{}", wait.delivered)
                }
                ReceiptWrite::Final { index, .. } => format!("final {index}"),
                ReceiptWrite::Early { id, .. } => format!("early {id}"),
                ReceiptWrite::EarlyGone { id, .. } => format!("early gone {id}"),
            })
            .collect()
    }

    /// A message sent and decided before its group is stored is written once,
    /// as decided; a wait that changed is written as it is last.
    #[test]
    fn a_wait_decided_within_its_group_is_stored_only_as_decided() {
        let mut d = Durability::new(true);
        d.receipts(vec![wait(1, 0), wait(2, 0), wait(3, 0)]);
        d.receipts(vec![last(1), wait(2, 1)]);
        assert_eq!(shown(&d), ["final 1", "wait 2/1", "wait 3/0"]);
        d.take_write();
        // Its wait went with the last group: the decision goes on its own.
        d.receipts(vec![last(3), wait(4, 0), last(4)]);
        assert_eq!(shown(&d), ["final 3", "final 4"]);
    }

    /// An early receipt held and then applied within one group is written,
    /// then removed, in the order they happened; a wait it decides is still
    /// written once.
    #[test]
    fn early_receipts_are_written_and_removed_in_order() {
        let early = |id: &str| ReceiptWrite::Early {
            provider: "p".into(),
            id: id.into(),
            record: Vec::new(),
        };
        let gone = |id: &str| ReceiptWrite::EarlyGone {
            provider: "p".into(),
            id: id.into(),
        };
        let mut d = Durability::new(true);
        d.receipts(vec![early("a"), wait(1, 0), early("b")]);
        d.receipts(vec![gone("a"), last(1)]);
        assert_eq!(shown(&d), ["early a", "final 1", "early b", "early gone a"]);
    }
}
