//! Status callbacks to clients: the coordinator POSTs a batch's events to
//! its callback URL, signed, grouped, and retried until the receiver takes
//! them. The receiver is a real HTTP server in this test that checks every
//! signature with its own HMAC code.

use std::sync::Arc;
use std::time::Duration;

use smsmesh::pb;
use smsmesh_testkit::{
    CallbackReceiver, CoordinatorConfig, Mesh, Node, NodeSpec, Proc, batch_status, client_at,
    synthetic, wait_ended, wait_until,
};

const SECRET: &[u8] = b"callback-secret-0123456789";
const LONG: Duration = Duration::from_secs(60);

fn config(receiver: Option<&CallbackReceiver>) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::default();
    c.callbacks.secrets.insert("*".into(), Arc::from(SECRET));
    c.callbacks.interval = Duration::from_millis(20);
    if let Some(r) = receiver {
        c.callbacks.default_urls.insert("*".into(), r.url().into());
    }
    c
}

async fn wait_events(r: &CallbackReceiver, n: usize) {
    wait_until(
        LONG,
        &format!("{n} distinct events at the receiver"),
        || async { (r.distinct() >= n).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; got {}", r.distinct()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_reaches_the_receiver_signed_and_grouped() {
    let receiver = CallbackReceiver::start(SECRET).await.unwrap();
    let mesh = Mesh::start(config(None)).await.unwrap();
    let node = mesh.node(NodeSpec::new("n1").concurrency(200).failure_rate(0.2));
    let mut c = mesh.client().await.unwrap();

    // A synthetic batch: some messages fail for good (one attempt each).
    let mut req = synthetic(3000, 7);
    req.max_attempts = Some(1);
    req.callback_url = receiver.url();
    let synth = c.submit_batch(req).await.unwrap().into_inner().batch_id;
    // Explicit messages: their events carry the number and the client's reference.
    let explicit = c
        .submit_batch(pb::SubmitBatchRequest {
            messages: (0..2)
                .map(|i| pb::SmsMessage {
                    to: format!("+1555000{i:04}"),
                    body: "hello".into(),
                    client_ref: format!("ref-{i}"),
                    ..Default::default()
                })
                .collect(),
            max_attempts: Some(20),
            callback_url: receiver.url(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let s = wait_ended(&mut c, &synth, LONG).await.unwrap();
    wait_ended(&mut c, &explicit, LONG).await.unwrap();
    assert!(s.failed > 0 && s.sent > 0, "{s:?}");
    wait_events(&receiver, 3000 + 1 + 2 + 1).await;

    assert_eq!(receiver.bad_signatures(), 0);
    receiver.seen(|seen| {
        assert_eq!(seen.by_type["message.sent"], s.sent + 2);
        assert_eq!(seen.by_type["message.failed"], s.failed);
        assert_eq!(seen.by_type["batch.completed"], 2);
        // Every message of the synthetic batch, once each.
        for i in 0..3000 {
            let id = format!("{synth}.{i}");
            let n = ["message.sent", "message.failed"]
                .iter()
                .filter(|t| seen.events.contains(&(t.to_string(), id.clone())))
                .count();
            assert_eq!(n, 1, "message {id}");
        }
        assert!(
            seen.events
                .contains(&("batch.completed".into(), synth.clone()))
        );
        assert_eq!(
            seen.refs[&format!("{explicit}.1")],
            ("+15550000001".to_string(), "ref-1".to_string())
        );
    });
    // Grouped: far fewer requests than events.
    assert!(
        receiver.requests() * 10 < 3004,
        "{} requests for 3004 events",
        receiver.requests()
    );

    node.stop(LONG).await.unwrap();
    mesh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_urls_are_checked_and_the_tenant_default_applies() {
    // No secret: a URL cannot be used.
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut c = mesh.client().await.unwrap();
    let mut req = synthetic(1, 1);
    req.callback_url = "http://127.0.0.1:9/events".into();
    let e = c.submit_batch(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("--callback-secrets"),
        "{}",
        e.message()
    );
    mesh.stop().await.unwrap();

    let receiver = CallbackReceiver::start(SECRET).await.unwrap();
    let mesh = Mesh::start(config(Some(&receiver))).await.unwrap();
    let node = mesh.node(NodeSpec::new("n1"));
    let mut c = mesh.client().await.unwrap();
    for bad in [
        "ftp://127.0.0.1/x",
        "not a url",
        "http://user:pw@127.0.0.1/x",
    ] {
        let mut req = synthetic(1, 1);
        req.callback_url = bad.into();
        let e = c.submit_batch(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("callback_url"), "{}", e.message());
    }
    // No URL given: the tenant's default.
    let id = c
        .submit_batch(synthetic(10, 2))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_ended(&mut c, &id, LONG).await.unwrap();
    wait_events(&receiver, 11).await;
    assert_eq!(receiver.seen(|s| s.by_type["message.sent"]), 10);
    node.stop(LONG).await.unwrap();
    mesh.stop().await.unwrap();
}

/// The receiver is down while the batch runs (dispatch does not wait for
/// it), the coordinator is killed with SIGKILL, and started again: once the
/// receiver is back, every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_outlive_a_dead_receiver_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(
        &secrets,
        format!("*={}\n", std::str::from_utf8(SECRET).unwrap()),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = [
        "--callback-secrets",
        secrets.to_str().unwrap(),
        "--callback-max-events",
        "100",
    ];
    let mut receiver = CallbackReceiver::start(SECRET).await.unwrap();
    receiver.stop(); // connections are refused
    let (mut coord, addr) = Proc::coordinator(&data, &args).unwrap();
    let node = Node::start(
        &format!("http://{addr}"),
        NodeSpec::new("n1").concurrency(500),
    );
    let mut c = client_at(addr).await;
    let total = 5000u64;
    let mut req = synthetic(total, 3);
    req.callback_url = receiver.url();
    let id = c.submit_batch(req).await.unwrap().into_inner().batch_id;
    let s = wait_ended(&mut c, &id, LONG).await.unwrap();
    assert_eq!(s.sent, total);
    assert_eq!(receiver.distinct(), 0);

    // Killed at once: results of the last moments may not be stored yet;
    // the node still holds them and hands them to the coordinator restarted
    // on the same address.
    coord.kill9();
    let (mut coord, addr) = Proc::coordinator_on(addr, &data, &args).unwrap();
    let mut c = client_at(addr).await;
    let s = wait_ended(&mut c, &id, LONG).await.unwrap();
    assert_eq!(s.sent, total);
    receiver.restart().await.unwrap();
    wait_events(&receiver, total as usize + 1).await;
    assert_eq!(receiver.bad_signatures(), 0);
    receiver.seen(|seen| {
        assert_eq!(seen.by_type["message.sent"], total);
        assert_eq!(seen.by_type["batch.completed"], 1);
    });
    assert_eq!(batch_status(&mut c, &id).await.unwrap().sent, total);
    node.stop(LONG).await.unwrap();
    coord.term();
    let _ = coord.child.wait();
}

/// Over SMPP, receipts become delivery events: the test SMSC answers by the
/// number's last digit (6 undelivered, 7 expired, 8 refused at submit, 9 a
/// temporary error each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_receipts_become_delivery_events() {
    use smsmesh_smsc::{SmscConfig, SmscStats};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let smsc = SmscConfig {
        by_last_digit: true,
        ..SmscConfig::default()
    };
    tokio::spawn(smsmesh_smsc::serve(
        listener,
        smsc,
        Arc::new(SmscStats::default()),
    ));
    let receiver = CallbackReceiver::start(SECRET).await.unwrap();
    let mut config = config(None);
    config.retry_base = Duration::from_millis(20);
    let mesh = Mesh::start(config).await.unwrap();
    let node =
        mesh.node(NodeSpec::new("smpp").smpp(&format!("smpp://esme:secret@127.0.0.1:{port}")));
    let mut c = mesh.client().await.unwrap();
    let id = c
        .submit_batch(pb::SubmitBatchRequest {
            messages: (0..10)
                .map(|d| pb::SmsMessage {
                    to: format!("+4477009001{d:02}"),
                    body: format!("code {d}"),
                    client_ref: format!("c{d}"),
                    ..Default::default()
                })
                .collect(),
            max_attempts: Some(2),
            callback_url: receiver.url(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    // 8 sent + 2 failed, the batch's end, then 8 delivery states.
    wait_events(&receiver, 10 + 1 + 8).await;
    receiver.seen(|seen| {
        let count = |t: &str| seen.by_type.get(t).copied().unwrap_or(0);
        assert_eq!(count("message.sent"), 8, "{:?}", seen.by_type);
        assert_eq!(count("message.failed"), 2);
        assert_eq!(count("message.delivered"), 6);
        assert_eq!(count("message.undelivered"), 1);
        assert_eq!(count("message.expired"), 1);
        assert_eq!(count("batch.completed"), 1);
        let of = |t: &str, i: u32| {
            seen.samples
                .iter()
                .find(|e| e["type"] == t && e["message_id"] == format!("{id}.{i}"))
                .unwrap_or_else(|| panic!("no {t} event of message {i}: {:?}", seen.samples))
        };
        let e = of("message.undelivered", 6);
        assert_eq!(
            (e["receipt_state"].as_str(), e["receipt_error"].as_str()),
            (Some("UNDELIV"), Some("034"))
        );
        let e = of("message.failed", 8);
        assert!(
            e["error"].as_str().unwrap().contains("ESME_RINVDSTADR"),
            "{e}"
        );
        assert_eq!(e["attempts"], 1);
        let e = of("message.failed", 9);
        assert_eq!(e["attempts"], 2);
        let e = of("message.sent", 3);
        assert_eq!(
            (e["to"].as_str(), e["client_ref"].as_str()),
            (Some("+447700900103"), Some("c3"))
        );
    });
    node.stop(LONG).await.unwrap();
    mesh.stop().await.unwrap();
}

/// Receipts that come after a restart, for a batch the restarted coordinator
/// only has folded (completed, read from its store), still become events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_after_a_restart_become_events_too() {
    use smsmesh_smsc::{SmscConfig, SmscStats};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let smsc = SmscConfig {
        receipt_delay: Duration::from_millis(1500),
        ..SmscConfig::default()
    };
    let stats = Arc::new(SmscStats::default());
    tokio::spawn(smsmesh_smsc::serve(listener, smsc, stats.clone()));
    let receiver = CallbackReceiver::start(SECRET).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(Some(&receiver));
    config.data_dir = Some(dir.path().into());
    let mesh = Mesh::start(config.clone()).await.unwrap();
    let addr = mesh.addr;
    let node =
        mesh.node(NodeSpec::new("smpp").smpp(&format!("smpp://esme:secret@127.0.0.1:{port}")));
    let mut c = mesh.client().await.unwrap();
    let id = c
        .submit_batch(pb::SubmitBatchRequest {
            messages: (0..50)
                .map(|i| pb::SmsMessage {
                    to: format!("+44770090{i:04}"),
                    body: "hello".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_ended(&mut c, &id, LONG).await.unwrap();
    assert!(
        stats.receipts.load(std::sync::atomic::Ordering::Relaxed) < 50,
        "the restart must come before the receipts"
    );
    mesh.stop().await.unwrap();
    let mesh = Mesh::start_on(addr, config).await.unwrap();
    // 50 outcomes, the batch's end and 50 deliveries.
    wait_events(&receiver, 101).await;
    assert_eq!(receiver.seen(|s| s.by_type["message.delivered"]), 50);
    drop(node);
    mesh.stop().await.unwrap();
}
