//! Traces across the mesh: real `smscoord` and `smsnode` processes export
//! over OTLP/gRPC to a receiver built from the OpenTelemetry protobuf
//! definitions, and one small batch must arrive as one trace with the right
//! parent links: the caller's span, SubmitBatch, dispatch, then each send.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use smsmesh::pb;
use smsmesh_testkit::{Proc, bin, listening_addr, submit, wait_ended, wait_until};

const LONG: Duration = Duration::from_secs(60);

/// One span as the receiver saw it.
#[derive(Clone, Debug)]
struct Seen {
    service: String,
    instance: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/gRPC trace receiver that keeps every span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Seen>>>);

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let resource: HashMap<String, String> = rs
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
                .into_iter()
                .map(|kv| (kv.key, text(kv.value.as_ref())))
                .collect();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    seen.push(Seen {
                        service: resource.get("service.name").cloned().unwrap_or_default(),
                        instance: resource
                            .get("service.instance.id")
                            .cloned()
                            .unwrap_or_default(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .into_iter()
                            .map(|kv| (kv.key, text(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

/// `smscoord` exporting to `otlp`, in memory, with quick span export.
fn coordinator(otlp: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut child = Command::new(bin("smscoord"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--in-memory",
            "--insecure-no-auth",
            "--plaintext",
            "--otlp-endpoint",
            otlp,
        ])
        .args(extra)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child).unwrap();
    (Proc { child }, addr)
}

fn node(coordinator: SocketAddr, name: &str, otlp: &str) -> Proc {
    let child = Command::new(bin("smsnode"))
        .args([
            "--coordinator",
            &format!("http://{coordinator}"),
            "--name",
            name,
        ])
        .args(["--otlp-endpoint", otlp, "--mean-latency", "2ms"])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    Proc { child }
}

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

async fn connect(addr: SocketAddr) -> Client {
    Client::connect(format!("http://{addr}")).await.unwrap()
}

fn messages(n: usize) -> Vec<pb::SmsMessage> {
    (0..n)
        .map(|i| pb::SmsMessage {
            to: format!("+4475000{i:05}"),
            body: format!("trace me {i}"),
            client_ref: String::new(),
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_is_one_trace_across_coordinator_and_node() {
    let (receiver, otlp) = Receiver::start().await;
    let otlp = format!("http://{otlp}");
    let (_coord, addr) = coordinator(&otlp, &["--trace-message-ratio", "1"]);
    let _node = node(addr, "traced-node", &otlp);
    let mut client = connect(addr).await;

    // The caller's own span: the batch's trace continues it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(pb::SubmitBatchRequest {
        messages: messages(5),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let id = client
        .submit_batch(request)
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let status = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(status.sent, 5);

    // Wait for: SubmitBatch, dispatch, and a send per message.
    let spans = wait_until(LONG, "the batch's spans at the receiver", || {
        let spans: Vec<Seen> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let sends = spans.iter().filter(|s| s.name == "send").count();
        let dispatch = spans.iter().any(|s| s.name == "dispatch");
        async move { (sends == 5 && dispatch).then_some(spans) }
    })
    .await
    .unwrap();

    for s in &spans {
        println!(
            "{:<9} {:<40} span {} parent {}",
            s.service, s.name, s.span_id, s.parent
        );
    }
    let submit: Vec<&Seen> = spans
        .iter()
        .filter(|s| s.name == "smsmesh.v1.Coordinator/SubmitBatch")
        .collect();
    assert_eq!(submit.len(), 1, "one SubmitBatch span: {spans:#?}");
    let submit = submit[0];
    assert_eq!(submit.service, "smscoord");
    assert_eq!(
        submit.parent, caller_span,
        "SubmitBatch continues the caller's span"
    );
    assert_eq!(submit.attributes.get("batch_id"), Some(&id));
    assert_eq!(
        submit.attributes.get("rpc.method").map(String::as_str),
        Some("smsmesh.v1.Coordinator/SubmitBatch")
    );

    let dispatch: Vec<&Seen> = spans.iter().filter(|s| s.name == "dispatch").collect();
    assert_eq!(dispatch.len(), 1);
    let dispatch = dispatch[0];
    assert_eq!(dispatch.service, "smscoord");
    assert_eq!(
        dispatch.parent, submit.span_id,
        "dispatch is a child of SubmitBatch"
    );
    assert_eq!(
        dispatch.attributes.get("state").map(String::as_str),
        Some("completed")
    );
    assert_eq!(
        dispatch.attributes.get("sent").map(String::as_str),
        Some("5")
    );

    let mut sent_ids: Vec<String> = Vec::new();
    for send in spans.iter().filter(|s| s.name == "send") {
        assert_eq!(send.service, "smsnode", "{send:?}");
        assert_eq!(send.instance, "traced-node");
        assert_eq!(
            send.parent, dispatch.span_id,
            "each send is a child of dispatch"
        );
        assert_eq!(
            send.attributes.get("outcome").map(String::as_str),
            Some("OUTCOME_SENT")
        );
        sent_ids.push(send.attributes["message_id"].clone());
    }
    sent_ids.sort();
    let want: Vec<String> = (0..5).map(|i| format!("{id}.{i}")).collect();
    assert_eq!(sent_ids, want, "one send span per message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sampled_share_of_messages_is_traced() {
    let (receiver, otlp) = Receiver::start().await;
    let otlp = format!("http://{otlp}");
    // One message in 100: messages 0, 100, ..., 900 of a 1000-message batch.
    let (_coord, addr) = coordinator(&otlp, &["--trace-message-ratio", "0.01"]);
    let _node = node(addr, "sampled-node", &otlp);
    let mut client = connect(addr).await;
    let id = submit(&mut client, smsmesh_testkit::synthetic(1000, 3)).await;
    wait_ended(&mut client, &id, LONG).await.unwrap();
    let dispatch = wait_until(LONG, "the dispatch span", || {
        let d = receiver
            .spans()
            .into_iter()
            .find(|s| s.name == "dispatch" && s.attributes.get("batch_id") == Some(&id));
        async move { d }
    })
    .await
    .unwrap();
    let sends = wait_until(LONG, "10 send spans", || {
        let sends: Vec<Seen> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.name == "send" && s.trace_id == dispatch.trace_id)
            .collect();
        async move { (sends.len() >= 10).then_some(sends) }
    })
    .await
    .unwrap();
    let mut ids: Vec<String> = sends
        .iter()
        .map(|s| s.attributes["message_id"].clone())
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..10).map(|k| format!("{id}.{}", k * 100)).collect();
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_collector_listening_breaks_nothing() {
    // A port with nothing behind it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let otlp = format!("http://{dead}");
    let (mut coord, addr) = coordinator(&otlp, &["--trace-message-ratio", "1"]);
    let _node = node(addr, "lonely-node", &otlp);
    let mut client = connect(addr).await;
    let id = submit(&mut client, smsmesh_testkit::synthetic(2000, 4)).await;
    let status = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(status.sent, 2000);
    // And it stops promptly on SIGTERM, though its last spans cannot be delivered.
    coord.term();
    let exit = coord.wait(Duration::from_secs(20)).await.unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_otel_variables_name_the_service_and_choose_the_sampler() {
    let (receiver, otlp) = Receiver::start().await;
    let mut child = Command::new(bin("smscoord"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--in-memory",
            "--insecure-no-auth",
            "--plaintext",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_SERVICE_NAME", "coordinator-eu-1")
        // Follow the caller's decision: sampled parent, spans; unsampled, none.
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_off")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child).unwrap();
    let _coord = Proc { child };
    let mut client = connect(addr).await;
    let submit = |trace: &str, flags: &str| {
        let mut r = tonic::Request::new(smsmesh_testkit::synthetic(10, 1));
        r.metadata_mut().insert(
            "traceparent",
            format!("00-{trace}-00f067aa0ba902b7-{flags}")
                .parse()
                .unwrap(),
        );
        r
    };
    let unsampled = "11111111111111111111111111111111";
    let sampled = "22222222222222222222222222222222";
    client.submit_batch(submit(unsampled, "00")).await.unwrap();
    client.submit_batch(submit(sampled, "01")).await.unwrap();
    // No node: the batches never end, so only their SubmitBatch spans are exported.
    let spans = wait_until(LONG, "the sampled trace's SubmitBatch span", || {
        let spans = receiver.spans();
        let found = spans.iter().any(|s| s.trace_id == sampled);
        async move { found.then_some(spans) }
    })
    .await
    .unwrap();
    assert!(
        spans.iter().all(|s| s.service == "coordinator-eu-1"),
        "{spans:#?}"
    );
    // Spans are exported in the order they end: the unsampled batch's would have come first.
    assert!(
        spans.iter().all(|s| s.trace_id != unsampled),
        "no span of the unsampled trace: {spans:#?}"
    );
}
