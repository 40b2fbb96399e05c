//! `shoal recover`: after quorum loss (most voters destroyed for good), makes one surviving
//! voter the sole voter of its own log, offline, as etcd's `--force-new-cluster` does.
//!
//! openraft takes the membership from the *last* membership entry in the log, committed or
//! not. So recovery appends, after the survivor's last entry, a membership entry whose only
//! voter is the survivor (learners are kept: they are not needed for a quorum and catch up
//! from it), then a `Revoke` of every voter left out, so that if one of them comes back
//! with its old data dir its certificate is refused instead of it campaigning with the old
//! membership. On the next start the node is the one voter: it elects itself and commits
//! everything its log holds, these entries included. Nothing the survivor had is dropped;
//! what only the lost voters had (entries never replicated to the survivor) is lost, which
//! is why this is a command a person runs, never something the agent does by itself.
//!
//! [`plan`] decides (pure, unit-tested); [`super::disk::RedbStore::recover_as_sole_voter`]
//! reads the store and writes the entries in one transaction.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::EntryPayload;

use crate::state::Command;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::Membership;
use crate::types::RaftNodeId;

/// What a recovery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The index of the new membership entry.
    pub index: u64,
    /// The voters of the membership before, the survivor included.
    pub voters_before: BTreeSet<RaftNodeId>,
    /// Voters left out (and revoked).
    pub dropped: Vec<RaftNodeId>,
    /// Learners kept.
    pub learners: Vec<RaftNodeId>,
}

/// Why a store cannot be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("the Raft store holds no log and no snapshot: this node never was a member, so there is nothing to recover from")]
    Empty,
    #[error("node {me} is not a voter of the last membership the store holds (voters: {voters}): recover from a manager's data dir")]
    NotAVoter { me: RaftNodeId, voters: String },
    #[error("node {me} already is the only voter: start the agent, it needs no other node for a quorum")]
    AlreadyAlone { me: RaftNodeId },
    #[error("the last membership does not describe node {me}: the store is damaged")]
    NoNodeInfo { me: RaftNodeId },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The entries that make `me` the sole voter after `last` (the store's last log id) given
/// the `membership` in effect, and what they do.
pub fn plan(me: RaftNodeId, last: LogId, membership: &Membership) -> Result<(Vec<Entry>, Recovery), RecoverError> {
    let voters: BTreeSet<RaftNodeId> = membership.voter_ids().collect();
    if !voters.contains(&me) {
        let voters = voters.iter().map(|v| v.node_id().short()).collect::<Vec<_>>().join(", ");
        return Err(RecoverError::NotAVoter { me, voters });
    }
    if voters.len() == 1 && membership.get_joint_config().len() == 1 {
        return Err(RecoverError::AlreadyAlone { me });
    }
    let learners: Vec<RaftNodeId> = membership.learner_ids().collect();
    let dropped: Vec<RaftNodeId> = voters.iter().copied().filter(|v| *v != me).collect();
    let mut nodes = BTreeMap::new();
    for id in std::iter::once(me).chain(learners.iter().copied()) {
        let node = membership.get_node(&id).ok_or(RecoverError::NoNodeInfo { me: id })?;
        nodes.insert(id, node.clone());
    }
    let sole = Membership::new(vec![BTreeSet::from([me])], nodes).map_err(|_| RecoverError::NoNodeInfo { me })?;
    let at = |offset: u64| LogId { leader_id: last.leader_id, index: last.index + offset };
    let mut entries = vec![Entry { log_id: at(1), payload: EntryPayload::Membership(sole) }];
    for (i, node) in dropped.iter().enumerate() {
        let cmd = Command::Revoke { node: node.node_id() };
        entries.push(Entry { log_id: at(2 + i as u64), payload: EntryPayload::Normal(cmd) });
    }
    Ok((entries, Recovery { index: last.index + 1, voters_before: voters, dropped, learners }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ShoalNode;
    use openraft::impls::leader_id_std::LeaderId;
    use openraft::vote::RaftLeaderIdExt;

    fn id(n: u64) -> RaftNodeId {
        RaftNodeId::from(n)
    }

    fn membership(voters: &[u64], learners: &[u64]) -> Membership {
        let nodes: BTreeMap<RaftNodeId, ShoalNode> = voters
            .iter()
            .chain(learners)
            .map(|n| (id(*n), ShoalNode::new(format!("n{n}"), format!("10.0.0.{n}:7480").parse().expect("addr"))))
            .collect();
        Membership::new(vec![voters.iter().map(|n| id(*n)).collect()], nodes).expect("membership")
    }

    fn last(term: u64, index: u64) -> LogId {
        LogId::new(LeaderId::<u64, RaftNodeId>::new_committed(term, id(2)), index)
    }

    #[test]
    fn the_survivor_becomes_the_sole_voter_and_the_lost_voters_are_revoked() {
        let (entries, recovery) = plan(id(1), last(4, 17), &membership(&[1, 2, 3], &[7])).expect("plan");
        assert_eq!(recovery, Recovery { index: 18, voters_before: [id(1), id(2), id(3)].into(), dropped: vec![id(2), id(3)], learners: vec![id(7)] });
        assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![18, 19, 20], "right after the last entry, in order");
        assert!(entries.iter().all(|e| e.log_id.leader_id == last(4, 17).leader_id), "under the last entry's leader: never ahead of the log");
        let EntryPayload::Membership(m) = &entries[0].payload else { panic!("first a membership: {:?}", entries[0]) };
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![id(1)]);
        assert_eq!(m.learner_ids().collect::<Vec<_>>(), vec![id(7)], "learners stay");
        assert_eq!(m.get_node(&id(1)).map(|n| n.name.as_str()), Some("n1"), "the survivor keeps its address");
        let revoked: Vec<_> = entries[1..]
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(Command::Revoke { node }) => *node,
                other => panic!("then revocations: {other:?}"),
            })
            .collect();
        assert_eq!(revoked, vec![id(2).node_id(), id(3).node_id()]);
    }

    #[test]
    fn a_learner_or_a_lone_voter_is_not_recovered() {
        assert!(matches!(plan(id(7), last(1, 3), &membership(&[1, 2, 3], &[7])), Err(RecoverError::NotAVoter { .. })));
        assert!(matches!(plan(id(9), last(1, 3), &membership(&[1, 2, 3], &[])), Err(RecoverError::NotAVoter { .. })));
        assert!(matches!(plan(id(1), last(1, 3), &membership(&[1], &[7])), Err(RecoverError::AlreadyAlone { .. })));
    }
}
