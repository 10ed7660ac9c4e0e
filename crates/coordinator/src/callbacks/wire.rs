//! What a callback request carries: the JSON body of a group of events and
//! the signature headers that let the receiver check it came from us.
//!
//! The body is `{"events":[...]}`; each event has an `id` (the same every
//! time it is sent again), a `type` and the fields of its kind (README,
//! "Status callbacks"). The signature is `X-Smsmesh-Signature: sha256=` and
//! the hex HMAC-SHA256, keyed with the tenant's secret, of the
//! `X-Smsmesh-Timestamp` value (Unix seconds), a `.`, and the body.

use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
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

/// One event as JSON; `id` names it among all events.
pub fn event_json(id: String, e: &CallbackEvent) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), id.into());
    m.insert("type".into(), event_type(e).into());
    m.insert("batch_id".into(), BatchId(e.batch).to_string().into());
    m.insert("at_unix_ms".into(), e.unix_ms.into());
    if e.batch_state != 0 {
        let state = BatchState::try_from(e.batch_state as i32).unwrap_or(BatchState::Unspecified);
        m.insert("state".into(), state.as_str_name().into());
        for (name, n) in ["total", "sent", "failed", "cancelled"]
            .iter()
            .zip(&e.counts)
        {
            m.insert((*name).into(), (*n).into());
        }
        return Value::Object(m);
    }
    let id = MessageId {
        batch: BatchId(e.batch),
        index: e.index,
    };
    m.insert("message_id".into(), id.to_string().into());
    let state = MessageState::try_from(e.state as i32).unwrap_or(MessageState::Unspecified);
    m.insert("state".into(), state.as_str_name().into());
    let mut text = |name: &str, v: &str| {
        if !v.is_empty() {
            m.insert(name.into(), v.into());
        }
    };
    text("to", &e.to);
    text("client_ref", &e.client_ref);
    text("error", &e.error);
    text("receipt_error", &e.receipt_error);
    let word = crate::core::receipt_state_word(e.receipt_state);
    text("receipt_state", word);
    if e.attempts > 0 {
        m.insert("attempts".into(), e.attempts.into());
    }
    Value::Object(m)
}

/// The body of one request: the events of `rows`, each row with its number.
pub fn body<'a>(rows: impl IntoIterator<Item = (u64, &'a CallbackRow)>) -> Vec<u8> {
    let events: Vec<Value> = rows
        .into_iter()
        .flat_map(|(seq, row)| {
            row.events
                .iter()
                .enumerate()
                .map(move |(i, e)| event_json(format!("{seq}-{i}"), e))
        })
        .collect();
    serde_json::to_vec(&json!({ "events": events })).expect("JSON values serialize")
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
        let v: Value = serde_json::from_slice(&body([(9, &row)])).unwrap();
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
