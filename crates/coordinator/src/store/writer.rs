//! The group-commit writer: one thread that commits each [`WriteSet`] the
//! reactor gives it, together with every new batch submitted meanwhile (see
//! [`Inserter`]), in one transaction, and reports back.
//!
//! New batches alone begin a commit no sooner than the submit interval after
//! the last one began: under many submits each fsync serves more of them
//! (fewer, larger commits, less CPU per batch); a lone submit goes at once.

use std::sync::mpsc;
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
        let inserter = Inserter::new(
            new_tx,
            move || {
                let _ = wake.send(Job::Wake);
            },
            store.failure_record(),
        );
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let mut stats = CommitStats::default();
                let mut last_start: Option<Instant> = None;
                while let Ok(first) = rx.recv() {
                    let due = last_start.map(|s| s + submit_interval);
                    let Group { sets, new, stop } = gather(first, &rx, &new_rx, due);
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
    rx: &mpsc::Receiver<Job<T>>,
    new_rx: &mpsc::Receiver<Insert>,
    due: Option<Instant>,
) -> Group<T> {
    let mut group = Group {
        sets: Vec::new(),
        new: Vec::new(),
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
                let _ = insert.reply.send(Ok(r));
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
        let g = gather(Job::Wake, &rx, &new_rx, None);
        assert_eq!((g.new.len(), g.sets.len(), g.stop), (1, 0, false));
        let past = Instant::now() - Duration::from_millis(5);
        new_tx.send(insert()).unwrap();
        let g = gather(Job::Wake, &rx, &new_rx, Some(past));
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
        let g = gather(Job::Wake, &rx, &new_rx, Some(start + interval));
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
        let g = gather(Job::Wake, &rx, &new_rx, Some(far));
        assert_eq!((g.new.len(), g.sets.len()), (1, 1));
        let tx = sender.join().unwrap();
        new_tx.send(insert()).unwrap();
        let g = gather(Job::Stop, &rx, &new_rx, Some(far));
        assert_eq!((g.new.len(), g.stop), (1, true));
        drop(tx);
        let g = gather(Job::Wake, &rx, &new_rx, Some(far));
        assert!(g.stop, "every sender gone: the writer stops");
    }
}
