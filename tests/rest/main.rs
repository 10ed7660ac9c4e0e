//! The API over HTTP and JSON, with curl as the client over real sockets:
//! every call, the same tokens, tenants, limits and errors as gRPC (a batch
//! submitted over one face is seen over the other), progress as
//! Server-Sent Events, HTTPS, and an OpenAPI document that names every route.
//! Uploads of a CSV of numbers are in `upload.rs`.

mod upload;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use smsmesh_coordinator::Tls;
use smsmesh_coordinator::auth::{ClientAuth, JwtVerifier, TenantLimits, mint_hs256};
use smsmesh_testkit::{Caller, CoordinatorConfig, Mesh, NodeSpec, wait_until};

const LONG: Duration = Duration::from_secs(30);
const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes-0123456789";
const AUD: &str = "smsmesh";

fn jwt_config() -> CoordinatorConfig {
    CoordinatorConfig {
        client_auth: ClientAuth::Jwt(Arc::new(JwtVerifier::hs256(SECRET, AUD).unwrap())),
        ..CoordinatorConfig::default()
    }
}

fn token(tenant: &str) -> String {
    mint_hs256(SECRET, AUD, None, tenant, "", Duration::from_secs(600)).unwrap()
}

/// What curl got: the HTTP status, the headers (lower-case names) and the body.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error of this HTTP status and gRPC code name whose message says `says`.
    fn error(&self, status: u16, code: &str, says: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let e = &self.json()["error"];
        assert_eq!(
            (e["code"].as_u64(), e["status"].as_str()),
            (Some(u64::from(status)), Some(code)),
            "{self:?}"
        );
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} should say {says:?}");
    }
}

/// Runs curl with `args` (and `token` as a bearer token, if any).
async fn curl(token: Option<&str>, args: &[&str]) -> Got {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-D", "-"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.args(args).output().await.expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    Got {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn get(mesh: &Mesh, token: Option<&str>, path: &str) -> Got {
    curl(token, &[&format!("http://{}{path}", mesh.http_addr)]).await
}

async fn post(mesh: &Mesh, token: Option<&str>, path: &str, body: &str) -> Got {
    let url = format!("http://{}{path}", mesh.http_addr);
    curl(
        token,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &url,
        ],
    )
    .await
}

/// Polls the batch over HTTP until `done` says so.
async fn wait_batch(
    mesh: &Mesh,
    token: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(LONG, what, || async {
        let got = get(mesh, Some(token), &format!("/v1/batches/{id}")).await;
        let b = got.json();
        done(&b).then_some(b)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_works_over_http_with_the_same_tenants_and_errors() {
    let mesh = Mesh::start(jwt_config()).await.unwrap();
    let (acme, globex) = (token("acme"), token("globex"));

    // No token, a bad body, an unknown field, an unknown route: each says what is wrong.
    let submit = json!({
        "messages": [
            {"to": "+14155550100", "body": "Your code is 1234", "client_ref": "order-1"},
            {"to": "+14155550101", "body": "Your code is 5678", "sender": "ACME"}
        ],
        "max_attempts": 2,
        "idempotency_key": "rest-1"
    })
    .to_string();
    let got = post(&mesh, None, "/v1/batches", &submit).await;
    got.error(
        401,
        "UNAUTHENTICATED",
        "missing `authorization: Bearer <token>`",
    );
    assert_eq!(got.header("www-authenticate"), Some("Bearer"));
    post(&mesh, Some(&acme), "/v1/batches", "{not json")
        .await
        .error(400, "INVALID_ARGUMENT", "not a SubmitBatchRequest in JSON");
    post(&mesh, Some(&acme), "/v1/batches", r#"{"mesages":[]}"#)
        .await
        .error(400, "INVALID_ARGUMENT", "mesages");
    let bad_number = r#"{"messages":[{"to":"555","body":"x"}]}"#;
    post(&mesh, Some(&acme), "/v1/batches", bad_number)
        .await
        .error(400, "INVALID_ARGUMENT", "messages[0].to");
    get(&mesh, Some(&acme), "/v2/nothing").await.error(
        404,
        "NOT_FOUND",
        "no route GET /v2/nothing",
    );

    // Submit, and the same again is a replay of the same batch.
    let got = post(&mesh, Some(&acme), "/v1/batches", &submit).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.header("content-type"), Some("application/json"));
    let made = got.json();
    let id = made["batch_id"].as_str().unwrap().to_string();
    assert_eq!(
        (made["accepted"].as_u64(), made["replayed"].as_bool()),
        (Some(2), Some(false))
    );
    let again = post(&mesh, Some(&acme), "/v1/batches", &submit)
        .await
        .json();
    assert_eq!(
        (again["batch_id"].as_str(), again["replayed"].as_bool()),
        (Some(id.as_str()), Some(true))
    );

    // It is sent, and reads the same over HTTP and over gRPC.
    let _node = mesh.node(NodeSpec::new("n1"));
    let done = wait_batch(&mesh, &acme, &id, "the batch to complete", |b| {
        b["state"] == "BATCH_STATE_COMPLETED"
    })
    .await;
    assert_eq!(
        (
            done["total"].as_u64(),
            done["sent"].as_u64(),
            done["failed"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    let mut grpc = Caller::new(&mesh.url(), None, Some(acme.clone())).await;
    assert_eq!(grpc.status(&id).await.unwrap().sent, 2);
    let m = get(&mesh, Some(&acme), &format!("/v1/messages/{id}.1"))
        .await
        .json();
    assert_eq!(m["state"], "MESSAGE_STATE_SENT");
    assert_eq!(
        (m["to"].as_str(), m["sender"].as_str()),
        (Some("+14155550101"), Some("ACME"))
    );
    let accepted = m["accepted_unix_ms"].as_u64().unwrap();
    assert!(m["final_unix_ms"].as_u64().unwrap() >= accepted, "{m}");

    // Listing: batches by state, messages a page at a time.
    let page = get(
        &mesh,
        Some(&acme),
        "/v1/batches?states=BATCH_STATE_COMPLETED&page_size=10",
    )
    .await
    .json();
    assert_eq!(page["batches"][0]["batch_id"].as_str(), Some(id.as_str()));
    let page = get(
        &mesh,
        Some(&acme),
        &format!("/v1/batches/{id}/messages?states=MESSAGE_STATE_SENT&page_size=1"),
    )
    .await
    .json();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["messages"][0]["client_ref"], "order-1");
    let next = page["next_page_token"].as_str().unwrap();
    let rest = get(
        &mesh,
        Some(&acme),
        &format!("/v1/batches/{id}/messages?page_token={next}"),
    )
    .await
    .json();
    assert_eq!(
        rest["messages"][0]["message_id"].as_str(),
        Some(format!("{id}.1").as_str())
    );
    get(
        &mesh,
        Some(&acme),
        &format!("/v1/batches/{id}/messages?color=red"),
    )
    .await
    .error(400, "INVALID_ARGUMENT", "unknown query parameter `color`");

    // Another tenant sees nothing of it, and cannot cancel it.
    get(&mesh, Some(&globex), &format!("/v1/batches/{id}"))
        .await
        .error(404, "NOT_FOUND", "not found");
    assert_eq!(
        get(&mesh, Some(&globex), "/v1/batches").await.json()["batches"],
        json!([])
    );
    post(
        &mesh,
        Some(&globex),
        &format!("/v1/batches/{id}/cancel"),
        "",
    )
    .await
    .error(404, "NOT_FOUND", "not found");
    get(&mesh, Some(&acme), "/v1/batches/zz")
        .await
        .error(400, "INVALID_ARGUMENT", "zz");

    // A cancel of a batch still running.
    let slow = post(
        &mesh,
        Some(&acme),
        "/v1/batches",
        r#"{"synthetic":{"count":"5000000","seed":"9"}}"#,
    )
    .await
    .json();
    let slow = slow["batch_id"].as_str().unwrap();
    let cancelled = post(
        &mesh,
        Some(&acme),
        &format!("/v1/batches/{slow}/cancel"),
        "",
    )
    .await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    let state = cancelled.json()["batch"]["state"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        state == "BATCH_STATE_CANCELLING" || state == "BATCH_STATE_CANCELLED",
        "{state}"
    );
    wait_batch(&mesh, &acme, slow, "the cancel to end", |b| {
        b["state"] == "BATCH_STATE_CANCELLED"
    })
    .await;

    // Pausing a class is an operator's call.
    post(
        &mesh,
        Some(&acme),
        "/v1/classes/paused",
        r#"{"priority":"PRIORITY_BULK","paused":true}"#,
    )
    .await
    .error(403, "PERMISSION_DENIED", "smsmesh:operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_as_server_sent_events_until_the_batch_ends() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let made = post(
        &mesh,
        None,
        "/v1/batches",
        r#"{"synthetic":{"count":"20000","seed":"1"}}"#,
    )
    .await;
    assert_eq!(made.status, 200, "{made:?}");
    let id = made.json()["batch_id"].as_str().unwrap().to_string();
    let _node = mesh.node(
        NodeSpec::new("n1")
            .concurrency(200)
            .latency(Duration::from_millis(2)),
    );
    // curl ends by itself when the stream does: when the batch has ended.
    let got = curl(
        None,
        &[
            "-N",
            &format!(
                "http://{}/v1/batches/{id}/progress?interval_ms=100",
                mesh.http_addr
            ),
        ],
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("text/event-stream"));
    let updates: Vec<Value> = got
        .body
        .split("\n\n")
        .filter(|e| e.contains("event: progress"))
        .map(|e| {
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("data");
            serde_json::from_str(data).unwrap()
        })
        .collect();
    assert!(
        updates.len() >= 2,
        "{} updates: {}",
        updates.len(),
        got.body
    );
    let last = &updates.last().unwrap()["batches"][0];
    assert_eq!(
        (last["batch_id"].as_str(), last["state"].as_str()),
        (Some(id.as_str()), Some("BATCH_STATE_COMPLETED"))
    );
    assert_eq!(last["sent"].as_u64(), Some(20_000));
    // A batch that does not exist is refused before the stream starts.
    get(&mesh, None, "/v1/batches/00000000000000ff/progress")
        .await
        .error(404, "NOT_FOUND", "00000000000000ff");
    get(&mesh, None, "/v1/progress?interval_ms=10").await.error(
        400,
        "INVALID_ARGUMENT",
        "interval_ms 10 is too small",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_gets_429_with_retry_after() {
    let mesh = Mesh::start(CoordinatorConfig {
        tenant_limits: TenantLimits {
            rate: Some(100.0),
            burst: 1000,
            max_pending: None,
        },
        ..jwt_config()
    })
    .await
    .unwrap();
    let acme = token("acme");
    let body = |seed: u32| format!(r#"{{"synthetic":{{"count":"800","seed":"{seed}"}}}}"#);
    assert_eq!(
        post(&mesh, Some(&acme), "/v1/batches", &body(1))
            .await
            .status,
        200
    );
    let got = post(&mesh, Some(&acme), "/v1/batches", &body(2)).await;
    got.error(429, "RESOURCE_EXHAUSTED", "over its rate of 100 messages/s");
    // 600 messages at 100/s: about 6 s, in whole seconds rounded up.
    let wait: u64 = got
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=6).contains(&wait), "{wait}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_coordinators_certificate() {
    let ca = rcgen::CertifiedIssuer::self_signed(
        {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "smsmesh REST test CA");
            p
        },
        rcgen::KeyPair::generate().unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let mesh = Mesh::start(CoordinatorConfig {
        tls: Some(Tls {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            client_ca_pem: None,
        }),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let url = format!("https://127.0.0.1:{}/v1/batches", mesh.http_addr.port());
    let got = curl(None, &["--cacert", ca_file.to_str().unwrap(), &url]).await;
    assert_eq!(
        (got.status, got.json()["batches"].clone()),
        (200, json!([]))
    );
    // Plain HTTP to it gets no answer; nor does a client that does not trust it.
    let plain = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{}/v1/batches", mesh.http_addr),
        ])
        .output()
        .await
        .unwrap();
    assert!(!plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("batches"));
    let untrusted = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", &url])
        .output()
        .await
        .unwrap();
    assert!(!untrusted.status.success());
    // Still serving.
    assert_eq!(
        curl(None, &["--cacert", ca_file.to_str().unwrap(), &url])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_that_is_served() {
    let mesh = Mesh::start(jwt_config()).await.unwrap();
    let got = get(&mesh, None, "/openapi.json").await;
    assert_eq!(got.status, 200, "the document needs no token");
    let doc = got.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut described = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.push((method.clone(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = smsmesh_coordinator::rest::openapi::all_routes()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    described.sort();
    served.sort();
    assert_eq!(described, served);
    // Each is routed: without a token each answers 401, never "no route".
    for (method, path) in served {
        let path = path
            .replace("{batch_id}", "00000000000000ab")
            .replace("{message_id}", "00000000000000ab.0");
        let url = format!("http://{}{path}", mesh.http_addr);
        let got = curl(None, &["-X", &method.to_uppercase(), &url]).await;
        got.error(401, "UNAUTHENTICATED", "authorization");
    }
    // Every schema a route names is in the document.
    let text = doc.to_string();
    for r in text.split("#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{name} is named but not described"
        );
    }
}
