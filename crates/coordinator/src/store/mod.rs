//! The coordinator's durable state: in an embedded [redb] database (the
//! default), or in PostgreSQL ([`pg`]) for a coordinator with standbys.
//!
//! redb is a pure-Rust, ACID, copy-on-write B-tree store with checksummed
//! pages: a commit is atomic, and a crash at any moment leaves the last
//! committed state. Tables:
//!
//! - `batches`: batch id → [`StoredBatch`] (content, settings, state, high-water mark).
//! - `batch_state`: batch id → [`StoredBatchState`] (cancelled, dispatch
//!   reservation, re-send counters), rewritten at group commits.
//! - `outcomes`: (batch id, chunk) → 4 bytes per message for 4,096 messages:
//!   final state ([`FinalState`], 0 for none yet), attempts, node index + 1
//!   (u16 LE). One row per chunk, not per message, so a group commit of
//!   thousands of outcomes rewrites a few rows.
//! - `errors`: (batch id, index) → last error text, for final failures only.
//! - `recipients`: (batch id, row) → the packed numbers of a list batch, 65,536 per row.
//! - `client_refs`: (batch id, row) → their client references, when any was given.
//! - `idempotency`: key → batch id.
//! - `nodes`: node index → node name (so outcomes name their node after a restart).
//! - `receipt_waits`: (batch id, index) → a sent message's provider ids
//!   while it waits for delivery receipts; `delivery_rows`: (batch id, row)
//!   → what decided the delivery of 64 messages ([`receipts`]);
//!   `early_receipts`: (provider, provider id) → a receipt that came before
//!   the result naming its id ([`early`]).
//! - `callbacks`: sequence number → a row of callback events waiting to be
//!   delivered to a client's URL ([`callbacks`]).
//!
//! This module owns these formats: the rest of the coordinator sees decoded
//! values ([`LoadedBatch::outcomes`]), never rows or stored bytes.
//!
//! Outcomes reach the store through the [`Writer`] thread in group commits.
//! The reactor acks a node's results only after the commit holding them, so
//! a result is always either durable or still held by its node.

mod callbacks;
mod early;
mod format;
mod inserter;
mod load;
pub mod pg;
mod reads;
mod receipts;
mod writer;
mod writes;

pub use callbacks::{CallbackEvent, CallbackRow};
pub use early::StoredEarly;
pub use format::{FinalState, StoredBatch, StoredBatchState, StoredOutcome};
pub use inserter::Inserter;
pub use reads::StoredMessage;
pub use receipts::{DeliveryState, DeliveryTally, ReceiptWrite, Rows, StoredDelivery, StoredWait};
pub use writer::{CommitStats, Job, Writer};

/// The batch an idempotency key already made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Existing {
    /// Its id.
    pub id: u64,
    /// The fingerprint of the request that made it (0: unknown).
    pub fingerprint: u64,
}

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, TableDefinition};

const BATCHES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("batches");
const OUTCOMES: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("outcomes");
const ERRORS: TableDefinition<'_, (u64, u32), &str> = TableDefinition::new("errors");
const IDEMPOTENCY: TableDefinition<'_, &str, u64> = TableDefinition::new("idempotency");
const NODES: TableDefinition<'_, u16, &str> = TableDefinition::new("nodes");
/// The store's file in the data dir.
const FILE: &str = "smsmesh.redb";
const BATCH_STATE: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("batch_state");
const RECIPIENTS: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("recipients");
const CLIENT_REFS: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("client_refs");

/// A new batch to store: its record, the idempotency key that makes it (if
/// any) and, for a list batch, its recipients.
#[derive(Clone, Copy, Debug)]
pub struct NewRecord<'a> {
    /// The batch as accepted.
    pub batch: &'a StoredBatch,
    /// Its idempotency key, as stored.
    pub key: Option<&'a str>,
    /// The recipients of a list batch.
    pub list: Option<&'a crate::batch::Recipients>,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or used.
    #[error("store {path}: {source}")]
    Db {
        /// Database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The disk holding the store is full.
    #[error("store {path}: the disk is full ({source}); free space, then restart smscoord")]
    DiskFull {
        /// Database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An earlier write failed: the store takes no more until the process restarts.
    #[error("store {path}: {earlier}; it takes no more writes until smscoord restarts")]
    Failed {
        /// Database file.
        path: PathBuf,
        /// What the failed write said.
        earlier: String,
    },
    /// A stored record could not be decoded.
    #[error("store {path}: corrupt record: {what}")]
    Corrupt {
        /// Database file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// Another coordinator took the lead: this one may write no more.
    #[error(
        "this coordinator lost the lead: it wrote under epoch {epoch}, the database is now at epoch {now} (held by {holder:?})"
    )]
    Deposed {
        /// The epoch this coordinator led under.
        epoch: i64,
        /// The database's epoch.
        now: i64,
        /// Who holds it.
        holder: String,
    },
    /// The store's thread has stopped (the coordinator is shutting down).
    #[error("the store is closed: the coordinator is shutting down")]
    Stopped,
}

/// A message's final outcome, to be stored.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Batch id.
    pub batch: u64,
    /// Message index.
    pub index: u32,
    /// Its final state.
    pub state: FinalState,
    /// Attempts made.
    pub attempts: u8,
    /// Node index + 1, or 0.
    pub node: u16,
    /// When it became final: ms after its batch's acceptance (0: not known).
    pub final_ms: u32,
    /// Last error, for final failures.
    pub error: Option<String>,
}

impl StoreError {
    /// The error of a failed engine call on the store at `path`: [`StoreError::DiskFull`]
    /// when the cause is a full disk.
    fn new(path: PathBuf, source: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
        if disk_full(&*source) {
            StoreError::DiskFull { path, source }
        } else {
            StoreError::Db { path, source }
        }
    }

    /// Whether the disk holding the store is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

/// Whether `e`, or an error it wraps, is a full disk (ENOSPC, or a file-size limit).
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let full = |io: &std::io::Error| {
        matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::FileTooLarge
        )
    };
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().is_some_and(full) {
            return true;
        }
        if let Some(redb::StorageError::Io(io)) = e.downcast_ref::<redb::StorageError>()
            && full(io)
        {
            return true;
        }
        // redb's own error types do not all expose their cause: its text says it.
        let text = e.to_string();
        if text.contains("(os error 28)") || text.contains("(os error 27)") {
            return true;
        }
        next = e.source();
    }
    false
}

/// One group of changes, committed in one transaction.
#[derive(Debug, Default)]
pub struct WriteSet {
    /// Final outcomes.
    pub outcomes: Vec<Outcome>,
    /// New node names.
    pub nodes: Vec<(u16, String)>,
    /// Batch states to rewrite (cancel, high-water marks, re-sends).
    pub batches: Vec<StoredBatchState>,
    /// Batches past their retention, to remove with everything about them
    /// (and the idempotency key that made each, if any).
    pub deleted: Vec<(u64, Option<String>)>,
    /// Receipt waits, decided deliveries and early receipts.
    pub receipts: Vec<ReceiptWrite>,
    /// New rows of callback events, numbered.
    pub callbacks: Vec<(u64, Arc<CallbackRow>)>,
    /// Rows of callback events delivered (or given up), to remove.
    pub callbacks_done: Vec<u64>,
}

impl WriteSet {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
            && self.nodes.is_empty()
            && self.batches.is_empty()
            && self.deleted.is_empty()
            && self.receipts.is_empty()
            && self.callbacks.is_empty()
            && self.callbacks_done.is_empty()
    }
}

/// One stored batch with everything about it.
#[derive(Debug)]
pub struct LoadedBatch {
    /// The batch as accepted.
    pub batch: StoredBatch,
    /// Its changing state.
    pub state: StoredBatchState,
    /// Its outcome rows, checked at load: (chunk number, bytes).
    chunks: Vec<(u32, Vec<u8>)>,
    /// Last errors of final failures: (index, text).
    pub errors: Vec<(u32, String)>,
    /// The recipients of a list batch, checked at load.
    pub list: Option<crate::batch::Recipients>,
    /// See [`LoadedBatch::completed`]: worked out once, at load.
    completed: bool,
}

/// Everything stored, as loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Batches.
    pub batches: Vec<LoadedBatch>,
    /// Idempotency keys.
    pub idempotency: Vec<(String, u64)>,
    /// Node names by index.
    pub nodes: Vec<(u16, String)>,
    /// Sent messages waiting for receipts.
    pub receipt_waits: Rows<StoredWait>,
    /// Messages whose delivery is decided, of the batches not completed
    /// (those the core keeps whole), each its state and its [`StoredDelivery`]
    /// record as stored; a completed batch's are read when asked for.
    pub deliveries: Rows<(DeliveryState, Arc<[u8]>)>,
    /// Receipts that came before the result naming their id.
    pub early_receipts: Vec<StoredEarly>,
    /// How many messages of each batch ended in each delivery state (every
    /// batch with a decided delivery).
    pub delivery_tallies: Vec<(u64, DeliveryTally)>,
    /// The number after the highest stored callback row (0 or 1: none).
    pub callback_next: u64,
}

/// The open store.
#[derive(Clone)]
pub struct Store {
    engine: Arc<Engine>,
    path: PathBuf,
}

/// See [`Store::reader`].
#[derive(Clone, Debug)]
pub struct StoreReader {
    engine: std::sync::Weak<Engine>,
    path: PathBuf,
}

impl StoreReader {
    /// The store, if it is still open.
    pub fn store(&self) -> Option<Store> {
        Some(Store {
            engine: self.engine.upgrade()?,
            path: self.path.clone(),
        })
    }
}

/// Where the store's rows live.
pub(super) enum Backend {
    /// The embedded store, in one file of the data dir.
    Redb(Database),
    /// A PostgreSQL database, written only by its current leader (see [`pg`]).
    Postgres(Box<pg::Pg>),
}

/// The database, and whether a write to it failed.
struct Engine {
    /// Always `Some` but while dropping.
    db: Option<Backend>,
    /// The first write that failed, if any: after it the engine is not trusted.
    /// Shared with the [`Inserter`], whose submits still hear it once the
    /// writer thread has stopped.
    failure: Arc<std::sync::OnceLock<String>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // After a failed write the engine's own state may be poisoned, and closing it
        // would panic: leave it to the OS (its last commit is on disk either way).
        if self.failure.get().is_some()
            && let Some(Backend::Redb(db)) = self.db.take()
        {
            std::mem::forget(db);
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. Fails, never starts afresh, if an
    /// existing store cannot be read.
    ///
    /// A new store is made only in a data dir that is missing or empty, or
    /// when `create` says so: an empty store file, or a data dir that holds
    /// other files but no store, is where a store was expected, and starting
    /// afresh there would forget every batch. An existing store's pages are
    /// checked against their checksums before it is used.
    pub fn open(dir: &Path, create: bool) -> Result<Store, StoreError> {
        Store::open_with_cache(dir, create, 64)
    }

    /// [`Store::open`], with the engine's page cache at `cache_mib` MiB.
    pub fn open_with_cache(dir: &Path, create: bool, cache_mib: u64) -> Result<Store, StoreError> {
        let path = dir.join(FILE);
        let err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::new(path.clone(), e);
        let corrupt = |what: String| StoreError::Corrupt {
            path: path.clone(),
            what,
        };
        let existing = match std::fs::metadata(&path) {
            Ok(m) if m.len() == 0 && !create => {
                return Err(corrupt(
                    "the store file is empty (0 bytes); refusing to start afresh over it (--create-store to start a new store)".into(),
                ));
            }
            Ok(m) => m.len() > 0,
            Err(_) => {
                // A fresh ext4 volume holds lost+found: that is no sign of an old store.
                let others = std::fs::read_dir(dir).map_or(0, |d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name() != "lost+found")
                        .count()
                });
                if others > 0 && !create {
                    return Err(corrupt(format!(
                        "no store file, but the data dir {} holds {others} other entries; refusing to start afresh there (--create-store to start a new store)",
                        dir.display()
                    )));
                }
                false
            }
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create data dir {}: {e}", dir.display()).into()))?;
        let cache = usize::try_from(cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        // After a crash the engine repairs the store as it opens it, walking
        // every page and checking its checksum: no need to walk it again.
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = repaired.clone();
        let mut db = Database::builder()
            .set_cache_size(cache)
            .set_repair_callback(move |_| seen.store(true, std::sync::atomic::Ordering::Relaxed))
            .create(&path)
            .map_err(|e| err(e.into()))?;
        let repaired = repaired.load(std::sync::atomic::Ordering::Relaxed);
        if repaired {
            tracing::info!(path = %path.display(), "the store was not closed cleanly; the engine checked every page and repaired it");
        }
        if existing && !repaired {
            match db.check_integrity() {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(path = %path.display(), "the store failed its integrity check and was repaired by the engine")
                }
                Err(e) => return Err(corrupt(format!("its pages fail their checksums: {e}"))),
            }
        }
        Store::init(db, path)
    }

    /// A store in memory, gone when the last clone is dropped: for tests that
    /// drive the core through commits and recoveries without a disk.
    pub fn in_memory() -> Result<Store, StoreError> {
        let path = PathBuf::from("(in memory)");
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Db {
                path: path.clone(),
                source: e.into(),
            })?;
        Store::init(db, path)
    }

    fn init(db: Database, path: PathBuf) -> Result<Store, StoreError> {
        let store = Store {
            engine: Arc::new(Engine {
                db: Some(Backend::Redb(db)),
                failure: Arc::default(),
            }),
            path,
        };
        // Create the tables, and prove the store is writable now rather than at the first batch.
        let txn = store.db().begin_write().map_err(|e| store.err(e))?;
        {
            txn.open_table(BATCHES).map_err(|e| store.err(e))?;
            txn.open_table(OUTCOMES).map_err(|e| store.err(e))?;
            txn.open_table(ERRORS).map_err(|e| store.err(e))?;
            txn.open_table(IDEMPOTENCY).map_err(|e| store.err(e))?;
            txn.open_table(NODES).map_err(|e| store.err(e))?;
            txn.open_table(BATCH_STATE).map_err(|e| store.err(e))?;
            txn.open_table(RECIPIENTS).map_err(|e| store.err(e))?;
            txn.open_table(CLIENT_REFS).map_err(|e| store.err(e))?;
            txn.open_table(receipts::RECEIPT_WAITS)
                .map_err(|e| store.err(e))?;
            txn.open_table(receipts::DELIVERIES)
                .map_err(|e| store.err(e))?;
            txn.open_table(receipts::DELIVERY_ROWS)
                .map_err(|e| store.err(e))?;
            txn.open_table(callbacks::CALLBACKS)
                .map_err(|e| store.err(e))?;
            txn.open_table(early::EARLY_RECEIPTS)
                .map_err(|e| store.err(e))?;
        }
        txn.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// A handle that reads this store while it is open, without keeping it
    /// open: once the writer and the core let go of the store, it closes
    /// (and a coordinator started next on the same data dir can open it).
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            engine: Arc::downgrade(&self.engine),
            path: self.path.clone(),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn backend(&self) -> &Backend {
        self.engine
            .db
            .as_ref()
            .expect("the database is open while a Store exists")
    }

    /// The embedded database (only the embedded store's own code asks).
    fn db(&self) -> &Database {
        match self.backend() {
            Backend::Redb(db) => db,
            Backend::Postgres(_) => unreachable!("an embedded-store call on a PostgreSQL store"),
        }
    }

    /// A store on PostgreSQL: `pg` is the connected database, written under
    /// the leadership it holds.
    pub fn postgres(pg: pg::Pg) -> Store {
        let path = PathBuf::from(pg.describe());
        Store {
            engine: Arc::new(Engine {
                db: Some(Backend::Postgres(Box::new(pg))),
                failure: Arc::default(),
            }),
            path,
        }
    }

    /// Its path and the record of its first failed write.
    pub(super) fn failure_record(&self) -> (PathBuf, Arc<std::sync::OnceLock<String>>) {
        (self.path.clone(), self.engine.failure.clone())
    }

    /// Runs a write, unless an earlier one failed; a failure is remembered.
    fn write<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        if let Some(earlier) = self.engine.failure.get() {
            return Err(StoreError::Failed {
                path: self.path.clone(),
                earlier: earlier.clone(),
            });
        }
        // The engine may panic after an I/O error (a full disk): that is a failed
        // write like any other, never a dead thread or task.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|panic| Err(self.panicked(panic)))
            .inspect_err(|e| {
                let _ = self.engine.failure.set(e.to_string());
            })
    }

    /// The error of an engine call that panicked. The engine says nothing of
    /// the I/O error behind such a panic, so a small probe write next to the
    /// store tells whether the disk is full.
    fn panicked(&self, panic: Box<dyn std::any::Any + Send>) -> StoreError {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let source = format!("the store engine failed: {what}").into();
        let probe = self.path.with_extension("space-probe");
        let full = std::fs::write(&probe, [0u8; 64 * 1024])
            .and_then(|()| std::fs::File::open(&probe)?.sync_all())
            .is_err_and(|e| disk_full(&e));
        let _ = std::fs::remove_file(&probe);
        let path = self.path.clone();
        if full {
            StoreError::DiskFull { path, source }
        } else {
            StoreError::Db { path, source }
        }
    }

    fn err(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError::new(self.path.clone(), e.into())
    }
}

#[cfg(test)]
mod tests;
