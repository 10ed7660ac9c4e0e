//! Loading the whole store at start. Every table is keyed by batch id
//! first, so each is read once, in key order, beside the batches table (a
//! merge), rather than looked up once per batch: a store of a million
//! batches loads in one pass over each table. Of a completed batch's
//! decided deliveries only their numbers by state are kept: each is read
//! from the store when asked for.

use std::iter::Peekable;

use prost::Message;
use redb::{ReadableTable, TableError};

use super::format::{self, StoredBatch, StoredBatchState};
use super::receipts::{DELIVERIES, DELIVERY_ROWS};
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
        std::iter::from_fn(|| self.next_of(id)).collect()
    }

    /// The next row of batch `id`, or `None` once its rows are done (rows
    /// of batches before it are skipped, as for [`take`](Self::take)): a
    /// batch's rows one at a time, for a list that is decoded as it is read.
    fn next_of(&mut self, id: u64) -> Option<Result<(u32, V), StoreError>> {
        loop {
            let key = match self.rows.peek()? {
                Ok(((b, _), _)) => *b,
                Err(_) => {
                    return Some(Err(self
                        .rows
                        .next()
                        .expect("peeked")
                        .err()
                        .expect("an error")));
                }
            };
            if key > id {
                return None;
            }
            let row = self.rows.next().expect("peeked");
            if key == id {
                return Some(row.map(|((_, sub), v)| (sub, v)));
            }
        }
    }
}

/// A table's rows in key order, as a backend reads them.
pub(super) type Ordered<'a, K, V> = Box<dyn Iterator<Item = Result<(K, V), StoreError>> + 'a>;

/// A table of byte rows of the embedded store, in key order.
fn ordered<'t>(
    t: &'t redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    path: std::path::PathBuf,
) -> Result<Ordered<'t, (u64, u32), Vec<u8>>, StoreError> {
    let fail = move |e: redb::StorageError| StoreError::new(path.clone(), e.into());
    let rows = t.iter().map_err(&fail)?;
    Ok(Box::new(rows.map(move |r| {
        r.map(|(k, v)| (k.value(), v.value().to_vec()))
            .map_err(&fail)
    })))
}

/// Every table, as a backend reads it at start, for [`Store::assemble`].
/// Rows keyed by batch come in key order (batch id as unsigned).
pub(super) struct Tables<'a> {
    pub(super) batches: Ordered<'a, u64, Vec<u8>>,
    /// Keyed (batch id, 0).
    pub(super) states: Ordered<'a, (u64, u32), Vec<u8>>,
    pub(super) outcomes: Ordered<'a, (u64, u32), Vec<u8>>,
    pub(super) errors: Ordered<'a, (u64, u32), String>,
    pub(super) numbers: Ordered<'a, (u64, u32), Vec<u8>>,
    pub(super) refs: Ordered<'a, (u64, u32), Vec<u8>>,
    pub(super) idempotency: Vec<(String, u64)>,
    /// In index order.
    pub(super) nodes: Vec<(u16, String)>,
    pub(super) waits: Vec<((u64, u32), Vec<u8>)>,
    /// Early receipts' records.
    pub(super) early: Vec<Vec<u8>>,
    /// Decided deliveries a record per message, keyed (batch, index).
    pub(super) delivery_records: Ordered<'a, (u64, u32), Vec<u8>>,
    /// Decided deliveries in runs (`delivery_rows`), keyed (batch, row).
    pub(super) delivery_rows: Ordered<'a, (u64, u32), Vec<u8>>,
    /// The number after the highest callback row.
    pub(super) callback_next: u64,
}

impl Store {
    /// The recipients of list batch `id`, decoded a row at a time as the
    /// merge reads them (a list of 14M is 216 rows of 520 KB).
    fn read_list<I, J>(
        &self,
        id: u64,
        total: u32,
        numbers: &mut Merge<I>,
        refs: &mut Merge<J>,
    ) -> Result<crate::batch::Recipients, StoreError>
    where
        I: Iterator<Item = Result<((u64, u32), Vec<u8>), StoreError>>,
        J: Iterator<Item = Result<((u64, u32), Vec<u8>), StoreError>>,
    {
        let mut list = format::ListReader::new(id, total);
        while let Some(row) = numbers.next_of(id) {
            let (row, bytes) = row?;
            list.number_row(row, &bytes)
                .map_err(|what| self.corrupt(what))?;
        }
        while let Some(row) = refs.next_of(id) {
            let (_, bytes) = row?;
            list.ref_row(&bytes).map_err(|what| self.corrupt(what))?;
        }
        list.finish().map_err(|what| self.corrupt(what))
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// Loads everything.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        match self.backend() {
            super::Backend::Redb(db) => self.load_redb(db),
            super::Backend::Postgres(pg) => pg.load(self),
        }
    }

    /// The embedded store's tables, each read once in key order.
    fn load_redb(&self, db: &redb::Database) -> Result<Loaded, StoreError> {
        let txn = db.begin_read().map_err(|e| self.err(e))?;
        let open = |e: TableError| self.err(e);
        let batches_t = txn.open_table(BATCHES).map_err(open)?;
        let outcomes_t = txn.open_table(OUTCOMES).map_err(open)?;
        let errors_t = txn.open_table(ERRORS).map_err(open)?;
        let state_t = txn.open_table(BATCH_STATE).map_err(open)?;
        let numbers_t = txn.open_table(RECIPIENTS).map_err(open)?;
        let refs_t = txn.open_table(CLIENT_REFS).map_err(open)?;
        let delivery_records_t = txn.open_table(DELIVERIES).map_err(open)?;
        let delivery_rows_t = txn.open_table(DELIVERY_ROWS).map_err(open)?;
        let path = self.path.clone();
        let fail = move |e: redb::StorageError| StoreError::new(path.clone(), e.into());
        let bytes = |t| ordered(t, self.path.clone());
        let (f1, f2, f3) = (fail.clone(), fail.clone(), fail.clone());
        let mut idempotency = Vec::new();
        for row in txn
            .open_table(IDEMPOTENCY)
            .map_err(open)?
            .iter()
            .map_err(|e| self.err(e))?
        {
            let (k, v) = row.map_err(|e| self.err(e))?;
            idempotency.push((k.value().to_string(), v.value()));
        }
        let mut nodes = Vec::new();
        for row in txn
            .open_table(NODES)
            .map_err(open)?
            .iter()
            .map_err(|e| self.err(e))?
        {
            let (k, v) = row.map_err(|e| self.err(e))?;
            nodes.push((k.value(), v.value().to_string()));
        }
        let waits = self.receipt_waits(&txn)?;
        let early = self.early_rows(&txn)?;
        let tables = Tables {
            batches: Box::new(
                batches_t
                    .iter()
                    .map_err(|e| self.err(e))?
                    .map(move |r| r.map(|(k, v)| (k.value(), v.value().to_vec())).map_err(&f1)),
            ),
            states: Box::new(state_t.iter().map_err(|e| self.err(e))?.map(move |r| {
                r.map(|(k, v)| ((k.value(), 0), v.value().to_vec()))
                    .map_err(&f2)
            })),
            outcomes: bytes(&outcomes_t)?,
            errors: Box::new(errors_t.iter().map_err(|e| self.err(e))?.map(move |r| {
                r.map(|(k, v)| (k.value(), v.value().to_string()))
                    .map_err(&f3)
            })),
            numbers: bytes(&numbers_t)?,
            refs: bytes(&refs_t)?,
            idempotency,
            nodes,
            waits,
            early,
            delivery_records: bytes(&delivery_records_t)?,
            delivery_rows: bytes(&delivery_rows_t)?,
            callback_next: self.next_callback_seq(&txn)?,
        };
        self.assemble(tables)
    }

    /// Builds what was loaded from every table's rows, merging the tables
    /// keyed by batch beside the batches table, and checks it.
    pub(super) fn assemble(&self, t: Tables<'_>) -> Result<Loaded, StoreError> {
        let mut outcomes = Merge {
            rows: t.outcomes.peekable(),
        };
        let mut numbers = Merge {
            rows: t.numbers.peekable(),
        };
        let mut refs = Merge {
            rows: t.refs.peekable(),
        };
        let mut errors = Merge {
            rows: t.errors.peekable(),
        };
        let mut states = Merge {
            rows: t.states.peekable(),
        };
        let mut delivery_records = Merge {
            rows: t.delivery_records.peekable(),
        };
        let mut delivery_rows = Merge {
            rows: t.delivery_rows.peekable(),
        };
        let mut loaded = Loaded::default();
        for row in t.batches {
            let (id, v) = row?;
            let b = StoredBatch::decode(v.as_slice())
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
            let list = match b.list_body {
                Some(_) => Some(self.read_list(id, b.total, &mut numbers, &mut refs)?),
                None => None,
            };
            let mut lb = LoadedBatch {
                errors: errors.take(id)?,
                batch: b,
                state,
                chunks,
                list,
                completed: false,
            };
            lb.completed = lb.all_outcomes_in();
            // A completed batch's deliveries are read from the store when
            // asked for: only their numbers are loaded.
            self.load_deliveries(
                id,
                &delivery_records.take(id)?,
                &delivery_rows.take(id)?,
                !lb.completed(),
                &mut loaded,
            )?;
            loaded.batches.push(lb);
        }
        loaded.idempotency = t.idempotency;
        loaded.nodes = t.nodes;
        loaded.receipt_waits = self.decode_rows(t.waits, "receipt wait")?;
        loaded.early_receipts = self.decode_early(t.early)?;
        loaded.callback_next = t.callback_next;
        format::check(&loaded).map_err(|what| self.corrupt(what))?;
        Ok(loaded)
    }
}
