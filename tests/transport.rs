//! The coordinator's transport, over real sockets on 127.0.0.1: TLS and
//! mutual TLS, the programs' choice of authentication and transport as the
//! README shows them, and a port that keeps serving through nodes flooding
//! their stream, garbage, oversized requests and connections that never
//! open.

use std::time::Duration;

use smsmesh::client::{ClientTls, endpoint};
use smsmesh::pb::{self, coordinator_client::CoordinatorClient, node_to_coordinator};
use smsmesh_coordinator::Tls;
use smsmesh_coordinator::auth::JwtVerifier;
use smsmesh_testkit::{Caller, CoordinatorConfig, Mesh, NodeSpec, synthetic};
use tonic::Code;

const LONG: Duration = Duration::from_secs(30);
const AUD: &str = "smsmesh";

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

/// A coordinator serving TLS with a certificate from `pki` for localhost;
/// with `mutual`, nodes must show one from `pki` too.
fn over_tls(pki: &Pki, mutual: bool) -> CoordinatorConfig {
    let (cert_pem, key_pem) = pki.issue(&["localhost", "127.0.0.1"]);
    CoordinatorConfig {
        tls: Some(Tls {
            cert_pem,
            key_pem,
            client_ca_pem: mutual.then(|| pki.ca_pem()),
        }),
        require_node_cert: mutual,
        ..CoordinatorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_verified_clients_and_refuses_plaintext() {
    let pki = Pki::new("smsmesh test CA");
    let mesh = Mesh::start(over_tls(&pki, false)).await.unwrap();
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
    let mesh = Mesh::start(over_tls(&pki, true)).await.unwrap();
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
    let e = client
        .submit(big.clone())
        .await
        .expect_err("101 messages must be refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("--max-messages-per-request"), "{e:?}");
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
