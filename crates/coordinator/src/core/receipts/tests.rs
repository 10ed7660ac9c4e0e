//! The receipts sub-state's own tests: deadlines, and what a folded batch keeps.

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
