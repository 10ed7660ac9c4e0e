//! Reading the PostgreSQL store: everything at start (each table through
//! portals of one snapshot, a page of rows at a time, in the embedded
//! store's key order), and a folded batch's messages on request, in one
//! read-only snapshot, a chunk of rows at a time.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use postgres::types::FromSql;
use postgres::{IsolationLevel, Portal, Row, Transaction};

use super::{Pg, db_err, id, unid};
use crate::store::format::CHUNK;
use crate::store::load::Tables;
use crate::store::reads::{Lookup, RowPair};
use crate::store::{Loaded, Store, StoreError};

/// Rows fetched at a time: a page of outcome rows (up to 16 KiB each) holds
/// 64 MiB at most. Recipient rows (up to 512 KiB) come [`LIST_PAGE_ROWS`] at
/// a time. Pages much smaller than this made a load of many small batches
/// slower by a round trip per page.
const PAGE_ROWS: i32 = 4096;
/// Rows of recipients or client references fetched at a time (32 MiB at most).
const LIST_PAGE_ROWS: i32 = 64;

/// A table's rows in key order, batch id unsigned, fetched a page at a time
/// through portals of the load's transaction, so that the load holds a page
/// of each table rather than every row. Ids are stored as `bigint`: those
/// below 2^63 (stored non-negative) come first, then the others (stored
/// negative), each part an index scan in order.
struct Paged<'t, 'c, T> {
    txn: &'t RefCell<Transaction<'c>>,
    portals: VecDeque<Portal>,
    page: i32,
    rows: std::vec::IntoIter<Row>,
    decode: fn(&Row) -> T,
    fail: &'t dyn Fn(postgres::Error) -> StoreError,
}

impl<'t, 'c, T> Paged<'t, 'c, T> {
    /// The rows of `select` (`SELECT columns FROM table`) in the order of
    /// `order` (the batch id's column first), `page` rows at a time.
    fn open(
        txn: &'t RefCell<Transaction<'c>>,
        select: &str,
        order: &str,
        page: i32,
        decode: fn(&Row) -> T,
        fail: &'t dyn Fn(postgres::Error) -> StoreError,
    ) -> Result<Self, StoreError> {
        let key = order.split(',').next().unwrap_or(order);
        let mut portals = VecDeque::new();
        for part in [">= 0", "< 0"] {
            let sql = format!("{select} WHERE {key} {part} ORDER BY {order}");
            portals.push_back(txn.borrow_mut().bind(sql.as_str(), &[]).map_err(fail)?);
        }
        Ok(Paged {
            txn,
            portals,
            page,
            rows: Vec::new().into_iter(),
            decode,
            fail,
        })
    }
}

impl<T> Iterator for Paged<'_, '_, T> {
    type Item = Result<T, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.rows.next() {
                return Some(Ok((self.decode)(&row)));
            }
            let portal = self.portals.front()?;
            match self.txn.borrow_mut().query_portal(portal, self.page) {
                Ok(rows) => {
                    if rows.len() < self.page as usize {
                        self.portals.pop_front();
                    }
                    self.rows = rows.into_iter();
                }
                Err(e) => {
                    self.portals.clear();
                    return Some(Err((self.fail)(e)));
                }
            }
        }
    }
}

/// A row keyed (batch, sub) and its value, from columns 0, 1 and 2. Sub
/// keys (chunks, indexes, row numbers) are below 2^31, so their `int`
/// order is their unsigned order.
fn keyed<V: for<'a> FromSql<'a>>(r: &Row) -> ((u64, u32), V) {
    let sub: i32 = r.get(1);
    ((unid(r.get(0)), sub as u32), r.get(2))
}

/// A row keyed by batch id alone (as (batch, 0)) and its record.
fn record(r: &Row) -> ((u64, u32), Vec<u8>) {
    ((unid(r.get(0)), 0), r.get(1))
}

impl Pg {
    /// Loads everything, in one consistent snapshot.
    pub(in crate::store) fn load(&self, store: &Store) -> Result<Loaded, StoreError> {
        let mut client = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let e = |e: postgres::Error| db_err(store, e);
        let mut txn = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(e)?;
        // Messages waiting for receipts: work in progress, read at once, in
        // key order as the embedded store gives them.
        let mut waits: Vec<((u64, u32), Vec<u8>)> = txn
            .query("SELECT batch, idx, record FROM smsmesh_receipt_waits", &[])
            .map_err(e)?
            .iter()
            .map(keyed::<Vec<u8>>)
            .collect();
        waits.sort_unstable_by_key(|(k, _)| *k);
        let early: Vec<Vec<u8>> = txn
            .query(
                r#"SELECT record FROM smsmesh_early_receipts ORDER BY provider COLLATE "C", provider_id COLLATE "C""#,
                &[],
            )
            .map_err(e)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let idempotency = txn
            .query("SELECT key, batch FROM smsmesh_idempotency", &[])
            .map_err(e)?
            .into_iter()
            .map(|r| (r.get(0), unid(r.get(1))))
            .collect();
        let callback_next: i64 = txn
            .query_one(
                "SELECT coalesce(max(seq), 0) + 1 FROM smsmesh_callbacks",
                &[],
            )
            .map_err(e)?
            .get(0);
        let mut nodes = Vec::new();
        for r in txn
            .query("SELECT idx, name FROM smsmesh_nodes ORDER BY idx", &[])
            .map_err(e)?
        {
            let idx: i32 = r.get(0);
            let idx = u16::try_from(idx).map_err(|_| StoreError::Corrupt {
                path: store.path.clone(),
                what: format!("node index {idx}"),
            })?;
            nodes.push((idx, r.get(1)));
        }
        let txn = RefCell::new(txn);
        let loaded = {
            let fail: &dyn Fn(postgres::Error) -> StoreError = &e;
            let bytes = |select: &str, order: &str, page: i32| {
                Paged::open(&txn, select, order, page, keyed::<Vec<u8>>, fail)
            };
            let records = |table: &str| {
                let select = format!("SELECT id, record FROM {table}");
                Paged::open(&txn, &select, "id", PAGE_ROWS, record, fail)
            };
            let errors = Paged::open(
                &txn,
                "SELECT batch, idx, error FROM smsmesh_errors",
                "batch, idx",
                PAGE_ROWS,
                keyed::<String>,
                fail,
            )?;
            let batches = records("smsmesh_batches")?;
            store.assemble(Tables {
                batches: Box::new(batches.map(|r| r.map(|((id, _), v)| (id, v)))),
                states: Box::new(records("smsmesh_batch_state")?),
                outcomes: Box::new(bytes(
                    "SELECT batch, chunk, slots FROM smsmesh_outcomes",
                    "batch, chunk",
                    PAGE_ROWS,
                )?),
                errors: Box::new(errors),
                numbers: Box::new(bytes(
                    "SELECT batch, row_no, bytes FROM smsmesh_recipients",
                    "batch, row_no",
                    LIST_PAGE_ROWS,
                )?),
                refs: Box::new(bytes(
                    "SELECT batch, row_no, bytes FROM smsmesh_client_refs",
                    "batch, row_no",
                    LIST_PAGE_ROWS,
                )?),
                idempotency,
                nodes,
                waits,
                early,
                delivery_records: Box::new(bytes(
                    "SELECT batch, idx, record FROM smsmesh_deliveries",
                    "batch, idx",
                    PAGE_ROWS,
                )?),
                delivery_rows: Box::new(std::iter::empty()),
                callback_next: callback_next as u64,
            })
        };
        // A read-only snapshot: its end matters only if the load went well.
        let ended = txn.into_inner().commit();
        let loaded = loaded?;
        ended.map_err(e)?;
        Ok(loaded)
    }

    /// Stored callback rows numbered above `after` and below `below`, at most `limit`, in order.
    pub(in crate::store) fn callback_rows(
        &self,
        store: &Store,
        after: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut client = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let below = i64::try_from(below).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(client
            .query(
                "SELECT seq, record FROM smsmesh_callbacks WHERE seq > $1 AND seq < $2 ORDER BY seq LIMIT $3",
                &[&after, &below, &limit],
            )
            .map_err(|e| db_err(store, e))?
            .into_iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    /// Runs `f` over a read-only snapshot of the database.
    pub(in crate::store) fn read<T>(
        &self,
        store: &Store,
        f: impl FnOnce(&mut dyn Lookup) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let txn = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| db_err(store, e))?;
        let mut lookup = PgLookup {
            txn,
            store,
            nodes: None,
            errors: None,
            receipts: None,
        };
        let r = f(&mut lookup)?;
        lookup.txn.commit().map_err(|e| db_err(store, e))?;
        Ok(r)
    }
}

/// Rows of one chunk of a batch's messages, by index.
type ChunkRows<V> = ((u64, u32), HashMap<u32, V>);

/// A folded batch's rows in a snapshot; errors and receipts are read a
/// chunk (4,096 messages) at a time.
struct PgLookup<'t, 's> {
    txn: Transaction<'t>,
    store: &'s Store,
    nodes: Option<HashMap<u16, String>>,
    errors: Option<ChunkRows<String>>,
    receipts: Option<ChunkRows<RowPair>>,
}

impl PgLookup<'_, '_> {
    fn one(&mut self, sql: &str, a: u64, b: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.txn
            .query_opt(sql, &[&id(a), &(b as i32)])
            .map(|r| r.map(|r| r.get(0)))
            .map_err(|e| db_err(self.store, e))
    }

    /// The range of indexes of `index`'s chunk.
    fn chunk(index: u32) -> (u32, i32, i32) {
        let c = index / CHUNK;
        let first = c * CHUNK;
        (c, first as i32, first.saturating_add(CHUNK) as i32)
    }
}

impl Lookup for PgLookup<'_, '_> {
    fn batch(&mut self, batch: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.txn
            .query_opt(
                "SELECT record FROM smsmesh_batches WHERE id = $1",
                &[&id(batch)],
            )
            .map(|r| r.map(|r| r.get(0)))
            .map_err(|e| db_err(self.store, e))
    }

    fn outcome_row(&mut self, batch: u64, chunk: u32) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .one(
                "SELECT slots FROM smsmesh_outcomes WHERE batch = $1 AND chunk = $2",
                batch,
                chunk,
            )?
            .unwrap_or_default())
    }

    fn list_row(&mut self, batch: u64, row: u32) -> Result<RowPair, StoreError> {
        Ok((
            self.one(
                "SELECT bytes FROM smsmesh_recipients WHERE batch = $1 AND row_no = $2",
                batch,
                row,
            )?,
            self.one(
                "SELECT bytes FROM smsmesh_client_refs WHERE batch = $1 AND row_no = $2",
                batch,
                row,
            )?,
        ))
    }

    fn node(&mut self, n: u16) -> Result<Option<String>, StoreError> {
        if self.nodes.is_none() {
            let mut nodes = HashMap::new();
            for r in self
                .txn
                .query("SELECT idx, name FROM smsmesh_nodes", &[])
                .map_err(|e| db_err(self.store, e))?
            {
                let idx: i32 = r.get(0);
                nodes.insert(idx as u16, r.get(1));
            }
            self.nodes = Some(nodes);
        }
        Ok(self.nodes.as_ref().and_then(|m| m.get(&n).cloned()))
    }

    fn error(&mut self, batch: u64, index: u32) -> Result<Option<String>, StoreError> {
        let (c, from, to) = Self::chunk(index);
        if self.errors.as_ref().is_none_or(|(k, _)| *k != (batch, c)) {
            let rows = self
                .txn
                .query(
                    "SELECT idx, error FROM smsmesh_errors WHERE batch = $1 AND idx >= $2 AND idx < $3",
                    &[&id(batch), &from, &to],
                )
                .map_err(|e| db_err(self.store, e))?;
            let map = rows
                .into_iter()
                .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
                .collect();
            self.errors = Some(((batch, c), map));
        }
        Ok(self
            .errors
            .as_ref()
            .and_then(|(_, m)| m.get(&index).cloned()))
    }

    fn receipt(&mut self, batch: u64, index: u32) -> Result<RowPair, StoreError> {
        let (c, from, to) = Self::chunk(index);
        if self.receipts.as_ref().is_none_or(|(k, _)| *k != (batch, c)) {
            let mut map: HashMap<u32, RowPair> = HashMap::new();
            for (table, delivery) in [
                ("smsmesh_deliveries", true),
                ("smsmesh_receipt_waits", false),
            ] {
                let rows = self
                    .txn
                    .query(
                        &format!("SELECT idx, record FROM {table} WHERE batch = $1 AND idx >= $2 AND idx < $3"),
                        &[&id(batch), &from, &to],
                    )
                    .map_err(|e| db_err(self.store, e))?;
                for r in rows {
                    let entry = map.entry(r.get::<_, i32>(0) as u32).or_default();
                    if delivery {
                        entry.0 = Some(r.get(1));
                    } else {
                        entry.1 = Some(r.get(1));
                    }
                }
            }
            self.receipts = Some(((batch, c), map));
        }
        Ok(self
            .receipts
            .as_ref()
            .and_then(|(_, m)| m.get(&index).cloned())
            .unwrap_or_default())
    }
}
