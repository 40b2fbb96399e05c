//! One pass of the leader's duties, as effects: trust first (the CA, this node's record
//! and certificate), then one Raft membership change (learners, moved addresses, revoked
//! nodes, autopilot), the scheduler's pass, and the removal of ended `--rm` containers.
//!
//! The decisions are `shoal_consensus::duties`' pure rules; this core orders them, maps
//! them to Raft's membership changes, and keeps the leader's bookkeeping between passes
//! (gossip health, the quorum warning). The driver carries the effects out in order; each
//! is idempotent, so a pass that fails halfway is simply made again.

use crate::trust::{trust_step, OwnTrust, TrustStep};
use shoal_cluster::scheduler::Decision;
use shoal_consensus::duties::{self, DutyConfig, GossipHealth, MembershipStep, RaftView, SchedulerStep};
use shoal_consensus::openraft::ChangeMembers;
use shoal_consensus::{ClusterState, Command, RaftNodeId, ShoalNode};
use shoal_discovery::{MemberState, MemberView};
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// What the leader sees at the start of a pass.
#[derive(Clone, Copy)]
pub struct LeaderInput<'a> {
    pub state: &'a ClusterState,
    pub raft: &'a RaftView,
    /// Gossip's members as this node sees them (itself included).
    pub members: &'a [MemberView],
    /// The address this node advertises (gossip shows its own entry with it too, but a
    /// node bound to 0.0.0.0 knows better).
    pub advertise: SocketAddr,
    pub own: OwnTrust<'a>,
    pub now_ms: u64,
}

/// Why a write is made (for the driver's log and counters).
#[derive(Debug, Clone, PartialEq)]
pub enum WriteWhy {
    /// The CA this node created; once it commits, or is refused because a CA is already
    /// set, the pending copy is forgotten.
    CommitCa,
    /// This node's registration or certificate record.
    OwnTrust,
    /// The scheduler's decisions (`acting`: those that are not `Pending`).
    Schedule { acting: Vec<Decision> },
    /// Tasks fully shut down, forgotten.
    Forget,
    /// A `--rm` container whose run ended.
    AutoRemove { name: String },
}

/// What a membership change is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    FinishJoint,
    /// A node's address changed.
    Moved,
    RemoveVoters,
    RemoveNodes,
    Autopilot { reason: String },
}

impl ChangeKind {
    /// Whether the change takes nodes out of Raft.
    pub fn is_removal(&self) -> bool {
        matches!(self, Self::RemoveVoters | Self::RemoveNodes)
    }
}

/// One thing for the driver to do.
#[derive(Debug, Clone)]
pub enum LeaderEffect {
    /// Commit `command` through Raft.
    Write { command: Command, why: WriteWhy },
    /// Forget the CA this node created (it is in the state).
    ClearPendingCa,
    /// Add a registered, healthy node to Raft as a learner.
    AddLearner { id: NodeId, node: ShoalNode },
    /// One Raft membership change; `retain`: keep removed voters as learners. `then`: a
    /// write to make once the change commits (a moved node's record).
    ChangeMembership { change: ChangeMembers<RaftNodeId, ShoalNode>, retain: bool, kind: ChangeKind, then: Option<Command> },
    /// A majority of the voters is not healthy: no voter change is safe. Said once until
    /// the quorum is healthy again.
    QuorumLost { healthy: usize, voters: usize },
    /// Trust cannot go on (a bug); the rest of the pass is skipped.
    TrustBroken(String),
}

/// The leader's bookkeeping between passes.
pub struct LeaderCore {
    cfg: DutyConfig,
    health: GossipHealth,
    quorum_warned: bool,
}

fn raft_ids(ids: BTreeSet<NodeId>) -> BTreeSet<RaftNodeId> {
    ids.into_iter().map(RaftNodeId).collect()
}

/// Where each alive member says it is now: the address in its own signed facts (SWIM's
/// address can be claimed by any key holder, so it never moves a node); this node speaks
/// for itself with `advertise`. A member whose facts have not arrived is left out.
pub fn advertised(members: &[MemberView], advertise: SocketAddr) -> BTreeMap<NodeId, SocketAddr> {
    members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .filter_map(|m| if m.is_self { Some((m.id, advertise)) } else { m.signed_addr.map(|a| (m.id, a)) })
        .collect()
}

/// The Raft change that carries out a membership step (`None`: no change, or not one of
/// `change_membership`'s).
pub fn membership_effect(step: MembershipStep) -> Option<LeaderEffect> {
    let change = |change, retain, kind| Some(LeaderEffect::ChangeMembership { change, retain, kind, then: None });
    match step {
        MembershipStep::Keep => None,
        MembershipStep::QuorumLost { healthy, voters } => Some(LeaderEffect::QuorumLost { healthy, voters }),
        MembershipStep::AddLearner { id, node } => Some(LeaderEffect::AddLearner { id, node }),
        MembershipStep::FinishJoint { voters } => change(ChangeMembers::ReplaceAllVoters(raft_ids(voters)), true, ChangeKind::FinishJoint),
        MembershipStep::Moved { id, node, record } => Some(LeaderEffect::ChangeMembership {
            change: ChangeMembers::SetNodes(BTreeMap::from([(RaftNodeId(id), node)])),
            retain: true,
            kind: ChangeKind::Moved,
            then: record.map(|record| Command::RegisterNode { id, record }),
        }),
        MembershipStep::RemoveVoters(ids) => change(ChangeMembers::RemoveVoters(raft_ids(ids)), false, ChangeKind::RemoveVoters),
        MembershipStep::RemoveNodes(ids) => change(ChangeMembers::RemoveNodes(raft_ids(ids)), false, ChangeKind::RemoveNodes),
        MembershipStep::ChangeVoters { voters, reason } => {
            change(ChangeMembers::ReplaceAllVoters(raft_ids(voters)), true, ChangeKind::Autopilot { reason })
        }
    }
}

impl LeaderCore {
    pub fn new(cfg: DutyConfig) -> Self {
        Self { cfg, health: GossipHealth::new(), quorum_warned: false }
    }

    pub fn config(&self) -> &DutyConfig {
        &self.cfg
    }

    /// Forget what was tracked while leading (another node leads now).
    pub fn reset(&mut self) {
        self.health.reset();
        self.quorum_warned = false;
    }

    /// One pass. A trust write ends the pass (the state it was decided on is stale once it
    /// commits); otherwise at most one membership change, then the scheduler's write, then
    /// the auto-removals.
    pub fn pass(&mut self, input: &LeaderInput<'_>) -> Vec<LeaderEffect> {
        let mut effects = Vec::new();
        match trust_step(input.state, &input.own) {
            TrustStep::Ready => {}
            TrustStep::NoCa => return effects,
            TrustStep::ClearPendingCa => effects.push(LeaderEffect::ClearPendingCa),
            TrustStep::Write { command, clears_pending } => {
                let why = if clears_pending { WriteWhy::CommitCa } else { WriteWhy::OwnTrust };
                effects.push(LeaderEffect::Write { command, why });
                return effects;
            }
            TrustStep::Broken(why) => {
                effects.push(LeaderEffect::TrustBroken(why));
                return effects;
            }
        }
        let advertised = advertised(input.members, input.advertise);
        let step = duties::membership_step(&self.cfg, input.state, input.raft, input.members, &advertised, &mut self.health, input.now_ms);
        match membership_effect(step) {
            Some(LeaderEffect::QuorumLost { healthy, voters }) => {
                if !self.quorum_warned {
                    self.quorum_warned = true;
                    effects.push(LeaderEffect::QuorumLost { healthy, voters });
                }
            }
            Some(effect) => effects.push(effect),
            None => self.quorum_warned = false,
        }
        match duties::scheduler_step(&self.cfg, input.state, input.members, &mut self.health, input.now_ms) {
            SchedulerStep::Idle => {}
            SchedulerStep::Commit { command, acting } => effects.push(LeaderEffect::Write { command, why: WriteWhy::Schedule { acting } }),
            SchedulerStep::Forget(command) => effects.push(LeaderEffect::Write { command, why: WriteWhy::Forget }),
        }
        for id in input.state.auto_remove_due() {
            let name = input.state.containers.get(&id).map(|c| c.name.clone()).unwrap_or_default();
            effects.push(LeaderEffect::Write {
                command: Command::RemoveContainer { id, force: true, now_ms: input.now_ms },
                why: WriteWhy::AutoRemove { name },
            });
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use shoal_cluster::scheduler::SchedulerConfig;
    use shoal_consensus::{IssuedCert, NodeRecord};

    fn core() -> LeaderCore {
        LeaderCore::new(DutyConfig { me: id(1), target_voters: 3, dead_voter_after_ms: 30_000, scheduler: SchedulerConfig::default() })
    }

    fn own<'a>(rec: &'a NodeRecord, cert: Option<&'a IssuedCert>) -> OwnTrust<'a> {
        OwnTrust { me: id(1), record: rec, cert, pending_ca: None }
    }

    #[test]
    fn a_trust_write_ends_the_pass() {
        let c = TestCluster::new();
        let state = c.state(&[]);
        let rec = record(1);
        let members = vec![member(1)];
        let view = raft(&[1], &[]);
        let input = LeaderInput { state: &state, raft: &view, members: &members, advertise: addr(1), own: own(&rec, None), now_ms: T0_MS };
        let effects = core().pass(&input);
        assert!(matches!(&effects[..], [LeaderEffect::Write { command: Command::RegisterNode { .. }, why: WriteWhy::OwnTrust }]), "{effects:?}");
    }

    #[test]
    fn a_healthy_registered_node_becomes_a_learner_and_the_scheduler_places_in_the_same_pass() {
        let c = TestCluster::new();
        let mut state = c.state(&[1, 2]);
        state.apply(Command::CreateService { service: web(2), now_ms: T0_MS }).expect("create");
        let rec = record(1);
        let members = vec![member(1), member(2)];
        let view = raft(&[1], &[]);
        let input = LeaderInput { state: &state, raft: &view, members: &members, advertise: addr(1), own: own(&rec, None), now_ms: T0_MS };
        let effects = core().pass(&input);
        assert!(matches!(&effects[0], LeaderEffect::AddLearner { id: who, .. } if *who == id(2)), "{effects:?}");
        let LeaderEffect::Write { why: WriteWhy::Schedule { acting }, .. } = &effects[1] else { panic!("{effects:?}") };
        assert_eq!(acting.iter().filter(|d| matches!(d, Decision::Place { .. })).count(), 2);
    }

    #[test]
    fn revoked_voters_leave_raft_and_a_moved_node_is_recorded_after_its_change() {
        let c = TestCluster::new();
        let mut state = c.state(&[1, 2, 3]);
        state.apply(Command::Revoke { node: id(3) }).expect("revoke");
        let rec = record(1);
        let members = vec![member(1), member(2)];
        let view = raft(&[1, 2, 3], &[]);
        let input = LeaderInput { state: &state, raft: &view, members: &members, advertise: addr(1), own: own(&rec, None), now_ms: T0_MS };
        let effects = core().pass(&input);
        let LeaderEffect::ChangeMembership { change: ChangeMembers::RemoveVoters(ids), retain: false, kind, .. } = &effects[0] else { panic!("{effects:?}") };
        assert!(kind.is_removal());
        assert_eq!(ids, &BTreeSet::from([RaftNodeId(id(3))]));
        // Node 2 now gossips from another address.
        let state = c.state(&[1, 2]);
        let mut moved = member(2);
        moved.addr = SocketAddr::from(([10, 0, 9, 2], 7946));
        moved.signed_addr = Some(moved.addr);
        let members = vec![member(1), moved.clone()];
        let view = raft(&[1, 2], &[]);
        let input = LeaderInput { state: &state, raft: &view, members: &members, advertise: addr(1), own: own(&rec, None), now_ms: T0_MS };
        let effects = core().pass(&input);
        let LeaderEffect::ChangeMembership { kind: ChangeKind::Moved, then: Some(Command::RegisterNode { record, .. }), .. } = &effects[0] else { panic!("{effects:?}") };
        assert_eq!(record.addr, moved.addr);
    }

    #[test]
    fn a_lost_quorum_is_said_once_until_it_is_healthy_again() {
        let c = TestCluster::new();
        let state = c.state(&[1, 2, 3]);
        let rec = record(1);
        let view = raft(&[1, 2, 3], &[]);
        let mut core = core();
        let only_me = vec![member(1)];
        let lost = |core: &mut LeaderCore, now_ms: u64| {
            let input = LeaderInput { state: &state, raft: &view, members: &only_me, advertise: addr(1), own: own(&rec, None), now_ms };
            core.pass(&input).iter().filter(|e| matches!(e, LeaderEffect::QuorumLost { .. })).count()
        };
        // Down long enough for autopilot to want to replace them.
        let t = T0_MS + 120_000;
        let first = lost(&mut core, T0_MS) + lost(&mut core, t);
        assert_eq!(first, 1);
        assert_eq!(lost(&mut core, t + 500), 0);
        let all = vec![member(1), member(2), member(3)];
        let input = LeaderInput { state: &state, raft: &view, members: &all, advertise: addr(1), own: own(&rec, None), now_ms: t + 1_000 };
        let _ = core.pass(&input);
        assert_eq!(lost(&mut core, t + 200_000), 1);
    }

    #[test]
    fn this_node_is_advertised_with_its_own_address() {
        let mut me = member(1);
        me.addr = SocketAddr::from(([0, 0, 0, 0], 7946));
        let map = advertised(&[me, member(2)], addr(1));
        assert_eq!(map.get(&id(1)), Some(&addr(1)));
        assert_eq!(map.get(&id(2)), Some(&addr(2)));
    }

    #[test]
    fn a_node_is_where_its_own_signed_facts_say_not_where_swim_says() {
        // A key holder claimed node 2's SWIM identity at its own address: nothing moves.
        let mut claimed = member(2);
        claimed.addr = SocketAddr::from(([10, 66, 0, 3], 7946));
        let mut unsigned = member(3);
        unsigned.signed_addr = None;
        let map = advertised(&[member(1), claimed, unsigned], addr(1));
        assert_eq!(map.get(&id(2)), Some(&addr(2)));
        assert_eq!(map.get(&id(3)), None, "no facts yet: no word of the node on where it is");
    }
}
