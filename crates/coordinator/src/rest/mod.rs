//! The Coordinator API over HTTP and JSON (`--http-listen`): the same calls,
//! authentication, tenants, limits and errors as gRPC. Each route turns its
//! JSON (or query string) into the gRPC request message and calls the gRPC
//! service's own method ([`CoordinatorApi`]), so there is one implementation
//! behind both faces. Progress streams as Server-Sent Events. The routes
//! are described by an OpenAPI document served at `/openapi.json`.

mod errors;
mod json;
mod linger;
mod listener;
pub mod openapi;
mod upload;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use smsmesh::pb::{self, coordinator_server::Coordinator, get_status_request, get_status_response};
use tonic::Status;

use crate::api::CoordinatorApi;
use crate::auth::ClientAuth;
use errors::{Failed, body_of};
pub use listener::serve;

/// What the routes serve with once this coordinator leads: its API and how
/// callers are authenticated. Until then (a standby), every call is
/// UNAVAILABLE.
#[derive(Clone, Default)]
pub struct Rest {
    serving: Arc<OnceLock<(Arc<CoordinatorApi>, ClientAuth)>>,
}

impl Rest {
    /// Answers every call UNAVAILABLE until [`Rest::lead`].
    pub fn new() -> Self {
        Rest::default()
    }

    /// Serves `api`, authenticating callers by `auth`.
    pub fn lead(&self, api: Arc<CoordinatorApi>, auth: ClientAuth) {
        let _ = self.serving.set((api, auth));
    }

    /// The caller of `headers`, authenticated (tenant and scopes) as a gRPC
    /// call would be: first, so that a caller without a valid token learns
    /// nothing else.
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, Failed> {
        let Some((api, auth)) = self.serving.get() else {
            return Err(Status::unavailable(format!(
                "{}; try another coordinator address",
                smsmesh::client::STANDBY
            ))
            .into());
        };
        let mut bare = tonic::Request::new(());
        *bare.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers.clone());
        let (metadata, extensions, ()) = auth.check(bare)?.into_parts();
        Ok(Caller {
            api: api.clone(),
            metadata,
            extensions,
        })
    }
}

/// An authenticated caller.
struct Caller {
    api: Arc<CoordinatorApi>,
    metadata: tonic::metadata::MetadataMap,
    extensions: tonic::Extensions,
}

impl Caller {
    /// Calls `f` on the API with `req`, as this caller sends it.
    async fn call<Req, Resp, F, Fut>(self, req: Req, f: F) -> Result<Resp, Failed>
    where
        F: FnOnce(Arc<CoordinatorApi>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let request = tonic::Request::from_parts(self.metadata, self.extensions, req);
        Ok(f(self.api, request).await?.into_inner())
    }
}

/// The routes, with `max_body` the largest request body (as gRPC's limit).
pub fn router(rest: Rest, max_body: usize) -> Router {
    Router::new()
        .route("/v1/batches", post(submit).get(list_batches))
        .route(
            "/v1/batches/upload",
            post(upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/batches/{batch_id}", get(batch))
        .route("/v1/batches/{batch_id}/cancel", post(cancel))
        .route("/v1/batches/{batch_id}/messages", get(list_messages))
        .route("/v1/batches/{batch_id}/progress", get(progress_of))
        .route("/v1/progress", get(progress))
        .route("/v1/messages/{message_id}", get(message))
        .route("/v1/classes/paused", post(set_paused))
        .route("/openapi.json", get(openapi))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_request(linger::wrap))
        .with_state(rest)
}

/// A JSON answer of message `name`.
fn ok<T: prost::Message>(name: &str, message: &T) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json::encode(name, message),
    )
        .into_response()
}

async fn submit(
    State(rest): State<Rest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failed> {
    let caller = rest.caller(&headers)?;
    let body = match body {
        Ok(body) => body,
        Err(r) => return Ok(errors::body_refused(r)),
    };
    let req: pb::SubmitBatchRequest = json::decode("SubmitBatchRequest", &body)?;
    let resp = caller
        .call(req, |api, r| async move { api.submit_batch(r).await })
        .await?;
    Ok(ok("SubmitBatchResponse", &resp))
}

async fn list_batches(
    State(rest): State<Rest>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Failed> {
    let caller = rest.caller(&headers)?;
    let json = json::from_query("ListBatchesRequest", query.as_deref(), &[])?;
    let req: pb::ListBatchesRequest = json::decode("ListBatchesRequest", &json)?;
    let resp = caller
        .call(req, |api, r| async move { api.list_batches(r).await })
        .await?;
    Ok(ok("ListBatchesResponse", &resp))
}

/// GetStatus of `target`: the batch's or the message's status itself.
async fn status(
    rest: &Rest,
    headers: &HeaderMap,
    target: get_status_request::Target,
) -> Result<Response, Failed> {
    let caller = rest.caller(headers)?;
    let req = pb::GetStatusRequest {
        target: Some(target),
    };
    let resp = caller
        .call(req, |api, r| async move { api.get_status(r).await })
        .await?;
    Ok(match resp.status {
        Some(get_status_response::Status::Batch(b)) => ok("BatchStatus", &b),
        Some(get_status_response::Status::Message(m)) => ok("MessageStatus", &m),
        None => return Err(Status::internal("GetStatus answered no status").into()),
    })
}

async fn batch(
    State(rest): State<Rest>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Failed> {
    status(&rest, &headers, get_status_request::Target::BatchId(id)).await
}

async fn message(
    State(rest): State<Rest>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Failed> {
    status(&rest, &headers, get_status_request::Target::MessageId(id)).await
}

async fn cancel(
    State(rest): State<Rest>,
    headers: HeaderMap,
    Path(batch_id): Path<String>,
) -> Result<Response, Failed> {
    let caller = rest.caller(&headers)?;
    let req = pb::CancelBatchRequest { batch_id };
    let resp = caller
        .call(req, |api, r| async move { api.cancel_batch(r).await })
        .await?;
    Ok(ok("CancelBatchResponse", &resp))
}

async fn list_messages(
    State(rest): State<Rest>,
    headers: HeaderMap,
    Path(batch_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failed> {
    let caller = rest.caller(&headers)?;
    let json = json::from_query(
        "ListMessagesRequest",
        query.as_deref(),
        &[("batch_id", batch_id)],
    )?;
    let req: pb::ListMessagesRequest = json::decode("ListMessagesRequest", &json)?;
    let resp = caller
        .call(req, |api, r| async move { api.list_messages(r).await })
        .await?;
    Ok(ok("ListMessagesResponse", &resp))
}

async fn set_paused(
    State(rest): State<Rest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failed> {
    let caller = rest.caller(&headers)?;
    let body = match body {
        Ok(body) => body,
        Err(r) => return Ok(errors::body_refused(r)),
    };
    let req: pb::SetClassPausedRequest = json::decode("SetClassPausedRequest", &body)?;
    let resp = caller
        .call(req, |api, r| async move { api.set_class_paused(r).await })
        .await?;
    Ok(ok("SetClassPausedResponse", &resp))
}

/// WatchProgress as Server-Sent Events: a `progress` event per update (a
/// ProgressUpdate in JSON); an `error` event if the stream fails. It ends
/// when the watched batch ends.
async fn watch(
    rest: &Rest,
    headers: &HeaderMap,
    query: Option<&str>,
    batch: Option<String>,
) -> Result<Response, Failed> {
    let caller = rest.caller(headers)?;
    let path: Vec<(&str, String)> = batch.into_iter().map(|b| ("batch_id", b)).collect();
    let json = json::from_query("WatchProgressRequest", query, &path)?;
    let req: pb::WatchProgressRequest = json::decode("WatchProgressRequest", &json)?;
    let updates = caller
        .call(req, |api, r| async move { api.watch_progress(r).await })
        .await?;
    let events = updates.map(|update| {
        Ok::<_, std::convert::Infallible>(match update {
            Ok(u) => Event::default().event("progress").data(
                String::from_utf8(json::encode("ProgressUpdate", &u)).expect("JSON is UTF-8"),
            ),
            Err(s) => Event::default()
                .event("error")
                .data(body_of(&s).to_string()),
        })
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn progress_of(
    State(rest): State<Rest>,
    headers: HeaderMap,
    Path(batch_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failed> {
    watch(&rest, &headers, query.as_deref(), Some(batch_id)).await
}

async fn progress(
    State(rest): State<Rest>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Failed> {
    watch(&rest, &headers, query.as_deref(), None).await
}

async fn openapi() -> Response {
    static DOCUMENT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| openapi::document().to_string());
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Failed {
    Failed(Status::not_found(format!(
        "no route {method} {}: see /openapi.json for the API",
        uri.path()
    )))
}
