//! Dispatch: pending messages to nodes with free credit, many jobs to a
//! frame, never more to a node than it granted. Classes go strictly in order:
//! no job of a class while a more urgent class has one ready, and none of a
//! paused class. Within a class, tenants share by weight (stride scheduling:
//! a tenant's *pass* grows by the jobs it is given divided by its weight, and
//! the lowest pass goes next), and a tenant's batches take turns. Nodes take
//! turns being served first. The cost is in the running batches, never in
//! those accepted before.

use std::time::Instant;

use rustc_hash::FxHashMap;
use smsmesh::pb::{self, coordinator_to_node};
use smsmesh::priority::{CLASSES, Class};

use super::{Core, Outbox, ack_frame, queue_full};
use crate::auth::Tenant;

/// Jobs given to one tenant before the next is chosen.
const CHUNK: usize = 32;
/// What one job adds to the pass of a tenant of weight 1.
const STRIDE: u64 = 1 << 20;

/// Where the last dispatch left off.
pub(super) struct Dispatcher {
    /// Rotates which node is served first.
    node_cursor: usize,
    /// Rotates which of a tenant's batches goes first.
    batch_turn: usize,
    /// Per class, the pass of each tenant with work in it.
    pass: [FxHashMap<Tenant, u64>; CLASSES],
    /// Per class, the pass of the tenant served last: where a tenant that
    /// starts (or starts again) begins, so time without work is not banked.
    vtime: [u64; CLASSES],
    /// Scratch (number, body) of the job being encoded: reused, never reallocated.
    scratch: (String, String),
}

impl Default for Dispatcher {
    fn default() -> Self {
        Dispatcher {
            node_cursor: 0,
            batch_turn: 0,
            pass: Default::default(),
            vtime: [0; CLASSES],
            scratch: (
                String::with_capacity(32),
                String::with_capacity(2 * smsmesh::synth::BODY_LEN),
            ),
        }
    }
}

/// A tenant's running batches with work in one class.
struct TenantWork {
    tenant: Tenant,
    /// Its weight (at least 1).
    weight: u64,
    /// Positions in the running list.
    batches: Vec<usize>,
    /// Which of `batches` goes next.
    next: usize,
}

/// Per class (most urgent first), the tenants with work.
type Plan = [Vec<TenantWork>; CLASSES];

impl Core {
    /// When the next retry backoff (or resume grace) ends, if any: dispatch has
    /// work then.
    pub fn next_retry_due(&self) -> Option<Instant> {
        self.batches.next_retry_due()
    }

    /// Who has work now, by class and tenant; also drops the passes of
    /// tenants with none and starts new ones at their class's vtime.
    fn plan(&mut self, now: Instant) -> Option<Plan> {
        let mut plan: Plan = Default::default();
        let mut at: [FxHashMap<Tenant, usize>; CLASSES] = Default::default();
        for k in 0..self.batches.running_ids().len() {
            let batch = self.batches.running_mut(k);
            batch.promote_due_retries(now);
            if !batch.can_take_now() || self.paused[batch.class.index()] {
                continue;
            }
            let c = batch.class.index();
            let i = *at[c].entry(batch.tenant.clone()).or_insert_with(|| {
                let weight = self
                    .config
                    .tenant_weights
                    .get(batch.tenant.as_str())
                    .map_or(1, |&w| u64::from(w.max(1)));
                plan[c].push(TenantWork {
                    tenant: batch.tenant.clone(),
                    weight,
                    batches: Vec::new(),
                    next: self.dispatcher.batch_turn,
                });
                plan[c].len() - 1
            });
            plan[c][i].batches.push(k);
        }
        let d = &mut self.dispatcher;
        d.batch_turn = d.batch_turn.wrapping_add(1);
        for ((pass, at), vtime) in d.pass.iter_mut().zip(&at).zip(d.vtime) {
            pass.retain(|t, _| at.contains_key(t));
            for t in at.keys() {
                pass.entry(t.clone()).or_insert(vtime);
            }
        }
        plan.iter().any(|p| !p.is_empty()).then_some(plan)
    }

    /// Hands pending messages to nodes with free credit.
    pub fn dispatch(&mut self, now: Instant, outbox: &mut impl Outbox) {
        let Some(mut plan) = self.plan(now) else {
            // No Jobs frame will carry the acks that wait for one.
            self.flush_acks(now, outbox);
            return;
        };
        let ready = self.sessions.wanting_jobs();
        if ready.is_empty() {
            return;
        }
        let d = &mut self.dispatcher;
        d.node_cursor = (d.node_cursor + 1) % ready.len();
        let others_available = ready.len() > 1;
        let max_jobs = self.config.max_jobs_per_frame;
        let mut broken = Vec::new();
        let mut named = Vec::new();
        'nodes: for k in 0..ready.len() {
            let sid = ready[(d.node_cursor + k) % ready.len()];
            let Some(session) = self.sessions.get_mut(sid) else {
                continue;
            };
            // Batches (by position) with work but none for this node: retries
            // that avoid it.
            let mut skip: Vec<usize> = Vec::new();
            let open = |tw: &TenantWork, skip: &[usize]| {
                skip.is_empty() || tw.batches.iter().any(|b| !skip.contains(b))
            };
            while session.credit > 0 {
                let want = (session.credit as usize).min(max_jobs);
                let mut jobs = smsmesh::wire::Jobs::with_capacity(want);
                while jobs.len() < want {
                    // The most urgent class with work for this node, and in it
                    // the tenant with the lowest pass.
                    let Some((c, ti)) = plan.iter().enumerate().find_map(|(c, tenants)| {
                        let pass = &d.pass[c];
                        (0..tenants.len())
                            .filter(|&i| open(&tenants[i], &skip))
                            .min_by_key(|&i| pass.get(&tenants[i].tenant).copied().unwrap_or(0))
                            .map(|ti| (c, ti))
                    }) else {
                        break;
                    };
                    let tw = &mut plan[c][ti];
                    let chunk = (want - jobs.len()).min(CHUNK);
                    let mut taken = 0;
                    while taken < chunk {
                        let n = tw.batches.len();
                        let Some(bi) = (0..n)
                            .map(|k| (tw.next + k) % n)
                            .find(|&i| !skip.contains(&tw.batches[i]))
                        else {
                            break;
                        };
                        let pos = tw.batches[bi];
                        let batch = self.batches.running_mut(pos);
                        let (bid, class) = (batch.id.0, batch.class);
                        let had_share = batch.nodes.contains(session.node);
                        while taken < chunk {
                            let Some(index) = batch.take_next(session.node, others_available)
                            else {
                                break;
                            };
                            let attempt = batch.mark_dispatched(index, session.node, now);
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
                                priority: job_priority(class),
                            });
                            taken += 1;
                        }
                        if !had_share && batch.nodes.contains(session.node) {
                            named.push(session.node); // the batch names this node now
                        }
                        if taken == chunk {
                            tw.next = bi + 1;
                        } else if batch.can_take_now() {
                            skip.push(pos); // only this node has nothing of it
                        } else {
                            tw.batches.swap_remove(bi);
                        }
                    }
                    if let Some(p) = d.pass[c].get_mut(&tw.tenant) {
                        d.vtime[c] = d.vtime[c].max(*p);
                        *p += taken as u64 * STRIDE / tw.weight;
                    }
                    if tw.batches.is_empty() {
                        plan[c].swap_remove(ti);
                    }
                }
                if jobs.is_empty() {
                    continue 'nodes; // nothing left for this node
                }
                session.credit -= jobs.len() as u32;
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
        for n in named {
            self.sessions.names.named(n);
        }
        for sid in broken {
            self.drop_session(sid, Some(queue_full()), now, outbox);
        }
    }
}

/// `Job.priority` of a job of `class`: 0 for normal (as before classes, one
/// byte less a job), the proto value otherwise.
fn job_priority(class: Class) -> u32 {
    match class {
        Class::Normal => 0,
        c => c.to_proto() as u32,
    }
}
