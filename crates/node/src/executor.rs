//! The executor: the task that runs gateway sends, up to the node's
//! concurrency at once, and reports finished jobs in bunches. It outlives any
//! one stream, so a send in progress when the coordinator goes away still
//! finishes and its result is handed in later.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use smsmesh::pb;
use tokio::sync::mpsc;

use crate::state::Done;
use crate::{Gateway, Sending, Stats};

/// Most results the executor reports in one bunch.
const MAX_BUNCH: usize = 4096;

/// A send in progress: resolves to its finished job.
type Running = futures::future::BoxFuture<'static, Done>;

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
    let mut waiting: VecDeque<(u64, pb::Job)> = VecDeque::new();
    let mut bunch: Vec<Done> = Vec::new();
    // Starts waiting jobs while a send slot is free. A send whose outcome is known at
    // once never takes a slot: its result goes straight into the bunch.
    let refill = |running: &mut FuturesUnordered<Running>,
                  waiting: &mut VecDeque<(u64, pb::Job)>,
                  bunch: &mut Vec<Done>| {
        while running.len() < limit && bunch.len() < MAX_BUNCH {
            let Some((epoch, job)) = waiting.pop_front() else {
                break;
            };
            match start(&*gateway, epoch, job, send_timeout) {
                Ok(done) => bunch.push(done),
                Err(send) => running.push(send),
            }
        }
        stats
            .max_sending
            .fetch_max(running.len() as u64, Ordering::Relaxed);
    };
    loop {
        refill(&mut running, &mut waiting, &mut bunch);
        if bunch.is_empty() {
            tokio::select! {
                got = jobs.recv() => {
                    let Some((epoch, batch)) = got else { break };
                    waiting.extend(batch.into_iter().map(|j| (epoch, j)));
                    continue;
                }
                Some(first) = running.next(), if !running.is_empty() => bunch.push(first),
            }
        }
        // Refill freed slots at once, then collect what else is done.
        while bunch.len() < MAX_BUNCH {
            refill(&mut running, &mut waiting, &mut bunch);
            match futures::FutureExt::now_or_never(running.next()) {
                Some(Some(r)) => bunch.push(r),
                _ => break,
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

/// Starts sending `job`: its result when the gateway knew the outcome at once
/// (latency 0), or the send in progress, which fails once `timeout` has passed.
fn start(
    gateway: &dyn Gateway,
    epoch: u64,
    job: pb::Job,
    timeout: Option<Duration>,
) -> Result<Done, Running> {
    let sending = gateway.send(&job);
    // A traced message: its send is a span, a child of the batch's dispatch span.
    let span = (!job.traceparent.is_empty()).then(|| send_span(&job));
    let id = (job.batch, job.index, job.attempt);
    match sending {
        Sending::Done(outcome) => Ok((epoch, job_result(id, outcome, 0, span))),
        Sending::Pending(mut send) => {
            if let Some(span) = &span {
                send = Box::pin(tracing::Instrument::instrument(send, span.clone()));
            }
            Err(Box::pin(async move {
                let start = Instant::now();
                let outcome = match timeout {
                    Some(t) => tokio::time::timeout(t, send)
                        .await
                        .unwrap_or_else(|_| Err(format!("gateway send timed out after {t:?}"))),
                    None => send.await,
                };
                let latency_us = start.elapsed().as_micros() as u64;
                (epoch, job_result(id, outcome, latency_us, span))
            }))
        }
    }
}

/// The result of attempt `(batch, index, attempt)`, also recorded on its span if traced.
fn job_result(
    (batch, index, attempt): (u64, u32, u32),
    outcome: Result<(), String>,
    latency_us: u64,
    span: Option<tracing::Span>,
) -> pb::JobResult {
    let (outcome, error) = match outcome {
        Ok(()) => (pb::Outcome::Sent, String::new()),
        Err(e) => (pb::Outcome::Failed, e),
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
