//! Delivery receipts, without sockets: a sent message whose provider gave ids
//! takes its delivery state from the receipts for those ids, whichever node
//! hands them in and in whatever order (a long message's parts out of order,
//! a receipt before the result that carries its id). The counts and states
//! survive a restart, a receipt after the restart still matches, and a
//! message with no receipt in time ends as delivery unknown.

mod common;

use std::time::Duration;

use common::{World, config};
use smsmesh::pb::{self, MessageState, node_to_coordinator};
use smsmesh_coordinator::Config;
use smsmesh_coordinator::core::{SessionId, unix_ms};

const SMSC: &str = "smpp://127.0.0.1:2775";

fn join(w: &mut World, name: &str, provider: &str) -> SessionId {
    let sid = w.core.next_session_id();
    let hello = pb::Hello {
        name: name.into(),
        instance_id: 1,
        concurrency: 16,
        gateway: "smpp".into(),
        provider: provider.into(),
    };
    w.core
        .on_node_joined(sid, hello, w.now, &mut w.out)
        .unwrap();
    sid
}

fn receipt(id: &str, state: u32, error: &str) -> pb::Receipt {
    pb::Receipt {
        provider_id: id.into(),
        message_state: state,
        error: error.into(),
        received_unix_ms: 1_700_000_000_123,
    }
}

fn receipts(w: &mut World, sid: SessionId, seq: u64, list: Vec<pb::Receipt>) {
    w.msg(
        sid,
        node_to_coordinator::Update::Results(pb::Results {
            seq,
            receipts: list,
            ..Default::default()
        }),
    );
}

/// Sends a 4-message batch through node `a`; the provider's ids are
/// A1 (message 0), B1 and B2 (message 1, two parts), C1, D1.
fn sent_batch(w: &mut World) -> (smsmesh::BatchId, SessionId) {
    let b = w.submit(4, 1);
    let a = join(w, "node-a", SMSC);
    w.grant(a, 4);
    w.commit();
    w.dispatch();
    let jobs = w.out.take_jobs(a).concat();
    assert_eq!(jobs.len(), 4);
    let ids: [&[&str]; 4] = [&["A1"], &["B1", "B2"], &["C1"], &["D1"]];
    // D1's receipt comes before the result that names it.
    receipts(w, a, 1, vec![receipt("D1", 3, "")]);
    let results = jobs
        .iter()
        .map(|j| pb::JobResult {
            provider_ids: ids[j.index as usize]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..common::result(j, true)
        })
        .collect();
    w.frame(a, 2, results, 0);
    w.commit();
    (b, a)
}

#[test]
fn receipts_decide_delivery_by_part_and_by_any_node_and_survive_a_restart() {
    let mut w = World::durable(config());
    let (b, a) = sent_batch(&mut w);
    let s = w.status(b);
    assert_eq!(
        (s.sent, s.awaiting_receipt, s.undelivered),
        (4, 3, 1),
        "{s:?}"
    );
    let m = w.message(b, 3);
    assert_eq!(
        m.state,
        MessageState::Expired as i32,
        "the early receipt: {m:?}"
    );
    assert_eq!(m.receipt_state, "EXPIRED");
    let m = w.message(b, 1);
    assert_eq!(m.state, MessageState::Sent as i32);
    assert_eq!(m.provider_ids, ["B1", "B2"]);

    // Another node of the same SMSC hands in receipts; part 2 first, then an interim
    // receipt for part 1; and one from another provider with a same-looking id.
    let other = join(&mut w, "node-b", SMSC);
    let elsewhere = join(&mut w, "node-c", "smpp://10.0.0.9:2775");
    receipts(
        &mut w,
        other,
        1,
        vec![
            receipt("A1", 2, "000"),
            receipt("B2", 2, "000"),
            receipt("B1", 1, ""),
        ],
    );
    receipts(&mut w, elsewhere, 1, vec![receipt("C1", 2, "")]);
    assert_eq!(w.message(b, 0).state, MessageState::Delivered as i32);
    assert_eq!(
        w.message(b, 1).state,
        MessageState::Sent as i32,
        "one part of two delivered, one enroute"
    );
    assert_eq!(
        w.message(b, 2).state,
        MessageState::Sent as i32,
        "another provider's C1 is not ours"
    );
    receipts(
        &mut w,
        a,
        3,
        vec![receipt("B1", 2, "000"), receipt("C1", 5, "034")],
    );
    w.commit();
    let check = |w: &World| {
        let s = w.status(b);
        assert_eq!(
            (
                s.delivered,
                s.undelivered,
                s.awaiting_receipt,
                s.delivery_unknown
            ),
            (2, 2, 0, 0),
            "{s:?}"
        );
        let m = w.message(b, 1);
        assert_eq!(m.state, MessageState::Delivered as i32, "{m:?}");
        assert_eq!(m.receipt_state, "DELIVRD");
        let m = w.message(b, 2);
        assert_eq!(m.state, MessageState::Undelivered as i32, "{m:?}");
        assert_eq!(
            (m.receipt_state.as_str(), m.receipt_error.as_str()),
            ("UNDELIV", "034")
        );
        assert_eq!(m.provider_ids, ["C1"]);
        assert_eq!(m.receipt_unix_ms, 1_700_000_000_123);
    };
    check(&w);
    // A second receipt for a decided message changes nothing.
    receipts(&mut w, a, 4, vec![receipt("C1", 2, "")]);
    check(&w);
    w.crash();
    check(&w);
    let (stats, awaiting) = w.core.receipt_stats();
    assert_eq!(awaiting, 0);
    assert_eq!(stats.timed_out, 0);
}

#[test]
fn a_receipt_after_a_restart_still_matches_and_none_in_time_is_delivery_unknown() {
    let mut w = World::durable(Config {
        dlr_timeout: Duration::from_secs(60),
        ..config()
    });
    let (b, _) = sent_batch(&mut w);
    w.crash();
    let a = join(&mut w, "node-a", SMSC);
    receipts(&mut w, a, 1, vec![receipt("A1", 2, "")]);
    // The batch completed, so after a restart its messages are read from the store.
    w.commit();
    assert_eq!(w.message(b, 0).state, MessageState::Delivered as i32);
    // Part 1 of message 1 is delivered; then the process restarts again: the
    // part delivered is remembered, so part 2 alone completes it.
    receipts(&mut w, a, 2, vec![receipt("B1", 2, "")]);
    w.commit();
    w.crash();
    let a = join(&mut w, "node-a", SMSC);
    receipts(&mut w, a, 1, vec![receipt("B2", 2, "")]);
    w.commit();
    assert_eq!(w.message(b, 1).state, MessageState::Delivered as i32);

    // Message 2 never hears back: at the timeout it is delivery unknown.
    w.core.expire_receipts(w.now, unix_ms() + 30_000);
    assert_eq!(w.message(b, 2).state, MessageState::Sent as i32);
    w.core.expire_receipts(w.now, unix_ms() + 61_000);
    w.commit();
    let m = w.message(b, 2);
    assert_eq!(m.state, MessageState::DeliveryUnknown as i32, "{m:?}");
    let s = w.status(b);
    assert_eq!(
        (
            s.delivered,
            s.undelivered,
            s.delivery_unknown,
            s.awaiting_receipt
        ),
        (2, 1, 1, 0)
    );
    // A receipt after the timeout does not change the books.
    receipts(&mut w, a, 2, vec![receipt("C1", 2, "")]);
    assert_eq!(w.status(b).delivered, 2);
    w.crash();
    assert_eq!(w.message(b, 2).state, MessageState::DeliveryUnknown as i32);
    assert_eq!(
        w.core.receipt_stats().0.timed_out,
        0,
        "counted by the process that saw it"
    );
}
