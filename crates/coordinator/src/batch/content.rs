//! What a batch's messages are (given by the client, one body for a list of
//! recipients, or generated from a seed) and how one message's number and
//! body are made when it is dispatched; which messages carry the batch's trace.

use std::sync::Arc;

use smsmesh::pb;

use super::{Batch, Recipients};

/// What the messages of a batch are.
#[derive(Debug)]
pub enum Content {
    /// Messages given by the client.
    Explicit(Vec<pb::SmsMessage>),
    /// One body for a list of recipients (a streamed upload): the body is
    /// held once, the numbers packed.
    List {
        /// The body of every message.
        body: String,
        /// The sender of every message ("" for the node's default).
        sender: String,
        /// Who gets it, in message order (shared with the store while it is written).
        recipients: Arc<Recipients>,
    },
    /// Messages generated from a seed (see [`smsmesh::synth`]).
    Synthetic {
        /// Seed of the generator.
        seed: u64,
        /// Body of every message, or `None` for random bodies.
        body: Option<String>,
    },
}

/// A traced batch: its dispatch span stays open until the batch ends, and
/// every `every`-th message's job carries the span's `traceparent`, so the
/// node that sends it records a child span.
#[derive(Debug)]
pub struct Trace {
    /// The dispatch span.
    pub span: tracing::Span,
    /// Its W3C trace context.
    pub traceparent: String,
    /// Trace message `index` when `index % every == 0`.
    pub every: u32,
}

impl Batch {
    /// The `traceparent` that message `index`'s job carries ("" for untraced ones).
    pub fn job_traceparent(&self, index: u32) -> &str {
        match &self.trace {
            Some(t) if index.is_multiple_of(t.every) => &t.traceparent,
            _ => "",
        }
    }

    /// The number and body of message `index`, into `to` and `body`.
    pub fn content(&self, index: u32, to: &mut String, body: &mut String) {
        match &self.content {
            Content::Explicit(msgs) => {
                let m = &msgs[index as usize];
                to.clear();
                to.push_str(&m.to);
                body.clear();
                body.push_str(&m.body);
            }
            Content::List {
                body: text,
                recipients,
                ..
            } => {
                recipients.number(index as usize, to);
                body.clear();
                body.push_str(text);
            }
            Content::Synthetic { seed, body: fixed } => {
                smsmesh::synth::message(*seed, index, fixed.as_deref(), to, body);
            }
        }
    }

    /// The sender of message `index` ("" for the node's default).
    pub fn sender(&self, index: u32) -> &str {
        match &self.content {
            Content::Explicit(msgs) => &msgs[index as usize].sender,
            Content::List { sender, .. } => sender,
            Content::Synthetic { .. } => "",
        }
    }

    /// The number (into `to`) and client reference of message `index`,
    /// without making its body.
    pub fn recipient(&self, index: u32, to: &mut String) -> String {
        to.clear();
        match &self.content {
            Content::Explicit(msgs) => {
                let m = &msgs[index as usize];
                to.push_str(&m.to);
                m.client_ref.clone()
            }
            Content::List { recipients, .. } => {
                recipients.number(index as usize, to);
                recipients.client_ref(index as usize).to_string()
            }
            Content::Synthetic { seed, .. } => {
                smsmesh::synth::phone(
                    &mut smsmesh::synth::SplitMix64::for_message(*seed, index),
                    to,
                );
                String::new()
            }
        }
    }

    /// The number, body and client reference of message `index`.
    pub fn message(&self, index: u32, to: &mut String, body: &mut String) -> Option<String> {
        self.content(index, to, body);
        match &self.content {
            Content::Explicit(msgs) => Some(msgs[index as usize].client_ref.clone()),
            Content::List { recipients, .. } => {
                Some(recipients.client_ref(index as usize).to_string())
            }
            Content::Synthetic { .. } => None,
        }
    }
}
