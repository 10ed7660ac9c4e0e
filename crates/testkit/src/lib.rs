//! An in-process smsmesh: a coordinator and nodes on `127.0.0.1:0`, each a
//! task with a handle to stop it gracefully or kill it. Mesh tests use it, and
//! so does the one-machine runner, `smsmesh-local`.
//!
//! Also [`wait_until`], to wait on a condition with a deadline instead of
//! sleeping, and [`bin`] to find the programs for real-process tests.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
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

/// A running in-process coordinator.
pub struct Mesh {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves Prometheus metrics (`/metrics`).
    pub metrics_addr: SocketAddr,
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
        let tls = config.tls.is_some();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(smsmesh_coordinator::run_with_metrics(
            config,
            listener,
            Some(metrics),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Mesh {
            addr,
            metrics_addr,
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
}

/// A group stream for nodes of this process to share, to the coordinator at
/// `url` (plaintext), presenting `join_token`; it connects on first use.
pub fn group(url: &str, join_token: Option<&str>) -> anyhow::Result<Arc<Group>> {
    let endpoint = smsmesh::client::endpoint(url, None).map_err(anyhow::Error::msg)?;
    Group::new(endpoint.connect_lazy(), join_token).map_err(anyhow::Error::msg)
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
        }
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
        let gateway: Arc<dyn Gateway> = match &spec.recorder {
            Some(r) => Arc::new(Recording {
                inner: simulated,
                node: spec.name.clone(),
                log: r.clone(),
            }),
            None => Arc::new(simulated),
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
}

/// A shared log of attempts, filled by nodes started with [`NodeSpec::record`].
#[derive(Clone, Debug, Default)]
pub struct Recorder(Arc<std::sync::Mutex<Vec<Attempt>>>);

impl Recorder {
    /// Every attempt recorded so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.0.lock().expect("recorder lock").clone()
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
        };
        self.inner.send(job).map(move |r| {
            a.sent = r.is_ok();
            log.0.lock().expect("recorder lock").push(a);
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

/// A client of the coordinator listening on `addr` (plaintext).
pub async fn client_at(addr: SocketAddr) -> CoordinatorClient<Channel> {
    CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the coordinator")
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

/// Path of one of the workspace's programs (`smscoord`, `smsnode`, `smsmon`).
///
/// `cargo test --workspace` builds them next to the test executables, because
/// each program's crate has integration tests of its own.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build --workspace --bins` first)",
        path.display()
    );
    path
}

/// Reads the address from `smscoord`'s first line (`smscoord listening on ADDR`);
/// `child` must have been started with its stdout piped. The rest of its stdout is
/// drained in the background so it never blocks on a full pipe.
pub fn listening_addr(child: &mut std::process::Child) -> anyhow::Result<SocketAddr> {
    Ok(stdout_addrs(child, &["smscoord listening on "])?[0])
}

/// Reads one `<prefix><address>` line per prefix, in order, from a child's piped
/// stdout (e.g. `smscoord listening on ...` then `smscoord metrics on ...`), then
/// drains the rest in the background so the child never blocks on a full pipe.
pub fn stdout_addrs(
    child: &mut std::process::Child,
    prefixes: &[&str],
) -> anyhow::Result<Vec<SocketAddr>> {
    use std::io::BufRead;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("the child's stdout is not piped"))?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut addrs = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the child exited before printing {prefix:?}"))??;
        let addr = line
            .strip_prefix(prefix)
            .ok_or_else(|| anyhow::anyhow!("expected {prefix:?}, got {line:?}"))?
            .parse()?;
        addrs.push(addr);
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok(addrs)
}

/// A child process of one of our programs, killed when dropped.
pub struct Proc {
    /// The child.
    pub child: std::process::Child,
}

impl Proc {
    /// Starts `smscoord --listen 127.0.0.1:0 --data-dir <data> <args>` and returns it
    /// with its address.
    pub fn coordinator(
        data: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        Self::coordinator_on("127.0.0.1:0".parse()?, data, args)
    }

    /// Starts `smscoord` on `listen` (e.g. to restart it where its nodes look for it).
    pub fn coordinator_on(
        listen: SocketAddr,
        data: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let child = std::process::Command::new(bin("smscoord"))
            .args(["--listen", &listen.to_string()])
            .args(["--insecure-no-auth", "--plaintext"])
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SMSMESH_TEST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut proc = Proc { child };
        let addr = listening_addr(&mut proc.child)?;
        Ok((proc, addr))
    }

    /// Starts `smsnode --coordinator <url> --name <name> <args>`.
    pub fn node(url: &str, name: &str, args: &[&str]) -> anyhow::Result<Proc> {
        let child = std::process::Command::new(bin("smsnode"))
            .args(["--coordinator", url, "--name", name])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SMSMESH_TEST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .spawn()?;
        Ok(Proc { child })
    }

    /// Sends SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn term(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends SIGSTOP: the process is frozen until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Sends SIGCONT.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// Waits for the process to exit, `deadline` at most.
    pub async fn wait(&mut self, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let child = &mut self.child;
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= end {
                anyhow::bail!("process {} still running after {deadline:?}", child.id());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy that can cut traffic both ways without closing connections,
/// like a network partition or a frozen peer.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            // Accept loop: one pair of pumps per connection.
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, watch.clone()));
                tokio::spawn(pump(ur, dw, watch.clone()));
            }
        });
        Ok(Proxy { addr, frozen, task })
    }

    /// The proxy's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding in both directions; connections stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = frozen.wait_for(|f| *f) => continue,
        };
        // Bytes read just before a freeze are held until the thaw.
        if frozen.wait_for(|f| !f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

pub use smsmesh::metrics::http_get;
