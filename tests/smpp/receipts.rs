//! Receipts when things go wrong: pending across a coordinator restart
//! (followed by smsmon until the last one is in), stored before the results
//! that name their ids and applied after a restart, on a receiver bind of the
//! same provider as the transmitter, due while no bind can take them, lost
//! by a node before they were stored, and backlogs sent at once, within a
//! node's receipts in flight and beyond.

use super::*;

/// Receipts that come before their submit_sm_resp (so before the results
/// that name their ids), answered once the coordinator stored them; the
/// coordinator stops before any result comes. The SMSC never sends them
/// again, so they must have been stored: after the restart each is applied
/// to the result that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_stored_before_their_ids_came_are_applied_after_a_restart() {
    let (url, smsc_stats) = smsc(SmscConfig {
        receipt_first: true,
        response_delay: Duration::from_secs(4),
        ..SmscConfig::default()
    })
    .await;
    let (store, mesh) = Restartable::start().await;
    let node = mesh.node(NodeSpec::new("smpp-a").smpp(&url));
    let mut client = mesh.client().await.unwrap();
    let batch = smsmesh_testkit::submit(&mut client, numbered(20, "hello")).await;
    wait_until(Duration::from_secs(30), "every receipt stored", || {
        let stats = node.stats.clone();
        async move { (stats.receipts_acked.load(Ordering::Relaxed) == 20).then_some(()) }
    })
    .await
    .unwrap();
    let before = batch_status(&mut client, &batch).await.unwrap();
    assert_eq!(
        (before.sent, before.delivered),
        (0, 0),
        "the stop must come before the results: {before:?}"
    );
    // /metrics shows them held (as of its next snapshot).
    wait_until(
        Duration::from_secs(10),
        "20 early receipts held",
        || async {
            let (_, m) = smsmesh_testkit::http_get(mesh.metrics_addr, "/metrics")
                .await
                .ok()?;
            m.lines()
                .any(|l| l == "smsmesh_early_receipts_held 20")
                .then_some(())
        },
    )
    .await
    .unwrap();
    mesh.stop().await.unwrap();
    let _mesh = store.restart().await;
    let client = smsmesh_testkit::client_at(store.addr).await;
    let s = settled(&client, &batch).await;
    assert_eq!(
        (s.sent, s.delivered, s.awaiting_receipt),
        (20, 20, 0),
        "{s:?}"
    );
    // The restart sent again what it had no result for (its grace is shorter
    // than the SMSC's delay): those copies' receipts are more, never fewer.
    assert!(smsc_stats.receipts.load(Ordering::Relaxed) >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_pending_across_a_coordinator_restart_are_all_matched() {
    // Receipts come 1.5 s after the submit: the coordinator is restarted meanwhile.
    let (url, smsc_stats) = smsc(SmscConfig {
        receipt_delay: Duration::from_millis(1500),
        ..SmscConfig::default()
    })
    .await;
    let (store, mesh) = Restartable::start().await;
    let node = mesh.node(NodeSpec::new("smpp-a").smpp(&url));
    let mut client = mesh.client().await.unwrap();
    let batch = smsmesh_testkit::submit(&mut client, numbered(50, "hello")).await;
    wait_until(Duration::from_secs(30), "every message sent", || {
        let mut client = client.clone();
        let batch = batch.clone();
        async move { (batch_status(&mut client, &batch).await.ok()?.sent == 50).then_some(()) }
    })
    .await
    .unwrap();
    assert!(
        smsc_stats.receipts.load(Ordering::Relaxed) < 50,
        "the restart must come before the receipts"
    );
    mesh.stop().await.unwrap();
    let mesh = store.restart().await;
    let client = smsmesh_testkit::client_at(store.addr).await;
    // smsmon follows the batch until no receipt is awaited, and says so.
    let mon = tokio::process::Command::new(smsmesh_testkit::bin("smsmon"))
        .args(["--coordinator", &mesh.url(), "--plain", "--batch", &batch])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), mon)
        .await
        .expect("smsmon ends once every receipt is in")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text
        .lines()
        .rfind(|l| l.starts_with(&batch))
        .unwrap_or_default();
    assert!(
        last.contains("delivered 50 undelivered 0 awaiting receipt 0"),
        "{text}"
    );
    let s = settled(&client, &batch).await;
    assert_eq!((s.delivered, s.undelivered, s.sent), (50, 0, 50), "{s:?}");
    // The batch completed before its receipts: the coordinator keeps their
    // deliveries in its store, not in memory, and the store answers for each
    // message (once the groups that hold them are stored).
    wait_until(
        Duration::from_secs(10),
        "50 messages listed as delivered",
        || {
            let mut client = client.clone();
            let request = pb::ListMessagesRequest {
                batch_id: batch.clone(),
                states: vec![MessageState::Delivered as i32],
                ..Default::default()
            };
            async move {
                let page = client.list_messages(request).await.ok()?.into_inner();
                (page.messages.len() == 50).then_some(())
            }
        },
    )
    .await
    .unwrap();
    let mut reader = client.clone();
    let m = message_status(&mut reader, &batch, 49).await;
    assert_eq!(
        (m.state, m.receipt_state.as_str(), m.provider_ids.len()),
        (MessageState::Delivered as i32, "DELIVRD", 1),
        "{m:?}"
    );
    drop(node);
    mesh.stop().await.unwrap();
}

/// Split binds: a transmitter and a receiver reach one SMSC by different
/// addresses; named as one provider, the receipts that come on the receiver
/// match what the transmitter sent. The receiver's node takes no jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transmitter_and_a_receiver_named_as_one_provider_match_receipts() {
    let (url, stats) = smsc(SmscConfig::default()).await;
    let other = url.replace("127.0.0.1", "localhost");
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let _tx = mesh.node(NodeSpec::new("tx").smpp(&format!("{url}?bind=tx&provider=acme-smsc")));
    let _rx = mesh.node(NodeSpec::new("rx").smpp(&format!("{other}?bind=rx&provider=acme-smsc")));
    let mut client = mesh.client().await.unwrap();
    let batch = smsmesh_testkit::submit(&mut client, numbered(20, "split binds")).await;
    let s = settled(&client, &batch).await;
    assert_eq!((s.sent, s.delivered), (20, 20), "{s:?}");
    assert_eq!(stats.receipts.load(Ordering::Relaxed), 20);
    for i in 0..20 {
        let m = message_status(&mut client, &batch, i).await;
        assert_eq!(m.node, "tx", "the receiver's node took no job: {m:?}");
    }
}

/// Receipts that come due while no bind can take them are kept by the SMSC
/// and come on the next bind, as an operator's SMSC does: the node that sent
/// the messages is gone, another binds, and every message is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_due_while_no_bind_can_take_them_come_on_the_next_bind() {
    let (url, stats) = smsc(SmscConfig {
        receipt_delay: Duration::from_millis(1500),
        ..SmscConfig::default()
    })
    .await;
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let node = mesh.node(NodeSpec::new("smpp-a").smpp(&url));
    let mut client = mesh.client().await.unwrap();
    let batch = smsmesh_testkit::submit(&mut client, numbered(30, "held")).await;
    smsmesh_testkit::wait_sent(&client, &batch, 29).await;
    node.kill(); // its bind closes before any receipt is due
    wait_until(
        Duration::from_secs(30),
        "the SMSC to keep 30 receipts",
        || {
            let held = stats.held.load(Ordering::Relaxed);
            async move { (held == 30).then_some(()) }
        },
    )
    .await
    .unwrap();
    let _again = mesh.node(NodeSpec::new("smpp-b").smpp(&url));
    let s = settled(&client, &batch).await;
    assert_eq!((s.sent, s.delivered), (30, 30), "{s:?}");
    assert_eq!(stats.held.load(Ordering::Relaxed), 0);
    assert!(stats.redelivered.load(Ordering::Relaxed) >= 30);
    let m = message_status(&mut client, &batch, 0).await;
    assert_eq!(m.receipt_state, "DELIVRD", "{m:?}");
}

/// A deliver_sm is answered only once the coordinator has stored its
/// receipt: receipts that reach a node while the coordinator is down, and
/// that the node then loses (killed), are sent again by the SMSC to the next
/// bind, and every message is still decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_a_node_lost_before_they_were_stored_come_again() {
    let (url, stats) = smsc(SmscConfig {
        receipt_delay: Duration::from_millis(2000),
        ..SmscConfig::default()
    })
    .await;
    let (store, mesh) = Restartable::start().await;
    let node = mesh.node(NodeSpec::new("smpp-a").smpp(&url));
    let mut client = mesh.client().await.unwrap();
    let batch = smsmesh_testkit::submit(&mut client, numbered(20, "stored first")).await;
    smsmesh_testkit::wait_sent(&client, &batch, 19).await;
    assert_eq!(
        stats.receipts.load(Ordering::Relaxed),
        0,
        "before the receipts"
    );
    mesh.stop().await.unwrap();
    // The receipts reach the node, which cannot hand them in.
    wait_until(Duration::from_secs(30), "20 receipts at the node", || {
        let n = stats.receipts.load(Ordering::Relaxed);
        async move { (n >= 20).then_some(()) }
    })
    .await
    .unwrap();
    node.kill();
    wait_until(
        Duration::from_secs(30),
        "the SMSC to keep the 20 unanswered",
        || {
            let held = stats.held.load(Ordering::Relaxed);
            async move { (held == 20).then_some(()) }
        },
    )
    .await
    .unwrap();
    let mesh = store.restart().await;
    let _again = mesh.node(NodeSpec::new("smpp-b").smpp(&url));
    let client = smsmesh_testkit::client_at(store.addr).await;
    let s = settled(&client, &batch).await;
    assert_eq!((s.sent, s.delivered), (20, 20), "{s:?}");
    mesh.stop().await.unwrap();
}

/// A backlog of receipts, as an SMSC sends after an outage: the SMSC keeps
/// every receipt until 5,000 messages were accepted, then sends them all at
/// once, on two binds. None comes early, and every one is matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_receipts_sent_at_once_is_all_matched() {
    let (url, stats) = smsc(SmscConfig {
        receipts_after: 5_000,
        ..SmscConfig::default()
    })
    .await;
    let (_mesh, _nodes, mut client) = two_nodes(&url).await;
    let first = smsmesh_testkit::submit(&mut client, smsmesh_testkit::synthetic(3_000, 3)).await;
    smsmesh_testkit::wait_sent(&client, &first, 2_999).await;
    let held = batch_status(&mut client, &first).await.unwrap();
    assert_eq!(held.sent, 3_000, "{held:?}");
    assert_eq!(
        (held.delivered, held.awaiting_receipt),
        (0, 3_000),
        "{held:?}"
    );
    assert_eq!(stats.receipts.load(Ordering::Relaxed), 0);
    // The next 2,000 fill the backlog: all 5,000 receipts come at once.
    let second = smsmesh_testkit::submit(&mut client, smsmesh_testkit::synthetic(2_000, 4)).await;
    for (batch, n) in [(first, 3_000), (second, 2_000)] {
        let s = settled(&client, &batch).await;
        assert_eq!((s.sent, s.delivered), (n, n), "{s:?}");
    }
    assert_eq!(stats.receipts.load(Ordering::Relaxed), 5_000);
}

/// A backlog larger than a node sends on before acks (20,000 receipts): the
/// node takes the rest from its bind as the coordinator stores the first,
/// and every receipt is matched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_a_nodes_receipts_in_flight_is_all_matched() {
    let n = smsmesh_node::state::MAX_UNACKED_RECEIPTS as u64 + 5_000;
    let (url, stats) = smsc(SmscConfig {
        receipts_after: n,
        ..SmscConfig::default()
    })
    .await;
    // A durable coordinator whose group commits wait: receipts arrive faster
    // than they are acked, so the node reaches its bound and holds the rest.
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start(CoordinatorConfig {
        data_dir: Some(dir.path().into()),
        commit_interval: Duration::from_secs(1),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let node = mesh.node(NodeSpec::new("smpp-a").smpp(&url));
    let mut client = mesh.client().await.unwrap();
    let batch = smsmesh_testkit::submit(&mut client, smsmesh_testkit::synthetic(n, 5)).await;
    let s = settled(&client, &batch).await;
    assert_eq!((s.sent, s.delivered, s.undelivered), (n, n, 0), "{s:?}");
    assert_eq!(stats.receipts.load(Ordering::Relaxed), n);
    // The bound was reached and held, and once every receipt is stored
    // (acked after its group commit, a little after it counts) none is left held.
    let ns = &node.stats;
    let held = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(30), "every receipt acked", || async {
        (held(&ns.receipts_waiting) + held(&ns.receipts_unacked) == 0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        held(&ns.max_receipts_unacked),
        smsmesh_node::state::MAX_UNACKED_RECEIPTS as u64
    );
}
