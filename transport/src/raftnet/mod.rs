//! The Raft network: openraft's RPCs between nodes over TCP with mutual TLS (design section
//! 3, issue 3), on the node's one TCP port (the gossip port number; ALPN `shoal-raft/1`).
//!
//! Layout:
//! - [`rpc`]: the messages, carried in the shared [`crate::frame`] (`u32` big-endian
//!   length + a body encoded with `shoal_wire`, under
//!   [`shoal_consensus::codec::MAX_RPC_BYTES`]): the [`rpc::Request`] and [`rpc::Response`]
//!   enums, each frame tagged with a request id so several RPCs share one connection.
//! - [`server`]: [`RaftService`] (mounted on the node's port; [`RaftServer`] alone on a
//!   port of its own for tests): runs [`MutualTls::accept_started`](crate::pki::MutualTls::accept_started) (cluster CA only,
//!   revoked ids refused), then serves frames by calling the local `Raft`. A cap on
//!   connections, a cap on requests in flight per connection, an idle timeout between frames
//!   and a timeout per frame. A bad frame (too long, truncated, undecodable) closes that
//!   connection only; it is logged at debug and counted in [`NetStats`].
//! - [`client`]: [`RaftNetwork`], openraft's `RaftNetworkFactory` + `RaftNetworkV2` for
//!   [`shoal_consensus::TypeConfig`]: one multiplexed connection per target for
//!   AppendEntries/heartbeats/votes and one for snapshots (so a large snapshot never
//!   delays a heartbeat), opened with [`MutualTls::connect`](crate::pki::MutualTls::connect) naming the target's node id,
//!   reopened after any error.
//!
//! Error mapping (what openraft sees): no TCP connection, a refused handshake, a lost
//! connection or a remote Raft that is shut down are `Unreachable` (openraft backs off); no
//! answer within the RPC's soft TTL is `Timeout` (and the connection is dropped, so a peer
//! that vanished without a FIN is redialled); a message that cannot be encoded within the
//! limit, or a peer answering out of protocol, is `NetworkError`.
//!
//! Revocation: the TLS layer refuses revoked ids at each handshake; the server also checks
//! its [`ServerConfig::revoked`] set before every request, so a connection opened before
//! the revocation is closed at its next request. The client side relies on the handshake
//! (and [`RaftNetwork::close_all`]); a revoked voter is expected to leave the membership.


pub mod authz;
pub mod client;
pub mod rpc;
pub mod server;

#[cfg(test)]
mod tests;

pub use client::{ClientConfig, RaftNetwork};
pub use server::{RaftRpc, RaftServer, RaftService, ServerConfig};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the Raft network could not start (per-connection problems never surface here: they
/// close that connection and are counted in [`NetStats`]).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen for Raft on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the Raft listener's address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// Counters of one endpoint (a server, or a client factory). Every refused or dropped
/// connection is counted under its reason; nothing is logged above debug per connection,
/// so a flood of garbage cannot flood the log.
#[derive(Debug, Default)]
pub struct NetStats {
    /// TCP connections accepted (server) or opened (client).
    pub connections: AtomicU64,
    /// Server: connections dropped at once because the connection cap was reached.
    pub over_capacity: AtomicU64,
    /// TLS handshakes that failed (refused certificate, garbage, timeout).
    pub handshakes_failed: AtomicU64,
    /// Frames whose length prefix exceeds the limit (connection closed before reading on).
    pub frames_too_large: AtomicU64,
    /// Frames cut short by the end of the connection.
    pub frames_truncated: AtomicU64,
    /// Frames whose body does not decode (connection closed).
    pub frames_undecodable: AtomicU64,
    /// Server: connections closed for silence (idle timeout) or a frame too slow to arrive.
    pub timeouts: AtomicU64,
    /// Server: open connections closed because their peer was revoked since its handshake.
    pub revoked: AtomicU64,
    /// Server: connections closed for a request its peer may not send (`authz`: speaking
    /// as another node, running for leader without being a voter, or leading over a
    /// certificate that is not a manager's).
    pub refused: AtomicU64,
    /// Requests answered (server) or RPCs that got an answer (client).
    pub rpcs_ok: AtomicU64,
    /// Client: RPCs that failed (unreachable, timeout, protocol error).
    pub rpcs_failed: AtomicU64,
}

/// A copy of [`NetStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStatsSnapshot {
    pub connections: u64,
    pub over_capacity: u64,
    pub handshakes_failed: u64,
    pub frames_too_large: u64,
    pub frames_truncated: u64,
    pub frames_undecodable: u64,
    pub timeouts: u64,
    pub revoked: u64,
    pub refused: u64,
    pub rpcs_ok: u64,
    pub rpcs_failed: u64,
}

impl NetStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> NetStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStatsSnapshot {
            connections: get(&self.connections),
            over_capacity: get(&self.over_capacity),
            handshakes_failed: get(&self.handshakes_failed),
            frames_too_large: get(&self.frames_too_large),
            frames_truncated: get(&self.frames_truncated),
            frames_undecodable: get(&self.frames_undecodable),
            timeouts: get(&self.timeouts),
            revoked: get(&self.revoked),
            refused: get(&self.refused),
            rpcs_ok: get(&self.rpcs_ok),
            rpcs_failed: get(&self.rpcs_failed),
        }
    }
}
