//! The client side of the Raft network: openraft's `RaftNetworkFactory` and
//! `RaftNetworkV2` for [`TypeConfig`], over mutual TLS.
//!
//! Connections are shared: per target (node id and address) there is one connection for
//! AppendEntries, heartbeats, votes and leader transfer, and one for snapshots, so a large
//! snapshot never holds up a heartbeat. A connection carries any number of RPCs at once,
//! each frame tagged with an id; it is opened on first use with [`MutualTls::connect`]
//! naming the target's node id (a server presenting another node's certificate is
//! refused) and reopened on the next RPC after any error.

use super::rpc::{Committed, ForwardRefused, Request, RequestFrame, Response, ResponseFrame};
use crate::frame::{self, FrameError, ReadTimeouts};
use super::{NetStats, NetStatsSnapshot};
use crate::pki::MutualTls;
use shoal_consensus::codec::MAX_RPC_BYTES;
use shoal_consensus::openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use shoal_consensus::openraft::network::RPCOption;
use shoal_consensus::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use shoal_consensus::openraft::{OptionalSend, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use shoal_consensus::types::{Snapshot, SnapshotData, Vote};
use shoal_consensus::{Command, RaftNodeId, ShoalNode, TypeConfig};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Limits of a [`RaftNetwork`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait for the TCP connection (the TLS handshake has its own timeout in
    /// [`MutualTls`]). Every RPC is also bounded by openraft's soft TTL for it.
    pub connect_timeout: Duration,
    /// An answer must arrive whole within this time from its first byte.
    pub frame_timeout: Duration,
    /// Requests queued for the writer of one connection.
    pub queue: usize,
    /// A connection on which an RPC timed out is dropped (and redialled) if nothing at all
    /// arrived on it for this long: the peer is gone without a FIN, or stuck. A peer that
    /// is only slow (an fsync on an SD card outlasting a heartbeat's TTL) keeps answering
    /// other RPCs, so its connection stays.
    pub silence_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            frame_timeout: Duration::from_secs(60),
            queue: 64,
            silence_timeout: Duration::from_secs(2),
        }
    }
}

/// Which of a target's two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Channel {
    Rpc,
    Snapshot,
}

type SlotKey = (RaftNodeId, SocketAddr, Channel);

/// openraft's network factory: hands out clients that share connections per target.
/// Cloning shares the connections and counters.
#[derive(Clone)]
pub struct RaftNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    local: RaftNodeId,
    tls: MutualTls,
    config: ClientConfig,
    slots: Mutex<BTreeMap<SlotKey, Arc<Slot>>>,
    next_id: AtomicU64,
    stats: Arc<NetStats>,
}

impl std::fmt::Debug for RaftNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNetwork").field("local", &self.inner.local).finish_non_exhaustive()
    }
}

impl RaftNetwork {
    /// The network of node `local`, dialling with `tls`.
    pub fn new(local: RaftNodeId, tls: MutualTls, config: ClientConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                local,
                tls,
                config,
                slots: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(1),
                stats: Arc::new(NetStats::default()),
            }),
        }
    }

    pub fn stats(&self) -> NetStatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Closes every connection (they reopen on the next RPC); e.g. after a revocation.
    pub fn close_all(&self) {
        self.inner.slots.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Sends a write to `target` (the leader, as far as the caller knows) and waits, at most
    /// `ttl`, for it to be committed there. The outer error is the network's (unreachable,
    /// timeout); the inner one the leader's refusal.
    pub async fn forward(
        &self,
        target: RaftNodeId,
        node: &ShoalNode,
        cmd: Command,
        ttl: Duration,
    ) -> Result<Result<Committed, ForwardRefused>, String> {
        let client = self.client(target, node, Channel::Rpc);
        match client.call(Request::Forward(cmd), ttl).await {
            Ok(Response::Forwarded(answer)) => Ok(answer),
            Ok(other) => Err(client.protocol_error("forwarded", &other).to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn client(&self, target: RaftNodeId, node: &ShoalNode, channel: Channel) -> PeerClient {
        let key = (target, node.addr, channel);
        let slot = self.inner.slots.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default().clone();
        PeerClient { target, addr: node.addr, slot, inner: self.inner.clone() }
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: RaftNodeId, node: &ShoalNode) -> PeerClient {
        self.client(target, node, Channel::Rpc)
    }

    async fn new_snapshot_client(&mut self, target: RaftNodeId, node: &ShoalNode) -> PeerClient {
        self.client(target, node, Channel::Snapshot)
    }
}

/// The shared connection to one target on one channel, opened lazily.
#[derive(Default)]
struct Slot {
    /// The connection in use; its lock also makes one dialler at a time.
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// Where a dial task leaves its connection. Dials run in their own task so that an RPC
    /// giving up (openraft's TTL for replication is the heartbeat interval, shorter than a
    /// handshake on a busy Pi) does not throw the handshake away: the next RPC picks it up.
    dialled: Mutex<Option<Arc<Link>>>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response, String>>>>>;

/// One open, authenticated connection: a writer task, a reader task, the RPCs waiting for
/// their answers. Dropping the last handle closes it.
struct Link {
    outbox: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    dead: Arc<AtomicBool>,
    /// When the connection opened, and milliseconds from then to the last frame received.
    opened: tokio::time::Instant,
    last_heard_ms: Arc<AtomicU64>,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.writer.abort();
        self.reader.abort();
    }
}

/// Marks the link dead, then fails every RPC waiting on it (in that order: see `Link::call`).
fn fail_all(dead: &AtomicBool, pending: &Pending, reason: &str) {
    dead.store(true, Ordering::SeqCst);
    let waiting = std::mem::take(&mut *pending.lock().unwrap_or_else(PoisonError::into_inner));
    for (_, tx) in waiting {
        let _ = tx.send(Err(reason.to_string()));
    }
}

/// Removes an RPC's entry when its caller stops waiting (answer, error, or timeout).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("peer cannot answer: {0}")]
    Unavailable(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("request cannot be sent: {0}")]
    Encode(#[source] FrameError),
    #[error("peer broke the protocol: {0}")]
    Protocol(String),
}

impl Link {
    async fn open(inner: &Inner, target: RaftNodeId, addr: SocketAddr) -> Result<Arc<Link>, CallError> {
        let connect_err = |reason: String| CallError::Connect { addr, reason };
        let tcp = tokio::time::timeout(inner.config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(format!("no TCP connection within {:?}", inner.config.connect_timeout)))?
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (stream, _) = inner.tls.connect(tcp, Some(target.node_id())).await.map_err(|e| {
            NetStats::bump(&inner.stats.handshakes_failed);
            connect_err(e.to_string())
        })?;
        NetStats::bump(&inner.stats.connections);
        tracing::debug!(%target, %addr, "raft connection opened");
        let (mut reader, mut writer) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let opened = tokio::time::Instant::now();
        let last_heard_ms = Arc::new(AtomicU64::new(0));
        let (outbox, mut queue) = mpsc::channel::<Vec<u8>>(inner.config.queue.max(1));
        let writer = {
            let (pending, dead) = (pending.clone(), dead.clone());
            tokio::spawn(async move {
                while let Some(bytes) = queue.recv().await {
                    if let Err(e) = frame::write_frame(&mut writer, &bytes).await {
                        fail_all(&dead, &pending, &e.to_string());
                        return;
                    }
                }
                let _ = writer.shutdown().await;
            })
        };
        let reader = {
            let (pending, dead, stats) = (pending.clone(), dead.clone(), inner.stats.clone());
            let heard = last_heard_ms.clone();
            let timeouts = ReadTimeouts { idle: None, frame: inner.config.frame_timeout };
            tokio::spawn(async move {
                let reason = loop {
                    let body = match frame::read_frame(&mut reader, MAX_RPC_BYTES, timeouts).await {
                        Ok(Some(body)) => body,
                        Ok(None) => break "closed by the peer".to_string(),
                        Err(e) => {
                            match e {
                                FrameError::TooLarge { .. } => NetStats::bump(&stats.frames_too_large),
                                FrameError::Truncated { .. } => NetStats::bump(&stats.frames_truncated),
                                _ => {}
                            }
                            break e.to_string();
                        }
                    };
                    let since_open = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
                    heard.store(since_open, Ordering::Relaxed);
                    match frame::decode_body::<ResponseFrame>(&body) {
                        Ok(ResponseFrame { id, response }) => {
                            let waiting = pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
                            // No one waiting: that RPC timed out; its answer is dropped.
                            if let Some(tx) = waiting {
                                let _ = tx.send(Ok(response));
                            }
                        }
                        Err(e) => {
                            NetStats::bump(&stats.frames_undecodable);
                            break e.to_string();
                        }
                    }
                };
                tracing::debug!(%target, reason, "raft connection ended");
                fail_all(&dead, &pending, &reason);
            })
        };
        Ok(Arc::new(Link { outbox, pending, dead, opened, last_heard_ms, writer, reader }))
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// How long since anything arrived on this connection (or since it opened).
    fn silent_for(&self) -> Duration {
        let heard = self.opened + Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed));
        tokio::time::Instant::now().saturating_duration_since(heard)
    }

    async fn call(&self, id: u64, bytes: Vec<u8>) -> Result<Response, CallError> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(id, tx);
        let _guard = PendingGuard { pending: &self.pending, id };
        // `fail_all` marks dead before draining: either it drained our entry, or we see dead.
        if self.is_dead() {
            return Err(CallError::Lost("connection already closed".into()));
        }
        self.outbox.send(bytes).await.map_err(|_| CallError::Lost("writer stopped".into()))?;
        match rx.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(reason)) => Err(CallError::Lost(reason)),
            Err(_) => Err(CallError::Lost("connection closed".into())),
        }
    }
}

/// openraft's client for one target (`RaftNetworkV2`).
pub struct PeerClient {
    target: RaftNodeId,
    addr: SocketAddr,
    slot: Arc<Slot>,
    inner: Arc<Inner>,
}

impl PeerClient {
    /// The slot's link, opened if there is none or the last one died. Also says whether it
    /// was just opened.
    async fn link(&self) -> Result<(Arc<Link>, bool), CallError> {
        let mut current = self.slot.link.lock().await;
        if let Some(link) = current.as_ref().filter(|l| !l.is_dead()) {
            return Ok((link.clone(), false));
        }
        *current = None;
        let take_dialled =
            || self.slot.dialled.lock().unwrap_or_else(PoisonError::into_inner).take().filter(|l| !l.is_dead());
        if let Some(link) = take_dialled() {
            *current = Some(link.clone());
            return Ok((link, true));
        }
        let (inner, slot, target, addr) = (self.inner.clone(), self.slot.clone(), self.target, self.addr);
        let dial = tokio::spawn(async move {
            let link = Link::open(&inner, target, addr).await?;
            *slot.dialled.lock().unwrap_or_else(PoisonError::into_inner) = Some(link);
            Ok::<(), CallError>(())
        });
        match dial.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(CallError::Connect { addr: self.addr, reason: e.to_string() }),
        }
        let link = take_dialled().ok_or_else(|| CallError::Lost("closed right after the handshake".into()))?;
        *current = Some(link.clone());
        Ok((link, true))
    }

    /// Drops the slot's connection if `condemn` says so. Never waits: if another RPC holds
    /// the slot (it is dialling), there is nothing to drop.
    fn discard_if(&self, condemn: impl FnOnce(&Link) -> bool) {
        if let Ok(mut current) = self.slot.link.try_lock() {
            if current.as_deref().is_some_and(condemn) {
                *current = None;
            }
        }
    }

    async fn attempt(&self, bytes: &[u8], id: u64) -> Result<Response, CallError> {
        let (link, fresh) = self.link().await?;
        match link.call(id, bytes.to_vec()).await {
            // A reused connection may have been closed by the server's idle timeout just
            // now: one retry on a fresh connection (Raft RPCs may be repeated).
            Err(CallError::Lost(reason)) if !fresh => {
                tracing::debug!(target = %self.target, reason, "raft connection lost, redialling once");
                let (link, _) = self.link().await?;
                link.call(id, bytes.to_vec()).await
            }
            other => other,
        }
    }

    /// Sends `request` and waits for its answer, all within `ttl`.
    async fn call(&self, request: Request, ttl: Duration) -> Result<Response, CallError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let kind = request.kind();
        let bytes = frame::encode_frame(&RequestFrame { id, request }).map_err(CallError::Encode)?;
        let result = match tokio::time::timeout(ttl, self.attempt(&bytes, id)).await {
            Ok(result) => result,
            Err(_) => {
                // No answer in time. If the connection has been silent for long, it is
                // probably a zombie (peer gone without a FIN): drop it so the next RPC dials.
                let silence = self.inner.config.silence_timeout;
                self.discard_if(|link| link.silent_for() >= silence);
                Err(CallError::Timeout(ttl))
            }
        };
        match &result {
            Ok(Response::Unavailable(reason)) => {
                NetStats::bump(&self.inner.stats.rpcs_failed);
                return Err(CallError::Unavailable(reason.clone()));
            }
            Ok(_) => NetStats::bump(&self.inner.stats.rpcs_ok),
            Err(e) => {
                NetStats::bump(&self.inner.stats.rpcs_failed);
                tracing::debug!(target = %self.target, addr = %self.addr, kind, error = %e, "raft rpc failed");
            }
        }
        result
    }

    fn protocol_error(&self, expected: &str, got: &Response) -> CallError {
        self.discard_if(|_| true);
        CallError::Protocol(format!("expected a {expected} answer, got {got:?}"))
    }

    fn rpc_error(&self, e: CallError, action: RPCTypes) -> RPCError<TypeConfig> {
        match e {
            CallError::Connect { .. } | CallError::Lost(_) | CallError::Unavailable(_) => {
                RPCError::Unreachable(Unreachable::from_string(format!("{}: {e}", self.target)))
            }
            CallError::Timeout(timeout) => {
                RPCError::Timeout(Timeout { action, id: self.inner.local, target: self.target, timeout })
            }
            CallError::Encode(_) | CallError::Protocol(_) => {
                RPCError::Network(NetworkError::from_string(format!("{}: {e}", self.target)))
            }
        }
    }

    async fn vote_like(
        &self,
        request: Request,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(request, option.soft_ttl()).await {
            Ok(Response::Vote(resp)) => Ok(resp),
            Ok(other) => Err(self.rpc_error(self.protocol_error("vote", &other), RPCTypes::Vote)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::Vote)),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(Request::AppendEntries(rpc), option.soft_ttl()).await {
            Ok(Response::AppendEntries(resp)) => Ok(resp),
            Ok(other) => Err(self.rpc_error(self.protocol_error("append_entries", &other), RPCTypes::AppendEntries)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::AppendEntries)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_like(Request::Vote(rpc), option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_like(Request::PreVote(rpc), option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = Request::FullSnapshot { vote, meta: snapshot.meta, data: snapshot.snapshot };
        let result = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            result = self.call(request, option.soft_ttl()) => result,
        };
        let e = match result {
            Ok(Response::Snapshot(resp)) => return Ok(resp),
            Ok(other) => self.protocol_error("snapshot", &other),
            Err(e) => e,
        };
        Err(match self.rpc_error(e, RPCTypes::InstallSnapshot) {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => StreamingError::Network(NetworkError::from_string(r.to_string())),
        })
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(Request::TransferLeader(req), option.soft_ttl()).await {
            Ok(Response::TransferLeader(resp)) => Ok(resp),
            Ok(other) => Err(self.rpc_error(self.protocol_error("transfer_leader", &other), RPCTypes::TransferLeader)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::TransferLeader)),
        }
    }
}
