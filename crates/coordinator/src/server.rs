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
use crate::link::NodeLinkService;
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
/// from the store, or empty.
fn open(config: Config) -> anyhow::Result<(Option<Store>, Core)> {
    let Some(dir) = &config.data_dir else {
        tracing::warn!("no data dir: batches are kept in memory only and lost on restart");
        return Ok((None, Core::new(config)));
    };
    let store = Store::open_with_cache(dir, config.create_store, config.store_cache_mib)?;
    let loaded = store.load()?;
    let n = loaded.batches.len();
    let core = Core::recover(config, loaded, std::time::Instant::now());
    tracing::info!(path = %store.path().display(), batches = n, "store opened");
    Ok((Some(store), core))
}

/// [`run`], also serving Prometheus metrics at `/metrics` on `metrics`.
pub async fn run_with_metrics(
    config: Config,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    // Opening and loading a store can take seconds: not on the runtime's workers.
    let (store, core) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open(config)).await??
    };
    let (core, mut reactor_task) = reactor::spawn(core, store.clone());
    // What /healthz says: serving until shutdown begins.
    let serving = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let _metrics = metrics.map(|listener| {
        let serving = serving.clone();
        smsmesh::metrics::spawn(listener, core.metrics_registry(), move || {
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
    let api = InterceptedService::new(
        CoordinatorServer::new(CoordinatorApi::new(core.clone(), config.clone()))
            .max_decoding_message_size(config.max_request_bytes),
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
    let mut builder = Server::builder();
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
    let timeout = config.handshake_timeout;
    let incoming = futures::StreamExt::map(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        move |accepted| accepted.map(|s| crate::incoming::Timely::new(s, timeout)),
    );
    let serve = builder
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(link)
        .serve_with_incoming_shutdown(incoming, stop);
    let mut serve = std::pin::pin!(serve);
    let reactor_result = tokio::select! {
        r = &mut serve => {
            r?;
            reactor_task.await
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
    match reactor_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("the store failed: {e}")),
        Err(e) => Err(anyhow::anyhow!("reactor task failed: {e}")),
    }
}
