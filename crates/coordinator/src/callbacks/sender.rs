//! The callback sender: one task that takes stored rows of events, queues
//! them per destination (tenant and URL), and POSTs them in groups, a few
//! requests at a time per destination, retrying a failed request with
//! backoff until its events are [`CallbackConfig::max_age`] old.
//!
//! It keeps at most [`CallbackConfig::max_buffered_events`] events in
//! memory; beyond that it keeps only each row's number and reads the row
//! back from the store when its turn comes, so a dead receiver costs store
//! space, not memory. Rows delivered or given up are reported back, to be
//! removed from the store.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{CallbackConfig, wire};
use crate::store::{CallbackRow, StoreReader};

/// Rows of events as the reactor hands them over once stored: (number, row).
pub type Rows = Vec<(u64, Arc<CallbackRow>)>;

/// Labels of a metric with one label.
type Labels = Vec<(String, String)>;

/// What the sender counts, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct CallbackStats {
    /// Events delivered (`result="delivered"`) or given up (`result="given_up"`).
    events: Family<Labels, Counter>,
    /// Requests, by result (`ok`, `failed`).
    requests: Family<Labels, Counter>,
    /// Events waiting to be delivered.
    backlog: Gauge,
}

impl CallbackStats {
    /// Adds these metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "smsmesh_callback_events",
            "Callback events delivered to clients' URLs, or given up after --callback-max-age.",
            self.events.clone(),
        );
        registry.register(
            "smsmesh_callback_requests",
            "Callback requests, by result (ok: a 2xx answer).",
            self.requests.clone(),
        );
        registry.register(
            "smsmesh_callback_backlog_events",
            "Callback events stored and not delivered yet.",
            self.backlog.clone(),
        );
    }

    fn event(&self, result: &str, n: u64) {
        self.events
            .get_or_create(&vec![("result".into(), result.into())])
            .inc_by(n);
    }

    fn request(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.requests
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }

    /// Events delivered so far.
    pub fn delivered(&self) -> u64 {
        self.events
            .get_or_create(&vec![("result".into(), "delivered".into())])
            .get()
    }
}

/// A stored row as the sender keeps it: its events only while memory allows.
struct RowRef {
    seq: u64,
    events: usize,
    created_unix_ms: u64,
    body: Option<Arc<CallbackRow>>,
}

/// One destination: a URL, signed with one tenant's secret.
struct Dest {
    url: Arc<str>,
    tenant: String,
    queue: VecDeque<RowRef>,
    queued_events: usize,
    in_flight: usize,
    /// Failed requests in a row (0: healthy).
    failures: u32,
    /// No request before this (backoff after a failure).
    not_before: Instant,
    /// When the last request went out.
    last_send: Instant,
}

/// What a request came to.
struct Done {
    dest: (String, Arc<str>),
    rows: Vec<RowRef>,
    result: Result<(), Failure>,
}

/// A failed request: why, and how long the receiver asked us to wait.
struct Failure {
    why: String,
    retry_after: Option<Duration>,
}

/// Where delivered rows are reported.
pub type Report = Box<dyn Fn(Vec<u64>) -> futures::future::BoxFuture<'static, bool> + Send>;

/// The sender's state.
struct Sender {
    config: CallbackConfig,
    store: Option<StoreReader>,
    client: reqwest::Client,
    dests: HashMap<(String, Arc<str>), Dest>,
    buffered: usize,
    stats: CallbackStats,
    requests: JoinSet<Done>,
    done: Vec<u64>,
}

/// Runs the sender until `rows` closes. Rows numbered below `start` were
/// stored before this process took over: they are read from the store first.
pub async fn run(
    config: CallbackConfig,
    store: Option<StoreReader>,
    start: u64,
    mut rows: mpsc::UnboundedReceiver<Rows>,
    report: Report,
    stats: CallbackStats,
) {
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("smsmesh/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("an HTTP client with rustls");
    let mut s = Sender {
        config,
        store,
        client,
        dests: HashMap::new(),
        buffered: 0,
        stats,
        requests: JoinSet::new(),
        done: Vec::new(),
    };
    s.load_stored(start).await;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = rows.recv() => match got {
                Some(r) => s.add(r),
                None => break,
            },
            Some(done) = s.requests.join_next(), if !s.requests.is_empty() => {
                if let Ok(done) = done {
                    s.finished(done);
                }
            }
            _ = tick.tick() => {}
        }
        s.schedule();
        if !s.done.is_empty() && !report(std::mem::take(&mut s.done)).await {
            break; // the reactor stopped
        }
    }
}

impl Sender {
    /// Queues the rows stored before `start`, read from the store in pages.
    async fn load_stored(&mut self, start: u64) {
        let Some(reader) = self.store.clone() else {
            return;
        };
        let mut after = 0;
        loop {
            let reader = reader.clone();
            let page = tokio::task::spawn_blocking(move || {
                let store = reader.store()?;
                Some(store.callback_rows(after, start, 1000))
            })
            .await;
            let rows = match page {
                Ok(Some(Ok(rows))) => rows,
                Ok(Some(Err(e))) => {
                    tracing::error!(error = %e, "cannot read stored callback events; they are sent after the next restart");
                    return;
                }
                _ => return,
            };
            let Some(&(last, _)) = rows.last() else {
                return;
            };
            after = last;
            let n = rows.len();
            self.add(rows.into_iter().map(|(s, r)| (s, Arc::new(r))).collect());
            tracing::info!(rows = n, "stored callback events queued again");
        }
    }

    /// Queues new rows.
    fn add(&mut self, rows: Rows) {
        for (seq, row) in rows {
            let n = row.events.len();
            let key = (row.tenant.clone(), Arc::<str>::from(row.url.as_str()));
            let keep = self.store.is_none() || self.buffered + n <= self.config.max_buffered_events;
            if keep {
                self.buffered += n;
            }
            let now = Instant::now();
            let dest = self
                .dests
                .entry(key)
                .or_insert_with_key(|(tenant, url)| Dest {
                    url: url.clone(),
                    tenant: tenant.clone(),
                    queue: VecDeque::new(),
                    queued_events: 0,
                    in_flight: 0,
                    failures: 0,
                    not_before: now,
                    last_send: now,
                });
            dest.queued_events += n;
            self.stats.backlog.inc_by(n as i64);
            dest.queue.push_back(RowRef {
                seq,
                events: n,
                created_unix_ms: row.created_unix_ms,
                body: keep.then_some(row),
            });
        }
    }

    /// A request came back: its rows are done, or queued again after a backoff.
    fn finished(&mut self, done: Done) {
        let Some(dest) = self.dests.get_mut(&done.dest) else {
            return;
        };
        dest.in_flight -= 1;
        self.stats.request(done.result.is_ok());
        match done.result {
            Ok(()) => {
                dest.failures = 0;
                let n: usize = done.rows.iter().map(|r| r.events).sum();
                self.stats.event("delivered", n as u64);
                self.stats.backlog.dec_by(n as i64);
                for r in done.rows {
                    if r.body.is_some() {
                        self.buffered -= r.events;
                    }
                    self.done.push(r.seq);
                }
            }
            Err(f) => {
                dest.failures += 1;
                let backoff = crate::core::retry_delay(
                    Duration::from_millis(250),
                    Duration::from_secs(30),
                    dest.failures.min(255) as u8,
                );
                let wait = f
                    .retry_after
                    .map_or(backoff, |ra| ra.min(self.config.max_age));
                dest.not_before = Instant::now() + wait;
                if dest.failures == 1 || dest.failures.is_power_of_two() {
                    tracing::warn!(url = %dest.url, failures = dest.failures, retry_in = ?wait, error = %f.why, "callback request failed; its events are sent again");
                }
                dest.queued_events += done.rows.iter().map(|r| r.events).sum::<usize>();
                for r in done.rows.into_iter().rev() {
                    dest.queue.push_front(r);
                }
            }
        }
    }

    /// Starts the requests that are due.
    fn schedule(&mut self) {
        let now = Instant::now();
        let unix_now = crate::core::unix_ms();
        let max_age = self.config.max_age.as_millis() as u64;
        for (key, dest) in &mut self.dests {
            // Events past their age are given up, oldest first.
            while let Some(r) = dest.queue.front()
                && r.created_unix_ms + max_age < unix_now
            {
                let r = dest.queue.pop_front().expect("a front row");
                dest.queued_events -= r.events;
                if r.body.is_some() {
                    self.buffered -= r.events;
                }
                self.stats.event("given_up", r.events as u64);
                self.stats.backlog.dec_by(r.events as i64);
                tracing::warn!(url = %dest.url, events = r.events, "callback events not delivered within --callback-max-age: given up");
                self.done.push(r.seq);
            }
            // While failing, one request at a time probes the receiver.
            let limit = if dest.failures > 0 {
                1
            } else {
                self.config.concurrency.max(1)
            };
            while !dest.queue.is_empty() && dest.in_flight < limit && now >= dest.not_before {
                let full = dest.queued_events >= self.config.max_events;
                if !full && now < dest.last_send + self.config.interval {
                    break;
                }
                let mut rows = Vec::new();
                let mut events = 0;
                while let Some(r) = dest.queue.front()
                    && (rows.is_empty() || events + r.events <= self.config.max_events)
                {
                    events += r.events;
                    rows.push(dest.queue.pop_front().expect("a front row"));
                }
                dest.queued_events -= events;
                dest.in_flight += 1;
                dest.last_send = now;
                let secret = self
                    .config
                    .secret(&dest.tenant)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(&[][..]));
                let request = Request {
                    client: self.client.clone(),
                    url: dest.url.clone(),
                    secret,
                    store: self.store.clone(),
                };
                let key = key.clone();
                self.requests.spawn(async move {
                    let (rows, result) = request.send(rows).await;
                    Done {
                        dest: key,
                        rows,
                        result,
                    }
                });
            }
        }
    }
}

/// One request's means.
struct Request {
    client: reqwest::Client,
    url: Arc<str>,
    secret: Arc<[u8]>,
    store: Option<StoreReader>,
}

impl Request {
    /// POSTs the events of `rows` (read back from the store where they are
    /// not in memory); gives the rows back with the result.
    async fn send(self, rows: Vec<RowRef>) -> (Vec<RowRef>, Result<(), Failure>) {
        let failure = |why: String| Failure {
            why,
            retry_after: None,
        };
        let mut bodies: Vec<(u64, Arc<CallbackRow>)> = Vec::with_capacity(rows.len());
        let missing: Vec<u64> = rows
            .iter()
            .filter(|r| r.body.is_none())
            .map(|r| r.seq)
            .collect();
        let mut read: HashMap<u64, Arc<CallbackRow>> = HashMap::new();
        if !missing.is_empty() {
            let Some(reader) = self.store.clone() else {
                return (rows, Err(failure("no store to read events from".into())));
            };
            let got = tokio::task::spawn_blocking(move || {
                let store = reader.store().ok_or("the store is closed".to_string())?;
                let mut rows = Vec::with_capacity(missing.len());
                for seq in missing {
                    if let Some(row) = store.callback_row(seq).map_err(|e| e.to_string())? {
                        rows.push((seq, row));
                    }
                }
                Ok::<_, String>(rows)
            })
            .await;
            match got {
                Ok(Ok(stored)) => {
                    read.extend(stored.into_iter().map(|(s, r)| (s, Arc::new(r))));
                }
                Ok(Err(e)) => return (rows, Err(failure(e))),
                Err(e) => return (rows, Err(failure(e.to_string()))),
            }
        }
        for r in &rows {
            match r.body.clone().or_else(|| read.get(&r.seq).cloned()) {
                Some(b) => bodies.push((r.seq, b)),
                // Removed meanwhile (delivered before a restart): nothing to send.
                None => continue,
            }
        }
        let body = wire::body(bodies.iter().map(|(s, r)| (*s, &**r)));
        let timestamp = crate::core::unix_ms() / 1000;
        let signature = wire::signature(&self.secret, timestamp, &body);
        let sent = self
            .client
            .post(&*self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(wire::TIMESTAMP_HEADER, timestamp.to_string())
            .header(wire::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        let result = match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(Failure {
                why: format!("the receiver answered {}", r.status()),
                retry_after: r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
            }),
            Err(e) => Err(failure(format!("{e}"))),
        };
        (rows, result)
    }
}
