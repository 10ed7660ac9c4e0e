//! A body as the bytes an SMPP `short_message` carries: GSM 03.38 (one
//! septet per octet, extension characters after an escape) or UCS-2
//! (UTF-16BE), split into exactly the segments [`crate::sms::segments`]
//! counts, and the user data header that joins the parts of a long message.

use crate::sms::{Encoding, GSM7_BASIC, GSM7_EXTENSION, segments};

/// The escape to the GSM 03.38 extension table.
const ESCAPE: u8 = 0x1b;
/// Extension-table codes of the characters of [`GSM7_EXTENSION`], in its order.
const EXTENSION_CODES: [u8; 10] = [0x0a, 0x14, 0x28, 0x29, 0x2f, 0x3c, 0x3d, 0x3e, 0x40, 0x65];

/// A body ready for the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// How it is encoded.
    pub encoding: Encoding,
    /// The SMPP `data_coding` of that encoding: 0 (SMSC default alphabet,
    /// GSM 03.38) or 8 (UCS-2).
    pub data_coding: u8,
    /// The bytes of each segment, without any header: one element for a
    /// message that fits in one SMS.
    pub parts: Vec<Vec<u8>>,
}

/// The GSM 03.38 code of every character: (code, whether it is in the
/// extension table, sent after an escape). A character of both tables is
/// sent as its basic code.
fn gsm_table() -> &'static std::collections::HashMap<char, (u8, bool)> {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<char, (u8, bool)>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = std::collections::HashMap::new();
        for (i, c) in GSM7_BASIC.chars().enumerate() {
            if c != '\u{1b}' {
                t.insert(c, (i as u8, false));
            }
        }
        for (c, code) in GSM7_EXTENSION.chars().zip(EXTENSION_CODES) {
            t.entry(c).or_insert((code, true));
        }
        t
    })
}

/// Encodes `body` in the encoding [`segments`] chose for it and splits it
/// where [`segments`] does: 160 septets or 70 code units in one SMS, else
/// 153 or 67 a segment, never splitting an escape pair or a surrogate pair.
pub fn encode(body: &str) -> Encoded {
    let size = segments(body);
    let (single, multi) = match size.encoding {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => (140, 134), // bytes: 70 or 67 code units of 2
    };
    // Each character's bytes, which a split never separates.
    let units: Vec<([u8; 4], usize)> = match size.encoding {
        Encoding::Gsm7 => {
            let table = gsm_table();
            body.chars()
                .map(|c| match table.get(&c) {
                    Some(&(code, false)) => ([code, 0, 0, 0], 1),
                    Some(&(code, true)) => ([ESCAPE, code, 0, 0], 2),
                    None => unreachable!("segments() chose GSM-7 for this body"),
                })
                .collect()
        }
        Encoding::Ucs2 => body
            .chars()
            .map(|c| {
                let mut buf = [0u16; 2];
                let mut bytes = [0u8; 4];
                let n = c.encode_utf16(&mut buf).len();
                for (i, u) in buf[..n].iter().enumerate() {
                    bytes[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
                }
                (bytes, 2 * n)
            })
            .collect(),
    };
    let total: usize = units.iter().map(|u| u.1).sum();
    let limit = if total <= single { single } else { multi };
    let mut parts = vec![Vec::with_capacity(total.min(limit))];
    for (bytes, n) in &units {
        if parts.last().expect("one part").len() + n > limit {
            parts.push(Vec::with_capacity(multi));
        }
        parts
            .last_mut()
            .expect("one part")
            .extend_from_slice(&bytes[..*n]);
    }
    Encoded {
        encoding: size.encoding,
        data_coding: match size.encoding {
            Encoding::Gsm7 => 0x00,
            Encoding::Ucs2 => 0x08,
        },
        parts,
    }
}

/// The user data header of part `seq` (from 1) of `total`, all with the
/// 8-bit concatenation reference `reference` (information element 0x00).
pub fn concat_udh(reference: u8, total: u8, seq: u8) -> [u8; 6] {
    [0x05, 0x00, 0x03, reference, total, seq]
}

/// Decodes what [`encode`] made (one part, without its header): for an SMSC
/// that shows what it received.
pub fn decode(data_coding: u8, bytes: &[u8]) -> Option<String> {
    if data_coding == 0x08 {
        if !bytes.len().is_multiple_of(2) {
            return None;
        }
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16(&units).ok();
    }
    let basic: Vec<char> = GSM7_BASIC.chars().collect();
    let mut out = String::with_capacity(bytes.len());
    let mut escaped = false;
    for &b in bytes {
        if escaped {
            let i = EXTENSION_CODES.iter().position(|&c| c == b)?;
            out.push(GSM7_EXTENSION.chars().nth(i)?);
            escaped = false;
        } else if b == ESCAPE {
            escaped = true;
        } else {
            out.push(*basic.get(usize::from(b))?);
        }
    }
    (!escaped).then_some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn gsm_bodies_are_septets_and_extension_characters_take_an_escape() {
        let e = encode("Hi @ 10€ [x]");
        assert_eq!(e.data_coding, 0);
        assert_eq!(e.parts, [b"Hi \x00 10\x1b\x65 \x1b\x3cx\x1b\x3e".to_vec()]);
        assert_eq!(decode(0, &e.parts[0]).as_deref(), Some("Hi @ 10€ [x]"));
    }

    #[test]
    fn a_long_body_splits_where_the_counter_does_and_never_inside_an_escape() {
        // 152 septets, then an escape pair that would straddle the 153rd.
        let body = format!("{}€{}", "a".repeat(152), "b".repeat(20));
        let e = encode(&body);
        assert_eq!(e.parts.len(), 2);
        assert_eq!(e.parts[0].len(), 152, "the escape pair moved to part 2");
        assert_eq!(&e.parts[1][..2], &[ESCAPE, 0x65]);
        let ucs = encode(&format!("{}😀", "ж".repeat(68)));
        assert_eq!(ucs.data_coding, 8);
        assert_eq!(ucs.parts.iter().map(Vec::len).collect::<Vec<_>>(), [140]);
        let ucs = encode(&format!("{}😀xxx", "ж".repeat(66)));
        assert_eq!(
            ucs.parts.iter().map(Vec::len).collect::<Vec<_>>(),
            [132, 10],
            "the surrogate pair is not split"
        );
    }

    proptest! {
        #[test]
        fn parts_match_the_segment_count_and_decode_to_the_body(
            body in "[a-z€\\[ж😀 ]{1,700}"
        ) {
            let e = encode(&body);
            prop_assert_eq!(e.parts.len() as u32, segments(&body).count);
            let text: String = e.parts.iter().map(|p| decode(e.data_coding, p).expect("decodes")).collect();
            prop_assert_eq!(text, body);
        }
    }
}
