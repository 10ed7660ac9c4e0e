//! The reactor's `on_*` functions driven directly, with a recording outbox
//! and explicit time: no sockets, no tasks.

mod common;

use std::time::Duration;

use common::{World, acks, config, result};
use smsmesh::pb::{self, BatchState, coordinator_to_node, node_to_coordinator};
use smsmesh_coordinator::Config;
use smsmesh_coordinator::auth::Tenant;
use tonic::Code;

#[test]
fn dispatch_never_exceeds_credit_and_packs_frames() {
    let mut w = World::new(config());
    let id = w.submit(100, 3);
    let a = w.join("a", 10);
    w.dispatch();
    assert!(w.out.take_jobs(a).is_empty(), "no credit, no jobs");
    w.grant(a, 10);
    w.dispatch();
    let frames = w.out.take_jobs(a);
    assert_eq!(
        frames.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 4, 2],
        "frames of at most 4, 10 in all"
    );
    w.dispatch();
    assert!(w.out.take_jobs(a).is_empty(), "credit used up");
    let s = w.status(id);
    assert_eq!((s.in_flight, s.pending), (10, 90));
    // Results free credit only when the node grants again.
    let jobs: Vec<pb::Job> = frames.concat();
    w.results(a, &jobs[..3], true, 3);
    w.dispatch();
    assert_eq!(w.out.take_jobs(a).concat().len(), 3);
    assert_eq!(w.status(id).sent, 3);
}

#[test]
fn work_is_spread_by_free_credit() {
    let mut w = World::new(Config {
        max_jobs_per_frame: 1000,
        ..config()
    });
    let id = w.submit(1_000, 3);
    let a = w.join("a", 300);
    let b = w.join("b", 30);
    w.grant(a, 300);
    w.grant(b, 30);
    w.dispatch();
    assert_eq!(w.out.take_jobs(a).concat().len(), 300);
    assert_eq!(w.out.take_jobs(b).concat().len(), 30);
    assert_eq!(w.status(id).pending, 670);
}

#[test]
fn a_failed_attempt_is_retried_after_backoff_preferably_elsewhere() {
    let mut w = World::new(config());
    let id = w.submit(1, 3);
    let a = w.join("a", 1);
    w.grant(a, 1);
    w.dispatch();
    let job = w.out.take_jobs(a).concat();
    assert_eq!(job[0].attempt, 1);
    let b = w.join("b", 1);
    w.grant(b, 1);
    w.results(a, &job, false, 1);
    assert_eq!(w.status(id).retried, 1);
    w.dispatch();
    assert!(
        w.out.take_jobs(a).is_empty() && w.out.take_jobs(b).is_empty(),
        "backoff not over yet"
    );
    assert!(
        w.core.next_retry_due().unwrap() >= w.now + Duration::from_millis(50),
        "at least half the base backoff"
    );
    w.now += Duration::from_millis(150);
    w.dispatch();
    assert!(
        w.out.take_jobs(a).is_empty(),
        "the node that failed it does not get it while b is free"
    );
    let retry = w.out.take_jobs(b).concat();
    assert_eq!((retry[0].index, retry[0].attempt), (0, 2));
    w.results(b, &retry, false, 1);
    w.now += Duration::from_secs(1);
    w.dispatch();
    assert!(w.out.take_jobs(b).is_empty(), "b tried it last; a is free");
    let third = w.out.take_jobs(a).concat();
    assert_eq!(third[0].attempt, 3);
    // The third failure is final.
    w.results(a, &third, false, 1);
    let s = w.status(id);
    assert_eq!(
        (s.state, s.failed, s.retried),
        (BatchState::Completed as i32, 1, 2)
    );
    let m = w.message(id, 0);
    assert_eq!((m.attempts, m.last_error.as_str()), (3, "boom"));
}

#[test]
fn a_lost_node_s_jobs_are_requeued_and_its_late_results_ignored() {
    let mut w = World::new(config());
    let id = w.submit(8, 3);
    let a = w.join("a", 8);
    w.grant(a, 8);
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    w.core.on_node_lost(a, "test", w.now, &mut w.out);
    let s = w.status(id);
    assert_eq!((s.in_flight, s.pending, s.requeued), (0, 8, 8));
    // Results on the dead session count for nothing.
    w.results(a, &jobs, true, 8);
    assert_eq!(w.status(id).sent, 0);
    let b = w.join("b", 8);
    w.grant(b, 8);
    w.dispatch();
    let again = w.out.take_jobs(b).concat();
    assert_eq!(again.len(), 8);
    assert!(
        again.iter().all(|j| j.attempt == 2),
        "a re-send carries the next attempt number"
    );
    w.results(b, &again, true, 8);
    assert_eq!(w.status(id).sent, 8);
}

#[test]
fn protocol_violations_drop_the_node() {
    let mut w = World::new(config());
    let id = w.submit(8, 3);
    let a = w.join("a", 4);
    w.grant(a, 4);
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    w.results(a, &jobs[..1], true, 0);
    // A result for a message the node was never given.
    let mut forged = jobs[1].clone();
    forged.index = 7;
    w.frame(a, 2, vec![result(&forged, true)], 0);
    let st = w.out.closed[&a].clone().expect("closed with an error");
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert!(st.to_string().contains("does not hold"), "{st}");
    let s = w.status(id);
    assert_eq!((s.sent, s.requeued, s.in_flight), (1, 3, 0));

    // The same result twice: the second time, the node no longer holds it.
    let b = w.join("b", 1);
    w.grant(b, 1);
    w.dispatch();
    let job = w.out.take_jobs(b).concat();
    w.results(b, &job, true, 0);
    assert!(!w.out.closed.contains_key(&b));
    w.results(b, &job, true, 0);
    assert_eq!(
        w.out.closed[&b].as_ref().unwrap().code(),
        Code::FailedPrecondition
    );
    assert_eq!(w.status(id).sent, 2, "the repeat counted for nothing");

    // More credit than the concurrency said in Hello.
    let c = w.join("c", 2);
    w.grant(c, 3);
    let st = w.out.closed[&c].clone().unwrap();
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert!(st.to_string().contains("credit overflow"), "{st}");

    // Hello twice, and an empty frame.
    let d = w.join("d", 2);
    w.msg(d, node_to_coordinator::Update::Hello(pb::Hello::default()));
    assert!(
        w.out.closed[&d]
            .as_ref()
            .unwrap()
            .to_string()
            .contains("Hello sent twice")
    );
    let e = w.join("e", 2);
    w.core
        .on_node_message(e, pb::NodeToCoordinator { update: None }, w.now, &mut w.out);
    assert_eq!(
        w.out.closed[&e].as_ref().unwrap().code(),
        Code::FailedPrecondition
    );
}

#[test]
fn hellos_are_checked_and_a_name_belongs_to_one_process() {
    let mut w = World::new(config());
    let bad = w.try_join("", 1, 4).unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let bad = w.try_join("a", 1, 0).unwrap_err();
    assert!(bad.to_string().contains("out of range"), "{bad}");
    let a = w.join("a", 4);
    let taken = w.try_join("a", 2, 4).unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    // The same process again: its new stream replaces the old one.
    let again = w.try_join("a", 1, 4).unwrap();
    assert_eq!(w.out.closed[&a].as_ref().unwrap().code(), Code::Aborted);
    assert_eq!(w.core.nodes_connected(), 1);
    assert_ne!(again, a);
}

#[test]
fn acks_ride_with_the_next_jobs_frame_or_go_at_once_when_no_jobs_will_come() {
    let mut w = World::new(config());
    let id = w.submit(6, 3);
    let a = w.join("a", 4);
    w.grant(a, 4);
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    w.frame(a, 1, jobs[..2].iter().map(|j| result(j, true)).collect(), 2);
    w.frame(a, 2, jobs[2..].iter().map(|j| result(j, true)).collect(), 2);
    assert!(
        acks(&w.out.take(a)).is_empty(),
        "not acked before the commit"
    );
    w.commit();
    assert!(
        acks(&w.out.take(a)).is_empty(),
        "the ack waits for the next Jobs frame"
    );
    w.dispatch();
    let frames = w.out.take(a);
    assert_eq!(acks(&frames), [2], "one ack for both frames");
    assert!(
        matches!(frames.as_slice(), [coordinator_to_node::Update::Ack(_), coordinator_to_node::Update::Jobs(j)] if j.jobs.len() == 2),
        "the ack goes just before the Jobs frame"
    );
    let rest = w.out.take_jobs(a);
    assert!(rest.is_empty());
    let jobs = common::jobs(frames).concat();
    w.frame(a, 3, jobs.iter().map(|j| result(j, true)).collect(), 2);
    assert_eq!(w.status(id).state, BatchState::Completed as i32);
    w.commit();
    assert_eq!(acks(&w.out.take(a)), [3], "nothing runs: acked at once");
}

#[test]
fn a_node_that_does_not_read_its_stream_is_dropped() {
    let mut w = World::new(config());
    let id = w.submit(10, 3);
    let a = w.join("a", 10);
    w.grant(a, 10);
    w.out.full.push(a);
    w.dispatch();
    assert_eq!(
        w.out.closed[&a].as_ref().unwrap().code(),
        Code::ResourceExhausted
    );
    assert_eq!(w.status(id).pending, 10, "nothing was lost");
}

#[test]
fn silent_nodes_time_out() {
    let mut w = World::new(config());
    let id = w.submit(2, 3);
    let a = w.join("a", 2);
    w.grant(a, 2);
    w.dispatch();
    w.run_for(Duration::from_secs(4));
    assert!(!w.out.closed.contains_key(&a));
    w.msg(a, node_to_coordinator::Update::Heartbeat(pb::Heartbeat {}));
    w.run_for(Duration::from_secs(6));
    assert_eq!(w.out.closed[&a].as_ref().unwrap().code(), Code::Unavailable);
    assert_eq!(w.status(id).pending, 2);
}

#[test]
fn a_stalled_coordinator_does_not_blame_its_nodes() {
    let mut w = World::new(config());
    let id = w.submit(2, 3);
    let a = w.join("a", 2);
    w.grant(a, 2);
    w.dispatch();
    w.run_for(Duration::from_secs(1));
    // The process is stopped for 10 s: no tick, nothing read.
    w.now += Duration::from_secs(10);
    w.core.on_tick(w.now, &mut w.out);
    assert!(
        !w.out.closed.contains_key(&a),
        "its own stall is not the node's silence"
    );
    assert_eq!(w.status(id).in_flight, 2);
    // A node that then stays silent is dropped after a whole timeout.
    w.run_for(Duration::from_secs(4));
    assert!(!w.out.closed.contains_key(&a));
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.out.closed[&a].as_ref().unwrap().code(), Code::Unavailable);
}

#[test]
fn going_away_stops_dispatch_and_is_answered_with_drained() {
    let mut w = World::new(config());
    let id = w.submit(10, 3);
    let a = w.join("a", 4);
    w.grant(a, 4);
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    w.msg(a, node_to_coordinator::Update::GoingAway(pb::GoingAway {}));
    let drained = w.out.sent.remove(&a).unwrap();
    assert!(matches!(
        drained.last().unwrap().update,
        Some(coordinator_to_node::Update::Drained(_))
    ));
    w.results(a, &jobs, true, 4);
    w.dispatch();
    assert!(
        w.out.take_jobs(a).is_empty(),
        "no jobs after GoingAway, even with credit"
    );
    w.core.on_node_lost(a, "closed", w.now, &mut w.out);
    let s = w.status(id);
    assert_eq!((s.sent, s.requeued, s.pending), (4, 0, 6));
}

#[test]
fn a_handed_in_result_does_not_settle_a_later_attempt_held_by_the_same_node() {
    let mut w = World::new(config());
    let id = w.submit(1, 3);
    let a = w.join("a", 1);
    w.grant(a, 1);
    w.dispatch();
    let first = w.out.take_jobs(a).concat();
    // The stream breaks; the job goes out again, to the same node on its new stream.
    w.core.on_node_lost(a, "broken", w.now, &mut w.out);
    let a2 = w.join("a", 1);
    w.grant(a2, 1);
    w.dispatch();
    let second = w.out.take_jobs(a2).concat();
    assert_eq!(second[0].attempt, 2);
    // Now the node hands in the first attempt's result...
    let old = pb::JobResult {
        batch: first[0].batch,
        index: 0,
        attempt: 1,
        outcome: pb::Outcome::Sent as i32,
        error: String::new(),
        latency_us: 5,
        ..Default::default()
    };
    w.msg(
        a2,
        node_to_coordinator::Update::Results(pb::Results {
            seq: 2,
            results: vec![old],
            grant: 0,
            handoff: true,
            ..Default::default()
        }),
    );
    assert!(
        !w.out.closed.contains_key(&a2),
        "a handoff is not a protocol violation"
    );
    assert_eq!(w.status(id).sent, 1);
    // ... and then the second attempt's: still held, so valid; a duplicate send.
    w.results(a2, &second, true, 1);
    assert!(!w.out.closed.contains_key(&a2));
    let s = w.status(id);
    assert_eq!(
        (s.sent, s.duplicates, s.in_flight, s.state),
        (1, 1, 0, BatchState::Completed as i32)
    );
    assert_eq!(s.nodes[0].in_flight, 0);
}

#[test]
fn handed_in_results_for_attempts_never_dispatched_are_refused_and_counted() {
    let mut w = World::new(config());
    let id = w.submit(100, 3);
    let a = w.join("a", 1);
    w.grant(a, 1);
    w.dispatch();
    let job = w.out.take_jobs(a).concat();
    assert_eq!((job[0].index, job[0].attempt), (0, 1));
    // A node given one job hands in every other message of the batch as sent...
    let forged = (1..100)
        .map(|index| pb::JobResult {
            index,
            ..result(&job[0], true)
        })
        .collect();
    w.results_frame(a, 1, forged, 0, true);
    // ... and its own job with an attempt that was never made.
    let later = pb::JobResult {
        attempt: 2,
        ..result(&job[0], true)
    };
    w.results_frame(a, 2, vec![later], 0, true);
    let s = w.status(id);
    assert_eq!(
        (s.sent, s.in_flight, s.pending),
        (0, 1, 99),
        "nothing forged counts"
    );
    w.core.publish(w.now);
    assert_eq!(w.core.subscribe().borrow().metrics.handoffs_refused, 100);
    // The attempt that was made, handed in after a reconnect, does count.
    w.core.on_node_lost(a, "broken", w.now, &mut w.out);
    let a2 = w.join("a", 1);
    w.results_frame(a2, 3, vec![result(&job[0], true)], 0, true);
    assert_eq!(w.status(id).sent, 1);
    assert!(!w.out.closed.get(&a2).is_some_and(Option::is_some));
}

#[test]
fn cancelled_messages_are_not_throughput() {
    let mut w = World::new(Config {
        max_jobs_per_frame: 1000,
        ..config()
    });
    let id = w.submit(1_000, 3);
    let a = w.join("a", 100);
    w.grant(a, 100);
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    w.core.publish(w.now);
    // 50 sent in a second; then a cancel while 50 are still out.
    w.now += Duration::from_secs(1);
    w.results(a, &jobs[..50], true, 0);
    w.core.publish(w.now);
    w.now += Duration::from_millis(500);
    w.core.on_cancel(id, &Tenant::default(), w.now).unwrap();
    w.core.publish(w.now);
    let s = w.status(id);
    assert_eq!((s.state, s.cancelled), (BatchState::Cancelling as i32, 900));
    assert!(
        s.rate_per_sec < 100.0,
        "900 cancelled messages are no rate: {}",
        s.rate_per_sec
    );
}

#[test]
fn names_of_nodes_that_never_got_a_job_are_reclaimed() {
    let mut w = World::new(config());
    // More distinct names than a u16 index holds, each a node that came and went idle.
    for i in 0..70_000u32 {
        let sid = w.join(&format!("idle-{i}"), 1);
        w.core.on_node_lost(sid, "gone", w.now, &mut w.out);
        w.out.sent.clear();
    }
    // A node that works keeps its name, and its outcome names it after more come and go.
    let id = w.submit(1, 1);
    let a = w.join("worker", 1);
    w.grant(a, 1);
    w.dispatch();
    let job = w.out.take_jobs(a).concat();
    w.results(a, &job, true, 0);
    w.core.on_node_lost(a, "done", w.now, &mut w.out);
    for i in 0..10 {
        let sid = w.join(&format!("later-{i}"), 1);
        w.core.on_node_lost(sid, "gone", w.now, &mut w.out);
    }
    let m = w.message(id, 0);
    assert_eq!(m.node, "worker");
    w.core.publish(w.now);
    let nodes = w.core.subscribe().borrow().metrics.nodes.clone();
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["worker"],
        "metrics list the nodes that worked or are connected, not every name ever seen"
    );
}
