//! SMPP command statuses: their names, and the class of failure each one is.
//! The one place that decides what a status means for a message.

use crate::gateway::FailureClass;

/// The standard SMPP 3.4 statuses a submit_sm_resp may carry, by value.
const NAMES: &[(u32, &str)] = &[
    (0x00, "ESME_ROK"),
    (0x01, "ESME_RINVMSGLEN"),
    (0x02, "ESME_RINVCMDLEN"),
    (0x03, "ESME_RINVCMDID"),
    (0x04, "ESME_RINVBNDSTS"),
    (0x05, "ESME_RALYBND"),
    (0x06, "ESME_RINVPRTFLG"),
    (0x07, "ESME_RINVREGDLVFLG"),
    (0x08, "ESME_RSYSERR"),
    (0x0A, "ESME_RINVSRCADR"),
    (0x0B, "ESME_RINVDSTADR"),
    (0x0C, "ESME_RINVMSGID"),
    (0x0D, "ESME_RBINDFAIL"),
    (0x0E, "ESME_RINVPASWD"),
    (0x0F, "ESME_RINVSYSID"),
    (0x14, "ESME_RMSGQFUL"),
    (0x15, "ESME_RINVSERTYP"),
    (0x33, "ESME_RINVNUMDESTS"),
    (0x43, "ESME_RINVESMCLASS"),
    (0x45, "ESME_RSUBMITFAIL"),
    (0x48, "ESME_RINVSRCTON"),
    (0x49, "ESME_RINVSRCNPI"),
    (0x50, "ESME_RINVDSTTON"),
    (0x51, "ESME_RINVDSTNPI"),
    (0x53, "ESME_RINVSYSTYP"),
    (0x58, "ESME_RTHROTTLED"),
    (0x61, "ESME_RINVSCHED"),
    (0x62, "ESME_RINVEXPIRY"),
    (0x64, "ESME_RX_T_APPN"),
    (0x65, "ESME_RX_P_APPN"),
    (0x66, "ESME_RX_R_APPN"),
    (0xC0, "ESME_RINVOPTPARSTREAM"),
    (0xC1, "ESME_ROPTPARNOTALLWD"),
    (0xC2, "ESME_RINVPARLEN"),
    (0xC3, "ESME_RMISSINGOPTPARAM"),
    (0xC4, "ESME_RINVOPTPARAMVAL"),
    (0xFE, "ESME_RDELIVERYFAILURE"),
    (0xFF, "ESME_RUNKNOWNERR"),
];

/// The name of status `code`, e.g. "ESME_RTHROTTLED", or its hex value.
pub fn name(code: u32) -> String {
    NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| format!("0x{code:08X}"), |(_, n)| (*n).to_string())
}

/// What a non-zero status means for the message.
///
/// - Throttled: ESME_RTHROTTLED (the connector pauses).
/// - Temporary (retried): the SMSC's own trouble or a full queue:
///   ESME_RSYSERR, ESME_RMSGQFUL, ESME_RSUBMITFAIL, ESME_RX_T_APPN,
///   ESME_RDELIVERYFAILURE, ESME_RUNKNOWNERR, ESME_RINVBNDSTS (the bind was
///   not ready), and any status not listed here (vendor codes), so that an
///   unknown code never ends a message that a retry could send.
/// - Permanent (final at once): what is wrong with the message itself and will
///   be wrong again: bad lengths, addresses, TON/NPI, esm_class, data coding,
///   registered_delivery, service type, schedule or expiry, ESME_RX_P_APPN and
///   ESME_RX_R_APPN.
pub fn class(code: u32) -> FailureClass {
    match code {
        0x58 => FailureClass::Throttled,
        0x01
        | 0x02
        | 0x03
        | 0x06
        | 0x07
        | 0x0A
        | 0x0B
        | 0x15
        | 0x33
        | 0x43
        | 0x48
        | 0x49
        | 0x50
        | 0x51
        | 0x61
        | 0x62
        | 0x65
        | 0x66
        | 0xC0..=0xC4
        | 0x104 => FailureClass::Permanent,
        _ => FailureClass::Temporary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_has_one_class_and_unknown_codes_are_retried() {
        assert_eq!(class(0x58), FailureClass::Throttled);
        assert_eq!(class(0x0B), FailureClass::Permanent);
        assert_eq!(class(0x08), FailureClass::Temporary);
        assert_eq!(class(0x14), FailureClass::Temporary);
        assert_eq!(class(0x0400), FailureClass::Temporary, "a vendor code");
        assert_eq!(name(0x0B), "ESME_RINVDSTADR");
        assert_eq!(name(0x0400), "0x00000400");
    }
}
