//! Callback events waiting to be delivered to clients, as stored: table
//! `callbacks`, sequence number → [`CallbackRow`] (the events of one group
//! commit for one URL). A row is written in the group commit that stores
//! the outcomes it reports, and removed in a later one once it was
//! delivered or given up.

use prost::Message;
use redb::{ReadableTable, TableDefinition};

use super::{Store, StoreError};

pub(super) const CALLBACKS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("callbacks");

/// The events of one group commit for one callback URL.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CallbackRow {
    /// Where they go.
    #[prost(string, tag = "1")]
    pub url: String,
    /// The tenant whose secret signs them.
    #[prost(string, tag = "2")]
    pub tenant: String,
    /// When the row was made: Unix ms (its events are given up
    /// `--callback-max-age` after).
    #[prost(uint64, tag = "3")]
    pub created_unix_ms: u64,
    /// The events, in the order they happened.
    #[prost(message, repeated, tag = "4")]
    pub events: Vec<CallbackEvent>,
}

/// One event: a message reached an outcome or a delivery state, or a batch ended.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CallbackEvent {
    /// Batch id.
    #[prost(fixed64, tag = "1")]
    pub batch: u64,
    /// Message index (0 for a batch's event).
    #[prost(uint32, tag = "2")]
    pub index: u32,
    /// The message's new state, as `smsmesh.v1.MessageState` numbers it (0 for a batch's event).
    #[prost(uint32, tag = "3")]
    pub state: u32,
    /// When it happened: Unix ms.
    #[prost(uint64, tag = "4")]
    pub unix_ms: u64,
    /// The message's number (outcome events).
    #[prost(string, tag = "5")]
    pub to: String,
    /// The client's reference (outcome events).
    #[prost(string, tag = "6")]
    pub client_ref: String,
    /// The last error of a failed message.
    #[prost(string, tag = "7")]
    pub error: String,
    /// Attempts made (outcome events).
    #[prost(uint32, tag = "8")]
    pub attempts: u32,
    /// The deciding receipt's SMPP message_state (delivery events).
    #[prost(uint32, tag = "9")]
    pub receipt_state: u32,
    /// The receipt's error code (delivery events).
    #[prost(string, tag = "10")]
    pub receipt_error: String,
    /// The batch's end, as `smsmesh.v1.BatchState` numbers it (0 for a message's event).
    #[prost(uint32, tag = "11")]
    pub batch_state: u32,
    /// A batch's event: messages in it, sent, failed and cancelled.
    #[prost(uint64, repeated, tag = "12")]
    pub counts: Vec<u64>,
}

impl Store {
    /// Stored callback rows numbered above `after` and below `below`, at most
    /// `limit`, in order.
    pub fn callback_rows(
        &self,
        after: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<(u64, CallbackRow)>, StoreError> {
        let raw = match self.backend() {
            super::Backend::Postgres(pg) => pg.callback_rows(self, after, below, limit)?,
            super::Backend::Redb(db) => {
                let txn = db.begin_read().map_err(|e| self.err(e))?;
                let t = txn.open_table(CALLBACKS).map_err(|e| self.err(e))?;
                let mut out = Vec::new();
                if after.saturating_add(1) < below {
                    for r in t.range(after + 1..below).map_err(|e| self.err(e))? {
                        let (k, v) = r.map_err(|e| self.err(e))?;
                        out.push((k.value(), v.value().to_vec()));
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
                out
            }
        };
        raw.into_iter()
            .map(|(seq, bytes)| Ok((seq, self.decode_row(seq, &bytes)?)))
            .collect()
    }

    /// Stored callback row `seq`, if it is still stored.
    pub fn callback_row(&self, seq: u64) -> Result<Option<CallbackRow>, StoreError> {
        Ok(self
            .callback_rows(seq.saturating_sub(1), seq.saturating_add(1), 1)?
            .pop()
            .map(|(_, row)| row))
    }

    fn decode_row(&self, seq: u64, bytes: &[u8]) -> Result<CallbackRow, StoreError> {
        CallbackRow::decode(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("callback row {seq}: {e}"),
        })
    }

    /// Writes new callback rows and removes delivered ones, in a write transaction.
    pub(super) fn put_callbacks(
        &self,
        txn: &redb::WriteTransaction,
        set: &super::WriteSet,
    ) -> Result<(), StoreError> {
        if set.callbacks.is_empty() && set.callbacks_done.is_empty() {
            return Ok(());
        }
        let mut t = txn.open_table(CALLBACKS).map_err(|e| self.err(e))?;
        for (seq, row) in &set.callbacks {
            t.insert(*seq, row.encode_to_vec().as_slice())
                .map_err(|e| self.err(e))?;
        }
        for seq in &set.callbacks_done {
            t.remove(*seq).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// The number after the highest stored callback row (1 when none is).
    pub(super) fn next_callback_seq(&self, txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
        let t = match txn.open_table(CALLBACKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(1),
            Err(e) => return Err(self.err(e)),
        };
        let last = t.last().map_err(|e| self.err(e))?;
        Ok(last.map_or(1, |(k, _)| k.value() + 1))
    }
}
