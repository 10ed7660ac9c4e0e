//! The stored form of delivery receipts: for each sent message that waits
//! for receipts, the provider's ids and the segments delivered so far
//! (`receipt_waits`, keyed by (batch id, index)); for each message whose
//! delivery is decided, what decided it (`delivery_rows`, keyed by (batch id,
//! index / [`DELIVERIES_PER_ROW`]): a group commit of thousands of decisions
//! rewrites a few rows rather than inserting a row each). Both are written
//! in the reactor's group commits and removed with their batch.
//!
//! A row of `delivery_rows` is a run of entries: the message index (u32
//! LE), the length of its record (u32 LE), and the [`StoredDelivery`]
//! record. A later entry for an index replaces an earlier one. Stores
//! written before these rows keep one row per message in `deliveries`,
//! still read and removed.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{Loaded, Store, StoreError};

pub(super) const RECEIPT_WAITS: TableDefinition<'_, (u64, u32), &[u8]> =
    TableDefinition::new("receipt_waits");
/// Decided deliveries one row per message, as stores before `delivery_rows` kept them.
pub(super) const DELIVERIES: TableDefinition<'_, (u64, u32), &[u8]> =
    TableDefinition::new("deliveries");
pub(super) const DELIVERY_ROWS: TableDefinition<'_, (u64, u32), &[u8]> =
    TableDefinition::new("delivery_rows");

/// Messages whose decided deliveries share a row of `delivery_rows`.
pub(super) const DELIVERIES_PER_ROW: u32 = 64;

/// The entries of a `delivery_rows` row: (index, record), in the order written.
fn row_entries(row: &[u8]) -> impl Iterator<Item = Option<(u32, &[u8])>> {
    let mut rest = row;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let entry = (|| {
            let index = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
            let len = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
            let record = rest.get(8..8 + len)?;
            rest = &rest[8 + len..];
            Some((index, record))
        })();
        if entry.is_none() {
            rest = &[];
        }
        Some(entry)
    })
}

/// An entry of a `delivery_rows` row: (message index, encoded record).
type Entry<'a> = (u32, &'a [u8]);

/// Appends an entry to a `delivery_rows` row.
fn push_entry(row: &mut Vec<u8>, index: u32, record: &[u8]) {
    row.extend_from_slice(&index.to_le_bytes());
    row.extend_from_slice(&(record.len() as u32).to_le_bytes());
    row.extend_from_slice(record);
}

/// The record of message `index` in a `delivery_rows` row (the last entry
/// for it), or `Err` if the row is cut short.
pub(super) fn row_record(row: &[u8], index: u32) -> Result<Option<&[u8]>, String> {
    let mut found = None;
    for entry in row_entries(row) {
        let (i, record) = entry.ok_or("a delivery row cut short")?;
        if i == index {
            found = Some(record);
        }
    }
    Ok(found)
}

/// A message's delivery, once decided. The values are the stored format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Every segment delivered.
    Delivered = 1,
    /// A segment undeliverable, deleted, or of unknown fate at the SMSC.
    Undelivered = 2,
    /// A segment's validity period ran out.
    Expired = 3,
    /// A segment rejected by the network.
    Rejected = 4,
    /// No deciding receipt within the timeout.
    Unknown = 5,
}

/// A sent message waiting for receipts, as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredWait {
    /// When it was sent (its result came): Unix ms.
    #[prost(uint64, tag = "1")]
    pub sent_unix_ms: u64,
    /// Segments whose receipt said delivered, a bit each.
    #[prost(uint32, tag = "2")]
    pub delivered: u32,
    /// The provider the ids belong to.
    #[prost(string, tag = "3")]
    pub provider: String,
    /// The provider's id of each segment.
    #[prost(string, repeated, tag = "4")]
    pub ids: Vec<String>,
}

/// A message's decided delivery, as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredDelivery {
    /// A [`DeliveryState`].
    #[prost(uint32, tag = "1")]
    pub state: u32,
    /// The deciding receipt's SMPP message_state (0: none came).
    #[prost(uint32, tag = "2")]
    pub message_state: u32,
    /// Its error code.
    #[prost(string, tag = "3")]
    pub error: String,
    /// When it came (or the timeout ran out): Unix ms.
    #[prost(uint64, tag = "4")]
    pub unix_ms: u64,
    /// The provider's ids of the message's segments.
    #[prost(string, repeated, tag = "5")]
    pub ids: Vec<String>,
}

impl StoredWait {
    /// The record of a wait, encoded from borrowed parts: the bytes
    /// `encode_to_vec` gives for a [`StoredWait`] of them, without one.
    pub fn record<'a>(
        sent_unix_ms: u64,
        delivered: u32,
        provider: &str,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<u8> {
        let mut buf = Vec::with_capacity(48);
        put_varint(1, sent_unix_ms, &mut buf);
        put_varint(2, delivered.into(), &mut buf);
        if !provider.is_empty() {
            put_str(3, provider, &mut buf);
        }
        for id in ids {
            put_str(4, id, &mut buf);
        }
        buf
    }
}

impl StoredDelivery {
    /// The state (a value no version wrote reads as unknown).
    pub fn state(&self) -> DeliveryState {
        DeliveryState::stored(self.state)
    }

    /// A record this process encoded (or loaded, and checked), decoded.
    pub fn of_record(record: &[u8]) -> StoredDelivery {
        StoredDelivery::decode(record).expect("a record encoded or checked by this process")
    }

    /// The record of a decided delivery, encoded from borrowed parts: the
    /// bytes `encode_to_vec` gives for a [`StoredDelivery`] of them.
    pub fn record<'a>(
        state: DeliveryState,
        message_state: u32,
        error: &str,
        unix_ms: u64,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Arc<[u8]> {
        let mut buf = Vec::with_capacity(48);
        put_varint(1, state as u64, &mut buf);
        put_varint(2, message_state.into(), &mut buf);
        if !error.is_empty() {
            put_str(3, error, &mut buf);
        }
        put_varint(4, unix_ms, &mut buf);
        for id in ids {
            put_str(5, id, &mut buf);
        }
        buf.into()
    }
}

/// A varint field as prost writes it (nothing for zero, proto3's default).
fn put_varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A string field (or one element of a repeated one) as prost writes it.
fn put_str(tag: u32, value: &str, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value.as_bytes());
}

impl DeliveryState {
    /// The state a stored value means (a value no version wrote reads as unknown).
    fn stored(value: u32) -> DeliveryState {
        match value {
            1 => DeliveryState::Delivered,
            2 => DeliveryState::Undelivered,
            3 => DeliveryState::Expired,
            4 => DeliveryState::Rejected,
            _ => DeliveryState::Unknown,
        }
    }
}

/// The state field of a [`StoredDelivery`] alone: decoding it skips the
/// rest of the record without allocating.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredDeliveryState {
    #[prost(uint32, tag = "1")]
    state: u32,
}

/// How many of a batch's messages ended in each delivery state, as loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryTally {
    by_state: [u64; 5],
}

impl DeliveryTally {
    fn add(&mut self, state: DeliveryState) {
        self.by_state[state as usize - 1] += 1;
    }

    /// Each state with its number of messages.
    pub fn states(&self) -> impl Iterator<Item = (DeliveryState, u64)> + '_ {
        self.by_state
            .iter()
            .enumerate()
            .map(|(i, n)| (DeliveryState::stored(i as u32 + 1), *n))
    }
}

/// A change of receipt state, to store with a group. Its record is encoded
/// once, where the change is made; the store writes the bytes as they are.
#[derive(Clone, Debug)]
pub enum ReceiptWrite {
    /// The message waits (again, or with more segments delivered).
    Wait {
        /// Batch id.
        batch: u64,
        /// Message index.
        index: u32,
        /// What it waits with: a [`StoredWait`], encoded.
        record: Vec<u8>,
    },
    /// The message's delivery is decided: it waits no more.
    Final {
        /// Batch id.
        batch: u64,
        /// Message index.
        index: u32,
        /// What decided it: a [`StoredDelivery`], encoded, shared with the
        /// core while it keeps the message's batch whole.
        record: Arc<[u8]>,
    },
    /// A receipt came before the result naming its id: it is held, stored,
    /// until that result comes ([`super::early`]).
    Early {
        /// The provider of the node it came from.
        provider: Arc<str>,
        /// The provider's id it names.
        id: String,
        /// A [`StoredEarly`](super::StoredEarly), encoded.
        record: Vec<u8>,
    },
    /// A held early receipt was applied, or given up.
    EarlyGone {
        /// The provider of the node it came from.
        provider: Arc<str>,
        /// The provider's id it names.
        id: String,
    },
}

impl ReceiptWrite {
    /// Message `index` of `batch` waits with `wait`.
    pub fn wait(batch: u64, index: u32, wait: &StoredWait) -> Self {
        ReceiptWrite::Wait {
            batch,
            index,
            record: wait.encode_to_vec(),
        }
    }

    /// Message `index` of `batch` was decided as `delivery` says.
    pub fn decided(batch: u64, index: u32, delivery: &StoredDelivery) -> Self {
        ReceiptWrite::Final {
            batch,
            index,
            record: delivery.encode_to_vec().into(),
        }
    }
}

/// Rows of one table as decoded (key, record).
pub type Rows<T> = Vec<((u64, u32), T)>;

impl Store {
    /// The error for `delivery_rows` row `key` when its entries run past its end.
    fn cut_short(&self, (batch, row): (u64, u32)) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("delivery row {batch:016x}.{row}: cut short"),
        }
    }

    pub(super) fn put_receipts(
        &self,
        txn: &WriteTransaction,
        writes: &[ReceiptWrite],
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut waits = txn.open_table(RECEIPT_WAITS).map_err(|e| self.err(e))?;
        // Decisions by row, so each row is read and written once.
        let mut decided: BTreeMap<(u64, u32), Vec<Entry<'_>>> = BTreeMap::new();
        let mut early = Vec::new();
        for w in writes {
            match w {
                ReceiptWrite::Early {
                    provider,
                    id,
                    record,
                } => early.push((&**provider, id.as_str(), Some(record.as_slice()))),
                ReceiptWrite::EarlyGone { provider, id } => {
                    early.push((&**provider, id.as_str(), None));
                }
                ReceiptWrite::Wait {
                    batch,
                    index,
                    record,
                } => {
                    waits
                        .insert((*batch, *index), record.as_slice())
                        .map_err(|e| self.err(e))?;
                }
                ReceiptWrite::Final {
                    batch,
                    index,
                    record,
                } => {
                    waits.remove((*batch, *index)).map_err(|e| self.err(e))?;
                    decided
                        .entry((*batch, index / DELIVERIES_PER_ROW))
                        .or_default()
                        .push((*index, record));
                }
            }
        }
        let mut rows = txn.open_table(DELIVERY_ROWS).map_err(|e| self.err(e))?;
        for (key, entries) in decided {
            let mut row = Vec::new();
            if let Some(old) = rows.get(key).map_err(|e| self.err(e))? {
                // Keeps the entries of messages not decided again in this group.
                for entry in row_entries(old.value()) {
                    let (index, record) = entry.ok_or_else(|| self.cut_short(key))?;
                    if !entries.iter().any(|(i, _)| *i == index) {
                        push_entry(&mut row, index, record);
                    }
                }
            }
            for (index, record) in &entries {
                push_entry(&mut row, *index, record);
            }
            rows.insert(key, row.as_slice()).map_err(|e| self.err(e))?;
        }
        self.put_early(txn, &early)
    }

    pub(super) fn delete_receipts(
        &self,
        txn: &WriteTransaction,
        batch: u64,
    ) -> Result<(), StoreError> {
        for t in [RECEIPT_WAITS, DELIVERIES, DELIVERY_ROWS] {
            txn.open_table(t)
                .map_err(|e| self.err(e))?
                .retain_in((batch, 0)..=(batch, u32::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Every stored wait of the embedded store, as stored (at start).
    pub(super) fn receipt_waits(
        &self,
        txn: &redb::ReadTransaction,
    ) -> Result<Rows<Vec<u8>>, StoreError> {
        let t = txn.open_table(RECEIPT_WAITS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The decided deliveries of batch `id` as loaded: one record per
    /// message in `records` (the PostgreSQL store's rows and the embedded
    /// store's older ones), runs of them in `rows` (`delivery_rows`). Every
    /// one is counted in `loaded.delivery_tallies`; with `keep` (a batch the
    /// core keeps whole) each is also decoded whole, to be checked, and goes
    /// to `loaded.deliveries` with its state; otherwise only its state is read.
    pub(super) fn load_deliveries(
        &self,
        id: u64,
        records: &[(u32, Vec<u8>)],
        rows: &[(u32, Vec<u8>)],
        keep: bool,
        loaded: &mut Loaded,
    ) -> Result<(), StoreError> {
        let mut tally = DeliveryTally::default();
        let mut one = |index: u32, record: &[u8]| -> Result<(), StoreError> {
            let corrupt = |e: prost::DecodeError| StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("delivery of message {id:016x}.{index}: {e}"),
            };
            if keep {
                // Decoded whole to be checked, and kept as the bytes it is.
                let state = StoredDelivery::decode(record).map_err(corrupt)?.state();
                tally.add(state);
                loaded
                    .deliveries
                    .push(((id, index), (state, record.into())));
            } else {
                let s = StoredDeliveryState::decode(record).map_err(corrupt)?;
                tally.add(DeliveryState::stored(s.state));
            }
            Ok(())
        };
        for (index, record) in records {
            one(*index, record)?;
        }
        for (row, bytes) in rows {
            for entry in row_entries(bytes) {
                let (index, record) = entry.ok_or_else(|| self.cut_short((id, *row)))?;
                one(index, record)?;
            }
        }
        if tally != DeliveryTally::default() {
            loaded.delivery_tallies.push((id, tally));
        }
        Ok(())
    }

    /// Stored receipt rows, decoded.
    pub(super) fn decode_rows<T: Message + Default>(
        &self,
        rows: Vec<((u64, u32), Vec<u8>)>,
        what: &str,
    ) -> Result<Rows<T>, StoreError> {
        rows.into_iter()
            .map(|((batch, index), v)| {
                let record = T::decode(v.as_slice()).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("{what} of message {batch:016x}.{index}: {e}"),
                })?;
                Ok(((batch, index), record))
            })
            .collect()
    }

    /// The receipt state of message `index` of `batch` from its stored rows:
    /// (its decided delivery, else the ids it waits with).
    pub(super) fn decode_receipt(
        &self,
        batch: u64,
        index: u32,
        delivery: Option<&[u8]>,
        wait: Option<&[u8]>,
    ) -> Result<(Option<StoredDelivery>, Vec<String>), StoreError> {
        let corrupt = |e: prost::DecodeError| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("receipt of message {batch:016x}.{index}: {e}"),
        };
        if let Some(v) = delivery {
            return Ok((
                Some(StoredDelivery::decode(v).map_err(corrupt)?),
                Vec::new(),
            ));
        }
        let ids = match wait {
            Some(v) => StoredWait::decode(v).map_err(corrupt)?.ids,
            None => Vec::new(),
        };
        Ok((None, ids))
    }
}
