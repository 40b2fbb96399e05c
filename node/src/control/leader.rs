//! What the leader does besides replicating: commit the CA it created, register itself, add
//! every registered node as a Raft learner, run autopilot (replace dead voters, grow to the
//! 1/3/5 target), and take revoked nodes out of the Raft membership.
//!
//! Decisions come from the pure rules in `shoal_cluster::autopilot`; this module only
//! gathers their inputs (membership health, replication progress) and carries them out.
//! Each step is idempotent: the loop runs every tick on whatever node leads.

use super::{now_ms, Control, Running};
use shoal_cluster::autopilot::{self, AutopilotDecision, AutopilotInput, Peer, PeerHealth};
use shoal_cluster::scheduler::{self, Decision, Health, NodeView, SchedulerConfig, Slot};
use shoal_consensus::openraft::ChangeMembers;
use shoal_consensus::types::RaftMetrics;
use shoal_consensus::{ClusterState, Command, IssuedCert, NodeRecord, RaftNodeId, Rejected, ShoalNode};
use shoal_discovery::MemberState;
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A learner this many entries behind the leader's last log is not caught up.
const CAUGHT_UP_LAG: u64 = 100;
/// Bound on one membership change (it waits for a commit).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's bookkeeping between ticks.
pub(super) struct LeaderDuties {
    /// Nodes missing from gossip, and since when (ms since the epoch): a node that
    /// membership no longer lists counts as down from the moment it was first missed.
    missing_since: BTreeMap<NodeId, u64>,
    quorum_warned: bool,
}

impl LeaderDuties {
    pub(super) fn new() -> Self {
        Self { missing_since: BTreeMap::new(), quorum_warned: false }
    }

    /// Forget what was tracked while leading (another node leads now).
    pub(super) fn reset(&mut self) {
        self.missing_since.clear();
        self.quorum_warned = false;
    }

    pub(super) async fn run(&mut self, ctl: &Control, running: &Running, state: &ClusterState, metrics: &RaftMetrics) {
        if let Err(e) = self.commit_trust(ctl, running, state).await {
            tracing::warn!(error = %e, "leader: could not commit the CA or this node's record yet");
            return;
        }
        let membership = metrics.membership_config.membership().clone();
        if membership.get_joint_config().len() > 1 {
            return; // a membership change is in flight; look again next tick
        }
        let Ok(members) = ctl.membership().members().await else { return };
        let now = now_ms();
        let health = |id: &NodeId, missing: &mut BTreeMap<NodeId, u64>| -> PeerHealth {
            if *id == ctl.id() {
                return PeerHealth::Healthy;
            }
            match members.iter().find(|m| m.id == *id) {
                Some(m) => {
                    missing.remove(id);
                    match m.state {
                        MemberState::Alive | MemberState::Suspect => PeerHealth::Healthy,
                        MemberState::Down | MemberState::Left => PeerHealth::Down { since_ms: m.since_ms },
                    }
                }
                None => PeerHealth::Down { since_ms: *missing.entry(*id).or_insert(now) },
            }
        };

        // Registered nodes that are alive become learners.
        let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| id.0).collect();
        for (id, record) in &state.nodes {
            if known.contains(id) || state.revoked.contains(id) {
                continue;
            }
            if !matches!(health(id, &mut self.missing_since), PeerHealth::Healthy) {
                continue;
            }
            let node = ShoalNode::new(record.name.clone(), record.addr);
            tracing::info!(node = %id.short(), name = %record.name, "adding node to Raft as a learner");
            if let Err(e) = running.raft.add_learner(RaftNodeId(*id), node, false).await {
                tracing::warn!(node = %id.short(), error = %e, "could not add learner");
            }
            return; // one change per tick: membership changes are serialized
        }

        // A node whose address changed (DHCP, a moved machine) is dialled at its new address:
        // gossip (sealed, each node speaks for itself) tells the current one.
        for (id, node) in membership.nodes() {
            let Some(m) = members.iter().find(|m| m.id == id.0 && m.state == MemberState::Alive) else { continue };
            let gossip = if m.is_self { ctl.config().advertise } else { m.addr };
            let Ok(addr) = super::raft_addr(gossip) else { continue };
            if addr == node.addr {
                continue;
            }
            tracing::info!(node = %id.0.short(), old = %node.addr, new = %addr, "node moved: updating its Raft address");
            let moved = ShoalNode::new(node.name.clone(), addr);
            self.change(running, ChangeMembers::SetNodes(BTreeMap::from([(*id, moved)])), true).await;
            if let Some(record) = state.nodes.get(&id.0) {
                let record = NodeRecord { addr, ..record.clone() };
                if let Err(e) = running.write(Command::RegisterNode { id: id.0, record }).await {
                    tracing::warn!(error = %e, "could not record the node's new address");
                }
            }
            return;
        }

        // Revoked nodes leave the Raft membership: voters first (while a quorum stays), then
        // as learners.
        let voters: BTreeSet<RaftNodeId> = membership.voter_ids().collect();
        let revoked_voters: BTreeSet<RaftNodeId> = voters.iter().filter(|v| state.revoked.contains(&v.0)).copied().collect();
        if !revoked_voters.is_empty() && revoked_voters.len() < voters.len() {
            tracing::info!(count = revoked_voters.len(), "removing revoked voters from Raft");
            self.change(running, ChangeMembers::RemoveVoters(revoked_voters), false).await;
            return;
        }
        let revoked_learners: BTreeSet<RaftNodeId> =
            membership.learner_ids().filter(|l| state.revoked.contains(&l.0)).collect();
        if !revoked_learners.is_empty() {
            tracing::info!(count = revoked_learners.len(), "removing revoked nodes from Raft");
            self.change(running, ChangeMembers::RemoveNodes(revoked_learners), false).await;
            return;
        }

        // Autopilot.
        let last_log = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.clone().unwrap_or_default();
        let peer = |id: RaftNodeId, missing: &mut BTreeMap<NodeId, u64>| {
            let matched = replication.get(&id).cloned().flatten().map_or(0, |l| l.index);
            let caught_up = id.0 == ctl.id() || matched + CAUGHT_UP_LAG >= last_log;
            Peer { id: id.0, health: health(&id.0, missing), caught_up }
        };
        let voter_peers: Vec<Peer> = voters.iter().map(|v| peer(*v, &mut self.missing_since)).collect();
        let learner_peers: Vec<Peer> = membership
            .learner_ids()
            .filter(|l| !state.revoked.contains(&l.0))
            .map(|l| peer(l, &mut self.missing_since))
            .collect();
        let decision = autopilot::decide(&AutopilotInput {
            voters: &voter_peers,
            learners: &learner_peers,
            target_voters: ctl.config().target_voters,
            now_ms: now,
            dead_after_ms: ctl.config().dead_voter_after.as_millis() as u64,
        });
        match decision {
            AutopilotDecision::Keep => self.quorum_warned = false,
            AutopilotDecision::ChangeVoters { voters, reason } => {
                tracing::info!(%reason, "autopilot: changing voters");
                let voters: BTreeSet<RaftNodeId> = voters.into_iter().map(RaftNodeId).collect();
                self.change(running, ChangeMembers::ReplaceAllVoters(voters), true).await;
            }
            AutopilotDecision::QuorumLost { healthy, voters } => {
                if !self.quorum_warned {
                    tracing::warn!(healthy, voters, "autopilot: a majority of voters is not healthy; not changing voters");
                    self.quorum_warned = true;
                }
            }
        }
    }

    /// One scheduler pass: the pure `schedule` over the replicated state and membership's
    /// health, committed only when it changes something (a placement, a shutdown, or the
    /// pending reasons). Then tasks that are fully shut down are forgotten.
    pub(super) async fn schedule(&mut self, ctl: &Control, running: &Running, state: &ClusterState) {
        let Ok(members) = ctl.membership().members().await else { return };
        let now = now_ms();
        let by_id: BTreeMap<NodeId, &shoal_discovery::MemberView> = members.iter().map(|m| (m.id, m)).collect();
        let mut nodes = Vec::new();
        for (id, record) in &state.nodes {
            if state.revoked.contains(id) {
                continue;
            }
            let member = by_id.get(id);
            let health = match member {
                Some(m) if m.is_self => Health::Alive,
                Some(m) => {
                    self.missing_since.remove(id);
                    match m.state {
                        MemberState::Alive => Health::Alive,
                        MemberState::Suspect => Health::Suspect,
                        MemberState::Down => Health::Down { since_ms: m.since_ms },
                        MemberState::Left => Health::Left { since_ms: m.since_ms },
                    }
                }
                None => Health::Down { since_ms: *self.missing_since.entry(*id).or_insert(now) },
            };
            let res = member.map(|m| m.resources.clone()).unwrap_or_default();
            nodes.push(NodeView {
                id: *id,
                hostname: record.name.clone(),
                arch: res.arch,
                labels: record.labels.clone(),
                health,
                availability: state.availability_of(id),
                engine_ok: res.engine_ok,
                cpu_millis: res.cpu_millis,
                memory_bytes: res.memory_bytes,
            });
        }
        let (services, tasks) = state.scheduler_inputs();
        let cfg = SchedulerConfig { down_grace_ms: ctl.config().reschedule_after.as_millis() as u64 };
        let decisions = scheduler::schedule(&cfg, now, &nodes, &services, &tasks);
        let acts = decisions.iter().any(|d| !matches!(d, Decision::Pending { .. }));
        let pending_now: BTreeSet<(String, Slot, String)> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Pending { service, slot, reason } => {
                    Some((service.clone(), *slot, shoal_consensus::state::clip_text(reason, shoal_consensus::state::MAX_PENDING_REASON_LEN)))
                }
                _ => None,
            })
            .collect();
        let pending_before: BTreeSet<(String, Slot, String)> = state
            .services
            .iter()
            .flat_map(|(name, svc)| svc.pending.iter().map(move |(slot, p)| (name.clone(), *slot, p.reason.clone())))
            .collect();
        if acts || pending_now != pending_before {
            for d in decisions.iter().filter(|d| !matches!(d, Decision::Pending { .. })) {
                tracing::info!(decision = ?d, "scheduler");
            }
            if let Err(e) = running.write(Command::apply_decisions(decisions, now)).await {
                tracing::warn!(error = %e, "could not commit the scheduler's decisions");
            }
            return;
        }
        let forget = state.forgettable_tasks();
        if !forget.is_empty() {
            let ids: Vec<_> = forget.into_iter().take(shoal_consensus::state::MAX_FORGET).collect();
            if let Err(e) = running.write(Command::ForgetTasks { ids }).await {
                tracing::warn!(error = %e, "could not forget finished tasks");
            }
        }
    }

    async fn change(&self, running: &Running, change: ChangeMembers<RaftNodeId, ShoalNode>, retain: bool) {
        match tokio::time::timeout(CHANGE_TIMEOUT, running.raft.change_membership(change, retain)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "membership change failed"),
            Err(_) => tracing::warn!("membership change did not commit within {CHANGE_TIMEOUT:?}"),
        }
    }

    /// The CA this node created goes into the state once; this node registers itself and
    /// its certificate.
    async fn commit_trust(&self, ctl: &Control, running: &Running, state: &ClusterState) -> Result<(), String> {
        if let Some((cert_pem, sealed)) = running.pending_ca() {
            if state.ca.is_none() {
                let sealed_key = shoal_wire::encode::<_, { shoal_consensus::state::MAX_SEALED_KEY_LEN }>(&sealed)
                    .map_err(|e| e.to_string())?;
                match running.write(Command::SetCa(shoal_consensus::CaRecord { cert_pem, sealed_key })).await {
                    Ok(_) => tracing::info!("committed the cluster CA"),
                    Err(super::WriteError::Rejected(Rejected::CaAlreadySet)) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            running.clear_pending_ca();
            ctl.inner.files.remove_pending_ca();
            return Ok(()); // the state read above is stale now
        }
        if !state.nodes.contains_key(&ctl.id()) {
            let cfg = ctl.config();
            let addr = super::raft_addr(cfg.advertise).map_err(|e| e.to_string())?;
            let record = NodeRecord { name: cfg.name.clone(), addr, labels: cfg.labels.clone() };
            running.write(Command::RegisterNode { id: ctl.id(), record }).await.map_err(|e| e.to_string())?;
        }
        // This node's certificate, recorded (again after a renewal the cluster missed).
        let info = running.cert().info;
        let not_after = super::pki_secs(info.not_after);
        if state.ca.is_some() && state.issued.get(&ctl.id()).is_none_or(|c| c.not_after < not_after) {
            let cert = IssuedCert { serial: info.serial, not_after };
            running.write(Command::RecordIssued { node: ctl.id(), cert }).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
