//! Nodes sharing one `JoinGroup` stream: each member keeps its own credit,
//! name and results; a member the coordinator refuses ends alone; members
//! survive a coordinator restart; and the group protocol refuses bad input.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use smsmesh::pb::{self, BatchState};
use smsmesh_node::NodeError;
use smsmesh_testkit::{
    CoordinatorConfig, Mesh, NodeSpec, Proc, Recorder, group, submit, synthetic, wait_ended,
    wait_until,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

const LONG: Duration = Duration::from_secs(60);

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

/// Nodes connected, as the coordinator reports them.
async fn nodes_connected(client: &mut Client) -> u32 {
    let mut s = client
        .watch_progress(pb::WatchProgressRequest::default())
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().map_or(0, |u| u.nodes_connected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_one_group_share_a_batch_each_within_its_own_credit() {
    let mesh = Mesh::start(CoordinatorConfig {
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let g = group(&mesh.url(), None).unwrap();
    let rec = Recorder::default();
    let caps = [3u32, 20, 60];
    let members: Vec<_> = caps
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            mesh.node(
                NodeSpec::new(&format!("member-{i}"))
                    .concurrency(c)
                    .latency(Duration::from_millis(1))
                    .failure_rate(0.1)
                    .record(&rec)
                    .group(&g),
            )
        })
        .collect();
    // A node on its own stream takes part too.
    let own = mesh.node(NodeSpec::new("own").concurrency(20).record(&rec));
    let mut client = mesh.client().await.unwrap();
    wait_until(LONG, "4 nodes to join", || {
        let mut c = client.clone();
        async move { (nodes_connected(&mut c).await == 4).then_some(()) }
    })
    .await
    .unwrap();
    let total = 6_000u64;
    let id = submit(&mut client, synthetic(total, 7)).await;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.state, BatchState::Completed as i32);
    assert_eq!(b.sent + b.failed, total, "{b:?}");

    // Every message sent at most once, by the gateway of the node the status names.
    let mut sends: HashMap<u32, usize> = HashMap::new();
    let mut by_node: HashMap<String, u64> = HashMap::new();
    for a in rec.attempts() {
        *sends.entry(a.index).or_default() += usize::from(a.sent);
        *by_node.entry(a.node.clone()).or_default() += 1;
    }
    assert_eq!(sends.len() as u64, total, "every message was attempted");
    assert!(sends.values().all(|&n| n <= 1), "a message sent twice");
    assert_eq!(sends.values().sum::<usize>() as u64, b.sent);
    for n in &b.nodes {
        assert_eq!(
            n.sent + n.failed_attempts,
            by_node.get(&n.node).copied().unwrap_or(0),
            "the status of {} matches its gateway",
            n.node
        );
    }
    // Each member held no more than its own credit allows and did its part.
    for (m, &cap) in members.iter().zip(&caps) {
        assert_eq!(m.stats.over_credit.load(Relaxed), 0, "{}", m.name);
        let held = m.stats.max_held.load(Relaxed);
        assert!(
            held >= 1 && held <= u64::from(cap),
            "{} held {held}",
            m.name
        );
        assert!(m.handled() > 0, "{} sent nothing", m.name);
        assert_eq!(m.stats.sessions.load(Relaxed), 1, "{} reconnected", m.name);
    }
    assert!(own.handled() > 0);
    // Members leave cleanly, one by one, the others staying connected.
    let mut left = 4;
    for m in members {
        m.stop(LONG).await.unwrap();
        left -= 1;
        wait_until(LONG, &format!("{left} nodes connected"), || {
            let mut c = client.clone();
            async move { (nodes_connected(&mut c).await == left).then_some(()) }
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_the_coordinator_refuses_ends_alone_with_the_reason() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let g = group(&mesh.url(), None).unwrap();
    let good = mesh.node(NodeSpec::new("good").concurrency(10).group(&g));
    let bad = mesh.node(NodeSpec::new("bad\nname").group(&g));
    match bad.ended(LONG).await.unwrap() {
        Err(NodeError::Refused(why)) => assert!(why.contains("not a node name"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The member that was refused took nothing down with it.
    let mut client = mesh.client().await.unwrap();
    let id = submit(&mut client, synthetic(2_000, 3)).await;
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!(b.sent, 2_000, "{b:?}");
    assert_eq!(good.handled(), 2_000);
    assert_eq!(good.stats.sessions.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_without_the_join_token_is_refused() {
    let mesh = Mesh::start(CoordinatorConfig {
        node_token: Some("s3cret".into()),
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let wrong = group(&mesh.url(), Some("guess")).unwrap();
    let n = mesh.node(NodeSpec::new("intruder").group(&wrong));
    match n.ended(LONG).await.unwrap() {
        Err(NodeError::Refused(why)) => assert!(why.contains("wrong join token"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let right = group(&mesh.url(), Some("s3cret")).unwrap();
    let n = mesh.node(NodeSpec::new("member").group(&right));
    let mut client = mesh.client().await.unwrap();
    let id = submit(&mut client, synthetic(500, 1)).await;
    assert_eq!(wait_ended(&mut client, &id, LONG).await.unwrap().sent, 500);
    assert_eq!(n.handled(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_hand_in_after_the_coordinator_is_killed_and_every_resend_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, addr) = Proc::coordinator(dir.path(), &[]).unwrap();
    let url = format!("http://{addr}");
    let g = group(&url, None).unwrap();
    let rec = Recorder::default();
    let members: Vec<_> = (0..3)
        .map(|i| {
            smsmesh_testkit::Node::start(
                &url,
                NodeSpec::new(&format!("m{i}"))
                    .concurrency(100)
                    .latency(Duration::from_millis(200))
                    .record(&rec)
                    .group(&g),
            )
        })
        .collect();
    let mut client = wait_until(LONG, "the coordinator", || {
        let url = url.clone();
        async move { Client::connect(url).await.ok() }
    })
    .await
    .unwrap();
    let total = 3_000u64;
    let id = submit(&mut client, synthetic(total, 5)).await;
    let holding = || {
        members
            .iter()
            .all(|m| m.handled() > 50 && m.stats.jobs.load(Relaxed) >= m.handled() + 50)
    };
    wait_until(LONG, "every member to hold jobs", || async {
        holding().then_some(())
    })
    .await
    .unwrap();
    coord.kill9();
    let (_coord, _) = Proc::coordinator_on(addr, dir.path(), &[]).unwrap();
    let mut client = wait_until(LONG, "the restarted coordinator", || {
        let url = url.clone();
        async move { Client::connect(url).await.ok() }
    })
    .await
    .unwrap();
    let b = wait_ended(&mut client, &id, LONG).await.unwrap();
    assert_eq!((b.sent, b.failed), (total, 0), "{b:?}");
    let mut sends: HashMap<u32, usize> = HashMap::new();
    for a in rec.attempts() {
        *sends.entry(a.index).or_default() += usize::from(a.sent);
    }
    assert_eq!(sends.len() as u64, total, "every message sent");
    // After a kill -9 the promise is at least once, with every re-send counted: a
    // message goes out again only if it was re-sent after the resume grace (a busy
    // machine may bring members back after it), and each extra send is a duplicate
    // in the books.
    let extra: u64 = sends.values().map(|&n| n as u64 - 1).sum();
    assert_eq!(extra, b.duplicates, "every extra send counted: {b:?}");
    assert!(
        extra <= b.resent,
        "only re-sent messages go out twice: {b:?}"
    );
    for m in &members {
        assert!(m.stats.sessions.load(Relaxed) >= 2, "{} rejoined", m.name);
        assert!(m.stats.connected.load(Relaxed), "{}", m.name);
    }
}

/// A raw group stream: what a client of the wire protocol sees.
struct RawGroup {
    up: mpsc::UnboundedSender<pb::MemberUp>,
    down: tonic::Streaming<pb::GroupDown>,
    pending: std::collections::VecDeque<pb::MemberDown>,
}

impl RawGroup {
    async fn open(url: &str) -> RawGroup {
        let (up, rx) = mpsc::unbounded_channel();
        let frames = futures::StreamExt::map(UnboundedReceiverStream::new(rx), |f| pb::GroupUp {
            frames: vec![f],
        });
        let mut client = pb::node_link_client::NodeLinkClient::connect(url.to_string())
            .await
            .unwrap();
        let down = client.join_group(frames).await.unwrap().into_inner();
        RawGroup {
            up,
            down,
            pending: Default::default(),
        }
    }

    fn send(&self, member: u32, update: Option<pb::node_to_coordinator::Update>, left: bool) {
        self.up
            .send(pb::MemberUp {
                member,
                frame: update.map(|u| pb::NodeToCoordinator { update: Some(u) }),
                left,
            })
            .unwrap();
    }

    async fn next(&mut self) -> pb::MemberDown {
        loop {
            if let Some(d) = self.pending.pop_front() {
                return d;
            }
            let g = tokio::time::timeout(LONG, self.down.message())
                .await
                .expect("a group frame in time")
                .unwrap()
                .expect("the stream is open");
            self.pending.extend(g.frames);
        }
    }
}

fn hello(name: &str) -> Option<pb::node_to_coordinator::Update> {
    Some(pb::node_to_coordinator::Update::Hello(pb::Hello {
        name: name.into(),
        instance_id: 1,
        concurrency: 10,
        gateway: "raw".into(),
        ..Default::default()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_protocol_wants_hello_first_and_ignores_members_that_ended() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let mut client = mesh.client().await.unwrap();
    let mut raw = RawGroup::open(&mesh.url()).await;
    // A member whose first frame is not Hello is ended, with the reason.
    raw.send(
        1,
        Some(pb::node_to_coordinator::Update::Grant(pb::Grant {
            credits: 5,
        })),
        false,
    );
    let d = raw.next().await;
    let closed = d.closed.expect("member 1 ended");
    assert_eq!(
        (d.member, closed.code),
        (1, tonic::Code::FailedPrecondition as i32)
    );
    assert!(closed.message.contains("must be Hello"), "{closed:?}");
    // Member 1 is over: a Hello under its number now is ignored.
    raw.send(1, hello("late"), false);
    // Member 2 joins, and is welcomed.
    raw.send(2, hello("two"), false);
    let d = raw.next().await;
    assert_eq!(d.member, 2, "{d:?}");
    assert!(
        matches!(
            d.frame.and_then(|f| f.update),
            Some(pb::coordinator_to_node::Update::Welcome(_))
        ),
        "member 2 is welcomed"
    );
    wait_until(LONG, "one node connected", || {
        let mut c = client.clone();
        async move { (nodes_connected(&mut c).await == 1).then_some(()) }
    })
    .await
    .unwrap();
    // Member 2 leaves: the coordinator counts it gone, the stream stays open.
    raw.send(2, None, true);
    wait_until(LONG, "no node connected", || {
        let mut c = client.clone();
        async move { (nodes_connected(&mut c).await == 0).then_some(()) }
    })
    .await
    .unwrap();
    // Its end is confirmed, without error, as a `Join` stream would close.
    let d = raw.next().await;
    assert_eq!(
        (d.member, d.closed.as_ref().map(|c| c.code)),
        (2, Some(tonic::Code::Ok as i32)),
        "{d:?}"
    );
    raw.send(3, hello("three"), false);
    let d = raw.next().await;
    assert_eq!(d.member, 3, "{d:?}");
    assert_eq!(nodes_connected(&mut client).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_the_group_stream_is_dropped_alone() {
    let mesh = Mesh::start(CoordinatorConfig {
        node_max_frames_per_sec: 50,
        ..CoordinatorConfig::default()
    })
    .await
    .unwrap();
    let mut client = mesh.client().await.unwrap();
    let mut raw = RawGroup::open(&mesh.url()).await;
    raw.send(1, hello("flood"), false);
    raw.send(2, hello("calm"), false);
    // Heartbeats far beyond 50 a second (with bursts of 100) from member 1 only.
    for _ in 0..1_000 {
        raw.send(
            1,
            Some(pb::node_to_coordinator::Update::Heartbeat(pb::Heartbeat {})),
            false,
        );
    }
    let closed = loop {
        let d = raw.next().await;
        if let Some(c) = d.closed {
            break (d.member, c);
        }
    };
    assert_eq!(closed.0, 1, "the flooding member is the one ended");
    assert_eq!(closed.1.code, tonic::Code::ResourceExhausted as i32);
    assert!(
        closed.1.message.contains("frames a second"),
        "{:?}",
        closed.1
    );
    wait_until(LONG, "only the calm member connected", || {
        let mut c = client.clone();
        async move { (nodes_connected(&mut c).await == 1).then_some(()) }
    })
    .await
    .unwrap();
    // The calm member still gets work on the same stream.
    raw.send(
        2,
        Some(pb::node_to_coordinator::Update::Grant(pb::Grant {
            credits: 5,
        })),
        false,
    );
    submit(&mut client, synthetic(5, 1)).await;
    let jobs = loop {
        let d = raw.next().await;
        if let Some(pb::coordinator_to_node::Update::Jobs(j)) = d.frame.and_then(|f| f.update) {
            assert_eq!(d.member, 2);
            break j.jobs.len();
        }
    };
    assert!(jobs > 0 && jobs <= 5, "{jobs} jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_stream_that_keeps_sending_refused_members_is_ended() {
    let mesh = Mesh::start(CoordinatorConfig::default()).await.unwrap();
    let client = mesh.client().await.unwrap();
    let mut raw = RawGroup::open(&mesh.url()).await;
    let good = raw.up.clone();
    // A legitimate member first: it is ended with the stream.
    raw.send(0, hello("kept"), false);
    let welcome = raw.next().await;
    assert_eq!(welcome.member, 0);
    // Then member numbers that never say Hello, far more than a stream may have refused.
    // The coordinator may end the stream before all are sent: then sending stops.
    for member in 1..=10_000 {
        let bogus = pb::MemberUp {
            member,
            frame: Some(pb::NodeToCoordinator {
                update: Some(pb::node_to_coordinator::Update::Heartbeat(pb::Heartbeat {})),
            }),
            left: false,
        };
        if raw.up.send(bogus).is_err() {
            break;
        }
    }
    let ended = tokio::time::timeout(LONG, async {
        let mut closed = 0u32;
        loop {
            match raw.down.message().await {
                Ok(Some(g)) => {
                    closed += g.frames.iter().filter(|f| f.closed.is_some()).count() as u32
                }
                Ok(None) | Err(_) => return closed,
            }
        }
    })
    .await
    .expect("the coordinator ends the stream");
    assert!(
        ended <= smsmesh_coordinator::link::MAX_REFUSED_MEMBERS + 2,
        "at most the refusals it allows, then the end: {ended} members closed"
    );
    drop(good);
    // The coordinator goes on serving: the member is gone, another group joins.
    wait_until(LONG, "the member to be gone", || {
        let mut client = client.clone();
        async move { (nodes_connected(&mut client).await == 0).then_some(()) }
    })
    .await
    .unwrap();
    let mut again = RawGroup::open(&mesh.url()).await;
    again.send(0, hello("next"), false);
    assert!(again.next().await.frame.is_some(), "welcomed");
}
