//! The node's protocol state driven by hand: frames in, frames out, no sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use smsmesh::pb::{self, node_to_coordinator::Update};

use super::NodeState;
use crate::Stats;

fn state(concurrency: u32, prefetch: u32) -> NodeState {
    NodeState::new(
        concurrency,
        (prefetch, prefetch),
        2,
        Arc::new(Stats::default()),
        Instant::now(),
    )
}

fn done(epoch: u64, index: u32) -> super::Done {
    let r = pb::JobResult {
        batch: 1,
        index,
        attempt: 1,
        outcome: pb::Outcome::Sent as i32,
        ..Default::default()
    };
    (epoch, r)
}

/// (seq, result indexes, grant, handoff) of each Results frame, and the grant of a Grant frame.
fn results(frames: &[pb::NodeToCoordinator]) -> Vec<(u64, Vec<u32>, u32, bool)> {
    frames
        .iter()
        .filter_map(|f| match f.update.as_ref()? {
            Update::Results(r) => Some((
                r.seq,
                r.results.iter().map(|r| r.index).collect(),
                r.grant,
                r.handoff,
            )),
            Update::Grant(g) => Some((0, Vec::new(), g.credits, false)),
            _ => None,
        })
        .collect()
}

/// (seq, results, receipts) of each Results frame.
fn carried(frames: &[pb::NodeToCoordinator]) -> Vec<(u64, usize, usize)> {
    frames
        .iter()
        .filter_map(|f| match f.update.as_ref()? {
            Update::Results(r) => Some((r.seq, r.results.len(), r.receipts.len())),
            _ => None,
        })
        .collect()
}

#[test]
fn credit_is_granted_up_to_the_target_and_never_beyond() {
    let now = Instant::now();
    let mut s = state(4, 1);
    assert_eq!(s.credit_limit(), 5, "concurrency plus the most prefetch");
    assert_eq!(results(&s.flush(now)), [(0, vec![], 5, false)]);
    assert!(s.flush(now).is_empty(), "nothing more until jobs finish");
    assert_eq!(s.on_jobs(3, now), 0);
    assert!(
        s.flush(now).is_empty(),
        "credit still unused covers the rest"
    );
    assert_eq!(
        s.on_jobs(3, now),
        1,
        "one job beyond the credit granted is counted"
    );
    s.finished(vec![done(0, 0), done(0, 1)], now);
    // Two results in frames of at most 2, and the credit they freed rides on the last.
    let out = results(&s.flush(now));
    assert_eq!(out.len(), 1);
    let (seq, idx, grant, handoff) = &out[0];
    assert_eq!((*seq, idx.as_slice(), handoff), (1, &[0, 1][..], &false));
    assert_eq!(*grant, 1, "5 held at most: 4 still held");
}

#[test]
fn with_little_credit_free_results_wait_for_the_frame_gap() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut s = state(16, 0);
    s.set_frame_gap(ms(5));
    assert_eq!(results(&s.flush(t0)), [(0, vec![], 16, false)]);
    s.on_jobs(16, t0);
    s.finished(vec![done(0, 0)], t0 + ms(1));
    assert!(
        s.flush(t0 + ms(1)).is_empty(),
        "1 credit of 16 free: it waits"
    );
    assert_eq!(s.flush_due(), Some(t0 + ms(5)), "5 ms after the last frame");
    s.finished(vec![done(0, 1)], t0 + ms(2));
    assert_eq!(
        results(&s.flush(t0 + ms(5))),
        [(1, vec![0, 1], 2, false)],
        "both in one frame, with the credit they freed"
    );
    assert_eq!(s.flush_due(), None, "nothing waits");
    // A quarter of the credit target free goes at once, within the gap.
    s.finished((2..6).map(|i| done(0, i)).collect(), t0 + ms(6));
    let out = results(&s.flush(t0 + ms(6)));
    assert_eq!(out, [(2, vec![2, 3], 0, false), (3, vec![4, 5], 4, false)]);
    // So does everything once the node is leaving.
    s.finished(vec![done(0, 6)], t0 + ms(7));
    assert!(s.flush(t0 + ms(7)).is_empty());
    assert!(s.leave().is_some());
    assert_eq!(results(&s.flush(t0 + ms(7))), [(4, vec![6], 0, false)]);
}

#[test]
fn receipts_never_wait_for_the_frame_gap_and_take_the_results_held() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut s = state(16, 0);
    s.set_frame_gap(ms(5));
    s.flush(t0); // the first grant
    s.on_jobs(16, t0);
    s.finished(vec![done(0, 0)], t0 + ms(1));
    assert!(s.flush(t0 + ms(1)).is_empty(), "a result waits");
    let r = pb::Receipt {
        provider_id: "a".into(),
        ..Default::default()
    };
    s.on_receipts([(r, None)]);
    assert_eq!(
        carried(&s.flush(t0 + ms(2))),
        [(1, 1, 0), (2, 0, 1)],
        "the receipt at once, the result with it"
    );
    assert_eq!(s.flush_due(), None);
}

#[test]
fn results_are_kept_until_acked_and_handed_in_on_the_next_stream() {
    let now = Instant::now();
    let mut s = state(8, 0);
    s.flush(now);
    s.on_jobs(5, now);
    s.finished((0..5).map(|i| done(0, i)).collect(), now);
    let out = results(&s.flush(now));
    assert_eq!(out.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2, 3]);
    s.on_ack(2);
    assert!(!s.is_empty(), "frame 3 is not acked");
    // The stream breaks.
    s.on_stream_broken();
    let open = results(&s.on_stream_open());
    assert_eq!(
        open,
        [(3, vec![4], 0, true)],
        "the unacked frame again, as a handoff"
    );
    s.on_ack(3);
    assert!(s.is_empty());
}

#[test]
fn results_of_an_earlier_stream_are_handed_in_apart_from_this_stream_s() {
    let now = Instant::now();
    let mut s = state(8, 0);
    s.flush(now);
    s.on_jobs(2, now);
    s.on_stream_broken();
    s.on_stream_open();
    s.finished(vec![done(0, 7), done(1, 8)], now);
    let out = results(&s.flush(now));
    assert_eq!(
        out,
        [(1, vec![7], 0, true), (2, vec![8], 8, false)],
        "the handoff first; the grant rides on this stream's frame"
    );
}

#[test]
fn going_away_stops_credit_and_ends_once_drained_and_acked() {
    let now = Instant::now();
    let mut s = state(2, 0);
    s.flush(now);
    s.on_jobs(2, now);
    let bye = s.leave().expect("GoingAway the first time");
    assert!(matches!(bye.update, Some(Update::GoingAway(_))));
    assert!(s.leave().is_none(), "said once");
    s.finished(vec![done(0, 0), done(0, 1)], now);
    let out = results(&s.flush(now));
    assert_eq!(out, [(1, vec![0, 1], 0, false)], "no credit while leaving");
    assert!(!s.left_cleanly());
    s.on_drained();
    assert!(!s.left_cleanly(), "frame 1 is not acked yet");
    s.on_ack(1);
    assert!(s.left_cleanly());
    // Leaving before a new stream opens: GoingAway follows the handoff there.
    let mut s = state(2, 0);
    let _ = s.leave();
    s.on_stream_broken();
    let open = s.on_stream_open();
    assert!(matches!(
        open.last().unwrap().update,
        Some(Update::GoingAway(_))
    ));
}

#[test]
fn receipts_go_in_frames_of_their_own_and_are_handed_in_again_until_acked() {
    let now = Instant::now();
    let mut s = state(1, 1);
    s.flush(now); // the first grant
    let r = |id: &str| pb::Receipt {
        provider_id: id.into(),
        message_state: 2,
        ..Default::default()
    };
    let (stored, mut told) = tokio::sync::oneshot::channel();
    s.on_receipts([(r("a"), None), (r("b"), Some(stored.into()))]);
    assert!(!s.is_empty(), "receipts are owed to the coordinator");
    assert_eq!(carried(&s.flush(now)), [(1, 0, 2)]);
    // The stream breaks before the ack: the next stream hands them in again.
    s.on_stream_broken();
    let again = s.on_stream_open();
    let Some(Update::Results(r)) = again[0].update.as_ref() else {
        panic!("{again:?}")
    };
    assert_eq!((r.seq, r.handoff, r.receipts.len()), (1, true, 2));
    assert!(
        told.try_recv().is_err(),
        "not stored yet: the SMSC is not answered"
    );
    s.on_ack(1);
    assert!(s.is_empty(), "acked: nothing owed");
    assert!(
        told.try_recv().is_ok(),
        "stored: the receipt may be answered"
    );
}

/// A backlog of receipts goes to the coordinator a bounded number at a
/// time: the rest wait for acks, each still told only once stored.
#[test]
fn receipts_in_flight_are_bounded_and_follow_the_acks() {
    let max = super::MAX_UNACKED_RECEIPTS;
    let now = Instant::now();
    let mut s = state(1, 1);
    s.flush(now);
    let mut told = Vec::new();
    let backlog = (0..max + 5).map(|i| {
        let (stored, rx) = tokio::sync::oneshot::channel();
        told.push(rx);
        let r = pb::Receipt {
            provider_id: format!("id{i}"),
            message_state: 2,
            ..Default::default()
        };
        (r, Some(stored.into()))
    });
    s.on_receipts(backlog);
    assert!(!s.takes_receipts(), "a full backlog waits for frames");
    let in_frames = |frames: &[pb::NodeToCoordinator]| -> Vec<(u64, usize)> {
        frames
            .iter()
            .filter_map(|f| match f.update.as_ref()? {
                Update::Results(r) => Some((r.seq, r.receipts.len())),
                _ => None,
            })
            .collect()
    };
    let first = in_frames(&s.flush(now));
    assert_eq!(first.iter().map(|f| f.1).sum::<usize>(), max);
    let gauges = |s: &NodeState| {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as usize;
        let st = &s.stats;
        (
            g(&st.receipts_waiting),
            g(&st.receipts_unacked),
            g(&st.max_receipts_unacked),
            g(&st.receipts_acked),
        )
    };
    assert_eq!(gauges(&s), (5, max, max, 0));
    assert!(
        in_frames(&s.flush(now)).is_empty(),
        "none more before an ack"
    );
    assert!(s.takes_receipts());
    let last_seq = first.last().unwrap().0;
    s.on_ack(last_seq);
    assert!(told[..max].iter_mut().all(|rx| rx.try_recv().is_ok()));
    assert!(
        told[max..].iter_mut().all(|rx| rx.try_recv().is_err()),
        "not sent yet: not told"
    );
    assert_eq!(in_frames(&s.flush(now)), [(last_seq + 1, 5)]);
    assert_eq!(gauges(&s), (0, 5, max, max));
    s.on_ack(last_seq + 1);
    assert!(told[max..].iter_mut().all(|rx| rx.try_recv().is_ok()));
    assert!(s.is_empty());
    assert_eq!(gauges(&s), (0, 0, max, max + 5));
}
