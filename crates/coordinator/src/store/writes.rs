//! Writing to the store: new batches and the reactor's groups of changes,
//! each group in one transaction. The writer thread commits a reactor
//! group and every batch submitted meanwhile together, with one fsync.

use std::collections::BTreeMap;

use prost::Message;
use redb::{ReadableTable, WriteTransaction};

use super::{
    BATCH_STATE, BATCHES, CLIENT_REFS, ERRORS, Existing, IDEMPOTENCY, NODES, NewRecord, OUTCOMES,
    Outcome, RECIPIENTS, Store, StoreError, StoredBatch, WriteSet, format,
};

impl Store {
    /// Stores a new batch, durably. With an idempotency key already used,
    /// stores nothing and returns the earlier batch's id instead.
    pub fn insert_batch(
        &self,
        batch: &StoredBatch,
        key: Option<&str>,
    ) -> Result<Result<(), u64>, StoreError> {
        let record = NewRecord {
            batch,
            key,
            list: None,
        };
        let mut r = self.commit_group(&[], &[record])?;
        Ok(r.pop().expect("one result per batch").map_err(|e| e.id))
    }

    /// Commits one group of changes in one transaction.
    pub fn commit(&self, set: &WriteSet) -> Result<(), StoreError> {
        self.commit_group(&[set], &[]).map(|_| ())
    }

    /// Commits groups of changes and new batches (each with its idempotency
    /// key) in one transaction: one fsync for all. For each new batch,
    /// `Err` with the batch its key already made (stored before, or earlier
    /// in `new`), which is then not stored.
    pub fn commit_group(
        &self,
        sets: &[&WriteSet],
        new: &[NewRecord<'_>],
    ) -> Result<Vec<Result<(), Existing>>, StoreError> {
        self.write(|| {
            let db = match self.backend() {
                super::Backend::Redb(db) => db,
                super::Backend::Postgres(pg) => return pg.commit(self, sets, new),
            };
            let txn = db.begin_write().map_err(|e| self.err(e))?;
            let results = self.put_batches(&txn, new)?;
            for set in sets {
                self.put_set(&txn, set)?;
            }
            txn.commit().map_err(|e| self.err(e))?;
            Ok(results)
        })
    }

    fn put_batches(
        &self,
        txn: &WriteTransaction,
        new: &[NewRecord<'_>],
    ) -> Result<Vec<Result<(), Existing>>, StoreError> {
        let mut results = Vec::with_capacity(new.len());
        if new.is_empty() {
            return Ok(results);
        }
        {
            let mut keys = txn.open_table(IDEMPOTENCY).map_err(|e| self.err(e))?;
            let mut batches = txn.open_table(BATCHES).map_err(|e| self.err(e))?;
            let mut numbers = txn.open_table(RECIPIENTS).map_err(|e| self.err(e))?;
            let mut refs = txn.open_table(CLIENT_REFS).map_err(|e| self.err(e))?;
            let mut record = Vec::new();
            for NewRecord { batch, key, list } in new {
                if let Some(key) = key {
                    if let Some(id) = keys.get(*key).map_err(|e| self.err(e))? {
                        let id = id.value();
                        // The batch it made, to tell a replay from a different request.
                        let fingerprint = batches
                            .get(id)
                            .map_err(|e| self.err(e))?
                            .and_then(|v| StoredBatch::decode(v.value()).ok())
                            .map_or(0, |b| b.fingerprint);
                        results.push(Err(Existing { id, fingerprint }));
                        continue;
                    }
                    keys.insert(*key, batch.id).map_err(|e| self.err(e))?;
                }
                record.clear();
                batch.encode(&mut record).expect("a Vec grows");
                batches
                    .insert(batch.id, record.as_slice())
                    .map_err(|e| self.err(e))?;
                for (row, numbers_row, refs_row) in list.iter().flat_map(|l| format::list_rows(l)) {
                    numbers
                        .insert((batch.id, row), numbers_row.as_slice())
                        .map_err(|e| self.err(e))?;
                    if let Some(r) = refs_row {
                        refs.insert((batch.id, row), r.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                }
                results.push(Ok(()));
            }
        }
        Ok(results)
    }

    fn put_set(&self, txn: &WriteTransaction, set: &WriteSet) -> Result<(), StoreError> {
        {
            let mut outcomes = txn.open_table(OUTCOMES).map_err(|e| self.err(e))?;
            let mut errors = txn.open_table(ERRORS).map_err(|e| self.err(e))?;
            // Group by row so each row is read and written once.
            let mut rows: BTreeMap<(u64, u32), Vec<&Outcome>> = BTreeMap::new();
            for o in &set.outcomes {
                rows.entry((o.batch, format::row_of(o.index)))
                    .or_default()
                    .push(o);
            }
            for (key, list) in rows {
                let mut row = match outcomes.get(key).map_err(|e| self.err(e))? {
                    Some(v) => v.value().to_vec(),
                    None => format::empty_row(),
                };
                for o in list {
                    format::write_slot(&mut row, o);
                    if let Some(e) = &o.error {
                        errors
                            .insert((o.batch, o.index), e.as_str())
                            .map_err(|e| self.err(e))?;
                    }
                }
                outcomes
                    .insert(key, row.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut nodes = txn.open_table(NODES).map_err(|e| self.err(e))?;
            for (n, name) in &set.nodes {
                nodes.insert(*n, name.as_str()).map_err(|e| self.err(e))?;
            }
            let mut batches = txn.open_table(BATCH_STATE).map_err(|e| self.err(e))?;
            for b in &set.batches {
                batches
                    .insert(b.id, b.encode_to_vec().as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        self.put_receipts(txn, &set.receipts)?;
        self.put_callbacks(txn, set)?;
        if !set.deleted.is_empty() {
            self.delete_batches(txn, &set.deleted)?;
        }
        Ok(())
    }

    /// Removes batches and everything stored about them; their space is reused.
    fn delete_batches(
        &self,
        txn: &WriteTransaction,
        deleted: &[(u64, Option<String>)],
    ) -> Result<(), StoreError> {
        let mut batches = txn.open_table(BATCHES).map_err(|e| self.err(e))?;
        let mut states = txn.open_table(BATCH_STATE).map_err(|e| self.err(e))?;
        let mut outcomes = txn.open_table(OUTCOMES).map_err(|e| self.err(e))?;
        let mut errors = txn.open_table(ERRORS).map_err(|e| self.err(e))?;
        let mut keys = txn.open_table(IDEMPOTENCY).map_err(|e| self.err(e))?;
        let mut numbers = txn.open_table(RECIPIENTS).map_err(|e| self.err(e))?;
        let mut refs = txn.open_table(CLIENT_REFS).map_err(|e| self.err(e))?;
        for (id, key) in deleted {
            let id = *id;
            batches.remove(id).map_err(|e| self.err(e))?;
            states.remove(id).map_err(|e| self.err(e))?;
            outcomes
                .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
            errors
                .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
            for t in [&mut numbers, &mut refs] {
                t.retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
                    .map_err(|e| self.err(e))?;
            }
            if let Some(key) = key {
                keys.remove(key.as_str()).map_err(|e| self.err(e))?;
            }
            self.delete_receipts(txn, id)?;
        }
        Ok(())
    }
}
