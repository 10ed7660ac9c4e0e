//! The SMPP gateway against an SMSC over a real TCP socket on 127.0.0.1: a
//! small SMSC written here on rusmpp's codec answers each destination as its
//! last digit says, so each outcome class is seen end to end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{BindTransceiverResp, SubmitSmResp};
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::COctetString;
use rusmpp::{Command, CommandStatus, Pdu};
use smsmesh::pb;
use smsmesh_node::smpp::{Smpp, SmppArgs, SmppConfig};
use smsmesh_node::{FailureClass, Gateway, Sending};
use tokio_util::codec::Framed;

/// What the SMSC received: (destination, esm_class, data_coding, short_message).
/// What the SMSC received: (destination, esm_class, data_coding, short_message),
/// and the source (source_addr, its TON) of each submit_sm.
type Received = Arc<Mutex<Vec<(String, u8, u8, Vec<u8>)>>>;
type Sources = Arc<Mutex<Vec<(String, u8)>>>;

/// An SMSC on a free port: binds anyone; a destination ending in 0 is accepted
/// (id "ID<n>"), 1 is ESME_RINVDSTADR, 2 ESME_RTHROTTLED, 3 never answered,
/// 4 ESME_RSYSERR.
async fn smsc() -> (u16, Received, Sources) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let sources: Sources = Arc::default();
    let from = sources.clone();
    let log = received.clone();
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((sock, _)) = listener.accept().await {
            let mut framed = Framed::new(sock, CommandCodec::new());
            let log = log.clone();
            while let Some(Ok(cmd)) = framed.next().await {
                let seq = cmd.sequence_number();
                let reply = match cmd.pdu() {
                    Some(Pdu::BindTransceiver(_)) => Some(Command::new(
                        CommandStatus::EsmeRok,
                        seq,
                        BindTransceiverResp::builder()
                            .system_id(COctetString::from_string("testsmsc".into()).unwrap())
                            .build(),
                    )),
                    Some(Pdu::EnquireLink) => Some(Command::new(
                        CommandStatus::EsmeRok,
                        seq,
                        Pdu::EnquireLinkResp,
                    )),
                    Some(Pdu::SubmitSm(s)) => {
                        let to = s.destination_addr.as_str().to_string();
                        from.lock().unwrap().push((
                            s.source_addr.as_str().to_string(),
                            u8::from(s.source_addr_ton),
                        ));
                        log.lock().unwrap().push((
                            to.clone(),
                            u8::from(s.esm_class),
                            u8::from(s.data_coding),
                            s.short_message().as_ref().to_vec(),
                        ));
                        n += 1;
                        let ok = || {
                            SubmitSmResp::builder()
                                .message_id(COctetString::from_string(format!("ID{n}")).unwrap())
                                .build()
                        };
                        match to.as_bytes().last() {
                            Some(b'0') => Some(Command::new(CommandStatus::EsmeRok, seq, ok())),
                            Some(b'1') => {
                                Some(Command::new(CommandStatus::EsmeRinvdstadr, seq, ok()))
                            }
                            Some(b'2') => {
                                Some(Command::new(CommandStatus::EsmeRthrottled, seq, ok()))
                            }
                            Some(b'4') => Some(Command::new(CommandStatus::EsmeRsyserr, seq, ok())),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                if let Some(r) = reply {
                    let _ = framed.send(r).await;
                }
            }
        }
    });
    (port, received, sources)
}

fn args() -> SmppArgs {
    SmppArgs::defaults()
}

async fn send(g: &Smpp, to: &str, body: &str) -> smsmesh_node::Outcome {
    send_from(g, to, body, "").await
}

async fn send_from(g: &Smpp, to: &str, body: &str, sender: &str) -> smsmesh_node::Outcome {
    let job = pb::Job {
        sender: sender.into(),
        batch: 1,
        index: 0,
        attempt: 1,
        to: to.into(),
        body: body.into(),
        ..Default::default()
    };
    match g.send(&job) {
        Sending::Pending(f) => tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("an outcome within 20 s"),
        _ => panic!("an SMPP send is always in progress"),
    }
}

#[tokio::test]
async fn each_submit_sm_resp_status_becomes_its_outcome_class() {
    let (port, received, sources) = smsc().await;
    let url = format!("smpp://esme:pw@127.0.0.1:{port}?response_timeout=500ms&throttle_pause=50ms");
    let g = Smpp::start(
        SmppConfig::parse(&url, &args()).unwrap(),
        Duration::from_secs(1),
    );
    let mut ready = g.ready().expect("an SMPP gateway reports its bind");
    tokio::time::timeout(Duration::from_secs(20), ready.wait_for(|up| *up))
        .await
        .expect("bound within 20 s")
        .unwrap();

    let ok = send(&g, "+14155550100", "Hello €").await.unwrap();
    assert_eq!(ok.provider_ids.len(), 1);
    assert!(ok.provider_ids[0].starts_with("ID"), "{ok:?}");
    let class = |o: smsmesh_node::Outcome| o.unwrap_err().class;
    assert_eq!(
        class(send(&g, "+14155550101", "x").await),
        FailureClass::Permanent
    );
    let throttled = send(&g, "+14155550102", "x").await.unwrap_err();
    assert_eq!(throttled.class, FailureClass::Throttled);
    assert!(
        throttled.reason.contains("ESME_RTHROTTLED"),
        "{throttled:?}"
    );
    assert_eq!(
        class(send(&g, "+14155550103", "x").await),
        FailureClass::Unknown
    );
    assert_eq!(
        class(send(&g, "+14155550104", "x").await),
        FailureClass::Temporary
    );

    // A long UCS-2 body: two segments, each with the same concatenation reference.
    let long = "ж".repeat(100);
    let two = send(&g, "+14155550110", &long).await.unwrap();
    assert_eq!(two.provider_ids.len(), 2, "{two:?}");
    let got = received.lock().unwrap().clone();
    let (to, esm, dcs, sm) = &got[0];
    assert_eq!((to.as_str(), *esm, *dcs), ("14155550100", 0, 0));
    assert_eq!(sm, b"Hello \x1b\x65");
    let parts: Vec<_> = got.iter().filter(|r| r.0 == "14155550110").collect();
    assert_eq!(parts.len(), 2);
    for (i, (_, esm, dcs, sm)) in parts.iter().enumerate() {
        assert_eq!((*esm & 0x40, *dcs), (0x40, 8), "UDHI set, UCS-2");
        assert_eq!(&sm[..3], &[5, 0, 3]);
        assert_eq!((sm[4], sm[5]), (2, i as u8 + 1));
    }
    assert_eq!(parts[0].3[3], parts[1].3[3], "one reference for both parts");
    // Senders: the node's default (alphanumeric "smsmesh"), a job's own name, its own number.
    send_from(&g, "+14155550120", "x", "ACME").await.unwrap();
    send_from(&g, "+14155550130", "x", "+14155550999")
        .await
        .unwrap();
    send_from(&g, "+14155550140", "x", "54321").await.unwrap();
    let from = sources.lock().unwrap().clone();
    assert_eq!(from[0], ("smsmesh".to_string(), 5), "alphanumeric: TON 5");
    let n = from.len();
    assert_eq!(
        from[n - 3..],
        [
            ("ACME".to_string(), 5),
            ("14155550999".to_string(), 1),
            ("54321".to_string(), 2)
        ],
        "TON from the form: alphanumeric 5, international 1, national 2"
    );
    let stats = g.stats();
    assert_eq!(
        stats.throttled.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(stats.unknown.load(std::sync::atomic::Ordering::Relaxed), 1);
}
