//! No single point of failure: two `smscoord` processes on one real
//! PostgreSQL database, one leading and one standing by. The leader is
//! killed, cut off from the database, or frozen past its lease; the standby
//! takes over and the batch completes with nothing lost and every re-send
//! counted. Nodes run in this process with a recording gateway and are given
//! both coordinator addresses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smsmesh::pb::{self, BatchState};
use smsmesh_testkit::{
    Node, NodeSpec, Proc, Proxy, Recorder, batch_status, client_at as client, database, leads,
    synthetic, wait_ended, wait_until,
};

const LONG: Duration = Duration::from_secs(120);
/// The lease term the coordinators here run with.
const TTL: &str = "3s";

/// A coordinator process on the database at `url`.
fn coordinator(url: &str) -> (Proc, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (proc, addr) = Proc::coordinator_on(
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
        &["--database-url", url, "--lease-ttl", TTL],
    )
    .unwrap();
    (proc, addr, dir)
}

async fn wait_serving(addr: SocketAddr, within: Duration) -> Duration {
    let start = Instant::now();
    wait_until(within, &format!("{addr} serving"), || async move {
        leads(addr).await.then_some(())
    })
    .await
    .unwrap();
    start.elapsed()
}

/// Waits until at least `at_least` messages of the batch are sent.
async fn wait_sent(addr: SocketAddr, id: &str, at_least: u64) {
    smsmesh_testkit::wait_sent(&client(addr).await, id, at_least.saturating_sub(1)).await;
}

fn nodes(urls: &str, rec: &Recorder, n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let spec = NodeSpec::new(&format!("node-{i}"))
                .concurrency(100)
                .latency(Duration::from_millis(2))
                .failure_rate(0.05)
                .record(rec);
            Node::start(urls, spec)
        })
        .collect()
}

/// The books of a finished batch agree with what the gateways saw: every
/// message has one final outcome, every message a gateway sent is counted
/// sent, and re-sends are never under-counted.
fn check_books(rec: &Recorder, b: &pb::BatchStatus, total: u64) -> u64 {
    assert_eq!(b.state, BatchState::Completed as i32, "{b:?}");
    assert_eq!(b.sent + b.failed, total, "one final outcome each: {b:?}");
    let batch = u64::from_str_radix(&b.batch_id, 16).unwrap();
    let mut sends: HashMap<u32, u64> = HashMap::new();
    for a in rec.attempts().iter().filter(|a| a.batch == batch) {
        *sends.entry(a.index).or_default() += u64::from(a.sent);
    }
    assert_eq!(sends.len() as u64, total, "every message was attempted");
    let sent_by_gateway = sends.values().filter(|&&n| n > 0).count() as u64;
    assert_eq!(sent_by_gateway, b.sent, "sent = messages a gateway sent");
    let twice: u64 = sends.values().filter(|&&n| n > 1).map(|&n| n - 1).sum();
    assert!(
        b.resent >= twice,
        "re-sends are never under-counted: {} < {twice}",
        b.resent
    );
    twice
}

/// Whether `smscoord --health-check` / `--ready-check` on `addr` exits 0.
fn check(addr: SocketAddr, flag: &str) -> bool {
    std::process::Command::new(smsmesh_testkit::bin("smscoord"))
        .args([flag, "--plaintext", "--listen", &addr.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A standby refuses the API with UNAVAILABLE, naming the leader.
async fn refuses_as_standby(addr: SocketAddr) {
    let err = client(addr)
        .await
        .submit_batch(synthetic(10, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("standby") && err.message().contains("the leader is"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_from_a_killed_leader_mid_batch() {
    let Some(url) = database("killed").await else {
        return;
    };
    let (mut a, a_addr, _a_dir) = coordinator(&url);
    wait_serving(a_addr, LONG).await;
    let (_b, b_addr, _b_dir) = coordinator(&url);
    // Give the standby time to look at the lease: it must not lead.
    wait_until(LONG, "the standby answers", || async move {
        client(b_addr)
            .await
            .submit_batch(synthetic(10, 1))
            .await
            .err()
            .filter(|e| {
                e.code() == tonic::Code::Unavailable && e.message().contains("the leader is")
            })
            .map(drop)
    })
    .await
    .unwrap();
    assert!(!leads(b_addr).await, "the standby says NOT_SERVING");
    refuses_as_standby(b_addr).await;
    // Liveness passes on both, readiness only on the leader.
    assert!(check(b_addr, "--health-check") && !check(b_addr, "--ready-check"));
    assert!(check(a_addr, "--health-check") && check(a_addr, "--ready-check"));

    let rec = Recorder::default();
    let _nodes = nodes(&format!("http://{a_addr},http://{b_addr}"), &rec, 4);
    let total = 60_000u64;
    let id = client(a_addr)
        .await
        .submit_batch(synthetic(total, 19))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_sent(a_addr, &id, total / 3).await;
    a.kill9();
    let took = wait_serving(b_addr, Duration::from_secs(30)).await;
    assert!(
        took <= Duration::from_secs(10),
        "the standby served {took:?} after the leader was killed"
    );
    let b = wait_ended(&mut client(b_addr).await, &id, LONG)
        .await
        .unwrap();
    let twice = check_books(&rec, &b, total);
    println!(
        "kill -9 of the leader: standby serving after {took:?}; sent {} failed {} resent {} (gateway saw {twice} extra sends)",
        b.sent, b.failed, b.resent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_database_steps_down_and_the_standby_takes_over() {
    let Some(url) = database("partition").await else {
        return;
    };
    // The leader reaches the database through a proxy that can cut it off.
    let (base, db) = url.rsplit_once('/').unwrap();
    let server: SocketAddr = base.rsplit_once('@').unwrap().1.parse().unwrap();
    let proxy = Proxy::start(server).await.unwrap();
    let user = base.rsplit_once('@').unwrap().0;
    let through_proxy = format!("{user}@{}/{db}", proxy.addr);
    let (mut a, a_addr, _a_dir) = coordinator(&through_proxy);
    wait_serving(a_addr, LONG).await;
    let (_b, b_addr, _b_dir) = coordinator(&url);

    let rec = Recorder::default();
    let _nodes = nodes(&format!("http://{a_addr},http://{b_addr}"), &rec, 4);
    let total = 60_000u64;
    let id = client(a_addr)
        .await
        .submit_batch(synthetic(total, 23))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_sent(a_addr, &id, total / 3).await;
    proxy.freeze();
    let cut = Instant::now();
    // It must stop within its lease (3 s), before the standby may take over.
    let status = a.wait(Duration::from_secs(10)).await.unwrap();
    let stepped = cut.elapsed();
    assert!(
        !status.success(),
        "a leader that stepped down exits non-zero"
    );
    assert!(
        stepped <= Duration::from_secs(3),
        "the leader stepped down {stepped:?} after the cut, within its 3 s lease"
    );
    let took = wait_serving(b_addr, Duration::from_secs(30)).await + stepped;
    assert!(
        took <= Duration::from_secs(10),
        "the standby served {took:?} after the cut"
    );
    let b = wait_ended(&mut client(b_addr).await, &id, LONG)
        .await
        .unwrap();
    let twice = check_books(&rec, &b, total);
    println!(
        "partition: leader stepped down after {stepped:?}, standby serving {took:?} after the cut; sent {} failed {} resent {} (gateway saw {twice} extra sends)",
        b.sent, b.failed, b.resent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_started_together_have_one_leader() {
    for round in 0..3 {
        let Some(url) = database("together").await else {
            return;
        };
        let started: Vec<_> = (0..3).map(|_| coordinator(&url)).collect();
        let addrs: Vec<SocketAddr> = started.iter().map(|(_, a, _)| *a).collect();
        wait_until(LONG, "one leads", || {
            let addrs = addrs.clone();
            async move {
                for a in addrs {
                    if leads(a).await {
                        return Some(());
                    }
                }
                None
            }
        })
        .await
        .unwrap();
        // Sampled over two lease terms: never two serving at once.
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            let mut leading = 0;
            for a in &addrs {
                leading += usize::from(leads(*a).await);
            }
            assert_eq!(leading, 1, "round {round}: {leading} coordinators serve");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_that_wakes_after_a_takeover_writes_nothing_and_steps_down() {
    let Some(url) = database("frozen").await else {
        return;
    };
    let (mut a, a_addr, _a_dir) = coordinator(&url);
    wait_serving(a_addr, LONG).await;
    let (_b, b_addr, _b_dir) = coordinator(&url);
    let rec = Recorder::default();
    let _nodes = nodes(&format!("http://{a_addr},http://{b_addr}"), &rec, 4);
    let total = 40_000u64;
    let id = client(a_addr)
        .await
        .submit_batch(synthetic(total, 29))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_sent(a_addr, &id, total / 4).await;
    // Frozen mid-batch (a long GC pause, a stalled VM): its lease runs out.
    a.pause();
    wait_serving(b_addr, Duration::from_secs(30)).await;
    let taken = batch_status(&mut client(b_addr).await, &id).await.unwrap();
    // It wakes with results in hand and a commit due: the epoch fences it.
    a.resume();
    let status = a.wait(Duration::from_secs(15)).await.unwrap();
    assert!(!status.success(), "the deposed leader exits non-zero");
    let b = wait_ended(&mut client(b_addr).await, &id, LONG)
        .await
        .unwrap();
    let twice = check_books(&rec, &b, total);
    assert!(
        b.sent >= taken.sent,
        "nothing the new leader counted was undone"
    );
    println!(
        "frozen leader: standby took over at {} sent; final sent {} failed {} resent {} (gateway saw {twice} extra sends)",
        taken.sent, b.sent, b.failed, b.resent
    );
}

/// A coordinator process on the database at `url` that also serves HTTP:
/// (process, gRPC address, HTTP address).
fn http_coordinator(url: &str) -> (Proc, SocketAddr, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(smsmesh_testkit::bin("smscoord"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--insecure-no-auth", "--plaintext", "--data-dir"])
        .arg(dir.path())
        .args(["--database-url", url, "--lease-ttl", TTL])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut proc = Proc { child };
    let addrs = smsmesh_testkit::stdout_addrs(
        &mut proc.child,
        &["smscoord listening on ", "smscoord http on "],
    )
    .unwrap();
    (proc, addrs[0], addrs[1], dir)
}

/// `GET /v1/batches` at `http` with curl: (status, body).
async fn http_list(http: SocketAddr) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://{http}/v1/batches"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap_or_default();
    (status.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_answers_http_with_503_until_it_leads() {
    let Some(url) = database("http").await else {
        return;
    };
    let (mut a, a_addr, a_http, _a_dir) = http_coordinator(&url);
    wait_serving(a_addr, LONG).await;
    let (_b, b_addr, b_http, _b_dir) = http_coordinator(&url);
    let (status, body) = http_list(a_http).await;
    assert_eq!(status, "200", "{body}");
    // The standby answers at once, and says what it is.
    let (status, body) = http_list(b_http).await;
    assert_eq!(status, "503", "{body}");
    assert!(
        body.contains("UNAVAILABLE") && body.contains("standby"),
        "{body}"
    );
    a.kill9();
    wait_serving(b_addr, LONG).await;
    let (status, body) = http_list(b_http).await;
    assert_eq!(status, "200", "the new leader serves HTTP: {body}");
}
