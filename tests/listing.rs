//! ListMessages and `smsmon export` over real gRPC: every message listed once
//! and in order, filters that agree with what the gateways saw, pages that
//! stop at the scan limit, the new message fields, and bad input refused.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use smsmesh::pb::{self, MessageState};
use smsmesh_testkit::{
    CoordinatorConfig, Mesh, NodeSpec, Recorder, batch_status, submit, synthetic, wait_ended,
    wait_until,
};
use tonic::Code;

const LONG: Duration = Duration::from_secs(60);

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

fn list(
    batch: &str,
    states: &[MessageState],
    page_size: u32,
    token: &str,
) -> pb::ListMessagesRequest {
    pb::ListMessagesRequest {
        batch_id: batch.into(),
        states: states.iter().map(|s| *s as i32).collect(),
        page_size,
        page_token: token.into(),
    }
}

/// Every page of a listing, followed to the end.
async fn list_all(
    client: &mut Client,
    batch: &str,
    states: &[MessageState],
    page_size: u32,
) -> Vec<pb::ListMessagesResponse> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_messages(list(batch, states, page_size, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.messages.len() <= page_size as usize);
        token = page.next_page_token.clone();
        pages.push(page);
        if token.is_empty() {
            return pages;
        }
    }
}

/// Retries after 5 to 20 ms, so that failed messages end quickly.
fn fast_retries() -> CoordinatorConfig {
    CoordinatorConfig {
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..CoordinatorConfig::default()
    }
}

fn index_of(m: &pb::MessageStatus) -> u32 {
    m.message_id.rsplit_once('.').unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_has_every_message_once_and_a_filter_matches_the_gateways() {
    let mesh = Mesh::start(fast_retries()).await.unwrap();
    let rec = Recorder::default();
    let _nodes: Vec<_> = (0..2)
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
    let total = 10_000u64;
    let mut req = synthetic(total, 7);
    req.max_attempts = Some(2);
    let id = submit(&mut client, req).await;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert!(b.failed > 100, "about 4% fail for good: {b:?}");

    // What the gateways saw: per message, its attempts and whether one was sent.
    let mut seen: HashMap<u32, (u32, bool, String)> = HashMap::new();
    for a in rec.attempts() {
        let e = seen.entry(a.index).or_default();
        if a.attempt > e.0 {
            *e = (a.attempt, e.1 || a.sent, a.node.clone());
        } else {
            e.1 |= a.sent;
        }
    }

    // Everything, in pages of 10,000 (the most): each index once, in order.
    let pages = list_all(&mut client, &id, &[], 10_000).await;
    let all: Vec<_> = pages.iter().flat_map(|p| &p.messages).collect();
    assert_eq!(all.len() as u64, total);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(index_of(m), i as u32);
        let (attempts, sent, node) = &seen[&(i as u32)];
        let want = if *sent {
            MessageState::Sent
        } else {
            MessageState::Failed
        };
        assert_eq!(m.state, want as i32, "{m:?}");
        assert_eq!((m.attempts, &m.node), (*attempts, node), "{m:?}");
        assert_eq!(m.body.len(), 100, "{m:?}");
        assert_eq!(m.segments, 1, "{m:?}");
        assert!(m.to.starts_with("+1"), "{m:?}");
    }

    // Only the failed ones, in small pages: exactly the messages no gateway sent.
    let pages = list_all(&mut client, &id, &[MessageState::Failed], 37).await;
    assert!(pages.len() > 2, "several pages");
    let failed: Vec<u32> = pages
        .iter()
        .flat_map(|p| &p.messages)
        .map(index_of)
        .collect();
    let mut want: Vec<u32> = seen.iter().filter(|(_, e)| !e.1).map(|(i, _)| *i).collect();
    want.sort_unstable();
    assert_eq!(failed, want);
    assert_eq!(failed.len() as u64, b.failed);
    let scanned: u64 = pages.iter().map(|p| p.scanned).sum();
    assert_eq!(scanned, total, "each message looked at once over the pages");
    for m in pages.iter().flat_map(|p| &p.messages) {
        assert!(m.last_error.contains("simulated gateway failure"), "{m:?}");
    }

    // Two states at once.
    let both: usize = list_all(
        &mut client,
        &id,
        &[MessageState::Failed, MessageState::Sent],
        10_000,
    )
    .await
    .iter()
    .map(|p| p.messages.len())
    .sum();
    assert_eq!(both as u64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_matches_little_pages_at_the_scan_limit() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut client = mesh.client().await.unwrap();
    // No node: all 1.5M messages stay pending.
    let id = submit(&mut client, synthetic(1_500_000, 1)).await;
    let first = client
        .list_messages(list(&id, &[MessageState::Failed], 100, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(first.messages.is_empty());
    assert_eq!(first.scanned, 1_000_000);
    assert_eq!(first.next_page_token, format!("{id}:1000000"));
    let second = client
        .list_messages(list(
            &id,
            &[MessageState::Failed],
            100,
            &first.next_page_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((second.messages.len(), second.scanned), (0, 500_000));
    assert!(second.next_page_token.is_empty());
    // Pending ones fill a page at once, and the page ends where it is full.
    let pending = client
        .list_messages(list(&id, &[MessageState::Pending], 3, ""))
        .await
        .unwrap()
        .into_inner();
    let indexes: Vec<u32> = pending.messages.iter().map(index_of).collect();
    assert_eq!(indexes, [0, 1, 2]);
    assert_eq!(
        (pending.scanned, pending.next_page_token.as_str()),
        (3, &*format!("{id}:3"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_for_a_retry_are_told_apart_from_fresh_ones() {
    let mesh = Mesh::start(CoordinatorConfig {
        retry_base: Duration::from_secs(600),
        retry_max: Duration::from_secs(600),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let mut client = mesh.client().await.unwrap();
    let before = smsmesh_coordinator::core::unix_ms();
    let id = submit(&mut client, synthetic(200, 3)).await;
    let after = smsmesh_coordinator::core::unix_ms();
    let fresh = batch_status(&mut client, &id).await.unwrap();
    assert_eq!((fresh.pending, fresh.retry_wait), (200, 0));
    assert!(
        (before..=after).contains(&fresh.accepted_unix_ms),
        "{fresh:?}"
    );
    // Every attempt fails, and the next waits ten minutes.
    let _node = mesh.node(NodeSpec::new("n").failure_rate(1.0).concurrency(20));
    let b = wait_until(LONG, "every message to wait for its retry", || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let b = batch_status(&mut client, &id).await.ok()?;
            (b.retry_wait == 200).then_some(b)
        }
    })
    .await
    .unwrap();
    assert_eq!((b.pending, b.in_flight, b.retried), (200, 0, 200));
    let waiting = client
        .list_messages(list(&id, &[MessageState::RetryWait], 1000, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(waiting.messages.len(), 200);
    let m = &waiting.messages[0];
    assert_eq!(
        (m.attempts, m.accepted_unix_ms),
        (1, fresh.accepted_unix_ms)
    );
    // Its attempt came back failed: when, and no final time yet.
    let now = smsmesh_coordinator::core::unix_ms();
    assert!(
        (m.accepted_unix_ms + 1..=now).contains(&m.last_attempt_unix_ms),
        "{m:?}"
    );
    assert_eq!(m.final_unix_ms, 0);
    let none = client
        .list_messages(list(&id, &[MessageState::Pending], 1000, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(none.messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_listing_requests_say_what_is_wrong() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut client = mesh.client().await.unwrap();
    let id = submit(&mut client, synthetic(10, 1)).await;
    let other = submit(&mut client, synthetic(10, 2)).await;
    let cases: Vec<(pb::ListMessagesRequest, Code, &str)> = vec![
        (
            list(&id, &[], 10_001, ""),
            Code::InvalidArgument,
            "page_size 10001 is too large",
        ),
        (
            pb::ListMessagesRequest {
                states: vec![0],
                ..list(&id, &[], 10, "")
            },
            Code::InvalidArgument,
            "states: 0 is not a message state",
        ),
        (
            pb::ListMessagesRequest {
                states: vec![99],
                ..list(&id, &[], 10, "")
            },
            Code::InvalidArgument,
            "states: 99 is not a message state",
        ),
        (
            list(&id, &[], 10, "garbage"),
            Code::InvalidArgument,
            "is not one ListMessages gave",
        ),
        (
            list(&id, &[], 10, &format!("{id}:x")),
            Code::InvalidArgument,
            "is not one ListMessages gave",
        ),
        (
            list(&id, &[], 10, &format!("{other}:3")),
            Code::InvalidArgument,
            "continues the listing of another batch",
        ),
        (
            list(&id, &[], 10, &format!("{id}:11")),
            Code::InvalidArgument,
            "has 10 messages",
        ),
        (
            list("zz", &[], 10, ""),
            Code::InvalidArgument,
            "is not a batch id",
        ),
        (
            list("00000000000000ff", &[], 10, ""),
            Code::NotFound,
            "not found",
        ),
    ];
    for (req, code, text) in cases {
        let err = client.list_messages(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(err.message().contains(text), "{req:?}: {}", err.message());
    }
    // The end of the batch is a valid place to continue: an empty last page.
    let end = client
        .list_messages(list(&id, &[], 10, &format!("{id}:10")))
        .await
        .unwrap()
        .into_inner();
    assert!(end.messages.is_empty() && end.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_messages_list_with_their_body_and_segments() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let _node = mesh.node(NodeSpec::new("n"));
    let mut client = mesh.client().await.unwrap();
    let long = "Flood warning. ".repeat(14); // 210 GSM-7 characters: 2 segments
    let messages = vec![
        pb::SmsMessage {
            to: "+14155550100".into(),
            body: long.clone(),
            client_ref: "fw-1".into(),
            ..Default::default()
        },
        pb::SmsMessage {
            to: "+442071838750".into(),
            body: "Шторм: оставайтесь дома".into(),
            client_ref: "fw-2, \"quoted\"".into(),
            ..Default::default()
        },
    ];
    let id = client
        .submit_batch(pb::SubmitBatchRequest {
            messages,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    wait_ended(&mut client, &id, LONG).await.unwrap();
    let page = client
        .list_messages(list(&id, &[], 0, ""))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.body.as_str(), m.segments, m.client_ref.as_str(), m.state))
        .collect();
    let sent = MessageState::Sent as i32;
    assert_eq!(
        got,
        [
            (long.as_str(), 2, "fw-1", sent),
            ("Шторм: оставайтесь дома", 1, "fw-2, \"quoted\"", sent)
        ]
    );

    // smsmon export: the same as CSV, a file another program reads back.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("all.csv");
    let run = std::process::Command::new(smsmesh_testkit::bin("smsmon"))
        .args([
            "export",
            "--coordinator",
            &mesh.url(),
            "--batch",
            &id,
            "--output",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut rows = csv::Reader::from_path(&out).unwrap();
    let header: Vec<String> = rows.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, smsmesh_monitor::export::COLUMNS);
    let rows: Vec<BTreeMap<String, String>> = rows.deserialize().collect::<Result<_, _>>().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["message_id"], format!("{id}.1"));
    assert_eq!(rows[1]["state"], "sent");
    assert_eq!(rows[1]["client_ref"], "fw-2, \"quoted\"");
    assert_eq!(rows[0]["body"], long);
    assert_eq!(rows[0]["segments"], "2");
    assert_eq!(rows[0]["node"], "n");
    for r in &rows {
        let ms = |c: &str| r[c].parse::<u64>().unwrap();
        assert!(ms("final_unix_ms") >= ms("accepted_unix_ms"), "{r:?}");
        assert_eq!(ms("final_unix_ms"), ms("last_attempt_unix_ms"), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_failed_messages_lists_them_and_a_bad_batch_leaves_no_file() {
    let mesh = Mesh::start(fast_retries()).await.unwrap();
    let _node = mesh.node(NodeSpec::new("n").concurrency(50).failure_rate(0.3));
    let mut client = mesh.client().await.unwrap();
    let mut req = synthetic(20_000, 5);
    req.max_attempts = Some(1);
    let id = submit(&mut client, req).await;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    // Over two pages of 10,000 rows, to stdout.
    let run = std::process::Command::new(smsmesh_testkit::bin("smsmon"))
        .args([
            "export",
            "--coordinator",
            &mesh.url(),
            "--batch",
            &id,
            "--state",
            "failed,cancelled",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut rows = csv::Reader::from_reader(&run.stdout[..]);
    let states: Vec<String> = rows.records().map(|r| r.unwrap()[1].to_string()).collect();
    assert_eq!(states.len() as u64, b.failed);
    assert!(b.failed > 5_000, "{b:?}");
    assert!(states.iter().all(|s| s == "failed"));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("none.csv");
    let run = std::process::Command::new(smsmesh_testkit::bin("smsmon"))
        .args([
            "export",
            "--coordinator",
            &mesh.url(),
            "--batch",
            "00000000000000ff",
            "--output",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    assert!(!out.exists(), "a failed export leaves no file behind");
    let run = std::process::Command::new(smsmesh_testkit::bin("smsmon"))
        .args([
            "export",
            "--coordinator",
            &mesh.url(),
            "--batch",
            &id,
            "--state",
            "done",
        ])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("is not a message state"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_list_newest_first_in_pages_and_by_state() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut client = mesh.client().await.unwrap();
    // No node: batches stay running, and every third is cancelled.
    let mut ids = Vec::new();
    for i in 0..25u64 {
        let id = submit(&mut client, synthetic(5, i)).await;
        if i % 3 == 0 {
            client
                .cancel_batch(pb::CancelBatchRequest {
                    batch_id: id.clone(),
                })
                .await
                .unwrap();
        }
        ids.push(id);
    }
    let page = |states: Vec<i32>, page_size: u32, page_token: String| pb::ListBatchesRequest {
        states,
        page_size,
        page_token,
    };
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = client
            .list_batches(page(vec![], 10, token))
            .await
            .unwrap()
            .into_inner();
        assert!(r.batches.len() <= 10);
        listed.extend(r.batches);
        pages += 1;
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let got: Vec<&str> = listed.iter().map(|b| b.batch_id.as_str()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, newest_first);
    assert!(
        listed
            .iter()
            .all(|b| b.total == 5 && b.accepted_unix_ms > 0)
    );

    let cancelled = client
        .list_batches(page(
            vec![pb::BatchState::Cancelled as i32],
            0,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    let want: Vec<&str> = ids.iter().step_by(3).rev().map(String::as_str).collect();
    let got: Vec<&str> = cancelled
        .batches
        .iter()
        .map(|b| b.batch_id.as_str())
        .collect();
    assert_eq!(got, want);
    assert!(cancelled.batches.iter().all(|b| b.cancelled == 5));

    for (req, text) in [
        (
            page(vec![], 1001, String::new()),
            "page_size 1001 is too large",
        ),
        (page(vec![0], 0, String::new()), "is not a batch state"),
        (
            page(vec![], 0, "nope".into()),
            "is not one ListBatches gave",
        ),
    ] {
        let err = client.list_batches(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(text), "{}", err.message());
    }
}
