//! The connector: connects to the SMSC, binds, keeps the bind (rusmppc sends
//! enquire_link and answers the SMSC's), answers deliver_sm, and when the
//! bind is lost marks the gateway not ready and binds again with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use rusmpp::pdus::{BindReceiver, BindTransceiver, BindTransmitter, DeliverSmResp};
use rusmpp::tlvs::TlvValue;
use rusmpp::types::COctetString;
use rusmpp::values::InterfaceVersion;
use rusmpp::{CommandId, Pdu};
use rusmppc::{ConnectionBuilder, Event};

use super::Shared;
use super::config::BindType;
use super::dlr;

/// Binds and keeps binding until the gateway is dropped (the task is aborted then).
pub(super) async fn run(shared: Arc<Shared>, reconnect_max: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match bind(&shared).await {
            Ok((client, events)) => {
                backoff = Duration::from_millis(100);
                shared.stats.binds.fetch_add(1, Ordering::Relaxed);
                tracing::info!(smsc = %shared.config.address, system_id = %shared.config.system_id, "SMPP bound");
                shared.client.send_replace(Some(client.clone()));
                shared.ready.send_replace(true);
                let why = serve(&shared, &client, events).await;
                shared.client.send_replace(None);
                shared.ready.send_replace(false);
                let _ = client.close().await;
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

type Events = Box<dyn futures::Stream<Item = Event> + Send + Unpin>;

/// Connects and binds.
async fn bind(shared: &Shared) -> Result<(rusmppc::Client, Events), String> {
    let c = &shared.config;
    let builder = ConnectionBuilder::new()
        .enquire_link_interval(c.enquire_link)
        .enquire_link_response_timeout(c.response_timeout)
        .response_timeout(c.response_timeout)
        .disable_interface_version_check();
    let (client, events) = match c.address.strip_prefix("smpp://") {
        // Plain TCP: connected here, with Nagle's algorithm off. With it on, a
        // submit_sm written while the last is unacknowledged waits for the
        // peer's delayed ACK (40 ms), which held a bind to ~3,000 submit_sm/s.
        Some(host_port) => {
            let tcp = tokio::time::timeout(
                c.response_timeout,
                tokio::net::TcpStream::connect(host_port),
            )
            .await
            .map_err(|_| format!("connect to {host_port}: timed out"))?
            .map_err(|e| format!("connect to {host_port}: {e}"))?;
            tcp.set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            let (client, events) = builder.connected(tcp);
            (client, Box::new(events) as Events)
        }
        None => {
            let (client, events) = builder
                .connect(&c.address)
                .await
                .map_err(|e| e.to_string())?;
            (client, Box::new(events) as Events)
        }
    };
    let (id, password, system_type) = (
        text(&c.system_id, "system_id")?,
        text(&c.password, "password")?,
        text(&c.system_type, "system_type")?,
    );
    let v34 = InterfaceVersion::Smpp3_4;
    let bound = match c.bind {
        BindType::Transceiver => client
            .bind_transceiver(
                BindTransceiver::builder()
                    .system_id(id)
                    .password(password)
                    .system_type(system_type)
                    .interface_version(v34)
                    .build(),
            )
            .await
            .map(drop),
        BindType::Transmitter => client
            .bind_transmitter(
                BindTransmitter::builder()
                    .system_id(id)
                    .password(password)
                    .system_type(system_type)
                    .interface_version(v34)
                    .build(),
            )
            .await
            .map(drop),
        BindType::Receiver => client
            .bind_receiver(
                BindReceiver::builder()
                    .system_id(id)
                    .password(password)
                    .system_type(system_type)
                    .interface_version(v34)
                    .build(),
            )
            .await
            .map(drop),
    };
    if let Err(e) = bound {
        let _ = client.close().await;
        return Err(match e {
            rusmppc::error::Error::UnexpectedResponse { response } => format!(
                "bind refused: {}",
                super::status::name(u32::from(response.status()))
            ),
            e => format!("bind: {e}"),
        });
    }
    Ok((client, events))
}

/// `s` as a C string of a PDU field.
fn text<const MIN: usize, const MAX: usize>(
    s: &str,
    what: &str,
) -> Result<COctetString<MIN, MAX>, String> {
    COctetString::from_string(s.to_string()).map_err(|e| format!("{what}: {e}"))
}

/// Serves one bind until it ends; why it ended.
async fn serve(shared: &Shared, client: &rusmppc::Client, mut events: Events) -> String {
    while let Some(event) = events.next().await {
        match event {
            Event::Incoming(cmd) => match cmd.id() {
                CommandId::DeliverSm => {
                    if let Some(Pdu::DeliverSm(d)) = cmd.pdu()
                        && let Some(r) = on_deliver_sm(shared, d)
                        && shared.receipts.send(r).await.is_err()
                    {
                        return "the node stopped".into();
                    }
                    let _ = client
                        .deliver_sm_resp(cmd.sequence_number(), DeliverSmResp::default())
                        .await;
                }
                CommandId::Unbind => {
                    let _ = client.unbind_resp(cmd.sequence_number()).await;
                    return "the SMSC unbound".into();
                }
                _ => {}
            },
            Event::Error(e) => {
                if client.is_closed() {
                    return e.to_string();
                }
                tracing::warn!(smsc = %shared.config.address, error = %e, "SMPP connection error");
            }
        }
    }
    "the connection closed".into()
}

/// A deliver_sm: a receipt is read, counted and returned for the node;
/// anything else (a mobile-originated message) is answered and dropped.
fn on_deliver_sm(shared: &Shared, d: &rusmpp::pdus::DeliverSm) -> Option<smsmesh::pb::Receipt> {
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
