//! Delivery status posted back by an HTTP provider (`--http-webhook-listen`):
//! Twilio's status callbacks (a form with `MessageSid`, `MessageStatus` and
//! `ErrorCode`, signed with `X-Twilio-Signature`) at `/twilio`, and a
//! generic JSON one (`{"id", "status", "error"}`, signed with
//! `X-Smsmesh-Signature: sha256=HEX`, an HMAC of the body) at `/generic`.
//! A final status becomes a receipt for the coordinator, matched by the
//! provider's id like an SMPP receipt; the provider gets 200 once the
//! coordinator has stored it, else 503 so that it posts again. Callbacks
//! may come in any order and more than once: the coordinator keeps the
//! first final state.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use smsmesh::pb;
use tokio::sync::{mpsc, oneshot};

use crate::gateway::IncomingReceipt;

/// How callbacks are checked.
#[derive(Clone)]
pub struct Webhook {
    /// Twilio's: the auth token, and the URL Twilio posts to (as it signs it).
    pub twilio: Option<(String, String)>,
    /// The generic callbacks' HMAC secret.
    pub secret: Option<Vec<u8>>,
    /// Where receipts go.
    pub receipts: mpsc::Sender<IncomingReceipt>,
}

/// SMPP message_state of a final delivery status, by name (Twilio's and the
/// generic ones); `None` for an interim status (queued, sent, …).
pub fn message_state(status: &str) -> Option<u32> {
    Some(match status.to_ascii_lowercase().as_str() {
        "delivered" | "read" => 2,
        "expired" => 3,
        "canceled" | "cancelled" | "deleted" => 4,
        "undelivered" | "undeliverable" => 5,
        "unknown" => 7,
        "failed" | "rejected" => 8,
        _ => return None,
    })
}

/// Twilio's signature of a callback to `url` with form `params`: base64 of
/// HMAC-SHA1 over the URL and each parameter's name and value, sorted by name.
pub fn twilio_signature(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The generic signature of `body`: `sha256=` and the hex HMAC-SHA256.
pub fn generic_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The routes.
pub fn router(webhook: Webhook) -> Router {
    Router::new()
        .route("/twilio", post(twilio))
        .route("/generic", post(generic))
        .with_state(webhook)
}

/// Hands `receipt` to the node and waits until the coordinator stored it.
async fn hand_in(
    w: &Webhook,
    provider_id: String,
    state: u32,
    error: String,
) -> (StatusCode, &'static str) {
    let receipt = pb::Receipt {
        provider_id,
        message_state: state,
        error,
        received_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let (stored, is_stored) = oneshot::channel();
    if w.receipts
        .send((receipt, Some(stored.into())))
        .await
        .is_err()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
    }
    match tokio::time::timeout(Duration::from_secs(10), is_stored).await {
        Ok(Ok(())) => (StatusCode::OK, "stored"),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not stored yet; post it again",
        ),
    }
}

async fn twilio(
    State(w): State<Webhook>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Some((token, url)) = &w.twilio else {
        return (StatusCode::NOT_FOUND, "no Twilio profile on this node");
    };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let signed = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !same(signed, &twilio_signature(token, url, &params)) {
        return (StatusCode::FORBIDDEN, "bad or missing X-Twilio-Signature");
    }
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (Some(sid), Some(status)) = (field("MessageSid"), field("MessageStatus")) else {
        return (
            StatusCode::BAD_REQUEST,
            "MessageSid and MessageStatus are required",
        );
    };
    match message_state(&status) {
        Some(state) => hand_in(&w, sid, state, field("ErrorCode").unwrap_or_default()).await,
        None => (StatusCode::OK, "interim status"),
    }
}

async fn generic(
    State(w): State<Webhook>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Some(secret) = &w.secret else {
        return (
            StatusCode::NOT_FOUND,
            "no --http-webhook-secret-file on this node",
        );
    };
    let signed = headers
        .get("x-smsmesh-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !same(signed, &generic_signature(secret, &body)) {
        return (StatusCode::FORBIDDEN, "bad or missing X-Smsmesh-Signature");
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let text = |k: &str| match v.get(k) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let (Some(id), Some(status)) = (text("id"), text("status")) else {
        return (StatusCode::BAD_REQUEST, "`id` and `status` are required");
    };
    match message_state(&status) {
        Some(state) => hand_in(&w, id, state, text("error").unwrap_or_default()).await,
        None => (StatusCode::OK, "interim status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_signatures_sort_the_parameters() {
        // The example of Twilio's request-validation docs: auth token 12345, this
        // URL and these parameters.
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            twilio_signature("12345", url, &params),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
        let mut reversed = params.clone();
        reversed.reverse();
        assert_eq!(
            twilio_signature("12345", url, &reversed),
            twilio_signature("12345", url, &params)
        );
        assert!(generic_signature(b"k", b"{}").starts_with("sha256="));
        assert_eq!(message_state("delivered"), Some(2));
        assert_eq!(message_state("sent"), None);
    }
}
