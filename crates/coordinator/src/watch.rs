//! WatchProgress streams: each follows the published progress snapshots (so
//! a slow watcher never slows dispatch), sends an update at every interval or
//! state change, and ends when its batch does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use smsmesh::BatchId;
use smsmesh::pb::{self, BatchState};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use crate::auth::Tenant;
use crate::core::Snapshot;
use crate::reactor::Handle;

/// Starts the stream of `tenant`'s progress (of `batch`, or of every batch),
/// served by a task of its own in `span`.
pub(crate) fn start(
    core: Handle,
    tenant: Tenant,
    batch: Option<BatchId>,
    interval: Duration,
    span: tracing::Span,
) -> ReceiverStream<Result<pb::ProgressUpdate, Status>> {
    let (tx, rx) = mpsc::channel(4);
    let watcher = Watcher {
        tenant,
        batch,
        batch_str: batch.map(|id| id.to_string()),
        progress: core.progress(),
        _watching: core.watching(),
        core,
        tx,
        states: HashMap::new(),
    };
    // Ends when the client goes or the batch ends.
    tokio::spawn(watcher.run(interval).instrument(span));
    ReceiverStream::new(rx)
}

fn is_ended(state: i32) -> bool {
    state == BatchState::Completed as i32 || state == BatchState::Cancelled as i32
}

/// Serves one WatchProgress stream.
struct Watcher {
    /// Only this tenant's batches are shown.
    tenant: Tenant,
    batch: Option<BatchId>,
    /// `batch` as it appears in statuses.
    batch_str: Option<String>,
    core: Handle,
    progress: watch::Receiver<Arc<Snapshot>>,
    /// Keeps batch statuses in the snapshots while this stream is open.
    _watching: watch::Receiver<()>,
    tx: mpsc::Sender<Result<pb::ProgressUpdate, Status>>,
    /// Last state sent, per batch id.
    states: HashMap<String, i32>,
}

impl Watcher {
    async fn run(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker.tick().await; // the first tick is immediate; the first update goes out below
        // Changes are published at most every 20 ms: the first update has them all.
        if self.core.refresh().await.is_err() {
            return;
        }
        loop {
            let Some(update) = self.current().await else {
                return;
            };
            // One batch's stream ends once the batch ended and waits for no receipt.
            let ended = self.batch.is_some()
                && update
                    .batches
                    .iter()
                    .all(|b| is_ended(b.state) && b.awaiting_receipt == 0);
            for b in &update.batches {
                self.states.insert(b.batch_id.clone(), b.state);
            }
            if self.tx.send(Ok(update)).await.is_err() || ended {
                return;
            }
            // Wait for the next tick, or a state change.
            loop {
                tokio::select! {
                    _ = ticker.tick() => break,
                    changed = self.progress.changed() => {
                        if changed.is_err() {
                            return; // coordinator shutting down
                        }
                        if self.state_changed() {
                            break;
                        }
                    }
                    () = self.tx.closed() => return,
                }
            }
        }
    }

    /// The update to send now; None if the coordinator is gone.
    async fn current(&mut self) -> Option<pb::ProgressUpdate> {
        let snap = self.progress.borrow_and_update().clone();
        let mut batches: Vec<pb::BatchStatus> = snap
            .batches
            .iter()
            .filter(|b| self.watches(b))
            .map(|b| pb::BatchStatus::clone(b))
            .collect();
        if let (Some(id), true) = (self.batch, batches.is_empty()) {
            // Not in the snapshot (just submitted, or ended long ago): ask the reactor.
            batches.push(self.core.batch_status(id, &self.tenant).await.ok()?);
        }
        Some(pb::ProgressUpdate {
            batches,
            nodes_connected: snap.nodes_connected,
            paused: smsmesh::priority::Class::ALL
                .into_iter()
                .filter(|c| snap.metrics.paused[c.index()])
                .map(|c| c.to_proto() as i32)
                .collect(),
        })
    }

    /// Whether this stream follows the batch `b`: the caller's, and the one asked for.
    fn watches(&self, b: &pb::BatchStatus) -> bool {
        b.tenant == self.tenant.as_str()
            && self.batch_str.as_deref().is_none_or(|id| id == b.batch_id)
    }

    fn state_changed(&self) -> bool {
        let snap = self.progress.borrow();
        snap.batches
            .iter()
            .any(|b| self.watches(b) && self.states.get(&b.batch_id) != Some(&b.state))
    }
}
