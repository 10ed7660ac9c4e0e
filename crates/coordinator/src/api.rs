//! The client-facing `smsmesh.v1.Coordinator` service.
//!
//! Handlers validate requests here, off the reactor, and hand the reactor
//! only what is already known to be good. Progress watchers read published
//! snapshots from a `watch` channel, so a slow watcher never slows dispatch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use smsmesh::pb::{self, BatchState, get_status_request, get_status_response};
use smsmesh::{BatchId, Error, MessageId, sms};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::Config;
use crate::batch::Content;
use crate::core::{NewBatch, Snapshot, unix_ms};
use crate::reactor::Handle;
use crate::store::{Store, StoredBatch};

/// Longest idempotency key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// The `Coordinator` gRPC service.
pub struct CoordinatorApi {
    core: Handle,
    config: Config,
    store: Option<Store>,
}

impl CoordinatorApi {
    /// A service backed by the reactor behind `core`, storing new batches in `store`.
    pub fn new(core: Handle, config: Config, store: Option<Store>) -> Self {
        CoordinatorApi {
            core,
            config,
            store,
        }
    }

    /// Accepts a batch: durably first when there is a store.
    async fn inner_submit(
        &self,
        req: pb::SubmitBatchRequest,
    ) -> Result<pb::SubmitBatchResponse, Error> {
        let mut new = validate_submit(req, &self.config)?;
        let span = tracing::Span::current();
        span.record("batch_id", new.id.to_string());
        span.record("messages", new.total);
        new.trace = dispatch_trace(new.id, self.config.trace_message_ratio);
        if let Some(store) = &self.store {
            let stored = stored_batch(&new);
            let key = new.idempotency_key.clone();
            let store = store.clone();
            let r =
                tokio::task::spawn_blocking(move || store.insert_batch(&stored, key.as_deref()))
                    .await
                    .map_err(|e| Error::Internal(format!("store task: {e}")))?
                    .map_err(|e| Error::Unavailable(format!("cannot store the batch: {e}")))?;
            if let Err(existing) = r {
                return Ok(pb::SubmitBatchResponse {
                    batch_id: BatchId(existing).to_string(),
                    accepted: u64::from(new.total),
                });
            }
        }
        self.core.submit(new).await
    }
}

/// The dispatch span of a new batch (a child of the current SubmitBatch
/// span), if it is recorded and sampled.
fn dispatch_trace(id: BatchId, ratio: f64) -> Option<crate::batch::Trace> {
    let span = tracing::info_span!(
        "dispatch",
        batch_id = %id,
        state = tracing::field::Empty,
        sent = tracing::field::Empty,
        failed = tracing::field::Empty,
    );
    let traceparent = smsmesh::telemetry::traceparent(&span)?;
    let every = if ratio > 0.0 && ratio.is_finite() {
        (1.0 / ratio.min(1.0))
            .round()
            .clamp(1.0, f64::from(u32::MAX)) as u32
    } else {
        u32::MAX // only message 0
    };
    (ratio > 0.0).then_some(crate::batch::Trace {
        span,
        traceparent,
        every,
    })
}

/// A server span for one call of `method`, continuing the caller's trace if
/// its metadata carries a W3C `traceparent`.
fn rpc_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "smsmesh.v1.Coordinator",
        rpc.method = method,
        batch_id = tracing::field::Empty,
        messages = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    smsmesh::telemetry::set_parent_from_metadata(&span, metadata);
    span
}

/// The stored form of a batch about to be accepted.
fn stored_batch(new: &NewBatch) -> StoredBatch {
    let (messages, synthetic_seed, synthetic_body) = match &new.content {
        Content::Explicit(m) => (m.clone(), None, None),
        Content::Synthetic { seed, body } => (Vec::new(), Some(*seed), body.clone()),
    };
    StoredBatch {
        id: new.id.0,
        total: new.total,
        max_attempts: u32::from(new.max_attempts),
        messages,
        synthetic_seed,
        synthetic_body,
        accepted_unix_ms: unix_ms(),
    }
}

/// Checks a SubmitBatch request and turns it into a batch to accept.
pub fn validate_submit(req: pb::SubmitBatchRequest, config: &Config) -> Result<NewBatch, Error> {
    let max_attempts = match req.max_attempts {
        None => config.default_max_attempts,
        Some(n) if n == 0 || n > config.max_attempts_limit => {
            return Err(Error::invalid(format!(
                "max_attempts {n} is out of range (1 to {})",
                config.max_attempts_limit
            )));
        }
        Some(n) => n,
    };
    let max = config.max_batch_size.min(u64::from(u32::MAX));
    let (content, total) = match (req.messages.is_empty(), req.synthetic) {
        (true, None) => {
            return Err(Error::invalid(
                "empty batch: give either `messages` (at least one) or `synthetic`",
            ));
        }
        (false, Some(_)) => {
            return Err(Error::invalid(
                "give either `messages` or `synthetic`, not both",
            ));
        }
        (false, None) => {
            let n = req.messages.len() as u64;
            if n > max {
                return Err(Error::invalid(format!(
                    "batch of {n} messages exceeds the maximum of {max} (--max-batch-size)"
                )));
            }
            for (i, m) in req.messages.iter().enumerate() {
                sms::validate_message(i, &m.to, &m.body, &m.client_ref)?;
            }
            (Content::Explicit(req.messages), n as u32)
        }
        (true, Some(s)) => {
            if s.count == 0 {
                return Err(Error::invalid("synthetic.count must be at least 1"));
            }
            if s.count > max {
                return Err(Error::invalid(format!(
                    "synthetic.count {} exceeds the maximum of {max} (--max-batch-size)",
                    s.count
                )));
            }
            if let Some(body) = &s.body {
                sms::validate_body("synthetic.body", body)?;
            }
            let seed = s.seed.unwrap_or_else(rand::random);
            (Content::Synthetic { seed, body: s.body }, s.count as u32)
        }
    };
    if req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(Error::invalid(format!(
            "idempotency_key is {} bytes long; at most {MAX_IDEMPOTENCY_KEY} are allowed",
            req.idempotency_key.len()
        )));
    }
    Ok(NewBatch {
        id: BatchId::random(),
        content,
        total,
        max_attempts: max_attempts as u8,
        idempotency_key: (!req.idempotency_key.is_empty()).then_some(req.idempotency_key),
        trace: None,
    })
}

fn is_ended(state: i32) -> bool {
    state == BatchState::Completed as i32 || state == BatchState::Cancelled as i32
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorApi {
    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let span = rpc_span("smsmesh.v1.Coordinator/SubmitBatch", request.metadata());
        let response = self
            .inner_submit(request.into_inner())
            .instrument(span.clone())
            .await;
        if let Err(e) = &response {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", e.to_string());
        }
        Ok(Response::new(response?))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let span = rpc_span("smsmesh.v1.Coordinator/GetStatus", request.metadata());
        let target = request.into_inner().target;
        let status = async {
            Ok::<_, Status>(match target {
                Some(get_status_request::Target::BatchId(id)) => {
                    let batch = self.core.batch_status(id.parse()?).await?;
                    get_status_response::Status::Batch(batch)
                }
                Some(get_status_request::Target::MessageId(id)) => {
                    let msg = self.core.message_status(id.parse::<MessageId>()?).await?;
                    get_status_response::Status::Message(msg)
                }
                None => return Err(Error::invalid("give `batch_id` or `message_id`").into()),
            })
        }
        .instrument(span)
        .await?;
        Ok(Response::new(pb::GetStatusResponse {
            status: Some(status),
        }))
    }

    async fn cancel_batch(
        &self,
        request: Request<pb::CancelBatchRequest>,
    ) -> Result<Response<pb::CancelBatchResponse>, Status> {
        let span = rpc_span("smsmesh.v1.Coordinator/CancelBatch", request.metadata());
        let id: BatchId = request.into_inner().batch_id.parse()?;
        span.record("batch_id", id.to_string());
        let batch = self.core.cancel(id).instrument(span).await?;
        Ok(Response::new(pb::CancelBatchResponse {
            batch: Some(batch),
        }))
    }

    type WatchProgressStream = ReceiverStream<Result<pb::ProgressUpdate, Status>>;

    async fn watch_progress(
        &self,
        request: Request<pb::WatchProgressRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        // The span covers the stream's whole life: it ends when the watcher task does.
        let span = rpc_span("smsmesh.v1.Coordinator/WatchProgress", request.metadata());
        let req = request.into_inner();
        let interval = match req.interval_ms {
            0 => Duration::from_secs(1),
            n if n < 50 => {
                return Err(
                    Error::invalid(format!("interval_ms {n} is too small (at least 50)")).into(),
                );
            }
            n => Duration::from_millis(u64::from(n)),
        };
        let batch = if req.batch_id.is_empty() {
            None
        } else {
            let id: BatchId = req.batch_id.parse()?;
            self.core.batch_status(id).await?; // NOT_FOUND before the stream starts
            Some(id)
        };
        let (tx, rx) = mpsc::channel(4);
        let watcher = Watcher {
            batch,
            batch_str: batch.map(|id| id.to_string()),
            core: self.core.clone(),
            progress: self.core.progress(),
            tx,
            states: HashMap::new(),
        };
        // Ends when the client goes or the batch ends.
        tokio::spawn(watcher.run(interval).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves one WatchProgress stream.
struct Watcher {
    batch: Option<BatchId>,
    /// `batch` as it appears in statuses.
    batch_str: Option<String>,
    core: Handle,
    progress: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Result<pb::ProgressUpdate, Status>>,
    /// Last state sent, per batch id.
    states: HashMap<String, i32>,
}

impl Watcher {
    async fn run(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker.tick().await; // the first tick is immediate; the first update goes out below
        loop {
            let Some(update) = self.current().await else {
                return;
            };
            let ended = self.batch.is_some() && update.batches.iter().all(|b| is_ended(b.state));
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
            .filter(|b| self.watches(&b.batch_id))
            .cloned()
            .collect();
        if let (Some(id), true) = (self.batch, batches.is_empty()) {
            // Not in the snapshot (just submitted, or ended long ago): ask the reactor.
            batches.push(self.core.batch_status(id).await.ok()?);
        }
        Some(pb::ProgressUpdate {
            batches,
            nodes_connected: snap.nodes_connected,
        })
    }

    /// Whether this stream follows the batch `batch_id`.
    fn watches(&self, batch_id: &str) -> bool {
        self.batch_str.as_deref().is_none_or(|id| id == batch_id)
    }

    fn state_changed(&self) -> bool {
        let snap = self.progress.borrow();
        snap.batches
            .iter()
            .any(|b| self.watches(&b.batch_id) && self.states.get(&b.batch_id) != Some(&b.state))
    }
}
