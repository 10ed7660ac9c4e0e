//! One bind's way out: each PDU is encoded by its sender straight into the
//! bind's [`OutBuf`], one task writes all that gathered in one write, and
//! the receipts sent on the bind are kept until their deliver_sm_resp.
//!
//! A receipt is encoded once, when it is made, with sequence number 0; each
//! bind that sends it writes it under a sequence number of its own, so a
//! receipt sent again after a bind closed is the same bytes with a new one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rusmpp::pdus::DeliverSm;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::{Command, CommandStatus};
use rustc_hash::FxHashMap;
use smsmesh::outbuf::OutBuf;
use tokio::io::AsyncWrite;
use tokio_util::bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::Encoder;

/// Where the sequence number sits in a PDU's header.
const SEQ_AT: std::ops::Range<usize> = 12..16;

/// A delivery receipt, encoded: a whole deliver_sm PDU whose sequence
/// number is set as it is written. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Receipt(Bytes);

impl Receipt {
    pub(crate) fn new(pdu: DeliverSm) -> Receipt {
        let mut buf = BytesMut::new();
        CommandCodec::new()
            .encode(Command::new(CommandStatus::EsmeRok, 0, pdu), &mut buf)
            .expect("encoding into memory does not fail");
        Receipt(buf.freeze())
    }
}

struct Inner {
    out: OutBuf,
    /// The next deliver_sm's sequence number.
    seq: AtomicU32,
    /// Receipts sent and not answered, by sequence number.
    unacked: Mutex<FxHashMap<u32, Receipt>>,
}

/// A handle to one bind's out-buffer; cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbound {
    inner: Arc<Inner>,
}

impl Outbound {
    /// The bind's out-buffer and the task that writes it to `write`, which
    /// ends once the buffer is closed and written, or a write fails.
    pub(crate) fn start<W>(mut write: W) -> (Outbound, tokio::task::JoinHandle<()>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let out = Outbound {
            inner: Arc::new(Inner {
                out: OutBuf::default(),
                seq: AtomicU32::new(1),
                unacked: Mutex::default(),
            }),
        };
        let writer = {
            let out = out.clone();
            tokio::spawn(async move {
                let _ = out.inner.out.write_to(&mut write).await;
            })
        };
        (out, writer)
    }

    /// Whether `self` and `other` are the same bind.
    pub(crate) fn same(&self, other: &Outbound) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Encodes `cmd` into the out-buffer; false if the bind has closed.
    pub(crate) fn send(&self, cmd: &Command) -> bool {
        self.inner
            .out
            .fill(|buf| {
                CommandCodec::new()
                    .encode(cmd, buf)
                    .expect("encoding into memory does not fail")
            })
            .is_some()
    }

    /// Sends a receipt under the bind's next sequence number, kept until
    /// answered; gives it back if the bind has closed.
    pub(crate) fn deliver(&self, r: Receipt) -> Option<Receipt> {
        let inner = &self.inner;
        let mut r = Some(r);
        inner.out.fill(|buf| {
            let r = r.take().expect("filled once");
            let seq = inner.seq.fetch_add(1, Ordering::Relaxed);
            buf.extend_from_slice(&r.0[..SEQ_AT.start]);
            buf.put_u32(seq);
            buf.extend_from_slice(&r.0[SEQ_AT.end..]);
            // Kept while the buffer is locked, so a close either finds it or came first.
            inner.unacked.lock().expect("unacked lock").insert(seq, r);
        });
        r
    }

    /// The deliver_sm with this sequence number was answered.
    pub(crate) fn answered(&self, seq: u32) {
        self.inner
            .unacked
            .lock()
            .expect("unacked lock")
            .remove(&seq);
    }

    /// Closes the bind: what is in the buffer is still written, nothing
    /// more is taken. Gives back the receipts it sent and had not had
    /// answered, in the order they were sent.
    pub(crate) fn close(&self) -> Vec<Receipt> {
        self.inner.out.close();
        let mut unanswered: Vec<(u32, Receipt)> = self
            .inner
            .unacked
            .lock()
            .expect("unacked lock")
            .drain()
            .collect();
        unanswered.sort_unstable_by_key(|(seq, _)| *seq);
        unanswered.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use rusmpp::Pdu;
    use rusmpp::types::COctetString;
    use tokio_util::codec::{Decoder, FramedRead};

    fn receipt(to: &str) -> Receipt {
        Receipt::new(
            DeliverSm::builder()
                .source_addr(COctetString::from_string(to.into()).expect("short"))
                .build(),
        )
    }

    /// A receipt goes out under each bind's own sequence numbers, is kept
    /// until answered, and comes back from a close in the order it was sent.
    #[tokio::test]
    async fn receipts_are_numbered_per_bind_and_given_back_unanswered() {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let (out, writer) = Outbound::start(near);
        let (a, b, c) = (receipt("1"), receipt("2"), receipt("3"));
        assert!(out.deliver(a).is_none());
        assert!(out.deliver(b).is_none());
        assert!(out.send(&Command::new(
            CommandStatus::EsmeRok,
            77,
            Pdu::EnquireLinkResp
        )));
        assert!(out.deliver(c.clone()).is_none());
        out.answered(2);
        let back = out.close();
        let to = |r: &Receipt| {
            let mut buf = BytesMut::from(&r.0[..]);
            let cmd = rusmpp::tokio_codec::CommandCodec::new()
                .decode(&mut buf)
                .expect("decodes")
                .expect("whole");
            match cmd.pdu() {
                Some(Pdu::DeliverSm(d)) => d.source_addr.as_str().to_string(),
                other => panic!("not a deliver_sm: {other:?}"),
            }
        };
        assert_eq!(back.iter().map(to).collect::<Vec<_>>(), ["1", "3"]);
        assert!(out.deliver(c).is_some(), "a closed bind takes no receipt");
        assert!(!out.send(&Command::new(
            CommandStatus::EsmeRok,
            78,
            Pdu::EnquireLinkResp
        )));
        writer.await.expect("the writer ends once closed");
        let seen: Vec<(u32, &'static str)> = FramedRead::new(far, CommandCodec::new())
            .map(|c| {
                let c = c.expect("decodes");
                let kind = match c.pdu() {
                    Some(Pdu::DeliverSm(_)) => "deliver_sm",
                    Some(Pdu::EnquireLinkResp) => "enquire_link_resp",
                    _ => "other",
                };
                (c.sequence_number(), kind)
            })
            .collect()
            .await;
        assert_eq!(
            seen,
            [
                (1, "deliver_sm"),
                (2, "deliver_sm"),
                (77, "enquire_link_resp"),
                (3, "deliver_sm")
            ]
        );
    }
}
