//! The task that owns [`Core`] and the [`Handle`] everyone else reaches it by.
//!
//! gRPC handlers turn a request into an [`Event`] with a `oneshot` for the
//! reply; node reader tasks turn frames into events. The loop drains what is
//! queued, then dispatches once, hands a group of writes to the store when
//! due, and publishes progress when due. This module holds no state of its
//! own beyond when to do each of those.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use smsmesh::pb;
use smsmesh::priority::Class;
use smsmesh::{BatchId, Error, MessageId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::auth::Tenant;
use crate::core::{
    BatchQuery, Committed, Core, FromCore, ListQuery, NewBatch, SessionId, Snapshot,
};
use crate::node_tx::{ChannelOutbox, NodeTx};
use crate::store::{Inserter, Job, Store, StoreReader, Writer};

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// Something for the reactor to handle.
pub enum Event {
    /// SubmitBatch, validated.
    Submit(NewBatch, Reply<pb::SubmitBatchResponse>),
    /// GetStatus of a batch, for a tenant.
    BatchStatus(BatchId, Tenant, Reply<pb::BatchStatus>),
    /// GetStatus of a message, for a tenant.
    MessageStatus(MessageId, Tenant, Reply<FromCore<pb::MessageStatus>>),
    /// Publish now what changed (a new watcher must see batches just accepted).
    Refresh(Reply<()>),
    /// A page of ListBatches, for a tenant.
    ListBatches(BatchQuery, Tenant, Reply<pb::ListBatchesResponse>),
    /// A page of ListMessages, for a tenant.
    ListMessages(ListQuery, Tenant, Reply<FromCore<pb::ListMessagesResponse>>),
    /// CancelBatch, for a tenant.
    Cancel(BatchId, Tenant, Reply<pb::BatchStatus>),
    /// Messages of a tenant not finished yet.
    TenantUnfinished(Tenant, Reply<u64>),
    /// SetClassPaused: pause (true) or resume a class; the classes paused then.
    SetPaused(Class, bool, Reply<Vec<Class>>),
    /// The batch an idempotency key already made, for a request of this fingerprint.
    Idempotent(String, u64, Reply<Option<pb::SubmitBatchResponse>>),
    /// Drop a node's stream, telling it why (it broke a limit).
    NodeRefused(SessionId, Error),
    /// A node's Hello, with the sender of its outbound stream.
    NodeJoin(pb::Hello, NodeTx, Reply<SessionId>),
    /// A frame from a node.
    NodeMessage(SessionId, pb::NodeToCoordinator),
    /// Frames from the members of a group stream, in order.
    NodeMessages(Vec<(SessionId, pb::NodeToCoordinator)>),
    /// A node's stream ended.
    NodeClosed(SessionId, String),
    /// Close every node stream and stop.
    Shutdown,
    /// The store committed a group (or failed).
    Committed(Result<Stored, String>),
    /// Callback rows delivered (or given up): to remove from the store.
    CallbacksDone(Vec<u64>),
}

/// A cheap, cloneable way to talk to the reactor.
#[derive(Clone)]
pub struct Handle {
    events: mpsc::Sender<Event>,
    progress: watch::Receiver<Arc<Snapshot>>,
    /// Progress streams hold a receiver of it while open (see [`Core::watching`]).
    watching: watch::Sender<()>,
    commit_latency: Arc<std::sync::Mutex<smsmesh::metrics::Buckets>>,
    /// Where new batches go to be stored, when there is a store.
    inserter: Option<Inserter>,
    /// The store, for reading folded batches' messages (not keeping it open).
    store: Option<StoreReader>,
}

impl Handle {
    /// Where SubmitBatch stores new batches (with the next group commit); none in memory.
    pub fn inserter(&self) -> Option<&Inserter> {
        self.inserter.as_ref()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Event) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(make(tx))
            .await
            .map_err(|_| Error::Unavailable("coordinator is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("coordinator is shutting down".into()))?
    }

    /// Accepts a validated batch.
    pub async fn submit(&self, b: NewBatch) -> Result<pb::SubmitBatchResponse, Error> {
        self.ask(|r| Event::Submit(b, r)).await
    }

    /// Accepts a validated batch once it is stored: gives what hands it to
    /// the reactor (for the store's writer to run, on its own thread, once
    /// the batch is stored), and where the reactor's answer comes.
    pub fn submit_when_stored(
        &self,
        b: NewBatch,
    ) -> (
        impl FnOnce() + Send + 'static,
        oneshot::Receiver<Result<pb::SubmitBatchResponse, Error>>,
    ) {
        let (tx, rx) = oneshot::channel();
        let events = self.events.clone();
        let hand_over = move || {
            // The writer is no task: it waits for room, if it must, by blocking.
            if let Err(mpsc::error::TrySendError::Full(ev)) = events.try_send(Event::Submit(b, tx))
            {
                let _ = events.blocking_send(ev);
            }
        };
        (hand_over, rx)
    }

    /// Status of a batch of `tenant`.
    pub async fn batch_status(
        &self,
        id: BatchId,
        tenant: &Tenant,
    ) -> Result<pb::BatchStatus, Error> {
        self.ask(|r| Event::BatchStatus(id, tenant.clone(), r))
            .await
    }

    /// Messages of `tenant` not finished yet (pending or in flight).
    pub async fn tenant_unfinished(&self, tenant: &Tenant) -> Result<u64, Error> {
        self.ask(|r| Event::TenantUnfinished(tenant.clone(), r))
            .await
    }

    /// The batch an idempotency key (as stored) already made, if any, for a
    /// request of `fingerprint` (ALREADY_EXISTS if another request made it).
    pub async fn idempotent(
        &self,
        key: &str,
        fingerprint: u64,
    ) -> Result<Option<pb::SubmitBatchResponse>, Error> {
        self.ask(|r| Event::Idempotent(key.to_string(), fingerprint, r))
            .await
    }

    /// Drops a node's stream with `why` (the node broke a limit).
    pub async fn refuse_node(&self, sid: SessionId, why: Error) {
        let _ = self.events.send(Event::NodeRefused(sid, why)).await;
    }

    /// Status of a message.
    pub async fn message_status(
        &self,
        id: MessageId,
        tenant: &Tenant,
    ) -> Result<pb::MessageStatus, Error> {
        match self
            .ask(|r| Event::MessageStatus(id, tenant.clone(), r))
            .await?
        {
            FromCore::Here(m) => Ok(m),
            FromCore::InStore(r) => crate::history::message(&self.stored()?, r, id.index).await,
        }
    }

    /// The store a folded batch is read from.
    fn stored(&self) -> Result<Store, Error> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::Internal("a folded batch without a store".into()))?
            .store()
            .ok_or_else(|| Error::Unavailable("the coordinator is shutting down".into()))
    }

    /// Has the reactor publish what changed since its last snapshot, now.
    pub async fn refresh(&self) -> Result<(), Error> {
        self.ask(Event::Refresh).await
    }

    /// A page of the batches of `tenant`.
    pub async fn list_batches(
        &self,
        query: BatchQuery,
        tenant: &Tenant,
    ) -> Result<pb::ListBatchesResponse, Error> {
        self.ask(|r| Event::ListBatches(query, tenant.clone(), r))
            .await
    }

    /// A page of a batch's messages.
    pub async fn list_messages(
        &self,
        query: ListQuery,
        tenant: &Tenant,
    ) -> Result<pb::ListMessagesResponse, Error> {
        match self
            .ask(|r| Event::ListMessages(query.clone(), tenant.clone(), r))
            .await?
        {
            FromCore::Here(page) => Ok(page),
            FromCore::InStore(r) => crate::history::list(&self.stored()?, r, query).await,
        }
    }

    /// Pauses or resumes the dispatch of a class: the classes paused then.
    pub async fn set_paused(&self, class: Class, paused: bool) -> Result<Vec<Class>, Error> {
        self.ask(|r| Event::SetPaused(class, paused, r)).await
    }

    /// Cancels a batch of `tenant`.
    pub async fn cancel(&self, id: BatchId, tenant: &Tenant) -> Result<pb::BatchStatus, Error> {
        self.ask(|r| Event::Cancel(id, tenant.clone(), r)).await
    }

    /// Registers a node stream.
    pub async fn join(&self, hello: pb::Hello, tx: NodeTx) -> Result<SessionId, Error> {
        self.ask(|r| Event::NodeJoin(hello, tx, r)).await
    }

    /// Forwards a node frame; false if the reactor is gone.
    pub async fn node_message(&self, sid: SessionId, msg: pb::NodeToCoordinator) -> bool {
        self.events.send(Event::NodeMessage(sid, msg)).await.is_ok()
    }

    /// Forwards the frames of one group frame; false if the reactor is gone.
    pub async fn node_messages(&self, frames: Vec<(SessionId, pb::NodeToCoordinator)>) -> bool {
        self.events.send(Event::NodeMessages(frames)).await.is_ok()
    }

    /// Tells the reactor a node stream ended.
    pub async fn node_closed(&self, sid: SessionId, reason: String) {
        let _ = self.events.send(Event::NodeClosed(sid, reason)).await;
    }

    /// Closes every node stream and stops the reactor; watchers' streams end.
    pub async fn shutdown(&self) {
        let _ = self.events.send(Event::Shutdown).await;
    }

    /// A receiver of progress snapshots.
    pub fn progress(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.progress.clone()
    }

    /// Held while a progress stream is open: snapshots carry batch statuses
    /// only while one is held.
    pub fn watching(&self) -> watch::Receiver<()> {
        self.watching.subscribe()
    }

    /// Callback rows delivered (or given up): removed from the store with
    /// the next group. False once the reactor has stopped.
    pub async fn callbacks_done(&self, seqs: Vec<u64>) -> bool {
        self.events.send(Event::CallbacksDone(seqs)).await.is_ok()
    }

    /// A registry of every coordinator metric, read from this reactor.
    pub fn metrics_registry(&self) -> prometheus_client::registry::Registry {
        crate::metrics::registry(self.progress.clone(), self.commit_latency.clone())
    }
}

/// Starts the reactor task. With a store, outcomes are group-committed to it
/// and node results are acked only once stored. The task ends on
/// [`Handle::shutdown`] (`Ok`) or when the store fails (`Err`). Rows of
/// callback events come out of the returned receiver once stored, for
/// [`crate::callbacks::sender::run`].
pub fn spawn(
    core: Core,
    store: Option<Store>,
) -> (
    Handle,
    tokio::task::JoinHandle<Result<(), String>>,
    mpsc::UnboundedReceiver<crate::callbacks::sender::Rows>,
) {
    let (tx, rx) = mpsc::channel(4096);
    let (callbacks_tx, callbacks_rx) = mpsc::unbounded_channel();
    let commit_latency = Arc::new(std::sync::Mutex::new(smsmesh::metrics::Buckets::new(
        &smsmesh::metrics::COMMIT_BUCKETS,
    )));
    let handle = Handle {
        events: tx.clone(),
        progress: core.subscribe(),
        watching: core.watching(),
        commit_latency: commit_latency.clone(),
        inserter: None,
        store: store.as_ref().map(Store::reader),
    };
    let writer = store.map(|store| {
        Writer::spawn(store, core.config().submit_interval, move |r, stats| {
            if let Ok(mut h) = commit_latency.lock() {
                h.observe(stats.last.as_secs_f64());
            }
            tracing::trace!(commits = stats.commits, outcomes = stats.outcomes, batches = stats.batches, busy = ?stats.busy, "group commit");
            let _ = tx.blocking_send(Event::Committed(r.map_err(|e| e.to_string())));
        })
    });
    let (writer, writer_thread, inserter) = match writer {
        Some((w, t, i)) => (Some(w), Some(t), Some(i)),
        None => (None, None, None),
    };
    let handle = Handle { inserter, ..handle };
    let task = tokio::spawn(async move {
        let stop = writer.clone();
        let result = run(core, rx, writer, callbacks_tx).await; // the reactor
        // The writer commits what is queued and stops; the store is free when it has.
        if let Some(stop) = stop {
            let _ = stop.send(Job::Stop);
        }
        if let Some(thread) = writer_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    });
    (handle, task, callbacks_rx)
}

const TICK: Duration = Duration::from_millis(250);

/// A change (a batch accepted, ended or cancelled) is published at once, but
/// no sooner than this after the last publication: under thousands of small
/// batches a second, a snapshot per change would be most of the work.
const PUBLISH_GAP: Duration = Duration::from_millis(20);

/// Replies that wait for the commit holding what they report (a cancel).
type Deferred = Vec<(Reply<pb::BatchStatus>, Result<pb::BatchStatus, Error>)>;

/// What to do once a group is stored.
pub struct Stored(Committed, Deferred);

type WriterTx = std::sync::mpsc::Sender<Job<Stored>>;

/// The reactor's own state: the core, where its frames go, and the group commit in progress.
struct Reactor {
    core: Core,
    outbox: ChannelOutbox,
    /// The store's writer; without one a group is "stored" as soon as it is taken.
    writer: Option<WriterTx>,
    /// One group commit at a time: what arrives meanwhile joins the next group.
    committing: bool,
    /// When the last group commit began; the next waits for the interval unless urgent.
    last_commit: Instant,
    /// Replies that go out with the next group once it is stored.
    deferred: Deferred,
    /// Where stored callback rows go (the callback sender).
    callbacks: mpsc::UnboundedSender<crate::callbacks::sender::Rows>,
}

/// Whether the loop goes on after an event.
type Flow = std::ops::ControlFlow<Result<(), String>>;

async fn run(
    core: Core,
    mut rx: mpsc::Receiver<Event>,
    writer: Option<WriterTx>,
    callbacks: mpsc::UnboundedSender<crate::callbacks::sender::Rows>,
) -> Result<(), String> {
    let publish_interval = core.config().publish_interval;
    let commit_interval = core.config().commit_interval;
    let now = Instant::now();
    let mut r = Reactor {
        core,
        outbox: ChannelOutbox::default(),
        writer,
        committing: false,
        last_commit: now,
        deferred: Vec::new(),
        callbacks,
    };
    // The first tick is now: a stall at any time after it is told from a node's silence.
    r.core.on_tick(now.into_std(), &mut r.outbox);
    let mut next_tick = now + TICK;
    let mut next_publish = now + publish_interval;
    let mut last_publish = now;
    let mut sleep = pin!(tokio::time::sleep_until(next_tick));
    loop {
        let wake = [
            Some(next_tick),
            Some(next_publish),
            r.core.publish_due().then_some(last_publish + PUBLISH_GAP),
            r.core.next_retry_due().map(Instant::from_std),
            (!r.committing && r.core.has_writes()).then_some(r.last_commit + commit_interval),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("at least one deadline");
        sleep.as_mut().reset(wake);
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let mut next = Some(ev);
                // One clock reading for the events handled together.
                let now = std::time::Instant::now();
                // Handle this and whatever else is queued, then dispatch once for all of it.
                for _ in 0..1024 {
                    let Some(ev) = next.take().or_else(|| rx.try_recv().ok()) else { break };
                    if let Flow::Break(end) = r.handle(ev, now) {
                        return end;
                    }
                }
            }
            () = &mut sleep => {}
        }
        let now = Instant::now();
        let std_now = now.into_std();
        if now >= next_tick {
            r.core.on_tick(std_now, &mut r.outbox);
            let unix_now = crate::core::unix_ms();
            r.core.expire_batches(unix_now);
            r.core.expire_receipts(std_now, unix_now);
            next_tick = now + TICK;
        }
        r.core.dispatch(std_now, &mut r.outbox);
        if let Flow::Break(end) = r.commit_if_due(now, commit_interval) {
            return end;
        }
        if (r.core.publish_due() && now >= last_publish + PUBLISH_GAP) || now >= next_publish {
            r.core.publish(std_now);
            last_publish = now;
            next_publish = now + publish_interval;
        }
    }
    Ok(())
}

impl Reactor {
    /// Handles one event.
    fn handle(&mut self, ev: Event, now: std::time::Instant) -> Flow {
        let (core, outbox) = (&mut self.core, &mut self.outbox);
        match ev {
            Event::Submit(b, reply) => {
                let _ = reply.send(core.on_submit(b, now));
            }
            Event::BatchStatus(id, tenant, reply) => {
                let _ = reply.send(core.on_batch_status(id, &tenant, now));
            }
            Event::MessageStatus(id, tenant, reply) => {
                let _ = reply.send(core.on_message_status(id, &tenant));
            }
            Event::Refresh(reply) => {
                if core.publish_due() {
                    core.publish(now);
                }
                let _ = reply.send(Ok(()));
            }
            Event::ListBatches(query, tenant, reply) => {
                let _ = reply.send(Ok(core.on_list_batches(&query, &tenant)));
            }
            Event::ListMessages(query, tenant, reply) => {
                let _ = reply.send(core.on_list_messages(&query, &tenant));
            }
            Event::Cancel(id, tenant, reply) => {
                // Answered once the cancel is stored.
                let result = core.on_cancel(id, &tenant, now);
                self.deferred.push((reply, result));
            }
            Event::Idempotent(key, fingerprint, reply) => {
                let _ = reply.send(core.on_idempotent(&key, fingerprint));
            }
            Event::TenantUnfinished(tenant, reply) => {
                let _ = reply.send(Ok(core.tenant_unfinished(&tenant)));
            }
            Event::SetPaused(class, paused, reply) => {
                let _ = reply.send(Ok(core.set_paused(class, paused)));
            }
            Event::NodeRefused(sid, why) => core.on_node_refused(sid, why, now, outbox),
            Event::NodeJoin(hello, tx, reply) => {
                let sid = core.next_session_id();
                outbox.open(sid, tx);
                let res = core.on_node_joined(sid, hello, now, outbox);
                if res.is_err() {
                    outbox.forget(sid);
                }
                let _ = reply.send(res.map(|()| sid));
            }
            Event::NodeMessage(sid, msg) => core.on_node_message(sid, msg, now, outbox),
            Event::NodeMessages(frames) => {
                for (sid, msg) in frames {
                    core.on_node_message(sid, msg, now, outbox);
                }
            }
            Event::NodeClosed(sid, reason) => core.on_node_lost(sid, &reason, now, outbox),
            Event::Committed(Ok(stored)) => {
                self.committing = false;
                self.stored(stored, now);
            }
            Event::Committed(Err(e)) if e.contains("lost the lead") => {
                // Fenced: another coordinator leads and resumes every batch from the database.
                tracing::error!(error = %e, "THIS COORDINATOR LOST THE LEAD: stopping; nodes keep their unacked results and hand them to the new leader");
                core.on_shutdown(now, outbox);
                return Flow::Break(Err(e));
            }
            Event::Committed(Err(e)) => {
                tracing::error!(error = %e, "THE STORE FAILED: stopping; nodes keep their unacked results, and every accepted batch resumes after a restart");
                core.on_shutdown(now, outbox);
                return Flow::Break(Err(e));
            }
            Event::Shutdown => {
                core.on_shutdown(now, outbox);
                return Flow::Break(Ok(()));
            }
            Event::CallbacksDone(seqs) => core.on_callbacks_done(seqs),
        }
        Flow::Continue(())
    }

    /// Hands the waiting writes to the store as one group, if one is due and
    /// none is being stored.
    fn commit_if_due(&mut self, now: Instant, interval: Duration) -> Flow {
        let due = !self.deferred.is_empty()
            || (self.core.has_writes()
                && (self.writer.is_none()
                    || now >= self.last_commit + interval
                    || self.core.commit_urgent()));
        if self.committing || !due {
            return Flow::Continue(());
        }
        self.last_commit = now;
        let (set, done) = self.core.take_writes();
        let stored = Stored(done, std::mem::take(&mut self.deferred));
        match &self.writer {
            Some(w) => {
                self.committing = true;
                if w.send(Job::Commit(set, stored)).is_err() {
                    return Flow::Break(Err("the store writer stopped".into()));
                }
            }
            None => self.stored(stored, now.into_std()),
        }
        Flow::Continue(())
    }

    /// A group is stored: what waited for it happens.
    fn stored(&mut self, Stored(mut done, replies): Stored, now: std::time::Instant) {
        let rows = std::mem::take(&mut done.callbacks);
        if !rows.is_empty() {
            // The sender may have stopped (shutting down): the rows stay stored.
            let _ = self.callbacks.send(rows);
        }
        self.core.on_committed(done, now, &mut self.outbox);
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }
}
