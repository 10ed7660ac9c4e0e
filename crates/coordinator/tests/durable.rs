//! The durable half of the core, without sockets: a core backed by an
//! in-memory store, driven through commits, crashes and recoveries.

mod common;

use std::time::Duration;

use common::{World, acks, config, result};
use smsmesh::pb::{BatchState, MessageState};
use smsmesh_coordinator::Config;
use smsmesh_coordinator::auth::Tenant;

fn stored_mark(w: &World, id: smsmesh::BatchId) -> u32 {
    let loaded = w.store.as_ref().unwrap().load().unwrap();
    loaded
        .batches
        .iter()
        .find(|b| b.batch.id == id.0)
        .map_or(0, |b| b.state.dispatched.max(b.batch.reserved))
}

#[test]
fn results_are_acked_only_after_the_commit_that_stores_them() {
    let mut w = World::durable(config());
    let id = w.submit(4, 3);
    let a = w.join("a", 4);
    w.grant(a, 4);
    w.commit(); // the first reservation
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    assert_eq!(jobs.len(), 4);
    w.frame(a, 1, jobs.iter().map(|j| result(j, true)).collect(), 0);
    assert_eq!(w.status(id).sent, 4);
    // Taken for a group, but not stored yet: no ack.
    let (set, done) = w.core.take_writes();
    assert_eq!(set.outcomes.len(), 4);
    w.core.dispatch(w.now, &mut w.out);
    w.core.on_tick(w.now, &mut w.out);
    assert!(
        acks(&w.out.take(a)).is_empty(),
        "no ack before the store has it"
    );
    w.store.as_ref().unwrap().commit(&set).unwrap();
    w.core.on_committed(done, w.now, &mut w.out);
    assert_eq!(
        acks(&w.out.take(a)),
        [1],
        "stored, and nothing left to run: acked now"
    );
    // What was acked survives a crash.
    w.crash();
    let s = w.status(id);
    assert_eq!((s.sent, s.state), (4, BatchState::Completed as i32));
}

#[test]
fn nothing_is_dispatched_above_the_stored_reservation() {
    let mut w = World::durable(config());
    let id = w.submit(2_000, 3);
    let a = w.join("a", 300);
    w.grant(a, 300);
    w.dispatch();
    assert!(
        w.out.take_jobs(a).is_empty(),
        "nothing before a reservation is stored"
    );
    let (set, done) = w.core.take_writes();
    w.dispatch();
    assert!(
        w.out.take_jobs(a).is_empty(),
        "nor while it is being stored"
    );
    w.store.as_ref().unwrap().commit(&set).unwrap();
    w.core.on_committed(done, w.now, &mut w.out);
    let mark = stored_mark(&w, id);
    assert!(
        (256..2_000).contains(&mark),
        "a reservation of what nodes hold: {mark}"
    );
    // Ask for more than the mark: every job is below it.
    for _ in 0..20 {
        w.dispatch();
        let jobs = w.out.take_jobs(a).concat();
        if jobs.is_empty() {
            break;
        }
        assert!(jobs.iter().all(|j| j.index < stored_mark(&w, id)));
        w.frame(
            a,
            1,
            jobs.iter().map(|j| result(j, true)).collect(),
            jobs.len() as u32,
        );
    }
    let s = w.status(id);
    assert_eq!(
        s.sent + s.in_flight,
        u64::from(mark),
        "dispatch stopped at the mark"
    );
    // Committing refills the reservation, and dispatch goes on.
    w.commit();
    assert!(stored_mark(&w, id) > mark);
    w.dispatch();
    assert!(!w.out.take_jobs(a).is_empty());
}

#[test]
fn a_batch_stored_with_its_reservation_dispatches_without_another_commit() {
    let mut w = World::durable(config());
    w.reserve = smsmesh_coordinator::core::INITIAL_RESERVATION;
    let a = w.join("a", 300);
    w.grant(a, 300);
    w.commit(); // the node's name
    let one = w.submit(1, 3);
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    assert_eq!(jobs.len(), 1, "a one-message batch goes out at once");
    assert!(
        !w.core.has_writes(),
        "and its state needs no commit before its result"
    );
    w.frame(a, 1, jobs.iter().map(|j| result(j, true)).collect(), 1);
    w.commit();
    assert_eq!(w.status(one).state, BatchState::Completed as i32);

    // A bigger batch: its first 256 at once, then a reservation is due.
    let big = w.submit(2_000, 3);
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    assert_eq!(jobs.len(), 256, "up to the reservation stored with it");
    assert!(jobs.iter().all(|j| j.index < 256));
    assert!(
        w.core.commit_urgent(),
        "the next reservation is stored at once"
    );
    w.commit();
    assert!(stored_mark(&w, big) > 256);
    w.dispatch();
    assert!(!w.out.take_jobs(a).is_empty(), "dispatch goes on");
}

#[test]
fn a_crash_before_any_commit_counts_the_reserved_messages_as_possibly_sent() {
    let mut w = World::durable(Config {
        resume_grace: Duration::from_secs(2),
        ..config()
    });
    w.reserve = smsmesh_coordinator::core::INITIAL_RESERVATION;
    let id = w.submit(3, 3);
    let a = w.join("a", 2);
    w.grant(a, 2);
    w.dispatch();
    assert_eq!(
        w.out.take_jobs(a).concat().len(),
        2,
        "dispatched, never committed"
    );
    assert_eq!(stored_mark(&w, id), 3, "the store says all 3 may have gone");
    w.crash();
    let a = w.join("a", 3);
    w.grant(a, 3);
    w.dispatch();
    assert!(w.out.take_jobs(a).is_empty(), "none within the grace");
    w.now += Duration::from_secs(3);
    w.dispatch();
    let again = w.out.take_jobs(a).concat();
    assert_eq!(again.len(), 3);
    w.frame(a, 1, again.iter().map(|j| result(j, true)).collect(), 0);
    let s = w.status(id);
    assert_eq!(
        (s.sent, s.resent, s.state),
        (3, 3, BatchState::Completed as i32),
        "every reserved message counts as re-sent"
    );
}

#[test]
fn a_crash_mid_batch_resumes_with_every_result_once() {
    let mut w = World::durable(Config {
        resume_grace: Duration::from_secs(2),
        ..config()
    });
    let id = w.submit(10, 3);
    let a = w.join("a", 10);
    w.grant(a, 10);
    w.commit();
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    assert_eq!(jobs.len(), 10);
    // Six are stored; two more are reported but the crash comes before their commit.
    w.frame(a, 1, jobs[..6].iter().map(|j| result(j, true)).collect(), 0);
    w.commit();
    w.frame(
        a,
        2,
        jobs[6..8].iter().map(|j| result(j, true)).collect(),
        0,
    );
    w.crash();
    let s = w.status(id);
    assert_eq!((s.sent, s.pending, s.in_flight), (6, 4, 0));
    // The node comes back and hands in its unacked frame 2, and frame 1 again
    // (as if its ack was lost): the repeat changes nothing.
    let a = w.join("a", 10);
    w.results_frame(
        a,
        1,
        jobs[..1].iter().map(|j| result(j, true)).collect(),
        0,
        true,
    );
    w.results_frame(
        a,
        2,
        jobs[6..8].iter().map(|j| result(j, true)).collect(),
        10,
        true,
    );
    assert!(
        !w.out.closed.contains_key(&a),
        "a handoff is not a protocol violation"
    );
    let s = w.status(id);
    assert_eq!((s.sent, s.duplicates, s.resent), (8, 0, 0));
    // The two nobody reported wait for the grace, then go out again as attempt 2.
    w.commit();
    w.dispatch();
    assert!(w.out.take_jobs(a).is_empty(), "not within the grace");
    w.now += Duration::from_secs(3);
    w.dispatch();
    let again = w.out.take_jobs(a).concat();
    let mut idx: Vec<u32> = again.iter().map(|j| j.index).collect();
    idx.sort_unstable();
    assert_eq!(idx, [8, 9]);
    assert!(again.iter().all(|j| j.attempt == 2));
    w.frame(a, 3, again.iter().map(|j| result(j, true)).collect(), 0);
    let s = w.status(id);
    assert_eq!(
        (s.sent, s.resent, s.state),
        (10, 2, BatchState::Completed as i32)
    );
    w.commit();
    w.crash();
    let s = w.status(id);
    assert_eq!(
        (s.sent, s.resent, s.duplicates),
        (10, 2, 0),
        "the books survive"
    );
}

#[test]
fn a_cancel_is_stored_and_holds_after_a_restart() {
    let mut w = World::durable(config());
    let id = w.submit(20, 3);
    let a = w.join("a", 4);
    w.grant(a, 4);
    w.commit();
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    w.now += std::time::Duration::from_millis(120);
    let s = w.core.on_cancel(id, &Tenant::default(), w.now).unwrap();
    assert_eq!(
        (s.state, s.cancelled, s.in_flight),
        (BatchState::Cancelling as i32, 16, 4)
    );
    assert!(w.core.commit_urgent(), "a cancel is stored at once");
    w.commit();
    w.crash();
    // A message the cancel caught waiting ended with it, also after the restart.
    let waiting = w.message(id, 19);
    assert_eq!(waiting.state, smsmesh::pb::MessageState::Cancelled as i32);
    assert_eq!(
        (waiting.final_unix_ms, waiting.last_attempt_unix_ms),
        (s.accepted_unix_ms + 120, 0)
    );
    let s = w.status(id);
    assert_eq!(s.pending, 0, "nothing of a cancelled batch runs again");
    assert!(matches!(
        BatchState::try_from(s.state),
        Ok(BatchState::Cancelled | BatchState::Cancelling)
    ));
    // A job that was out is handed in sent: the send counts, the cancel does not hide it.
    let a = w.join("a", 4);
    w.results_frame(a, 1, vec![result(&jobs[0], true)], 0, true);
    w.grant(a, 4);
    w.dispatch();
    assert!(w.out.take_jobs(a).is_empty());
    let s = w.status(id);
    assert_eq!((s.sent, s.sent + s.cancelled), (1, 20));
    assert_eq!(s.state, BatchState::Cancelled as i32);
}

#[test]
fn an_idempotent_resubmit_finds_the_batch_before_and_after_a_restart() {
    let mut w = World::durable(config());
    let id = w.submit_keyed(5, 3, Some("order-17"));
    assert_eq!(w.submit_keyed(5, 3, Some("order-17")), id);
    w.crash();
    let found = w
        .core
        .on_idempotent("order-17", 0)
        .unwrap()
        .expect("the key survives");
    assert_eq!(
        (found.batch_id, found.accepted, found.replayed),
        (id.to_string(), 5, true)
    );
    assert_eq!(
        w.submit_keyed(5, 3, Some("order-17")),
        id,
        "the store refuses the key again"
    );
    assert!(w.core.on_idempotent("order-18", 0).unwrap().is_none());
    let m = w.message(id, 4);
    assert_eq!(m.state, MessageState::Pending as i32);
}

#[test]
fn an_idempotency_key_used_again_for_a_different_request_is_refused() {
    let mut w = World::durable(config());
    let id = w.submit_request(5, 3, Some("k"), 111).unwrap();
    assert_eq!(
        w.submit_request(5, 3, Some("k"), 111).unwrap(),
        id,
        "a replay"
    );
    let e = w.submit_request(9, 3, Some("k"), 222).unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert!(e.to_string().contains("different request"), "{e}");
    // The fingerprint is stored with the batch: the same after a restart.
    w.crash();
    assert_eq!(w.submit_request(5, 3, Some("k"), 111).unwrap(), id);
    let e = w.submit_request(9, 3, Some("k"), 222).unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
}
