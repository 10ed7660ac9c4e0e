//! SubmitBatchStream: one batch uploaded as a header (the body, once),
//! chunks of recipients and a commit. Each part is checked and its numbers
//! packed as it arrives; nothing reaches the reactor or the store before
//! the commit, so a broken upload leaves nothing behind.

use std::sync::Arc;
use std::time::Instant;

use smsmesh::pb::{self, submit_batch_stream_request::Part};
use smsmesh::priority::Class;
use smsmesh::{Error, sms};
use tonic::{Status, Streaming};

use crate::Config;
use crate::batch::{Content, Recipients, recipients};
use crate::core::NewBatch;
use crate::submit::{Fingerprint, idempotency_key, max_attempts, new_batch};

/// An upload between its header and its commit.
#[derive(Debug)]
pub struct Upload {
    body: String,
    sender: String,
    class: Class,
    max_attempts: u8,
    key: Option<String>,
    recipients: Recipients,
    /// Chunks received so far.
    chunks: u64,
    /// Most recipients allowed (--max-batch-size).
    max: u64,
    fingerprint: Fingerprint,
    started: Instant,
    /// Where its callback events go, as the header asked.
    callback_url: Option<std::sync::Arc<str>>,
}

impl Upload {
    /// An upload that `header` starts.
    pub fn start(header: pb::UploadHeader, config: &Config) -> Result<Upload, Error> {
        sms::validate_body("header.body", &header.body)?;
        let attempts = max_attempts(header.max_attempts, config)?;
        let key = idempotency_key(header.idempotency_key)?;
        let class =
            Class::from_proto(header.priority, "header.priority").map_err(Error::invalid)?;
        if !header.sender.is_empty() {
            sms::sender_form("header.sender", &header.sender)?;
        }
        // Not SubmitBatch's fields: the same key used for a SubmitBatch and
        // for an upload is always a different request.
        let mut fingerprint = Fingerprint::default();
        fingerprint.eat(b"SubmitBatchStream");
        fingerprint.eat(
            &header
                .max_attempts
                .map_or(u64::MAX, u64::from)
                .to_le_bytes(),
        );
        fingerprint.eat(header.body.as_bytes());
        if !header.sender.is_empty() {
            fingerprint.eat(b"\0sender");
            fingerprint.eat(header.sender.as_bytes());
        }
        if header.priority != 0 {
            fingerprint.eat(b"\0priority");
            fingerprint.eat(&header.priority.to_le_bytes());
        }
        let callback_url =
            crate::callbacks::parse_url("header.callback_url", &header.callback_url)?;
        if let Some(url) = &callback_url {
            fingerprint.eat(b"\0callback_url");
            fingerprint.eat(url.as_bytes());
        }
        Ok(Upload {
            class,
            body: header.body,
            sender: header.sender,
            max_attempts: attempts,
            key,
            recipients: Recipients::new(),
            chunks: 0,
            max: config.max_batch_size.min(u64::from(u32::MAX)),
            fingerprint,
            started: Instant::now(),
            callback_url,
        })
    }

    /// Adds a chunk of recipients; an error names the chunk and the index in it.
    pub fn add(&mut self, chunk: pb::RecipientChunk) -> Result<(), Error> {
        let c = self.chunks;
        self.chunks += 1;
        if !chunk.client_ref.is_empty() && chunk.client_ref.len() != chunk.to.len() {
            return Err(Error::invalid(format!(
                "chunk {c}: {} client_ref values for {} numbers (give none, or one per number)",
                chunk.client_ref.len(),
                chunk.to.len()
            )));
        }
        let have = self.recipients.len() as u64;
        if have + chunk.to.len() as u64 > self.max {
            return Err(Error::invalid(format!(
                "chunk {c}: {} more recipients after {have} exceed the maximum of {} per batch (--max-batch-size)",
                chunk.to.len(),
                self.max
            )));
        }
        for (i, to) in chunk.to.iter().enumerate() {
            let client_ref = chunk.client_ref.get(i).map_or("", String::as_str);
            if sms::validate_e164("", to).is_err() {
                let at = format!(
                    "chunk {c}, to[{i}] (recipient {} of the upload)",
                    have + i as u64
                );
                sms::validate_e164(&at, to)?;
            }
            if client_ref.len() > sms::MAX_CLIENT_REF {
                return Err(Error::invalid(format!(
                    "chunk {c}, client_ref[{i}]: {} bytes long; at most {} are allowed",
                    client_ref.len(),
                    sms::MAX_CLIENT_REF
                )));
            }
            self.fingerprint.eat(to.as_bytes());
            self.fingerprint.eat(client_ref.as_bytes());
            self.recipients
                .push(recipients::pack(to), client_ref)
                .map_err(|e| Error::invalid(format!("chunk {c}: {e}")))?;
        }
        Ok(())
    }

    /// The batch the upload makes, once `commit` ends it.
    pub fn commit(mut self, commit: pb::UploadCommit) -> Result<NewBatch, Error> {
        let n = self.recipients.len() as u64;
        if n == 0 {
            return Err(Error::invalid(
                "the upload committed no recipients: send at least one chunk with numbers",
            ));
        }
        if commit.total != 0 && commit.total != n {
            return Err(Error::invalid(format!(
                "the commit says {} recipients, but {n} arrived in {} chunks: nothing was accepted",
                commit.total, self.chunks
            )));
        }
        self.recipients.shrink_to_fit();
        tracing::debug!(recipients = n, chunks = self.chunks, took = ?self.started.elapsed(), "upload complete");
        let content = Content::List {
            body: self.body,
            sender: self.sender,
            recipients: Arc::new(self.recipients),
        };
        let mut new = new_batch(content, n as u32, self.max_attempts, self.key);
        new.fingerprint = self.fingerprint.value();
        new.class = self.class;
        new.callback_url = self.callback_url;
        Ok(new)
    }
}

/// Reads a whole upload from `stream`: the batch it makes once it commits.
pub async fn receive(
    mut stream: Streaming<pb::SubmitBatchStreamRequest>,
    config: &Config,
) -> Result<NewBatch, Status> {
    let mut upload: Option<Upload> = None;
    let broken = |upload: &Option<Upload>, why: String| {
        let got = upload.as_ref().map_or(0, |u| u.recipients.len());
        Error::invalid(format!(
            "{why} after {got} recipients: nothing was accepted (an upload ends with a commit)"
        ))
    };
    loop {
        let part = match stream.message().await? {
            Some(m) => m.part,
            None => return Err(broken(&upload, "the upload ended without a commit".into()).into()),
        };
        match (part, &mut upload) {
            (Some(Part::Header(h)), None) => upload = Some(Upload::start(h, config)?),
            (Some(Part::Header(_)), Some(_)) => {
                return Err(broken(&upload, "a second header".into()).into());
            }
            (Some(_), None) => {
                return Err(Error::invalid(
                    "the first part of an upload must be its header (body and options)",
                )
                .into());
            }
            (Some(Part::Recipients(chunk)), Some(u)) => u.add(chunk)?,
            (Some(Part::Commit(c)), Some(_)) => {
                let u = upload.take().expect("matched Some");
                // The stream must end here: a part after the commit is a client's mistake.
                if stream.message().await?.is_some() {
                    return Err(Error::invalid(
                        "a part after the commit: nothing was accepted (the commit is the last part)",
                    )
                    .into());
                }
                return Ok(u.commit(c)?);
            }
            (None, _) => {
                return Err(broken(&upload, "a part with nothing set".into()).into());
            }
        }
    }
}
