//! What a submit asks for, checked: a SubmitBatch request made into a
//! [`NewBatch`], the checks a streamed upload shares with it, and the
//! fingerprint that tells a replay of a request from a different one.

use smsmesh::pb;
use smsmesh::priority::Class;
use smsmesh::{BatchId, Error, sms};

use crate::Config;
use crate::auth::Tenant;
use crate::batch::Content;
use crate::core::{NewBatch, unix_ms};

/// Longest idempotency key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// FNV-1a over a request's fields, each followed by a separator (so that
/// ("ab", "c") and ("a", "bc") differ). Stored with each batch, so what a
/// request feeds it must not change between versions.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    /// Feeds one field.
    pub fn eat(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        self.0 = h.wrapping_mul(0x0100_0000_01b3);
    }

    /// The fingerprint, never 0 (0 stands for "unknown").
    pub fn value(self) -> u64 {
        self.0.max(1)
    }
}

/// A fingerprint of what a SubmitBatch request asks for (all but its
/// idempotency key).
pub fn fingerprint(req: &pb::SubmitBatchRequest) -> u64 {
    let mut h = Fingerprint::default();
    h.eat(&req.max_attempts.map_or(u64::MAX, u64::from).to_le_bytes());
    for m in &req.messages {
        h.eat(m.to.as_bytes());
        h.eat(m.body.as_bytes());
        h.eat(m.client_ref.as_bytes());
        // Only when given, so requests without senders keep their fingerprints.
        if !m.sender.is_empty() {
            h.eat(b"\0sender");
            h.eat(m.sender.as_bytes());
        }
    }
    if !req.sender.is_empty() {
        h.eat(b"\0batch sender");
        h.eat(req.sender.as_bytes());
    }
    // Only when given, so requests without one keep their fingerprints.
    if req.priority != 0 {
        h.eat(b"\0priority");
        h.eat(&req.priority.to_le_bytes());
    }
    if !req.callback_url.is_empty() {
        h.eat(b"\0callback_url");
        h.eat(req.callback_url.as_bytes());
    }
    if let Some(s) = &req.synthetic {
        h.eat(&s.count.to_le_bytes());
        h.eat(&s.seed.map_or(u64::MAX, |x| x).to_le_bytes());
        h.eat(s.body.as_deref().unwrap_or("\u{0}none").as_bytes());
    }
    h.value()
}

/// The attempts per message a request asks for (the default when not given).
pub fn max_attempts(asked: Option<u32>, config: &Config) -> Result<u8, Error> {
    match asked {
        None => Ok(config.default_max_attempts as u8),
        Some(n) if n == 0 || n > config.max_attempts_limit => Err(Error::invalid(format!(
            "max_attempts {n} is out of range (1 to {})",
            config.max_attempts_limit
        ))),
        Some(n) => Ok(n as u8),
    }
}

/// A request's idempotency key, if it gave one.
pub fn idempotency_key(key: String) -> Result<Option<String>, Error> {
    if key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(Error::invalid(format!(
            "idempotency_key is {} bytes long; at most {MAX_IDEMPOTENCY_KEY} are allowed",
            key.len()
        )));
    }
    Ok((!key.is_empty()).then_some(key))
}

/// A new batch of `content`, not yet anyone's (the API layer sets the
/// tenant, the scoped key and the fingerprint).
pub fn new_batch(content: Content, total: u32, max_attempts: u8, key: Option<String>) -> NewBatch {
    NewBatch {
        id: BatchId::ordered(),
        content,
        total,
        max_attempts,
        idempotency_key: key,
        fingerprint: 0,
        trace: None,
        tenant: Tenant::default(),
        accepted_unix_ms: unix_ms(),
        class: Class::Normal,
        callback_url: None,
        reserved: 0,
    }
}

/// Checks a SubmitBatch request and turns it into a batch to accept.
pub fn validate_submit(req: pb::SubmitBatchRequest, config: &Config) -> Result<NewBatch, Error> {
    let max_attempts = max_attempts(req.max_attempts, config)?;
    let class = Class::from_proto(req.priority, "priority").map_err(Error::invalid)?;
    let max = config.max_batch_size.min(u64::from(u32::MAX));
    let (content, total) = match (req.messages.is_empty(), req.synthetic) {
        (true, None) => {
            return Err(Error::invalid(
                "empty batch: give either `messages` (at least one) or `synthetic`",
            ));
        }
        (false, Some(_)) => {
            return Err(Error::invalid(
                "give either `messages` or `synthetic`, not both",
            ));
        }
        (false, None) => {
            let n = req.messages.len() as u64;
            if n > config.max_messages_per_request {
                return Err(Error::invalid(format!(
                    "{n} messages in one request exceed the maximum of {} (--max-messages-per-request); use a synthetic batch or split it",
                    config.max_messages_per_request
                )));
            }
            if n > max {
                return Err(Error::invalid(format!(
                    "batch of {n} messages exceeds the maximum of {max} (--max-batch-size)"
                )));
            }
            if !req.sender.is_empty() {
                sms::sender_form("sender", &req.sender)?;
            }
            let mut messages = req.messages;
            for (i, m) in messages.iter_mut().enumerate() {
                sms::validate_message(i, &m.to, &m.body, &m.client_ref)?;
                if m.sender.is_empty() {
                    m.sender.clone_from(&req.sender);
                } else {
                    sms::sender_form(&format!("messages[{i}].sender"), &m.sender)?;
                }
            }
            (Content::Explicit(messages), n as u32)
        }
        (true, Some(s)) => {
            if !req.sender.is_empty() {
                return Err(Error::invalid(
                    "sender: a synthetic batch goes out with each node's default sender; give `sender` with `messages` or an upload",
                ));
            }
            if s.count == 0 {
                return Err(Error::invalid("synthetic.count must be at least 1"));
            }
            if s.count > max {
                return Err(Error::invalid(format!(
                    "synthetic.count {} exceeds the maximum of {max} (--max-batch-size)",
                    s.count
                )));
            }
            if let Some(body) = &s.body {
                sms::validate_body("synthetic.body", body)?;
            }
            let seed = s.seed.unwrap_or_else(rand::random);
            (Content::Synthetic { seed, body: s.body }, s.count as u32)
        }
    };
    let key = idempotency_key(req.idempotency_key)?;
    let mut new = new_batch(content, total, max_attempts, key);
    new.class = class;
    new.callback_url = crate::callbacks::parse_url("callback_url", &req.callback_url)?;
    Ok(new)
}
