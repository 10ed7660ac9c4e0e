//! A batch's state machine alone: what is dispatched, how results settle
//! messages, cancel, and resuming after a restart.

use std::time::{Duration, Instant};

use smsmesh::BatchId;
use smsmesh::pb::BatchState;

use super::*;

fn batch(total: u32, max_attempts: u8, now: Instant) -> Batch {
    let content = Content::Synthetic {
        seed: 1,
        body: None,
    };
    Batch::new(BatchId(1), content, total, max_attempts, now)
}

const BACKOFF: Duration = Duration::from_millis(100);

/// Dispatches the next message to `node`: (index, attempt).
fn next(b: &mut Batch, node: u16) -> Option<(u32, u32)> {
    let index = b.take_next(node, false)?;
    let now = b.accepted_at;
    Some((index, b.mark_dispatched(index, node, now)))
}

#[test]
fn fresh_messages_go_in_order_and_only_below_the_reservation() {
    let now = Instant::now();
    let mut b = batch(10, 3, now);
    b.reserved = 3;
    let got: Vec<_> = std::iter::from_fn(|| next(&mut b, 0)).collect();
    assert_eq!(got, [(0, 1), (1, 1), (2, 1)]);
    assert!(b.has_ready_work(), "more is pending, above the reservation");
    b.reserved = 4;
    assert_eq!(next(&mut b, 0), Some((3, 1)));
    assert_eq!(b.counts.in_flight, 4);
}

#[test]
fn results_settle_a_message_once_and_count_what_went_out_twice() {
    let now = Instant::now();
    let mut b = batch(1, 3, now);
    let (i, a1) = next(&mut b, 0).unwrap();
    let reached = b.on_result(i, a1, 0, true, Verdict::Sent, "", 10, |_| BACKOFF, now);
    assert_eq!(reached, Some(ST_SENT));
    // The same report again (its ack was lost): nothing changes.
    assert_eq!(
        b.on_result(i, a1, 0, false, Verdict::Sent, "", 10, |_| BACKOFF, now),
        None
    );
    assert_eq!((b.counts.sent, b.counts.duplicates), (1, 0));
    // Another attempt that also went out: a duplicate, still one outcome.
    assert_eq!(
        b.on_result(i, a1 + 1, 1, false, Verdict::Sent, "", 10, |_| BACKOFF, now),
        None
    );
    assert_eq!((b.counts.sent, b.counts.duplicates), (1, 1));
    assert!(b.check_end(now));
    assert_eq!(b.state, BatchState::Completed);
}

#[test]
fn failures_wait_for_their_backoff_and_the_last_attempt_is_final() {
    let now = Instant::now();
    let mut b = batch(1, 2, now);
    let (i, a1) = next(&mut b, 0).unwrap();
    assert_eq!(
        b.on_result(i, a1, 0, true, Verdict::Failed, "busy", 5, |_| BACKOFF, now),
        None
    );
    assert_eq!(b.message_state(i), smsmesh::pb::MessageState::RetryWait);
    b.promote_due_retries(now);
    assert_eq!(next(&mut b, 0), None, "not before the backoff ends");
    assert_eq!(b.next_retry(), Some(now + BACKOFF));
    b.promote_due_retries(now + BACKOFF);
    let (i, a2) = next(&mut b, 0).unwrap();
    assert_eq!(a2, 2);
    // A late failure of the first attempt changes nothing now.
    assert_eq!(
        b.on_result(i, a1, 0, false, Verdict::Failed, "old", 5, |_| BACKOFF, now),
        None
    );
    assert_eq!(b.counts.in_flight, 1);
    let reached = b.on_result(i, a2, 0, true, Verdict::Failed, "gone", 5, |_| BACKOFF, now);
    assert_eq!(reached, Some(ST_FAILED));
    assert_eq!((b.counts.failed, b.counts.retried), (1, 1));
    assert_eq!(b.last_error(i), Some("gone"));
}

#[test]
fn a_rejected_attempt_is_final_at_once_and_a_throttled_one_uses_no_attempt() {
    let now = Instant::now();
    let mut b = batch(2, 3, now);
    let (i, a1) = next(&mut b, 0).unwrap();
    // Throttled: back in line at once, no failure counted, no error kept.
    assert_eq!(
        b.on_result(
            i,
            a1,
            0,
            true,
            Verdict::Throttled,
            "ESME_RTHROTTLED",
            5,
            |_| BACKOFF,
            now
        ),
        None
    );
    assert_eq!(
        (b.counts.requeued, b.counts.retried, b.counts.in_flight),
        (1, 0, 0)
    );
    assert_eq!(b.slots[i as usize].failures, 0);
    assert_eq!(b.last_error(i), None);
    // Throttled twice more: still no attempt used, so it may still fail three times.
    for _ in 0..2 {
        let (j, a) = next(&mut b, 0).unwrap();
        assert_eq!(j, i);
        b.on_result(j, a, 0, true, Verdict::Throttled, "", 5, |_| BACKOFF, now);
    }
    let (j, a) = next(&mut b, 0).unwrap();
    assert_eq!((j, a), (i, 4), "a re-send is still a new attempt number");
    assert_eq!(
        b.on_result(j, a, 0, true, Verdict::Sent, "", 5, |_| BACKOFF, now),
        Some(ST_SENT)
    );
    // Rejected with attempts left: final now, never retried.
    let (k, a) = next(&mut b, 0).unwrap();
    assert_eq!(
        b.on_result(
            k,
            a,
            0,
            true,
            Verdict::Rejected,
            "ESME_RINVDSTADR",
            5,
            |_| BACKOFF,
            now
        ),
        Some(ST_FAILED)
    );
    assert_eq!((b.counts.failed, b.counts.retried), (1, 0));
    assert_eq!(b.last_error(k), Some("ESME_RINVDSTADR"));
    assert!(b.check_end(now));
}

#[test]
fn cancel_stops_what_is_pending_and_ends_when_nothing_is_out() {
    let now = Instant::now();
    let mut b = batch(5, 3, now);
    let (i, a) = next(&mut b, 0).unwrap();
    assert!(b.cancel(now));
    assert!(!b.cancel(now), "a second cancel changes nothing");
    assert_eq!((b.counts.cancelled, b.counts.in_flight), (4, 1));
    assert_eq!(b.state, BatchState::Cancelling);
    assert!(b.is_cancelled() && !b.is_ended());
    assert_eq!(next(&mut b, 0), None);
    // The job out still reports: it was sent, and the batch ends.
    assert_eq!(
        b.on_result(i, a, 0, true, Verdict::Sent, "", 5, |_| BACKOFF, now),
        Some(ST_SENT)
    );
    assert!(b.check_end(now));
    assert_eq!(b.state, BatchState::Cancelled);
}

#[test]
fn a_resumed_batch_sends_again_only_after_the_grace_and_counts_it() {
    let now = Instant::now();
    let mut b = batch(6, 3, now);
    b.restore(1, FinalState::Sent, 1, 1, 70, None);
    b.restore(2, FinalState::Failed, 3, 1, 0, Some("no route"));
    let until = now + Duration::from_secs(2);
    assert_eq!(b.resume(4, until), 2, "0 and 3 may have been sent");
    b.reserved = 4;
    assert_eq!(next(&mut b, 0), None, "nothing before the grace ends");
    b.promote_due_retries(until);
    let got: Vec<_> = std::iter::from_fn(|| next(&mut b, 0)).collect();
    assert_eq!(got, [(0, 2), (3, 2)], "again, with the next attempt number");
    assert_eq!(b.counts.resent, 2);
    assert_eq!((b.counts.sent, b.counts.failed), (1, 1));
    assert_eq!(b.last_error(2), Some("no route"));
}

#[test]
fn each_message_keeps_when_its_attempt_last_changed_and_when_it_ended() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut b = batch(3, 3, t0);
    b.accepted_unix_ms = 1_700_000_000_000;
    assert_eq!(
        (b.slots[0].stamp(), b.final_ms(0), b.unix_ms_of(0)),
        (0, 0, 0)
    );
    let (i, a) = (b.take_next(0, false).unwrap(), 1);
    b.mark_dispatched(i, 0, at(5));
    assert_eq!(
        (b.slots[0].stamp(), b.final_ms(0)),
        (5, 0),
        "out since 5 ms"
    );
    b.on_result(
        i,
        a,
        0,
        true,
        Verdict::Failed,
        "busy",
        1,
        |_| BACKOFF,
        at(9),
    );
    assert_eq!((b.slots[0].stamp(), b.final_ms(0)), (9, 0), "back at 9 ms");
    b.promote_due_retries(at(500));
    assert_eq!(b.take_next(1, false), Some(0));
    let a = b.mark_dispatched(0, 1, at(600));
    let reached = b.on_result(0, a, 1, true, Verdict::Sent, "", 1, |_| BACKOFF, at(603));
    assert_eq!(reached, Some(ST_SENT));
    assert_eq!((b.slots[0].stamp(), b.final_ms(0)), (603, 603));
    assert_eq!(b.unix_ms_of(b.final_ms(0)), 1_700_000_000_603);
    // The cancel ends a waiting message at once and one in flight when it comes back.
    let one = b.take_next(0, false).unwrap();
    let a = b.mark_dispatched(one, 0, at(700));
    b.cancel(at(800));
    assert_eq!(b.final_ms(2), 800, "never dispatched: ended by the cancel");
    assert_eq!(b.final_ms(one), 0, "still out");
    b.on_result(
        one,
        a,
        0,
        true,
        Verdict::Failed,
        "x",
        1,
        |_| BACKOFF,
        at(900),
    );
    assert_eq!(
        (b.message_state(one), b.final_ms(one)),
        (MessageState::Cancelled, 900)
    );
    // Restored from the store: its final time, and none for an older outcome.
    let mut r = batch(2, 3, t0);
    r.restore(0, FinalState::Sent, 1, 1, 603, None);
    r.restore(1, FinalState::Failed, 3, 1, 0, Some("no route"));
    assert_eq!((r.final_ms(0), r.final_ms(1)), (603, 0));
    assert_eq!(r.unix_ms_of(r.final_ms(1)), 0, "not known stays 0");
}

#[test]
fn stored_states_map_both_ways() {
    for st in [FinalState::Sent, FinalState::Failed] {
        assert_eq!(to_stored(from_stored(st)), Some(st));
    }
    for st in [
        ST_PENDING,
        ST_IN_FLIGHT,
        ST_RETRY_WAIT,
        ST_CANCELLED,
        ST_RESUMED,
    ] {
        assert_eq!(
            to_stored(st),
            None,
            "state {st} is not stored as an outcome"
        );
    }
}
