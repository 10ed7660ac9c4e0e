//! Nothing accepted is ever lost. The coordinator runs as a real process on a
//! data dir and is killed with SIGKILL; nodes run in this process with a
//! recording gateway, so every send is seen from the gateway's side (or,
//! for receipts, with an SMPP gateway to the test SMSC in this process).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use smsmesh::pb::{self, BatchState, MessageState};
use smsmesh_testkit::{
    CoordinatorConfig, Mesh, Node, NodeSpec, Proc, Proxy, Recorder, batch_status,
    client_at as client, synthetic, wait_ended, wait_until,
};

const LONG: Duration = Duration::from_secs(90);

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

async fn wait_sent(addr: SocketAddr, id: &str, at_least: u64) {
    let c = client(addr).await;
    wait_until(LONG, &format!("{at_least} messages sent"), || {
        let mut c = c.clone();
        async move {
            batch_status(&mut c, id)
                .await
                .ok()
                .filter(|b| b.sent >= at_least)
                .map(drop)
        }
    })
    .await
    .unwrap();
}

/// Every message's gateway history: index -> successful sends.
fn gateway_sends(rec: &Recorder, batch: &str) -> HashMap<u32, usize> {
    let batch = u64::from_str_radix(batch, 16).unwrap();
    let mut sends = HashMap::new();
    for a in rec.attempts().iter().filter(|a| a.batch == batch) {
        *sends.entry(a.index).or_default() += usize::from(a.sent);
    }
    sends
}

fn start_nodes(url: &str, rec: &Recorder, spec: impl Fn(&str) -> NodeSpec, n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node::start(url, spec(&format!("node-{i}")).record(rec)))
        .collect()
}

async fn message(c: &mut Client, id: String) -> pb::MessageStatus {
    let r = c
        .get_status(pb::GetStatusRequest {
            target: Some(pb::get_status_request::Target::MessageId(id)),
        })
        .await
        .unwrap()
        .into_inner();
    match r.status {
        Some(pb::get_status_response::Status::Message(m)) => m,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_twice_mid_batch_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let rec = Recorder::default();
    let url = format!("http://{addr}");
    let spec = |name: &str| {
        NodeSpec::new(name)
            .concurrency(100)
            .latency(Duration::from_millis(5))
            .failure_rate(0.1)
    };
    let _nodes = start_nodes(&url, &rec, spec, 2);
    let total = 30_000u64;
    let id = client(addr)
        .await
        .submit_batch(synthetic(total, 31))
        .await
        .unwrap()
        .into_inner()
        .batch_id;

    for (kill_at, round) in [(total / 4, 1), (total / 2, 2)] {
        wait_sent(addr, &id, kill_at).await;
        coord.kill9();
        (coord, _) = Proc::coordinator_on(addr, dir.path(), &[]).unwrap();
        let b = batch_status(&mut client(addr).await, &id).await.unwrap();
        assert!(
            b.sent >= kill_at * 9 / 10,
            "round {round}: outcomes survived the crash: {b:?}"
        );
    }
    let mut c = client(addr).await;
    let b = wait_ended(&mut c, &id, LONG).await.unwrap();
    assert_eq!(b.state, BatchState::Completed as i32);
    assert_eq!(b.sent + b.failed, total, "{b:?}");

    // The gateways' view agrees: every message the coordinator calls sent was
    // sent by a gateway, and no success went unrecorded.
    let sends = gateway_sends(&rec, &id);
    assert_eq!(sends.len() as u64, total, "every message was attempted");
    let sent_by_gateway = sends.values().filter(|&&n| n > 0).count() as u64;
    assert_eq!(
        sent_by_gateway, b.sent,
        "sent messages = messages a gateway sent"
    );
    let twice: u64 = sends
        .values()
        .filter(|&&n| n > 1)
        .map(|&n| n as u64 - 1)
        .sum();
    assert!(
        b.resent > 0,
        "messages in flight at the crashes went out again: {b:?}"
    );
    assert!(
        b.resent >= twice,
        "re-sends are never under-counted: {} < {twice}",
        b.resent
    );
    // Per crash at most: one reservation step beyond what was dispatched (the nodes'
    // credit limit, 2 x 200), what the nodes held (400), and results not yet stored
    // (400), re-sent when the nodes come back after the grace on a busy machine.
    assert!(
        b.resent <= 2 * (400 + 400 + 400),
        "resent {} is within its bound",
        b.resent
    );
    println!(
        "kill -9 x2: total {total} sent {} failed {} resent {} duplicates {} (gateway saw {twice} extra sends)",
        b.sent, b.failed, b.resent, b.duplicates
    );
    // Spot-check messages: their stored outcome matches what the gateways saw.
    for index in (0..total as u32).step_by(997) {
        let m = message(&mut c, format!("{id}.{index}")).await;
        let want = if sends[&index] > 0 {
            MessageState::Sent
        } else {
            MessageState::Failed
        };
        assert_eq!(m.state, want as i32, "message {index}: {m:?}");
        assert!(m.attempts >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_finished_while_the_coordinator_is_down_are_handed_in_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let rec = Recorder::default();
    let url = format!("http://{addr}");
    let spec = |name: &str| {
        NodeSpec::new(name)
            .concurrency(300)
            .latency(Duration::from_millis(300))
    };
    let nodes = start_nodes(&url, &rec, spec, 1);
    let node = &nodes[0];
    let total = 3_000u64;
    let id = client(addr)
        .await
        .submit_batch(synthetic(total, 32))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_until(LONG, "the node to hold jobs", || async {
        (node.handled() > 100 && node.stats.jobs.load(Relaxed) >= node.handled() + 200)
            .then_some(())
    })
    .await
    .unwrap();
    coord.kill9();
    // The node finishes what it holds while nobody listens.
    wait_until(LONG, "the node to finish its jobs", || async {
        (node.stats.jobs.load(Relaxed) == node.handled()).then_some(())
    })
    .await
    .unwrap();
    let (_coord, _) = Proc::coordinator_on(addr, dir.path(), &[]).unwrap();
    let b = wait_ended(&mut client(addr).await, &id, LONG)
        .await
        .unwrap();
    assert_eq!((b.sent, b.failed), (total, 0), "{b:?}");
    assert!(
        node.stats.handed_in.load(Relaxed) >= 200,
        "results were handed in after the restart"
    );
    // The node handed its results in before asking for work, so nothing went out twice.
    let sends = gateway_sends(&rec, &id);
    assert!(
        sends.values().all(|&n| n == 1),
        "every message sent exactly once"
    );
    assert_eq!(b.duplicates, 0, "{b:?}");
    // `resent` is an upper bound: messages reserved for dispatch but not finished at the
    // crash, at most the node's capacity (300) plus one reservation (300).
    assert!(b.resent <= 600, "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_resubmit_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let mut req = synthetic(500, 33);
    req.idempotency_key = "drill-7".into();
    let first = client(addr)
        .await
        .submit_batch(req.clone())
        .await
        .unwrap()
        .into_inner();
    coord.kill9();
    let (_coord, _) = Proc::coordinator_on(addr, dir.path(), &[]).unwrap();
    let mut c = client(addr).await;
    let again = c.submit_batch(req).await.unwrap().into_inner();
    assert_eq!(
        (&again.batch_id, again.accepted, again.replayed),
        (&first.batch_id, first.accepted, true),
        "same key, same batch"
    );
    // The batch was durable before SubmitBatch returned, and resumes with a node.
    let _node = Node::start(&format!("http://{addr}"), NodeSpec::new("n"));
    let b = wait_ended(&mut c, &first.batch_id, LONG).await.unwrap();
    assert_eq!(b.sent, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_s_jobs_are_reassigned_and_its_late_results_not_counted_twice() {
    let config = CoordinatorConfig {
        heartbeat_interval: Duration::from_millis(200),
        node_timeout: Duration::from_secs(1),
        ..CoordinatorConfig::default()
    };
    let mesh = Mesh::start(config).await.unwrap();
    let proxy = Proxy::start(mesh.addr).await.unwrap();
    let rec = Recorder::default();
    let cut = Node::start(
        &proxy.url(),
        NodeSpec::new("cut")
            .concurrency(100)
            .latency(Duration::from_millis(50))
            .record(&rec),
    );
    let direct = mesh.node(
        NodeSpec::new("direct")
            .concurrency(100)
            .latency(Duration::from_millis(10))
            .record(&rec),
    );
    let mut c = mesh.client().await.unwrap();
    let total = 8_000u64;
    let id = c
        .submit_batch(synthetic(total, 34))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_until(LONG, "the cut node to hold jobs", || async {
        (cut.handled() > 200 && cut.stats.jobs.load(Relaxed) >= cut.handled() + 50).then_some(())
    })
    .await
    .unwrap();
    proxy.freeze();
    let b = wait_ended(&mut c, &id, LONG).await.unwrap();
    assert_eq!((b.sent, b.failed), (total, 0), "{b:?}");
    assert!(
        b.requeued >= 50,
        "the cut node's jobs were reassigned: {b:?}"
    );
    let cut_share = b.nodes.iter().find(|n| n.node == "cut").unwrap();
    assert!(!cut_share.connected);
    assert!(direct.handled() > 0);

    // The partition heals: the node hands in what it finished; nothing counts twice.
    proxy.thaw();
    wait_until(LONG, "the cut node to hand in its results", || async {
        (cut.stats.handed_in.load(Relaxed) >= 50).then_some(())
    })
    .await
    .unwrap();
    let after = wait_until(LONG, "late results to be seen", || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            batch_status(&mut c, &id)
                .await
                .ok()
                .filter(|b| b.duplicates >= 50)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (after.sent, after.failed, after.state),
        (total, 0, BatchState::Completed as i32)
    );
    let sends = gateway_sends(&rec, &id);
    assert_eq!(sends.values().filter(|&&n| n > 0).count() as u64, total);
}

#[test]
fn an_unusable_store_stops_the_coordinator_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A corrupt store file: refused, and left as it was.
    let file = dir.path().join("smsmesh.redb");
    let garbage: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();
    let out = run_smscoord(dir.path());
    assert!(
        !out.status.success(),
        "a corrupt store must not be replaced by a fresh one"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&file.display().to_string()),
        "the error names the file: {err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        garbage,
        "the old data is untouched"
    );

    // An empty store file, and a data dir whose store file is gone: where a store was
    // expected, nothing starts afresh unless asked to.
    for (name, setup) in [("empty", true), ("missing", false)] {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        if setup {
            std::fs::write(data.join("smsmesh.redb"), b"").unwrap();
        } else {
            std::fs::write(data.join("notes.txt"), b"ours").unwrap();
        }
        let out = run_smscoord(&data);
        assert!(!out.status.success(), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--create-store"), "{name}: {err}");
        let (_started, addr) =
            smsmesh_testkit::Proc::coordinator(&data, &["--create-store"]).unwrap();
        // Serving health means the new store is open.
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while !health_serving(addr) {
            assert!(
                std::time::Instant::now() < end,
                "{name}: no new store was started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(std::fs::metadata(data.join("smsmesh.redb")).unwrap().len() > 0);
    }

    // A data dir that is a file.
    let not_dir = dir.path().join("plain-file");
    std::fs::write(&not_dir, b"x").unwrap();
    let out = run_smscoord(&not_dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot create data dir"),
        "{out:?}"
    );
}

/// Whether `smscoord --health-check` says the coordinator at `addr` serves.
fn health_serving(addr: std::net::SocketAddr) -> bool {
    std::process::Command::new(smsmesh_testkit::bin("smscoord"))
        .args([
            "--health-check",
            "--plaintext",
            "--listen",
            &addr.to_string(),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_smscoord(data: &Path) -> std::process::Output {
    let mut child = std::process::Command::new(smsmesh_testkit::bin("smscoord"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-auth",
            "--plaintext",
        ])
        .arg("--data-dir")
        .arg(data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself; give it 10 s before calling it hung.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < end,
            "smscoord kept running on an unusable store"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_stored_before_it_is_answered_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let rec = Recorder::default();
    let url = format!("http://{addr}");
    let spec = |name: &str| {
        NodeSpec::new(name)
            .concurrency(50)
            .latency(Duration::from_millis(100))
    };
    let nodes = start_nodes(&url, &rec, spec, 1);
    let total = 20_000u64;
    let id = client(addr)
        .await
        .submit_batch(synthetic(total, 35))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_sent(addr, &id, 200).await;
    let cancelled = client(addr)
        .await
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .batch
        .unwrap();
    assert_eq!(
        cancelled.state,
        BatchState::Cancelling as i32,
        "jobs were in flight"
    );
    coord.kill9();
    let (_coord, _) = Proc::coordinator_on(addr, dir.path(), &[]).unwrap();
    let mut c = client(addr).await;
    let b = wait_ended(&mut c, &id, LONG).await.unwrap();
    assert_eq!(
        b.state,
        BatchState::Cancelled as i32,
        "still cancelled after the crash: {b:?}"
    );
    assert_eq!(b.sent + b.failed + b.cancelled, total);
    // Jobs in flight at the crash finished on the node and were handed in: they count as sent.
    wait_until(LONG, "the node to finish and hand in", || async {
        let n = &nodes[0];
        (n.stats.handed_in.load(Relaxed) > 0 && n.stats.jobs.load(Relaxed) == n.handled())
            .then_some(())
    })
    .await
    .unwrap();
    let b = wait_until(LONG, "handed-in sends to be counted", || {
        let mut c = c.clone();
        let id = id.clone();
        let rec = rec.clone();
        async move {
            let b = batch_status(&mut c, &id).await.ok()?;
            let gateway_sent = gateway_sends(&rec, &id)
                .values()
                .filter(|&&n| n > 0)
                .count() as u64;
            (b.sent == gateway_sent).then_some(b)
        }
    })
    .await
    .unwrap();
    assert_eq!(b.sent + b.failed + b.cancelled, total, "{b:?}");
    assert!(b.cancelled > total / 2);
    assert_eq!(
        b.sent,
        nodes[0].stats.jobs.load(Relaxed),
        "every job the node got has its outcome"
    );
}

/// A coordinator killed with SIGKILL while receipts stream in. The
/// decisions it had made but not stored are lost with it, and the node never
/// answered their deliver_sm; the node keeps what the coordinator did not
/// acknowledge and sends it again after the restart. Every message ends
/// delivered, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_being_matched_when_the_coordinator_is_killed_are_each_counted_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let smsc_stats = std::sync::Arc::new(smsmesh_smsc::SmscStats::default());
    tokio::spawn(smsmesh_smsc::serve(
        listener,
        smsmesh_smsc::SmscConfig::default(),
        smsc_stats.clone(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let url = format!("http://{addr}");
    // 1,000 a second: receipts stream in for 4 s, and the kill lands among them.
    let gateway = format!("smpp://esme:secret@127.0.0.1:{port}?rate=1000");
    let _node = Node::start(&url, NodeSpec::new("smpp-a").smpp(&gateway));
    let total = 4000u64;
    let id = client(addr)
        .await
        .submit_batch(synthetic(total, 41))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let delivered = |at_least: u64, what: &'static str| {
        let id = id.clone();
        async move {
            let c = client(addr).await;
            wait_until(LONG, what, || {
                let (mut c, id) = (c.clone(), id.clone());
                async move {
                    batch_status(&mut c, &id)
                        .await
                        .ok()
                        .filter(|b| b.delivered >= at_least)
                }
            })
            .await
            .unwrap()
        }
    };
    let before = delivered(total / 4, "a quarter delivered").await;
    coord.kill9();
    assert!(
        before.delivered < total,
        "the kill must come while receipts stream in: {before:?}"
    );
    (coord, _) = Proc::coordinator_on(addr, dir.path(), &[]).unwrap();
    let b = delivered(total, "every message delivered").await;
    let c = client(addr).await;
    let b = wait_until(LONG, "no receipt awaited", || {
        let (mut c, id) = (c.clone(), b.batch_id.clone());
        async move {
            batch_status(&mut c, &id)
                .await
                .ok()
                .filter(|b| b.awaiting_receipt == 0 && b.state == BatchState::Completed as i32)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (b.sent, b.delivered, b.undelivered, b.delivery_unknown),
        (total, total, 0, 0),
        "each message delivered once: {b:?}"
    );
    println!(
        "kill -9 among receipts: {} delivered before it; the SMSC sent {} receipts ({} again) for {total} messages ({} submit_sm)",
        before.delivered,
        smsc_stats.receipts.load(Relaxed),
        smsc_stats.redelivered.load(Relaxed),
        smsc_stats.submits.load(Relaxed),
    );
    drop(coord);
}
