//! The Raft wire protocol, carried in [`crate::frame`]s of at most
//! [`MAX_RPC_BYTES`](shoal_consensus::codec::MAX_RPC_BYTES): a request body is a
//! [`RequestFrame`] (id + [`Request`]), an answer a [`ResponseFrame`] (the same id +
//! [`Response`]); ids let several RPCs share a connection and be answered in any order.

use serde::{Deserialize, Serialize};
use shoal_consensus::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use shoal_consensus::types::{SnapshotData, SnapshotMeta, Vote};
use shoal_consensus::Command;
use shoal_consensus::TypeConfig;
use shoal_wire::NodeId;


/// One RPC, as the client sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    /// A whole snapshot in one message (openraft 0.10's `full_snapshot`).
    FullSnapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: SnapshotData,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// A write proposed by a node that is not the leader (a join it answered, a CLI command
    /// given to it): the leader proposes it and answers once it is committed and applied.
    Forward(Command),
}

/// A forwarded write, committed and applied on the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The state machine's answer.
    pub response: shoal_consensus::Response,
    /// The entry's log index: the forwarding node waits until it has applied it too, so a
    /// client reads its own write from the node it asked.
    pub index: u64,
}

/// Why a forwarded write was not committed by the node it was sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardRefused {
    /// That node is not the leader; it names the leader if it knows one.
    #[error("not the leader (leader: {})", leader.map_or_else(|| "unknown".to_string(), |l| l.to_string()))]
    NotLeader { leader: Option<NodeId> },
    /// The leader could not commit it (lost leadership meanwhile, shutting down, too large).
    #[error("the leader could not commit the write: {0}")]
    Failed(String),
    /// The leader refused it: the sender may not make this write (`authz::check_forward`).
    #[error("the leader refused the write: {0}")]
    NotAllowed(String),
}

impl Request {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::AppendEntries(_) => "append_entries",
            Request::Vote(_) => "vote",
            Request::PreVote(_) => "pre_vote",
            Request::FullSnapshot { .. } => "full_snapshot",
            Request::TransferLeader(_) => "transfer_leader",
            Request::Forward(_) => "forward",
        }
    }
}

/// The answer of the server's Raft to one [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    /// The answer to `Vote` and to `PreVote`.
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    /// The answer to `Forward`: the state machine's response, or why it was not committed.
    Forwarded(Result<Committed, ForwardRefused>),
    /// The local Raft could not handle the request (it is shutting down or stopped on a
    /// fatal error). The client treats the node as unreachable.
    Unavailable(String),
}

/// A request with the id its answer will carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    pub request: Request,
}

/// An answer with the id of its request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub response: Response,
}
