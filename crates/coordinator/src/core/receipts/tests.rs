//! The receipts sub-state's own tests: deadlines, what a folded batch keeps,
//! and early receipts stored while they wait.

use super::*;

/// Deadlines of decided messages do not pile up for `--dlr-timeout`;
/// those still waiting still end as delivery unknown when due.
#[test]
fn decided_messages_leave_the_deadlines() {
    let mut r = Receipts::new(Duration::from_secs(48 * 3600));
    r.keep_decided(7);
    let provider: Arc<str> = "smsc".into();
    let mut writes = Vec::new();
    for i in 0..10_000u32 {
        r.on_sent(7, i, &provider, &[format!("id{i}")], 1_000, &mut writes);
    }
    let now = Instant::now();
    for i in 0..9_000u32 {
        let receipt = pb::Receipt {
            provider_id: format!("id{i}"),
            message_state: DELIVERED,
            ..Default::default()
        };
        r.on_receipt(&provider, &receipt, now, &mut writes);
    }
    assert_eq!(r.awaiting(), 1_000);
    assert!(
        r.deadlines.len() <= 2 * 1_000 + 1024,
        "{}",
        r.deadlines.len()
    );
    assert!(r.on_tick(now, 1_000 + 48 * 3600 * 1000, &mut writes));
    let c = r.counts(7);
    assert_eq!((c.delivered, c.unknown, c.awaiting), (9_000, 1_000, 0));
    assert!(r.deadlines.is_empty());
    let mut status = pb::MessageStatus::default();
    r.message(7, 3, &mut status);
    assert_eq!(
        (status.state, status.provider_ids.as_slice()),
        (pb::MessageState::Delivered as i32, &["id3".to_string()][..])
    );
}

/// A folded batch's decided deliveries leave memory (the store answers
/// for them), and those decided after it folded never enter it; its
/// counts and the receipts still awaited are kept.
#[test]
fn a_folded_batch_keeps_no_decided_deliveries_in_memory() {
    let mut r = Receipts::new(Duration::from_secs(3600));
    let provider: Arc<str> = "smsc".into();
    let (mut writes, now) = (Vec::new(), Instant::now());
    let receipt = |i: u32| pb::Receipt {
        provider_id: format!("id{i}"),
        message_state: DELIVERED,
        ..Default::default()
    };
    r.keep_decided(3);
    for i in 0..100u32 {
        r.on_sent(3, i, &provider, &[format!("id{i}")], 1_000, &mut writes);
    }
    for i in 0..60u32 {
        r.on_receipt(&provider, &receipt(i), now, &mut writes);
    }
    assert_eq!(r.kept_in_memory(), 60);

    r.forget_decided(3);
    assert_eq!(r.kept_in_memory(), 0);
    for i in 60..90u32 {
        r.on_receipt(&provider, &receipt(i), now, &mut writes);
    }
    assert_eq!(r.kept_in_memory(), 0, "decided after the fold");
    let c = r.counts(3);
    assert_eq!((c.delivered, c.awaiting), (90, 10));
    // Every decision still went to the store, once each.
    let finals = writes
        .iter()
        .filter(|w| matches!(w, ReceiptWrite::Final { .. }))
        .count();
    assert_eq!(finals, 90);
    // A message still waiting shows its ids; a decided one, nothing from memory.
    let mut status = pb::MessageStatus::default();
    r.message(3, 95, &mut status);
    assert_eq!(status.provider_ids, ["id95".to_string()]);
    let mut status = pb::MessageStatus::default();
    r.message(3, 5, &mut status);
    assert!(status.provider_ids.is_empty());
}

/// What each write is, in order, for the early receipts' test.
fn kinds(writes: &[ReceiptWrite]) -> Vec<String> {
    writes
        .iter()
        .map(|w| match w {
            ReceiptWrite::Wait { index, .. } => format!("wait {index}"),
            ReceiptWrite::Final { index, .. } => format!("final {index}"),
            ReceiptWrite::Early { id, .. } => format!("early {id}"),
            ReceiptWrite::EarlyGone { id, .. } => format!("early gone {id}"),
        })
        .collect()
}

/// A receipt that comes before its id is stored with the next group taken
/// while it waits (not if its id came first), and removed when its id comes
/// or it is given up; one stored at a restart is held again for what is
/// left of its wait, and applied when its id comes.
#[test]
fn early_receipts_are_stored_until_applied_and_held_again_after_a_restart() {
    let provider: Arc<str> = "smsc".into();
    let now = Instant::now();
    let receipt = |id: &str, at: u64| pb::Receipt {
        provider_id: id.into(),
        message_state: DELIVERED,
        received_unix_ms: at,
        ..Default::default()
    };
    let mut r = Receipts::new(Duration::from_secs(3600));
    let mut writes = Vec::new();
    r.on_receipt(&provider, &receipt("a", 1_000), now, &mut writes);
    r.on_receipt(&provider, &receipt("b", 1_000), now, &mut writes);
    r.on_receipt(&provider, &receipt("x", 1_000), now, &mut writes);
    // Applied before a group is taken: never written.
    r.on_sent(1, 9, &provider, &["x".into()], 1_000, &mut writes);
    assert_eq!(kinds(&writes), ["wait 9", "final 9"]);
    writes.clear();
    // A group is taken: what is still held is written with it, once.
    r.store_held(&mut writes);
    assert_eq!(kinds(&writes), ["early a", "early b"]);
    let ReceiptWrite::Early { record, .. } = &writes[0] else {
        unreachable!()
    };
    let stored = <StoredEarly as prost::Message>::decode(record.as_slice()).unwrap();
    assert_eq!(
        (stored.provider.as_str(), stored.provider_id.as_str()),
        ("smsc", "a")
    );
    writes.clear();
    r.store_held(&mut writes);
    assert!(writes.is_empty());
    r.on_sent(1, 0, &provider, &["a".into()], 1_000, &mut writes);
    assert_eq!(kinds(&writes), ["wait 0", "early gone a", "final 0"]);
    writes.clear();
    // A second receipt for "b" replaces the stored one.
    r.on_receipt(&provider, &receipt("b", 2_000), now, &mut writes);
    r.store_held(&mut writes);
    assert_eq!(kinds(&writes), ["early b"]);
    writes.clear();
    // Given up after EARLY_WAIT.
    assert!(!r.on_tick(now + EARLY_WAIT, 1_000, &mut writes));
    assert_eq!(kinds(&writes), ["early gone b"]);

    // A restart: "c" came 599 s before it, "d" 1 s before; a wait of a
    // message was stored too.
    let early = |id: &str, at: u64| StoredEarly {
        provider: "smsc".into(),
        provider_id: id.into(),
        message_state: DELIVERED,
        error: String::new(),
        received_unix_ms: at,
    };
    let unix_now = 1_000_000;
    let wait = StoredWait {
        sent_unix_ms: unix_now,
        provider: "smsc".into(),
        ids: vec!["e".into()],
        ..Default::default()
    };
    let mut r = Receipts::new(Duration::from_secs(3600));
    let mut writes = Vec::new();
    r.restore(
        (
            vec![((2, 5), wait)],
            vec![early("d", unix_now - 1_000), early("c", unix_now - 599_000)],
        ),
        &[],
        Vec::new(),
        (now, unix_now),
        &mut writes,
    );
    assert!(writes.is_empty(), "{:?}", kinds(&writes));
    r.on_sent(2, 6, &provider, &["d".into()], unix_now, &mut writes);
    assert_eq!(kinds(&writes), ["wait 6", "early gone d", "final 6"]);
    writes.clear();
    r.on_tick(now + Duration::from_secs(2), unix_now, &mut writes);
    assert_eq!(kinds(&writes), ["early gone c"], "c had 1 s left");
    assert_eq!(r.counts(2).delivered, 1);

    // An early receipt stored with the wait of its id (none should be) is
    // applied as the state is restored.
    let mut r = Receipts::new(Duration::from_secs(3600));
    let mut writes = Vec::new();
    let wait = StoredWait {
        sent_unix_ms: unix_now,
        provider: "smsc".into(),
        ids: vec!["f".into()],
        ..Default::default()
    };
    r.restore(
        (vec![((3, 0), wait)], vec![early("f", unix_now)]),
        &[],
        Vec::new(),
        (now, unix_now),
        &mut writes,
    );
    assert_eq!(kinds(&writes), ["early gone f", "final 0"]);
    assert_eq!(r.counts(3).delivered, 1);
}

/// Early receipts applied soon after they came leave no trace in the order
/// queue beyond a bound; when EARLY_MAX are held, the oldest still held
/// makes room (an entry of one applied since is skipped).
#[test]
fn the_early_receipts_queue_stays_within_what_is_held() {
    let provider: Arc<str> = "smsc".into();
    let now = Instant::now();
    let receipt = |id: String| pb::Receipt {
        provider_id: id,
        message_state: DELIVERED,
        ..Default::default()
    };
    let mut r = Receipts::new(Duration::from_secs(3600));
    let mut writes = Vec::new();
    for i in 0..10_000u32 {
        r.on_receipt(&provider, &receipt(format!("m{i}")), now, &mut writes);
        r.on_sent(1, i, &provider, &[format!("m{i}")], 1_000, &mut writes);
    }
    assert_eq!(r.counts(1).delivered, 10_000);
    let (held, queued) = r.early.sizes();
    assert_eq!(held, 0);
    assert!(queued <= 1_100, "{queued} entries for none held");

    // Full: "first" is applied, then EARLY_MAX + 2 more come.
    let mut r = Receipts::new(Duration::from_secs(3600));
    r.on_receipt(&provider, &receipt("first".into()), now, &mut writes);
    r.on_sent(2, 0, &provider, &["first".into()], 1_000, &mut writes);
    for i in 0..EARLY_MAX as u32 + 2 {
        r.on_receipt(&provider, &receipt(format!("e{i}")), now, &mut writes);
    }
    assert_eq!(r.early.sizes().0, EARLY_MAX);
    assert_eq!(r.stats.unmatched, 2, "e0 and e1 gave way");
    writes.clear();
    r.on_sent(2, 1, &provider, &["e1".into()], 1_000, &mut writes);
    r.on_sent(2, 2, &provider, &["e2".into()], 1_000, &mut writes);
    assert_eq!(r.counts(2).delivered, 2, "first and e2");
    assert_eq!(r.counts(2).awaiting, 1, "e1's receipt gave way");
}
