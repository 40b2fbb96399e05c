//! What the leader does besides replicating: commit the CA it created, register itself, add
//! every registered node as a Raft learner, run autopilot (replace dead voters, grow to the
//! 1/3/5 target), and take revoked nodes out of the Raft membership.
//!
//! Decisions come from the pure `shoal_consensus::duties` (which the simulator's whole-node
//! mode runs too); this module only gathers their inputs (gossip, Raft metrics) and carries
//! them out.
//! Each step is idempotent: the loop runs every tick on whatever node leads.

use super::{now_ms, Control, Running};
use shoal_cluster::scheduler::SchedulerConfig;
use shoal_consensus::duties::{self, DutyConfig, GossipHealth, MembershipStep, RaftView, SchedulerStep};
use shoal_consensus::openraft::ChangeMembers;
use shoal_consensus::types::RaftMetrics;
use shoal_consensus::{ClusterState, Command, IssuedCert, NodeRecord, RaftNodeId, Rejected, ShoalNode};
use shoal_discovery::MemberState;
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
/// Bound on one membership change (it waits for a commit).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's bookkeeping between ticks.
pub(super) struct LeaderDuties {
    /// Registered nodes' health from gossip, with when each went missing.
    health: GossipHealth,
    quorum_warned: bool,
}

impl LeaderDuties {
    pub(super) fn new() -> Self {
        Self { health: GossipHealth::new(), quorum_warned: false }
    }

    /// Forget what was tracked while leading (another node leads now).
    pub(super) fn reset(&mut self) {
        self.health.reset();
        self.quorum_warned = false;
    }

    fn duty_config(ctl: &Control) -> DutyConfig {
        let cfg = ctl.config();
        DutyConfig {
            me: ctl.id(),
            target_voters: cfg.target_voters,
            dead_voter_after_ms: cfg.dead_voter_after.as_millis() as u64,
            scheduler: SchedulerConfig { down_grace_ms: cfg.reschedule_after.as_millis() as u64 },
        }
    }

    pub(super) async fn run(&mut self, ctl: &Control, running: &Running, state: &ClusterState, metrics: &RaftMetrics) {
        if let Err(e) = self.commit_trust(ctl, running, state).await {
            tracing::warn!(error = %e, "leader: could not commit the CA or this node's record yet");
            return;
        }
        let raft = RaftView::from_metrics(metrics);
        let Ok(members) = ctl.membership().members().await else { return };
        // Where gossip says each alive member is now (sealed: each node speaks for itself).
        let advertised: BTreeMap<NodeId, SocketAddr> = members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| (m.id, if m.is_self { ctl.config().advertise } else { m.addr }))
            .collect();
        let step = duties::membership_step(&Self::duty_config(ctl), state, &raft, &members, &advertised, &mut self.health, now_ms());
        let raft_ids = |ids: BTreeSet<NodeId>| -> BTreeSet<RaftNodeId> { ids.into_iter().map(RaftNodeId).collect() };
        match step {
            MembershipStep::Keep => self.quorum_warned = false,
            MembershipStep::FinishJoint { voters } => {
                tracing::info!(voters = voters.len(), "finishing an interrupted membership change");
                self.change(running, ChangeMembers::ReplaceAllVoters(raft_ids(voters)), true).await;
            }
            MembershipStep::AddLearner { id, node } => {
                tracing::info!(node = %id.short(), name = %node.name, "adding node to Raft as a learner");
                if let Err(e) = running.raft.add_learner(RaftNodeId(id), node, false).await {
                    tracing::warn!(node = %id.short(), error = %e, "could not add learner");
                }
            }
            MembershipStep::Moved { id, node, record } => {
                tracing::info!(node = %id.short(), new = %node.addr, "node moved: updating its Raft address");
                self.change(running, ChangeMembers::SetNodes(BTreeMap::from([(RaftNodeId(id), node)])), true).await;
                if let Some(record) = record {
                    if let Err(e) = running.write(Command::RegisterNode { id, record }).await {
                        tracing::warn!(error = %e, "could not record the node's new address");
                    }
                }
            }
            MembershipStep::RemoveVoters(ids) => {
                tracing::info!(count = ids.len(), "removing revoked voters from Raft");
                self.change(running, ChangeMembers::RemoveVoters(raft_ids(ids)), false).await;
            }
            MembershipStep::RemoveNodes(ids) => {
                tracing::info!(count = ids.len(), "removing revoked nodes from Raft");
                self.change(running, ChangeMembers::RemoveNodes(raft_ids(ids)), false).await;
            }
            MembershipStep::ChangeVoters { voters, reason } => {
                tracing::info!(%reason, "autopilot: changing voters");
                self.change(running, ChangeMembers::ReplaceAllVoters(raft_ids(voters)), true).await;
            }
            MembershipStep::QuorumLost { healthy, voters } => {
                if !self.quorum_warned {
                    tracing::warn!(healthy, voters, "autopilot: a majority of voters is not healthy; not changing voters");
                    self.quorum_warned = true;
                }
            }
        }
    }

    /// One scheduler pass (`duties::scheduler_step`): commit what it decides, or forget
    /// finished tasks; an idle cluster writes nothing.
    pub(super) async fn schedule(&mut self, ctl: &Control, running: &Running, state: &ClusterState) {
        let Ok(members) = ctl.membership().members().await else { return };
        match duties::scheduler_step(&Self::duty_config(ctl), state, &members, &mut self.health, now_ms()) {
            SchedulerStep::Idle => {}
            SchedulerStep::Commit { command, acting } => {
                for d in &acting {
                    tracing::info!(decision = ?d, "scheduler");
                }
                if let Err(e) = running.write(command).await {
                    tracing::warn!(error = %e, "could not commit the scheduler's decisions");
                }
            }
            SchedulerStep::Forget(command) => {
                if let Err(e) = running.write(command).await {
                    tracing::warn!(error = %e, "could not forget finished tasks");
                }
            }
        }
    }

    /// Removes the containers created with `AutoRemove` (`docker run --rm`) whose run is
    /// over (`ClusterState::auto_remove_due`); their nodes then remove the engine's
    /// containers like those of any removed service.
    pub(super) async fn auto_remove(&mut self, running: &Running, state: &ClusterState) {
        for id in state.auto_remove_due() {
            let name = state.containers.get(&id).map(|c| c.name.clone()).unwrap_or_default();
            match running.write(Command::RemoveContainer { id, force: true, now_ms: now_ms() }).await {
                Ok(_) => tracing::info!(container = %name, "removed a container whose run ended (AutoRemove)"),
                Err(e) => tracing::warn!(container = %name, error = %e, "could not remove a container whose run ended (AutoRemove); will retry"),
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
            let addr = cfg.advertise;
            let record = NodeRecord { name: cfg.name.clone(), addr, labels: cfg.labels.clone() };
            running.write(Command::RegisterNode { id: ctl.id(), record }).await.map_err(|e| e.to_string())?;
        }
        // This node's certificate, recorded (again after a renewal the cluster missed).
        let info = running.cert().info;
        let not_after = crate::pki::unix_secs(info.not_after);
        if state.ca.is_some() && state.issued.get(&ctl.id()).is_none_or(|c| c.not_after < not_after) {
            let cert = IssuedCert { serial: info.serial, not_after };
            running.write(Command::RecordIssued { node: ctl.id(), cert }).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
