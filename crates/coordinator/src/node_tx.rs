//! Where the core's frames to nodes go: a node's own `Join` stream, or its
//! member slot on a shared `JoinGroup` stream. [`ChannelOutbox`] is the
//! [`Outbox`] of the running coordinator; how a stream ends with an error is
//! said here, with its status from [`smsmesh::Error`].

use rustc_hash::FxHashMap;
use smsmesh::{Error, pb};
use tokio::sync::mpsc;
use tonic::Status;

use crate::core::{Outbox, SessionId, Unreachable};

/// Where the core writes a node's frames.
pub enum NodeTx {
    /// The node's own `Join` stream: a bounded queue (credits bound its job frames).
    Stream(mpsc::Sender<Result<pb::CoordinatorToNode, Status>>),
    /// A member of a `JoinGroup` stream: the group's queue, and the member's number.
    Member {
        /// The group stream's queue, shared by its members (bounded: a group
        /// that does not read its stream loses its members).
        group: mpsc::Sender<pb::MemberDown>,
        /// The member's number on that stream.
        member: u32,
    },
}

impl NodeTx {
    fn send(&self, frame: pb::CoordinatorToNode) -> Result<(), Unreachable> {
        match self {
            NodeTx::Stream(tx) => tx.try_send(Ok(frame)).map_err(|_| Unreachable),
            NodeTx::Member { group, member } => group
                .try_send(pb::MemberDown {
                    member: *member,
                    frame: Some(frame),
                    closed: None,
                })
                .map_err(|_| Unreachable),
        }
    }

    /// Ends the node's stream, with `error` as its status if there is one.
    fn close(self, error: Option<Error>) {
        let status = error.map(Status::from);
        match self {
            NodeTx::Stream(tx) => {
                if let Some(status) = status {
                    let _ = tx.try_send(Err(status));
                }
            }
            NodeTx::Member { group, member } => {
                let _ = group.try_send(member_closed(member, status.as_ref()));
            }
        }
    }
}

/// The frame that ends member `member` of a group stream, with `status` if it
/// is an error (code 0 otherwise), as its own `Join` stream would end.
pub fn member_closed(member: u32, status: Option<&Status>) -> pb::MemberDown {
    let (code, message) = status
        .map(|s| (s.code() as i32, s.message().to_string()))
        .unwrap_or_default();
    pb::MemberDown {
        member,
        frame: None,
        closed: Some(pb::MemberClosed { code, message }),
    }
}

/// The outbox of the running coordinator: one queue per node stream.
#[derive(Default)]
pub struct ChannelOutbox {
    txs: FxHashMap<SessionId, NodeTx>,
}

impl ChannelOutbox {
    /// Session `sid` writes to `tx` from now on.
    pub fn open(&mut self, sid: SessionId, tx: NodeTx) {
        self.txs.insert(sid, tx);
    }

    /// Forgets session `sid` without closing anything (its Hello was refused:
    /// the handler answers with the error).
    pub fn forget(&mut self, sid: SessionId) {
        self.txs.remove(&sid);
    }
}

impl Outbox for ChannelOutbox {
    fn send(&mut self, session: SessionId, msg: pb::CoordinatorToNode) -> Result<(), Unreachable> {
        match self.txs.get(&session) {
            Some(tx) => tx.send(msg),
            None => Err(Unreachable),
        }
    }

    fn close(&mut self, session: SessionId, error: Option<Error>) {
        if let Some(tx) = self.txs.remove(&session) {
            tx.close(error);
        }
    }
}
