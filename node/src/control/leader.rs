//! The leader's duties, on their own task while this node leads: each pass gathers the
//! inputs (the applied state, Raft's membership, gossip) for the shared controller core
//! (`shoal_control::LeaderCore`, which the simulator's whole mode runs too) and carries its
//! effects out: writes through Raft, learners added, membership changes. Only this I/O is
//! the node's own.

use super::{now_ms, Control, Running, WriteError};
use shoal_cluster::scheduler::SchedulerConfig;
use shoal_consensus::duties::{DutyConfig, RaftView};
use shoal_consensus::{IssuedCert, NodeRecord, RaftNodeId, Rejected};
use shoal_control::{LeaderCore, LeaderEffect, LeaderInput, OwnTrust, WriteWhy};
use std::sync::Arc;
use std::time::Duration;

/// Bound on one membership change (it waits for a commit).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the duties run when nothing is applied.
const DUTY_TICK: Duration = Duration::from_millis(500);
/// Least time between two passes, however fast entries are applied.
const DUTY_MIN_GAP: Duration = Duration::from_millis(20);

fn duty_config(ctl: &Control) -> DutyConfig {
    let cfg = ctl.config();
    DutyConfig {
        me: ctl.id(),
        target_voters: cfg.target_voters,
        dead_voter_after_ms: cfg.dead_voter_after.as_millis() as u64,
        scheduler: SchedulerConfig { down_grace_ms: cfg.reschedule_after.as_millis() as u64 },
    }
}

/// The loop: a pass whenever an entry is applied (a start, a report: the scheduler places
/// without waiting out a tick) and every [`DUTY_TICK`], on whatever node leads. Its own
/// task, so a membership change that waits for a commit does not hold up the state watcher
/// (the revoked set, renewal).
pub(super) async fn run(ctl: Control, running: Arc<Running>) {
    let mut core = LeaderCore::new(duty_config(&ctl));
    let mut seen = None;
    loop {
        tokio::time::sleep(DUTY_MIN_GAP).await;
        running.applied_change(seen, DUTY_TICK).await;
        seen = running.applied_index();
        if ctl.running().is_none_or(|r| !Arc::ptr_eq(&r, &running)) {
            return;
        }
        let metrics = running.metrics();
        if metrics.current_leader != Some(RaftNodeId(ctl.id())) {
            core.reset();
            continue;
        }
        let Ok(state) = running.state().await else { return };
        let Ok(members) = ctl.membership().members().await else { return };
        let raft = RaftView::from_metrics(&metrics);
        let cfg = ctl.config();
        let record = NodeRecord { name: cfg.name.clone(), addr: cfg.advertise, labels: cfg.labels.clone() };
        let info = running.cert().info;
        let cert = IssuedCert { serial: info.serial, not_after: crate::pki::unix_secs(info.not_after) };
        let pending = running.pending_ca();
        let input = LeaderInput {
            state: &state,
            raft: &raft,
            members: &members,
            advertise: cfg.advertise,
            own: OwnTrust { me: ctl.id(), record: &record, cert: Some(&cert), pending_ca: pending.as_ref() },
            now_ms: now_ms(),
        };
        for effect in core.pass(&input) {
            carry_out(&ctl, &running, effect).await;
        }
    }
}

async fn carry_out(ctl: &Control, running: &Running, effect: LeaderEffect) {
    match effect {
        LeaderEffect::Write { command, why } => {
            let written = running.write(command).await;
            match (&why, written) {
                (WriteWhy::CommitCa, Ok(_)) => {
                    tracing::info!("committed the cluster CA");
                    forget_pending_ca(ctl, running);
                }
                (WriteWhy::CommitCa, Err(WriteError::Rejected(Rejected::CaAlreadySet))) => forget_pending_ca(ctl, running),
                (WriteWhy::Schedule { acting }, Ok(_)) => {
                    for d in acting {
                        tracing::info!(decision = ?d, "scheduler");
                    }
                }
                (WriteWhy::AutoRemove { name }, Ok(_)) => {
                    tracing::info!(container = %name, "removed a container whose run ended (AutoRemove)");
                }
                (_, Ok(_)) => {}
                (WriteWhy::CommitCa | WriteWhy::OwnTrust, Err(e)) => {
                    tracing::warn!(error = %e, "leader: could not commit the CA or this node's record yet");
                }
                (WriteWhy::Schedule { .. }, Err(e)) => tracing::warn!(error = %e, "could not commit the scheduler's decisions"),
                (WriteWhy::Forget, Err(e)) => tracing::warn!(error = %e, "could not forget finished tasks"),
                (WriteWhy::AutoRemove { name }, Err(e)) => {
                    tracing::warn!(container = %name, error = %e, "could not remove a container whose run ended (AutoRemove); will retry");
                }
            }
        }
        LeaderEffect::ClearPendingCa => forget_pending_ca(ctl, running),
        LeaderEffect::AddLearner { id, node } => {
            tracing::info!(node = %id.short(), name = %node.name, "adding node to Raft as a learner");
            if let Err(e) = running.raft.add_learner(RaftNodeId(id), node, false).await {
                tracing::warn!(node = %id.short(), error = %e, "could not add learner");
            }
        }
        LeaderEffect::ChangeMembership { change, retain, kind, then } => {
            tracing::info!(?kind, "changing Raft's membership");
            match tokio::time::timeout(CHANGE_TIMEOUT, running.raft.change_membership(change, retain)).await {
                Ok(Ok(_)) => {
                    if let Some(command) = then {
                        if let Err(e) = running.write(command).await {
                            tracing::warn!(error = %e, "could not record the node's new address");
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "membership change failed"),
                Err(_) => tracing::warn!("membership change did not commit within {CHANGE_TIMEOUT:?}"),
            }
        }
        LeaderEffect::QuorumLost { healthy, voters } => {
            tracing::warn!(healthy, voters, "autopilot: a majority of voters is not healthy; not changing voters");
        }
        LeaderEffect::TrustBroken(why) => tracing::error!(%why, "leader: cannot commit the cluster's trust state"),
    }
}

fn forget_pending_ca(ctl: &Control, running: &Running) {
    running.clear_pending_ca();
    ctl.inner.files.remove_pending_ca();
}
