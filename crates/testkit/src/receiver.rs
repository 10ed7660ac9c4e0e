//! A callback receiver for tests and benchmarks: a real HTTP server on
//! 127.0.0.1 that takes the coordinator's event POSTs, checks each one's
//! signature with its own HMAC code (not the coordinator's), and records what
//! it got. It can answer 503 (`set_failing`) or stop listening altogether
//! and come back on the same port (`stop`, `restart`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use tokio::sync::oneshot;

/// What the receiver has seen.
#[derive(Default)]
pub struct Seen {
    /// Event ids, each once.
    pub ids: HashSet<String>,
    /// (type, message id or batch id) of each distinct event.
    pub events: HashSet<(String, String)>,
    /// Events by type, each event id counted once.
    pub by_type: HashMap<String, u64>,
    /// Events received again (an id seen before).
    pub duplicates: u64,
    /// Message id → (number, client reference) of events that carry a reference.
    pub refs: HashMap<String, (String, String)>,
    /// The first few events, whole.
    pub samples: Vec<serde_json::Value>,
}

struct State {
    secret: Vec<u8>,
    failing: AtomicBool,
    requests: AtomicU64,
    bad: AtomicU64,
    seen: Mutex<Seen>,
}

/// The receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl Receiver {
    /// Starts one on 127.0.0.1, checking signatures made with `secret`.
    pub async fn start(secret: &[u8]) -> anyhow::Result<Receiver> {
        let state = Arc::new(State {
            secret: secret.to_vec(),
            failing: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            seen: Mutex::default(),
        });
        // A port below the ephemeral range, so that `restart` can bind it again.
        let listener = crate::ports::restartable_listener()?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let mut r = Receiver {
            addr,
            state,
            stop: None,
        };
        r.serve(listener);
        Ok(r)
    }

    /// Its URL for events.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.take(&headers, &body) }
            }),
        );
        let (tx, rx) = oneshot::channel::<()>();
        self.stop = Some(tx);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
    }

    /// Stops listening: connections are refused until [`restart`](Self::restart).
    pub fn stop(&mut self) {
        self.stop.take();
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// Answers 503 to every request while set.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Relaxed);
    }

    /// Requests taken (answered 2xx).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Relaxed)
    }

    /// Requests refused for a bad or missing signature.
    pub fn bad_signatures(&self) -> u64 {
        self.state.bad.load(Relaxed)
    }

    /// Distinct events taken.
    pub fn distinct(&self) -> usize {
        self.state.seen.lock().expect("lock").ids.len()
    }

    /// Runs `f` over what was seen.
    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.state.seen.lock().expect("lock"))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.take();
    }
}

impl State {
    fn take(&self, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        if self.failing.load(Relaxed) {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(ts), Some(sig)) = (header("x-smsmesh-timestamp"), header("x-smsmesh-signature"))
        else {
            self.bad.fetch_add(1, Relaxed);
            return StatusCode::UNAUTHORIZED;
        };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.secret).expect("any key");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = sig.strip_prefix("sha256=").and_then(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
        });
        if expected.is_none_or(|e| mac.verify_slice(&e).is_err()) {
            self.bad.fetch_add(1, Relaxed);
            return StatusCode::UNAUTHORIZED;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return StatusCode::BAD_REQUEST;
        };
        let Some(events) = v["events"].as_array() else {
            return StatusCode::BAD_REQUEST;
        };
        let mut seen = self.seen.lock().expect("lock");
        for e in events {
            let id = e["id"].as_str().unwrap_or_default().to_string();
            let kind = e["type"].as_str().unwrap_or_default().to_string();
            if !seen.ids.insert(id) {
                seen.duplicates += 1;
                continue;
            }
            let subject = e["message_id"]
                .as_str()
                .or_else(|| e["batch_id"].as_str())
                .unwrap_or_default()
                .to_string();
            if let Some(r) = e["client_ref"].as_str() {
                let to = e["to"].as_str().unwrap_or_default().to_string();
                seen.refs.insert(subject.clone(), (to, r.to_string()));
            }
            *seen.by_type.entry(kind.clone()).or_default() += 1;
            seen.events.insert((kind, subject));
            if seen.samples.len() < 64 {
                seen.samples.push(e.clone());
            }
        }
        self.requests.fetch_add(1, Relaxed);
        StatusCode::OK
    }
}
