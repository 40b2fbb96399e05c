//! Who initialises Raft, and when (`--bootstrap-expect N`), as a pure rule.
//!
//! A node that is not yet in a Raft cluster looks at the alive members gossip shows it:
//! - if any of them already belongs to a cluster, it joins that cluster (as a learner);
//! - otherwise, once at least N candidates are visible AND the visible set has not changed
//!   for `settle_ms` (and at least `settle_ms` have passed since start), the N lowest node ids
//!   are the voters and the lowest of them initialises Raft; everyone else waits for it.
//!
//! The settle period is what keeps two nodes started at the same moment from forming two
//! clusters when N = 1: each first waits to see who else is there, then only the lowest id
//! initialises, and the other joins it. A partition that lasts the whole settle period
//! during a first start can still split a bootstrap; merging two clusters is not attempted.

use shoal_wire::NodeId;

/// One alive member as seen through gossip (ourselves included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub id: NodeId,
    /// The member says (in its gossiped facts) that it belongs to a Raft cluster.
    pub in_cluster: bool,
}

#[derive(Debug, Clone)]
pub struct BootstrapInput<'a> {
    pub self_id: NodeId,
    pub expect: usize,
    pub self_in_cluster: bool,
    /// Alive members, ourselves included.
    pub candidates: &'a [Candidate],
    pub now_ms: u64,
    pub started_ms: u64,
    /// When the set of candidate ids last changed.
    pub last_change_ms: u64,
    pub settle_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapDecision {
    /// Already in a cluster: nothing to do.
    Member,
    /// A cluster exists: ask one of these members (in this order) to add us.
    JoinExisting { via: Vec<NodeId> },
    /// We are the lowest of the first N: initialise Raft with these voters.
    Initialize { voters: Vec<NodeId> },
    /// Someone else initialises; wait for it.
    AwaitInitializer { initializer: NodeId },
    /// Not enough members yet, or the view is still settling.
    Wait { reason: String },
}

pub fn decide(input: &BootstrapInput<'_>) -> BootstrapDecision {
    if input.self_in_cluster {
        return BootstrapDecision::Member;
    }
    let mut members: Vec<NodeId> = input.candidates.iter().filter(|c| c.in_cluster && c.id != input.self_id).map(|c| c.id).collect();
    if !members.is_empty() {
        members.sort();
        return BootstrapDecision::JoinExisting { via: members };
    }
    let mut ids: Vec<NodeId> = input.candidates.iter().map(|c| c.id).collect();
    if !ids.contains(&input.self_id) {
        ids.push(input.self_id);
    }
    ids.sort();
    ids.dedup();
    let expect = input.expect.max(1);
    if ids.len() < expect {
        return BootstrapDecision::Wait { reason: format!("waiting for members: {}/{expect} visible", ids.len()) };
    }
    let settled_since = input.last_change_ms.max(input.started_ms);
    if input.now_ms.saturating_sub(settled_since) < input.settle_ms {
        return BootstrapDecision::Wait { reason: format!("{} members visible; waiting for the view to settle", ids.len()) };
    }
    ids.truncate(expect);
    let initializer = ids[0];
    if initializer == input.self_id {
        BootstrapDecision::Initialize { voters: ids }
    } else {
        BootstrapDecision::AwaitInitializer { initializer }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn cands(ns: &[u8]) -> Vec<Candidate> {
        ns.iter().map(|&n| Candidate { id: id(n), in_cluster: false }).collect()
    }

    fn input<'a>(me: u8, expect: usize, c: &'a [Candidate], now: u64, change: u64) -> BootstrapInput<'a> {
        BootstrapInput { self_id: id(me), expect, self_in_cluster: false, candidates: c, now_ms: now, started_ms: 0, last_change_ms: change, settle_ms: 3_000 }
    }

    #[test]
    fn waits_for_enough_members_then_for_the_view_to_settle() {
        let c = cands(&[1, 2]);
        assert!(matches!(decide(&input(1, 3, &c, 10_000, 0)), BootstrapDecision::Wait { reason } if reason.contains("2/3")));
        let c = cands(&[1, 2, 3]);
        assert!(matches!(decide(&input(1, 3, &c, 4_000, 2_000)), BootstrapDecision::Wait { .. }));
        assert_eq!(decide(&input(1, 3, &c, 5_000, 2_000)), BootstrapDecision::Initialize { voters: vec![id(1), id(2), id(3)] });
        assert_eq!(decide(&input(2, 3, &c, 5_000, 2_000)), BootstrapDecision::AwaitInitializer { initializer: id(1) });
    }

    #[test]
    fn two_nodes_started_together_with_expect_one_form_one_cluster() {
        // Both start at 0 and see each other before the settle period ends.
        let c = cands(&[7, 4]);
        let a = decide(&input(7, 1, &c, 3_500, 300));
        let b = decide(&input(4, 1, &c, 3_500, 300));
        assert_eq!(a, BootstrapDecision::AwaitInitializer { initializer: id(4) });
        assert_eq!(b, BootstrapDecision::Initialize { voters: vec![id(4)] });
        // Before settling, neither initialises even though 1 >= expect.
        let alone = cands(&[7]);
        assert!(matches!(decide(&input(7, 1, &alone, 1_000, 0)), BootstrapDecision::Wait { .. }));
    }

    #[test]
    fn more_candidates_than_expected_take_the_lowest_ids() {
        let c = cands(&[9, 3, 5, 1, 7]);
        assert_eq!(decide(&input(1, 3, &c, 10_000, 0)), BootstrapDecision::Initialize { voters: vec![id(1), id(3), id(5)] });
        assert_eq!(decide(&input(9, 3, &c, 10_000, 0)), BootstrapDecision::AwaitInitializer { initializer: id(1) });
    }

    #[test]
    fn an_existing_cluster_is_joined_not_rebootstrapped() {
        let mut c = cands(&[1, 2, 3]);
        c[1].in_cluster = true;
        assert_eq!(decide(&input(1, 3, &c, 10_000, 0)), BootstrapDecision::JoinExisting { via: vec![id(2)] });
        let mut me = input(1, 3, &c, 10_000, 0);
        me.self_in_cluster = true;
        assert_eq!(decide(&me), BootstrapDecision::Member);
    }

    #[test]
    fn every_node_agrees_on_the_initializer_given_the_same_view() {
        let c = cands(&[10, 20, 30, 40]);
        let inits: Vec<_> = [10u8, 20, 30, 40]
            .iter()
            .filter(|&&me| matches!(decide(&input(me, 3, &c, 10_000, 0)), BootstrapDecision::Initialize { .. }))
            .collect();
        assert_eq!(inits, vec![&10]);
    }
}
