//! **At most one leader per term** (Raft's Election Safety; shoal uses openraft's standard
//! leader id, so this must hold).
//!
//! Fed from two sources: every *committed* vote a node persists (openraft commits a vote when
//! its candidate won a quorum, on the winner, and on a follower that accepts the leader's
//! entries), which misses no election; and every node's metrics (`state == Leader` in
//! `current_term`), sampled by the driver.

use std::collections::BTreeMap;

use super::Checks;

#[derive(Debug, Default)]
pub(crate) struct OneLeaderPerTerm {
    /// Leader slot of each term seen.
    pub leaders: BTreeMap<u64, usize>,
}

impl OneLeaderPerTerm {
    /// `slot` leads `term` according to `source`. Returns true the first time a term's
    /// leader is seen.
    pub(crate) fn observe(&mut self, checks: &mut Checks, now_ms: u64, term: u64, slot: usize, source: &str) -> bool {
        match self.leaders.get(&term) {
            None => {
                checks.check(true);
                self.leaders.insert(term, slot);
                true
            }
            Some(&first) => {
                if !checks.check(first == slot) {
                    checks.violation(
                        format!("one-leader-per-term {term}"),
                        now_ms,
                        format!("at most one leader per term: term {term} has leaders n{first} and n{slot} (seen by {source})"),
                    );
                }
                false
            }
        }
    }
}
