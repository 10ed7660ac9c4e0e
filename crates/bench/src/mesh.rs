//! Starting a mesh of release processes for one benchmark run: a fresh
//! `smscoord` (durable in a temporary directory, or in memory) and the
//! `smsnode` processes of a [`Setup`], all joined before the run starts.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use smsmesh::pb;
use smsmesh_testkit::{Proc, stdout_addrs};

use crate::Setup;

/// A mesh, running; its processes are killed when it is dropped.
pub(crate) struct Started {
    pub(crate) coord: Proc,
    pub(crate) nodes: Vec<Proc>,
    pub(crate) client: pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    pub(crate) url: String,
    /// The coordinator's `/metrics`, when `--metrics-listen` was among its arguments.
    pub(crate) metrics: Option<SocketAddr>,
    /// The coordinator's HTTP API, when `--http-listen` was among its arguments.
    pub(crate) http: Option<SocketAddr>,
    /// The coordinator's store, removed at the end.
    pub(crate) _data: tempfile::TempDir,
}

/// Starts the coordinator (with `coord_args` besides the usual ones; without
/// authentication unless they give `--jwt-secret-file`) and the nodes of
/// `setup`, and waits until every node has joined (asking with `token`, when
/// the coordinator checks tokens). Nodes present the coordinator's
/// `--node-token-file`, if it has one.
pub(crate) async fn start(
    bin: &Path,
    setup: &Setup,
    coord_args: &[&str],
    token: Option<&str>,
) -> anyhow::Result<Started> {
    let data = tempfile::tempdir()?;
    // Nodes present the coordinator's join token, if it asks for one.
    let join_token = coord_args
        .iter()
        .position(|a| *a == "--node-token-file")
        .and_then(|i| coord_args.get(i + 1));
    let mut coord = Command::new(bin.join("smscoord"));
    coord.args(["--listen", "127.0.0.1:0", "--plaintext"]);
    if !coord_args.contains(&"--jwt-secret-file") {
        coord.arg("--insecure-no-auth");
    }
    coord
        .args(coord_args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped());
    if setup.durable {
        coord.arg("--data-dir").arg(data.path());
    } else {
        coord.arg("--in-memory");
    }
    let mut coord = Proc {
        child: coord.spawn()?,
    };
    let mut prefixes = vec!["smscoord listening on "];
    if coord_args.contains(&"--metrics-listen") {
        prefixes.push("smscoord metrics on ");
    }
    if coord_args.contains(&"--http-listen") {
        prefixes.push("smscoord http on ");
    }
    let addrs = stdout_addrs(&mut coord.child, &prefixes)?;
    let addr = addrs[0];
    let url = format!("http://{addr}");
    let mut nodes: Vec<Proc> = setup
        .nodes
        .chunks(setup.per_process.max(1))
        .enumerate()
        .map(|(i, group)| {
            let (c, l) = group[0];
            assert!(
                group.iter().all(|n| *n == (c, l)),
                "one kind of node per process"
            );
            Command::new(bin.join("smsnode"))
                .args(["--coordinator", &url, "--name", &format!("node-{i:03}")])
                .args([
                    "--concurrency",
                    &c.to_string(),
                    "--mean-latency",
                    &format!("{}ms", l.as_millis()),
                ])
                .args(["--instances", &group.len().to_string()])
                .args(
                    join_token
                        .into_iter()
                        .flat_map(|t| ["--join-token-file", t]),
                )
                .env("RUST_LOG", "error")
                .spawn()
                .map(|child| Proc { child })
        })
        .collect::<Result<_, _>>()?;
    let mut client = pb::coordinator_client::CoordinatorClient::connect(url.clone()).await?;
    // Wait until every node has joined.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A coordinator on a database answers once it holds the lead.
        if let Ok(s) = client
            .watch_progress(request(pb::WatchProgressRequest::default(), token)?)
            .await
            && let Some(u) = s.into_inner().message().await?
            && u.nodes_connected as usize == setup.nodes.len()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("nodes did not all join within 60 s");
        }
        for n in &mut nodes {
            if let Some(status) = n.child.try_wait()? {
                bail!("a node exited before joining ({status}); see its error above");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Started {
        coord,
        nodes,
        client,
        url,
        metrics: coord_args.contains(&"--metrics-listen").then(|| addrs[1]),
        http: coord_args
            .contains(&"--http-listen")
            .then(|| addrs[addrs.len() - 1]),
        _data: data,
    })
}

/// `message` as a request, with a bearer `token` when the coordinator checks them.
pub(crate) fn request<T>(message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(message);
    if let Some(token) = token {
        smsmesh::client::bearer(&mut r, token).map_err(anyhow::Error::msg)?;
    }
    Ok(r)
}

/// A durable coordinator and `nodes` `smsnode` processes of `concurrency`
/// sending through `gateway` (named `PREFIX-0`, …), each with `threads`
/// runtime threads (0: one per core), all joined.
pub(crate) async fn with_gateway(
    bin: &Path,
    gateway: &str,
    prefix: &str,
    (nodes, threads): (usize, usize),
    concurrency: u32,
) -> anyhow::Result<(Started, Vec<Proc>)> {
    let setup = Setup {
        messages: 0,
        durable: true,
        nodes: Vec::new(),
        per_process: 1,
    };
    let m = start(bin, &setup, &[], None).await?;
    let procs: Vec<Proc> = (0..nodes)
        .map(|i| {
            Command::new(bin.join("smsnode"))
                .args(["--coordinator", &m.url, "--name", &format!("{prefix}-{i}")])
                .args([
                    "--gateway",
                    gateway,
                    "--concurrency",
                    &concurrency.to_string(),
                    "--worker-threads",
                    &threads.to_string(),
                ])
                .env(
                    "RUST_LOG",
                    std::env::var("SMSMESH_BENCH_NODE_LOG").unwrap_or("error".into()),
                )
                .spawn()
                .map(|child| Proc { child })
        })
        .collect::<Result<_, _>>()?;
    smsmesh_testkit::wait_until(Duration::from_secs(30), "the gateway nodes to join", || {
        let mut client = m.client.clone();
        async move {
            let mut s = client
                .watch_progress(pb::WatchProgressRequest::default())
                .await
                .ok()?
                .into_inner();
            let u = s.message().await.ok()??;
            (u.nodes_connected as usize == nodes).then_some(())
        }
    })
    .await?;
    Ok((m, procs))
}

impl Started {
    /// Kills the coordinator with SIGKILL and starts it again on its store
    /// and its address; returns once it answers GetStatus of `batch`, with
    /// how long that took and the answer.
    pub(crate) async fn restart(
        &mut self,
        bin: &Path,
        batch: &str,
    ) -> anyhow::Result<(Duration, pb::BatchStatus)> {
        self.coord.kill9();
        let addr = self.url.trim_start_matches("http://").to_string();
        let started = Instant::now();
        self.coord = Proc {
            child: Command::new(bin.join("smscoord"))
                .args(["--listen", &addr, "--plaintext", "--insecure-no-auth"])
                .arg("--data-dir")
                .arg(self._data.path())
                .env("RUST_LOG", "error")
                .stdout(Stdio::piped())
                .spawn()?,
        };
        stdout_addrs(&mut self.coord.child, &["smscoord listening on "])?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let answer = async {
                let mut c =
                    pb::coordinator_client::CoordinatorClient::connect(self.url.clone()).await?;
                anyhow::Ok(smsmesh_testkit::batch_status(&mut c, batch).await?)
            }
            .await;
            match answer {
                Ok(status) => {
                    self.client =
                        pb::coordinator_client::CoordinatorClient::connect(self.url.clone())
                            .await?;
                    return Ok((started.elapsed(), status));
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("the restarted coordinator did not answer within 120 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}
