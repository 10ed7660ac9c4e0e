//! An in-process smsmesh: a coordinator and nodes on `127.0.0.1:0`, each a
//! task with a handle to stop it gracefully or kill it. Mesh tests use it, and
//! so does the one-machine runner, `smsmesh-local`.
//!
//! Also [`wait_until`], to wait on a condition with a deadline instead of
//! sleeping; real processes of our programs are in `process` ([`Proc`], [`bin`]).
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smsmesh::pb;
use smsmesh::pb::coordinator_client::CoordinatorClient;
use smsmesh_node::group::Group;
use smsmesh_node::{Gateway, NodeError, Sending, Simulated, Stats};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub use smsmesh_coordinator::Config as CoordinatorConfig;

mod caller;
mod ports;
mod postgres;
mod process;
mod receiver;
pub use caller::Caller;
pub use postgres::{database, postgres_url};
pub use process::{Proc, Proxy, bin, listening_addr, stdout_addrs};
pub use receiver::{Receiver as CallbackReceiver, Seen as CallbacksSeen};

/// A running in-process coordinator.
pub struct Mesh {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves Prometheus metrics (`/metrics`).
    pub metrics_addr: SocketAddr,
    /// Where it serves the API over HTTP and JSON (HTTPS with TLS).
    pub http_addr: SocketAddr,
    /// Whether it serves TLS (then its URL is `https://`).
    pub tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Mesh {
    /// Starts a coordinator on `127.0.0.1:0` (or `listen`).
    pub async fn start(config: CoordinatorConfig) -> anyhow::Result<Mesh> {
        Self::start_on("127.0.0.1:0".parse()?, config).await
    }

    /// Starts a coordinator on `listen`.
    pub async fn start_on(listen: SocketAddr, config: CoordinatorConfig) -> anyhow::Result<Mesh> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let metrics = tokio::net::TcpListener::bind((listen.ip(), 0)).await?;
        let metrics_addr = metrics.local_addr()?;
        let http = tokio::net::TcpListener::bind((listen.ip(), 0)).await?;
        let http_addr = http.local_addr()?;
        let tls = config.tls.is_some();
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = smsmesh_coordinator::Listeners {
            grpc: listener,
            metrics: Some(metrics),
            http: Some(http),
        };
        let task = tokio::spawn(smsmesh_coordinator::run_on(config, listeners, async {
            let _ = stopped.await;
        }));
        Ok(Mesh {
            addr,
            metrics_addr,
            http_addr,
            tls,
            stop: Some(stop),
            task,
        })
    }

    /// The coordinator's URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A client of the Coordinator API.
    pub async fn client(&self) -> anyhow::Result<CoordinatorClient<Channel>> {
        Ok(CoordinatorClient::connect(self.url()).await?)
    }

    /// Starts a node with the simulated gateway.
    pub fn node(&self, spec: NodeSpec) -> Node {
        Node::start(&self.url(), spec)
    }

    /// Stops the coordinator and waits for it (5 s at most).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .map_err(|_| anyhow::anyhow!("coordinator did not stop within 5 s"))??
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// Most jobs held at once.
    pub concurrency: u32,
    /// Simulated gateway latency (mean).
    pub mean_latency: Duration,
    /// Simulated gateway failure probability.
    pub failure_rate: f64,
    /// Where to record every attempt, if anywhere.
    pub recorder: Option<Recorder>,
    /// Jobs held ready beyond the concurrency.
    pub prefetch: u32,
    /// The most the prefetch may grow to (0: fixed).
    pub prefetch_max: u32,
    /// Join token to present.
    pub join_token: Option<String>,
    /// TLS to the coordinator.
    pub tls: Option<smsmesh::client::ClientTls>,
    /// The group stream it shares with other nodes, if any.
    pub group: Option<Arc<Group>>,
    /// How long a gateway send may take before it fails.
    pub send_timeout: Option<Duration>,
    /// Send through an SMSC at this `smpp://` URL instead of simulating.
    pub smpp: Option<String>,
}

/// A group stream for nodes of this process to share, to the coordinator at
/// `url` (plaintext; several separated by commas), presenting `join_token`; it connects on first use.
pub fn group(url: &str, join_token: Option<&str>) -> anyhow::Result<Arc<Group>> {
    let channels = smsmesh::client::addresses(url)
        .into_iter()
        .map(|u| Ok(smsmesh::client::endpoint(u, None)?.connect_lazy()))
        .collect::<Result<Vec<_>, String>>()
        .map_err(anyhow::Error::msg)?;
    Group::new(channels, join_token).map_err(anyhow::Error::msg)
}

impl NodeSpec {
    /// A node named `name` with concurrency 100, no latency and no failures.
    pub fn new(name: &str) -> Self {
        NodeSpec {
            name: name.into(),
            concurrency: 100,
            mean_latency: Duration::ZERO,
            failure_rate: 0.0,
            recorder: None,
            prefetch: 0,
            prefetch_max: 0,
            join_token: None,
            tls: None,
            group: None,
            send_timeout: None,
            smpp: None,
        }
    }

    /// Sending through the SMSC at `url` (`smpp://ID:PW@HOST:PORT?…`).
    pub fn smpp(mut self, url: &str) -> Self {
        self.smpp = Some(url.into());
        self
    }

    /// As a member of `group`, sharing its stream.
    pub fn group(mut self, group: &Arc<Group>) -> Self {
        self.group = Some(group.clone());
        self
    }

    /// Presenting this join token.
    pub fn join_token(mut self, token: &str) -> Self {
        self.join_token = Some(token.into());
        self
    }

    /// Connecting with TLS (the URL must be `https://`).
    pub fn tls(mut self, tls: smsmesh::client::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// With this most prefetch, to which it grows as the node measures it needs.
    pub fn prefetch_max(mut self, p: u32) -> Self {
        self.prefetch_max = p;
        self
    }

    /// With this prefetch.
    pub fn prefetch(mut self, p: u32) -> Self {
        self.prefetch = p;
        self
    }

    /// Recording every attempt into `recorder`.
    pub fn record(mut self, recorder: &Recorder) -> Self {
        self.recorder = Some(recorder.clone());
        self
    }

    /// With this limit on each gateway send.
    pub fn send_timeout(mut self, t: Duration) -> Self {
        self.send_timeout = Some(t);
        self
    }

    /// With this concurrency.
    pub fn concurrency(mut self, c: u32) -> Self {
        self.concurrency = c;
        self
    }

    /// With this mean gateway latency.
    pub fn latency(mut self, d: Duration) -> Self {
        self.mean_latency = d;
        self
    }

    /// With this failure probability.
    pub fn failure_rate(mut self, p: f64) -> Self {
        self.failure_rate = p;
        self
    }
}

/// A running in-process node.
pub struct Node {
    /// Its name.
    pub name: String,
    /// Its counters.
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl Node {
    /// Starts a node joining `coordinator`.
    pub fn start(coordinator: &str, spec: NodeSpec) -> Node {
        let simulated = Simulated {
            mean_latency: spec.mean_latency,
            failure_rate: spec.failure_rate,
        };
        let gateway: Arc<dyn Gateway> = match (&spec.smpp, &spec.recorder) {
            (Some(url), _) => {
                let args = smsmesh_node::smpp::SmppArgs::defaults();
                let config =
                    smsmesh_node::smpp::SmppConfig::parse(url, &args).expect("a valid smpp:// URL");
                Arc::new(smsmesh_node::smpp::Smpp::start(
                    config,
                    Duration::from_millis(500),
                ))
            }
            (None, Some(r)) => Arc::new(Recording {
                inner: simulated,
                node: spec.name.clone(),
                log: r.clone(),
            }),
            (None, None) => Arc::new(simulated),
        };
        let mut config =
            smsmesh_node::Config::new(coordinator, spec.name.clone(), spec.concurrency, gateway);
        config.prefetch = spec.prefetch;
        config.prefetch_max = spec.prefetch_max;
        config.join_token = spec.join_token.clone();
        config.tls = spec.tls.clone();
        config.group = spec.group.clone();
        config.send_timeout = spec.send_timeout;
        config.reconnect_min = Duration::from_millis(20);
        config.reconnect_max = Duration::from_millis(500);
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(smsmesh_node::run(config, stats.clone(), async {
            let _ = stopped.await;
        }));
        Node {
            name: spec.name,
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// Waits for the node to end on its own (it was refused, say), `within` at most.
    pub async fn ended(mut self, within: Duration) -> anyhow::Result<Result<(), NodeError>> {
        Ok(tokio::time::timeout(within, &mut self.task)
            .await
            .map_err(|_| anyhow::anyhow!("node {} still running after {within:?}", self.name))??)
    }

    /// Kills the node: its stream breaks with no goodbye, like `kill -9`.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Asks the node to leave cleanly and waits for it (`within` at most).
    pub async fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        Ok(tokio::time::timeout(within, &mut self.task)
            .await
            .map_err(|_| {
                anyhow::anyhow!("node {} did not stop within {within:?}", self.name)
            })???)
    }

    /// Messages this node's gateway sent or failed.
    pub fn handled(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.sent.load(Relaxed) + self.stats.failed.load(Relaxed)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One attempt as a gateway saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// Node that made it.
    pub node: String,
    /// Batch id (numeric).
    pub batch: u64,
    /// Message index.
    pub index: u32,
    /// Attempt number from the job.
    pub attempt: u32,
    /// Whether the gateway sent it.
    pub sent: bool,
    /// The number it went to.
    pub to: String,
    /// Its text.
    pub body: String,
    /// Where its send started among every send this recorder saw start
    /// (0 first): attempts are logged as they finish, which with a random
    /// latency is another order.
    pub started: u64,
}

/// A shared log of attempts, filled by nodes started with [`NodeSpec::record`].
#[derive(Clone, Debug, Default)]
pub struct Recorder(Arc<(std::sync::Mutex<Vec<Attempt>>, std::sync::atomic::AtomicU64)>);

impl Recorder {
    /// Every attempt recorded so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.0.0.lock().expect("recorder lock").clone()
    }

    /// How many sends have started so far.
    pub fn started(&self) -> u64 {
        self.0.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A gateway that records each attempt's outcome, once it is known.
struct Recording {
    inner: Simulated,
    node: String,
    log: Recorder,
}

impl Gateway for Recording {
    fn kind(&self) -> &'static str {
        "simulated"
    }

    fn send(&self, job: &pb::Job) -> Sending {
        let log = self.log.clone();
        let mut a = Attempt {
            node: self.node.clone(),
            batch: job.batch,
            index: job.index,
            attempt: job.attempt,
            sent: false,
            to: job.to.clone(),
            body: job.body.clone(),
            started: self
                .log
                .0
                .1
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        };
        self.inner.send(job).map(move |r| {
            a.sent = r.is_ok();
            log.0.0.lock().expect("recorder lock").push(a);
            r
        })
    }
}

/// Polls `check` every 10 ms until it returns `Some`, or fails after `deadline`
/// saying `what` was awaited.
pub async fn wait_until<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= end {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Status of a batch.
pub async fn batch_status(
    client: &mut CoordinatorClient<Channel>,
    batch_id: &str,
) -> anyhow::Result<pb::BatchStatus> {
    let resp = client
        .get_status(pb::GetStatusRequest {
            target: Some(pb::get_status_request::Target::BatchId(batch_id.into())),
        })
        .await?
        .into_inner();
    match resp.status {
        Some(pb::get_status_response::Status::Batch(b)) => Ok(b),
        other => anyhow::bail!("unexpected status {other:?}"),
    }
}

/// Status of one message (`"<batch_id>.<index>"`).
pub async fn message_status(
    client: &mut CoordinatorClient<Channel>,
    message_id: &str,
) -> anyhow::Result<pb::MessageStatus> {
    let resp = client
        .get_status(pb::GetStatusRequest {
            target: Some(pb::get_status_request::Target::MessageId(message_id.into())),
        })
        .await?
        .into_inner();
    match resp.status {
        Some(pb::get_status_response::Status::Message(m)) => Ok(m),
        other => anyhow::bail!("unexpected status {other:?}"),
    }
}

/// A client of the coordinator listening on `addr` (plaintext), once it
/// accepts connections (10 s at most: e.g. one just restarted).
pub async fn client_at(addr: SocketAddr) -> CoordinatorClient<Channel> {
    wait_until(
        Duration::from_secs(10),
        "the coordinator to accept connections",
        || async move {
            CoordinatorClient::connect(format!("http://{addr}"))
                .await
                .ok()
        },
    )
    .await
    .expect("connect to the coordinator")
}

/// Whether the coordinator at `addr` (plaintext) serves the API: its gRPC
/// health for `smsmesh.v1.Coordinator` says SERVING (a standby's does not).
pub async fn leads(addr: SocketAddr) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    smsmesh::client::leads(channel, Duration::from_secs(2)).await
}

/// Waits until more than `sent` messages of the batch are sent.
pub async fn wait_sent(client: &CoordinatorClient<Channel>, batch_id: &str, sent: u64) {
    wait_until(Duration::from_secs(60), "the batch to be under way", || {
        let mut client = client.clone();
        async move { (batch_status(&mut client, batch_id).await.ok()?.sent > sent).then_some(()) }
    })
    .await
    .unwrap();
}

/// Waits until the batch has ended (completed or cancelled) and returns its status.
pub async fn wait_ended(
    client: &mut CoordinatorClient<Channel>,
    batch_id: &str,
    deadline: Duration,
) -> anyhow::Result<pb::BatchStatus> {
    wait_until(deadline, &format!("batch {batch_id} to end"), || {
        let mut client = client.clone();
        async move {
            let b = batch_status(&mut client, batch_id).await.ok()?;
            let ended = b.state == pb::BatchState::Completed as i32
                || b.state == pb::BatchState::Cancelled as i32;
            ended.then_some(b)
        }
    })
    .await
}

/// Submits `req` and returns the new batch's id (panics on an error).
pub async fn submit(
    client: &mut CoordinatorClient<Channel>,
    req: pb::SubmitBatchRequest,
) -> String {
    client
        .submit_batch(req)
        .await
        .expect("submit")
        .into_inner()
        .batch_id
}

/// A synthetic batch request of `count` messages.
pub fn synthetic(count: u64, seed: u64) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        synthetic: Some(pb::SyntheticBatch {
            count,
            body: None,
            seed: Some(seed),
        }),
        ..Default::default()
    }
}

pub use smsmesh::metrics::http_get;
