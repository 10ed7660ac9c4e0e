//! Coordinator configuration, as the library takes it (the binary fills it from flags).

use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{ClientAuth, TenantLimits};
use std::time::Duration;

/// Everything the coordinator can be tuned with. [`Config::default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory of the embedded store; `None` keeps state in memory only. Default: `None`
    /// (the `smscoord` binary defaults to `./smsmesh-data`).
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL database to keep state in instead of the data dir
    /// (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`). Coordinators sharing it
    /// take the lead in turn; the others stand by. Default: `None`.
    pub database_url: Option<String>,
    /// With a database: how long the lead lasts unrenewed. A standby takes
    /// over about this long after the leader dies; the leader steps down
    /// once it has not renewed for 80% of it. Default: 5 s.
    pub lease_ttl: Duration,
    /// Start a new store even where one was expected (an empty store file, or
    /// a data dir with other files but no store). Default: false.
    pub create_store: bool,
    /// Memory the store engine may keep of the store's pages, MiB. Default: 64.
    pub store_cache_mib: u64,
    /// Export per-batch series (`smsmesh_batch_pending_messages{batch_id}`) in
    /// `/metrics`. Batch ids of every tenant then show to whoever can reach the
    /// endpoint. Default: false.
    pub metrics_per_batch: bool,
    /// A connection must send its opening bytes (TLS ClientHello, HTTP/2
    /// preface) within this long of being accepted, or it is closed. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Largest batch accepted, in messages. Default: 50,000,000.
    pub max_batch_size: u64,
    /// Largest `max_attempts` a batch may ask for. Default: 20.
    pub max_attempts_limit: u32,
    /// Attempts per message when the request gives none. Default: 3.
    pub default_max_attempts: u32,
    /// Backoff before the first retry; doubles each failure, with jitter. Default: 200 ms.
    pub retry_base: Duration,
    /// Longest backoff. Default: 30 s.
    pub retry_max: Duration,
    /// How often nodes send heartbeats. Default: 1 s.
    pub heartbeat_interval: Duration,
    /// A node silent this long is dropped and its jobs go elsewhere. Default: 5 s.
    pub node_timeout: Duration,
    /// A job a node holds this long (up to twice this long: leases expire by
    /// generation) without a result is taken back and sent elsewhere (counted
    /// as requeued); a late result still counts. `None`: never. Default: 5 minutes.
    pub job_timeout: Option<Duration>,
    /// Most jobs in one frame to a node. Default: 512.
    pub max_jobs_per_frame: usize,
    /// Largest concurrency a node may declare. Default: 100,000.
    pub max_node_concurrency: u32,
    /// How often progress snapshots are published to watchers. Default: 200 ms.
    pub publish_interval: Duration,
    /// Outcomes wait up to this long after the last group commit began to join
    /// the next one (fewer, larger commits when traffic is light; a full group,
    /// a cancel, a new batch state or node goes at once). Default: 2 ms.
    pub commit_interval: Duration,
    /// New batches wait up to this long after the last group commit began to
    /// join the next one (many submits share an fsync; a lone submit goes at
    /// once, and a reactor group takes them along). Default: 1 ms.
    pub submit_interval: Duration,
    /// Largest gRPC request accepted, in bytes (a SubmitBatch with explicit messages). Default: 64 MiB.
    pub max_request_bytes: usize,
    /// How long an ended batch stays in the all-batches progress stream. Default: 60 s.
    pub keep_ended_in_progress: Duration,
    /// Ended batches accepted longer ago than this are removed, from memory
    /// and from the store. Default: 7 days.
    pub retention: Duration,
    /// A sent message whose provider gave ids and that has no final delivery
    /// receipt this long after it was sent ends as delivery unknown. Default: 48 h.
    pub dlr_timeout: Duration,
    /// After a restart, how long messages that may have been in flight wait before going
    /// out again, so that reconnecting nodes can hand in their results first. Default: 2 s.
    pub resume_grace: Duration,
    /// Share of a traced batch's messages whose send is recorded as a span on
    /// the node (every 1/ratio-th message, the first always), so a huge batch
    /// does not flood the trace store. 0 records none. Default: 0.001.
    pub trace_message_ratio: f64,
    /// How client RPCs are authenticated. Default: [`ClientAuth::Insecure`]
    /// (the `smscoord` binary requires choosing explicitly).
    pub client_auth: ClientAuth,
    /// The secret a node must present to join (`x-smsmesh-join-token`). None: any node may join.
    pub node_token: Option<Arc<str>>,
    /// With mutual TLS: refuse node streams without a client certificate. Default: false.
    pub require_node_cert: bool,
    /// Per-tenant admission limits. Default: none.
    pub tenant_limits: TenantLimits,
    /// Each tenant's share of dispatch within a class, against the others
    /// running in that class (a tenant not named has weight 1).
    pub tenant_weights: std::collections::HashMap<String, u32>,
    /// Most frames per second a node may send, sustained (twice that in a burst);
    /// a node over it is disconnected. Default: 50,000.
    pub node_max_frames_per_sec: u32,
    /// Most explicit messages in one SubmitBatch. Default: 1,000,000.
    pub max_messages_per_request: u64,
    /// TLS for the gRPC listener. None: plaintext. Default: None (the `smscoord`
    /// binary requires choosing explicitly).
    pub tls: Option<Tls>,
    /// Status callbacks to clients: secrets, default URLs, pacing. Default: none configured.
    pub callbacks: crate::callbacks::CallbackConfig,
}

/// TLS material, PEM encoded.
#[derive(Clone)]
pub struct Tls {
    /// Certificate chain of the server.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// CA that client certificates are checked against (mutual TLS). Clients
    /// without a certificate are still let in (the API has tokens); nodes
    /// need one when [`Config::require_node_cert`] is set.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: None,
            database_url: None,
            lease_ttl: Duration::from_secs(5),
            create_store: false,
            store_cache_mib: 64,
            metrics_per_batch: false,
            handshake_timeout: Duration::from_secs(10),
            max_batch_size: 50_000_000,
            max_attempts_limit: 20,
            default_max_attempts: 3,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            job_timeout: Some(Duration::from_secs(300)),
            max_jobs_per_frame: 512,
            max_node_concurrency: 100_000,
            publish_interval: Duration::from_millis(200),
            commit_interval: Duration::from_millis(2),
            submit_interval: Duration::from_millis(1),
            max_request_bytes: 64 << 20,
            keep_ended_in_progress: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
            dlr_timeout: Duration::from_secs(48 * 3600),
            resume_grace: Duration::from_secs(2),
            trace_message_ratio: 0.001,
            client_auth: ClientAuth::Insecure,
            node_token: None,
            require_node_cert: false,
            tenant_limits: TenantLimits::default(),
            tenant_weights: std::collections::HashMap::new(),
            node_max_frames_per_sec: 50_000,
            max_messages_per_request: 1_000_000,
            tls: None,
            callbacks: crate::callbacks::CallbackConfig::default(),
        }
    }
}
