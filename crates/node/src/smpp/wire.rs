//! One SMPP connection as an ESME: requests pipelined by sequence number,
//! their PDUs read and written as [`frame`](super::frame) says. A request is
//! registered before it is written, so no response can arrive unmatched;
//! each PDU is written by its sender straight into the connection's
//! out-buffer, and the writer sends all that gathered in one write;
//! enquire_link is sent every interval and answered when the
//! SMSC sends it. Requests are timed out by one sweep of the waiting ones
//! every [`sweep_every`] rather than by a timer each: a request is given up
//! between its timeout and its timeout plus one sweep.
//!
//! Written here rather than taken from rusmppc 0.4, whose connection task
//! under a full window could sit idle until its enquire_link timer woke it:
//! in bench (j) one node sent 761 submit_sm/s with enquire_link at 30 s and
//! 23,517/s at 100 ms. Its write loop stops after five PDUs per wake-up
//! without waking itself again, which fits. It also flushed every PDU alone.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rusmpp_core::{CommandId, CommandStatus};
use rustc_hash::FxHashMap;
use smsmesh::outbuf::OutBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::frame::{self, Cmd, Frame, Pdu, Prepared};

/// Room the reader keeps free for the next read.
const READ_ROOM: usize = 16 * 1024;

/// How often the waiting requests are checked for their timeouts: an eighth
/// of the response timeout, between 5 ms and 250 ms.
fn sweep_every(response_timeout: Duration) -> Duration {
    (response_timeout / 8).clamp(Duration::from_millis(5), Duration::from_millis(250))
}

/// A request awaiting its response.
struct Waiter {
    tx: oneshot::Sender<Result<Frame, WireError>>,
    /// When the sweep gives it up.
    deadline: Instant,
    timeout: Duration,
}

/// Why a request got no answer it could use.
#[derive(Debug)]
pub(super) enum WireError {
    /// The connection was already closed: the request was never written.
    NotSent(String),
    /// The SMSC answered with this non-zero command_status.
    Refused(u32),
    /// No response within this time; the SMSC may have acted on it.
    Timeout(Duration),
    /// The connection closed after the request was queued; it may have been sent.
    Lost(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::NotSent(why) => write!(f, "not sent: {why}"),
            WireError::Refused(code) => write!(f, "{} (0x{code:08X})", super::status::name(*code)),
            WireError::Timeout(t) => write!(f, "no response within {t:?}"),
            WireError::Lost(why) => write!(f, "connection lost awaiting the response: {why}"),
        }
    }
}

/// What the SMSC sent that is not a response to us, or the end of the connection.
#[derive(Debug)]
pub(super) enum Event {
    /// A request from the SMSC (deliver_sm, unbind, ...) to be answered.
    Incoming(Frame),
    /// The connection ended, and why.
    Closed(String),
}

/// How long a closing writer may take to write what was queued before it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

struct Inner {
    /// To the writer: PDUs encoded; closed when the connection shuts.
    out: OutBuf,
    /// Requests awaiting their response, by sequence number; `None` once closed.
    pending: Mutex<Option<FxHashMap<u32, Waiter>>>,
    /// Why the connection closed, once it has.
    closed: Mutex<Option<String>>,
    events: mpsc::UnboundedSender<Event>,
    seq: AtomicU32,
    /// The reader and the enquire_link task, stopped at once when closing.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The writer, stopped after [`CLOSE_GRACE`] if it has not ended by then.
    writer: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Inner {
    /// Ends the connection once: every waiting request fails, the tasks stop
    /// and the owner is told why.
    fn shut(&self, why: String) {
        let mut closed = self.closed.lock().expect("closed lock");
        if closed.is_some() {
            return;
        }
        *closed = Some(why.clone());
        drop(closed);
        self.pending.lock().expect("pending lock").take();
        let _ = self.events.send(Event::Closed(why));
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        self.out.close();
        if let Some(w) = self.writer.lock().expect("writer lock").take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(async move {
                    tokio::time::sleep(CLOSE_GRACE).await;
                    w.abort();
                })),
                Err(_) => w.abort(),
            }
        }
    }

    fn why_closed(&self) -> String {
        self.closed
            .lock()
            .expect("closed lock")
            .clone()
            .unwrap_or_else(|| "the connection closed".into())
    }

    /// Encodes `cmd` into the out-buffer, waking the writer if it was empty
    /// (nothing, if the connection is closing).
    fn send(&self, cmd: &Cmd<'_>) {
        self.out.fill(|buf| frame::put(buf, cmd));
    }

    /// A PDU read: a response to its waiting request, an enquire_link
    /// answered, anything else to the owner.
    fn take(&self, frame: Frame) {
        let seq = frame.sequence_number();
        if frame.id().is_response() {
            let waiter = self
                .pending
                .lock()
                .expect("pending lock")
                .as_mut()
                .and_then(|p| p.remove(&seq));
            match waiter {
                Some(w) => drop(w.tx.send(Ok(frame))),
                None => {
                    tracing::debug!(seq, id = ?frame.id(), "response to no waiting request (it timed out)")
                }
            }
        } else if frame.id() == CommandId::EnquireLink {
            self.send(&Cmd::new(CommandStatus::EsmeRok, seq, Pdu::EnquireLinkResp));
        } else {
            let _ = self.events.send(Event::Incoming(frame));
        }
    }
}

/// A handle to send requests on one connection; cheap to clone.
#[derive(Clone)]
pub(super) struct Session {
    inner: Arc<Inner>,
}

/// The session's owner: dropping it closes the connection.
pub(super) struct Owner {
    pub(super) session: Session,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.session.inner.shut("closed by the node".into());
    }
}

impl Session {
    /// Starts serving `stream`: a reader, a writer and (with a non-zero
    /// interval) an enquire_link task. Must run inside a runtime.
    pub(super) fn open<S>(
        stream: S,
        enquire_link: Duration,
        response_timeout: Duration,
    ) -> (Owner, mpsc::UnboundedReceiver<Event>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut read, mut write) = tokio::io::split(stream);
        let (events, events_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            out: OutBuf::default(),
            pending: Mutex::new(Some(FxHashMap::default())),
            closed: Mutex::new(None),
            events,
            seq: AtomicU32::new(1),
            tasks: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
        });
        let writer = {
            let inner = inner.clone();
            tokio::spawn(async move {
                if let Err(e) = inner.out.write_to(&mut write).await {
                    inner.shut(format!("write: {e}"));
                }
            })
        };
        let reader = {
            let inner = inner.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::with_capacity(READ_ROOM);
                loop {
                    loop {
                        match Frame::cut(&mut buf) {
                            Ok(Some(frame)) => inner.take(frame),
                            Ok(None) => break,
                            Err(e) => {
                                return inner.shut(format!("unreadable PDU from the SMSC: {e}"));
                            }
                        }
                    }
                    if buf.capacity() - buf.len() < READ_ROOM / 4 {
                        buf.reserve(READ_ROOM);
                    }
                    match read.read_buf(&mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => return inner.shut(format!("read from the SMSC: {e}")),
                    }
                }
                inner.shut("the SMSC closed the connection".into());
            })
        };
        let session = Session { inner };
        *session.inner.writer.lock().expect("writer lock") = Some(writer.abort_handle());
        let sweeper = {
            let inner = session.inner.clone();
            let every = sweep_every(response_timeout);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    let expired: Vec<Waiter> =
                        match inner.pending.lock().expect("pending lock").as_mut() {
                            Some(p) => p
                                .extract_if(|_, w| w.deadline <= now)
                                .map(|(_, w)| w)
                                .collect(),
                            None => return,
                        };
                    for w in expired {
                        let _ = w.tx.send(Err(WireError::Timeout(w.timeout)));
                    }
                }
            })
        };
        let mut tasks = vec![reader.abort_handle(), sweeper.abort_handle()];
        if !enquire_link.is_zero() {
            let s = session.clone();
            let keepalive = tokio::spawn(async move {
                let enquire = Prepared::new(Pdu::EnquireLink);
                loop {
                    tokio::time::sleep(enquire_link).await;
                    match s.request(&enquire, response_timeout).await {
                        Ok(_) | Err(WireError::Refused(_)) => {}
                        Err(e) => return s.inner.shut(format!("enquire_link: {e}")),
                    }
                }
            });
            tasks.push(keepalive.abort_handle());
        }
        session
            .inner
            .tasks
            .lock()
            .expect("tasks lock")
            .extend(tasks);
        // A task that ended before its handle was stored has shut already.
        if session.inner.closed.lock().expect("closed lock").is_some() {
            for t in session.inner.tasks.lock().expect("tasks lock").drain(..) {
                t.abort();
            }
            if let Some(w) = session.inner.writer.lock().expect("writer lock").take() {
                w.abort();
            }
        }
        (Owner { session }, events_rx)
    }

    /// The next sequence number (1 to 0x7FFFFFFF, then round again).
    fn next_seq(&self) -> u32 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed) % 0x7FFF_FFFF + 1
    }

    /// Sends a request and waits up to `timeout` (plus at most one sweep) for
    /// its response, which is returned only if its command_status is ESME_ROK.
    pub(super) async fn request(
        &self,
        pdu: &Prepared,
        timeout: Duration,
    ) -> Result<Frame, WireError> {
        let seq = self.next_seq();
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            tx,
            deadline: Instant::now() + timeout,
            timeout,
        };
        match self.inner.pending.lock().expect("pending lock").as_mut() {
            Some(p) => p.insert(seq, waiter),
            None => return Err(WireError::NotSent(self.inner.why_closed())),
        };
        if self.inner.out.fill(|buf| pdu.put(buf, seq)).is_none() {
            if let Some(p) = self.inner.pending.lock().expect("pending lock").as_mut() {
                p.remove(&seq);
            }
            return Err(WireError::NotSent(self.inner.why_closed()));
        }
        // Answered by the reader, given up by the sweep, or dropped when the connection shuts.
        match rx.await {
            Ok(Ok(resp)) if resp.status() == CommandStatus::EsmeRok => Ok(resp),
            Ok(Ok(resp)) => Err(WireError::Refused(u32::from(resp.status()))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WireError::Lost(self.inner.why_closed())),
        }
    }

    /// Answers the SMSC's request `seq`.
    pub(super) fn respond<'a>(&self, seq: u32, status: CommandStatus, pdu: impl Into<Pdu<'a>>) {
        self.inner.send(&Cmd::new(status, seq, pdu));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session over an in-memory pipe whose far end reads and never answers.
    fn silent_peer() -> (Owner, tokio::task::JoinHandle<()>) {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let drain = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while tokio::io::AsyncReadExt::read(&mut theirs, &mut buf)
                .await
                .is_ok_and(|n| n > 0)
            {}
        });
        let (owner, _events) = Session::open(ours, Duration::ZERO, Duration::from_millis(40));
        (owner, drain)
    }

    fn waiting(s: &Session) -> usize {
        s.inner
            .pending
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |p| p.len())
    }

    #[tokio::test]
    async fn an_unanswered_request_times_out_by_the_sweep_and_leaves_nothing_waiting() {
        let (owner, _drain) = silent_peer();
        let s = owner.session.clone();
        let t = Instant::now();
        let r = s
            .request(&Prepared::new(Pdu::EnquireLink), Duration::from_millis(40))
            .await;
        let took = t.elapsed();
        assert!(
            matches!(r, Err(WireError::Timeout(t)) if t == Duration::from_millis(40)),
            "{r:?}"
        );
        // Given up between the timeout and the timeout plus one sweep (and a scheduling margin).
        assert!(took >= Duration::from_millis(40), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(waiting(&s), 0);
    }

    #[tokio::test]
    async fn a_request_abandoned_by_its_caller_is_swept_too() {
        let (owner, _drain) = silent_peer();
        let s = owner.session.clone();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(1),
            s.request(&Prepared::new(Pdu::EnquireLink), Duration::from_millis(40)),
        )
        .await;
        assert!(abandoned.is_err(), "the caller gave up first");
        assert_eq!(waiting(&s), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while waiting(&s) > 0 {
            assert!(Instant::now() < deadline, "still waiting after 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn requests_after_the_close_are_not_sent_and_those_waiting_are_lost() {
        let (owner, _drain) = silent_peer();
        let s = owner.session.clone();
        let waiting_one = tokio::spawn({
            let s = s.clone();
            async move {
                s.request(&Prepared::new(Pdu::EnquireLink), Duration::from_secs(30))
                    .await
            }
        });
        while waiting(&s) == 0 {
            tokio::task::yield_now().await;
        }
        drop(owner);
        let r = waiting_one.await.unwrap();
        assert!(matches!(r, Err(WireError::Lost(_))), "{r:?}");
        let r = s
            .request(&Prepared::new(Pdu::EnquireLink), Duration::from_secs(30))
            .await;
        assert!(matches!(r, Err(WireError::NotSent(_))), "{r:?}");
    }
}
