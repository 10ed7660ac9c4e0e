//! Retention, without sockets: an ended batch accepted longer ago than
//! `--retention` is removed from memory and from the store (its key too),
//! while running and younger batches stay.

mod common;

use std::time::Duration;

use common::{World, config};
use smsmesh::pb::BatchState;
use smsmesh_coordinator::Config;
use smsmesh_coordinator::auth::Tenant;

/// The acceptance time the test world gives its batches (Unix ms).
const ACCEPTED: u64 = 1_700_000_000_000;

#[test]
fn ended_batches_past_their_retention_are_removed_from_memory_and_store() {
    let mut w = World::durable(Config {
        keep_ended_in_progress: Duration::ZERO,
        retention: Duration::from_secs(3600),
        ..config()
    });
    let done = w.submit_keyed(3, 1, Some("k-done"));
    let running = w.submit(3, 1);
    let a = w.join("a", 8);
    w.grant(a, 8);
    w.commit();
    w.dispatch();
    let jobs: Vec<_> = w
        .out
        .take_jobs(a)
        .concat()
        .into_iter()
        .filter(|j| j.batch == done.0)
        .collect();
    assert_eq!(jobs.len(), 3);
    w.results(a, &jobs, true, 0);
    w.commit();
    assert_eq!(w.status(done).state, BatchState::Completed as i32);
    // Out of the progress snapshot (keep 0): retired, so it may go.
    w.now += Duration::from_millis(1);
    w.core.publish(w.now);

    assert_eq!(
        w.core.expire_batches(ACCEPTED + 1000),
        0,
        "younger than the retention"
    );
    assert_eq!(
        w.core.expire_batches(ACCEPTED + 3_600_001),
        1,
        "only the ended batch goes; the running one stays however old"
    );
    let gone = w
        .core
        .on_batch_status(done, &Tenant::default(), w.now)
        .unwrap_err();
    assert!(gone.to_string().contains("--retention"), "{gone}");
    assert_eq!(w.status(running).state, BatchState::Running as i32);

    // The removal is stored: after a restart it is still gone, and its key is free.
    w.commit();
    w.crash();
    assert!(
        w.core
            .on_batch_status(done, &Tenant::default(), w.now)
            .is_err()
    );
    assert_eq!(w.status(running).total, 3);
    assert!(w.core.on_idempotent("k-done", 0).unwrap().is_none());
    let again = w.submit_keyed(3, 1, Some("k-done"));
    assert_ne!(again, done, "a new batch for the freed key");
    let stored = w.store.as_ref().unwrap().load().unwrap();
    assert!(stored.batches.iter().all(|b| b.batch.id != done.0));
    assert_eq!(stored.batches.len(), 2);
}

#[test]
fn names_that_did_work_are_reclaimed_once_retention_removed_their_batches() {
    let mut w = World::new(Config {
        keep_ended_in_progress: Duration::ZERO,
        retention: Duration::from_secs(3600),
        ..config()
    });
    // More distinct names than a u16 index holds, each a node that sent a
    // batch of its own, whose batch then ages out.
    let mut last = None;
    for i in 0..66_000u32 {
        let id = w.submit(1, 1);
        let sid = w.join(&format!("worker-{i}"), 1);
        w.grant(sid, 1);
        w.dispatch();
        let job = w.out.take_jobs(sid).concat();
        assert_eq!(job.len(), 1, "node {i} gets its job");
        w.results(sid, &job, true, 0);
        w.core.on_node_lost(sid, "done", w.now, &mut w.out);
        w.out.sent.clear();
        if i % 1000 == 999 && i < 65_999 {
            w.now += Duration::from_millis(1);
            w.core.publish(w.now);
            w.core.expire_batches(ACCEPTED + 3_600_001);
        }
        last = Some(id);
    }
    // The newest batch is still there, and names its node.
    assert_eq!(w.message(last.unwrap(), 0).node, "worker-65999");
    w.now += Duration::from_millis(1);
    w.core.publish(w.now);
    let nodes = w.core.subscribe().borrow().metrics.nodes.clone();
    assert!(nodes.len() <= 1000, "{} names kept", nodes.len());
}

#[test]
fn after_a_restart_a_stored_name_no_batch_names_is_forgotten() {
    let mut w = World::durable(Config {
        keep_ended_in_progress: Duration::ZERO,
        retention: Duration::from_secs(3600),
        ..config()
    });
    let send = |w: &mut World, node: &str| {
        let id = w.submit(1, 1);
        let sid = w.join(node, 1);
        w.grant(sid, 1);
        w.commit();
        w.dispatch();
        let job = w.out.take_jobs(sid).concat();
        w.results(sid, &job, true, 0);
        w.commit();
        w.core.on_node_lost(sid, "done", w.now, &mut w.out);
        id
    };
    send(&mut w, "worker-a");
    w.now += Duration::from_millis(1);
    w.core.publish(w.now);
    assert_eq!(w.core.expire_batches(ACCEPTED + 3_600_001), 1);
    w.commit();
    let kept = send(&mut w, "worker-b");
    w.crash();
    assert_eq!(w.message(kept, 0).node, "worker-b");
    w.core.publish(w.now);
    let nodes = w.core.subscribe().borrow().metrics.nodes.clone();
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["worker-b"],
        "worker-a's batch is gone, so its stored name is free again"
    );
}
