//! A long list of recipients, held compactly: each E.164 number packed into
//! one `u64`, and the client references (only if any was given) in one
//! string. A broadcast to 14 million numbers takes 8 bytes per number, not
//! a `String` (and a copy of the body) per message.

use smsmesh::Error;

/// Numbers of digits an E.164 number may have.
const DIGITS: std::ops::RangeInclusive<u32> = 7..=15;

/// Packs a number that [`smsmesh::sms::validate_e164`] accepted: its digit
/// count in the top byte, the value of its digits below. A stored format
/// (recipient rows hold these values), so a test pins it.
pub fn pack(to: &str) -> u64 {
    let digits = &to.as_bytes()[1..];
    let value = digits
        .iter()
        .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
    (digits.len() as u64) << 56 | value
}

/// Whether `packed` is what [`pack`] makes of some valid number.
pub fn is_packed_number(packed: u64) -> bool {
    let (n, value) = ((packed >> 56) as u32, packed & ((1 << 56) - 1));
    DIGITS.contains(&n) && (10u64.pow(n - 1)..10u64.pow(n)).contains(&value)
}

/// Writes the number `packed` stands for into `out` ("+" and its digits).
pub fn unpack(packed: u64, out: &mut String) {
    let n = (packed >> 56) as usize;
    let mut value = packed & ((1 << 56) - 1);
    let mut digits = [b'0'; 15];
    for d in digits[..n.min(15)].iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.clear();
    out.push('+');
    // ASCII digits only.
    out.push_str(std::str::from_utf8(&digits[..n.min(15)]).expect("ASCII digits"));
}

/// Recipients in order: message `i` of the batch goes to recipient `i`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recipients {
    numbers: Vec<u64>,
    /// Every client reference, one after another.
    refs: String,
    /// Where each recipient's reference ends in `refs`; empty while no
    /// recipient has one.
    ref_ends: Vec<u32>,
}

impl Recipients {
    /// An empty list.
    pub fn new() -> Self {
        Recipients::default()
    }

    /// Adds a recipient: a packed number (see [`pack`]) and its client
    /// reference ("" for none). Fails only when the references of the list
    /// would pass 4 GiB.
    pub fn push(&mut self, number: u64, client_ref: &str) -> Result<(), Error> {
        if !client_ref.is_empty() || !self.ref_ends.is_empty() {
            let end = u32::try_from(self.refs.len() + client_ref.len()).map_err(|_| {
                Error::invalid("the client references of this batch pass 4 GiB in all: split it")
            })?;
            // The recipients before the first reference had none.
            self.ref_ends.resize(self.numbers.len(), 0);
            self.refs.push_str(client_ref);
            self.ref_ends.push(end);
        }
        self.numbers.push(number);
        Ok(())
    }

    /// A list from its parts as the store holds them: numbers, and the
    /// references (with their ends) or none.
    pub(crate) fn from_parts(numbers: Vec<u64>, refs: String, ref_ends: Vec<u32>) -> Self {
        Recipients {
            numbers,
            refs,
            ref_ends,
        }
    }

    /// How many recipients.
    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }

    /// The packed numbers, in order.
    pub fn numbers(&self) -> &[u64] {
        &self.numbers
    }

    /// Whether any recipient has a client reference.
    pub fn has_refs(&self) -> bool {
        !self.ref_ends.is_empty()
    }

    /// Recipient `i`'s number, into `out`.
    pub fn number(&self, i: usize, out: &mut String) {
        unpack(self.numbers[i], out);
    }

    /// Recipient `i`'s client reference ("" for none).
    pub fn client_ref(&self, i: usize) -> &str {
        if self.ref_ends.is_empty() {
            return "";
        }
        let start = if i == 0 { 0 } else { self.ref_ends[i - 1] };
        &self.refs[start as usize..self.ref_ends[i] as usize]
    }

    /// Heap bytes the list takes.
    pub fn heap_bytes(&self) -> usize {
        self.numbers.capacity() * 8 + self.refs.capacity() + self.ref_ends.capacity() * 4
    }

    /// Gives back memory reserved for growth (once the list is complete).
    pub fn shrink_to_fit(&mut self) {
        self.numbers.shrink_to_fit();
        self.refs.shrink_to_fit();
        self.ref_ends.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_numbers_are_a_stored_format_and_read_back_as_given() {
        // Pinned: recipient rows in existing stores hold these values.
        assert_eq!(pack("+14155550123"), 11 << 56 | 14_155_550_123);
        assert_eq!(pack("+1000000"), 7 << 56 | 1_000_000);
        let mut out = String::new();
        for to in [
            "+1000000",
            "+14155550123",
            "+999999999999999",
            "+4915112345678",
        ] {
            let p = pack(to);
            assert!(is_packed_number(p), "{to}");
            unpack(p, &mut out);
            assert_eq!(out, to);
        }
        // A leading zero, too few or too many digits: not a number we make.
        for bad in [
            7 << 56 | 999_999,
            6 << 56 | 100_000,
            16 << 56 | 10u64.pow(15),
            0,
        ] {
            assert!(!is_packed_number(bad), "{bad:x}");
        }
    }

    #[test]
    fn references_are_kept_only_once_one_is_given() {
        let mut r = Recipients::new();
        r.push(pack("+1000001"), "").unwrap();
        assert!(!r.has_refs());
        r.push(pack("+1000002"), "b").unwrap();
        r.push(pack("+1000003"), "").unwrap();
        r.push(pack("+1000004"), "dd").unwrap();
        assert!(r.has_refs());
        let refs: Vec<&str> = (0..r.len()).map(|i| r.client_ref(i)).collect();
        assert_eq!(refs, ["", "b", "", "dd"]);
        let mut to = String::new();
        r.number(3, &mut to);
        assert_eq!(to, "+1000004");
    }
}
