//! The PostgreSQL store against a real server: the same writes give the
//! same loaded state and the same messages read back as the embedded store,
//! a writer whose epoch was superseded commits nothing, and a long write does
//! not hold up the lease.

use prost::Message;
use smsmesh_coordinator::batch::Recipients;
use smsmesh_coordinator::batch::recipients::pack;
use smsmesh_coordinator::store::pg::{self, Pg};
use smsmesh_coordinator::store::{
    CallbackEvent, CallbackRow, FinalState, NewRecord, Outcome, ReceiptWrite, Store, StoreError,
    StoredBatch, StoredBatchState, StoredDelivery, StoredEarly, StoredWait, WriteSet,
};

/// A fresh database on the test server (None: skipped).
fn database(name: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(smsmesh_testkit::database(name))?;
    pg::migrate(&url).unwrap();
    Some(url)
}

fn batch(id: u64, total: u32) -> StoredBatch {
    StoredBatch {
        id,
        total,
        max_attempts: 3,
        synthetic_seed: Some(7),
        accepted_unix_ms: 1,
        tenant: "t".into(),
        fingerprint: id ^ 0x55,
        ..Default::default()
    }
}

fn outcome(batch: u64, index: u32, state: FinalState, node: u16) -> Outcome {
    Outcome {
        batch,
        index,
        state,
        attempts: 2,
        node,
        final_ms: 1000 + index,
        error: (state == FinalState::Failed).then(|| format!("no route {index}")),
    }
}

/// Ids on both sides of 2^63: the database stores them as signed bigint,
/// and the load must still merge its tables in the embedded store's order.
const HIGH: u64 = 0x8000_0000_0000_0005;
const LOW: u64 = 0x0000_0000_0000_0009;
const LIST: u64 = 0xffff_0000_0000_0001;
const GONE: u64 = 0x4000_0000_0000_0002;

fn list() -> Recipients {
    let mut list = Recipients::new();
    for i in 0..70_000u32 {
        let r = if i % 5 == 0 {
            format!("ref-{i}")
        } else {
            String::new()
        };
        list.push(pack(&format!("+4477{i:08}")), &r).unwrap();
    }
    list
}

/// The same history, applied to any store: batches (one by a reused key),
/// groups of outcomes over several rows, receipts, node names, states, and
/// a batch removed by retention.
fn history(store: &Store) {
    let list = list();
    let list_batch = StoredBatch {
        synthetic_seed: None,
        list_body: Some("evacuate now".into()),
        list_sender: "ALERT".into(),
        ..batch(LIST, 70_000)
    };
    let (high, low, gone) = (batch(HIGH, 9000), batch(LOW, 10), batch(GONE, 3));
    let new = [
        NewRecord {
            batch: &high,
            key: Some("k-high"),
            list: None,
        },
        NewRecord {
            batch: &low,
            key: Some("k-high"),
            list: None,
        },
        NewRecord {
            batch: &list_batch,
            key: None,
            list: Some(&list),
        },
        NewRecord {
            batch: &gone,
            key: Some("k-gone"),
            list: None,
        },
    ];
    let r = store.commit_group(&[], &new).unwrap();
    assert!(r[0].is_ok() && r[2].is_ok() && r[3].is_ok());
    let existing = r[1].unwrap_err();
    assert_eq!(
        (existing.id, existing.fingerprint),
        (HIGH, HIGH ^ 0x55),
        "the key made HIGH"
    );
    store
        .commit_group(
            &[],
            &[NewRecord {
                batch: &low,
                key: None,
                list: None,
            }],
        )
        .unwrap()[0]
        .unwrap();

    let mut first = WriteSet::default();
    first.nodes.push((0, "node-a".into()));
    first.nodes.push((1, "node-b".into()));
    for i in (0..9000).step_by(7) {
        let state = if i % 3 == 0 {
            FinalState::Failed
        } else {
            FinalState::Sent
        };
        first
            .outcomes
            .push(outcome(HIGH, i, state, 1 + (i % 2) as u16));
    }
    first.batches.push(StoredBatchState {
        id: HIGH,
        dispatched: 9000,
        resent: 4,
        ..Default::default()
    });
    let wait = |sent_unix_ms, ids: &[&str]| StoredWait {
        sent_unix_ms,
        delivered: 0,
        provider: "smsc".into(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
    };
    first
        .receipts
        .push(ReceiptWrite::wait(HIGH, 1, &wait(5, &["A1", "A2"])));
    first
        .receipts
        .push(ReceiptWrite::wait(HIGH, 2, &wait(6, &["B1"])));
    // A second group in the same transaction rewrites rows the first wrote.
    let mut second = WriteSet::default();
    second.outcomes.push(outcome(HIGH, 8, FinalState::Sent, 2));
    second
        .outcomes
        .push(outcome(LIST, 69_999, FinalState::Failed, 2));
    second.outcomes.push(outcome(LOW, 3, FinalState::Sent, 1));
    second.batches.push(StoredBatchState {
        id: HIGH,
        dispatched: 9000,
        resent: 5,
        ..Default::default()
    });
    second.batches.push(StoredBatchState {
        id: LOW,
        cancelled: true,
        dispatched: 4,
        ..Default::default()
    });
    let delivery = StoredDelivery {
        state: 1,
        message_state: 2,
        error: "000".into(),
        unix_ms: 9,
        ids: vec!["B1".into()],
    };
    second
        .receipts
        .push(ReceiptWrite::decided(HIGH, 2, &delivery));
    // Callback rows: three made, the second delivered in a later group.
    for seq in 1..=3u64 {
        first.callbacks.push((
            seq,
            std::sync::Arc::new(CallbackRow {
                url: format!("http://127.0.0.1:9/{seq}"),
                tenant: "acme".into(),
                created_unix_ms: seq,
                events: vec![CallbackEvent {
                    batch: HIGH,
                    index: seq as u32,
                    state: 3,
                    to: "+15550001".into(),
                    ..Default::default()
                }],
            }),
        ));
    }
    // Receipts that came before their ids: held, one replaced, one applied
    // (removed) by the later group.
    let early = |provider: &str, id: &str, state: u32| ReceiptWrite::Early {
        provider: provider.into(),
        id: id.into(),
        record: StoredEarly {
            provider: provider.into(),
            provider_id: id.into(),
            message_state: state,
            error: String::new(),
            received_unix_ms: 11,
        }
        .encode_to_vec(),
    };
    first.receipts.push(early("smsc", "E1", 2));
    first.receipts.push(early("smsc", "E2", 2));
    first.receipts.push(early("other", "E1", 5));
    second.receipts.push(early("other", "E1", 3));
    second.receipts.push(ReceiptWrite::EarlyGone {
        provider: "smsc".into(),
        id: "E2".into(),
    });
    store.commit_group(&[&first, &second], &[]).unwrap();

    let mut retention = WriteSet::default();
    retention.deleted.push((GONE, Some("k-gone".into())));
    retention.callbacks_done.push(2);
    store.commit(&retention).unwrap();
}

/// What a store holds, as the coordinator sees it: everything loaded, and
/// messages read back from each batch.
fn seen(store: &Store) -> String {
    let loaded = store.load().unwrap();
    let mut out = format!("{loaded:?}\n");
    for (id, from, to) in [
        (HIGH, 0, 30),
        (HIGH, 4090, 4100),
        (LIST, 65_530, 70_000),
        (LOW, 0, 10),
        (GONE, 0, 3),
    ] {
        let read = store.read_messages(id, from, to, 50, |_, _| true).unwrap();
        out.push_str(&format!("{id:x} {from}..{to}: {read:?}\n"));
    }
    let failed = store
        .read_messages(HIGH, 0, 9000, 5, |o, _| {
            o.is_some_and(|o| o.state == FinalState::Failed)
        })
        .unwrap();
    out.push_str(&format!("failed: {failed:?}\n"));
    let rows = store.callback_rows(0, u64::MAX, 10).unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(loaded.callback_next, 4);
    out.push_str(&format!(
        "callbacks: {rows:?} {:?}\n",
        store.callback_row(3).unwrap()
    ));
    out
}

#[test]
fn postgres_holds_what_the_embedded_store_holds() {
    let Some(url) = database("parity") else {
        return;
    };
    let embedded = Store::in_memory().unwrap();
    let postgres =
        Store::postgres(Pg::connect(&url, 0, std::time::Duration::from_secs(5)).unwrap());
    history(&embedded);
    history(&postgres);
    let (want, got) = (seen(&embedded), seen(&postgres));
    assert!(
        want.contains("evacuate now")
            && want.contains("no route 6")
            && want.contains("B1")
            && want.contains(r#"provider_id: "E1", message_state: 3"#)
            && !want.contains(r#""E2""#),
        "{want}"
    );
    assert!(
        !want.contains("k-gone"),
        "retention removed the key: {want}"
    );
    assert_eq!(
        got, want,
        "the PostgreSQL store reads back what the embedded store does"
    );

    // A second coordinator loading the same database sees the same (a takeover).
    let again = Store::postgres(Pg::connect(&url, 0, std::time::Duration::from_secs(5)).unwrap());
    assert_eq!(seen(&again), want);
}

#[test]
fn a_deposed_writer_commits_nothing() {
    let Some(url) = database("fence") else { return };
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .execute("UPDATE smsmesh_leader SET epoch = 7, holder = 'a'", &[])
        .unwrap();
    let old = Store::postgres(Pg::connect(&url, 7, std::time::Duration::from_secs(5)).unwrap());
    old.insert_batch(&batch(1, 10), None).unwrap().unwrap();

    // Another coordinator takes the lead: the old one's next write fails, whole.
    admin
        .execute("UPDATE smsmesh_leader SET epoch = 8, holder = 'b'", &[])
        .unwrap();
    let mut set = WriteSet::default();
    set.outcomes.push(outcome(1, 0, FinalState::Sent, 1));
    set.nodes.push((0, "node-a".into()));
    let err = old.commit(&set).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Deposed {
                epoch: 7,
                now: 8,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("lost the lead"), "{err}");
    let err = old.insert_batch(&batch(2, 10), None).unwrap_err();
    assert!(err.to_string().contains("lost the lead"), "{err}");

    let new = Store::postgres(Pg::connect(&url, 8, std::time::Duration::from_secs(5)).unwrap());
    let loaded = new.load().unwrap();
    assert_eq!(
        loaded.batches.len(),
        1,
        "only the batch stored under epoch 7"
    );
    assert_eq!(
        loaded.batches[0].outcomes().count(),
        0,
        "nothing of the deposed write"
    );
    assert!(loaded.nodes.is_empty());
}

/// A write held up inside its transaction (here by a row lock another
/// session holds) does not hold up the renewal of the lease: the writer
/// takes its share lock on the leadership row only as it commits. Taken
/// first, a long write (a list of 14 million recipients) kept the lease
/// from being renewed until the leader stepped down.
#[test]
fn a_long_write_does_not_hold_up_the_lease() {
    let Some(url) = database("long_write") else {
        return;
    };
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .execute("UPDATE smsmesh_leader SET epoch = 3, holder = 'a'", &[])
        .unwrap();
    let store = Store::postgres(Pg::connect(&url, 3, std::time::Duration::from_secs(5)).unwrap());
    store.insert_batch(&batch(1, 10), None).unwrap().unwrap();
    // Another session holds batch 1's state row: the write waits for it.
    let mut blocker = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut hold = blocker.transaction().unwrap();
    hold.execute(
        "INSERT INTO smsmesh_batch_state (id, record) VALUES (1, ''::bytea) \
         ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
        &[],
    )
    .unwrap();
    let writer = std::thread::spawn(move || {
        let mut set = WriteSet::default();
        set.batches.push(StoredBatchState {
            id: 1,
            dispatched: 5,
            ..Default::default()
        });
        store.commit(&set)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the write never waited on the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The lease is renewed as the leader renews it, while the write waits.
    admin.execute("SET lock_timeout = '2s'", &[]).unwrap();
    let renewed = admin.execute(
        "UPDATE smsmesh_leader SET expires_at = now() + interval '5 seconds' \
         WHERE id = 1 AND epoch = 3",
        &[],
    );
    assert_eq!(
        renewed.map_err(|e| e.to_string()),
        Ok(1),
        "the lease renewed while a write is in progress"
    );
    hold.commit().unwrap();
    writer
        .join()
        .unwrap()
        .expect("the write commits once it has its row");
}

#[test]
fn migrations_run_once_whoever_starts_first() {
    let Some(url) = database("migrate") else {
        return;
    };
    // Several coordinators starting at once all find the schema in place.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || pg::migrate(&url))
        })
        .collect();
    for r in runs {
        r.join().unwrap().unwrap();
    }
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let n: i64 = admin
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "three migrations (V1 to V3), each applied once");
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM smsmesh_leader", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[test]
fn racing_takeovers_never_let_a_superseded_epoch_commit() {
    let Some(url) = database("race") else { return };
    // Four contenders take the lead from each other as fast as they can, each
    // committing as hard as it can under the epoch it took, and each reading
    // what is stored right after taking the lead (as a new leader loads).
    // Safety: every commit that succeeded under an epoch is seen by every
    // later epoch's load; a deposed leader's commit never lands after it.
    type Seen = Vec<(i64, std::collections::HashSet<i64>)>;
    type Committed = Vec<(i64, i64)>;
    let contenders: Vec<std::thread::JoinHandle<(Seen, Committed)>> = (0..4i64)
        .map(|who| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                let (mut seen, mut committed) = (Vec::new(), Vec::new());
                for round in 0..15i64 {
                    let epoch: i64 = admin
                        .query_one(
                            "UPDATE smsmesh_leader SET epoch = epoch + 1, holder = $1 WHERE id = 1 RETURNING epoch",
                            &[&format!("contender-{who}")],
                        )
                        .unwrap()
                        .get(0);
                    let ids = admin
                        .query("SELECT id FROM smsmesh_batch_state", &[])
                        .unwrap()
                        .iter()
                        .map(|r| r.get::<_, i64>(0))
                        .collect();
                    seen.push((epoch, ids));
                    let store = Store::postgres(
                        Pg::connect(&url, epoch, std::time::Duration::from_secs(5)).unwrap(),
                    );
                    for n in 0..10i64 {
                        let id = who << 32 | round << 8 | n;
                        let mut set = WriteSet::default();
                        set.batches.push(StoredBatchState {
                            id: id as u64,
                            dispatched: epoch as u32,
                            ..Default::default()
                        });
                        match store.commit(&set) {
                            Ok(()) => committed.push((epoch, id)),
                            Err(StoreError::Deposed { .. }) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                (seen, committed)
            })
        })
        .collect();
    let (mut seen, mut committed): (Seen, Committed) = (Vec::new(), Vec::new());
    for c in contenders {
        let (s, k) = c.join().unwrap();
        seen.extend(s);
        committed.extend(k);
    }
    assert_eq!(seen.len(), 60);
    // They raced: commits succeeded, and others were refused as superseded.
    let refused = 60 * 10 - committed.len();
    assert!(
        !committed.is_empty() && refused > 0,
        "{} commits, {refused} refused or not tried",
        committed.len()
    );
    for (epoch, id) in &committed {
        if let Some((later, _)) = seen.iter().find(|(e, ids)| e > epoch && !ids.contains(id)) {
            panic!(
                "a commit under epoch {epoch} landed after epoch {later} took the lead and loaded"
            );
        }
    }
}

#[test]
fn a_store_dropped_on_a_tokio_runtime_closes_without_a_panic() {
    let Some(url) = database("dropped") else {
        return;
    };
    let store = Store::postgres(Pg::connect(&url, 0, std::time::Duration::from_secs(5)).unwrap());
    // As when a coordinator that stepped down ends: its store goes on a runtime thread.
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move { drop(store) });
}
