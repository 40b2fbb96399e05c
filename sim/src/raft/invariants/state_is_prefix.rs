//! **Every node's state is a prefix of the leader's.** A node applies entries in order with
//! no gap: index `i + 1` after `i`, starting at 0 on a fresh boot or right after the snapshot
//! it installed. Together with `committed_never_changes` (every applied index equals the
//! committed entry there), each node's applied log is a prefix of the one committed log, hence
//! of the leader's.

use super::Checks;

#[derive(Debug, Default)]
pub(crate) struct StateIsPrefix {
    /// Per node: the index the next apply must have (this boot).
    next: Vec<u64>,
}

impl StateIsPrefix {
    pub(crate) fn new(nodes: usize) -> Self {
        Self { next: vec![0; nodes] }
    }

    /// A boot starts from nothing: openraft rebuilds the state from the snapshot and the log.
    pub(crate) fn booted(&mut self, slot: usize) {
        self.next[slot] = 0;
    }

    pub(crate) fn applied(&mut self, checks: &mut Checks, now_ms: u64, slot: usize, index: u64) {
        let want = self.next[slot];
        if !checks.check(index == want) {
            checks.violation(
                format!("prefix n{slot} {want}"),
                now_ms,
                format!("a node's state is not a prefix of the log: n{slot} applied index {index}, expected {want}"),
            );
        }
        self.next[slot] = index + 1;
    }

    pub(crate) fn installed_snapshot(&mut self, checks: &mut Checks, now_ms: u64, slot: usize, last: Option<u64>) {
        let next = last.map_or(0, |i| i + 1);
        if !checks.check(next >= self.next[slot]) {
            checks.violation(
                format!("snapshot-back n{slot}"),
                now_ms,
                format!("n{slot} installed a snapshot ending at {last:?}, behind what it had applied (next {})", self.next[slot]),
            );
        }
        self.next[slot] = next;
    }
}
