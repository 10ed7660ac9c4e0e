//! The group-commit writer: one thread that commits each [`WriteSet`] the
//! reactor gives it, together with every new batch submitted meanwhile (see
//! [`Inserter`]), in one transaction, and reports back.

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
                while let Ok(first) = rx.recv() {
                    let mut sets = Vec::new();
                    let mut stop = false;
                    for job in std::iter::once(first).chain(rx.try_iter()) {
                        match job {
                            Job::Commit(set, token) => sets.push((set, token)),
                            Job::Wake => {}
                            Job::Stop => stop = true,
                        }
                    }
                    let new: Vec<Insert> = new_rx.try_iter().take(MAX_NEW).collect();
                    if !new.is_empty() || !sets.is_empty() {
                        let start = Instant::now();
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
