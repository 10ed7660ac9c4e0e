//! The SMPP connection itself, over real sockets on 127.0.0.1: a full window
//! of pipelined submit_sm keeps flowing, each with its own message id and
//! receipt, and the SMSC's own requests are answered: enquire_link, requests
//! the node does not serve (generic_nack), and unbind (after which the node
//! binds again); each class of traffic goes with its priority_flag; and a
//! rate limit holds past its burst.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{BindTransceiverResp, QuerySm};
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::COctetString;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use smsmesh::pb;
use smsmesh_node::smpp::{Smpp, SmppArgs, SmppConfig};
use smsmesh_node::{Gateway, Sending};
use tokio_util::codec::Framed;

fn args() -> SmppArgs {
    SmppArgs::defaults()
}

fn job(i: u32) -> pb::Job {
    pb::Job {
        batch: 1,
        index: i,
        attempt: 1,
        to: format!("+4479{i:08}"),
        body: "window test".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_full_window_keeps_flowing_with_receipts_coming_back() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        smsc: smsmesh_smsc::SmscConfig,
    }
    let config = <Cli as clap::Parser>::parse_from(["x", "--response-delay", "1ms"]).smsc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stats = Arc::new(smsmesh_smsc::SmscStats::default());
    tokio::spawn(smsmesh_smsc::serve(listener, config, stats.clone()));

    // The window is full all the time, responses come 1 ms late, and
    // enquire_link is an hour away: nothing but traffic wakes the connection.
    let url = format!("smpp://esme:pw@127.0.0.1:{port}?window=64&enquire_link=1h");
    let g = Arc::new(Smpp::start(
        SmppConfig::parse(&url, &args()).unwrap(),
        Duration::from_secs(1),
    ));
    let mut receipts = g.receipts().expect("the SMPP gateway hands over receipts");
    const N: u32 = 5_000;
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..N {
        let g = g.clone();
        sends.spawn(async move {
            match g.send(&job(i)) {
                Sending::Pending(f) => f.await,
                _ => panic!("an SMPP send is always in progress"),
            }
        });
    }
    let all = async {
        let mut ids = std::collections::HashSet::new();
        while let Some(r) = sends.join_next().await {
            let accepted = r.unwrap().expect("every submit_sm accepted");
            assert_eq!(accepted.provider_ids.len(), 1);
            ids.insert(accepted.provider_ids[0].clone());
        }
        let mut matched = 0;
        while matched < N {
            let (r, stored) = receipts.recv().await.expect("receipts keep coming");
            assert!(
                ids.contains(&r.provider_id),
                "a receipt for {r:?} names a sent id"
            );
            // As the node does once the coordinator has stored it: the
            // deliver_sm is answered then.
            stored.expect("an SMPP receipt waits to be stored").stored();
            matched += 1;
        }
        ids.len()
    };
    let distinct = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("5,000 sends and their receipts within 60 s");
    assert_eq!(distinct, N as usize, "each send got its own message id");
    assert_eq!(stats.submits.load(Ordering::Relaxed), u64::from(N));
    assert_eq!(stats.receipts.load(Ordering::Relaxed), u64::from(N));
}

/// `rate=100` (a burst of 10): 60 sends at once, after one that waited for
/// the bind, reach the SMSC no faster than the limit allows, and all are
/// accepted. Only a lower bound on the time is asserted: a slow machine
/// cannot make the sends faster.
#[tokio::test]
async fn a_rate_limit_holds_past_its_burst() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stats = Arc::new(smsmesh_smsc::SmscStats::default());
    tokio::spawn(smsmesh_smsc::serve(
        listener,
        smsmesh_smsc::SmscConfig::default(),
        stats.clone(),
    ));
    let url = format!("smpp://esme:pw@127.0.0.1:{port}?rate=100");
    let g = Arc::new(Smpp::start(
        SmppConfig::parse(&url, &args()).unwrap(),
        Duration::from_secs(1),
    ));
    let send = |i: u32| {
        let g = g.clone();
        async move {
            match g.send(&job(i)) {
                Sending::Pending(f) => f.await.expect("every submit_sm accepted"),
                _ => panic!("an SMPP send is always in progress"),
            }
        }
    };
    send(0).await;
    let start = std::time::Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 1..=60 {
        sends.spawn(send(i));
    }
    while let Some(r) = sends.join_next().await {
        r.unwrap();
    }
    let took = start.elapsed();
    // At most 10 at once, then 100 a second: the other 50 take 500 ms.
    assert!(
        took >= Duration::from_millis(450),
        "60 sends at 100/s with a burst of 10 took {took:?}"
    );
    assert_eq!(stats.submits.load(Ordering::Relaxed), 61);
}

/// Reads commands until one with `id`, answering nothing.
async fn next_of(
    framed: &mut Framed<tokio::net::TcpStream, CommandCodec>,
    id: CommandId,
) -> Command {
    loop {
        let cmd = tokio::time::timeout(Duration::from_secs(20), framed.next())
            .await
            .expect("a command within 20 s")
            .expect("the connection open")
            .expect("a readable PDU");
        if cmd.id() == id {
            return cmd;
        }
        if cmd.id() == CommandId::EnquireLink {
            let resp = Command::new(
                CommandStatus::EsmeRok,
                cmd.sequence_number(),
                Pdu::EnquireLinkResp,
            );
            framed.send(resp).await.unwrap();
        }
    }
}

/// Accepts a connection and answers its bind_transceiver.
async fn accept_bind(
    listener: &tokio::net::TcpListener,
) -> Framed<tokio::net::TcpStream, CommandCodec> {
    let (sock, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .expect("the node connects within 20 s")
        .unwrap();
    let mut framed = Framed::new(sock, CommandCodec::new());
    let bind = next_of(&mut framed, CommandId::BindTransceiver).await;
    let resp = BindTransceiverResp::builder()
        .system_id(COctetString::from_string("hand".into()).unwrap())
        .build();
    framed
        .send(Command::new(
            CommandStatus::EsmeRok,
            bind.sequence_number(),
            resp,
        ))
        .await
        .unwrap();
    framed
}

#[tokio::test]
async fn the_smscs_requests_are_answered_and_an_unbind_leads_to_a_new_bind() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("smpp://esme:pw@127.0.0.1:{port}");
    let g = Smpp::start(
        SmppConfig::parse(&url, &args()).unwrap(),
        Duration::from_millis(200),
    );
    let mut ready = g.ready().expect("an SMPP gateway reports its bind");
    let mut framed = accept_bind(&listener).await;
    tokio::time::timeout(Duration::from_secs(20), ready.wait_for(|up| *up))
        .await
        .expect("bound within 20 s")
        .unwrap();

    framed
        .send(Command::new(CommandStatus::EsmeRok, 77, Pdu::EnquireLink))
        .await
        .unwrap();
    let resp = next_of(&mut framed, CommandId::EnquireLinkResp).await;
    assert_eq!(resp.sequence_number(), 77);
    assert_eq!(resp.status(), CommandStatus::EsmeRok);

    let query = QuerySm::builder()
        .message_id(COctetString::from_string("ID1".into()).unwrap())
        .build();
    framed
        .send(Command::new(CommandStatus::EsmeRok, 78, query))
        .await
        .unwrap();
    let nack = next_of(&mut framed, CommandId::GenericNack).await;
    assert_eq!(nack.sequence_number(), 78);
    assert_eq!(nack.status(), CommandStatus::EsmeRinvcmdid);

    framed
        .send(Command::new(CommandStatus::EsmeRok, 79, Pdu::Unbind))
        .await
        .unwrap();
    let resp = next_of(&mut framed, CommandId::UnbindResp).await;
    assert_eq!(resp.sequence_number(), 79);
    tokio::time::timeout(Duration::from_secs(20), ready.wait_for(|up| !*up))
        .await
        .expect("not ready once unbound")
        .unwrap();
    let _again = accept_bind(&listener).await;
    tokio::time::timeout(Duration::from_secs(20), ready.wait_for(|up| *up))
        .await
        .expect("bound again within 20 s")
        .unwrap();
}

#[tokio::test]
async fn priority_flag_follows_the_jobs_class() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("smpp://esme:pw@127.0.0.1:{port}");
    let g = Arc::new(Smpp::start(
        SmppConfig::parse(&url, &args()).unwrap(),
        Duration::from_millis(200),
    ));
    let mut framed = accept_bind(&listener).await;
    // (Job.priority, the priority_flag expected): emergency, high, normal, none given, bulk.
    for (priority, flag) in [(1, 3), (2, 2), (3, 0), (0, 0), (4, 0)] {
        let job = pb::Job {
            priority,
            ..job(priority)
        };
        let g = g.clone();
        let send = tokio::spawn(async move {
            match g.send(&job) {
                Sending::Pending(f) => f.await,
                _ => panic!("an SMPP send is always in progress"),
            }
        });
        let cmd = next_of(&mut framed, CommandId::SubmitSm).await;
        let Some(Pdu::SubmitSm(s)) = cmd.pdu() else {
            panic!("not a submit_sm: {cmd:?}");
        };
        assert_eq!(u8::from(s.priority_flag), flag, "Job.priority {priority}");
        let resp = rusmpp::pdus::SubmitSmResp::builder()
            .message_id(COctetString::from_string(format!("M{priority}")).unwrap())
            .build();
        framed
            .send(Command::new(
                CommandStatus::EsmeRok,
                cmd.sequence_number(),
                resp,
            ))
            .await
            .unwrap();
        let accepted = send.await.unwrap().expect("accepted");
        assert_eq!(accepted.provider_ids, vec![format!("M{priority}")]);
    }
}
