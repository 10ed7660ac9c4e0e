//! SubmitBatchStream over real gRPC: an upload is one batch that reaches
//! every number once with the one body; bad parts are refused naming the
//! chunk and index; an upload that does not commit leaves nothing; a key
//! makes it idempotent; and a coordinator killed with SIGKILL mid-upload
//! keeps nothing, while one killed after the commit sends the whole batch.

use std::collections::HashMap;
use std::time::Duration;

use smsmesh::pb::{self, BatchState, submit_batch_stream_request::Part};
use smsmesh_testkit::{
    CoordinatorConfig, Mesh, Node, NodeSpec, Proc, Recorder, client_at as client, wait_ended,
};
use tonic::Code;

const LONG: Duration = Duration::from_secs(90);
const BODY: &str = "Flood warning: move to higher ground now.";

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

fn header(key: &str) -> pb::SubmitBatchStreamRequest {
    pb::SubmitBatchStreamRequest {
        part: Some(Part::Header(pb::UploadHeader {
            body: BODY.into(),
            max_attempts: None,
            idempotency_key: key.into(),
            ..Default::default()
        })),
    }
}

fn chunk(to: Vec<String>, client_ref: Vec<String>) -> pb::SubmitBatchStreamRequest {
    pb::SubmitBatchStreamRequest {
        part: Some(Part::Recipients(pb::RecipientChunk { to, client_ref })),
    }
}

fn commit(total: u64) -> pb::SubmitBatchStreamRequest {
    pb::SubmitBatchStreamRequest {
        part: Some(Part::Commit(pb::UploadCommit { total })),
    }
}

/// Recipient `i`'s number.
fn number(i: u64) -> String {
    format!("+4470{:08}", i)
}

/// Chunks of `size` numbers for recipients `from..to`.
fn chunks(from: u64, to: u64, size: u64) -> Vec<pb::SubmitBatchStreamRequest> {
    (from..to)
        .step_by(size as usize)
        .map(|start| chunk((start..to.min(start + size)).map(number).collect(), vec![]))
        .collect()
}

async fn upload(
    client: &mut Client,
    parts: Vec<pb::SubmitBatchStreamRequest>,
) -> Result<pb::SubmitBatchResponse, tonic::Status> {
    client
        .submit_batch_stream(tokio_stream::iter(parts))
        .await
        .map(tonic::Response::into_inner)
}

/// A coordinator whose store is in `dir`.
async fn durable(dir: &std::path::Path) -> Mesh {
    Mesh::start(CoordinatorConfig {
        data_dir: Some(dir.into()),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap()
}

async fn batches(client: &mut Client) -> Vec<pb::BatchSummary> {
    client
        .list_batches(pb::ListBatchesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_one_batch_that_reaches_every_number_once_with_its_body() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = durable(dir.path()).await;
    let rec = Recorder::default();
    let _nodes: Vec<_> = (0..2)
        .map(|i| mesh.node(NodeSpec::new(&format!("n{i}")).record(&rec)))
        .collect();
    let mut client = mesh.client().await.unwrap();

    // 150,000 recipients in three chunks; the middle chunk has client references.
    let total = 150_000;
    let mut parts = vec![header("")];
    parts.extend(chunks(0, 50_000, 50_000));
    parts.push(chunk(
        (50_000..100_000).map(number).collect(),
        (50_000..100_000).map(|i| format!("ref-{i}")).collect(),
    ));
    parts.extend(chunks(100_000, total, 50_000));
    parts.push(commit(total));
    let r = upload(&mut client, parts).await.unwrap();
    assert_eq!((r.accepted, r.replayed), (total, false));

    let b = wait_ended(&mut client, &r.batch_id, LONG).await.unwrap();
    assert_eq!(b.state, BatchState::Completed as i32);
    assert_eq!((b.total, b.sent, b.failed), (total, total, 0), "{b:?}");

    // The gateways saw each number once, in upload order, with the body.
    let id = u64::from_str_radix(&r.batch_id, 16).unwrap();
    let sends: HashMap<u32, (String, String)> = rec
        .attempts()
        .into_iter()
        .filter(|a| a.batch == id && a.sent)
        .map(|a| (a.index, (a.to, a.body)))
        .collect();
    assert_eq!(sends.len() as u64, total);
    for (index, (to, body)) in &sends {
        assert_eq!(to, &number(u64::from(*index)));
        assert_eq!(body, BODY);
    }

    // A message's status has its number, reference and body.
    for (index, want_ref) in [(0, ""), (50_000, "ref-50000"), (149_999, "")] {
        let m = client
            .get_status(pb::GetStatusRequest {
                target: Some(pb::get_status_request::Target::MessageId(format!(
                    "{}.{index}",
                    r.batch_id
                ))),
            })
            .await
            .unwrap()
            .into_inner();
        let Some(pb::get_status_response::Status::Message(m)) = m.status else {
            panic!("a message status: {m:?}");
        };
        assert_eq!(m.to, number(index));
        assert_eq!(m.client_ref, want_ref);
        assert_eq!(m.body, BODY);
        assert_eq!(m.state, pb::MessageState::Sent as i32);
    }
    mesh.stop().await.unwrap();

    // The recipients were stored with the batch: a coordinator on the same
    // store still knows every number.
    let mesh = durable(dir.path()).await;
    let mut client = mesh.client().await.unwrap();
    let page = client
        .list_messages(pb::ListMessagesRequest {
            batch_id: r.batch_id.clone(),
            page_size: 10_000,
            page_token: format!("{}:99990", r.batch_id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(String, String)> = page
        .messages
        .iter()
        .map(|m| (m.to.clone(), m.client_ref.clone()))
        .collect();
    let want: Vec<(String, String)> = (99_990..100_010)
        .map(|i| {
            let r = if i < 100_000 {
                format!("ref-{i}")
            } else {
                String::new()
            };
            (number(i), r)
        })
        .collect();
    assert_eq!(listed[..20], want[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parts_are_refused_naming_the_chunk_and_index_and_leave_nothing() {
    let mesh = Mesh::start(CoordinatorConfig {
        max_batch_size: 1_000,
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let mut client = mesh.client().await.unwrap();
    let mut bad_number = chunks(0, 30, 10);
    bad_number.insert(2, chunk(vec![number(1), number(2), "+0123".into()], vec![]));
    let cases: Vec<(Vec<pb::SubmitBatchStreamRequest>, &str)> = vec![
        (
            [vec![header("")], bad_number, vec![commit(0)]].concat(),
            "chunk 2, to[2] (recipient 22 of the upload): \"+0123\" is not an E.164 phone number",
        ),
        (
            vec![
                header(""),
                chunk(vec![number(1), number(2)], vec!["a".into()]),
                commit(0),
            ],
            "chunk 0: 1 client_ref values for 2 numbers",
        ),
        (
            [vec![header("")], chunks(0, 10, 10), vec![commit(11)]].concat(),
            "the commit says 11 recipients, but 10 arrived in 1 chunks",
        ),
        (
            [vec![header("")], chunks(0, 10, 10)].concat(),
            "the upload ended without a commit after 10 recipients: nothing was accepted",
        ),
        (
            [chunks(0, 10, 10), vec![header(""), commit(0)]].concat(),
            "the first part of an upload must be its header",
        ),
        (
            [vec![header("")], chunks(0, 10, 10), vec![header("")]].concat(),
            "a second header after 10 recipients",
        ),
        (
            vec![header(""), commit(0)],
            "the upload committed no recipients",
        ),
        (
            [
                vec![header("")],
                chunks(0, 10, 10),
                vec![commit(10)],
                chunks(0, 1, 1),
            ]
            .concat(),
            "a part after the commit",
        ),
        (
            [vec![header("")], chunks(0, 1_001, 500), vec![commit(0)]].concat(),
            "chunk 2: 1 more recipients after 1000 exceed the maximum of 1000 per batch (--max-batch-size)",
        ),
        (
            vec![pb::SubmitBatchStreamRequest {
                part: Some(Part::Header(pb::UploadHeader {
                    body: String::new(),
                    ..Default::default()
                })),
            }],
            "header.body: the body is empty",
        ),
    ];
    for (parts, want) in cases {
        let e = upload(&mut client, parts).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{want}: {e:?}");
        assert!(e.message().contains(want), "{want}: {}", e.message());
    }
    assert!(
        batches(&mut client).await.is_empty(),
        "nothing was accepted"
    );

    // An upload the client abandons mid-stream (the call is dropped) leaves nothing either.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header("")).await.unwrap();
    tx.send(chunks(0, 10, 10).remove(0)).await.unwrap();
    let mut c = client.clone();
    let call = tokio::spawn(async move {
        c.submit_batch_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    call.abort();
    drop(tx);
    let _ = call.await;
    // A good upload afterwards is the only batch.
    let parts = [vec![header("")], chunks(0, 10, 10), vec![commit(10)]].concat();
    let ok = upload(&mut client, parts).await.unwrap();
    let listed = batches(&mut client).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].batch_id, ok.batch_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_with_a_key_is_accepted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = durable(dir.path()).await;
    let mut client = mesh.client().await.unwrap();
    let parts = |n| [vec![header("drill-7")], chunks(0, n, 100), vec![commit(n)]].concat();
    let first = upload(&mut client, parts(250)).await.unwrap();
    let again = upload(&mut client, parts(250)).await.unwrap();
    assert_eq!(again.batch_id, first.batch_id);
    assert!(again.replayed && !first.replayed);
    let e = upload(&mut client, parts(251)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains(&first.batch_id), "{}", e.message());
    // The same key on a SubmitBatch is a different request too.
    let e = client
        .submit_batch(pb::SubmitBatchRequest {
            messages: vec![pb::SmsMessage {
                to: number(0),
                body: BODY.into(),
                client_ref: String::new(),
                ..Default::default()
            }],
            idempotency_key: "drill-7".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert_eq!(batches(&mut client).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_upload_keeps_nothing_and_one_killed_after_the_commit_sends_it_all()
 {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let mut c = client(addr).await;

    // Mid-upload: the header and some chunks are in, then SIGKILL.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut uploading = c.clone();
    let call = tokio::spawn(async move {
        uploading
            .submit_batch_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(header("")).await.unwrap();
    for part in chunks(0, 200_000, 20_000) {
        tx.send(part).await.unwrap();
    }
    coord.kill9();
    // The client hears a transport error (its code depends on when the connection broke).
    call.await.unwrap().unwrap_err();
    drop(tx);
    let (mut coord, addr) = Proc::coordinator_on(addr, dir.path(), &[]).unwrap();
    c = client(addr).await;
    assert!(batches(&mut c).await.is_empty(), "nothing of the upload");

    // After the commit: SIGKILL at once, before any node is there.
    let total = 300_000;
    let parts = [
        vec![header("")],
        chunks(0, total, 30_000),
        vec![commit(total)],
    ]
    .concat();
    let r = upload(&mut c, parts).await.unwrap();
    coord.kill9();
    let (_coord, addr) = Proc::coordinator_on(addr, dir.path(), &[]).unwrap();
    let url = format!("http://{addr}");
    let rec = Recorder::default();
    let _nodes: Vec<Node> = (0..2)
        .map(|i| Node::start(&url, NodeSpec::new(&format!("n{i}")).record(&rec)))
        .collect();
    let mut c = client(addr).await;
    let b = wait_ended(&mut c, &r.batch_id, LONG).await.unwrap();
    assert_eq!((b.total, b.sent, b.failed), (total, total, 0), "{b:?}");
    let id = u64::from_str_radix(&r.batch_id, 16).unwrap();
    let mut seen = vec![false; total as usize];
    for a in rec.attempts().iter().filter(|a| a.batch == id && a.sent) {
        assert_eq!(a.to, number(u64::from(a.index)));
        assert!(!seen[a.index as usize], "message {} sent once", a.index);
        seen[a.index as usize] = true;
    }
    assert!(seen.iter().all(|s| *s), "every number was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smsmon_submit_sends_a_csv_of_numbers_as_one_batch() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let rec = Recorder::default();
    let _node = mesh.node(NodeSpec::new("n0").record(&rec));
    let mut client = mesh.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A header row, then 20,000 numbers; every tenth has a reference.
    let csv = dir.path().join("numbers.csv");
    let mut text = String::from("phone,ref\n");
    for i in 0..20_000 {
        let r = if i % 10 == 0 {
            format!("member-{i}")
        } else {
            String::new()
        };
        text += &format!("{},{r}\n", number(i));
    }
    std::fs::write(&csv, &text).unwrap();
    let out = tokio::process::Command::new(smsmesh_testkit::bin("smsmon"))
        .args(["--coordinator", &mesh.url(), "submit", "--body", BODY])
        .arg("--to-file")
        .arg(&csv)
        .args(["--chunk-size", "3000"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        stderr.contains(&format!("batch {id} accepted, 20000 messages")),
        "{stderr}"
    );
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!((b.total, b.sent), (20_000, 20_000), "{b:?}");
    let page = client
        .list_messages(pb::ListMessagesRequest {
            batch_id: id.clone(),
            page_size: 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages[0].client_ref, "member-0");
    assert_eq!(page.messages[10].client_ref, "member-10");
    assert_eq!(page.messages[11].client_ref, "");
    assert_eq!(page.messages[11].to, number(11));
    assert_eq!(page.messages[11].body, BODY);

    // A bad line: named by its number, and nothing is accepted.
    let bad = dir.path().join("bad.csv");
    let mut lines: Vec<String> = (0..10).map(number).collect();
    lines[6] = "+44 7700 900123".into(); // spaces: not E.164
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let out = tokio::process::Command::new(smsmesh_testkit::bin("smsmon"))
        .args(["--coordinator", &mesh.url(), "submit", "--body", BODY])
        .arg("--to-file")
        .arg(&bad)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 7: \"+44 7700 900123\" is not an E.164 phone number"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was submitted"), "{stderr}");
    assert_eq!(
        batches(&mut client).await.len(),
        1,
        "only the good file's batch"
    );
}
