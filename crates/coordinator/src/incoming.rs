//! The connections the coordinator accepts, each of which must send its
//! opening bytes (a TLS ClientHello, or the HTTP/2 preface) in time: a
//! connection that never finishes its handshake is closed, not kept.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::gathered::Gathered;

/// Bytes a client sends before anything else: the HTTP/2 connection preface
/// is 24, and a TLS ClientHello is longer.
const OPENING: usize = 24;

/// An accepted connection with a deadline for its opening bytes.
pub struct Timely {
    inner: Gathered<TcpStream>,
    /// Until the opening bytes arrived: when the connection is closed.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, until the opening is complete.
    seen: usize,
}

impl Timely {
    /// `stream`, which must send its opening bytes within `timeout`.
    pub fn new(stream: TcpStream, timeout: Duration) -> Self {
        Timely {
            inner: Gathered::new(stream),
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            seen: 0,
        }
    }
}

impl AsyncRead for Timely {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not open its connection in time",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(this.inner.get_mut()).poll_read(cx, buf);
        if this.deadline.is_some() && matches!(read, Poll::Ready(Ok(()))) {
            this.seen += buf.filled().len() - before;
            if this.seen >= OPENING {
                this.deadline = None;
            }
        }
        read
    }
}

impl AsyncWrite for Timely {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Timely {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.get_ref().connect_info()
    }
}
