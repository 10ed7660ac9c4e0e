//! The callback events the core makes (see [`crate::callbacks`]): which
//! batches have a callback URL, and the rows of events filled between two
//! group commits, one per URL. A row goes into the group commit that stores
//! what its events report, so an event is stored exactly when its outcome is.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use smsmesh::pb;

use crate::auth::Tenant;
use crate::batch::Batch;
use crate::store::{CallbackEvent, CallbackRow, DeliveryState, FinalState, StoredDelivery};

/// Most events in one stored row.
const ROW_MAX: usize = 1000;

/// Where a batch's events go: its URL and the tenant whose secret signs them.
#[derive(Debug)]
struct Target {
    url: Arc<str>,
    tenant: Tenant,
}

/// Batches with callbacks, and the events made since the last group was taken.
#[derive(Debug, Default)]
pub(super) struct Events {
    /// Batch id → where its events go (batches with a callback URL only).
    targets: FxHashMap<u64, Arc<Target>>,
    /// One target per (tenant, URL), shared by its batches.
    interned: FxHashMap<(Tenant, Arc<str>), Arc<Target>>,
    /// The row being filled per target (by its address), with the target.
    filling: FxHashMap<usize, (Arc<Target>, Vec<CallbackEvent>)>,
    /// Rows filled up meanwhile.
    full: Vec<CallbackRow>,
    /// The number of the next row.
    next_seq: u64,
}

impl Events {
    /// Rows are numbered from `next` on (the store's next number at recovery).
    pub(super) fn number_from(&mut self, next: u64) {
        self.next_seq = self.next_seq.max(next).max(1);
    }

    /// The number of the next row.
    pub(super) fn next(&self) -> u64 {
        self.next_seq.max(1)
    }

    /// Batch `id` of `tenant` sends its events to `url` (nothing when empty).
    pub(super) fn watch(&mut self, id: u64, tenant: &Tenant, url: &str) {
        if url.is_empty() {
            return;
        }
        let key = (tenant.clone(), Arc::<str>::from(url));
        let target = self
            .interned
            .entry(key)
            .or_insert_with_key(|(tenant, url)| {
                Arc::new(Target {
                    url: url.clone(),
                    tenant: tenant.clone(),
                })
            })
            .clone();
        self.targets.insert(id, target);
    }

    /// Batch `id` is gone (past its retention): it makes no more events.
    pub(super) fn forget(&mut self, id: u64) {
        let Some(t) = self.targets.remove(&id) else {
            return;
        };
        // Held by the intern table and by `t` only: no batch uses it any more.
        if Arc::strong_count(&t) == 2 && !self.filling.contains_key(&key_of(&t)) {
            self.interned.remove(&(t.tenant.clone(), t.url.clone()));
        }
    }

    /// Whether batch `id` has a callback URL.
    pub(super) fn wanted(&self, id: u64) -> bool {
        !self.targets.is_empty() && self.targets.contains_key(&id)
    }

    fn push(&mut self, batch: u64, event: CallbackEvent) {
        let Some(target) = self.targets.get(&batch) else {
            return;
        };
        let key = key_of(target);
        let (_, events) = self
            .filling
            .entry(key)
            .or_insert_with(|| (target.clone(), Vec::new()));
        events.push(event);
        if events.len() >= ROW_MAX {
            let (target, events) = self.filling.remove(&key).expect("just filled");
            self.full.push(row(&target, events));
        }
    }

    /// Message `index` of `b` reached its final outcome.
    pub(super) fn outcome(&mut self, b: &Batch, index: u32, state: FinalState, error: &str) {
        if !self.wanted(b.id.0) {
            return;
        }
        let mut to = String::new();
        let client_ref = b.recipient(index, &mut to);
        let state = match state {
            FinalState::Sent => pb::MessageState::Sent,
            FinalState::Failed => pb::MessageState::Failed,
        };
        self.push(
            b.id.0,
            CallbackEvent {
                batch: b.id.0,
                index,
                state: state as u32,
                unix_ms: super::unix_ms(),
                to,
                client_ref,
                error: if state == pb::MessageState::Failed {
                    error.to_string()
                } else {
                    String::new()
                },
                attempts: u32::from(b.slots[index as usize].attempts),
                ..Default::default()
            },
        );
    }

    /// Message `index` of batch `batch` has its delivery decided.
    pub(super) fn delivery(&mut self, batch: u64, index: u32, record: &[u8]) {
        if !self.wanted(batch) {
            return;
        }
        let d = StoredDelivery::of_record(record);
        let state = match d.state() {
            DeliveryState::Delivered => pb::MessageState::Delivered,
            DeliveryState::Undelivered => pb::MessageState::Undelivered,
            DeliveryState::Expired => pb::MessageState::Expired,
            DeliveryState::Rejected => pb::MessageState::Rejected,
            DeliveryState::Unknown => pb::MessageState::DeliveryUnknown,
        };
        self.push(
            batch,
            CallbackEvent {
                batch,
                index,
                state: state as u32,
                unix_ms: if d.unix_ms > 0 {
                    d.unix_ms
                } else {
                    super::unix_ms()
                },
                receipt_state: d.message_state,
                receipt_error: d.error.clone(),
                ..Default::default()
            },
        );
    }

    /// Batch `b` ended (completed, or cancelled with nothing out).
    pub(super) fn ended(&mut self, b: &Batch) {
        if !self.wanted(b.id.0) {
            return;
        }
        let c = &b.counts;
        self.push(
            b.id.0,
            CallbackEvent {
                batch: b.id.0,
                unix_ms: super::unix_ms(),
                batch_state: b.state as u32,
                counts: vec![c.total, c.sent, c.failed, c.cancelled],
                ..Default::default()
            },
        );
    }

    /// Whether events wait for the next group.
    pub(super) fn any(&self) -> bool {
        !self.filling.is_empty() || !self.full.is_empty()
    }

    /// The rows made since the last call, numbered.
    pub(super) fn take(&mut self) -> Vec<(u64, Arc<CallbackRow>)> {
        if !self.any() {
            return Vec::new();
        }
        let mut rows = std::mem::take(&mut self.full);
        rows.extend(self.filling.drain().map(|(_, (t, events))| row(&t, events)));
        rows.into_iter()
            .map(|r| {
                let seq = self.next_seq.max(1);
                self.next_seq = seq + 1;
                (seq, Arc::new(r))
            })
            .collect()
    }
}

fn key_of(t: &Arc<Target>) -> usize {
    Arc::as_ptr(t) as usize
}

fn row(t: &Target, events: Vec<CallbackEvent>) -> CallbackRow {
    CallbackRow {
        url: t.url.to_string(),
        tenant: t.tenant.as_str().to_string(),
        created_unix_ms: super::unix_ms(),
        events,
    }
}
