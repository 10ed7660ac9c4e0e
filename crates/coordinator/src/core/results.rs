//! A node's Results frame: each result settles the job its node held (or,
//! handed in from an earlier stream, the message it names). A final outcome
//! goes to the store; a failed attempt waits for a backoff and is retried.

use std::time::{Duration, Instant};

use rand::Rng;
use smsmesh::{BatchId, MessageId, pb};

use super::batches::Batches;
use super::durability::Durability;
use super::receipts::Receipts;
use super::sessions::{NodeStats, Session};
use crate::batch::{self, Verdict};
use crate::store::Outcome;

/// Applies the results of `r`, from `session`'s node, and records that the
/// frame's ack is due once they are stored. Stops at the first result that
/// breaks the protocol; batches that ended before it get their bookkeeping.
#[allow(clippy::too_many_arguments)]
pub(super) fn on_results(
    session: &mut Session,
    stats: &mut NodeStats,
    batches: &mut Batches,
    durability: &mut Durability,
    receipts: &mut Receipts,
    retry: (Duration, Duration),
    r: &pb::Results,
    now: Instant,
) -> Result<(), String> {
    let mut ended = Vec::new();
    // Late results for batches ended long ago change the totals too.
    batches.touching(r.results.iter().map(|res| res.batch));
    let mut writes = Vec::new();
    let unix_now = super::unix_ms();
    let applied = apply(
        session,
        stats,
        batches,
        durability,
        (receipts, &mut writes, unix_now),
        retry,
        r,
        now,
        &mut ended,
    );
    if applied.is_ok() {
        for receipt in &r.receipts {
            receipts.on_receipt(&session.provider, receipt, now, &mut writes);
        }
    }
    if !writes.is_empty() {
        batches.changed = true;
    }
    durability.receipts(writes);
    for &id in &ended {
        batches.ended(id, now);
    }
    applied?;
    if r.seq > 0 {
        durability.acks.recorded(session.id, r.seq);
    }
    Ok(())
}

/// Applies each result of a frame; pushes the batches that ended to `ended`.
#[allow(clippy::too_many_arguments)]
fn apply(
    session: &mut Session,
    stats: &mut NodeStats,
    batches: &mut Batches,
    durability: &mut Durability,
    (receipts, writes, unix_now): (&mut Receipts, &mut Vec<crate::store::ReceiptWrite>, u64),
    (retry_base, retry_max): (Duration, Duration),
    r: &pb::Results,
    now: Instant,
    ended: &mut Vec<u64>,
) -> Result<(), String> {
    let node = session.node;
    for res in &r.results {
        // A handed-in result is from an earlier stream: it never settles a job held on this one
        // (the same message may be here again, as a later attempt).
        let job = (res.batch, res.index);
        let held = !r.handoff && session.held.remove(&job);
        // A result for a job whose lease ran out is late, not wrong: it counts as one
        // from a node that no longer holds the job.
        let late = !held && !r.handoff && session.expired.remove(&job);
        let id = MessageId {
            batch: BatchId(res.batch),
            index: res.index,
        };
        if !held && !r.handoff && !late {
            return Err(format!(
                "result for message {id} (attempt {}) which this node does not hold",
                res.attempt
            ));
        }
        let verdict = match pb::Outcome::try_from(res.outcome) {
            Ok(pb::Outcome::Sent) => Verdict::Sent,
            Ok(pb::Outcome::Failed) => Verdict::Failed,
            Ok(pb::Outcome::Unknown) => {
                stats.unknown += 1;
                Verdict::Failed
            }
            Ok(pb::Outcome::Rejected) => Verdict::Rejected,
            Ok(pb::Outcome::Throttled) => {
                stats.throttled += 1;
                Verdict::Throttled
            }
            _ => return Err(format!("result for message {id} has no outcome")),
        };
        let sent = verdict == Verdict::Sent;
        let batch = batches.get_mut(res.batch);
        if r.handoff
            && let Some(b) = &batch
            && !b.may_hand_in(res.index, res.attempt)
        {
            // No such attempt was dispatched: a result for it cannot be real.
            tracing::warn!(node = %session.name, message = %id, attempt = res.attempt, "refused a handed-in result for an attempt never dispatched");
            stats.handoffs_refused += 1;
            continue;
        }
        stats.attempt(node, sent, res.latency_us);
        let Some(batch) = batch else {
            // A folded batch completed long ago: any result for it is another
            // attempt of a message that has its outcome.
            if let Some(f) = batches.folded_mut(res.batch)
                && u64::from(res.index) < f.counts.total
            {
                f.counts.duplicates += 1;
            }
            continue; // or handed in for a batch this coordinator does not know
        };
        if u64::from(res.index) >= batch.counts.total {
            continue; // a message that does not exist
        }
        let reached = batch.on_result(
            res.index,
            res.attempt,
            node,
            held,
            verdict,
            &res.error,
            res.latency_us,
            |failures| retry_delay(retry_base, retry_max, failures),
            now,
        );
        if let Some(state) = reached.and_then(batch::to_stored) {
            if state == crate::store::FinalState::Sent {
                // Its provider's ids: the message now waits for receipts.
                receipts.on_sent(
                    res.batch,
                    res.index,
                    &session.provider,
                    &res.provider_ids,
                    unix_now,
                    writes,
                );
            }
            let slot = batch.slots[res.index as usize];
            durability.outcome(Outcome {
                batch: res.batch,
                index: res.index,
                state,
                attempts: slot.attempts,
                node: node + 1,
                final_ms: slot.stamp(),
                error: (state == crate::store::FinalState::Failed).then(|| res.error.clone()),
            });
            durability
                .events
                .outcome(batch, res.index, state, &res.error);
        }
        if batch.check_end(now) {
            ended.push(res.batch);
        }
    }
    Ok(())
}

/// Backoff before attempt `failures + 1`: `base * 2^(failures-1)`, at most `max`,
/// with "equal jitter" (half fixed, half random) so retries of a burst spread out.
pub fn retry_delay(base: Duration, max: Duration, failures: u8) -> Duration {
    let exp = u32::from(failures.saturating_sub(1)).min(20);
    let full = base.saturating_mul(1 << exp).min(max);
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}
