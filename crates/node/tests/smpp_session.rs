//! The SMPP connection itself, over real sockets on 127.0.0.1: a full window
//! of pipelined submit_sm keeps flowing, each with its own message id and
//! receipt, and the SMSC's own requests are answered: enquire_link, requests
//! the node does not serve (generic_nack), a deliver_sm that does not
//! decode (refused for good, ESME_RX_P_APPN, on a bind that stays up), and
//! unbind (after which the node binds again); a submit_sm_resp that does not
//! decode leaves its send's outcome unknown; each class of traffic goes with its priority_flag; and a
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
use smsmesh_node::{Gateway, Outcome, Sending};
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

/// What sending `job` through `g` came to (an SMPP send always waits for
/// its response).
async fn sent(g: Arc<Smpp>, job: pb::Job) -> Outcome {
    match g.send(&job) {
        Sending::Pending(f) => f.await,
        _ => panic!("an SMPP send is always in progress"),
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
        sends.spawn(sent(g.clone(), job(i)));
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
        async move { sent(g, job(i)).await.expect("every submit_sm accepted") }
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
    answer_ok(&mut framed, bind.sequence_number(), resp.into()).await;
    framed
}

/// Answers request `seq` with ESME_ROK and `pdu`.
async fn answer_ok(framed: &mut Framed<tokio::net::TcpStream, CommandCodec>, seq: u32, pdu: Pdu) {
    framed
        .send(Command::new(CommandStatus::EsmeRok, seq, pdu))
        .await
        .unwrap();
}

/// Accepts submit_sm `seq` as message `id`.
async fn accept_submit(
    framed: &mut Framed<tokio::net::TcpStream, CommandCodec>,
    seq: u32,
    id: String,
) {
    let resp = rusmpp::pdus::SubmitSmResp::builder()
        .message_id(COctetString::from_string(id).unwrap())
        .build();
    answer_ok(framed, seq, resp.into()).await;
}

/// A gateway bound to an SMSC driven by hand, on a free port.
async fn bound_by_hand() -> (Arc<Smpp>, Framed<tokio::net::TcpStream, CommandCodec>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("smpp://esme:pw@127.0.0.1:{port}");
    let g = Arc::new(Smpp::start(
        SmppConfig::parse(&url, &args()).unwrap(),
        Duration::from_millis(200),
    ));
    let framed = accept_bind(&listener).await;
    (g, framed)
}

/// Writes a PDU of `body` as it is, whether it decodes or not.
async fn write_raw(
    framed: &mut Framed<tokio::net::TcpStream, CommandCodec>,
    id: u32,
    seq: u32,
    body: &[u8],
) {
    let mut pdu = Vec::new();
    for word in [16 + body.len() as u32, id, 0, seq] {
        pdu.extend_from_slice(&word.to_be_bytes());
    }
    pdu.extend_from_slice(body);
    tokio::io::AsyncWriteExt::write_all(framed.get_mut(), &pdu)
        .await
        .unwrap();
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

    // A deliver_sm whose first field runs to its end with no NUL.
    write_raw(&mut framed, 0x0000_0005, 80, b"abc").await;
    let resp = next_of(&mut framed, CommandId::DeliverSmResp).await;
    assert_eq!(resp.sequence_number(), 80);
    assert_eq!(resp.status(), CommandStatus::EsmeRxPAppn);
    assert_eq!(g.stats().bad_receipts.load(Ordering::Relaxed), 1);
    assert!(*ready.borrow(), "the bind stays up");

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

/// A receipt in a deliver_sm with more TLVs than a receipt's usual few
/// (here seven, and no text) is read from its TLVs, and answered once the
/// coordinator has stored it.
#[tokio::test]
async fn a_receipt_with_many_tlvs_is_read_from_them() {
    let (g, mut framed) = bound_by_hand().await;
    let mut receipts = g.receipts().expect("the SMPP gateway hands over receipts");
    // service_type, source and destination, esm_class 0x04 (a receipt), then
    // the fields up to an sm_length of 0.
    let mut body = vec![0, 1, 1, b'4', b'4', 0, 0, 0, b's', 0, 0x04];
    body.extend_from_slice(&[0; 9]);
    body.extend_from_slice(&[0x00, 0x1e, 0, 4, b'r', b'7', b'7', 0]); // receipted_message_id
    body.extend_from_slice(&[0x04, 0x27, 0, 1, 2]); // message_state DELIVERED
    for _ in 0..5 {
        body.extend_from_slice(&[0x04, 0x23, 0, 3, 3, 0, 1]); // network_error_code
    }
    write_raw(&mut framed, 0x0000_0005, 90, &body).await;
    let (r, stored) = tokio::time::timeout(Duration::from_secs(20), receipts.recv())
        .await
        .expect("a receipt within 20 s")
        .expect("receipts keep coming");
    assert_eq!((r.provider_id.as_str(), r.message_state), ("r77", 2));
    stored.expect("an SMPP receipt waits to be stored").stored();
    let resp = next_of(&mut framed, CommandId::DeliverSmResp).await;
    assert_eq!(
        (resp.sequence_number(), resp.status()),
        (90, CommandStatus::EsmeRok)
    );
}

#[tokio::test]
async fn priority_flag_follows_the_jobs_class() {
    let (g, mut framed) = bound_by_hand().await;
    // (Job.priority, the priority_flag expected): emergency, high, normal, none given, bulk.
    for (priority, flag) in [(1, 3), (2, 2), (3, 0), (0, 0), (4, 0)] {
        let job = pb::Job {
            priority,
            ..job(priority)
        };
        let send = tokio::spawn(sent(g.clone(), job));
        let cmd = next_of(&mut framed, CommandId::SubmitSm).await;
        let Some(Pdu::SubmitSm(s)) = cmd.pdu() else {
            panic!("not a submit_sm: {cmd:?}");
        };
        assert_eq!(u8::from(s.priority_flag), flag, "Job.priority {priority}");
        accept_submit(&mut framed, cmd.sequence_number(), format!("M{priority}")).await;
        let accepted = send.await.unwrap().expect("accepted");
        assert_eq!(accepted.provider_ids, vec![format!("M{priority}")]);
    }
}

/// A submit_sm_resp whose message_id does not decode leaves its send's
/// outcome unknown (the SMSC may have taken it), says why, and the bind goes
/// on: the next submit_sm on it is accepted. One whose id reads is accepted
/// whatever follows the id (here more TLVs than a PDU read may hold).
#[tokio::test]
async fn a_submit_sm_resp_that_does_not_decode_is_an_unknown_outcome_on_a_bind_that_goes_on() {
    let (g, mut framed) = bound_by_hand().await;
    let send = |i: u32| tokio::spawn(sent(g.clone(), job(i)));

    let first = send(1);
    let cmd = next_of(&mut framed, CommandId::SubmitSm).await;
    // A submit_sm_resp whose message_id runs to its end with no NUL.
    write_raw(&mut framed, 0x8000_0004, cmd.sequence_number(), b"abc").await;
    let failure = first.await.unwrap().expect_err("no id to accept it by");
    assert_eq!(failure.class, smsmesh_node::FailureClass::Unknown);
    assert!(
        failure.reason.contains("does not decode"),
        "{}",
        failure.reason
    );

    let second = send(2);
    let cmd = next_of(&mut framed, CommandId::SubmitSm).await;
    accept_submit(&mut framed, cmd.sequence_number(), "M2".into()).await;
    let accepted = second.await.unwrap().expect("accepted on the same bind");
    assert_eq!(accepted.provider_ids, vec!["M2".to_string()]);

    let third = send(3);
    let cmd = next_of(&mut framed, CommandId::SubmitSm).await;
    // message_id "M3", then 30 network_error_code TLVs.
    let mut body = b"M3\0".to_vec();
    for _ in 0..30 {
        body.extend_from_slice(&[0x04, 0x23, 0, 3, 3, 0, 1]);
    }
    write_raw(&mut framed, 0x8000_0004, cmd.sequence_number(), &body).await;
    let accepted = third.await.unwrap().expect("accepted by its id");
    assert_eq!(accepted.provider_ids, vec!["M3".to_string()]);
}
