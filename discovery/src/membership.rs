//! The membership core: SWIM (foca) plus shoal's rules around it, with no I/O.
//!
//! Inputs are calls with the current time (`now_ms`, wall-clock milliseconds from the clock
//! port); outputs are [`Effect`]s (send this sealed datagram, wake me after this long,
//! this member changed state) that a driver carries out. Nothing in here sleeps, reads a
//! clock, opens a socket or draws OS randomness, so the simulator can run it as it is.
//!
//! Rules kept here, beyond foca's SWIM:
//! - peers come from discovery hints (mDNS or `--join` seeds); an unconnected hint is greeted
//!   with a sealed `Hello` every `hello_interval_ms`, so partitions heal by themselves;
//! - hints of another cluster id are ignored and counted;
//! - a node leaving on purpose sends `Leave` to everyone (repeated until acknowledged, a few
//!   times at most) and gossips facts saying it left, so others mark it `left`, not `down`;
//! - a `Hello` is always answered with an announce, even from a member we think is active:
//!   the greeter evidently does not see us (typically after our automatic rejoin);
//! - node facts travel as foca custom broadcasts and are pulled directly when missing;
//! - facts and leaves are signed by the node they are about ([`crate::signing`]): a holder
//!   of the gossip key cannot say for another node that it left, moved or lost its engine.

use crate::codec::{accept_peer_facts, encode_signed_facts, store_if_newer, FactsHandler, FactsTable, FactsVerdict, WireCodec};
use crate::identity::{NodeFacts, NodeResources, ShoalId};
use crate::seal::{Addressee, OpenError, Sealer, ANYONE, MAX_PLAINTEXT_LEN};
use crate::secret::ClusterId;
use crate::signing::{self, Context, SharedSignatures, Signed};
use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, State, Timer};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Whether an interval that last fired at `last` has passed. A time in the future (the
/// wall clock stepped back) counts as due, so a clock step cannot silence a node.
fn interval_passed(last: Option<u64>, now_ms: u64, interval_ms: u64) -> bool {
    last.is_none_or(|t| t > now_ms || now_ms - t >= interval_ms)
}

/// Bound on the peers we remember having warned about (wrong token, clock skew).
const MAX_WARNED: usize = 256;

/// Bound on one encoded `ShoalId` (a few dozen bytes).
pub(crate) const MAX_ID_LEN: usize = 128;

/// Timing and size knobs of membership. Presets: [`MembershipConfig::lan`].
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub foca: foca::Config,
    /// How often to greet a discovered or seed peer that is not (or no longer) a member.
    pub hello_interval_ms: u64,
    /// Period of the housekeeping tick (hellos, fact pulls, purges).
    pub tick_ms: u64,
    /// Minimum time between two fact requests to the same member.
    pub facts_pull_interval_ms: u64,
    /// How long a down or left member stays listed.
    pub down_retention_ms: u64,
    /// Bound on remembered discovery hints (seeds are never dropped).
    pub max_hints: usize,
    /// A discovery hint not heard of for this long, whose node is not a member, is forgotten
    /// (mDNS announces a node again when it comes back).
    pub hint_expiry_ms: u64,
    /// Test-only: plants a known bug (a graceful leave is shown as `down`) so the simulator
    /// can prove it catches it. Always `false` outside `shoal sim --planted-bug`.
    #[doc(hidden)]
    pub planted_bug: bool,
}

impl MembershipConfig {
    /// foca's LAN preset sized for `expected_nodes`, with shoal's housekeeping on top.
    pub fn lan(expected_nodes: u32) -> Self {
        let mut foca = foca::Config::new_lan(NonZeroU32::new(expected_nodes.max(2)).unwrap_or(NonZeroU32::MIN));
        // Leave room in a sealed datagram for the envelope around foca's payload.
        foca.max_packet_size = std::num::NonZeroUsize::new(MAX_PLAINTEXT_LEN - 32).unwrap_or(foca.max_packet_size);
        Self {
            foca,
            hello_interval_ms: 2_000,
            tick_ms: 500,
            facts_pull_interval_ms: 2_000,
            down_retention_ms: 24 * 3600 * 1000,
            max_hints: 1024,
            hint_expiry_ms: 10 * 60 * 1000,
            planted_bug: false,
        }
    }
}

/// A peer someone told us about: mDNS (with its TXT fields) or a `--join` seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHint {
    pub cluster: ClusterId,
    pub node: NodeId,
    pub addr: SocketAddr,
}

/// How a member is seen from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
    Left,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        }
    }
}

/// A change in how a member is seen, emitted once per change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEvent {
    pub node: NodeId,
    pub state: MemberState,
    pub addr: SocketAddr,
    pub incarnation: u32,
}

/// One row of `shoal members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub name: Option<String>,
    pub addr: SocketAddr,
    pub state: MemberState,
    pub labels: BTreeMap<String, String>,
    /// Generation of the node's identity: grows on restart and on rejoin after being down.
    pub incarnation: u32,
    pub version: Option<String>,
    /// When this state was first seen here (ms since the Unix epoch).
    pub since_ms: u64,
    pub is_self: bool,
    /// The node says it belongs to a formed cluster (its gossiped `in_cluster` fact).
    #[serde(default)]
    pub in_cluster: bool,
    /// What the node offers for placement (empty until its facts arrive).
    #[serde(default)]
    pub resources: NodeResources,
    /// The gossip address the node gave in its own signed facts (`None` until they arrive).
    /// Unlike `addr` (which SWIM spreads and any key holder can claim), only the node itself
    /// can set it: the leader moves a node's Raft address by this one alone.
    #[serde(default)]
    pub signed_addr: Option<SocketAddr>,
}

/// Counters of gossip traffic; every dropped datagram is counted under its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub dropped_forged: u64,
    pub dropped_replayed: u64,
    pub dropped_clock_skew: u64,
    pub dropped_malformed: u64,
    /// Authentic, but sealed for another node (a replay of someone else's traffic).
    pub dropped_misdirected: u64,
    pub foca_rejected: u64,
    pub foreign_cluster_hints: u64,
    /// Where the last hint of another cluster came from (the agent tells the user about it).
    #[serde(default)]
    pub last_foreign_hint: Option<SocketAddr>,
    /// Messages carrying this node's id from another address (see the logged error).
    pub duplicate_identity: u64,
    /// Facts or leaves about a node that it did not sign (a key holder forging them).
    #[serde(default)]
    pub dropped_bad_signature: u64,
}

/// Timers the core asks the driver to fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberTimer {
    Foca(Timer<ShoalId>),
    Tick,
    /// Resend `Leave` to members that have not acknowledged it.
    LeaveRetry,
}

/// How often, and how many times, a leaving node repeats unacknowledged `Leave`s.
pub const LEAVE_RETRY_MS: u64 = 200;
pub const LEAVE_ATTEMPTS: u32 = 5;

/// What the driver must do after a call into the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Send { to: SocketAddr, packet: Vec<u8> },
    Schedule { after: Duration, timer: MemberTimer },
    Event(MemberEvent),
}

/// The plaintext of a sealed datagram.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Envelope {
    Foca(Vec<u8>),
    Hello(ShoalId),
    /// The leaving identity (encoded `ShoalId`), signed by its node.
    Leave(Signed),
    LeaveAck(NodeId),
    FactsPull(ShoalId),
    /// The sender's own facts (encoded `NodeFacts`), signed by it.
    Facts(Signed),
    /// "I have suspected you at this incarnation for a long time": asks the member to refute.
    /// Repairs a foca edge case: a suspicion whose down-timer was invalidated (our own
    /// identity renewal or disconnect resets foca's timer token) and whose gossip never
    /// reached the suspect stays `Suspect` forever. Refuting bumps the suspect's incarnation,
    /// which clears the suspicion everywhere.
    /// `from` suspects `about` at `incarnation`. If `about` is an older generation of the
    /// receiver, the receiver announces itself to `from` instead.
    Suspected { from: ShoalId, about: ShoalId, incarnation: u16 },
}

/// A leave in progress.
struct Leaving {
    /// Members that have not acknowledged our `Leave`.
    pending: BTreeMap<NodeId, SocketAddr>,
    attempts: u32,
}

struct Record {
    id: ShoalId,
    state: MemberState,
    since_ms: u64,
    /// The node announced it was leaving with exactly this identity.
    left: bool,
    last_pull_ms: Option<u64>,
    /// foca's incarnation of this member, as last seen.
    swim_incarnation: u16,
    last_nudge_ms: Option<u64>,
}

struct Hint {
    node: Option<NodeId>,
    seed: bool,
    last_hello_ms: Option<u64>,
    last_heard_ms: u64,
}

/// The membership state machine of one node. See the module docs.
pub struct Membership<R: Rng + SeedableRng> {
    cfg: MembershipConfig,
    cluster: ClusterId,
    foca: Foca<ShoalId, WireCodec, R, FactsHandler>,
    rt: AccumulatingRuntime<ShoalId>,
    sealer: Sealer,
    rng: R,
    facts: FactsTable,
    own_facts: NodeFacts,
    /// `own_facts` as last signed (the answer to a pull).
    own_signed: Option<Signed>,
    sigs: SharedSignatures,
    /// Facts and leaves refused for their signature (shared with foca's broadcast handler).
    forged: Arc<AtomicU64>,
    records: BTreeMap<NodeId, Record>,
    hints: BTreeMap<SocketAddr, Hint>,
    leaving: Option<Leaving>,
    /// foca is connected to the cluster (false after an automatic rejoin until data flows).
    connected: bool,
    started_ms: u64,
    stats: GossipStats,
    /// Sources already warned about, so each problem is logged once per peer.
    warned: std::collections::BTreeSet<(SocketAddr, &'static str)>,
}

impl<R: Rng + SeedableRng> Membership<R> {
    /// `gossip_key` and `cluster` come from the join secret; `sigs` signs what this node says
    /// about itself and checks what others say about themselves; `rng` is this node's only
    /// source of randomness (OS-seeded for real, seed-derived in the simulator).
    pub fn new(
        cfg: MembershipConfig,
        identity: ShoalId,
        own_facts: NodeFacts,
        cluster: ClusterId,
        gossip_key: [u8; 32],
        sigs: SharedSignatures,
        mut rng: R,
    ) -> Self {
        // Our own facts enter the table through `publish_own_facts` (foca's broadcast
        // handler stores them): storing them here first would make the handler see them as
        // stale and foca would never disseminate them.
        let facts: FactsTable = Arc::new(Mutex::new(BTreeMap::new()));
        let foca_rng = R::from_rng(&mut rng);
        let forged = Arc::new(AtomicU64::new(0));
        let handler = FactsHandler { table: facts.clone(), own: own_facts.node, sigs: sigs.clone(), forged: forged.clone() };
        let foca = Foca::with_custom_broadcast(identity, cfg.foca.clone(), foca_rng, WireCodec, handler);
        Self {
            cfg,
            cluster,
            foca,
            rt: AccumulatingRuntime::new(),
            sealer: Sealer::new(gossip_key),
            rng,
            facts,
            own_facts,
            own_signed: None,
            sigs,
            forged,
            records: BTreeMap::new(),
            hints: BTreeMap::new(),
            leaving: None,
            connected: false,
            started_ms: 0,
            stats: GossipStats::default(),
            warned: std::collections::BTreeSet::new(),
        }
    }

    pub fn identity(&self) -> &ShoalId {
        self.foca.identity()
    }

    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    /// First call after construction: starts the housekeeping tick and queues our facts.
    pub fn start(&mut self, now_ms: u64) -> Vec<Effect> {
        self.started_ms = now_ms;
        let mut out = vec![Effect::Schedule { after: Duration::from_millis(0), timer: MemberTimer::Tick }];
        self.publish_own_facts();
        self.drain(now_ms, &mut out);
        out
    }

    /// Signs our facts and queues them for dissemination; foca's handler stores them in the
    /// table.
    fn publish_own_facts(&mut self) {
        let signed = self.own_facts.encode().map(|body| signing::sign(self.sigs.as_ref(), Context::Facts, body));
        let queued = match signed.and_then(|signed| {
            let bytes = encode_signed_facts(&signed);
            self.own_signed = Some(signed);
            bytes
        }) {
            Ok(bytes) => self.foca.add_broadcast(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not queue own facts for gossip");
                false
            }),
            Err(e) => {
                tracing::warn!(error = %e, "could not encode own facts");
                false
            }
        };
        if !queued {
            store_if_newer(&self.facts, self.own_facts.clone());
        }
    }

    /// A static seed (`--join`): greeted until it answers, and again whenever it is not a member.
    pub fn add_seed(&mut self, addr: SocketAddr) {
        self.hints
            .entry(addr)
            .and_modify(|h| h.seed = true)
            .or_insert(Hint { node: None, seed: true, last_hello_ms: None, last_heard_ms: 0 });
    }

    /// A peer seen by discovery.
    pub fn handle_discovered(&mut self, now_ms: u64, hint: PeerHint) -> Vec<Effect> {
        let mut out = Vec::new();
        if hint.cluster != self.cluster {
            self.stats.foreign_cluster_hints += 1;
            self.stats.last_foreign_hint = Some(hint.addr);
            return out;
        }
        if hint.node == self.own_facts.node {
            if hint.addr != self.identity().addr {
                let claimed = ShoalId { node: hint.node, addr: hint.addr, bump: 0 };
                self.check_duplicate_identity(&claimed);
            }
            return out;
        }
        let is_new = !self.hints.contains_key(&hint.addr);
        let entry = self.hints.entry(hint.addr).or_insert(Hint {
            node: Some(hint.node),
            seed: false,
            last_hello_ms: None,
            last_heard_ms: now_ms,
        });
        entry.node = Some(hint.node);
        entry.last_heard_ms = now_ms;
        if is_new {
            tracing::debug!(peer = %hint.node.short(), addr = %hint.addr, "discovered peer");
            self.bound_hints();
        }
        self.greet_due(now_ms, &mut out);
        out
    }

    /// A datagram arrived from `from`.
    pub fn handle_datagram(&mut self, now_ms: u64, from: SocketAddr, packet: &[u8]) -> Vec<Effect> {
        let mut out = Vec::new();
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        let (plaintext, addressee) = match self.sealer.open(now_ms, &self.own_facts.node.0, packet) {
            Ok(p) => p,
            Err(e) => {
                match e {
                    OpenError::Forged => {
                        self.stats.dropped_forged += 1;
                        self.warn_once(from, "forged", || {
                            tracing::warn!(%from, "datagrams from this peer do not authenticate: is it started with a different join token?")
                        });
                    }
                    OpenError::Replayed => self.stats.dropped_replayed += 1,
                    OpenError::OutsideWindow { skew_ms } => {
                        self.stats.dropped_clock_skew += 1;
                        self.warn_once(from, "skew", || {
                            tracing::warn!(%from, skew_s = skew_ms / 1000, "this peer's clock is too far from ours for its gossip to be accepted: check NTP on both machines")
                        });
                    }
                    OpenError::TooShort | OpenError::TooLarge | OpenError::UnknownVersion => {
                        self.stats.dropped_malformed += 1
                    }
                }
                tracing::trace!(%from, error = %e, "dropped datagram");
                return out;
            }
        };
        let envelope: Envelope = match shoal_wire::decode::<_, MAX_PLAINTEXT_LEN>(&plaintext) {
            Ok(env) => env,
            Err(e) => {
                self.stats.dropped_malformed += 1;
                tracing::debug!(%from, error = %e, "dropped undecodable datagram");
                return out;
            }
        };
        if !matches!(envelope, Envelope::Hello(_)) && addressee == Addressee::Anyone {
            self.stats.dropped_misdirected += 1;
            return out;
        }
        if let Some(leaving) = self.leaving.as_mut() {
            if let Envelope::LeaveAck(node) = envelope {
                leaving.pending.remove(&node);
            }
            return out;
        }
        match envelope {
            Envelope::Foca(data) => {
                if let Err(e) = self.foca.handle_data(&data, &mut self.rt) {
                    self.stats.foca_rejected += 1;
                    tracing::trace!(%from, error = %e, "foca rejected datagram");
                }
            }
            Envelope::Hello(peer) => {
                self.check_duplicate_identity(&peer);
                if peer.node != self.own_facts.node {
                    if let Err(e) = self.foca.announce(peer, &mut self.rt) {
                        tracing::debug!(error = %e, "announce failed");
                    }
                }
            }
            Envelope::Leave(signed) => match shoal_wire::decode::<ShoalId, MAX_ID_LEN>(&signed.body) {
                Ok(peer) if peer.node == self.own_facts.node => {}
                Ok(peer) if !signing::verify(self.sigs.as_ref(), Context::Leave, peer.node, &signed) => {
                    self.forged.fetch_add(1, Ordering::Relaxed);
                    self.warn_once(from, "forged-leave", || {
                        tracing::warn!(%from, node = %peer.node.short(), "ignored a leave that its node did not sign (a token holder forging it?)")
                    });
                }
                Ok(peer) => {
                    let (addr, node) = (peer.addr, peer.node);
                    self.handle_leave(peer);
                    self.send(now_ms, addr, Some(node), &Envelope::LeaveAck(self.own_facts.node), &mut out);
                }
                Err(e) => {
                    self.stats.dropped_malformed += 1;
                    tracing::debug!(%from, error = %e, "dropped undecodable leave");
                }
            },
            Envelope::LeaveAck(_) => {}
            Envelope::FactsPull(peer) => {
                if let (true, Some(signed)) = (peer.node != self.own_facts.node, self.own_signed.clone()) {
                    self.send(now_ms, peer.addr, Some(peer.node), &Envelope::Facts(signed), &mut out);
                }
            }
            Envelope::Suspected { from, about, incarnation } => {
                if about == *self.identity() {
                    let update = Member::new(about, incarnation, State::Suspect);
                    if let Err(e) = self.foca.apply_many(std::iter::once(update), true, &mut self.rt) {
                        tracing::debug!(error = %e, "could not refute suspicion");
                    }
                    // Gossip carries the refutation to random members; the asker, poorly
                    // connected by definition, gets it directly too.
                    if from.node != self.own_facts.node {
                        if let Err(e) = self.foca.announce(from, &mut self.rt) {
                            tracing::debug!(error = %e, "announce failed");
                        }
                    }
                } else if about.node == self.own_facts.node && from.node != self.own_facts.node {
                    // They suspect an older generation of us: tell them who we are now.
                    if let Err(e) = self.foca.announce(from, &mut self.rt) {
                        tracing::debug!(error = %e, "announce failed");
                    }
                }
            }
            Envelope::Facts(signed) => match accept_peer_facts(&self.facts, self.sigs.as_ref(), self.own_facts.node, &signed) {
                Ok(FactsVerdict::Stored(_) | FactsVerdict::Stale) => {}
                Ok(FactsVerdict::Forged) => {
                    self.forged.fetch_add(1, Ordering::Relaxed);
                    self.warn_once(from, "forged-facts", || {
                        tracing::warn!(%from, "ignored facts that their node did not sign (a token holder forging them?)")
                    });
                }
                Err(e) => {
                    self.stats.dropped_malformed += 1;
                    tracing::debug!(%from, error = %e, "dropped invalid facts");
                }
            },
        }
        self.drain(now_ms, &mut out);
        out
    }

    /// A timer the driver scheduled has fired.
    pub fn handle_timer(&mut self, now_ms: u64, timer: MemberTimer) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.leaving.is_some() {
            if timer == MemberTimer::LeaveRetry {
                self.retry_leave(now_ms, &mut out);
            }
            return out;
        }
        match timer {
            MemberTimer::Foca(t) => {
                if let Err(e) = self.foca.handle_timer(t, &mut self.rt) {
                    tracing::debug!(error = %e, "foca timer failed");
                }
            }
            MemberTimer::Tick => {
                self.greet_due(now_ms, &mut out);
                self.pull_missing_facts(now_ms, &mut out);
                self.nudge_stuck_suspects(now_ms, &mut out);
                self.purge(now_ms);
                out.push(Effect::Schedule {
                    after: Duration::from_millis(self.cfg.tick_ms),
                    timer: MemberTimer::Tick,
                });
            }
            MemberTimer::LeaveRetry => {}
        }
        self.drain(now_ms, &mut out);
        out
    }

    /// Changes this node's `in_cluster` fact and gossips the new facts (no-op if unchanged).
    pub fn set_in_cluster(&mut self, in_cluster: bool) {
        if self.own_facts.in_cluster == in_cluster {
            return;
        }
        self.own_facts.in_cluster = in_cluster;
        self.own_facts.seq += 1;
        self.publish_own_facts();
    }

    /// Changes this node's `engine_ok` fact and gossips the new facts (no-op if unchanged).
    pub fn set_engine_ok(&mut self, ok: bool) {
        if self.own_facts.resources.engine_ok == ok {
            return;
        }
        self.own_facts.resources.engine_ok = ok;
        self.own_facts.seq += 1;
        self.publish_own_facts();
    }

    /// Leave on purpose: gossip facts saying we left, tell every member directly (repeating
    /// to those that do not acknowledge, see [`Self::leave_done`]), then let foca gossip our
    /// departure. After this the core only handles acknowledgements and its retry timer.
    pub fn leave(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.leaving.is_some() {
            return out;
        }
        self.own_facts.left = true;
        self.own_facts.seq += 1;
        self.publish_own_facts();
        let pending: BTreeMap<NodeId, SocketAddr> = self.foca.iter_members().map(|m| (m.id().node, m.id().addr)).collect();
        self.leaving = Some(Leaving { pending, attempts: 0 });
        self.retry_leave(now_ms, &mut out);
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::debug!(error = %e, "foca leave failed");
        }
        self.drain(now_ms, &mut out);
        out.retain(|e| !matches!(e, Effect::Schedule { timer: MemberTimer::Foca(_) | MemberTimer::Tick, .. }));
        out
    }

    /// The leave is over: every member acknowledged it, or the attempts ran out.
    pub fn leave_done(&self) -> bool {
        self.leaving.as_ref().is_some_and(|l| l.pending.is_empty() || l.attempts >= LEAVE_ATTEMPTS)
    }

    fn retry_leave(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        if self.leave_done() {
            return;
        }
        let leave = match shoal_wire::encode::<_, MAX_ID_LEN>(self.identity()) {
            Ok(body) => Envelope::Leave(signing::sign(self.sigs.as_ref(), Context::Leave, body)),
            Err(e) => {
                tracing::warn!(error = %e, "could not encode our leave");
                return;
            }
        };
        let Some(leaving) = self.leaving.as_mut() else { return };
        leaving.attempts += 1;
        let targets: Vec<(NodeId, SocketAddr)> = leaving.pending.iter().map(|(n, a)| (*n, *a)).collect();
        for (node, addr) in targets {
            self.send(now_ms, addr, Some(node), &leave, out);
        }
        if !self.leave_done() {
            out.push(Effect::Schedule { after: Duration::from_millis(LEAVE_RETRY_MS), timer: MemberTimer::LeaveRetry });
        }
    }

    /// Gossip addresses of every other node this one has known (alive or not), for the
    /// agent to persist: a restarted node greets them as seeds, so it finds the cluster even
    /// when discovery stays silent (a lost mDNS exchange, or no multicast at all).
    pub fn known_peers(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.records.values().map(|r| r.id.addr).collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Every member known here, ourselves included, ordered by node id.
    pub fn members(&self) -> Vec<MemberView> {
        let facts = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        let view = |id: &ShoalId, state, since_ms, is_self| {
            let f = facts.get(&id.node);
            MemberView {
                id: id.node,
                name: f.map(|f| f.name.clone()),
                addr: id.addr,
                state,
                labels: f.map(|f| f.labels.clone()).unwrap_or_default(),
                incarnation: id.bump,
                version: f.map(|f| f.version.clone()),
                since_ms,
                is_self,
                in_cluster: f.is_some_and(|f| f.in_cluster && !f.left),
                resources: f.map(|f| f.resources.clone()).unwrap_or_default(),
                signed_addr: f.map(|f| f.gossip_addr),
            }
        };
        let own_state = if self.leaving.is_some() { MemberState::Left } else { MemberState::Alive };
        let mut out: Vec<MemberView> = self
            .records
            .values()
            .map(|r| view(&r.id, r.state, r.since_ms, false))
            .collect();
        out.push(view(self.identity(), own_state, self.started_ms, true));
        out.sort_by_key(|m| m.id);
        out
    }

    fn handle_leave(&mut self, peer: ShoalId) {
        let Some(record) = self.records.get_mut(&peer.node) else { return };
        if record.id.bump > peer.bump {
            return; // a stale leave of an older generation
        }
        record.left = true;
        record.id = peer.clone();
        let update = Member::new(peer, 0, State::Down);
        if let Err(e) = self.foca.apply_many(std::iter::once(update), true, &mut self.rt) {
            tracing::debug!(error = %e, "could not apply leave");
        }
    }

    /// Seals `envelope` for node `dst` (or for anyone, when its id is not known) at `to`.
    fn warn_once(&mut self, from: SocketAddr, what: &'static str, log: impl FnOnce()) {
        if self.warned.len() < MAX_WARNED && self.warned.insert((from, what)) {
            log();
        }
    }

    /// Our node id arrived with another address: a copied data dir or cloned SD card.
    fn check_duplicate_identity(&mut self, claimed: &ShoalId) {
        if claimed.node == self.own_facts.node && claimed.addr != self.identity().addr {
            self.stats.duplicate_identity += 1;
            let at = claimed.addr;
            self.warn_once(at, "duplicate", || {
                tracing::error!(other = %at, "another machine uses this node's identity (a copied data dir or cloned disk?); on one of them move node.key and boot_count away and restart it")
            });
        }
    }

    fn send(&mut self, now_ms: u64, to: SocketAddr, dst: Option<NodeId>, envelope: &Envelope, out: &mut Vec<Effect>) {
        let plaintext = match shoal_wire::encode::<_, MAX_PLAINTEXT_LEN>(envelope) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "gossip message too large, not sent");
                return;
            }
        };
        let dst = dst.map(|n| n.0).unwrap_or(ANYONE);
        match self.sealer.seal(now_ms, &mut self.rng, &dst, &plaintext) {
            Ok(packet) => {
                self.stats.packets_out += 1;
                self.stats.bytes_out += packet.len() as u64;
                out.push(Effect::Send { to, packet });
            }
            Err(e) => tracing::warn!(error = %e, "could not seal gossip message"),
        }
    }

    fn greet_due(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let me = self.identity().clone();
        let mut due = Vec::new();
        for (addr, hint) in &self.hints {
            let connected = self.connected && hint.node.is_some_and(|n| {
                self.records.get(&n).is_some_and(|r| matches!(r.state, MemberState::Alive | MemberState::Suspect))
            });
            let waited = interval_passed(hint.last_hello_ms, now_ms, self.cfg.hello_interval_ms);
            if !connected && waited {
                // Sealed to the announced node when discovery named it, so a captured greeting
                // cannot be replayed to others; seeds (whose id may change if the machine is
                // reinstalled) are greeted as anyone.
                let dst = if hint.seed { None } else { hint.node };
                due.push((*addr, dst));
            }
        }
        for (addr, dst) in due {
            if let Some(h) = self.hints.get_mut(&addr) {
                h.last_hello_ms = Some(now_ms);
            }
            self.send(now_ms, addr, dst, &Envelope::Hello(me.clone()), out);
        }
    }

    fn pull_missing_facts(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let me = self.identity().clone();
        let mut due = Vec::new();
        {
            let facts = self.facts.lock().unwrap_or_else(|p| p.into_inner());
            for (node, r) in &self.records {
                // Missing, or saying it left while the member is active again (stale).
                let missing = facts.get(node).is_none_or(|f| f.left);
                let active = matches!(r.state, MemberState::Alive | MemberState::Suspect);
                let waited = interval_passed(r.last_pull_ms, now_ms, self.cfg.facts_pull_interval_ms);
                if missing && active && waited {
                    due.push((*node, r.id.addr));
                }
            }
        }
        for (node, addr) in due {
            if let Some(r) = self.records.get_mut(&node) {
                r.last_pull_ms = Some(now_ms);
            }
            self.send(now_ms, addr, Some(node), &Envelope::FactsPull(me.clone()), out);
        }
    }

    fn nudge_stuck_suspects(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let stuck_after = 2 * self.cfg.foca.suspect_to_down_after.as_millis() as u64;
        let mut due = Vec::new();
        for (node, r) in &self.records {
            let stuck = r.state == MemberState::Suspect && now_ms.saturating_sub(r.since_ms) > stuck_after;
            let waited = interval_passed(r.last_nudge_ms, now_ms, stuck_after);
            if stuck && waited {
                due.push((*node, r.id.clone(), r.swim_incarnation));
            }
        }
        for (node, id, incarnation) in due {
            if let Some(r) = self.records.get_mut(&node) {
                r.last_nudge_ms = Some(now_ms);
            }
            tracing::debug!(node = %node.short(), "suspicion outlived its timer; asking the member to refute");
            let (to, node) = (id.addr, id.node);
            let from = self.identity().clone();
            self.send(now_ms, to, Some(node), &Envelope::Suspected { from, about: id, incarnation }, out);
        }
    }

    fn purge(&mut self, now_ms: u64) {
        let retention = self.cfg.down_retention_ms;
        let gone: Vec<NodeId> = self
            .records
            .iter()
            .filter(|(_, r)| matches!(r.state, MemberState::Down | MemberState::Left))
            .filter(|(_, r)| now_ms.saturating_sub(r.since_ms) > retention)
            .map(|(n, _)| *n)
            .collect();
        for node in gone {
            self.records.remove(&node);
            self.facts.lock().unwrap_or_else(|p| p.into_inner()).remove(&node);
        }
        let expiry = self.cfg.hint_expiry_ms;
        let records = &self.records;
        self.hints.retain(|_, h| {
            let member = h.node.is_some_and(|n| {
                records.get(&n).is_some_and(|r| matches!(r.state, MemberState::Alive | MemberState::Suspect))
            });
            h.seed || member || now_ms.saturating_sub(h.last_heard_ms) <= expiry
        });
    }

    fn bound_hints(&mut self) {
        while self.hints.len() > self.cfg.max_hints {
            let oldest = self
                .hints
                .iter()
                .filter(|(_, h)| !h.seed)
                .min_by_key(|(_, h)| h.last_heard_ms)
                .map(|(a, _)| *a);
            match oldest {
                Some(addr) => {
                    self.hints.remove(&addr);
                }
                None => break,
            }
        }
    }

    /// Turns what foca queued into effects, then reconciles the member table with foca.
    fn drain(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        self.stats.dropped_bad_signature = self.forged.load(Ordering::Relaxed);
        while let Some((to, data)) = self.rt.to_send() {
            self.send(now_ms, to.addr, Some(to.node), &Envelope::Foca(data.to_vec()), out);
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            out.push(Effect::Schedule { after, timer: MemberTimer::Foca(timer) });
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::Defunct if self.leaving.is_some() => self.connected = false,
                OwnedNotification::Defunct => {
                    self.connected = false;
                    tracing::warn!("this node was declared down by the cluster and cannot rejoin")
                }
                OwnedNotification::Rejoin(id) => {
                    // foca reset itself: until data flows again it probes nobody, so greet
                    // every known peer (see `greet_due`).
                    self.connected = false;
                    tracing::warn!(incarnation = id.bump, "the cluster declared this node down; rejoining with a new generation")
                }
                OwnedNotification::Active => {
                    self.connected = true;
                    tracing::debug!("connected to the cluster")
                }
                OwnedNotification::Idle => {
                    self.connected = false;
                    tracing::debug!("no other members known")
                }
                _ => {}
            }
        }
        self.sync(now_ms, out);
    }

    fn sync(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let own = self.own_facts.node;
        let seen: Vec<(ShoalId, State, u16)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().node != own)
            .map(|m| (m.id().clone(), m.state(), m.incarnation()))
            .collect();
        for (id, foca_state, swim_incarnation) in seen {
            if let Some(r) = self.records.get_mut(&id.node) {
                if r.id == id {
                    r.swim_incarnation = swim_incarnation;
                }
            }
            let record = self.records.get(&id.node);
            if let Some(r) = record {
                // Only a newer or equal generation may change what we show.
                if r.id.bump > id.bump {
                    continue;
                }
            }
            let boot = (id.bump >> 16) as u16;
            let said_left = record.is_some_and(|r| r.left && r.id == id)
                || self.facts.lock().unwrap_or_else(|p| p.into_inner()).get(&id.node).is_some_and(|f| f.left && f.boot == boot);
            // The planted bug (simulator only) forgets every leave.
            let left = said_left && !self.cfg.planted_bug;
            let state = match foca_state {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down if left => MemberState::Left,
                State::Down => MemberState::Down,
            };
            let changed = record.is_none_or(|r| r.id != id || r.state != state);
            if !changed {
                continue;
            }
            let name = self.facts.lock().unwrap_or_else(|p| p.into_inner()).get(&id.node).map(|f| f.name.clone());
            tracing::info!(
                node = %id.node.short(),
                name = name.as_deref().unwrap_or("?"),
                addr = %id.addr,
                incarnation = id.bump,
                state = state.as_str(),
                "member {}",
                state.as_str()
            );
            // Remember "left" only for the generation that left.
            let keep_left = state == MemberState::Left || record.is_some_and(|r| r.left && r.id == id);
            let last_pull_ms = record.and_then(|r| if r.id == id { r.last_pull_ms } else { None });
            out.push(Effect::Event(MemberEvent { node: id.node, state, addr: id.addr, incarnation: id.bump }));
            // A seed (or remembered peer) at this address is now known to be this node, so it
            // stops being greeted while the node is a member, like an mDNS hint.
            if let Some(h) = self.hints.get_mut(&id.addr) {
                h.node = Some(id.node);
            }
            self.records.insert(
                id.node,
                Record { id, state, since_ms: now_ms, left: keep_left, last_pull_ms, swim_incarnation, last_nudge_ms: None },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::core;

    #[test]
    fn own_facts_are_queued_for_gossip_and_listed() {
        let mut a = core(1);
        a.start(0);
        assert_eq!(a.foca.custom_broadcast_backlog(), 1, "own facts must be disseminated");
        assert_eq!(a.members()[0].name.as_deref(), Some("n1"));
        a.leave(10);
        assert_eq!(a.foca.custom_broadcast_backlog(), 1, "the left facts replace the old ones");
        assert!(a.facts.lock().expect("lock").get(&NodeId([1; 16])).is_some_and(|f| f.left));
    }

    #[test]
    fn in_cluster_fact_is_regossiped_with_a_higher_seq_and_listed() {
        let mut a = core(1);
        a.start(0);
        let seq = |a: &Membership<rand::rngs::StdRng>| a.facts.lock().expect("lock").get(&NodeId([1; 16])).map(|f| f.seq);
        let before = seq(&a);
        assert!(!a.members()[0].in_cluster);
        a.set_in_cluster(true);
        assert!(a.members()[0].in_cluster, "the view shows the new fact");
        assert!(seq(&a) > before, "newer facts replace the old ones everywhere");
        let after = seq(&a);
        a.set_in_cluster(true);
        assert_eq!(seq(&a), after, "an unchanged fact is not gossiped again");
    }

    #[test]
    fn unheard_discovery_hints_expire_but_seeds_stay() {
        let mut a = core(1);
        a.start(0);
        a.add_seed("10.0.0.9:7480".parse().expect("addr"));
        let hint = PeerHint { cluster: ClusterId([1; 8]), node: NodeId([2; 16]), addr: "10.0.0.2:7480".parse().expect("addr") };
        a.handle_discovered(0, hint);
        assert_eq!(a.hints.len(), 2);
        let later = a.cfg.hint_expiry_ms + 1;
        a.handle_timer(later, MemberTimer::Tick);
        assert_eq!(a.hints.keys().map(|k| k.to_string()).collect::<Vec<_>>(), vec!["10.0.0.9:7480"]);
    }

    #[test]
    fn foreign_cluster_hints_are_ignored_and_counted() {
        let mut a = core(1);
        a.start(0);
        let out = a.handle_discovered(5, PeerHint { cluster: ClusterId([2; 8]), node: NodeId([2; 16]), addr: "10.0.0.2:7480".parse().expect("addr") });
        assert!(out.is_empty());
        assert_eq!(a.stats().foreign_cluster_hints, 1);
        assert!(a.stats().last_foreign_hint.is_some());
    }
}

#[cfg(test)]
mod insider_tests {
    use super::*;
    use crate::signing::Signatures;
    use crate::testing::{addr, core, facts, forgeries, id, rng, signatures, GOSSIP_KEY};

    type Core = Membership<rand::rngs::StdRng>;

    /// Delivers sends between `cores` (by address) until none is left; timers are not run.
    fn pump(cores: &mut [&mut Core], now_ms: u64, mut queue: Vec<(SocketAddr, Effect)>) {
        let mut rounds = 0;
        while let Some((from, effect)) = queue.pop() {
            rounds += 1;
            assert!(rounds < 10_000, "the exchange does not settle");
            let Effect::Send { to, packet } = effect else { continue };
            if let Some(core) = cores.iter_mut().find(|c| c.identity().addr == to) {
                let at = core.identity().addr;
                queue.extend(core.handle_datagram(now_ms, from, &packet).into_iter().map(|e| (at, e)));
            }
        }
    }

    fn connected_pair() -> (Core, Core) {
        let (mut a, mut b) = (core(1), core(2));
        let mut queue: Vec<(SocketAddr, Effect)> = a.start(0).into_iter().map(|e| (addr(1), e)).collect();
        queue.extend(b.start(0).into_iter().map(|e| (addr(2), e)));
        a.add_seed(addr(2));
        for now in [1, 2_500, 5_000] {
            queue.extend(a.handle_timer(now, MemberTimer::Tick).into_iter().map(|e| (addr(1), e)));
            queue.extend(b.handle_timer(now, MemberTimer::Tick).into_iter().map(|e| (addr(2), e)));
            pump(&mut [&mut a, &mut b], now, std::mem::take(&mut queue));
        }
        (a, b)
    }

    fn view(core: &Core, n: u8) -> MemberView {
        core.members().into_iter().find(|m| m.id == id(n).node).expect("member listed")
    }

    #[test]
    fn an_insider_cannot_say_for_another_node_that_it_left_moved_or_lost_its_engine() {
        let (mut a, mut b) = connected_pair();
        let before = view(&a, 2);
        assert_eq!(before.state, MemberState::Alive);
        assert_eq!(before.signed_addr, Some(addr(2)), "b's own facts arrived");
        let known_seq = a.facts.lock().expect("lock").get(&id(2).node).map(|f| f.seq);

        // Node 3 holds the gossip key (the token) but is not b.
        let insider = signatures(3);
        let victim = facts(id(2).node, addr(2), known_seq.unwrap_or(0));
        let moved_to = SocketAddr::from(([10, 66, 0, 3], 7480));
        let packets = forgeries(GOSSIP_KEY, 6_000, &mut rng(9), id(1).node, insider.as_ref(), &victim, signatures(2).public_key(), moved_to);
        assert_eq!(packets.len(), 4);
        for packet in &packets {
            let out = a.handle_datagram(6_000, addr(3), packet);
            assert!(!out.iter().any(|e| matches!(e, Effect::Send { to, .. } if *to == moved_to)), "no answer to the forger's address");
        }
        let stats = a.stats();
        assert_eq!(stats.dropped_forged, 0, "the datagrams opened: the forger holds the key");
        assert_eq!(stats.dropped_bad_signature, 4, "every forgery was refused for its signature");
        let after = view(&a, 2);
        assert_eq!(after.state, MemberState::Alive, "a forged leave does not silence b");
        assert_eq!(after.incarnation, before.incarnation);
        assert_eq!(after.signed_addr, Some(addr(2)), "a forged address does not move b");
        assert_eq!(after.resources, before.resources, "forged facts do not change b's engine");
        assert_eq!(a.facts.lock().expect("lock").get(&id(2).node).map(|f| f.seq), known_seq, "b's facts are not frozen at u64::MAX");

        // b's own leave still works at once.
        let out: Vec<(SocketAddr, Effect)> = b.leave(7_000).into_iter().map(|e| (addr(2), e)).collect();
        pump(&mut [&mut a, &mut b], 7_000, out);
        assert_eq!(view(&a, 2).state, MemberState::Left);
        assert_eq!(a.stats().dropped_bad_signature, 4);
    }

    #[test]
    fn facts_broadcasts_are_kept_and_passed_on_only_when_their_node_signed_them() {
        use crate::codec::{encode_signed_facts, FactsHandler};
        use foca::BroadcastHandler;
        let table: crate::codec::FactsTable = Default::default();
        let forged = Arc::new(AtomicU64::new(0));
        let mut handler = FactsHandler { table: table.clone(), own: id(1).node, sigs: signatures(1), forged: forged.clone() };
        let sender = id(3);
        let b = facts(id(2).node, addr(2), 5);
        let body = b.encode().expect("encode");
        let by_insider = encode_signed_facts(&signing::sign(signatures(3).as_ref(), Context::Facts, body.clone())).expect("encode");
        assert_eq!(handler.receive_item(&by_insider, Some(&sender)).expect("decodes"), None, "not stored, not passed on");
        assert_eq!(forged.load(Ordering::Relaxed), 1);
        assert!(table.lock().expect("lock").is_empty());
        let by_b = encode_signed_facts(&signing::sign(signatures(2).as_ref(), Context::Facts, body)).expect("encode");
        assert!(handler.receive_item(&by_b, Some(&sender)).expect("decodes").is_some(), "b's own word is kept and passed on");
        assert_eq!(table.lock().expect("lock").get(&id(2).node).map(|f| f.seq), Some(5));
        assert_eq!(handler.receive_item(&by_b, Some(&sender)).expect("decodes"), None, "old news");
        assert_eq!(forged.load(Ordering::Relaxed), 1, "old news is not even checked");
        assert!(handler.receive_item(&[0xff; 8], Some(&sender)).is_err(), "garbage is an error");
    }
}
