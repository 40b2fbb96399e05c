//! Whole nodes (`shoal sim --whole`): every simulated machine runs what a real agent runs,
//! on the Raft mode's simulated time, network and disks:
//!
//! - **membership**: the real SWIM core (`shoal_discovery::Membership`), its datagrams on
//!   the same links as Raft (cuts, loss and delay storms hit both), its timers on the
//!   driver's agenda, and an mDNS stand-in that hints every reachable machine every 5 s;
//! - **Raft** (the Raft mode's openraft nodes): n0 creates the CA and initializes the cluster
//!   alone, as the node's bootstrap does; every other machine **joins** through a member with
//!   the real join protocol, answered by the shared controller (`shoal_control::answer_join`:
//!   the issuer unsealed from the replicated CA, the role granted, the certificate), whose
//!   writes (`RegisterNode`, `RecordIssued`) are committed before the answer;
//! - **the leader's duties**: the shared `shoal_control::LeaderCore` (what the node's
//!   `control::leader` runs), every 500 ms on whichever node believes it leads; this file
//!   only carries its effects out on the simulated Raft;
//! - **an agent** per machine: the shared `shoal_control::AgentCore` (the node's runner
//!   step) on that machine's `FakeEngine`, reporting through the leader, every second;
//! - **an operator**: creates the seed's services, and with the `leave` fault revokes one
//!   machine (`shoal node rm`), which is then switched off for good;
//! - **an intruder** (with `intruder`): asks members for certificates with a wrong secret,
//!   under its own id and under a visible member's id.
//!
//! Writes from a node that does not lead are forwarded to the leader it knows over the
//! simulated network, like the node's `Forward` frame.
//!
//! Keys: node ids are the hash of the node's public key, so every machine (and the CA and
//! the intruder) uses a fixed test key from `keys/` (generated once with openssl; not secret)
//! and the ids are the same on every run. ECDSA signatures still use ring's own randomness,
//! so certificate bytes differ between runs; nothing of them reaches the trace or a decision.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::RngExt;
use shoal_cluster::constraint::Constraint;
use shoal_cluster::scheduler::{Decision, Mode, SchedulerConfig};
use shoal_consensus::duties::{self, DutyConfig, RaftView};
use shoal_consensus::openraft::async_runtime::WatchReceiver;
use shoal_consensus::openraft::ChangeMembers;
use shoal_consensus::openraft::ServerState;
use shoal_consensus::{Applied, ClusterState, Command, IssuedCert, NodeRecord, RaftNodeId, Rejected, Response, ServiceDef};
use shoal_control::{issuer_from_state, AgentCore, ChangeKind, JoinAnswer, JoinContext, LeaderCore, LeaderEffect, LeaderInput, OwnTrust, WriteWhy};
use shoal_discovery::membership::{Effect, MemberTimer};
use shoal_discovery::{JoinSecret, MemberState, Membership, MembershipConfig, NodeFacts, NodeResources, PeerHint, ShoalId};
use shoal_engine::{ContainerSpec, ContainerState, Engine, FakeEngine, LabelFilter, RestartPolicy};
use shoal_pki::{CertInfo, ClusterCa, IssuePolicy, Issuer, JoinRequest, JoinResponse, NodeRole, SealedCaKey};
use shoal_wire::NodeId;

use super::net::exchange;
use super::store::SimStateMachine;
use super::world::{slot_of, Shared};
use super::{Action, Driver, Raft, RaftBug};
use crate::harness::{ceil_ms, EPOCH_MS};
use crate::rng::{stream, Stream};
use crate::services::{poll_ready, ServicesPlan};

/// Most machines of a whole-node run (one fixed key each).
pub const WHOLE_MAX_NODES: usize = 10;
/// The leader's duties run this often (the node's `WATCH_TICK`).
pub(crate) const DUTY_TICK_MS: u64 = 500;
/// Agents, joins and the operator act this often (the node's `RUN_TICK`).
pub(crate) const AGENT_TICK_MS: u64 = 1_000;
/// The mDNS stand-in re-announces every machine this often.
pub(crate) const LAN_REFRESH_MS: u64 = 5_000;
/// A write, a membership change or a join exchange gives up after this long.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
const GOSSIP_PORT: u16 = 7946;
/// The image every simulated service runs.
const IMAGE: &str = "sim/app:1";

const KEYS: [&str; 12] = [
    include_str!("keys/k0.pem"),
    include_str!("keys/k1.pem"),
    include_str!("keys/k2.pem"),
    include_str!("keys/k3.pem"),
    include_str!("keys/k4.pem"),
    include_str!("keys/k5.pem"),
    include_str!("keys/k6.pem"),
    include_str!("keys/k7.pem"),
    include_str!("keys/k8.pem"),
    include_str!("keys/k9.pem"),
    include_str!("keys/k10.pem"),
    include_str!("keys/k11.pem"),
];
const CA_KEY: usize = 10;
const INTRUDER_KEY: usize = 11;

fn key(index: usize) -> rcgen::KeyPair {
    rcgen::KeyPair::from_pem(KEYS[index]).expect("the simulator's fixed test keys parse")
}

fn ids() -> &'static [NodeId] {
    static IDS: OnceLock<Vec<NodeId>> = OnceLock::new();
    IDS.get_or_init(|| (0..KEYS.len()).map(|i| shoal_pki::node_id_of_key(&key(i))).collect())
}

/// The node id of machine `slot` in whole mode (the intruder's is `ids()[INTRUDER_KEY]`).
pub(crate) fn whole_id(slot: usize) -> NodeId {
    ids()[slot]
}

/// The slot of a whole-mode node id, if it is one.
pub(crate) fn whole_slot(id: &NodeId) -> Option<usize> {
    ids().iter().position(|i| i == id)
}

fn gossip_addr(slot: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, slot as u8 + 1], GOSSIP_PORT))
}

fn slot_of_gossip(addr: &SocketAddr) -> Option<usize> {
    match addr {
        SocketAddr::V4(a) if a.port() == GOSSIP_PORT && a.ip().octets()[..3] == [10, 0, 0] => Some(usize::from(a.ip().octets()[3]).checked_sub(1)?),
        _ => None,
    }
}

fn labels(slot: usize) -> BTreeMap<String, String> {
    BTreeMap::from([("sim.slot".to_string(), slot.to_string())])
}

/// Machine `slot`'s own record (what the node registers for itself: its name, its one
/// advertised address, its labels).
fn record(slot: usize) -> NodeRecord {
    NodeRecord { name: format!("n{slot}"), addr: gossip_addr(slot), labels: labels(slot) }
}


/// What a whole-node run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WholeCounts {
    pub joins: u64,
    pub joins_refused: u64,
    pub intruder_attempts: u64,
    pub intruder_refused: u64,
    pub learners_added: u64,
    pub voter_changes: u64,
    pub removals_from_raft: u64,
    pub nodes_revoked: u64,
    pub services_created: u64,
    pub scheduler_commits: u64,
    pub placements: u64,
    pub shutdowns: u64,
    pub reports: u64,
    pub container_crashes: u64,
    pub power_cut_exits: u64,
    pub gossip_sent: u64,
    /// Bytes of the sealed gossip datagrams sent (all nodes).
    pub gossip_bytes: u64,
    pub gossip_delivered: u64,
    pub gossip_dropped: u64,
}

/// One machine: what survives its crashes (engine, certificate, join state) and what its
/// current boot runs (membership core, reconciler, leader bookkeeping).
pub(crate) struct Machine {
    pub id: NodeId,
    pub core: Option<Membership<StdRng>>,
    /// Grows on every boot and crash: timers and datagrams of another life are dropped.
    pub epoch: u32,
    pub boots: u16,
    pub engine: FakeEngine,
    /// The shared controller's agent step (its reconciler), per boot.
    pub agent: Option<AgentCore>,
    /// The shared controller's leader bookkeeping.
    pub leader: LeaderCore,
    /// Holds a certificate of the cluster (on disk).
    pub cert: Option<IssuedCert>,
    /// Revoked and switched off for good.
    pub removed: bool,
    /// The boot (epoch) whose duty / agent / join task is in flight, if any.
    pub duty_busy: Option<u32>,
    pub agent_busy: Option<u32>,
    pub join_busy: Option<u32>,
    pub join_attempts: u64,
    /// Join nonces and certificate serials.
    pub rng: StdRng,
}

pub(crate) struct Whole {
    pub secret: JoinSecret,
    pub intruder_secret: JoinSecret,
    pub machines: Vec<Machine>,
    /// The CA n0 created, until it is committed (the node's `ca.pending`).
    pub pending_ca: Option<(String, SealedCaKey)>,
    pub plan: ServicesPlan,
    pub services_created: BTreeSet<String>,
    pub operator_busy: bool,
    /// Machines revoked by the operator, to be switched off by the driver.
    pub to_switch_off: Vec<usize>,
    pub revoke_started: bool,
    pub late_joiner: Option<usize>,
    pub rng: StdRng,
    pub counts: WholeCounts,
    pub bug: Option<RaftBug>,
}

impl Whole {
    pub(crate) fn new(seed: u64, nodes: usize, bug: Option<RaftBug>, container_crashes: bool) -> Self {
        let mut rng = stream(seed, Stream::Whole);
        let secret = JoinSecret::generate(&mut rng);
        let intruder_secret = JoinSecret::generate(&mut rng);
        let plan = ServicesPlan::derive(seed, nodes, container_crashes, None);
        let machines = (0..nodes)
            .map(|slot| {
                let engine = FakeEngine::new(plan.start_delay_ms);
                engine.add_image(IMAGE);
                Machine {
                    id: whole_id(slot),
                    core: None,
                    epoch: 0,
                    boots: 0,
                    engine,
                    agent: None,
                    leader: LeaderCore::new(duty_config(slot)),
                    cert: None,
                    removed: false,
                    duty_busy: None,
                    agent_busy: None,
                    join_busy: None,
                    join_attempts: 0,
                    rng: stream(seed, Stream::WholeMachine { slot }),
                }
            })
            .collect();
        Self {
            secret,
            intruder_secret,
            machines,
            pending_ca: None,
            plan,
            services_created: BTreeSet::new(),
            operator_busy: false,
            to_switch_off: Vec::new(),
            revoke_started: false,
            late_joiner: None,
            rng,
            counts: WholeCounts::default(),
            bug,
        }
    }

    pub(crate) fn honest(&self, id: &NodeId) -> bool {
        self.machines.iter().any(|m| m.id == *id)
    }
}

/// Milliseconds since the Unix epoch now: membership's and the state's time unit.
fn abs_ms(world: &Shared) -> u64 {
    EPOCH_MS + world.now_ms()
}

fn system_time(abs_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(abs_ms)
}

fn duty_config(slot: usize) -> DutyConfig {
    DutyConfig { me: whole_id(slot), target_voters: 3, dead_voter_after_ms: 30_000, scheduler: SchedulerConfig::default() }
}

async fn read_state(raft: &Raft) -> Option<std::sync::Arc<ClusterState>> {
    raft.with_state_machine(|sm: &mut SimStateMachine| Box::pin(async move { sm.shared() })).await.ok()
}

/// A write on this node's Raft (it believes it leads).
async fn write_local(raft: &Raft, cmd: Command) -> Result<Response, String> {
    match tokio::time::timeout(OP_TIMEOUT, raft.client_write(cmd)).await {
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(e)) => Err(super::short_error(&e.to_string())),
        Err(_) => Err("no commit in time".into()),
    }
}

/// A write from node `from`: on its own Raft if it leads, else forwarded to the leader it
/// knows over the simulated network (the node's `Forward` frame).
async fn forward_write(world: &Shared, from: usize, cmd: Command) -> Result<Response, String> {
    let raft = world.raft(from).ok_or("the node is down")?;
    let m = raft.metrics().borrow_watched().clone();
    let leader = m.current_leader.map(|l| slot_of(&l.0)).ok_or("no leader known")?;
    if leader == from {
        return write_local(&raft, cmd).await;
    }
    exchange(world, from, leader, cmd, OP_TIMEOUT, |peer, cmd| async move { write_local(&peer, cmd).await }).await
}

fn with_whole<R>(world: &Shared, f: impl FnOnce(&mut Whole) -> R) -> Option<R> {
    let mut w = world.lock();
    w.whole.as_mut().map(f)
}

impl Driver {
    fn whole_on(&self) -> bool {
        self.opts.whole
    }

    /// Before the first boot: n0's CA (sealed with the secret, pending until committed).
    pub(super) fn whole_setup(&mut self) {
        let now = abs_ms(&self.world);
        let seed = self.opts.seed;
        let late = self.opts.faults.contains(crate::options::FaultKind::LateJoin) && self.nodes >= 2;
        let fault_end = self.fault_end_ms();
        let late_at = {
            let mut w = self.world.lock();
            let Some(wh) = w.whole.as_mut() else { return };
            let mut rng = stream(seed, Stream::WholeMachine { slot: usize::MAX >> 8 });
            let ca = ClusterCa::create(wh.secret.cluster_id(), key(CA_KEY), system_time(now), &mut rng).expect("the simulator's CA");
            let sealed = ca.seal_key(&wh.secret, &mut rng);
            wh.pending_ca = Some((ca.cert_pem().to_string(), sealed));
            // n0 holds its own certificate from the start (the initializer self-issues).
            let issuer = Issuer::new(ca, &wh.secret, IssuePolicy::default());
            let req = JoinRequest::new(&wh.secret, &key(0), &mut rng).expect("n0's join request");
            let grant = shoal_control::own_grant(NodeRole::Manager, gossip_addr(0), "n0");
            let resp = issuer.answer_join(&req, &grant, &BTreeSet::new(), system_time(now), &mut rng).expect("n0's certificate");
            let info = CertInfo::parse(&resp.cert_der).expect("n0's certificate parses");
            wh.machines[0].cert = Some(IssuedCert { serial: info.serial, not_after: shoal_pki::unix_secs(info.not_after) });
            if late {
                wh.late_joiner = Some(self.nodes - 1);
                Some(wh.rng.random_range(fault_end / 10..=fault_end / 2))
            } else {
                None
            }
        };
        if let Some(t) = late_at {
            self.at(t.max(1), Action::LateBoot(self.nodes - 1));
        }
        self.at(DUTY_TICK_MS, Action::Duties);
        self.at(AGENT_TICK_MS, Action::Agents);
        self.at(LAN_REFRESH_MS, Action::LanRefresh);
        if self.opts.faults.contains(crate::options::FaultKind::Intruder) {
            self.at(3_000, Action::Intruder);
        }
    }

    /// Whether `slot` boots with the others at the start.
    pub(super) fn boots_at_start(&self, slot: usize) -> bool {
        !self.whole_on() || self.world.lock().whole.as_ref().is_none_or(|wh| wh.late_joiner != Some(slot))
    }

    /// Whether `slot` may boot (a revoked machine stays off; a late joiner waits its time).
    pub(super) fn may_boot(&self, slot: usize) -> bool {
        self.world.lock().whole.as_ref().is_none_or(|wh| !wh.machines[slot].removed)
    }

    /// A new process on machine `slot`: a fresh membership core and agent.
    pub(super) fn whole_boot(&mut self, slot: usize) {
        let now = abs_ms(&self.world);
        let (seed, nodes) = (self.opts.seed, self.nodes);
        let effects = {
            let mut w = self.world.lock();
            let Some(wh) = w.whole.as_mut() else { return };
            let cluster = wh.secret.cluster_id();
            let gossip_key = wh.secret.gossip_key();
            let m = &mut wh.machines[slot];
            m.boots += 1;
            m.epoch += 1;
            let bump = ShoalId::first_bump(m.boots);
            let identity = ShoalId { node: m.id, addr: gossip_addr(slot), bump };
            let facts = NodeFacts {
                node: m.id,
                seq: u64::from(bump),
                name: format!("n{slot}"),
                gossip_addr: gossip_addr(slot),
                labels: labels(slot),
                version: "sim".to_string(),
                boot: m.boots,
                left: false,
                in_cluster: m.cert.is_some(),
                resources: NodeResources { arch: "x86_64".into(), cpu_millis: 4_000, memory_bytes: 8 << 30, engine_ok: true },
            };
            let cfg = MembershipConfig::lan(u32::try_from(nodes).unwrap_or(u32::MAX));
            let mut core = Membership::new(cfg, identity, facts, cluster, gossip_key, stream(seed, Stream::Node { slot, boot: m.boots }));
            for other in (0..nodes).filter(|o| *o != slot) {
                core.add_seed(gossip_addr(other));
            }
            let effects = core.start(now);
            m.core = Some(core);
            m.agent = Some(AgentCore::new(m.id));
            m.leader.reset();
            effects
        };
        self.gossip_effects(slot, effects);
    }

    /// Machine `slot`'s process stops; a power cut also stops its containers (exit 137).
    pub(super) fn whole_crash(&mut self, slot: usize, power_cut: bool) {
        let now = abs_ms(&self.world);
        let mut w = self.world.lock();
        let Some(wh) = w.whole.as_mut() else { return };
        let m = &mut wh.machines[slot];
        m.core = None;
        m.agent = None;
        m.epoch += 1;
        if power_cut {
            m.engine.set_now_ms(now);
            let listed = poll_ready(m.engine.list(&LabelFilter::node(m.id.to_string()))).unwrap_or_default();
            for c in listed {
                if matches!(c.state, ContainerState::Running | ContainerState::Starting) && m.engine.exit(&c.id, 137) {
                    wh.counts.power_cut_exits += 1;
                }
            }
        }
    }

    /// Carries out what a membership core asked for.
    fn gossip_effects(&mut self, slot: usize, effects: Vec<Effect>) {
        let now = self.world.now_ms();
        for effect in effects {
            match effect {
                Effect::Send { to, packet } => {
                    let fate = {
                        let mut w = self.world.lock();
                        let lost: f64 = w.net_rng.random();
                        let jitter = w.net_rng.random_range(0..=2u64);
                        let storm_draw = w.net_rng.random_range(0..=1000u64);
                        let target = slot_of_gossip(&to).filter(|t| *t < self.nodes);
                        let cut = target.is_some_and(|t| w.cuts.values().any(|c| c.contains(&(slot, t))));
                        let storm = w.delay_storm_ms * storm_draw / 1000;
                        let loss = w.loss_rate;
                        let Some(wh) = w.whole.as_mut() else { return };
                        wh.counts.gossip_sent += 1;
                        wh.counts.gossip_bytes += packet.len() as u64;
                        match target {
                            Some(t) if wh.machines[t].core.is_some() && !cut && lost >= loss => {
                                Some((t, wh.machines[t].epoch, 1 + jitter + storm))
                            }
                            _ => {
                                wh.counts.gossip_dropped += 1;
                                None
                            }
                        }
                    };
                    if let Some((to, epoch, delay)) = fate {
                        self.at(now + delay, Action::Datagram { from: slot, to, epoch, packet });
                    }
                }
                Effect::Schedule { after, timer } => {
                    let epoch = self.world.lock().whole.as_ref().map_or(0, |wh| wh.machines[slot].epoch);
                    self.at(now + ceil_ms(after), Action::Gossip { slot, epoch, timer });
                }
                Effect::Event(ev) => {
                    let about = whole_slot(&ev.node).map_or_else(|| ev.node.short(), |s| format!("n{s}"));
                    self.world.trace(&format!("n{slot}"), || format!("sees {about} {}", ev.state.as_str()));
                }
            }
        }
    }

    pub(super) fn gossip_timer(&mut self, slot: usize, epoch: u32, timer: MemberTimer) {
        let now = abs_ms(&self.world);
        let effects = {
            let mut w = self.world.lock();
            let Some(wh) = w.whole.as_mut() else { return };
            let m = &mut wh.machines[slot];
            match m.core.as_mut() {
                Some(core) if m.epoch == epoch => core.handle_timer(now, timer),
                _ => return,
            }
        };
        self.gossip_effects(slot, effects);
    }

    pub(super) fn datagram(&mut self, from: usize, to: usize, epoch: u32, packet: &[u8]) {
        let now = abs_ms(&self.world);
        let effects = {
            let mut w = self.world.lock();
            let Some(wh) = w.whole.as_mut() else { return };
            let m = &mut wh.machines[to];
            match m.core.as_mut() {
                Some(core) if m.epoch == epoch => {
                    wh.counts.gossip_delivered += 1;
                    core.handle_datagram(now, gossip_addr(from), packet)
                }
                _ => {
                    wh.counts.gossip_dropped += 1;
                    return;
                }
            }
        };
        self.gossip_effects(to, effects);
    }

    /// The mDNS stand-in: every running machine hears every other one it can reach.
    pub(super) fn lan_refresh(&mut self) {
        let now = abs_ms(&self.world);
        let mut all = Vec::new();
        {
            let mut w = self.world.lock();
            let cuts: BTreeSet<(usize, usize)> = w.cuts.values().flatten().copied().collect();
            let Some(wh) = w.whole.as_mut() else { return };
            let cluster = wh.secret.cluster_id();
            let up: Vec<usize> = (0..self.nodes).filter(|s| wh.machines[*s].core.is_some()).collect();
            for to in &up {
                for from in up.iter().filter(|f| *f != to && !cuts.contains(&(**f, *to))) {
                    let hint = PeerHint { cluster, node: wh.machines[*from].id, addr: gossip_addr(*from) };
                    if let Some(core) = wh.machines[*to].core.as_mut() {
                        all.push((*to, core.handle_discovered(now, hint)));
                    }
                }
            }
        }
        for (slot, effects) in all {
            self.gossip_effects(slot, effects);
        }
    }

    /// Every 500 ms: the leader's duties on every node that believes it leads.
    pub(super) fn duties_tick(&mut self) {
        for slot in 0..self.nodes {
            let Some(raft) = self.world.raft(slot) else { continue };
            let leads = raft.metrics().borrow_watched().current_leader == Some(RaftNodeId(whole_id(slot)));
            let start = {
                let mut w = self.world.lock();
                let Some(wh) = w.whole.as_mut() else { return };
                let m = &mut wh.machines[slot];
                if !leads {
                    m.leader.reset();
                    false
                } else if m.duty_busy == Some(m.epoch) {
                    false
                } else {
                    m.duty_busy = Some(m.epoch);
                    true
                }
            };
            if start {
                let world = self.world.clone();
                tokio::spawn(async move {
                    let epoch = with_whole(&world, |wh| wh.machines[slot].epoch);
                    duties_pass(&world, slot).await;
                    with_whole(&world, |wh| {
                        if wh.machines[slot].duty_busy == epoch {
                            wh.machines[slot].duty_busy = None;
                        }
                    });
                });
            }
        }
    }

    /// Every second: agents, joins, the operator.
    pub(super) fn agents_tick(&mut self) {
        for slot in 0..self.nodes {
            if self.world.raft(slot).is_none() {
                continue;
            }
            let job = {
                let mut w = self.world.lock();
                let Some(wh) = w.whole.as_mut() else { return };
                let m = &mut wh.machines[slot];
                if m.cert.is_some() {
                    (m.agent_busy != Some(m.epoch)).then(|| {
                        m.agent_busy = Some(m.epoch);
                        false
                    })
                } else {
                    (m.join_busy != Some(m.epoch)).then(|| {
                        m.join_busy = Some(m.epoch);
                        true
                    })
                }
            };
            let Some(joining) = job else { continue };
            let world = self.world.clone();
            tokio::spawn(async move {
                let epoch = with_whole(&world, |wh| wh.machines[slot].epoch);
                if joining {
                    join(&world, slot).await;
                } else {
                    agent_pass(&world, slot).await;
                }
                with_whole(&world, |wh| {
                    let m = &mut wh.machines[slot];
                    if joining && m.join_busy == epoch {
                        m.join_busy = None;
                    } else if !joining && m.agent_busy == epoch {
                        m.agent_busy = None;
                    }
                });
            });
        }
        let operate = with_whole(&self.world, |wh| {
            let todo = wh.services_created.len() < wh.plan.services.len() && !wh.operator_busy;
            if todo {
                wh.operator_busy = true;
            }
            todo
        });
        if operate == Some(true) {
            let world = self.world.clone();
            tokio::spawn(async move {
                create_services(&world).await;
                with_whole(&world, |wh| wh.operator_busy = false);
            });
        }
    }

    /// Machines the operator revoked are switched off for good (their containers removed).
    pub(super) async fn switch_off_revoked(&mut self) {
        let off = with_whole(&self.world, |wh| std::mem::take(&mut wh.to_switch_off)).unwrap_or_default();
        for slot in off {
            self.crash(slot, false, "revoked: switched off").await;
            let now = abs_ms(&self.world);
            with_whole(&self.world, |wh| {
                let m = &mut wh.machines[slot];
                m.removed = true;
                m.engine.set_now_ms(now);
                for c in poll_ready(m.engine.list(&LabelFilter::node(m.id.to_string()))).unwrap_or_default() {
                    let _ = poll_ready(m.engine.stop_and_remove(&c.id));
                }
            });
        }
    }

    /// The `leave` fault in whole mode: the operator revokes one machine (`shoal node rm`),
    /// at most once a run and only while at least four machines hold certificates.
    pub(super) fn revoke_one(&mut self, victim: usize) {
        let pick = with_whole(&self.world, |wh| {
            let joined: Vec<usize> = (0..wh.machines.len()).filter(|s| wh.machines[*s].cert.is_some() && !wh.machines[*s].removed).collect();
            if wh.revoke_started || joined.len() < 4 {
                return None;
            }
            wh.revoke_started = true;
            Some(joined[victim % joined.len()])
        })
        .flatten();
        let Some(slot) = pick else { return };
        self.world.count_fault("node-removed");
        self.world.trace("operator", || format!("node rm n{slot}"));
        let world = self.world.clone();
        let nodes = self.nodes;
        tokio::spawn(async move {
            // Retried through any running node until it commits (an operator retries).
            for attempt in 0..60u64 {
                let via = (attempt as usize + slot + 1) % nodes;
                // `shoal node rm`'s own check, on the node the operator asks.
                let refused = match world.raft(via) {
                    Some(r) => {
                        let revoked = read_state(&r).await.map(|s| s.revoked.clone()).unwrap_or_default();
                        duties::removal_refusal(&RaftView::from_metrics(&r.metrics().borrow_watched()), &revoked, &whole_id(slot))
                    }
                    None => None,
                };
                if let Some(why) = refused {
                    world.trace("operator", || format!("node rm n{slot} refused by n{via}: {why}"));
                } else if via != slot {
                    if let Ok(Ok(_)) = forward_write(&world, via, Command::Revoke { node: whole_id(slot) }).await {
                        with_whole(&world, |wh| {
                            wh.counts.nodes_revoked += 1;
                            wh.to_switch_off.push(slot);
                        });
                        world.trace("operator", || format!("n{slot} revoked"));
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// A container on machine `victim` crashes (exit code or engine failure).
    pub(super) fn container_crash(&mut self, victim: usize, mask: u64) {
        let now = abs_ms(&self.world);
        let line = with_whole(&self.world, |wh| {
            let m = &wh.machines[victim];
            m.engine.set_now_ms(now);
            let listed = poll_ready(m.engine.list(&LabelFilter::node(m.id.to_string()))).ok()?;
            let up: Vec<_> = listed.into_iter().filter(|c| c.state == ContainerState::Running).collect();
            if up.is_empty() {
                return None;
            }
            let c = &up[(mask % up.len() as u64) as usize];
            wh.counts.container_crashes += 1;
            if mask >> 32 & 3 == 0 {
                m.engine.crash(&c.id, "oom-killed");
                Some(format!("CONTAINER CRASH task {}: oom-killed", c.owner.task))
            } else {
                let code = i64::try_from(mask >> 40 & 0xff).unwrap_or(1).max(1);
                m.engine.exit(&c.id, code);
                Some(format!("CONTAINER CRASH task {}: exit {code}", c.owner.task))
            }
        })
        .flatten();
        if let Some(line) = line {
            self.world.count_fault("container-crash");
            self.world.trace(&format!("n{victim}"), || line);
        }
    }

    /// The intruder asks a running member for a certificate with a wrong secret: under its
    /// own id, or claiming a visible member's id.
    pub(super) fn intruder_attempt(&mut self) {
        let pick = with_whole(&self.world, |wh| {
            let up: Vec<usize> = (0..wh.machines.len()).filter(|s| wh.machines[*s].core.is_some() && wh.machines[*s].cert.is_some()).collect();
            let target = *up.get(wh.rng.random_range(0..up.len().max(1)))?;
            let claim = wh.rng.random_bool(0.5).then(|| up[wh.rng.random_range(0..up.len())]);
            let base = JoinRequest::new(&wh.intruder_secret, &key(INTRUDER_KEY), &mut wh.rng).ok()?;
            let req = match claim {
                Some(s) => JoinRequest::signed(&wh.intruder_secret, whole_id(s), base.csr_der, base.nonce),
                None => base,
            };
            wh.counts.intruder_attempts += 1;
            Some((target, claim, req))
        })
        .flatten();
        let Some((target, claim, req)) = pick else { return };
        let world = self.world.clone();
        tokio::spawn(async move {
            let who = claim.map_or_else(|| "as itself".to_string(), |s| format!("claiming n{s}'s id"));
            // The intruder is on the LAN next to its target: the exchange starts at the target.
            let answer = exchange(&world, target, target, req, OP_TIMEOUT, |raft, req| {
                let world = world.clone();
                async move { answer_join(&world, target, &raft, &req).await }
            })
            .await;
            match answer {
                Ok(_) => world.trace("intruder", || format!("got an answer from n{target} {who}")),
                Err(e) => {
                    with_whole(&world, |wh| wh.counts.intruder_refused += 1);
                    world.trace("intruder", || format!("refused by n{target} {who}: {e}"));
                }
            }
        });
    }

    /// The final checks of whole mode: membership converged, services at their replica
    /// counts with one running container per slot and no stale one.
    pub(super) fn whole_finish(&mut self, leader_state: Option<&ClusterState>) {
        let now = self.world.now_ms();
        let abs = abs_ms(&self.world);
        let mut w = self.world.lock();
        let super::world::World { checks, whole, .. } = &mut *w;
        let Some(wh) = whole.as_mut() else { return };
        let up: Vec<usize> = (0..wh.machines.len()).filter(|s| wh.machines[*s].core.is_some()).collect();
        // Membership: every running machine sees every other running one alive.
        for a in &up {
            let members = wh.machines[*a].core.as_ref().map(|c| c.members()).unwrap_or_default();
            for b in up.iter().filter(|b| *b != a) {
                let alive = members.iter().any(|m| m.id == wh.machines[*b].id && m.state == MemberState::Alive);
                if !checks.check(alive) {
                    checks.violation(format!("members n{a} n{b}"), now, format!("after heal n{a} does not see n{b} alive"));
                }
            }
        }
        // Every running machine joined.
        for s in &up {
            if !checks.check(wh.machines[*s].cert.is_some()) {
                checks.violation(format!("joined n{s}"), now, format!("after heal n{s} still has no certificate"));
            }
        }
        let Some(state) = leader_state else { return };
        // Services: each slot of each created service has exactly one live task, running on
        // its node, unless the scheduler records why it is pending.
        let mut running: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (slot, m) in wh.machines.iter().enumerate() {
            m.engine.set_now_ms(abs);
            for c in poll_ready(m.engine.list(&LabelFilter::node(m.id.to_string()))).unwrap_or_default() {
                if c.state == ContainerState::Running {
                    running.entry(c.owner.task).or_default().push(slot);
                }
            }
        }
        for name in &wh.services_created {
            let Some(svc) = state.services.get(name) else {
                checks.violation(format!("svc {name}"), now, format!("service {name} was created but is not in the leader's state"));
                continue;
            };
            let Mode::Replicated(replicas) = svc.def.mode else { continue };
            for i in 1..=replicas {
                let slot = shoal_cluster::scheduler::Slot::Index(i);
                let live: Vec<_> = state.tasks.values().filter(|t| t.service == *name && t.slot == slot && t.is_live()).collect();
                if svc.pending.contains_key(&slot) && live.is_empty() {
                    continue;
                }
                if !checks.check(live.len() == 1) {
                    checks.violation(format!("slot {name}.{i}"), now, format!("after heal {name}.{i} has {} live tasks, not 1", live.len()));
                    continue;
                }
                let t = live[0];
                let on = whole_slot(&t.node);
                let ok = running.get(&t.id).is_some_and(|s| s.len() == 1 && Some(s[0]) == on);
                if !checks.check(ok) {
                    checks.violation(
                        format!("running {name}.{i}"),
                        now,
                        format!("after heal task {} ({name}.{i}) on {:?} is not running exactly there (running on {:?})", t.id, on.map(|s| format!("n{s}")), running.get(&t.id)),
                    );
                }
            }
        }
        // No container runs for a task that is not live (a stale copy of a moved slot).
        for (task, slots) in &running {
            let live = state.tasks.get(task).is_some_and(|t| t.is_live());
            if !checks.check(live) {
                checks.violation(format!("stale {task}"), now, format!("after heal task {task} still runs on {slots:?} but is not live in the state"));
            }
        }
    }
}


/// One pass of the leader's duties on `slot`: the shared `LeaderCore` (as the node's
/// `control::leader`), its effects carried out on the simulated Raft.
async fn duties_pass(world: &Shared, slot: usize) {
    let Some(raft) = world.raft(slot) else { return };
    let metrics = raft.metrics().borrow_watched().clone();
    let me = whole_id(slot);
    if metrics.current_leader != Some(RaftNodeId(me)) {
        return;
    }
    let Some(state) = read_state(&raft).await else { return };
    let now = abs_ms(world);
    let raft_view = RaftView::from_metrics(&metrics);
    let own_record = record(slot);
    let effects = with_whole(world, |wh| {
        // Only n0 created a CA (the initializer's `ca.pending`).
        let pending = if slot == 0 { wh.pending_ca.clone() } else { None };
        let m = &mut wh.machines[slot];
        let members = m.core.as_ref().map(|c| c.members()).unwrap_or_default();
        let cert = m.cert.clone();
        let input = LeaderInput {
            state: &state,
            raft: &raft_view,
            members: &members,
            advertise: gossip_addr(slot),
            own: OwnTrust { me, record: &own_record, cert: cert.as_ref(), pending_ca: pending.as_ref() },
            now_ms: now,
        };
        m.leader.pass(&input)
    });
    for effect in effects.unwrap_or_default() {
        carry_out(world, slot, &raft, effect).await;
    }
}

fn names(set: &BTreeSet<RaftNodeId>) -> String {
    set.iter().map(|id| whole_slot(&id.0).map_or_else(|| id.0.short(), |s| format!("n{s}"))).collect::<Vec<_>>().join(",")
}

/// What a membership change does, for the trace.
fn change_text(change: &ChangeMembers<RaftNodeId, shoal_consensus::ShoalNode>, kind: &ChangeKind) -> String {
    match (change, kind) {
        (ChangeMembers::ReplaceAllVoters(v), ChangeKind::FinishJoint) => format!("finish joint change to {}", names(v)),
        (ChangeMembers::ReplaceAllVoters(v), _) => format!("autopilot: voters {}", names(v)),
        (ChangeMembers::RemoveVoters(v), _) => format!("remove revoked voters {}", names(v)),
        (ChangeMembers::RemoveNodes(v), _) => format!("remove revoked learners {}", names(v)),
        (ChangeMembers::SetNodes(n), _) => format!("move {}", n.values().map(|n| n.name.clone()).collect::<Vec<_>>().join(",")),
        (other, _) => format!("{other:?}"),
    }
}

/// Carries out one effect of the leader's pass on `slot` (the node's `leader::carry_out`,
/// on the simulated Raft, with the run's counters and trace).
async fn carry_out(world: &Shared, slot: usize, raft: &Raft, effect: LeaderEffect) {
    let who = format!("n{slot}");
    match effect {
        LeaderEffect::Write { command, why } => {
            let written = write_local(raft, command).await;
            match (why, written) {
                (WriteWhy::CommitCa, Ok(Ok(_)) | Ok(Err(Rejected::CaAlreadySet))) => {
                    with_whole(world, |wh| wh.pending_ca = None);
                    world.trace(&who, || "committed the cluster CA".into());
                }
                (WriteWhy::Schedule { acting }, Ok(Ok(_))) => {
                    let placed = acting.iter().filter(|d| matches!(d, Decision::Place { .. })).count() as u64;
                    let shut = acting.iter().filter(|d| matches!(d, Decision::Shutdown { .. })).count() as u64;
                    with_whole(world, |wh| {
                        wh.counts.scheduler_commits += 1;
                        wh.counts.placements += placed;
                        wh.counts.shutdowns += shut;
                    });
                    if placed + shut > 0 {
                        world.trace(&who, || format!("scheduler: {placed} placed, {shut} shut down"));
                    }
                }
                _ => {}
            }
        }
        LeaderEffect::ClearPendingCa => {
            with_whole(world, |wh| wh.pending_ca = None);
        }
        LeaderEffect::AddLearner { id, node } => {
            world.trace(&who, || format!("add learner {}", node.name));
            let added = tokio::time::timeout(OP_TIMEOUT, raft.add_learner(RaftNodeId(id), node, false)).await;
            if matches!(added, Ok(Ok(_))) {
                with_whole(world, |wh| wh.counts.learners_added += 1);
            }
        }
        LeaderEffect::ChangeMembership { change, retain, kind, then } => {
            let text = change_text(&change, &kind);
            let done = tokio::time::timeout(OP_TIMEOUT, raft.change_membership(change, retain)).await;
            let ok = matches!(done, Ok(Ok(_)));
            world.trace(&who, || format!("{text}: {}", if ok { "committed" } else { "failed" }));
            if ok {
                with_whole(world, |wh| if kind.is_removal() { wh.counts.removals_from_raft += 1 } else { wh.counts.voter_changes += 1 });
                if let Some(command) = then {
                    let _ = write_local(raft, command).await;
                }
            }
        }
        LeaderEffect::QuorumLost { healthy, voters } => {
            world.trace(&who, || format!("autopilot: {healthy} of {voters} voters healthy; not changing voters"));
        }
        LeaderEffect::TrustBroken(why) => {
            let now = world.now_ms();
            world.lock().checks.violation(format!("trust n{slot}"), now, why);
        }
    }
}

/// One agent pass on `slot`: the shared `AgentCore` (as the node's `run_tasks`), on the
/// machine's fake engine.
async fn agent_pass(world: &Shared, slot: usize) {
    let Some(raft) = world.raft(slot) else { return };
    let leader_known = raft.metrics().borrow_watched().current_leader.is_some();
    let Some(state) = read_state(&raft).await else { return };
    let ready = with_whole(world, |wh| wh.machines[slot].agent.as_ref().is_some_and(|a| a.ready(&state, leader_known)));
    if ready != Some(true) {
        return;
    }
    let now = abs_ms(world);
    let cmds = with_whole(world, |wh| {
        let Machine { agent, engine, .. } = &mut wh.machines[slot];
        let agent = agent.as_mut()?;
        engine.set_now_ms(now);
        let assigned = agent.assigned(&state);
        poll_ready(agent.pass(engine, &state, assigned, now, &BTreeSet::new(), Vec::new())).ok().map(|o| o.commands)
    })
    .flatten()
    .unwrap_or_default();
    for cmd in cmds {
        let what = match &cmd {
            Command::ReportTasks { reports, .. } => reports.iter().map(|r| format!("{} {:?}", r.task, r.state)).collect::<Vec<_>>().join(", "),
            _ => String::new(),
        };
        match forward_write(world, slot, cmd).await {
            Ok(Ok(_)) => {
                with_whole(world, |wh| wh.counts.reports += 1);
                world.trace(&format!("n{slot}"), || format!("report {what}"));
            }
            Ok(Err(e)) => world.trace(&format!("n{slot}"), || format!("report refused: {e}")),
            Err(e) => world.trace(&format!("n{slot}"), || format!("report not sent: {e}")),
        }
    }
}

/// Machine `slot` asks a member for a certificate (the node's `join_via`).
async fn join(world: &Shared, slot: usize) {
    let nodes = with_whole(world, |wh| wh.machines.len()).unwrap_or(0);
    let ask = with_whole(world, |wh| {
        let members: Vec<usize> = (0..nodes).filter(|s| *s != slot && wh.machines[*s].cert.is_some() && wh.machines[*s].core.is_some()).collect();
        if members.is_empty() {
            return None;
        }
        let m = &mut wh.machines[slot];
        let member = members[(m.join_attempts % members.len() as u64) as usize];
        m.join_attempts += 1;
        let req = JoinRequest::new(&wh.secret, &key(slot), &mut m.rng).ok()?;
        Some((member, req, wh.secret.clone()))
    })
    .flatten();
    let Some((member, req, secret)) = ask else { return };
    let answer = exchange(world, slot, member, req.clone(), OP_TIMEOUT * 3, |raft, req| {
        let world = world.clone();
        async move { answer_join(&world, member, &raft, &req).await }
    })
    .await;
    let who = format!("n{slot}");
    match answer {
        Ok(resp) => match resp.verify(&secret, &req, &key(slot)) {
            Ok(cert) => {
                // A certificate's role is the holder's Raft role when it was issued: a
                // joiner is not a voter, so it gets a worker certificate (it renews as a
                // manager once autopilot promotes it).
                let voters = world.raft(member).map(|r| RaftView::from_metrics(&r.metrics().borrow_watched()).voters).unwrap_or_default();
                if cert.info.role == Some(NodeRole::Manager) && !voters.contains(&whole_id(slot)) {
                    let now = world.now_ms();
                    world.lock().checks.violation(
                        format!("role-grant n{slot}"),
                        now,
                        format!("n{member} granted the manager role to n{slot}, which is not a Raft voter"),
                    );
                }
                let issued = IssuedCert { serial: cert.info.serial.clone(), not_after: shoal_pki::unix_secs(cert.info.not_after) };
                with_whole(world, |wh| {
                    let m = &mut wh.machines[slot];
                    m.cert = Some(issued);
                    if let Some(core) = m.core.as_mut() {
                        core.set_in_cluster(true);
                    }
                    wh.counts.joins += 1;
                });
                world.trace(&who, || format!("joined through n{member}"));
            }
            Err(e) => {
                let now = world.now_ms();
                world.lock().checks.violation(format!("join-verify n{slot}"), now, format!("n{slot} got an answer from n{member} that does not verify: {e}"));
            }
        },
        Err(e) => {
            with_whole(world, |wh| wh.counts.joins_refused += 1);
            world.trace(&who, || format!("join through n{member} failed: {e}"));
        }
    }
}

/// A member's answer to a join request: the shared `shoal_control::answer_join` (as the
/// node's `Running::answer_join`), its writes forwarded to the leader before answering.
async fn answer_join(world: &Shared, member: usize, raft: &Raft, req: &JoinRequest) -> Result<JoinResponse, String> {
    let state = read_state(raft).await.ok_or("no state")?;
    let voters = RaftView::from_metrics(&raft.metrics().borrow_watched()).voters;
    let now = abs_ms(world);
    let answered = with_whole(world, |wh| -> Result<(JoinAnswer, bool), String> {
        let issuer = issuer_from_state(&state, None, &wh.secret, IssuePolicy::default()).map_err(|e| e.to_string())?;
        let honest = wh.honest(&req.node_id);
        let planted = wh.bug.and_then(RaftBug::planted);
        let m = &mut wh.machines[member];
        let members = m.core.as_ref().map(|c| c.members()).unwrap_or_default();
        let ctx = JoinContext { issuer: &issuer, state: &state, members: &members, voters: &voters, planted };
        let answer = shoal_control::answer_join(&ctx, req, system_time(now), &mut m.rng).map_err(|e| e.to_string())?;
        Ok((answer, honest))
    })
    .ok_or("not in whole mode")??;
    let (answer, honest) = answered;
    if !honest {
        let at = world.now_ms();
        world.lock().checks.violation(
            format!("cert-without-secret {}", req.node_id.short()),
            at,
            format!("n{member} issued a certificate to {}, which does not hold the join secret", req.node_id.short()),
        );
    }
    for command in answer.writes {
        let what = shoal_control::join::purpose(&command);
        match forward_write(world, member, command).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("cannot {what}: {e}")),
            Err(e) => return Err(format!("cannot {what}: {e}")),
        }
    }
    Ok(answer.response)
}

/// The operator creates the seed's services, one per pass, through any node that knows a
/// leader.
async fn create_services(world: &Shared) {
    let next = with_whole(world, |wh| {
        let todo = wh.plan.services.iter().find(|s| !wh.services_created.contains(&s.name))?.clone();
        let via = (0..wh.machines.len()).find(|s| wh.machines[*s].cert.is_some() && wh.machines[*s].core.is_some())?;
        Some((todo, via))
    })
    .flatten();
    let Some((svc, via)) = next else { return };
    let def = ServiceDef {
        name: svc.name.clone(),
        spec: ContainerSpec { image: IMAGE.to_string(), command: vec![svc.name.clone()], ..Default::default() },
        mode: Mode::Replicated(svc.replicas),
        constraints: svc.constraint.iter().filter_map(|c| Constraint::parse(c).ok()).collect(),
        reserve_cpu_millis: 0,
        reserve_memory_bytes: 0,
        restart: RestartPolicy::Always,
    };
    let now = abs_ms(world);
    match forward_write(world, via, Command::CreateService { service: def, now_ms: now }).await {
        Ok(Ok(Applied::ServiceCreated)) | Ok(Err(Rejected::ServiceExists(_))) => {
            with_whole(world, |wh| {
                wh.services_created.insert(svc.name.clone());
                wh.counts.services_created += 1;
            });
            world.trace("operator", || format!("service create {} x{}", svc.name, svc.replicas));
        }
        Ok(Err(e)) => world.trace("operator", || format!("service create {} refused: {e}", svc.name)),
        Ok(Ok(_)) | Err(_) => {}
    }
}


/// The leader's view of the state at the end (for the services checks).
pub(super) async fn leader_state(world: &Shared, nodes: usize) -> Option<ClusterState> {
    for slot in 0..nodes {
        let Some(raft) = world.raft(slot) else { continue };
        if raft.metrics().borrow_watched().state == ServerState::Leader {
            return read_state(&raft).await.map(std::sync::Arc::unwrap_or_clone);
        }
    }
    None
}
