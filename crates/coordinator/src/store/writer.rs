//! The group-commit writer: one thread that commits each [`WriteSet`] the
//! reactor gives it, together with every new batch submitted meanwhile (see
//! [`Inserter`]), in one transaction, and reports back.
//!
//! New batches alone begin a commit no sooner than the submit interval after
//! the last one began: under many submits each fsync serves more of them
//! (fewer, larger commits, less CPU per batch); a lone submit goes at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::inserter::{Insert, Inserter};
use super::{NewRecord, Store, StoreError, WriteSet};

/// Most new batches stored in one transaction.
const MAX_NEW: usize = 4096;

/// Statistics of the writer, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    /// Commits made.
    pub commits: u64,
    /// Outcomes written.
    pub outcomes: u64,
    /// New batches written.
    pub batches: u64,
    /// Time spent committing.
    pub busy: Duration,
    /// Duration of the last commit.
    pub last: Duration,
}

/// What the writer is asked to do.
pub enum Job<T> {
    /// Commit a reactor group, then report it with its token.
    Commit(WriteSet, T),
    /// New batches wait (sent by the [`Inserter`]).
    Wake,
    /// Commit what is queued, then stop (sent as the reactor ends).
    Stop,
}

/// The group-commit thread.
pub struct Writer;

impl Writer {
    /// Starts the writer thread. Each set sent on the returned channel is
    /// committed, then `done` is called with the outcome of the commit; new
    /// batches given to the returned [`Inserter`] join the next commit. The
    /// thread ends, releasing the store, on [`Job::Stop`] (or once every
    /// sender is gone); join it to know the store is free.
    pub fn spawn<T: Send + 'static>(
        store: Store,
        submit_interval: Duration,
        done: impl Fn(Result<T, StoreError>, CommitStats) + Send + 'static,
    ) -> (mpsc::Sender<Job<T>>, std::thread::JoinHandle<()>, Inserter) {
        let (tx, rx) = mpsc::channel::<Job<T>>();
        let (new_tx, new_rx) = mpsc::channel::<Insert>();
        let wake = tx.clone();
        // Set while the writer waits for work: only then does a new batch wake it.
        let idle = Arc::new(AtomicBool::new(false));
        let asleep = idle.clone();
        let inserter = Inserter::new(
            new_tx,
            move || {
                if asleep.swap(false, Ordering::SeqCst) {
                    let _ = wake.send(Job::Wake);
                }
            },
            store.failure_record(),
        );
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let mut stats = CommitStats::default();
                let mut last_start: Option<Instant> = None;
                while let Some((first, carried)) = wait_for_work(&rx, &new_rx, &idle) {
                    let due = last_start.map(|s| s + submit_interval);
                    let Group { sets, new, stop } = gather(first, carried, &rx, &new_rx, due);
                    if !new.is_empty() || !sets.is_empty() {
                        let start = Instant::now();
                        last_start = Some(start);
                        // After a failed commit the store refuses every write at once
                        // with the first cause (the reactor stops; a submit still
                        // hears why).
                        commit(&store, sets, new, &mut stats, &done);
                        stats.last = start.elapsed();
                        stats.busy += stats.last;
                    }
                    if stop {
                        break;
                    }
                }
            })
            .expect("spawn store writer");
        (tx, thread, inserter)
    }
}

/// Blocks until there is work: a job, or a new batch (given back beside a
/// [`Job::Wake`]). New batches wake the writer only while it waits here
/// (`idle` set), not once per batch while it commits or waits out the submit
/// interval.
fn wait_for_work<T>(
    rx: &mpsc::Receiver<Job<T>>,
    new_rx: &mpsc::Receiver<Insert>,
    idle: &AtomicBool,
) -> Option<(Job<T>, Option<Insert>)> {
    idle.store(true, Ordering::SeqCst);
    // A batch queued before the flag was set sent no wake: look once more
    // (the fence orders the flag before the look, as the inserter's swap
    // orders its batch before the flag).
    std::sync::atomic::fence(Ordering::SeqCst);
    if let Ok(insert) = new_rx.try_recv() {
        idle.store(false, Ordering::SeqCst);
        return Some((Job::Wake, Some(insert)));
    }
    let job = rx.recv().ok();
    idle.store(false, Ordering::SeqCst);
    job.map(|job| (job, None))
}

/// What one commit stores.
struct Group<T> {
    sets: Vec<(WriteSet, T)>,
    new: Vec<Insert>,
    /// A stop was asked for: this is the last commit.
    stop: bool,
}

/// The jobs and new batches of the next commit, from `first` on. New batches
/// alone wait until `due` (the last commit's start and the submit interval)
/// for more to join them, so that many submits share one fsync; a reactor
/// group, a stop or a full group goes at once.
fn gather<T>(
    first: Job<T>,
    carried: Option<Insert>,
    rx: &mpsc::Receiver<Job<T>>,
    new_rx: &mpsc::Receiver<Insert>,
    due: Option<Instant>,
) -> Group<T> {
    let mut group = Group {
        sets: Vec::new(),
        new: carried.into_iter().collect(),
        stop: false,
    };
    let mut next = Some(first);
    loop {
        for job in next.take().into_iter().chain(rx.try_iter()) {
            match job {
                Job::Commit(set, token) => group.sets.push((set, token)),
                Job::Wake => {}
                Job::Stop => group.stop = true,
            }
        }
        let room = MAX_NEW - group.new.len();
        group.new.extend(new_rx.try_iter().take(room));
        let now = Instant::now();
        let wait = match due {
            Some(due) if due > now => due - now,
            _ => return group,
        };
        if group.stop || !group.sets.is_empty() || group.new.len() >= MAX_NEW {
            return group;
        }
        match rx.recv_timeout(wait) {
            Ok(job) => next = Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => group.stop = true,
        }
    }
}

/// Commits `sets` and `new` in one transaction and answers each.
fn commit<T>(
    store: &Store,
    sets: Vec<(WriteSet, T)>,
    new: Vec<Insert>,
    stats: &mut CommitStats,
    done: &impl Fn(Result<T, StoreError>, CommitStats),
) {
    let set_refs: Vec<&WriteSet> = sets.iter().map(|(s, _)| s).collect();
    let items: Vec<NewRecord<'_>> = new
        .iter()
        .map(|i| NewRecord {
            batch: &i.batch,
            key: i.key.as_deref(),
            list: i.list.as_deref(),
        })
        .collect();
    let r = store.commit_group(&set_refs, &items);
    stats.commits += 1;
    stats.outcomes += sets
        .iter()
        .map(|(s, _)| s.outcomes.len() as u64)
        .sum::<u64>();
    stats.batches += new.len() as u64;
    match r {
        Ok(results) => {
            for (insert, r) in new.into_iter().zip(results) {
                match (r, insert.then) {
                    (Ok(()), Some(then)) => then(),
                    (r, _) => drop(insert.reply.send(Ok(r))),
                }
            }
            for (_, token) in sets {
                done(Ok(token), *stats);
            }
        }
        Err(e) => {
            // The first to hear gets the cause itself, the others its text.
            let earlier = e.to_string();
            let mut first = Some(e);
            let mut next = || {
                first.take().unwrap_or_else(|| StoreError::Failed {
                    path: store.path.clone(),
                    earlier: earlier.clone(),
                })
            };
            for (_, token) in sets {
                drop(token);
                done(Err(next()), *stats);
            }
            for insert in new {
                let _ = insert.reply.send(Err(next()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new batch to store (its answer is not awaited here).
    fn insert() -> Insert {
        Insert {
            batch: Default::default(),
            key: None,
            list: None,
            reply: tokio::sync::oneshot::channel().0,
            then: None,
        }
    }

    type Channels = (
        mpsc::Sender<Job<()>>,
        mpsc::Receiver<Job<()>>,
        mpsc::Sender<Insert>,
        mpsc::Receiver<Insert>,
    );

    fn channels() -> Channels {
        let (tx, rx) = mpsc::channel();
        let (new_tx, new_rx) = mpsc::channel();
        (tx, rx, new_tx, new_rx)
    }

    #[test]
    fn a_lone_submit_after_the_interval_goes_at_once() {
        let (_tx, rx, new_tx, new_rx) = channels();
        new_tx.send(insert()).unwrap();
        let g = gather(Job::Wake, None, &rx, &new_rx, None);
        assert_eq!((g.new.len(), g.sets.len(), g.stop), (1, 0, false));
        let past = Instant::now() - Duration::from_millis(5);
        new_tx.send(insert()).unwrap();
        let g = gather(Job::Wake, None, &rx, &new_rx, Some(past));
        assert_eq!(g.new.len(), 1);
    }

    #[test]
    fn submits_within_the_interval_share_one_commit() {
        let (tx, rx, new_tx, new_rx) = channels();
        new_tx.send(insert()).unwrap();
        let interval = Duration::from_millis(50);
        let start = Instant::now();
        let later = std::thread::spawn(move || {
            new_tx.send(insert()).unwrap();
            tx.send(Job::Wake).unwrap();
            tx
        });
        let g = gather(Job::Wake, None, &rx, &new_rx, Some(start + interval));
        assert!(start.elapsed() >= interval, "new batches alone wait");
        let _tx = later.join().unwrap();
        assert_eq!((g.new.len(), g.sets.len()), (2, 0));
    }

    #[test]
    fn a_reactor_group_or_a_stop_ends_the_wait() {
        let (tx, rx, new_tx, new_rx) = channels();
        let far = Instant::now() + Duration::from_secs(600);
        new_tx.send(insert()).unwrap();
        let sender = std::thread::spawn(move || {
            tx.send(Job::Commit(WriteSet::default(), ())).unwrap();
            tx
        });
        let g = gather(Job::Wake, None, &rx, &new_rx, Some(far));
        assert_eq!((g.new.len(), g.sets.len()), (1, 1));
        let tx = sender.join().unwrap();
        new_tx.send(insert()).unwrap();
        let g = gather(Job::Stop, None, &rx, &new_rx, Some(far));
        assert_eq!((g.new.len(), g.stop), (1, true));
        drop(tx);
        let g = gather(Job::Wake, None, &rx, &new_rx, Some(far));
        assert!(g.stop, "every sender gone: the writer stops");
    }
}

/// The writer thread on a real store, with inserts from many threads.
#[cfg(test)]
mod stored {
    use super::*;
    use crate::store::StoredBatch;

    /// Every insert is answered, whether it came while the writer waited,
    /// committed or waited out the interval: no wake is lost.
    #[test]
    fn every_insert_from_many_threads_is_stored_and_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let (tx, thread, inserter) =
            Writer::spawn::<()>(store, Duration::from_millis(1), |_, _| {});
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (threads, each) = (8u64, 250u64);
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let inserter = inserter.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    for i in 0..each {
                        let batch = StoredBatch {
                            id: 1 + t * each + i,
                            total: 1,
                            max_attempts: 3,
                            synthetic_seed: Some(7),
                            accepted_unix_ms: 1,
                            tenant: "t".into(),
                            ..StoredBatch::default()
                        };
                        let answer = rt.block_on(inserter.insert(batch, None, None));
                        assert!(matches!(answer, Ok(Ok(()))), "{answer:?}");
                    }
                })
            })
            .collect();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), async {
                for w in workers {
                    tokio::task::spawn_blocking(move || w.join().unwrap())
                        .await
                        .unwrap();
                }
            })
            .await
            .expect("every insert answered within a minute");
        });
        tx.send(Job::Stop).unwrap();
        thread.join().unwrap();
        let loaded = Store::open(dir.path(), false).unwrap().load().unwrap();
        let mut ids: Vec<u64> = loaded.batches.iter().map(|b| b.batch.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=threads * each).collect::<Vec<_>>());
    }
}
