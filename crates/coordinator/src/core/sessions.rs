//! Node sessions: one per node stream, with the credit its node granted and
//! the jobs it holds; the names of every node seen; figures about nodes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use smsmesh::{Error, pb};

use super::SessionId;
use super::held::Held;

/// One node stream.
pub(super) struct Session {
    /// Its id.
    pub(super) id: SessionId,
    /// Index of the node's name in [`NodeNames`].
    pub(super) node: u16,
    pub(super) name: String,
    pub(super) instance_id: u64,
    /// Who delivers its sends (receipts are matched by provider and id).
    pub(super) provider: std::sync::Arc<str>,
    /// Most credit plus held jobs at once, as said in Hello.
    pub(super) concurrency: u32,
    /// Credit granted and not used by a job yet.
    pub(super) credit: u32,
    /// Jobs the node holds: (batch, index).
    pub(super) held: Held,
    /// Jobs taken back from the node when their lease ran out: a late result
    /// for one of them still counts.
    pub(super) expired: FxHashSet<(u64, u32)>,
    /// Whether a job went to it.
    /// The node said GoingAway: it gets no more jobs, and its credit is void.
    pub(super) going_away: bool,
    /// When the node last said anything.
    pub(super) last_seen: Instant,
}

impl Session {
    /// A session for a node that said `hello`.
    pub(super) fn new(id: SessionId, node: u16, hello: pb::Hello, now: Instant) -> Self {
        Session {
            id,
            node,
            name: hello.name,
            instance_id: hello.instance_id,
            provider: hello.provider.as_str().into(),
            concurrency: hello.concurrency,
            credit: 0,
            held: Held::new(now),
            expired: FxHashSet::default(),
            going_away: false,
            last_seen: now,
        }
    }

    /// The node grants `credits` more: refused if credit and held jobs would
    /// exceed its concurrency. A leaving node's credit is ignored.
    pub(super) fn grant(&mut self, credits: u32, stats: &mut NodeStats) -> Result<(), String> {
        if self.going_away {
            return Ok(());
        }
        let holds = self.held.len() + self.expired.len();
        let total = u64::from(self.credit) + u64::from(credits) + holds as u64;
        if total > u64::from(self.concurrency) {
            return Err(format!(
                "credit overflow: granting {credits} with {} credits unused and {} jobs held exceeds the concurrency of {} said in Hello",
                self.credit, holds, self.concurrency
            ));
        }
        self.credit += credits;
        stats.credits_granted += u64::from(credits);
        Ok(())
    }

    /// Takes back the jobs held one to two `lease`s: they are the node's no more.
    pub(super) fn expire(&mut self, now: Instant, lease: Duration) -> Vec<(u64, u32)> {
        let gone = self.held.expire(now, lease);
        self.expired.extend(gone.iter().copied());
        gone
    }

    /// Whether the node may be given jobs now.
    pub(super) fn wants_jobs(&self) -> bool {
        self.credit > 0 && !self.going_away
    }
}

/// Figures about nodes, counted as events happen.
#[derive(Debug)]
pub(super) struct NodeStats {
    /// Gateway latency of every attempt reported.
    pub(super) latency: smsmesh::metrics::Buckets,
    /// Per node index: (attempts sent, attempts failed).
    pub(super) attempts: Vec<(u64, u64)>,
    pub(super) credits_granted: u64,
    pub(super) joins: u64,
    pub(super) protocol_errors: u64,
    /// Jobs taken back from a node because their lease ran out.
    pub(super) jobs_expired: u64,
    /// Handed-in results refused: no such attempt was dispatched.
    pub(super) handoffs_refused: u64,
    /// Attempts whose outcome the gateway never learned (a retry may duplicate).
    pub(super) unknown: u64,
    /// Attempts the provider throttled, put back without using an attempt.
    pub(super) throttled: u64,
}

impl Default for NodeStats {
    fn default() -> Self {
        NodeStats {
            latency: smsmesh::metrics::Buckets::latency(),
            attempts: Vec::new(),
            credits_granted: 0,
            joins: 0,
            protocol_errors: 0,
            jobs_expired: 0,
            handoffs_refused: 0,
            unknown: 0,
            throttled: 0,
        }
    }
}

impl NodeStats {
    /// Node `node` reported an attempt.
    pub(super) fn attempt(&mut self, node: u16, sent: bool, latency_us: u64) {
        let n = node as usize;
        if self.attempts.len() <= n {
            self.attempts.resize(n + 1, (0, 0));
        }
        let a = &mut self.attempts[n];
        if sent {
            a.0 += 1;
        } else {
            a.1 += 1;
        }
        self.latency.observe(latency_us as f64 / 1e6);
    }
}

/// The name of every node by index: outcomes name their node by it. An index
/// is kept while a batch in memory names it (a job of the batch went to it)
/// or a node of that name is connected; then the name is forgotten and the
/// index used again. Batches leave memory only by retention, and their
/// outcomes leave the store with them.
#[derive(Default)]
pub(super) struct NodeNames {
    names: Vec<String>,
    index: FxHashMap<String, u16>,
    /// Per index: how many batches in memory name it.
    refs: Vec<u32>,
    /// Indexes released, to use again.
    free: Vec<u16>,
}

impl NodeNames {
    /// Restores the name of node `n` from the store.
    pub(super) fn restore(&mut self, n: u16, name: String) {
        let at = n as usize;
        if self.names.len() <= at {
            self.names.resize(at + 1, String::new());
        }
        if self.refs.len() <= at {
            self.refs.resize(at + 1, 0);
        }
        self.index.insert(name.clone(), n);
        self.names[at] = name;
    }

    /// The index of `name`, and whether it is new (then it must be stored).
    pub(super) fn index_of(&mut self, name: &str) -> Result<(u16, bool), Error> {
        if let Some(&n) = self.index.get(name) {
            return Ok((n, false));
        }
        let n = match self.free.pop() {
            Some(n) => {
                self.names[n as usize] = name.to_string();
                n
            }
            None => {
                let n = u16::try_from(self.names.len()).map_err(|_| {
                    Error::ResourceExhausted(
                        "too many distinct node names that did work (65,536)".into(),
                    )
                })?;
                self.names.push(name.to_string());
                self.refs.push(0);
                n
            }
        };
        self.index.insert(name.to_string(), n);
        Ok((n, true))
    }

    /// One more batch names index `n`.
    pub(super) fn named(&mut self, n: u16) {
        if let Some(r) = self.refs.get_mut(n as usize) {
            *r += 1;
        }
    }

    /// A batch that named index `n` left memory. Returns whether no batch
    /// names it any more.
    pub(super) fn unnamed(&mut self, n: u16) -> bool {
        match self.refs.get_mut(n as usize) {
            Some(r) => {
                *r = r.saturating_sub(1);
                *r == 0
            }
            None => false,
        }
    }

    /// Index `n` is not connected: if no batch names it, the name is
    /// forgotten and its index used again. Returns whether it was released.
    pub(super) fn release(&mut self, n: u16) -> bool {
        let at = n as usize;
        if self.refs.get(at) != Some(&0) || self.names[at].is_empty() {
            return false;
        }
        let name = std::mem::take(&mut self.names[at]);
        self.index.remove(&name);
        self.free.push(n);
        true
    }

    /// The name of node `n` ("" for an index never seen; the store checks
    /// every index it loads, so that does not happen).
    pub(super) fn name(&self, n: u16) -> &str {
        self.names.get(n as usize).map_or("", String::as_str)
    }

    /// Every name a batch in memory names, with its index.
    pub(super) fn all(&self) -> impl Iterator<Item = (usize, &String)> {
        self.names
            .iter()
            .enumerate()
            .filter(|(n, _)| self.refs[*n] > 0)
    }

    /// Every index known, named or not (after a restart: to release those
    /// no batch names).
    pub(super) fn indexes(&self) -> std::ops::Range<u16> {
        0..self.names.len() as u16
    }
}

/// Every open node stream.
#[derive(Default)]
pub(super) struct Sessions {
    map: BTreeMap<SessionId, Session>,
    /// Sum of the concurrency the connected nodes declared.
    capacity: u64,
    /// The last session id handed out.
    last_id: u64,
    /// Names of every node seen.
    pub(super) names: NodeNames,
    /// Figures about nodes.
    pub(super) stats: NodeStats,
    /// Set when a node joined or left: watchers should see it at once.
    pub(super) changed: bool,
}

impl Sessions {
    /// A new session id.
    pub(super) fn next_id(&mut self) -> SessionId {
        self.last_id += 1;
        SessionId(self.last_id)
    }

    /// Session `sid`.
    pub(super) fn get(&self, sid: SessionId) -> Option<&Session> {
        self.map.get(&sid)
    }

    /// Session `sid`, mutably.
    pub(super) fn get_mut(&mut self, sid: SessionId) -> Option<&mut Session> {
        self.map.get_mut(&sid)
    }

    /// Session `sid` and the node figures, both mutably.
    pub(super) fn split(&mut self, sid: SessionId) -> Option<(&mut Session, &mut NodeStats)> {
        let session = self.map.get_mut(&sid)?;
        Some((session, &mut self.stats))
    }

    /// The session of the node named `name`, if it is connected.
    pub(super) fn by_name(&self, name: &str) -> Option<&Session> {
        self.map.values().find(|s| s.name == name)
    }

    /// Adds a session whose Hello was accepted.
    pub(super) fn insert(&mut self, s: Session) {
        self.capacity += u64::from(s.concurrency);
        self.stats.joins += 1;
        self.changed = true;
        self.map.insert(s.id, s);
    }

    /// Removes session `sid`.
    pub(super) fn remove(&mut self, sid: SessionId) -> Option<Session> {
        let s = self.map.remove(&sid)?;
        self.capacity -= u64::from(s.concurrency);
        self.changed = true;
        Some(s)
    }

    /// Sum of the concurrency the connected nodes declared.
    pub(super) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// How many streams are open.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Every session id.
    pub(super) fn ids(&self) -> Vec<SessionId> {
        self.map.keys().copied().collect()
    }

    /// Sessions that may be given jobs now, in id order.
    pub(super) fn wanting_jobs(&self) -> Vec<SessionId> {
        self.map
            .values()
            .filter(|s| s.wants_jobs())
            .map(|s| s.id)
            .collect()
    }

    /// Sessions silent for longer than `timeout`.
    pub(super) fn silent(&self, now: Instant, timeout: Duration) -> Vec<SessionId> {
        self.map
            .values()
            .filter(|s| now.saturating_duration_since(s.last_seen) > timeout)
            .map(|s| s.id)
            .collect()
    }

    /// Counts every node as heard from `now` (after the coordinator stalled).
    pub(super) fn seen_all(&mut self, now: Instant) {
        for s in self.map.values_mut() {
            s.last_seen = now;
        }
    }

    /// Every session, mutably.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.map.values_mut()
    }

    /// Every session.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Session> {
        self.map.values()
    }
}

/// Checks a Hello: a printable name of 1 to 128 characters, and a concurrency in range.
pub(super) fn validate_hello(hello: &pb::Hello, max_concurrency: u32) -> Result<(), Error> {
    if hello.name.is_empty() || hello.name.len() > 128 || hello.name.chars().any(|c| c.is_control())
    {
        return Err(Error::invalid(format!(
            "Hello.name {} is not a node name (1 to 128 printable characters)",
            smsmesh::echo(&hello.name)
        )));
    }
    if hello.concurrency == 0 || hello.concurrency > max_concurrency {
        return Err(Error::invalid(format!(
            "Hello.concurrency {} is out of range (1 to {max_concurrency})",
            hello.concurrency
        )));
    }
    Ok(())
}
