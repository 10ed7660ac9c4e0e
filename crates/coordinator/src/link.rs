//! The `smsmesh.v1.NodeLink` service: one bidirectional stream per node.
//!
//! The handler reads the node's Hello, registers the stream with the reactor
//! (which answers Welcome), then spawns a reader task that forwards every
//! frame to the reactor and reports when the stream ends. The outbound side
//! is a bounded queue the reactor writes with `try_send` only.

use std::time::Duration;

use smsmesh::Error;
use smsmesh::pb::{self, node_to_coordinator};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use smsmesh::client::JOIN_TOKEN_METADATA;

use crate::reactor::Handle;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `NodeLink` gRPC service.
pub struct NodeLinkService {
    core: Handle,
    token: Option<std::sync::Arc<str>>,
    require_cert: bool,
    max_frames_per_sec: u32,
}

impl NodeLinkService {
    /// A service backed by the reactor behind `core`, admitting nodes as `config` says.
    pub fn new(core: Handle, config: &crate::Config) -> Self {
        NodeLinkService {
            core,
            token: config.node_token.clone(),
            require_cert: config.require_node_cert,
            max_frames_per_sec: config.node_max_frames_per_sec,
        }
    }

    /// Whether the stream may join: the right join token, and a client
    /// certificate when one is required (rustls already checked it against the CA).
    #[allow(clippy::result_large_err)]
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if let Some(expected) = &self.token {
            let presented = request
                .metadata()
                .get(JOIN_TOKEN_METADATA)
                .ok_or_else(|| {
                    Status::unauthenticated(format!(
                        "this coordinator requires a join token (`{JOIN_TOKEN_METADATA}` metadata; smsnode --join-token-file)"
                    ))
                })?
                .as_bytes();
            if !crate::auth::same_secret(presented, expected.as_bytes()) {
                return Err(Status::unauthenticated("wrong join token"));
            }
        }
        if self.require_cert && request.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::unauthenticated(
                "this coordinator requires nodes to present a client certificate (mutual TLS)",
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::node_link_server::NodeLink for NodeLinkService {
    type JoinStream = ReceiverStream<Result<pb::CoordinatorToNode, Status>>;

    async fn join(
        &self,
        request: Request<Streaming<pb::NodeToCoordinator>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let peer = request.remote_addr();
        if let Err(status) = self.admit(&request) {
            tracing::warn!(?peer, why = %status.message(), "node refused");
            return Err(status);
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no Hello within 10 s of opening the stream")
            })??;
        let hello = match first {
            Some(pb::NodeToCoordinator {
                update: Some(node_to_coordinator::Update::Hello(h)),
            }) => h,
            Some(_) => {
                return Err(Error::FailedPrecondition(
                    "the first message on the stream must be Hello".into(),
                )
                .into());
            }
            None => return Err(Error::invalid("stream closed before Hello").into()),
        };
        // Credits bound the job frames in the queue; leave room for acks and control frames.
        let capacity = (hello.concurrency as usize)
            .saturating_mul(2)
            .clamp(64, 1 << 20);
        let (tx, rx) = mpsc::channel(capacity);
        let name = hello.name.clone();
        let sid = self.core.join(hello, tx).await?;
        tracing::debug!(node = %name, ?peer, session = sid.0, "node stream open");
        let core = self.core.clone();
        let rate = f64::from(self.max_frames_per_sec.max(1));
        tokio::spawn(async move {
            // At most `rate` frames a second, sustained, with bursts of twice that.
            let mut frames =
                crate::auth::TokenBucket::new(rate, (2.0 * rate) as u64, std::time::Instant::now());
            // Reader of this node's stream: lives as long as the stream.
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        if frames.take(1, std::time::Instant::now()).is_err() {
                            let status = Status::resource_exhausted(format!(
                                "more than {rate} frames a second from this node (--node-max-frames-per-sec)"
                            ));
                            core.refuse_node(sid, status).await;
                            return;
                        }
                        if !core.node_message(sid, msg).await {
                            return;
                        }
                    }
                    Ok(None) => break "stream closed by the node".to_string(),
                    Err(status) => break format!("stream broke: {}", status.message()),
                }
            };
            core.node_closed(sid, reason).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
