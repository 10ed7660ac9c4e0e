//! Loading the whole store at start. Every table is keyed by batch id
//! first, so each is read once, in key order, beside the batches table (a
//! merge), rather than looked up once per batch: a store of a million
//! batches loads in one pass over each table.

use std::iter::Peekable;

use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata, TableError};

use super::format::{self, StoredBatch, StoredBatchState};
use super::{
    BATCH_STATE, BATCHES, CLIENT_REFS, ERRORS, IDEMPOTENCY, Loaded, LoadedBatch, NODES, OUTCOMES,
    RECIPIENTS, Store, StoreError,
};

/// A table's rows in key order, read up to a batch at a time.
struct Merge<I: Iterator> {
    rows: Peekable<I>,
}

impl<I, V> Merge<I>
where
    I: Iterator<Item = Result<((u64, u32), V), StoreError>>,
{
    /// The rows of batch `id` (rows of batches before it, which have no
    /// batch record, are skipped: they are orphans of an interrupted delete).
    fn take(&mut self, id: u64) -> Result<Vec<(u32, V)>, StoreError> {
        let mut out = Vec::new();
        while let Some(row) = self.rows.peek() {
            let key = match row {
                Ok(((b, _), _)) => *b,
                Err(_) => return Err(self.rows.next().expect("peeked").err().expect("an error")),
            };
            if key > id {
                break;
            }
            let ((b, sub), v) = self.rows.next().expect("peeked")?;
            if b == id {
                out.push((sub, v));
            }
        }
        Ok(out)
    }
}

impl Store {
    /// The rows of a table of byte rows keyed by (batch, row), to merge.
    #[allow(clippy::type_complexity)]
    fn bytes_rows<'t>(
        &self,
        t: &'t redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    ) -> Result<
        Merge<impl Iterator<Item = Result<((u64, u32), Vec<u8>), StoreError>> + 't>,
        StoreError,
    > {
        let path = self.path.clone();
        Ok(Merge {
            rows: t
                .iter()
                .map_err(|e| self.err(e))?
                .map(move |r| {
                    r.map(|(k, v)| (k.value(), v.value().to_vec()))
                        .map_err(|e| StoreError::new(path.clone(), e.into()))
                })
                .peekable(),
        })
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// Loads everything.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let open = |e: TableError| self.err(e);
        let batches_t = txn.open_table(BATCHES).map_err(open)?;
        let outcomes_t = txn.open_table(OUTCOMES).map_err(open)?;
        let errors_t = txn.open_table(ERRORS).map_err(open)?;
        let state_t = txn.open_table(BATCH_STATE).map_err(open)?;
        let numbers_t = txn.open_table(RECIPIENTS).map_err(open)?;
        let refs_t = txn.open_table(CLIENT_REFS).map_err(open)?;
        let mut outcomes = self.bytes_rows(&outcomes_t)?;
        let mut numbers = self.bytes_rows(&numbers_t)?;
        let mut refs = self.bytes_rows(&refs_t)?;
        let mut errors = Merge {
            rows: errors_t
                .iter()
                .map_err(|e| self.err(e))?
                .map(|r| {
                    r.map(|(k, v)| (k.value(), v.value().to_string()))
                        .map_err(|e| self.err(e))
                })
                .peekable(),
        };
        let mut states = Merge {
            rows: state_t
                .iter()
                .map_err(|e| self.err(e))?
                .map(|r| {
                    r.map(|(k, v)| ((k.value(), 0), v.value().to_vec()))
                        .map_err(|e| self.err(e))
                })
                .peekable(),
        };
        let mut loaded = Loaded::default();
        loaded
            .batches
            .reserve(batches_t.len().map_err(|e| self.err(e))? as usize);
        for row in batches_t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let id = k.value();
            let b = StoredBatch::decode(v.value())
                .map_err(|e| self.corrupt(format!("batch {id:016x}: {e}")))?;
            if b.id != id {
                return Err(self.corrupt(format!("batch {:016x} is stored under {id:016x}", b.id)));
            }
            if smsmesh::priority::Class::from_proto(b.priority as i32, "priority").is_err() {
                return Err(self.corrupt(format!(
                    "batch {id:016x} has priority {}, which no version writes",
                    b.priority
                )));
            }
            let chunks = outcomes.take(id)?;
            for (chunk, row) in &chunks {
                format::check_row(id, *chunk, row).map_err(|what| self.corrupt(what))?;
            }
            let state = match states.take(id)?.pop() {
                Some((_, v)) => StoredBatchState::decode(v.as_slice())
                    .map_err(|e| self.corrupt(format!("state of batch {id:016x}: {e}")))?,
                None => StoredBatchState {
                    id,
                    ..Default::default()
                },
            };
            let (number_rows, ref_rows) = (numbers.take(id)?, refs.take(id)?);
            let list = match b.list_body {
                Some(_) => Some(
                    format::read_list(id, b.total, &number_rows, &ref_rows)
                        .map_err(|what| self.corrupt(what))?,
                ),
                None => None,
            };
            loaded.batches.push(LoadedBatch {
                errors: errors.take(id)?,
                batch: b,
                state,
                chunks,
                list,
            });
        }
        for row in txn
            .open_table(IDEMPOTENCY)
            .map_err(open)?
            .iter()
            .map_err(|e| self.err(e))?
        {
            let (k, v) = row.map_err(|e| self.err(e))?;
            loaded.idempotency.push((k.value().to_string(), v.value()));
        }
        for row in txn
            .open_table(NODES)
            .map_err(open)?
            .iter()
            .map_err(|e| self.err(e))?
        {
            let (k, v) = row.map_err(|e| self.err(e))?;
            loaded.nodes.push((k.value(), v.value().to_string()));
        }
        (loaded.receipt_waits, loaded.deliveries) = self.load_receipts(&txn)?;
        format::check(&loaded).map_err(|what| self.corrupt(what))?;
        Ok(loaded)
    }
}
