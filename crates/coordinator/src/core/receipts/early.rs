//! Receipts held for an id no message has yet. They are looked up in
//! memory; they reach the store with the first group taken while they are
//! still held (the group that also holds the ack of the frame that brought
//! them), so one applied before that group is taken is never written.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use smsmesh::pb;

use super::{EARLY_MAX, EARLY_WAIT};
use crate::store::{ReceiptWrite, StoredEarly};

/// A held receipt.
struct Early {
    receipt: pb::Receipt,
    provider: Arc<str>,
    /// The store has a record under its key (written by a group taken before).
    in_store: bool,
    /// That record is this receipt (not one it replaced).
    written: bool,
}

/// The receipts held, by key (the receipts sub-state's hash of provider and id).
#[derive(Default)]
pub(super) struct Held {
    by_key: HashMap<u128, Early, rustc_hash::FxBuildHasher>,
    /// Keys in the order they came, with when; a key applied since stays
    /// here until it comes to the front.
    order: VecDeque<(Instant, u128)>,
    /// Keys held or replaced since the last group was taken.
    unwritten: Vec<u128>,
}

impl Held {
    /// Holds `r` of `provider` under `key`, as of `at`; `stored`: it was
    /// loaded from the store. Returns whether the oldest held receipt was
    /// given up to make room ([`EARLY_MAX`]).
    pub(super) fn hold(
        &mut self,
        key: u128,
        (provider, r): (Arc<str>, pb::Receipt),
        at: Instant,
        stored: bool,
        writes: &mut Vec<ReceiptWrite>,
    ) -> bool {
        let mut evicted = false;
        if self.by_key.len() >= EARLY_MAX
            && let Some((_, old)) = self.order.pop_front()
        {
            evicted = self.take(old, writes).is_some();
        }
        let new = Early {
            receipt: r,
            provider,
            in_store: stored,
            written: stored,
        };
        match self.by_key.insert(key, new) {
            None => self.order.push_back((at, key)),
            // The store may hold the one it replaces: its record is rewritten.
            Some(old) => {
                let e = self.by_key.get_mut(&key).expect("just inserted");
                e.in_store |= old.in_store;
            }
        }
        if !stored {
            self.unwritten.push(key);
        }
        evicted
    }

    /// Takes the receipt held under `key` (its id came, or it is given up).
    pub(super) fn take(
        &mut self,
        key: u128,
        writes: &mut Vec<ReceiptWrite>,
    ) -> Option<pb::Receipt> {
        if self.by_key.is_empty() {
            return None;
        }
        let e = self.by_key.remove(&key)?;
        if e.in_store {
            writes.push(ReceiptWrite::EarlyGone {
                provider: e.provider,
                id: e.receipt.provider_id.clone(),
            });
        }
        Some(e.receipt)
    }

    /// Gives up the receipts held [`EARLY_WAIT`] by `now`; returns how many.
    pub(super) fn expire(&mut self, now: Instant, writes: &mut Vec<ReceiptWrite>) -> u64 {
        let mut given_up = 0;
        while let Some(&(at, key)) = self.order.front() {
            if now.saturating_duration_since(at) < EARLY_WAIT {
                break;
            }
            self.order.pop_front();
            if let Some(r) = self.take(key, writes) {
                given_up += 1;
                tracing::debug!(id = %r.provider_id, "a receipt whose id no message has");
            }
        }
        given_up
    }

    /// A group is taken: the receipts held since the last one, and still
    /// held, are written with it.
    pub(super) fn write_new(&mut self, writes: &mut Vec<ReceiptWrite>) {
        for key in self.unwritten.drain(..) {
            let Some(e) = self.by_key.get_mut(&key) else {
                continue;
            };
            if e.written {
                continue;
            }
            let r = &e.receipt;
            writes.push(ReceiptWrite::Early {
                provider: e.provider.clone(),
                id: r.provider_id.clone(),
                record: prost::Message::encode_to_vec(&StoredEarly {
                    provider: e.provider.to_string(),
                    provider_id: r.provider_id.clone(),
                    message_state: r.message_state,
                    error: r.error.clone(),
                    received_unix_ms: r.received_unix_ms,
                }),
            });
            e.written = true;
            e.in_store = true;
        }
    }
}
