//! The coordinator's core: the one owner of batches, node sessions and
//! credits, with no I/O.
//!
//! Everything that changes scheduling state is an `on_*` function on [`Core`],
//! synchronous and given the current time, which reaches nodes only through
//! an [`Outbox`]. The task that feeds events in is [`crate::reactor`]; tests
//! drive `Core` directly.
//!
//! The core is made of sub-states, each in a module of its own, borrowed apart
//! so that a handler needing two takes both at once:
//! - [`sessions`]: node streams, the credit each granted and the jobs each holds.
//! - [`batches`]: the accepted batches, which of them run, idempotency keys.
//! - [`durability`]: what waits to be stored, dispatch reservations, and acks
//!   that wait for a commit.
//! - [`receipts`]: which provider id names which message, and what delivery
//!   receipts said.
//!
//! and the work is in modules of its own too, in the order one message meets them:
//! [`queries`] (SubmitBatch and the other client calls), [`dispatch`] (jobs
//! to nodes with credit), [`results`] (a node's results; retries),
//! [`durability`] (outcomes stored, then acked: [`Core::on_committed`]),
//! [`progress`] (snapshots for watchers and `/metrics`) and [`recovery`] (the
//! core rebuilt from the store after a restart).
//!
//! This module holds the node protocol's entry points, which read as
//! `node.proto` does: Hello, then credit, results, heartbeats and GoingAway.

mod batches;
mod callbacks;
mod dispatch;
mod durability;
mod folded;
mod held;
mod progress;
mod queries;
mod receipts;
mod recovery;
mod results;
mod sessions;

use std::sync::Arc;
use std::time::Instant;

use smsmesh::Error;
use smsmesh::pb::{self, coordinator_to_node, node_to_coordinator};
use tokio::sync::watch;

use crate::Config;
use crate::auth::Tenant;
use crate::batch::{self, Content};

use batches::Batches;
use dispatch::Dispatcher;
use durability::Durability;
use receipts::Receipts;
use sessions::{Session, Sessions};

pub use durability::Committed;
pub use durability::INITIAL_RESERVATION;
pub use progress::{MeshMetrics, NodeMetrics, Snapshot};
pub use queries::{
    BatchQuery, FromCore, LIST_BATCHES_SCAN_LIMIT, LIST_SCAN_LIMIT, ListQuery, StateSet, StoredRef,
    key_reused, page_token, parse_batches_token, parse_page_token,
};
pub use receipts::{
    DeliveryCounts, ReceiptStats, overlay as overlay_delivery, state_word as receipt_state_word,
};
pub use recovery::unix_ms;
pub use results::retry_delay;

/// Id of one node stream (a reconnect is a new session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A node's outbound queue is full (it does not read its stream) or gone.
#[derive(Debug, thiserror::Error)]
#[error("the node's outbound queue is full or closed")]
pub struct Unreachable;

/// The outbound side of node streams, as the core sees it.
pub trait Outbox {
    /// Queues `msg` for the session. Fails if the node's queue is full or gone.
    fn send(&mut self, session: SessionId, msg: pb::CoordinatorToNode) -> Result<(), Unreachable>;
    /// Ends the session's stream: with `error` as its status, or cleanly.
    fn close(&mut self, session: SessionId, error: Option<Error>);
}

/// A batch as validated by the API layer, ready to be accepted.
#[derive(Debug)]
pub struct NewBatch {
    /// Its id, chosen by the API layer (and already stored, when durable).
    pub id: smsmesh::BatchId,
    /// The messages.
    pub content: Content,
    /// How many messages.
    pub total: u32,
    /// Attempts per message.
    pub max_attempts: u8,
    /// Client's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// A fingerprint of the request (0: unknown), so that the key used again
    /// with a different request is told apart from a replay.
    pub fingerprint: u64,
    /// The dispatch span, when the batch is traced.
    pub trace: Option<batch::Trace>,
    /// The tenant that submitted it.
    pub tenant: Tenant,
    /// When it was accepted: Unix time, milliseconds.
    pub accepted_unix_ms: u64,
    /// Its class of traffic.
    pub class: smsmesh::priority::Class,
    /// Where its callback events go: as asked for by the request, then as
    /// resolved for its tenant (see [`crate::callbacks::CallbackConfig::resolve`]).
    pub callback_url: Option<std::sync::Arc<str>>,
    /// Messages it may dispatch at once: the reservation stored with it
    /// (see [`INITIAL_RESERVATION`]); 0 in memory, or to wait for one.
    pub reserved: u32,
}

/// The frame that acks a node's Results frames up to `seq`.
fn ack_frame(seq: u64) -> pb::CoordinatorToNode {
    pb::CoordinatorToNode {
        update: Some(coordinator_to_node::Update::Ack(pb::Ack { seq })),
    }
}

/// Why a node whose outbound queue is full is dropped.
fn queue_full() -> Error {
    Error::ResourceExhausted("node's queue is full (it does not read its stream)".into())
}

/// The coordinator's whole scheduling state.
pub struct Core {
    config: Config,
    batches: Batches,
    sessions: Sessions,
    durability: Durability,
    receipts: Receipts,
    dispatcher: Dispatcher,
    /// Classes an operator paused (SetClassPaused), most urgent first.
    paused: [bool; smsmesh::priority::CLASSES],
    progress: watch::Sender<Arc<Snapshot>>,
    /// Held by each open progress stream ([`Core::watching`]): statuses
    /// are made for snapshots only while one is.
    watching: watch::Sender<()>,
    /// Whether the last snapshot carried statuses: a stream that opens (or
    /// the last that closes) makes a publish due.
    statuses_published: bool,
    /// When `on_tick` last ran: a long gap means this process stalled.
    last_tick: Option<Instant>,
    /// When job leases are next checked.
    next_lease_check: Option<Instant>,
}

/// A gap between ticks longer than this means the coordinator itself stalled
/// (stopped, starved, or its clock jumped): nodes are not blamed for it.
const STALL: std::time::Duration = std::time::Duration::from_secs(1);

impl Core {
    /// An empty coordinator, in memory only.
    pub fn new(config: Config) -> Self {
        Core::with_durability(config, false)
    }

    fn with_durability(config: Config, durable: bool) -> Self {
        Core {
            receipts: Receipts::new(config.dlr_timeout),
            config,
            batches: Batches::new(durable),
            sessions: Sessions::default(),
            durability: Durability::new(durable),
            dispatcher: Dispatcher::default(),
            paused: [false; smsmesh::priority::CLASSES],
            progress: watch::Sender::new(Arc::new(Snapshot::default())),
            watching: watch::Sender::new(()),
            statuses_published: false,
            last_tick: None,
            next_lease_check: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Pauses (or resumes) the dispatch of `class`; the classes paused then.
    /// Jobs already at nodes are not taken back.
    pub fn set_paused(
        &mut self,
        class: smsmesh::priority::Class,
        paused: bool,
    ) -> Vec<smsmesh::priority::Class> {
        self.paused[class.index()] = paused;
        self.batches.changed = true; // the next snapshot shows it
        smsmesh::priority::Class::ALL
            .into_iter()
            .filter(|c| self.paused[c.index()])
            .collect()
    }

    /// A receiver of progress snapshots.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.progress.subscribe()
    }

    /// Where progress streams sign in: while a receiver subscribed from it
    /// lives, snapshots carry batch statuses.
    pub fn watching(&self) -> watch::Sender<()> {
        self.watching.clone()
    }

    /// Nodes connected now.
    pub fn nodes_connected(&self) -> usize {
        self.sessions.len()
    }

    /// A new session id.
    pub fn next_session_id(&mut self) -> SessionId {
        self.sessions.next_id()
    }

    // === the node protocol ===

    /// A node said Hello on a new stream; `outbox` can already reach `session`.
    pub fn on_node_joined(
        &mut self,
        session: SessionId,
        hello: pb::Hello,
        now: Instant,
        outbox: &mut impl Outbox,
    ) -> Result<(), Error> {
        sessions::validate_hello(&hello, self.config.max_node_concurrency)?;
        if let Some(old) = self.sessions.by_name(&hello.name) {
            if old.instance_id != hello.instance_id {
                return Err(Error::AlreadyExists(format!(
                    "a node named {} is already connected (another process uses that name; node names must be unique)",
                    smsmesh::echo(&hello.name)
                )));
            }
            // The same process reconnected before its old stream was noticed dead.
            let old = old.id;
            let why = Error::Aborted("replaced by a new stream of the same node".into());
            self.drop_session(old, Some(why), now, outbox);
        }
        let (node, new) = self.sessions.names.index_of(&hello.name)?;
        if new {
            self.durability.node_named(node, &hello.name);
        }
        let welcome = pb::CoordinatorToNode {
            update: Some(coordinator_to_node::Update::Welcome(pb::Welcome {
                session_id: session.0,
                heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            })),
        };
        outbox
            .send(session, welcome)
            .map_err(|Unreachable| Error::Unavailable("node stream closed during hello".into()))?;
        // Hello's concurrency is the node's credit limit: its send slots plus its most prefetch.
        tracing::info!(node = %hello.name, session = session.0, credit_limit = hello.concurrency, gateway = %hello.gateway, "node joined");
        self.sessions
            .insert(Session::new(session, node, hello, now));
        Ok(())
    }

    /// A frame from a node.
    pub fn on_node_message(
        &mut self,
        sid: SessionId,
        msg: pb::NodeToCoordinator,
        now: Instant,
        outbox: &mut impl Outbox,
    ) {
        let Some((session, stats)) = self.sessions.split(sid) else {
            return; // a session already dropped: ignore what it still says
        };
        session.last_seen = now;
        use node_to_coordinator::Update;
        let result = match msg.update {
            Some(Update::Hello(_)) => Err("Hello sent twice on one stream".to_string()),
            Some(Update::Grant(g)) => session.grant(g.credits, stats),
            Some(Update::Results(r)) => {
                let retry = (self.config.retry_base, self.config.retry_max);
                let applied = results::on_results(
                    session,
                    stats,
                    &mut self.batches,
                    &mut self.durability,
                    &mut self.receipts,
                    retry,
                    &r,
                    now,
                );
                applied.and_then(|()| session.grant(r.grant, stats))
            }
            Some(Update::Heartbeat(_)) => Ok(()),
            Some(Update::GoingAway(_)) => {
                session.going_away = true;
                session.credit = 0;
                tracing::info!(node = %session.name, held = session.held.len(), "node going away");
                // What is stored is acked now: no Jobs frame will carry it.
                let ack = self.durability.acks.take_ready(sid).map(ack_frame);
                let drained = pb::CoordinatorToNode {
                    update: Some(coordinator_to_node::Update::Drained(pb::Drained {})),
                };
                ack.into_iter()
                    .chain([drained])
                    .try_for_each(|frame| outbox.send(sid, frame))
                    .map_err(|Unreachable| queue_full().to_string())
            }
            None => Err("empty message (no update set)".to_string()),
        };
        if let Err(why) = result {
            tracing::warn!(session = sid.0, %why, "node broke the protocol; dropping it");
            self.sessions.stats.protocol_errors += 1;
            let why = Error::FailedPrecondition(why);
            self.drop_session(sid, Some(why), now, outbox);
        }
    }

    /// A node's stream ended (cleanly or not): its jobs go back to the queue.
    pub fn on_node_lost(
        &mut self,
        sid: SessionId,
        reason: &str,
        now: Instant,
        outbox: &mut impl Outbox,
    ) {
        if let Some(s) = self.sessions.get(sid) {
            if s.going_away && s.held.is_empty() {
                // However its stream then ended, it had said goodbye and handed everything in.
                tracing::info!(node = %s.name, "node left cleanly");
            } else if s.held.is_empty() {
                tracing::info!(node = %s.name, %reason, "node left");
            } else {
                tracing::warn!(node = %s.name, %reason, held = s.held.len(), "node lost; requeueing its jobs");
            }
        }
        self.drop_session(sid, None, now, outbox);
    }

    /// A node broke a limit: its stream is closed with `why` and its jobs requeued.
    pub fn on_node_refused(
        &mut self,
        sid: SessionId,
        why: Error,
        now: Instant,
        outbox: &mut impl Outbox,
    ) {
        if let Some(s) = self.sessions.get(sid) {
            tracing::warn!(node = %s.name, %why, "dropping a node that broke a limit");
            self.sessions.stats.protocol_errors += 1;
        }
        self.drop_session(sid, Some(why), now, outbox);
    }

    /// Periodic work: sends acks still waiting for a Jobs frame, and drops
    /// nodes that went silent, unless the coordinator itself stalled since the
    /// last tick.
    pub fn on_tick(&mut self, now: Instant, outbox: &mut impl Outbox) {
        self.flush_acks(now, outbox);
        let stalled = self
            .last_tick
            .map(|t| now.saturating_duration_since(t))
            .filter(|gap| *gap > STALL);
        self.last_tick = Some(now);
        if let Some(gap) = stalled {
            // What nodes said meanwhile may still be queued: they get a fresh timeout.
            tracing::warn!(
                ?gap,
                nodes = self.sessions.len(),
                "the coordinator stalled; every node gets a fresh timeout"
            );
            self.sessions.seen_all(now);
            return;
        }
        self.expire_jobs(now);
        let timeout = self.config.node_timeout;
        for sid in self.sessions.silent(now, timeout) {
            if let Some(s) = self.sessions.get(sid) {
                tracing::warn!(node = %s.name, "node silent for longer than {timeout:?}; dropping it");
            }
            let why = Error::Unavailable(format!("no message from the node for {timeout:?}"));
            self.drop_session(sid, Some(why), now, outbox);
        }
    }

    /// Removes ended batches accepted more than `--retention` before
    /// `unix_now_ms` (at most 1,000 of the oldest looked at per call), from
    /// memory and, with the next group, from the store. Returns how many.
    pub fn expire_batches(&mut self, unix_now_ms: u64) -> usize {
        let retention = self.config.retention.as_millis() as u64;
        let gone = self
            .batches
            .expire(unix_now_ms.saturating_sub(retention), 1000);
        let n = gone.len();
        for (id, key, nodes) in gone {
            self.receipts.on_batch_deleted(id);
            self.durability.deleted(id, key);
            for node in nodes {
                if self.sessions.names.unnamed(node)
                    && !self.sessions.iter().any(|s| s.node == node)
                    && self.sessions.names.release(node)
                    && let Some(a) = self.sessions.stats.attempts.get_mut(node as usize)
                {
                    *a = (0, 0); // the index goes to another name
                }
            }
        }
        if n > 0 {
            tracing::debug!(batches = n, "removed batches past their retention");
        }
        n
    }

    /// The number of the first callback row this core makes: rows below it
    /// were stored before it started.
    pub fn callbacks_start(&self) -> u64 {
        self.durability.events.next()
    }

    /// Callback rows were delivered (or given up): they are removed from the
    /// store with the next group.
    pub fn on_callbacks_done(&mut self, seqs: Vec<u64>) {
        self.durability.callbacks_done(seqs);
    }

    /// Messages whose receipt is overdue at `unix_now_ms` end as delivery
    /// unknown; receipts that waited too long for their id are dropped.
    pub fn expire_receipts(&mut self, now: Instant, unix_now_ms: u64) {
        let mut writes = Vec::new();
        if self.receipts.on_tick(now, unix_now_ms, &mut writes) {
            self.batches.changed = true;
        }
        self.durability.receipts(writes);
    }

    /// Receipt figures, and messages waiting for a receipt now.
    pub fn receipt_stats(&self) -> (ReceiptStats, usize) {
        (self.receipts.stats, self.receipts.awaiting())
    }

    /// Takes back, about once a second, every job held longer than the job
    /// timeout: it goes to the queue again, counted as requeued.
    fn expire_jobs(&mut self, now: Instant) {
        let Some(lease) = self.config.job_timeout else {
            return;
        };
        if self.next_lease_check.is_some_and(|t| now < t) {
            return;
        }
        self.next_lease_check = Some(now + std::time::Duration::from_secs(1));
        let mut expired = 0;
        for session in self.sessions.iter_mut() {
            let node = session.node;
            let gone = session.expire(now, lease);
            if !gone.is_empty() {
                tracing::warn!(node = %session.name, jobs = gone.len(), ?lease, "jobs held past the job timeout are sent elsewhere");
            }
            expired += gone.len() as u64;
            for (batch, index) in gone {
                if let Some(b) = self.batches.get_mut(batch) {
                    b.requeue(index, node);
                    if b.check_end(now) {
                        self.batches.ended(batch, now);
                    }
                }
            }
        }
        self.sessions.stats.jobs_expired += expired;
    }

    /// The coordinator is stopping: every node stream is closed.
    pub fn on_shutdown(&mut self, now: Instant, outbox: &mut impl Outbox) {
        for sid in self.sessions.ids() {
            let why = Error::Unavailable("coordinator shutting down".into());
            self.drop_session(sid, Some(why), now, outbox);
        }
    }

    /// Closes a session's stream and puts the jobs its node held back in their queues.
    fn drop_session(
        &mut self,
        sid: SessionId,
        why: Option<Error>,
        now: Instant,
        outbox: &mut impl Outbox,
    ) {
        outbox.close(sid, why);
        self.durability.acks.forget(sid);
        let Some(session) = self.sessions.remove(sid) else {
            return;
        };
        if self.sessions.names.release(session.node)
            && let Some(a) = self.sessions.stats.attempts.get_mut(session.node as usize)
        {
            *a = (0, 0); // the index goes to another name
        }
        for (batch, index) in session.held.into_jobs() {
            if let Some(b) = self.batches.get_mut(batch) {
                b.requeue(index, session.node);
                if b.check_end(now) {
                    self.batches.ended(batch, now);
                }
            }
        }
    }

    /// Sends `acks` to their sessions now; a node whose queue is full is dropped.
    fn send_acks(&mut self, acks: Vec<(SessionId, u64)>, now: Instant, outbox: &mut impl Outbox) {
        for (sid, seq) in acks {
            if self.sessions.get(sid).is_some() && outbox.send(sid, ack_frame(seq)).is_err() {
                self.drop_session(sid, Some(queue_full()), now, outbox);
            }
        }
    }

    /// Sends every ack that waits for a Jobs frame.
    fn flush_acks(&mut self, now: Instant, outbox: &mut impl Outbox) {
        let due = self.durability.acks.take_all_ready();
        self.send_acks(due, now, outbox);
    }
}
