//! Reading one batch's messages back from the store, a range at a time:
//! what a folded batch's messages were (number, body, reference) and what
//! became of them (outcome, attempts, node, last error), for GetStatus and
//! ListMessages. Reads run beside the writer; each sees the last commit.

use prost::Message;

use super::format::{self, LIST_ROW, StoredBatch};
use super::{
    BATCHES, CLIENT_REFS, ERRORS, NODES, OUTCOMES, RECIPIENTS, Store, StoreError, StoredOutcome,
};

/// One message as the store holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    /// Its index in the batch.
    pub index: u32,
    /// The number.
    pub to: String,
    /// The text.
    pub body: String,
    /// The client's reference.
    pub client_ref: String,
    /// Its sender ("" for the node's default).
    pub sender: String,
    /// Its outcome, if it has one.
    pub outcome: Option<StoredOutcome>,
    /// The name of the node of its outcome ("" for none).
    pub node: String,
    /// Its last error, if it failed for good.
    pub error: Option<String>,
    /// Its delivery, once a receipt (or the timeout) decided it.
    pub delivery: Option<super::StoredDelivery>,
    /// The provider's ids it waits for receipts with.
    pub provider_ids: Vec<String>,
}

impl Store {
    /// Messages `from..to` of batch `id` for which `keep` holds of their
    /// outcome and delivery, at most `limit`; with the index after the last one looked at.
    /// `None` if the batch is not stored.
    pub fn read_messages(
        &self,
        id: u64,
        from: u32,
        to: u32,
        limit: usize,
        keep: impl Fn(Option<&StoredOutcome>, Option<&super::StoredDelivery>) -> bool,
    ) -> Result<Option<(Vec<StoredMessage>, u32)>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let corrupt = |what: String| StoreError::Corrupt {
            path: self.path.clone(),
            what,
        };
        let Some(record) = txn
            .open_table(BATCHES)
            .map_err(|e| self.err(e))?
            .get(id)
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let batch = StoredBatch::decode(record.value())
            .map_err(|e| corrupt(format!("batch {id:016x}: {e}")))?;
        let to = to.min(batch.total);
        let outcomes_t = txn.open_table(OUTCOMES).map_err(|e| self.err(e))?;
        let errors_t = txn.open_table(ERRORS).map_err(|e| self.err(e))?;
        let nodes_t = txn.open_table(NODES).map_err(|e| self.err(e))?;
        let numbers_t = txn.open_table(RECIPIENTS).map_err(|e| self.err(e))?;
        let refs_t = txn.open_table(CLIENT_REFS).map_err(|e| self.err(e))?;
        let waits_t = txn
            .open_table(super::receipts::RECEIPT_WAITS)
            .map_err(|e| self.err(e))?;
        let finals_t = txn
            .open_table(super::receipts::DELIVERIES)
            .map_err(|e| self.err(e))?;
        let mut found = Vec::new();
        let mut index = from;
        let mut row: Option<(u32, Vec<u8>)> = None;
        let mut list: Option<(u32, crate::batch::Recipients)> = None;
        while index < to && found.len() < limit {
            let chunk = format::row_of(index);
            if row.as_ref().is_none_or(|(c, _)| *c != chunk) {
                let bytes = outcomes_t
                    .get((id, chunk))
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value().to_vec())
                    .unwrap_or_default();
                row = Some((chunk, bytes));
            }
            let outcome = row
                .as_ref()
                .and_then(|(_, bytes)| format::read_slot(bytes, index));
            let (delivery, provider_ids) = self.read_receipt(&waits_t, &finals_t, id, index)?;
            if !keep(outcome.as_ref(), delivery.as_ref()) {
                index += 1;
                continue;
            }
            let (mut number, mut body, mut client_ref, mut sender) =
                (String::new(), String::new(), String::new(), String::new());
            if let Some(seed) = batch.synthetic_seed {
                smsmesh::synth::message(
                    seed,
                    index,
                    batch.synthetic_body.as_deref(),
                    &mut number,
                    &mut body,
                );
            } else if let Some(text) = &batch.list_body {
                let list_row = index / LIST_ROW as u32;
                if list.as_ref().is_none_or(|(r, _)| *r != list_row) {
                    let numbers = numbers_t
                        .get((id, list_row))
                        .map_err(|e| self.err(e))?
                        .map(|v| vec![(0, v.value().to_vec())])
                        .unwrap_or_default();
                    let refs = refs_t
                        .get((id, list_row))
                        .map_err(|e| self.err(e))?
                        .map(|v| vec![(0, v.value().to_vec())])
                        .unwrap_or_default();
                    let first = list_row as usize * LIST_ROW;
                    let n = LIST_ROW.min(batch.total as usize - first) as u32;
                    let part = format::read_list(id, n, &numbers, &refs).map_err(corrupt)?;
                    list = Some((list_row, part));
                }
                let (_, part) = list.as_ref().expect("read above");
                let at = index as usize % LIST_ROW;
                part.number(at, &mut number);
                body.clone_from(text);
                client_ref = part.client_ref(at).to_string();
                sender.clone_from(&batch.list_sender);
            } else if let Some(m) = batch.messages.get(index as usize) {
                number.clone_from(&m.to);
                body.clone_from(&m.body);
                client_ref.clone_from(&m.client_ref);
                sender.clone_from(&m.sender);
            }
            let node = match outcome.as_ref().and_then(|o| o.node.checked_sub(1)) {
                Some(n) => nodes_t
                    .get(n)
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value().to_string())
                    .unwrap_or_default(),
                None => String::new(),
            };
            let error = errors_t
                .get((id, index))
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_string());
            found.push(StoredMessage {
                index,
                to: number,
                body,
                client_ref,
                sender,
                outcome,
                node,
                error,
                delivery,
                provider_ids,
            });
            index += 1;
        }
        Ok(Some((found, index)))
    }
}
