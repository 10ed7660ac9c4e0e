//! Writing a group to PostgreSQL: one transaction per group commit, fenced
//! by the leadership epoch, each table written with one multi-row statement
//! (arrays unnested server-side) whatever the group's size.

use std::collections::{BTreeMap, HashMap};

use prost::Message;

use super::{Pg, db_err, fence, id, unid};
use crate::store::{
    Existing, NewRecord, Outcome, ReceiptWrite, Store, StoreError, WriteSet, format,
};

/// Upserts of (bigint, int, bytea) rows into `table`.
fn upsert_keyed(
    txn: &mut postgres::Transaction<'_>,
    table: &str,
    columns: (&str, &str, &str),
    rows: &BTreeMap<(u64, u32), impl AsRef<[u8]>>,
) -> Result<(), postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (a, b, c) = columns;
    let ids: Vec<i64> = rows.keys().map(|k| id(k.0)).collect();
    let subs: Vec<i32> = rows.keys().map(|k| k.1 as i32).collect();
    let values: Vec<&[u8]> = rows.values().map(AsRef::as_ref).collect();
    txn.execute(
        &format!(
            "INSERT INTO {table} ({a}, {b}, {c}) SELECT * FROM unnest($1::bigint[], $2::int[], $3::bytea[]) \
             ON CONFLICT ({a}, {b}) DO UPDATE SET {c} = EXCLUDED.{c}"
        ),
        &[&ids, &subs, &values],
    )?;
    Ok(())
}

/// Early receipts written (`Some`) and removed (`None`), by (provider, id).
fn put_early(
    txn: &mut postgres::Transaction<'_>,
    early: &BTreeMap<(&str, &str), Option<&[u8]>>,
) -> Result<(), postgres::Error> {
    let (mut gone_p, mut gone_i) = (Vec::new(), Vec::new());
    let (mut p, mut i, mut records) = (Vec::new(), Vec::new(), Vec::new());
    for (&(provider, id), record) in early {
        match record {
            Some(r) => {
                p.push(provider);
                i.push(id);
                records.push(*r);
            }
            None => {
                gone_p.push(provider);
                gone_i.push(id);
            }
        }
    }
    if !gone_p.is_empty() {
        txn.execute(
            "DELETE FROM smsmesh_early_receipts e USING unnest($1::text[], $2::text[]) AS k(provider, provider_id) \
             WHERE e.provider = k.provider AND e.provider_id = k.provider_id",
            &[&gone_p, &gone_i],
        )?;
    }
    if !p.is_empty() {
        txn.execute(
            "INSERT INTO smsmesh_early_receipts (provider, provider_id, record) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
             ON CONFLICT (provider, provider_id) DO UPDATE SET record = EXCLUDED.record",
            &[&p, &i, &records],
        )?;
    }
    Ok(())
}

/// Upserts of (bigint, bytea) rows into `table`.
fn upsert_records(
    txn: &mut postgres::Transaction<'_>,
    table: &str,
    rows: &BTreeMap<u64, Vec<u8>>,
) -> Result<(), postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.keys().map(|k| id(*k)).collect();
    let values: Vec<&[u8]> = rows.values().map(Vec::as_slice).collect();
    txn.execute(
        &format!(
            "INSERT INTO {table} (id, record) SELECT * FROM unnest($1::bigint[], $2::bytea[]) \
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record"
        ),
        &[&ids, &values],
    )?;
    Ok(())
}

impl Pg {
    /// Commits groups of changes and new batches in one transaction, as
    /// [`Store::commit_group`] does on the embedded store.
    pub(in crate::store) fn commit(
        &self,
        store: &Store,
        sets: &[&WriteSet],
        new: &[NewRecord<'_>],
    ) -> Result<Vec<Result<(), Existing>>, StoreError> {
        let mut client = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let e = |e: postgres::Error| db_err(store, e);
        let mut txn = client.transaction().map_err(e)?;
        let results = put_batches(&mut txn, new).map_err(e)?;
        put_outcomes(&mut txn, sets).map_err(e)?;
        let mut nodes: BTreeMap<u16, &str> = BTreeMap::new();
        let mut states: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut waits: BTreeMap<(u64, u32), Option<&[u8]>> = BTreeMap::new();
        let mut finals: BTreeMap<(u64, u32), &[u8]> = BTreeMap::new();
        let mut early: BTreeMap<(&str, &str), Option<&[u8]>> = BTreeMap::new();
        let mut deleted: Vec<i64> = Vec::new();
        let mut deleted_keys: Vec<&str> = Vec::new();
        for set in sets {
            for (n, name) in &set.nodes {
                nodes.insert(*n, name);
            }
            for b in &set.batches {
                states.insert(b.id, b.encode_to_vec());
            }
            for w in &set.receipts {
                match w {
                    ReceiptWrite::Wait {
                        batch,
                        index,
                        record,
                    } => {
                        waits.insert((*batch, *index), Some(record.as_slice()));
                    }
                    ReceiptWrite::Final {
                        batch,
                        index,
                        record,
                    } => {
                        waits.insert((*batch, *index), None);
                        finals.insert((*batch, *index), &record[..]);
                    }
                    ReceiptWrite::Early {
                        provider,
                        id,
                        record,
                    } => {
                        early.insert((provider, id), Some(record));
                    }
                    ReceiptWrite::EarlyGone { provider, id } => {
                        early.insert((provider, id), None);
                    }
                }
            }
            for (batch, key) in &set.deleted {
                deleted.push(id(*batch));
                deleted_keys.extend(key.as_deref());
            }
        }
        if !nodes.is_empty() {
            let idx: Vec<i32> = nodes.keys().map(|n| i32::from(*n)).collect();
            let names: Vec<&str> = nodes.values().copied().collect();
            txn.execute(
                "INSERT INTO smsmesh_nodes (idx, name) SELECT * FROM unnest($1::int[], $2::text[]) \
                 ON CONFLICT (idx) DO UPDATE SET name = EXCLUDED.name",
                &[&idx, &names],
            )
            .map_err(e)?;
        }
        upsert_records(&mut txn, "smsmesh_batch_state", &states).map_err(e)?;
        let gone: Vec<(i64, i32)> = waits
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| (id(k.0), k.1 as i32))
            .collect();
        if !gone.is_empty() {
            let (b, i): (Vec<i64>, Vec<i32>) = gone.into_iter().unzip();
            txn.execute(
                "DELETE FROM smsmesh_receipt_waits w USING unnest($1::bigint[], $2::int[]) AS k(batch, idx) \
                 WHERE w.batch = k.batch AND w.idx = k.idx",
                &[&b, &i],
            )
            .map_err(e)?;
        }
        let waiting: BTreeMap<(u64, u32), &[u8]> = waits
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        upsert_keyed(
            &mut txn,
            "smsmesh_receipt_waits",
            ("batch", "idx", "record"),
            &waiting,
        )
        .map_err(e)?;
        upsert_keyed(
            &mut txn,
            "smsmesh_deliveries",
            ("batch", "idx", "record"),
            &finals,
        )
        .map_err(e)?;
        put_early(&mut txn, &early).map_err(e)?;
        put_callbacks(&mut txn, sets).map_err(e)?;
        if !deleted.is_empty() {
            for table in [
                "smsmesh_outcomes",
                "smsmesh_errors",
                "smsmesh_recipients",
                "smsmesh_client_refs",
                "smsmesh_receipt_waits",
                "smsmesh_deliveries",
            ] {
                txn.execute(
                    &format!("DELETE FROM {table} WHERE batch = ANY($1)"),
                    &[&deleted],
                )
                .map_err(e)?;
            }
            for table in ["smsmesh_batches", "smsmesh_batch_state"] {
                txn.execute(
                    &format!("DELETE FROM {table} WHERE id = ANY($1)"),
                    &[&deleted],
                )
                .map_err(e)?;
            }
            txn.execute(
                "DELETE FROM smsmesh_idempotency WHERE key = ANY($1)",
                &[&deleted_keys],
            )
            .map_err(e)?;
        }
        // Fenced last: the share lock on the leadership row, which holds off
        // the lease's renewal (and a takeover) until the commit, is held
        // only from here. Taken first, a long write (a list of millions of
        // recipients) kept the lease from being renewed for its whole
        // length, and the leader stepped down.
        fence(store, &mut txn, self.epoch)?;
        txn.commit().map_err(e)?;
        Ok(results)
    }
}

/// Writes the groups' new callback rows and removes delivered ones.
fn put_callbacks(
    txn: &mut postgres::Transaction<'_>,
    sets: &[&WriteSet],
) -> Result<(), postgres::Error> {
    let mut seqs: Vec<i64> = Vec::new();
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut done: Vec<i64> = Vec::new();
    for set in sets {
        for (seq, row) in &set.callbacks {
            seqs.push(*seq as i64);
            records.push(row.encode_to_vec());
        }
        done.extend(set.callbacks_done.iter().map(|s| *s as i64));
    }
    if !seqs.is_empty() {
        let values: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        txn.execute(
            "INSERT INTO smsmesh_callbacks (seq, record) SELECT * FROM unnest($1::bigint[], $2::bytea[]) \
             ON CONFLICT (seq) DO UPDATE SET record = EXCLUDED.record",
            &[&seqs, &values],
        )?;
    }
    if !done.is_empty() {
        txn.execute(
            "DELETE FROM smsmesh_callbacks WHERE seq = ANY($1)",
            &[&done],
        )?;
    }
    Ok(())
}

/// Stores new batches (with their keys and list rows); a batch whose key is
/// already taken, in the database or earlier in `new`, is not stored.
fn put_batches(
    txn: &mut postgres::Transaction<'_>,
    new: &[NewRecord<'_>],
) -> Result<Vec<Result<(), Existing>>, postgres::Error> {
    let mut results = Vec::with_capacity(new.len());
    if new.is_empty() {
        return Ok(results);
    }
    let keys: Vec<&str> = new.iter().filter_map(|r| r.key).collect();
    // Keys already used: the batch each made and that batch's fingerprint.
    let mut taken: HashMap<String, Existing> = HashMap::new();
    if !keys.is_empty() {
        for row in txn.query(
            "SELECT k.key, k.batch, b.record FROM smsmesh_idempotency k \
             LEFT JOIN smsmesh_batches b ON b.id = k.batch WHERE k.key = ANY($1)",
            &[&keys],
        )? {
            let record: Option<Vec<u8>> = row.get(2);
            let fingerprint = record
                .and_then(|r| crate::store::StoredBatch::decode(r.as_slice()).ok())
                .map_or(0, |b| b.fingerprint);
            taken.insert(
                row.get(0),
                Existing {
                    id: unid(row.get(1)),
                    fingerprint,
                },
            );
        }
    }
    let mut batches: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let (mut key_names, mut key_ids) = (Vec::new(), Vec::new());
    let mut numbers: BTreeMap<(u64, u32), Vec<u8>> = BTreeMap::new();
    let mut refs: BTreeMap<(u64, u32), Vec<u8>> = BTreeMap::new();
    for NewRecord { batch, key, list } in new {
        if let Some(key) = key {
            if let Some(existing) = taken.get(*key) {
                results.push(Err(*existing));
                continue;
            }
            taken.insert(
                key.to_string(),
                Existing {
                    id: batch.id,
                    fingerprint: batch.fingerprint,
                },
            );
            key_names.push(*key);
            key_ids.push(id(batch.id));
        }
        batches.insert(batch.id, batch.encode_to_vec());
        for (row, numbers_row, refs_row) in list.iter().flat_map(|l| format::list_rows(l)) {
            numbers.insert((batch.id, row), numbers_row);
            if let Some(r) = refs_row {
                refs.insert((batch.id, row), r);
            }
        }
        results.push(Ok(()));
    }
    if !key_names.is_empty() {
        txn.execute(
            "INSERT INTO smsmesh_idempotency (key, batch) SELECT * FROM unnest($1::text[], $2::bigint[])",
            &[&key_names, &key_ids],
        )?;
    }
    upsert_records(txn, "smsmesh_batches", &batches)?;
    let columns = ("batch", "row_no", "bytes");
    upsert_keyed(txn, "smsmesh_recipients", columns, &numbers)?;
    upsert_keyed(txn, "smsmesh_client_refs", columns, &refs)?;
    Ok(results)
}

/// Writes every set's outcomes into their rows: each row read once, changed,
/// written once; and the last errors of final failures.
fn put_outcomes(
    txn: &mut postgres::Transaction<'_>,
    sets: &[&WriteSet],
) -> Result<(), postgres::Error> {
    let mut rows: BTreeMap<(u64, u32), Vec<&Outcome>> = BTreeMap::new();
    for o in sets.iter().flat_map(|s| &s.outcomes) {
        rows.entry((o.batch, format::row_of(o.index)))
            .or_default()
            .push(o);
    }
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.keys().map(|k| id(k.0)).collect();
    let chunks: Vec<i32> = rows.keys().map(|k| k.1 as i32).collect();
    let mut stored: HashMap<(u64, u32), Vec<u8>> = HashMap::new();
    for row in txn.query(
        "SELECT o.batch, o.chunk, o.slots FROM smsmesh_outcomes o \
         JOIN unnest($1::bigint[], $2::int[]) AS k(batch, chunk) USING (batch, chunk)",
        &[&ids, &chunks],
    )? {
        let chunk: i32 = row.get(1);
        stored.insert((unid(row.get(0)), chunk as u32), row.get(2));
    }
    let mut written: BTreeMap<(u64, u32), Vec<u8>> = BTreeMap::new();
    let mut errors: BTreeMap<(u64, u32), &str> = BTreeMap::new();
    for (key, list) in rows {
        let mut row = stored.remove(&key).unwrap_or_else(format::empty_row);
        for o in list {
            format::write_slot(&mut row, o);
            if let Some(e) = &o.error {
                errors.insert((o.batch, o.index), e);
            }
        }
        written.insert(key, row);
    }
    upsert_keyed(
        txn,
        "smsmesh_outcomes",
        ("batch", "chunk", "slots"),
        &written,
    )?;
    if !errors.is_empty() {
        let ids: Vec<i64> = errors.keys().map(|k| id(k.0)).collect();
        let idx: Vec<i32> = errors.keys().map(|k| k.1 as i32).collect();
        let texts: Vec<&str> = errors.values().copied().collect();
        txn.execute(
            "INSERT INTO smsmesh_errors (batch, idx, error) SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[]) \
             ON CONFLICT (batch, idx) DO UPDATE SET error = EXCLUDED.error",
            &[&ids, &idx, &texts],
        )?;
    }
    Ok(())
}
