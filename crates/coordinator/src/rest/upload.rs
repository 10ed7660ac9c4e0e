//! `POST /v1/batches/upload`: a broadcast to a CSV of numbers, sent as the
//! request body and read while it arrives, made into one batch exactly as
//! SubmitBatchStream makes it ([`crate::upload::Upload`]): the query string
//! gives the header's fields (`body`, `sender`, `priority`, …), each CSV line
//! a number and an optional client_ref. Nothing is accepted unless every
//! line is good; a bad one is named by its line number.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use smsmesh::{pb, sms};
use tonic::Status;

use super::errors::Failed;
use super::{Rest, json, ok};
use crate::upload::Upload;

/// Numbers handed to the upload at a time.
const CHUNK: usize = 10_000;

/// The route. A refused upload's body is still read while the answer goes
/// out ([`super::linger`]).
pub(super) async fn upload(
    State(rest): State<Rest>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, Failed> {
    let caller = rest.caller(&headers)?;
    let header = json::from_query("UploadHeader", query.as_deref(), &[])?;
    let header: pb::UploadHeader = json::decode("UploadHeader", &header)?;
    let mut csv = Csv {
        upload: Upload::start(header, caller.api.config()).map_err(Status::from)?,
        chunk: pb::RecipientChunk::default(),
        line: 0,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut data = body.into_data_stream();
    while let Some(bytes) = data.next().await {
        let bytes = bytes.map_err(|e| {
            Status::invalid_argument(format!(
                "the upload broke off after line {}: {e}; nothing was accepted",
                csv.line
            ))
        })?;
        pending.extend_from_slice(&bytes);
        let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let rest_of = pending.split_off(end + 1);
        csv.lines(&pending)?;
        pending = rest_of;
    }
    csv.lines(&pending)?;
    let Csv {
        mut upload, chunk, ..
    } = csv;
    if !chunk.to.is_empty() {
        upload.add(chunk).map_err(Status::from)?;
    }
    let new = upload
        .commit(pb::UploadCommit { total: 0 })
        .map_err(Status::from)?;
    let resp = caller
        .call(new, |api, r| async move { api.submit_upload(r).await })
        .await?;
    Ok(ok("SubmitBatchResponse", &resp))
}

/// An upload being read from CSV lines.
struct Csv {
    upload: Upload,
    chunk: pb::RecipientChunk,
    /// Lines read so far.
    line: u64,
}

impl Csv {
    /// Reads whole lines.
    fn lines(&mut self, text: &[u8]) -> Result<(), Status> {
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        if text.is_empty() {
            return Ok(());
        }
        for raw in text.split(|&b| b == b'\n') {
            self.line += 1;
            let n = self.line;
            let line = std::str::from_utf8(raw)
                .map_err(|_| Status::invalid_argument(format!("line {n}: not UTF-8")))?
                .trim();
            let (to, client_ref) = match line.split_once(',') {
                Some((to, r)) => (unquote(to), unquote(r)),
                None => (unquote(line), ""),
            };
            if to.is_empty() {
                continue;
            }
            // A header row ("number,ref") is skipped.
            if n == 1 && !to.starts_with('+') {
                continue;
            }
            sms::validate_e164(&format!("line {n}"), to).map_err(Status::from)?;
            self.chunk.to.push(to.to_string());
            self.chunk.client_ref.push(client_ref.to_string());
            if self.chunk.to.len() >= CHUNK {
                let chunk = std::mem::take(&mut self.chunk);
                self.upload
                    .add(chunk)
                    .map_err(|e| Status::invalid_argument(format!("near line {n}: {e}")))?;
            }
        }
        Ok(())
    }
}

/// A CSV field without its surrounding spaces and quotes.
fn unquote(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .unwrap_or(f)
}
