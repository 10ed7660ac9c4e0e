//! The smsmesh monitor: follows `WatchProgress` and shows each batch's
//! progress, as live bars on a terminal or as plain lines elsewhere.
//!
//! [`watch`] does the following and returns the last status of the watched
//! batch; [`Display`] chooses and does the rendering. The other commands:
//! [`export`], a batch's messages as CSV, and [`submit`], a CSV of numbers
//! uploaded as one batch.
#![forbid(unsafe_code)]

pub mod export;
pub mod submit;

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
    let mut client = target.connect().await?;
    let request = target.request(pb::WatchProgressRequest {
        batch_id: batch.unwrap_or_default().to_string(),
        interval_ms: interval.as_millis() as u32,
    })?;
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
    // One batch's stream ends when the batch does (and waits for no receipt);
    // any other end is the coordinator's.
    match (batch, &last) {
        (Some(_), Some(b)) if is_ended(b) => Ok(last),
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

    /// A client connected to the coordinator, or an error that says why not.
    /// Of several addresses (a leader and its standbys, comma-separated), the
    /// one whose health says it serves: the leader.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let addresses = smsmesh::client::addresses(&self.url);
        let mut why = Vec::new();
        for coordinator in &addresses {
            let channel = match smsmesh::client::endpoint(coordinator, self.tls.as_ref())
                .map_err(|e| anyhow::anyhow!(e))?
                .connect()
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    why.push(format!(
                        "cannot connect to {coordinator}: {}",
                        smsmesh::client::describe(&e)
                    ));
                    continue;
                }
            };
            if addresses.len() > 1
                && !smsmesh::client::leads(channel.clone(), std::time::Duration::from_secs(5)).await
            {
                why.push(format!("{coordinator} is a standby"));
                continue;
            }
            return Ok(pb::coordinator_client::CoordinatorClient::new(channel));
        }
        anyhow::bail!("{}", why.join("; "))
    }

    /// A request carrying the token, if any, and the caller's trace.
    pub fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            smsmesh::client::bearer(&mut request, token).map_err(|e| anyhow::anyhow!(e))?;
        }
        // The coordinator's side joins the caller's trace, if any.
        smsmesh::telemetry::inject_into_metadata(&tracing::Span::current(), request.metadata_mut());
        Ok(request)
    }
}

/// A connected coordinator client.
pub type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

/// Where progress goes: bars on a terminal, lines otherwise.
pub struct Display {
    plain: bool,
    multi: MultiProgress,
    bars: HashMap<String, (ProgressBar, ProgressBar)>,
    /// The classes line, once there was one to show.
    classes: Option<ProgressBar>,
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
            classes: None,
        }
    }

    /// Shows one update.
    pub fn show(&mut self, update: &pb::ProgressUpdate) {
        if let Some(classes) = classes_line(update) {
            if self.plain {
                println!("{classes}");
            } else {
                let multi = &self.multi;
                let bar = self.classes.get_or_insert_with(|| {
                    let bar = multi.insert(0, ProgressBar::new(0));
                    bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
                    bar
                });
                bar.set_message(classes);
            }
        }
        for b in &update.batches {
            if self.plain {
                println!("{}", line(b));
                if !b.nodes.is_empty() {
                    println!("  {}", nodes_line(b));
                }
                continue;
            }
            let (bar, nodes) = self.bars.entry(b.batch_id.clone()).or_insert_with(|| {
                // The whole line is our message, made from one status: the bar,
                // the share and the counts cannot come from different updates.
                let bar = self.multi.add(ProgressBar::new(0));
                bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
                let nodes = self.multi.add(ProgressBar::new(0));
                nodes.set_style(ProgressStyle::with_template("  {msg}").expect("valid template"));
                (bar, nodes)
            });
            bar.set_message(bar_line(b));
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

/// Rates by class of the running batches, and the paused classes: only when
/// more than one class runs or one is paused (else every line says it all).
pub fn classes_line(update: &pb::ProgressUpdate) -> Option<String> {
    use smsmesh::priority::{CLASSES, Class};
    let mut rate = [None::<f64>; CLASSES];
    for b in &update.batches {
        if b.state == BatchState::Running as i32
            && let Ok(c) = Class::from_proto(b.priority, "priority")
        {
            *rate[c.index()].get_or_insert(0.0) += b.rate_per_sec;
        }
    }
    let paused: Vec<&str> = update
        .paused
        .iter()
        .filter_map(|&p| Class::from_proto(p, "paused").ok())
        .map(Class::name)
        .collect();
    let running = rate.iter().filter(|r| r.is_some()).count();
    if running < 2 && paused.is_empty() {
        return None;
    }
    let mut s = String::from("classes:");
    for c in Class::ALL {
        if let Some(r) = rate[c.index()] {
            let _ = write!(s, " {c} {}/s", human(r));
        }
    }
    if !paused.is_empty() {
        let _ = write!(s, " | PAUSED: {}", paused.join(", "));
    }
    Some(s)
}

/// Whether nothing more will change: the batch ended and waits for no receipt.
fn is_ended(b: &pb::BatchStatus) -> bool {
    (b.state == BatchState::Completed as i32 || b.state == BatchState::Cancelled as i32)
        && b.awaiting_receipt == 0
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
        "{} | sent {} failed {} pending {} in flight {} | {}/s | send {:.1}ms",
        state_name(b.state),
        b.sent,
        b.failed,
        b.pending,
        b.in_flight,
        human(b.rate_per_sec),
        lat.mean_ms,
    );
    // The class, unless it is the default one; and whether it is paused.
    match smsmesh::priority::Class::from_proto(b.priority, "priority") {
        Ok(smsmesh::priority::Class::Normal) | Err(_) => {}
        Ok(class) => {
            let _ = write!(s, " | {class}");
        }
    }
    if b.class_paused {
        s.push_str(" | PAUSED");
    }
    if b.cancelled > 0 {
        let _ = write!(s, " | cancelled {}", b.cancelled);
    }
    if b.delivered + b.undelivered + b.awaiting_receipt + b.delivery_unknown > 0 {
        let _ = write!(
            s,
            " | delivered {} undelivered {} awaiting receipt {}",
            b.delivered, b.undelivered, b.awaiting_receipt
        );
        if b.delivery_unknown > 0 {
            let _ = write!(s, " unknown {}", b.delivery_unknown);
        }
    }
    if b.eta_seconds > 0.0 {
        let eta = Duration::from_secs(b.eta_seconds.ceil() as u64);
        let _ = write!(s, " | ETA {}", humantime::format_duration(eta));
    }
    s
}

/// Messages with a final outcome (sent or failed; cancelled ones went
/// nowhere), in tenths of a percent of the batch, rounded down: 1000 only when
/// all are done.
fn permille(b: &pb::BatchStatus) -> u64 {
    ((b.sent + b.failed) * 1000)
        .checked_div(b.total)
        .map_or(1000, |p| p.min(1000))
}

/// One line about a batch, for logs and pipes.
pub fn line(b: &pb::BatchStatus) -> String {
    format!(
        "{} {:5.1}% {}/{} {}",
        b.batch_id,
        permille(b) as f64 / 10.0,
        b.sent + b.failed,
        b.total,
        summary(b)
    )
}

/// Width of the bar, in characters.
const BAR_WIDTH: u64 = 30;

/// A batch's line on a terminal: its bar, then what [`line`] says. The bar's
/// fill is the same share as the figure beside it.
pub fn bar_line(b: &pb::BatchStatus) -> String {
    let filled = (permille(b) * BAR_WIDTH / 1000) as usize;
    let mut bar = "=".repeat(filled);
    if filled < BAR_WIDTH as usize {
        bar.push('>');
        bar.push_str(&" ".repeat(BAR_WIDTH as usize - filled - 1));
    }
    format!(
        "{} [{bar}] {:5.1}% {}/{} {}",
        b.batch_id,
        permille(b) as f64 / 10.0,
        b.sent + b.failed,
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

    #[test]
    fn the_classes_line_shows_rates_by_class_and_what_is_paused() {
        let running = |priority: pb::Priority, rate: f64| pb::BatchStatus {
            state: BatchState::Running as i32,
            priority: priority as i32,
            rate_per_sec: rate,
            ..Default::default()
        };
        let mut u = pb::ProgressUpdate {
            batches: vec![running(pb::Priority::Bulk, 40_000.0)],
            ..Default::default()
        };
        assert_eq!(classes_line(&u), None, "one class: the batch lines say it");
        u.batches.push(running(pb::Priority::Emergency, 12_000.0));
        u.batches.push(running(pb::Priority::Bulk, 2_000.0));
        u.paused = vec![pb::Priority::Normal as i32];
        assert_eq!(
            classes_line(&u).unwrap(),
            format!(
                "classes: emergency {}/s bulk {}/s | PAUSED: normal",
                human(12_000.0),
                human(42_000.0)
            )
        );
    }

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

    #[test]
    fn the_bar_fills_as_far_as_the_share_beside_it() {
        for (sent, total) in [
            (0, 1000),
            (333, 1000),
            (880, 1000),
            (999, 1000),
            (1000, 1000),
        ] {
            let b = status(sent, 0, total, BatchState::Running);
            let text = bar_line(&b);
            let inside = &text[text.find('[').unwrap() + 1..text.find(']').unwrap()];
            assert_eq!(inside.len(), BAR_WIDTH as usize, "{text}");
            let filled = inside.chars().filter(|c| *c == '=').count() as u64;
            assert_eq!(filled, sent * BAR_WIDTH / total, "{text}");
            let share = format!(
                "{:5.1}% {sent}/{total}",
                (sent * 1000 / total) as f64 / 10.0
            );
            assert!(text.contains(&share), "{text} lacks {share}");
        }
    }
}
