//! Many nodes of one process over one `JoinGroup` stream.
//!
//! Each node (a member) speaks the same protocol as on its own `Join` stream,
//! but its frames are tagged with its member number and packed with the
//! other members' frames: whatever is queued when the stream can write goes
//! out as one group frame, so many small nodes cost the coordinator and the
//! connection about what one big node does. A [`Group`] opens the stream when
//! the first member attaches, routes what comes down it to its members, and
//! opens a new one when a member attaches after the old one ended.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use smsmesh::pb;
use tokio::sync::mpsc;
use tonic::{Code, Status};

type MemberTx = mpsc::UnboundedSender<Result<pb::CoordinatorToNode, Status>>;

/// Where the frames coming down a group stream go, by member number.
#[derive(Default)]
struct Routes {
    members: FxHashMap<u32, MemberTx>,
    /// Cleared when the stream ends: members attach to a new one then.
    open: bool,
}

/// One open group stream.
struct Live {
    up: mpsc::UnboundedSender<pb::MemberUp>,
    routes: Arc<Mutex<Routes>>,
}

/// A group stream shared by the nodes of a process (see the module doc).
pub struct Group {
    /// One channel per coordinator address; streams open on the current one.
    channels: Vec<tonic::transport::Channel>,
    /// The address tried next: moves on when a stream cannot be opened.
    current: std::sync::atomic::AtomicUsize,
    join_token: Option<tonic::metadata::AsciiMetadataValue>,
    live: tokio::sync::Mutex<Option<Live>>,
    /// Member numbers only grow, across streams too.
    next_member: AtomicU32,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("members_so_far", &self.next_member.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Group {
    /// A group over `channels` (which may connect lazily), one per
    /// coordinator address, presenting `join_token`. A stream that cannot be
    /// opened (a standby refuses, a dead coordinator does not answer) is tried
    /// next on the following address.
    pub fn new(
        channels: Vec<tonic::transport::Channel>,
        join_token: Option<&str>,
    ) -> Result<Arc<Self>, String> {
        let join_token = join_token
            .map(smsmesh::client::join_token_value)
            .transpose()?;
        if channels.is_empty() {
            return Err("no coordinator address".into());
        }
        Ok(Arc::new(Group {
            channels,
            current: std::sync::atomic::AtomicUsize::new(0),
            join_token,
            live: tokio::sync::Mutex::new(None),
            next_member: AtomicU32::new(0),
        }))
    }

    /// A new member on the group stream (opened first if there is none): its
    /// outbound and inbound sides, as a `Join` stream's would be. Fails as
    /// opening a `Join` stream would (no connection, a refused join token).
    pub(crate) async fn attach(&self) -> Result<(Outbound, Inbound), Status> {
        let mut live = self.live.lock().await;
        let usable = live
            .as_ref()
            .is_some_and(|l| !l.up.is_closed() && l.routes.lock().map(|r| r.open).unwrap_or(false));
        if !usable {
            *live = None;
            let at = self.current.load(Ordering::Relaxed);
            match self.open(&self.channels[at % self.channels.len()]).await {
                Ok(l) => *live = Some(l),
                Err(s) => {
                    self.current.store(at.wrapping_add(1), Ordering::Relaxed);
                    return Err(s);
                }
            }
        }
        let live = live.as_ref().expect("opened above");
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        live.routes
            .lock()
            .map_err(|_| Status::internal("group routes poisoned"))?
            .members
            .insert(member, tx);
        let slot = MemberSlot {
            up: live.up.clone(),
            member,
            routes: live.routes.clone(),
        };
        Ok((Outbound::Member(slot), Inbound::Member(rx)))
    }

    async fn open(&self, channel: &tonic::transport::Channel) -> Result<Live, Status> {
        let (up, up_rx) = mpsc::unbounded_channel();
        let frames = smsmesh::wire::packed(up_rx, |frames| pb::GroupUp { frames });
        let mut request = tonic::Request::new(frames);
        if let Some(token) = &self.join_token {
            request
                .metadata_mut()
                .insert(smsmesh::client::JOIN_TOKEN_METADATA, token.clone());
        }
        let mut client = pb::node_link_client::NodeLinkClient::new(channel.clone())
            .max_decoding_message_size(64 << 20);
        let inbound = client.join_group(request).await?.into_inner();
        let routes = Arc::new(Mutex::new(Routes {
            members: FxHashMap::default(),
            open: true,
        }));
        tokio::spawn(route(inbound, routes.clone()));
        Ok(Live { up, routes })
    }
}

/// Hands what comes down the group stream to its members until it ends.
async fn route(mut inbound: tonic::Streaming<pb::GroupDown>, routes: Arc<Mutex<Routes>>) {
    let end = loop {
        match inbound.message().await {
            Ok(Some(group)) => {
                let Ok(mut routes) = routes.lock() else {
                    return;
                };
                for down in group.frames {
                    if let Some(closed) = down.closed {
                        // The member's stream ends here, as a `Join` stream would.
                        if let Some(tx) = routes.members.remove(&down.member)
                            && closed.code != Code::Ok as i32
                        {
                            let _ = tx.send(Err(Status::new(closed.code.into(), closed.message)));
                        }
                    } else if let (Some(frame), Some(tx)) =
                        (down.frame, routes.members.get(&down.member))
                    {
                        let _ = tx.send(Ok(frame));
                    }
                }
            }
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    if let Ok(mut routes) = routes.lock() {
        routes.open = false;
        for (_, tx) in routes.members.drain() {
            if let Some(status) = &end {
                let _ = tx.send(Err(status.clone()));
            }
        }
    }
}

/// A member's place on a group stream; ending it (drop) tells the coordinator.
pub(crate) struct MemberSlot {
    up: mpsc::UnboundedSender<pb::MemberUp>,
    member: u32,
    routes: Arc<Mutex<Routes>>,
}

impl Drop for MemberSlot {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.members.remove(&self.member);
        }
        let _ = self.up.send(pb::MemberUp {
            member: self.member,
            frame: None,
            left: true,
        });
    }
}

/// The stream closed: no frame can be sent on it any more.
#[derive(Debug)]
pub(crate) struct Closed;

/// Where a node's frames go: its own stream or its group's.
pub(crate) enum Outbound {
    /// A `Join` stream of its own.
    Own(mpsc::Sender<pb::NodeToCoordinator>),
    /// A member of a group stream.
    Member(MemberSlot),
}

impl Outbound {
    pub(crate) async fn send(&self, frame: pb::NodeToCoordinator) -> Result<(), Closed> {
        match self {
            Outbound::Own(tx) => tx.send(frame).await.map_err(|_| Closed),
            Outbound::Member(slot) => slot
                .up
                .send(pb::MemberUp {
                    member: slot.member,
                    frame: Some(frame),
                    left: false,
                })
                .map_err(|_| Closed),
        }
    }
}

/// Where a node's frames come from: its own stream or its group's.
pub(crate) enum Inbound {
    /// A `Join` stream of its own.
    Own(Box<tonic::Streaming<pb::CoordinatorToNode>>),
    /// A member of a group stream.
    Member(mpsc::UnboundedReceiver<Result<pb::CoordinatorToNode, Status>>),
}

impl Inbound {
    /// The next frame; `None` when the stream ended without error.
    pub(crate) async fn message(&mut self) -> Result<Option<pb::CoordinatorToNode>, Status> {
        match self {
            Inbound::Own(s) => s.message().await,
            Inbound::Member(rx) => rx.recv().await.transpose(),
        }
    }
}
