//! One message's state in a batch, packed into a 10-byte [`Slot`]: what it
//! is doing, its attempts, its last node and when it last changed.

use crate::store::FinalState;

/// State of one message, packed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// One of the `ST_*` constants.
    pub state: u8,
    /// Dispatches so far; the attempt number of the last job.
    pub attempts: u8,
    /// Failed attempts so far.
    pub failures: u8,
    /// Node (index in the coordinator's node-name table) of the last attempt, +1; 0 = none.
    pub node: u16,
    /// See [`Slot::stamp`]; two halves so that a slot stays 2-aligned (10
    /// bytes, not 12).
    stamp: [u16; 2],
}

const _: () = assert!(std::mem::size_of::<Slot>() == 10);

impl Slot {
    /// When its last attempt changed (was dispatched, or its outcome came)
    /// or, once final, when it became final: milliseconds after its batch
    /// was accepted, at least 1; 0 for never (or not known: the store keeps
    /// only final ones).
    pub fn stamp(&self) -> u32 {
        u32::from(self.stamp[0]) | u32::from(self.stamp[1]) << 16
    }

    /// Sets [`Slot::stamp`].
    pub fn set_stamp(&mut self, ms: u32) {
        self.stamp = [ms as u16, (ms >> 16) as u16];
    }
}

/// What a node's result says of one attempt (see `Outcome` in node.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted by the provider.
    Sent,
    /// A temporary failure (or no answer): retried while attempts are left.
    Failed,
    /// A permanent failure: final at once.
    Rejected,
    /// The provider asked to slow down: sent again without using an attempt.
    Throttled,
}

/// Waiting for dispatch.
pub const ST_PENDING: u8 = 0;
/// On a node.
pub const ST_IN_FLIGHT: u8 = 1;
/// Failed; waiting for its backoff.
pub const ST_RETRY_WAIT: u8 = 2;
/// Final: sent.
pub const ST_SENT: u8 = 3;
/// Final: failed after all attempts.
pub const ST_FAILED: u8 = 4;
/// Final: not sent because the batch was cancelled.
pub const ST_CANCELLED: u8 = 5;
/// Waiting for dispatch after a coordinator restart; it may have been sent before the crash.
pub const ST_RESUMED: u8 = 6;

/// Whether a slot state is final.
pub fn is_final(state: u8) -> bool {
    matches!(state, ST_SENT | ST_FAILED | ST_CANCELLED)
}

/// The stored form of a slot state that is stored (sent or failed).
pub fn to_stored(state: u8) -> Option<FinalState> {
    match state {
        ST_SENT => Some(FinalState::Sent),
        ST_FAILED => Some(FinalState::Failed),
        _ => None,
    }
}

/// The slot state of a stored final state.
pub(super) fn from_stored(state: FinalState) -> u8 {
    match state {
        FinalState::Sent => ST_SENT,
        FinalState::Failed => ST_FAILED,
    }
}

/// Whether a message in this state waits for dispatch.
pub(super) fn is_dispatchable(state: u8) -> bool {
    matches!(state, ST_PENDING | ST_RESUMED)
}
