//! A connection's writes gathered over one turn of the scheduler: a flush of
//! a small answer first lets the other ready tasks run (the answers a group
//! commit released at once), then sends what they all wrote in one system
//! call, instead of one `writev` per answer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Bytes held before they are written through without waiting for a flush.
const HOLD: usize = 64 * 1024;

/// Most bytes a flush waits a turn to add to: unary answers, a few hundred
/// bytes each. More (a node's frame of jobs) goes at once: a stream that
/// waits a turn per frame waits behind every other task, and its node with it.
const SMALL: usize = 2048;

/// A connection that can take bytes at once, without waiting: what is held
/// when it is dropped goes that way (a TLS alert written just before a
/// handshake fails, say), as it would have gone without gathering.
pub trait SendNow {
    /// Writes what the connection takes now, without blocking.
    fn send_now(&self, buf: &[u8]) -> io::Result<usize>;
}

impl SendNow for tokio::net::TcpStream {
    fn send_now(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
}

/// Writes to `inner`, gathered until a flush; the flush of up to [`SMALL`]
/// bytes yields once to the scheduler before it writes, so that frames other
/// tasks queue meanwhile go in the same write.
#[derive(Debug)]
pub struct Gathered<T: SendNow> {
    inner: T,
    /// Written and not yet passed on.
    held: Vec<u8>,
    /// The flush of what is held has yielded once already.
    yielded: bool,
}

impl<T: SendNow> Drop for Gathered<T> {
    fn drop(&mut self) {
        let mut held = &self.held[..];
        while !held.is_empty() {
            match self.inner.send_now(held) {
                Ok(n) if n > 0 => held = &held[n..],
                _ => break,
            }
        }
    }
}

impl<T: SendNow> Gathered<T> {
    /// `inner`, with its writes gathered.
    pub fn new(inner: T) -> Self {
        Gathered {
            inner,
            held: Vec::new(),
            yielded: false,
        }
    }

    /// The connection itself.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The connection itself, to read from.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: SendNow + AsyncWrite + Unpin> Gathered<T> {
    /// Passes every held byte on to the connection.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut done = 0;
        let result = loop {
            if done == self.held.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &self.held[done..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.held.drain(..done);
        result
    }
}

impl<T: SendNow + AsyncWrite + Unpin> AsyncWrite for Gathered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.held.len() >= HOLD {
            // Enough to fill a write of its own: pass it on first.
            std::task::ready!(this.poll_write_held(cx))?;
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.held.is_empty() && len >= HOLD {
            // Large writes (a frame of many jobs) go through as they are.
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.held.is_empty() {
            if !this.yielded && this.held.len() <= SMALL {
                // Let the tasks that are ready now add their frames first.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            std::task::ready!(this.poll_write_held(cx))?;
        }
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    /// A connection that records each write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        /// What was sent at once, as the connection was dropped.
        sent_now: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl SendNow for Recorder {
        fn send_now(&self, buf: &[u8]) -> io::Result<usize> {
            self.sent_now.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_until_a_flush_go_in_one_write_after_one_yield() {
        let mut g = Gathered::new(Recorder::default());
        g.write_all(b"one ").await.unwrap();
        g.write_all(b"two ").await.unwrap();
        assert!(g.get_ref().writes.is_empty(), "held until a flush");
        // The first poll of the flush yields (and asks to be polled again).
        let mut polls = 0;
        poll_fn(|cx| {
            polls += 1;
            if polls == 2 {
                // Another task's frame, written while the flush yielded.
                assert!(Pin::new(&mut g).poll_write(cx, b"three").is_ready());
            }
            Pin::new(&mut g).poll_flush(cx)
        })
        .await
        .unwrap();
        assert_eq!(polls, 2);
        assert_eq!(g.get_ref().writes, [b"one two three".to_vec()]);
        assert_eq!(g.get_ref().flushes, 1);
        // Nothing held: a flush goes at once.
        g.flush().await.unwrap();
        assert_eq!(g.get_ref().flushes, 2);
    }

    #[tokio::test]
    async fn a_flush_of_more_than_a_small_answer_goes_at_once() {
        let mut g = Gathered::new(Recorder::default());
        let frame = vec![3u8; SMALL + 1];
        g.write_all(&frame).await.unwrap();
        let mut polls = 0;
        poll_fn(|cx| {
            polls += 1;
            Pin::new(&mut g).poll_flush(cx)
        })
        .await
        .unwrap();
        assert_eq!(polls, 1, "no yield");
        assert_eq!(g.get_ref().writes.len(), 1);
    }

    #[tokio::test]
    async fn large_writes_pass_through_and_a_shutdown_sends_what_is_held() {
        let mut g = Gathered::new(Recorder::default());
        let big = vec![7u8; HOLD];
        g.write_all(&big).await.unwrap();
        assert_eq!(g.get_ref().writes.len(), 1, "not copied, not held");
        assert_eq!(g.get_ref().writes[0], big);
        g.write_all(b"tail").await.unwrap();
        g.shutdown().await.unwrap();
        assert_eq!(g.get_ref().writes, [big, b"tail".to_vec()]);
    }

    #[tokio::test]
    async fn a_full_hold_is_passed_on_before_more_is_taken() {
        let mut g = Gathered::new(Recorder::default());
        let part = vec![1u8; HOLD / 2 + 1];
        g.write_all(&part).await.unwrap();
        g.write_all(&part).await.unwrap();
        assert!(g.get_ref().writes.is_empty());
        g.write_all(b"x").await.unwrap();
        assert_eq!(
            g.get_ref().writes.len(),
            1,
            "over {HOLD} bytes held: written"
        );
        assert_eq!(g.get_ref().writes[0].len(), 2 * part.len());
    }

    #[tokio::test]
    async fn what_is_held_when_dropped_is_sent_at_once() {
        let mut g = Gathered::new(Recorder::default());
        let sent = g.get_ref().sent_now.clone();
        g.write_all(b"alert").await.unwrap();
        drop(g);
        assert_eq!(*sent.lock().unwrap(), b"alert");
    }
}
