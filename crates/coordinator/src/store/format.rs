//! The stored formats: how a batch, its changing state and its outcomes are
//! laid out in the store's rows. Only this module reads or writes those bytes;
//! a test pins every value that existing stores depend on.

use smsmesh::pb;

use super::{Loaded, LoadedBatch, Outcome};
use crate::batch::Recipients;
use crate::batch::recipients::is_packed_number;

/// Messages per outcome row.
pub(super) const CHUNK: u32 = 4096;

/// How the slots of an outcome row are laid out. Rows written before final
/// times were stored hold 4-byte slots: state, attempts, node (2 bytes LE);
/// their state bytes are 0, 3 or 4. Rows written since hold 7-byte slots:
/// the same with [`TIMED`] set in the state byte (so `0x80` is "no outcome
/// yet"), then when the message became final, after its batch's
/// acceptance, in 3 bytes LE (see [`encode_time`]). A full row is 28 KiB,
/// which the engine keeps in a 32 KiB run of pages, as it kept the old
/// 16 KiB rows (8-byte slots made 32 KiB rows, kept in 64 KiB: the store of
/// a 14M list doubled). A row of the old layout that gets a new outcome is
/// rewritten in the new one, its old slots with no time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// Bytes per slot.
    width: usize,
    /// Whether slots carry a final time (and [`TIMED`] in their state byte).
    timed: bool,
}

/// The bit of a timed slot's state byte (no state has it).
const TIMED: u8 = 0x80;
const UNTIMED_SLOTS: Layout = Layout {
    width: 4,
    timed: false,
};
const TIMED_SLOTS: Layout = Layout {
    width: 7,
    timed: true,
};
/// A timed slot with no outcome.
const EMPTY_TIMED: [u8; 7] = [TIMED, 0, 0, 0, 0, 0, 0];

/// Flags a stored time in seconds (else milliseconds).
const IN_SECONDS: u32 = 1 << 23;

/// A final time (ms after acceptance; 0: not known) in 24 bits:
/// milliseconds below 2^23 (2.3 hours), whole seconds with bit 23 set above
/// that (up to the 49.7 days a `u32` of milliseconds holds).
pub(super) fn encode_time(ms: u32) -> [u8; 3] {
    let v = if ms < IN_SECONDS {
        ms
    } else {
        IN_SECONDS | (ms / 1000).min(IN_SECONDS - 1)
    };
    let [a, b, c, _] = v.to_le_bytes();
    [a, b, c]
}

/// The milliseconds [`encode_time`] stored.
pub(super) fn decode_time(t: &[u8]) -> u32 {
    let v = u32::from_le_bytes([t[0], t[1], t[2], 0]);
    if v & IN_SECONDS == 0 {
        v
    } else {
        (v & !IN_SECONDS).saturating_mul(1000)
    }
}

impl Layout {
    fn of(row: &[u8]) -> Layout {
        if row.first().is_some_and(|b| b & TIMED != 0) {
            TIMED_SLOTS
        } else {
            UNTIMED_SLOTS
        }
    }

    /// The slots of `row` (of this layout).
    fn slots(self, row: &[u8]) -> std::slice::ChunksExact<'_, u8> {
        row.chunks_exact(self.width)
    }

    /// The slot at `i`, if `row` holds one.
    fn slot(self, row: &[u8], i: usize) -> Option<&[u8]> {
        row.get(i * self.width..(i + 1) * self.width)
    }
}

/// Decodes one slot (checked at load or write) of message `index`.
fn decode_slot(index: u32, slot: &[u8]) -> Option<StoredOutcome> {
    let state = FinalState::from_byte(slot[0] & !TIMED).ok()??;
    Some(StoredOutcome {
        index,
        state,
        attempts: slot[1],
        node: u16::from_le_bytes([slot[2], slot[3]]),
        final_ms: slot.get(4..7).map_or(0, decode_time),
    })
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
    /// Fingerprint of the request that made it (0: stored before fingerprints).
    #[prost(fixed64, tag = "11")]
    pub fingerprint: u64,
    /// The body of every message of a list batch (a streamed upload), whose
    /// recipients are stored in rows of their own (see [`list_rows`]).
    #[prost(string, optional, tag = "12")]
    pub list_body: Option<String>,
    /// The sender of every message of a list batch ("" for the node's default).
    #[prost(string, tag = "13")]
    pub list_sender: String,
    /// Its class, as `smsmesh.v1.Priority` numbers it (0: normal, as every
    /// batch stored before classes is).
    #[prost(uint32, tag = "14")]
    pub priority: u32,
    /// Where its callback events go ("" for nowhere), as resolved at submit.
    #[prost(string, tag = "15")]
    pub callback_url: String,
    /// Messages below this may have been dispatched once the batch was
    /// stored: its first reservation, stored with it (0 in records written
    /// before there was one). The batch's state may hold a later one.
    #[prost(uint32, tag = "16")]
    pub reserved: u32,
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
    /// When it was cancelled: ms after its acceptance (0: not cancelled, or
    /// stored before cancel times were).
    #[prost(uint32, tag = "7")]
    pub cancelled_ms: u32,
}

/// A message's final state, as stored in its outcome slot. The values are the
/// stored format: renumbering one would misread every existing store, so a
/// test pins them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalState {
    /// Sent.
    Sent = 3,
    /// Failed after all its attempts.
    Failed = 4,
}

/// The state byte of a slot with no outcome yet.
const NO_OUTCOME: u8 = 0;

impl FinalState {
    /// Decodes a slot's state byte: `Ok(None)` for no outcome yet, `Err` for
    /// a byte no version ever wrote.
    fn from_byte(b: u8) -> Result<Option<FinalState>, u8> {
        match b {
            NO_OUTCOME => Ok(None),
            3 => Ok(Some(FinalState::Sent)),
            4 => Ok(Some(FinalState::Failed)),
            other => Err(other),
        }
    }
}

/// One stored outcome, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredOutcome {
    /// Message index.
    pub index: u32,
    /// Its final state.
    pub state: FinalState,
    /// Attempts made.
    pub attempts: u8,
    /// Node index + 1, or 0.
    pub node: u16,
    /// When it became final: ms after its batch's acceptance (0: not known).
    pub final_ms: u32,
}

impl LoadedBatch {
    /// The batch's stored outcomes, in index order.
    pub fn outcomes(&self) -> impl Iterator<Item = StoredOutcome> + '_ {
        let total = self.batch.total;
        self.chunks.iter().flat_map(move |(chunk, row)| {
            let base = u64::from(*chunk) * u64::from(CHUNK);
            Layout::of(row)
                .slots(row)
                .enumerate()
                .take_while(move |(i, _)| base + (*i as u64) < u64::from(total))
                // Rows are checked at load: a state byte is a known one.
                .filter_map(move |(i, slot)| decode_slot((base + i as u64) as u32, slot))
        })
    }

    /// Whether it completed: every message has its outcome, and it was not
    /// cancelled. The core keeps such a batch folded from the start.
    pub fn completed(&self) -> bool {
        self.completed
    }

    /// Works out [`completed`](Self::completed) from its outcomes.
    pub(super) fn all_outcomes_in(&self) -> bool {
        !self.state.cancelled && self.outcomes().count() as u64 == u64::from(self.batch.total)
    }
}

/// The outcome of message `index` in its outcome row `row` (checked at
/// write), if it has one.
pub(super) fn read_slot(row: &[u8], index: u32) -> Option<StoredOutcome> {
    let slot = Layout::of(row).slot(row, (index % CHUNK) as usize)?;
    decode_slot(index, slot)
}

/// Checks an outcome row of batch `id`: its length (whole slots, at most a
/// chunk of them), and that every state byte is one we write.
pub(super) fn check_row(id: u64, chunk: u32, row: &[u8]) -> Result<(), String> {
    let layout = Layout::of(row);
    let full = CHUNK as usize * layout.width;
    if row.is_empty() || row.len() > full || !row.len().is_multiple_of(layout.width) {
        return Err(format!(
            "outcome row {chunk} of batch {id:016x} is {} bytes, not a whole number of {}-byte slots up to {full}",
            row.len(),
            layout.width,
        ));
    }
    for (i, slot) in layout.slots(row).enumerate() {
        let b = slot[0];
        let state = if (b & TIMED != 0) == layout.timed {
            FinalState::from_byte(b & !TIMED)
        } else {
            Err(b)
        };
        if let Err(b) = state {
            return Err(format!(
                "outcome of message {i} in row {chunk} of batch {id:016x} has state byte {b}, which no version writes"
            ));
        }
    }
    Ok(())
}

/// An outcome row with no outcome in it yet. A row is only as long as its
/// last outcome needs (a one-message batch stores 7 bytes, not a chunk's
/// 28 KiB); missing slots at its end have no outcome. Some stores written
/// before hold full rows, which read the same.
pub(super) fn empty_row() -> Vec<u8> {
    Vec::new()
}

/// The row of message `index` (its key's second half).
pub(super) fn row_of(index: u32) -> u32 {
    index / CHUNK
}

/// Writes outcome `o` into its slot of its row, growing the row to it
/// (and rewriting a row of untimed slots as timed ones).
pub(super) fn write_slot(row: &mut Vec<u8>, o: &Outcome) {
    if !Layout::of(row).timed {
        let old = std::mem::take(row);
        for slot in UNTIMED_SLOTS.slots(&old) {
            row.extend_from_slice(&[slot[0] | TIMED, slot[1], slot[2], slot[3], 0, 0, 0]);
        }
    }
    let at = (o.index % CHUNK) as usize * TIMED_SLOTS.width;
    while row.len() < at + TIMED_SLOTS.width {
        row.extend_from_slice(&EMPTY_TIMED);
    }
    row[at] = o.state as u8 | TIMED;
    row[at + 1] = o.attempts;
    row[at + 2..at + 4].copy_from_slice(&o.node.to_le_bytes());
    row[at + 4..at + 7].copy_from_slice(&encode_time(o.final_ms));
}

/// Recipients per recipient row (and per client-reference row). The
/// engine gives a value larger than a page a power-of-two run of pages: a
/// row of 65,000 numbers (520,000 bytes) and its entry fit in 512 KiB, where
/// 65,536 (exactly 512 KiB) would take 1 MiB.
pub(super) const LIST_ROW: usize = 65_000;

/// The rows a list of recipients is stored in: (row, its packed numbers,
/// 8 bytes little-endian each; its client references, if any recipient has
/// one, as a 2-byte little-endian length per recipient then their text).
pub(super) fn list_rows(
    list: &Recipients,
) -> impl Iterator<Item = (u32, Vec<u8>, Option<Vec<u8>>)> {
    list.numbers()
        .chunks(LIST_ROW)
        .enumerate()
        .map(move |(row, numbers)| {
            let numbers_row = numbers.iter().flat_map(|n| n.to_le_bytes()).collect();
            let refs_row = list.has_refs().then(|| {
                let first = row * LIST_ROW;
                let refs: Vec<&str> = (first..first + numbers.len())
                    .map(|i| list.client_ref(i))
                    .collect();
                let mut bytes: Vec<u8> = refs
                    .iter()
                    .flat_map(|r| (r.len() as u16).to_le_bytes())
                    .collect();
                for r in refs {
                    bytes.extend_from_slice(r.as_bytes());
                }
                bytes
            });
            (row as u32, numbers_row, refs_row)
        })
}

/// A list of `total` recipients of batch `id` from its rows (in row order),
/// every number and reference checked.
pub(super) fn read_list(
    id: u64,
    total: u32,
    numbers: &[(u32, Vec<u8>)],
    refs: &[(u32, Vec<u8>)],
) -> Result<Recipients, String> {
    let mut list = ListReader::new(id, total);
    for (row, bytes) in numbers {
        list.number_row(*row, bytes)?;
    }
    for (_, bytes) in refs {
        list.ref_row(bytes)?;
    }
    list.finish()
}

/// A list read back a row at a time, as the load merges the tables: every
/// number row in order, then every reference row in order, each decoded
/// and dropped before the next, so that the rows are never all in memory
/// beside the list they make.
pub(super) struct ListReader {
    id: u64,
    total: u32,
    /// Rows a list of `total` recipients has.
    rows: usize,
    number_rows: usize,
    ref_rows: usize,
    packed: Vec<u64>,
    text: String,
    ends: Vec<u32>,
}

impl ListReader {
    pub(super) fn new(id: u64, total: u32) -> Self {
        ListReader {
            id,
            total,
            rows: (total as usize).div_ceil(LIST_ROW),
            number_rows: 0,
            ref_rows: 0,
            packed: Vec::with_capacity(total as usize),
            text: String::new(),
            ends: Vec::new(),
        }
    }

    fn bad(&self, what: String) -> String {
        format!("recipients of batch {:016x}: {what}", self.id)
    }

    /// The numbers of row `row` (the rows must come in order). Rows beyond
    /// the list's are counted, for [`finish`](Self::finish) to refuse.
    pub(super) fn number_row(&mut self, row: u32, bytes: &[u8]) -> Result<(), String> {
        let expect = self.number_rows;
        self.number_rows += 1;
        if expect >= self.rows {
            return Ok(());
        }
        let want = LIST_ROW.min(self.total as usize - expect * LIST_ROW);
        if row as usize != expect || bytes.len() != want * 8 {
            return Err(self.bad(format!(
                "number row {row} is {} bytes where row {expect} of {want} numbers was expected",
                bytes.len()
            )));
        }
        for n in bytes.chunks_exact(8) {
            let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
            if !is_packed_number(n) {
                return Err(self.bad(format!(
                    "recipient {} holds {n:#x}, which is no packed number",
                    self.packed.len()
                )));
            }
            self.packed.push(n);
        }
        Ok(())
    }

    /// The client references of the next row, after every number row (as
    /// before, a reference row's own number is not checked).
    pub(super) fn ref_row(&mut self, bytes: &[u8]) -> Result<(), String> {
        let expect = self.ref_rows;
        self.ref_rows += 1;
        if expect >= self.rows || self.number_rows != self.rows {
            return Ok(());
        }
        let want = LIST_ROW.min(self.total as usize - expect * LIST_ROW);
        read_refs(bytes, want, &mut self.text, &mut self.ends)
            .map_err(|what| self.bad(format!("reference row {expect}: {what}")))
    }

    /// The list, once its row counts are checked.
    pub(super) fn finish(self) -> Result<Recipients, String> {
        if self.number_rows != self.rows || !(self.ref_rows == 0 || self.ref_rows == self.rows) {
            return Err(self.bad(format!(
                "{} number rows and {} reference rows for {} recipients ({} rows)",
                self.number_rows, self.ref_rows, self.total, self.rows
            )));
        }
        Ok(Recipients::from_parts(self.packed, self.text, self.ends))
    }
}

/// Appends the `n` references of one reference row to `text` and `ends`.
fn read_refs(row: &[u8], n: usize, text: &mut String, ends: &mut Vec<u32>) -> Result<(), String> {
    let (lens, rest) = row
        .split_at_checked(n * 2)
        .ok_or_else(|| format!("{} bytes hold no {n} lengths", row.len()))?;
    let rest = std::str::from_utf8(rest).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut at = 0;
    for len in lens.chunks_exact(2) {
        let end = at + usize::from(u16::from_le_bytes([len[0], len[1]]));
        if !rest.is_char_boundary(end) || end > rest.len() {
            return Err(format!("a reference ends at byte {end} of {}", rest.len()));
        }
        at = end;
        let total = text.len() + at;
        ends.push(u32::try_from(total).map_err(|_| "references pass 4 GiB".to_string())?);
    }
    if at != rest.len() {
        return Err(format!(
            "{} bytes of text after the last reference",
            rest.len() - at
        ));
    }
    text.push_str(rest);
    Ok(())
}

/// Checks what was loaded against itself, so nothing decoded from the store
/// can point outside what exists: every batch's settings, its state, its
/// outcome rows and errors, and the node and batch each names.
pub(super) fn check(loaded: &Loaded) -> Result<(), String> {
    let nodes = loaded.nodes.len();
    for lb in &loaded.batches {
        let (b, id) = (&lb.batch, lb.batch.id);
        let bad = |what: String| Err(format!("batch {id:016x}: {what}"));
        if b.total == 0 || !(1..=255).contains(&b.max_attempts) {
            return bad(format!(
                "{} messages and {} attempts each",
                b.total, b.max_attempts
            ));
        }
        let explicit = b.synthetic_seed.is_none() && b.list_body.is_none();
        if explicit && b.messages.len() != b.total as usize || !explicit && !b.messages.is_empty() {
            return bad(format!(
                "{} messages stored for a batch of {}",
                b.messages.len(),
                b.total
            ));
        }
        if b.list_body.is_some() != lb.list.is_some()
            || b.list_body.is_some() && b.synthetic_seed.is_some()
        {
            return bad("a list body without its recipients, or with a seed".into());
        }
        if lb.state.id != id || lb.state.dispatched > b.total || b.reserved > b.total {
            return bad(format!(
                "its state (of {:016x}) has {} dispatched, and it was stored with {} reserved, of {}",
                lb.state.id, lb.state.dispatched, b.reserved, b.total
            ));
        }
        let rows = b.total.div_ceil(CHUNK);
        if let Some((chunk, _)) = lb.chunks.iter().find(|(c, _)| *c >= rows) {
            return bad(format!("outcome row {chunk} of only {rows}"));
        }
        if let Some(o) = lb
            .outcomes()
            .find(|o| usize::from(o.node) > nodes || o.attempts == 0)
        {
            return bad(format!(
                "message {} names node {} of {nodes}, after {} attempts",
                o.index, o.node, o.attempts
            ));
        }
        if let Some((index, _)) = lb.errors.iter().find(|(i, _)| *i >= b.total) {
            return bad(format!("an error for message {index} of {}", b.total));
        }
    }
    if let Some((n, _)) = loaded.nodes.iter().find(|(n, _)| usize::from(*n) >= nodes) {
        return Err(format!("node index {n} among only {nodes} node names"));
    }
    // Batches load in id order (the table's key order).
    let stored = |id: &u64| {
        loaded
            .batches
            .binary_search_by_key(id, |lb| lb.batch.id)
            .is_ok()
    };
    if let Some((key, id)) = loaded.idempotency.iter().find(|(_, id)| !stored(id)) {
        return Err(format!(
            "idempotency key {} names batch {id:016x}, which is not stored",
            smsmesh::echo(key)
        ));
    }
    Ok(())
}
