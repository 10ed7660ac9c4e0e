//! `smscoord`'s command line: its flags and variables, checked and made
//! into the coordinator's configuration (a module of the binary, not of the
//! library).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use smsmesh::client::read_file;
use smsmesh_coordinator::auth::{ClientAuth, JwtVerifier, TenantLimits};
use smsmesh_coordinator::{Config, Tls};

/// The smsmesh coordinator: accepts SMS batches over gRPC and dispatches them
/// to sender nodes.
#[derive(Parser, Debug)]
#[command(version, about)]
pub(crate) struct Args {
    /// Address to serve gRPC on (clients and nodes).
    #[arg(long, env = "SMSMESH_LISTEN", default_value = "127.0.0.1:50051")]
    pub(crate) listen: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9100). Off by default.
    #[arg(long, env = "SMSMESH_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Serve the API over HTTP and JSON on ADDR too (e.g. 0.0.0.0:8080): the
    /// same calls, tokens and errors; HTTPS with --tls-cert. OpenAPI at
    /// /openapi.json. Off by default.
    #[arg(long, env = "SMSMESH_HTTP_LISTEN")]
    pub(crate) http_listen: Option<SocketAddr>,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "SMSMESH_DATA_DIR", default_value = "smsmesh-data")]
    pub(crate) data_dir: std::path::PathBuf,
    /// Keep state in PostgreSQL instead of --data-dir (postgres://USER[:PASSWORD]@HOST[:PORT]/DB).
    /// Every coordinator given the same database is one of a group: one leads,
    /// the others stand by (health NOT_SERVING) and take over when it stops.
    #[arg(long, env = "SMSMESH_DATABASE_URL", conflicts_with = "in_memory")]
    pub(crate) database_url: Option<String>,
    /// With --database-url: how long the lead lasts unrenewed. A standby takes
    /// over about this long after the leader dies.
    #[arg(long, env = "SMSMESH_LEASE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) lease_ttl: Duration,
    /// Start a new store even where one was expected: an empty store file, or a data
    /// dir with other files but no store. Without it smscoord refuses, so a lost file
    /// never silently becomes an empty store.
    #[arg(long, env = "SMSMESH_CREATE_STORE")]
    pub(crate) create_store: bool,
    /// Memory the store engine may keep of the store's pages, in MiB. Its
    /// pages are also in the OS page cache; this only saves a copy.
    #[arg(long, env = "SMSMESH_STORE_CACHE_MIB", default_value_t = 64)]
    pub(crate) store_cache_mib: u64,
    /// A connection must send its opening bytes (TLS ClientHello, HTTP/2 preface)
    /// this soon after it is accepted, or it is closed.
    #[arg(long, env = "SMSMESH_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) handshake_timeout: Duration,
    /// Export per-batch series in /metrics (batch ids of every tenant then show to
    /// whoever can reach the endpoint).
    #[arg(long, env = "SMSMESH_METRICS_PER_BATCH")]
    pub(crate) metrics_per_batch: bool,
    /// Check the store in --data-dir (or --database-url) offline (page checksums and
    /// every record) and exit: 0 if it is sound, 65 if it is damaged (saying what),
    /// 69 if it cannot be read.
    #[arg(long)]
    pub(crate) check_store: bool,
    /// Keep state in memory only: every batch is lost when the coordinator stops.
    #[arg(long, env = "SMSMESH_IN_MEMORY")]
    pub(crate) in_memory: bool,
    /// Largest batch accepted, in messages.
    #[arg(long, env = "SMSMESH_MAX_BATCH_SIZE", default_value_t = 50_000_000)]
    pub(crate) max_batch_size: u64,
    /// Attempts per message when a batch does not say.
    #[arg(long, env = "SMSMESH_DEFAULT_MAX_ATTEMPTS", default_value_t = 3)]
    pub(crate) default_max_attempts: u32,
    /// Backoff before the first retry (doubles each failure, with jitter).
    #[arg(long, env = "SMSMESH_RETRY_BASE", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub(crate) retry_base: Duration,
    /// Longest retry backoff.
    #[arg(long, env = "SMSMESH_RETRY_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) retry_max: Duration,
    /// How often nodes must send a heartbeat.
    #[arg(long, env = "SMSMESH_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat_interval: Duration,
    /// A node silent this long is dropped and its jobs go to other nodes.
    #[arg(long, env = "SMSMESH_NODE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) node_timeout: Duration,
    /// A job a node holds this long (at most twice this long) without a result is
    /// taken back and sent to another node (counted as requeued; a late result still
    /// counts). 0: never.
    #[arg(long, env = "SMSMESH_JOB_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) job_timeout: Duration,
    /// After a restart, how long messages that may have been in flight wait before going
    /// out again (reconnecting nodes hand in their results meanwhile).
    #[arg(long, env = "SMSMESH_RESUME_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) resume_grace: Duration,
    /// Ended batches accepted longer ago than this are removed from memory and
    /// from the store (in the background; GetStatus then says NOT_FOUND).
    #[arg(long, env = "SMSMESH_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub(crate) retention: Duration,
    /// A sent message whose provider gave ids (SMPP) and that has no final
    /// delivery receipt this long after it was sent ends as delivery unknown.
    #[arg(long, env = "SMSMESH_DLR_TIMEOUT", default_value = "48h", value_parser = humantime::parse_duration)]
    pub(crate) dlr_timeout: Duration,
    /// Outcomes wait up to this long after the last group commit began, to share the
    /// next one (a full group, a cancel or a new batch state goes at once).
    #[arg(long, env = "SMSMESH_COMMIT_INTERVAL", default_value = "2ms", value_parser = humantime::parse_duration)]
    pub(crate) commit_interval: Duration,
    /// New batches wait up to this long after the last group commit began, to share
    /// the next one (under many submits, fewer fsyncs; a lone submit goes at once).
    #[arg(long, env = "SMSMESH_SUBMIT_INTERVAL", default_value = "1ms", value_parser = humantime::parse_duration)]
    pub(crate) submit_interval: Duration,
    /// Most jobs in one frame to a node.
    #[arg(long, env = "SMSMESH_MAX_JOBS_PER_FRAME", default_value_t = 512)]
    pub(crate) max_jobs_per_frame: usize,
    /// Of a traced batch, the share of messages whose send on the node is a span
    /// (every 1/ratio-th message, the first always); 0 for none.
    #[arg(long, env = "SMSMESH_TRACE_MESSAGE_RATIO", default_value_t = 0.001)]
    pub(crate) trace_message_ratio: f64,
    /// Let every client in without a token, as the default tenant. For one-machine
    /// runs and tutorials only: it is logged loudly.
    #[arg(long, env = "SMSMESH_INSECURE_NO_AUTH")]
    pub(crate) insecure_no_auth: bool,
    /// Clients authenticate with HS256 JWTs signed with the secret in this file
    /// (at least 32 bytes).
    #[arg(
        long,
        env = "SMSMESH_JWT_SECRET_FILE",
        conflicts_with = "jwt_public_key_file"
    )]
    pub(crate) jwt_secret_file: Option<std::path::PathBuf>,
    /// Clients authenticate with JWTs signed by the holder of this public key (PEM).
    #[arg(long, env = "SMSMESH_JWT_PUBLIC_KEY_FILE")]
    pub(crate) jwt_public_key_file: Option<std::path::PathBuf>,
    /// Algorithm of --jwt-public-key-file tokens: RS256 or ES256.
    #[arg(long, env = "SMSMESH_JWT_ALGORITHM", default_value = "RS256")]
    pub(crate) jwt_algorithm: String,
    /// The audience (`aud`) tokens must be for.
    #[arg(long, env = "SMSMESH_JWT_AUDIENCE", default_value = "smsmesh")]
    pub(crate) jwt_audience: String,
    /// The issuer (`iss`) tokens must come from. Default: any.
    #[arg(long, env = "SMSMESH_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,
    /// The claim that names the caller's tenant.
    #[arg(long, env = "SMSMESH_JWT_TENANT_CLAIM", default_value = "tenant")]
    pub(crate) jwt_tenant_claim: String,
    /// Print a development token for this tenant (needs --jwt-secret-file) and exit.
    #[arg(long, value_name = "TENANT")]
    pub(crate) mint_token: Option<String>,
    /// Lifetime of --mint-token tokens.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) token_ttl: Duration,
    /// The `scope` claim of --mint-token tokens, e.g. "smsmesh:emergency
    /// smsmesh:operator" (EMERGENCY batches; pausing classes).
    #[arg(long, default_value = "")]
    pub(crate) token_scope: String,
    /// Nodes must present the secret in this file to join (smsnode --join-token-file).
    #[arg(long, env = "SMSMESH_NODE_TOKEN_FILE")]
    pub(crate) node_token_file: Option<std::path::PathBuf>,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "SMSMESH_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SMSMESH_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<std::path::PathBuf>,
    /// Check client certificates against this CA (PEM): mutual TLS.
    #[arg(long, env = "SMSMESH_TLS_CLIENT_CA", requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<std::path::PathBuf>,
    /// Refuse nodes without a client certificate from --tls-client-ca.
    #[arg(long, env = "SMSMESH_REQUIRE_NODE_CERT", requires = "tls_client_ca")]
    pub(crate) require_node_cert: bool,
    /// Serve gRPC without TLS. Must be asked for when there is no --tls-cert.
    #[arg(long, env = "SMSMESH_PLAINTEXT", conflicts_with = "tls_cert")]
    pub(crate) plaintext: bool,
    /// Messages per second a tenant may submit, sustained. Default: no limit.
    #[arg(long, env = "SMSMESH_TENANT_RATE")]
    pub(crate) tenant_rate: Option<f64>,
    /// Messages a tenant may submit at once (largest batch). Default: 60 s of --tenant-rate.
    #[arg(long, env = "SMSMESH_TENANT_BURST", requires = "tenant_rate")]
    pub(crate) tenant_burst: Option<u64>,
    /// Most messages of a tenant not finished yet. Default: no cap.
    #[arg(long, env = "SMSMESH_TENANT_MAX_PENDING")]
    pub(crate) tenant_max_pending: Option<u64>,
    /// A tenant's weight within each class, as TENANT=WEIGHT (repeat it, or
    /// commas in the variable): two running tenants of weights 3 and 1 get
    /// 3/4 and 1/4 of what the class is given. A tenant not named has 1.
    #[arg(long, env = "SMSMESH_TENANT_WEIGHTS", value_delimiter = ',', value_parser = tenant_weight)]
    pub(crate) tenant_weight: Vec<(String, u32)>,
    /// Most frames a second a node may send (twice that in a burst); over it, it is dropped.
    #[arg(
        long,
        env = "SMSMESH_NODE_MAX_FRAMES_PER_SEC",
        default_value_t = 50_000
    )]
    pub(crate) node_max_frames_per_sec: u32,
    /// Most explicit messages in one SubmitBatch request.
    #[arg(
        long,
        env = "SMSMESH_MAX_MESSAGES_PER_REQUEST",
        default_value_t = 1_000_000
    )]
    pub(crate) max_messages_per_request: u64,
    #[command(flatten)]
    pub(crate) callbacks: smsmesh_coordinator::callbacks::flags::CallbackFlags,
    /// Check the health of the coordinator listening on --listen and exit: 0 if its
    /// gRPC health service says SERVING (the process works: a leader or a standby),
    /// 1 if not. For container liveness checks.
    #[arg(long)]
    pub(crate) health_check: bool,
    /// Like --health-check, but 0 only if the coordinator serves the API (it leads,
    /// or has no standbys): for readiness checks, so traffic goes to the leader.
    #[arg(long)]
    pub(crate) ready_check: bool,
    /// Print the OpenAPI 3.1 document of the HTTP API (--http-listen serves it
    /// at /openapi.json too) and exit.
    #[arg(long)]
    pub(crate) openapi: bool,
    /// With --health-check on a TLS coordinator: the CA (PEM) its certificate chains to.
    #[arg(long, env = "SMSMESH_TLS_CA")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    /// With --health-check on a TLS coordinator: the name its certificate is for.
    #[arg(long, env = "SMSMESH_TLS_DOMAIN", default_value = "localhost")]
    pub(crate) tls_domain: String,
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317
    /// (the standard OTEL_* variables are honoured too).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<String>,
}

/// A secret from a file, without surrounding whitespace (a trailing newline).
pub(crate) fn read_secret(path: &std::path::Path, what: &str) -> Result<String, String> {
    let s = String::from_utf8(read_file(path, what)?)
        .map_err(|_| format!("{what} {} is not text", path.display()))?;
    let s = s.trim().to_string();
    if s.len() < 16 {
        return Err(format!(
            "{what} {} is too short ({} bytes); use at least 16 random bytes",
            path.display(),
            s.len()
        ));
    }
    Ok(s)
}

impl Args {
    pub(crate) fn client_auth(&self) -> Result<ClientAuth, String> {
        let verifier = match (&self.jwt_secret_file, &self.jwt_public_key_file) {
            (Some(f), _) => {
                JwtVerifier::hs256(read_secret(f, "JWT secret")?.as_bytes(), &self.jwt_audience)
                    .map_err(|e| format!("--jwt-secret-file: {e}"))?
            }
            (None, Some(f)) => {
                let alg = match self.jwt_algorithm.to_ascii_uppercase().as_str() {
                    "RS256" => jsonwebtoken::Algorithm::RS256,
                    "ES256" => jsonwebtoken::Algorithm::ES256,
                    other => return Err(format!("--jwt-algorithm {other}: use RS256 or ES256")),
                };
                JwtVerifier::public_key(&read_file(f, "JWT public key")?, alg, &self.jwt_audience)
                    .map_err(|e| format!("--jwt-public-key-file {}: {e}", f.display()))?
            }
            (None, None) if self.insecure_no_auth => return Ok(ClientAuth::Insecure),
            (None, None) => {
                return Err("choose how clients authenticate: --jwt-secret-file FILE (HS256) or --jwt-public-key-file FILE (RS256/ES256), or --insecure-no-auth to let anyone in".into());
            }
        };
        if self.insecure_no_auth {
            return Err("--insecure-no-auth contradicts the --jwt-* flags: choose one".into());
        }
        let mut v = verifier.with_tenant_claim(&self.jwt_tenant_claim);
        if let Some(iss) = &self.jwt_issuer {
            v = v.with_issuer(iss);
        }
        Ok(ClientAuth::Jwt(Arc::new(v)))
    }

    pub(crate) fn tls(&self) -> Result<Option<Tls>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(Tls {
                cert_pem: read_file(cert, "TLS certificate")?,
                key_pem: read_file(key, "TLS key")?,
                client_ca_pem: self
                    .tls_client_ca
                    .as_deref()
                    .map(|ca| read_file(ca, "client CA"))
                    .transpose()?,
            })),
            _ if self.plaintext => Ok(None),
            _ => Err("choose TLS (--tls-cert FILE --tls-key FILE) or --plaintext".into()),
        }
    }

    pub(crate) fn config(&self) -> Result<Config, String> {
        if let Some(url) = &self.database_url {
            smsmesh_coordinator::store::pg::config(url)?;
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(format!(
                "--lease-ttl {:?} is too short: give at least 1s",
                self.lease_ttl
            ));
        }
        let client_auth = self.client_auth()?;
        let node_token = self
            .node_token_file
            .as_deref()
            .map(|f| read_secret(f, "node join token"))
            .transpose()?
            .map(Arc::from);
        if node_token.is_none() && !self.insecure_no_auth && !self.require_node_cert {
            return Err("nodes must authenticate too: --node-token-file FILE (or --require-node-cert with mutual TLS)".into());
        }
        let tls = self.tls()?;
        if let Some(r) = self.tenant_rate
            && !(r > 0.0 && r.is_finite())
        {
            return Err("--tenant-rate must be a positive number of messages per second".into());
        }
        if self.default_max_attempts == 0 {
            return Err("--default-max-attempts must be at least 1".into());
        }
        if self.max_jobs_per_frame == 0 {
            return Err("--max-jobs-per-frame must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.trace_message_ratio) {
            return Err("--trace-message-ratio must be between 0 and 1".into());
        }
        if self.node_timeout <= self.heartbeat_interval {
            return Err("--node-timeout must be longer than --heartbeat-interval".into());
        }
        Ok(Config {
            data_dir: (!self.in_memory && self.database_url.is_none())
                .then(|| self.data_dir.clone()),
            database_url: self.database_url.clone(),
            lease_ttl: self.lease_ttl,
            create_store: self.create_store,
            store_cache_mib: self.store_cache_mib,
            metrics_per_batch: self.metrics_per_batch,
            handshake_timeout: self.handshake_timeout,
            max_batch_size: self.max_batch_size,
            default_max_attempts: self.default_max_attempts,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            heartbeat_interval: self.heartbeat_interval,
            node_timeout: self.node_timeout,
            job_timeout: (!self.job_timeout.is_zero()).then_some(self.job_timeout),
            max_jobs_per_frame: self.max_jobs_per_frame,
            resume_grace: self.resume_grace,
            retention: self.retention,
            dlr_timeout: self.dlr_timeout,
            commit_interval: self.commit_interval,
            submit_interval: self.submit_interval,
            trace_message_ratio: self.trace_message_ratio,
            client_auth,
            node_token,
            require_node_cert: self.require_node_cert,
            tenant_weights: self.tenant_weight.iter().cloned().collect(),
            tenant_limits: TenantLimits {
                rate: self.tenant_rate,
                burst: self
                    .tenant_burst
                    .unwrap_or_else(|| self.tenant_rate.map_or(0, |r| (r * 60.0) as u64)),
                max_pending: self.tenant_max_pending,
            },
            node_max_frames_per_sec: self.node_max_frames_per_sec,
            max_messages_per_request: self.max_messages_per_request,
            tls,
            callbacks: self.callbacks.config()?,
            ..Config::default()
        })
    }
}

/// One `--tenant-weight TENANT=WEIGHT`.
fn tenant_weight(s: &str) -> Result<(String, u32), String> {
    let (tenant, weight) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: give TENANT=WEIGHT, e.g. acme=3"))?;
    match weight.trim().parse::<u32>() {
        Ok(w @ 1..=1000) if !tenant.trim().is_empty() => Ok((tenant.trim().to_string(), w)),
        _ => Err(format!(
            "{s:?}: give TENANT=WEIGHT with a weight from 1 to 1000, e.g. acme=3"
        )),
    }
}
