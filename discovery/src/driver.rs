//! The task that owns a [`Membership`] core and carries out its effects through the ports.
//! One task owns the state machine; everything else talks to it through [`MembershipHandle`].

use crate::membership::{Effect, GossipStats, MemberEvent, MemberTimer, MemberView, Membership};
use crate::ports::{Clock, Datagrams, PeerSource};
use crate::seal::MAX_SEALED_LEN;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

/// Bound on queued requests to the membership task.
const COMMAND_QUEUE: usize = 64;
/// Bound on undelivered events per subscriber; a slower subscriber sees `Lagged`.
const EVENT_QUEUE: usize = 1024;

/// Requests to the membership task.
enum Command {
    Members(oneshot::Sender<Vec<MemberView>>),
    Stats(oneshot::Sender<GossipStats>),
    KnownPeers(oneshot::Sender<Vec<std::net::SocketAddr>>),
    Leave(oneshot::Sender<()>),
    SetInCluster(bool),
    SetEngineOk(bool),
}

/// Talks to a running membership task. Cheap to clone.
#[derive(Clone)]
pub struct MembershipHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<MemberEvent>,
}

/// The membership task stopped (after a leave, or because it failed).
#[derive(Debug, thiserror::Error)]
#[error("the membership task is not running")]
pub struct Stopped;

impl MembershipHandle {
    pub async fn members(&self) -> Result<Vec<MemberView>, Stopped> {
        self.ask(Command::Members).await
    }

    pub async fn stats(&self) -> Result<GossipStats, Stopped> {
        self.ask(Command::Stats).await
    }

    /// Gossip addresses of every node known so far (see `Membership::known_peers`).
    pub async fn known_peers(&self) -> Result<Vec<std::net::SocketAddr>, Stopped> {
        self.ask(Command::KnownPeers).await
    }

    /// Sets this node's gossiped `in_cluster` fact.
    pub async fn set_in_cluster(&self, in_cluster: bool) -> Result<(), Stopped> {
        self.commands.send(Command::SetInCluster(in_cluster)).await.map_err(|_| Stopped)
    }

    /// Sets this node's gossiped `engine_ok` fact.
    pub async fn set_engine_ok(&self, ok: bool) -> Result<(), Stopped> {
        self.commands.send(Command::SetEngineOk(ok)).await.map_err(|_| Stopped)
    }

    /// Leaves the cluster gracefully; returns once the leave messages are sent.
    pub async fn leave(&self) -> Result<(), Stopped> {
        self.ask(Command::Leave).await
    }

    /// Up/Suspect/Down/Left events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

/// Starts the membership task on the current tokio runtime.
pub fn spawn<R, D, C, P>(core: Membership<R>, net: D, clock: C, peers: P) -> (MembershipHandle, tokio::task::JoinHandle<()>)
where
    R: Rng + SeedableRng + Send + 'static,
    D: Datagrams,
    C: Clock,
    P: PeerSource,
{
    let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(EVENT_QUEUE);
    let handle = MembershipHandle { commands, events: events.clone() };
    let task = tokio::spawn(run(core, net, clock, peers, rx, events));
    (handle, task)
}

struct Driver<D, C> {
    net: D,
    clock: C,
    events: broadcast::Sender<MemberEvent>,
    /// Pending timers in firing order; the sequence number keeps equal deadlines in order.
    timers: BTreeMap<(Instant, u64), MemberTimer>,
    timer_seq: u64,
}

impl<D: Datagrams, C: Clock> Driver<D, C> {
    async fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send { to, packet } => {
                    if let Err(e) = self.net.send_to(to, &packet).await {
                        tracing::debug!(%to, error = %e, "gossip send failed");
                    }
                }
                Effect::Schedule { after, timer } => {
                    self.timer_seq += 1;
                    self.timers.insert((Instant::now() + after, self.timer_seq), timer);
                }
                Effect::Event(event) => {
                    // No subscriber is fine: nobody is listening yet.
                    let _ = self.events.send(event);
                }
            }
        }
    }
}

async fn run<R, D, C, P>(
    mut core: Membership<R>,
    net: D,
    clock: C,
    mut peers: P,
    mut commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<MemberEvent>,
) where
    R: Rng + SeedableRng,
    D: Datagrams,
    C: Clock,
    P: PeerSource,
{
    let mut d = Driver { net, clock, events, timers: BTreeMap::new(), timer_seq: 0 };
    let effects = core.start(d.clock.now_ms());
    d.apply(effects).await;
    // One byte more than the largest valid datagram, so oversized ones are seen as such.
    let mut buf = vec![0u8; MAX_SEALED_LEN + 1];
    let mut peers_open = true;
    // Set while a leave waits for acknowledgements; answered once the core is done.
    let mut leave_reply: Option<oneshot::Sender<()>> = None;
    loop {
        if leave_reply.is_some() && core.leave_done() {
            tracing::info!("left the cluster");
            if let Some(reply) = leave_reply.take() {
                let _ = reply.send(());
            }
            return;
        }
        let next_deadline = d.timers.keys().next().map(|(at, _)| *at);
        let sleep = async {
            match next_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            cmd = commands.recv(), if leave_reply.is_none() => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    Command::Members(reply) => { let _ = reply.send(core.members()); }
                    Command::Stats(reply) => { let _ = reply.send(core.stats().clone()); }
                    Command::KnownPeers(reply) => { let _ = reply.send(core.known_peers()); }
                    Command::SetInCluster(v) => core.set_in_cluster(v),
                    Command::SetEngineOk(v) => core.set_engine_ok(v),
                    Command::Leave(reply) => {
                        let effects = core.leave(d.clock.now_ms());
                        d.apply(effects).await;
                        leave_reply = Some(reply);
                    }
                }
            }
            () = sleep => {
                while let Some(entry) = d.timers.first_entry() {
                    if entry.key().0 > Instant::now() { break; }
                    let timer = entry.remove();
                    let effects = core.handle_timer(d.clock.now_ms(), timer);
                    d.apply(effects).await;
                }
            }
            received = d.net.recv_from(&mut buf) => {
                match received {
                    Ok((len, from)) => {
                        // A datagram longer than the buffer was truncated: hand over the
                        // oversized buffer so the core rejects and counts it.
                        let data = &buf[..len.min(buf.len())];
                        let effects = core.handle_datagram(d.clock.now_ms(), from, data);
                        d.apply(effects).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "gossip receive failed"),
                }
            }
            hint = peers.next_peer(), if peers_open => {
                match hint {
                    Some(hint) => {
                        let effects = core.handle_discovered(d.clock.now_ms(), hint);
                        d.apply(effects).await;
                    }
                    None => peers_open = false,
                }
            }
        }
    }
}
