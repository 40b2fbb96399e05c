//! The simulated Raft network: openraft's `RaftNetworkFactory`/`RaftNetworkV2` in memory.
//!
//! Each RPC is two legs, request and response, and each leg's fate comes from
//! [`Shared::fate`]: a per-link delay (1–4 ms, a hash of seed and link) plus 0–2 ms jitter,
//! plus a share of the delay storm; loss; cuts (one-way cuts drop one direction only, so a
//! request may arrive and its answer not). A lost or cut leg leaves the caller waiting until
//! the RPC's soft TTL, then it gets a network error (a TCP timeout). A request to a machine
//! that is down fails at once as `Unreachable` (connection refused), and so does one whose
//! destination crashed while it was on its way. The handler runs on the receiver's `Raft`
//! handle of the boot the request was sent to.

use std::future::Future;
use std::time::Duration;

use shoal_consensus::openraft::error::NetworkError;
use shoal_consensus::openraft::error::RPCError;
use shoal_consensus::openraft::error::ReplicationClosed;
use shoal_consensus::openraft::error::StreamingError;
use shoal_consensus::openraft::error::Unreachable;
use shoal_consensus::openraft::network::RPCOption;
use shoal_consensus::openraft::raft::AppendEntriesRequest;
use shoal_consensus::openraft::raft::AppendEntriesResponse;
use shoal_consensus::openraft::raft::SnapshotResponse;
use shoal_consensus::openraft::raft::VoteRequest;
use shoal_consensus::openraft::raft::VoteResponse;
use shoal_consensus::openraft::OptionalSend;
use shoal_consensus::openraft::RaftNetworkFactory;
use shoal_consensus::openraft::RaftNetworkV2;
use shoal_consensus::types::Snapshot;
use shoal_consensus::types::SnapshotData;
use shoal_consensus::types::Vote;
use shoal_consensus::RaftNodeId;
use shoal_consensus::ShoalNode;
use shoal_consensus::TypeConfig;

use super::world::slot_of;
use super::world::Fate;
use super::world::Shared;
use super::Raft;

/// Why an RPC failed, before it becomes openraft's error type.
enum Failure {
    Unreachable(String),
    Timeout(String),
    Remote(String),
}

/// One node's view of the network.
#[derive(Clone)]
pub(crate) struct SimNet {
    pub from: usize,
    pub world: Shared,
}

pub(crate) struct Conn {
    from: usize,
    to: usize,
    world: Shared,
}

impl RaftNetworkFactory<TypeConfig> for SimNet {
    type Network = Conn;

    async fn new_client(&mut self, target: RaftNodeId, _node: &ShoalNode) -> Conn {
        Conn { from: self.from, to: slot_of(&target.0), world: self.world.clone() }
    }
}

impl Conn {
    async fn call<Req, Resp, F, Fut, E>(&self, req: Req, ttl: Duration, handler: F) -> Result<Resp, Failure>
    where
        F: FnOnce(Raft, Req) -> Fut,
        Fut: Future<Output = Result<Resp, E>>,
        E: std::fmt::Display,
    {
        let started = tokio::time::Instant::now();
        let timeout = |what: &str| Failure::Timeout(format!("n{} -> n{}: {what}", self.from, self.to));
        let incarnation = match self.world.fate(self.from, self.to) {
            Fate::Down => return Err(Failure::Unreachable(format!("n{} is down", self.to))),
            Fate::Cut | Fate::Lost => {
                tokio::time::sleep_until(started + ttl).await;
                return Err(timeout("request lost"));
            }
            Fate::Deliver { delay_ms, incarnation } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                incarnation
            }
        };
        let Some(peer) = self.world.arrive(self.to, incarnation) else {
            return Err(Failure::Unreachable(format!("n{} crashed", self.to)));
        };
        let resp = handler(peer, req).await.map_err(|e| Failure::Remote(e.to_string()))?;
        match self.world.fate(self.to, self.from) {
            Fate::Deliver { delay_ms, .. } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                Ok(resp)
            }
            // The caller is down: its task is on its way out; whatever it hears does not matter.
            Fate::Down => Err(Failure::Unreachable("caller is down".into())),
            Fate::Cut | Fate::Lost => {
                tokio::time::sleep_until(started + ttl).await;
                Err(timeout("response lost"))
            }
        }
    }
}

fn rpc_error(f: Failure) -> RPCError<TypeConfig> {
    match f {
        Failure::Unreachable(s) => RPCError::Unreachable(Unreachable::from_string(s)),
        Failure::Timeout(s) | Failure::Remote(s) => RPCError::Network(NetworkError::from_string(s)),
    }
}

fn streaming_error(f: Failure) -> StreamingError<TypeConfig> {
    match f {
        Failure::Unreachable(s) => StreamingError::Unreachable(Unreachable::from_string(s)),
        Failure::Timeout(s) | Failure::Remote(s) => StreamingError::Network(NetworkError::from_string(s)),
    }
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(rpc, option.soft_ttl(), |peer, rpc| async move { peer.append_entries(rpc).await }).await.map_err(rpc_error)
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(rpc, option.soft_ttl(), |peer, rpc| async move { peer.vote(rpc).await }).await.map_err(rpc_error)
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(rpc, option.soft_ttl(), |peer, rpc| async move { peer.pre_vote(rpc).await }).await.map_err(rpc_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        self.call((vote, snapshot), option.soft_ttl(), |peer, (vote, snapshot)| async move { peer.install_full_snapshot(vote, snapshot).await })
            .await
            .map_err(streaming_error)
    }
}

/// One request/response exchange from `from` to `to` over the simulated network (both legs
/// meet the same fates as Raft's RPCs), handled by `handler` on the receiver's running Raft
/// handle: the join protocol and writes forwarded to the leader use it.
pub(crate) async fn exchange<Req, Resp, F, Fut>(world: &Shared, from: usize, to: usize, req: Req, ttl: Duration, handler: F) -> Result<Resp, String>
where
    F: FnOnce(Raft, Req) -> Fut,
    Fut: Future<Output = Result<Resp, String>>,
{
    let conn = Conn { from, to, world: world.clone() };
    conn.call(req, ttl, handler).await.map_err(|f| match f {
        Failure::Unreachable(s) | Failure::Timeout(s) | Failure::Remote(s) => s,
    })
}
