//! Client requests, as the core answers them: SubmitBatch (and the
//! idempotency check before it), GetStatus of a batch or a message,
//! CancelBatch, and a tenant's unfinished messages for admission.

use std::time::Instant;

use smsmesh::{BatchId, Error, MessageId, pb};

use super::batches::Found;
use super::{Core, NewBatch, progress};
use crate::auth::Tenant;
use crate::batch::Batch;
pub use crate::batch::StateSet;

impl Core {
    /// The batch an idempotency key (as stored) already made, if any, for a
    /// request of `fingerprint`: ALREADY_EXISTS when that batch was made by a
    /// different request (both fingerprints known and unequal).
    pub fn on_idempotent(
        &self,
        key: &str,
        fingerprint: u64,
    ) -> Result<Option<pb::SubmitBatchResponse>, Error> {
        let Some(id) = self.batches.by_key(key) else {
            return Ok(None);
        };
        let known = self.batches.total_and_fingerprint(id.0);
        if let Some((_, made_by)) = known
            && made_by != 0
            && fingerprint != 0
            && made_by != fingerprint
        {
            return Err(key_reused(key, id));
        }
        Ok(Some(pb::SubmitBatchResponse {
            batch_id: id.to_string(),
            accepted: known.map_or(0, |(total, _)| total),
            replayed: true,
        }))
    }

    /// Accepts a batch.
    pub fn on_submit(
        &mut self,
        new: NewBatch,
        now: Instant,
    ) -> Result<pb::SubmitBatchResponse, Error> {
        if let Some(key) = new.idempotency_key.as_deref()
            && let Some(existing) = self.on_idempotent(key, new.fingerprint)?
        {
            return Ok(existing);
        }
        let id = new.id;
        let mut batch = Batch::new(id, new.content, new.total, new.max_attempts, now);
        batch.key = new.idempotency_key.clone();
        batch.trace = new.trace.map(Box::new);
        batch.tenant = new.tenant;
        batch.class = new.class;
        batch.fingerprint = new.fingerprint;
        batch.accepted_unix_ms = new.accepted_unix_ms;
        if let Some(url) = &new.callback_url {
            self.durability.events.watch(id.0, &batch.tenant, url);
        }
        if self.durability.is_durable() {
            // Dispatch goes up to the reservation stored with the batch, then
            // waits for the next one to be stored.
            batch.reserved = new.reserved.min(new.total);
            self.durability.stored_with(id.0, batch.reserved);
        }
        tracing::info!(batch = %id, total = new.total, "batch accepted");
        self.batches.accepted += 1;
        self.batches.insert(batch);
        self.receipts.keep_decided(id.0);
        if let Some(key) = new.idempotency_key {
            self.batches.key(key, id);
        }
        Ok(pb::SubmitBatchResponse {
            batch_id: id.to_string(),
            accepted: u64::from(new.total),
            replayed: false,
        })
    }

    /// Status of a batch.
    pub fn on_batch_status(
        &self,
        id: BatchId,
        tenant: &Tenant,
        now: Instant,
    ) -> Result<pb::BatchStatus, Error> {
        let status = match self.batches.found(id, tenant)? {
            Found::Full(batch) => {
                let mut s = progress::batch_status(batch, &self.sessions, now);
                s.class_paused = self.paused[batch.class.index()];
                s
            }
            Found::Folded(f) => progress::folded_status(id, f, &self.sessions),
        };
        Ok(progress::with_delivery(status, self.receipts.counts(id.0)))
    }

    /// Status of a message.
    pub fn on_message_status(
        &self,
        id: MessageId,
        tenant: &Tenant,
    ) -> Result<FromCore<pb::MessageStatus>, Error> {
        let (total, batch) = match self.batches.found(id.batch, tenant)? {
            Found::Full(b) => (b.counts.total, Some(b)),
            Found::Folded(f) => (f.counts.total, None),
        };
        if u64::from(id.index) >= total {
            return Err(Error::NotFound(format!(
                "message {id} not found: batch {} has {total} messages (indexes 0 to {})",
                id.batch,
                total - 1
            )));
        }
        Ok(match batch {
            Some(b) => FromCore::Here(self.message(b, id.index)),
            None => FromCore::InStore(self.stored_ref(id.batch, tenant)?),
        })
    }

    /// Where the store holds folded batch `id`.
    fn stored_ref(&self, id: BatchId, tenant: &Tenant) -> Result<StoredRef, Error> {
        match self.batches.found(id, tenant)? {
            Found::Folded(f) => Ok(StoredRef {
                batch: id,
                total: f.counts.total as u32,
                accepted_unix_ms: f.accepted_unix_ms,
            }),
            Found::Full(_) => Err(Error::Internal(format!("batch {id} is not folded"))),
        }
    }

    /// A page of a batch's messages: from index `query.start`, those whose
    /// state is in `query.states`, at most `query.limit` of them, looking at
    /// no more than [`LIST_SCAN_LIMIT`] messages.
    pub fn on_list_messages(
        &self,
        query: &ListQuery,
        tenant: &Tenant,
    ) -> Result<FromCore<pb::ListMessagesResponse>, Error> {
        let batch = match self.batches.found(query.batch, tenant)? {
            Found::Full(b) => b,
            Found::Folded(_) => {
                return Ok(FromCore::InStore(self.stored_ref(query.batch, tenant)?));
            }
        };
        let total = batch.counts.total as u32;
        if query.start > total {
            return Err(Error::invalid(format!(
                "page_token points at message {} but batch {} has {total} messages; use a token this batch's listing gave",
                query.start, query.batch
            )));
        }
        let end = total.min(query.start.saturating_add(LIST_SCAN_LIMIT));
        let mut messages = Vec::new();
        let mut index = query.start;
        while index < end && messages.len() < query.limit as usize {
            let state = self
                .receipts
                .state(batch.id.0, index, batch.message_state(index));
            if query.states.contains(state) {
                messages.push(self.message(batch, index));
            }
            index += 1;
        }
        Ok(FromCore::Here(pb::ListMessagesResponse {
            messages,
            next_page_token: if index < total {
                page_token(query.batch, index)
            } else {
                String::new()
            },
            scanned: u64::from(index - query.start),
        }))
    }

    /// A page of the batches of `tenant`, newest first.
    pub fn on_list_batches(&self, query: &BatchQuery, tenant: &Tenant) -> pb::ListBatchesResponse {
        let states = query.states;
        let keep = |b: &super::batches::Summary| states.contains(b.state as i32);
        let (found, next) = self.batches.list(
            tenant,
            keep,
            query.limit as usize,
            query.before,
            LIST_BATCHES_SCAN_LIMIT,
        );
        pb::ListBatchesResponse {
            batches: found
                .into_iter()
                .map(|b| pb::BatchSummary {
                    delivered: self.receipts.counts(b.id).delivered,
                    undelivered: self.receipts.counts(b.id).undelivered,
                    batch_id: BatchId(b.id).to_string(),
                    state: b.state as i32,
                    total: b.counts.total,
                    sent: b.counts.sent,
                    failed: b.counts.failed,
                    cancelled: b.counts.cancelled,
                    accepted_unix_ms: b.accepted_unix_ms,
                    priority: b.class.to_proto() as i32,
                })
                .collect(),
            next_page_token: next.map_or_else(String::new, |(ms, seq)| format!("{ms}:{seq}")),
        }
    }

    /// What GetStatus and ListMessages say of message `index` of `batch`.
    fn message(&self, batch: &Batch, index: u32) -> pb::MessageStatus {
        let slot = batch.slots[index as usize];
        let (mut to, mut body) = (String::new(), String::new());
        let client_ref = batch.message(index, &mut to, &mut body).unwrap_or_default();
        let node = slot
            .node
            .checked_sub(1)
            .map(|n| self.sessions.names.name(n).to_string())
            .unwrap_or_default();
        let last_error = batch.last_error(index).unwrap_or_default().to_string();
        let mut status = pb::MessageStatus {
            message_id: MessageId {
                batch: batch.id,
                index,
            }
            .to_string(),
            state: batch.message_state(index) as i32,
            attempts: u32::from(slot.attempts),
            node,
            last_error,
            to,
            client_ref,
            segments: smsmesh::sms::segments(&body).count,
            body,
            accepted_unix_ms: batch.accepted_unix_ms,
            last_attempt_unix_ms: batch.unix_ms_of(slot.stamp()),
            final_unix_ms: batch.unix_ms_of(batch.final_ms(index)),
            sender: batch.sender(index).to_string(),
            ..Default::default()
        };
        self.receipts.message(batch.id.0, index, &mut status);
        status
    }

    /// Cancels a batch: nothing more of it is dispatched. The cancel is stored
    /// with the next group; the reactor answers once that group is stored.
    pub fn on_cancel(
        &mut self,
        id: BatchId,
        tenant: &Tenant,
        now: Instant,
    ) -> Result<pb::BatchStatus, Error> {
        if let Found::Folded(_) = self.batches.found(id, tenant)? {
            return self.on_batch_status(id, tenant, now); // completed: nothing to cancel
        }
        let batch = self.batches.owned_mut(id, tenant)?;
        if batch.cancel(now) {
            tracing::info!(batch = %id, in_flight = batch.counts.in_flight, "batch cancelled");
            let ended = batch.is_ended();
            self.durability.state_now(batch, self.sessions.capacity());
            self.batches.stopped(id.0);
            if ended {
                self.batches.ended(id.0, now);
            }
        }
        self.on_batch_status(id, tenant, now)
    }

    /// Messages of `tenant` not finished yet (pending or in flight).
    pub fn tenant_unfinished(&self, tenant: &Tenant) -> u64 {
        self.batches.tenant_unfinished(tenant)
    }
}

/// An answer the core has, or (for a folded batch) the store has.
#[derive(Debug)]
pub enum FromCore<T> {
    /// The answer.
    Here(T),
    /// Read it from the store: the batch is folded.
    InStore(StoredRef),
}

/// A folded batch, as a store read needs it.
#[derive(Clone, Copy, Debug)]
pub struct StoredRef {
    /// The batch.
    pub batch: BatchId,
    /// Its messages.
    pub total: u32,
    /// When it was accepted, Unix ms.
    pub accepted_unix_ms: u64,
}

/// Most messages one ListMessages call looks at.
pub const LIST_SCAN_LIMIT: u32 = 1_000_000;

/// Most batches one ListBatches call looks at.
pub const LIST_BATCHES_SCAN_LIMIT: usize = 100_000;

/// One page of ListBatches, as asked.
#[derive(Clone, Debug)]
pub struct BatchQuery {
    /// States to list.
    pub states: StateSet,
    /// Most batches in the page.
    pub limit: u32,
    /// List batches before this (Unix ms, insertion order) position; `None`: from the newest.
    pub before: Option<(u64, u64)>,
}

/// Where a ListBatches page token says to go on.
pub fn parse_batches_token(token: &str) -> Result<Option<(u64, u64)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::invalid(format!(
            "page_token {} is not one ListBatches gave: pass next_page_token from the previous page, or nothing to start at the newest batch",
            smsmesh::echo(token)
        ))
    };
    let (ms, seq) = token.split_once(':').ok_or_else(bad)?;
    let ms = ms.parse().map_err(|_| bad())?;
    let seq = seq.parse().map_err(|_| bad())?;
    Ok(Some((ms, seq)))
}

/// One page of a batch's listing, as asked.
#[derive(Clone, Debug)]
pub struct ListQuery {
    /// The batch.
    pub batch: BatchId,
    /// States to list.
    pub states: StateSet,
    /// Most messages in the page.
    pub limit: u32,
    /// Index to start at.
    pub start: u32,
}

/// The token that continues batch `batch`'s listing at message `index`.
pub fn page_token(batch: BatchId, index: u32) -> String {
    format!("{batch}:{index}")
}

/// The message index a page token of batch `batch` continues at.
pub fn parse_page_token(batch: BatchId, token: &str) -> Result<u32, Error> {
    if token.is_empty() {
        return Ok(0);
    }
    let bad = || {
        Error::invalid(format!(
            "page_token {} is not one ListMessages gave: pass next_page_token from the previous page, or nothing to start at the first message",
            smsmesh::echo(token)
        ))
    };
    let (of, index) = token.rsplit_once(':').ok_or_else(bad)?;
    if of != batch.to_string() {
        return Err(Error::invalid(format!(
            "page_token {} continues the listing of another batch, not of {batch}",
            smsmesh::echo(token)
        )));
    }
    index.parse().map_err(|_| bad())
}

/// ALREADY_EXISTS for idempotency key `key` (as stored) used again with a
/// different request than the one that made batch `id`.
pub fn key_reused(key: &str, id: BatchId) -> Error {
    Error::AlreadyExists(format!(
        "idempotency_key {} already made batch {id} from a different request; use a new key for a new request",
        smsmesh::echo(key.rsplit('\u{0}').next().unwrap_or(key))
    ))
}
