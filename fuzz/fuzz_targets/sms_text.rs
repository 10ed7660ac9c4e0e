//! Fuzz target: any text as a phone number, body, client reference and ids.
//! Validation must never panic, and segment counts must be consistent: a
//! body that fits one SMS is one segment, a longer one needs at least
//! units / per-part segments and at most one per character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smsmesh::sms::{self, Encoding};
use smsmesh::{BatchId, MessageId};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Split the input three ways so one run exercises every field.
    let mut parts = text.splitn(3, '\u{0}');
    let to = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let client_ref = parts.next().unwrap_or("");
    let _ = sms::validate_message(0, to, body, client_ref);
    let _ = to.parse::<BatchId>();
    if let Ok(id) = to.parse::<MessageId>() {
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
    }

    let s = sms::segments(body);
    let (single, multi) = match s.encoding {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => (70, 67),
    };
    let chars = body.chars().count() as u32;
    if s.units == 0 {
        assert_eq!(s.count, 0);
    } else if s.units <= single {
        assert_eq!(s.count, 1);
    } else {
        assert!(s.count >= s.units.div_ceil(multi), "{s:?}");
        assert!(s.count <= chars, "{s:?}");
    }
    if let Ok(v) = sms::validate_body("body", body) {
        assert_eq!(v, s);
        assert!(s.count >= 1 && s.count <= sms::MAX_SEGMENTS);
    }
});
