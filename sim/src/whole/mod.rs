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
//! Layout: this file holds the machines and the helpers; `events.rs` is what whole mode adds
//! to the Raft mode's event loop (`crate::raft::Driver`: boot, crash, gossip, the ticks,
//! the operator's faults, the final checks); `controller.rs` is its driver of the shared
//! controller (`shoal_control`): it gathers the inputs, runs the cores and carries out
//! their effects on the simulated Raft, network and engines; `workload.rs` draws the
//! services a run creates.
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

use crate::harness::{ceil_ms, EPOCH_MS};
use crate::options::RaftBug;
use crate::raft::net::exchange;
use crate::raft::store::SimStateMachine;
use crate::raft::world::{slot_of, Shared};
use crate::raft::{short_error, Action, Driver, Raft};
use crate::rng::{stream, Stream};
use workload::{poll_ready, ServicesPlan};

mod controller;
mod events;
mod workload;

use controller::{agent_pass, answer_join, create_services, duties_pass, join};
pub(crate) use controller::leader_state;

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
    /// Manager's writes the insider forwarded while a worker, and how many the leader refused.
    pub insider_attempts: u64,
    pub insider_refused: u64,
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
    /// The insider's own stream (so the other draws do not move).
    pub insider_rng: StdRng,
    pub counts: WholeCounts,
    pub bug: Option<RaftBug>,
}

impl Whole {
    pub(crate) fn new(seed: u64, nodes: usize, bug: Option<RaftBug>) -> Self {
        let mut rng = stream(seed, Stream::Whole);
        let secret = JoinSecret::generate(&mut rng);
        let intruder_secret = JoinSecret::generate(&mut rng);
        let plan = ServicesPlan::derive(seed, nodes);
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
            insider_rng: stream(seed, Stream::Insider),
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
        Ok(Err(e)) => Err(short_error(&e.to_string())),
        Err(_) => Err("no commit in time".into()),
    }
}

/// A write from node `from`: on its own Raft if it leads, else forwarded to the leader it
/// knows over the simulated network (the node's `Forward` frame).
/// A write from machine `from`: proposed there if it leads, else forwarded to the leader it
/// knows, which applies the controller's rule on who may forward what
/// (`shoal_control::check_forward`, as the node's Raft server does).
async fn forward_write(world: &Shared, from: usize, cmd: Command) -> Result<Response, String> {
    let raft = world.raft(from).ok_or("the node is down")?;
    let m = raft.metrics().borrow_watched().clone();
    let leader = m.current_leader.map(|l| slot_of(&l.0)).ok_or("no leader known")?;
    if leader == from {
        return write_local(&raft, cmd).await;
    }
    let sender = whole_id(from);
    exchange(world, from, leader, cmd, OP_TIMEOUT, move |peer, cmd| async move {
        shoal_control::check_forward(sender, &cmd, &membership_view(&peer)).map_err(|e| e.to_string())?;
        write_local(&peer, cmd).await
    })
    .await
}

/// The Raft membership as `raft` knows it.
fn membership_view(raft: &Raft) -> shoal_control::MembershipView {
    let m = raft.metrics().borrow_watched().clone();
    let config = m.membership_config.membership();
    shoal_control::MembershipView {
        voters: config.voter_ids().map(|id| id.0).collect(),
        members: config.nodes().map(|(id, _)| id.0).collect(),
    }
}

fn with_whole<R>(world: &Shared, f: impl FnOnce(&mut Whole) -> R) -> Option<R> {
    let mut w = world.lock();
    w.whole.as_mut().map(f)
}
