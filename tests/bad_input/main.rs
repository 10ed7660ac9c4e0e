//! Bad input through real gRPC calls: each gets the right status and a message
//! naming the problem, and a batch already accepted is not disturbed. Also
//! reflection and health for grpcurl; the node stream's protocol checks are
//! in [`node_stream`], on the hand-driven node stream defined here.

mod node_stream;

use std::time::Duration;

use smsmesh::pb::{self, BatchState, node_to_coordinator};
use smsmesh_testkit::{CoordinatorConfig, Mesh, NodeSpec, synthetic, wait_ended};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn msg(to: &str, body: &str) -> pb::SmsMessage {
    pb::SmsMessage {
        to: to.into(),
        body: body.into(),
        client_ref: String::new(),
        ..Default::default()
    }
}

fn explicit(messages: Vec<pb::SmsMessage>) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        messages,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_disturb_nothing() {
    let config = CoordinatorConfig {
        max_batch_size: 1_000_000,
        ..CoordinatorConfig::default()
    };
    let mesh = Mesh::start(config).await.unwrap();
    let node = mesh.node(
        NodeSpec::new("n")
            .concurrency(20)
            .latency(Duration::from_millis(2)),
    );
    let mut client = mesh.client().await.unwrap();
    let good = client
        .submit_batch(synthetic(3_000, 11))
        .await
        .unwrap()
        .into_inner();

    let both = pb::SubmitBatchRequest {
        messages: vec![msg("+14155550100", "hi")],
        synthetic: Some(pb::SyntheticBatch {
            count: 5,
            ..Default::default()
        }),
        ..Default::default()
    };
    let synth = |count, body: Option<&str>| pb::SubmitBatchRequest {
        synthetic: Some(pb::SyntheticBatch {
            count,
            body: body.map(Into::into),
            seed: None,
        }),
        ..Default::default()
    };
    let with_attempts = |n| pb::SubmitBatchRequest {
        max_attempts: Some(n),
        ..synthetic(5, 1)
    };
    let cases: Vec<(&str, pb::SubmitBatchRequest, &str)> = vec![
        (
            "empty batch",
            pb::SubmitBatchRequest::default(),
            "empty batch",
        ),
        ("both", both, "not both"),
        (
            "not E.164",
            explicit(vec![msg("+14155550100", "ok"), msg("0044 20 7183", "hi")]),
            "messages[1].to",
        ),
        ("no plus", explicit(vec![msg("14155550100", "hi")]), "E.164"),
        (
            "leading zero",
            explicit(vec![msg("+04155550100", "hi")]),
            "E.164",
        ),
        (
            "too long number",
            explicit(vec![msg("+1234567890123456", "hi")]),
            "E.164",
        ),
        (
            "empty body",
            explicit(vec![msg("+14155550100", "")]),
            "messages[0].body: the body is empty",
        ),
        (
            "11 GSM-7 segments",
            explicit(vec![msg("+14155550100", &"a".repeat(1531))]),
            "11 SMS segments (GSM-7",
        ),
        (
            "11 UCS-2 segments",
            explicit(vec![msg("+14155550100", &"ж".repeat(671))]),
            "11 SMS segments (UCS-2",
        ),
        (
            "count 0",
            synth(0, None),
            "synthetic.count must be at least 1",
        ),
        (
            "count over max",
            synth(1_000_001, None),
            "exceeds the maximum of 1000000",
        ),
        ("bad synthetic body", synth(5, Some("")), "synthetic.body"),
        ("max_attempts 0", with_attempts(0), "max_attempts 0"),
        (
            "max_attempts too big",
            with_attempts(1000),
            "max_attempts 1000",
        ),
    ];
    for (name, req, want) in cases {
        let err = client.submit_batch(req).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().contains(want),
            "{name}: {:?} should say {want:?}",
            err.message()
        );
    }
    // Ten GSM-7 segments and ten UCS-2 segments are fine.
    let ten = explicit(vec![
        msg("+14155550100", &"a".repeat(1530)),
        msg("+14155550101", &"ж".repeat(670)),
    ]);
    assert_eq!(
        client
            .submit_batch(ten)
            .await
            .unwrap()
            .into_inner()
            .accepted,
        2
    );

    let status = |target| pb::GetStatusRequest {
        target: Some(target),
    };
    use pb::get_status_request::Target;
    let status_cases = vec![
        (
            "unknown batch",
            status(Target::BatchId("00000000000000ff".into())),
            Code::NotFound,
            "batch 00000000000000ff not found",
        ),
        (
            "malformed batch",
            status(Target::BatchId("nope".into())),
            Code::InvalidArgument,
            "not a batch id",
        ),
        (
            "no target",
            pb::GetStatusRequest { target: None },
            Code::InvalidArgument,
            "batch_id",
        ),
        (
            "unknown message's batch",
            status(Target::MessageId("00000000000000ff.1".into())),
            Code::NotFound,
            "not found",
        ),
        (
            "message past the end",
            status(Target::MessageId(format!("{}.3000", good.batch_id))),
            Code::NotFound,
            "has 3000 messages",
        ),
        (
            "malformed message",
            status(Target::MessageId("abc".into())),
            Code::InvalidArgument,
            "not a message id",
        ),
    ];
    for (name, req, code, want) in status_cases {
        let err = client.get_status(req).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(
            err.message().contains(want),
            "{name}: {:?} should say {want:?}",
            err.message()
        );
    }
    let err = client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "00000000000000ff".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "batch_id is empty")
    );
    let err = client
        .watch_progress(pb::WatchProgressRequest {
            batch_id: "00000000000000ff".into(),
            interval_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .watch_progress(pb::WatchProgressRequest {
            batch_id: good.batch_id.clone(),
            interval_ms: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The batch accepted before all this completes exactly.
    let b = wait_ended(&mut client, &good.batch_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        (b.state, b.sent, b.failed),
        (BatchState::Completed as i32, 3_000, 0)
    );
    assert_eq!(node.handled(), 3_002);
}

/// A hand-driven node stream.
struct RawNode {
    tx: mpsc::Sender<pb::NodeToCoordinator>,
    rx: tonic::Streaming<pb::CoordinatorToNode>,
}

async fn raw_join(
    mesh: &Mesh,
    first: node_to_coordinator::Update,
) -> Result<RawNode, tonic::Status> {
    let mut client = pb::node_link_client::NodeLinkClient::connect(mesh.url())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::NodeToCoordinator {
        update: Some(first),
    })
    .await
    .unwrap();
    let rx = client.join(ReceiverStream::new(rx)).await?.into_inner();
    Ok(RawNode { tx, rx })
}

fn hello(name: &str, concurrency: u32) -> node_to_coordinator::Update {
    node_to_coordinator::Update::Hello(pb::Hello {
        name: name.into(),
        instance_id: 7,
        concurrency,
        gateway: "raw".into(),
        ..Default::default()
    })
}

impl RawNode {
    async fn send(&self, u: node_to_coordinator::Update) {
        self.tx
            .send(pb::NodeToCoordinator { update: Some(u) })
            .await
            .unwrap();
    }

    /// Reads until the stream ends with an error status.
    async fn ended(&mut self) -> tonic::Status {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.rx.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("stream ended without a status"),
                    Err(s) => return s,
                }
            }
        })
        .await
        .expect("the coordinator ended the stream")
    }

    async fn next_jobs(&mut self) -> Vec<pb::Job> {
        loop {
            match self.rx.message().await.unwrap().unwrap().update {
                Some(pb::coordinator_to_node::Update::Jobs(j)) => return j.jobs,
                _ => continue,
            }
        }
    }
}

/// A channel to the coordinator, for clients other than its own API's.
async fn channel(mesh: &Mesh) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(mesh.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_and_health_says_serving() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request, server_reflection_response,
    };
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let channel = channel(&mesh).await;
    let mut refl = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "smsmesh.v1.Coordinator",
        "smsmesh.v1.NodeLink",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "smsmesh.v1.Coordinator".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// Field 1 as a number, where SubmitBatchRequest has a list of messages.
#[derive(Clone, PartialEq, prost::Message)]
struct NotASubmit {
    #[prost(uint64, tag = "1")]
    number: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument_and_accepts_nothing() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let channel = channel(&mesh).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/smsmesh.v1.Coordinator/SubmitBatch");
    let codec = smsmesh::codec::Codec::<NotASubmit, pb::SubmitBatchResponse>::default();
    let err = grpc
        .unary(tonic::Request::new(NotASubmit { number: 5 }), path, codec)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("malformed protobuf: ")
            && err.message().contains("SubmitBatchRequest"),
        "{}",
        err.message()
    );
    let mut client = mesh.client().await.unwrap();
    let listed = client
        .list_batches(pb::ListBatchesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.batches.is_empty(), "nothing was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_identifiers_are_refused_without_being_echoed_back() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut client = mesh.client().await.unwrap();
    let huge = "z".repeat(8 << 20);
    let short = |s: &tonic::Status| {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().len() < 512, "{} bytes", s.message().len());
        assert!(s.message().contains("(8388608 bytes)"), "{}", s.message());
    };
    use pb::get_status_request::Target;
    for target in [
        Target::BatchId(huge.clone()),
        Target::MessageId(huge.clone()),
    ] {
        let req = pb::GetStatusRequest {
            target: Some(target),
        };
        short(&client.get_status(req).await.unwrap_err());
    }
    let err = client
        .submit_batch(explicit(vec![msg(&huge, "hi")]))
        .await
        .unwrap_err();
    short(&err);
    let err = raw_join(&mesh, hello(&huge, 5)).await.err().unwrap();
    short(&err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_for_another_request_is_already_exists() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut client = mesh.client().await.unwrap();
    let keyed = |count, key: &str| pb::SubmitBatchRequest {
        idempotency_key: key.into(),
        ..synthetic(count, 5)
    };
    let first = client
        .submit_batch(keyed(10, "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let again = client
        .submit_batch(keyed(10, "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.batch_id.as_str(), again.replayed),
        (first.batch_id.as_str(), true)
    );
    let e = client.submit_batch(keyed(11, "order-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(
        e.message().contains("\"order-1\" already made batch"),
        "{}",
        e.message()
    );
    let other = pb::SubmitBatchRequest {
        idempotency_key: "order-1".into(),
        ..explicit(vec![msg("+14155550100", "hi")])
    };
    let e = client.submit_batch(other).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
}
