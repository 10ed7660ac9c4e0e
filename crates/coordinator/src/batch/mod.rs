//! One batch's state: what each message is doing, what waits to be sent, and
//! the counters and latency statistics that `GetStatus` reports.
//!
//! Per message the batch keeps only a 10-byte [`Slot`]. Messages never
//! dispatched are a range (`next_fresh..total`), not a queue; messages to
//! send again (their node was lost, or their backoff is over) wait in
//! `ready`; failed attempts wait in a heap ordered by when they may retry.
//!
//! [`content`] says what the messages are, [`stats`] what the batch reports.

mod content;
mod latency;
pub mod recipients;
mod slot;
mod state_set;
mod stats;

pub use content::{Content, Trace};
pub use latency::Latency;
pub use recipients::Recipients;
pub use slot::*;
pub use state_set::StateSet;
pub use stats::{Counts, NodeShare, NodeShares};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use smsmesh::BatchId;
use smsmesh::pb::{BatchState, MessageState};

use crate::store::FinalState;

/// A batch and all its messages' state.
#[derive(Debug)]
pub struct Batch {
    /// The batch's id.
    pub id: BatchId,
    /// Running, completed, cancelling or cancelled.
    pub state: BatchState,
    /// The messages.
    pub content: Content,
    /// Attempts per message before it fails for good.
    pub max_attempts: u8,
    /// Per-message state, indexed by message index.
    pub slots: Vec<Slot>,
    /// Every index below this was dispatched at least once (or cancelled).
    pub next_fresh: u32,
    /// Fresh messages are dispatched only below this mark, which a durable
    /// coordinator stores before it is used (so after a crash, every message
    /// that may have been sent is known). Equal to `total` when in memory.
    pub reserved: u32,
    /// Messages to dispatch again before fresh ones.
    pub ready: VecDeque<u32>,
    /// Every index below this may have been dispatched before the last restart
    /// (the stored reservation then), with attempts the store did not keep.
    pub dispatched_before_restart: u32,
    /// Messages that may have been in flight at a crash, held back until `resume_at`.
    pub resumed: Vec<u32>,
    /// When `resumed` may go out again.
    pub resume_at: Option<Instant>,
    /// Failed messages waiting for their backoff, earliest first.
    pub retries: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Counters.
    pub counts: Counts,
    /// Send time of every attempt.
    pub latency: Latency,
    /// Per node (by node-name index): its share of this batch.
    pub nodes: NodeShares,
    /// Last error of each message that failed at least once: index into `error_texts`.
    pub errors_by_index: FxHashMap<u32, u32>,
    /// Distinct error texts of this batch.
    pub error_texts: Vec<String>,
    error_index: FxHashMap<String, u32>,
    /// When the batch was accepted.
    pub accepted_at: Instant,
    /// When the batch was accepted, as Unix time in milliseconds (0: unknown).
    pub accepted_unix_ms: u64,
    /// When the batch reached a final state.
    pub ended_at: Option<Instant>,
    /// When it was cancelled: milliseconds after `accepted_at`, at least 1
    /// (0: not cancelled, or when is not known).
    pub cancelled_ms: u32,
    /// Smoothed finish rate, messages per second.
    pub rate: f64,
    /// The batch's dispatch span and which messages carry it to nodes.
    pub trace: Option<Box<Trace>>,
    /// The tenant that owns it.
    pub tenant: crate::auth::Tenant,
    /// Its class of traffic.
    pub class: smsmesh::priority::Class,
    /// Fingerprint of the request that made it (0: unknown).
    pub fingerprint: u64,
    /// Messages sent or failed, and the time, at the last rate sample.
    pub rate_sample: (u64, Instant),
    /// The idempotency key (as stored) that made it, if any.
    pub key: Option<String>,
    /// Set once ended and out of the progress snapshot, when its counters
    /// were added to the coordinator's totals (see `Batches::retire`).
    pub retired: bool,
    /// The status last published of this ended batch, and the counters it
    /// was made from: an ended batch's status is made again only if those change.
    pub status_cache: Option<
        Box<(
            Counts,
            crate::core::DeliveryCounts,
            std::sync::Arc<smsmesh::pb::BatchStatus>,
        )>,
    >,
}

impl Batch {
    /// A new running batch.
    pub fn new(id: BatchId, content: Content, total: u32, max_attempts: u8, now: Instant) -> Self {
        Batch {
            id,
            state: BatchState::Running,
            content,
            max_attempts,
            slots: vec![Slot::default(); total as usize],
            next_fresh: 0,
            reserved: total,
            dispatched_before_restart: 0,
            ready: VecDeque::new(),
            resumed: Vec::new(),
            resume_at: None,
            retries: BinaryHeap::new(),
            counts: Counts {
                total: u64::from(total),
                ..Counts::default()
            },
            latency: Latency::default(),
            nodes: NodeShares::default(),
            errors_by_index: FxHashMap::default(),
            error_texts: Vec::new(),
            error_index: FxHashMap::default(),
            accepted_at: now,
            accepted_unix_ms: 0,
            ended_at: None,
            cancelled_ms: 0,
            rate: 0.0,
            rate_sample: (0, now),
            trace: None,
            tenant: crate::auth::Tenant::default(),
            class: smsmesh::priority::Class::Normal,
            fingerprint: 0,
            key: None,
            retired: false,
            status_cache: None,
        }
    }

    /// Keeps an ended batch in as little memory as what it still reports
    /// needs: no queues, no error index, node shares in a slice.
    pub fn compact(&mut self) {
        self.ready = VecDeque::new();
        self.resumed = Vec::new();
        self.retries = BinaryHeap::new();
        self.error_index = FxHashMap::default();
        self.errors_by_index.shrink_to_fit();
        self.error_texts.shrink_to_fit();
        self.slots.shrink_to_fit();
        self.latency.shrink();
        self.nodes.freeze();
        self.trace = None;
    }

    /// Whether the batch may still dispatch.
    pub fn is_running(&self) -> bool {
        self.state == BatchState::Running
    }

    /// Whether the batch was cancelled (it may still have jobs out).
    pub fn is_cancelled(&self) -> bool {
        !self.is_running() && self.state != BatchState::Completed
    }

    /// Whether the batch has ended (completed or cancelled).
    pub fn is_ended(&self) -> bool {
        matches!(self.state, BatchState::Completed | BatchState::Cancelled)
    }

    /// Moves retries whose backoff is over, and resumed messages whose grace is over, to `ready`.
    pub fn promote_due_retries(&mut self, now: Instant) {
        if self.resume_at.is_some_and(|t| t <= now) {
            self.resume_at = None;
            for index in std::mem::take(&mut self.resumed) {
                if self.slots[index as usize].state == ST_RESUMED {
                    self.ready.push_back(index);
                }
            }
        }
        while let Some(Reverse((due, index))) = self.retries.peek().copied() {
            if due > now {
                break;
            }
            self.retries.pop();
            if self.slots[index as usize].state == ST_RETRY_WAIT {
                self.slots[index as usize].state = ST_PENDING;
                self.ready.push_back(index);
            }
        }
    }

    /// When the earliest retry (or the resumption of messages after a restart) is due.
    pub fn next_retry(&self) -> Option<Instant> {
        let retry = self.retries.peek().map(|Reverse((t, _))| *t);
        [retry, self.resume_at].into_iter().flatten().min()
    }

    /// Whether there is anything to dispatch now.
    pub fn has_ready_work(&self) -> bool {
        self.is_running()
            && (!self.ready.is_empty() || (self.next_fresh as u64) < self.counts.total)
    }

    /// Whether a message can go out now: one to send again, or a fresh one
    /// below the reservation stored (a durable coordinator's new batch waits
    /// for its first one).
    pub fn can_take_now(&self) -> bool {
        self.is_running() && (!self.ready.is_empty() || self.next_fresh < self.fresh_limit())
    }

    /// Takes the next message to dispatch, avoiding `avoid_node` for retries
    /// when `others_available` (another node could take it).
    pub fn take_next(&mut self, avoid_node: u16, others_available: bool) -> Option<u32> {
        if !self.is_running() {
            return None;
        }
        // Resends first. When another node could take it, a retry goes preferably to a
        // node other than the one that last tried it: look at a few, then take fresh work.
        let (mut i, mut fallback) = (0, None);
        while i < self.ready.len() && i < 8 {
            let index = self.ready[i];
            if !is_dispatchable(self.slots[index as usize].state) {
                self.ready.remove(i); // finished meanwhile by a handed-in result
                continue;
            }
            if !others_available || self.slots[index as usize].node != avoid_node + 1 {
                return self.ready.remove(i);
            }
            fallback.get_or_insert(i);
            i += 1;
        }
        while self.next_fresh < self.fresh_limit() {
            let index = self.next_fresh;
            self.next_fresh += 1;
            if is_dispatchable(self.slots[index as usize].state) {
                return Some(index);
            }
        }
        fallback.and_then(|i| self.ready.remove(i))
    }

    /// Whether a handed-in result of attempt `attempt` of message `index` can
    /// be real: that attempt was dispatched by this coordinator, or the
    /// message may have been dispatched before the last restart.
    pub fn may_hand_in(&self, index: u32, attempt: u32) -> bool {
        let Some(slot) = self.slots.get(index as usize) else {
            return false;
        };
        attempt >= 1
            && (attempt <= u32::from(slot.attempts) || index < self.dispatched_before_restart)
    }

    /// Fresh messages may be dispatched below this index.
    pub fn fresh_limit(&self) -> u32 {
        self.reserved.min(self.counts.total as u32)
    }

    /// Milliseconds from the batch's acceptance to `now` (at least 1, at
    /// most `u32::MAX`, about 49 days): the unit of a [`Slot::stamp`].
    pub fn ms_since_accepted(&self, now: Instant) -> u32 {
        let ms = now.saturating_duration_since(self.accepted_at).as_millis();
        ms.clamp(1, u128::from(u32::MAX)) as u32
    }

    /// Unix ms of a stamp in milliseconds after acceptance; 0 for none, or
    /// when the acceptance time is unknown.
    pub fn unix_ms_of(&self, ms: u32) -> u64 {
        if ms == 0 || self.accepted_unix_ms == 0 {
            0
        } else {
            self.accepted_unix_ms + u64::from(ms)
        }
    }

    /// When message `index` became final, in milliseconds after acceptance
    /// (0: not final, or not known). A message the cancel caught waiting
    /// became final with the cancel; one it caught in flight, when its
    /// attempt came back.
    pub fn final_ms(&self, index: u32) -> u32 {
        let slot = self.slots[index as usize];
        match slot.state {
            ST_SENT | ST_FAILED => slot.stamp(),
            ST_CANCELLED => slot.stamp().max(self.cancelled_ms),
            _ => 0,
        }
    }

    /// Marks `index` as dispatched to `node` at `now` and returns its attempt number.
    pub fn mark_dispatched(&mut self, index: u32, node: u16, now: Instant) -> u32 {
        let stamp = self.ms_since_accepted(now);
        let slot = &mut self.slots[index as usize];
        slot.set_stamp(stamp);
        if slot.state == ST_RESUMED {
            self.counts.resent += 1;
        }
        slot.state = ST_IN_FLIGHT;
        slot.attempts = slot.attempts.saturating_add(1);
        slot.node = node + 1;
        let attempt = u32::from(slot.attempts);
        self.counts.in_flight += 1;
        self.share(node).in_flight += 1;
        attempt
    }

    /// Puts a message that was in flight on a lost node back in the queue.
    pub fn requeue(&mut self, index: u32, node: u16) {
        self.share(node).in_flight -= 1;
        let slot = &mut self.slots[index as usize];
        if slot.state != ST_IN_FLIGHT {
            return; // already finished by a handed-in result
        }
        self.counts.in_flight -= 1;
        if self.state == BatchState::Running {
            self.slots[index as usize].state = ST_PENDING;
            self.ready.push_back(index);
            self.counts.requeued += 1;
        } else {
            self.slots[index as usize].state = ST_CANCELLED;
            self.counts.cancelled += 1;
        }
    }

    /// The share of `node` in this batch.
    pub fn share(&mut self, node: u16) -> &mut NodeShare {
        self.nodes.get_mut(node)
    }

    /// Records the outcome of an attempt made by `node`. `held` says whether
    /// the node held the job in its current session (so it was counted in flight
    /// on it). Returns the final state the message reached now, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn on_result(
        &mut self,
        index: u32,
        attempt: u32,
        node: u16,
        held: bool,
        verdict: Verdict,
        error: &str,
        latency_us: u64,
        retry_delay: impl FnOnce(u8) -> Duration,
        now: Instant,
    ) -> Option<u8> {
        let sent = verdict == Verdict::Sent;
        let slot = self.slots[index as usize];
        // The same report again (its ack was lost, e.g. in a coordinator crash): already
        // recorded, so it changes nothing but the node's hold on it.
        let repeat = is_final(slot.state)
            && u32::from(slot.attempts) == attempt
            && slot.node == node + 1
            && (slot.state == ST_SENT) == sent;
        let share = self.share(node);
        if held {
            share.in_flight -= 1;
        }
        if repeat {
            return None;
        }
        match verdict {
            Verdict::Sent => share.sent += 1,
            Verdict::Throttled => {}
            Verdict::Failed | Verdict::Rejected => share.failed_attempts += 1,
        }
        share.latency.record(latency_us);
        self.latency.record(latency_us);
        if slot.state == ST_CANCELLED && sent {
            // Cancelled (e.g. on recovery of a cancelled batch) but it did go out: a
            // confirmed send outranks the cancel, so the counts say what happened.
            self.counts.cancelled -= 1;
            self.counts.sent += 1;
            let stamp = self.ms_since_accepted(now);
            let slot = &mut self.slots[index as usize];
            slot.set_stamp(stamp);
            slot.state = ST_SENT;
            slot.attempts = attempt.clamp(1, 255) as u8;
            slot.node = node + 1;
            return Some(ST_SENT);
        }
        if is_final(slot.state) {
            // Another attempt of a message that already has its outcome: it went out twice.
            self.counts.duplicates += 1;
            return None;
        }
        let current = slot.state == ST_IN_FLIGHT
            && u32::from(slot.attempts) == attempt
            && slot.node == node + 1;
        if !sent && !current {
            // A failure of an older attempt: the message is already on its way again.
            return None;
        }
        if slot.state == ST_IN_FLIGHT {
            // When not `current`, this is a "sent" handed in by an earlier holder while
            // another node holds the message: that node's result will be a duplicate.
            self.counts.in_flight -= 1;
        }
        // A message in `ready` or in the retry heap that ends here is skipped when popped.
        let stamp = self.ms_since_accepted(now);
        let slot = &mut self.slots[index as usize];
        slot.set_stamp(stamp);
        if sent {
            // The outcome names the attempt that succeeded (and its node), so a repeated
            // report of it is told from another attempt that also went out.
            slot.attempts = attempt.clamp(1, 255) as u8;
            slot.node = node + 1;
            slot.state = ST_SENT;
            self.counts.sent += 1;
            return Some(ST_SENT);
        }
        if verdict == Verdict::Throttled {
            // Not sent, and not the message's fault: back in line without using an attempt.
            if self.state == BatchState::Running {
                slot.state = ST_PENDING;
                self.ready.push_back(index);
                self.counts.requeued += 1;
                return None;
            }
            slot.state = ST_CANCELLED;
            self.counts.cancelled += 1;
            return Some(ST_CANCELLED);
        }
        slot.failures = slot.failures.saturating_add(1);
        let failures = slot.failures;
        self.set_error(index, error);
        if self.state != BatchState::Running {
            self.slots[index as usize].state = ST_CANCELLED;
            self.counts.cancelled += 1;
            Some(ST_CANCELLED)
        } else if failures >= self.max_attempts || verdict == Verdict::Rejected {
            self.slots[index as usize].state = ST_FAILED;
            self.counts.failed += 1;
            Some(ST_FAILED)
        } else {
            self.slots[index as usize].state = ST_RETRY_WAIT;
            self.counts.retried += 1;
            self.retries
                .push(Reverse((now + retry_delay(failures), index)));
            None
        }
    }

    /// Last error text of message `index`, if it failed at least once.
    pub fn last_error(&self, index: u32) -> Option<&str> {
        self.errors_by_index
            .get(&index)
            .map(|&e| self.error_texts[e as usize].as_str())
    }

    /// Restores a message's final outcome from the store (`final_ms`: when,
    /// after acceptance; 0 if not stored).
    pub fn restore(
        &mut self,
        index: u32,
        state: FinalState,
        attempts: u8,
        node: u16,
        final_ms: u32,
        error: Option<&str>,
    ) {
        let slot = &mut self.slots[index as usize];
        slot.set_stamp(final_ms);
        slot.state = from_stored(state);
        slot.attempts = attempts;
        slot.node = node;
        match state {
            FinalState::Sent => {
                self.counts.sent += 1;
                if let Some(n) = node.checked_sub(1) {
                    self.share(n).sent += 1;
                }
            }
            FinalState::Failed => {
                self.counts.failed += 1;
                self.slots[index as usize].failures = attempts;
                self.set_error(index, error.unwrap_or_default());
            }
        }
    }

    /// After a restart: every unfinished message below `dispatched` (the stored
    /// reservation) may have been sent before the crash. Each goes out again with
    /// a higher attempt number (counted as re-sent then), but only from `until`,
    /// so that reconnecting nodes can hand in what they finished first. Returns
    /// how many messages wait so.
    pub fn resume(&mut self, dispatched: u32, until: Instant) -> usize {
        let dispatched = dispatched.min(self.counts.total as u32);
        for index in 0..dispatched {
            let slot = &mut self.slots[index as usize];
            if !is_final(slot.state) {
                slot.state = ST_RESUMED;
                slot.attempts = slot.attempts.max(1);
                self.resumed.push(index);
            }
        }
        self.next_fresh = dispatched;
        if !self.resumed.is_empty() {
            self.resume_at = Some(until);
        }
        self.resumed.len()
    }

    pub(crate) fn set_error(&mut self, index: u32, error: &str) {
        let error = if error.is_empty() {
            "unknown error"
        } else {
            error
        };
        let id = match self.error_index.get(error) {
            Some(&id) => id,
            None => {
                let id = self.error_texts.len() as u32;
                self.error_texts.push(error.to_owned());
                self.error_index.insert(error.to_owned(), id);
                id
            }
        };
        self.errors_by_index.insert(index, id);
    }

    /// Cancels everything not yet dispatched. Returns true if the batch changed state.
    pub fn cancel(&mut self, now: Instant) -> bool {
        if self.state != BatchState::Running {
            return false;
        }
        self.cancelled_ms = self.ms_since_accepted(now);
        let mut cancelled = 0;
        for slot in &mut self.slots {
            if matches!(slot.state, ST_PENDING | ST_RETRY_WAIT | ST_RESUMED) {
                slot.state = ST_CANCELLED;
                cancelled += 1;
            }
        }
        self.counts.cancelled += cancelled;
        self.next_fresh = self.counts.total as u32;
        self.ready.clear();
        self.retries.clear();
        self.resumed.clear();
        self.resume_at = None;
        self.state = BatchState::Cancelling;
        self.check_end(now);
        true
    }

    /// Moves the batch to its final state once nothing is left. Returns true if it ended now.
    pub fn check_end(&mut self, now: Instant) -> bool {
        let done = self.counts.finished() == self.counts.total && self.counts.in_flight == 0;
        let next = match self.state {
            BatchState::Running if done => BatchState::Completed,
            BatchState::Cancelling if self.counts.in_flight == 0 => BatchState::Cancelled,
            _ => return false,
        };
        self.state = next;
        self.ended_at = Some(now);
        if let Some(t) = self.trace.take() {
            let c = &self.counts;
            t.span.record("state", format!("{next:?}").to_lowercase());
            t.span.record("sent", c.sent);
            t.span.record("failed", c.failed);
            // Dropping the span ends it: its duration is the batch's time to finish.
        }
        true
    }

    /// State of one message as the API shows it.
    pub fn message_state(&self, index: u32) -> MessageState {
        match self.slots[index as usize].state {
            ST_PENDING | ST_RESUMED => MessageState::Pending,
            ST_IN_FLIGHT => MessageState::InFlight,
            ST_RETRY_WAIT => MessageState::RetryWait,
            ST_SENT => MessageState::Sent,
            ST_FAILED => MessageState::Failed,
            _ => MessageState::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests;
