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
//! Two kinds of places bound what connections may hold. At accept, before any TLS work, a
//! connection takes an *unauthenticated* place ([`crate::admission`]: a few per IP address,
//! a bounded number in all, more reserved for members' addresses), and must send its first
//! byte within [`PortConfig::first_byte_timeout`] and its whole ClientHello within
//! [`PortConfig::hello_timeout`]. The service finishes the handshake and, once the peer has
//! proved who it is, trades that place for a *session* place ([`Gate::authenticated`],
//! at most [`PortConfig::max_connections`]), which strangers therefore never hold. A
//! service that never authenticates its peer (the join service: joiners have no
//! certificate yet) keeps its unauthenticated place for its short exchange, and keeps its
//! own limit too.

use crate::admission::{Admission, Limits, Refused, Ticket};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    /// and timeout) and serves the connection until it ends. Once the peer is authenticated
    /// the service calls [`Gate::authenticated`] and closes the connection if it gets no
    /// session place.
    fn serve(&self, start: StartHandshake<TcpStream>, peer_addr: SocketAddr, gate: Gate) -> BoxFuture<()>;
}

/// A connection's place on the port: unauthenticated until [`Gate::authenticated`].
#[derive(Debug)]
pub struct Gate {
    ticket: Option<Ticket>,
    sessions: Arc<Semaphore>,
    stats: Arc<PortStats>,
}

/// An authenticated connection's places (the port's and its service's); dropped when the
/// connection ends.
#[derive(Debug)]
pub struct Session {
    _port: OwnedSemaphorePermit,
    _service: OwnedSemaphorePermit,
}

/// Which cap an authenticated connection found full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every session place of the port (counted in [`PortStats::over_capacity`]).
    Port,
    /// Every slot of the service (the service counts it, if it wants).
    Service,
}

impl Gate {
    /// The peer proved who it is: its unauthenticated place is given back and a session
    /// place of the port taken, then one of the service's `slots`. `Err`: which cap is full;
    /// the caller closes the connection.
    pub fn authenticated(mut self, peer_addr: SocketAddr, slots: &Arc<Semaphore>) -> Result<Session, Full> {
        drop(self.ticket.take());
        let Ok(port) = self.sessions.clone().try_acquire_owned() else {
            PortStats::bump(&self.stats.over_capacity);
            tracing::debug!(%peer_addr, "connection closed: every session place is taken");
            return Err(Full::Port);
        };
        let Ok(service) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer_addr, "connection closed: every slot of its service is taken");
            return Err(Full::Service);
        };
        Ok(Session { _port: port, _service: service })
    }

}

/// Limits of a [`PortServer`].
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// Authenticated connections open at once over all services (past it, closed right
    /// after the handshake).
    pub max_connections: usize,
    /// Unauthenticated connections: per IP address, in all, and reserved for members.
    pub unauthenticated: Limits,
    /// How long a new connection may stay silent before its first byte.
    pub first_byte_timeout: Duration,
    /// How long a client may take to send its ClientHello; bounds how long a silent
    /// stranger holds a place before any service sees it.
    pub hello_timeout: Duration,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            max_connections: 160,
            unauthenticated: Limits::default(),
            first_byte_timeout: Duration::from_secs(1),
            hello_timeout: Duration::from_secs(3),
        }
    }
}

/// Counters of the port itself (each service counts its own sessions).
#[derive(Debug, Default)]
pub struct PortStats {
    pub connections: AtomicU64,
    /// Authenticated, but every session place was taken.
    pub over_capacity: AtomicU64,
    /// Closed at accept: its IP address held its share of unauthenticated places.
    pub over_ip_share: AtomicU64,
    /// Closed at accept: every unauthenticated place it may use was taken.
    pub unauthenticated_full: AtomicU64,
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
    pub over_ip_share: u64,
    pub unauthenticated_full: u64,
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
            over_ip_share: get(&self.over_ip_share),
            unauthenticated_full: get(&self.unauthenticated_full),
            bad_hello: get(&self.bad_hello),
            unknown_protocol: get(&self.unknown_protocol),
        }
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
    admission: Admission,
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
        let admission = Admission::new(config.unauthenticated);
        let task = tokio::spawn(accept_loop(listener, config, routes.clone(), admission.clone(), stats.clone()));
        tracing::debug!(%local_addr, "TCP port listening");
        Ok(Self { local_addr, routes, admission, stats, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> PortStatsSnapshot {
        self.stats.snapshot()
    }

    /// The IP addresses of the cluster's members (from gossip): the reserved
    /// unauthenticated places are theirs.
    pub fn set_members(&self, members: impl IntoIterator<Item = IpAddr>) {
        self.admission.set_members(members);
    }

    /// Unauthenticated connections held now: (general, reserved).
    pub fn unauthenticated(&self) -> (usize, usize) {
        self.admission.held()
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

async fn accept_loop(listener: TcpListener, config: PortConfig, routes: Routes, admission: Admission, stats: Arc<PortStats>) {
    let sessions = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let admit = {
        let stats = stats.clone();
        move |peer_addr: SocketAddr| match admission.admit(peer_addr.ip()) {
            Ok(ticket) => {
                PortStats::bump(&stats.connections);
                Some(Gate { ticket: Some(ticket), sessions: sessions.clone(), stats: stats.clone() })
            }
            Err(why) => {
                let counter = match why {
                    Refused::PerIp => &stats.over_ip_share,
                    Refused::Full => &stats.unauthenticated_full,
                };
                PortStats::bump(counter);
                tracing::debug!(%peer_addr, ?why, "connection closed at accept: no unauthenticated place for it");
                None
            }
        }
    };
    let serve = move |tcp: TcpStream, peer_addr: SocketAddr, gate: Gate| {
        let (routes, stats, timeouts) = (routes.clone(), stats.clone(), (config.first_byte_timeout, config.hello_timeout));
        async move { dispatch(tcp, peer_addr, timeouts, &routes, &stats, gate).await }
    };
    crate::netutil::serve_admitted(listener, "port", admit, serve).await;
}

async fn dispatch(tcp: TcpStream, peer_addr: SocketAddr, (first_byte, hello_timeout): (Duration, Duration), routes: &Routes, stats: &PortStats, gate: Gate) {
    let _ = tcp.set_nodelay(true);
    let mut byte = [0u8; 1];
    match tokio::time::timeout(first_byte, tcp.peek(&mut byte)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return,
        Err(_) => {
            PortStats::bump(&stats.bad_hello);
            tracing::debug!(%peer_addr, "TCP connection closed: nothing sent within {first_byte:?}");
            return;
        }
    }
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
        Some(service) => service.serve(start, peer_addr, gate).await,
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
