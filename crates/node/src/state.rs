//! The node's side of the node protocol as a state machine with no I/O:
//! the credit it grants, the jobs it holds, the results it keeps until they
//! are acked (handed in again on a later stream), and going away.
//!
//! The join loop in the crate root opens streams and moves frames; every
//! decision about what to send is made here, from the frames and results it
//! is given, so it is tested without sockets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use smsmesh::pb::{self, node_to_coordinator};

use crate::Stats;
use crate::pipeline::Pipeline;

/// A finished job, tagged with the stream (epoch) that handed it out.
pub type Done = (u64, pb::JobResult);

fn frame(u: node_to_coordinator::Update) -> pb::NodeToCoordinator {
    pb::NodeToCoordinator { update: Some(u) }
}

/// What a node knows of its jobs, results and credit.
pub struct NodeState {
    /// Most gateway sends at once.
    concurrency: u32,
    /// Most results in one frame.
    max_results_per_frame: usize,
    stats: Arc<Stats>,
    /// Number of the current stream; results of earlier ones are handed in.
    epoch: u64,
    /// Jobs given to the executor and not finished.
    held: u64,
    /// Finished, not yet in a frame.
    done: Vec<Done>,
    /// Delivery receipts from the gateway, not yet in a frame, each with
    /// who waits for it to be stored.
    receipts: Vec<crate::IncomingReceipt>,
    /// Receipts in frames sent and not acked.
    unacked_receipts: usize,
    /// Who waits for the receipts of the frames up to a seq to be acked.
    stored_waiters: BTreeMap<u64, Vec<crate::gateway::OnStored>>,
    /// Frames sent and not acked, by seq: their results and receipts.
    unacked: BTreeMap<u64, (Vec<pb::JobResult>, Vec<pb::Receipt>)>,
    next_seq: u64,
    /// A shutdown was asked for.
    leaving: bool,
    /// Sizes the prefetch.
    pipeline: Pipeline,
    /// Credit granted on this stream and not yet used by a job.
    unused_credit: u64,
    /// The gateway cannot send now: grant nothing.
    gateway_down: bool,
    /// The gateway only receives: no credit, ever.
    receive_only: bool,
    /// The coordinator confirmed on this stream that no more jobs will come.
    drained: bool,
    /// Least time between two frames of results, unless much credit waits
    /// or receipts go (see [`NodeState::next_flush`]).
    frame_gap: Duration,
    /// When the last frame went.
    last_frame: Option<Instant>,
}

impl NodeState {
    /// A node with `concurrency` send slots and a prefetch between `prefetch`
    /// and `prefetch_max` (see [`Pipeline`]).
    pub fn new(
        concurrency: u32,
        (prefetch, prefetch_max): (u32, u32),
        max_results_per_frame: usize,
        stats: Arc<Stats>,
        now: Instant,
    ) -> Self {
        NodeState {
            concurrency,
            max_results_per_frame: max_results_per_frame.max(1),
            stats,
            epoch: 0,
            held: 0,
            done: Vec::new(),
            receipts: Vec::new(),
            unacked_receipts: 0,
            stored_waiters: BTreeMap::new(),
            unacked: BTreeMap::new(),
            next_seq: 1,
            leaving: false,
            pipeline: Pipeline::new(prefetch, prefetch_max, now),
            unused_credit: 0,
            gateway_down: false,
            receive_only: false,
            drained: false,
            frame_gap: Duration::ZERO,
            last_frame: None,
        }
    }

    /// Results go at most one frame per `gap`, unless a quarter of the
    /// credit target is free or receipts go (they never wait, and the
    /// results held go with them): at a connector's rate limit a frame then
    /// carries several, and the coordinator handles fewer frames; a lone
    /// result still goes at once. Zero: a frame per event.
    pub fn set_frame_gap(&mut self, gap: Duration) {
        self.frame_gap = gap;
    }

    /// Most jobs ever held at once: sends in progress plus the most prefetched
    /// jobs. Hello tells the coordinator this as the node's concurrency.
    pub fn credit_limit(&self) -> u32 {
        self.concurrency.saturating_add(self.pipeline.ceiling())
    }

    /// Jobs to hold now: sends in progress plus the prefetch the pipeline wants now.
    fn credit_target(&self) -> u32 {
        let prefetch = self.pipeline.prefetch();
        self.stats
            .prefetch
            .store(u64::from(prefetch), Ordering::Relaxed);
        self.concurrency.saturating_add(prefetch)
    }

    /// The current stream's number: jobs are tagged with it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Jobs handed out and not finished.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Whether a shutdown was asked for.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Whether nothing is held, waiting for a frame, or unacked.
    pub fn is_empty(&self) -> bool {
        self.held == 0
            && self.done.is_empty()
            && self.receipts.is_empty()
            && self.unacked.is_empty()
    }

    /// Results the node still answers for (held, finished, or sent and not acked).
    pub fn owed(&self) -> usize {
        self.held as usize
            + self.done.len()
            + self.unacked.values().map(|(r, _)| r.len()).sum::<usize>()
    }

    /// Whether the node has left: leaving, drained by the coordinator, and every result acked.
    pub fn left_cleanly(&self) -> bool {
        self.leaving && self.drained && self.is_empty()
    }

    /// A stream was accepted. Returns what follows Hello on it: every frame
    /// not acked on earlier streams, handed in again, then GoingAway if the
    /// node is leaving. Results and credit follow with [`flush`](Self::flush).
    pub fn on_stream_open(&mut self) -> Vec<pb::NodeToCoordinator> {
        self.pipeline.new_stream();
        self.unused_credit = 0;
        self.drained = false;
        let mut frames: Vec<_> = self
            .unacked
            .iter()
            .map(|(&seq, (results, receipts))| {
                self.stats
                    .handed_in
                    .fetch_add(results.len() as u64, Ordering::Relaxed);
                frame(node_to_coordinator::Update::Results(pb::Results {
                    seq,
                    results: results.clone(),
                    grant: 0,
                    handoff: true,
                    receipts: receipts.clone(),
                }))
            })
            .collect();
        if self.leaving {
            frames.push(going_away());
        }
        frames
    }

    /// The stream ended or could not be opened: what it handed out is from an
    /// earlier stream from now on.
    pub fn on_stream_broken(&mut self) {
        self.epoch += 1;
        self.unused_credit = 0;
        self.drained = false;
    }

    /// A Jobs frame of `n` jobs arrived. Returns how many were beyond the
    /// credit granted (a coordinator bug if ever non-zero).
    pub fn on_jobs(&mut self, n: u64, now: Instant) -> u64 {
        self.stats.jobs.fetch_add(n, Ordering::Relaxed);
        let over = n.saturating_sub(self.unused_credit);
        if over > 0 {
            self.stats.over_credit.fetch_add(over, Ordering::Relaxed);
        }
        self.unused_credit = self.unused_credit.saturating_sub(n);
        self.pipeline.filled(n, now);
        self.held += n;
        self.stats.in_flight.store(self.held, Ordering::Relaxed);
        self.stats.max_held.fetch_max(self.held, Ordering::Relaxed);
        over
    }

    /// The coordinator stored every Results frame up to `seq`: they are forgotten.
    pub fn on_ack(&mut self, seq: u64) {
        let later = self.unacked.split_off(&(seq + 1));
        let acked = std::mem::replace(&mut self.unacked, later);
        let receipts = acked.values().map(|(_, r)| r.len()).sum::<usize>();
        self.unacked_receipts -= receipts;
        self.stats
            .receipts_acked
            .fetch_add(receipts as u64, Ordering::Relaxed);
        self.count_receipts();
        let later = self.stored_waiters.split_off(&(seq + 1));
        for w in std::mem::replace(&mut self.stored_waiters, later)
            .into_values()
            .flatten()
        {
            w.stored();
        }
    }

    /// The coordinator will send no more jobs on this stream.
    pub fn on_drained(&mut self) {
        self.drained = true;
    }

    /// Sends finished.
    pub fn finished(&mut self, bunch: Vec<Done>, now: Instant) {
        self.held -= bunch.len() as u64;
        self.pipeline.finished(bunch.len() as u64, now);
        self.stats.in_flight.store(self.held, Ordering::Relaxed);
        self.done.extend(bunch);
    }

    /// Delivery receipts came from the gateway: they go to the coordinator
    /// with the next frames, and are kept until acked like results.
    /// Each waiter is told once the coordinator has acked the frame that
    /// carried its receipt.
    pub fn on_receipts(&mut self, receipts: impl IntoIterator<Item = crate::IncomingReceipt>) {
        self.receipts.extend(receipts);
        self.count_receipts();
    }

    /// The receipt gauges of [`Stats`] follow the receipts held now.
    fn count_receipts(&self) {
        let s = &self.stats;
        let unacked = self.unacked_receipts as u64;
        s.receipts_waiting
            .store(self.receipts.len() as u64, Ordering::Relaxed);
        s.receipts_unacked.store(unacked, Ordering::Relaxed);
        s.max_receipts_unacked.fetch_max(unacked, Ordering::Relaxed);
    }

    /// Whether the node takes more receipts from the gateway now: not while
    /// [`MAX_UNACKED_RECEIPTS`] wait for a frame. The gateway then holds
    /// them (an SMPP session leaves its deliver_sm unanswered).
    pub fn takes_receipts(&self) -> bool {
        self.receipts.len() < MAX_UNACKED_RECEIPTS
    }

    /// Whether the gateway can send: while it cannot, no credit is granted
    /// (jobs go to other nodes); credit granted before stays granted.
    pub fn set_gateway_up(&mut self, up: bool) {
        self.gateway_down = !up;
    }

    /// The gateway only receives (receipts): the node never grants credit.
    pub fn set_receive_only(&mut self) {
        self.receive_only = true;
    }

    /// A shutdown is asked for: the node grants no more credit and says GoingAway.
    /// Returns the frame to send, the first time only.
    pub fn leave(&mut self) -> Option<pb::NodeToCoordinator> {
        (!std::mem::replace(&mut self.leaving, true)).then(going_away)
    }

    /// Credit to grant now.
    fn free(&self) -> u64 {
        if self.leaving || self.gateway_down || self.receive_only {
            0
        } else {
            u64::from(self.credit_target()).saturating_sub(self.held + self.unused_credit)
        }
    }

    /// When what waits to be sent (results, receipts, credit) is due, if it
    /// is held back by the frame gap; `None` when it goes at once or
    /// nothing waits.
    pub fn flush_due(&self) -> Option<Instant> {
        let free = self.free();
        self.waiting(free).then(|| self.next_flush(free)).flatten()
    }

    /// Whether anything waits that a frame would carry: results, receipts
    /// with room to go, or credit.
    fn waiting(&self, free: u64) -> bool {
        !self.done.is_empty() || self.receipts_to_send() || free > 0
    }

    /// Whether receipts wait that have room to go (see [`MAX_UNACKED_RECEIPTS`]).
    fn receipts_to_send(&self) -> bool {
        !self.receipts.is_empty() && self.unacked_receipts < MAX_UNACKED_RECEIPTS
    }

    /// When the next frame may go, with `free` credit waiting: `None` at once.
    /// Receipts never wait: the SMSC is answered once they are stored, and
    /// its window of unanswered deliver_sm bounds how fast receipts come.
    fn next_flush(&self, free: u64) -> Option<Instant> {
        if self.frame_gap.is_zero()
            || self.leaving
            || self.receipts_to_send()
            || free >= u64::from(self.credit_target() / 4).max(1)
        {
            return None;
        }
        self.last_frame.map(|t| t + self.frame_gap)
    }

    /// The frames to send now: finished results (those of earlier streams
    /// handed in), and the credit that is free, riding on the last frame.
    pub fn flush(&mut self, now: Instant) -> Vec<pb::NodeToCoordinator> {
        let free = self.free();
        if !self.waiting(free) || self.next_flush(free).is_some_and(|due| now < due) {
            return Vec::new();
        }
        self.last_frame = Some(now);
        let epoch = self.epoch;
        let (current, handoff): (Vec<Done>, Vec<Done>) = std::mem::take(&mut self.done)
            .into_iter()
            .partition(|(e, _)| *e == epoch);
        self.stats
            .handed_in
            .fetch_add(handoff.len() as u64, Ordering::Relaxed);
        let mut frames: Vec<pb::Results> = Vec::new();
        for (results, handoff) in [(handoff, true), (current, false)] {
            let mut left = results.into_iter().map(|(_, r)| r).peekable();
            while left.peek().is_some() {
                // Moved into the frame; the copy kept until the ack is the only one made.
                let results: Vec<pb::JobResult> =
                    left.by_ref().take(self.max_results_per_frame).collect();
                let seq = self.next_seq;
                self.next_seq += 1;
                self.unacked.insert(seq, (results.clone(), Vec::new()));
                frames.push(pb::Results {
                    seq,
                    results,
                    grant: 0,
                    handoff,
                    receipts: Vec::new(),
                });
            }
        }
        // Receipts go while fewer than MAX_UNACKED_RECEIPTS wait for their ack: the
        // coordinator stores each group of them before it acks, and holds them until then.
        let room = MAX_UNACKED_RECEIPTS.saturating_sub(self.unacked_receipts);
        let n = room.min(self.receipts.len());
        let (receipts, waiters): (Vec<pb::Receipt>, Vec<_>) = self.receipts.drain(..n).unzip();
        let any = !receipts.is_empty();
        let mut left = receipts.into_iter().peekable();
        while left.peek().is_some() {
            let chunk: Vec<pb::Receipt> = left.by_ref().take(RECEIPTS_PER_FRAME).collect();
            let seq = self.next_seq;
            self.next_seq += 1;
            self.unacked_receipts += chunk.len();
            self.unacked.insert(seq, (Vec::new(), chunk.clone()));
            frames.push(pb::Results {
                seq,
                receipts: chunk,
                ..Default::default()
            });
        }
        if any {
            self.count_receipts();
            // Acks are cumulative: the last receipt frame's ack covers them all.
            self.stored_waiters
                .entry(self.next_seq - 1)
                .or_default()
                .extend(waiters.into_iter().flatten());
        }
        // The grant counts capacity freed by every result above, so it rides on the last
        // frame (the coordinator applies results before the grant), or goes alone.
        self.unused_credit += free;
        self.pipeline.granted(free, now);
        self.stats
            .credits_granted
            .fetch_add(free, Ordering::Relaxed);
        let last = match frames.last_mut() {
            Some(f) if !f.handoff => {
                f.grant = free as u32;
                None
            }
            _ if free > 0 => Some(frame(node_to_coordinator::Update::Grant(pb::Grant {
                credits: free as u32,
            }))),
            _ => None,
        };
        frames
            .into_iter()
            .map(|f| frame(node_to_coordinator::Update::Results(f)))
            .chain(last)
            .collect()
    }
}

/// Most receipts in one frame.
const RECEIPTS_PER_FRAME: usize = 10_000;

/// Most receipts sent and not acked, and most waiting for a frame: a
/// backlog of receipts (an SMSC's after an outage) reaches the coordinator
/// as fast as it stores them, not all at once.
pub const MAX_UNACKED_RECEIPTS: usize = 20_000;

fn going_away() -> pb::NodeToCoordinator {
    frame(node_to_coordinator::Update::GoingAway(pb::GoingAway {}))
}

#[cfg(test)]
mod tests;
