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

use crate::reactor::Handle;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `NodeLink` gRPC service.
pub struct NodeLinkService {
    core: Handle,
}

impl NodeLinkService {
    /// A service backed by the reactor behind `core`.
    pub fn new(core: Handle) -> Self {
        NodeLinkService { core }
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
        tokio::spawn(async move {
            // Reader of this node's stream: lives as long as the stream.
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
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
