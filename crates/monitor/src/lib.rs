//! The smsmesh monitor: follows `WatchProgress` and shows each batch's
//! progress, as live bars on a terminal or as plain lines elsewhere.
//!
//! [`watch`] does the following and returns the last status of the watched
//! batch; [`Display`] chooses and does the rendering.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use smsmesh::pb::{self, BatchState};

/// Follows progress of `batch` (or of every batch when `None`) at
/// `interval`, rendering each update on `display`. Returns when the stream
/// ends, with the last status seen of the watched batch.
pub async fn watch(
    target: &Target,
    batch: Option<&str>,
    interval: Duration,
    display: &mut Display,
) -> anyhow::Result<Option<pb::BatchStatus>> {
    let coordinator = &target.url;
    let channel = smsmesh::client::endpoint(coordinator, target.tls.as_ref())
        .map_err(|e| anyhow::anyhow!(e))?
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to {coordinator}: {}",
                smsmesh::client::describe(&e)
            )
        })?;
    let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
    let mut request = tonic::Request::new(pb::WatchProgressRequest {
        batch_id: batch.unwrap_or_default().to_string(),
        interval_ms: interval.as_millis() as u32,
    });
    if let Some(token) = &target.token {
        smsmesh::client::bearer(&mut request, token).map_err(|e| anyhow::anyhow!(e))?;
    }
    // The coordinator's side of the stream joins the caller's trace, if any.
    smsmesh::telemetry::inject_into_metadata(&tracing::Span::current(), request.metadata_mut());
    let mut stream = client
        .watch_progress(request)
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "WatchProgress: {}: {}",
                s.code(),
                smsmesh::client::describe(&s)
            )
        })?
        .into_inner();
    let mut last = None;
    while let Some(update) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("progress stream broke: {}: {}", s.code(), s.message()))?
    {
        display.show(&update);
        if let Some(b) = update.batches.last() {
            last = Some(b.clone());
        }
    }
    display.finish();
    // One batch's stream ends when the batch does; any other end is the coordinator's.
    let ended = |b: &pb::BatchStatus| {
        b.state == pb::BatchState::Completed as i32 || b.state == pb::BatchState::Cancelled as i32
    };
    match (batch, &last) {
        (Some(_), Some(b)) if ended(b) => Ok(last),
        _ => Err(anyhow::anyhow!(
            "the coordinator at {coordinator} ended the progress stream (it stopped?)"
        )),
    }
}

/// The coordinator to watch and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// Its URL (`http://` or `https://`).
    pub url: String,
    /// TLS settings, for `https://`.
    pub tls: Option<smsmesh::client::ClientTls>,
    /// Bearer token, when the coordinator checks tokens.
    pub token: Option<String>,
}

impl Target {
    /// A plaintext coordinator without authentication.
    pub fn plain(url: &str) -> Self {
        Target {
            url: url.to_string(),
            ..Target::default()
        }
    }
}

/// Where progress goes: bars on a terminal, lines otherwise.
pub struct Display {
    plain: bool,
    multi: MultiProgress,
    bars: HashMap<String, (ProgressBar, ProgressBar)>,
}

impl Display {
    /// Bars if stderr is a terminal and `force_plain` is false; else plain lines on stdout.
    pub fn new(force_plain: bool) -> Self {
        let plain = force_plain || !std::io::stderr().is_terminal();
        let target = if plain {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(10)
        };
        Display {
            plain,
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
        }
    }

    /// Shows one update.
    pub fn show(&mut self, update: &pb::ProgressUpdate) {
        for b in &update.batches {
            if self.plain {
                println!("{}", line(b));
                if !b.nodes.is_empty() {
                    println!("  {}", nodes_line(b));
                }
                continue;
            }
            let (bar, nodes) = self.bars.entry(b.batch_id.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(b.total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30.cyan/blue}] {percent:>3}% {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(b.batch_id.clone());
                let nodes = self.multi.add(ProgressBar::new(0));
                nodes.set_style(ProgressStyle::with_template("  {msg}").expect("valid template"));
                (bar, nodes)
            });
            bar.set_length(b.total);
            bar.set_position(b.sent + b.failed);
            bar.set_message(summary(b));
            nodes.set_message(nodes_line(b));
            if is_ended(b) && !bar.is_finished() {
                bar.finish();
                nodes.finish();
            }
        }
    }

    /// Leaves the last bars on screen.
    pub fn finish(&mut self) {
        for (bar, nodes) in self.bars.values() {
            bar.finish();
            nodes.finish();
        }
    }
}

fn is_ended(b: &pb::BatchStatus) -> bool {
    b.state == BatchState::Completed as i32 || b.state == BatchState::Cancelled as i32
}

/// Name of a batch state for people.
pub fn state_name(state: i32) -> &'static str {
    match BatchState::try_from(state) {
        Ok(BatchState::Running) => "running",
        Ok(BatchState::Completed) => "completed",
        Ok(BatchState::Cancelling) => "cancelling",
        Ok(BatchState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// A count with a k/M suffix.
pub fn human(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn summary(b: &pb::BatchStatus) -> String {
    let lat = b.latency.unwrap_or_default();
    let mut s = format!(
        "{} | sent {} failed {} pending {} in flight {} | {}/s | lat {:.1}ms",
        state_name(b.state),
        b.sent,
        b.failed,
        b.pending,
        b.in_flight,
        human(b.rate_per_sec),
        lat.mean_ms,
    );
    if b.cancelled > 0 {
        let _ = write!(s, " | cancelled {}", b.cancelled);
    }
    if b.eta_seconds > 0.0 {
        let eta = Duration::from_secs(b.eta_seconds.ceil() as u64);
        let _ = write!(s, " | ETA {}", humantime::format_duration(eta));
    }
    s
}

/// One line about a batch, for logs and pipes. The share is of messages sent
/// or failed (cancelled ones went nowhere), rounded down: 100.0% only when all are.
pub fn line(b: &pb::BatchStatus) -> String {
    let done = b.sent + b.failed;
    let pct = (done * 1000)
        .checked_div(b.total)
        .map_or(100.0, |p| p as f64 / 10.0);
    format!(
        "{} {:5.1}% {}/{} {}",
        b.batch_id,
        pct,
        done,
        b.total,
        summary(b)
    )
}

/// Each node's share of a batch on one line.
pub fn nodes_line(b: &pb::BatchStatus) -> String {
    let mut s = format!("{} nodes:", b.nodes.len());
    for n in &b.nodes {
        let lat = n.latency.unwrap_or_default();
        let _ = write!(
            s,
            " {}{} {} ({:.1}ms)",
            n.node,
            if n.connected { "" } else { "(gone)" },
            human(n.sent as f64),
            lat.mean_ms
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(sent: u64, cancelled: u64, total: u64, state: BatchState) -> pb::BatchStatus {
        pb::BatchStatus {
            batch_id: "b".into(),
            state: state as i32,
            total,
            sent,
            cancelled,
            ..Default::default()
        }
    }

    #[test]
    fn the_share_counts_what_went_out_and_says_100_only_at_the_end() {
        let cancelled = status(220, 780, 1000, BatchState::Cancelled);
        assert!(
            line(&cancelled).starts_with("b  22.0% 220/1000 cancelled"),
            "{}",
            line(&cancelled)
        );
        let nearly = status(9999, 0, 10_000, BatchState::Running);
        assert!(line(&nearly).starts_with("b  99.9%"), "{}", line(&nearly));
        let all = status(10, 0, 10, BatchState::Completed);
        assert!(line(&all).starts_with("b 100.0%"), "{}", line(&all));
    }
}
