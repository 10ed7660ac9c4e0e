//! The group-commit writer: one thread that commits each [`WriteSet`] it is
//! given in one transaction, and reports back.

use std::time::{Duration, Instant};

use super::{Store, StoreError, WriteSet};

/// Statistics of the writer, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    /// Commits made.
    pub commits: u64,
    /// Outcomes written.
    pub outcomes: u64,
    /// Time spent committing.
    pub busy: Duration,
    /// Duration of the last commit.
    pub last: Duration,
}

/// The group-commit thread: takes a [`WriteSet`], commits it, reports back.
pub struct Writer;

impl Writer {
    /// Starts the writer thread. Each set sent on the returned channel is
    /// committed, then `done` is called with the outcome of the commit. The
    /// thread ends, releasing the store, once the channel is dropped; join it
    /// to know the store is free (for a restart in the same process).
    pub fn spawn<T: Send + 'static>(
        store: Store,
        done: impl Fn(Result<T, StoreError>, CommitStats) + Send + 'static,
    ) -> (
        std::sync::mpsc::Sender<(WriteSet, T)>,
        std::thread::JoinHandle<()>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel::<(WriteSet, T)>();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let mut stats = CommitStats::default();
                for (set, token) in rx {
                    let start = Instant::now();
                    let r = store.commit(&set);
                    stats.commits += 1;
                    stats.outcomes += set.outcomes.len() as u64;
                    stats.last = start.elapsed();
                    stats.busy += stats.last;
                    let failed = r.is_err();
                    done(r.map(|()| token), stats);
                    if failed {
                        // After a failed commit the engine cannot be trusted: commit nothing more.
                        break;
                    }
                }
            })
            .expect("spawn store writer");
        (tx, thread)
    }
}
