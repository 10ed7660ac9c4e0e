//! Who gets in, over real gRPC on 127.0.0.1: bearer tokens and tenants,
//! per-tenant limits, node join tokens, TLS and mutual TLS, and nodes that
//! flood their stream. Every refusal has the right status and a message that
//! says why, and the coordinator keeps serving afterwards.

use std::sync::Arc;
use std::time::Duration;

use smsmesh::client::{ClientTls, endpoint};
use smsmesh::pb::{self, coordinator_client::CoordinatorClient, node_to_coordinator};
use smsmesh_coordinator::Tls;
use smsmesh_coordinator::auth::{ClientAuth, JwtVerifier, TenantLimits, mint_hs256};
use smsmesh_testkit::{Caller, CoordinatorConfig, Mesh, NodeSpec, synthetic};
use tonic::Code;

const LONG: Duration = Duration::from_secs(30);
const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes-0123456789";
const AUD: &str = "smsmesh";

/// A coordinator that checks tokens with `verifier`.
fn verifying(verifier: JwtVerifier) -> CoordinatorConfig {
    CoordinatorConfig {
        client_auth: ClientAuth::Jwt(Arc::new(verifier)),
        ..CoordinatorConfig::default()
    }
}

fn jwt_config() -> CoordinatorConfig {
    verifying(JwtVerifier::hs256(SECRET, AUD).unwrap())
}

fn token(tenant: &str) -> String {
    mint_hs256(SECRET, AUD, None, tenant, "", Duration::from_secs(600)).unwrap()
}

/// A token with these claims, signed with `key` (HS256).
fn signed(claims: serde_json::Value, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, says: &str) -> String {
    let e = r.expect_err("must be refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(says),
        "message {:?} should say {says:?}",
        e.message()
    );
    e.message().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rpcs_need_a_valid_token_and_health_stays_open() {
    let mesh = Mesh::start(jwt_config()).await.unwrap();
    let url = mesh.url();
    let small = || synthetic(10, 1);

    let mut none = Caller::new(&url, None, None).await;
    assert_status(
        none.submit(small()).await,
        Code::Unauthenticated,
        "missing `authorization",
    );
    assert_status(
        none.status("0000000000000001").await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        none.cancel("0000000000000001").await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        none.watch_first("").await,
        Code::Unauthenticated,
        "authorization",
    );

    let t = now();
    let bad_tokens = [
        ("garbage".to_string(), "not valid"),
        (token("acme").replace('.', ""), "not valid"),
        (
            signed(
                serde_json::json!({"tenant":"acme","aud":AUD,"exp":t+600}),
                b"some other secret, thirty-two bytes!",
            ),
            "signature",
        ),
        (
            signed(
                serde_json::json!({"tenant":"acme","aud":AUD,"exp":t-3600}),
                SECRET,
            ),
            "expired",
        ),
        (
            signed(
                serde_json::json!({"tenant":"acme","aud":"billing","exp":t+600}),
                SECRET,
            ),
            "audience",
        ),
        (
            signed(serde_json::json!({"tenant":"acme","aud":AUD}), SECRET),
            "`exp`",
        ),
        (
            signed(serde_json::json!({"aud":AUD,"exp":t+600}), SECRET),
            "`tenant`",
        ),
        (
            signed(
                serde_json::json!({"tenant":"","aud":AUD,"exp":t+600}),
                SECRET,
            ),
            "`tenant`",
        ),
        (
            signed(
                serde_json::json!({"tenant":5,"aud":AUD,"exp":t+600}),
                SECRET,
            ),
            "`tenant`",
        ),
        (
            signed(
                serde_json::json!({"tenant":"acme","aud":AUD,"exp":t+7200,"nbf":t+3600}),
                SECRET,
            ),
            "not valid yet",
        ),
        (
            {
                let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
                h.crit = Some(vec!["x-must-understand".into()]);
                jsonwebtoken::encode(
                    &h,
                    &serde_json::json!({"tenant":"acme","aud":AUD,"exp":t+600}),
                    &jsonwebtoken::EncodingKey::from_secret(SECRET),
                )
                .unwrap()
            },
            "critical",
        ),
    ];
    for (tok, why) in bad_tokens {
        let mut c = Caller::new(&url, None, Some(tok)).await;
        assert_status(c.submit(small()).await, Code::Unauthenticated, why);
    }
    // "Basic" and other schemes are not bearer tokens.
    let mut basic = Caller::new(&url, None, None).await;
    let mut r = tonic::Request::new(small());
    r.metadata_mut()
        .insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
    assert_status(
        basic.client.submit_batch(r).await,
        Code::Unauthenticated,
        "Bearer",
    );

    // Health and reflection need no token.
    let channel = endpoint(&url, None).unwrap().connect().await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        answers.message().await.unwrap().is_some(),
        "reflection answers"
    );

    // And a good token works.
    let mut good = Caller::new(&url, None, Some(token("acme"))).await;
    let id = good.submit(small()).await.unwrap();
    assert_eq!(good.status(&id).await.unwrap().tenant, "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_and_cancels_only_its_own_batches() {
    let mesh = Mesh::start(jwt_config()).await.unwrap();
    let url = mesh.url();
    let mut acme = Caller::new(&url, None, Some(token("acme"))).await;
    let mut globex = Caller::new(&url, None, Some(token("globex"))).await;
    // No node: the batch stays running.
    let id = acme.submit(synthetic(100, 1)).await.unwrap();

    // To globex, acme's batch looks exactly like one that does not exist.
    let missing = "00000000000000ff";
    let theirs = assert_status(globex.status(&id).await, Code::NotFound, &id);
    let nobody = assert_status(globex.status(missing).await, Code::NotFound, missing);
    assert_eq!(theirs.replace(&id, "X"), nobody.replace(missing, "X"));
    assert_status(
        globex.message(&format!("{id}.0")).await,
        Code::NotFound,
        &id,
    );
    assert_status(globex.cancel(&id).await, Code::NotFound, &id);
    assert_status(globex.watch_first(&id).await, Code::NotFound, &id);
    let all = globex.watch_first("").await.unwrap();
    assert!(
        all.batches.iter().all(|b| b.batch_id != id),
        "globex does not see it"
    );

    // acme does, and its batch was not touched by globex's cancel.
    let b = acme.status(&id).await.unwrap();
    assert_eq!(b.state, pb::BatchState::Running as i32);
    let all = acme.watch_first("").await.unwrap();
    assert!(all.batches.iter().any(|b| b.batch_id == id));
    // ListBatches is per tenant too.
    for (caller, sees) in [(&mut acme, true), (&mut globex, false)] {
        let r = caller.req(pb::ListBatchesRequest::default());
        let listed = caller.client.list_batches(r).await.unwrap().into_inner();
        assert_eq!(listed.batches.iter().any(|b| b.batch_id == id), sees);
    }
    assert_eq!(
        acme.message(&format!("{id}.0")).await.unwrap().state,
        pb::MessageState::Pending as i32
    );
    let c = acme.cancel(&id).await.unwrap();
    assert_eq!(c.state, pb::BatchState::Cancelled as i32);

    // Idempotency keys are per tenant: the same key makes two batches.
    let keyed = |k: &str| pb::SubmitBatchRequest {
        idempotency_key: k.into(),
        ..synthetic(5, 2)
    };
    let a1 = acme.submit(keyed("k1")).await.unwrap();
    let a2 = acme.submit(keyed("k1")).await.unwrap();
    let g1 = globex.submit(keyed("k1")).await.unwrap();
    assert_eq!(a1, a2, "same tenant, same key: same batch");
    assert_ne!(
        a1, g1,
        "another tenant's key never returns someone else's batch"
    );
    assert_eq!(globex.status(&g1).await.unwrap().tenant, "globex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_batches_survive_a_restart_with_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..jwt_config()
    };
    let mesh = Mesh::start(config.clone()).await.unwrap();
    let addr = mesh.addr;
    let mut acme = Caller::new(&mesh.url(), None, Some(token("acme"))).await;
    let id = acme.submit(synthetic(50, 3)).await.unwrap();
    mesh.stop().await.unwrap();

    let mesh = Mesh::start_on(addr, config).await.unwrap();
    let mut acme = Caller::new(&mesh.url(), None, Some(token("acme"))).await;
    let mut globex = Caller::new(&mesh.url(), None, Some(token("globex"))).await;
    assert_eq!(acme.status(&id).await.unwrap().tenant, "acme");
    assert_status(globex.status(&id).await, Code::NotFound, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_from_a_public_key() {
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let verifier = JwtVerifier::public_key(
        key.public_key_pem().as_bytes(),
        jsonwebtoken::Algorithm::ES256,
        AUD,
    )
    .unwrap();
    let mesh = Mesh::start(verifying(verifier)).await.unwrap();
    let claims = serde_json::json!({"tenant": "acme", "aud": AUD, "exp": now() + 600});
    let es = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let mut good = Caller::new(&mesh.url(), None, Some(es)).await;
    good.submit(synthetic(5, 1)).await.unwrap();
    // An HS256 token (signed with the public key as a secret: an old trick) is refused.
    let forged = signed(claims, key.public_key_pem().as_bytes());
    let mut bad = Caller::new(&mesh.url(), None, Some(forged)).await;
    assert_status(
        bad.submit(synthetic(5, 1)).await,
        Code::Unauthenticated,
        "algorithm",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_per_tenant_with_a_retry_hint() {
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
    let url = mesh.url();
    let mut acme = Caller::new(&url, None, Some(token("acme"))).await;
    let mut globex = Caller::new(&url, None, Some(token("globex"))).await;

    let t0 = std::time::Instant::now();
    acme.submit(synthetic(800, 1)).await.unwrap();
    let e = acme.submit(synthetic(800, 2)).await.unwrap_err();
    let elapsed = t0.elapsed();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("over its rate of 100 messages/s"),
        "{}",
        e.message()
    );
    use tonic_types::StatusExt;
    let retry = e.get_details_retry_info().expect("a RetryInfo detail");
    let wait = retry.retry_delay.expect("a delay");
    // 600 tokens were missing at 100/s: 6 s, less what refilled since the first submit.
    let six = Duration::from_secs(6);
    assert!(
        wait <= six && wait + elapsed + Duration::from_millis(10) >= six,
        "expected 6 s minus up to {elapsed:?}, got {wait:?}"
    );
    assert_status(
        acme.submit(synthetic(1001, 3)).await,
        Code::ResourceExhausted,
        "larger than tenant acme's burst of 1000",
    );
    // globex has its own bucket.
    globex.submit(synthetic(900, 4)).await.unwrap();

    // A refused batch is not accepted: nothing of it exists.
    let all = acme.watch_first("").await.unwrap();
    assert_eq!(all.batches.len(), 1, "only the first batch of acme exists");
    assert_eq!(all.batches[0].total, 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_cap_frees_up_as_messages_finish() {
    let mesh = Mesh::start(CoordinatorConfig {
        tenant_limits: TenantLimits {
            rate: None,
            burst: 0,
            max_pending: Some(500),
        },
        ..jwt_config()
    })
    .await
    .unwrap();
    let mut acme = Caller::new(&mesh.url(), None, Some(token("acme"))).await;
    let keyed = pb::SubmitBatchRequest {
        idempotency_key: "first".into(),
        ..synthetic(400, 1)
    };
    let id = acme.submit(keyed.clone()).await.unwrap();
    // A repeat of the accepted request still gets its batch, though at the cap.
    assert_eq!(acme.submit(keyed).await.unwrap(), id);
    let refused = acme.submit(synthetic(200, 2)).await;
    {
        use tonic_types::StatusExt;
        let e = refused.as_ref().unwrap_err();
        let retry = e.get_details_retry_info().expect("a RetryInfo detail");
        assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));
    }
    assert_status(
        refused,
        Code::ResourceExhausted,
        "tenant acme has 400 messages not finished yet; 200 more would exceed its cap of 500",
    );
    let _node = mesh.node(NodeSpec::new("n"));
    acme.wait_ended(&id).await;
    acme.submit(synthetic(200, 2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_only_with_the_join_token() {
    let mesh = Mesh::start(CoordinatorConfig {
        node_token: Some("the-node-join-token".into()),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    for (spec, why) in [
        (NodeSpec::new("no-token"), "requires a join token"),
        (
            NodeSpec::new("wrong").join_token("the-node-join-tokex"),
            "wrong join token",
        ),
        (
            NodeSpec::new("short").join_token("the-node"),
            "wrong join token",
        ),
    ] {
        let node = mesh.node(spec);
        let ended = node.ended(LONG).await.unwrap();
        let e = ended.expect_err("refused");
        assert!(e.to_string().contains(why), "{e}");
    }
    let mut client = Caller::new(&mesh.url(), None, None).await;
    let id = client.submit(synthetic(100, 1)).await.unwrap();
    let _good = mesh.node(NodeSpec::new("good").join_token("the-node-join-token"));
    let b = client.wait_ended(&id).await;
    assert_eq!(b.sent, 100);
    assert!(
        b.nodes.iter().all(|n| n.node == "good"),
        "only the good node worked: {b:?}"
    );
}

/// A CA, and certificates it signs.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Pki { ca }
    }

    /// (certificate PEM, key PEM) for these names.
    fn issue(&self, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    }

    fn ca_pem(&self) -> Vec<u8> {
        self.ca.pem().into_bytes()
    }
}

fn trust(pki: &Pki) -> ClientTls {
    ClientTls {
        ca_pem: Some(pki.ca_pem()),
        ..ClientTls::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_verified_clients_and_refuses_plaintext() {
    let pki = Pki::new("smsmesh test CA");
    let (cert_pem, key_pem) = pki.issue(&["localhost", "127.0.0.1"]);
    let mesh = Mesh::start(CoordinatorConfig {
        tls: Some(Tls {
            cert_pem,
            key_pem,
            client_ca_pem: None,
        }),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    assert!(mesh.url().starts_with("https://"));

    // A node and a client over TLS.
    let _node = mesh.node(NodeSpec::new("tls-node").tls(trust(&pki)));
    let mut client = Caller::new(&mesh.url(), Some(&trust(&pki)), None).await;
    let id = client.submit(synthetic(200, 1)).await.unwrap();
    assert_eq!(client.wait_ended(&id).await.sent, 200);

    // Plaintext to the TLS port fails; so does TLS trusting another CA.
    let plain = format!("http://{}", mesh.addr);
    let plain_client = endpoint(&plain, None).unwrap().connect().await;
    let refused = match plain_client {
        Err(_) => true,
        Ok(ch) => CoordinatorClient::new(ch)
            .submit_batch(synthetic(1, 1))
            .await
            .is_err(),
    };
    assert!(refused, "plaintext gets nowhere");
    let other = Pki::new("another CA");
    let wrong_ca = endpoint(&mesh.url(), Some(&trust(&other)))
        .unwrap()
        .connect()
        .await;
    assert!(
        wrong_ca.is_err(),
        "a server certificate from an untrusted CA is refused"
    );
    // A node trusting another CA ends, naming the cause.
    let lost = mesh.node(NodeSpec::new("other-ca").tls(trust(&other)));
    let e = lost.ended(LONG).await.unwrap().expect_err("refused");
    assert!(
        e.to_string()
            .contains("the coordinator's certificate is not accepted"),
        "{e}"
    );
    // Still serving.
    client.status(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_nodes_with_a_certificate_from_the_ca() {
    let pki = Pki::new("smsmesh test CA");
    let (cert_pem, key_pem) = pki.issue(&["localhost", "127.0.0.1"]);
    let mesh = Mesh::start(CoordinatorConfig {
        tls: Some(Tls {
            cert_pem,
            key_pem,
            client_ca_pem: Some(pki.ca_pem()),
        }),
        require_node_cert: true,
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    // No client certificate: the node is refused, clearly.
    let bare = mesh.node(NodeSpec::new("bare").tls(trust(&pki)));
    let e = bare.ended(LONG).await.unwrap().expect_err("refused");
    assert!(e.to_string().contains("client certificate"), "{e}");

    // A certificate from another CA: TLS refuses it, and the node ends
    // saying so (retrying cannot fix it).
    let rogue_pki = Pki::new("rogue CA");
    let rogue_id = rogue_pki.issue(&["rogue"]);
    let rogue = mesh.node(NodeSpec::new("rogue").tls(ClientTls {
        identity: Some(rogue_id),
        ..trust(&pki)
    }));
    let rogue_sessions = rogue.stats.clone();
    let e = rogue.ended(LONG).await.unwrap().expect_err("refused");
    assert!(
        e.to_string()
            .contains("the coordinator refused this node's certificate"),
        "{e}"
    );

    // A certificate from the CA: joins and works. Clients need none (they have tokens).
    let good = mesh.node(NodeSpec::new("good").tls(ClientTls {
        identity: Some(pki.issue(&["good-node"])),
        ..trust(&pki)
    }));
    let mut client = Caller::new(&mesh.url(), Some(&trust(&pki)), None).await;
    let id = client.submit(synthetic(300, 1)).await.unwrap();
    let b = client.wait_ended(&id).await;
    assert_eq!(b.sent, 300);
    assert!(b.nodes.iter().all(|n| n.node == "good"), "{b:?}");
    assert_eq!(
        rogue_sessions
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(
        good.stats
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_flooding_its_stream_is_dropped_and_its_jobs_go_elsewhere() {
    let mesh = Mesh::start(CoordinatorConfig {
        node_max_frames_per_sec: 50,
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let mut client = Caller::new(&mesh.url(), None, None).await;
    let id = client.submit(synthetic(200, 1)).await.unwrap();

    // A hand-made node: Hello, a grant, then heartbeats as fast as it can.
    let channel = endpoint(&mesh.url(), None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut link = pb::node_link_client::NodeLinkClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let up = |u| pb::NodeToCoordinator { update: Some(u) };
    tx.send(up(node_to_coordinator::Update::Hello(pb::Hello {
        name: "flood".into(),
        instance_id: 1,
        concurrency: 100,
        gateway: "none".into(),
        ..Default::default()
    })))
    .await
    .unwrap();
    tx.send(up(node_to_coordinator::Update::Grant(pb::Grant {
        credits: 100,
    })))
    .await
    .unwrap();
    let mut inbound = link
        .join(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Hold some jobs first.
    loop {
        let m = inbound.message().await.unwrap().expect("a frame");
        if let Some(pb::coordinator_to_node::Update::Jobs(j)) = m.update {
            assert!(!j.jobs.is_empty());
            break;
        }
    }
    let flood = tokio::spawn(async move {
        while tx
            .send(up(node_to_coordinator::Update::Heartbeat(pb::Heartbeat {})))
            .await
            .is_ok()
        {}
    });
    let end = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue, // more jobs
            Ok(None) => panic!("stream ended without a status"),
            Err(s) => break s,
        }
    };
    flood.abort();
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(
        end.message().contains("frames a second"),
        "{}",
        end.message()
    );

    // The jobs it held go to a well-behaved node; every message is sent once.
    let _good = mesh.node(NodeSpec::new("good"));
    let b = client.wait_ended(&id).await;
    assert_eq!(b.sent, 200);
    assert!(b.requeued > 0, "the flooder's jobs were requeued: {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_and_oversized_requests_do_not_stop_the_coordinator() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start(CoordinatorConfig {
        max_request_bytes: 64 * 1024,
        max_messages_per_request: 100,
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    // Not HTTP/2 at all, and a truncated HTTP/2 preface.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0u8, 1, 2, 3, 255, 254, 253][..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\xff\xff\xff\xff"[..],
    ] {
        let mut s = tokio::net::TcpStream::connect(mesh.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let _ = tokio::time::timeout(LONG, s.read(&mut buf)).await;
    }
    let mut client = Caller::new(&mesh.url(), None, None).await;
    let big = pb::SubmitBatchRequest {
        messages: vec![
            pb::SmsMessage {
                to: "+14155550100".into(),
                body: "x".repeat(150),
                client_ref: String::new(),
                ..Default::default()
            };
            101
        ],
        ..Default::default()
    };
    assert_status(
        client.submit(big.clone()).await,
        Code::InvalidArgument,
        "--max-messages-per-request",
    );
    let huge = pb::SubmitBatchRequest {
        messages: vec![big.messages[0].clone(); 1000],
        ..Default::default()
    };
    let e = client.submit(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // Still serving.
    let id = client.submit(synthetic(10, 1)).await.unwrap();
    client.status(&id).await.unwrap();
}

/// Runs a program to completion and returns (exit code, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(smsmesh_testkit::bin(program))
        .args(args)
        .env_remove("SMSMESH_INSECURE_NO_AUTH")
        .env_remove("SMSMESH_PLAINTEXT")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn smscoord_makes_you_choose_authentication_and_transport() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(
        &secret,
        "0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "0123456789abcdef01").unwrap();
    let s = secret.to_str().unwrap();
    let base = ["--listen", "127.0.0.1:0", "--in-memory"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "choose how clients authenticate"),
        (
            vec!["--insecure-no-auth"],
            "choose TLS (--tls-cert FILE --tls-key FILE) or --plaintext",
        ),
        (
            vec!["--jwt-secret-file", s, "--plaintext"],
            "nodes must authenticate too",
        ),
        (
            vec![
                "--jwt-secret-file",
                short.to_str().unwrap(),
                "--plaintext",
                "--insecure-no-auth",
            ],
            "use at least 32 random bytes",
        ),
        (
            vec!["--jwt-secret-file", s, "--insecure-no-auth", "--plaintext"],
            "contradicts",
        ),
        (
            vec!["--jwt-secret-file", "/nonexistent/secret", "--plaintext"],
            "cannot read JWT secret /nonexistent/secret",
        ),
        (
            vec![
                "--insecure-no-auth",
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
            ],
            "cannot read TLS certificate /nonexistent/c.pem",
        ),
    ];
    for (extra, says) in cases {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let (code, _, err) = run("smscoord", &args);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
    }
    // A minted token verifies with the same secret.
    let (code, out, err) = run(
        "smscoord",
        &["--jwt-secret-file", s, "--mint-token", "acme"],
    );
    assert_eq!(code, 0, "{err}");
    let verifier = JwtVerifier::hs256(
        std::fs::read_to_string(&secret).unwrap().trim().as_bytes(),
        AUD,
    )
    .unwrap();
    assert_eq!(verifier.verify(out.trim()).unwrap().as_str(), "acme");
}

/// Reads `smscoord listening on ADDR` from a child's stdout.
fn listening(child: &mut std::process::Child) -> std::net::SocketAddr {
    smsmesh_testkit::listening_addr(child).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_programs_with_tokens_and_tls_as_the_readme_shows() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let pki = Pki::new("smsmesh dev CA");
    let (cert, key) = pki.issue(&["localhost", "127.0.0.1"]);
    std::fs::write(path("ca.pem"), pki.ca_pem()).unwrap();
    std::fs::write(path("coord.pem"), cert).unwrap();
    std::fs::write(path("coord.key"), key).unwrap();
    std::fs::write(
        path("jwt.secret"),
        "b7c1e0f2a9d84c3e9f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f80910\n",
    )
    .unwrap();
    std::fs::write(path("node.token"), "4f1e2d3c4b5a69788796a5b4c3d2e1f0\n").unwrap();

    let mut coord = std::process::Command::new(smsmesh_testkit::bin("smscoord"))
        .args(["--listen", "127.0.0.1:0", "--in-memory"])
        .args(["--jwt-secret-file", &path("jwt.secret")])
        .args(["--node-token-file", &path("node.token")])
        .args([
            "--tls-cert",
            &path("coord.pem"),
            "--tls-key",
            &path("coord.key"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening(&mut coord);
    let _coord = smsmesh_testkit::Proc { child: coord };
    let url = format!("https://{addr}");
    let _node = smsmesh_testkit::Proc {
        child: std::process::Command::new(smsmesh_testkit::bin("smsnode"))
            .args(["--coordinator", &url, "--name", "tls-node"])
            .args([
                "--join-token-file",
                &path("node.token"),
                "--tls-ca",
                &path("ca.pem"),
            ])
            .args(["--mean-latency", "1ms"])
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    };
    let (code, token, err) = run(
        "smscoord",
        &[
            "--jwt-secret-file",
            &path("jwt.secret"),
            "--mint-token",
            "acme",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let tls = ClientTls {
        ca_pem: Some(pki.ca_pem()),
        ..ClientTls::default()
    };
    let mut acme = Caller::new(&url, Some(&tls), Some(token.trim().to_string())).await;
    let id = acme.submit(synthetic(500, 9)).await.unwrap();

    // smsmon with the token over TLS follows the batch to its end.
    let mon = tokio::process::Command::new(smsmesh_testkit::bin("smsmon"))
        .args([
            "--coordinator",
            &url,
            "--batch",
            &id,
            "--plain",
            "--interval",
            "100ms",
        ])
        .args(["--tls-ca", &path("ca.pem")])
        .env("SMSMESH_TOKEN", token.trim())
        .output();
    let out = tokio::time::timeout(LONG, mon).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("COMPLETED") || stdout.contains("completed"),
        "{stdout}"
    );
    assert_eq!(acme.wait_ended(&id).await.sent, 500);

    // The health check (what the Kubernetes probes run) speaks TLS to a TLS coordinator.
    let addr_s = addr.to_string();
    let tls_args = [
        "--tls-cert",
        &path("coord.pem"),
        "--tls-key",
        &path("coord.key"),
    ];
    let mut hc: Vec<&str> = vec!["--listen", &addr_s, "--health-check"];
    hc.extend(tls_args);
    let ca = path("ca.pem");
    let (code, _, err) = run("smscoord", &[&hc[..], &["--tls-ca", &ca]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run("smscoord", &hc);
    assert_eq!(code, 1, "no CA to trust: unhealthy, saying why");
    assert!(err.contains("--tls-ca"), "{err}");

    // smsmon without a token is refused, clearly.
    let (code, _, err) = run(
        "smsmon",
        &[
            "--coordinator",
            &url,
            "--batch",
            &id,
            "--plain",
            "--tls-ca",
            &path("ca.pem"),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("Unauthenticated") || err.contains("authorization"),
        "{err}"
    );

    // A node with a wrong token exits with the reason instead of retrying forever.
    std::fs::write(path("wrong.token"), "not-the-node-token-at-all\n").unwrap();
    let (code, _, err) = run(
        "smsnode",
        &[
            "--coordinator",
            &url,
            "--name",
            "intruder",
            "--join-token-file",
            &path("wrong.token"),
            "--tls-ca",
            &path("ca.pem"),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("wrong join token"), "{err}");

    // So does a node that trusts another CA than the one of the coordinator's certificate.
    std::fs::write(path("other-ca.pem"), Pki::new("another CA").ca_pem()).unwrap();
    let (code, _, err) = run(
        "smsnode",
        &[
            "--coordinator",
            &url,
            "--name",
            "lost",
            "--join-token-file",
            &path("node.token"),
            "--tls-ca",
            &path("other-ca.pem"),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("the coordinator's certificate is not accepted"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_from_a_public_key() {
    // An RSA key pair from openssl (ring, which rcgen uses, cannot make RSA keys).
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rsa.key");
    let public = dir.path().join("rsa.pub");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .expect("openssl is installed")
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl made the key pair");
    let verifier = JwtVerifier::public_key(
        &std::fs::read(&public).unwrap(),
        jsonwebtoken::Algorithm::RS256,
        AUD,
    )
    .unwrap();
    let mesh = Mesh::start(verifying(verifier)).await.unwrap();
    let rs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({"tenant": "acme", "aud": AUD, "exp": now() + 600}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap(),
    )
    .unwrap();
    let mut good = Caller::new(&mesh.url(), None, Some(rs)).await;
    let id = good.submit(synthetic(5, 1)).await.unwrap();
    assert_eq!(good.status(&id).await.unwrap().tenant, "acme");
    // The same claims signed with HS256 are refused: the algorithm is pinned.
    let hs = token("acme");
    let mut bad = Caller::new(&mesh.url(), None, Some(hs)).await;
    assert_status(
        bad.submit(synthetic(5, 1)).await,
        Code::Unauthenticated,
        "algorithm",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_open_are_closed() {
    let mesh = Mesh::start(CoordinatorConfig {
        handshake_timeout: Duration::from_millis(300),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // 50 connections that say nothing, and 10 that send one byte of the preface and stall.
    let mut conns = Vec::new();
    for i in 0..60 {
        let mut s = tokio::net::TcpStream::connect(mesh.addr).await.unwrap();
        if i >= 50 {
            s.write_all(b"P").await.unwrap();
        }
        conns.push(s);
    }
    for mut s in conns {
        let closed = tokio::time::timeout(LONG, async {
            let mut buf = [0u8; 256];
            // The server's own preface may come first; then the end.
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the coordinator closes a connection that does not open"
        );
    }
    // A client that opens its connection properly still gets through.
    let mut plain = mesh.client().await.unwrap();
    plain.submit_batch(synthetic(1, 1)).await.unwrap();
}
