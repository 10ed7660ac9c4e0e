//! Reading one batch's messages back from the store, a range at a time:
//! what a folded batch's messages were (number, body, reference) and what
//! became of them (outcome, attempts, node, last error), for GetStatus and
//! ListMessages. Reads run beside the writer; each sees the last commit.

use prost::Message;

use super::format::{self, LIST_ROW, StoredBatch};
use super::{
    BATCHES, CLIENT_REFS, ERRORS, NODES, OUTCOMES, RECIPIENTS, Store, StoreError, StoredOutcome,
};

/// One message as the store holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    /// Its index in the batch.
    pub index: u32,
    /// The number.
    pub to: String,
    /// The text.
    pub body: String,
    /// The client's reference.
    pub client_ref: String,
    /// Its sender ("" for the node's default).
    pub sender: String,
    /// Its outcome, if it has one.
    pub outcome: Option<StoredOutcome>,
    /// The name of the node of its outcome ("" for none).
    pub node: String,
    /// Its last error, if it failed for good.
    pub error: Option<String>,
    /// Its delivery, once a receipt (or the timeout) decided it.
    pub delivery: Option<super::StoredDelivery>,
    /// The provider's ids it waits for receipts with.
    pub provider_ids: Vec<String>,
}

/// A stored row, if there is one.
type StoredRow = Option<Vec<u8>>;

/// Two optional stored rows: (numbers, references) of a list row, or
/// (decided delivery, receipt wait) of a message.
pub(super) type RowPair = (StoredRow, StoredRow);

/// What reading messages back needs of a backend: rows by key, each as stored.
pub(super) trait Lookup {
    /// The batch record.
    fn batch(&mut self, id: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// An outcome row (empty if none was written).
    fn outcome_row(&mut self, id: u64, chunk: u32) -> Result<Vec<u8>, StoreError>;
    /// A list batch's row of numbers and of client references.
    fn list_row(&mut self, id: u64, row: u32) -> Result<RowPair, StoreError>;
    /// A node's name by index.
    fn node(&mut self, n: u16) -> Result<Option<String>, StoreError>;
    /// A message's last error.
    fn error(&mut self, id: u64, index: u32) -> Result<Option<String>, StoreError>;
    /// A message's decided delivery and its receipt wait, as stored.
    fn receipt(&mut self, id: u64, index: u32) -> Result<RowPair, StoreError>;
}

/// The embedded store's tables in one read transaction.
struct RedbLookup {
    batches: redb::ReadOnlyTable<u64, &'static [u8]>,
    outcomes: redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    errors: redb::ReadOnlyTable<(u64, u32), &'static str>,
    nodes: redb::ReadOnlyTable<u16, &'static str>,
    numbers: redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    refs: redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    waits: redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    /// Decided deliveries of stores written before `delivery_rows`.
    finals: redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    delivery_rows: redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    /// The `delivery_rows` row read last: a listing reads each row once.
    delivery_row: Option<((u64, u32), StoredRow)>,
    path: std::path::PathBuf,
}

impl RedbLookup {
    fn err(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError::new(self.path.clone(), e.into())
    }

    fn bytes(
        &self,
        t: &redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
        key: (u64, u32),
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(t.get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_vec()))
    }
}

impl Lookup for RedbLookup {
    fn batch(&mut self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .batches
            .get(id)
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_vec()))
    }

    fn outcome_row(&mut self, id: u64, chunk: u32) -> Result<Vec<u8>, StoreError> {
        Ok(self.bytes(&self.outcomes, (id, chunk))?.unwrap_or_default())
    }

    fn list_row(&mut self, id: u64, row: u32) -> Result<RowPair, StoreError> {
        Ok((
            self.bytes(&self.numbers, (id, row))?,
            self.bytes(&self.refs, (id, row))?,
        ))
    }

    fn node(&mut self, n: u16) -> Result<Option<String>, StoreError> {
        Ok(self
            .nodes
            .get(n)
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_string()))
    }

    fn error(&mut self, id: u64, index: u32) -> Result<Option<String>, StoreError> {
        Ok(self
            .errors
            .get((id, index))
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_string()))
    }

    fn receipt(&mut self, id: u64, index: u32) -> Result<RowPair, StoreError> {
        let key = (id, index / super::receipts::DELIVERIES_PER_ROW);
        if self.delivery_row.as_ref().is_none_or(|(k, _)| *k != key) {
            let row = self.bytes(&self.delivery_rows, key)?;
            self.delivery_row = Some((key, row));
        }
        let row = self.delivery_row.as_ref().and_then(|(_, r)| r.as_deref());
        let decided = match row.map(|r| super::receipts::row_record(r, index)) {
            Some(Ok(record)) => record.map(<[u8]>::to_vec),
            Some(Err(what)) => {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("{what}: message {id:016x}.{index}"),
                });
            }
            None => None,
        };
        let decided = match decided {
            Some(d) => Some(d),
            None => self.bytes(&self.finals, (id, index))?,
        };
        Ok((decided, self.bytes(&self.waits, (id, index))?))
    }
}

impl Store {
    /// Messages `from..to` of batch `id` for which `keep` holds of their
    /// outcome and delivery, at most `limit`; with the index after the last one looked at.
    /// `None` if the batch is not stored.
    pub fn read_messages(
        &self,
        id: u64,
        from: u32,
        to: u32,
        limit: usize,
        keep: impl Fn(Option<&StoredOutcome>, Option<&super::StoredDelivery>) -> bool,
    ) -> Result<Option<(Vec<StoredMessage>, u32)>, StoreError> {
        match self.backend() {
            super::Backend::Redb(db) => {
                let txn = db.begin_read().map_err(|e| self.err(e))?;
                let open = |e: redb::TableError| self.err(e);
                let mut lookup = RedbLookup {
                    batches: txn.open_table(BATCHES).map_err(open)?,
                    outcomes: txn.open_table(OUTCOMES).map_err(open)?,
                    errors: txn.open_table(ERRORS).map_err(open)?,
                    nodes: txn.open_table(NODES).map_err(open)?,
                    numbers: txn.open_table(RECIPIENTS).map_err(open)?,
                    refs: txn.open_table(CLIENT_REFS).map_err(open)?,
                    waits: txn
                        .open_table(super::receipts::RECEIPT_WAITS)
                        .map_err(open)?,
                    finals: txn.open_table(super::receipts::DELIVERIES).map_err(open)?,
                    delivery_rows: txn
                        .open_table(super::receipts::DELIVERY_ROWS)
                        .map_err(open)?,
                    delivery_row: None,
                    path: self.path.clone(),
                };
                self.messages(&mut lookup, id, from, to, limit, keep)
            }
            super::Backend::Postgres(pg) => pg.read(self, |lookup| {
                self.messages(lookup, id, from, to, limit, keep)
            }),
        }
    }

    /// [`Store::read_messages`] over a backend's rows.
    fn messages(
        &self,
        rows: &mut dyn Lookup,
        id: u64,
        from: u32,
        to: u32,
        limit: usize,
        keep: impl Fn(Option<&StoredOutcome>, Option<&super::StoredDelivery>) -> bool,
    ) -> Result<Option<(Vec<StoredMessage>, u32)>, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt {
            path: self.path.clone(),
            what,
        };
        let Some(record) = rows.batch(id)? else {
            return Ok(None);
        };
        let batch = StoredBatch::decode(record.as_slice())
            .map_err(|e| corrupt(format!("batch {id:016x}: {e}")))?;
        let to = to.min(batch.total);
        let mut found = Vec::new();
        let mut index = from;
        let mut row: Option<(u32, Vec<u8>)> = None;
        let mut list: Option<(u32, crate::batch::Recipients)> = None;
        while index < to && found.len() < limit {
            let chunk = format::row_of(index);
            if row.as_ref().is_none_or(|(c, _)| *c != chunk) {
                row = Some((chunk, rows.outcome_row(id, chunk)?));
            }
            let outcome = row
                .as_ref()
                .and_then(|(_, bytes)| format::read_slot(bytes, index));
            let (final_row, wait_row) = rows.receipt(id, index)?;
            let (delivery, provider_ids) =
                self.decode_receipt(id, index, final_row.as_deref(), wait_row.as_deref())?;
            if !keep(outcome.as_ref(), delivery.as_ref()) {
                index += 1;
                continue;
            }
            let (mut number, mut body, mut client_ref, mut sender) =
                (String::new(), String::new(), String::new(), String::new());
            if let Some(seed) = batch.synthetic_seed {
                smsmesh::synth::message(
                    seed,
                    index,
                    batch.synthetic_body.as_deref(),
                    &mut number,
                    &mut body,
                );
            } else if let Some(text) = &batch.list_body {
                let list_row = index / LIST_ROW as u32;
                if list.as_ref().is_none_or(|(r, _)| *r != list_row) {
                    let (numbers, refs) = rows.list_row(id, list_row)?;
                    let numbers: Vec<(u32, Vec<u8>)> =
                        numbers.map(|v| (0, v)).into_iter().collect();
                    let refs: Vec<(u32, Vec<u8>)> = refs.map(|v| (0, v)).into_iter().collect();
                    let first = list_row as usize * LIST_ROW;
                    let n = LIST_ROW.min(batch.total as usize - first) as u32;
                    let part = format::read_list(id, n, &numbers, &refs).map_err(corrupt)?;
                    list = Some((list_row, part));
                }
                let (_, part) = list.as_ref().expect("read above");
                let at = index as usize % LIST_ROW;
                part.number(at, &mut number);
                body.clone_from(text);
                client_ref = part.client_ref(at).to_string();
                sender.clone_from(&batch.list_sender);
            } else if let Some(m) = batch.messages.get(index as usize) {
                number.clone_from(&m.to);
                body.clone_from(&m.body);
                client_ref.clone_from(&m.client_ref);
                sender.clone_from(&m.sender);
            }
            let node = match outcome.as_ref().and_then(|o| o.node.checked_sub(1)) {
                Some(n) => rows.node(n)?.unwrap_or_default(),
                None => String::new(),
            };
            let error = rows.error(id, index)?;
            found.push(StoredMessage {
                index,
                to: number,
                body,
                client_ref,
                sender,
                outcome,
                node,
                error,
                delivery,
                provider_ids,
            });
            index += 1;
        }
        Ok(Some((found, index)))
    }
}
