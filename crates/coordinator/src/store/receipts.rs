//! The stored form of delivery receipts: for each sent message that waits
//! for receipts, the provider's ids and the segments delivered so far
//! (`receipt_waits`); for each message whose delivery is decided, what
//! decided it (`deliveries`). Both are keyed by (batch id, index), written
//! in the reactor's group commits and removed with their batch.

use prost::Message;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{Store, StoreError};

pub(super) const RECEIPT_WAITS: TableDefinition<'_, (u64, u32), &[u8]> =
    TableDefinition::new("receipt_waits");
pub(super) const DELIVERIES: TableDefinition<'_, (u64, u32), &[u8]> =
    TableDefinition::new("deliveries");

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

impl StoredDelivery {
    /// The state (a value no version wrote reads as unknown).
    pub fn state(&self) -> DeliveryState {
        match self.state {
            1 => DeliveryState::Delivered,
            2 => DeliveryState::Undelivered,
            3 => DeliveryState::Expired,
            4 => DeliveryState::Rejected,
            _ => DeliveryState::Unknown,
        }
    }
}

/// A change of receipt state, to store with a group.
#[derive(Clone, Debug)]
pub enum ReceiptWrite {
    /// The message waits (again, or with more segments delivered).
    Wait {
        /// Batch id.
        batch: u64,
        /// Message index.
        index: u32,
        /// What it waits with.
        wait: StoredWait,
    },
    /// The message's delivery is decided: it waits no more.
    Final {
        /// Batch id.
        batch: u64,
        /// Message index.
        index: u32,
        /// What decided it.
        delivery: StoredDelivery,
    },
}

/// Rows of one table as decoded (key, record).
pub type Rows<T> = Vec<((u64, u32), T)>;

impl Store {
    pub(super) fn put_receipts(
        &self,
        txn: &WriteTransaction,
        writes: &[ReceiptWrite],
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut waits = txn.open_table(RECEIPT_WAITS).map_err(|e| self.err(e))?;
        let mut finals = txn.open_table(DELIVERIES).map_err(|e| self.err(e))?;
        let mut buf = Vec::new();
        for w in writes {
            buf.clear();
            match w {
                ReceiptWrite::Wait { batch, index, wait } => {
                    wait.encode(&mut buf).expect("a Vec grows");
                    waits
                        .insert((*batch, *index), buf.as_slice())
                        .map_err(|e| self.err(e))?;
                }
                ReceiptWrite::Final {
                    batch,
                    index,
                    delivery,
                } => {
                    delivery.encode(&mut buf).expect("a Vec grows");
                    waits.remove((*batch, *index)).map_err(|e| self.err(e))?;
                    finals
                        .insert((*batch, *index), buf.as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn delete_receipts(
        &self,
        txn: &WriteTransaction,
        batch: u64,
    ) -> Result<(), StoreError> {
        for t in [RECEIPT_WAITS, DELIVERIES] {
            txn.open_table(t)
                .map_err(|e| self.err(e))?
                .retain_in((batch, 0)..=(batch, u32::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Every stored wait and decided delivery of the embedded store, as stored (at start).
    #[allow(clippy::type_complexity)]
    pub(super) fn receipt_rows(
        &self,
        txn: &redb::ReadTransaction,
    ) -> Result<(Vec<((u64, u32), Vec<u8>)>, Vec<((u64, u32), Vec<u8>)>), StoreError> {
        let read = |table: TableDefinition<'_, (u64, u32), &[u8]>| -> Result<Vec<((u64, u32), Vec<u8>)>, StoreError> {
            let t = txn.open_table(table).map_err(|e| self.err(e))?;
            let mut out = Vec::new();
            for row in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        };
        Ok((read(RECEIPT_WAITS)?, read(DELIVERIES)?))
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
