//! When a node without a certificate creates the cluster, waits, or joins: the pure rule
//! `shoal_cluster::bootstrap::decide`, fed with gossip's alive members and how long their
//! set has stayed the same.

use shoal_cluster::bootstrap::{self, BootstrapDecision, BootstrapInput, Candidate};
use shoal_discovery::{MemberState, MemberView};
use shoal_wire::NodeId;
use std::collections::BTreeSet;

/// A node's bootstrap bookkeeping: when it started and when the set of alive members last
/// changed.
pub struct BootstrapCore {
    me: NodeId,
    expect: usize,
    settle_ms: u64,
    started_ms: u64,
    last_set: BTreeSet<NodeId>,
    last_change_ms: u64,
    joining_only: bool,
}

impl BootstrapCore {
    /// `expect`: `--bootstrap-expect`; `settle_ms`: how long the set of members must stay
    /// unchanged before the initializer acts.
    pub fn new(me: NodeId, expect: usize, settle_ms: u64, now_ms: u64) -> Self {
        Self { me, expect, settle_ms, started_ms: now_ms, last_set: BTreeSet::new(), last_change_ms: now_ms, joining_only: false }
    }

    /// A node whose token pins an existing cluster's CA (`shoal2-`) only ever joins: it
    /// waits where it would have created a cluster.
    pub fn joining_only(mut self, yes: bool) -> Self {
        self.joining_only = yes;
        self
    }

    /// The decision now, given gossip's members.
    pub fn step(&mut self, members: &[MemberView], now_ms: u64) -> BootstrapDecision {
        let alive: Vec<&MemberView> = members.iter().filter(|m| m.state == MemberState::Alive).collect();
        let set: BTreeSet<NodeId> = alive.iter().map(|m| m.id).collect();
        if set != self.last_set {
            self.last_set = set;
            self.last_change_ms = now_ms;
        }
        let candidates: Vec<Candidate> = alive.iter().map(|m| Candidate { id: m.id, in_cluster: m.in_cluster && !m.is_self }).collect();
        let decision = bootstrap::decide(&BootstrapInput {
            self_id: self.me,
            expect: self.expect,
            self_in_cluster: false,
            candidates: &candidates,
            now_ms,
            started_ms: self.started_ms,
            last_change_ms: self.last_change_ms,
            settle_ms: self.settle_ms,
        });
        match decision {
            BootstrapDecision::Initialize { .. } | BootstrapDecision::AwaitInitializer { .. } if self.joining_only => BootstrapDecision::Wait {
                reason: "the token pins an existing cluster's CA: waiting to see one of its members".into(),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    fn alone(n: u8) -> MemberView {
        MemberView { in_cluster: false, ..member(n) }
    }

    #[test]
    fn the_lowest_id_initializes_once_the_expected_members_stayed_the_same_long_enough() {
        let mut core = BootstrapCore::new(id(1), 2, 3_000, T0_MS);
        let both = vec![alone(1), alone(2)];
        assert!(matches!(core.step(&[alone(1)], T0_MS), BootstrapDecision::Wait { .. }));
        assert!(matches!(core.step(&both, T0_MS + 1_000), BootstrapDecision::Wait { .. }));
        assert!(matches!(core.step(&both, T0_MS + 4_100), BootstrapDecision::Initialize { .. }));
        let mut other = BootstrapCore::new(id(2), 2, 3_000, T0_MS);
        let _ = other.step(&both, T0_MS + 1_000);
        assert!(matches!(other.step(&both, T0_MS + 4_100), BootstrapDecision::AwaitInitializer { .. }));
    }

    #[test]
    fn a_node_with_a_pinned_token_never_founds_and_joins_what_it_sees() {
        let mut core = BootstrapCore::new(id(1), 2, 3_000, T0_MS).joining_only(true);
        let both = vec![alone(1), alone(2)];
        let _ = core.step(&both, T0_MS);
        assert!(matches!(core.step(&both, T0_MS + 10_000), BootstrapDecision::Wait { .. }), "it founded a cluster");
        let formed = vec![MemberView { is_self: false, ..member(2) }, MemberView { is_self: true, ..alone(1) }];
        assert_eq!(core.step(&formed, T0_MS + 11_000), BootstrapDecision::JoinExisting { via: vec![id(2)] });
    }

    #[test]
    fn a_node_that_sees_a_formed_cluster_joins_it() {
        let mut core = BootstrapCore::new(id(2), 3, 3_000, T0_MS);
        let formed = vec![MemberView { is_self: false, ..member(1) }, MemberView { is_self: true, ..alone(2) }];
        assert_eq!(core.step(&formed, T0_MS), BootstrapDecision::JoinExisting { via: vec![id(1)] });
    }
}
