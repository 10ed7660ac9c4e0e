//! Tests with real processes: the programs as users run them, killed and
//! stopped with real signals.

use std::time::Duration;

use smsmesh::pb::{self, BatchState};
use smsmesh_testkit::{Proc, batch_status, bin, synthetic, wait_ended, wait_until};

const LONG: Duration = Duration::from_secs(60);

use smsmesh_testkit::client_at as client;

fn node_sent(b: &pb::BatchStatus, name: &str) -> u64 {
    b.nodes
        .iter()
        .find(|n| n.node == name)
        .map_or(0, |n| n.sent)
}

/// A coordinator process, a slow node `name` and a fast one (`other`), busy with a
/// batch of `total`; returns once `name` has sent some and holds more.
struct Busy {
    _dir: tempfile::TempDir,
    _coord: Proc,
    node: Proc,
    _other: Proc,
    client: pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    id: String,
}

async fn busy(name: &str, total: u64, seed: u64) -> Busy {
    let dir = tempfile::tempdir().unwrap();
    let (coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let url = format!("http://{addr}");
    let node = Proc::node(
        &url,
        name,
        &["--concurrency", "200", "--mean-latency", "50ms"],
    )
    .unwrap();
    let other = Proc::node(
        &url,
        "other",
        &["--concurrency", "200", "--mean-latency", "10ms"],
    )
    .unwrap();
    let mut client = client(addr).await;
    let id = client
        .submit_batch(synthetic(total, seed))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_until(
        LONG,
        &format!("{name} to have sent some and hold more"),
        || {
            let mut c = client.clone();
            let id = id.clone();
            async move {
                let b = batch_status(&mut c, &id).await.ok()?;
                let v = b.nodes.iter().find(|n| n.node == name)?;
                (v.sent > 500 && v.in_flight > 50).then_some(())
            }
        },
    )
    .await
    .unwrap();
    Busy {
        _dir: dir,
        _coord: coord,
        node,
        _other: other,
        client,
        id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_mid_batch_loses_nothing() {
    let total = 20_000;
    let mut t = busy("victim", total, 21).await;
    t.node.kill9();
    let b = wait_ended(&mut t.client, &t.id, LONG).await.unwrap();
    assert_eq!(b.state, BatchState::Completed as i32);
    assert_eq!((b.sent, b.failed), (total, 0), "{b:?}");
    assert!(b.requeued > 0, "the victim's jobs were requeued: {b:?}");
    assert!(node_sent(&b, "other") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_a_node_finish_its_jobs_and_leave() {
    let total = 20_000;
    let mut t = busy("leaver", total, 22).await;
    t.node.term();
    let status = t.node.wait(Duration::from_secs(20)).await.unwrap();
    assert!(
        status.success(),
        "smsnode exits 0 after a clean leave: {status:?}"
    );
    let b = wait_ended(&mut t.client, &t.id, LONG).await.unwrap();
    assert_eq!((b.sent, b.failed, b.requeued), (total, 0, 0), "{b:?}");
    let share = b.nodes.iter().find(|n| n.node == "leaver").unwrap();
    assert!(!share.connected && share.in_flight == 0 && share.sent > 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smsmon_follows_a_batch_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let url = format!("http://{addr}");
    let _node = Proc::node(
        &url,
        "n",
        &["--concurrency", "100", "--mean-latency", "5ms"],
    )
    .unwrap();
    let mut client = client(addr).await;
    let id = client
        .submit_batch(synthetic(5_000, 23))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let out = tokio::process::Command::new(bin("smsmon"))
        .args([
            "--coordinator",
            &url,
            "--batch",
            &id,
            "--interval",
            "100ms",
            "--plain",
        ])
        .output();
    let out = tokio::time::timeout(LONG, out)
        .await
        .expect("smsmon exits when the batch ends")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let last = text.lines().rev().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        last.contains("100.0% 5000/5000 completed | sent 5000 failed 0"),
        "{last}"
    );
    assert!(text.contains("1 nodes: n "), "{text}");

    // An unknown batch is a clear error and a non-zero exit.
    let out = std::process::Command::new(bin("smsmon"))
        .args(["--coordinator", &url, "--batch", "00000000000000ff"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch 00000000000000ff not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_runs_many_nodes_that_share_a_batch_and_leave_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let url = format!("http://{addr}");
    let mut host = Proc::node(
        &url,
        "host",
        &[
            "--instances",
            "5",
            "--concurrency",
            "20",
            "--mean-latency",
            "5ms",
        ],
    )
    .unwrap();
    let mut client = client(addr).await;
    let total = 5_000;
    let id = client
        .submit_batch(synthetic(total, 31))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!((b.sent, b.failed), (total, 0), "{b:?}");
    let mut names: Vec<&str> = b.nodes.iter().map(|n| n.node.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["host-000", "host-001", "host-002", "host-003", "host-004"],
        "five nodes, each on its own stream"
    );
    for n in &b.nodes {
        assert!(n.sent > 0, "every node took part: {n:?}");
    }
    // One connection carries the five streams: with this client's, two in all.
    assert_eq!(
        established_to(addr.port()),
        2,
        "one connection for five nodes"
    );
    host.term();
    let status = host.wait(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "all five leave cleanly: {status:?}");
    wait_until(LONG, "the five nodes to be gone", || {
        let mut c = client.clone();
        async move {
            let s = c
                .watch_progress(pb::WatchProgressRequest::default())
                .await
                .ok()?
                .into_inner()
                .message()
                .await
                .ok()??;
            (s.nodes_connected == 0).then_some(())
        }
    })
    .await
    .unwrap();
}

/// TCP connections established to `port` on this host (Linux `/proc/net/tcp`).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local address "0100007F:PORT" (hex), state 01 = ESTABLISHED
            f.len() > 3 && f[1].ends_with(&format!(":{port:04X}")) && f[3] == "01"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_stopped_for_longer_than_the_node_timeout_keeps_its_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, addr) = Proc::coordinator(dir.path(), &["--node-timeout", "3s"]).unwrap();
    let url = format!("http://{addr}");
    let _nodes: Vec<Proc> = ["s1", "s2"]
        .iter()
        .map(|name| {
            Proc::node(
                &url,
                name,
                &["--concurrency", "50", "--mean-latency", "100ms"],
            )
            .unwrap()
        })
        .collect();
    let mut c = client(addr).await;
    let id = c
        .submit_batch(synthetic(3_000, 77))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    smsmesh_testkit::wait_sent(&c, &id, 100).await;
    // The fault is the stop itself: twice the node timeout, with nodes sending heartbeats.
    coord.pause();
    tokio::time::sleep(Duration::from_secs(6)).await;
    coord.resume();
    let b = wait_ended(&mut c, &id, LONG).await.unwrap();
    assert_eq!((b.sent, b.failed), (3_000, 0), "{b:?}");
    assert_eq!(
        b.requeued, 0,
        "no node was dropped for the coordinator's own stall: {b:?}"
    );
    assert_eq!(b.duplicates, 0, "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smsmon_watching_every_batch_exits_non_zero_when_the_coordinator_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    // A batch with no node to send it: it runs, and smsmon has progress to show.
    client(addr)
        .await
        .submit_batch(synthetic(10, 1))
        .await
        .unwrap();
    let mut mon = tokio::process::Command::new(bin("smsmon"))
        .args([
            "--coordinator",
            &addr.to_string(),
            "--plain",
            "--interval",
            "100ms",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // A first line shows it is watching.
    let stdout = mon.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    tokio::time::timeout(LONG, lines.next_line())
        .await
        .expect("smsmon prints progress")
        .unwrap();
    coord.term();
    let out = tokio::time::timeout(LONG, mon.wait_with_output())
        .await
        .expect("smsmon exits when the coordinator stops")
        .unwrap();
    assert!(!out.status.success(), "not a silent exit 0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ended the progress stream"), "{err}");
}
