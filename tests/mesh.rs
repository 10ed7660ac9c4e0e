//! End-to-end tests of the mesh in one process: a coordinator and nodes on
//! 127.0.0.1:0, talking real gRPC over loopback.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use smsmesh::pb::{self, BatchState, MessageState};
use smsmesh_testkit::{
    CoordinatorConfig, Mesh, NodeSpec, Recorder, batch_status, submit, synthetic, wait_ended,
    wait_until,
};

const LONG: Duration = Duration::from_secs(60);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn message_status(
    client: &mut pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    id: &str,
) -> Result<pb::MessageStatus, tonic::Status> {
    let r = client
        .get_status(pb::GetStatusRequest {
            target: Some(pb::get_status_request::Target::MessageId(id.into())),
        })
        .await?
        .into_inner();
    match r.status {
        Some(pb::get_status_response::Status::Message(m)) => Ok(m),
        other => panic!("expected a message status, got {other:?}"),
    }
}

fn fast_retries() -> CoordinatorConfig {
    CoordinatorConfig {
        retry_base: ms(5),
        retry_max: ms(50),
        ..CoordinatorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_has_exactly_one_outcome_under_failures() {
    let mesh = Mesh::start(fast_retries()).await.unwrap();
    let rec = Recorder::default();
    let nodes: Vec<_> = (0..3)
        .map(|i| {
            mesh.node(
                NodeSpec::new(&format!("n{i}"))
                    .concurrency(50)
                    .failure_rate(0.2)
                    .record(&rec),
            )
        })
        .collect();
    let mut client = mesh.client().await.unwrap();
    let total = 20_000u64;
    let id = submit(&mut client, synthetic(total, 42)).await;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();

    assert_eq!(b.state, BatchState::Completed as i32);
    assert_eq!(b.sent + b.failed, total, "sent + failed = total: {b:?}");
    assert_eq!((b.pending, b.in_flight, b.cancelled), (0, 0, 0));

    // Check every attempt the gateways saw against the reported outcome.
    let attempts = rec.attempts();
    let mut per_msg: HashMap<u32, Vec<&smsmesh_testkit::Attempt>> = HashMap::new();
    for a in &attempts {
        per_msg.entry(a.index).or_default().push(a);
    }
    assert_eq!(per_msg.len() as u64, total, "every message was attempted");
    let (mut sent, mut failed) = (0, 0);
    for (index, list) in &per_msg {
        let oks = list.iter().filter(|a| a.sent).count();
        assert!(oks <= 1, "message {index} sent {oks} times");
        let mut nums: Vec<u32> = list.iter().map(|a| a.attempt).collect();
        nums.sort_unstable();
        assert_eq!(
            nums,
            (1..=list.len() as u32).collect::<Vec<_>>(),
            "attempt numbers of {index}"
        );
        if oks == 1 {
            assert!(
                list.iter().find(|a| a.sent).unwrap().attempt == list.len() as u32,
                "no attempt after a send"
            );
            sent += 1;
        } else {
            assert_eq!(
                list.len(),
                3,
                "message {index} failed after {} attempts",
                list.len()
            );
            failed += 1;
        }
    }
    assert_eq!((sent, failed), (b.sent, b.failed));
    // About 0.2^3 = 0.8% fail for good; retried = attempts - messages.
    assert!(b.failed > 40 && b.failed < 400, "failed {}", b.failed);
    assert_eq!(b.retried, attempts.len() as u64 - total);

    // A failed message tells its story.
    let (index, list) = per_msg
        .iter()
        .find(|(_, l)| l.iter().all(|a| !a.sent))
        .unwrap();
    let m = message_status(&mut client, &format!("{id}.{index}"))
        .await
        .unwrap();
    assert_eq!(m.state, MessageState::Failed as i32);
    assert_eq!(m.attempts, 3);
    assert!(m.last_error.contains("simulated gateway failure"), "{m:?}");
    assert_eq!(m.node, list.iter().max_by_key(|a| a.attempt).unwrap().node);
    assert!(m.to.starts_with("+1") && m.to.len() == 12, "{m:?}");
    for n in &nodes {
        assert_eq!(n.stats.over_credit.load(Relaxed), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_holds_more_than_its_credit() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let small = mesh.node(NodeSpec::new("small").concurrency(7).latency(ms(2)));
    let big = mesh.node(NodeSpec::new("big").concurrency(300).latency(ms(2)));
    let mut client = mesh.client().await.unwrap();
    let id = submit(&mut client, synthetic(5_000, 1)).await;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.sent, 5_000);
    for (n, cap) in [(&small, 7), (&big, 300)] {
        assert_eq!(
            n.stats.over_credit.load(Relaxed),
            0,
            "{} got jobs beyond its credit",
            n.name
        );
        let max = n.stats.max_held.load(Relaxed);
        assert!(max <= cap, "{} held {max} > {cap}", n.name);
        assert!(max > 0);
    }
    assert_eq!(small.handled() + big.handled(), 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_grows_to_cover_the_round_trip_and_no_further_than_its_ceiling() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    // 20 slots of 1 ms: sends finish far faster than one job a round trip, so
    // a prefetch of 1 cannot keep the slots busy and it grows.
    let spec = |name: &str| {
        NodeSpec::new(name)
            .concurrency(20)
            .latency(ms(1))
            .prefetch(1)
    };
    let grows = mesh.node(spec("grows").prefetch_max(20));
    let fixed = mesh.node(spec("fixed"));
    let mut client = mesh.client().await.unwrap();
    let id = submit(&mut client, synthetic(40_000, 13)).await;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.sent, 40_000);
    for n in [&grows, &fixed] {
        assert_eq!(n.stats.over_credit.load(Relaxed), 0, "{}", n.name);
    }
    let held = |n: &smsmesh_testkit::Node| n.stats.max_held.load(Relaxed);
    assert!(held(&fixed) <= 21, "fixed prefetch: {}", held(&fixed));
    assert!(
        held(&grows) > 21 && held(&grows) <= 40,
        "grown prefetch, at most 20 beyond the slots: {}",
        held(&grows)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_jobs_wait_for_a_free_send_slot() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let node = mesh.node(NodeSpec::new("p").concurrency(5).prefetch(3).latency(ms(5)));
    let mut client = mesh.client().await.unwrap();
    let id = submit(&mut client, synthetic(2_000, 12)).await;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.sent, 2_000);
    let s = &node.stats;
    assert_eq!(s.over_credit.load(Relaxed), 0);
    assert_eq!(
        s.max_sending.load(Relaxed),
        5,
        "at most `concurrency` sends at once, and all used"
    );
    let held = s.max_held.load(Relaxed);
    assert!(
        held > 5 && held <= 8,
        "prefetched jobs held beyond the concurrency: {held}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_follows_node_speed() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    // Same concurrency; ten times the latency: a tenth of the throughput.
    let slow = mesh.node(NodeSpec::new("slow").concurrency(10).latency(ms(20)));
    let fast = mesh.node(NodeSpec::new("fast").concurrency(10).latency(ms(2)));
    let mut client = mesh.client().await.unwrap();
    let total = 6_000;
    let id = submit(&mut client, synthetic(total, 2)).await;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.sent, total);
    let share = slow.handled() as f64 / total as f64;
    // Ideal 1/11 = 9.1%; timer granularity makes the fast node a bit slower than 2 ms.
    assert!((0.04..0.2).contains(&share), "slow node's share {share:.3}");
    assert!(fast.handled() > 4 * slow.handled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_mid_batch_gets_work_at_once() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let first = mesh.node(NodeSpec::new("first").concurrency(5).latency(ms(10)));
    let mut client = mesh.client().await.unwrap();
    let id = submit(&mut client, synthetic(3_000, 3)).await;
    wait_until(LONG, "some progress", || async {
        (first.handled() > 100).then_some(())
    })
    .await
    .unwrap();
    let late = mesh.node(NodeSpec::new("late").concurrency(50).latency(ms(2)));
    wait_until(
        Duration::from_secs(3),
        "the late node to get work",
        || async { (late.handled() > 0).then_some(()) },
    )
    .await
    .unwrap();
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.sent, 3_000);
    assert!(
        late.handled() > first.handled(),
        "the faster late node did most of the rest"
    );
    assert!(b.nodes.iter().any(|n| n.node == "late" && n.sent > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let rec = Recorder::default();
    let doomed = mesh.node(
        NodeSpec::new("doomed")
            .concurrency(100)
            .latency(ms(30))
            .record(&rec),
    );
    let survivor = mesh.node(
        NodeSpec::new("survivor")
            .concurrency(100)
            .latency(ms(5))
            .record(&rec),
    );
    let mut client = mesh.client().await.unwrap();
    let total = 8_000;
    let id = submit(&mut client, synthetic(total, 4)).await;
    wait_until(LONG, "the doomed node to hold jobs", || async {
        (doomed.handled() > 200 && doomed.stats.jobs.load(Relaxed) > doomed.handled() + 20)
            .then_some(())
    })
    .await
    .unwrap();
    doomed.kill();
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.state, BatchState::Completed as i32);
    assert_eq!(b.sent, total, "{b:?}");
    assert!(b.requeued > 0, "the killed node's jobs were requeued");
    assert!(survivor.handled() > 0);
    let ok: std::collections::HashSet<u32> = rec
        .attempts()
        .iter()
        .filter(|a| a.sent)
        .map(|a| a.index)
        .collect();
    assert_eq!(
        ok.len() as u64,
        total,
        "every message was sent by some gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaving_cleanly_hands_everything_in() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let leaver = mesh.node(NodeSpec::new("leaver").concurrency(100).latency(ms(30)));
    let stayer = mesh.node(NodeSpec::new("stayer").concurrency(100).latency(ms(5)));
    let mut client = mesh.client().await.unwrap();
    let total = 6_000;
    let id = submit(&mut client, synthetic(total, 5)).await;
    wait_until(LONG, "the leaver to hold jobs", || async {
        (leaver.handled() > 200 && leaver.stats.jobs.load(Relaxed) > leaver.handled() + 20)
            .then_some(())
    })
    .await
    .unwrap();
    let stats = leaver.stats.clone();
    leaver.stop(Duration::from_secs(10)).await.unwrap();
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.sent, total);
    assert_eq!(b.requeued, 0, "a clean leave puts nothing back");
    let leaver_share = b.nodes.iter().find(|n| n.node == "leaver").unwrap();
    assert_eq!(
        leaver_share.sent,
        stats.sent.load(Relaxed),
        "everything it sent was reported"
    );
    assert_eq!(
        stats.jobs.load(Relaxed),
        stats.sent.load(Relaxed),
        "it finished every job it took"
    );
    assert!(!leaver_share.connected);
    assert!(stayer.handled() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_dispatch_with_exact_counts() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let node = mesh.node(NodeSpec::new("n").concurrency(20).latency(ms(10)));
    let mut client = mesh.client().await.unwrap();
    let total = 50_000;
    let id = submit(&mut client, synthetic(total, 6)).await;
    wait_until(LONG, "some progress", || async {
        (node.handled() > 100).then_some(())
    })
    .await
    .unwrap();
    let resp = client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .batch
        .unwrap();
    assert!(
        resp.state == BatchState::Cancelling as i32 || resp.state == BatchState::Cancelled as i32,
        "{resp:?}"
    );
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.state, BatchState::Cancelled as i32);
    assert_eq!(b.sent + b.failed + b.cancelled, total);
    assert!(b.cancelled > 40_000, "{b:?}");
    assert_eq!(
        b.sent,
        node.handled(),
        "every job given out was finished and counted"
    );
    let jobs = node.stats.jobs.load(Relaxed);
    assert_eq!(jobs, b.sent, "nothing dispatched after the cancel");
    // Cancelling again is harmless and says the same.
    let again = client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .batch
        .unwrap();
    assert_eq!(
        (again.sent, again.cancelled, again.state),
        (b.sent, b.cancelled, b.state)
    );
    // A cancelled message says so.
    let m = message_status(&mut client, &format!("{id}.{}", total - 1))
        .await
        .unwrap();
    assert_eq!(m.state, MessageState::Cancelled as i32);
    assert_eq!(m.attempts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_progress_ends_at_completion() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let _node = mesh.node(NodeSpec::new("n").concurrency(50).latency(ms(5)));
    let mut client = mesh.client().await.unwrap();
    let total = 4_000;
    let id = submit(&mut client, synthetic(total, 7)).await;
    // A watcher that never reads must not hold anything up.
    let mut stalled = client.clone();
    let _stalled = stalled
        .watch_progress(pb::WatchProgressRequest {
            batch_id: id.clone(),
            interval_ms: 50,
        })
        .await
        .unwrap();
    let mut stream = client
        .watch_progress(pb::WatchProgressRequest {
            batch_id: id.clone(),
            interval_ms: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let mut updates = Vec::new();
    let end = tokio::time::timeout(LONG, async {
        while let Some(u) = stream.message().await.unwrap() {
            updates.push(u);
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ended by itself");
    let last = updates.last().unwrap().batches[0].clone();
    assert_eq!(last.state, BatchState::Completed as i32);
    assert_eq!(last.sent, total);
    assert!(
        updates.len() >= 3,
        "periodic updates came: {}",
        updates.len()
    );
    let done: Vec<u64> = updates.iter().map(|u| u.batches[0].sent).collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {done:?}"
    );
    assert!(last.latency.unwrap().count >= total);
    assert_eq!(last.nodes.len(), 1);

    // Watching an ended batch gives its final status once and ends.
    let mut again = client
        .watch_progress(pb::WatchProgressRequest {
            batch_id: id.clone(),
            interval_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let only = again.message().await.unwrap().unwrap();
    assert_eq!(only.batches[0].state, BatchState::Completed as i32);
    assert!(again.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_all_batches_sees_each_one() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let _node = mesh.node(NodeSpec::new("n").concurrency(50));
    let mut client = mesh.client().await.unwrap();
    let mut stream = client
        .watch_progress(pb::WatchProgressRequest {
            batch_id: String::new(),
            interval_ms: 50,
        })
        .await
        .unwrap()
        .into_inner();
    let a = submit(&mut client, synthetic(1_000, 8)).await;
    let b = submit(&mut client, synthetic(1_000, 9)).await;
    let mut completed = std::collections::HashSet::new();
    tokio::time::timeout(LONG, async {
        while completed.len() < 2 {
            let u = stream.message().await.unwrap().unwrap();
            for s in u.batches {
                if s.state == BatchState::Completed as i32 {
                    assert_eq!(s.sent, 1_000);
                    assert_eq!(u.nodes_connected, 1, "the node that sent it is connected");
                    completed.insert(s.batch_id);
                }
            }
        }
    })
    .await
    .expect("both batches seen completed");
    assert!(completed.contains(&a) && completed.contains(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_messages_keep_their_content_and_ids() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let _node = mesh.node(NodeSpec::new("n"));
    let mut client = mesh.client().await.unwrap();
    let msgs = vec![
        pb::SmsMessage {
            to: "+14155550100".into(),
            body: "Evacuate zone A now.".into(),
            client_ref: "a-1".into(),
            ..Default::default()
        },
        pb::SmsMessage {
            to: "+442071838750".into(),
            body: "Шторм: оставайтесь дома".into(),
            client_ref: String::new(),
            ..Default::default()
        },
    ];
    let resp = client
        .submit_batch(pb::SubmitBatchRequest {
            messages: msgs,
            max_attempts: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted, 2);
    let b = wait_ended(&mut client, &resp.batch_id, LONG).await.unwrap();
    assert_eq!((b.sent, b.max_attempts), (2, 2));
    let m = message_status(&mut client, &format!("{}.0", resp.batch_id))
        .await
        .unwrap();
    assert_eq!(
        (m.to.as_str(), m.client_ref.as_str(), m.node.as_str()),
        ("+14155550100", "a-1", "n")
    );
    assert_eq!((m.state, m.attempts), (MessageState::Sent as i32, 1));
    assert_eq!(
        batch_status(&mut client, &resp.batch_id)
            .await
            .unwrap()
            .synthetic_seed,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_gives_the_same_batch() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut client = mesh.client().await.unwrap();
    let mut req = synthetic(10, 1);
    req.idempotency_key = "alert-2026-11-23-001".into();
    let a = client.submit_batch(req.clone()).await.unwrap().into_inner();
    let b = client.submit_batch(req).await.unwrap().into_inner();
    assert_eq!(
        (&a.batch_id, a.accepted, a.replayed),
        (&b.batch_id, b.accepted, false)
    );
    assert!(b.replayed, "the second answer says it is a replay");
    let c = client
        .submit_batch(synthetic(10, 1))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(a.batch_id, c.batch_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_send_that_hangs_fails_after_the_send_timeout() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let _node = mesh.node(
        NodeSpec::new("stuck")
            .concurrency(4)
            .latency(Duration::from_secs(3600))
            .send_timeout(Duration::from_millis(200)),
    );
    let mut client = mesh.client().await.unwrap();
    let req = pb::SubmitBatchRequest {
        max_attempts: Some(1),
        ..synthetic(3, 9)
    };
    let id = submit(&mut client, req).await;
    let b = wait_ended(&mut client, &id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!((b.sent, b.failed), (0, 3), "{b:?}");
    let m = client
        .get_status(pb::GetStatusRequest {
            target: Some(pb::get_status_request::Target::MessageId(format!("{id}.0"))),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::get_status_response::Status::Message(m)) = m.status else {
        panic!("{m:?}")
    };
    assert!(m.last_error.contains("timed out"), "{m:?}");
}
