//! A body as the bytes an SMPP `short_message` carries: GSM 03.38 (one
//! septet per octet, extension characters after an escape) or UCS-2
//! (UTF-16BE), split into exactly the segments [`crate::sms::segments`]
//! counts, and the user data header that joins the parts of a long message.

use crate::sms::{EXTENSION_CODES, Encoding, GSM7_BASIC, GSM7_EXTENSION, gsm7_code};

/// The escape to the GSM 03.38 extension table.
const ESCAPE: u8 = 0x1b;

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

/// Encodes `body` in the encoding [`crate::sms::segments`] chose for it and
/// splits it where that counter does: 160 septets or 70 code units in one SMS, else
/// 153 or 67 a segment, never splitting an escape pair or a surrogate pair.
pub fn encode(body: &str) -> Encoded {
    // One pass writes the bytes, falling back to UCS-2 at the first character
    // without a GSM-7 form; a second splits them only when they need it.
    let mut bytes = Vec::with_capacity(body.len());
    let mut encoding = Encoding::Gsm7;
    for c in body.chars() {
        match gsm7_code(c) {
            Some((code, false)) => bytes.push(code),
            Some((code, true)) => bytes.extend_from_slice(&[ESCAPE, code]),
            None => {
                encoding = Encoding::Ucs2;
                break;
            }
        }
    }
    if encoding == Encoding::Ucs2 {
        bytes.clear();
        bytes.reserve(2 * body.len());
        for u in body.encode_utf16() {
            bytes.extend_from_slice(&u.to_be_bytes());
        }
    }
    // A split never separates an escape pair (GSM-7) or a surrogate pair (UCS-2).
    let (single, multi) = match encoding {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => (140, 134), // bytes: 70 or 67 code units of 2
    };
    let unit_len = |b: &[u8]| match encoding {
        Encoding::Gsm7 if b[0] == ESCAPE => 2,
        Encoding::Ucs2 if (0xd8..0xdc).contains(&b[0]) => 4,
        Encoding::Gsm7 => 1,
        Encoding::Ucs2 => 2,
    };
    let parts = if bytes.len() <= single {
        vec![bytes]
    } else {
        let mut parts = Vec::with_capacity(bytes.len().div_ceil(multi - 1));
        let mut start = 0;
        let mut at = 0;
        while at < bytes.len() {
            let n = unit_len(&bytes[at..]);
            if at + n - start > multi {
                parts.push(bytes[start..at].to_vec());
                start = at;
            }
            at += n;
        }
        parts.push(bytes[start..].to_vec());
        parts
    };
    Encoded {
        encoding,
        data_coding: match encoding {
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
    use crate::sms::segments;

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
            body in "[a-z€\\[\\^{}ΔéÄ@ж😀 ]{1,700}"
        ) {
            let e = encode(&body);
            prop_assert_eq!(e.parts.len() as u32, segments(&body).count);
            let text: String = e.parts.iter().map(|p| decode(e.data_coding, p).expect("decodes")).collect();
            prop_assert_eq!(text, body);
            let limit = match (e.data_coding, e.parts.len()) {
                (0, 1) => 160,
                (0, _) => 153,
                (_, 1) => 140,
                _ => 134,
            };
            prop_assert!(e.parts.iter().all(|p| p.len() <= limit && !p.is_empty()));
        }
    }
}
