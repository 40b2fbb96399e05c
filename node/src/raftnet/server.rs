//! The server side of the Raft network: accept TCP on the Raft port, authenticate the peer
//! with mutual TLS, then answer frames by calling the local Raft.
//!
//! Each connection is one task (plus one task per request in flight, at most
//! [`ServerConfig::max_in_flight`]); the number of connections is capped by
//! [`ServerConfig::max_connections`] (the TCP connection is closed at once past the cap,
//! before any TLS work). All tasks belong to the server: dropping [`RaftServer`] stops the
//! listener and closes every connection.

use super::frame::{self, Committed, ForwardRefused, FrameError, ReadTimeouts, Request, RequestFrame, Response, ResponseFrame};
use shoal_consensus::openraft::error::{ClientWriteError, RaftError};
use shoal_consensus::{Command, ProposeError};
use super::{NetError, NetStats, NetStatsSnapshot};
use crate::pki::{MutualTls, Revocations};
use shoal_consensus::codec::MAX_RPC_BYTES;
use shoal_consensus::openraft::storage::RaftStateMachine;
use shoal_consensus::types::{ShoalRaft, Snapshot, SnapshotData};
use shoal_consensus::TypeConfig;
use shoal_wire::NodeId;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

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

/// A running Raft server. Dropping it (or [`RaftServer::shutdown`]) closes the listener and
/// every connection.
pub struct RaftServer {
    local_addr: SocketAddr,
    stats: Arc<NetStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RaftServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for RaftServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftServer").field("local_addr", &self.local_addr).finish_non_exhaustive()
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
        let local_addr = listener.local_addr().map_err(NetError::LocalAddr)?;
        let stats = Arc::new(NetStats::default());
        let task = tokio::spawn(accept_loop(listener, tls, raft, config, stats.clone()));
        tracing::debug!(%local_addr, "raft server listening");
        Ok(Self { local_addr, stats, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> NetStatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops listening and closes every connection.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl crate::netutil::AcceptCounters for NetStats {
    fn accepted(&self) {
        NetStats::bump(&self.connections);
    }
    fn over_capacity(&self) {
        NetStats::bump(&self.over_capacity);
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: MutualTls,
    raft: Arc<dyn RaftRpc>,
    config: ServerConfig,
    stats: Arc<NetStats>,
) {
    let max = config.max_connections;
    let serve = {
        let stats = stats.clone();
        move |tcp, peer_addr| serve_connection(tcp, peer_addr, tls.clone(), raft.clone(), config.clone(), stats.clone())
    };
    crate::netutil::serve_capped(listener, max, "raft", stats, serve).await;
}

async fn serve_connection(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    tls: MutualTls,
    raft: Arc<dyn RaftRpc>,
    config: ServerConfig,
    stats: Arc<NetStats>,
) {
    let _ = tcp.set_nodelay(true);
    let (stream, peer) = match tls.accept(tcp).await {
        Ok(accepted) => accepted,
        Err(e) => {
            NetStats::bump(&stats.handshakes_failed);
            tracing::debug!(%peer_addr, error = %e, "raft connection refused at the TLS handshake");
            return;
        }
    };
    tracing::debug!(%peer_addr, %peer, "raft connection authenticated");
    match serve_frames(stream, peer, raft, &config, &stats).await {
        Ok(()) => tracing::debug!(%peer_addr, %peer, "raft connection closed by the peer"),
        Err(e) => tracing::debug!(%peer_addr, %peer, error = %e, "raft connection closed"),
    }
}

/// Counts why a connection is being closed.
fn count(stats: &NetStats, e: &FrameError) {
    let counter = match e {
        FrameError::TooLarge { .. } => &stats.frames_too_large,
        FrameError::Truncated { .. } => &stats.frames_truncated,
        FrameError::Undecodable(_) => &stats.frames_undecodable,
        FrameError::Idle(_) | FrameError::SlowFrame(_) => &stats.timeouts,
        FrameError::Revoked => &stats.revoked,
        FrameError::Unencodable(_) | FrameError::Io(_) => return,
    };
    NetStats::bump(counter);
}

/// Reads requests and answers them until the peer closes, a frame is bad, or writing fails.
async fn serve_frames<S>(
    stream: S,
    peer: NodeId,
    raft: Arc<dyn RaftRpc>,
    config: &ServerConfig,
    stats: &Arc<NetStats>,
) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
                Err(e) => break Err(e),
            },
            written = &mut writer_task => {
                break match written {
                    Ok(Err(e)) => Err(e),
                    _ => Ok(()),
                };
            }
        };
        let RequestFrame { id, request } = match frame::decode_body::<RequestFrame>(&body) {
            Ok(frame) => frame,
            Err(e) => break Err(e),
        };
        drop(body);
        if config.revoked.as_ref().is_some_and(|r| r.contains(&peer)) {
            break Err(FrameError::Revoked);
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
