//! Dispatch: pending messages to nodes with free credit, many jobs to a
//! frame, never more to a node than it granted. Nodes take turns being
//! served first, and running batches take turns filling a frame.

use std::time::Instant;

use smsmesh::pb::{self, coordinator_to_node};

use super::{Core, Outbox, ack_frame, queue_full};

/// Where the last dispatch left off.
pub(super) struct Dispatcher {
    /// Rotates which node is served first.
    node_cursor: usize,
    /// Rotates which batch fills the next frame.
    batch_cursor: usize,
    /// Scratch (number, body) of the job being encoded: reused, never reallocated.
    scratch: (String, String),
}

impl Default for Dispatcher {
    fn default() -> Self {
        Dispatcher {
            node_cursor: 0,
            batch_cursor: 0,
            scratch: (
                String::with_capacity(32),
                String::with_capacity(2 * smsmesh::synth::BODY_LEN),
            ),
        }
    }
}

impl Core {
    /// When the next retry backoff (or resume grace) ends, if any: dispatch has
    /// work then.
    pub fn next_retry_due(&self) -> Option<Instant> {
        self.batches.next_retry_due()
    }

    /// Hands pending messages to nodes with free credit.
    pub fn dispatch(&mut self, now: Instant, outbox: &mut impl Outbox) {
        let mut any = false;
        for k in 0..self.batches.running_ids().len() {
            let batch = self.batches.running_mut(k);
            batch.promote_due_retries(now);
            any |= batch.has_ready_work();
        }
        if !any {
            // No Jobs frame will carry the acks that wait for one.
            self.flush_acks(now, outbox);
            return;
        }
        let ready = self.sessions.wanting_jobs();
        if ready.is_empty() {
            return;
        }
        let d = &mut self.dispatcher;
        d.node_cursor = (d.node_cursor + 1) % ready.len();
        let others_available = ready.len() > 1;
        let max_jobs = self.config.max_jobs_per_frame;
        let mut broken = Vec::new();
        'nodes: for k in 0..ready.len() {
            let sid = ready[(d.node_cursor + k) % ready.len()];
            let Some(session) = self.sessions.get_mut(sid) else {
                continue;
            };
            while session.credit > 0 {
                let want = (session.credit as usize).min(max_jobs);
                let mut jobs = smsmesh::wire::Jobs::with_capacity(want);
                let n = self.batches.running_ids().len();
                for step in 0..n {
                    let pos = (d.batch_cursor + step) % n;
                    let batch = self.batches.running_mut(pos);
                    let bid = batch.id.0;
                    while jobs.len() < want {
                        let Some(index) = batch.take_next(session.node, others_available) else {
                            break;
                        };
                        let attempt = batch.mark_dispatched(index, session.node);
                        // Made in reused scratch strings, encoded straight into the frame.
                        let (to, body) = &mut d.scratch;
                        batch.content(index, to, body);
                        session.held.insert((bid, index));
                        jobs.push_encoded(&smsmesh::wire::JobRef {
                            batch: bid,
                            index,
                            attempt,
                            to,
                            body,
                            traceparent: batch.job_traceparent(index),
                            sender: batch.sender(index),
                        });
                    }
                    if jobs.len() == want {
                        break;
                    }
                }
                if n > 0 {
                    d.batch_cursor = (d.batch_cursor + 1) % n;
                }
                if jobs.is_empty() {
                    break 'nodes; // nothing left to send
                }
                session.credit -= jobs.len() as u32;
                session.worked = true;
                // The ack that waits for a Jobs frame goes just before it.
                let ack = self.durability.acks.take_ready(sid).map(ack_frame);
                let frame = pb::CoordinatorToNode {
                    update: Some(coordinator_to_node::Update::Jobs(jobs)),
                };
                if ack
                    .into_iter()
                    .chain([frame])
                    .try_for_each(|f| outbox.send(sid, f))
                    .is_err()
                {
                    broken.push(sid);
                    continue 'nodes;
                }
            }
        }
        for sid in broken {
            self.drop_session(sid, Some(queue_full()), now, outbox);
        }
    }
}
