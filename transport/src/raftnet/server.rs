//! The server side of the Raft network: accept TCP on the Raft port, authenticate the peer
//! with mutual TLS, then answer frames by calling the local Raft.
//!
//! [`RaftService`] is mounted on the node's one TCP port (`crate::port`) under the ALPN
//! `shoal-raft/1`. Each connection is one task (plus one task per request in flight, at
//! most [`ServerConfig::max_in_flight`]); the service serves at most
//! [`ServerConfig::max_connections`] at once (past it, closed before the rest of the
//! handshake). All tasks belong to the port: dropping it closes every connection.
//! [`RaftServer`] is the service alone on a port of its own (tests and benches).

use super::rpc::{Committed, ForwardRefused, Request, RequestFrame, Response, ResponseFrame};
use crate::frame::{self, FrameError, ReadTimeouts};
use shoal_consensus::openraft::error::{ClientWriteError, RaftError};
use shoal_consensus::{Command, ProposeError};
use super::{NetError, NetStats, NetStatsSnapshot};
use crate::pki::tls::RAFT_ALPN;
use crate::pki::{MutualTls, Revocations};
use crate::port::{Gate, PortConfig, PortError, PortServer};
use shoal_consensus::codec::MAX_RPC_BYTES;
use shoal_consensus::openraft::storage::RaftStateMachine;
use shoal_consensus::types::{ShoalRaft, Snapshot, SnapshotData};
use shoal_consensus::TypeConfig;
use shoal_wire::NodeId;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::StartHandshake;

/// Limits of a [`RaftServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once (each peer needs two: RPCs and snapshots).
    pub max_connections: usize,
    /// Requests of one connection handled at once; past it the server stops reading that
    /// connection until one finishes (back-pressure, no queue).
    pub max_in_flight: usize,
    /// A connection silent for this long between frames is closed (the client redials).
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this time from its first byte. Bounds how long a
    /// slow or stalled peer holds a connection slot; must allow a full snapshot
    /// ([`MAX_RPC_BYTES`]) over the slowest link.
    pub frame_timeout: Duration,
    /// The revoked set the TLS endpoint checks at each handshake; the server also checks it
    /// before each request, so a revocation cuts connections that are already open.
    pub revoked: Option<Revocations>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 128,
            max_in_flight: 16,
            idle_timeout: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(60),
            revoked: None,
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the server needs from the local Raft: an answer to each request. Implemented for
/// every [`ShoalRaft`]; tests can put a double behind it.
pub trait RaftRpc: Send + Sync + 'static {
    fn handle(&self, request: Request) -> BoxFuture<'_, Response>;
    /// The voters of this node's current membership config (joint: of both configs);
    /// empty while it knows none. What [`super::authz::check`] checks requests against.
    fn voters(&self) -> BTreeSet<NodeId>;
    /// Voters and learners, for [`shoal_control::check_forward`].
    fn membership(&self) -> shoal_control::MembershipView;
}

impl<SM> RaftRpc for ShoalRaft<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    fn handle(&self, request: Request) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            let unavailable = |e: &dyn std::fmt::Display| Response::Unavailable(e.to_string());
            match request {
                Request::AppendEntries(rpc) => {
                    self.append_entries(rpc).await.map_or_else(|e| unavailable(&e), Response::AppendEntries)
                }
                Request::Vote(rpc) => self.vote(rpc).await.map_or_else(|e| unavailable(&e), Response::Vote),
                Request::PreVote(rpc) => self.pre_vote(rpc).await.map_or_else(|e| unavailable(&e), Response::Vote),
                Request::FullSnapshot { vote, meta, data } => self
                    .install_full_snapshot(vote, Snapshot { meta, snapshot: data })
                    .await
                    .map_or_else(|e| unavailable(&e), Response::Snapshot),
                Request::TransferLeader(rpc) => {
                    self.handle_transfer_leader(rpc).await.map_or_else(|e| unavailable(&e), Response::TransferLeader)
                }
                Request::Forward(cmd) => Response::Forwarded(propose_forwarded(self, cmd).await),
            }
        })
    }

    fn voters(&self) -> BTreeSet<NodeId> {
        use shoal_consensus::openraft::async_runtime::WatchReceiver;
        let metrics = self.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().voter_ids().map(|id| id.0).collect()
    }

    fn membership(&self) -> shoal_control::MembershipView {
        use shoal_consensus::openraft::async_runtime::WatchReceiver;
        let metrics = self.metrics();
        let m = metrics.borrow_watched();
        let config = m.membership_config.membership();
        shoal_control::MembershipView {
            voters: config.voter_ids().map(|id| id.0).collect(),
            members: config.nodes().map(|(id, _)| id.0).collect(),
        }
    }
}

/// Proposes a forwarded write on this node, which must be the leader.
async fn propose_forwarded<SM>(raft: &ShoalRaft<SM>, cmd: Command) -> Result<Committed, ForwardRefused>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    match shoal_consensus::propose(raft, cmd).await {
        Ok(written) => Ok(Committed { response: written.data, index: written.log_id.index }),
        Err(ProposeError::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ForwardRefused::NotLeader { leader: f.leader_id.map(NodeId::from) })
        }
        Err(e) => Err(ForwardRefused::Failed(e.to_string())),
    }
}

/// The Raft service of a node's port: mutual TLS (a client certificate of the cluster is
/// required), then frames answered by the local Raft. Mounted on the node's
/// [`PortServer`](crate::port::PortServer) under [`RAFT_ALPN`]; [`RaftServer`] is the same
/// service alone on a port of its own (tests, benches).
pub struct RaftService {
    tls: MutualTls,
    raft: Arc<dyn RaftRpc>,
    config: ServerConfig,
    stats: Arc<NetStats>,
    /// Connections served at once by this service (the port's cap is over all services).
    slots: Arc<Semaphore>,
    /// Refusals already logged, per peer (later ones are only counted).
    logged: Arc<std::sync::Mutex<super::authz::FirstRefusals>>,
}

impl RaftService {
    pub fn new(tls: MutualTls, raft: Arc<dyn RaftRpc>, config: ServerConfig) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        Arc::new(Self { tls, raft, config, stats: Arc::new(NetStats::default()), slots, logged: Default::default() })
    }

    pub fn stats(&self) -> NetStatsSnapshot {
        self.stats.snapshot()
    }
}

impl crate::port::Service for RaftService {
    fn serve(&self, start: StartHandshake<TcpStream>, peer_addr: SocketAddr, gate: Gate) -> crate::port::BoxFuture<()> {
        NetStats::bump(&self.stats.connections);
        let (tls, raft, config, stats, slots) = (self.tls.clone(), self.raft.clone(), self.config.clone(), self.stats.clone(), self.slots.clone());
        let logged = self.logged.clone();
        Box::pin(async move { serve_connection(start, peer_addr, gate, slots, tls, raft, config, stats, logged).await })
    }
}

/// The Raft service alone on a port of its own. Dropping it (or [`RaftServer::shutdown`])
/// closes the listener and every connection.
pub struct RaftServer {
    port: PortServer,
    service: Arc<RaftService>,
}

impl std::fmt::Debug for RaftServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftServer").field("local_addr", &self.port.local_addr()).finish_non_exhaustive()
    }
}

impl RaftServer {
    /// Listens on `addr` and serves `raft` to every authenticated node.
    pub async fn bind(
        addr: SocketAddr,
        tls: MutualTls,
        raft: Arc<dyn RaftRpc>,
        config: ServerConfig,
    ) -> Result<Self, NetError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| NetError::Bind { addr, source })?;
        Self::serve(listener, tls, raft, config)
    }

    /// Serves on an already bound listener.
    pub fn serve(
        listener: TcpListener,
        tls: MutualTls,
        raft: Arc<dyn RaftRpc>,
        config: ServerConfig,
    ) -> Result<Self, NetError> {
        let port_config = PortConfig { max_connections: config.max_connections, ..PortConfig::default() };
        let port = PortServer::serve(listener, port_config).map_err(|e| match e {
            PortError::LocalAddr(e) | PortError::Bind { source: e, .. } => NetError::LocalAddr(e),
        })?;
        let service = RaftService::new(tls, raft, config);
        port.route(RAFT_ALPN, service.clone());
        tracing::debug!(local_addr = %port.local_addr(), "raft server listening");
        Ok(Self { port, service })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.port.local_addr()
    }

    /// The service's counters, with the port's refusals folded in: connections past the cap
    /// are `over_capacity`, `connections` counts every TCP connection accepted, and a connection that was not TLS or did not offer the Raft ALPN
    /// counts as a failed handshake.
    pub fn stats(&self) -> NetStatsSnapshot {
        let mut stats = self.service.stats();
        let port = self.port.stats();
        stats.connections = port.connections;
        stats.over_capacity += port.over_capacity;
        stats.handshakes_failed += port.bad_hello + port.unknown_protocol;
        stats
    }

    /// The port's own counters (admission at accept, ClientHellos).
    pub fn port_stats(&self) -> crate::port::PortStatsSnapshot {
        self.port.stats()
    }

    /// Unauthenticated connections held now: (general, reserved).
    pub fn unauthenticated(&self) -> (usize, usize) {
        self.port.unauthenticated()
    }

    /// Stops listening and closes every connection.
    pub fn shutdown(self) {
        drop(self);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    start: StartHandshake<TcpStream>,
    peer_addr: SocketAddr,
    gate: Gate,
    slots: Arc<Semaphore>,
    tls: MutualTls,
    raft: Arc<dyn RaftRpc>,
    config: ServerConfig,
    stats: Arc<NetStats>,
    logged: Arc<std::sync::Mutex<super::authz::FirstRefusals>>,
) {
    let (stream, peer) = match tls.accept_started(start).await {
        Ok(accepted) => accepted,
        Err(e) => {
            NetStats::bump(&stats.handshakes_failed);
            tracing::debug!(%peer_addr, error = %e, "raft connection refused at the TLS handshake");
            return;
        }
    };
    // Places are taken only now that the peer proved who it is: strangers cannot hold
    // the port's sessions nor this service's slots.
    let _session = match gate.authenticated(peer_addr, &slots) {
        Ok(session) => session,
        Err(full) => {
            if full == crate::port::Full::Service {
                NetStats::bump(&stats.over_capacity);
            }
            return;
        }
    };
    let role = crate::pki::tls::peer_role(stream.get_ref().1);
    tracing::debug!(%peer_addr, %peer, ?role, "raft connection authenticated");
    let peer = super::authz::Peer { id: peer, role };
    match serve_frames(stream, peer, raft, &config, &stats, &logged).await {
        Ok(()) => tracing::debug!(%peer_addr, peer = %peer.id, "raft connection closed by the peer"),
        Err(e) => tracing::debug!(%peer_addr, peer = %peer.id, error = %e, "raft connection closed"),
    }
}

/// Why the server closed a Raft connection.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the peer's node id was revoked")]
    Revoked,
    #[error("refused: {0}")]
    Refused(#[from] super::authz::Refusal),
}

/// Whether `peer`'s refusal of `what` is the first one (so it is logged at `warn`).
fn first_refusal(logged: &std::sync::Mutex<super::authz::FirstRefusals>, peer: NodeId, what: &'static str) -> bool {
    logged.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).first(peer, what)
}

/// Counts why a connection is being closed.
fn count(stats: &NetStats, e: &Closed) {
    let counter = match e {
        Closed::Frame(FrameError::TooLarge { .. }) => &stats.frames_too_large,
        Closed::Frame(FrameError::Truncated { .. }) => &stats.frames_truncated,
        Closed::Frame(FrameError::Undecodable(_)) => &stats.frames_undecodable,
        Closed::Frame(FrameError::Idle(_) | FrameError::SlowFrame(_)) => &stats.timeouts,
        Closed::Revoked => &stats.revoked,
        Closed::Refused(_) => &stats.refused,
        Closed::Frame(FrameError::Unencodable(_) | FrameError::Io(_)) => return,
    };
    NetStats::bump(counter);
}

/// Reads requests and answers them until the peer closes, a frame is bad, or writing fails.
async fn serve_frames<S>(
    stream: S,
    authenticated: super::authz::Peer,
    raft: Arc<dyn RaftRpc>,
    config: &ServerConfig,
    stats: &Arc<NetStats>,
    logged: &std::sync::Mutex<super::authz::FirstRefusals>,
) -> Result<(), Closed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = authenticated.id;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let (answers, mut outbox) = mpsc::channel::<Vec<u8>>(config.max_in_flight.max(1));
    // Requests being handled and the writer; all of them end with this function.
    let mut tasks = JoinSet::new();
    let mut writer_task = tokio::spawn(async move {
        while let Some(frame) = outbox.recv().await {
            frame::write_frame(&mut writer, &frame).await?;
        }
        Ok::<(), FrameError>(())
    });
    let timeouts = ReadTimeouts { idle: Some(config.idle_timeout), frame: config.frame_timeout };
    let result = loop {
        while tasks.try_join_next().is_some() {}
        let body = tokio::select! {
            read = frame::read_frame(&mut reader, MAX_RPC_BYTES, timeouts) => match read {
                Ok(Some(body)) => body,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            },
            written = &mut writer_task => {
                break match written {
                    Ok(Err(e)) => Err(e.into()),
                    _ => Ok(()),
                };
            }
        };
        let RequestFrame { id, request } = match frame::decode_body::<RequestFrame>(&body) {
            Ok(frame) => frame,
            Err(e) => break Err(e.into()),
        };
        drop(body);
        if config.revoked.as_ref().is_some_and(|r| r.contains(&peer)) {
            break Err(Closed::Revoked);
        }
        if let Err(refusal) = super::authz::check(authenticated, &request, &raft.voters()) {
            if first_refusal(logged, peer, request.kind()) {
                tracing::warn!(%peer, "raft request refused, closing the connection (logged once per peer and kind; `refused` counts them all): {refusal}");
            } else {
                tracing::debug!(%peer, "raft request refused again: {refusal}");
            }
            break Err(refusal.into());
        }
        // A write this peer may not make is answered (the user behind it reads why); the
        // connection stays, since the peer's other requests are its right.
        if let Request::Forward(cmd) = &request {
            if let Err(refusal) = shoal_control::check_forward(peer, cmd, &raft.membership()) {
                NetStats::bump(&stats.refused);
                if first_refusal(logged, peer, "forward") {
                    tracing::warn!(%peer, "forwarded write refused (logged once per peer; `refused` counts them all): {refusal}");
                } else {
                    tracing::debug!(%peer, "forwarded write refused again: {refusal}");
                }
                let response = Response::Forwarded(Err(ForwardRefused::NotAllowed(refusal.to_string())));
                match frame::encode_frame(&ResponseFrame { id, response }) {
                    Ok(bytes) => {
                        if answers.send(bytes).await.is_err() {
                            break Ok(());
                        }
                    }
                    Err(e) => break Err(e.into()),
                }
                continue;
            }
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break Ok(()) };
        let (raft, answers, stats) = (raft.clone(), answers.clone(), stats.clone());
        tasks.spawn(async move {
            let kind = request.kind();
            let response = raft.handle(request).await;
            match frame::encode_frame(&ResponseFrame { id, response }) {
                Ok(bytes) => {
                    NetStats::bump(&stats.rpcs_ok);
                    let _ = answers.send(bytes).await;
                }
                Err(e) => tracing::warn!(%peer, kind, error = %e, "raft answer cannot be encoded"),
            }
            drop(permit);
        });
    };
    // Counted before the connection closes, so whoever sees the close sees the count.
    if let Err(e) = &result {
        count(stats, e);
    }
    writer_task.abort();
    result
}
