//! The core driven by random sequences of events (submits, joins, credit,
//! results, losses, cancels, commits, crashes and recoveries, time passing)
//! from model nodes that keep the protocol, checking its invariants after
//! every step and once everything is drained.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{World, config, result};
use proptest::prelude::*;
use smsmesh::BatchId;
use smsmesh::pb::{self, BatchState, MessageState, coordinator_to_node};
use smsmesh_coordinator::auth::Tenant;
use smsmesh_coordinator::core::SessionId;
use tonic::Code;

#[derive(Clone, Debug)]
enum Op {
    Submit(u32),
    Join(usize),
    Grant(usize),
    Finish(usize, usize, bool),
    Lose(usize),
    Cancel(usize),
    Commit,
    Crash,
    Advance,
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u32..40).prop_map(Op::Submit),
        3 => (0usize..3).prop_map(Op::Join),
        4 => (0usize..3).prop_map(Op::Grant),
        6 => (0usize..3, 1usize..6, proptest::bool::weighted(0.8))
            .prop_map(|(n, k, sent)| Op::Finish(n, k, sent)),
        1 => (0usize..3).prop_map(Op::Lose),
        1 => (0usize..4).prop_map(Op::Cancel),
        4 => Just(Op::Commit),
        1 => Just(Op::Crash),
        2 => Just(Op::Advance),
        1 => Just(Op::Tick),
    ]
}

/// A node that keeps the protocol, as `smsnode` does.
#[derive(Default)]
struct Node {
    sid: Option<SessionId>,
    concurrency: u32,
    /// Credit granted on this stream and not used by a job.
    credit: u32,
    /// Jobs received on this stream and not reported.
    held: Vec<pb::Job>,
    /// Jobs of an earlier stream, still to be reported (handed in).
    orphans: Vec<pb::Job>,
    /// Results frames sent and not acked: handed in again on a new stream.
    unacked: BTreeMap<u64, Vec<pb::JobResult>>,
    next_seq: u64,
}

struct Mesh {
    w: World,
    nodes: Vec<Node>,
    batches: Vec<BatchId>,
}

impl Mesh {
    fn new() -> Self {
        let nodes = (0..3)
            .map(|k| Node {
                concurrency: 3 + 4 * k as u32,
                next_seq: 1,
                ..Node::default()
            })
            .collect();
        Mesh {
            w: World::durable(common::Config {
                resume_grace: Duration::from_millis(500),
                ..config()
            }),
            nodes,
            batches: Vec::new(),
        }
    }

    fn lost(&mut self, k: usize) {
        let n = &mut self.nodes[k];
        n.sid = None;
        n.credit = 0;
        n.orphans.append(&mut n.held);
    }

    fn join(&mut self, k: usize) {
        if self.nodes[k].sid.is_some() {
            return;
        }
        let sid = self
            .w
            .try_join(&format!("node-{k}"), 1, self.nodes[k].concurrency)
            .expect("a node that keeps the protocol is welcome");
        self.nodes[k].sid = Some(sid);
        // Hand in what earlier streams left: unacked frames again, then what finished since.
        let frames: Vec<_> = self.nodes[k]
            .unacked
            .iter()
            .map(|(s, r)| (*s, r.clone()))
            .collect();
        for (seq, results) in frames {
            self.w.results_frame(sid, seq, results, 0, true);
        }
        let orphans = std::mem::take(&mut self.nodes[k].orphans);
        if !orphans.is_empty() {
            let results: Vec<_> = orphans.iter().map(|j| result(j, true)).collect();
            let seq = self.seq(k, results.clone());
            self.w.results_frame(sid, seq, results, 0, true);
        }
    }

    fn seq(&mut self, k: usize, results: Vec<pb::JobResult>) -> u64 {
        let n = &mut self.nodes[k];
        let seq = n.next_seq;
        n.next_seq += 1;
        n.unacked.insert(seq, results);
        seq
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Submit(total) => {
                let id = self.w.submit(total, 2);
                self.batches.push(id);
            }
            Op::Join(k) => self.join(k),
            Op::Grant(k) => {
                let n = &mut self.nodes[k];
                let Some(sid) = n.sid else { return };
                let free = n.concurrency - n.credit - n.held.len() as u32;
                if free > 0 {
                    n.credit += free;
                    self.w.grant(sid, free);
                }
            }
            Op::Finish(k, count, sent) => {
                let Some(sid) = self.nodes[k].sid else { return };
                let count = count.min(self.nodes[k].held.len());
                if count == 0 {
                    return;
                }
                let done: Vec<_> = self.nodes[k].held.drain(..count).collect();
                let results: Vec<_> = done.iter().map(|j| result(j, sent)).collect();
                let seq = self.seq(k, results.clone());
                self.w.frame(sid, seq, results, 0);
            }
            Op::Lose(k) => {
                if let Some(sid) = self.nodes[k].sid {
                    let now = self.w.now;
                    self.w.core.on_node_lost(sid, "test", now, &mut self.w.out);
                    self.lost(k);
                }
            }
            Op::Cancel(b) => {
                if let Some(&id) = self.batches.get(b) {
                    let now = self.w.now;
                    self.w.core.on_cancel(id, &Tenant::default(), now).unwrap();
                }
            }
            Op::Commit => self.w.commit(),
            Op::Crash => {
                self.w.crash();
                for k in 0..self.nodes.len() {
                    self.lost(k);
                }
            }
            Op::Advance => self.w.now += Duration::from_millis(700),
            Op::Tick => {
                let now = self.w.now;
                self.w.core.on_tick(now, &mut self.w.out);
            }
        }
        self.w.dispatch();
        self.deliver();
    }

    /// Each node reads what the core sent it.
    fn deliver(&mut self) {
        for k in 0..self.nodes.len() {
            let Some(sid) = self.nodes[k].sid else {
                continue;
            };
            for frame in self.w.out.take(sid) {
                let n = &mut self.nodes[k];
                match frame {
                    coordinator_to_node::Update::Jobs(j) => {
                        let got = j.jobs.len() as u32;
                        assert!(got <= n.credit, "{got} jobs on {} credit", n.credit);
                        n.credit -= got;
                        n.held.extend(j.jobs);
                        assert!(n.credit + n.held.len() as u32 <= n.concurrency);
                    }
                    coordinator_to_node::Update::Ack(a) => {
                        n.unacked = n.unacked.split_off(&(a.seq + 1));
                    }
                    _ => {}
                }
            }
            if let Some(why) = self.w.out.closed.get(&sid) {
                let code = why.as_ref().map(|e| e.code());
                assert_ne!(code, Some(Code::FailedPrecondition), "{why:?}");
                self.lost(k);
            }
        }
    }

    /// Invariants that hold after every step.
    fn check(&self) {
        for &id in &self.batches {
            let s = self.w.status(id);
            assert_eq!(
                s.pending + s.in_flight + s.sent + s.failed + s.cancelled,
                s.total,
                "counts add up to the total"
            );
            // A message is in flight on the node holding its current attempt. Another node
            // may still hold an older attempt of it (it was re-sent, or is already settled by
            // a result handed in): that job is not in flight in the books.
            let held: Vec<&pb::Job> = self
                .nodes
                .iter()
                .filter(|n| n.sid.is_some())
                .flat_map(|n| n.held.iter().filter(|j| j.batch == id.0))
                .collect();
            let current = held
                .iter()
                .filter(|j| {
                    let m = self.message(id, j.index);
                    m.state == MessageState::InFlight as i32 && m.attempts == j.attempt
                })
                .count();
            assert_eq!(s.in_flight, current as u64, "in flight is what nodes hold");
            assert!(s.in_flight <= held.len() as u64);
        }
    }

    fn message(&self, batch: BatchId, index: u32) -> pb::MessageStatus {
        self.w.message(batch, index)
    }

    /// Every node joins and works until every batch has ended.
    fn drain(&mut self) {
        for _ in 0..400 {
            let done = self.batches.iter().all(|&id| {
                let s = self.w.status(id);
                s.state == BatchState::Completed as i32 || s.state == BatchState::Cancelled as i32
            });
            if done {
                return;
            }
            for k in 0..self.nodes.len() {
                self.apply(&Op::Join(k));
                self.apply(&Op::Grant(k));
                self.apply(&Op::Finish(k, usize::MAX, true));
            }
            self.apply(&Op::Commit);
            self.apply(&Op::Advance);
        }
        panic!("the batches did not end");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_message_ends_exactly_once(ops in proptest::collection::vec(op(), 1..60)) {
        let mut m = Mesh::new();
        for op in &ops {
            m.apply(op);
            m.check();
        }
        m.drain();
        m.check();
        m.apply(&Op::Commit);
        let before: Vec<_> = m.batches.iter().map(|&id| m.w.status(id)).collect();
        // The books the store holds are the same books.
        m.apply(&Op::Crash);
        for (&id, b) in m.batches.iter().zip(&before) {
            let s = m.w.status(id);
            prop_assert_eq!(s.in_flight, 0);
            prop_assert_eq!(s.sent + s.failed + s.cancelled, s.total, "every message ended");
            prop_assert_eq!((s.sent, s.failed), (b.sent, b.failed), "stored as counted");
            for index in 0..s.total as u32 {
                let msg = m.message(id, index);
                let final_state = [MessageState::Sent, MessageState::Failed, MessageState::Cancelled]
                    .map(|st| st as i32)
                    .contains(&msg.state);
                prop_assert!(final_state, "message {} ended: {:?}", index, msg);
            }
        }
    }
}

/// The case that showed a job can be held without being in flight: after a
/// crash the message goes out again to another node, and the first node then
/// hands in that it was sent.
#[test]
fn a_message_resent_elsewhere_and_then_handed_in_is_settled_once() {
    let mut m = Mesh::new();
    let ops = [
        Op::Join(0),
        Op::Submit(1),
        Op::Commit,
        Op::Grant(0),
        Op::Crash,
        Op::Join(1),
        Op::Grant(1),
        Op::Advance,
        Op::Join(0),
    ];
    for op in &ops {
        m.apply(op);
        m.check();
    }
    let s = m.w.status(m.batches[0]);
    assert_eq!((s.sent, s.in_flight, s.resent), (1, 0, 1));
    assert_eq!(
        m.nodes[1].held.len(),
        1,
        "node 1 still holds the re-sent job"
    );
    m.apply(&Op::Finish(1, 1, true));
    m.check();
    let s = m.w.status(m.batches[0]);
    assert_eq!(
        (s.sent, s.duplicates),
        (1, 1),
        "its result is a duplicate, not a second send"
    );
}
