//! New batches on their way into the store: SubmitBatch hands each one to
//! the writer thread, which stores every batch submitted while its last
//! commit ran in its next transaction (with the reactor's group, one fsync
//! for all), and answers each submit once its batch is stored, or hands a
//! stored batch on itself (to the reactor) so that its submit is woken once.

use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use super::{Existing, StoreError, StoredBatch};
use crate::batch::Recipients;

/// What one insert gets back: stored, or the batch its key made before.
pub(super) type Answer = Result<Result<(), Existing>, StoreError>;

/// One batch to store, and where its answer goes.
pub(super) struct Insert {
    pub(super) batch: StoredBatch,
    pub(super) key: Option<String>,
    pub(super) list: Option<Arc<Recipients>>,
    pub(super) reply: oneshot::Sender<Answer>,
    /// Run by the writer once the batch is stored, instead of answering.
    pub(super) then: Option<Then>,
}

/// What the writer does with a batch it stored (see [`Inserter::insert_then`]).
pub(super) type Then = Box<dyn FnOnce() + Send>;

/// Where new batches go to be stored (see [`super::Writer::spawn`]).
#[derive(Clone)]
pub struct Inserter {
    tx: mpsc::Sender<Insert>,
    wake: Arc<dyn Fn() + Send + Sync>,
    /// The store's path and its first failed write, if any.
    failure: (std::path::PathBuf, Arc<std::sync::OnceLock<String>>),
}

impl Inserter {
    pub(super) fn new(
        tx: mpsc::Sender<Insert>,
        wake: impl Fn() + Send + Sync + 'static,
        failure: (std::path::PathBuf, Arc<std::sync::OnceLock<String>>),
    ) -> Self {
        Inserter {
            tx,
            wake: Arc::new(wake),
            failure,
        }
    }

    /// Why the writer is gone: the write that failed (a full disk, say),
    /// else a shutdown.
    fn stopped(&self) -> StoreError {
        match self.failure.1.get() {
            Some(earlier) => StoreError::Failed {
                path: self.failure.0.clone(),
                earlier: earlier.clone(),
            },
            None => StoreError::Stopped,
        }
    }

    /// Stores `batch` with its idempotency key `key` (and the recipients
    /// of a list batch), in the next commit.
    pub async fn insert(
        &self,
        batch: StoredBatch,
        key: Option<String>,
        list: Option<Arc<Recipients>>,
    ) -> Answer {
        let answer = self.queue(batch, key, list, None);
        self.answer(answer).await
    }

    /// As [`insert`](Self::insert), but once the batch is stored the writer
    /// runs `then` and answers nothing: the caller hears from whomever
    /// `then` hands the batch to. The answer returned is given only when the
    /// batch was not stored (its key made another, or the store failed);
    /// await it only once that other answer fails to come.
    pub fn insert_then<F: FnOnce() + Send + 'static>(
        &self,
        batch: StoredBatch,
        key: Option<String>,
        list: Option<Arc<Recipients>>,
        then: F,
    ) -> impl Future<Output = Answer> + use<F> {
        let answer = self.queue(batch, key, list, Some(Box::new(then)));
        let this = self.clone();
        async move { this.answer(answer).await }
    }

    /// Queues one insert for the next commit, waking the writer if it waits.
    fn queue(
        &self,
        batch: StoredBatch,
        key: Option<String>,
        list: Option<Arc<Recipients>>,
        then: Option<Then>,
    ) -> Result<oneshot::Receiver<Answer>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Insert {
                batch,
                key,
                list,
                reply,
                then,
            })
            .map_err(|_| self.stopped())?;
        (self.wake)();
        Ok(answer)
    }

    async fn answer(&self, answer: Result<oneshot::Receiver<Answer>, StoreError>) -> Answer {
        answer?.await.map_err(|_| self.stopped())?
    }
}

impl std::fmt::Debug for Inserter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inserter").finish_non_exhaustive()
    }
}
