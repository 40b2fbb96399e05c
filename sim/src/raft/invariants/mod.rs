//! The Raft mode's checkers, one file per property. Each is fed by the simulation as things
//! happen (votes saved, entries applied, writes acknowledged) or at the end of the heal phase,
//! and records violations in [`Checks`].

pub(crate) mod acked_writes_kept;
pub(crate) mod committed_never_changes;
pub(crate) mod heal_convergence;
pub(crate) mod one_leader_per_term;
pub(crate) mod state_is_prefix;

use std::collections::BTreeSet;

/// Violations (first of each key, in the order found) and the number of checks made.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    pub checks: u64,
    keys: BTreeSet<String>,
    pub violations: Vec<String>,
}

/// Most violations listed in a report.
const MAX_LISTED: usize = 100;

impl Checks {
    /// Counts one check; returns `ok` so callers can chain.
    pub(crate) fn check(&mut self, ok: bool) -> bool {
        self.checks += 1;
        ok
    }

    /// Records a broken invariant once per `key`.
    pub(crate) fn violation(&mut self, key: String, now_ms: u64, what: String) {
        if self.keys.insert(key) && self.violations.len() < MAX_LISTED {
            self.violations.push(format!("t={now_ms}ms {what}"));
        }
    }

    pub(crate) fn distinct(&self) -> u64 {
        self.keys.len() as u64
    }
}
