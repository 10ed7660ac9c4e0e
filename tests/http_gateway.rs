//! Real delivery through an HTTP SMS provider: `smsnode` processes whose
//! gateway is `--gateway http(s)://…` send to a provider stub (an HTTP
//! server in this test) that speaks Twilio's Messages API or a generic JSON
//! API. Every answer class reaches GetStatus: accepted (with the provider's
//! id), a permanent error (final at once), a temporary one (retried), and
//! 429 with Retry-After (the connector pauses; the message goes back
//! without using an attempt).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use smsmesh::pb::{self, MessageState};
use smsmesh_testkit::{
    CoordinatorConfig, Mesh, Proc, batch_status, message_status, submit, wait_ended, wait_until,
};

/// A request the stub got: its path, fields and authorization header.
#[derive(Clone, Debug)]
struct Got {
    at: Instant,
    path: String,
    fields: Vec<(String, String)>,
    authorization: String,
    /// Its `X-Signature` header, and its body.
    signature: String,
    body: Bytes,
}

impl Got {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The provider stub's state.
#[derive(Default)]
struct Provider {
    got: Mutex<Vec<Got>>,
    /// Answer the request with this number 429 (Retry-After: 1).
    throttle_at: usize,
    /// Numbers already failed once with a 500.
    failed_once: Mutex<Vec<String>>,
}

async fn answer(
    axum::extract::State(p): axum::extract::State<Arc<Provider>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/json");
    let fields: Vec<(String, String)> = if json {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect()
    } else {
        url::form_urlencoded::parse(&body).into_owned().collect()
    };
    let got = Got {
        at: Instant::now(),
        path: uri.path().to_string(),
        fields,
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        signature: headers
            .get("x-signature")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        body: body.clone(),
    };
    let to = got
        .field("To")
        .or(got.field("to"))
        .unwrap_or_default()
        .to_string();
    let n = {
        let mut all = p.got.lock().unwrap();
        all.push(got.clone());
        all.len()
    };
    let twilio = got.path.starts_with("/2010-04-01/");
    let allowed = if twilio {
        "Basic QUMxOnNlY3JldA=="
    } else {
        "Bearer provider-token"
    }; // AC1:secret
    if got.authorization != allowed {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"code":20003,"message":"Authenticate"}"#,
        )
            .into_response();
    }
    if n == p.throttle_at {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            r#"{"code":20429,"message":"Too Many Requests"}"#,
        )
            .into_response();
    }
    if to.ends_with("999") {
        let msg = format!(
            r#"{{"code":21211,"message":"The 'To' number {to} is not a valid phone number.","status":400}}"#
        );
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    if to.ends_with("500") {
        let mut failed = p.failed_once.lock().unwrap();
        if !failed.contains(&to) {
            failed.push(to);
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream hiccup").into_response();
        }
    }
    let body = if twilio {
        format!(r#"{{"sid":"SM{n:032x}","status":"queued"}}"#)
    } else {
        format!(r#"{{"data":{{"id":"g-{n}"}}}}"#)
    };
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The stub on a free port, and its address.
async fn provider(throttle_at: usize) -> (Arc<Provider>, std::net::SocketAddr) {
    let p = Arc::new(Provider {
        throttle_at,
        ..Provider::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(answer).with_state(p.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (p, addr)
}

fn batch(numbers: &[&str], sender: &str) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        messages: numbers
            .iter()
            .map(|to| pb::SmsMessage {
                to: to.to_string(),
                body: format!("Hello {to}"),
                ..Default::default()
            })
            .collect(),
        sender: sender.into(),
        max_attempts: Some(3),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_style_provider_gets_every_message_and_its_answers_reach_the_status() {
    let (stub, addr) = provider(3).await;
    let mesh = Mesh::start(CoordinatorConfig {
        retry_base: Duration::from_millis(50),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    // The node serves the status callbacks the provider is asked to post.
    let hook = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let callback = format!("http://{hook}/twilio");
    let gateway = format!("http://AC1:secret@{addr}?profile=twilio&status_callback={callback}");
    let _node = Proc::node(
        &mesh.url(),
        "http-a",
        &[
            "--gateway",
            &gateway,
            "--concurrency",
            "1",
            "--http-webhook-listen",
            &hook.to_string(),
        ],
    )
    .unwrap();
    let mut client = mesh.client().await.unwrap();
    let mut numbers: Vec<String> = (0..20).map(|i| format!("+1415555{i:04}")).collect();
    numbers.extend(["+14155550999".to_string(), "+14155550500".to_string()]);
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let id = submit(&mut client, batch(&refs, "ACME")).await;
    let b = wait_until(Duration::from_secs(30), "the batch to end", || {
        let (mut client, id) = (client.clone(), id.clone());
        async move {
            let b = batch_status(&mut client, &id).await.ok()?;
            (b.state == pb::BatchState::Completed as i32).then_some(b)
        }
    })
    .await
    .unwrap();
    assert_eq!((b.sent, b.failed), (21, 1), "{b:?}");
    assert!(b.retried >= 1, "the 500 was retried: {b:?}");
    assert!(b.requeued >= 1, "the 429 put its message back: {b:?}");

    // The invalid number failed for good at its first attempt, saying why.
    let bad = message_status(&mut client, &format!("{id}.20"))
        .await
        .unwrap();
    assert_eq!((bad.state, bad.attempts), (MessageState::Failed as i32, 1));
    assert!(
        bad.last_error.contains("HTTP 400: 21211"),
        "{}",
        bad.last_error
    );
    // A sent one carries the provider's id.
    let ok = message_status(&mut client, &format!("{id}.0"))
        .await
        .unwrap();
    assert_eq!(ok.provider_ids.len(), 1);
    assert!(
        ok.provider_ids[0].starts_with("SM"),
        "{:?}",
        ok.provider_ids
    );

    // What the provider got: Twilio's path and form fields, basic auth.
    let got = stub.got.lock().unwrap().clone();
    let first = &got[0];
    assert_eq!(first.path, "/2010-04-01/Accounts/AC1/Messages.json");
    assert_eq!(first.field("From"), Some("ACME"));
    assert_eq!(first.field("StatusCallback"), Some(callback.as_str()));
    assert!(first.field("Body").unwrap().starts_with("Hello +1415555"));
    // After the 429 the connector waited its Retry-After (1 s) before sending again.
    let throttled = got[2].at;
    let next = got
        .iter()
        .skip(3)
        .map(|g| g.at)
        .min()
        .expect("more requests after the 429");
    assert!(
        next.duration_since(throttled) >= Duration::from_millis(900),
        "sent again after {:?}",
        next.duration_since(throttled)
    );
    // Every accepted message was accepted once: 21 sends, one request each.
    let accepted: Vec<&str> = got.iter().filter_map(|g| g.field("To")).collect();
    for n in &numbers[..20] {
        assert!(
            accepted.contains(&n.as_str()),
            "{n} never reached the provider"
        );
    }

    // The provider posts delivery status back, signed; the states reach GetStatus.
    assert_eq!(
        b.awaiting_receipt, 21,
        "every sent message waits for its receipt"
    );
    let post = |params: Vec<(&'static str, String)>, signature: Option<String>| {
        let callback = callback.clone();
        async move {
            let owned: Vec<(String, String)> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let signature = signature.unwrap_or_else(|| {
                smsmesh_node::http::webhook::twilio_signature("secret", &callback, &owned)
            });
            let mut cmd = tokio::process::Command::new("curl");
            cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
                .arg(format!("X-Twilio-Signature: {signature}"));
            for (k, v) in &owned {
                cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
            }
            let out = cmd.arg(&callback).output().await.unwrap();
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let sid = |m: &pb::MessageStatus| m.provider_ids[0].clone();
    let one = message_status(&mut client, &format!("{id}.1"))
        .await
        .unwrap();
    let delivered = vec![
        ("MessageSid", sid(&ok)),
        ("MessageStatus", "delivered".to_string()),
    ];
    assert_eq!(post(delivered.clone(), Some("forged".into())).await, "403");
    let interim = vec![
        ("MessageSid", sid(&one)),
        ("MessageStatus", "sent".to_string()),
    ];
    assert_eq!(post(interim, None).await, "200");
    assert_eq!(post(delivered.clone(), None).await, "200");
    let undelivered = vec![
        ("MessageSid", sid(&one)),
        ("MessageStatus", "undelivered".to_string()),
        ("ErrorCode", "30003".to_string()),
    ];
    assert_eq!(post(undelivered, None).await, "200");
    // Again, and late: a state only moves forward.
    let again = vec![
        ("MessageSid", sid(&ok)),
        ("MessageStatus", "undelivered".to_string()),
    ];
    assert_eq!(post(again, None).await, "200");
    let ok = message_status(&mut client, &format!("{id}.0"))
        .await
        .unwrap();
    assert_eq!(ok.state, MessageState::Delivered as i32, "{ok:?}");
    let one = message_status(&mut client, &format!("{id}.1"))
        .await
        .unwrap();
    assert_eq!(
        (one.state, one.receipt_error.as_str()),
        (MessageState::Undelivered as i32, "30003")
    );
    let b = batch_status(&mut client, &id).await.unwrap();
    assert_eq!((b.delivered, b.undelivered, b.awaiting_receipt), (1, 1, 19));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_json_provider_with_a_bearer_token() {
    let (stub, addr) = provider(usize::MAX).await;
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "provider-token\n").unwrap();
    let hook = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, "hook-secret-0123456789\n").unwrap();
    let callback = format!("http://{hook}/generic");
    let gateway = format!("http://{addr}/send?id_field=/data/id&status_callback={callback}");
    let _node = Proc::node(
        &mesh.url(),
        "http-g",
        &[
            "--gateway",
            &gateway,
            "--http-bearer-file",
            token.to_str().unwrap(),
            "--http-rate",
            "20",
            "--http-webhook-listen",
            &hook.to_string(),
            "--http-webhook-secret-file",
            secret.to_str().unwrap(),
            "--http-hmac-secret-file",
            secret.to_str().unwrap(),
        ],
    )
    .unwrap();
    let mut client = mesh.client().await.unwrap();
    let numbers: Vec<String> = (0..40).map(|i| format!("+4477009{i:05}")).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let id = submit(&mut client, batch(&refs, "")).await;
    wait_until(Duration::from_secs(30), "every message to be sent", || {
        let (mut client, id) = (client.clone(), id.clone());
        async move { (batch_status(&mut client, &id).await.ok()?.sent == 40).then_some(()) }
    })
    .await
    .unwrap();
    let m = message_status(&mut client, &format!("{id}.7"))
        .await
        .unwrap();
    assert!(m.provider_ids[0].starts_with("g-"), "{:?}", m.provider_ids);
    let got = stub.got.lock().unwrap().clone();
    assert_eq!(got.len(), 40);
    // 40 requests at 20 a second, after a burst of 20: the last came a second after the first.
    let span = got[39].at.duration_since(got[0].at);
    assert!(
        span >= Duration::from_millis(900),
        "40 requests in {span:?}"
    );
    let one = got
        .iter()
        .find(|g| g.field("message_id") == Some(&*format!("{id}.7")))
        .unwrap();
    assert_eq!(
        (one.path.as_str(), one.field("to")),
        ("/send", Some("+447700900007"))
    );
    assert_eq!(one.field("attempt"), Some("1"));
    // Each request's body is signed with the HMAC secret.
    let want = smsmesh_node::http::webhook::generic_signature(b"hook-secret-0123456789", &one.body);
    assert_eq!(one.signature, want);

    // A signed JSON status callback decides its delivery; a forged one is refused.
    let body = format!(r#"{{"id":"{}","status":"delivered"}}"#, m.provider_ids[0]);
    let post = |signature: String| {
        let (callback, body) = (callback.clone(), body.clone());
        async move {
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
                .arg(format!("X-Smsmesh-Signature: {signature}"))
                .args([
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    &body,
                    &callback,
                ])
                .output()
                .await
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        }
    };
    assert_eq!(post("sha256=00".into()).await, "403");
    let signed =
        smsmesh_node::http::webhook::generic_signature(b"hook-secret-0123456789", body.as_bytes());
    assert_eq!(post(signed).await, "200");
    let m = message_status(&mut client, &format!("{id}.7"))
        .await
        .unwrap();
    assert_eq!(m.state, MessageState::Delivered as i32, "{m:?}");
}

/// A provider with its own API: its field names (a body template), an API
/// key header, success said in the body (`"status":"OK"`, else refused), a
/// 400 that means "try again" and a 500 that means "bad number".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_its_own_field_names_headers_and_answers() {
    let got: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/api/sms",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let key = headers
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let dest = v["destination"].as_str().unwrap_or_default().to_string();
                let n = {
                    let mut all = seen.lock().unwrap();
                    all.push((key.clone(), v.clone()));
                    all.iter()
                        .filter(|(_, x)| x["destination"] == dest.as_str())
                        .count()
                };
                if key != "k-123" {
                    return (StatusCode::FORBIDDEN, "no key".to_string());
                }
                match dest.chars().last() {
                    // Refused in a 200.
                    Some('9') => (
                        StatusCode::OK,
                        r#"{"status":"REJECTED","reason":"blacklisted"}"#.into(),
                    ),
                    // A 400 the provider means as "busy, try again": fine the second time.
                    Some('8') if n == 1 => {
                        (StatusCode::BAD_REQUEST, r#"{"message":"busy"}"#.into())
                    }
                    // A 500 for a number it cannot serve.
                    Some('7') => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"message":"no route"}"#.into(),
                    ),
                    _ => (
                        StatusCode::OK,
                        format!(r#"{{"status":"OK","ref":{{"id":"p-{dest}"}}}}"#),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("body.json");
    std::fs::write(
        &template,
        r#"{"destination": "{{to}}", "content": {"text": "{{body}}"}, "origin": "{{sender}}", "reference": "{{message_id}}"}"#,
    )
    .unwrap();
    let mesh = Mesh::start(CoordinatorConfig {
        retry_base: Duration::from_millis(20),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let gateway = format!("http://{addr}/api/sms?id_field=/ref/id&accept_if=/status=OK");
    let _node = Proc::node(
        &mesh.url(),
        "http-own",
        &[
            "--gateway",
            &gateway,
            "--http-body-template",
            template.to_str().unwrap(),
            "--http-header",
            "X-Api-Key: k-123",
            "--http-temporary-status",
            "400",
            "--http-permanent-status",
            "500",
        ],
    )
    .unwrap();
    let mut client = mesh.client().await.unwrap();
    let numbers = [
        "+14155550100",
        "+14155550108",
        "+14155550109",
        "+14155550107",
    ];
    let mut req = batch(&numbers, "ACME");
    req.messages[0].body = "Say \"hi\"\nbye".into();
    let id = submit(&mut client, req).await;
    let b = wait_ended(&mut client, &id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(b.state, pb::BatchState::Completed as i32, "{b:?}");
    assert_eq!((b.sent, b.failed), (2, 2), "{b:?}");
    let m = |i: u32| {
        let (mut client, id) = (client.clone(), id.clone());
        async move {
            message_status(&mut client, &format!("{id}.{i}"))
                .await
                .unwrap()
        }
    };
    let ok = m(0).await;
    assert_eq!(ok.state, MessageState::Sent as i32);
    let retried = m(1).await;
    assert_eq!(
        (retried.state, retried.attempts),
        (MessageState::Sent as i32, 2),
        "{retried:?}"
    );
    let refused = m(2).await;
    assert_eq!(
        (refused.state, refused.attempts),
        (MessageState::Failed as i32, 1),
        "{refused:?}"
    );
    assert!(refused.last_error.contains("REJECTED"), "{refused:?}");
    let bad = m(3).await;
    assert_eq!(
        (bad.state, bad.attempts),
        (MessageState::Failed as i32, 1),
        "{bad:?}"
    );
    assert!(bad.last_error.contains("no route"), "{bad:?}");
    // The provider got its own field names, the text escaped, and the key.
    let all = got.lock().unwrap().clone();
    let (key, first) = all
        .iter()
        .find(|(_, v)| v["destination"] == "+14155550100")
        .unwrap();
    assert_eq!(key, "k-123");
    assert_eq!(first["content"]["text"], "Say \"hi\"\nbye");
    assert_eq!(first["origin"], "ACME");
    assert_eq!(first["reference"], format!("{id}.0"));
}
