//! GetStatus and ListMessages of folded batches. The core keeps only such a
//! batch's counters (see `core::folded`); its messages are read from the
//! store here, on a blocking thread, off the reactor.

use smsmesh::pb::{self, MessageState};
use smsmesh::{Error, MessageId};

use crate::core::{LIST_SCAN_LIMIT, ListQuery, StoredRef, page_token};
use crate::store::{FinalState, Store, StoredDelivery, StoredMessage, StoredOutcome};

/// A folded message's state: its outcome (a completed batch's messages all
/// have one), or for a sent one, its delivery once decided.
fn state(outcome: Option<&StoredOutcome>, delivery: Option<&StoredDelivery>) -> i32 {
    let mut s = pb::MessageStatus {
        state: match outcome.map(|o| o.state) {
            Some(FinalState::Sent) => MessageState::Sent,
            Some(FinalState::Failed) => MessageState::Failed,
            None => MessageState::Cancelled,
        } as i32,
        ..Default::default()
    };
    if let Some(d) = delivery {
        crate::core::overlay_delivery(&mut s, d);
    }
    s.state
}

fn status(r: &StoredRef, m: StoredMessage) -> pb::MessageStatus {
    // A folded batch completed: each message's last attempt decided it.
    let ended = match (m.outcome.map_or(0, |o| o.final_ms), r.accepted_unix_ms) {
        (0, _) | (_, 0) => 0,
        (ms, accepted) => accepted + u64::from(ms),
    };
    let mut status = pb::MessageStatus {
        message_id: MessageId {
            batch: r.batch,
            index: m.index,
        }
        .to_string(),
        state: state(m.outcome.as_ref(), None),
        attempts: m.outcome.map_or(0, |o| u32::from(o.attempts)),
        node: m.node,
        last_error: m.error.unwrap_or_default(),
        to: m.to,
        client_ref: m.client_ref,
        segments: smsmesh::sms::segments(&m.body).count,
        body: m.body,
        accepted_unix_ms: r.accepted_unix_ms,
        last_attempt_unix_ms: ended,
        final_unix_ms: ended,
        provider_ids: m.provider_ids,
        sender: m.sender,
        ..Default::default()
    };
    if let Some(d) = &m.delivery {
        crate::core::overlay_delivery(&mut status, d);
    }
    status
}

/// Runs a read of the store on a blocking thread.
async fn read<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Error> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| Error::Internal(format!("a store read failed: {e}")))?
        .map_err(|e| Error::Unavailable(format!("cannot read the store: {e}")))
}

fn gone(r: &StoredRef) -> Error {
    Error::NotFound(format!(
        "batch {} not found (ended batches are kept for --retention, then removed)",
        r.batch
    ))
}

/// Message `index` of folded batch `r`.
pub async fn message(store: &Store, r: StoredRef, index: u32) -> Result<pb::MessageStatus, Error> {
    let id = r.batch.0;
    let found = read(store, move |s| {
        s.read_messages(id, index, index + 1, 1, |_, _| true)
    })
    .await?;
    let (mut messages, _) = found.ok_or_else(|| gone(&r))?;
    let m = messages.pop().ok_or_else(|| gone(&r))?;
    Ok(status(&r, m))
}

/// A page of folded batch `r`'s messages.
pub async fn list(
    store: &Store,
    r: StoredRef,
    query: ListQuery,
) -> Result<pb::ListMessagesResponse, Error> {
    if query.start > r.total {
        return Err(Error::invalid(format!(
            "page_token points at message {} but batch {} has {} messages; use a token this batch's listing gave",
            query.start, query.batch, r.total
        )));
    }
    let (id, start, limit, states) = (r.batch.0, query.start, query.limit, query.states);
    let end = r.total.min(start.saturating_add(LIST_SCAN_LIMIT));
    let found = read(store, move |s| {
        s.read_messages(id, start, end, limit as usize, |o, d| {
            states.contains(state(o, d))
        })
    })
    .await?;
    let (messages, next) = found.ok_or_else(|| gone(&r))?;
    Ok(pb::ListMessagesResponse {
        messages: messages.into_iter().map(|m| status(&r, m)).collect(),
        next_page_token: if next < r.total {
            page_token(query.batch, next)
        } else {
            String::new()
        },
        scanned: u64::from(next - start),
    })
}
