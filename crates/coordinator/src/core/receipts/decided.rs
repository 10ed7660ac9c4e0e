//! Decided deliveries as the core keeps them for a batch it keeps whole:
//! each one's state and its stored record, by message index, in pages
//! allocated as their messages are decided.

use std::sync::Arc;

use crate::store::{DeliveryState, StoredDelivery};

/// A decided delivery in memory: its state, and its record as the store
/// holds it (the same bytes, shared with the write that stores them).
#[derive(Debug)]
pub(super) struct Decided {
    pub(super) state: DeliveryState,
    pub(super) record: Arc<[u8]>,
}

impl Decided {
    /// Its record, decoded.
    pub(super) fn stored(&self) -> StoredDelivery {
        StoredDelivery::of_record(&self.record)
    }
}

/// Messages in a page.
const PAGE: usize = 1024;

/// The decided deliveries of one batch, by message index. A page of
/// [`PAGE`] slots is allocated when the first of its messages is decided,
/// so a batch whose messages are decided in order costs a slot (24 bytes)
/// per message decided, and one decided far ahead costs one page more.
#[derive(Debug, Default)]
pub(super) struct DecidedPages {
    pages: Vec<Option<Box<[Option<Decided>]>>>,
}

impl DecidedPages {
    /// The decided delivery of message `index`, if any.
    pub(super) fn get(&self, index: u32) -> Option<&Decided> {
        let i = index as usize;
        self.pages.get(i / PAGE)?.as_ref()?[i % PAGE].as_ref()
    }

    /// Message `index` was decided (again).
    pub(super) fn insert(&mut self, index: u32, d: Decided) {
        let i = index as usize;
        if self.pages.len() <= i / PAGE {
            self.pages.resize_with(i / PAGE + 1, || None);
        }
        let page = self.pages[i / PAGE]
            .get_or_insert_with(|| std::iter::repeat_with(|| None).take(PAGE).collect());
        page[i % PAGE] = Some(d);
    }

    /// Decided deliveries held, in all.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pages
            .iter()
            .flatten()
            .map(|p| p.iter().flatten().count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided(unix_ms: u64) -> Decided {
        let state = DeliveryState::Rejected;
        let record = StoredDelivery::record(state, 0, "", unix_ms, []);
        Decided { state, record }
    }

    /// Each index reads back as its own, pages far apart included; an
    /// index never decided reads as none, before, between and past them.
    #[test]
    fn pages_hold_each_index_apart() {
        let mut p = DecidedPages::default();
        for i in [0, 1, 1023, 1024, 50_000] {
            p.insert(i, decided(u64::from(i) + 1));
        }
        p.insert(1, decided(99));
        for (i, ms) in [
            (0, 1),
            (1, 99),
            (1023, 1024),
            (1024, 1025),
            (50_000, 50_001),
        ] {
            let d = p.get(i).unwrap();
            assert_eq!((d.state, d.stored().unix_ms), (DeliveryState::Rejected, ms));
        }
        for i in [2, 1025, 30_000, 50_001, u32::MAX] {
            assert!(p.get(i).is_none(), "{i}");
        }
        assert_eq!(p.len(), 5);
        assert_eq!(p.pages.iter().flatten().count(), 3, "pages allocated");
    }
}
