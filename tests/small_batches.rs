//! Transactional traffic: many concurrent one-message submits share group
//! commits, each answered only once stored (a `kill -9` right after loses
//! none); concurrent repeats of one idempotency key make one batch; and
//! history beyond the progress snapshot is still counted and answered.

use std::collections::HashSet;
use std::time::Duration;

use smsmesh::pb::{self, BatchState};
use smsmesh_testkit::{
    CoordinatorConfig, Mesh, Node, NodeSpec, Proc, batch_status, client_at as client, http_get,
    wait_until,
};
use tonic::Code;

const LONG: Duration = Duration::from_secs(90);

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

fn one(n: u64) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        messages: vec![pb::SmsMessage {
            to: format!("+1555{:07}", n),
            body: format!("Your code is {:06}", n % 1_000_000),
            client_ref: format!("otp-{n}"),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Submits `per_task` one-message batches from each of `tasks` concurrent callers.
async fn submit_many(c: &Client, tasks: u64, per_task: u64) -> Vec<String> {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..per_task {
                    let r = c.submit_batch(one(t * per_task + i)).await.unwrap();
                    ids.push(r.into_inner().batch_id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_are_each_stored_before_they_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let c = client(addr).await;
    let ids = submit_many(&c, 32, 40).await;
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        1280,
        "one batch each"
    );

    // One key from 8 callers at once: one batch, made once.
    let mut keyed = one(99_999);
    keyed.idempotency_key = "otp-99999".into();
    let answers: Vec<_> = (0..8)
        .map(|_| {
            let (mut c, req) = (c.clone(), keyed.clone());
            tokio::spawn(async move { c.submit_batch(req).await.unwrap().into_inner() })
        })
        .collect();
    let mut made = Vec::new();
    for a in answers {
        made.push(a.await.unwrap());
    }
    let keyed_id = made[0].batch_id.clone();
    assert!(made.iter().all(|r| r.batch_id == keyed_id), "{made:?}");
    assert_eq!(made.iter().filter(|r| !r.replayed).count(), 1, "{made:?}");
    // The key with another request is refused, naming the batch.
    let err = c
        .clone()
        .submit_batch(pb::SubmitBatchRequest {
            idempotency_key: "otp-99999".into(),
            ..one(5)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&keyed_id), "{}", err.message());

    // Every answered submit was stored: a kill -9 now loses none of them.
    coord.kill9();
    let (_coord, _) = Proc::coordinator_on(addr, dir.path(), &[]).unwrap();
    let mut c = client(addr).await;
    let _node = Node::start(&format!("http://{addr}"), NodeSpec::new("n"));
    for id in ids.iter().chain([&keyed_id]) {
        let b = wait_until(LONG, "the batch to complete", || {
            let mut c = c.clone();
            async move {
                let b = batch_status(&mut c, id).await.unwrap();
                (b.state == BatchState::Completed as i32).then_some(b)
            }
        })
        .await
        .unwrap();
        assert_eq!(b.sent, 1, "{b:?}");
    }
    let again = c.submit_batch(keyed).await.unwrap().into_inner();
    assert_eq!((again.batch_id, again.replayed), (keyed_id, true));
}

/// A counter of the coordinator's `/metrics`.
fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_beyond_the_snapshot_is_counted_and_still_answered() {
    history(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folded_history_is_answered_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    history(Some(dir.path())).await;
}

/// 1,280 one-message batches, more than the snapshot holds: the oldest are
/// retired (and, with a store, folded, so their messages are read back
/// from it), and still answered as before.
async fn history(data_dir: Option<&std::path::Path>) {
    let mesh = Mesh::start(CoordinatorConfig {
        data_dir: data_dir.map(Into::into),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let _node = mesh.node(NodeSpec::new("n").concurrency(200));
    let c = mesh.client().await.unwrap();
    let keyed = pb::SubmitBatchRequest {
        idempotency_key: "the-first".into(),
        ..one(99_999)
    };
    let first = c
        .clone()
        .submit_batch(keyed.clone())
        .await
        .unwrap()
        .into_inner();
    let mut ids = vec![first.batch_id.clone()];
    ids.extend(submit_many(&c, 16, 80).await);
    let metrics = mesh.metrics_addr;
    wait_until(LONG, "every message to be sent", || async move {
        let (_, text) = http_get(metrics, "/metrics").await.ok()?;
        (counter(&text, "smsmesh_messages_total{outcome=\"sent\"}") == 1281.0
            && counter(&text, "smsmesh_batches_ended_total{state=\"completed\"}") == 1281.0)
            .then_some(())
    })
    .await
    .unwrap();
    // Watching every batch shows at most the newest 1,000; the oldest is
    // still answered by GetStatus, and its message by ListMessages.
    let mut watch = c
        .clone()
        .watch_progress(pb::WatchProgressRequest::default())
        .await
        .unwrap()
        .into_inner();
    let update = watch.message().await.unwrap().unwrap();
    assert!(update.batches.len() <= 1000, "{}", update.batches.len());
    assert!(
        update
            .batches
            .iter()
            .any(|b| b.batch_id == ids[ids.len() - 1])
    );
    let mut c = c;
    let oldest = batch_status(&mut c, &ids[0]).await.unwrap();
    assert_eq!(
        (oldest.state, oldest.sent),
        (BatchState::Completed as i32, 1)
    );
    assert_eq!(oldest.latency.unwrap().count, 1);
    assert_eq!(
        oldest.nodes[0].latency.is_none(),
        data_dir.is_some(),
        "with a store the oldest batch is folded (its node's send time is not kept): {oldest:?}"
    );
    let page = c
        .list_messages(pb::ListMessagesRequest {
            batch_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    let m = &page.messages[0];
    assert_eq!(
        (m.client_ref.as_str(), m.to.as_str(), m.node.as_str()),
        ("otp-99999", "+15550099999", "n")
    );
    assert_eq!(
        (m.state, m.attempts, m.body.as_str()),
        (pb::MessageState::Sent as i32, 1, "Your code is 099999")
    );
    // The same by message id, and a filter that matches nothing.
    let by_id = c
        .get_status(pb::GetStatusRequest {
            target: Some(pb::get_status_request::Target::MessageId(format!(
                "{}.0",
                ids[0]
            ))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_id.status,
        Some(pb::get_status_response::Status::Message(m.clone()))
    );
    let failed = c
        .list_messages(pb::ListMessagesRequest {
            batch_id: ids[0].clone(),
            states: vec![pb::MessageState::Failed as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(failed.messages.is_empty() && failed.next_page_token.is_empty());
    // Its key still answers it, and ListBatches still lists it.
    let again = c.submit_batch(keyed).await.unwrap().into_inner();
    assert_eq!((again.batch_id, again.replayed), (first.batch_id, true));
    let mut token = String::new();
    let mut listed = 0;
    loop {
        let page = c
            .list_batches(pb::ListBatchesRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed += page.batches.len();
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(listed, 1281);
}
