//! The leader's duties and the agent's reporting, as pure functions over the replicated
//! state, the Raft membership and the gossip view. The real node (`node/src/control/`) and
//! the simulator's whole-node mode (`shoal sim --whole`) both call these, so the simulator
//! checks the decisions that run for real; the callers only gather inputs and carry out the
//! step (a membership change, a write).
//!
//! - [`GossipHealth`]: a registered node's health from gossip, one mapping for the scheduler
//!   and for autopilot, with the leader's memory of when a node went missing;
//! - [`membership_step`]: the one Raft membership change to make now (learners, moved
//!   addresses, revoked nodes, autopilot), or none;
//! - [`scheduler_step`]: the scheduler pass to commit, or finished tasks to forget;
//! - [`unrecorded_reports`]: an agent's task reports minus what the state already records.

use crate::state::{clip_text, ClusterState, TaskRecord, MAX_FORGET, MAX_PENDING_REASON_LEN};
use crate::types::RaftMetrics;
use crate::{Command, NodeRecord, ShoalNode};
use shoal_cluster::autopilot::{self, AutopilotDecision, AutopilotInput, Peer, PeerHealth};
use shoal_cluster::scheduler::{self, Decision, Health, NodeView, SchedulerConfig, Slot};
use shoal_discovery::{MemberState, MemberView};
use shoal_engine::TaskReport;
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// A learner this many entries behind the leader's last log is not caught up.
pub const CAUGHT_UP_LAG: u64 = 100;

/// Registered nodes' health as the leader sees it through gossip.
///
/// A node membership does not list (never seen, or forgotten) counts as down from the
/// moment this leader first missed it, so its tasks move after the grace period like a node
/// seen down, instead of at once.
#[derive(Debug, Default, Clone)]
pub struct GossipHealth {
    missing_since: BTreeMap<NodeId, u64>,
}

impl GossipHealth {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget what was tracked while leading (another node leads now).
    pub fn reset(&mut self) {
        self.missing_since.clear();
    }

    /// The scheduler's health of `id`.
    pub fn health(&mut self, me: NodeId, members: &[MemberView], id: &NodeId, now_ms: u64) -> Health {
        if *id == me {
            return Health::Alive;
        }
        match members.iter().find(|m| m.id == *id) {
            Some(m) => {
                self.missing_since.remove(id);
                if m.is_self {
                    return Health::Alive;
                }
                match m.state {
                    MemberState::Alive => Health::Alive,
                    MemberState::Suspect => Health::Suspect,
                    MemberState::Down => Health::Down { since_ms: m.since_ms },
                    MemberState::Left => Health::Left { since_ms: m.since_ms },
                }
            }
            None => Health::Down { since_ms: *self.missing_since.entry(*id).or_insert(now_ms) },
        }
    }

    /// Autopilot's health of `id`: alive and suspect are healthy, down and left are down.
    pub fn peer_health(&mut self, me: NodeId, members: &[MemberView], id: &NodeId, now_ms: u64) -> PeerHealth {
        match self.health(me, members, id, now_ms) {
            Health::Alive | Health::Suspect => PeerHealth::Healthy,
            Health::Down { since_ms } | Health::Left { since_ms } => PeerHealth::Down { since_ms },
        }
    }
}

/// The Raft membership and replication progress the leader's metrics show.
#[derive(Debug, Clone, Default)]
pub struct RaftView {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Every member's node record (voters and learners).
    pub nodes: BTreeMap<NodeId, ShoalNode>,
    /// A joint configuration is in the log (a change was started and not finished).
    pub joint: bool,
    /// The voters the last configuration moves to (the current voters when not joint).
    pub target_voters: BTreeSet<NodeId>,
    pub last_log: u64,
    /// The leader's matched index per follower.
    pub matched: BTreeMap<NodeId, u64>,
}

impl RaftView {
    pub fn from_metrics(m: &RaftMetrics) -> Self {
        let membership = m.membership_config.membership();
        let matched = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (id.0, l.as_ref().map_or(0, |l| l.index))).collect())
            .unwrap_or_default();
        Self {
            voters: membership.voter_ids().map(|v| v.0).collect(),
            learners: membership.learner_ids().map(|l| l.0).collect(),
            nodes: membership.nodes().map(|(id, n)| (id.0, n.clone())).collect(),
            joint: membership.get_joint_config().len() > 1,
            target_voters: membership.get_joint_config().last().map(|c| c.iter().map(|v| v.0).collect()).unwrap_or_default(),
            last_log: m.last_log_index.unwrap_or(0),
            matched,
        }
    }
}

/// Whom a leader that is stopping on purpose hands leadership to: the other voter it has
/// replicated the most to (ties: the lowest id), so the new leader needs the least catching
/// up. `None` when there is no other voter or a membership change is in flight (a transfer
/// then could land on a voter that is on its way out).
pub fn handover_target(view: &RaftView, me: NodeId) -> Option<NodeId> {
    if view.joint {
        return None;
    }
    view.voters
        .iter()
        .filter(|v| **v != me)
        .max_by_key(|v| (view.matched.get(v).copied().unwrap_or(0), std::cmp::Reverse(**v)))
        .copied()
}

/// What the duties need to know about this node and its settings.
#[derive(Debug, Clone, Copy)]
pub struct DutyConfig {
    pub me: NodeId,
    /// 1, 3 or 5.
    pub target_voters: usize,
    /// A voter down this long is replaced by a healthy learner.
    pub dead_voter_after_ms: u64,
    pub scheduler: SchedulerConfig,
}

/// One Raft membership change, to be made by the caller (one per tick: changes serialize).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipStep {
    /// Nothing to change.
    Keep,
    /// A joint configuration is in the log: finish it by moving to its target voters.
    /// openraft makes a change in two steps inside one `change_membership` call; a leader
    /// that crashed, or a call that timed out, between them leaves the joint configuration
    /// in place, and no other change can start until it is finished (found by the
    /// simulator's whole-node mode). If the joint entry is not committed yet, the call is
    /// refused and the next tick tries again.
    FinishJoint { voters: BTreeSet<NodeId> },
    /// A registered, alive node joins Raft as a learner.
    AddLearner { id: NodeId, node: ShoalNode },
    /// A member's Raft address changed (DHCP, a moved machine): update the membership's
    /// node record, then the state's record.
    Moved { id: NodeId, node: ShoalNode, record: Option<NodeRecord> },
    /// Revoked voters leave (while a quorum stays).
    RemoveVoters(BTreeSet<NodeId>),
    /// Revoked learners leave.
    RemoveNodes(BTreeSet<NodeId>),
    /// Autopilot's new voter set.
    ChangeVoters { voters: BTreeSet<NodeId>, reason: String },
    /// The voters lack a healthy majority: no change is safe.
    QuorumLost { healthy: usize, voters: usize },
}

/// The membership change to make now, in priority order: add alive registered nodes as
/// learners, follow moved addresses, take revoked nodes out (voters first, while a quorum
/// stays), then autopilot.
///
/// `advertised` holds the current Raft address of every node gossip shows alive (the caller
/// maps gossip addresses to Raft ports).
pub fn membership_step(
    cfg: &DutyConfig,
    state: &ClusterState,
    raft: &RaftView,
    members: &[MemberView],
    advertised: &BTreeMap<NodeId, SocketAddr>,
    health: &mut GossipHealth,
    now_ms: u64,
) -> MembershipStep {
    if raft.joint {
        return MembershipStep::FinishJoint { voters: raft.target_voters.clone() };
    }
    let me = cfg.me;
    for (id, record) in &state.nodes {
        if raft.nodes.contains_key(id) || state.revoked.contains(id) {
            continue;
        }
        if health.peer_health(me, members, id, now_ms) == PeerHealth::Healthy {
            return MembershipStep::AddLearner { id: *id, node: ShoalNode::new(record.name.clone(), record.addr) };
        }
    }
    for (id, node) in &raft.nodes {
        let Some(addr) = advertised.get(id) else { continue };
        if *addr != node.addr {
            let record = state.nodes.get(id).map(|r| NodeRecord { addr: *addr, ..r.clone() });
            return MembershipStep::Moved { id: *id, node: ShoalNode::new(node.name.clone(), *addr), record };
        }
    }
    let revoked_voters: BTreeSet<NodeId> = raft.voters.iter().filter(|v| state.revoked.contains(v)).copied().collect();
    if !revoked_voters.is_empty() && revoked_voters.len() < raft.voters.len() {
        return MembershipStep::RemoveVoters(revoked_voters);
    }
    let revoked_learners: BTreeSet<NodeId> = raft.learners.iter().filter(|l| state.revoked.contains(l)).copied().collect();
    if !revoked_learners.is_empty() {
        return MembershipStep::RemoveNodes(revoked_learners);
    }
    let mut peer = |id: &NodeId| {
        let matched = raft.matched.get(id).copied().unwrap_or(0);
        let caught_up = *id == me || matched + CAUGHT_UP_LAG >= raft.last_log;
        Peer { id: *id, health: health.peer_health(me, members, id, now_ms), caught_up }
    };
    let voters: Vec<Peer> = raft.voters.iter().map(&mut peer).collect();
    let learners: Vec<Peer> = raft.learners.iter().filter(|l| !state.revoked.contains(l)).map(&mut peer).collect();
    let decision = autopilot::decide(&AutopilotInput {
        voters: &voters,
        learners: &learners,
        target_voters: cfg.target_voters,
        now_ms,
        dead_after_ms: cfg.dead_voter_after_ms,
    });
    match decision {
        AutopilotDecision::Keep => MembershipStep::Keep,
        AutopilotDecision::ChangeVoters { voters, reason } => MembershipStep::ChangeVoters { voters, reason },
        AutopilotDecision::QuorumLost { healthy, voters } => MembershipStep::QuorumLost { healthy, voters },
    }
}

/// Why `node rm` of `id` must be refused now, if it must:
/// - the cluster's only voter cannot be removed (nothing could commit again once it is
///   switched off). Found by the simulator's whole-node mode: an operator removing the
///   founder before autopilot promoted anyone;
/// - a voter whose revocation would leave fewer unrevoked voters than a majority of the
///   voters Raft has now: a revoked node's connections are refused at once, before the
///   leader has taken it out of Raft, so revoking two of three voters in a row would leave
///   one voter that can never commit the change (quorum lost for good). Revoked voters are
///   taken out of Raft within seconds; the second removal waits until then.
///
/// `revoked` is the replicated revoked set.
pub fn removal_refusal(raft: &RaftView, revoked: &BTreeSet<NodeId>, id: &NodeId) -> Option<String> {
    if !raft.voters.contains(id) {
        return None;
    }
    if raft.voters.len() == 1 {
        return Some(format!(
            "node {} is the cluster's only manager (Raft voter); start more machines and wait until `shoal status` shows other voters, then remove it",
            id.short()
        ));
    }
    let left = raft.voters.iter().filter(|v| *v != id && !revoked.contains(v)).count();
    if left * 2 <= raft.voters.len() {
        return Some(format!(
            "removing node {} now would leave {left} of the {} managers (Raft voters) able to vote, too few to ever agree again; wait until the managers removed before are out of Raft (`shoal status` lists the voters), then remove it",
            id.short(),
            raft.voters.len()
        ));
    }
    None
}

/// What one scheduler pass asks the leader to commit.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerStep {
    /// Nothing changes: nothing is written (an idle cluster writes nothing).
    Idle,
    /// Placements, shutdowns or changed pending reasons; `acting` lists the decisions that
    /// are not `Pending` (for the log).
    Commit { command: Command, acting: Vec<Decision> },
    /// Tasks fully shut down, to be forgotten.
    Forget(Command),
}

/// The scheduler's view of every registered, unrevoked node.
pub fn scheduler_nodes(me: NodeId, state: &ClusterState, members: &[MemberView], health: &mut GossipHealth, now_ms: u64) -> Vec<NodeView> {
    let mut nodes = Vec::new();
    for (id, record) in &state.nodes {
        if state.revoked.contains(id) {
            continue;
        }
        let res = members.iter().find(|m| m.id == *id).map(|m| m.resources.clone()).unwrap_or_default();
        nodes.push(NodeView {
            id: *id,
            hostname: record.name.clone(),
            arch: res.arch,
            labels: record.labels.clone(),
            health: health.health(me, members, id, now_ms),
            availability: state.availability_of(id),
            engine_ok: res.engine_ok,
            cpu_millis: res.cpu_millis,
            memory_bytes: res.memory_bytes,
        });
    }
    nodes
}

/// One scheduler pass: the pure `schedule` over the replicated state and gossip's health,
/// committed only when it changes something (a placement, a shutdown, or the pending
/// reasons); otherwise the tasks that are fully shut down are forgotten.
pub fn scheduler_step(cfg: &DutyConfig, state: &ClusterState, members: &[MemberView], health: &mut GossipHealth, now_ms: u64) -> SchedulerStep {
    let nodes = scheduler_nodes(cfg.me, state, members, health, now_ms);
    let (services, tasks) = state.scheduler_inputs();
    let decisions = scheduler::schedule(&cfg.scheduler, now_ms, &nodes, &services, &tasks);
    let acting: Vec<Decision> = decisions.iter().filter(|d| !matches!(d, Decision::Pending { .. })).cloned().collect();
    let pending_now: BTreeSet<(String, Slot, String)> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Pending { service, slot, reason } => Some((service.clone(), *slot, clip_text(reason, MAX_PENDING_REASON_LEN))),
            _ => None,
        })
        .collect();
    let pending_before: BTreeSet<(String, Slot, String)> = state
        .services
        .iter()
        .flat_map(|(name, svc)| svc.pending.iter().map(move |(slot, p)| (name.clone(), *slot, p.reason.clone())))
        .collect();
    if !acting.is_empty() || pending_now != pending_before {
        return SchedulerStep::Commit { command: Command::apply_decisions(decisions, now_ms), acting };
    }
    let forget = state.forgettable_tasks();
    if forget.is_empty() {
        return SchedulerStep::Idle;
    }
    SchedulerStep::Forget(Command::ForgetTasks { ids: forget.into_iter().take(MAX_FORGET).collect() })
}

/// Whether the state already records `report` for its task.
fn recorded(task: &TaskRecord, report: &TaskReport) -> bool {
    task.observed.as_ref() == Some(&report.state)
        && task.container == report.container
        && task.last_exit_code == report.last_exit_code
        && task.restarts == report.restarts
}

/// An agent's latest reports, normalised as the state machine stores them, minus what the
/// state already records and minus tasks no longer assigned to `me`: the commands to write
/// (none when nothing changed, and a lost write is simply produced again next pass).
pub fn unrecorded_reports(state: &ClusterState, me: NodeId, reports: Vec<TaskReport>, now_ms: u64) -> Vec<Command> {
    let latest: BTreeMap<_, _> = reports
        .into_iter()
        .filter(|r| state.tasks.get(&r.task).is_some_and(|t| t.node == me))
        .map(|r| (r.task, r))
        .collect();
    let mut out = Vec::new();
    for cmd in Command::report_tasks(me, latest.into_values().collect(), now_ms) {
        let Command::ReportTasks { reports, .. } = &cmd else { continue };
        let fresh: Vec<TaskReport> = reports.iter().filter(|r| !state.tasks.get(&r.task).is_some_and(|t| recorded(t, r))).cloned().collect();
        if !fresh.is_empty() {
            out.extend(Command::report_tasks(me, fresh, now_ms));
        }
    }
    out
}

#[cfg(test)]
mod tests;
