//! The smsmesh sender node: joins a coordinator over one bidirectional gRPC
//! stream, grants credits for the jobs it can hold, sends each job through
//! its gateway and returns one result per job.
//!
//! # Layout
//! - [`gateway`]: the [`gateway::Gateway`] trait and the simulated gateway.
//! - [`group`]: many nodes of one process over one `JoinGroup` stream.
//! - [`metrics`]: the node's Prometheus metrics, read from its [`Stats`].
//! - [`pipeline`]: sizes the prefetch to the round trip to the coordinator.
//! - This module: [`Config`], [`run`] (the join/reconnect loop) and the
//!   executor task that runs gateway sends.
//!
//! Gateway sends run in an executor task that outlives any one stream, so a
//! send in progress when the coordinator goes away still finishes; its result
//! is kept and handed in (`Results.handoff`) after the node reconnects. The
//! node keeps every Results frame until the coordinator acks it.
#![forbid(unsafe_code)]

pub mod gateway;
pub mod group;
pub mod metrics;
pub mod pipeline;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use smsmesh::pb::{self, coordinator_to_node, node_to_coordinator};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use group::{Inbound, Outbound};

pub use gateway::{Gateway, Sending, Simulated};

/// What a node needs to run.
#[derive(Clone)]
pub struct Config {
    /// Coordinator URL, e.g. `http://127.0.0.1:50051`.
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
    /// Most results in one frame. Default: 512.
    pub max_results_per_frame: usize,
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
            max_results_per_frame: 512,
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
    /// Gateway latency of every attempt.
    pub latency: SendLatency,
}

/// Gateway latency of every attempt, in Prometheus buckets.
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
    let executor = tokio::spawn(execute(
        config.gateway.clone(),
        config.concurrency as usize,
        jobs_rx,
        results_tx,
        stats.clone(),
    ));
    let _abort = AbortOnDrop(executor);
    let pipeline = pipeline::Pipeline::new(config.prefetch, config.prefetch_max, Instant::now());
    let mut node = Node {
        instance_id: rand::random(),
        pipeline,
        config,
        stats,
        jobs_tx,
        results_rx,
        epoch: 0,
        held: 0,
        done: Vec::new(),
        unacked: BTreeMap::new(),
        next_seq: 1,
        leaving: false,
    };
    node.run(shutdown).await
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A finished job, tagged with the session (epoch) that handed it out.
type Done = (u64, pb::JobResult);

/// Most results the executor reports in one bunch.
const MAX_BUNCH: usize = 4096;

/// A send in progress: resolves to its finished job.
type Running = futures::future::BoxFuture<'static, Done>;

/// The executor: runs up to `limit` gateway sends at once (the rest wait in
/// order), and reports results in bunches.
async fn execute(
    gateway: Arc<dyn Gateway>,
    limit: usize,
    mut jobs: mpsc::UnboundedReceiver<(u64, Vec<pb::Job>)>,
    results: mpsc::UnboundedSender<Vec<Done>>,
    stats: Arc<Stats>,
) {
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    let mut waiting: VecDeque<(u64, pb::Job)> = VecDeque::new();
    let mut bunch: Vec<Done> = Vec::new();
    // Starts waiting jobs while a send slot is free. A send whose outcome is known at
    // once never takes a slot: its result goes straight into the bunch.
    let refill = |running: &mut FuturesUnordered<Running>,
                  waiting: &mut VecDeque<(u64, pb::Job)>,
                  bunch: &mut Vec<Done>| {
        while running.len() < limit && bunch.len() < MAX_BUNCH {
            let Some((epoch, job)) = waiting.pop_front() else {
                break;
            };
            match start(&*gateway, epoch, job) {
                Ok(done) => bunch.push(done),
                Err(send) => running.push(send),
            }
        }
        stats
            .max_sending
            .fetch_max(running.len() as u64, Ordering::Relaxed);
    };
    loop {
        refill(&mut running, &mut waiting, &mut bunch);
        if bunch.is_empty() {
            tokio::select! {
                got = jobs.recv() => {
                    let Some((epoch, batch)) = got else { break };
                    waiting.extend(batch.into_iter().map(|j| (epoch, j)));
                    continue;
                }
                Some(first) = running.next(), if !running.is_empty() => bunch.push(first),
            }
        }
        // Refill freed slots at once, then collect what else is done.
        while bunch.len() < MAX_BUNCH {
            refill(&mut running, &mut waiting, &mut bunch);
            match futures::FutureExt::now_or_never(running.next()) {
                Some(Some(r)) => bunch.push(r),
                _ => break,
            }
        }
        let sent = bunch
            .iter()
            .filter(|(_, r)| r.outcome == pb::Outcome::Sent as i32)
            .count() as u64;
        stats.sent.fetch_add(sent, Ordering::Relaxed);
        stats
            .failed
            .fetch_add(bunch.len() as u64 - sent, Ordering::Relaxed);
        if let Ok(mut h) = stats.latency.0.lock() {
            for (_, r) in &bunch {
                h.observe(r.latency_us as f64 / 1e6);
            }
        }
        if results.send(std::mem::take(&mut bunch)).is_err() {
            break;
        }
    }
}

/// Starts sending `job`: its result when the gateway knew the outcome at once
/// (latency 0), or the send in progress.
fn start(gateway: &dyn Gateway, epoch: u64, job: pb::Job) -> Result<Done, Running> {
    let sending = gateway.send(&job);
    // A traced message: its send is a span, a child of the batch's dispatch span.
    let span = (!job.traceparent.is_empty()).then(|| send_span(&job));
    let id = (job.batch, job.index, job.attempt);
    match sending {
        Sending::Done(outcome) => Ok((epoch, job_result(id, outcome, 0, span))),
        Sending::Pending(mut send) => {
            if let Some(span) = &span {
                send = Box::pin(tracing::Instrument::instrument(send, span.clone()));
            }
            Err(Box::pin(async move {
                let start = Instant::now();
                let outcome = send.await;
                let latency_us = start.elapsed().as_micros() as u64;
                (epoch, job_result(id, outcome, latency_us, span))
            }))
        }
    }
}

/// The result of attempt `(batch, index, attempt)`, also recorded on its span if traced.
fn job_result(
    (batch, index, attempt): (u64, u32, u32),
    outcome: Result<(), String>,
    latency_us: u64,
    span: Option<tracing::Span>,
) -> pb::JobResult {
    let (outcome, error) = match outcome {
        Ok(()) => (pb::Outcome::Sent, String::new()),
        Err(e) => (pb::Outcome::Failed, e),
    };
    if let Some(span) = span {
        span.record("outcome", outcome.as_str_name());
        if !error.is_empty() {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
        }
    }
    pb::JobResult {
        batch,
        index,
        attempt,
        outcome: outcome as i32,
        error,
        latency_us,
    }
}

/// The span of one traced send, continuing the trace its job carries.
fn send_span(job: &pb::Job) -> tracing::Span {
    let span = tracing::info_span!(
        "send",
        otel.kind = "client",
        message_id = %smsmesh::MessageId { batch: smsmesh::BatchId(job.batch), index: job.index },
        attempt = job.attempt,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    smsmesh::telemetry::set_remote_parent(&span, &job.traceparent);
    span
}

struct Node {
    config: Config,
    stats: Arc<Stats>,
    instance_id: u64,
    jobs_tx: mpsc::UnboundedSender<(u64, Vec<pb::Job>)>,
    results_rx: mpsc::UnboundedReceiver<Vec<Done>>,
    /// Number of the current stream; results of earlier ones are handed in.
    epoch: u64,
    /// Jobs given to the executor and not finished.
    held: u64,
    /// Finished, not yet in a frame.
    done: Vec<Done>,
    /// Frames sent and not acked, by seq.
    unacked: BTreeMap<u64, Vec<pb::JobResult>>,
    next_seq: u64,
    /// A shutdown was asked for.
    leaving: bool,
    /// Sizes the prefetch.
    pipeline: pipeline::Pipeline,
}

/// How a stream ended.
enum SessionEnd {
    /// Left cleanly: everything handed in.
    Done,
    /// The stream broke or could not be opened.
    Broken(String),
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
                    self.epoch += 1;
                    tracing::warn!(node = %self.config.name, %why, retry_in = ?delay, "not connected to the coordinator");
                }
            }
            if self.leaving {
                let deadline = *leave_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.config.drain_timeout);
                if self.is_empty() {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    let lost = self.held as usize
                        + self.done.len()
                        + self.unacked.values().map(Vec::len).sum::<usize>();
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
                    Some(bunch) = self.results_rx.recv() => self.collect(bunch),
                    () = &mut shutdown, if !self.leaving => {
                        self.leaving = true;
                        if self.is_empty() {
                            return Ok(());
                        }
                    }
                }
            }
            delay = (delay * 2).min(self.config.reconnect_max);
        }
    }

    /// Most jobs ever held at once: sends in progress plus the most prefetched jobs.
    fn credit_limit(&self) -> u32 {
        self.config
            .concurrency
            .saturating_add(self.pipeline.ceiling())
    }

    /// Jobs to hold now: sends in progress plus the prefetch the pipeline wants now.
    fn credit_target(&self) -> u32 {
        let prefetch = self.pipeline.prefetch();
        self.stats
            .prefetch
            .store(u64::from(prefetch), Ordering::Relaxed);
        self.config.concurrency.saturating_add(prefetch)
    }

    fn is_empty(&self) -> bool {
        self.held == 0 && self.done.is_empty() && self.unacked.is_empty()
    }

    fn collect(&mut self, bunch: Vec<Done>) {
        self.held -= bunch.len() as u64;
        self.pipeline.finished(bunch.len() as u64, Instant::now());
        self.stats.in_flight.store(self.held, Ordering::Relaxed);
        self.done.extend(bunch);
    }

    /// One stream: connect, hello, then jobs in and results out until it ends.
    async fn session(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<SessionEnd, NodeError> {
        let send = |m| pb::NodeToCoordinator { update: Some(m) };
        // Hello, then hand in what earlier streams left unacked, then grant.
        let hello = send(node_to_coordinator::Update::Hello(pb::Hello {
            name: self.config.name.clone(),
            instance_id: self.instance_id,
            concurrency: self.credit_limit(),
            gateway: self.config.gateway.kind().to_string(),
        }));
        let (out, mut inbound) = match &self.config.group {
            Some(group) => match group.attach().await {
                Ok((out, inbound)) => {
                    let _ = out.send(hello).await;
                    (out, inbound)
                }
                Err(s) => return join_failed(s),
            },
            None => {
                let endpoint =
                    smsmesh::client::endpoint(&self.config.coordinator, self.config.tls.as_ref())
                        .map_err(NodeError::Config)?;
                let channel = match endpoint.connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        return Ok(SessionEnd::Broken(format!(
                            "cannot connect to {}: {e}",
                            self.config.coordinator
                        )));
                    }
                };
                let mut client = pb::node_link_client::NodeLinkClient::new(channel)
                    .max_decoding_message_size(64 << 20);
                let (out, out_rx) = mpsc::channel::<pb::NodeToCoordinator>(1024);
                let _ = out.send(hello).await;
                let mut join = tonic::Request::new(ReceiverStream::new(out_rx));
                if let Some(token) = &self.config.join_token {
                    smsmesh::client::join_token(&mut join, token).map_err(NodeError::Config)?;
                }
                match client.join(join).await {
                    Ok(r) => (Outbound::Own(out), Inbound::Own(Box::new(r.into_inner()))),
                    Err(s) => return join_failed(s),
                }
            }
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(true, Ordering::Relaxed);
        self.pipeline.new_stream();
        let mut s = Session {
            epoch: self.epoch,
            out,
            unused_credit: 0,
            drained: false,
        };
        for (seq, results) in std::mem::take(&mut self.unacked) {
            self.stats
                .handed_in
                .fetch_add(results.len() as u64, Ordering::Relaxed);
            let frame = pb::Results {
                seq,
                results: results.clone(),
                grant: 0,
                handoff: true,
            };
            self.unacked.insert(seq, results);
            if s.out
                .send(send(node_to_coordinator::Update::Results(frame)))
                .await
                .is_err()
            {
                return Ok(SessionEnd::Broken("stream closed".into()));
            }
        }
        if self.leaving {
            let _ = s
                .out
                .send(send(node_to_coordinator::Update::GoingAway(
                    pb::GoingAway {},
                )))
                .await;
        }
        if let Err(why) = self.flush(&mut s).await {
            return Ok(SessionEnd::Broken(why));
        }
        let mut welcomed = false;
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
                            self.stats.jobs.fetch_add(n, Ordering::Relaxed);
                            if n > s.unused_credit {
                                self.stats.over_credit.fetch_add(n - s.unused_credit, Ordering::Relaxed);
                                tracing::error!(node = %self.config.name, jobs = n, credit = s.unused_credit, "coordinator sent more jobs than granted");
                            }
                            s.unused_credit = s.unused_credit.saturating_sub(n);
                            self.pipeline.filled(n, Instant::now());
                            self.held += n;
                            self.stats.in_flight.store(self.held, Ordering::Relaxed);
                            self.stats.max_held.fetch_max(self.held, Ordering::Relaxed);
                            let _ = self.jobs_tx.send((s.epoch, j.jobs));
                        }
                        Some(coordinator_to_node::Update::Ack(a)) => {
                            self.unacked = self.unacked.split_off(&(a.seq + 1));
                        }
                        Some(coordinator_to_node::Update::Drained(_)) => s.drained = true,
                        None => {}
                    }
                }
                Some(bunch) = self.results_rx.recv() => {
                    self.collect(bunch);
                    while let Ok(more) = self.results_rx.try_recv() {
                        self.collect(more);
                    }
                }
                _ = heartbeat.tick() => {
                    if s.out.send(send(node_to_coordinator::Update::Heartbeat(pb::Heartbeat {}))).await.is_err() {
                        return Ok(SessionEnd::Broken("stream closed".into()));
                    }
                }
                () = &mut *shutdown, if !self.leaving => {
                    tracing::info!(node = %self.config.name, held = self.held, "leaving: finishing jobs in flight");
                    self.leaving = true;
                    if s.out.send(send(node_to_coordinator::Update::GoingAway(pb::GoingAway {}))).await.is_err() {
                        return Ok(SessionEnd::Broken("stream closed".into()));
                    }
                }
            }
            if let Err(why) = self.flush(&mut s).await {
                return Ok(SessionEnd::Broken(why));
            }
            if self.leaving && s.drained && self.is_empty() {
                tracing::info!(node = %self.config.name, "left cleanly; every result handed in");
                return Ok(SessionEnd::Done);
            }
        }
    }

    /// Sends finished results and the credit that is free now.
    async fn flush(&mut self, s: &mut Session) -> Result<(), String> {
        let free = if self.leaving {
            0
        } else {
            u64::from(self.credit_target()).saturating_sub(self.held + s.unused_credit)
        };
        if self.done.is_empty() && free == 0 {
            return Ok(());
        }
        let done = std::mem::take(&mut self.done);
        let (current, handoff): (Vec<Done>, Vec<Done>) =
            done.into_iter().partition(|(e, _)| *e == s.epoch);
        self.stats
            .handed_in
            .fetch_add(handoff.len() as u64, Ordering::Relaxed);
        let mut frames: Vec<pb::Results> = Vec::new();
        for (results, handoff) in [(handoff, true), (current, false)] {
            for chunk in results.chunks(self.config.max_results_per_frame) {
                let results: Vec<pb::JobResult> = chunk.iter().map(|(_, r)| r.clone()).collect();
                let seq = self.next_seq;
                self.next_seq += 1;
                self.unacked.insert(seq, results.clone());
                frames.push(pb::Results {
                    seq,
                    results,
                    grant: 0,
                    handoff,
                });
            }
        }
        // The grant counts capacity freed by every result above, so it rides on the last
        // frame (the coordinator applies results before the grant), or goes alone.
        s.unused_credit += free;
        self.pipeline.granted(free, Instant::now());
        self.stats
            .credits_granted
            .fetch_add(free, Ordering::Relaxed);
        let last = match frames.last_mut() {
            Some(f) if !f.handoff => {
                f.grant = free as u32;
                None
            }
            _ if free > 0 => Some(pb::NodeToCoordinator {
                update: Some(node_to_coordinator::Update::Grant(pb::Grant {
                    credits: free as u32,
                })),
            }),
            _ => None,
        };
        let msgs = frames
            .into_iter()
            .map(|f| pb::NodeToCoordinator {
                update: Some(node_to_coordinator::Update::Results(f)),
            })
            .chain(last);
        for m in msgs {
            s.out
                .send(m)
                .await
                .map_err(|_| "stream closed".to_string())?;
        }
        Ok(())
    }
}

/// How a stream that could not be opened (or a member the coordinator would
/// not take) ends the session: retrying cannot fix a bad name or settings, or
/// a wrong or missing token; anything else is retried.
fn join_failed(s: tonic::Status) -> Result<SessionEnd, NodeError> {
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

/// One open stream.
struct Session {
    epoch: u64,
    out: Outbound,
    /// Credit granted on this stream and not yet used by a job.
    unused_credit: u64,
    /// The coordinator confirmed no more jobs will come.
    drained: bool,
}
