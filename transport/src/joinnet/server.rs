//! The join server: TLS 1.3 with the node's own certificate and no client authentication,
//! one request frame in, one [`JoinReply`] frame out, then close.
//!
//! [`JoinService`] is mounted on the node's one TCP port (`crate::port`) under the ALPN
//! `shoal-join/1`. Each connection is one task; at most
//! [`JoinServerConfig::max_connections`] run at once (past the cap the connection is
//! closed before the node's certificate is sent). The handshake, the
//! request, the authority's answer and the write each have their own timeout, so a
//! stranger that stalls holds a slot for a few seconds at most. Dropping [`JoinServer`]
//! stops the listener and closes every connection.

use super::{frame, JoinNetError, JoinReply, JoinStats, JoinStatsSnapshot, JOIN_ALPN, MAX_REFUSAL_LEN};
use crate::pki::tls::crypto_provider;
use crate::pki::{JoinRequest, JoinResponse, NodeCredentials, PkiError, MAX_JOIN_MESSAGE_LEN};
use crate::frame::{read_frame, FrameError, ReadTimeouts};
use rustls::server::NoServerSessionStorage;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use crate::port::{Gate, PortConfig, PortError, PortServer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::StartHandshake;

/// Limits of a [`JoinServer`].
#[derive(Debug, Clone)]
pub struct JoinServerConfig {
    /// Connections served at once. Joins are rare (a node joins once, then renews over
    /// mutual TLS), so a small number suffices.
    pub max_connections: usize,
    /// How long the TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long the whole request frame may take to arrive after the handshake.
    pub read_timeout: Duration,
    /// How long the authority may take to answer (the leader may have to commit first).
    pub answer_timeout: Duration,
    /// How long writing the answer may take.
    pub write_timeout: Duration,
}

impl Default for JoinServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            handshake_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the authority does not grant a certificate. The `Display` is sent to the joiner.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The protocol check failed (wrong secret, revoked id, bad CSR, ...). `PkiError`
    /// messages never contain key material or the secret.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// This node cannot answer now (not the leader, no CA yet, shutting down). The text is
    /// sent as is: it must not contain secrets.
    #[error("cannot issue now: {0}")]
    Unavailable(String),
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who answers join requests: the Raft leader (with the CA and the revoked set) in the
/// agent; a struct holding an `Issuer` in tests. `peer` is the TCP address the request came
/// from (the leader may use it, with membership, to decide the grant).
pub trait JoinAuthority: Send + Sync + 'static {
    fn answer(&self, request: JoinRequest, peer: SocketAddr) -> BoxFuture<'_, Result<JoinResponse, Refusal>>;
}

/// The TLS config of the join port: TLS 1.3, ring, the node's own certificate (swappable
/// through `credentials`), no client authentication, no resumption, ALPN `shoal-join/1`.
pub fn server_tls_config(credentials: Arc<NodeCredentials>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(credentials);
    config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The join service of a node's port, under the ALPN `shoal-join/1`: TLS with the node's
/// certificate and no client certificate. It keeps its own connection cap
/// ([`JoinServerConfig::max_connections`]), so strangers dialling joins cannot take the
/// port's slots that members need.
pub struct JoinService {
    acceptor: Arc<rustls::ServerConfig>,
    authority: Arc<dyn JoinAuthority>,
    config: JoinServerConfig,
    stats: Arc<JoinStats>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl JoinService {
    pub fn new(
        credentials: Arc<NodeCredentials>,
        authority: Arc<dyn JoinAuthority>,
        config: JoinServerConfig,
    ) -> Result<Arc<Self>, JoinNetError> {
        let acceptor = server_tls_config(credentials)?;
        let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
        Ok(Arc::new(Self { acceptor, authority, config, stats: Arc::new(JoinStats::default()), slots }))
    }

    pub fn stats(&self) -> JoinStatsSnapshot {
        self.stats.snapshot()
    }
}

impl crate::port::Service for JoinService {
    /// Joiners hold no certificate: a join connection never authenticates, so it keeps its
    /// unauthenticated place (`gate`) for its one short exchange.
    fn serve(&self, start: StartHandshake<TcpStream>, peer_addr: SocketAddr, gate: Gate) -> crate::port::BoxFuture<()> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            JoinStats::bump(&self.stats.over_capacity);
            tracing::debug!(%peer_addr, "join connection refused: connection cap reached");
            return Box::pin(async {});
        };
        JoinStats::bump(&self.stats.connections);
        let (acceptor, authority, config, stats) =
            (self.acceptor.clone(), self.authority.clone(), self.config.clone(), self.stats.clone());
        Box::pin(async move {
            serve_connection(start, peer_addr, acceptor, authority, &config, &stats).await;
            drop((permit, gate));
        })
    }
}

/// The join service alone on a port of its own (tests). Dropping it stops the listener and
/// closes every connection.
pub struct JoinServer {
    port: PortServer,
    service: Arc<JoinService>,
}

impl std::fmt::Debug for JoinServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinServer").field("local_addr", &self.port.local_addr()).finish_non_exhaustive()
    }
}

impl JoinServer {
    /// Listens on `addr`, presenting `credentials`, answering with `authority`.
    pub async fn bind(
        addr: SocketAddr,
        credentials: Arc<NodeCredentials>,
        authority: Arc<dyn JoinAuthority>,
        config: JoinServerConfig,
    ) -> Result<Self, JoinNetError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| JoinNetError::Bind { addr, source })?;
        Self::serve(listener, credentials, authority, config)
    }

    /// Serves on an already bound listener.
    pub fn serve(
        listener: TcpListener,
        credentials: Arc<NodeCredentials>,
        authority: Arc<dyn JoinAuthority>,
        config: JoinServerConfig,
    ) -> Result<Self, JoinNetError> {
        let port_config = PortConfig { max_connections: config.max_connections, hello_timeout: config.handshake_timeout, ..PortConfig::default() };
        let port = PortServer::serve(listener, port_config).map_err(|e| match e {
            PortError::LocalAddr(e) | PortError::Bind { source: e, .. } => JoinNetError::LocalAddr(e),
        })?;
        let service = JoinService::new(credentials, authority, config)?;
        port.route(JOIN_ALPN, service.clone());
        tracing::debug!(local_addr = %port.local_addr(), "join server listening");
        Ok(Self { port, service })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.port.local_addr()
    }

    /// The service's counters with the port's refusals folded in (every TCP connection accepted: `connections`; past the cap:
    /// `over_capacity`; not TLS or not the join ALPN: a failed handshake).
    pub fn stats(&self) -> JoinStatsSnapshot {
        let mut stats = self.service.stats();
        let port = self.port.stats();
        stats.connections = port.connections;
        stats.over_capacity += port.over_capacity;
        stats.handshakes_failed += port.bad_hello + port.unknown_protocol;
        stats
    }

    /// Stops listening and closes every connection.
    pub fn shutdown(self) {
        drop(self);
    }
}

fn count_frame_error(stats: &JoinStats, e: &FrameError) {
    let counter = match e {
        FrameError::TooLarge { .. } => &stats.frames_too_large,
        FrameError::Truncated { .. } => &stats.frames_truncated,
        FrameError::Idle(_) | FrameError::SlowFrame(_) => &stats.timeouts,
        FrameError::Undecodable(_) => &stats.frames_undecodable,
        FrameError::Unencodable(_) | FrameError::Io(_) => &stats.errors,
    };
    JoinStats::bump(counter);
}

/// Cuts a refusal to [`MAX_REFUSAL_LEN`] characters.
fn refusal_text(text: String) -> String {
    if text.chars().count() <= MAX_REFUSAL_LEN {
        text
    } else {
        text.chars().take(MAX_REFUSAL_LEN).collect()
    }
}

async fn serve_connection(
    start: StartHandshake<TcpStream>,
    peer_addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    authority: Arc<dyn JoinAuthority>,
    config: &JoinServerConfig,
    stats: &JoinStats,
) {
    let mut stream = match tokio::time::timeout(config.handshake_timeout, start.into_stream(tls)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            JoinStats::bump(&stats.handshakes_failed);
            tracing::debug!(%peer_addr, error = %e, "join connection: TLS handshake failed");
            return;
        }
        Err(_) => {
            JoinStats::bump(&stats.handshakes_failed);
            tracing::debug!(%peer_addr, "join connection: TLS handshake timed out");
            return;
        }
    };
    if stream.get_ref().1.alpn_protocol() != Some(JOIN_ALPN) {
        // Only reachable if the port routed a session here that did not agree on the join
        // ALPN: nothing it sends is read.
        JoinStats::bump(&stats.handshakes_failed);
        tracing::debug!(%peer_addr, "join connection: client did not negotiate ALPN shoal-join/1");
        return;
    }
    // The whole request within `read_timeout` (the frame reader's own timeouts never fire
    // first: both are the same).
    let timeouts = ReadTimeouts { idle: None, frame: config.read_timeout };
    let read = tokio::time::timeout(config.read_timeout, read_frame(&mut stream, MAX_JOIN_MESSAGE_LEN, timeouts))
        .await
        .unwrap_or(Err(FrameError::SlowFrame(config.read_timeout)));
    let body = match read {
        Ok(Some(body)) => body,
        Ok(None) => {
            JoinStats::bump(&stats.frames_truncated);
            tracing::debug!(%peer_addr, "join connection closed before a request");
            return;
        }
        Err(e) => {
            count_frame_error(stats, &e);
            tracing::debug!(%peer_addr, error = %e, "join connection: bad request frame");
            return;
        }
    };
    let request = match JoinRequest::from_bytes(&body) {
        Ok(request) => request,
        Err(e) => {
            JoinStats::bump(&stats.frames_undecodable);
            tracing::debug!(%peer_addr, error = %e, "join connection: request does not decode");
            return;
        }
    };
    drop(body);
    let claimed = request.node_id;
    let reply = match tokio::time::timeout(config.answer_timeout, authority.answer(request, peer_addr)).await {
        Ok(Ok(response)) => {
            JoinStats::bump(&stats.granted);
            tracing::debug!(%peer_addr, node = %claimed, "join granted");
            JoinReply::Granted(response)
        }
        Ok(Err(refusal)) => {
            JoinStats::bump(&stats.refused);
            tracing::debug!(%peer_addr, node = %claimed, reason = %refusal, "join refused");
            JoinReply::Refused(refusal_text(refusal.to_string()))
        }
        Err(_) => {
            JoinStats::bump(&stats.refused);
            tracing::debug!(%peer_addr, node = %claimed, "join refused: the authority did not answer in time");
            JoinReply::Refused("cannot issue now: the cluster did not answer in time".to_string())
        }
    };
    let bytes = match reply.to_bytes() {
        Ok(bytes) => frame(&bytes),
        Err(e) => {
            JoinStats::bump(&stats.errors);
            tracing::warn!(%peer_addr, error = %e, "join answer cannot be encoded");
            return;
        }
    };
    let written = tokio::time::timeout(config.write_timeout, async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            JoinStats::bump(&stats.errors);
            tracing::debug!(%peer_addr, error = %e, "join answer could not be written");
        }
        Err(_) => {
            JoinStats::bump(&stats.timeouts);
            tracing::debug!(%peer_addr, "join answer write timed out");
        }
    }
}
