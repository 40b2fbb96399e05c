//! What a Raft run found: counters, violations, the summary and the replay command.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::world::{RpcCounts, Shared, WriteCounts};
use crate::options::{format_duration, SimOptions};

/// The outcome of [`super::run`].
#[derive(Debug, Clone)]
pub struct RaftReport {
    pub options: SimOptions,
    pub nodes: usize,
    /// Faults injected, by name (`crash`, `leader-kill`, `power-outage`, `partition-leader`,
    /// `loss-storm`, `slow-disk`, ...).
    pub faults: BTreeMap<String, u64>,
    pub rpcs: RpcCounts,
    pub writes: WriteCounts,
    /// Terms in which a leader was elected, the highest term, and how often the leader changed.
    pub elections: u64,
    pub max_term: u64,
    pub leader_changes: u64,
    /// Entries committed (distinct indexes applied anywhere).
    pub committed_entries: u64,
    pub checks: u64,
    pub simulated_ms: u64,
    /// Wall-clock time of the run; the only value that differs between two runs of a seed.
    pub wall_ms: u64,
    pub violations: Vec<String>,
    pub violations_distinct: u64,
    pub trace_lines: u64,
    pub trace_error: Option<String>,
    /// Whole mode's counters.
    pub whole: Option<super::WholeCounts>,
}

pub(crate) fn build(opts: &SimOptions, nodes: usize, world: &Shared) -> RaftReport {
    let simulated_ms = world.now_ms();
    let mut w = world.lock();
    let trace = std::mem::replace(&mut w.trace, crate::trace::Trace::off());
    let (trace_lines, trace_error) = trace.finish();
    RaftReport {
        options: SimOptions { nodes: Some(nodes), ..opts.clone() },
        nodes,
        faults: w.faults.clone(),
        rpcs: w.rpcs.clone(),
        writes: w.writes.clone(),
        elections: w.elections,
        max_term: w.leaders.leaders.keys().next_back().copied().unwrap_or(0),
        leader_changes: w.leader_changes,
        committed_entries: w.committed.entries.len() as u64,
        checks: w.checks.checks,
        simulated_ms,
        wall_ms: 0,
        violations: w.checks.violations.clone(),
        violations_distinct: w.checks.distinct(),
        trace_lines,
        trace_error,
        whole: w.whole.as_ref().map(|wh| wh.counts.clone()),
    }
}

impl RaftReport {
    pub fn passed(&self) -> bool {
        self.violations_distinct == 0
    }

    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        self.options.replay_command(self.nodes)
    }

    /// Simulated seconds per wall second.
    pub fn speed(&self) -> f64 {
        self.simulated_ms as f64 / (self.wall_ms.max(1)) as f64
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let faults: Vec<String> = self.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let (r, w) = (&self.rpcs, &self.writes);
        let _ = writeln!(
            s,
            "{} seed {} ({} nodes): {} simulated in {} ms wall ({:.0}x), {} checks, {} violation(s)",
            if self.whole.is_some() { "whole" } else { "raft" },
            self.options.seed,
            self.nodes,
            format_duration(self.simulated_ms),
            self.wall_ms,
            self.speed(),
            self.checks,
            self.violations_distinct
        );
        let _ = writeln!(
            s,
            "  raft: {} elections, highest term {}, {} leader changes, {} entries committed",
            self.elections, self.max_term, self.leader_changes, self.committed_entries
        );
        let _ = writeln!(
            s,
            "  writes: {} proposed, {} acked, {} refused, {} failed, {} unknown",
            w.proposed, w.acked, w.refused, w.failed, w.unknown
        );
        let _ = writeln!(s, "  rpc legs: {} sent, {} delivered, lost {}, cut {}, to a down node {}", r.legs, r.delivered, r.lost, r.cut, r.down);
        if let Some(c) = &self.whole {
            let _ = writeln!(
                s,
                "  whole: {} joins ({} refused), intruder {} attempts ({} refused), insider {} writes ({} refused), {} learners added, {} voter changes, {} removals, {} revoked",
                c.joins, c.joins_refused, c.intruder_attempts, c.intruder_refused, c.insider_attempts, c.insider_refused, c.learners_added, c.voter_changes, c.removals_from_raft, c.nodes_revoked
            );
            let _ = writeln!(
                s,
                "  services: {} created, {} scheduler commits ({} placed, {} shut down), {} reports, {} container crashes, {} power-cut exits",
                c.services_created, c.scheduler_commits, c.placements, c.shutdowns, c.reports, c.container_crashes, c.power_cut_exits
            );
            let per_node_s = c.gossip_bytes as f64 / self.nodes.max(1) as f64 / (self.simulated_ms.max(1) as f64 / 1000.0);
            let _ = writeln!(
                s,
                "  gossip: {} sent ({:.0} B/node/s on average), {} delivered, {} dropped",
                c.gossip_sent, per_node_s, c.gossip_delivered, c.gossip_dropped
            );
        }
        let _ = writeln!(s, "  faults: {}", if faults.is_empty() { "none".to_string() } else { faults.join(", ") });
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
