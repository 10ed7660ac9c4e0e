//! Receipts that came before the result naming their id, as stored. A node
//! answers a receipt's deliver_sm once the group holding its frame is
//! stored, after which the SMSC never sends it again: a receipt the core
//! holds for an id it does not know yet is stored with that group
//! (`early_receipts`, keyed (provider, provider id)) and removed in the
//! group that applies it or gives it up. A restart holds them again.

use prost::Message;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{Store, StoreError};

pub(super) const EARLY_RECEIPTS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("early_receipts");

/// A receipt waiting for the result that names its id, as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredEarly {
    /// The provider of the node it came from.
    #[prost(string, tag = "1")]
    pub provider: String,
    /// The provider's id it names.
    #[prost(string, tag = "2")]
    pub provider_id: String,
    /// SMPP message_state.
    #[prost(uint32, tag = "3")]
    pub message_state: u32,
    /// The provider's error code, if any.
    #[prost(string, tag = "4")]
    pub error: String,
    /// When its node received it: Unix ms.
    #[prost(uint64, tag = "5")]
    pub received_unix_ms: u64,
}

impl Store {
    /// Writes an early receipt (`record` `Some`) or removes one (`None`).
    pub(super) fn put_early(
        &self,
        txn: &WriteTransaction,
        writes: &[(&str, &str, Option<&[u8]>)],
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut t = txn.open_table(EARLY_RECEIPTS).map_err(|e| self.err(e))?;
        for &(provider, id, record) in writes {
            match record {
                Some(record) => t.insert((provider, id), record),
                None => t.remove((provider, id)),
            }
            .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Every early receipt of the embedded store, as stored (at start).
    pub(super) fn early_rows(
        &self,
        txn: &redb::ReadTransaction,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let t = txn.open_table(EARLY_RECEIPTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    /// Stored early receipts, decoded.
    pub(super) fn decode_early(&self, rows: Vec<Vec<u8>>) -> Result<Vec<StoredEarly>, StoreError> {
        rows.into_iter()
            .map(|v| {
                StoredEarly::decode(v.as_slice()).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("early receipt: {e}"),
                })
            })
            .collect()
    }
}
