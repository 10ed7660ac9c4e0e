//! The lingering close of HTTP servers: a request body that a route drops
//! before its end (a request refused early: no token, a bad line of an
//! upload, a body over the size limit) is still read to its end, and
//! dropped, by a task of its own for up to [`LINGER`]. Closing the
//! connection with the client's data unread would make the kernel reset it,
//! and a client still sending (curl) would see the reset ("broken pipe")
//! instead of the answer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use futures::StreamExt;
use http_body::{Frame, SizeHint};

/// The longest a dropped body is still read.
pub(super) const LINGER: Duration = Duration::from_secs(5);

/// Gives `req` a body that lingers when dropped before its end.
pub(super) async fn wrap(req: Request) -> Request {
    req.map(|body| Body::new(Lingering(Some(body))))
}

/// A request body that, dropped before its end, is read to it.
struct Lingering(Option<Body>);

impl http_body::Body for Lingering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(SizeHint::default, http_body::Body::size_hint)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(body) = self.0.take() else { return };
        if http_body::Body::is_end_stream(&body) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut data = body.into_data_stream();
            let read_all = async { while let Some(Ok(_)) = data.next().await {} };
            let _ = tokio::time::timeout(LINGER, read_all).await;
        });
    }
}
