//! The connector: connects to the SMSC, binds, answers deliver_sm (handing
//! receipts to the node), and when the bind is lost marks the gateway not
//! ready and binds again with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rusmpp_core::pdus::borrowed::{BindReceiver, BindTransceiver, BindTransmitter, DeliverSmResp};
use rusmpp_core::tlvs::borrowed::TlvValue;
use rusmpp_core::types::borrowed::COctetString;
use rusmpp_core::values::InterfaceVersion;
use rusmpp_core::{CommandId, CommandStatus};

use super::Shared;
use super::config::BindType;
use super::dlr;
use super::frame::{self, DeliverSm, Pdu, Prepared};
use super::wire::{Event, Owner, Session, WireError};
use crate::gateway::OnStored;

/// Binds and keeps binding until the gateway is dropped (the task is aborted then).
pub(super) async fn run(shared: Arc<Shared>, reconnect_max: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match bind(&shared).await {
            Ok((owner, events)) => {
                backoff = Duration::from_millis(100);
                shared.stats.binds.fetch_add(1, Ordering::Relaxed);
                tracing::info!(smsc = %shared.config.address, system_id = %shared.config.system_id, "SMPP bound");
                let session = owner.session.clone();
                shared.client.send_replace(Some(session.clone()));
                shared.ready.send_replace(true);
                let why = serve(&shared, &session, events).await;
                shared.client.send_replace(None);
                shared.ready.send_replace(false);
                drop(owner);
                tracing::warn!(smsc = %shared.config.address, why, "SMPP bind lost; binding again");
            }
            Err(e) => {
                shared.stats.bind_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(smsc = %shared.config.address, error = %e, retry_in = ?backoff, "SMPP bind failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(reconnect_max);
    }
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Event>;

/// Connects (with Nagle's algorithm off: with it on, a submit_sm written
/// while the last is unacknowledged waits for the peer's delayed ACK) and binds.
async fn bind(shared: &Shared) -> Result<(Owner, Events), String> {
    let c = &shared.config;
    let (tls, host_port) = match c.address.split_once("://") {
        Some(("smpp", rest)) => (false, rest),
        Some(("smpps", rest)) => (true, rest),
        _ => return Err(format!("{}: not an smpp:// or smpps:// address", c.address)),
    };
    let tcp = tokio::time::timeout(
        c.response_timeout,
        tokio::net::TcpStream::connect(host_port),
    )
    .await
    .map_err(|_| format!("connect to {host_port}: timed out"))?
    .map_err(|e| format!("connect to {host_port}: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let (owner, events) = if tls {
        let stream = tokio::time::timeout(c.response_timeout, tls_connect(host_port, tcp))
            .await
            .map_err(|_| format!("TLS handshake with {host_port}: timed out"))??;
        Session::open(stream, c.enquire_link, c.response_timeout)
    } else {
        Session::open(tcp, c.enquire_link, c.response_timeout)
    };
    let (id, password, system_type) = (
        frame::nul_terminated(&c.system_id),
        frame::nul_terminated(&c.password),
        frame::nul_terminated(&c.system_type),
    );
    let (id, password, system_type) = (
        text(&id, "system_id")?,
        text(&password, "password")?,
        text(&system_type, "system_type")?,
    );
    // The three bind PDUs are types of their own with the same fields.
    macro_rules! bind {
        ($pdu:ident) => {
            Prepared::new(
                $pdu::builder()
                    .system_id(id)
                    .password(password)
                    .system_type(system_type)
                    .interface_version(InterfaceVersion::Smpp3_4)
                    .build(),
            )
        };
    }
    let pdu = match c.bind {
        BindType::Transceiver => bind!(BindTransceiver),
        BindType::Transmitter => bind!(BindTransmitter),
        BindType::Receiver => bind!(BindReceiver),
    };
    match owner.session.request(&pdu, c.response_timeout).await {
        Ok(_) => Ok((owner, events)),
        Err(WireError::Refused(code)) => {
            Err(format!("bind refused: {}", super::status::name(code)))
        }
        Err(e) => Err(format!("bind: {e}")),
    }
}

/// TLS over `tcp`, the server checked against the public web roots.
async fn tls_connect(
    host_port: &str,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("TLS name {host:?}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host_port}: {e}"))
}

/// `s` (with its NUL) as a C string of a PDU field.
fn text<'a, const MIN: usize, const MAX: usize>(
    s: &'a [u8],
    what: &str,
) -> Result<COctetString<'a, MIN, MAX>, String> {
    COctetString::new(s).map_err(|e| format!("{what}: {e}"))
}

/// Serves one bind until it ends; why it ended.
async fn serve(shared: &Shared, session: &Session, mut events: Events) -> String {
    while let Some(event) = events.recv().await {
        let frame = match event {
            Event::Incoming(frame) => frame,
            Event::Closed(why) => return why,
        };
        let seq = frame.sequence_number();
        match frame.id() {
            CommandId::DeliverSm => match frame.body::<DeliverSm<'_>>() {
                // Refused for good: ESME_RX_P_APPN asks the SMSC not to send it again.
                Err(e) => {
                    shared.stats.bad_receipts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(smsc = %shared.config.address, error = %e, "deliver_sm that does not decode; answered ESME_RX_P_APPN");
                    session.respond(seq, CommandStatus::EsmeRxPAppn, DeliverSmResp::default());
                }
                Ok(d) => match on_deliver_sm(shared, &d) {
                    // Answered once the coordinator has stored it: a receipt lost
                    // before that (the node stops, the bind breaks) the SMSC sends again.
                    Some(r) => {
                        let session = session.clone();
                        let answer = OnStored::new(move || {
                            session.respond(seq, CommandStatus::EsmeRok, DeliverSmResp::default());
                        });
                        if shared.receipts.send((r, Some(answer))).await.is_err() {
                            return "the node stopped".into();
                        }
                    }
                    None => session.respond(seq, CommandStatus::EsmeRok, DeliverSmResp::default()),
                },
            },
            CommandId::Unbind => {
                session.respond(seq, CommandStatus::EsmeRok, Pdu::UnbindResp);
                return "the SMSC unbound".into();
            }
            _ => {
                tracing::debug!(id = ?frame.id(), "SMPP request not supported; generic_nack");
                session.respond(seq, CommandStatus::EsmeRinvcmdid, Pdu::GenericNack);
            }
        }
    }
    "the connection closed".into()
}

/// A deliver_sm: a receipt is read, counted and returned for the node;
/// anything else (a mobile-originated message) is answered and dropped.
fn on_deliver_sm(shared: &Shared, d: &DeliverSm<'_>) -> Option<smsmesh::pb::Receipt> {
    let esm = u8::from(d.esm_class);
    if !dlr::is_receipt(esm) {
        return None;
    }
    let mut id = None;
    let mut state = None;
    for tlv in d.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(v)) => id = Some(v.as_str().to_string()),
            Some(TlvValue::MessageState(s)) => state = Some(u8::from(*s)),
            _ => {}
        }
    }
    match dlr::parse(d.short_message().as_ref(), id.as_deref(), state) {
        Ok(r) => {
            shared.stats.receipts.fetch_add(1, Ordering::Relaxed);
            let id = shared.config.ids.normalise(&r.id);
            tracing::debug!(%id, state = ?r.state, "delivery receipt");
            Some(smsmesh::pb::Receipt {
                provider_id: id,
                message_state: u32::from(r.state.tlv()),
                error: r.error,
                received_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            })
        }
        Err(e) => {
            shared.stats.bad_receipts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(smsc = %shared.config.address, error = %e, "unreadable deliver_sm receipt");
            None
        }
    }
}
