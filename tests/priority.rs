//! Classes of traffic, end to end over real sockets: an emergency batch goes
//! ahead of bulk already running (also of the bulk jobs a node holds queued,
//! of bulk retries waiting, and after a coordinator restart); tenants share a
//! class by weight, not by how many batches they run; EMERGENCY and
//! SetClassPaused need their scopes; a paused class sends nothing until it is
//! resumed (also through `smsmon pause` / `smsmon resume`).

use std::sync::Arc;
use std::time::Duration;

use smsmesh::pb::{self, coordinator_client::CoordinatorClient};
use smsmesh_coordinator::auth::{ClientAuth, JwtVerifier, mint_hs256};
use smsmesh_testkit::{
    Caller, CoordinatorConfig, Mesh, Node, NodeSpec, Proc, Recorder, batch_status, client_at,
    synthetic, wait_ended, wait_sent, wait_until,
};
use tonic::Code;
use tonic::transport::Channel;

const LONG: Duration = Duration::from_secs(60);
const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes-0123456789";
const AUD: &str = "smsmesh";

type Client = CoordinatorClient<Channel>;

fn at(class: pb::Priority, mut req: pb::SubmitBatchRequest) -> pb::SubmitBatchRequest {
    req.priority = class as i32;
    req
}

async fn submit(client: &mut Client, req: pb::SubmitBatchRequest) -> String {
    client
        .submit_batch(req)
        .await
        .unwrap()
        .into_inner()
        .batch_id
}

fn batch_num(id: &str) -> u64 {
    u64::from_str_radix(id, 16).unwrap()
}

/// Attempts of `bulk` that started after the first `from` sends started and
/// before the last attempt of `urgent` (the last first attempt, with
/// `first_only`) started, once all of `urgent` is recorded.
fn bulk_started_before_urgent(
    r: &Recorder,
    from: u64,
    bulk: &str,
    urgent: &str,
    first_only: bool,
) -> usize {
    let (bulk, urgent) = (batch_num(bulk), batch_num(urgent));
    let attempts = r.attempts();
    let last = attempts
        .iter()
        .filter(|a| a.batch == urgent && (!first_only || a.attempt == 1))
        .map(|a| a.started)
        .max()
        .expect("the urgent batch was sent");
    attempts
        .iter()
        .filter(|a| a.batch == bulk && a.started >= from && a.started < last)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_batch_overtakes_running_bulk_and_the_jobs_a_node_holds() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let recorder = Recorder::default();
    // 4 sends at a time, 16 more queued at the node: all bulk when the alert comes.
    let (concurrency, queued) = (4, 16);
    let _node = mesh.node(
        NodeSpec::new("n1")
            .concurrency(concurrency)
            .prefetch(queued)
            .prefetch_max(queued)
            .latency(Duration::from_millis(40))
            .record(&recorder),
    );
    let mut client = mesh.client().await.unwrap();
    let bulk = submit(&mut client, at(pb::Priority::Bulk, synthetic(5_000, 1))).await;
    wait_sent(&client, &bulk, 20).await;
    let from = recorder.started();
    let urgent = submit(&mut client, at(pb::Priority::Emergency, synthetic(40, 2))).await;
    let s = wait_ended(&mut client, &urgent, LONG).await.unwrap();
    assert_eq!(s.sent, 40);
    assert_eq!(s.priority, pb::Priority::Emergency as i32);
    // Bulk starts only in the slots that free before the alert's first jobs
    // reach the node: not the 16 bulk jobs the node had queued, and none
    // between the alert's messages. (Turns between batches and a
    // first-in-first-out node queue let about 60 through; a first-in-first-out
    // node queue alone, the 16 queued.)
    let overtaken = bulk_started_before_urgent(&recorder, from, &bulk, &urgent, false);
    assert!(
        overtaken <= 2 * concurrency as usize,
        "{overtaken} bulk sends started before the last emergency one"
    );
    let b = batch_status(&mut client, &bulk).await.unwrap();
    assert_eq!(b.priority, pb::Priority::Bulk as i32);
    assert!(b.pending > 4_000, "bulk still has most of its work: {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_goes_first_with_bulk_retries_waiting_and_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--retry-base",
        "20ms",
        "--retry-max",
        "40ms",
        "--resume-grace",
        "300ms",
    ];
    let (mut coord, addr) = Proc::coordinator(dir.path(), &args).unwrap();
    let url = format!("http://{addr}");
    let recorder = Recorder::default();
    // Half of all sends fail, so bulk retries wait in backoff all along.
    let _node = Node::start(
        &url,
        NodeSpec::new("n1")
            .concurrency(4)
            .prefetch(4)
            .prefetch_max(4)
            .latency(Duration::from_millis(30))
            .failure_rate(0.5)
            .record(&recorder),
    );
    let mut client = client_at(addr).await;
    let bulk = submit(&mut client, at(pb::Priority::Bulk, synthetic(3_000, 3))).await;
    wait_sent(&client, &bulk, 10).await;
    // The coordinator dies in the middle of the bulk batch and comes back on its store.
    coord.kill9();
    let (_coord, _) = Proc::coordinator_on(addr, dir.path(), &args).unwrap();
    let mut client = client_at(addr).await;
    let s = batch_status(&mut client, &bulk).await.unwrap();
    assert_eq!(s.priority, pb::Priority::Bulk as i32, "the class is stored");
    wait_until(LONG, "bulk under way again, with retries waiting", || {
        let mut client = client.clone();
        let bulk = bulk.clone();
        async move {
            let s = batch_status(&mut client, &bulk).await.ok()?;
            (s.retry_wait > 0 && s.in_flight > 0).then_some(())
        }
    })
    .await
    .unwrap();
    let from = recorder.started();
    let mut urgent_req = at(pb::Priority::Emergency, synthetic(30, 4));
    // At a 50% failure rate, 10 attempts left one of 30 messages failed in about
    // 3% of runs (0.5^10 each; a CI run hit it): 20, the most allowed, makes
    // that about 1 in 35,000.
    urgent_req.max_attempts = Some(20);
    let urgent = submit(&mut client, urgent_req).await;
    let s = wait_ended(&mut client, &urgent, LONG).await.unwrap();
    assert_eq!(s.sent, 30, "{s:?}");
    // Every first attempt of the alert starts before any bulk but a few in
    // the slots that free before its first jobs reach the node (at most the
    // 4 it holds queued). While its own retries wait in backoff, bulk goes
    // on: only ready work comes first. (Turns between batches let 39 through.)
    let overtaken = bulk_started_before_urgent(&recorder, from, &bulk, &urgent, true);
    assert!(
        overtaken <= 8,
        "{overtaken} bulk attempts started before the alert's last first attempt"
    );
}

fn jwt_config(weights: &[(&str, u32)]) -> CoordinatorConfig {
    CoordinatorConfig {
        client_auth: ClientAuth::Jwt(Arc::new(JwtVerifier::hs256(SECRET, AUD).unwrap())),
        tenant_weights: weights.iter().map(|(t, w)| (t.to_string(), *w)).collect(),
        ..CoordinatorConfig::default()
    }
}

/// A client of `mesh` acting for `tenant`, with a token of `scope`.
async fn caller(mesh: &Mesh, tenant: &str, scope: &str) -> Caller {
    let token = mint_hs256(SECRET, AUD, None, tenant, scope, Duration::from_secs(600)).unwrap();
    Caller::new(&mesh.url(), None, Some(token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_a_class_by_weight_not_by_their_number_of_batches() {
    for (weights, share_of_big) in [(vec![], 0.5), (vec![("small", 3)], 0.25)] {
        let mesh = Mesh::start(jwt_config(&weights)).await.unwrap();
        let recorder = Recorder::default();
        let mut big = caller(&mesh, "big", "").await;
        let mut small = caller(&mesh, "small", "").await;
        // Accepted before any node is there, so both start together.
        for seed in 0..4 {
            big.submit(synthetic(3_000, seed)).await.unwrap();
        }
        let little = small.submit(synthetic(600, 9)).await.unwrap();
        let _node = mesh.node(
            NodeSpec::new("n1")
                .concurrency(8)
                .prefetch(8)
                .prefetch_max(8)
                .latency(Duration::from_millis(2))
                .record(&recorder),
        );
        let done = wait_until(LONG, "the small tenant's batch", || {
            let (mut small, little) = (small.clone(), little.clone());
            async move {
                let s = small.status(&little).await.ok()?;
                (s.state == pb::BatchState::Completed as i32).then_some(s)
            }
        })
        .await
        .unwrap();
        assert_eq!(done.sent, 600);
        let attempts = recorder.attempts();
        let last = attempts
            .iter()
            .rposition(|a| a.batch == batch_num(&little))
            .unwrap();
        let big_sent = attempts[..last]
            .iter()
            .filter(|a| a.batch != batch_num(&little))
            .count();
        // By batch the small tenant would get a fifth; by tenant, its weight's share.
        let want = 600.0 * share_of_big / (1.0 - share_of_big);
        assert!(
            (big_sent as f64) < want * 1.25 + 64.0 && (big_sent as f64) > want * 0.75 - 64.0,
            "weights {weights:?}: the big tenant sent {big_sent} while the small one sent 600 (about {want:.0} expected)"
        );
        mesh.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_and_pausing_need_their_scopes() {
    let mesh = Mesh::start(jwt_config(&[])).await.unwrap();
    let mut plain = caller(&mesh, "acme", "").await;
    let e = plain
        .submit(at(pb::Priority::Emergency, synthetic(5, 1)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("smsmesh:emergency"), "{}", e.message());
    let e = plain
        .set_paused(pb::Priority::Bulk, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("smsmesh:operator"), "{}", e.message());
    // An unknown class is a bad request, whoever asks.
    let e = plain
        .submit(pb::SubmitBatchRequest {
            priority: 9,
            ..synthetic(5, 1)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("priority: 9 is not a priority"),
        "{}",
        e.message()
    );

    let mut alerts = caller(&mesh, "civil-defence", "openid smsmesh:emergency").await;
    let id = alerts
        .submit(at(pb::Priority::Emergency, synthetic(5, 1)))
        .await
        .unwrap();
    let s = alerts.status(&id).await.unwrap();
    assert_eq!(s.priority, pb::Priority::Emergency as i32);
    let mut ops = caller(&mesh, "ops", "smsmesh:operator").await;
    let e = ops
        .set_paused(pb::Priority::Emergency, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("never paused"), "{}", e.message());
    let r = ops.set_paused(pb::Priority::Bulk, true).await.unwrap();
    assert_eq!(r.paused, vec![pb::Priority::Bulk as i32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_class_waits_until_smsmon_resumes_it() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut client = mesh.client().await.unwrap();
    let smsmon = |args: &[&str]| {
        let out = std::process::Command::new(smsmesh_testkit::bin("smsmon"))
            .args(["--coordinator", &mesh.url()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, said) = smsmon(&["pause", "bulk"]);
    assert!(ok, "{said}");
    assert!(said.contains("bulk paused; paused now: bulk"), "{said}");
    let (ok, said) = smsmon(&["pause", "emergency"]);
    assert!(!ok && said.contains("never paused"), "{said}");

    let _node = mesh.node(NodeSpec::new("n1").latency(Duration::from_millis(1)));
    let bulk = submit(&mut client, at(pb::Priority::Bulk, synthetic(200, 1))).await;
    let normal = submit(&mut client, synthetic(200, 2)).await;
    wait_ended(&mut client, &normal, LONG).await.unwrap();
    let s = batch_status(&mut client, &bulk).await.unwrap();
    assert_eq!(
        (s.sent, s.in_flight),
        (0, 0),
        "nothing of a paused class goes out"
    );
    assert!(s.class_paused, "{s:?}");
    let mut watch = client
        .watch_progress(pb::WatchProgressRequest::default())
        .await
        .unwrap()
        .into_inner();
    let update = watch.message().await.unwrap().unwrap();
    assert_eq!(update.paused, vec![pb::Priority::Bulk as i32]);

    let (ok, said) = smsmon(&["resume", "bulk"]);
    assert!(ok, "{said}");
    assert!(said.contains("paused now: none"), "{said}");
    let s = wait_ended(&mut client, &bulk, LONG).await.unwrap();
    assert_eq!(s.sent, 200);
    assert!(!s.class_paused);
}
