//! `smsmon submit`: a CSV of numbers sent as one batch with one body, by a
//! streamed upload (SubmitBatchStream). The file is read while it is sent,
//! so a list of millions takes constant memory here; each number is checked
//! first, so a bad one is reported by its line and nothing is accepted.

use std::io::Read;

use anyhow::{Context, bail};
use smsmesh::pb::{self, submit_batch_stream_request::Part};
use tokio::sync::mpsc;

use crate::Target;

/// What to upload.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The text every recipient gets.
    pub body: String,
    /// Attempts per message (the coordinator's default if `None`).
    pub max_attempts: Option<u32>,
    /// Makes a repeated upload of the same file answer the first batch.
    pub idempotency_key: String,
    /// Recipients per chunk.
    pub chunk: usize,
    /// The sender of every message ("" for the nodes' default).
    pub sender: String,
    /// The batch's class.
    pub class: smsmesh::priority::Class,
    /// Where the batch's events go ("" for the tenant's default).
    pub callback_url: String,
}

/// One recipient read from the file, or why the file cannot be used.
type Row = Result<(String, String), String>;

/// Reads the CSV: `to` in the first column, an optional `client_ref` in the
/// second; a first row whose first field is not a number is a header. Blank
/// lines are skipped. Each number is checked as the coordinator would, so an
/// error names its line.
fn rows(input: impl Read) -> impl Iterator<Item = Row> {
    let reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let mut first = true;
    reader.into_records().filter_map(move |record| {
        let record = match record {
            Ok(r) => r,
            Err(e) => return Some(Err(format!("cannot read the CSV: {e}"))),
        };
        let line = record.position().map_or(0, csv::Position::line);
        let to = record.get(0).unwrap_or_default();
        let header =
            std::mem::take(&mut first) && !to.starts_with(|c: char| c == '+' || c.is_ascii_digit());
        if header || record.iter().all(str::is_empty) {
            return None;
        }
        let client_ref = record.get(1).unwrap_or_default();
        let checked = smsmesh::sms::validate_e164(&format!("line {line}"), to).and_then(|()| {
            if client_ref.len() > smsmesh::sms::MAX_CLIENT_REF {
                return Err(smsmesh::Error::invalid(format!(
                    "line {line}: the client_ref is {} bytes long; at most {} are allowed",
                    client_ref.len(),
                    smsmesh::sms::MAX_CLIENT_REF
                )));
            }
            Ok(())
        });
        Some(match checked {
            Ok(()) => Ok((to.to_string(), client_ref.to_string())),
            Err(e) => Err(e.to_string()),
        })
    })
}

/// Uploads the recipients read from `input` as one batch. Returns the
/// coordinator's answer; nothing is accepted if the file has a bad line or
/// the upload breaks.
pub async fn submit(
    target: &Target,
    upload: &Upload,
    input: impl Read + Send + 'static,
) -> anyhow::Result<pb::SubmitBatchResponse> {
    smsmesh::sms::validate_body("--body", &upload.body).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !upload.sender.is_empty() {
        smsmesh::sms::sender_form("--sender", &upload.sender)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut client = target.connect().await?;
    let (tx, rx) = mpsc::channel::<pb::SubmitBatchStreamRequest>(4);
    let header = pb::SubmitBatchStreamRequest {
        part: Some(Part::Header(pb::UploadHeader {
            body: upload.body.clone(),
            max_attempts: upload.max_attempts,
            idempotency_key: upload.idempotency_key.clone(),
            sender: upload.sender.clone(),
            priority: upload.class.to_proto() as i32,
            callback_url: upload.callback_url.clone(),
        })),
    };
    let chunk_size = upload.chunk.max(1);
    // The file is read on a thread of its own, a chunk at a time. On a bad
    // line it stops without a commit: the stream ends and nothing is accepted.
    let reader = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let send = |part| {
            tx.blocking_send(part)
                .map_err(|_| "the upload stopped".to_string())
        };
        send(header)?;
        let (mut to, mut refs, mut any_ref, mut total) = (Vec::new(), Vec::new(), false, 0u64);
        let flush = |to: &mut Vec<String>, refs: &mut Vec<String>, any_ref: &mut bool| {
            let client_ref = if *any_ref {
                std::mem::take(refs)
            } else {
                Vec::new()
            };
            refs.clear();
            *any_ref = false;
            send(pb::SubmitBatchStreamRequest {
                part: Some(Part::Recipients(pb::RecipientChunk {
                    to: std::mem::take(to),
                    client_ref,
                })),
            })
        };
        for row in rows(input) {
            let (number, client_ref) = row?;
            any_ref |= !client_ref.is_empty();
            to.push(number);
            refs.push(client_ref);
            total += 1;
            if to.len() == chunk_size {
                flush(&mut to, &mut refs, &mut any_ref)?;
            }
        }
        if total == 0 {
            return Err("the file holds no numbers".into());
        }
        if !to.is_empty() {
            flush(&mut to, &mut refs, &mut any_ref)?;
        }
        send(pb::SubmitBatchStreamRequest {
            part: Some(Part::Commit(pb::UploadCommit { total })),
        })?;
        Ok(total)
    });
    let request = target.request(tokio_stream::wrappers::ReceiverStream::new(rx))?;
    let answer = client.submit_batch_stream(request).await;
    // The file's own error says more than the coordinator's "ended without a commit".
    let read = reader.await.context("the file reader")?;
    if let Err(e) = read {
        bail!("{e}: nothing was submitted");
    }
    let answer = answer.map_err(|s| {
        anyhow::anyhow!(
            "SubmitBatchStream: {}: {}",
            s.code(),
            smsmesh::client::describe(&s)
        )
    })?;
    Ok(answer.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_row_and_blank_lines_are_skipped_and_a_bad_number_names_its_line() {
        let csv = "phone,ref\n+14155550100,a\n\n +14155550101 \n";
        let got: Vec<Row> = rows(csv.as_bytes()).collect();
        assert_eq!(
            got,
            [
                Ok(("+14155550100".into(), "a".into())),
                Ok(("+14155550101".into(), String::new()))
            ]
        );
        let got: Vec<Row> = rows("+14155550100\n+1415\n".as_bytes()).collect();
        assert!(got[0].is_ok());
        let e = got[1].clone().unwrap_err();
        assert!(e.starts_with("line 2: \"+1415\" is not an E.164"), "{e}");
    }
}
