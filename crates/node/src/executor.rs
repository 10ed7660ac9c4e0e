//! The executor: the task that runs gateway sends, up to the node's
//! concurrency at once, and reports finished jobs in bunches. It outlives any
//! one stream, so a send in progress when the coordinator goes away still
//! finishes and its result is handed in later.

use std::cmp::{Ordering as Order, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use smsmesh::pb;
use tokio::sync::mpsc;

use crate::gateway::{Delayed, Failure, FailureClass, Outcome};
use crate::state::Done;
use crate::{Gateway, Sending, Stats};

/// Most results the executor reports in one bunch.
const MAX_BUNCH: usize = 4096;

pin_project_lite::pin_project! {
    /// A send in progress: resolves to its finished job. Kept in the
    /// executor's set as it is, not boxed again around the gateway's future.
    struct Running {
        #[pin]
        send: Bounded,
        started: Instant,
        epoch: u64,
        id: (u64, u32, u32),
        span: Option<tracing::Span>,
    }
}

pin_project_lite::pin_project! {
    /// A gateway's send, given up at the send timeout when there is one.
    #[project = BoundedProj]
    enum Bounded {
        Timed { #[pin] send: tokio::time::Timeout<BoxFuture<'static, Outcome>>, after: Duration },
        Untimed { send: BoxFuture<'static, Outcome> },
    }
}

impl Future for Running {
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let this = self.project();
        let outcome = match this.send.project() {
            BoundedProj::Timed { send, after } => match send.poll(cx) {
                Poll::Ready(r) => r.unwrap_or_else(|_| Err(timed_out(*after))),
                Poll::Pending => return Poll::Pending,
            },
            BoundedProj::Untimed { send } => std::task::ready!(send.as_mut().poll(cx)),
        };
        let latency_us = this.started.elapsed().as_micros() as u64;
        Poll::Ready((
            *this.epoch,
            job_result(*this.id, outcome, latency_us, this.span.take()),
        ))
    }
}

/// A send whose outcome is known and due at `due`: waits in the executor's
/// timer queue, with no task or timer of its own.
struct Timed {
    due: Instant,
    /// Order of starting, to break ties between equal `due`s.
    seq: u64,
    started: Instant,
    epoch: u64,
    id: (u64, u32, u32),
    delayed: Delayed,
    span: Option<tracing::Span>,
}

impl Timed {
    /// Its finished job, with the time it really took.
    fn finish(self, now: Instant) -> Done {
        let latency_us = now.saturating_duration_since(self.started).as_micros() as u64;
        let outcome = self.delayed.finish();
        (
            self.epoch,
            job_result(self.id, outcome, latency_us, self.span),
        )
    }
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Order> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Order {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// What starting a send gave.
enum Started {
    /// Its result, known at once.
    Done(Done),
    /// Its outcome, due later.
    Timed(Timed),
    /// The send, in progress.
    Running(Running),
}

/// Moves every timed send that is due by `now` into `bunch`.
fn take_due(timed: &mut BinaryHeap<Reverse<Timed>>, bunch: &mut Vec<Done>, now: Instant) {
    while bunch.len() < MAX_BUNCH && timed.peek().is_some_and(|t| t.0.due <= now) {
        let Reverse(t) = timed.pop().expect("peeked");
        bunch.push(t.finish(now));
    }
}

/// The executor: runs up to `limit` gateway sends at once (the rest wait in
/// order), and reports results in bunches.
pub(crate) async fn execute(
    gateway: Arc<dyn Gateway>,
    limit: usize,
    send_timeout: Option<Duration>,
    mut jobs: mpsc::UnboundedReceiver<(u64, Vec<pb::Job>)>,
    results: mpsc::UnboundedSender<Vec<Done>>,
    stats: Arc<Stats>,
) {
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    let mut timed: BinaryHeap<Reverse<Timed>> = BinaryHeap::new();
    let mut waiting = Waiting::default();
    let mut bunch: Vec<Done> = Vec::new();
    let mut seq = 0u64;
    // Starts waiting jobs while a send slot is free. A send whose outcome is known at
    // once never takes a slot: its result goes straight into the bunch.
    let mut refill = |running: &mut FuturesUnordered<Running>,
                      timed: &mut BinaryHeap<Reverse<Timed>>,
                      waiting: &mut Waiting,
                      bunch: &mut Vec<Done>| {
        let mut now = None;
        while running.len() + timed.len() < limit && bunch.len() < MAX_BUNCH {
            let Some((epoch, job)) = waiting.pop() else {
                break;
            };
            let now = *now.get_or_insert_with(Instant::now);
            seq += 1;
            match start(&*gateway, epoch, job, send_timeout, now, seq) {
                Started::Done(done) => bunch.push(done),
                Started::Timed(t) => timed.push(Reverse(t)),
                Started::Running(send) => running.push(send),
            }
        }
        stats
            .max_sending
            .fetch_max((running.len() + timed.len()) as u64, Ordering::Relaxed);
    };
    loop {
        // Jobs that arrived go into their class's queue before a slot is
        // filled, so an urgent one starts ahead of those already waiting.
        waiting.take_arrived(&mut jobs);
        refill(&mut running, &mut timed, &mut waiting, &mut bunch);
        if bunch.is_empty() {
            let next_due = timed.peek().map(|t| t.0.due);
            tokio::select! {
                got = jobs.recv() => {
                    let Some((epoch, batch)) = got else { break };
                    for j in batch {
                        waiting.push(epoch, j);
                    }
                    continue;
                }
                Some(first) = running.next(), if !running.is_empty() => bunch.push(first),
                () = sleep_until(next_due), if next_due.is_some() => {
                    take_due(&mut timed, &mut bunch, Instant::now());
                }
            }
        }
        // Refill freed slots at once, then collect what else is done.
        while bunch.len() < MAX_BUNCH {
            waiting.take_arrived(&mut jobs);
            refill(&mut running, &mut timed, &mut waiting, &mut bunch);
            let before = bunch.len();
            take_due(&mut timed, &mut bunch, Instant::now());
            if let Some(Some(r)) = futures::FutureExt::now_or_never(running.next()) {
                bunch.push(r);
            } else if bunch.len() == before {
                break;
            }
        }
        let sent = bunch
            .iter()
            .filter(|(_, r)| r.outcome == pb::Outcome::Sent as i32)
            .count() as u64;
        stats.sent.fetch_add(sent, Ordering::Relaxed);
        stats
            .failed
            .fetch_add(bunch.len() as u64 - sent, Ordering::Relaxed);
        if let Ok(mut h) = stats.latency.0.lock() {
            for (_, r) in &bunch {
                h.observe(r.latency_us as f64 / 1e6);
            }
        }
        if results.send(std::mem::take(&mut bunch)).is_err() {
            break;
        }
    }
}

/// Jobs waiting for a send slot: one queue per class, each in arrival order;
/// the most urgent class's first job starts first.
#[derive(Default)]
struct Waiting([VecDeque<(u64, pb::Job)>; smsmesh::priority::CLASSES]);

impl Waiting {
    fn push(&mut self, epoch: u64, job: pb::Job) {
        let class = smsmesh::priority::Class::from_proto(job.priority as i32, "priority")
            .unwrap_or_default();
        self.0[class.index()].push_back((epoch, job));
    }

    /// Queues the jobs that have arrived (without waiting for more).
    fn take_arrived(&mut self, jobs: &mut mpsc::UnboundedReceiver<(u64, Vec<pb::Job>)>) {
        while let Ok((epoch, batch)) = jobs.try_recv() {
            for j in batch {
                self.push(epoch, j);
            }
        }
    }

    fn pop(&mut self) -> Option<(u64, pb::Job)> {
        self.0.iter_mut().find_map(VecDeque::pop_front)
    }
}

/// Sleeps until `due` (forever when `None`; the caller does not poll it then).
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => futures::future::pending().await,
    }
}

/// Starts sending `job` at `now`: its result when the gateway knew the
/// outcome at once (latency 0), the outcome and when it is due, or the send
/// in progress. A send fails once `timeout` has passed.
fn start(
    gateway: &dyn Gateway,
    epoch: u64,
    job: pb::Job,
    timeout: Option<Duration>,
    now: Instant,
    seq: u64,
) -> Started {
    let sending = gateway.send(&job);
    // A traced message: its send is a span, a child of the batch's dispatch span.
    let span = (!job.traceparent.is_empty()).then(|| send_span(&job));
    let id = (job.batch, job.index, job.attempt);
    match sending {
        Sending::Done(outcome) => Started::Done((epoch, job_result(id, outcome, 0, span))),
        Sending::After(mut delayed) => {
            if let Some(t) = timeout
                && delayed.after > t
            {
                // As a send in progress would be: given up at the timeout, never finished.
                delayed = Delayed {
                    after: t,
                    outcome: Err(timed_out(t)),
                    finish: None,
                };
            }
            Started::Timed(Timed {
                due: now + delayed.after,
                seq,
                started: now,
                epoch,
                id,
                delayed,
                span,
            })
        }
        Sending::Pending(mut send) => {
            if let Some(span) = &span {
                send = Box::pin(tracing::Instrument::instrument(send, span.clone()));
            }
            let send = match timeout {
                Some(after) => Bounded::Timed {
                    send: tokio::time::timeout_at((now + after).into(), send),
                    after,
                },
                None => Bounded::Untimed { send },
            };
            Started::Running(Running {
                send,
                started: now,
                epoch,
                id,
                span,
            })
        }
    }
}

/// A send that took longer than `t`: given up, and it may have gone out.
fn timed_out(t: Duration) -> Failure {
    Failure::new(
        FailureClass::Unknown,
        format!("gateway send timed out after {t:?}; it may have been sent"),
    )
}

/// The result of attempt `(batch, index, attempt)`, also recorded on its span if traced.
fn job_result(
    (batch, index, attempt): (u64, u32, u32),
    outcome: Outcome,
    latency_us: u64,
    span: Option<tracing::Span>,
) -> pb::JobResult {
    let (outcome, error, provider_ids) = match outcome {
        Ok(a) => (pb::Outcome::Sent, String::new(), a.provider_ids),
        Err(f) => {
            let class = match f.class {
                FailureClass::Temporary => pb::Outcome::Failed,
                FailureClass::Permanent => pb::Outcome::Rejected,
                FailureClass::Throttled => pb::Outcome::Throttled,
                FailureClass::Unknown => pb::Outcome::Unknown,
            };
            (class, f.reason, Vec::new())
        }
    };
    if let Some(span) = span {
        span.record("outcome", outcome.as_str_name());
        if !error.is_empty() {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
        }
    }
    pb::JobResult {
        batch,
        index,
        attempt,
        outcome: outcome as i32,
        error,
        latency_us,
        provider_ids,
    }
}

/// The span of one traced send, continuing the trace its job carries.
fn send_span(job: &pb::Job) -> tracing::Span {
    let span = tracing::info_span!(
        "send",
        otel.kind = "client",
        message_id = %smsmesh::MessageId { batch: smsmesh::BatchId(job.batch), index: job.index },
        attempt = job.attempt,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    smsmesh::telemetry::set_remote_parent(&span, &job.traceparent);
    span
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::gateway::Delayed;

    /// A gateway whose sends are due after `delay` (or never finish, when
    /// `None`); counts the outcomes it was asked to finish.
    struct Test {
        delay: Option<Duration>,
        finished: Arc<AtomicU64>,
    }

    impl Gateway for Test {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn send(&self, _job: &pb::Job) -> Sending {
            let finished = self.finished.clone();
            let sending = match self.delay {
                Some(after) => Sending::After(Delayed {
                    after,
                    outcome: Ok(Default::default()),
                    finish: None,
                }),
                None => Sending::Pending(Box::pin(futures::future::pending())),
            };
            sending.map(move |r| {
                finished.fetch_add(1, Ordering::SeqCst);
                r
            })
        }
    }

    /// Runs `jobs` jobs through an executor of `limit` slots and returns their results.
    async fn run(gateway: Test, limit: usize, timeout: Option<Duration>, jobs: u32) -> Vec<Done> {
        let (job_tx, job_rx) = mpsc::unbounded_channel();
        let (result_tx, mut result_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(execute(
            Arc::new(gateway),
            limit,
            timeout,
            job_rx,
            result_tx,
            stats.clone(),
        ));
        let batch = (0..jobs)
            .map(|index| pb::Job {
                batch: 1,
                index,
                attempt: 1,
                ..Default::default()
            })
            .collect();
        job_tx.send((7, batch)).unwrap();
        let mut done = Vec::new();
        while done.len() < jobs as usize {
            let bunch = tokio::time::timeout(Duration::from_secs(20), result_rx.recv())
                .await
                .expect("results within 20 s")
                .expect("executor running");
            done.extend(bunch);
        }
        assert!(stats.max_sending.load(Ordering::SeqCst) <= limit as u64);
        drop(job_tx);
        task.await.unwrap();
        done
    }

    #[tokio::test]
    async fn a_delayed_outcome_comes_once_due_and_is_finished_only_then() {
        let finished = Arc::new(AtomicU64::new(0));
        let gateway = Test {
            delay: Some(Duration::from_millis(30)),
            finished: finished.clone(),
        };
        // 40 jobs through 10 slots: four rounds of 30 ms.
        let started = Instant::now();
        let done = run(gateway, 10, None, 40).await;
        assert!(started.elapsed() >= Duration::from_millis(120));
        assert_eq!(finished.load(Ordering::SeqCst), 40);
        let mut indexes: Vec<u32> = done.iter().map(|(_, r)| r.index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (0..40).collect::<Vec<_>>());
        for (epoch, r) in &done {
            assert_eq!((*epoch, r.outcome), (7, pb::Outcome::Sent as i32));
            assert!(r.latency_us >= 30_000, "{r:?}");
        }
    }

    #[tokio::test]
    async fn sends_longer_than_the_timeout_fail_and_are_never_finished() {
        for delay in [Some(Duration::from_secs(3600)), None] {
            let finished = Arc::new(AtomicU64::new(0));
            let gateway = Test {
                delay,
                finished: finished.clone(),
            };
            let done = run(gateway, 2, Some(Duration::from_millis(50)), 4).await;
            for (_, r) in &done {
                assert_eq!(r.outcome, pb::Outcome::Unknown as i32, "{delay:?}: {r:?}");
                assert!(r.error.contains("timed out after 50ms"), "{r:?}");
                assert!(r.latency_us >= 50_000, "{r:?}");
            }
            assert_eq!(finished.load(Ordering::SeqCst), 0, "{delay:?}");
        }
    }
}
