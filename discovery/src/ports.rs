//! The edges of membership that are not deterministic, as traits, with a real and an
//! in-memory implementation of each. The in-memory ones ship as normal code: unit tests and
//! the simulator use them.

use crate::membership::PeerHint;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Sends and receives datagrams.
pub trait Datagrams: Send + Sync + 'static {
    fn send_to(&self, to: SocketAddr, packet: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Receives one datagram into `buf`; returns its full length (which may exceed `buf`
    /// if the transport truncated it) and its source.
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
}

/// Wall-clock time in milliseconds since the Unix epoch. Timers use tokio time, which tests
/// pause; the wall clock only stamps and checks sealed datagrams.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// A stream of peers found by discovery. `None` means discovery has stopped for good.
pub trait PeerSource: Send + 'static {
    fn next_peer(&mut self) -> impl Future<Output = Option<PeerHint>> + Send;
}

// ---------------------------------------------------------------- real implementations

/// A tokio UDP socket.
pub struct UdpDatagrams(pub tokio::net::UdpSocket);

impl Datagrams for UdpDatagrams {
    async fn send_to(&self, to: SocketAddr, packet: &[u8]) -> io::Result<()> {
        self.0.send_to(packet, to).await.map(|_| ())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).await
    }
}

/// The operating system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Discovery switched off (`--no-mdns`): only seeds are used.
pub struct NoPeers;

impl PeerSource for NoPeers {
    async fn next_peer(&mut self) -> Option<PeerHint> {
        std::future::pending().await
    }
}

/// Peers delivered over a channel (the mDNS adapter's thread feeds one).
pub struct ChannelPeers(pub mpsc::Receiver<PeerHint>);

impl PeerSource for ChannelPeers {
    async fn next_peer(&mut self) -> Option<PeerHint> {
        self.0.recv().await
    }
}

// ---------------------------------------------------------------- in-memory implementations

/// A clock that follows tokio's (possibly paused) time from a fixed start.
pub struct TokioClock {
    base_ms: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(base_ms: u64) -> Self {
        Self { base_ms, start: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}

type Inbox = mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>;

#[derive(Default)]
struct NetInner {
    hosts: BTreeMap<SocketAddr, Inbox>,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(SocketAddr, SocketAddr)>,
    delivered: u64,
}

/// An in-memory datagram network: instant, lossless delivery unless a link is cut.
#[derive(Clone, Default)]
pub struct MemNetwork(Arc<Mutex<NetInner>>);

impl MemNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches a host at `addr`. Binding an address again replaces the old host (a restart).
    pub fn bind(&self, addr: SocketAddr) -> MemSocket {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().hosts.insert(addr, tx);
        MemSocket { addr, net: self.clone(), rx: tokio::sync::Mutex::new(rx) }
    }

    /// Removes a host: datagrams to it vanish (a crash or power cut).
    pub fn unbind(&self, addr: SocketAddr) {
        self.lock().hosts.remove(&addr);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&self, a: SocketAddr, b: SocketAddr) {
        let mut inner = self.lock();
        inner.cut.insert((a, b));
        inner.cut.insert((b, a));
    }

    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }

    pub fn delivered(&self) -> u64 {
        self.lock().delivered
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One host's socket on a [`MemNetwork`].
pub struct MemSocket {
    addr: SocketAddr,
    net: MemNetwork,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>>,
}

impl Datagrams for MemSocket {
    async fn send_to(&self, to: SocketAddr, packet: &[u8]) -> io::Result<()> {
        let mut inner = self.net.lock();
        if inner.cut.contains(&(self.addr, to)) {
            return Ok(());
        }
        if let Some(inbox) = inner.hosts.get(&to) {
            if inbox.send((self.addr, packet.to_vec())).is_ok() {
                inner.delivered += 1;
            }
        }
        Ok(())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some((from, data)) => {
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                Ok((data.len(), from))
            }
            None => std::future::pending().await,
        }
    }
}

/// A LAN segment for discovery: every announcement reaches every listener on it.
#[derive(Clone, Default)]
pub struct MemLan(Arc<Mutex<LanInner>>);

#[derive(Default)]
struct LanInner {
    announced: Vec<PeerHint>,
    listeners: Vec<mpsc::UnboundedSender<PeerHint>>,
}

impl MemLan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Announces `hint` to everyone on the segment, now and to later listeners.
    pub fn announce(&self, hint: PeerHint) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.listeners.retain(|l| l.send(hint.clone()).is_ok());
        inner.announced.retain(|h| h.node != hint.node);
        inner.announced.push(hint);
    }

    /// Withdraws a node's announcement (it stopped).
    pub fn withdraw(&self, node: shoal_wire::NodeId) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.announced.retain(|h| h.node != node);
    }

    /// A browser on the segment: first everything already announced, then new announcements.
    pub fn browse(&self) -> MemLanPeers {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for h in &inner.announced {
            let _ = tx.send(h.clone());
        }
        inner.listeners.push(tx);
        MemLanPeers(rx)
    }
}

/// What a browser on a [`MemLan`] sees.
pub struct MemLanPeers(mpsc::UnboundedReceiver<PeerHint>);

impl PeerSource for MemLanPeers {
    async fn next_peer(&mut self) -> Option<PeerHint> {
        self.0.recv().await
    }
}
