//! SMPP against an SMSC from another ecosystem: the npm `smpp` package's
//! server (tests/peers/smsc.js, installed by `.ci/run`), over TCP on
//! 127.0.0.1. Its ids are upper-case hex with leading zeros in the
//! submit_sm_resp and lower case in the receipts' TLVs: with `--smpp-ids hex`
//! every receipt still finds its message.

use std::process::Stdio;
use std::time::Duration;

use smsmesh::pb;
use smsmesh_coordinator::Config as CoordinatorConfig;
use smsmesh_testkit::{Mesh, NodeSpec, batch_status, wait_until};
use tokio::io::AsyncBufReadExt;

/// The peer SMSC's port, and the process (killed when dropped); `None`
/// (with the reason printed) where node or the npm package is missing,
/// unless CI requires the peer.
async fn peer() -> Option<(u16, tokio::process::Child)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    let installed = dir.join("node_modules/smpp").is_dir();
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(installed && node) {
        let why = "the npm `smpp` package is not installed in tests/peers (bash .ci/run installs it), or node is missing";
        assert!(
            std::env::var_os("SMSMESH_REQUIRE_SMPP_PEER").is_none(),
            "{why}"
        );
        eprintln!("skipped: {why}");
        return None;
    }
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("smsc.js"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the peer SMSC starts within 30 s")
        .unwrap()
        .expect("the peer SMSC prints its port");
    let port = line
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line from the peer: {line}"));
    Some((port, child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_delivered_through_the_npm_smpp_server() {
    let Some((port, _peer)) = peer().await else {
        return;
    };
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let url = format!("smpp://esme:secret@127.0.0.1:{port}?ids=hex");
    let _a = mesh.node(NodeSpec::new("peer-a").smpp(&url));
    let _b = mesh.node(NodeSpec::new("peer-b").smpp(&url));
    let mut client = mesh.client().await.unwrap();
    // 40 messages; those to numbers ending in 6 come back undelivered. One is long (3 parts).
    let mut messages: Vec<_> = (0..39)
        .map(|i| pb::SmsMessage {
            to: format!("+4477009{i:05}"),
            body: format!("code {i}"),
            ..Default::default()
        })
        .collect();
    messages.push(pb::SmsMessage {
        to: "+447700999990".into(),
        body: "x".repeat(400),
        ..Default::default()
    });
    let batch = client
        .submit_batch(pb::SubmitBatchRequest {
            messages,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let s = wait_until(Duration::from_secs(60), "every receipt", || {
        let mut client = client.clone();
        let batch = batch.clone();
        async move {
            let s = batch_status(&mut client, &batch).await.ok()?;
            (s.sent == 40 && s.delivered + s.undelivered == 40).then_some(s)
        }
    })
    .await
    .unwrap();
    // Numbers ending in 6 among 0..39: 6, 16, 26, 36.
    assert_eq!(
        (s.delivered, s.undelivered, s.awaiting_receipt),
        (36, 4, 0),
        "{s:?}"
    );
    let m = smsmesh_testkit::message_status(&mut client, &format!("{batch}.39"))
        .await
        .unwrap();
    assert_eq!(m.state, pb::MessageState::Delivered as i32, "{m:?}");
    assert_eq!(m.provider_ids.len(), 3, "{m:?}");
    mesh.stop().await.unwrap();
}
