//! What the socket-free core tests share: an outbox that records frames as a
//! node would read them, and a world of one core, its clock and (when
//! durable) an in-memory store, driven one event at a time.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use smsmesh::pb::{self, coordinator_to_node, node_to_coordinator};
use smsmesh::{BatchId, Error};
pub use smsmesh_coordinator::Config;
use smsmesh_coordinator::auth::Tenant;
use smsmesh_coordinator::batch::Content;
use smsmesh_coordinator::core::{Core, FromCore, NewBatch, Outbox, SessionId, Unreachable};
use smsmesh_coordinator::store::{Store, StoredBatch};

/// Records what the core sends, and can pretend a node's queue is full.
#[derive(Default)]
pub struct TestOutbox {
    pub sent: HashMap<SessionId, Vec<pb::CoordinatorToNode>>,
    pub closed: HashMap<SessionId, Option<Error>>,
    pub full: Vec<SessionId>,
}

impl Outbox for TestOutbox {
    fn send(&mut self, s: SessionId, msg: pb::CoordinatorToNode) -> Result<(), Unreachable> {
        if self.full.contains(&s) {
            return Err(Unreachable);
        }
        // Kept as a node would read it: encoded, then decoded.
        let msg = pb::CoordinatorToNode::decode(msg.encode_to_vec().as_slice())
            .expect("the core's frames decode");
        self.sent.entry(s).or_default().push(msg);
        Ok(())
    }

    fn close(&mut self, s: SessionId, error: Option<Error>) {
        self.closed.insert(s, error);
    }
}

impl TestOutbox {
    /// Every frame sent to `s` since the last take, in order.
    pub fn take(&mut self, s: SessionId) -> Vec<coordinator_to_node::Update> {
        self.sent
            .remove(&s)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.update)
            .collect()
    }

    /// Jobs sent to `s` since the last take, frame by frame (other frames are dropped).
    pub fn take_jobs(&mut self, s: SessionId) -> Vec<Vec<pb::Job>> {
        jobs(self.take(s))
    }
}

/// The jobs of each Jobs frame among `frames`.
pub fn jobs(frames: Vec<coordinator_to_node::Update>) -> Vec<Vec<pb::Job>> {
    frames
        .into_iter()
        .filter_map(|u| match u {
            coordinator_to_node::Update::Jobs(j) => Some(j.jobs),
            _ => None,
        })
        .collect()
}

/// The sequence numbers of the acks among `frames`.
pub fn acks(frames: &[coordinator_to_node::Update]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|u| match u {
            coordinator_to_node::Update::Ack(a) => Some(a.seq),
            _ => None,
        })
        .collect()
}

/// A core, its outbox, its clock, and its store when durable.
pub struct World {
    pub core: Core,
    pub out: TestOutbox,
    pub now: Instant,
    pub store: Option<Store>,
    pub config: Config,
    /// The reservation each durable submit is stored with (as the API
    /// layer does with `INITIAL_RESERVATION`); 0: none, dispatch waits
    /// for one to be committed.
    pub reserve: u32,
}

/// Small frames and a short backoff, so tests see each step.
pub fn config() -> Config {
    Config {
        max_jobs_per_frame: 4,
        retry_base: Duration::from_millis(100),
        ..Config::default()
    }
}

/// The result of `job`: sent, or failed with "boom".
pub fn result(job: &pb::Job, sent: bool) -> pb::JobResult {
    pb::JobResult {
        batch: job.batch,
        index: job.index,
        attempt: job.attempt,
        outcome: if sent {
            pb::Outcome::Sent
        } else {
            pb::Outcome::Failed
        } as i32,
        error: if sent { String::new() } else { "boom".into() },
        latency_us: 100,
        ..Default::default()
    }
}

impl World {
    /// A core in memory only.
    pub fn new(config: Config) -> Self {
        World {
            core: Core::new(config.clone()),
            out: TestOutbox::default(),
            now: Instant::now(),
            store: None,
            config,
            reserve: 0,
        }
    }

    /// A core backed by a fresh in-memory store.
    pub fn durable(config: Config) -> Self {
        let store = Store::in_memory().unwrap();
        let now = Instant::now();
        World {
            core: Core::recover(config.clone(), store.load().unwrap(), now),
            out: TestOutbox::default(),
            now,
            store: Some(store),
            config,
            reserve: 0,
        }
    }

    /// The coordinator process dies and starts again from its store; streams are gone.
    pub fn crash(&mut self) {
        let store = self.store.as_ref().expect("a durable world");
        self.core = Core::recover(self.config.clone(), store.load().unwrap(), self.now);
        self.out = TestOutbox::default();
    }

    /// Takes what waits to be stored, stores it (when durable), and tells the core.
    pub fn commit(&mut self) {
        let (set, done) = self.core.take_writes();
        if let Some(store) = &self.store {
            store.commit(&set).unwrap();
        }
        self.core.on_committed(done, self.now, &mut self.out);
    }

    /// A node named `name` (process 1) joins with `concurrency`.
    pub fn join(&mut self, name: &str, concurrency: u32) -> SessionId {
        self.try_join(name, 1, concurrency).unwrap()
    }

    /// A node named `name` of process `instance` says Hello.
    pub fn try_join(
        &mut self,
        name: &str,
        instance: u64,
        concurrency: u32,
    ) -> Result<SessionId, Error> {
        let sid = self.core.next_session_id();
        let hello = pb::Hello {
            name: name.into(),
            instance_id: instance,
            concurrency,
            gateway: "test".into(),
            ..Default::default()
        };
        self.core
            .on_node_joined(sid, hello, self.now, &mut self.out)
            .map(|()| sid)
    }

    pub fn msg(&mut self, sid: SessionId, u: node_to_coordinator::Update) {
        self.core.on_node_message(
            sid,
            pb::NodeToCoordinator { update: Some(u) },
            self.now,
            &mut self.out,
        );
    }

    pub fn grant(&mut self, sid: SessionId, credits: u32) {
        self.msg(
            sid,
            node_to_coordinator::Update::Grant(pb::Grant { credits }),
        );
    }

    /// A Results frame `seq` from `sid`.
    pub fn frame(&mut self, sid: SessionId, seq: u64, results: Vec<pb::JobResult>, grant: u32) {
        self.results_frame(sid, seq, results, grant, false);
    }

    /// A Results frame, handed in or not.
    pub fn results_frame(
        &mut self,
        sid: SessionId,
        seq: u64,
        results: Vec<pb::JobResult>,
        grant: u32,
        handoff: bool,
    ) {
        self.msg(
            sid,
            node_to_coordinator::Update::Results(pb::Results {
                seq,
                results,
                grant,
                handoff,
                ..Default::default()
            }),
        );
    }

    /// Results for `jobs`, all sent or all failed, in frame 1.
    pub fn results(&mut self, sid: SessionId, jobs: &[pb::Job], sent: bool, grant: u32) {
        let results = jobs.iter().map(|j| result(j, sent)).collect();
        self.frame(sid, 1, results, grant);
    }

    /// Submits a synthetic batch (stored first when durable, as the API does).
    pub fn submit(&mut self, total: u32, max_attempts: u8) -> BatchId {
        self.submit_keyed(total, max_attempts, None)
    }

    /// Submits a synthetic batch with an idempotency key.
    pub fn submit_keyed(&mut self, total: u32, max_attempts: u8, key: Option<&str>) -> BatchId {
        self.submit_request(total, max_attempts, key, 0).unwrap()
    }

    /// Submits a synthetic batch with an idempotency key, for a request of
    /// `fingerprint`: the core's answer.
    pub fn submit_request(
        &mut self,
        total: u32,
        max_attempts: u8,
        key: Option<&str>,
        fingerprint: u64,
    ) -> Result<BatchId, Error> {
        let id = BatchId::random();
        let reserved = if self.store.is_some() {
            self.reserve.min(total)
        } else {
            0
        };
        if let Some(store) = &self.store {
            let stored = StoredBatch {
                id: id.0,
                total,
                max_attempts: u32::from(max_attempts),
                messages: Vec::new(),
                synthetic_seed: Some(1),
                synthetic_body: None,
                // As the batch in the core says (below), so a restart reads the same.
                accepted_unix_ms: 1_700_000_000_000,
                tenant: String::new(),
                fingerprint,
                list_body: None,
                reserved,
                ..Default::default()
            };
            if let Err(earlier) = store.insert_batch(&stored, key).unwrap() {
                // The key is stored: what the core says of it is the answer.
                let known = self
                    .core
                    .on_idempotent(key.unwrap_or_default(), fingerprint)?;
                return Ok(known.map_or(BatchId(earlier), |r| r.batch_id.parse().unwrap()));
            }
        }
        let b = NewBatch {
            id,
            content: Content::Synthetic {
                seed: 1,
                body: None,
            },
            total,
            max_attempts,
            idempotency_key: key.map(str::to_string),
            fingerprint,
            trace: None,
            tenant: Tenant::default(),
            accepted_unix_ms: 1_700_000_000_000,
            class: Default::default(),
            callback_url: None,
            reserved,
        };
        self.core
            .on_submit(b, self.now)
            .map(|r| r.batch_id.parse().unwrap())
    }

    /// Submits a synthetic batch of `class` for `tenant` (in memory only).
    pub fn submit_as(
        &mut self,
        total: u32,
        class: smsmesh::priority::Class,
        tenant: &str,
    ) -> BatchId {
        let b = NewBatch {
            id: BatchId::random(),
            content: Content::Synthetic {
                seed: 1,
                body: None,
            },
            total,
            max_attempts: 3,
            idempotency_key: None,
            fingerprint: 0,
            trace: None,
            tenant: Tenant::new(tenant),
            accepted_unix_ms: 1_700_000_000_000,
            class,
            callback_url: None,
            reserved: 0,
        };
        self.core
            .on_submit(b, self.now)
            .map(|r| r.batch_id.parse().unwrap())
            .unwrap()
    }

    /// Time passes with the reactor ticking as it does (every 250 ms).
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(250)).min(end);
            self.core.on_tick(self.now, &mut self.out);
        }
    }

    pub fn dispatch(&mut self) {
        self.core.dispatch(self.now, &mut self.out);
    }

    /// Status of message `index` of batch `batch`.
    /// (A folded batch's message is read from the store, as the reactor's handle does.)
    pub fn message(&self, batch: BatchId, index: u32) -> pb::MessageStatus {
        let answer = self
            .core
            .on_message_status(smsmesh::MessageId { batch, index }, &Tenant::default())
            .unwrap();
        match answer {
            FromCore::Here(m) => m,
            FromCore::InStore(r) => tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(smsmesh_coordinator::history::message(
                    self.store.as_ref().expect("folded only with a store"),
                    r,
                    index,
                ))
                .unwrap(),
        }
    }

    pub fn status(&self, id: BatchId) -> pb::BatchStatus {
        self.core
            .on_batch_status(id, &Tenant::default(), self.now)
            .unwrap()
    }
}
