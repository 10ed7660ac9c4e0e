//! A set of message or batch states: what a listing's filter asks for.

/// A set of states (of messages or of batches), as a listing's filter asks
/// for them: one bit per enum value (0 to 15; message states go to 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateSet(u16);

impl StateSet {
    /// Every state.
    pub const ALL: StateSet = StateSet(u16::MAX);

    /// The states with these enum values; every state when none is given.
    pub fn of(values: impl IntoIterator<Item = i32>) -> Self {
        let mask = values.into_iter().fold(0u16, |m, v| m | 1 << (v & 15));
        if mask == 0 { Self::ALL } else { StateSet(mask) }
    }

    /// Whether the state with enum value `value` is in the set.
    pub fn contains(self, value: i32) -> bool {
        self.0 & 1 << (value & 15) != 0
    }
}

#[cfg(test)]
mod tests {
    use smsmesh::pb::MessageState;

    use super::*;

    #[test]
    fn every_message_state_has_its_own_bit() {
        for a in 1..=11 {
            let set = StateSet::of([a]);
            for b in 1..=11 {
                assert_eq!(set.contains(b), a == b, "{a} against {b}");
            }
        }
        let pending = StateSet::of([MessageState::Pending as i32]);
        assert!(!pending.contains(MessageState::Expired as i32));
        assert!(StateSet::of([]).contains(MessageState::DeliveryUnknown as i32));
    }
}
