//! A connection's out-buffer: senders encode their frames into it under a
//! lock, and one task writes all that gathered in one write per wake-up,
//! swapping the buffer with a spare so senders never wait on the socket.
//! Used by both ends of SMPP in this workspace: the node's connection to
//! its SMSC and the test SMSC's binds.

use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Bytes each of the two buffers starts with room for.
const CAPACITY: usize = 16 * 1024;

struct Out {
    buf: BytesMut,
    /// Nothing more is taken: the writer writes what is in `buf` and ends.
    closed: bool,
}

/// Frames encoded and not yet written.
pub struct OutBuf {
    out: Mutex<Out>,
    /// Wakes the writer when the buffer gains its first bytes or closes.
    ready: Notify,
}

impl Default for OutBuf {
    fn default() -> Self {
        OutBuf {
            out: Mutex::new(Out {
                buf: BytesMut::with_capacity(CAPACITY),
                closed: false,
            }),
            ready: Notify::new(),
        }
    }
}

impl OutBuf {
    /// Lets `fill` add to the buffer (under its lock, so what `fill` does
    /// besides is ordered with [`close`](Self::close)), and wakes the
    /// writer if the buffer was empty. `None` once closed: `fill` is not run.
    pub fn fill<R>(&self, fill: impl FnOnce(&mut BytesMut) -> R) -> Option<R> {
        let mut out = self.out.lock().expect("out lock");
        if out.closed {
            return None;
        }
        let was_empty = out.buf.is_empty();
        let r = fill(&mut out.buf);
        let wake = was_empty && !out.buf.is_empty();
        drop(out);
        if wake {
            self.ready.notify_one();
        }
        Some(r)
    }

    /// Takes nothing more; the writer writes what is buffered, then ends.
    pub fn close(&self) {
        self.out.lock().expect("out lock").closed = true;
        self.ready.notify_one();
    }

    /// Writes what is buffered to `write`, one write per wake-up, until the
    /// buffer is closed (then shuts `write` down) or a write fails (then
    /// closes the buffer and gives the error).
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, write: &mut W) -> std::io::Result<()> {
        let mut spare = BytesMut::with_capacity(CAPACITY);
        loop {
            self.ready.notified().await;
            let closed = {
                let mut out = self.out.lock().expect("out lock");
                std::mem::swap(&mut out.buf, &mut spare);
                out.closed
            };
            if !spare.is_empty() {
                let written = async {
                    write.write_all(&spare).await?;
                    write.flush().await
                }
                .await;
                spare.clear();
                if let Err(e) = written {
                    self.close();
                    return Err(e);
                }
            }
            if closed {
                let _ = write.shutdown().await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// What is filled before a close is written, in order, then the writer
    /// ends; after the close nothing is taken.
    #[tokio::test]
    async fn writes_what_was_filled_then_ends_at_the_close() {
        let (mut near, mut far) = tokio::io::duplex(1024);
        let buf = std::sync::Arc::new(OutBuf::default());
        let writer = {
            let buf = buf.clone();
            tokio::spawn(async move { buf.write_to(&mut near).await })
        };
        assert_eq!(buf.fill(|b| b.extend_from_slice(b"one ")), Some(()));
        assert_eq!(buf.fill(|b| b.extend_from_slice(b"two")), Some(()));
        buf.close();
        assert_eq!(buf.fill(|b| b.extend_from_slice(b" three")), None);
        writer.await.unwrap().unwrap();
        let mut got = String::new();
        far.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "one two");
    }

    /// A failed write closes the buffer and gives the error.
    #[tokio::test]
    async fn a_failed_write_closes_the_buffer() {
        let (mut near, far) = tokio::io::duplex(16);
        drop(far);
        let buf = OutBuf::default();
        assert!(buf.fill(|b| b.extend_from_slice(b"lost")).is_some());
        assert!(buf.write_to(&mut near).await.is_err());
        assert!(buf.fill(|b| b.extend_from_slice(b"x")).is_none());
    }
}
