//! Property tests (proptest) of everything that parses untrusted input:
//! phone numbers, bodies and their SMS segments, batch and message ids, and
//! whole SubmitBatch requests. Each property runs on generated input, both
//! well-formed and hostile (any Unicode, control characters, huge numbers);
//! none may panic, and each answer must agree with an independent model.
//!
//! CI runs the default 256 cases per property; `PROPTEST_CASES=100000 cargo
//! test --test props` runs a longer search.

use proptest::prelude::*;
use smsmesh::pb;
use smsmesh::sms::{self, Encoding};
use smsmesh::{BatchId, MessageId};
use smsmesh_coordinator::Config;
use smsmesh_coordinator::submit::validate_submit;

/// The GSM 03.38 characters that take one septet, and those that take two.
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const EXTENDED: &str = "\u{0c}^{}\\[~]|€";

fn gsm_char() -> impl Strategy<Value = char> {
    let all: Vec<char> = BASIC.chars().chain(EXTENDED.chars()).collect();
    proptest::sample::select(all)
}

/// The segment count of a body whose characters cost `costs` units, split
/// into parts of at most `multi` units without splitting a character.
fn model_segments(costs: &[u32], single: u32, multi: u32) -> u32 {
    let units: u32 = costs.iter().sum();
    if units == 0 {
        return 0;
    }
    if units <= single {
        return 1;
    }
    let mut parts = vec![0u32];
    for &c in costs {
        if parts.last().unwrap() + c > multi {
            parts.push(0);
        }
        *parts.last_mut().unwrap() += c;
    }
    parts.len() as u32
}

proptest! {
    #[test]
    fn any_string_is_judged_without_panicking(to in any::<String>(), body in any::<String>(), r in any::<String>()) {
        let _ = sms::validate_message(0, &to, &body, &r);
        let _ = sms::segments(&body);
        let _ = to.parse::<BatchId>();
        let _ = to.parse::<MessageId>();
    }

    #[test]
    fn e164_numbers_are_accepted(first in 1u8..=9, rest in proptest::collection::vec(0u8..=9, 6..=14)) {
        let to = std::iter::once(first).chain(rest).map(|d| char::from(b'0' + d)).collect::<String>();
        let plus = format!("+{to}");
        let zero = format!("+0{}", &to[1..]);
        prop_assert!(sms::validate_e164("to", &plus).is_ok());
        // Without the '+', or with a leading 0, they are not.
        prop_assert!(sms::validate_e164("to", &to).is_err());
        prop_assert!(sms::validate_e164("to", &zero).is_err());
    }

    #[test]
    fn e164_accepts_exactly_the_model(to in "\\+?[0-9a-z +-]{0,20}") {
        let digits = to.strip_prefix('+');
        let model = matches!(digits, Some(d) if (7..=15).contains(&d.len())
            && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'));
        prop_assert_eq!(sms::validate_e164("to", &to).is_ok(), model);
    }

    #[test]
    fn gsm7_bodies_count_septets_and_segments(body in proptest::collection::vec(gsm_char(), 0..1700)) {
        let costs: Vec<u32> = body.iter().map(|c| if EXTENDED.contains(*c) { 2 } else { 1 }).collect();
        let text: String = body.iter().collect();
        let s = sms::segments(&text);
        prop_assert_eq!(s.encoding, Encoding::Gsm7);
        prop_assert_eq!(s.units, costs.iter().sum::<u32>());
        prop_assert_eq!(s.count, model_segments(&costs, 160, 153));
        let valid = sms::validate_body("body", &text).is_ok();
        prop_assert_eq!(valid, !text.is_empty() && s.count <= sms::MAX_SEGMENTS);
    }

    #[test]
    fn other_characters_make_ucs2_bodies(body in "[a-z]{0,100}[\u{4e00}-\u{9fff}\u{1F600}-\u{1F64F}]{1,400}") {
        let s = sms::segments(&body);
        let costs: Vec<u32> = body.chars().map(|c| c.len_utf16() as u32).collect();
        prop_assert_eq!(s.encoding, Encoding::Ucs2);
        prop_assert_eq!(s.units, costs.iter().sum::<u32>());
        prop_assert_eq!(s.count, model_segments(&costs, 70, 67));
    }

    #[test]
    fn ids_round_trip(batch in any::<u64>(), index in any::<u32>()) {
        let id = BatchId(batch);
        prop_assert_eq!(id.to_string().parse::<BatchId>().unwrap(), id);
        let m = MessageId { batch: id, index };
        prop_assert_eq!(m.to_string().parse::<MessageId>().unwrap(), m);
    }

    #[test]
    fn submit_requests_are_accepted_only_when_every_part_is_valid(
        msgs in proptest::collection::vec(
            ("\\+?[0-9]{0,16}", proptest::collection::vec(prop_oneof![gsm_char(), any::<char>()], 0..200), "[ -~]{0,300}"),
            0..20,
        ),
        synthetic in proptest::option::of((0u64..200, proptest::option::of(any::<u64>()))),
        max_attempts in proptest::option::of(0u32..30),
        key_len in 0usize..300,
    ) {
        let config = Config { max_batch_size: 100, ..Config::default() };
        let messages: Vec<pb::SmsMessage> = msgs
            .iter()
            .map(|(to, body, r)| pb::SmsMessage { to: to.clone(), body: body.iter().collect(), client_ref: r.clone(), ..Default::default() })
            .collect();
        let req = pb::SubmitBatchRequest {
            messages: messages.clone(),
            synthetic: synthetic.map(|(count, seed)| pb::SyntheticBatch { count, body: None, seed }),
            max_attempts,
            idempotency_key: "k".repeat(key_len),
            ..Default::default()
        };
        let result = validate_submit(req, &config);
        let model = {
            let content_ok = match (messages.is_empty(), synthetic) {
                (false, None) => messages.len() <= 100 && messages.iter().enumerate().all(|(i, m)| sms::validate_message(i, &m.to, &m.body, &m.client_ref).is_ok()),
                (true, Some((count, _))) => (1..=100).contains(&count),
                _ => false,
            };
            content_ok
                && max_attempts.is_none_or(|n| (1..=config.max_attempts_limit).contains(&n))
                && key_len <= 256
        };
        match &result {
            Ok(b) => {
                prop_assert!(model, "accepted, but the model refuses");
                prop_assert!(b.total >= 1 && u64::from(b.total) <= 100);
            }
            Err(e) => {
                prop_assert!(!model, "refused ({e}), but the model accepts");
                let status = tonic::Status::from(e.clone());
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                prop_assert!(!status.message().is_empty());
            }
        }
    }
}
