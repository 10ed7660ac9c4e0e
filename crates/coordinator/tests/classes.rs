//! Classes of traffic in the core, without sockets: dispatch is strict by
//! class (retries included), paused classes wait, and tenants share a class
//! by weight whatever their number of batches.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{World, config};
use smsmesh::BatchId;
use smsmesh::priority::Class;
use smsmesh_coordinator::Config;

/// Jobs a node granted `credit` gets now, counted by batch.
fn take(
    w: &mut World,
    sid: smsmesh_coordinator::core::SessionId,
    credit: u32,
) -> Vec<smsmesh::pb::Job> {
    w.grant(sid, credit);
    w.dispatch();
    w.out.take_jobs(sid).concat()
}

fn count(jobs: &[smsmesh::pb::Job]) -> HashMap<u64, usize> {
    let mut n = HashMap::new();
    for j in jobs {
        *n.entry(j.batch).or_default() += 1;
    }
    n
}

#[test]
fn each_class_waits_for_every_more_urgent_one_and_jobs_say_their_class() {
    let mut w = World::new(config());
    let bulk = w.submit_as(100, Class::Bulk, "");
    let normal = w.submit_as(100, Class::Normal, "");
    let high = w.submit_as(10, Class::High, "");
    let alert = w.submit_as(10, Class::Emergency, "");
    let sid = w.join("n1", 1000);
    let jobs = take(&mut w, sid, 15);
    let n = count(&jobs);
    assert_eq!(n.get(&alert.0), Some(&10), "{n:?}");
    assert_eq!(n.get(&high.0), Some(&5), "{n:?}");
    assert_eq!(n.len(), 2, "nothing of normal or bulk yet: {n:?}");
    for j in &jobs {
        let want = if j.batch == alert.0 { 1 } else { 2 };
        assert_eq!(j.priority, want, "Job.priority says the class");
    }
    let jobs = take(&mut w, sid, 110);
    let n = count(&jobs);
    assert_eq!(
        (n.get(&high.0), n.get(&normal.0)),
        (Some(&5), Some(&100)),
        "{n:?}"
    );
    assert_eq!(n.get(&bulk.0), Some(&5));
    assert!(
        jobs.iter()
            .filter(|j| j.batch == normal.0)
            .all(|j| j.priority == 0)
    );
    assert!(
        jobs.iter()
            .filter(|j| j.batch == bulk.0)
            .all(|j| j.priority == 4)
    );
}

#[test]
fn a_retry_of_bulk_waits_while_an_alert_has_work_and_a_paused_class_waits_for_resume() {
    let mut w = World::new(Config {
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(10),
        ..config()
    });
    let bulk = w.submit_as(4, Class::Bulk, "");
    let sid = w.join("n1", 1000);
    let jobs = take(&mut w, sid, 4);
    w.results(sid, &jobs, false, 0); // every bulk message fails: 4 retries
    w.run_for(Duration::from_millis(50)); // their backoff is over
    let alert = w.submit_as(6, Class::Emergency, "");
    let n = count(&take(&mut w, sid, 6));
    assert_eq!(
        n,
        HashMap::from([(alert.0, 6)]),
        "the alert before the retries"
    );
    let n = count(&take(&mut w, sid, 6));
    assert_eq!(n, HashMap::from([(bulk.0, 4)]), "then the retries");

    assert_eq!(w.core.set_paused(Class::Bulk, true), vec![Class::Bulk]);
    let later = w.submit_as(3, Class::Bulk, "");
    assert!(
        take(&mut w, sid, 10).is_empty(),
        "a paused class sends nothing"
    );
    assert!(w.status(later).class_paused);
    assert!(w.core.set_paused(Class::Bulk, false).is_empty());
    let n = count(&take(&mut w, sid, 10));
    assert_eq!(n, HashMap::from([(later.0, 3)]));
}

/// Jobs of each tenant in the first `credit` dispatched.
fn shares(weights: &[(&str, u32)], credit: u32) -> (usize, usize) {
    let mut w = World::new(Config {
        max_jobs_per_frame: 10_000,
        tenant_weights: weights.iter().map(|(t, w)| (t.to_string(), *w)).collect(),
        ..config()
    });
    let big: Vec<BatchId> = (0..4)
        .map(|_| w.submit_as(10_000, Class::Normal, "big"))
        .collect();
    let small = w.submit_as(10_000, Class::Normal, "small");
    let sid = w.join("n1", 100_000);
    let mut from_big = 0;
    let mut from_small = 0;
    // In frames of 64, as credit comes back from a busy node.
    for _ in 0..credit / 64 {
        for j in take(&mut w, sid, 64) {
            if j.batch == small.0 {
                from_small += 1;
            } else {
                assert!(big.iter().any(|b| b.0 == j.batch));
                from_big += 1;
            }
        }
    }
    (from_big, from_small)
}

#[test]
fn tenants_share_by_weight_not_by_batches() {
    let (big, small) = shares(&[], 6400);
    assert!(big.abs_diff(small) <= 64, "equal weights: {big} vs {small}");
    let (big, small) = shares(&[("small", 3)], 6400);
    assert!(
        (small as f64 / (big + small) as f64 - 0.75).abs() < 0.02,
        "weight 3 against 1: {big} vs {small}"
    );
}

#[test]
fn a_tenant_back_from_idle_does_not_get_what_it_did_not_use() {
    let mut w = World::new(Config {
        max_jobs_per_frame: 10_000,
        ..config()
    });
    let a = w.submit_as(100_000, Class::Normal, "a");
    let sid = w.join("n1", 100_000);
    let jobs = take(&mut w, sid, 6400);
    assert!(jobs.iter().all(|j| j.batch == a.0));
    // b arrives after a had the mesh alone: from now on they share evenly,
    // b does not first get the 6,400 a had.
    let b = w.submit_as(100_000, Class::Normal, "b");
    let n = count(&take(&mut w, sid, 640));
    let (na, nb) = (
        n.get(&a.0).copied().unwrap_or(0),
        n.get(&b.0).copied().unwrap_or(0),
    );
    assert!(na.abs_diff(nb) <= 64, "{na} vs {nb}");
}
