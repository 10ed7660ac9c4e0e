//! The generator of synthetic batches.
//!
//! Message `i` of a synthetic batch is a pure function of the batch's seed and
//! `i`, so the coordinator never stores generated messages: it makes each one
//! when it dispatches it, and makes it again, identical, for a retry or after
//! a restart. The generator is SplitMix64, written out here so its output
//! never changes with a dependency's version.

/// Length of a generated body when the batch does not give one.
pub const BODY_LEN: usize = 100;
const _: () = assert!(
    BODY_LEN.is_multiple_of(10),
    "bodies are made 10 characters at a time"
);

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The two characters of each 12-bit value, low 6 bits first: character `c`
/// of a 6-bit value `v` is `ALPHABET[v % 62]`, looked up two at a time.
const TWELVE_BITS: [[u8; 2]; 4096] = {
    let mut t = [[0u8; 2]; 4096];
    let mut v = 0;
    while v < 4096 {
        t[v] = [
            ALPHABET[(v & 63) % ALPHABET.len()],
            ALPHABET[(v >> 6) % ALPHABET.len()],
        ];
        v += 1;
    }
    t
};

/// SplitMix64: a small, fast, well-distributed 64-bit generator.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for message `index` of the batch seeded with `seed`.
    pub fn for_message(seed: u64, index: u32) -> Self {
        let mut g = SplitMix64(seed ^ (u64::from(index)).wrapping_mul(0xD1B5_4A32_D192_ED03));
        g.next_u64();
        g
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Writes message `index`'s phone number into `to`: a NANP number
/// `+1 NXX NXX XXXX` (N = 2..9), i.e. '+1' and ten random digits.
pub fn phone(g: &mut SplitMix64, to: &mut String) {
    to.clear();
    to.push_str("+1");
    let mut r = g.next_u64();
    for pos in 0..10 {
        let d = if pos == 0 || pos == 3 {
            2 + (r % 8) as u8
        } else {
            (r % 10) as u8
        };
        r /= 10;
        to.push((b'0' + d) as char);
    }
}

/// Writes a random alphanumeric body of [`BODY_LEN`] characters into `body`.
pub fn body(g: &mut SplitMix64, body: &mut String) {
    // 6 bits a character, 10 characters per 64 bits, in this order: the output is
    // part of the stored format (batches regenerate their messages from it).
    let mut bytes = [0u8; BODY_LEN];
    for chunk in bytes.chunks_exact_mut(10) {
        let mut r = g.next_u64();
        for pair in chunk.chunks_exact_mut(2) {
            pair.copy_from_slice(&TWELVE_BITS[(r & 4095) as usize]);
            r >>= 12;
        }
    }
    body.clear();
    body.push_str(std::str::from_utf8(&bytes).expect("the alphabet is ASCII"));
}

/// Message `index` of a synthetic batch: its number, and its body unless the
/// batch has a fixed one.
pub fn message(
    seed: u64,
    index: u32,
    fixed_body: Option<&str>,
    to: &mut String,
    out_body: &mut String,
) {
    let mut g = SplitMix64::for_message(seed, index);
    phone(&mut g, to);
    match fixed_body {
        Some(b) => {
            out_body.clear();
            out_body.push_str(b);
        }
        None => body(&mut g, out_body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Message 7 of seed 42, as the first version generated it.
    const EXPECTED: (&str, &str, u64) = ("+12915737156", "12kRATgUoo5o", 0xd4d6_662c_9108_2a61);

    #[test]
    fn output_is_stable() {
        // Stored synthetic batches are regenerated from their seed: this output must never change.
        let (mut to, mut body) = (String::new(), String::new());
        message(42, 7, None, &mut to, &mut body);
        let mut h = SplitMix64(0);
        let digest = body.bytes().chain(to.bytes()).fold(0u64, |acc, b| {
            h.0 = acc ^ u64::from(b);
            h.next_u64()
        });
        assert_eq!((to.as_str(), &body[..12], digest), EXPECTED);
    }

    #[test]
    fn deterministic_and_valid() {
        let (mut to, mut body) = (String::new(), String::new());
        let (mut to2, mut body2) = (String::new(), String::new());
        let mut distinct = std::collections::HashSet::new();
        for i in 0..2000 {
            message(7, i, None, &mut to, &mut body);
            message(7, i, None, &mut to2, &mut body2);
            assert_eq!((&to, &body), (&to2, &body2));
            crate::sms::validate_e164("to", &to).unwrap();
            assert_eq!(crate::sms::validate_body("b", &body).unwrap().count, 1);
            assert_eq!(body.len(), BODY_LEN);
            distinct.insert(to.clone());
        }
        assert!(distinct.len() > 1990, "numbers should rarely repeat");
        message(8, 0, None, &mut to2, &mut body2);
        message(7, 0, None, &mut to, &mut body);
        assert_ne!(body, body2, "another seed gives other messages");
    }
}
