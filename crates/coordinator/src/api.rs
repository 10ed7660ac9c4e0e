//! The client-facing `smsmesh.v1.Coordinator` service.
//!
//! Handlers validate requests here, off the reactor, and hand the reactor
//! only what is already known to be good. WatchProgress streams are served
//! by [`crate::watch`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use smsmesh::pb::{self, BatchState, get_status_request, get_status_response};
use smsmesh::priority::Class;
use smsmesh::{BatchId, Error, MessageId};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::Config;
use crate::auth::{EMERGENCY_SCOPE, Grants, OPERATOR_SCOPE, Tenant, TokenBucket};
use crate::batch::Content;
use crate::core::{
    BatchQuery, ListQuery, NewBatch, StateSet, key_reused, parse_batches_token, parse_page_token,
};
use crate::reactor::Handle;
use crate::store::{Inserter, StoreError, StoredBatch};
use crate::submit::{fingerprint, validate_submit};

/// RESOURCE_EXHAUSTED saying `msg`, with a RetryInfo detail of `wait`.
fn retry_later(msg: String, wait: std::time::Duration) -> Status {
    use tonic_types::StatusExt;
    let details = tonic_types::ErrorDetails::with_retry_info(Some(wait));
    Status::with_error_details(tonic::Code::ResourceExhausted, msg, details)
}

/// The `Coordinator` gRPC service.
pub struct CoordinatorApi {
    core: Handle,
    config: Config,
    /// Stores new batches, many in one transaction.
    inserter: Option<Inserter>,
    /// Per tenant: its admission lock and token bucket.
    gates: std::sync::Mutex<HashMap<Tenant, Arc<Gate>>>,
}

/// One tenant's admission state. With a pending cap, submissions of a
/// tenant are admitted one at a time, each counting the messages admitted
/// before it that the reactor does not have yet, so concurrent requests
/// cannot overrun the cap. Storing and handing over happen outside the lock.
struct Gate {
    admit: tokio::sync::Mutex<()>,
    /// Messages admitted and not yet in the reactor (or refused after all).
    admitting: std::sync::atomic::AtomicU64,
    bucket: std::sync::Mutex<Option<TokenBucket>>,
}

impl CoordinatorApi {
    /// A service backed by the reactor behind `core`, storing new batches
    /// with its group commits when it has a store.
    pub fn new(core: Handle, config: Config) -> Self {
        CoordinatorApi {
            inserter: core.inserter().cloned(),
            core,
            config,
            gates: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn gate(&self, tenant: &Tenant) -> Arc<Gate> {
        let mut gates = self.gates.lock().expect("gates lock");
        gates
            .entry(tenant.clone())
            .or_insert_with(|| {
                let limits = self.config.tenant_limits;
                Arc::new(Gate {
                    admit: tokio::sync::Mutex::new(()),
                    admitting: std::sync::atomic::AtomicU64::new(0),
                    bucket: std::sync::Mutex::new(
                        limits
                            .rate
                            .map(|r| TokenBucket::new(r, limits.burst, std::time::Instant::now())),
                    ),
                })
            })
            .clone()
    }

    /// Checks `tenant`'s limits for `n` more messages; on success the tokens are taken
    /// (give them back with [`Gate::refund`] if the batch is not accepted after all).
    async fn admit(&self, gate: &Gate, tenant: &Tenant, n: u64) -> Result<(), Status> {
        let limits = self.config.tenant_limits;
        if let Some(cap) = limits.max_pending {
            let unfinished = self.core.tenant_unfinished(tenant).await?
                + gate.admitting.load(std::sync::atomic::Ordering::SeqCst);
            if unfinished + n > cap {
                let msg = format!(
                    "tenant {tenant} has {unfinished} messages not finished yet; {n} more would exceed its cap of {cap} (--tenant-max-pending): wait for batches to finish"
                );
                // No exact time can be known; a second is the earliest a retry makes sense.
                return Err(retry_later(msg, std::time::Duration::from_secs(1)));
            }
        }
        let mut bucket = gate.bucket.lock().expect("bucket lock");
        if let Some(b) = bucket.as_mut() {
            match b.take(n, std::time::Instant::now()) {
                Ok(()) => {}
                Err(None) => {
                    return Err(Status::resource_exhausted(format!(
                        "a batch of {n} messages is larger than tenant {tenant}'s burst of {} (--tenant-burst): split it",
                        limits.burst
                    )));
                }
                Err(Some(wait)) => {
                    let msg = format!(
                        "tenant {tenant} is over its rate of {} messages/s (--tenant-rate): retry in {:.1} s",
                        limits.rate.unwrap_or_default(),
                        wait.as_secs_f64()
                    );
                    return Err(retry_later(msg, wait));
                }
            }
        }
        Ok(())
    }

    /// The configuration it serves with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Accepts an upload that another face read (the HTTP API's CSV
    /// upload), for the caller of `request`, as SubmitBatchStream would.
    pub async fn submit_upload(
        &self,
        request: Request<crate::core::NewBatch>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let tenant = Tenant::of(&request);
        let grants = Grants::of(&request);
        let r = self
            .admit_and_accept(request.into_inner(), tenant, grants)
            .await?;
        Ok(Response::new(r))
    }

    /// Accepts a batch: durably first when there is a store.
    async fn inner_submit(
        &self,
        req: pb::SubmitBatchRequest,
        tenant: Tenant,
        grants: Grants,
    ) -> Result<pb::SubmitBatchResponse, Status> {
        let fingerprint = fingerprint(&req);
        let mut new = validate_submit(req, &self.config)?;
        new.fingerprint = fingerprint;
        self.admit_and_accept(new, tenant, grants).await
    }

    /// Admits a checked batch of `tenant` against its limits, then accepts it.
    async fn admit_and_accept(
        &self,
        mut new: NewBatch,
        tenant: Tenant,
        grants: Grants,
    ) -> Result<pb::SubmitBatchResponse, Status> {
        if new.class == Class::Emergency && !grants.emergency {
            return Err(Status::permission_denied(format!(
                "priority EMERGENCY: tenant {tenant}'s token lacks the `{EMERGENCY_SCOPE}` scope; submit at HIGH or lower, or ask for a token with that scope"
            )));
        }
        let fingerprint = new.fingerprint;
        new.idempotency_key = new.idempotency_key.map(|k| scoped_key(&tenant, k));
        new.tenant = tenant.clone();
        new.callback_url = self
            .config
            .callbacks
            .resolve(&tenant, new.callback_url.take())?;
        let gate = self.gate(&tenant);
        // A repeat of an accepted request is answered as before, whatever the limits say now.
        if let Some(key) = &new.idempotency_key
            && let Some(existing) = self.core.idempotent(key, fingerprint).await?
        {
            return Ok(existing);
        }
        let total = u64::from(new.total);
        {
            // Only a pending cap needs admissions one at a time.
            let _one_at_a_time = match self.config.tenant_limits.max_pending {
                Some(_) => Some(gate.admit.lock().await),
                None => None,
            };
            self.admit(&gate, &tenant, total).await?;
            gate.admitting
                .fetch_add(total, std::sync::atomic::Ordering::SeqCst);
        }
        let r = self.accept(new).await;
        gate.admitting
            .fetch_sub(total, std::sync::atomic::Ordering::SeqCst);
        if r.is_err() {
            gate.refund(total);
        }
        Ok(r?)
    }

    /// Stores (when durable) and hands a validated, admitted batch to the reactor.
    async fn accept(&self, mut new: NewBatch) -> Result<pb::SubmitBatchResponse, Error> {
        let span = tracing::Span::current();
        span.record("batch_id", new.id.to_string());
        span.record("messages", new.total);
        new.trace = dispatch_trace(new.id, self.config.trace_message_ratio);
        if let Some(inserter) = &self.inserter {
            // Stored with its first reservation: dispatch starts without another commit.
            new.reserved = new.total.min(crate::core::INITIAL_RESERVATION);
            let stored = stored_batch(&new);
            let key = new.idempotency_key.clone();
            let list = match &new.content {
                Content::List { recipients, .. } => Some(recipients.clone()),
                _ => None,
            };
            let (fingerprint, total) = (new.fingerprint, new.total);
            let idempotency_key = new.idempotency_key.clone();
            // Once stored, the writer hands the batch to the reactor itself:
            // this call is woken once, by the reactor's answer.
            let (hand_over, accepted) = self.core.submit_when_stored(new);
            let not_stored = inserter.insert_then(stored, key, list, hand_over);
            if let Ok(answer) = accepted.await {
                return answer;
            }
            // Not handed over: the batch was not stored, or the coordinator is stopping.
            let existing = match not_stored.await {
                Ok(Err(existing)) => existing,
                Ok(Ok(())) | Err(StoreError::Stopped) => {
                    return Err(Error::Unavailable("coordinator is shutting down".into()));
                }
                Err(e) => return Err(Error::Unavailable(format!("cannot store the batch: {e}"))),
            };
            // The key made a batch meanwhile: a replay, or a different request.
            let key = idempotency_key.as_deref().unwrap_or_default();
            if let Some(known) = self.core.idempotent(key, fingerprint).await? {
                return Ok(known);
            }
            // Stored, and not in the reactor yet: the store's record tells.
            if existing.fingerprint != 0 && existing.fingerprint != fingerprint {
                return Err(key_reused(key, BatchId(existing.id)));
            }
            return Ok(pb::SubmitBatchResponse {
                batch_id: BatchId(existing.id).to_string(),
                accepted: u64::from(total),
                replayed: true,
            });
        }
        self.core.submit(new).await
    }
}

impl Gate {
    fn refund(&self, n: u64) {
        if let Some(b) = self.bucket.lock().expect("bucket lock").as_mut() {
            b.refund(n);
        }
    }
}

/// An idempotency key as stored: keys of different tenants never collide
/// (the default tenant's keys are stored as given, as before tenants).
fn scoped_key(tenant: &Tenant, key: String) -> String {
    if tenant.as_str().is_empty() {
        key
    } else {
        format!("{}\u{0}{key}", tenant.as_str())
    }
}

/// The dispatch span of a new batch (a child of the current SubmitBatch
/// span), if it is recorded and sampled.
fn dispatch_trace(id: BatchId, ratio: f64) -> Option<crate::batch::Trace> {
    if ratio.is_nan() || ratio <= 0.0 {
        return None; // no message is traced: no dispatch span either
    }
    // It lives until the batch ends, long after SubmitBatch: a child in the
    // trace, but not a tracing child (which would hold SubmitBatch open).
    let span = tracing::info_span!(
        parent: None,
        "dispatch",
        batch_id = %id,
        state = tracing::field::Empty,
        sent = tracing::field::Empty,
        failed = tracing::field::Empty,
    );
    smsmesh::telemetry::set_trace_parent(&span, &tracing::Span::current());
    let traceparent = smsmesh::telemetry::traceparent(&span)?;
    let every = if ratio.is_finite() {
        (1.0 / ratio.min(1.0))
            .round()
            .clamp(1.0, f64::from(u32::MAX)) as u32
    } else {
        u32::MAX // only message 0
    };
    Some(crate::batch::Trace {
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
        rpc.service = smsmesh::pb::coordinator_server::SERVICE_NAME,
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
    let (messages, synthetic_seed, synthetic_body, list_body) = match &new.content {
        Content::Explicit(m) => (m.clone(), None, None, None),
        Content::List { body, .. } => (Vec::new(), None, None, Some(body.clone())),
        Content::Synthetic { seed, body } => (Vec::new(), Some(*seed), body.clone(), None),
    };
    let list_sender = match &new.content {
        Content::List { sender, .. } => sender.clone(),
        _ => String::new(),
    };
    StoredBatch {
        id: new.id.0,
        total: new.total,
        max_attempts: u32::from(new.max_attempts),
        messages,
        synthetic_seed,
        synthetic_body,
        accepted_unix_ms: new.accepted_unix_ms,
        tenant: new.tenant.as_str().to_string(),
        fingerprint: new.fingerprint,
        list_body,
        list_sender,
        priority: match new.class {
            Class::Normal => 0, // as stored before classes
            c => c.to_proto() as u32,
        },
        callback_url: new.callback_url.as_deref().unwrap_or_default().to_string(),
        reserved: new.reserved,
    }
}

/// Most messages in one ListMessages page, and the size of a page not given.
const MAX_PAGE_SIZE: u32 = 10_000;
const DEFAULT_PAGE_SIZE: u32 = 1_000;

/// The states a listing asks for: each must be one that `valid` knows;
/// `names` lists them for the error.
fn listed_states(
    values: &[i32],
    valid: impl Fn(i32) -> bool,
    names: &str,
) -> Result<StateSet, Error> {
    match values.iter().find(|&&v| v == 0 || !valid(v)) {
        Some(v) => Err(Error::invalid(format!("states: {v} is not {names}"))),
        None => Ok(StateSet::of(values.iter().copied())),
    }
}

/// A listing's page size: `default` for 0, at most `max`.
fn page_size(n: u32, default: u32, max: u32) -> Result<u32, Error> {
    match n {
        0 => Ok(default),
        n if n > max => Err(Error::invalid(format!(
            "page_size {n} is too large: at most {max}"
        ))),
        n => Ok(n),
    }
}

/// Checks a ListBatches request.
fn batch_query(req: pb::ListBatchesRequest) -> Result<BatchQuery, Error> {
    let states = listed_states(
        &req.states,
        |v| BatchState::try_from(v).is_ok(),
        "a batch state (RUNNING=1, COMPLETED=2, CANCELLING=3, CANCELLED=4)",
    )?;
    Ok(BatchQuery {
        states,
        limit: page_size(req.page_size, 100, 1000)?,
        before: parse_batches_token(&req.page_token)?,
    })
}

/// Checks a ListMessages request.
fn list_query(req: pb::ListMessagesRequest) -> Result<ListQuery, Error> {
    let batch: BatchId = req.batch_id.parse()?;
    let states = listed_states(
        &req.states,
        |v| pb::MessageState::try_from(v).is_ok(),
        "a message state (PENDING=1, IN_FLIGHT=2, RETRY_WAIT=3, SENT=4, FAILED=5, CANCELLED=6, DELIVERED=7, UNDELIVERED=8, EXPIRED=9, REJECTED=10, DELIVERY_UNKNOWN=11)",
    )?;
    Ok(ListQuery {
        batch,
        states,
        limit: page_size(req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?,
        start: parse_page_token(batch, &req.page_token)?,
    })
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorApi {
    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let span = rpc_span("smsmesh.v1.Coordinator/SubmitBatch", request.metadata());
        let tenant = Tenant::of(&request);
        let grants = Grants::of(&request);
        let response = self
            .inner_submit(request.into_inner(), tenant, grants)
            .instrument(span.clone())
            .await;
        if let Err(e) = &response {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", e.to_string());
        }
        Ok(Response::new(response?))
    }

    async fn submit_batch_stream(
        &self,
        request: Request<tonic::Streaming<pb::SubmitBatchStreamRequest>>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let span = rpc_span(
            "smsmesh.v1.Coordinator/SubmitBatchStream",
            request.metadata(),
        );
        let tenant = Tenant::of(&request);
        let grants = Grants::of(&request);
        let response = async {
            let new = crate::upload::receive(request.into_inner(), &self.config).await?;
            self.admit_and_accept(new, tenant, grants).await
        }
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
        let tenant = Tenant::of(&request);
        let target = request.into_inner().target;
        let status = async {
            Ok::<_, Status>(match target {
                Some(get_status_request::Target::BatchId(id)) => {
                    let batch = self.core.batch_status(id.parse()?, &tenant).await?;
                    get_status_response::Status::Batch(batch)
                }
                Some(get_status_request::Target::MessageId(id)) => {
                    let msg = self
                        .core
                        .message_status(id.parse::<MessageId>()?, &tenant)
                        .await?;
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

    async fn list_batches(
        &self,
        request: Request<pb::ListBatchesRequest>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let span = rpc_span("smsmesh.v1.Coordinator/ListBatches", request.metadata());
        let tenant = Tenant::of(&request);
        let query = batch_query(request.into_inner())?;
        let page = self
            .core
            .list_batches(query, &tenant)
            .instrument(span)
            .await?;
        Ok(Response::new(page))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let span = rpc_span("smsmesh.v1.Coordinator/ListMessages", request.metadata());
        let tenant = Tenant::of(&request);
        let query = list_query(request.into_inner())?;
        span.record("batch_id", query.batch.to_string());
        let page = self
            .core
            .list_messages(query, &tenant)
            .instrument(span)
            .await?;
        Ok(Response::new(page))
    }

    async fn cancel_batch(
        &self,
        request: Request<pb::CancelBatchRequest>,
    ) -> Result<Response<pb::CancelBatchResponse>, Status> {
        let span = rpc_span("smsmesh.v1.Coordinator/CancelBatch", request.metadata());
        let tenant = Tenant::of(&request);
        let id: BatchId = request.into_inner().batch_id.parse()?;
        span.record("batch_id", id.to_string());
        let batch = self.core.cancel(id, &tenant).instrument(span).await?;
        Ok(Response::new(pb::CancelBatchResponse {
            batch: Some(batch),
        }))
    }

    async fn set_class_paused(
        &self,
        request: Request<pb::SetClassPausedRequest>,
    ) -> Result<Response<pb::SetClassPausedResponse>, Status> {
        let span = rpc_span("smsmesh.v1.Coordinator/SetClassPaused", request.metadata());
        let (tenant, grants) = (Tenant::of(&request), Grants::of(&request));
        if !grants.operator {
            return Err(Status::permission_denied(format!(
                "SetClassPaused is an operator call: tenant {tenant}'s token lacks the `{OPERATOR_SCOPE}` scope"
            )));
        }
        let req = request.into_inner();
        let class = match req.priority {
            0 => Err("priority: name the class to pause or resume (BULK, NORMAL or HIGH)".into()),
            p => Class::from_proto(p, "priority"),
        }
        .map_err(Error::invalid)?;
        if class == Class::Emergency {
            return Err(Error::invalid("priority: EMERGENCY traffic is never paused").into());
        }
        let paused = self
            .core
            .set_paused(class, req.paused)
            .instrument(span)
            .await?;
        tracing::warn!(%class, paused = req.paused, by = %tenant, "class dispatch {}", if req.paused { "paused" } else { "resumed" });
        Ok(Response::new(pb::SetClassPausedResponse {
            paused: paused.iter().map(|c| c.to_proto() as i32).collect(),
        }))
    }

    type WatchProgressStream = ReceiverStream<Result<pb::ProgressUpdate, Status>>;

    async fn watch_progress(
        &self,
        request: Request<pb::WatchProgressRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        // The span covers the stream's whole life: it ends when the watcher task does.
        let span = rpc_span("smsmesh.v1.Coordinator/WatchProgress", request.metadata());
        let tenant = Tenant::of(&request);
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
            self.core.batch_status(id, &tenant).await?; // NOT_FOUND before the stream starts
            Some(id)
        };
        let stream = crate::watch::start(self.core.clone(), tenant, batch, interval, span);
        Ok(Response::new(stream))
    }
}
