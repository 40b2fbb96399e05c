//! Keeping a quorum as machines come and go, as a pure rule on the leader.
//!
//! The target voter count is 1, 3 or 5. Every other node is a learner. When a voter has been
//! down longer than the grace period and a healthy learner exists, the learner replaces it
//! (one new voter configuration containing the learner and not the dead voter; openraft's
//! joint consensus makes the switch safe). When the cluster grows, learners are promoted
//! until the target is reached, always to an odd size. Voters are never removed without a
//! replacement (nor when the target is lowered), and no change is proposed while the current
//! voters lack a healthy majority
//! (it could not commit, and guessing would be unsafe).

use shoal_wire::NodeId;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerHealth {
    Healthy,
    /// Down (or left) since this time.
    Down { since_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub health: PeerHealth,
    /// For learners: replication has caught up closely enough to vote.
    pub caught_up: bool,
}

#[derive(Debug, Clone)]
pub struct AutopilotInput<'a> {
    pub voters: &'a [Peer],
    pub learners: &'a [Peer],
    /// 1, 3 or 5.
    pub target_voters: usize,
    pub now_ms: u64,
    pub dead_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutopilotDecision {
    Keep,
    /// Propose this voter set.
    ChangeVoters { voters: BTreeSet<NodeId>, reason: String },
    /// The voters lack a healthy majority: nothing can be committed; an operator is needed.
    QuorumLost { healthy: usize, voters: usize },
}

fn is_dead(p: &Peer, now_ms: u64, dead_after_ms: u64) -> bool {
    matches!(p.health, PeerHealth::Down { since_ms } if now_ms.saturating_sub(since_ms) >= dead_after_ms)
}

pub fn decide(input: &AutopilotInput<'_>) -> AutopilotDecision {
    let target = match input.target_voters {
        0 | 1 => 1,
        2 | 3 => 3,
        _ => 5,
    };
    let healthy_voters: Vec<&Peer> = input.voters.iter().filter(|p| p.health == PeerHealth::Healthy).collect();
    if healthy_voters.len() * 2 <= input.voters.len() {
        return AutopilotDecision::QuorumLost { healthy: healthy_voters.len(), voters: input.voters.len() };
    }
    let dead: Vec<&Peer> = input.voters.iter().filter(|p| is_dead(p, input.now_ms, input.dead_after_ms)).collect();
    let mut spare: Vec<&Peer> = input.learners.iter().filter(|p| p.health == PeerHealth::Healthy && p.caught_up).collect();
    spare.sort_by_key(|p| p.id);

    let mut voters: BTreeSet<NodeId> = input.voters.iter().map(|p| p.id).collect();
    let mut reasons = Vec::new();
    // Replace dead voters one for one.
    let mut spare_iter = spare.into_iter();
    for d in &dead {
        match spare_iter.next() {
            Some(l) => {
                voters.remove(&d.id);
                voters.insert(l.id);
                reasons.push(format!("replace dead voter {} with {}", d.id.short(), l.id.short()));
            }
            None => break,
        }
    }
    // Grow towards the target in steps that keep the size odd; from an even size (a removed
    // voter, or replacements that ran out) one learner first makes it odd.
    let remaining: Vec<&Peer> = spare_iter.collect();
    let mut idx = 0;
    if voters.len().is_multiple_of(2) && voters.len() < target && !remaining.is_empty() {
        voters.insert(remaining[0].id);
        reasons.push(format!("promote {} (to an odd voter count)", remaining[0].id.short()));
        idx = 1;
    }
    while voters.len() < target && remaining.len() >= idx + 2 {
        voters.insert(remaining[idx].id);
        voters.insert(remaining[idx + 1].id);
        reasons.push(format!("promote {} and {}", remaining[idx].id.short(), remaining[idx + 1].id.short()));
        idx += 2;
    }
    let current: BTreeSet<NodeId> = input.voters.iter().map(|p| p.id).collect();
    if voters == current {
        AutopilotDecision::Keep
    } else {
        AutopilotDecision::ChangeVoters { voters, reason: reasons.join("; ") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }
    fn up(n: u8) -> Peer {
        Peer { id: id(n), health: PeerHealth::Healthy, caught_up: true }
    }
    fn down(n: u8, since: u64) -> Peer {
        Peer { id: id(n), health: PeerHealth::Down { since_ms: since }, caught_up: true }
    }
    fn run(voters: &[Peer], learners: &[Peer], target: usize, now: u64) -> AutopilotDecision {
        decide(&AutopilotInput { voters, learners, target_voters: target, now_ms: now, dead_after_ms: 10_000 })
    }
    fn set(ns: &[u8]) -> BTreeSet<NodeId> {
        ns.iter().map(|&n| id(n)).collect()
    }

    #[test]
    fn an_even_voter_count_grows_to_odd_not_by_two() {
        // Two voters left after a removal, two learners: three voters, not four.
        assert_eq!(
            run(&[up(1), up(2)], &[up(3), up(4)], 3, 0),
            AutopilotDecision::ChangeVoters { voters: set(&[1, 2, 3]), reason: format!("promote {} (to an odd voter count)", id(3).short()) }
        );
        // Two voters, four learners, target five: 2 -> 3 -> 5.
        match run(&[up(1), up(2)], &[up(3), up(4), up(5), up(6)], 5, 0) {
            AutopilotDecision::ChangeVoters { voters, .. } => assert_eq!(voters, set(&[1, 2, 3, 4, 5])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dead_voter_is_replaced_by_a_healthy_learner_after_grace() {
        let voters = [up(1), up(2), down(3, 0)];
        let learners = [up(4), up(5)];
        assert_eq!(run(&voters, &learners, 3, 5_000), AutopilotDecision::Keep, "within grace");
        match run(&voters, &learners, 3, 10_000) {
            AutopilotDecision::ChangeVoters { voters, .. } => assert_eq!(voters, set(&[1, 2, 4])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_replacement_means_no_shrink() {
        let voters = [up(1), up(2), down(3, 0)];
        assert_eq!(run(&voters, &[], 3, 60_000), AutopilotDecision::Keep);
        let lagging = [Peer { caught_up: false, ..up(4) }];
        assert_eq!(run(&voters, &lagging, 3, 60_000), AutopilotDecision::Keep);
    }

    #[test]
    fn grows_to_target_in_odd_steps() {
        let voters = [up(1)];
        assert_eq!(run(&voters, &[up(2)], 3, 0), AutopilotDecision::Keep, "2 voters would be worse than 1");
        match run(&voters, &[up(2), up(3), up(4)], 3, 0) {
            AutopilotDecision::ChangeVoters { voters, .. } => assert_eq!(voters, set(&[1, 2, 3])),
            other => panic!("{other:?}"),
        }
        match run(&[up(1), up(2), up(3)], &[up(4), up(5), up(6)], 5, 0) {
            AutopilotDecision::ChangeVoters { voters, .. } => assert_eq!(voters, set(&[1, 2, 3, 4, 5])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lost_quorum_is_reported_not_guessed() {
        let voters = [up(1), down(2, 0), down(3, 0)];
        assert_eq!(run(&voters, &[up(4), up(5)], 3, 60_000), AutopilotDecision::QuorumLost { healthy: 1, voters: 3 });
    }

    #[test]
    fn every_proposed_change_keeps_a_majority_of_the_old_voters_healthy() {
        // Exhaustive over small clusters: whatever is proposed, the healthy old voters are a
        // majority of the old set (so the joint configuration can commit).
        for mask in 0u8..32 {
            let voters: Vec<Peer> = (0..5).map(|i| if mask & (1 << i) != 0 { down(i + 1, 0) } else { up(i + 1) }).collect();
            let learners = [up(10), up(11), up(12)];
            if let AutopilotDecision::ChangeVoters { voters: new, .. } = run(&voters, &learners, 5, 60_000) {
                let healthy_old = voters.iter().filter(|p| p.health == PeerHealth::Healthy).count();
                assert!(healthy_old * 2 > voters.len(), "mask {mask:05b}");
                assert_eq!(new.len() % 2, 1, "even voter set {new:?}");
            }
        }
    }
}
