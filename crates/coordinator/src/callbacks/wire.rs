//! What a callback request carries: the JSON body of a group of events and
//! the signature headers that let the receiver check it came from us.
//!
//! The body is `{"events":[...]}`; each event has an `id` (the same every
//! time it is sent again), a `type` and the fields of its kind (README,
//! "Status callbacks"). The signature is `X-Smsmesh-Signature: sha256=` and
//! the hex HMAC-SHA256, keyed with the tenant's secret, of the
//! `X-Smsmesh-Timestamp` value (Unix seconds), a `.`, and the body.

use hmac::{Hmac, Mac};
use serde::Serialize;
use smsmesh::pb::{BatchState, MessageState};
use smsmesh::{BatchId, MessageId};

use crate::store::{CallbackEvent, CallbackRow};

/// Header with the Unix time (seconds) the request was signed at.
pub const TIMESTAMP_HEADER: &str = "x-smsmesh-timestamp";
/// Header with the signature.
pub const SIGNATURE_HEADER: &str = "x-smsmesh-signature";

/// The `type` of an event.
pub fn event_type(e: &CallbackEvent) -> &'static str {
    if e.batch_state != 0 {
        return match BatchState::try_from(e.batch_state as i32) {
            Ok(BatchState::Cancelled) => "batch.cancelled",
            _ => "batch.completed",
        };
    }
    match MessageState::try_from(e.state as i32) {
        Ok(MessageState::Sent) => "message.sent",
        Ok(MessageState::Failed) => "message.failed",
        Ok(MessageState::Delivered) => "message.delivered",
        Ok(MessageState::Undelivered) => "message.undelivered",
        Ok(MessageState::Expired) => "message.expired",
        Ok(MessageState::Rejected) => "message.rejected",
        _ => "message.delivery_unknown",
    }
}

/// One event as JSON (fields left out when empty or zero).
#[derive(Serialize)]
struct EventJson<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    batch_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    state: &'static str,
    at_unix_ms: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    to: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    client_ref: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    attempts: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    receipt_state: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    receipt_error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl<'a> EventJson<'a> {
    /// Event `e`, named `id` among all events.
    fn of(id: String, e: &'a CallbackEvent) -> Self {
        let batch = e.batch_state != 0;
        let count = |i: usize| {
            if batch {
                e.counts.get(i).copied()
            } else {
                None
            }
        };
        EventJson {
            id,
            kind: event_type(e),
            batch_id: BatchId(e.batch).to_string(),
            message_id: (!batch).then(|| {
                MessageId {
                    batch: BatchId(e.batch),
                    index: e.index,
                }
                .to_string()
            }),
            state: if batch {
                BatchState::try_from(e.batch_state as i32)
                    .unwrap_or(BatchState::Unspecified)
                    .as_str_name()
            } else {
                MessageState::try_from(e.state as i32)
                    .unwrap_or(MessageState::Unspecified)
                    .as_str_name()
            },
            at_unix_ms: e.unix_ms,
            to: &e.to,
            client_ref: &e.client_ref,
            error: &e.error,
            attempts: e.attempts,
            receipt_state: crate::core::receipt_state_word(e.receipt_state),
            receipt_error: &e.receipt_error,
            total: count(0),
            sent: count(1),
            failed: count(2),
            cancelled: count(3),
        }
    }
}

/// The body of one request: the events of `rows`, each row with its number.
pub fn body<'a>(rows: impl IntoIterator<Item = (u64, &'a CallbackRow)>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        events: Vec<EventJson<'a>>,
    }
    let events: Vec<EventJson<'a>> = rows
        .into_iter()
        .flat_map(|(seq, row)| {
            row.events
                .iter()
                .enumerate()
                .map(move |(i, e)| EventJson::of(format!("{seq}-{i}"), e))
        })
        .collect();
    serde_json::to_vec(&Body { events }).expect("events serialize")
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_as_json() {
        let row = CallbackRow {
            url: "http://h/".into(),
            tenant: String::new(),
            created_unix_ms: 1,
            events: vec![
                CallbackEvent {
                    batch: 7,
                    index: 3,
                    state: MessageState::Sent as u32,
                    unix_ms: 10,
                    to: "+15550001".into(),
                    client_ref: "r".into(),
                    attempts: 2,
                    ..Default::default()
                },
                CallbackEvent {
                    batch: 7,
                    index: 3,
                    state: MessageState::Undelivered as u32,
                    unix_ms: 11,
                    receipt_state: 5,
                    receipt_error: "012".into(),
                    ..Default::default()
                },
                CallbackEvent {
                    batch: 7,
                    unix_ms: 12,
                    batch_state: BatchState::Completed as u32,
                    counts: vec![1, 1, 0, 0],
                    ..Default::default()
                },
            ],
        };
        let v: serde_json::Value = serde_json::from_slice(&body([(9, &row)])).unwrap();
        let e = &v["events"];
        assert_eq!(e[0]["id"], "9-0");
        assert_eq!(e[0]["type"], "message.sent");
        assert_eq!(e[0]["message_id"], format!("{}.3", BatchId(7)));
        assert_eq!(e[0]["to"], "+15550001");
        assert_eq!(e[0]["attempts"], 2);
        assert!(e[0].get("error").is_none());
        assert_eq!(e[1]["type"], "message.undelivered");
        assert_eq!(e[1]["receipt_state"], "UNDELIV");
        assert_eq!(e[1]["receipt_error"], "012");
        assert_eq!(e[2]["id"], "9-2");
        assert_eq!(e[2]["type"], "batch.completed");
        assert_eq!(e[2]["state"], "BATCH_STATE_COMPLETED");
        assert_eq!(e[2]["sent"], 1);
        assert_eq!(e[2]["failed"], 0);
        assert!(e[2].get("message_id").is_none() && e[2].get("to").is_none());
        assert!(e[1].get("to").is_none() && e[1].get("attempts").is_none());
        assert!(e[0].get("total").is_none());
    }

    #[test]
    fn signature_covers_time_and_body() {
        let s = signature(b"0123456789abcdef", 1_700_000_000, b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64, "{s}");
        assert_ne!(s, signature(b"0123456789abcdef", 1_700_000_001, b"{}"));
        assert_ne!(s, signature(b"0123456789abcdef", 1_700_000_000, b"{ }"));
        assert_ne!(s, signature(b"0123456789abcdeF", 1_700_000_000, b"{}"));
    }
}
