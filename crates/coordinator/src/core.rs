//! The coordinator's reactor: the one owner of batches, nodes and credits.
//!
//! Everything that changes scheduling state is an `on_*` function on [`Core`],
//! synchronous and given the current time, which talks to nodes only through
//! an [`Outbox`]. [`dispatch`](Core::dispatch) then hands pending messages to
//! nodes with free credit, many jobs to a frame. The async loop that feeds
//! events in lives in [`crate::reactor`]; tests drive `Core` directly.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rustc_hash::{FxHashMap, FxHashSet};
use smsmesh::pb::{self, coordinator_to_node, node_to_coordinator};
use smsmesh::{BatchId, Error, MessageId};
use tokio::sync::watch;
use tonic::Status;

use crate::Config;
use crate::auth::Tenant;
use crate::batch::{self, Batch, Content};
use crate::store::{Loaded, Outcome, StoredBatchState, WriteSet};

/// Id of one node stream (a reconnect is a new session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A node's outbound queue is full (it does not read its stream) or gone.
#[derive(Debug, thiserror::Error)]
#[error("the node's outbound queue is full or closed")]
pub struct Unreachable;

/// The outbound side of node streams, as the reactor sees it.
pub trait Outbox {
    /// Queues `msg` for the session. Fails if the node's queue is full or gone.
    fn send(&mut self, session: SessionId, msg: pb::CoordinatorToNode) -> Result<(), Unreachable>;
    /// Ends the session's stream: with `status` as the error, or cleanly.
    fn close(&mut self, session: SessionId, status: Option<Status>);
}

/// A batch as validated by the API layer, ready to be accepted.
#[derive(Debug)]
pub struct NewBatch {
    /// Its id, chosen by the API layer (and already stored, when durable).
    pub id: BatchId,
    /// The messages.
    pub content: Content,
    /// How many messages.
    pub total: u32,
    /// Attempts per message.
    pub max_attempts: u8,
    /// Client's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// The dispatch span, when the batch is traced.
    pub trace: Option<batch::Trace>,
    /// The tenant that submitted it.
    pub tenant: Tenant,
}

/// What becomes true once a group of writes is stored.
#[derive(Debug, Default)]
pub struct Committed {
    /// Acks for Results frames whose outcomes are in the group.
    pub acks: Vec<(SessionId, u64)>,
    /// Dispatch reservations in the group: (batch, mark).
    pub reservations: Vec<(u64, u32)>,
}

/// What progress watchers see: every running batch and those ended recently.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Status of each batch in the snapshot.
    pub batches: Vec<pb::BatchStatus>,
    /// Nodes connected now.
    pub nodes_connected: u32,
    /// Mesh-wide figures for `/metrics`.
    pub metrics: MeshMetrics,
}

/// Mesh-wide figures, as of the last snapshot: what `/metrics` shows.
#[derive(Clone, Debug)]
pub struct MeshMetrics {
    /// Message counters summed over every batch this coordinator knows.
    pub messages: batch::Counts,
    /// Batches accepted since the coordinator started.
    pub batches_accepted: u64,
    /// Batches running now.
    pub batches_running: u64,
    /// Batches that completed.
    pub batches_completed: u64,
    /// Batches cancelled.
    pub batches_cancelled: u64,
    /// Pending messages of each running batch: (batch id, pending).
    pub pending_by_batch: Vec<(String, u64)>,
    /// Per node name, connected or not.
    pub nodes: Vec<NodeMetrics>,
    /// Gateway latency of every attempt reported, as nodes measured it.
    pub latency: smsmesh::metrics::Buckets,
    /// Credits granted by nodes, in all.
    pub credits_granted: u64,
    /// Node streams opened (joins and re-joins).
    pub node_joins: u64,
    /// Node streams closed for breaking the protocol.
    pub node_protocol_errors: u64,
}

impl Default for MeshMetrics {
    fn default() -> Self {
        MeshMetrics {
            messages: batch::Counts::default(),
            batches_accepted: 0,
            batches_running: 0,
            batches_completed: 0,
            batches_cancelled: 0,
            pending_by_batch: Vec::new(),
            nodes: Vec::new(),
            latency: smsmesh::metrics::Buckets::latency(),
            credits_granted: 0,
            node_joins: 0,
            node_protocol_errors: 0,
        }
    }
}

/// One node's figures.
#[derive(Clone, Debug, Default)]
pub struct NodeMetrics {
    /// Its name.
    pub name: String,
    /// Whether it has a stream now.
    pub connected: bool,
    /// Attempts it reported sent / failed, since the coordinator started.
    pub attempts_sent: u64,
    /// Attempts it reported failed.
    pub attempts_failed: u64,
    /// Jobs it holds now.
    pub in_flight: u64,
    /// Credit it granted and that is not used yet.
    pub credit: u64,
    /// The concurrency it declared.
    pub concurrency: u64,
}

struct Session {
    /// Index of the node's name in `Core::node_names`.
    node: u16,
    name: String,
    instance_id: u64,
    concurrency: u32,
    credit: u32,
    /// Jobs the node holds: (batch, index).
    held: FxHashSet<(u64, u32)>,
    going_away: bool,
    last_seen: Instant,
    /// Highest Results seq recorded and not yet acked.
    ack_due: Option<u64>,
    /// Highest Results seq stored and not yet acked to the node: the ack rides
    /// with the next Jobs frame, or goes on the next tick.
    ack_ready: Option<u64>,
}

/// The frame that acks a node's Results frames up to `seq`.
fn ack_frame(seq: u64) -> pb::CoordinatorToNode {
    pb::CoordinatorToNode {
        update: Some(coordinator_to_node::Update::Ack(pb::Ack { seq })),
    }
}

/// Outcomes enough for a group commit to go without waiting for the commit interval.
const URGENT_OUTCOMES: usize = 4096;

/// The coordinator's whole scheduling state.
pub struct Core {
    config: Config,
    batches: FxHashMap<u64, Batch>,
    /// Batches still dispatching, in submission order.
    running: Vec<u64>,
    /// Rotates which batch fills the next frame.
    batch_cursor: usize,
    sessions: BTreeMap<SessionId, Session>,
    /// Sum of the concurrency the connected nodes declared.
    capacity: u64,
    /// Whether some session has an ack due (its `ack_due` is set).
    acks_due: bool,
    /// Whether some session has an ack waiting for a Jobs frame (its `ack_ready` is set).
    acks_ready: bool,
    /// Rotates which node is served first.
    node_cursor: usize,
    /// Scratch (number, body) of the job being encoded: reused, never reallocated.
    scratch: (String, String),
    next_session: u64,
    node_names: Vec<String>,
    node_index: FxHashMap<String, u16>,
    idempotency: FxHashMap<String, BatchId>,
    /// Batches that ended, for the progress snapshot.
    recently_ended: VecDeque<(Instant, u64)>,
    /// Set when something watchers should see at once happened.
    publish_now: bool,
    /// Changes not yet handed to the store.
    write: WriteSet,
    /// Batch state last handed to the store, per batch.
    stored_state: FxHashMap<u64, StoredBatchState>,
    /// Whether a store backs this core (then dispatch waits for reservations).
    durable: bool,
    progress: watch::Sender<Arc<Snapshot>>,
    /// Running figures for `/metrics` that are not derived from batches.
    stats: RunningStats,
}

/// Figures counted as events happen (the rest of [`MeshMetrics`] is derived at publish).
#[derive(Debug)]
struct RunningStats {
    latency: smsmesh::metrics::Buckets,
    /// Per node index: (attempts sent, attempts failed).
    attempts: Vec<(u64, u64)>,
    credits_granted: u64,
    node_joins: u64,
    node_protocol_errors: u64,
    batches_accepted: u64,
}

impl Core {
    /// An empty coordinator.
    pub fn new(config: Config) -> Self {
        Core {
            config,
            batches: FxHashMap::default(),
            running: Vec::new(),
            batch_cursor: 0,
            sessions: BTreeMap::new(),
            capacity: 0,
            acks_due: false,
            acks_ready: false,
            node_cursor: 0,
            scratch: (
                String::with_capacity(32),
                String::with_capacity(2 * smsmesh::synth::BODY_LEN),
            ),
            next_session: 1,
            node_names: Vec::new(),
            node_index: FxHashMap::default(),
            idempotency: FxHashMap::default(),
            recently_ended: VecDeque::new(),
            publish_now: false,
            write: WriteSet::default(),
            stored_state: FxHashMap::default(),
            durable: false,
            progress: watch::Sender::new(Arc::new(Snapshot::default())),
            stats: RunningStats {
                latency: smsmesh::metrics::Buckets::latency(),
                attempts: Vec::new(),
                credits_granted: 0,
                node_joins: 0,
                node_protocol_errors: 0,
                batches_accepted: 0,
            },
        }
    }

    /// A coordinator restored from what the store holds. Messages that may
    /// have been in flight at the crash go out again with a higher attempt
    /// number and are counted as `resent`.
    pub fn recover(config: Config, loaded: Loaded, now: Instant) -> Self {
        let mut core = Core::new(config);
        core.durable = true;
        for (n, name) in loaded.nodes {
            let n = n as usize;
            if core.node_names.len() <= n {
                core.node_names.resize(n + 1, String::new());
            }
            core.node_index.insert(name.clone(), n as u16);
            core.node_names[n] = name;
        }
        let unix_now = unix_ms();
        for lb in loaded.batches {
            let sb = lb.batch;
            let content = match sb.synthetic_seed {
                Some(seed) => Content::Synthetic {
                    seed,
                    body: sb.synthetic_body,
                },
                None => Content::Explicit(sb.messages),
            };
            let age = Duration::from_millis(unix_now.saturating_sub(sb.accepted_unix_ms));
            let accepted = now.checked_sub(age).unwrap_or(now);
            let mut b = Batch::new(
                BatchId(sb.id),
                content,
                sb.total,
                sb.max_attempts as u8,
                accepted,
            );
            b.tenant = Tenant::new(&sb.tenant);
            let errors: FxHashMap<u32, String> = lb.errors.into_iter().collect();
            for (chunk, row) in &lb.chunks {
                let base = chunk * crate::store::CHUNK;
                for i in 0..crate::store::CHUNK {
                    let index = base + i;
                    if index >= sb.total {
                        break;
                    }
                    let (state, attempts, node) = crate::store::read_slot(row, i as usize);
                    if batch::is_final(state) {
                        b.restore(
                            index,
                            state,
                            attempts,
                            node,
                            errors.get(&index).map(String::as_str),
                        );
                    }
                }
            }
            b.counts.resent = lb.state.resent;
            b.counts.requeued = lb.state.requeued;
            b.counts.duplicates = lb.state.duplicates;
            if lb.state.cancelled {
                b.cancel(now);
            } else {
                // Unfinished messages below the reservation may have been sent. They go out
                // again with a higher attempt number (counted as re-sent then), after a grace
                // period in which reconnecting nodes hand in what they finished.
                let dispatched = lb.state.dispatched.min(sb.total);
                for index in 0..dispatched {
                    let slot = &mut b.slots[index as usize];
                    if !batch::is_final(slot.state) {
                        slot.state = batch::ST_RESUMED;
                        slot.attempts = slot.attempts.max(1);
                        b.resumed.push(index);
                    }
                }
                b.next_fresh = dispatched;
                if !b.resumed.is_empty() {
                    b.resume_at = Some(now + core.config.resume_grace);
                    tracing::info!(batch = %b.id, resumed = b.resumed.len(), grace = ?core.config.resume_grace, "resuming batch; messages that may have been in flight go out again after the grace period");
                }
            }
            b.reserved = lb.state.dispatched;
            core.stored_state.insert(sb.id, lb.state);
            if !b.check_end(now) && b.is_running() {
                core.running.push(sb.id);
            }
            core.batches.insert(sb.id, b);
        }
        for (key, id) in loaded.idempotency {
            core.idempotency.insert(key, BatchId(id));
        }
        core.running.sort_by_key(|id| core.batches[id].accepted_at);
        core
    }

    /// A new dispatch reservation for batch `id`, when it runs low.
    fn reservation_due(&self, id: u64) -> Option<u32> {
        let b = &self.batches[&id];
        if !self.durable || !b.is_running() {
            return None;
        }
        let total = b.counts.total as u32;
        let stored = self.stored_state.get(&id).map_or(0, |s| s.dispatched);
        let left = stored.saturating_sub(b.next_fresh);
        // Reserve what the nodes can hold at once (256 to 65,536 messages), refilled at
        // half: dispatch rarely waits for a commit, and after a crash at most that many
        // messages more than were really in flight are counted as re-sent.
        let step = self.capacity.clamp(256, 65_536) as u32;
        (stored < total && left < step / 2).then(|| b.next_fresh.saturating_add(step).min(total))
    }

    /// Takes the changes to store, and what to do once they are stored.
    pub fn take_writes(&mut self) -> (WriteSet, Committed) {
        let mut reservations = Vec::new();
        let changed: Vec<StoredBatchState> = self
            .running
            .iter()
            .map(|&id| self.batch_state(id))
            .filter(|state| self.stored_state.get(&state.id) != Some(state))
            .collect();
        for state in changed {
            if state.dispatched > self.stored_state.get(&state.id).map_or(0, |s| s.dispatched) {
                reservations.push((state.id, state.dispatched));
            }
            self.stored_state.insert(state.id, state.clone());
            self.write.batches.push(state);
        }
        let acks = if std::mem::take(&mut self.acks_due) {
            self.sessions
                .iter_mut()
                .filter_map(|(sid, s)| s.ack_due.take().map(|seq| (*sid, seq)))
                .collect()
        } else {
            Vec::new()
        };
        (
            std::mem::take(&mut self.write),
            Committed { acks, reservations },
        )
    }

    /// Whether changes or acks wait for [`take_writes`](Self::take_writes).
    pub fn has_writes(&self) -> bool {
        !self.write.is_empty()
            || self.acks_due
            || self.running.iter().any(|&id| self.state_changed(id))
    }

    /// Whether waiting changes should be stored without waiting for the commit
    /// interval: a full group, a new node, or a batch state (a reservation that
    /// dispatch may wait for, a cancel, a batch's end).
    pub fn commit_urgent(&self) -> bool {
        self.write.outcomes.len() >= URGENT_OUTCOMES
            || !self.write.nodes.is_empty()
            || !self.write.batches.is_empty()
            || self.running.iter().any(|&id| self.state_changed(id))
    }

    /// The batch state to store for batch `id` now (with a new reservation if due).
    fn batch_state(&self, id: u64) -> StoredBatchState {
        let b = &self.batches[&id];
        let stored = self.stored_state.get(&id).map_or(0, |s| s.dispatched);
        StoredBatchState {
            id,
            cancelled: !b.is_running() && !matches!(b.state, pb::BatchState::Completed),
            dispatched: self.reservation_due(id).unwrap_or(stored).max(stored),
            resent: b.counts.resent,
            requeued: b.counts.requeued,
            duplicates: b.counts.duplicates,
        }
    }

    /// Whether batch `id`'s stored state is behind.
    fn state_changed(&self, id: u64) -> bool {
        self.stored_state.get(&id) != Some(&self.batch_state(id))
    }

    /// A group was stored: its reservations may be used and its acks sent.
    pub fn on_committed(&mut self, done: Committed, outbox: &mut impl Outbox) {
        for (id, reserved) in done.reservations {
            if let Some(b) = self.batches.get_mut(&id) {
                b.reserved = b.reserved.max(reserved);
            }
        }
        // An ack only lets the node forget results it keeps: it waits for the next Jobs
        // frame to the node (one write for both), or the next tick. A leaving node, or one
        // that will get no more jobs, has it now.
        let mut now_due = Vec::new();
        let idle = self.running.is_empty();
        for (sid, seq) in done.acks {
            if let Some(s) = self.sessions.get_mut(&sid) {
                let seq = s.ack_ready.map_or(seq, |a| a.max(seq));
                if idle || s.going_away {
                    s.ack_ready = None;
                    now_due.push((sid, seq));
                } else {
                    s.ack_ready = Some(seq);
                    self.acks_ready = true;
                }
            }
        }
        self.send_acks(now_due, outbox);
    }

    /// Sends every ack that waits for a Jobs frame.
    fn flush_acks(&mut self, outbox: &mut impl Outbox) {
        if !std::mem::take(&mut self.acks_ready) {
            return;
        }
        let due = self
            .sessions
            .iter_mut()
            .filter_map(|(sid, s)| s.ack_ready.take().map(|seq| (*sid, seq)))
            .collect();
        self.send_acks(due, outbox);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A receiver of progress snapshots.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.progress.subscribe()
    }

    /// Nodes connected now.
    pub fn nodes_connected(&self) -> usize {
        self.sessions.len()
    }

    // === client requests ===

    /// The batch an idempotency key (as stored) already made, if any.
    pub fn on_idempotent(&self, key: &str) -> Option<pb::SubmitBatchResponse> {
        let id = self.idempotency.get(key)?;
        let accepted = self.batches.get(&id.0).map_or(0, |b| b.counts.total);
        Some(pb::SubmitBatchResponse {
            batch_id: id.to_string(),
            accepted,
        })
    }

    /// Accepts a batch.
    pub fn on_submit(&mut self, new: NewBatch, now: Instant) -> pb::SubmitBatchResponse {
        if let Some(existing) = new
            .idempotency_key
            .as_deref()
            .and_then(|key| self.on_idempotent(key))
        {
            return existing;
        }
        let id = new.id;
        if let Some(key) = new.idempotency_key {
            self.idempotency.insert(key, id);
        }
        let mut batch = Batch::new(id, new.content, new.total, new.max_attempts, now);
        batch.trace = new.trace;
        batch.tenant = new.tenant;
        if self.durable {
            batch.reserved = 0; // dispatch starts once a reservation is stored
        }
        tracing::info!(batch = %id, total = new.total, "batch accepted");
        self.stats.batches_accepted += 1;
        self.batches.insert(id.0, batch);
        self.running.push(id.0);
        self.publish_now = true;
        pb::SubmitBatchResponse {
            batch_id: id.to_string(),
            accepted: u64::from(new.total),
        }
    }

    /// Status of a batch.
    pub fn on_batch_status(
        &self,
        id: BatchId,
        tenant: &Tenant,
        now: Instant,
    ) -> Result<pb::BatchStatus, Error> {
        let batch = self.batch(id, tenant)?;
        Ok(self.batch_status(batch, now))
    }

    /// Status of a message.
    pub fn on_message_status(
        &self,
        id: MessageId,
        tenant: &Tenant,
    ) -> Result<pb::MessageStatus, Error> {
        let batch = self.batch(id.batch, tenant)?;
        if u64::from(id.index) >= batch.counts.total {
            return Err(Error::NotFound(format!(
                "message {id} not found: batch {} has {} messages (indexes 0 to {})",
                id.batch,
                batch.counts.total,
                batch.counts.total - 1
            )));
        }
        let slot = batch.slots[id.index as usize];
        let (mut to, mut body) = (String::new(), String::new());
        let client_ref = batch
            .message(id.index, &mut to, &mut body)
            .unwrap_or_default();
        let node = slot
            .node
            .checked_sub(1)
            .map(|n| self.node_names[n as usize].clone())
            .unwrap_or_default();
        let last_error = batch.last_error(id.index).unwrap_or_default().to_string();
        Ok(pb::MessageStatus {
            message_id: id.to_string(),
            state: batch.message_state(id.index) as i32,
            attempts: u32::from(slot.attempts),
            node,
            last_error,
            to,
            client_ref,
        })
    }

    /// Cancels a batch: nothing more of it is dispatched.
    pub fn on_cancel(
        &mut self,
        id: BatchId,
        tenant: &Tenant,
        now: Instant,
    ) -> Result<pb::BatchStatus, Error> {
        self.batch(id, tenant)?;
        let batch = self.batches.get_mut(&id.0).ok_or_else(|| not_found(id))?;
        if batch.cancel(now) {
            tracing::info!(batch = %id, in_flight = batch.counts.in_flight, "batch cancelled");
            let ended = batch.is_ended();
            let state = self.batch_state(id.0);
            self.stored_state.insert(id.0, state.clone());
            self.write.batches.push(state);
            self.running.retain(|&b| b != id.0);
            if ended {
                self.on_batch_ended(id.0, now);
            }
            self.publish_now = true;
        }
        self.on_batch_status(id, tenant, now)
    }

    /// Messages of `tenant` not finished yet (pending or in flight).
    pub fn tenant_unfinished(&self, tenant: &Tenant) -> u64 {
        self.running
            .iter()
            .map(|id| &self.batches[id])
            .filter(|b| b.tenant == *tenant)
            .map(|b| b.counts.total - b.counts.finished())
            .sum()
    }

    /// Bookkeeping once a batch reached its final state.
    fn on_batch_ended(&mut self, id: u64, now: Instant) {
        let b = &self.batches[&id];
        tracing::info!(batch = %b.id, state = ?b.state, sent = b.counts.sent, failed = b.counts.failed, cancelled = b.counts.cancelled, "batch ended");
        self.running.retain(|&r| r != id);
        self.recently_ended.push_back((now, id));
        self.publish_now = true;
    }

    /// The batch `id` if `tenant` owns it: another tenant's batch is not found,
    /// exactly like one that does not exist.
    fn batch(&self, id: BatchId, tenant: &Tenant) -> Result<&Batch, Error> {
        self.batches
            .get(&id.0)
            .filter(|b| b.tenant == *tenant)
            .ok_or_else(|| not_found(id))
    }

    // === nodes ===

    /// A node said hello on a new stream; `outbox` can already reach `session`.
    pub fn on_node_joined(
        &mut self,
        session: SessionId,
        hello: pb::Hello,
        now: Instant,
        outbox: &mut impl Outbox,
    ) -> Result<(), Error> {
        validate_hello(&hello, self.config.max_node_concurrency)?;
        let existing = self
            .sessions
            .iter()
            .find(|(_, s)| s.name == hello.name)
            .map(|(id, s)| (*id, s.instance_id));
        if let Some((old, instance)) = existing {
            if instance != hello.instance_id {
                return Err(Error::AlreadyExists(format!(
                    "a node named {:?} is already connected (another process uses that name; node names must be unique)",
                    hello.name
                )));
            }
            // The same process reconnected before its old stream was noticed dead.
            self.drop_session(
                old,
                Some(Status::aborted("replaced by a new stream of the same node")),
                outbox,
            );
        }
        let node = match self.node_index.get(&hello.name) {
            Some(&n) => n,
            None => {
                let n = u16::try_from(self.node_names.len())
                    .map_err(|_| Error::ResourceExhausted("too many distinct node names".into()))?;
                self.node_names.push(hello.name.clone());
                self.node_index.insert(hello.name.clone(), n);
                self.write.nodes.push((n, hello.name.clone()));
                n
            }
        };
        let welcome = pb::CoordinatorToNode {
            update: Some(coordinator_to_node::Update::Welcome(pb::Welcome {
                session_id: session.0,
                heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            })),
        };
        outbox
            .send(session, welcome)
            .map_err(|Unreachable| Error::Unavailable("node stream closed during hello".into()))?;
        tracing::info!(node = %hello.name, session = session.0, concurrency = hello.concurrency, gateway = %hello.gateway, "node joined");
        self.stats.node_joins += 1;
        self.capacity += u64::from(hello.concurrency);
        self.sessions.insert(
            session,
            Session {
                node,
                name: hello.name,
                instance_id: hello.instance_id,
                concurrency: hello.concurrency,
                credit: 0,
                held: FxHashSet::default(),
                going_away: false,
                last_seen: now,
                ack_due: None,
                ack_ready: None,
            },
        );
        self.publish_now = true;
        Ok(())
    }

    /// A new session id.
    pub fn next_session_id(&mut self) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        id
    }

    /// A frame from a node.
    pub fn on_node_message(
        &mut self,
        sid: SessionId,
        msg: pb::NodeToCoordinator,
        now: Instant,
        outbox: &mut impl Outbox,
    ) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return; // a session already dropped: ignore what it still says
        };
        session.last_seen = now;
        use node_to_coordinator::Update;
        let result = match msg.update {
            Some(Update::Hello(_)) => Err("Hello sent twice on one stream".to_string()),
            Some(Update::Grant(g)) => self.on_credit(sid, g.credits),
            Some(Update::Results(r)) => self.on_results(sid, r, now),
            Some(Update::Heartbeat(_)) => Ok(()),
            Some(Update::GoingAway(_)) => {
                session.going_away = true;
                session.credit = 0;
                if let Some(seq) = session.ack_ready.take() {
                    let _ = outbox.send(sid, ack_frame(seq));
                }
                tracing::info!(node = %session.name, held = session.held.len(), "node going away");
                let drained = pb::CoordinatorToNode {
                    update: Some(coordinator_to_node::Update::Drained(pb::Drained {})),
                };
                if outbox.send(sid, drained).is_err() {
                    Err("node's queue is full (it does not read its stream)".to_string())
                } else {
                    Ok(())
                }
            }
            None => Err("empty message (no update set)".to_string()),
        };
        if let Err(why) = result {
            tracing::warn!(session = sid.0, %why, "node broke the protocol; dropping it");
            self.stats.node_protocol_errors += 1;
            self.drop_session(sid, Some(Status::failed_precondition(why)), outbox);
        }
    }

    fn on_credit(&mut self, sid: SessionId, credits: u32) -> Result<(), String> {
        let s = self.sessions.get_mut(&sid).expect("caller checked");
        if s.going_away {
            return Ok(()); // leaving: credit is ignored
        }
        let total = u64::from(s.credit) + u64::from(credits) + s.held.len() as u64;
        if total > u64::from(s.concurrency) {
            return Err(format!(
                "credit overflow: granting {credits} with {} credits unused and {} jobs held exceeds the concurrency of {} said in Hello",
                s.credit,
                s.held.len(),
                s.concurrency
            ));
        }
        s.credit += credits;
        self.stats.credits_granted += u64::from(credits);
        Ok(())
    }

    fn on_results(&mut self, sid: SessionId, r: pb::Results, now: Instant) -> Result<(), String> {
        let mut ended = Vec::new();
        let applied = self.apply_results(sid, &r, now, &mut ended);
        // Batches that ended get their bookkeeping even if a later result was refused.
        for id in ended {
            self.on_batch_ended(id, now);
        }
        applied?;
        let session = self.sessions.get_mut(&sid).expect("caller checked");
        if r.seq > 0 {
            session.ack_due = Some(session.ack_due.map_or(r.seq, |s| s.max(r.seq)));
            self.acks_due = true;
        }
        self.on_credit(sid, r.grant)
    }

    /// Applies each result of a frame; stops at the first one that breaks the protocol.
    fn apply_results(
        &mut self,
        sid: SessionId,
        r: &pb::Results,
        now: Instant,
        ended: &mut Vec<u64>,
    ) -> Result<(), String> {
        let retry_base = self.config.retry_base;
        let retry_max = self.config.retry_max;
        let session = self.sessions.get_mut(&sid).expect("caller checked");
        let node = session.node;
        for res in &r.results {
            // A handed-in result is from an earlier stream: it never settles a job held on this one
            // (the same message may be here again, as a later attempt).
            let held = !r.handoff && session.held.remove(&(res.batch, res.index));
            let id = MessageId {
                batch: BatchId(res.batch),
                index: res.index,
            };
            if !held && !r.handoff {
                return Err(format!(
                    "result for message {id} (attempt {}) which this node does not hold",
                    res.attempt
                ));
            }
            let sent = match pb::Outcome::try_from(res.outcome) {
                Ok(pb::Outcome::Sent) => true,
                Ok(pb::Outcome::Failed) => false,
                _ => return Err(format!("result for message {id} has no outcome")),
            };
            let stats = &mut self.stats;
            if stats.attempts.len() <= node as usize {
                stats.attempts.resize(node as usize + 1, (0, 0));
            }
            let a = &mut stats.attempts[node as usize];
            if sent {
                a.0 += 1;
            } else {
                a.1 += 1;
            }
            stats.latency.observe(res.latency_us as f64 / 1e6);
            let Some(batch) = self.batches.get_mut(&res.batch) else {
                continue; // handed in for a batch this coordinator does not know
            };
            if u64::from(res.index) >= batch.counts.total {
                continue; // handoff naming a message that does not exist
            }
            let reached = batch.on_result(
                res.index,
                res.attempt,
                node,
                held,
                sent,
                &res.error,
                res.latency_us,
                |failures| retry_delay(retry_base, retry_max, failures),
                now,
            );
            if let Some(state @ (batch::ST_SENT | batch::ST_FAILED)) = reached {
                let slot = batch.slots[res.index as usize];
                self.write.outcomes.push(Outcome {
                    batch: res.batch,
                    index: res.index,
                    state,
                    attempts: slot.attempts,
                    node: node + 1,
                    error: (state == batch::ST_FAILED).then(|| res.error.clone()),
                });
            }
            if batch.check_end(now) {
                ended.push(res.batch);
            }
        }
        Ok(())
    }

    /// A node's stream ended (cleanly or not): its jobs go back to the queue.
    pub fn on_node_lost(&mut self, sid: SessionId, reason: &str, outbox: &mut impl Outbox) {
        if let Some(s) = self.sessions.get(&sid) {
            if s.held.is_empty() {
                tracing::info!(node = %s.name, %reason, "node left");
            } else {
                tracing::warn!(node = %s.name, %reason, held = s.held.len(), "node lost; requeueing its jobs");
            }
        }
        self.drop_session(sid, None, outbox);
    }

    /// A node broke a limit: its stream is closed with `status` and its jobs requeued.
    pub fn on_node_refused(&mut self, sid: SessionId, status: Status, outbox: &mut impl Outbox) {
        if let Some(s) = self.sessions.get(&sid) {
            tracing::warn!(node = %s.name, why = %status.message(), "dropping a node that broke a limit");
            self.stats.node_protocol_errors += 1;
        }
        self.drop_session(sid, Some(status), outbox);
    }

    fn drop_session(&mut self, sid: SessionId, status: Option<Status>, outbox: &mut impl Outbox) {
        outbox.close(sid, status);
        let Some(session) = self.sessions.remove(&sid) else {
            return;
        };
        self.capacity -= u64::from(session.concurrency);
        let now = Instant::now();
        for (batch, index) in session.held {
            if let Some(b) = self.batches.get_mut(&batch) {
                b.requeue(index, session.node);
                if b.check_end(now) {
                    self.on_batch_ended(batch, now);
                }
            }
        }
        self.publish_now = true;
    }

    /// The coordinator is stopping: every node stream is closed.
    pub fn on_shutdown(&mut self, outbox: &mut impl Outbox) {
        let all: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in all {
            self.drop_session(
                sid,
                Some(Status::unavailable("coordinator shutting down")),
                outbox,
            );
        }
    }

    /// Periodic work: drops nodes that went silent.
    pub fn on_tick(&mut self, now: Instant, outbox: &mut impl Outbox) {
        self.flush_acks(outbox);
        let timeout = self.config.node_timeout;
        let silent: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_seen) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for sid in silent {
            let name = self.sessions[&sid].name.clone();
            tracing::warn!(node = %name, "node silent for longer than {timeout:?}; dropping it");
            self.drop_session(
                sid,
                Some(Status::unavailable(format!(
                    "no message from the node for {timeout:?}"
                ))),
                outbox,
            );
        }
    }

    /// When the next retry backoff ends, if any.
    pub fn next_retry_due(&self) -> Option<Instant> {
        self.running
            .iter()
            .filter_map(|b| self.batches[b].next_retry())
            .min()
    }

    fn send_acks(&mut self, acks: Vec<(SessionId, u64)>, outbox: &mut impl Outbox) {
        let mut broken = Vec::new();
        for (sid, seq) in acks {
            if !self.sessions.contains_key(&sid) {
                continue;
            }
            if outbox.send(sid, ack_frame(seq)).is_err() {
                broken.push(sid);
            }
        }
        for sid in broken {
            self.drop_session(
                sid,
                Some(Status::resource_exhausted("node's queue is full")),
                outbox,
            );
        }
    }

    // === dispatch ===

    /// Hands pending messages to nodes with free credit.
    pub fn dispatch(&mut self, now: Instant, outbox: &mut impl Outbox) {
        let mut any = false;
        for b in &self.running {
            let batch = self.batches.get_mut(b).expect("running batch exists");
            batch.promote_due_retries(now);
            any |= batch.has_ready_work();
        }
        if !any {
            // No Jobs frame will carry the acks that wait for one.
            self.flush_acks(outbox);
            return;
        }
        let ready: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.credit > 0 && !s.going_away)
            .map(|(id, _)| *id)
            .collect();
        if ready.is_empty() {
            return;
        }
        self.node_cursor = (self.node_cursor + 1) % ready.len();
        let others_available = ready.len() > 1;
        let mut broken = Vec::new();
        'nodes: for k in 0..ready.len() {
            let sid = ready[(self.node_cursor + k) % ready.len()];
            let session = self.sessions.get_mut(&sid).expect("listed above");
            while session.credit > 0 {
                let want = (session.credit as usize).min(self.config.max_jobs_per_frame);
                let mut jobs = smsmesh::wire::Jobs::with_capacity(want);
                let n = self.running.len();
                for step in 0..n {
                    let bid = self.running[(self.batch_cursor + step) % n];
                    let batch = self.batches.get_mut(&bid).expect("running batch exists");
                    while jobs.len() < want {
                        let Some(index) = batch.take_next(session.node, others_available) else {
                            break;
                        };
                        let attempt = batch.mark_dispatched(index, session.node);
                        // Made in reused scratch strings, encoded straight into the frame.
                        let (to, body) = &mut self.scratch;
                        batch.content(index, to, body);
                        session.held.insert((bid, index));
                        jobs.push_encoded(&smsmesh::wire::JobRef {
                            batch: bid,
                            index,
                            attempt,
                            to,
                            body,
                            traceparent: batch.job_traceparent(index),
                        });
                    }
                    if jobs.len() == want {
                        break;
                    }
                }
                if n > 0 {
                    self.batch_cursor = (self.batch_cursor + 1) % n;
                }
                if jobs.is_empty() {
                    break 'nodes; // nothing left to send
                }
                session.credit -= jobs.len() as u32;
                if let Some(seq) = session.ack_ready.take()
                    && outbox.send(sid, ack_frame(seq)).is_err()
                {
                    broken.push(sid);
                    continue 'nodes;
                }
                let frame = pb::CoordinatorToNode {
                    update: Some(coordinator_to_node::Update::Jobs(jobs)),
                };
                if outbox.send(sid, frame).is_err() {
                    broken.push(sid);
                    continue 'nodes;
                }
            }
        }
        for sid in broken {
            self.drop_session(
                sid,
                Some(Status::resource_exhausted(
                    "node's queue is full (it does not read its stream)",
                )),
                outbox,
            );
        }
    }

    // === progress ===

    /// Whether a state change is waiting to be published.
    pub fn publish_due(&self) -> bool {
        self.publish_now
    }

    /// Publishes a progress snapshot to watchers.
    pub fn publish(&mut self, now: Instant) {
        self.publish_now = false;
        let keep = self.config.keep_ended_in_progress;
        while let Some((t, _)) = self.recently_ended.front() {
            if now.saturating_duration_since(*t) <= keep {
                break;
            }
            self.recently_ended.pop_front();
        }
        let mut ids: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, b)| !b.is_ended())
            .map(|(id, _)| *id)
            .collect();
        ids.extend(self.recently_ended.iter().map(|(_, id)| *id));
        ids.sort_by_key(|id| self.batches[id].accepted_at);
        ids.dedup();
        for id in &ids {
            update_rate(self.batches.get_mut(id).expect("listed"), now);
        }
        let batches = ids
            .iter()
            .map(|id| self.batch_status(&self.batches[id], now))
            .collect();
        let metrics = self.mesh_metrics();
        self.progress.send_replace(Arc::new(Snapshot {
            batches,
            nodes_connected: self.sessions.len() as u32,
            metrics,
        }));
    }

    /// Mesh-wide figures: counters summed over every batch, and node state now.
    fn mesh_metrics(&self) -> MeshMetrics {
        let mut m = MeshMetrics {
            batches_accepted: self.stats.batches_accepted,
            latency: self.stats.latency.clone(),
            credits_granted: self.stats.credits_granted,
            node_joins: self.stats.node_joins,
            node_protocol_errors: self.stats.node_protocol_errors,
            ..MeshMetrics::default()
        };
        for b in self.batches.values() {
            m.messages += b.counts;
            match b.state {
                pb::BatchState::Completed => m.batches_completed += 1,
                pb::BatchState::Cancelled => m.batches_cancelled += 1,
                _ => {}
            }
        }
        for id in &self.running {
            let b = &self.batches[id];
            m.pending_by_batch
                .push((b.id.to_string(), b.counts.pending()));
        }
        m.batches_running = self.running.len() as u64;
        m.nodes = self
            .node_names
            .iter()
            .enumerate()
            .map(|(n, name)| {
                let (sent, failed) = self.stats.attempts.get(n).copied().unwrap_or_default();
                NodeMetrics {
                    name: name.clone(),
                    attempts_sent: sent,
                    attempts_failed: failed,
                    ..NodeMetrics::default()
                }
            })
            .collect();
        for s in self.sessions.values() {
            if let Some(n) = m.nodes.get_mut(s.node as usize) {
                n.connected = true;
                n.in_flight += s.held.len() as u64;
                n.credit += u64::from(s.credit);
                n.concurrency += u64::from(s.concurrency);
            }
        }
        m
    }

    fn batch_status(&self, b: &Batch, now: Instant) -> pb::BatchStatus {
        let c = b.counts;
        let connected: FxHashSet<u16> = self.sessions.values().map(|s| s.node).collect();
        let nodes = b
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(n, share)| share.as_ref().map(|s| (n, s)))
            .map(|(n, s)| pb::NodeBreakdown {
                node: self.node_names[n].clone(),
                sent: s.sent,
                failed_attempts: s.failed_attempts,
                in_flight: s.in_flight,
                latency: Some(latency(&s.latency)),
                connected: connected.contains(&(n as u16)),
            })
            .collect();
        let remaining = c.total - c.finished();
        let eta = if b.is_ended() || b.rate <= 0.0 {
            0.0
        } else {
            remaining as f64 / b.rate
        };
        let end = b.ended_at.unwrap_or(now);
        pb::BatchStatus {
            batch_id: b.id.to_string(),
            state: b.state as i32,
            total: c.total,
            pending: c.pending(),
            in_flight: c.in_flight,
            sent: c.sent,
            failed: c.failed,
            cancelled: c.cancelled,
            retried: c.retried,
            requeued: c.requeued,
            latency: Some(latency(&b.latency)),
            nodes,
            max_attempts: u32::from(b.max_attempts),
            rate_per_sec: if b.is_ended() { 0.0 } else { b.rate },
            eta_seconds: eta,
            elapsed_seconds: end.saturating_duration_since(b.accepted_at).as_secs_f64(),
            resent: c.resent,
            duplicates: c.duplicates,
            tenant: b.tenant.as_str().to_string(),
            synthetic_seed: match b.content {
                Content::Synthetic { seed, .. } => Some(seed),
                Content::Explicit(_) => None,
            },
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn not_found(id: BatchId) -> Error {
    Error::NotFound(format!("batch {id} not found"))
}

fn validate_hello(hello: &pb::Hello, max_concurrency: u32) -> Result<(), Error> {
    if hello.name.is_empty() || hello.name.len() > 128 || hello.name.chars().any(|c| c.is_control())
    {
        return Err(Error::invalid(format!(
            "Hello.name {:?} is not a node name (1 to 128 printable characters)",
            hello.name
        )));
    }
    if hello.concurrency == 0 || hello.concurrency > max_concurrency {
        return Err(Error::invalid(format!(
            "Hello.concurrency {} is out of range (1 to {max_concurrency})",
            hello.concurrency
        )));
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

fn update_rate(b: &mut Batch, now: Instant) {
    let (prev, at) = b.rate_sample;
    let dt = now.saturating_duration_since(at).as_secs_f64();
    if dt < 0.05 {
        return;
    }
    let finished = b.counts.finished();
    let inst = (finished - prev) as f64 / dt;
    // Smooth over about two seconds.
    let alpha = 1.0 - (-dt / 2.0).exp();
    b.rate = if prev == 0 && b.rate == 0.0 {
        inst
    } else {
        alpha * inst + (1.0 - alpha) * b.rate
    };
    b.rate_sample = (finished, now);
}

fn latency(h: &hdrhistogram::Histogram<u32>) -> pb::Latency {
    if h.is_empty() {
        return pb::Latency::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    pb::Latency {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}
