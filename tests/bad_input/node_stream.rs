//! The node stream's protocol checks, on a hand-driven node stream: a node
//! that breaks the protocol is cut off and its jobs go elsewhere, a second
//! process with a node's name is refused, and jobs a node sits on are taken
//! back after the job timeout.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_break_the_protocol_are_cut_off_and_their_jobs_go_elsewhere() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut client = mesh.client().await.unwrap();

    // No Hello first.
    let err = raw_join(
        &mesh,
        node_to_coordinator::Update::Heartbeat(pb::Heartbeat {}),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("first message on the stream must be Hello"),
        "{err:?}"
    );
    // Bad Hello.
    let err = raw_join(&mesh, hello("zero", 0)).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("Hello.concurrency 0"), "{err:?}");
    let err = raw_join(&mesh, hello("", 5)).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Credit beyond the declared concurrency.
    let greedy = raw_join(&mesh, hello("greedy", 5)).await.unwrap();
    greedy
        .send(node_to_coordinator::Update::Grant(pb::Grant { credits: 6 }))
        .await;
    let mut greedy = greedy;
    let err = greedy.ended().await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("credit overflow"), "{err:?}");

    // A node holding jobs, then reporting one it does not hold.
    let id = client
        .submit_batch(synthetic(500, 3))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let mut liar = raw_join(&mesh, hello("liar", 10)).await.unwrap();
    liar.send(node_to_coordinator::Update::Grant(pb::Grant {
        credits: 10,
    }))
    .await;
    let jobs = liar.next_jobs().await;
    assert_eq!(jobs.len(), 10, "exactly the credit granted");
    let forged = pb::JobResult {
        batch: jobs[0].batch,
        index: 499,
        attempt: 1,
        outcome: pb::Outcome::Sent as i32,
        ..Default::default()
    };
    liar.send(node_to_coordinator::Update::Results(pb::Results {
        seq: 1,
        results: vec![forged],
        grant: 0,
        handoff: false,
        ..Default::default()
    }))
    .await;
    let err = liar.ended().await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&format!("{id}.499")) && err.message().contains("does not hold"),
        "{err:?}"
    );

    // Its ten jobs (and the forged result) count for nothing; an honest node finishes the batch.
    let honest = mesh.node(NodeSpec::new("honest"));
    let b = wait_ended(&mut client, &id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((b.sent, b.requeued), (500, 10));
    assert_eq!(honest.handled(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_name_is_refused() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let _first = raw_join(&mesh, hello("dup", 5)).await.unwrap();
    let other = node_to_coordinator::Update::Hello(pb::Hello {
        name: "dup".into(),
        instance_id: 8,
        concurrency: 5,
        gateway: "raw".into(),
        ..Default::default()
    });
    let err = raw_join(&mesh, other).await.err().unwrap();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("\"dup\""), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_a_node_sits_on_are_taken_back_after_the_job_timeout() {
    let config = CoordinatorConfig {
        job_timeout: Some(Duration::from_millis(800)),
        ..CoordinatorConfig::default()
    };
    let mesh = Mesh::start(config).await.unwrap();
    // A node that takes jobs and keeps heartbeating, but never returns a result.
    let mut hoarder = raw_join(&mesh, hello("hoarder", 5)).await.unwrap();
    hoarder
        .send(node_to_coordinator::Update::Grant(pb::Grant { credits: 5 }))
        .await;
    let mut client = mesh.client().await.unwrap();
    let id = client
        .submit_batch(synthetic(20, 3))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let held = hoarder.next_jobs().await;
    assert_eq!(held.len(), 5);
    let beats = hoarder.tx.clone();
    let heartbeat = tokio::spawn(async move {
        let beat = pb::NodeToCoordinator {
            update: Some(node_to_coordinator::Update::Heartbeat(pb::Heartbeat {})),
        };
        while beats.send(beat.clone()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let _good = mesh.node(
        NodeSpec::new("good")
            .concurrency(5)
            .latency(Duration::from_millis(1)),
    );
    let b = wait_ended(&mut client, &id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((b.sent, b.failed), (20, 0), "{b:?}");
    assert!(b.requeued >= 5, "the hoarded jobs went elsewhere: {b:?}");
    // Its late result still counts (a duplicate now), and is no protocol error.
    let late = pb::JobResult {
        batch: held[0].batch,
        index: held[0].index,
        attempt: held[0].attempt,
        outcome: pb::Outcome::Sent as i32,
        error: String::new(),
        latency_us: 10,
        ..Default::default()
    };
    hoarder
        .send(node_to_coordinator::Update::Results(pb::Results {
            seq: 1,
            results: vec![late],
            grant: 0,
            handoff: false,
            ..Default::default()
        }))
        .await;
    let b = smsmesh_testkit::wait_until(Duration::from_secs(10), "the late result", || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let b = smsmesh_testkit::batch_status(&mut client, &id).await.ok()?;
            (b.duplicates == 1).then_some(b)
        }
    })
    .await
    .unwrap();
    assert_eq!(b.sent, 20);
    let ack = tokio::time::timeout(Duration::from_secs(5), hoarder.rx.message())
        .await
        .expect("the late result is acked");
    assert!(ack.is_ok(), "the node was not cut off: {ack:?}");
    heartbeat.abort();
}
