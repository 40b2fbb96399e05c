//! The openraft type configuration for shoal: node id, node info, entry payload, response,
//! runtime, and short aliases for the openraft types the rest of the crate uses.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;
use serde::Serialize;
use shoal_wire::NodeId;

use crate::runtime::ShoalRuntime;
use crate::state::Command;
use crate::state::Response;

/// A node's id as openraft sees it: shoal's full 128-bit [`NodeId`], unchanged.
///
/// openraft 0.10 only asks a node id to be `Ord + Hash + Display + Debug + Clone` (+ serde), so
/// the 128-bit id is used as is: no truncation to `u64` (which would need a collision check and
/// a mapping table). The wrapper exists because this crate must implement foreign traits for
/// it (`Display` as full hex, and in tests `From<u64>`, which openraft's storage suite needs).
/// It serializes exactly like [`NodeId`] (16 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RaftNodeId(pub NodeId);

impl RaftNodeId {
    /// shoal's id inside.
    pub fn node_id(&self) -> NodeId {
        self.0
    }
}

impl From<NodeId> for RaftNodeId {
    fn from(id: NodeId) -> Self {
        Self(id)
    }
}

impl From<RaftNodeId> for NodeId {
    fn from(id: RaftNodeId) -> Self {
        id.0
    }
}

impl fmt::Display for RaftNodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for RaftNodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Test numbering: `n` in the last 8 bytes, big-endian, so small numbers sort like integers.
/// Only for tests (openraft's storage suite builds node ids from `u64`); real ids come from
/// the node's key.
#[cfg(test)]
impl From<u64> for RaftNodeId {
    fn from(n: u64) -> Self {
        let mut bytes = [0u8; 16];
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        Self(NodeId(bytes))
    }
}

/// What Raft stores about each member (voter or learner) in its membership config: enough
/// to dial it. Richer facts about a node live in the replicated [`crate::ClusterState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoalNode {
    /// Human name (host name), for logs and status output.
    pub name: String,
    /// The node's TCP address for Raft RPC and the API (they share one port).
    pub addr: SocketAddr,
}

impl ShoalNode {
    /// A node record for the membership config.
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            name: name.into(),
            addr,
        }
    }
}

impl fmt::Display for ShoalNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// openraft's storage suite builds memberships with default node infos; production code never
/// does, so this exists only in tests.
#[cfg(test)]
impl Default for ShoalNode {
    fn default() -> Self {
        Self {
            name: String::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

openraft::declare_raft_types!(
    /// shoal's Raft types.
    ///
    /// `LeaderId` is openraft's *standard* leader id (at most one leader per term, as in the
    /// Raft paper) rather than its default "advanced" one (several leaders per term, ordered by
    /// node id): the simulator checks "at most one leader per term" as an invariant.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = RaftNodeId,
        Node = ShoalNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, RaftNodeId>,
        AsyncRuntime = ShoalRuntime,
);

/// A log position: committed leader (term) and index.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote (term, candidate, committed flag).
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// One log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A membership config (voters and learners with their [`ShoalNode`]).
pub type Membership = openraft::Membership<RaftNodeId, ShoalNode>;
/// A membership config with the log id that introduced it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata: last included log id and membership.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// Snapshot payload: the encoded [`crate::ClusterState`] (see [`crate::codec`]).
pub type SnapshotData = Vec<u8>;
/// A snapshot as openraft passes it around.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// Metrics published by a running Raft node.
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
/// A running Raft node over state machine `SM`.
pub type ShoalRaft<SM> = openraft::Raft<TypeConfig, SM>;

/// shoal's safety settings on top of a timing config. Both the node and the simulator build
/// their openraft `Config` through this.
///
/// - **No leader restore.** openraft 0.10 by default lets a leader that restarts resume its
///   old term without an election. If that leader had replicated an entry it then lost in a
///   power cut (a log store may expose entries before they are synced), it writes a different
///   entry at the same index in the same term, and followers holding the old one keep it:
///   the log forks. The simulator's whole-node mode found this (`--whole --seed 25 --nodes 6`
///   before the fix). shoal's redb store syncs before an entry is readable, so it should not
///   be exposed, but standard Raft (a restarted node is a follower and must win a new term)
///   costs one election and removes the question.
///
/// - **Pre-Vote.** A node cut off from the others (a follower behind a partition, a Pi on
///   flaky Wi-Fi) times out again and again; without Pre-Vote each timeout raises its term,
///   and when it returns its higher term makes the healthy leader step down: a failover the
///   cluster did not need (seen on the lab: term 1 → 16 in 20 s, then leadership moved).
///   With Pre-Vote it first asks whether it *would* win, which the others refuse while they
///   hear from their leader, so its term stays put.
pub fn with_safety(config: openraft::Config) -> openraft::Config {
    openraft::Config { enable_leader_restore: Some(false), enable_pre_vote: Some(true), ..config }
}
