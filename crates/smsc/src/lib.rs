//! A test SMSC: it speaks SMPP 3.4 over TCP as an operator's SMSC does, for
//! the test suite, the quick start and benchmarks. It binds any system_id
//! (transceiver, transmitter or receiver), answers every submit_sm, and for
//! each segment it accepted with registered_delivery set, sends a delivery
//! receipt (a deliver_sm with the `id:… stat:… err:…` text) on a bind that
//! can receive. Knobs give it what real SMSCs do: slow responses, late
//! receipts, receipts before the response or on another bind, hex or
//! decimal ids, ESME_RTHROTTLED above a rate, outcomes chosen by the
//! destination's last digit, lost responses and binds closed mid-traffic.
//! As an SMSC does, it keeps a receipt that no bind can take (or that a bind
//! took but closed before its deliver_sm_resp) and sends it again when an
//! ESME binds to receive.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use rusmpp::pdus::{
    BindReceiverResp, BindTransceiverResp, BindTransmitterResp, DeliverSm, SubmitSmResp,
};
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::EsmClass;
use rusmpp::{Command, CommandStatus, Pdu};
use tokio_util::codec::FramedRead;

mod outbound;

use outbound::{Outbound, Receipt};

/// How the SMSC writes its message ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IdStyle {
    /// 1, 2, 3, …
    Decimal,
    /// Ten upper-case hex digits with leading zeros: 000000001A.
    Hex,
}

/// What the SMSC does.
#[derive(Clone, Debug, clap::Args)]
pub struct SmscConfig {
    /// Wait this long before each submit_sm_resp (responses then come out of order).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub response_delay: Duration,
    /// Send each receipt this long after the submit_sm_resp.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub receipt_delay: Duration,
    /// Send each receipt before the submit_sm_resp of its segment.
    #[arg(long)]
    pub receipt_first: bool,
    /// Send receipts on the binds that can receive in turn, not on the bind
    /// that submitted (as an SMSC with many binds of one account does).
    #[arg(long)]
    pub receipt_any_bind: bool,
    /// The form of message ids.
    #[arg(long, value_enum, default_value = "decimal")]
    pub ids: IdStyle,
    /// Answer ESME_RTHROTTLED to submit_sm above this many a second (0: never).
    #[arg(long, default_value_t = 0)]
    pub throttle_above: u32,
    /// Outcome by the destination's last digit: 0-5 delivered, 6 undelivered
    /// (err 034), 7 expired, 8 ESME_RINVDSTADR, 9 ESME_RSYSERR. Off: every
    /// message is accepted and delivered.
    #[arg(long)]
    pub by_last_digit: bool,
    /// Never answer every Nth submit_sm (0: answer all); its receipt still
    /// comes, as when an SMSC accepts a message and the response is lost.
    #[arg(long, default_value_t = 0)]
    pub drop_response_every: u64,
    /// Close a bind, without answering, at every Nth submit_sm on it (0: never).
    #[arg(long, default_value_t = 0)]
    pub disconnect_every: u64,
    /// Keep the receipts of the first N accepted messages, then send them
    /// all at once (0: send each when due): a backlog of receipts, as an
    /// SMSC delivers after an outage, to measure matching on its own.
    #[arg(long, default_value_t = 0)]
    pub receipts_after: u64,
}

impl Default for SmscConfig {
    fn default() -> Self {
        SmscConfig {
            response_delay: Duration::ZERO,
            receipt_delay: Duration::ZERO,
            receipt_first: false,
            receipt_any_bind: false,
            ids: IdStyle::Decimal,
            throttle_above: 0,
            by_last_digit: false,
            drop_response_every: 0,
            disconnect_every: 0,
            receipts_after: 0,
        }
    }
}

/// What the SMSC has done.
#[derive(Debug, Default)]
pub struct SmscStats {
    /// Binds accepted.
    pub binds: AtomicU64,
    /// submit_sm received.
    pub submits: AtomicU64,
    /// submit_sm answered ESME_ROK.
    pub accepted: AtomicU64,
    /// submit_sm answered ESME_RTHROTTLED.
    pub throttled: AtomicU64,
    /// Receipts sent.
    pub receipts: AtomicU64,
    /// submit_sm left unanswered (`--drop-response-every`).
    pub dropped: AtomicU64,
    /// Binds closed mid-traffic (`--disconnect-every`).
    pub disconnects: AtomicU64,
    /// Receipts sent again: kept while no bind could receive, or sent on a
    /// bind that closed before their deliver_sm_resp.
    pub redelivered: AtomicU64,
    /// Receipts kept now until a bind can receive them.
    pub held: AtomicU64,
}

/// Receipts kept for a receiver at most; more are dropped.
const MAX_HELD: usize = 1_000_000;

/// The SMSC's shared state.
struct Shared {
    config: SmscConfig,
    stats: Arc<SmscStats>,
    next_id: AtomicU64,
    /// Binds that can receive, by connection number.
    receivers: std::sync::Mutex<Vec<(u64, Outbound)>>,
    turn: AtomicU64,
    /// (second, submits in it) for the throttle.
    window: std::sync::Mutex<(u64, u32)>,
    /// Receipts waiting for a bind that can receive them.
    held: std::sync::Mutex<VecDeque<Receipt>>,
    /// Receipts kept for `--receipts-after`, with the bind each came for.
    backlog: std::sync::Mutex<Vec<(Outbound, Receipt)>>,
    /// Whether the backlog went out: later receipts go when due.
    backlog_sent: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn new(config: SmscConfig, stats: Arc<SmscStats>) -> Shared {
        Shared {
            config,
            stats,
            next_id: AtomicU64::new(1),
            receivers: std::sync::Mutex::new(Vec::new()),
            turn: AtomicU64::new(0),
            window: std::sync::Mutex::new((0, 0)),
            held: std::sync::Mutex::new(VecDeque::new()),
            backlog: std::sync::Mutex::new(Vec::new()),
            backlog_sent: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Serves SMPP on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, config: SmscConfig, stats: Arc<SmscStats>) {
    let shared = Arc::new(Shared::new(config, stats));
    let mut conn = 0u64;
    while let Ok((sock, _)) = listener.accept().await {
        conn += 1;
        let _ = sock.set_nodelay(true);
        tokio::spawn(connection(shared.clone(), conn, sock));
    }
}

async fn connection(shared: Arc<Shared>, conn: u64, sock: tokio::net::TcpStream) {
    let (read, write) = sock.into_split();
    let mut stream = FramedRead::new(read, CommandCodec::new());
    let (out, writer) = Outbound::start(write);
    let mut submits = 0u64;
    while let Some(Ok(cmd)) = stream.next().await {
        let seq = cmd.sequence_number();
        let ok = |pdu: Pdu| Command::new(CommandStatus::EsmeRok, seq, pdu);
        let system_id = || COctetString::from_string("smsmesh-smsc".into()).expect("short");
        let reply = match cmd.pdu() {
            Some(Pdu::BindTransceiver(_)) => {
                // Answered before the receipts kept for a receiver go out on it.
                out.send(&ok(BindTransceiverResp::builder()
                    .system_id(system_id())
                    .build()
                    .into()));
                receiver(&shared, conn, &out);
                None
            }
            Some(Pdu::BindReceiver(_)) => {
                // Answered before the receipts kept for a receiver go out on it.
                out.send(&ok(BindReceiverResp::builder()
                    .system_id(system_id())
                    .build()
                    .into()));
                receiver(&shared, conn, &out);
                None
            }
            Some(Pdu::BindTransmitter(_)) => {
                shared.stats.binds.fetch_add(1, Ordering::Relaxed);
                Some(ok(BindTransmitterResp::builder()
                    .system_id(system_id())
                    .build()
                    .into()))
            }
            Some(Pdu::EnquireLink) => Some(ok(Pdu::EnquireLinkResp)),
            Some(Pdu::DeliverSmResp(_)) => {
                out.answered(seq);
                None
            }
            Some(Pdu::Unbind) => {
                out.send(&ok(Pdu::UnbindResp));
                break;
            }
            Some(Pdu::SubmitSm(s)) => {
                submits += 1;
                let every = shared.config.disconnect_every;
                if every > 0 && submits.is_multiple_of(every) {
                    shared.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                submit(&shared, &out, seq, s);
                None
            }
            _ => None,
        };
        if let Some(r) = reply
            && !out.send(&r)
        {
            break;
        }
    }
    shared
        .receivers
        .lock()
        .expect("receivers lock")
        .retain(|(c, _)| *c != conn);
    // Receipts this bind did not answer go again, in the order they were sent.
    for r in out.close() {
        shared.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        send_receipt(&shared, None, r);
    }
    let _ = writer.await;
}

/// A bind that can receive: it takes the receipts kept for one.
fn receiver(shared: &Shared, conn: u64, out: &Outbound) {
    shared.stats.binds.fetch_add(1, Ordering::Relaxed);
    shared
        .receivers
        .lock()
        .expect("receivers lock")
        .push((conn, out.clone()));
    let held: Vec<Receipt> = shared.held.lock().expect("held lock").drain(..).collect();
    shared
        .stats
        .held
        .fetch_sub(held.len() as u64, Ordering::Relaxed);
    for r in held {
        shared.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        if out.deliver(r).is_none() {
            shared.stats.receipts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the SMSC makes of one submit_sm.
fn submit(shared: &Arc<Shared>, out: &Outbound, seq: u32, s: &rusmpp::pdus::SubmitSm) {
    let c = &shared.config;
    shared.stats.submits.fetch_add(1, Ordering::Relaxed);
    let to = s.destination_addr.as_str().to_string();
    let digit = to.as_bytes().last().map_or(0, |d| d.wrapping_sub(b'0'));
    let status = if throttled(shared) {
        shared.stats.throttled.fetch_add(1, Ordering::Relaxed);
        CommandStatus::EsmeRthrottled
    } else if c.by_last_digit && digit == 8 {
        CommandStatus::EsmeRinvdstadr
    } else if c.by_last_digit && digit == 9 {
        CommandStatus::EsmeRsyserr
    } else {
        CommandStatus::EsmeRok
    };
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match c.ids {
        IdStyle::Decimal => n.to_string(),
        IdStyle::Hex => format!("{n:010X}"),
    };
    let resp = Command::new(
        status,
        seq,
        SubmitSmResp::builder()
            .message_id(COctetString::from_string(id.clone()).expect("short id"))
            .build(),
    );
    let every = c.drop_response_every;
    let dropped = every > 0 && n.is_multiple_of(every);
    if dropped {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
    let wants_receipt = u8::from(s.registered_delivery) & 0x03 != 0;
    let receipt = (status == CommandStatus::EsmeRok && wants_receipt).then(|| {
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let (stat, err) = match (c.by_last_digit, digit) {
            (true, 6) => ("UNDELIV", "034"),
            (true, 7) => ("EXPIRED", "000"),
            _ => ("DELIVRD", "000"),
        };
        Receipt::new(receipt_pdu(&id, &to, stat, err))
    });
    if status == CommandStatus::EsmeRok && !wants_receipt {
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
    }
    let immediate = c.response_delay.is_zero() && c.receipt_delay.is_zero();
    if immediate {
        if c.receipt_first
            && let Some(r) = receipt.clone()
        {
            give_receipt(shared, out, r);
        }
        if !dropped {
            out.send(&resp);
        }
        if !c.receipt_first
            && let Some(r) = receipt
        {
            give_receipt(shared, out, r);
        }
        return;
    }
    let (shared, out) = (shared.clone(), out.clone());
    tokio::spawn(async move {
        let c = &shared.config;
        if c.receipt_first
            && let Some(r) = receipt.clone()
        {
            give_receipt(&shared, &out, r);
        }
        tokio::time::sleep(c.response_delay).await;
        if !dropped {
            out.send(&resp);
        }
        if !c.receipt_first
            && let Some(r) = receipt
        {
            tokio::time::sleep(c.receipt_delay).await;
            give_receipt(&shared, &out, r);
        }
    });
}

/// Whether this submit_sm is over the throttle's rate.
fn throttled(shared: &Shared) -> bool {
    let limit = shared.config.throttle_above;
    if limit == 0 {
        return false;
    }
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut w = shared.window.lock().expect("window lock");
    if w.0 != second {
        *w = (second, 0);
    }
    w.1 += 1;
    w.1 > limit
}

/// A receipt for message `id` to `to`.
fn receipt_pdu(id: &str, to: &str, stat: &str, err: &str) -> DeliverSm {
    let now = "2612051200";
    let text = format!(
        "id:{id} sub:001 dlvrd:{:03} submit date:{now} done date:{now} stat:{stat} err:{err} text:",
        u8::from(stat == "DELIVRD")
    );
    let addr = |s: &str| COctetString::from_string(s.to_string()).unwrap_or_default();
    DeliverSm::builder()
        .source_addr(addr(to))
        .destination_addr(addr("smsmesh"))
        .esm_class(EsmClass::from(0x04))
        .short_message(OctetString::from_vec(text.into_bytes()).expect("a short text"))
        .build()
}

/// Sends a receipt due for the bind `out`, or keeps it for the backlog
/// (`--receipts-after`), which goes out once it holds N.
fn give_receipt(shared: &Arc<Shared>, out: &Outbound, r: Receipt) {
    let after = shared.config.receipts_after;
    if after == 0 || shared.backlog_sent.load(Ordering::Acquire) {
        return send_receipt(shared, Some(out), r);
    }
    let all = {
        let mut backlog = shared.backlog.lock().expect("backlog lock");
        if shared.backlog_sent.load(Ordering::Acquire) {
            drop(backlog);
            return send_receipt(shared, Some(out), r);
        }
        backlog.push((out.clone(), r));
        if (backlog.len() as u64) < after {
            return;
        }
        shared.backlog_sent.store(true, Ordering::Release);
        std::mem::take(&mut *backlog)
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        for (out, r) in all {
            send_receipt(&shared, Some(&out), r);
        }
    });
}

/// Sends a receipt on the submitting bind (`out`), or on the next bind that
/// can receive (with `--receipt-any-bind`, or when the submitter cannot), or
/// keeps it until a bind can. A bind found closed is taken off the
/// receivers, and the receipt tries the next.
fn send_receipt(shared: &Shared, out: Option<&Outbound>, mut r: Receipt) {
    let mut own = out;
    loop {
        let receivers = shared.receivers.lock().expect("receivers lock");
        let mine = own.filter(|out| receivers.iter().any(|(_, o)| o.same(out)));
        let target = match mine {
            Some(out) if !shared.config.receipt_any_bind => out.clone(),
            _ if receivers.is_empty() => {
                // Kept while the receivers are locked, so a bind that comes now takes it.
                let mut held = shared.held.lock().expect("held lock");
                if held.len() < MAX_HELD {
                    held.push_back(r);
                    shared.stats.held.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            _ => {
                let i = shared.turn.fetch_add(1, Ordering::Relaxed) as usize % receivers.len();
                receivers[i].1.clone()
            }
        };
        drop(receivers);
        match target.deliver(r) {
            None => {
                shared.stats.receipts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(back) => {
                // That bind has just closed: it takes no more.
                shared
                    .receivers
                    .lock()
                    .expect("receivers lock")
                    .retain(|(_, o)| !o.same(&target));
                r = back;
                own = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt whose binds have all closed, their connections not yet
    /// ended (a write failed, the reader still waits), is kept, and the
    /// closed binds are no longer receivers. This once recursed from one
    /// closed bind to the next until the stack overflowed.
    #[tokio::test]
    async fn a_receipt_with_only_closed_binds_to_take_it_is_kept() {
        let shared = Shared::new(SmscConfig::default(), Arc::default());
        let (a, _) = Outbound::start(tokio::io::sink());
        let (b, _) = Outbound::start(tokio::io::sink());
        assert!(a.close().is_empty() && b.close().is_empty());
        shared
            .receivers
            .lock()
            .expect("receivers lock")
            .extend([(1, a.clone()), (2, b)]);
        let r = Receipt::new(receipt_pdu("1", "4670000001", "DELIVRD", "000"));
        send_receipt(&shared, Some(&a), r);
        assert!(shared.receivers.lock().expect("receivers lock").is_empty());
        assert_eq!(shared.held.lock().expect("held lock").len(), 1);
        assert_eq!(shared.stats.held.load(Ordering::Relaxed), 1);
        assert_eq!(shared.stats.receipts.load(Ordering::Relaxed), 0);
    }
}
