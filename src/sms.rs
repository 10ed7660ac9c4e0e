//! Validation of what goes into an SMS: E.164 numbers and bodies.
//!
//! A body is encoded in GSM-7 when every character is in the GSM 03.38
//! default alphabet or its extension table (extension characters take two
//! septets), otherwise in UCS-2 (UTF-16 code units). A single SMS holds 160
//! septets or 70 code units; a multipart SMS holds 153 septets or 67 code
//! units per segment, and a two-septet character or a surrogate pair is never
//! split across segments.

use crate::Error;

/// Most segments a body may take.
pub const MAX_SEGMENTS: u32 = 10;
/// Longest `client_ref` accepted, in bytes.
pub const MAX_CLIENT_REF: usize = 256;

/// How a body is encoded on the air.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The GSM 03.38 7-bit alphabet.
    Gsm7,
    /// UCS-2 / UTF-16.
    Ucs2,
}

/// The size of a body as SMS segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    /// Encoding the body needs.
    pub encoding: Encoding,
    /// Septets (GSM-7) or code units (UCS-2) of the whole body.
    pub units: u32,
    /// Number of SMS segments.
    pub count: u32,
}

pub(crate) const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
pub(crate) const GSM7_EXTENSION: &str = "\u{0c}^{}\\[~]|€";

/// Extension-table codes of the characters of [`GSM7_EXTENSION`], in its order.
pub(crate) const EXTENSION_CODES: [u8; 10] =
    [0x0a, 0x14, 0x28, 0x29, 0x2f, 0x3c, 0x3d, 0x3e, 0x40, 0x65];

/// No GSM 03.38 code (an entry of [`GsmTable::ascii`]).
const NO_CODE: u16 = u16::MAX;

/// The GSM 03.38 code of every character, looked up per character of every
/// body sent: ASCII by index, the few others by binary search. A character
/// of both tables is sent as its basic code.
struct GsmTable {
    /// Code | 0x100 when it is an extension character, or [`NO_CODE`].
    ascii: [u16; 128],
    /// (character, code, extension) of the non-ASCII ones, by character.
    other: Vec<(char, u8, bool)>,
}

fn gsm_table() -> &'static GsmTable {
    static TABLE: std::sync::OnceLock<GsmTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = GsmTable {
            ascii: [NO_CODE; 128],
            other: Vec::new(),
        };
        let basic = GSM7_BASIC
            .chars()
            .enumerate()
            .filter(|&(_, c)| c != '\u{1b}')
            .map(|(i, c)| (c, i as u8, false));
        let extension = GSM7_EXTENSION
            .chars()
            .zip(EXTENSION_CODES)
            .map(|(c, code)| (c, code, true));
        for (c, code, ext) in basic.chain(extension) {
            if c.is_ascii() {
                let slot = &mut t.ascii[c as usize];
                if *slot == NO_CODE {
                    *slot = u16::from(code) | if ext { 0x100 } else { 0 };
                }
            } else if !t.other.iter().any(|o| o.0 == c) {
                t.other.push((c, code, ext));
            }
        }
        t.other.sort_unstable_by_key(|o| o.0);
        t
    })
}

/// The GSM 03.38 code of `c` and whether it is in the extension table (sent
/// after an escape, two septets), or `None` if it has no GSM-7 form.
pub(crate) fn gsm7_code(c: char) -> Option<(u8, bool)> {
    let t = gsm_table();
    if c.is_ascii() {
        let v = t.ascii[c as usize];
        return (v != NO_CODE).then_some((v as u8, v & 0x100 != 0));
    }
    t.other
        .binary_search_by_key(&c, |o| o.0)
        .ok()
        .map(|i| (t.other[i].1, t.other[i].2))
}

/// Septets a character takes in GSM-7, or `None` if it has no GSM-7 form.
fn gsm7_septets(c: char) -> Option<u32> {
    gsm7_code(c).map(|(_, ext)| if ext { 2 } else { 1 })
}

/// Counts the segments of `body`.
pub fn segments(body: &str) -> Segments {
    let gsm: Option<u32> = body.chars().map(gsm7_septets).sum();
    let (encoding, units, single, multi) = match gsm {
        Some(units) => (Encoding::Gsm7, units, 160, 153),
        None => (
            Encoding::Ucs2,
            body.chars().map(|c| c.len_utf16() as u32).sum(),
            70,
            67,
        ),
    };
    let cost = |c: char| match encoding {
        Encoding::Gsm7 => gsm7_septets(c).unwrap_or(1),
        Encoding::Ucs2 => c.len_utf16() as u32,
    };
    let count = if units == 0 {
        0
    } else if units <= single {
        1
    } else {
        let (mut count, mut used) = (1, 0);
        for cost in body.chars().map(cost) {
            if used + cost > multi {
                count += 1;
                used = 0;
            }
            used += cost;
        }
        count
    };
    Segments {
        encoding,
        units,
        count,
    }
}

/// Checks that `to` is an E.164 number: '+', then 7 to 15 digits, the first not 0.
pub fn validate_e164(field: &str, to: &str) -> Result<(), Error> {
    let digits = to.strip_prefix('+').unwrap_or("");
    let ok = to.starts_with('+')
        && (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field}: {} is not an E.164 phone number (expected '+' then 7 to 15 digits, the first not 0, e.g. \"+14155550123\")",
            crate::echo(to)
        )))
    }
}

/// The forms a sender id (the SMS's "from") takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderForm {
    /// An E.164 number ('+' and digits): international.
    International,
    /// 3 to 8 digits: a short code, national.
    ShortCode,
    /// 1 to 11 GSM characters, not all digits: a name such as "ACME".
    Alphanumeric,
}

/// Checks a sender id and says which form it has: an E.164 number, a short
/// code of 3 to 8 digits, or 1 to 11 GSM characters (not all digits).
pub fn sender_form(field: &str, sender: &str) -> Result<SenderForm, Error> {
    if sender.starts_with('+') {
        validate_e164(field, sender)?;
        return Ok(SenderForm::International);
    }
    if !sender.is_empty() && sender.bytes().all(|b| b.is_ascii_digit()) {
        if !(3..=8).contains(&sender.len()) {
            return Err(Error::invalid(format!(
                "{field}: {} is not a sender: a short code has 3 to 8 digits (a full number starts with '+')",
                crate::echo(sender)
            )));
        }
        return Ok(SenderForm::ShortCode);
    }
    let size = segments(sender);
    if sender.is_empty()
        || size.encoding != Encoding::Gsm7
        || size.units > 11
        || sender.chars().count() > 11
    {
        return Err(Error::invalid(format!(
            "{field}: {} is not a sender: an alphanumeric sender is 1 to 11 GSM characters, a short code 3 to 8 digits, a number '+' and 7 to 15 digits",
            crate::echo(sender)
        )));
    }
    Ok(SenderForm::Alphanumeric)
}

/// Checks that `body` is not empty and fits in [`MAX_SEGMENTS`] segments.
pub fn validate_body(field: &str, body: &str) -> Result<Segments, Error> {
    if body.is_empty() {
        return Err(Error::invalid(format!("{field}: the body is empty")));
    }
    let s = segments(body);
    if s.count > MAX_SEGMENTS {
        let (enc, unit) = match s.encoding {
            Encoding::Gsm7 => ("GSM-7", "septets"),
            Encoding::Ucs2 => ("UCS-2", "code units"),
        };
        return Err(Error::invalid(format!(
            "{field}: the body needs {} SMS segments ({enc}, {} {unit}); at most {MAX_SEGMENTS} are allowed",
            s.count, s.units
        )));
    }
    Ok(s)
}

/// Checks a whole message: number, body and client reference.
pub fn validate_message(i: usize, to: &str, body: &str, client_ref: &str) -> Result<(), Error> {
    validate_e164(&format!("messages[{i}].to"), to)?;
    validate_body(&format!("messages[{i}].body"), body)?;
    if client_ref.len() > MAX_CLIENT_REF {
        return Err(Error::invalid(format!(
            "messages[{i}].client_ref: {} bytes long; at most {MAX_CLIENT_REF} are allowed",
            client_ref.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn senders_are_numbers_short_codes_or_short_names() {
        use super::{SenderForm as F, sender_form};
        for (s, form) in [
            ("+14155550123", Some(F::International)),
            ("12345", Some(F::ShortCode)),
            ("ACME Bank", Some(F::Alphanumeric)),
            ("Alerts-2026", Some(F::Alphanumeric)),
            ("", None),
            ("12", None),
            ("123456789", None),
            ("TwelveLetter", None),
            ("Ωmega", Some(F::Alphanumeric)), // Ω is in the GSM alphabet
            ("日本", None),
            ("+0123456789", None),
        ] {
            assert_eq!(sender_form("sender", s).ok(), form, "{s:?}");
        }
        let e = sender_form("messages[3].sender", "TwelveLetter").unwrap_err();
        assert!(e.to_string().contains("messages[3].sender"), "{e}");
    }

    use super::*;

    #[test]
    fn gsm7_single_and_multipart() {
        assert_eq!(segments("").count, 0);
        let s = segments(&"a".repeat(160));
        assert_eq!((s.encoding, s.units, s.count), (Encoding::Gsm7, 160, 1));
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"a".repeat(306)).count, 2);
        assert_eq!(segments(&"a".repeat(307)).count, 3);
        assert_eq!(segments(&"a".repeat(1530)).count, 10);
        assert_eq!(segments(&"a".repeat(1531)).count, 11);
    }

    #[test]
    fn gsm7_extension_counts_two_and_is_not_split() {
        let s = segments(&"€".repeat(80));
        assert_eq!((s.encoding, s.units, s.count), (Encoding::Gsm7, 160, 1));
        // 152 plain septets then '€' (2 septets) does not fit in 153: it starts segment 2.
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        let s = segments(&body);
        assert_eq!(s.units, 164);
        assert_eq!(s.count, 2);
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        // 152 | 2+151 | 1 -> 3 segments, although 306 septets would fit two unsplit.
        assert_eq!(segments(&body).units, 306);
        assert_eq!(segments(&body).count, 3);
        assert_eq!(segments("Ünïcode? ñ ß £ Δ").encoding, Encoding::Ucs2); // 'ï' is not GSM-7
        assert_eq!(segments("Ün ñ ß £ Δ {}").encoding, Encoding::Gsm7);
    }

    #[test]
    fn ucs2_counts_code_units_and_keeps_surrogates_whole() {
        let s = segments(&"ж".repeat(70));
        assert_eq!((s.encoding, s.count), (Encoding::Ucs2, 1));
        assert_eq!(segments(&"ж".repeat(71)).count, 2);
        assert_eq!(segments(&"ж".repeat(670)).count, 10);
        assert_eq!(segments(&"ж".repeat(671)).count, 11);
        // 66 units then an emoji (2 units) does not fit in 67: next segment.
        let body = format!("{}😀{}", "ж".repeat(66), "ж".repeat(5));
        assert_eq!(segments(&body).units, 73);
        assert_eq!(segments(&body).count, 2);
        assert_eq!(segments(&"😀".repeat(35)).count, 1);
    }

    #[test]
    fn e164() {
        for ok in [
            "+14155550123",
            "+4930123456",
            "+2901234",
            "+123456789012345",
        ] {
            validate_e164("to", ok).unwrap();
        }
        for bad in [
            "",
            "14155550123",
            "+",
            "+0123456789",
            "+1415555012a",
            "+1234567890123456",
            "+123456",
            "+1 415 555",
        ] {
            let e = validate_e164("to", bad).unwrap_err();
            assert!(e.to_string().contains("E.164"), "{bad}: {e}");
        }
    }

    #[test]
    fn bodies() {
        assert!(
            validate_body("b", "")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let e = validate_body("messages[2].body", &"ж".repeat(700))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("messages[2].body") && e.contains("11 SMS segments") && e.contains("UCS-2"),
            "{e}"
        );
        validate_body("b", &"a".repeat(1530)).unwrap();
    }
}
