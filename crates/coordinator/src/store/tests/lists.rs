//! The store's tests of list batches: recipients stored in rows, loaded
//! back whole, and refused at load when a row is corrupt, missing or one
//! too many.

use redb::ReadableTableMetadata;

use super::super::format;
use super::super::{CLIENT_REFS, NewRecord, RECIPIENTS, Store, StoreError, StoredBatch, WriteSet};
use super::batch;
use crate::batch::Recipients;
use crate::batch::recipients::pack;

/// A list batch of `n` recipients (references on every third) and its record.
pub(super) fn list_batch(id: u64, n: u32) -> (StoredBatch, Recipients) {
    let mut list = Recipients::new();
    for i in 0..n {
        let r = if i % 3 == 0 {
            format!("r{i}")
        } else {
            String::new()
        };
        list.push(pack(&format!("+1555{i:07}")), &r).unwrap();
    }
    let b = StoredBatch {
        synthetic_seed: None,
        list_body: Some("one body".into()),
        ..batch(id, n)
    };
    (b, list)
}

fn insert_list(store: &Store, b: &StoredBatch, list: &Recipients) {
    let record = NewRecord {
        batch: b,
        key: Some("list-key"),
        list: Some(list),
    };
    store.commit_group(&[], &[record]).unwrap()[0].unwrap();
}

#[test]
fn a_list_batch_is_stored_in_rows_and_loaded_back_whole() {
    let store = Store::in_memory().unwrap();
    // Two full rows and part of a third.
    let (b, list) = list_batch(11, 2 * format::LIST_ROW as u32 + 7);
    insert_list(&store, &b, &list);
    let loaded = store.load().unwrap();
    assert_eq!(loaded.batches[0].list.as_ref(), Some(&list));
    assert_eq!(
        loaded.batches[0].batch.list_body.as_deref(),
        Some("one body")
    );
    // Retention removes the rows with the batch.
    let mut set = WriteSet::default();
    set.deleted.push((11, Some("list-key".into())));
    store.commit(&set).unwrap();
    let txn = store.db().begin_read().unwrap();
    for t in [RECIPIENTS, CLIENT_REFS] {
        assert_eq!(txn.open_table(t).unwrap().len().unwrap(), 0);
    }
    assert!(store.load().unwrap().batches.is_empty());
}

/// A list read back a row at a time still counts its rows: one missing, or
/// one too many, is refused at load with the counts.
#[test]
fn a_list_with_a_row_missing_or_too_many_is_refused_at_load() {
    let n = 2 * format::LIST_ROW as u32 + 7;
    for (change, want) in [
        (
            None,
            "2 number rows and 3 reference rows for 130007 recipients (3 rows)",
        ),
        (
            Some(3),
            "4 number rows and 3 reference rows for 130007 recipients (3 rows)",
        ),
    ] {
        let store = Store::in_memory().unwrap();
        let (b, list) = list_batch(11, n);
        insert_list(&store, &b, &list);
        let txn = store.db().begin_write().unwrap();
        {
            let mut t = txn.open_table(RECIPIENTS).unwrap();
            match change {
                None => drop(t.remove((11, 2)).unwrap()),
                Some(row) => drop(t.insert((11, row), [0u8; 8].as_slice()).unwrap()),
            }
        }
        txn.commit().unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

#[test]
fn a_corrupt_recipient_row_is_refused_at_load() {
    for (table, row, want) in [
        (
            RECIPIENTS,
            vec![0u8; 80],
            "recipient 0 holds 0x0, which is no packed number",
        ),
        (
            RECIPIENTS,
            vec![0u8; 12],
            "is 12 bytes where row 0 of 10 numbers",
        ),
        (CLIENT_REFS, vec![9, 0], "2 bytes hold no 10 lengths"),
        (
            CLIENT_REFS,
            [[0u8; 20].as_slice(), b"x"].concat(),
            "1 bytes of text after",
        ),
    ] {
        let store = Store::in_memory().unwrap();
        let (b, list) = list_batch(12, 10);
        insert_list(&store, &b, &list);
        let txn = store.db().begin_write().unwrap();
        txn.open_table(table)
            .unwrap()
            .insert((12, 0), row.as_slice())
            .unwrap();
        txn.commit().unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}
