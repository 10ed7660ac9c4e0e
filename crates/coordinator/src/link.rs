//! The `smsmesh.v1.NodeLink` service: one bidirectional stream per node.
//!
//! The handler reads the node's Hello, registers the stream with the reactor
//! (which answers Welcome), then spawns a reader task that forwards every
//! frame to the reactor and reports when the stream ends. The outbound side
//! is a bounded queue the reactor writes with `try_send` only.
//!
//! A `JoinGroup` stream carries many nodes (members) of one process. Its
//! reader registers each member at its Hello and forwards the frames of one
//! group frame as one event; the members' outbound frames share one queue,
//! and what is queued when the stream can write goes out as one group frame.

use std::time::Duration;

use rustc_hash::FxHashMap;
use smsmesh::Error;
use smsmesh::pb::{self, node_to_coordinator};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use smsmesh::client::JOIN_TOKEN_METADATA;

use crate::auth::TokenBucket;
use crate::core::SessionId;
use crate::node_tx::{NodeTx, member_closed};
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
    type JoinGroupStream = GroupDownStream;

    async fn join_group(
        &self,
        request: Request<Streaming<pb::GroupUp>>,
    ) -> Result<Response<Self::JoinGroupStream>, Status> {
        let peer = request.remote_addr();
        if let Err(status) = self.admit(&request) {
            tracing::warn!(?peer, why = %status.message(), "node group refused");
            return Err(status);
        }
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(GROUP_QUEUE);
        tracing::debug!(?peer, "node group stream open");
        let reader = GroupReader {
            core: self.core.clone(),
            tx,
            members: FxHashMap::default(),
            newest: None,
            refused: 0,
            rate: f64::from(self.max_frames_per_sec.max(1)),
        };
        tokio::spawn(reader.run(inbound));
        let frames = smsmesh::wire::packed(rx, |frames| Ok(pb::GroupDown { frames }));
        Ok(Response::new(Box::pin(frames)))
    }

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
        let sid = self.core.join(hello, NodeTx::Stream(tx)).await?;
        tracing::debug!(node = %name, ?peer, session = sid.0, "node stream open");
        let core = self.core.clone();
        let rate = f64::from(self.max_frames_per_sec.max(1));
        tokio::spawn(async move {
            let mut frames = frame_limit(rate);
            // Reader of this node's stream: lives as long as the stream.
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        if frames.take(1, std::time::Instant::now()).is_err() {
                            core.refuse_node(sid, too_many_frames(rate)).await;
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

/// A node's frame limit: at most `rate` frames a second, sustained, with
/// bursts of twice that (`--node-max-frames-per-sec`).
fn frame_limit(rate: f64) -> TokenBucket {
    TokenBucket::new(rate, (2.0 * rate) as u64, std::time::Instant::now())
}

/// Why a node that broke its frame limit is dropped.
fn too_many_frames(rate: f64) -> Error {
    Error::ResourceExhausted(format!(
        "more than {rate} frames a second from this node (--node-max-frames-per-sec)"
    ))
}

/// The outbound side of a `JoinGroup` stream.
pub type GroupDownStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::GroupDown, Status>> + Send>>;

/// Most members live at once on one group stream.
pub const MAX_MEMBERS_PER_GROUP: usize = 10_000;

/// Most frames queued to one group stream. Job frames are bounded by the
/// members' credit; the rest (acks, control) are small. A group that does not
/// read its stream fills it, and its members are dropped as a `Join` node's
/// full queue drops it.
const GROUP_QUEUE: usize = 4 * MAX_MEMBERS_PER_GROUP;

/// Most members refused on one group stream (a first frame that is not
/// Hello, or a Hello refused) before the whole stream is ended.
pub const MAX_REFUSED_MEMBERS: u32 = 64;

/// A live member of a group stream.
struct Member {
    sid: SessionId,
    /// Its frames a second, as for a node on its own stream.
    frames: TokenBucket,
}

/// Reads a `JoinGroup` stream: registers members, forwards their frames.
struct GroupReader {
    core: Handle,
    tx: mpsc::Sender<pb::MemberDown>,
    members: FxHashMap<u32, Member>,
    /// The highest member number seen: lower numbers not in `members` have ended.
    newest: Option<u32>,
    /// Members refused so far on this stream.
    refused: u32,
    rate: f64,
}

impl GroupReader {
    async fn run(mut self, mut inbound: Streaming<pb::GroupUp>) {
        let reason = loop {
            match inbound.message().await {
                Ok(Some(group)) => {
                    if !self.frames(group.frames).await {
                        return; // the reactor is gone
                    }
                    if self.refused > MAX_REFUSED_MEMBERS {
                        tracing::warn!(
                            refused = self.refused,
                            "ending a group stream that keeps sending members that are refused"
                        );
                        break format!(
                            "more than {MAX_REFUSED_MEMBERS} members refused on one group stream"
                        );
                    }
                }
                Ok(None) => break "group stream closed by the node".to_string(),
                Err(status) => break format!("group stream broke: {}", status.message()),
            }
        };
        for (_, m) in self.members.drain() {
            self.core.node_closed(m.sid, reason.clone()).await;
        }
    }

    /// Ends member `member` with `status` (it never joined), and counts it.
    fn close(&mut self, member: u32, status: &Status) {
        self.refused += 1;
        let _ = self.tx.try_send(member_closed(member, Some(status)));
    }

    /// Hands the frames gathered so far to the reactor; false if it is gone.
    async fn flush(&self, batch: &mut Vec<(SessionId, pb::NodeToCoordinator)>) -> bool {
        batch.is_empty() || self.core.node_messages(std::mem::take(batch)).await
    }

    /// Handles the member frames of one group frame; false if the reactor is gone.
    async fn frames(&mut self, frames: Vec<pb::MemberUp>) -> bool {
        let mut batch: Vec<(SessionId, pb::NodeToCoordinator)> = Vec::with_capacity(frames.len());
        let now = std::time::Instant::now();
        for up in frames {
            let Some(member) = self.members.get_mut(&up.member) else {
                if self.newest.is_some_and(|n| up.member <= n) {
                    continue; // a member that has ended: ignore what it still says
                }
                self.newest = Some(up.member);
                if up.left {
                    continue;
                }
                // Frames before this one reach the reactor first.
                if !self.flush(&mut batch).await {
                    return false;
                }
                self.join(up).await;
                continue;
            };
            if up.left {
                let sid = member.sid;
                self.members.remove(&up.member);
                if !self.flush(&mut batch).await {
                    return false;
                }
                self.core
                    .node_closed(sid, "the node ended it on its group stream".into())
                    .await;
                continue;
            }
            if member.frames.take(1, now).is_err() {
                let sid = member.sid;
                self.members.remove(&up.member);
                self.core.refuse_node(sid, too_many_frames(self.rate)).await;
                continue;
            }
            if let Some(frame) = up.frame {
                batch.push((member.sid, frame));
            }
        }
        self.flush(&mut batch).await
    }

    /// A new member: its first frame must be Hello.
    async fn join(&mut self, up: pb::MemberUp) {
        let hello = match up.frame.and_then(|f| f.update) {
            Some(node_to_coordinator::Update::Hello(h)) => h,
            _ => {
                let status =
                    Status::failed_precondition("the first frame of a group member must be Hello");
                return self.close(up.member, &status);
            }
        };
        if self.members.len() >= MAX_MEMBERS_PER_GROUP {
            let status = Status::resource_exhausted(format!(
                "a group stream carries at most {MAX_MEMBERS_PER_GROUP} members at once"
            ));
            return self.close(up.member, &status);
        }
        let name = hello.name.clone();
        let tx = NodeTx::Member {
            group: self.tx.clone(),
            member: up.member,
        };
        match self.core.join(hello, tx).await {
            Ok(sid) => {
                tracing::debug!(node = %name, member = up.member, session = sid.0, "group member joined");
                let frames = frame_limit(self.rate);
                self.members.insert(up.member, Member { sid, frames });
            }
            Err(e) => self.close(up.member, &Status::from(e)),
        }
    }
}
