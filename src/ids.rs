//! Batch and message ids.
//!
//! A batch id is a random 64-bit number written as 16 lowercase hex digits.
//! A message id is `<batch_id>.<index>`, the index being the message's
//! position in its batch, so a client knows every message's id from the
//! order of its request.

use std::fmt;
use std::str::FromStr;

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

impl BatchId {
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
