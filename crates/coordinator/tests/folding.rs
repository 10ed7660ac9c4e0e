//! Folding, without sockets: a durable coordinator's completed batch, once
//! out of the progress snapshot and stored, keeps only its counters in
//! memory. Its status and its messages (now read from the store) say the
//! same as before, and again after a restart; ListBatches still lists it.

mod common;

use std::time::Duration;

use common::{World, config};
use smsmesh::pb::{self, BatchState, MessageState};
use smsmesh_coordinator::Config;
use smsmesh_coordinator::auth::Tenant;
use smsmesh_coordinator::core::{BatchQuery, StateSet};

#[test]
fn a_completed_batch_reads_the_same_once_folded_and_after_a_restart() {
    let mut w = World::durable(Config {
        keep_ended_in_progress: Duration::ZERO,
        ..config()
    });
    let b = w.submit(5, 1);
    let a = w.join("node-a", 8);
    w.grant(a, 8);
    w.commit();
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    assert_eq!(jobs.len(), 5);
    w.now += Duration::from_millis(250);
    w.results(a, &jobs[..4], true, 0);
    w.results(a, &jobs[4..], false, 0);
    w.commit();
    let whole = w.status(b);
    assert_eq!(whole.state, BatchState::Completed as i32);
    assert!(whole.nodes[0].latency.is_some());
    let messages: Vec<pb::MessageStatus> = (0..5).map(|i| w.message(b, i)).collect();
    assert_eq!(messages[4].state, MessageState::Failed as i32);
    assert_eq!(messages[4].last_error, "boom");
    assert_eq!(messages[0].node, "node-a");
    for m in &messages {
        // Results came 250 ms after the acceptance (the dispatch, at once).
        assert_eq!(m.final_unix_ms, m.accepted_unix_ms + 250, "{m:?}");
        assert_eq!(m.last_attempt_unix_ms, m.final_unix_ms);
    }

    // Out of the snapshot (keep 0), then a commit: folded.
    w.now += Duration::from_millis(1);
    w.core.publish(w.now);
    w.commit();
    let folded = w.status(b);
    assert!(
        folded.nodes[0].latency.is_none(),
        "folded: no per-node send time"
    );
    let same = |s: &pb::BatchStatus| {
        (
            s.state,
            s.total,
            s.sent,
            s.failed,
            s.cancelled,
            s.max_attempts,
            s.synthetic_seed,
            s.nodes
                .iter()
                .map(|n| (n.node.clone(), n.sent, n.failed_attempts))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(same(&folded), same(&whole));
    assert_eq!(folded.latency.unwrap().count, 5);
    let read: Vec<pb::MessageStatus> = (0..5).map(|i| w.message(b, i)).collect();
    assert_eq!(
        read, messages,
        "a folded batch's messages come from the store"
    );
    assert!(
        w.core
            .on_message_status(
                smsmesh::MessageId { batch: b, index: 5 },
                &Tenant::default()
            )
            .is_err()
    );

    // After a restart it loads folded, and says the same.
    w.crash();
    let restarted = w.status(b);
    assert_eq!(same(&restarted), same(&whole));
    let read: Vec<pb::MessageStatus> = (0..5).map(|i| w.message(b, i)).collect();
    assert_eq!(read, messages);
    let listed = w.core.on_list_batches(
        &BatchQuery {
            states: StateSet::ALL,
            limit: 10,
            before: None,
        },
        &Tenant::default(),
    );
    assert_eq!(listed.batches.len(), 1);
    assert_eq!(listed.batches[0].sent, 4);
    // Cancelling it is a no-op that answers its status.
    let c = w.core.on_cancel(b, &Tenant::default(), w.now).unwrap();
    assert_eq!(c.state, BatchState::Completed as i32);
}
