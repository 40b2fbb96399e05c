//! What a run found: counters, violations, and the summary with the replay command.

use crate::options::{format_duration, SimOptions};
use crate::plan::SimPlan;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Datagram counters of a run (honest and intruder traffic together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// Datagrams the cores asked to send.
    pub sent: u64,
    pub sent_bytes: u64,
    /// Copies handed to a running core.
    pub delivered: u64,
    pub dropped_loss: u64,
    pub dropped_cut: u64,
    /// Addressed to nobody running: crashed, left, not booted yet, or died while in flight.
    pub dropped_no_host: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// mDNS announcements that reached a browser.
    pub lan_hints: u64,
}

/// The outcome of [`crate::run`].
#[derive(Debug, Clone)]
pub struct SimReport {
    pub options: SimOptions,
    pub plan: SimPlan,
    /// Faults injected, by name: `crash`, `restart`, `partition`, `leave`, `rejoin`,
    /// `late-join`, `delay-spike`, `intruder-replay`, ... (loss and duplication are in
    /// [`Self::messages`]).
    pub faults: BTreeMap<String, u64>,
    pub messages: MessageCounts,
    /// Individual invariant checks made (one per pair of nodes looked at, or per event).
    pub checks: u64,
    pub simulated_ms: u64,
    /// Wall-clock time of the run; the only value that differs between two runs of a seed.
    pub wall_ms: u64,
    /// Broken invariants, first occurrence of each, at most 100 listed.
    pub violations: Vec<String>,
    /// Distinct violations, listed or not.
    pub violations_distinct: u64,
    /// Datagrams replayed by the intruder that an honest core accepted (passed the seal
    /// and the replay window) — not an invariant, but worth seeing.
    pub intruder_replays_accepted: u64,
    /// Bytes the honest nodes sent over the second half of the run, and the number of
    /// honest nodes running at the end: for gossip bytes per node per second.
    pub steady_bytes: u64,
    pub steady_window_ms: u64,
    pub steady_nodes: usize,
    /// Lines written to the trace file, and why it is incomplete if it is.
    pub trace_lines: u64,
    pub trace_error: Option<String>,
}

impl SimReport {
    pub fn passed(&self) -> bool {
        self.violations_distinct == 0
    }

    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        self.options.replay_command(self.plan.nodes)
    }

    /// Simulated seconds per wall second.
    pub fn speed(&self) -> f64 {
        self.simulated_ms as f64 / (self.wall_ms.max(1)) as f64
    }

    /// Gossip bytes sent per honest node per simulated second over the second half of the run.
    pub fn gossip_bytes_per_node_s(&self) -> f64 {
        if self.steady_window_ms == 0 || self.steady_nodes == 0 {
            return 0.0;
        }
        self.steady_bytes as f64 * 1_000.0 / self.steady_window_ms as f64 / self.steady_nodes as f64
    }

    /// A few lines for a terminal: the counters, then on failure the violations and the
    /// exact command that replays the run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let m = &self.messages;
        let faults: Vec<String> = self.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            s,
            "seed {}: {} simulated in {} ms wall ({:.0}x), {} checks, {} violation(s)",
            self.options.seed,
            format_duration(self.simulated_ms),
            self.wall_ms,
            self.speed(),
            self.checks,
            self.violations_distinct
        );
        let _ = writeln!(
            s,
            "  datagrams: {} sent ({} bytes), {} delivered, lost {}, cut {}, no host {}, duplicated {}, reordered {}; mDNS hints {}",
            m.sent, m.sent_bytes, m.delivered, m.dropped_loss, m.dropped_cut, m.dropped_no_host, m.duplicated, m.reordered, m.lan_hints
        );
        let _ = writeln!(s, "  faults: {}", if faults.is_empty() { "none".to_string() } else { faults.join(", ") });
        if self.intruder_replays_accepted > 0 {
            let _ = writeln!(s, "  note: {} replayed datagram(s) from the intruder were accepted by honest nodes", self.intruder_replays_accepted);
        }
        if let Some(e) = &self.trace_error {
            let _ = writeln!(s, "  trace incomplete: {e}");
        }
        if !self.passed() {
            let _ = writeln!(s, "FAILED: {} invariant violation(s):", self.violations_distinct);
            for v in &self.violations {
                let _ = writeln!(s, "  {v}");
            }
            if self.violations_distinct as usize > self.violations.len() {
                let _ = writeln!(s, "  ... and {} more", self.violations_distinct as usize - self.violations.len());
            }
            let _ = writeln!(s, "replay with: {}", self.replay_command());
            let _ = writeln!(s, "(add --trace FILE for one line per event)");
        }
        s
    }
}
