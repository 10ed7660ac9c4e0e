//! Serves the coordinator: the client API, the node link, health and reflection
//! on one listener.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use smsmesh::pb::coordinator_server::CoordinatorServer;
use smsmesh::pb::node_link_server::NodeLinkServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::auth::ClientAuth;
use tonic::transport::server::TcpIncoming;

use crate::api::CoordinatorApi;
use crate::core::Core;
use crate::leader::{Held, Lease};
use crate::link::NodeLinkService;
use crate::standby::Standby;
use crate::store::Store;
use crate::{Config, reactor};

/// Runs the coordinator on `listener` until `shutdown` completes.
///
/// On shutdown every node stream and progress stream is closed, so the
/// server can finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    run_with_metrics(config, listener, None, shutdown).await
}

/// Opens the store the configuration names, if any, and the core: recovered
/// from the store, or empty. A PostgreSQL store is written under `epoch`,
/// the lead this coordinator holds.
fn open(config: Config, epoch: Option<i64>) -> anyhow::Result<(Option<Store>, Core)> {
    let store = match (&config.database_url, epoch, &config.data_dir) {
        (Some(url), Some(epoch), _) => Store::postgres(crate::store::pg::Pg::connect(
            url,
            epoch,
            config.lease_ttl / 2,
        )?),
        (_, _, Some(dir)) => {
            Store::open_with_cache(dir, config.create_store, config.store_cache_mib)?
        }
        _ => {
            tracing::warn!("no data dir: batches are kept in memory only and lost on restart");
            return Ok((None, Core::new(config)));
        }
    };
    let started = std::time::Instant::now();
    let loaded = store.load()?;
    let n = loaded.batches.len();
    let decided: u64 = loaded
        .delivery_tallies
        .iter()
        .flat_map(|(_, t)| t.states().map(|(_, n)| n))
        .sum();
    let waiting = loaded.receipt_waits.len();
    let core = Core::recover(config, loaded, std::time::Instant::now());
    tracing::info!(
        path = %store.path().display(),
        batches = n,
        deliveries_decided = decided,
        receipts_awaited = waiting,
        took = ?started.elapsed(),
        "store opened"
    );
    Ok((Some(store), core))
}

/// [`run`], also serving Prometheus metrics at `/metrics` on `metrics`.
pub async fn run_with_metrics(
    config: Config,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listeners = Listeners {
        grpc: listener,
        metrics,
        http: None,
    };
    run_on(config, listeners, shutdown).await
}

/// Where the coordinator serves.
pub struct Listeners {
    /// gRPC: the client API, the node link, health and reflection.
    pub grpc: TcpListener,
    /// Prometheus metrics at `/metrics`, and `/healthz`.
    pub metrics: Option<TcpListener>,
    /// The API over HTTP and JSON (see [`crate::rest`]).
    pub http: Option<TcpListener>,
}

/// [`run`] on every listener of `listeners`.
pub async fn run_on(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Listeners {
        grpc: listener,
        metrics,
        http,
    } = listeners;
    let addr: SocketAddr = listener.local_addr()?;
    let mut shutdown = Box::pin(shutdown);
    // The REST face: it stops when this function returns (the sender drops).
    let rest = crate::rest::Rest::new();
    let (_http_stop, http_stopped) = tokio::sync::watch::channel(());
    let mut http = http;
    let serve_http = |listener: Option<TcpListener>| {
        let Some(listener) = listener else { return };
        let router = crate::rest::router(rest.clone(), config.max_request_bytes);
        let (tls, timeout) = (config.tls.clone(), config.handshake_timeout);
        let mut stopped = http_stopped.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) =
                crate::rest::serve(listener, router, tls.as_ref(), timeout, stopped).await
            {
                tracing::error!(error = %e, "the HTTP API stopped");
            }
        });
    };
    // A standby answers on it at once (UNAVAILABLE); a coordinator without a
    // database serves it once its store is loaded (connections wait meanwhile).
    if config.database_url.is_some() {
        serve_http(http.take());
    }
    // With a database, this coordinator stands by until it holds the lead.
    let lease = config.database_url.as_ref().map(|url| Lease {
        url: url.clone(),
        holder: holder(addr),
        ttl: config.lease_ttl,
    });
    let (listener, held) = match &lease {
        Some(lease) => match stand_by(lease, listener, &config, &mut shutdown).await? {
            Some(led) => led,
            None => return Ok(()),
        },
        None => (listener, None),
    };
    // Opening and loading a store can take seconds: not on the runtime's
    // workers. What the load freed goes back to the OS before this thread
    // idles (with a million batches, about half of what it used).
    let (store, core) = {
        let config = config.clone();
        let epoch = held.map(|h| h.epoch);
        tokio::task::spawn_blocking(move || {
            let opened = open(config, epoch);
            smsmesh_alloc::release_freed();
            opened
        })
        .await??
    };
    // The leader keeps its lease; losing it ends this coordinator at once.
    let mut lost = std::pin::pin!(async {
        match (&lease, held) {
            (Some(lease), Some(held)) => lease.keep(held).await,
            _ => std::future::pending().await,
        }
    });
    let callbacks_start = core.callbacks_start();
    let (core, mut reactor_task, callback_rows) = reactor::spawn(core, store.clone());
    let callback_stats = crate::callbacks::sender::CallbackStats::default();
    let _callbacks = {
        let core = core.clone();
        let report: crate::callbacks::sender::Report = Box::new(move |seqs| {
            let core = core.clone();
            Box::pin(async move { core.callbacks_done(seqs).await })
        });
        tokio::spawn(crate::callbacks::sender::run(
            config.callbacks.clone(),
            store.as_ref().map(Store::reader),
            callbacks_start,
            callback_rows,
            report,
            callback_stats.clone(),
        ))
        .abort_handle()
    };
    let _callbacks = AbortOnDrop(_callbacks);
    // What /healthz says: serving until shutdown begins.
    let serving = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let _metrics = metrics.map(|listener| {
        let serving = serving.clone();
        let mut registry = core.metrics_registry();
        callback_stats.register(&mut registry);
        smsmesh::metrics::spawn(listener, registry, move || {
            serving.load(std::sync::atomic::Ordering::Relaxed)
        })
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServer<CoordinatorApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(smsmesh::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcurl before 1.9 asks the older v1alpha reflection service.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(smsmesh::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Every client RPC passes authentication first (health and reflection stay open).
    let auth = config.client_auth.clone();
    if let ClientAuth::Insecure = auth {
        tracing::warn!(
            "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who can reach this port can submit, read and cancel batches"
        );
    }
    let api = std::sync::Arc::new(CoordinatorApi::new(core.clone(), config.clone()));
    rest.lead(api.clone(), auth.clone());
    serve_http(http.take());
    let api = InterceptedService::new(
        CoordinatorServer::from_arc(api).max_decoding_message_size(config.max_request_bytes),
        move |req| auth.check(req),
    );
    if config.node_token.is_none() {
        tracing::warn!(
            "no node join token: any process that can reach this port can join as a node"
        );
    }
    let link = NodeLinkServer::new(NodeLinkService::new(core.clone(), &config))
        .max_decoding_message_size(16 << 20);

    tracing::info!(%addr, "coordinator listening");
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    let stop = {
        let core = core.clone();
        async move {
            tokio::select! {
                () = shutdown => tracing::info!("coordinator shutting down"),
                Ok(e) = failed_rx => tracing::error!(error = %e, "COORDINATOR STOPPING: it cannot go on safely; restart it once the cause is fixed"),
            }
            serving.store(false, std::sync::atomic::Ordering::Relaxed);
            health
                .set_not_serving::<CoordinatorServer<CoordinatorApi>>()
                .await;
            core.shutdown().await;
        }
    };
    let serve = builder(&config)?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(link)
        .serve_with_incoming_shutdown(incoming(listener, &config), stop);
    let mut serve = std::pin::pin!(serve);
    let reactor_result = tokio::select! {
        r = &mut serve => {
            r?;
            reactor_task.await
        }
        why = &mut lost => {
            // Another coordinator may lead now: write nothing more, serve nothing more.
            tracing::error!(reason = %why, "COORDINATOR STEPPING DOWN: it no longer holds the lead");
            return Err(anyhow::anyhow!("stepped down: {why}"));
        }
        r = &mut reactor_task => {
            // The reactor stops on its own only when the store fails or it panicked: stop
            // serving too, so the process exits and a supervisor restarts it (never a
            // process that looks alive and does nothing).
            let why = match &r {
                Ok(Ok(())) => "the reactor stopped".to_string(),
                Ok(Err(e)) => e.clone(),
                Err(e) => format!("the reactor task failed: {e}"),
            };
            let _ = failed_tx.send(why);
            serve.await?;
            r
        }
    };
    drop(core);
    if let (Some(lease), Some(held)) = (&lease, held) {
        lease.release(held.epoch).await;
    }
    match reactor_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("the store failed: {e}")),
        Err(e) => Err(anyhow::anyhow!("reactor task failed: {e}")),
    }
}

/// Stands by until this coordinator holds the lead (`None` if `shutdown`
/// came first), answering as a standby on a duplicate of `listener` meanwhile.
async fn stand_by(
    lease: &Lease,
    listener: TcpListener,
    config: &Config,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<Option<(TcpListener, Option<Held>)>> {
    {
        let url = lease.url.clone();
        tokio::task::spawn_blocking(move || crate::store::pg::migrate(&url)).await??;
    }
    let listener = listener.into_std()?;
    let standby_listener = TcpListener::from_std(listener.try_clone()?)?;
    let listener = TcpListener::from_std(listener)?;
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(String::new());
    let standby = Standby::start(standby_listener, config, leader_rx).await?;
    tracing::info!(holder = %lease.holder, "standing by for the lead");
    let held = tokio::select! {
        held = lease.acquire(&leader_tx) => held,
        () = shutdown => {
            standby.stop().await;
            return Ok(None);
        }
    };
    standby.stop().await;
    Ok(Some((listener, Some(held))))
}

/// This coordinator as the lease names it: host, process and address.
fn holder(addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}/{}/{addr}", std::process::id())
}

/// Accepted connections, with Nagle off and a deadline for their opening bytes.
pub(crate) fn incoming(
    listener: TcpListener,
    config: &Config,
) -> impl futures::Stream<Item = Result<crate::incoming::Timely, std::io::Error>> + use<> {
    let timeout = config.handshake_timeout;
    futures::StreamExt::map(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        move |accepted| accepted.map(|s| crate::incoming::Timely::new(s, timeout)),
    )
}

/// The gRPC server's settings: keepalives and TLS, as configured.
pub(crate) fn builder(config: &Config) -> anyhow::Result<Server> {
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    match &config.tls {
        Some(tls) => {
            let mut t =
                ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            if let Some(ca) = &tls.client_ca_pem {
                t = t
                    .client_ca_root(Certificate::from_pem(ca))
                    .client_auth_optional(true);
            }
            builder = builder
                .tls_config(t)
                .map_err(|e| anyhow::anyhow!("bad TLS configuration: {e}"))?;
            tracing::info!(
                mutual = tls.client_ca_pem.is_some(),
                "serving gRPC over TLS"
            );
        }
        None => tracing::warn!(
            "serving gRPC in plaintext (--plaintext): traffic and tokens can be read on the network"
        ),
    }
    Ok(builder)
}

/// Aborts a task when dropped (when [`run_on`] returns, however it returns).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
