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
    /// When it came (its entry in `order`).
    at: Instant,
    /// The store has a record under its key (written by a group taken before).
    in_store: bool,
    /// That record is this receipt (not one it replaced).
    written: bool,
}

/// Whether the order queue's entry (`when`, `key`) is of a receipt still held.
fn live(
    by_key: &HashMap<u128, Early, rustc_hash::FxBuildHasher>,
    when: Instant,
    key: u128,
) -> bool {
    by_key.get(&key).is_some_and(|e| e.at == when)
}

/// The receipts held, by key (the receipts sub-state's hash of provider and id).
#[derive(Default)]
pub(super) struct Held {
    by_key: HashMap<u128, Early, rustc_hash::FxBuildHasher>,
    /// Keys in the order they came, with when. An entry whose receipt was
    /// applied since is stale (not in `by_key` with that time); stale
    /// entries are dropped once they are most of the queue, so it stays
    /// within twice what is held, not every receipt of the last EARLY_WAIT.
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
        if self.by_key.len() >= EARLY_MAX && !self.by_key.contains_key(&key) {
            // The oldest receipt still held makes room.
            while let Some((when, old)) = self.order.pop_front() {
                if live(&self.by_key, when, old) {
                    evicted = self.take(old, writes).is_some();
                    break;
                }
            }
        }
        let new = Early {
            receipt: r,
            provider,
            at,
            in_store: stored,
            written: stored,
        };
        match self.by_key.insert(key, new) {
            None => {
                self.order.push_back((at, key));
                if self.order.len() > 2 * self.by_key.len() + 1024 {
                    let by_key = &self.by_key;
                    self.order.retain(|&(when, k)| live(by_key, when, k));
                }
            }
            // A second receipt for the id replaces the first, and keeps its
            // time; the store may hold the first: its record is rewritten.
            Some(old) => {
                let e = self.by_key.get_mut(&key).expect("just inserted");
                e.at = old.at;
                e.in_store |= old.in_store;
            }
        }
        if !stored {
            self.unwritten.push(key);
        }
        evicted
    }

    /// Receipts held now.
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Receipts held now, and entries of the order queue (for tests).
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.by_key.len(), self.order.len())
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
            if !live(&self.by_key, at, key) {
                continue;
            }
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
