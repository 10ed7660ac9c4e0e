//! The smsmesh sender node: joins a coordinator over one bidirectional gRPC
//! stream, grants credits for the jobs it can hold, sends each job through
//! its gateway and returns one result per job.
//!
//! # Layout
//! - [`gateway`]: the [`gateway::Gateway`] trait and the simulated gateway.
//! - [`group`]: many nodes of one process over one `JoinGroup` stream.
//! - [`metrics`]: the node's Prometheus metrics, read from its [`Stats`].
//! - [`pipeline`]: sizes the prefetch to the round trip to the coordinator.
//! - [`state`]: the node's side of the protocol (credit, held jobs, unacked
//!   results, going away) as a state machine with no I/O.
//! - `executor`: the task that runs gateway sends.
//! - This module: [`Config`], [`Stats`] and [`run`], the join/reconnect loop
//!   that opens streams and moves frames for [`state::NodeState`].
//!
//! Gateway sends run in an executor task that outlives any one stream, so a
//! send in progress when the coordinator goes away still finishes; its result
//! is kept and handed in (`Results.handoff`) after the node reconnects. The
//! node keeps every Results frame until the coordinator acks it.
#![forbid(unsafe_code)]

mod executor;
pub mod gateway;
pub mod group;
pub mod http;
pub mod metrics;
pub mod pace;
pub mod pipeline;
pub mod smpp;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smsmesh::pb::{self, coordinator_to_node, node_to_coordinator};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use group::{Inbound, Outbound};
use state::{Done, NodeState};

pub use gateway::{
    Accepted, Failure, FailureClass, Gateway, IncomingReceipt, OnStored, Outcome, Sending,
    Simulated,
};

/// What a node needs to run.
#[derive(Clone)]
pub struct Config {
    /// Coordinator URL, e.g. `http://127.0.0.1:50051`; several, comma-separated,
    /// for a leader and its standbys.
    pub coordinator: String,
    /// Node name, unique in the mesh.
    pub name: String,
    /// Most gateway sends at once.
    pub concurrency: u32,
    /// Jobs held beyond `concurrency`, waiting to start the moment a send finishes,
    /// so no send slot idles for a result-to-job round trip: the least prefetch
    /// (see `prefetch_max`). Default: 0.
    pub prefetch: u32,
    /// The most the prefetch grows to when the node measures that it needs more
    /// to keep its send slots busy: about as many jobs as sends finish in one
    /// round trip to the coordinator (see [`pipeline`]). At or below `prefetch`,
    /// the prefetch stays at `prefetch`. The credit limit told to the coordinator
    /// is then `concurrency + prefetch_max`. Default: 0.
    pub prefetch_max: u32,
    /// The gateway messages go through.
    pub gateway: Arc<dyn Gateway>,
    /// First reconnect delay; doubles up to `reconnect_max`. Default: 100 ms.
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default: 5 s.
    pub reconnect_max: Duration,
    /// After a shutdown request, how long to keep trying to hand in results. Default: 30 s.
    pub drain_timeout: Duration,
    /// A gateway send that takes longer fails ("timed out") and is retried by the
    /// coordinator like any failure. `None`: no limit. Default: 60 s.
    pub send_timeout: Option<Duration>,
    /// Most results in one frame. Default: 512.
    pub max_results_per_frame: usize,
    /// Least time between two frames of results while little credit is
    /// free; receipts never wait (see [`NodeState::set_frame_gap`]).
    /// Default: 5 ms.
    pub frame_gap: Duration,
    /// The secret the coordinator asks of joining nodes. Default: none.
    pub join_token: Option<String>,
    /// TLS to the coordinator (needed for an `https://` URL). Default: none.
    pub tls: Option<smsmesh::client::ClientTls>,
    /// A group stream this node shares with other nodes of the process, its
    /// frames packed with theirs (see [`group`]); `coordinator`, `tls` and
    /// `join_token` are then the group's. Default: none, the node opens a
    /// connection and a stream of its own.
    pub group: Option<Arc<group::Group>>,
}

/// The prefetch `smsnode` has by default for `concurrency` send slots:
/// (`prefetch`, `prefetch_max`) = (a tenth, at least 1; the concurrency, at
/// most 10,000, within what a coordinator takes from one node).
pub fn default_prefetch(concurrency: u32) -> (u32, u32) {
    let floor = (concurrency / 10).max(1);
    (floor, concurrency.min(10_000).max(floor))
}

impl Config {
    /// A config with the documented defaults.
    pub fn new(
        coordinator: impl Into<String>,
        name: impl Into<String>,
        concurrency: u32,
        gateway: Arc<dyn Gateway>,
    ) -> Self {
        Config {
            coordinator: coordinator.into(),
            name: name.into(),
            concurrency,
            prefetch: 0,
            prefetch_max: 0,
            gateway,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            send_timeout: Some(Duration::from_secs(60)),
            max_results_per_frame: 512,
            frame_gap: Duration::from_millis(5),
            join_token: None,
            tls: None,
            group: None,
        }
    }
}

/// Counters a node keeps about itself (tests and the local runner read them).
#[derive(Debug, Default)]
pub struct Stats {
    /// Jobs received.
    pub jobs: AtomicU64,
    /// Attempts that the gateway sent.
    pub sent: AtomicU64,
    /// Attempts that failed.
    pub failed: AtomicU64,
    /// Most jobs held at once (sending and prefetched).
    pub max_held: AtomicU64,
    /// Most gateway sends in progress at once.
    pub max_sending: AtomicU64,
    /// Jobs received beyond the credit granted (a coordinator bug if ever non-zero).
    pub over_credit: AtomicU64,
    /// Streams opened (1 + reconnects).
    pub sessions: AtomicU64,
    /// Results handed in on a later stream than the one their job came on.
    pub handed_in: AtomicU64,
    /// Jobs held now (sending and prefetched).
    pub in_flight: AtomicU64,
    /// Whether a stream to the coordinator is open now.
    pub connected: std::sync::atomic::AtomicBool,
    /// Credits granted to the coordinator, in all.
    pub credits_granted: AtomicU64,
    /// Jobs the node keeps ready beyond its send slots now (see [`pipeline`]).
    pub prefetch: AtomicU64,
    /// Send time of every attempt: its start to its outcome (gateway and node delay).
    pub latency: SendLatency,
    /// Whether the gateway cannot send now (for SMPP: its bind is down); the
    /// node grants no credit then.
    pub gateway_down: std::sync::atomic::AtomicBool,
    /// The SMPP connector's counters, when the gateway is SMPP.
    pub smpp: std::sync::OnceLock<Arc<smpp::SmppStats>>,
    /// Delivery receipts taken from the gateway and not yet in a frame now.
    pub receipts_waiting: AtomicU64,
    /// Delivery receipts sent to the coordinator and not yet acked now.
    pub receipts_unacked: AtomicU64,
    /// Delivery receipts the coordinator acked (stored), in all.
    pub receipts_acked: AtomicU64,
    /// Most receipts sent and not acked at once (bounded by
    /// [`state::MAX_UNACKED_RECEIPTS`]).
    pub max_receipts_unacked: AtomicU64,
}

/// Send time of every attempt, in Prometheus buckets.
#[derive(Debug)]
pub struct SendLatency(pub std::sync::Mutex<smsmesh::metrics::Buckets>);

impl Default for SendLatency {
    fn default() -> Self {
        SendLatency(std::sync::Mutex::new(smsmesh::metrics::Buckets::latency()))
    }
}

/// Why [`run`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The coordinator refused the node for a reason retrying will not fix.
    #[error("the coordinator refused this node: {0}")]
    Refused(String),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

/// Runs a node until `shutdown` completes and everything it holds is handed in.
pub async fn run(
    config: Config,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NodeError> {
    if config.concurrency == 0 {
        return Err(NodeError::Config("concurrency must be at least 1".into()));
    }
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let executor = tokio::spawn(executor::execute(
        config.gateway.clone(),
        config.concurrency as usize,
        config.send_timeout,
        jobs_rx,
        results_tx,
        stats.clone(),
    ));
    let _abort = AbortOnDrop(executor);
    let mut state = NodeState::new(
        config.concurrency,
        (config.prefetch, config.prefetch_max),
        config.max_results_per_frame,
        stats.clone(),
        Instant::now(),
    );
    state.set_frame_gap(config.frame_gap);
    if !config.gateway.takes_jobs() {
        tracing::info!(node = %config.name, "the gateway only receives: this node takes no jobs and hands in receipts");
        state.set_receive_only();
    }
    let ready = config.gateway.ready();
    let mut node = Node {
        receipts_rx: config.gateway.receipts(),
        ready,
        instance_id: rand::random(),
        config,
        stats,
        jobs_tx,
        results_rx,
        state,
        turn: 0,
    };
    node.run(shutdown).await
}

/// How soon a node tries again after a standby refused it (a takeover
/// completes within a lease term; polling a standby is cheap).
const STANDBY_RETRY: Duration = Duration::from_millis(200);

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The join loop: streams opened and read, frames moved; [`NodeState`] decides what they say.
struct Node {
    /// The gateway's readiness, when it can be down.
    ready: Option<tokio::sync::watch::Receiver<bool>>,
    config: Config,
    stats: Arc<Stats>,
    instance_id: u64,
    jobs_tx: mpsc::UnboundedSender<(u64, Vec<pb::Job>)>,
    results_rx: mpsc::UnboundedReceiver<Vec<Done>>,
    /// Delivery receipts from the gateway, when it has any.
    receipts_rx: Option<mpsc::Receiver<IncomingReceipt>>,
    state: NodeState,
    /// Which of the coordinator addresses to try next (moves on after a failure).
    turn: usize,
}

/// How a stream ended.
enum SessionEnd {
    /// Left cleanly: everything handed in.
    Done,
    /// The stream broke or could not be opened.
    Broken(String),
    /// A standby refused the join: another coordinator leads, or soon will.
    Standby(String),
}

impl Node {
    async fn run(&mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), NodeError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut delay = self.config.reconnect_min;
        let mut leave_deadline: Option<tokio::time::Instant> = None;
        loop {
            let end = self.session(&mut shutdown).await;
            self.stats.connected.store(false, Ordering::Relaxed);
            match end? {
                SessionEnd::Done => return Ok(()),
                SessionEnd::Broken(why) => {
                    self.state.on_stream_broken();
                    tracing::warn!(node = %self.config.name, %why, retry_in = ?delay, "not connected to the coordinator");
                }
                SessionEnd::Standby(why) => {
                    // A takeover is under way or done elsewhere: look again soon, not
                    // after a backoff grown while the old leader was unreachable.
                    self.state.on_stream_broken();
                    delay = STANDBY_RETRY.min(self.config.reconnect_max);
                    tracing::info!(node = %self.config.name, %why, retry_in = ?delay, "a standby coordinator: trying the next address");
                }
            }
            if self.state.is_leaving() {
                let deadline = *leave_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.config.drain_timeout);
                if self.state.is_empty() {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    let lost = self.state.owed();
                    tracing::error!(node = %self.config.name, results = lost, "giving up: could not hand in every result before the drain timeout");
                    return Ok(());
                }
            }
            // Wait out the backoff, still collecting finished sends.
            let jitter = delay.mul_f64(rand::random::<f64>() * 0.5);
            let until = tokio::time::sleep(delay + jitter);
            tokio::pin!(until);
            loop {
                tokio::select! {
                    () = &mut until => break,
                    Some(bunch) = self.results_rx.recv() => self.state.finished(bunch, Instant::now()),
                    () = &mut shutdown, if !self.state.is_leaving() => {
                        // GoingAway goes on the next stream.
                        let _ = self.state.leave();
                        if self.state.is_empty() {
                            return Ok(());
                        }
                    }
                }
            }
            delay = (delay * 2).min(self.config.reconnect_max);
        }
    }

    /// Opens a stream and says Hello on it: on the process's group stream, or on one of its own.
    async fn open(&mut self) -> Result<Result<(Outbound, Inbound), SessionEnd>, NodeError> {
        let hello = pb::NodeToCoordinator {
            update: Some(node_to_coordinator::Update::Hello(pb::Hello {
                name: self.config.name.clone(),
                instance_id: self.instance_id,
                concurrency: self.state.credit_limit(),
                gateway: self.config.gateway.kind().to_string(),
                provider: self.config.gateway.provider(),
            })),
        };
        if let Some(group) = &self.config.group {
            return match group.attach().await {
                Ok((out, inbound)) => {
                    let _ = out.send(hello).await;
                    Ok(Ok((out, inbound)))
                }
                Err(s) => {
                    let address =
                        smsmesh::client::addresses(&self.config.coordinator)[0].to_string();
                    self.join_failed(s, &address).await.map(Err)
                }
            };
        }
        let addresses = smsmesh::client::addresses(&self.config.coordinator);
        let address = addresses[self.turn % addresses.len()].to_string();
        // The next attempt goes to the next address, unless this one works.
        self.turn = self.turn.wrapping_add(1);
        let endpoint = smsmesh::client::endpoint(&address, self.config.tls.as_ref())
            .map_err(NodeError::Config)?;
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                self.tls_refused(&address).await?;
                let why = format!(
                    "cannot connect to {address}: {}",
                    smsmesh::client::describe(&e)
                );
                return Ok(Err(SessionEnd::Broken(why)));
            }
        };
        let mut client =
            pb::node_link_client::NodeLinkClient::new(channel).max_decoding_message_size(64 << 20);
        let (out, out_rx) = mpsc::channel::<pb::NodeToCoordinator>(1024);
        let _ = out.send(hello).await;
        let mut join = tonic::Request::new(ReceiverStream::new(out_rx));
        if let Some(token) = &self.config.join_token {
            smsmesh::client::join_token(&mut join, token).map_err(NodeError::Config)?;
        }
        match client.join(join).await {
            Ok(r) => {
                self.turn = self.turn.wrapping_sub(1);
                Ok(Ok((
                    Outbound::Own(out),
                    Inbound::Own(Box::new(r.into_inner())),
                )))
            }
            Err(s) => self.join_failed(s, &address).await.map(Err),
        }
    }

    /// What a failed join means: a refusal (also when TLS refuses this node,
    /// which tonic reports only as a transport failure), or a broken stream.
    async fn join_failed(&self, s: tonic::Status, address: &str) -> Result<SessionEnd, NodeError> {
        if matches!(
            s.code(),
            Code::Unknown | Code::Cancelled | Code::Unavailable
        ) {
            self.tls_refused(address).await?;
        }
        join_failed(s)
    }

    /// After a connection failed: the cause, as a refusal, when TLS refuses
    /// this node's settings (retrying cannot fix those).
    async fn tls_refused(&self, address: &str) -> Result<(), NodeError> {
        let Some(tls) = &self.config.tls else {
            return Ok(());
        };
        match smsmesh::tls_probe::tls_refusal(address, tls).await {
            Some(why) => Err(NodeError::Refused(why)),
            None => Ok(()),
        }
    }

    /// One stream: Hello, what earlier streams left, then jobs in and results out until it ends.
    async fn session(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<SessionEnd, NodeError> {
        let (out, mut inbound) = match self.open().await? {
            Ok(stream) => stream,
            Err(end) => return Ok(end),
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(true, Ordering::Relaxed);
        let closed = || SessionEnd::Broken("stream closed".into());
        let first = self.state.on_stream_open();
        if send_all(&out, first).await.is_err() {
            return Ok(closed());
        }
        if send_all(&out, self.state.flush(Instant::now()))
            .await
            .is_err()
        {
            return Ok(closed());
        }
        let mut welcomed = false;
        self.gateway_changed();
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => return Ok(SessionEnd::Broken("coordinator closed the stream".into())),
                        // A group member learns here what a `Join` stream learns on opening.
                        Err(st) if !welcomed => return join_failed(st),
                        Err(st) => return Ok(SessionEnd::Broken(format!("stream ended: {}: {}", st.code(), st.message()))),
                    };
                    match msg.update {
                        Some(coordinator_to_node::Update::Welcome(w)) => {
                            welcomed = true;
                            let every = Duration::from_millis(u64::from(w.heartbeat_interval_ms.max(50)));
                            heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                            tracing::info!(node = %self.config.name, session = w.session_id, "joined the coordinator");
                        }
                        Some(coordinator_to_node::Update::Jobs(j)) => {
                            let n = j.jobs.len() as u64;
                            let over = self.state.on_jobs(n, Instant::now());
                            if over > 0 {
                                tracing::error!(node = %self.config.name, jobs = n, over, "coordinator sent more jobs than granted");
                            }
                            let _ = self.jobs_tx.send((self.state.epoch(), j.jobs));
                        }
                        Some(coordinator_to_node::Update::Ack(a)) => self.state.on_ack(a.seq),
                        Some(coordinator_to_node::Update::Drained(_)) => self.state.on_drained(),
                        None => {}
                    }
                }
                Some(bunch) = self.results_rx.recv() => {
                    self.state.finished(bunch, Instant::now());
                    while let Ok(more) = self.results_rx.try_recv() {
                        self.state.finished(more, Instant::now());
                    }
                }
                Some(first) = next_receipt(&mut self.receipts_rx), if self.state.takes_receipts() => {
                    let mut bunch = vec![first];
                    while bunch.len() < 10_000 && let Some(Ok(r)) = self.receipts_rx.as_mut().map(|rx| rx.try_recv()) {
                        bunch.push(r);
                    }
                    self.state.on_receipts(bunch);
                }
                Ok(()) = changed(&mut self.ready) => self.gateway_changed(),
                () = flush_at(self.state.flush_due()) => {}
                _ = heartbeat.tick() => {
                    let beat = pb::NodeToCoordinator {
                        update: Some(node_to_coordinator::Update::Heartbeat(pb::Heartbeat {})),
                    };
                    if out.send(beat).await.is_err() {
                        return Ok(closed());
                    }
                }
                () = &mut *shutdown, if !self.state.is_leaving() => {
                    tracing::info!(node = %self.config.name, held = self.state.held(), "leaving: finishing jobs in flight");
                    if send_all(&out, self.state.leave()).await.is_err() {
                        return Ok(closed());
                    }
                }
            }
            if send_all(&out, self.state.flush(Instant::now()))
                .await
                .is_err()
            {
                return Ok(closed());
            }
            if self.state.left_cleanly() {
                tracing::info!(node = %self.config.name, "left cleanly; every result handed in");
                return Ok(SessionEnd::Done);
            }
        }
    }
}

impl Node {
    /// Follows the gateway's readiness: no credit while it cannot send.
    fn gateway_changed(&mut self) {
        let up = self.ready.as_mut().is_none_or(|r| *r.borrow_and_update());
        if self.stats.gateway_down.swap(!up, Ordering::Relaxed) == up {
            tracing::info!(node = %self.config.name, up, "gateway readiness changed");
        }
        self.state.set_gateway_up(up);
    }
}

/// The next receipt (never, for a gateway that has none).
async fn next_receipt(rx: &mut Option<mpsc::Receiver<IncomingReceipt>>) -> Option<IncomingReceipt> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `due` (forever, if nothing is held back).
async fn flush_at(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The next change of `ready` (never, for a gateway that is always ready).
async fn changed(
    ready: &mut Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match ready {
        Some(r) => r.changed().await,
        None => futures::future::pending().await,
    }
}

/// Sends `frames` in order on `out`.
async fn send_all(
    out: &Outbound,
    frames: impl IntoIterator<Item = pb::NodeToCoordinator>,
) -> Result<(), group::Closed> {
    for f in frames {
        out.send(f).await?;
    }
    Ok(())
}

/// How a stream that could not be opened (or a member the coordinator would
/// not take) ends the session: retrying cannot fix a bad name or settings, or
/// a wrong or missing token; anything else is retried.
fn join_failed(s: tonic::Status) -> Result<SessionEnd, NodeError> {
    if smsmesh::client::is_standby(&s) {
        return Ok(SessionEnd::Standby(s.message().to_string()));
    }
    if matches!(
        s.code(),
        Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied
    ) {
        return Err(NodeError::Refused(s.message().to_string()));
    }
    Ok(SessionEnd::Broken(format!(
        "join refused: {}: {}",
        s.code(),
        s.message()
    )))
}
