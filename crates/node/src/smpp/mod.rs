//! The SMPP gateway: a node as an SMPP client (ESME) of one SMSC. One
//! connector per node holds one bind ([`session`]); sends are pipelined on it
//! under a window of outstanding submit_sm and a limit of segments a second,
//! and each submit_sm_resp status becomes one outcome class ([`status`]).
//! Delivery receipts arriving on the bind are parsed ([`dlr`]), their ids
//! normalised as `--smpp-ids` says, and handed to the node, which forwards
//! them to the coordinator (where they are matched to their messages).

pub mod config;
pub mod dlr;
mod frame;
mod session;
pub mod status;
mod wire;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use rusmpp_core::pdus::borrowed::SubmitSm;
use rusmpp_core::types::borrowed::{COctetString, OctetString};
use rusmpp_core::values::{DataCoding, EsmClass, Npi, PriorityFlag, RegisteredDelivery, Ton};
use smsmesh::pb;
use tokio::sync::{Semaphore, watch};

pub use config::{SmppArgs, SmppConfig};

use crate::gateway::{Accepted, Failure, FailureClass, Gateway, Outcome, Sending};

/// What the connector has done, for metrics.
#[derive(Debug, Default)]
pub struct SmppStats {
    /// Binds that succeeded.
    pub binds: AtomicU64,
    /// Connects or binds that failed.
    pub bind_failures: AtomicU64,
    /// submit_sm sent (one per segment).
    pub submits: AtomicU64,
    /// submit_sm_resp with ESME_ROK.
    pub accepted: AtomicU64,
    /// Non-zero submit_sm_resp statuses.
    pub rejected: AtomicU64,
    /// ESME_RTHROTTLED answers.
    pub throttled: AtomicU64,
    /// submit_sm with no response in time (or a connection lost before it).
    pub unknown: AtomicU64,
    /// Delivery receipts received.
    pub receipts: AtomicU64,
    /// deliver_sm that were not a receipt we could read.
    pub bad_receipts: AtomicU64,
}

/// State shared by the sends and the connector task.
struct Shared {
    config: SmppConfig,
    /// The bound client, while the bind is up.
    client: watch::Sender<Option<wire::Session>>,
    /// Whether the bind is up (what the node's credit follows).
    ready: watch::Sender<bool>,
    /// One permit per submit_sm outstanding.
    window: Semaphore,
    limiter: Option<crate::pace::Pace>,
    /// Until when the connector is paused after ESME_RTHROTTLED.
    paused_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// The next concatenation reference.
    reference: AtomicU8,
    /// The default sender's source_addr, with its NUL.
    source: Vec<u8>,
    stats: Arc<SmppStats>,
    /// Receipts to the node (a deliver_sm is answered once the coordinator
    /// has stored its receipt).
    receipts: tokio::sync::mpsc::Sender<crate::IncomingReceipt>,
}

/// The SMPP gateway of one node.
pub struct Smpp {
    shared: Arc<Shared>,
    connector: tokio::task::JoinHandle<()>,
    receipts: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::IncomingReceipt>>>,
}

impl Drop for Smpp {
    fn drop(&mut self) {
        self.connector.abort();
    }
}

impl Smpp {
    /// Starts the connector (it binds, and binds again whenever the bind is
    /// lost, backing off up to `reconnect_max`). Must run inside a runtime.
    pub fn start(config: SmppConfig, reconnect_max: Duration) -> Smpp {
        let limiter = NonZeroU32::new(config.rate).map(|r| {
            // A burst of at most a tenth of a second's worth, so the rate holds over short spans.
            let burst = NonZeroU32::new((r.get() / 10).max(1)).expect("at least 1");
            crate::pace::Pace::per_second(r, burst)
        });
        let (receipts, receipts_rx) = tokio::sync::mpsc::channel(RECEIPT_QUEUE);
        let shared = Arc::new(Shared {
            receipts,
            window: Semaphore::new(config.window as usize),
            client: watch::channel(None).0,
            ready: watch::channel(false).0,
            limiter,
            paused_until: std::sync::Mutex::new(None),
            reference: AtomicU8::new(rand::random()),
            source: frame::nul_terminated(&config.sender.addr),
            stats: Arc::default(),
            config,
        });
        let connector = tokio::spawn(session::run(shared.clone(), reconnect_max));
        Smpp {
            shared,
            connector,
            receipts: std::sync::Mutex::new(Some(receipts_rx)),
        }
    }

    /// The connector's counters.
    pub fn stats(&self) -> Arc<SmppStats> {
        self.shared.stats.clone()
    }
}

impl Gateway for Smpp {
    fn kind(&self) -> &'static str {
        "smpp"
    }

    fn send(&self, job: &pb::Job) -> Sending {
        let class = smsmesh::priority::Class::from_proto(job.priority as i32, "priority")
            .unwrap_or_default();
        // Made into PDUs here, from the job's own fields: the send keeps only those.
        let pdus = match submit_sms(&self.shared, &job.to, &job.body, &job.sender, class) {
            Ok(pdus) => pdus,
            Err(f) => return Sending::Done(Err(f)),
        };
        let shared = self.shared.clone();
        Sending::Pending(async move { submit(&shared, pdus).await }.boxed())
    }

    /// A receiver bind cannot submit: its node takes no jobs.
    fn takes_jobs(&self) -> bool {
        self.shared.config.bind != config::BindType::Receiver
    }

    fn ready(&self) -> Option<watch::Receiver<bool>> {
        Some(self.shared.ready.subscribe())
    }

    /// The SMSC's name (`--smpp-provider`, by default its address): its
    /// message ids are unique there, whichever node's bind a receipt comes on.
    fn provider(&self) -> String {
        self.shared.config.provider.clone()
    }

    fn receipts(&self) -> Option<tokio::sync::mpsc::Receiver<crate::IncomingReceipt>> {
        self.receipts.lock().expect("receipts lock").take()
    }
}

/// Receipts queued for the node at most; past that, deliver_sm waits for room
/// before it is answered (the SMSC then holds the rest).
const RECEIPT_QUEUE: usize = 100_000;

/// The submit_sm of each segment of a message to `to` from `sender` (the
/// default one if empty), with the `priority_flag` of its class, encoded;
/// a message that cannot be one fails at once, as permanent.
fn submit_sms(
    shared: &Shared,
    to: &str,
    body: &str,
    sender: &str,
    class: smsmesh::priority::Class,
) -> Result<Vec<frame::Prepared>, Failure> {
    let c = &shared.config;
    let destination = frame::nul_terminated(to.strip_prefix('+').unwrap_or(to));
    let destination = COctetString::<1, 21>::new(&destination)
        .map_err(|e| Failure::new(FailureClass::Permanent, format!("destination {to:?}: {e}")))?;
    // Its TON/NPI come from its form, as the default sender's do.
    let own;
    let (sender, own_addr) = if sender.is_empty() {
        (&c.sender, None)
    } else {
        own = config::Sender::parse(sender, None, None)
            .map_err(|e| Failure::new(FailureClass::Permanent, e))?;
        (&own, Some(frame::nul_terminated(&own.addr)))
    };
    let source = COctetString::<1, 21>::new(own_addr.as_deref().unwrap_or(&shared.source))
        .map_err(|e| Failure::new(FailureClass::Permanent, format!("sender: {e}")))?;
    let encoded = smsmesh::encode::encode(body);
    let parts = encoded.parts.len();
    let reference = shared.reference.fetch_add(1, Ordering::Relaxed);
    let mut pdus = Vec::with_capacity(parts);
    for (i, part) in encoded.parts.into_iter().enumerate() {
        let (esm, bytes) = if parts == 1 {
            // Set from its byte: default mode and message type, no UDHI.
            (EsmClass::from(0x00), part)
        } else {
            let udh = smsmesh::encode::concat_udh(reference, parts as u8, i as u8 + 1);
            (
                EsmClass::from(0x40), // UDHI: the short_message starts with a header
                [udh.as_slice(), &part].concat(),
            )
        };
        let short_message = OctetString::new(&bytes).map_err(|e| {
            Failure::new(FailureClass::Permanent, format!("segment {}: {e}", i + 1))
        })?;
        pdus.push(frame::Prepared::new(
            SubmitSm::builder()
                .source_addr_ton(sender.ton)
                .source_addr_npi(sender.npi)
                .source_addr(source.clone())
                .dest_addr_ton(Ton::International)
                .dest_addr_npi(Npi::Isdn)
                .destination_addr(destination.clone())
                .esm_class(esm)
                .priority_flag(PriorityFlag::from(class.smpp_priority_flag()))
                .registered_delivery(if c.receipts {
                    RegisteredDelivery::request_all()
                } else {
                    RegisteredDelivery::default()
                })
                .data_coding(DataCoding::from(encoded.data_coding))
                .short_message(short_message)
                .build(),
        ));
    }
    Ok(pdus)
}

/// Sends one message's submit_sm, in order, on the bind (waiting a little
/// for one while it is down): the provider's id of each.
async fn submit(shared: &Shared, pdus: Vec<frame::Prepared>) -> Outcome {
    let c = &shared.config;
    let bound = shared.client.borrow().clone();
    let client = if let Some(client) = bound {
        client
    } else {
        // A send that comes while the bind is down waits a little for it, then goes back.
        let mut rx = shared.client.subscribe();
        let bound = tokio::time::timeout(c.response_timeout, rx.wait_for(Option::is_some)).await;
        match bound {
            Ok(Ok(client)) => client.clone().expect("waited for Some"),
            _ => {
                return Err(Failure::new(
                    FailureClass::Throttled,
                    format!("the SMPP bind to {} is down", c.address),
                ));
            }
        }
    };
    let parts = pdus.len();
    let mut ids = Vec::with_capacity(parts);
    for (i, pdu) in pdus.iter().enumerate() {
        ids.push(submit_one(shared, &client, pdu).await.map_err(|mut f| {
            if parts > 1 {
                f.reason = format!("segment {} of {parts}: {}", i + 1, f.reason);
            }
            f
        })?);
    }
    Ok(Accepted { provider_ids: ids })
}

/// One submit_sm, once the connector is not paused, the rate allows and the
/// window has room: the provider's message id, or the failure.
async fn submit_one(
    shared: &Shared,
    session: &wire::Session,
    pdu: &frame::Prepared,
) -> Result<String, Failure> {
    let pause = *shared.paused_until.lock().expect("pause lock");
    if let Some(until) = pause {
        tokio::time::sleep_until(until).await;
    }
    if let Some(limiter) = &shared.limiter {
        limiter.ready().await;
    }
    let _permit = shared
        .window
        .acquire()
        .await
        .expect("the window is never closed");
    let stats = &shared.stats;
    stats.submits.fetch_add(1, Ordering::Relaxed);
    let timeout = shared.config.response_timeout;
    match session.request(pdu, timeout).await {
        Ok(resp) => {
            let id = match resp.id() {
                rusmpp_core::CommandId::SubmitSmResp => resp
                    .message_id()
                    .map(|id| shared.config.ids.normalise(id.as_str()))
                    .map_err(|e| {
                        format!("a submit_sm_resp whose message_id does not decode ({e})")
                    }),
                other => Err(format!("{other:?}")),
            };
            match id {
                Ok(id) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    Ok(id)
                }
                Err(what) => {
                    stats.unknown.fetch_add(1, Ordering::Relaxed);
                    Err(Failure::new(
                        FailureClass::Unknown,
                        format!("the SMSC answered a submit_sm with {what}"),
                    ))
                }
            }
        }
        Err(wire::WireError::Refused(code)) => {
            let class = status::class(code);
            if class == FailureClass::Throttled {
                stats.throttled.fetch_add(1, Ordering::Relaxed);
                let until = tokio::time::Instant::now() + shared.config.throttle_pause;
                let mut p = shared.paused_until.lock().expect("pause lock");
                if p.is_none_or(|p| p < until) {
                    *p = Some(until);
                }
            } else {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Err(Failure::new(
                class,
                format!("submit_sm_resp {} (0x{code:08X})", status::name(code)),
            ))
        }
        Err(wire::WireError::NotSent(why)) => Err(Failure::new(
            FailureClass::Throttled,
            format!(
                "the SMPP bind to {} closed before the submit_sm ({why})",
                shared.config.address
            ),
        )),
        Err(e @ wire::WireError::Timeout(_)) => {
            stats.unknown.fetch_add(1, Ordering::Relaxed);
            Err(Failure::new(
                FailureClass::Unknown,
                format!("no submit_sm_resp: {e}; the SMSC may have sent it"),
            ))
        }
        Err(e @ wire::WireError::Lost(_)) => {
            stats.unknown.fetch_add(1, Ordering::Relaxed);
            Err(Failure::new(
                FailureClass::Unknown,
                format!(
                    "the SMPP bind failed during the submit_sm ({e}); the SMSC may have sent it"
                ),
            ))
        }
    }
}
