//! The HTTP gateway (`--gateway https://…`): each send is one request to an
//! HTTP SMS provider, a generic one or Twilio's Messages API, over a pool
//! of keep-alive connections. Answers map to the same outcome classes as
//! SMPP: accepted (with the provider's id), temporary, permanent, or
//! throttled (429 or 503: the connector pauses for the Retry-After and
//! grants no credit meanwhile; the message goes back without using an
//! attempt). A request with no answer in time has an unknown outcome.

mod config;
pub mod template;
pub mod webhook;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use reqwest::StatusCode;
use smsmesh::pb;
use tokio::sync::watch;

pub use config::{Answers, HttpArgs, HttpConfig, Profile};

use crate::gateway::{Accepted, Failure, FailureClass, Gateway, Outcome, Sending};

/// The HTTP gateway.
pub struct Http {
    inner: Arc<Inner>,
}

struct Inner {
    config: HttpConfig,
    client: reqwest::Client,
    /// Requests a second.
    limiter: Option<crate::pace::Pace>,
    /// Paused (throttled) until then.
    paused_until: Mutex<Option<Instant>>,
    ready: watch::Sender<bool>,
    /// Receipts from the status callbacks, until the node takes them.
    receipts: Mutex<Option<tokio::sync::mpsc::Receiver<crate::IncomingReceipt>>>,
}

impl Http {
    /// A gateway sending by `config`, serving its status callbacks if asked
    /// to (inside a Tokio runtime).
    pub fn new(config: HttpConfig) -> Result<Http, String> {
        let (tx, rx) = tokio::sync::mpsc::channel(10_000);
        if let Some(addr) = config.webhook_listen {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| format!("--http-webhook-listen {addr}: {e}"))?;
            let twilio = match (&config.profile, &config.basic, &config.status_callback) {
                (Profile::Twilio, Some((_, token)), Some(url)) => {
                    Some((token.clone(), url.clone()))
                }
                _ => None,
            };
            let app = webhook::router(webhook::Webhook {
                twilio,
                secret: config.webhook_secret.clone(),
                receipts: tx,
            });
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the status callback listener stopped");
                }
            });
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("smsmesh/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make the HTTP client: {e}"))?;
        let limiter =
            std::num::NonZeroU32::new(config.rate).map(|r| crate::pace::Pace::per_second(r, r));
        Ok(Http {
            inner: Arc::new(Inner {
                config,
                client,
                limiter,
                paused_until: Mutex::new(None),
                ready: watch::channel(true).0,
                receipts: Mutex::new(Some(rx)),
            }),
        })
    }
}

impl Gateway for Http {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn send(&self, job: &pb::Job) -> Sending {
        let inner = self.inner.clone();
        if let Some(left) = inner.paused_for() {
            return Sending::Done(Err(Failure::new(
                FailureClass::Throttled,
                format!("the provider asked to slow down; paused for {left:?} more"),
            )));
        }
        let request = inner.request(job);
        Sending::Pending(async move { inner.send(request).await }.boxed())
    }

    fn ready(&self) -> Option<watch::Receiver<bool>> {
        Some(self.inner.ready.subscribe())
    }

    fn provider(&self) -> String {
        self.inner.config.provider.clone()
    }

    fn receipts(&self) -> Option<tokio::sync::mpsc::Receiver<crate::IncomingReceipt>> {
        self.inner.receipts.lock().expect("receipts lock").take()
    }
}

impl Inner {
    /// How long the connector stays paused, if it is.
    fn paused_for(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().expect("pause lock"))?;
        until.checked_duration_since(Instant::now())
    }

    /// Pauses the connector for `pause`: no credit, and sends meanwhile
    /// are throttled at once.
    fn pause(self: &Arc<Self>, pause: Duration) {
        let until = Instant::now() + pause;
        {
            let mut p = self.paused_until.lock().expect("pause lock");
            if p.is_some_and(|t| t >= until) {
                return;
            }
            *p = Some(until);
        }
        self.ready.send_replace(false);
        tracing::warn!(?pause, "the HTTP provider asked to slow down: paused");
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            let mut p = me.paused_until.lock().expect("pause lock");
            if p.is_some_and(|t| t <= Instant::now()) {
                *p = None;
                me.ready.send_replace(true);
            }
        });
    }

    /// The request of `job`, as the profile makes it.
    fn request(&self, job: &pb::Job) -> reqwest::RequestBuilder {
        let c = &self.config;
        let sender = if job.sender.is_empty() {
            &c.sender
        } else {
            &job.sender
        };
        let id = format!("{:016x}.{}", job.batch, job.index);
        let mut r = self.client.post(c.url.clone());
        for (name, value) in &c.headers {
            r = r.header(name, value);
        }
        r = match (&c.basic, &c.bearer) {
            (_, Some(token)) => r.bearer_auth(token),
            (Some((user, password)), None) => r.basic_auth(user, Some(password)),
            (None, None) => r,
        };
        match c.profile {
            Profile::Twilio => {
                let mut form = vec![("To", job.to.as_str()), ("Body", job.body.as_str())];
                if !sender.is_empty() {
                    form.push(("From", sender));
                }
                if let Some(cb) = &c.status_callback {
                    form.push(("StatusCallback", cb));
                }
                r.form(&form)
            }
            Profile::Generic { json } => {
                let attempt = job.attempt.to_string();
                let mut fields = vec![
                    ("to", job.to.as_str()),
                    ("body", job.body.as_str()),
                    ("sender", sender),
                    ("message_id", id.as_str()),
                    ("attempt", attempt.as_str()),
                ];
                if let Some(cb) = &c.status_callback {
                    fields.push(("callback_url", cb));
                }
                let (content_type, body) = if let Some(t) = &c.template {
                    let body = t.render(json, |f| {
                        use template::Field as F;
                        match f {
                            F::To => job.to.clone(),
                            F::Body => job.body.clone(),
                            F::Sender => sender.to_string(),
                            F::MessageId => id.clone(),
                            F::Attempt => attempt.clone(),
                            F::CallbackUrl => c.status_callback.clone().unwrap_or_default(),
                        }
                    });
                    let kind = if json {
                        "application/json"
                    } else {
                        "application/x-www-form-urlencoded"
                    };
                    (kind, body)
                } else if json {
                    let object: serde_json::Map<String, serde_json::Value> = fields
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.into()))
                        .collect();
                    let body = serde_json::Value::Object(object).to_string();
                    ("application/json", body)
                } else {
                    let body = url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(fields)
                        .finish();
                    ("application/x-www-form-urlencoded", body)
                };
                if let Some(secret) = &c.hmac_secret {
                    r = r.header(
                        "x-signature",
                        webhook::generic_signature(secret, body.as_bytes()),
                    );
                }
                r.header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(body)
            }
        }
    }

    /// Sends `request` when the rate allows, and reads what came of it.
    async fn send(self: Arc<Self>, request: reqwest::RequestBuilder) -> Outcome {
        if let Some(l) = &self.limiter {
            l.ready().await;
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Err(Failure::temporary(format!(
                    "cannot reach the HTTP provider: {e}"
                )));
            }
            Err(e) if e.is_timeout() => {
                return Err(Failure::new(
                    FailureClass::Unknown,
                    format!(
                        "no answer from the HTTP provider within {:?}; it may have sent it",
                        self.config.timeout
                    ),
                ));
            }
            Err(e) => {
                return Err(Failure::new(
                    FailureClass::Unknown,
                    format!("HTTP request failed: {e}"),
                ));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| retry_after(v.to_str().ok()?, std::time::SystemTime::now()));
        let body = match tokio::time::timeout(self.config.timeout, response.bytes()).await {
            Ok(Ok(b)) => b,
            _ if status.is_success() => {
                return Err(Failure::new(
                    FailureClass::Unknown,
                    format!("HTTP {status}, but its body did not come"),
                ));
            }
            _ => Default::default(),
        };
        let mut outcome = classify(status, &body, &self.config.answers);
        // Ids make the coordinator wait for receipts: only when the provider
        // was asked to post status.
        if self.config.status_callback.is_none()
            && let Ok(a) = &mut outcome
        {
            a.provider_ids.clear();
        }
        if outcome
            .as_ref()
            .is_err_and(|f| f.class == FailureClass::Throttled)
        {
            self.pause(retry_after.unwrap_or(self.config.throttle_pause));
        }
        outcome
    }
}

/// How long a `Retry-After` value asks to wait: whole seconds, or until an
/// HTTP date (none if that has passed, or the value reads as neither).
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .ok(),
    }
}

/// What an answer says: accepted (with the id at `answers.id_field` of its
/// JSON body, if any, and only if `answers.accept_if` holds), throttled (429,
/// 503), temporary (408, 425, other 5xx) or permanent (other 4xx and the
/// rest); `answers` may make a status temporary or permanent instead.
pub fn classify(status: StatusCode, body: &[u8], answers: &Answers) -> Outcome {
    if status.is_success() {
        let json = serde_json::from_slice::<serde_json::Value>(body).ok();
        if let Some((pointer, want)) = &answers.accept_if {
            let got = json.as_ref().and_then(|v| match v.pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            });
            if got.as_deref() != Some(want.as_str()) {
                return Err(Failure::new(
                    FailureClass::Permanent,
                    format!(
                        "the provider did not accept it ({pointer} is {}, not {want:?}): {}",
                        got.map_or("missing".into(), |g| format!("{g:?}")),
                        describe(status, body)
                    ),
                ));
            }
        }
        let id = json.and_then(|v| match v.pointer(&answers.id_field)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        return Ok(Accepted {
            provider_ids: id.into_iter().collect(),
        });
    }
    let what = describe(status, body);
    let code = status.as_u16();
    let class = match code {
        _ if answers.temporary.contains(&code) => FailureClass::Temporary,
        _ if answers.permanent.contains(&code) => FailureClass::Permanent,
        429 | 503 => FailureClass::Throttled,
        408 | 425 | 500..=599 => FailureClass::Temporary,
        _ => FailureClass::Permanent,
    };
    Err(Failure::new(class, what))
}

/// "HTTP 400: <the provider's code and message>" from an error answer
/// (Twilio's and most JSON errors: `code` and `message`), else its text.
fn describe(status: StatusCode, body: &[u8]) -> String {
    let said = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let code = v
                .get("code")
                .map(|c| c.to_string().trim_matches('"').to_string());
            let message = v
                .get("message")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str());
            match (code, message) {
                (Some(c), Some(m)) => format!("{c} {m}"),
                (None, Some(m)) => m.to_string(),
                _ => v.to_string(),
            }
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let said: String = said.chars().take(200).collect();
    format!("HTTP {}: {}", status.as_u16(), said.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Sun, 06 Dec 2026 04:00:00 GMT").unwrap();
        assert_eq!(retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        let later = retry_after("Sun, 06 Dec 2026 04:00:30 GMT", now);
        assert_eq!(later, Some(Duration::from_secs(30)));
        assert_eq!(
            retry_after("Sun, 06 Dec 2026 03:59:00 GMT", now),
            None,
            "passed"
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn answers_map_to_outcome_classes() {
        let ok = classify(
            StatusCode::CREATED,
            br#"{"sid":"SM123","status":"queued"}"#,
            &ids("/sid"),
        );
        assert_eq!(ok.unwrap().provider_ids, ["SM123"]);
        let nested = classify(StatusCode::OK, br#"{"data":{"id":42}}"#, &ids("/data/id"));
        assert_eq!(nested.unwrap().provider_ids, ["42"]);
        assert!(
            classify(StatusCode::OK, b"queued", &ids("/id"))
                .unwrap()
                .provider_ids
                .is_empty()
        );
        let class = |s: u16| {
            classify(StatusCode::from_u16(s).unwrap(), b"", &ids("/id"))
                .unwrap_err()
                .class
        };
        assert_eq!(class(429), FailureClass::Throttled);
        assert_eq!(class(503), FailureClass::Throttled);
        assert_eq!(class(500), FailureClass::Temporary);
        assert_eq!(class(408), FailureClass::Temporary);
        assert_eq!(class(400), FailureClass::Permanent);
        assert_eq!(class(401), FailureClass::Permanent);
        let twilio = br#"{"code": 21211, "message": "The 'To' number +1555 is not a valid phone number.", "status": 400}"#;
        let f = classify(StatusCode::BAD_REQUEST, twilio, &ids("/sid")).unwrap_err();
        assert_eq!(
            f.reason,
            "HTTP 400: 21211 The 'To' number +1555 is not a valid phone number."
        );
        // A provider's own rules: success only with status OK; 400 temporary, 500 permanent.
        let own = Answers {
            id_field: "/msgid".into(),
            accept_if: Some(("/status".into(), "OK".into())),
            temporary: vec![400],
            permanent: vec![500],
        };
        let ok = classify(StatusCode::OK, br#"{"status":"OK","msgid":7}"#, &own);
        assert_eq!(ok.unwrap().provider_ids, ["7"]);
        let no = classify(StatusCode::OK, br#"{"status":"REJECTED"}"#, &own).unwrap_err();
        assert_eq!(no.class, FailureClass::Permanent);
        assert!(no.reason.contains("REJECTED"), "{}", no.reason);
        let c = |s: u16| {
            classify(StatusCode::from_u16(s).unwrap(), b"", &own)
                .unwrap_err()
                .class
        };
        assert_eq!(
            (c(400), c(500), c(429)),
            (
                FailureClass::Temporary,
                FailureClass::Permanent,
                FailureClass::Throttled
            )
        );
    }

    fn ids(field: &str) -> Answers {
        Answers {
            id_field: field.into(),
            ..Answers::default()
        }
    }
}
