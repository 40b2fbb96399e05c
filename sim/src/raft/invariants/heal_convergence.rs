//! **After heal: one leader, everyone caught up.** At the end of the heal phase
//! (`RAFT_CONVERGENCE_BOUND_MS` after the last fault stopped, and after the client's last
//! write), some node leads, every running node names it as leader in the same term, and every
//! running node has applied the same last index.

use super::Checks;

/// What one running node reports at the end.
#[derive(Debug, Clone)]
pub(crate) struct FinalView {
    pub slot: usize,
    pub is_leader: bool,
    pub term: u64,
    pub leader: Option<usize>,
    pub last_applied: Option<u64>,
}

pub(crate) fn check(checks: &mut Checks, now_ms: u64, views: &[FinalView]) {
    let leaders: Vec<&FinalView> = views.iter().filter(|v| v.is_leader).collect();
    if !checks.check(leaders.len() == 1) {
        let who: Vec<String> = leaders.iter().map(|v| format!("n{} (term {})", v.slot, v.term)).collect();
        checks.violation(
            "heal-leader".into(),
            now_ms,
            format!("after heal there must be exactly one leader; there are {}: {}", leaders.len(), who.join(", ")),
        );
        return;
    }
    let leader = leaders[0];
    for v in views {
        if !checks.check(v.leader == Some(leader.slot) && v.term == leader.term) {
            checks.violation(
                format!("heal-follow n{}", v.slot),
                now_ms,
                format!("after heal n{} follows {:?} in term {}, not the leader n{} of term {}", v.slot, v.leader.map(|l| format!("n{l}")), v.term, leader.slot, leader.term),
            );
        }
        if !checks.check(v.last_applied == leader.last_applied) {
            checks.violation(
                format!("heal-applied n{}", v.slot),
                now_ms,
                format!("after heal n{} applied up to {:?}, the leader n{} up to {:?}", v.slot, v.last_applied, leader.slot, leader.last_applied),
            );
        }
    }
}
