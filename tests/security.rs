//! Who gets in, over real gRPC on 127.0.0.1: bearer tokens (HS256, ES256,
//! RS256) and tenants, per-tenant limits, and node join tokens. Every
//! refusal has the right status and a message that says why, and the
//! coordinator keeps serving afterwards. TLS and what the port survives are
//! in `transport.rs`.

use std::sync::Arc;
use std::time::Duration;

use smsmesh::client::endpoint;
use smsmesh::pb;
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
