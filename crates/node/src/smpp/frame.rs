//! SMPP PDUs as bytes, read and written through rusmpp-core's borrowed PDUs.
//! A PDU read is cut from the byte stream by its header alone, and its body
//! is decoded in place, as the type its reader expects, only by the one who
//! reads it (its fields are slices of the bytes read, not an allocation
//! each). A request is encoded once, before it waits for its turn, into
//! bytes its sequence number is written into as it goes out.

use bytes::{BufMut, Bytes, BytesMut};
use rusmpp_core::command::borrowed::Command;
use rusmpp_core::decode::borrowed::{Decode, DecodeWithLength};
use rusmpp_core::encode::{Encode, Length};
use rusmpp_core::pdus::borrowed as pdus;
use rusmpp_core::types::borrowed::COctetString;
use rusmpp_core::{CommandId, CommandStatus};

/// TLVs a PDU read may carry at most (SMPP 3.4 defines 18 for deliver_sm;
/// one with more does not decode).
const TLVS: usize = 24;

/// A command to be written (the TLVs of what we write are few).
pub(super) type Cmd<'a> = Command<'a, 4>;
/// A PDU to be written.
pub(super) type Pdu<'a> = pdus::Pdu<'a, 4>;
/// A submit_sm_resp's message_id, read in place.
pub(super) type MessageId<'a> = COctetString<'a, 1, 65>;
/// A deliver_sm, read in place.
pub(super) type DeliverSm<'a> = pdus::DeliverSm<'a, TLVS>;

/// command_length, command_id, command_status and sequence_number.
const HEADER: usize = 16;

/// The longest PDU read, as rusmpp's own codec has it.
const MAX_LENGTH: usize = 8192;

/// One whole PDU as read.
#[derive(Clone)]
pub(super) struct Frame(Bytes);

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("id", &self.id())
            .field("status", &self.status())
            .field("seq", &self.sequence_number())
            .field("length", &self.0.len())
            .finish()
    }
}

impl Frame {
    /// Takes the PDU at the front of `buf` once all of it has arrived
    /// (`None` until then, with room reserved for the rest); an error if its
    /// command_length is out of bounds, after which nothing more can be cut.
    pub(super) fn cut(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if !(HEADER..=MAX_LENGTH).contains(&length) {
            return Err(format!(
                "a command_length of {length}, not within {HEADER} to {MAX_LENGTH}"
            ));
        }
        if buf.len() < length {
            buf.reserve(length - buf.len());
            return Ok(None);
        }
        Ok(Some(Frame(buf.split_to(length).freeze())))
    }

    fn word(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }

    pub(super) fn id(&self) -> CommandId {
        CommandId::from(self.word(4))
    }

    pub(super) fn status(&self) -> CommandStatus {
        CommandStatus::from(self.word(8))
    }

    pub(super) fn sequence_number(&self) -> u32 {
        self.word(12)
    }

    /// The message_id at the start of a submit_sm_resp's body, read in
    /// place, or why there is none. What follows it is not read: optional
    /// TLVs (SMPP 5.0 gives a submit_sm_resp four kinds, in any number) say
    /// nothing that would undo an id the SMSC gave, and a send with an id
    /// left as an unknown outcome would be sent again.
    pub(super) fn message_id(&self) -> Result<MessageId<'_>, String> {
        <MessageId<'_> as Decode>::decode(&self.0[HEADER..])
            .map(|(id, _)| id)
            .map_err(|e| e.to_string())
    }

    /// The body decoded in place as a `T`, or why it is not one.
    pub(super) fn body<'a, T: DecodeWithLength<'a>>(&'a self) -> Result<T, String> {
        T::decode(&self.0[HEADER..], self.0.len() - HEADER)
            .map(|(body, _)| body)
            .map_err(|e| e.to_string())
    }
}

/// Encodes `cmd` at the end of `buf`, its command_length first.
pub(super) fn put(buf: &mut BytesMut, cmd: &Cmd<'_>) {
    let length = 4 + cmd.length();
    let start = buf.len();
    buf.reserve(length);
    buf.put_u32(length as u32);
    buf.resize(start + length, 0);
    cmd.encode(&mut buf[start + 4..]);
}

/// A request encoded ahead of sending, with a sequence number still to be
/// given: [`Prepared::put`] writes it with one.
#[derive(Clone)]
pub(super) struct Prepared(Bytes);

impl Prepared {
    pub(super) fn new<'a>(pdu: impl Into<Pdu<'a>>) -> Prepared {
        let mut buf = BytesMut::new();
        put(&mut buf, &Cmd::new(CommandStatus::EsmeRok, 0, pdu));
        Prepared(buf.freeze())
    }

    /// Writes the request at the end of `buf` as number `seq` (bytes 12 to
    /// 16 of every PDU).
    pub(super) fn put(&self, buf: &mut BytesMut, seq: u32) {
        let start = buf.len();
        buf.extend_from_slice(&self.0);
        buf[start + 12..start + HEADER].copy_from_slice(&seq.to_be_bytes());
    }
}

/// `s` with a NUL after it, for a C-string field of a PDU.
pub(super) fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pdu_is_cut_only_once_all_of_it_has_come_and_reads_as_it_was_written() {
        let mut wire = BytesMut::new();
        let id = nul_terminated("0A1b");
        let resp = pdus::SubmitSmResp::<4>::builder()
            .message_id(COctetString::new(&id).unwrap())
            .build();
        put(&mut wire, &Cmd::new(CommandStatus::EsmeRok, 7, resp));
        Prepared::new(Pdu::EnquireLink).put(&mut wire, 8);
        let whole = wire.len();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = Frame::cut(&mut buf).unwrap() {
                frames.push((buf.len(), f));
            }
        }
        assert_eq!(whole, 16 + 5 + 16);
        assert_eq!(frames.len(), 2);
        let (left, first) = &frames[0];
        assert_eq!(*left, 0);
        assert_eq!(first.id(), CommandId::SubmitSmResp);
        assert_eq!(first.sequence_number(), 7);
        assert_eq!(first.message_id().unwrap().as_str(), "0A1b");
        assert_eq!(frames[1].1.id(), CommandId::EnquireLink);
        assert_eq!(frames[1].1.sequence_number(), 8);
    }

    #[test]
    fn a_length_out_of_bounds_is_an_error_and_a_body_that_does_not_decode_says_why() {
        let mut short = BytesMut::from(&[0, 0, 0, 15][..]);
        assert!(Frame::cut(&mut short).unwrap_err().contains("15"));
        let mut long = BytesMut::from(&8193u32.to_be_bytes()[..]);
        assert!(Frame::cut(&mut long).unwrap_err().contains("8193"));
        // A submit_sm_resp whose message_id has no NUL.
        let mut bad = BytesMut::new();
        bad.put_u32(16 + 3);
        bad.put_u32(0x8000_0004);
        bad.put_u32(0);
        bad.put_u32(1);
        bad.put_slice(b"abc");
        let frame = Frame::cut(&mut bad).unwrap().unwrap();
        assert_eq!(frame.id(), CommandId::SubmitSmResp);
        assert!(frame.message_id().is_err());
    }

    /// A submit_sm_resp's id reads whatever follows it: more TLVs than any
    /// SMPP version defines for it, or bytes that are no TLV at all.
    #[test]
    fn a_message_id_reads_whatever_follows_it() {
        for tail in [[0x04, 0x25, 0, 1, 9].repeat(30), b"\x01\x02\x03".to_vec()] {
            let mut wire = BytesMut::new();
            wire.put_u32((16 + 4 + tail.len()) as u32);
            wire.put_u32(0x8000_0004);
            wire.put_u32(0);
            wire.put_u32(1);
            wire.put_slice(b"a7f\0");
            wire.put_slice(&tail);
            let frame = Frame::cut(&mut wire).unwrap().unwrap();
            assert_eq!(frame.message_id().unwrap().as_str(), "a7f");
        }
    }
}
