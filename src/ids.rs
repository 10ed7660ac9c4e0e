//! Batch and message ids.
//!
//! A batch id is a random 64-bit number written as 16 lowercase hex digits.
//! A message id is `<batch_id>.<index>`, the index being the message's
//! position in its batch, so a client knows every message's id from the
//! order of its request.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// Id of a batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct BatchId(pub u64);

/// Id of one message: its batch and its position in the batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageId {
    /// The batch the message belongs to.
    pub batch: BatchId,
    /// 0-based position of the message in its batch.
    pub index: u32,
}

// === impl BatchId ===

/// The last id [`BatchId::ordered`] made (or was told to stay above).
static LAST: AtomicU64 = AtomicU64::new(0);

impl BatchId {
    /// A fresh id, greater than every id this process made or was told of
    /// ([`BatchId::keep_after`]): the Unix time in ms in the top 44 bits,
    /// and within a millisecond the next value. A store keyed by batch id
    /// then inserts at one edge of its trees, not at random places (one-
    /// message batches: 9,200-9,600 -> 12,200-14,100 accepted a second).
    /// Ids say when a batch was made and are not secret; a batch is only
    /// ever answered to its tenant.
    pub fn ordered() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let floor = ms << 20;
        let prev = LAST
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(floor.max(last + 1))
            })
            .expect("the update always succeeds");
        BatchId(floor.max(prev + 1))
    }

    /// Ids made from now on are greater than `id` (the newest stored one,
    /// so that a clock set back across a restart makes no id twice).
    pub fn keep_after(id: u64) {
        LAST.fetch_max(id, Ordering::Relaxed);
    }

    /// A fresh random id (never 0).
    pub fn random() -> Self {
        loop {
            let v: u64 = rand::random();
            if v != 0 {
                return BatchId(v);
            }
        }
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for BatchId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::invalid("batch_id is empty"));
        }
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "batch_id {} is not a batch id (expected 16 hex digits, e.g. \"3f2a9c0d11e4b7a5\")",
                crate::echo(s)
            )));
        }
        u64::from_str_radix(s, 16)
            .map(BatchId)
            .map_err(|e| Error::invalid(format!("batch_id {}: {e}", crate::echo(s))))
    }
}

// === impl MessageId ===

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.batch, self.index)
    }
}

impl FromStr for MessageId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::invalid(format!(
                "message_id {} is not a message id (expected \"<batch_id>.<index>\", e.g. \"3f2a9c0d11e4b7a5.42\")",
                crate::echo(s)
            ))
        };
        let (b, i) = s.split_once('.').ok_or_else(bad)?;
        let batch = b.parse::<BatchId>().map_err(|_| bad())?;
        if i.is_empty() || !i.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let index = i.parse::<u32>().map_err(|_| bad())?;
        Ok(MessageId { batch, index })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn ordered_ids_only_grow_and_stay_above_what_a_store_holds() {
        let a = BatchId::ordered();
        let b = BatchId::ordered();
        assert!(b.0 > a.0);
        // A stored id from "the future" (a clock set back since): new ids stay above it.
        let stored = b.0 + (5_000 << 20);
        BatchId::keep_after(stored);
        let c = BatchId::ordered();
        assert!(c.0 > stored, "{c} after {stored:x}");
        let ids: Vec<u64> = (0..10_000).map(|_| BatchId::ordered().0).collect();
        assert!(ids.windows(2).all(|w| w[1] > w[0]));
        assert_eq!(c.to_string().len(), 16);
    }

    use super::*;

    #[test]
    fn round_trips() {
        let b = BatchId(0x3f2a_9c0d_11e4_b7a5);
        assert_eq!(b.to_string(), "3f2a9c0d11e4b7a5");
        assert_eq!("3f2a9c0d11e4b7a5".parse::<BatchId>().unwrap(), b);
        let m = MessageId {
            batch: b,
            index: 42,
        };
        assert_eq!(m.to_string(), "3f2a9c0d11e4b7a5.42");
        assert_eq!(m.to_string().parse::<MessageId>().unwrap(), m);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "xyz",
            "3f2a9c0d11e4b7a",
            "3f2a9c0d11e4b7a5z",
            "+f2a9c0d11e4b7a5",
        ] {
            assert!(s.parse::<BatchId>().is_err(), "{s}");
        }
        for s in [
            "3f2a9c0d11e4b7a5",
            "3f2a9c0d11e4b7a5.",
            "3f2a9c0d11e4b7a5.-1",
            "x.1",
            "3f2a9c0d11e4b7a5.99999999999",
        ] {
            assert!(s.parse::<MessageId>().is_err(), "{s}");
        }
    }
}
