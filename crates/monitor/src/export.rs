//! `smsmon export`: a batch's messages as CSV, for reconciliation, paged
//! through `ListMessages` so that a batch of millions streams out in
//! constant memory.

use std::io::Write;

use smsmesh::pb::{self, MessageState};

use crate::Target;

/// The CSV header; every row has these columns in this order.
pub const COLUMNS: [&str; 17] = [
    "message_id",
    "state",
    "attempts",
    "node",
    "to",
    "client_ref",
    "segments",
    "last_error",
    "accepted_unix_ms",
    "last_attempt_unix_ms",
    "final_unix_ms",
    "sender",
    "provider_ids",
    "receipt_state",
    "receipt_error",
    "receipt_unix_ms",
    "body",
];

/// Messages asked for in one page.
const PAGE_SIZE: u32 = 10_000;

/// Writes every message of `batch` whose state is in `states` (all when
/// empty) to `out` as CSV with a header row. Returns how many rows were written.
pub async fn export(
    target: &Target,
    batch: &str,
    states: &[MessageState],
    out: impl Write,
) -> anyhow::Result<u64> {
    let mut client = target.connect().await?;
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(COLUMNS)?;
    let mut rows = 0u64;
    let mut page_token = String::new();
    loop {
        let request = target.request(pb::ListMessagesRequest {
            batch_id: batch.to_string(),
            states: states.iter().map(|s| *s as i32).collect(),
            page_size: PAGE_SIZE,
            page_token: std::mem::take(&mut page_token),
        })?;
        let page = client
            .list_messages(request)
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "ListMessages: {}: {}",
                    s.code(),
                    smsmesh::client::describe(&s)
                )
            })?
            .into_inner();
        for m in &page.messages {
            csv.write_record(row(m))?;
            rows += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    csv.flush()?;
    Ok(rows)
}

/// One message as a CSV row, in the order of [`COLUMNS`].
fn row(m: &pb::MessageStatus) -> [String; COLUMNS.len()] {
    [
        m.message_id.clone(),
        state_name(m.state).to_string(),
        m.attempts.to_string(),
        m.node.clone(),
        m.to.clone(),
        m.client_ref.clone(),
        m.segments.to_string(),
        m.last_error.clone(),
        m.accepted_unix_ms.to_string(),
        m.last_attempt_unix_ms.to_string(),
        m.final_unix_ms.to_string(),
        m.sender.clone(),
        m.provider_ids.join(" "),
        m.receipt_state.clone(),
        m.receipt_error.clone(),
        m.receipt_unix_ms.to_string(),
        m.body.clone(),
    ]
}

/// A message state as the CSV (and `--state`) spells it.
pub fn state_name(state: i32) -> &'static str {
    match MessageState::try_from(state) {
        Ok(MessageState::Pending) => "pending",
        Ok(MessageState::InFlight) => "in-flight",
        Ok(MessageState::RetryWait) => "retry-wait",
        Ok(MessageState::Sent) => "sent",
        Ok(MessageState::Failed) => "failed",
        Ok(MessageState::Cancelled) => "cancelled",
        Ok(MessageState::Delivered) => "delivered",
        Ok(MessageState::Undelivered) => "undelivered",
        Ok(MessageState::Expired) => "expired",
        Ok(MessageState::Rejected) => "rejected",
        Ok(MessageState::DeliveryUnknown) => "delivery-unknown",
        _ => "unknown",
    }
}

/// The state `--state` names, if any.
pub fn parse_state(name: &str) -> Result<MessageState, String> {
    [
        MessageState::Pending,
        MessageState::InFlight,
        MessageState::RetryWait,
        MessageState::Sent,
        MessageState::Failed,
        MessageState::Cancelled,
        MessageState::Delivered,
        MessageState::Undelivered,
        MessageState::Expired,
        MessageState::Rejected,
        MessageState::DeliveryUnknown,
    ]
    .into_iter()
    .find(|s| state_name(*s as i32) == name)
    .ok_or_else(|| {
        format!(
            "{name:?} is not a message state: use pending, in-flight, retry-wait, sent, failed, cancelled, delivered, undelivered, expired, rejected or delivery-unknown"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_name_parses_back() {
        for s in 1..=11 {
            let name = state_name(s);
            assert_eq!(parse_state(name).map(|s| s as i32), Ok(s));
        }
        assert!(parse_state("done").unwrap_err().contains("failed"));
    }

    #[test]
    fn a_row_has_a_field_per_column_and_quotes_what_needs_it() {
        let m = pb::MessageStatus {
            message_id: "b1.7".into(),
            state: MessageState::Failed as i32,
            last_error: "rejected, \"bad\" number".into(),
            body: "line one\nline two".into(),
            ..Default::default()
        };
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(row(&m)).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        let back: Vec<csv::StringRecord> = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes())
            .records()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].len(), COLUMNS.len());
        assert_eq!(&back[0][7], "rejected, \"bad\" number");
        assert_eq!(&back[0][16], "line one\nline two");
    }
}
