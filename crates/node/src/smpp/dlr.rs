//! Delivery receipts: what a deliver_sm carrying one says (the
//! `receipted_message_id` and `message_state` TLVs when present, otherwise
//! the de-facto `id:... stat:... err:...` text of SMPP 3.4 appendix B).

/// A receipt's final (or interim) state, as SMPP's `message_state` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlrState {
    /// On its way (interim).
    Enroute,
    /// Delivered to the handset.
    Delivered,
    /// Its validity period passed.
    Expired,
    /// Deleted at the SMSC.
    Deleted,
    /// Could not be delivered.
    Undeliverable,
    /// Accepted for delivery (interim).
    Accepted,
    /// The SMSC does not know.
    Unknown,
    /// Rejected by the network.
    Rejected,
}

impl DlrState {
    /// From a `message_state` TLV value.
    pub fn from_tlv(v: u8) -> Option<DlrState> {
        Some(match v {
            1 => DlrState::Enroute,
            2 => DlrState::Delivered,
            3 => DlrState::Expired,
            4 => DlrState::Deleted,
            5 => DlrState::Undeliverable,
            6 => DlrState::Accepted,
            7 => DlrState::Unknown,
            8 => DlrState::Rejected,
            _ => return None,
        })
    }

    /// Its `message_state` TLV value.
    pub fn tlv(self) -> u8 {
        match self {
            DlrState::Enroute => 1,
            DlrState::Delivered => 2,
            DlrState::Expired => 3,
            DlrState::Deleted => 4,
            DlrState::Undeliverable => 5,
            DlrState::Accepted => 6,
            DlrState::Unknown => 7,
            DlrState::Rejected => 8,
        }
    }

    /// From the `stat:` word of a receipt's text.
    pub fn from_text(s: &str) -> Option<DlrState> {
        const WORDS: [(&str, DlrState); 12] = [
            ("DELIVRD", DlrState::Delivered),
            ("DELIVERED", DlrState::Delivered),
            ("ENROUTE", DlrState::Enroute),
            ("EXPIRED", DlrState::Expired),
            ("DELETED", DlrState::Deleted),
            ("UNDELIV", DlrState::Undeliverable),
            ("UNDELIVERABLE", DlrState::Undeliverable),
            ("ACCEPTD", DlrState::Accepted),
            ("ACCEPTED", DlrState::Accepted),
            ("UNKNOWN", DlrState::Unknown),
            ("REJECTD", DlrState::Rejected),
            ("REJECTED", DlrState::Rejected),
        ];
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(s))
            .map(|&(_, state)| state)
    }

    /// The word a receipt's text uses.
    pub fn text(self) -> &'static str {
        match self {
            DlrState::Enroute => "ENROUTE",
            DlrState::Delivered => "DELIVRD",
            DlrState::Expired => "EXPIRED",
            DlrState::Deleted => "DELETED",
            DlrState::Undeliverable => "UNDELIV",
            DlrState::Accepted => "ACCEPTD",
            DlrState::Unknown => "UNKNOWN",
            DlrState::Rejected => "REJECTD",
        }
    }

    /// Whether no later receipt is expected (ENROUTE and ACCEPTD are interim).
    pub fn is_final(self) -> bool {
        !matches!(self, DlrState::Enroute | DlrState::Accepted)
    }
}

/// One delivery receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's message id it is for, as the provider wrote it.
    pub id: String,
    /// What became of the message.
    pub state: DlrState,
    /// The `err:` code of the text (or the network error TLV), if any.
    pub error: String,
}

/// Whether a deliver_sm's `esm_class` marks it as an SMSC delivery receipt.
pub fn is_receipt(esm_class: u8) -> bool {
    esm_class & 0x3c == 0x04
}

/// The receipt in a deliver_sm: from its TLVs when both are there, else from
/// its text; `Err` says what is missing.
pub fn parse(
    short_message: &[u8],
    receipted_id: Option<&str>,
    message_state: Option<u8>,
) -> Result<Receipt, String> {
    // Valid UTF-8 (ASCII, as receipts are) is checked at once, not char by char.
    let text = match std::str::from_utf8(short_message) {
        Ok(t) => std::borrow::Cow::Borrowed(t),
        Err(_) => String::from_utf8_lossy(short_message),
    };
    // One pass for the three fields read (the first of each name counts).
    let (mut id_field, mut stat_field, mut err_field) = (None, None, None);
    for (k, v) in text_fields(&text) {
        let slot = if k.eq_ignore_ascii_case("id") {
            &mut id_field
        } else if k.eq_ignore_ascii_case("stat") {
            &mut stat_field
        } else if k.eq_ignore_ascii_case("err") {
            &mut err_field
        } else {
            continue;
        };
        slot.get_or_insert(v);
        if id_field.is_some() && stat_field.is_some() && err_field.is_some() {
            break;
        }
    }
    let id = match receipted_id {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => id_field
            .filter(|v| !v.is_empty())
            .ok_or("a delivery receipt without receipted_message_id or id:")?
            .to_string(),
    };
    let state = match message_state.and_then(DlrState::from_tlv) {
        Some(s) => s,
        None => {
            let stat = stat_field.ok_or("a delivery receipt without message_state or stat:")?;
            DlrState::from_text(stat)
                .ok_or_else(|| format!("a delivery receipt with stat:{stat}"))?
        }
    };
    Ok(Receipt {
        id,
        state,
        error: err_field.unwrap_or("").to_string(),
    })
}

/// The `key:value` words of a receipt text, where "submit date" and
/// "done date" are keys of two words and `text:` runs to the end.
fn text_fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    // Split at ASCII bytes, which never fall inside a multi-byte character.
    let at = |s: &str, b: u8| s.bytes().position(|c| c == b);
    let mut rest = text.trim();
    std::iter::from_fn(move || {
        let colon = at(rest, b':')?;
        let key = rest[..colon].trim();
        let after = &rest[colon + 1..];
        if key.eq_ignore_ascii_case("text") {
            rest = "";
            return Some((key, after.trim()));
        }
        // The value runs to the next space before another key (or the end).
        let end = at(after, b' ').unwrap_or(after.len());
        rest = after[end..].trim_start();
        Some((key, after[..end].trim()))
    })
}

/// The text of a receipt for `id`, as SMSCs write it.
pub fn format(id: &str, state: DlrState, error: &str, submit: &str, done: &str) -> String {
    let delivered = u8::from(state == DlrState::Delivered);
    format!(
        "id:{id} sub:001 dlvrd:{delivered:03} submit date:{submit} done date:{done} stat:{} err:{error:0>3} text:",
        state.text()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_is_read_field_by_field() {
        let t = b"id:0A1B2C sub:001 dlvrd:001 submit date:2612021200 done date:2612021201 stat:DELIVRD err:000 text:Hello world";
        let r = parse(t, None, None).unwrap();
        assert_eq!(
            r,
            Receipt {
                id: "0A1B2C".into(),
                state: DlrState::Delivered,
                error: "000".into()
            }
        );
        for (stat, state) in [
            ("delivrd", DlrState::Delivered),
            ("Rejected", DlrState::Rejected),
            ("ACCEPTD", DlrState::Accepted),
        ] {
            let text = format!("id:5 stat:{stat}");
            assert_eq!(parse(text.as_bytes(), None, None).unwrap().state, state);
        }
        assert!(parse(b"id:5 stat:DELIVERE", None, None).is_err());
        let r = parse(b"id:77 stat:UNDELIV err:034", None, None).unwrap();
        assert_eq!(
            (r.state, r.error.as_str()),
            (DlrState::Undeliverable, "034")
        );
    }

    #[test]
    fn tlvs_win_over_the_text() {
        let r = parse(b"id:1 stat:DELIVRD", Some("abc"), Some(5)).unwrap();
        assert_eq!((r.id.as_str(), r.state), ("abc", DlrState::Undeliverable));
    }

    #[test]
    fn what_we_write_we_read_and_a_bad_receipt_says_why() {
        let t = format("42", DlrState::Expired, "1", "2612021200", "2612021300");
        let r = parse(t.as_bytes(), None, None).unwrap();
        assert_eq!(
            (r.id.as_str(), r.state, r.error.as_str()),
            ("42", DlrState::Expired, "001")
        );
        assert!(
            parse(b"stat:DELIVRD", None, None)
                .unwrap_err()
                .contains("id")
        );
        assert!(
            parse(b"id:1 stat:SOMEHOW", None, None)
                .unwrap_err()
                .contains("SOMEHOW")
        );
        assert!(is_receipt(0x04) && !is_receipt(0x00) && !is_receipt(0x40));
    }
}
