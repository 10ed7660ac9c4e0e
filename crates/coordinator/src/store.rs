//! The coordinator's durable state, in an embedded [redb] database.
//!
//! redb is a pure-Rust, ACID, copy-on-write B-tree store with checksummed
//! pages: a commit is atomic, and a crash at any moment leaves the last
//! committed state. Tables:
//!
//! - `batches`: batch id → [`StoredBatch`] (content, settings, state, high-water mark).
//! - `outcomes`: (batch id, chunk) → 4 bytes per message for [`CHUNK`] messages:
//!   final state, attempts, node index (u16 LE). One row per chunk, not per
//!   message, so a group commit of thousands of outcomes rewrites a few rows.
//! - `errors`: (batch id, index) → last error text, for final failures only.
//! - `idempotency`: key → batch id.
//! - `nodes`: node index → node name (so outcomes name their node after a restart).
//!
//! Outcomes reach the store through the [`Writer`] thread in group commits.
//! The reactor acks a node's results only after the commit holding them, so
//! a result is always either durable or still held by its node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};
use smsmesh::pb;

/// Messages per outcome row.
pub const CHUNK: u32 = 4096;
/// Bytes per message in an outcome row.
const SLOT_BYTES: usize = 4;

const BATCHES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("batches");
const OUTCOMES: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("outcomes");
const ERRORS: TableDefinition<'_, (u64, u32), &str> = TableDefinition::new("errors");
const IDEMPOTENCY: TableDefinition<'_, &str, u64> = TableDefinition::new("idempotency");
const NODES: TableDefinition<'_, u16, &str> = TableDefinition::new("nodes");
const BATCH_STATE: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("batch_state");

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
    /// A stored record could not be decoded.
    #[error("store {path}: corrupt record: {what}")]
    Corrupt {
        /// Database file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

/// A batch as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredBatch {
    /// Batch id.
    #[prost(fixed64, tag = "1")]
    pub id: u64,
    /// Messages in the batch.
    #[prost(uint32, tag = "2")]
    pub total: u32,
    /// Attempts per message.
    #[prost(uint32, tag = "3")]
    pub max_attempts: u32,
    /// Explicit messages (empty for a synthetic batch).
    #[prost(message, repeated, tag = "4")]
    pub messages: Vec<pb::SmsMessage>,
    /// Seed of a synthetic batch.
    #[prost(uint64, optional, tag = "5")]
    pub synthetic_seed: Option<u64>,
    /// Fixed body of a synthetic batch.
    #[prost(string, optional, tag = "6")]
    pub synthetic_body: Option<String>,
    /// Unix time of acceptance, milliseconds.
    #[prost(uint64, tag = "9")]
    pub accepted_unix_ms: u64,
    /// The tenant that owns it ("" for the default tenant, and batches stored before tenants).
    #[prost(string, tag = "10")]
    pub tenant: String,
}

/// The small, changing part of a stored batch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredBatchState {
    /// Batch id.
    #[prost(fixed64, tag = "1")]
    pub id: u64,
    /// Set once the batch was cancelled.
    #[prost(bool, tag = "2")]
    pub cancelled: bool,
    /// Every index below this may have been dispatched (recorded at each commit).
    #[prost(uint32, tag = "3")]
    pub dispatched: u32,
    /// Messages dispatched again after restarts because they may have been sent already.
    #[prost(uint64, tag = "4")]
    pub resent: u64,
    /// Jobs put back because their node was lost.
    #[prost(uint64, tag = "5")]
    pub requeued: u64,
    /// Results for messages that already had a final outcome.
    #[prost(uint64, tag = "6")]
    pub duplicates: u64,
}

/// A message's final outcome, to be stored.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Batch id.
    pub batch: u64,
    /// Message index.
    pub index: u32,
    /// Final slot state (see [`crate::batch`]'s `ST_*`).
    pub state: u8,
    /// Attempts made.
    pub attempts: u8,
    /// Node index + 1, or 0.
    pub node: u16,
    /// Last error, for final failures.
    pub error: Option<String>,
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
}

impl WriteSet {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty() && self.nodes.is_empty() && self.batches.is_empty()
    }
}

/// One stored batch with everything about it.
#[derive(Debug)]
pub struct LoadedBatch {
    /// The batch as accepted.
    pub batch: StoredBatch,
    /// Its changing state.
    pub state: StoredBatchState,
    /// Its outcome rows: (chunk number, bytes).
    pub chunks: Vec<(u32, Vec<u8>)>,
    /// Last errors of final failures: (index, text).
    pub errors: Vec<(u32, String)>,
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
}

/// The open store.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in `dir`. Fails, never starts afresh, if an
    /// existing store cannot be read.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("smsmesh.redb");
        let err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Db {
            path: path.clone(),
            source: e,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create data dir {}: {e}", dir.display()).into()))?;
        let db = Database::create(&path).map_err(|e| err(e.into()))?;
        let store = Store {
            db: Arc::new(db),
            path,
        };
        // Create the tables, and prove the store is writable now rather than at the first batch.
        let txn = store.db.begin_write().map_err(|e| store.err(e))?;
        {
            txn.open_table(BATCHES).map_err(|e| store.err(e))?;
            txn.open_table(OUTCOMES).map_err(|e| store.err(e))?;
            txn.open_table(ERRORS).map_err(|e| store.err(e))?;
            txn.open_table(IDEMPOTENCY).map_err(|e| store.err(e))?;
            txn.open_table(NODES).map_err(|e| store.err(e))?;
            txn.open_table(BATCH_STATE).map_err(|e| store.err(e))?;
        }
        txn.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// Loads everything.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let batches_t = txn.open_table(BATCHES).map_err(|e| self.err(e))?;
        let outcomes_t = txn.open_table(OUTCOMES).map_err(|e| self.err(e))?;
        let errors_t = txn.open_table(ERRORS).map_err(|e| self.err(e))?;
        let state_t = txn.open_table(BATCH_STATE).map_err(|e| self.err(e))?;
        let mut loaded = Loaded::default();
        for row in batches_t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let b = StoredBatch::decode(v.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("batch {:016x}: {e}", k.value()),
            })?;
            let mut chunks = Vec::new();
            for row in outcomes_t
                .range((b.id, 0)..=(b.id, u32::MAX))
                .map_err(|e| self.err(e))?
            {
                let (k, v) = row.map_err(|e| self.err(e))?;
                chunks.push((k.value().1, v.value().to_vec()));
            }
            let mut errors = Vec::new();
            for row in errors_t
                .range((b.id, 0)..=(b.id, u32::MAX))
                .map_err(|e| self.err(e))?
            {
                let (k, v) = row.map_err(|e| self.err(e))?;
                errors.push((k.value().1, v.value().to_string()));
            }
            let state = match state_t.get(b.id).map_err(|e| self.err(e))? {
                Some(v) => {
                    StoredBatchState::decode(v.value()).map_err(|e| StoreError::Corrupt {
                        path: self.path.clone(),
                        what: format!("state of batch {:016x}: {e}", b.id),
                    })?
                }
                None => StoredBatchState {
                    id: b.id,
                    ..Default::default()
                },
            };
            loaded.batches.push(LoadedBatch {
                batch: b,
                state,
                chunks,
                errors,
            });
        }
        for row in txn
            .open_table(IDEMPOTENCY)
            .map_err(|e| self.err(e))?
            .iter()
            .map_err(|e| self.err(e))?
        {
            let (k, v) = row.map_err(|e| self.err(e))?;
            loaded.idempotency.push((k.value().to_string(), v.value()));
        }
        for row in txn
            .open_table(NODES)
            .map_err(|e| self.err(e))?
            .iter()
            .map_err(|e| self.err(e))?
        {
            let (k, v) = row.map_err(|e| self.err(e))?;
            loaded.nodes.push((k.value(), v.value().to_string()));
        }
        Ok(loaded)
    }

    /// Stores a new batch, durably. With an idempotency key already used,
    /// stores nothing and returns the earlier batch's id instead.
    pub fn insert_batch(
        &self,
        batch: &StoredBatch,
        key: Option<&str>,
    ) -> Result<Result<(), u64>, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            if let Some(key) = key {
                let mut keys = txn.open_table(IDEMPOTENCY).map_err(|e| self.err(e))?;
                if let Some(id) = keys.get(key).map_err(|e| self.err(e))? {
                    return Ok(Err(id.value()));
                }
                keys.insert(key, batch.id).map_err(|e| self.err(e))?;
            }
            let mut batches = txn.open_table(BATCHES).map_err(|e| self.err(e))?;
            batches
                .insert(batch.id, batch.encode_to_vec().as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(Ok(()))
    }

    /// Commits one group of changes in one transaction.
    pub fn commit(&self, set: &WriteSet) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut outcomes = txn.open_table(OUTCOMES).map_err(|e| self.err(e))?;
            let mut errors = txn.open_table(ERRORS).map_err(|e| self.err(e))?;
            // Group by row so each row is read and written once.
            let mut rows: BTreeMap<(u64, u32), Vec<&Outcome>> = BTreeMap::new();
            for o in &set.outcomes {
                rows.entry((o.batch, o.index / CHUNK)).or_default().push(o);
            }
            for (key, list) in rows {
                let mut row = match outcomes.get(key).map_err(|e| self.err(e))? {
                    Some(v) => v.value().to_vec(),
                    None => vec![0u8; CHUNK as usize * SLOT_BYTES],
                };
                for o in list {
                    let at = (o.index % CHUNK) as usize * SLOT_BYTES;
                    row[at] = o.state;
                    row[at + 1] = o.attempts;
                    row[at + 2..at + 4].copy_from_slice(&o.node.to_le_bytes());
                    if let Some(e) = &o.error {
                        errors
                            .insert((o.batch, o.index), e.as_str())
                            .map_err(|e| self.err(e))?;
                    }
                }
                outcomes
                    .insert(key, row.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut nodes = txn.open_table(NODES).map_err(|e| self.err(e))?;
            for (n, name) in &set.nodes {
                nodes.insert(*n, name.as_str()).map_err(|e| self.err(e))?;
            }
            let mut batches = txn.open_table(BATCH_STATE).map_err(|e| self.err(e))?;
            for b in &set.batches {
                batches
                    .insert(b.id, b.encode_to_vec().as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// Decodes one message's slot from an outcome row: (state, attempts, node).
pub fn read_slot(row: &[u8], i: usize) -> (u8, u8, u16) {
    let at = i * SLOT_BYTES;
    (
        row[at],
        row[at + 1],
        u16::from_le_bytes([row[at + 2], row[at + 3]]),
    )
}

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
                    done(r.map(|()| token), stats);
                }
            })
            .expect("spawn store writer");
        (tx, thread)
    }
}
