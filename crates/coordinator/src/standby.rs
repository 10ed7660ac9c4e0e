//! What a standby coordinator serves while another leads: health (the API,
//! `smsmesh.v1.Coordinator`, NOT_SERVING, so readiness checks route traffic
//! to the leader; the process itself, `""`, SERVING, so liveness checks leave
//! it running) and, for the client API and the node
//! link, UNAVAILABLE with a message naming the leader, so callers and nodes
//! given several coordinator addresses move on to the next.

use std::convert::Infallible;
use std::future::Ready;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use smsmesh::pb::coordinator_server::CoordinatorServer;
use smsmesh::pb::node_link_server::NodeLinkServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;

use crate::api::CoordinatorApi;
use crate::link::NodeLinkService;

/// Answers every call of the gRPC service `S` names with UNAVAILABLE.
struct Refuse<S> {
    leader: watch::Receiver<String>,
    service: PhantomData<fn() -> S>,
}

impl<S> Clone for Refuse<S> {
    fn clone(&self) -> Self {
        Refuse {
            leader: self.leader.clone(),
            service: PhantomData,
        }
    }
}

impl<S: NamedService> NamedService for Refuse<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for Refuse<S> {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Request<B>) -> Self::Future {
        let leader = self.leader.borrow().clone();
        let who = if leader.is_empty() {
            "no coordinator leads yet".to_string()
        } else {
            format!("the leader is {leader}")
        };
        std::future::ready(Ok(tonic::Status::unavailable(format!(
            "{} ({who}); try another coordinator address",
            smsmesh::client::STANDBY
        ))
        .into_http()))
    }
}

fn refuse<S>(leader: &watch::Receiver<String>) -> Refuse<S> {
    Refuse {
        leader: leader.clone(),
        service: PhantomData,
    }
}

/// A running standby server; [`Standby::stop`] ends it.
pub struct Standby {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Standby {
    /// Serves the standby's answers on `listener` (a duplicate of the
    /// coordinator's, so the port stays bound when it stops).
    pub async fn start(
        listener: TcpListener,
        config: &crate::Config,
        leader: watch::Receiver<String>,
    ) -> anyhow::Result<Standby> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_not_serving::<CoordinatorServer<CoordinatorApi>>()
            .await;
        // The process itself ("", what liveness checks ask) stays SERVING.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve = crate::server::builder(config)?
            .add_service(health_service)
            .add_service(refuse::<CoordinatorServer<CoordinatorApi>>(&leader))
            .add_service(refuse::<NodeLinkServer<NodeLinkService>>(&leader))
            .serve_with_incoming_shutdown(crate::server::incoming(listener, config), async {
                let _ = stopped.await;
            });
        let task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "standby server ended");
            }
        });
        Ok(Standby { stop, task })
    }

    /// Stops answering (calls in progress get a moment to end).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await;
    }
}
