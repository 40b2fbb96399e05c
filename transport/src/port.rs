//! The node's one TCP port: every TCP service of a node (Raft RPC, joins, and later the
//! network API, image transfer and the Docker API) listens on the same port number as the
//! gossip UDP socket and is told apart by TLS ALPN.
//!
//! Per connection the [`PortServer`] reads the TLS ClientHello (rustls'
//! `LazyConfigAcceptor`, within [`PortConfig::hello_timeout`]), picks the [`Service`]
//! registered for the first ALPN protocol the client offers that the port knows (a
//! ClientHello offering no ALPN at all goes to the service routed under [`NO_ALPN`]: the
//! Docker API, since the `docker` CLI offers none; see [`choose_route`]), and hands
//! the started handshake to it: each service finishes the handshake with its own server
//! config, so the join service can accept clients without a certificate while the Raft
//! service requires one. A ClientHello without a known ALPN protocol, or anything that is
//! not TLS, is closed before any certificate is sent, and counted.
//!
//! The connection cap is taken at accept (before TLS work), as it was for the separate
//! servers; a service that needs its own limit (the join service) keeps it.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::StartHandshake;

/// The route key of ClientHellos that offer no ALPN protocol at all (an empty protocol
/// name is not valid in TLS, so no client can offer it).
pub const NO_ALPN: &[u8] = b"";

/// The route a ClientHello goes to: the first protocol it offers that `serves` knows; if it
/// offers no ALPN extension (or an empty list), [`NO_ALPN`] when that is served. `None`:
/// the connection is closed before any certificate is sent.
pub fn choose_route<'a>(offered: Option<impl Iterator<Item = &'a [u8]>>, serves: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let mut any = false;
    if let Some(offered) = offered {
        for p in offered {
            any = true;
            if !p.is_empty() && serves(p) {
                return Some(p.to_vec());
            }
        }
    }
    (!any && serves(NO_ALPN)).then(|| NO_ALPN.to_vec())
}

/// A boxed future that owns what it needs.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One protocol on the port, chosen by its ALPN name.
pub trait Service: Send + Sync + 'static {
    /// Finishes the handshake started by the port (with this service's own server config
    /// and timeout) and serves the connection until it ends.
    fn serve(&self, start: StartHandshake<TcpStream>, peer_addr: SocketAddr) -> BoxFuture<()>;
}

/// Limits of a [`PortServer`].
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// Connections open at once over all services (past it, closed at accept).
    pub max_connections: usize,
    /// How long a client may take to send its ClientHello; bounds how long a silent
    /// stranger holds a slot before any service sees it.
    pub hello_timeout: Duration,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self { max_connections: 160, hello_timeout: Duration::from_secs(3) }
    }
}

/// Counters of the port itself (each service counts its own sessions).
#[derive(Debug, Default)]
pub struct PortStats {
    pub connections: AtomicU64,
    pub over_capacity: AtomicU64,
    /// Not TLS, no ClientHello in time, or a ClientHello the port cannot read.
    pub bad_hello: AtomicU64,
    /// A ClientHello that offers no ALPN protocol this port serves.
    pub unknown_protocol: AtomicU64,
}

/// A copy of [`PortStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PortStatsSnapshot {
    pub connections: u64,
    pub over_capacity: u64,
    pub bad_hello: u64,
    pub unknown_protocol: u64,
}

impl PortStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> PortStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PortStatsSnapshot {
            connections: get(&self.connections),
            over_capacity: get(&self.over_capacity),
            bad_hello: get(&self.bad_hello),
            unknown_protocol: get(&self.unknown_protocol),
        }
    }
}

impl crate::netutil::AcceptCounters for PortStats {
    fn accepted(&self) {
        PortStats::bump(&self.connections);
    }
    fn over_capacity(&self) {
        PortStats::bump(&self.over_capacity);
    }
}

type Routes = Arc<RwLock<BTreeMap<Vec<u8>, Arc<dyn Service>>>>;

/// Why the port could not open.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cannot listen on TCP {addr}: {source}; is another agent or program using this port? pick another with --bind")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot read the local address of the TCP listener: {0}")]
    LocalAddr(std::io::Error),
}

/// The listening port. Services are added and removed while it runs; dropping it stops the
/// listener and closes every connection.
pub struct PortServer {
    local_addr: SocketAddr,
    routes: Routes,
    stats: Arc<PortStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PortServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for PortServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortServer").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl PortServer {
    /// Listens on `addr` with no service yet.
    pub async fn bind(addr: SocketAddr, config: PortConfig) -> Result<Self, PortError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| PortError::Bind { addr, source })?;
        Self::serve(listener, config)
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener, config: PortConfig) -> Result<Self, PortError> {
        let local_addr = listener.local_addr().map_err(PortError::LocalAddr)?;
        let routes: Routes = Arc::default();
        let stats = Arc::new(PortStats::default());
        let task = tokio::spawn(accept_loop(listener, config, routes.clone(), stats.clone()));
        tracing::debug!(%local_addr, "TCP port listening");
        Ok(Self { local_addr, routes, stats, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> PortStatsSnapshot {
        self.stats.snapshot()
    }

    /// Serves `service` to clients that offer `alpn` (replacing any service there).
    pub fn route(&self, alpn: &[u8], service: Arc<dyn Service>) {
        self.routes.write().unwrap_or_else(PoisonError::into_inner).insert(alpn.to_vec(), service);
    }

    /// Stops offering `alpn` to new connections (open ones are the service's to close).
    pub fn unroute(&self, alpn: &[u8]) {
        self.routes.write().unwrap_or_else(PoisonError::into_inner).remove(alpn);
    }
}

async fn accept_loop(listener: TcpListener, config: PortConfig, routes: Routes, stats: Arc<PortStats>) {
    let max = config.max_connections;
    let serve = {
        let stats = stats.clone();
        move |tcp: TcpStream, peer_addr: SocketAddr| {
            let (routes, stats, hello_timeout) = (routes.clone(), stats.clone(), config.hello_timeout);
            async move { dispatch(tcp, peer_addr, hello_timeout, &routes, &stats).await }
        }
    };
    crate::netutil::serve_capped(listener, max, "port", stats, serve).await;
}

async fn dispatch(tcp: TcpStream, peer_addr: SocketAddr, hello_timeout: Duration, routes: &Routes, stats: &PortStats) {
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match tokio::time::timeout(hello_timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            PortStats::bump(&stats.bad_hello);
            tracing::debug!(%peer_addr, error = %e, "TCP connection closed: not a TLS ClientHello");
            return;
        }
        Err(_) => {
            PortStats::bump(&stats.bad_hello);
            tracing::debug!(%peer_addr, "TCP connection closed: no TLS ClientHello in time");
            return;
        }
    };
    let service = {
        let routes = routes.read().unwrap_or_else(PoisonError::into_inner);
        choose_route(start.client_hello().alpn(), |p| routes.contains_key(p)).and_then(|key| routes.get(&key).cloned())
    };
    match service {
        Some(service) => service.serve(start, peer_addr).await,
        None => {
            PortStats::bump(&stats.unknown_protocol);
            tracing::debug!(%peer_addr, "TLS connection closed: it offers no protocol (ALPN) this port serves");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_the_first_served_alpn_and_no_alpn_goes_to_the_no_alpn_route() {
        let served = |set: &'static [&'static [u8]]| move |p: &[u8]| set.contains(&p);
        let with_docker = served(&[b"shoal-raft/1", b"http/1.1", NO_ALPN]);
        let offer = |list: &'static [&'static [u8]]| Some(list.iter().copied());
        assert_eq!(choose_route(offer(&[b"h2", b"http/1.1"]), with_docker), Some(b"http/1.1".to_vec()));
        assert_eq!(choose_route(offer(&[b"shoal-raft/1"]), with_docker), Some(b"shoal-raft/1".to_vec()));
        // No ALPN extension, or an empty list: the Docker API (the docker CLI sends none).
        assert_eq!(choose_route(None::<std::iter::Empty<&[u8]>>, with_docker), Some(NO_ALPN.to_vec()));
        assert_eq!(choose_route(offer(&[]), with_docker), Some(NO_ALPN.to_vec()));
        // Only unknown protocols: closed, never sent to the no-ALPN route.
        assert_eq!(choose_route(offer(&[b"h2", b"imap"]), with_docker), None);
        assert_eq!(choose_route(offer(&[b""]), with_docker), None);
        // Without a no-ALPN route (before the node has a certificate), no ALPN is closed.
        let raft_only = served(&[b"shoal-raft/1"]);
        assert_eq!(choose_route(None::<std::iter::Empty<&[u8]>>, raft_only), None);
    }
}
