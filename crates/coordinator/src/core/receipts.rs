//! Delivery receipts: which provider id names which segment of which
//! message, what the receipts said, and which messages wait too long.
//!
//! A sent message whose provider gave ids waits for a receipt per segment.
//! The rule for a long message: it is DELIVERED once every segment's receipt
//! says delivered, and takes the state of the first segment whose final
//! receipt says anything else (undelivered, expired, rejected). Interim
//! receipts (ENROUTE, ACCEPTD) change nothing. A message with no deciding
//! receipt `--dlr-timeout` after it was sent ends as delivery unknown.
//!
//! A receipt may come before the result that carries its id (an SMSC may
//! send the receipt before the submit_sm_resp, on another node's bind): it
//! waits here for [`EARLY_WAIT`], and is applied when the id arrives. It is
//! stored meanwhile ([`early`]), since its node answers its deliver_sm once
//! the frame that brought it is stored. Every change that must survive a
//! restart is returned as a [`ReceiptWrite`] for the store; a restart
//! rebuilds this state from them.
//!
//! Decided deliveries are kept in memory only for the batches the core
//! keeps whole; those of a folded batch (completed and stored) are read
//! from the store when asked for, so that memory grows with the batches in
//! progress and the messages that wait, not with every receipt ever applied.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::Hasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smsmesh::pb;

use crate::store::{
    DeliveryState, DeliveryTally, ReceiptWrite, Rows, StoredDelivery, StoredEarly, StoredWait,
};

mod decided;
mod early;
use decided::{Decided, DecidedPages};

/// How long a receipt whose id no message has (yet) waits for that id.
pub(super) const EARLY_WAIT: Duration = Duration::from_secs(600);
/// Most receipts waiting for their id at once (the oldest is dropped).
pub(super) const EARLY_MAX: usize = 100_000;

/// Which segment of which message an id names.
#[derive(Clone, Copy, Debug)]
struct Segment {
    batch: u64,
    index: u32,
    part: u8,
}

/// A sent message that waits for receipts.
#[derive(Debug)]
struct Waiting {
    sent_unix_ms: u64,
    /// Segments whose receipt said delivered, a bit each.
    delivered: u16,
    provider: Arc<str>,
    ids: Box<[Box<str>]>,
}

impl Waiting {
    /// Its record, as the store keeps it.
    fn record(&self) -> Vec<u8> {
        StoredWait::record(
            self.sent_unix_ms,
            u32::from(self.delivered),
            &self.provider,
            self.ids.iter().map(|id| &**id),
        )
    }
}

/// A batch's messages by delivery state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Receipts said delivered.
    pub delivered: u64,
    /// Receipts said undelivered, expired or rejected.
    pub undelivered: u64,
    /// No final receipt within the timeout.
    pub unknown: u64,
    /// Waiting for receipts.
    pub awaiting: u64,
}

impl DeliveryCounts {
    /// Counts `n` messages decided as `state`.
    fn add(&mut self, state: DeliveryState, n: u64) {
        match state {
            DeliveryState::Delivered => self.delivered += n,
            DeliveryState::Unknown => self.unknown += n,
            _ => self.undelivered += n,
        }
    }
}

/// Figures for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReceiptStats {
    /// Receipts applied to a waiting message.
    pub matched: u64,
    /// Receipts whose id no message waited for (after [`EARLY_WAIT`], or a
    /// second receipt for a message already decided).
    pub unmatched: u64,
    /// Receipts that came before their id and waited for it.
    pub early: u64,
    /// Interim receipts (ENROUTE, ACCEPTD).
    pub interim: u64,
    /// Messages that ended as delivery unknown.
    pub timed_out: u64,
}

/// The receipts sub-state of the core.
pub(super) struct Receipts {
    /// Keyed at random at start: ids are kept as their 128-bit hash.
    hasher: siphasher::sip128::SipHasher13,
    index: HashMap<u128, Segment, rustc_hash::FxBuildHasher>,
    waiting: BTreeMap<(u64, u32), Waiting>,
    /// Decided deliveries of the batches the core keeps whole (see
    /// [`Receipts::keep_decided`]): only those batches have an entry.
    finals: HashMap<u64, DecidedPages, rustc_hash::FxBuildHasher>,
    counts: HashMap<u64, DeliveryCounts, rustc_hash::FxBuildHasher>,
    /// Receipts whose id no message has yet.
    early: early::Held,
    /// (deadline, batch, index) of waiting messages, soonest first.
    deadlines: BinaryHeap<Reverse<(u64, u64, u32)>>,
    timeout_ms: u64,
    pub(super) stats: ReceiptStats,
}

/// SMPP message_state values.
const DELIVERED: u32 = 2;
const EXPIRED: u32 = 3;
const REJECTED: u32 = 8;

/// The word an SMSC writes for a message_state (as in a receipt's `stat:`).
pub fn state_word(message_state: u32) -> &'static str {
    match message_state {
        1 => "ENROUTE",
        2 => "DELIVRD",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIV",
        6 => "ACCEPTD",
        7 => "UNKNOWN",
        8 => "REJECTD",
        _ => "",
    }
}

/// The message state a delivery state shows as.
fn shown(state: DeliveryState) -> pb::MessageState {
    use pb::MessageState as S;
    match state {
        DeliveryState::Delivered => S::Delivered,
        DeliveryState::Undelivered => S::Undelivered,
        DeliveryState::Expired => S::Expired,
        DeliveryState::Rejected => S::Rejected,
        DeliveryState::Unknown => S::DeliveryUnknown,
    }
}

/// What a message's status says of its delivery, from its stored record.
pub fn overlay(status: &mut pb::MessageStatus, d: &StoredDelivery) {
    status.state = shown(d.state()) as i32;
    status.receipt_state = state_word(d.message_state).to_string();
    status.receipt_error = d.error.clone();
    status.receipt_unix_ms = d.unix_ms;
    status.provider_ids = d.ids.clone();
}

impl Receipts {
    pub(super) fn new(timeout: Duration) -> Self {
        Receipts {
            hasher: siphasher::sip128::SipHasher13::new_with_keys(rand::random(), rand::random()),
            index: HashMap::default(),
            waiting: BTreeMap::new(),
            finals: HashMap::default(),
            counts: HashMap::default(),
            early: early::Held::default(),
            deadlines: BinaryHeap::new(),
            timeout_ms: timeout.as_millis() as u64,
            stats: ReceiptStats::default(),
        }
    }

    /// The key of `id` at `provider`: one pass of SipHash-1-3, 128 bits.
    fn key(&self, provider: &str, id: &str) -> u128 {
        use siphasher::sip128::Hasher128;
        let mut h = self.hasher;
        h.write_usize(provider.len());
        h.write(provider.as_bytes());
        h.write(id.as_bytes());
        h.finish128().into()
    }

    /// Decided deliveries of `batch` are kept in memory from now on: the
    /// core keeps it whole, and answers for its messages from memory.
    pub(super) fn keep_decided(&mut self, batch: u64) {
        self.finals.entry(batch).or_default();
    }

    /// `batch` was folded: the store answers for its messages from now on,
    /// so its decided deliveries leave memory (its counts stay).
    pub(super) fn forget_decided(&mut self, batch: u64) {
        self.finals.remove(&batch);
    }

    /// The decided delivery of a message, if its batch is kept whole.
    fn decided(&self, batch: u64, index: u32) -> Option<&Decided> {
        self.finals.get(&batch)?.get(index)
    }

    /// Decided deliveries kept in memory, in all.
    #[cfg(test)]
    fn kept_in_memory(&self) -> usize {
        self.finals.values().map(DecidedPages::len).sum()
    }

    /// The delivery counts of a batch.
    pub(super) fn counts(&self, batch: u64) -> DeliveryCounts {
        self.counts.get(&batch).copied().unwrap_or_default()
    }

    /// Messages waiting for receipts, in all.
    pub(super) fn awaiting(&self) -> usize {
        self.waiting.len()
    }

    /// Receipts held now for an id no message has yet.
    pub(super) fn early_held(&self) -> usize {
        self.early.len()
    }

    /// What a message's status says of its delivery: its provider ids while
    /// it waits, its delivery state once decided.
    pub(super) fn message(&self, batch: u64, index: u32, status: &mut pb::MessageStatus) {
        if let Some(d) = self.decided(batch, index) {
            overlay(status, &d.stored());
        } else if let Some(w) = self.waiting.get(&(batch, index)) {
            status.provider_ids = w.ids.iter().map(|s| s.to_string()).collect();
        }
    }

    /// The message's state as listings filter it.
    pub(super) fn state(&self, batch: u64, index: u32, dispatch: pb::MessageState) -> i32 {
        match self.decided(batch, index) {
            Some(d) => shown(d.state) as i32,
            None => dispatch as i32,
        }
    }

    /// Message `index` of `batch` was sent and its provider gave `ids` (one
    /// per segment): it waits for receipts. Receipts that came early are applied.
    pub(super) fn on_sent(
        &mut self,
        batch: u64,
        index: u32,
        provider: &Arc<str>,
        ids: &[String],
        unix_now_ms: u64,
        writes: &mut Vec<ReceiptWrite>,
    ) {
        if ids.is_empty() || ids.len() > 16 || self.waiting.contains_key(&(batch, index)) {
            return;
        }
        if self.decided(batch, index).is_some() {
            return; // a second sent result of a message already decided
        }
        let w = Waiting {
            sent_unix_ms: unix_now_ms,
            delivered: 0,
            provider: provider.clone(),
            ids: ids.iter().map(|s| s.as_str().into()).collect(),
        };
        writes.push(ReceiptWrite::Wait {
            batch,
            index,
            record: w.record(),
        });
        // Receipts that came before these ids.
        for (seg, r) in self.wait(batch, index, w, writes) {
            self.stats.early += 1;
            self.apply(seg, &r, writes);
        }
    }

    /// The message waits for receipts; gives back those that came before
    /// its ids, each with the segment it names, to be applied.
    fn wait(
        &mut self,
        batch: u64,
        index: u32,
        w: Waiting,
        writes: &mut Vec<ReceiptWrite>,
    ) -> Vec<(Segment, pb::Receipt)> {
        let mut early = Vec::new();
        for (part, id) in w.ids.iter().enumerate() {
            let key = self.key(&w.provider, id);
            let seg = Segment {
                batch,
                index,
                part: part as u8,
            };
            self.index.insert(key, seg);
            if let Some(r) = self.early.take(key, writes) {
                early.push((seg, r));
            }
        }
        self.deadlines.push(Reverse((
            w.sent_unix_ms.saturating_add(self.timeout_ms),
            batch,
            index,
        )));
        self.counts.entry(batch).or_default().awaiting += 1;
        self.waiting.insert((batch, index), w);
        early
    }

    /// A receipt from a node of `provider`.
    pub(super) fn on_receipt(
        &mut self,
        provider: &Arc<str>,
        r: &pb::Receipt,
        now: Instant,
        writes: &mut Vec<ReceiptWrite>,
    ) {
        let key = self.key(provider, &r.provider_id);
        match self.index.get(&key) {
            Some(&seg) => self.apply(seg, r, writes),
            None => {
                let held = (provider.clone(), r.clone());
                if self.early.hold(key, held, now, false, writes) {
                    self.stats.unmatched += 1;
                }
            }
        }
    }

    /// A group is taken: receipts held for their id since the last one go
    /// to the store with it (their frames' acks are in it).
    pub(super) fn store_held(&mut self, writes: &mut Vec<ReceiptWrite>) {
        self.early.write_new(writes);
    }

    /// Applies a receipt to the segment it names.
    fn apply(&mut self, seg: Segment, r: &pb::Receipt, writes: &mut Vec<ReceiptWrite>) {
        let Some(w) = self.waiting.get_mut(&(seg.batch, seg.index)) else {
            self.stats.unmatched += 1;
            return;
        };
        let state = match r.message_state {
            DELIVERED => DeliveryState::Delivered,
            EXPIRED => DeliveryState::Expired,
            REJECTED => DeliveryState::Rejected,
            4 | 5 | 7 => DeliveryState::Undelivered,
            _ => {
                self.stats.interim += 1;
                return;
            }
        };
        self.stats.matched += 1;
        if state == DeliveryState::Delivered {
            w.delivered |= 1 << seg.part;
            let all = (1u32 << w.ids.len()) - 1;
            if u32::from(w.delivered) != all {
                writes.push(ReceiptWrite::Wait {
                    batch: seg.batch,
                    index: seg.index,
                    record: w.record(),
                });
                return;
            }
        }
        self.decide(seg.batch, seg.index, state, r, writes);
    }

    /// A message's delivery is decided: it waits no more.
    fn decide(
        &mut self,
        batch: u64,
        index: u32,
        state: DeliveryState,
        r: &pb::Receipt,
        writes: &mut Vec<ReceiptWrite>,
    ) {
        let Some(w) = self.waiting.remove(&(batch, index)) else {
            return;
        };
        self.compact_deadlines();
        for id in &w.ids {
            let key = self.key(&w.provider, id);
            self.index.remove(&key);
        }
        let record = StoredDelivery::record(
            state,
            r.message_state,
            &r.error,
            r.received_unix_ms,
            w.ids.iter().map(|id| &**id),
        );
        let c = self.counts.entry(batch).or_default();
        c.awaiting = c.awaiting.saturating_sub(1);
        c.add(state, 1);
        if let Some(kept) = self.finals.get_mut(&batch) {
            let record = record.clone();
            kept.insert(index, Decided { state, record });
        }
        writes.push(ReceiptWrite::Final {
            batch,
            index,
            record,
        });
    }

    /// Periodic work: receipts that waited for their id too long are dropped,
    /// and messages past the receipt timeout end as delivery unknown. Costs
    /// what has come due, nothing more. Returns whether any batch changed.
    pub(super) fn on_tick(
        &mut self,
        now: Instant,
        unix_now_ms: u64,
        writes: &mut Vec<ReceiptWrite>,
    ) -> bool {
        self.stats.unmatched += self.early.expire(now, writes);
        let mut changed = false;
        while let Some(&Reverse((due, batch, index))) = self.deadlines.peek() {
            if due > unix_now_ms {
                break;
            }
            self.deadlines.pop();
            // A deadline of a message decided (or removed) since is stale.
            if self
                .waiting
                .get(&(batch, index))
                .is_some_and(|w| w.sent_unix_ms.saturating_add(self.timeout_ms) == due)
            {
                self.stats.timed_out += 1;
                let none = pb::Receipt {
                    received_unix_ms: unix_now_ms,
                    ..Default::default()
                };
                self.decide(batch, index, DeliveryState::Unknown, &none, writes);
                changed = true;
            }
        }
        changed
    }

    /// Rebuilds the deadlines from the waiting messages once most are
    /// stale (of messages decided since): the heap stays within twice what
    /// waits, not everything sent in the last `--dlr-timeout`. A rebuild
    /// costs what waits, after at least as many decisions.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() <= 2 * self.waiting.len() + 1024 {
            return;
        }
        let timeout = self.timeout_ms;
        self.deadlines = self
            .waiting
            .iter()
            .map(|(&(batch, index), w)| {
                Reverse((w.sent_unix_ms.saturating_add(timeout), batch, index))
            })
            .collect();
    }

    /// A batch was removed (retention): everything about it goes.
    pub(super) fn on_batch_deleted(&mut self, batch: u64) {
        let range = (batch, 0)..=(batch, u32::MAX);
        let gone: Vec<_> = self.waiting.range(range.clone()).map(|(k, _)| *k).collect();
        for k in gone {
            if let Some(w) = self.waiting.remove(&k) {
                for id in &w.ids {
                    let key = self.key(&w.provider, id);
                    self.index.remove(&key);
                }
            }
        }
        self.finals.remove(&batch);
        self.counts.remove(&batch);
    }

    /// Rebuilds the state from what the store holds (at start), the batches
    /// the core keeps whole already named by [`keep_decided`](Self::keep_decided).
    /// An early receipt whose id a stored wait has (none should) is applied.
    pub(super) fn restore(
        &mut self,
        (waits, early): (Rows<StoredWait>, Vec<StoredEarly>),
        tallies: &[(u64, DeliveryTally)],
        finals: Rows<(DeliveryState, Arc<[u8]>)>,
        (now, unix_now_ms): (Instant, u64),
        writes: &mut Vec<ReceiptWrite>,
    ) {
        let mut providers: HashMap<String, Arc<str>> = HashMap::new();
        for ((batch, index), w) in waits {
            let provider = providers
                .entry(w.provider.clone())
                .or_insert_with(|| w.provider.as_str().into())
                .clone();
            let waiting = Waiting {
                sent_unix_ms: w.sent_unix_ms,
                delivered: w.delivered as u16,
                provider,
                ids: w.ids.iter().map(|s| s.as_str().into()).collect(),
            };
            // Nothing waits early yet: the list is empty.
            let early = self.wait(batch, index, waiting, writes);
            debug_assert!(early.is_empty());
        }
        let mut early = early;
        early.sort_unstable_by_key(|e| e.received_unix_ms);
        for e in early {
            let provider = providers
                .entry(e.provider.clone())
                .or_insert_with(|| e.provider.as_str().into())
                .clone();
            let key = self.key(&provider, &e.provider_id);
            let r = pb::Receipt {
                provider_id: e.provider_id,
                message_state: e.message_state,
                error: e.error,
                received_unix_ms: e.received_unix_ms,
            };
            if let Some(&seg) = self.index.get(&key) {
                self.stats.early += 1;
                writes.push(ReceiptWrite::EarlyGone {
                    provider,
                    id: r.provider_id.clone(),
                });
                self.apply(seg, &r, writes);
            } else {
                // It waits out what is left of its EARLY_WAIT.
                let age = Duration::from_millis(unix_now_ms.saturating_sub(e.received_unix_ms));
                let at = now.checked_sub(age.min(EARLY_WAIT)).unwrap_or(now);
                self.early.hold(key, (provider, r), at, true, writes);
            }
        }
        for (batch, tally) in tallies {
            let c = self.counts.entry(*batch).or_default();
            for (state, n) in tally.states() {
                c.add(state, n);
            }
        }
        for ((batch, index), (state, record)) in finals {
            if let Some(kept) = self.finals.get_mut(&batch) {
                kept.insert(index, Decided { state, record });
            }
        }
    }
}

#[cfg(test)]
mod tests;
