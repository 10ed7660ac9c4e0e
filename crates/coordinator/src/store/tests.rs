//! The store's own tests: pinned formats, a round trip through commits and
//! a load, corrupt rows refused at load, decided deliveries, and a load's
//! key order on both backends. List batches' are in `tests/lists.rs`.

use prost::Message;

use super::format::{self, FinalState};
use redb::ReadableTableMetadata;

use super::{
    NewRecord, OUTCOMES, Outcome, Store, StoreError, StoredBatch, StoredBatchState, WriteSet,
};

mod lists;

fn batch(id: u64, total: u32) -> StoredBatch {
    StoredBatch {
        id,
        total,
        max_attempts: 3,
        messages: Vec::new(),
        synthetic_seed: Some(7),
        synthetic_body: None,
        accepted_unix_ms: 1,
        tenant: "t".into(),
        fingerprint: 0,
        list_body: None,
        ..Default::default()
    }
}

fn outcome(batch: u64, index: u32, state: FinalState) -> Outcome {
    Outcome {
        batch,
        index,
        state,
        attempts: 2,
        node: 1,
        final_ms: 1234,
        error: (state == FinalState::Failed).then(|| "no route".to_string()),
    }
}

#[test]
fn stored_formats_are_pinned() {
    // Existing stores hold these bytes: changing any of them misreads them.
    assert_eq!(FinalState::Sent as u8, 3);
    assert_eq!(FinalState::Failed as u8, 4);
    let mut row = format::empty_row();
    let far = Outcome {
        node: 0x0102,
        ..outcome(1, 4097, FinalState::Sent)
    };
    format::write_slot(&mut row, &far);
    assert_eq!(format::row_of(4097), 1);
    assert_eq!(format::row_of(4095), 0);
    assert_eq!(row.len(), 14, "a row is as long as its last outcome needs");
    assert_eq!(&row[..7], &[0x80, 0, 0, 0, 0, 0, 0], "no outcome, timed");
    assert_eq!(
        &row[7..14],
        &[0x83, 2, 0x02, 0x01, 0xd2, 0x04, 0],
        "state | 0x80, attempts, node LE, final time (24 bits LE)"
    );
    // Times: milliseconds below 2^23, then seconds with bit 23 set.
    assert_eq!(format::encode_time(0x7f_ffff), [0xff, 0xff, 0x7f]);
    assert_eq!(format::encode_time(10_000_000), [0x10, 0x27, 0x80]); // 10,000 s
    assert_eq!(format::decode_time(&[0x10, 0x27, 0x80]), 10_000_000);
    assert_eq!(
        format::decode_time(&format::encode_time(u32::MAX)),
        4_294_967_000
    );
    // A row written before final times: 4-byte slots, state bytes without
    // 0x80. It reads with no time, and a new outcome rewrites it timed.
    let mut old = vec![0, 0, 0, 0, 4, 3, 0x01, 0x00];
    format::check_row(1, 0, &old).unwrap();
    let failed = format::read_slot(&old, 1).unwrap();
    assert_eq!(
        (failed.state, failed.attempts, failed.node, failed.final_ms),
        (FinalState::Failed, 3, 1, 0)
    );
    assert!(format::read_slot(&old, 0).is_none());
    format::write_slot(&mut old, &outcome(1, 2, FinalState::Sent));
    assert_eq!(
        old,
        [
            0x80, 0, 0, 0, 0, 0, 0, 0x84, 3, 1, 0, 0, 0, 0, 0x83, 2, 1, 0, 0xd2, 0x04, 0
        ]
    );
    format::check_row(1, 0, &old).unwrap();
    assert_eq!(format::read_slot(&old, 1).unwrap().final_ms, 0);
    assert_eq!(format::read_slot(&old, 2).unwrap().final_ms, 1234);
    let state = StoredBatchState {
        id: 0x0102_0304_0506_0708,
        cancelled: true,
        dispatched: 300,
        resent: 1,
        requeued: 2,
        duplicates: 3,
        cancelled_ms: 300,
    };
    assert_eq!(
        state.encode_to_vec(),
        [
            0x09, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // 1: fixed64 id
            0x10, 0x01, // 2: cancelled
            0x18, 0xac, 0x02, // 3: dispatched
            0x20, 0x01, 0x28, 0x02, 0x30, 0x03, // 4-6: counters
            0x38, 0xac, 0x02, // 7: cancelled_ms
        ]
    );
    // A batch's class is tag 14, as smsmesh.v1.Priority numbers it; a normal
    // batch writes none, as every batch stored before classes.
    let bulk = StoredBatch {
        priority: smsmesh::pb::Priority::Bulk as u32,
        ..StoredBatch::default()
    };
    assert_eq!(bulk.encode_to_vec(), [0x70, 0x04]);
    assert!(StoredBatch::default().encode_to_vec().is_empty());
    assert_eq!(StoredBatch::decode(&[][..]).unwrap().priority, 0);
}

#[test]
fn what_is_committed_is_loaded_back_decoded() {
    let store = Store::in_memory().unwrap();
    store
        .insert_batch(&batch(5, 5000), Some("key"))
        .unwrap()
        .unwrap();
    assert_eq!(
        store.insert_batch(&batch(6, 1), Some("key")).unwrap(),
        Err(5),
        "a used key stores nothing and names the batch it made"
    );
    let mut set = WriteSet::default();
    set.outcomes.push(outcome(5, 0, FinalState::Sent));
    set.outcomes.push(outcome(5, 4999, FinalState::Failed));
    set.nodes.push((0, "node-a".into()));
    set.batches.push(StoredBatchState {
        id: 5,
        dispatched: 4096,
        ..Default::default()
    });
    store.commit(&set).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.batches.len(), 1);
    let b = &loaded.batches[0];
    assert_eq!((b.batch.id, b.state.dispatched), (5, 4096));
    let outcomes: Vec<_> = b
        .outcomes()
        .map(|o| (o.index, o.state, o.attempts, o.node, o.final_ms))
        .collect();
    assert_eq!(
        outcomes,
        [
            (0, FinalState::Sent, 2, 1, 1234),
            (4999, FinalState::Failed, 2, 1, 1234)
        ]
    );
    assert_eq!(b.errors, [(4999, "no route".to_string())]);
    assert_eq!(loaded.nodes, [(0, "node-a".to_string())]);
    assert_eq!(loaded.idempotency, [("key".to_string(), 5)]);
}

/// Writes `row` as outcome row `chunk` of batch `id`, bypassing the format.
fn write_raw(store: &Store, id: u64, chunk: u32, row: &[u8]) {
    let txn = store.db().begin_write().unwrap();
    txn.open_table(OUTCOMES)
        .unwrap()
        .insert((id, chunk), row)
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_corrupt_outcome_row_is_refused_at_load() {
    let store = Store::in_memory().unwrap();
    store.insert_batch(&batch(9, 10), None).unwrap().unwrap();
    let mut row = vec![0; 4096 * 4]; // a full row, as earlier versions wrote
    row[4 * 3] = 9; // message 3: a state byte no version writes
    write_raw(&store, 9, 0, &row);
    let err = store.load().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("state byte 9"), "{err}");

    write_raw(&store, 9, 0, &[3, 1, 0]);
    let err = store.load().unwrap_err();
    assert!(err.to_string().contains("is 3 bytes"), "{err}");

    // Timed rows: whole 7-byte slots, every state byte a known one with 0x80.
    write_raw(&store, 9, 0, &[0x83, 1, 0, 0, 0, 0]);
    let err = store.load().unwrap_err();
    assert!(err.to_string().contains("is 6 bytes"), "{err}");
    write_raw(&store, 9, 0, &[0x83, 1, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0]);
    let err = store.load().unwrap_err();
    assert!(err.to_string().contains("state byte 3"), "{err}");
    write_raw(&store, 9, 0, &[0x83, 1, 0, 0, 7, 0, 0]);
    let loaded = store.load().unwrap();
    let o: Vec<_> = loaded.batches[0].outcomes().collect();
    assert_eq!((o.len(), o[0].final_ms), (1, 7));
}

fn decided(batch: u64, index: u32, state: u32) -> super::ReceiptWrite {
    let delivery = super::StoredDelivery {
        state,
        message_state: 2,
        error: String::new(),
        unix_ms: 5,
        ids: vec![format!("p{index}")],
    };
    super::ReceiptWrite::decided(batch, index, &delivery)
}

/// The receipt records the core encodes from borrowed parts are the bytes
/// prost writes for the same records: fields at their defaults, empty ids
/// and an id longer than a one-byte length included.
#[test]
fn receipt_records_are_encoded_as_prost_encodes_them() {
    let long = "7".repeat(200);
    let cases: [(u64, u32, &str, &str, Vec<&str>); 3] = [
        (0, 0, "", "", vec![]),
        (1_765_000_000_123, 5, "smsc-a", "0x45", vec!["", "0a1B"]),
        (1, u32::MAX, "p", "e", vec![long.as_str(), "x"]),
    ];
    for (ms, n, provider, error, ids) in cases {
        let owned: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let wait = super::StoredWait {
            sent_unix_ms: ms,
            delivered: n,
            provider: provider.into(),
            ids: owned.clone(),
        };
        let record = super::StoredWait::record(ms, n, provider, ids.iter().copied());
        assert_eq!(record, wait.encode_to_vec());
        for state in [
            super::DeliveryState::Delivered,
            super::DeliveryState::Unknown,
        ] {
            let delivery = super::StoredDelivery {
                state: state as u32,
                message_state: n,
                error: error.into(),
                unix_ms: ms,
                ids: owned.clone(),
            };
            let record = super::StoredDelivery::record(state, n, error, ms, ids.iter().copied());
            assert_eq!(*record, *delivery.encode_to_vec());
        }
    }
}

/// Decided deliveries share rows of 64 messages: each reads back as its own
/// (in a load and in a listing), a later decision of a message replaces the
/// earlier one, a store's older per-message rows are still read, and all of
/// them go with their batch.
#[test]
fn decided_deliveries_share_rows_and_read_back_per_message() {
    use super::receipts::{DELIVERIES, DELIVERY_ROWS, RECEIPT_WAITS};
    let store = Store::in_memory().unwrap();
    store.insert_batch(&batch(9, 200), None).unwrap().unwrap();
    let mut first = WriteSet::default();
    for index in [1, 2, 130] {
        let wait = super::StoredWait {
            ids: vec![format!("p{index}")],
            ..Default::default()
        };
        first
            .receipts
            .push(super::ReceiptWrite::wait(9, index, &wait));
    }
    first.receipts.push(decided(9, 0, 1));
    first.receipts.push(decided(9, 65, 1));
    store.commit(&first).unwrap();
    let mut second = WriteSet::default();
    second.receipts.push(decided(9, 1, 1));
    second.receipts.push(decided(9, 0, 2));
    second.receipts.push(decided(9, 130, 4));
    store.commit(&second).unwrap();
    // A decision as a store written before delivery rows holds it.
    let txn = store.db().begin_write().unwrap();
    txn.open_table(DELIVERIES)
        .unwrap()
        .insert(
            (9, 199),
            super::StoredDelivery {
                state: 3,
                ..Default::default()
            }
            .encode_to_vec()
            .as_slice(),
        )
        .unwrap();
    txn.commit().unwrap();
    let states = |rows: &super::Rows<(super::DeliveryState, std::sync::Arc<[u8]>)>| {
        let mut v: Vec<(u32, u32)> = rows.iter().map(|((_, i), d)| (*i, d.0 as u32)).collect();
        v.sort_unstable();
        v
    };
    let loaded = store.load().unwrap();
    assert_eq!(
        states(&loaded.deliveries),
        [(0, 2), (1, 1), (65, 1), (130, 4), (199, 3)]
    );
    let tally: Vec<(u64, Vec<(super::DeliveryState, u64)>)> = loaded
        .delivery_tallies
        .iter()
        .map(|(b, t)| (*b, t.states().filter(|(_, n)| *n > 0).collect()))
        .collect();
    {
        use super::DeliveryState::*;
        assert_eq!(
            tally,
            [(
                9,
                vec![
                    (Delivered, 2),
                    (Undelivered, 1),
                    (Expired, 1),
                    (Rejected, 1)
                ]
            )]
        );
    }
    let waiting: Vec<u32> = loaded.receipt_waits.iter().map(|((_, i), _)| *i).collect();
    assert_eq!(waiting, [2]);
    // Rows 0, 1 and 2 of 64 messages each; row 0 holds messages 0 and 1.
    let txn = store.db().begin_read().unwrap();
    let rows = txn.open_table(DELIVERY_ROWS).unwrap();
    assert_eq!(rows.len().unwrap(), 3);
    let row0 = rows.get((9, 0)).unwrap().unwrap().value().to_vec();
    assert_eq!(&row0[..4], &1u32.to_le_bytes(), "message 1 was kept first");
    drop((rows, txn));
    let (listed, _) = store
        .read_messages(9, 0, 200, 1000, |_, _| true)
        .unwrap()
        .unwrap();
    let shown: Vec<(u32, Option<u32>, Vec<String>)> = listed
        .iter()
        .filter(|m| m.delivery.is_some() || !m.provider_ids.is_empty())
        .map(|m| {
            let ids = m
                .delivery
                .as_ref()
                .map_or(m.provider_ids.clone(), |d| d.ids.clone());
            (m.index, m.delivery.as_ref().map(|d| d.state), ids)
        })
        .collect();
    assert_eq!(
        shown,
        [
            (0, Some(2), vec!["p0".to_string()]),
            (1, Some(1), vec!["p1".to_string()]),
            (2, None, vec!["p2".to_string()]),
            (65, Some(1), vec!["p65".to_string()]),
            (130, Some(4), vec!["p130".to_string()]),
            (199, Some(3), vec![]),
        ]
    );
    let mut gone = WriteSet::default();
    gone.deleted.push((9, None));
    store.commit(&gone).unwrap();
    let txn = store.db().begin_read().unwrap();
    for t in [DELIVERIES, DELIVERY_ROWS, RECEIPT_WAITS] {
        assert_eq!(txn.open_table(t).unwrap().len().unwrap(), 0);
    }
}

/// A completed batch's decided deliveries load as numbers only (the store
/// answers for each when asked); a batch still running loads each whole.
#[test]
fn a_completed_batch_loads_the_numbers_of_its_deliveries_not_the_deliveries() {
    completed_batch_loads_numbers_only(&Store::in_memory().unwrap());
}

/// The same on PostgreSQL (one record per message there), when `.ci/run`'s
/// server is there.
#[test]
fn on_postgresql_a_completed_batch_loads_the_numbers_of_its_deliveries() {
    if let Some((store, _rt)) = postgres_store("tallies") {
        completed_batch_loads_numbers_only(&store);
    }
}

/// A store on a fresh PostgreSQL database named after `name`, holding the
/// lease, with the runtime the lease runs on; `None` without `.ci/run`'s
/// server.
fn postgres_store(name: &str) -> Option<(Store, tokio::runtime::Runtime)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(smsmesh_testkit::database(name))?;
    super::pg::migrate(&url).unwrap();
    let lease = crate::leader::Lease {
        url: url.clone(),
        holder: "store-test".into(),
        ttl: std::time::Duration::from_secs(60),
    };
    let (leader, _) = tokio::sync::watch::channel(String::new());
    let held = rt.block_on(lease.acquire(&leader));
    let pg = super::pg::Pg::connect(&url, held.epoch, std::time::Duration::from_secs(60)).unwrap();
    Some((Store::postgres(pg), rt))
}

/// Batches whose ids lie on both sides of 2^63 load in the ids' unsigned
/// order, each with all its rows, however many pages a table takes (the
/// PostgreSQL load fetches outcome rows 4,096 and recipient rows 64 at a
/// time, and stores ids as signed `bigint`).
#[test]
fn batches_on_both_sides_of_2_to_the_63_load_whole_in_order() {
    loads_whole_in_order(&Store::in_memory().unwrap());
}

/// The same on PostgreSQL, when `.ci/run`'s server is there.
#[test]
fn on_postgresql_batches_on_both_sides_of_2_to_the_63_load_whole_in_order() {
    if let Some((store, _rt)) = postgres_store("paged") {
        loads_whole_in_order(&store);
    }
}

fn loads_whole_in_order(store: &Store) {
    const HIGH: u64 = 1 << 63;
    let synthetic = [u64::MAX - 1, 3, HIGH, HIGH - 1, HIGH + 5];
    // 71 list batches of a row each, on both sides.
    let lists: Vec<u64> = (0..70u64)
        .map(|i| if i % 3 == 0 { HIGH + 100 + i } else { 100 + i })
        .chain([u64::MAX])
        .collect();
    // 900 outcome rows per batch (4,500 in all), every other one failed
    // (with an error).
    let rows = 900u32;
    let mut w = WriteSet::default();
    w.nodes.push((0, "node-a".into()));
    for &id in &synthetic {
        store
            .insert_batch(&batch(id, rows * format::CHUNK), None)
            .unwrap()
            .unwrap();
        for row in 0..rows {
            let state = [FinalState::Sent, FinalState::Failed][row as usize % 2];
            w.outcomes.push(outcome(id, row * format::CHUNK, state));
        }
    }
    store.commit(&w).unwrap();
    let made: Vec<_> = lists.iter().map(|&id| lists::list_batch(id, 5)).collect();
    let records: Vec<NewRecord<'_>> = made
        .iter()
        .map(|(b, list)| NewRecord {
            batch: b,
            key: None,
            list: Some(list),
        })
        .collect();
    for r in store.commit_group(&[], &records).unwrap() {
        r.unwrap();
    }
    let loaded = store.load().unwrap();
    let mut want: Vec<u64> = synthetic.iter().chain(&lists).copied().collect();
    want.sort_unstable();
    let ids: Vec<u64> = loaded.batches.iter().map(|b| b.batch.id).collect();
    assert_eq!(ids, want, "in unsigned order, none left out");
    for b in &loaded.batches {
        let id = b.batch.id;
        if let Some((_, list)) = made.iter().find(|(m, _)| m.id == id) {
            assert_eq!(b.list.as_ref(), Some(list), "batch {id:x}'s recipients");
            continue;
        }
        let states: Vec<(u32, FinalState)> = b.outcomes().map(|o| (o.index, o.state)).collect();
        let expected: Vec<(u32, FinalState)> = (0..rows)
            .map(|row| {
                let state = [FinalState::Sent, FinalState::Failed][row as usize % 2];
                (row * format::CHUNK, state)
            })
            .collect();
        assert_eq!(states, expected, "batch {id:x}'s outcomes");
        assert_eq!(b.errors.len() as u32, rows / 2, "batch {id:x}'s errors");
    }
}

fn completed_batch_loads_numbers_only(store: &Store) {
    store.insert_batch(&batch(1, 3), None).unwrap().unwrap();
    store.insert_batch(&batch(2, 3), None).unwrap().unwrap();
    let mut w = WriteSet::default();
    for index in 0..3 {
        w.outcomes.push(outcome(1, index, FinalState::Sent));
        w.receipts.push(decided(1, index, 1 + index % 2));
    }
    // Batch 2 has two outcomes of three: it still runs.
    for index in 0..2 {
        w.outcomes.push(outcome(2, index, FinalState::Sent));
        w.receipts.push(decided(2, index, 1));
    }
    w.nodes.push((0, "node-a".into()));
    store.commit(&w).unwrap();
    let loaded = store.load().unwrap();
    let kept: Vec<(u64, u32)> = loaded.deliveries.iter().map(|(k, _)| *k).collect();
    assert_eq!(kept, [(2, 0), (2, 1)]);
    let tallies: Vec<(u64, u64, u64)> = loaded
        .delivery_tallies
        .iter()
        .map(|(b, t)| {
            let n = |s: super::DeliveryState| t.states().find(|(x, _)| *x == s).unwrap().1;
            (
                *b,
                n(super::DeliveryState::Delivered),
                n(super::DeliveryState::Undelivered),
            )
        })
        .collect();
    assert_eq!(tallies, [(1, 2, 1), (2, 2, 0)]);
    // Each of the completed batch's deliveries is still read when asked for.
    let (listed, _) = store
        .read_messages(1, 0, 3, 1000, |_, _| true)
        .unwrap()
        .unwrap();
    let states: Vec<Option<u32>> = listed
        .iter()
        .map(|m| m.delivery.as_ref().map(|d| d.state))
        .collect();
    assert_eq!(states, [Some(1), Some(2), Some(1)]);
}
