//! The reactor's `on_*` functions driven directly, with a recording outbox
//! and explicit time: no sockets, no tasks.

use smsmesh_coordinator::auth::Tenant;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use smsmesh::pb::{self, BatchState, coordinator_to_node, node_to_coordinator};
use smsmesh::{BatchId, MessageId};
use smsmesh_coordinator::Config;
use smsmesh_coordinator::batch::Content;
use smsmesh_coordinator::core::{Core, NewBatch, Outbox, SessionId, Unreachable};
use tonic::Code;

/// Records what the reactor sends, and can pretend a node's queue is full.
#[derive(Default)]
struct TestOutbox {
    sent: HashMap<SessionId, Vec<pb::CoordinatorToNode>>,
    closed: HashMap<SessionId, Option<smsmesh::Error>>,
    full: Vec<SessionId>,
}

impl Outbox for TestOutbox {
    fn send(&mut self, s: SessionId, msg: pb::CoordinatorToNode) -> Result<(), Unreachable> {
        if self.full.contains(&s) {
            return Err(Unreachable);
        }
        // Kept as a node would read it: encoded, then decoded.
        let msg = pb::CoordinatorToNode::decode(msg.encode_to_vec().as_slice())
            .expect("the reactor's frames decode");
        self.sent.entry(s).or_default().push(msg);
        Ok(())
    }

    fn close(&mut self, s: SessionId, error: Option<smsmesh::Error>) {
        self.closed.insert(s, error);
    }
}

impl TestOutbox {
    /// Jobs sent to `s` since the last call, frame by frame.
    fn take_jobs(&mut self, s: SessionId) -> Vec<Vec<pb::Job>> {
        self.sent
            .remove(&s)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| match m.update {
                Some(coordinator_to_node::Update::Jobs(j)) => Some(j.jobs),
                _ => None,
            })
            .collect()
    }
}

struct World {
    core: Core,
    out: TestOutbox,
    now: Instant,
}

impl World {
    fn new(config: Config) -> Self {
        World {
            core: Core::new(config),
            out: TestOutbox::default(),
            now: Instant::now(),
        }
    }

    fn join(&mut self, name: &str, concurrency: u32) -> SessionId {
        let sid = self.core.next_session_id();
        let hello = pb::Hello {
            name: name.into(),
            instance_id: 1,
            concurrency,
            gateway: "test".into(),
        };
        self.core
            .on_node_joined(sid, hello, self.now, &mut self.out)
            .unwrap();
        sid
    }

    fn msg(&mut self, sid: SessionId, u: node_to_coordinator::Update) {
        self.core.on_node_message(
            sid,
            pb::NodeToCoordinator { update: Some(u) },
            self.now,
            &mut self.out,
        );
    }

    fn grant(&mut self, sid: SessionId, credits: u32) {
        self.msg(
            sid,
            node_to_coordinator::Update::Grant(pb::Grant { credits }),
        );
    }

    fn results(&mut self, sid: SessionId, jobs: &[pb::Job], sent: bool, grant: u32) {
        let results = jobs
            .iter()
            .map(|j| pb::JobResult {
                batch: j.batch,
                index: j.index,
                attempt: j.attempt,
                outcome: if sent {
                    pb::Outcome::Sent
                } else {
                    pb::Outcome::Failed
                } as i32,
                error: if sent { String::new() } else { "boom".into() },
                latency_us: 100,
            })
            .collect();
        self.msg(
            sid,
            node_to_coordinator::Update::Results(pb::Results {
                seq: 1,
                results,
                grant,
                handoff: false,
            }),
        );
    }

    fn submit(&mut self, total: u32, max_attempts: u8) -> BatchId {
        let b = NewBatch {
            id: BatchId::random(),
            content: Content::Synthetic {
                seed: 1,
                body: None,
            },
            total,
            max_attempts,
            idempotency_key: None,
            trace: None,
            tenant: Tenant::default(),
        };
        self.core.on_submit(b, self.now).batch_id.parse().unwrap()
    }

    fn dispatch(&mut self) {
        self.core.dispatch(self.now, &mut self.out);
    }

    fn status(&self, id: BatchId) -> pb::BatchStatus {
        self.core
            .on_batch_status(id, &Tenant::default(), self.now)
            .unwrap()
    }
}

fn config() -> Config {
    Config {
        max_jobs_per_frame: 4,
        retry_base: Duration::from_millis(100),
        ..Config::default()
    }
}

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
    let m = w
        .core
        .on_message_status(
            MessageId {
                batch: id,
                index: 0,
            },
            &Tenant::default(),
        )
        .unwrap();
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
    let id = w.submit(4, 3);
    let a = w.join("a", 4);
    w.grant(a, 4);
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    let mut forged = jobs[0].clone();
    forged.index = 3;
    w.results(a, &jobs[..1], true, 0);
    w.results(a, &[jobs[0].clone()], true, 0); // the same result twice: no longer held
    let st = w
        .out
        .closed
        .get(&a)
        .cloned()
        .flatten()
        .expect("closed with a status");
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert!(st.to_string().contains("does not hold"));
    let s = w.status(id);
    assert_eq!((s.sent, s.requeued, s.in_flight), (1, 3, 0));

    let b = w.join("b", 2);
    w.grant(b, 3);
    assert_eq!(
        w.out.closed[&b].as_ref().unwrap().code(),
        Code::FailedPrecondition
    );
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
    w.now += Duration::from_secs(4);
    w.core.on_tick(w.now, &mut w.out);
    assert!(!w.out.closed.contains_key(&a));
    w.msg(a, node_to_coordinator::Update::Heartbeat(pb::Heartbeat {}));
    w.now += Duration::from_secs(6);
    w.core.on_tick(w.now, &mut w.out);
    assert_eq!(w.out.closed[&a].as_ref().unwrap().code(), Code::Unavailable);
    assert_eq!(w.status(id).pending, 2);
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
    };
    w.msg(
        a2,
        node_to_coordinator::Update::Results(pb::Results {
            seq: 2,
            results: vec![old],
            grant: 0,
            handoff: true,
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
