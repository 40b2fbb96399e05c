//! Everything a run derives from its seed, drawn in one fixed order so that turning a fault
//! kind off or giving `--nodes` changes nothing else, and printed before the run starts.

use crate::options::{format_duration, FaultKind, FaultSet, SimOptions};
use crate::rng::{stream, Stream};
use rand::RngExt;
use std::fmt;

/// Length of the heal phase at the end of every run: no new faults, links healed, crashed
/// nodes restarted.
pub const HEAL_MS: u64 = 90_000;
/// Bound on convergence after the heal starts: from then on every alive node must see every
/// other alive node `alive` at its current generation.
pub const CONVERGENCE_BOUND_MS: u64 = 45_000;
/// How often the continuous checkers run.
pub const CHECK_INTERVAL_MS: u64 = 1_000;
/// How long after a graceful leave its witnesses must show it `left`: longer than the slowest
/// delivery the network model can produce (see [`NetPlan::max_delivery_ms`]).
pub const LEAVE_SETTLE_MS: u64 = 10_000;

/// The network, as derived. Probabilities are in parts per million.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// Every link's one-way delay lies in `base_delay_ms ..= base_delay_ms + link_spread_ms`.
    pub base_delay_ms: u64,
    pub link_spread_ms: u64,
    /// Extra random delay per datagram, `0 ..= jitter_ms`; makes datagrams overtake.
    pub jitter_ms: u64,
    pub loss_ppm: u32,
    pub dup_ppm: u32,
    /// Datagrams held back by up to `reorder_hold_ms` more.
    pub reorder_ppm: u32,
    pub reorder_hold_ms: u64,
    /// Latency spikes on one node's links: how often, how long, how much.
    pub spike_every_ms: u64,
    pub spike_len_ms: u64,
    pub spike_extra_ms: u64,
    /// Delay of a LAN (mDNS) announcement reaching a browser, at most.
    pub lan_delay_ms: u64,
    /// mDNS repeats announcements; every node re-announces this often.
    pub lan_refresh_ms: u64,
}

impl NetPlan {
    /// The slowest a datagram can be delivered under this plan.
    pub fn max_delivery_ms(&self) -> u64 {
        self.base_delay_ms + self.link_spread_ms + self.jitter_ms + self.reorder_hold_ms + self.spike_extra_ms
    }
}

/// Everything one run does, derived from [`SimOptions`] and its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPlan {
    pub seed: u64,
    pub nodes: usize,
    pub nodes_from_seed: bool,
    pub duration_ms: u64,
    /// Faults are injected in `0 .. fault_phase_ms`; the rest is the heal phase.
    pub fault_phase_ms: u64,
    pub faults: FaultSet,
    pub planted_bug: bool,
    pub net: NetPlan,
    /// Mean time between crashes, and the range of time until the crashed node boots again.
    pub crash_every_ms: u64,
    pub restart_after_ms: (u64, u64),
    pub partition_every_ms: u64,
    pub partition_len_ms: (u64, u64),
    pub leave_every_ms: u64,
    /// Range of time until a node that left comes back (if it does; half of them stay away).
    pub rejoin_after_ms: (u64, u64),
    /// How many honest nodes boot late, anywhere in the fault phase.
    pub late_joiners: usize,
    /// When the intruder boots, and how often it replays a sniffed datagram.
    pub intruder_from_ms: u64,
    pub intruder_replay_every_ms: u64,
    /// Whether the intruder copies the honest cluster id into its mDNS announcement.
    pub intruder_spoofs_cluster_id: bool,
    /// Share of honest nodes given a `--join` seed (node 0) on top of mDNS, in ppm.
    pub seeded_ppm: u32,
}

impl SimPlan {
    /// Derives the plan. Every value is drawn whether or not its fault kind is on.
    pub fn derive(opts: &SimOptions) -> Self {
        let mut r = stream(opts.seed, Stream::Plan);
        let f = opts.faults;
        let on = |k: FaultKind| f.contains(k);

        let derived_nodes = r.random_range(3..=7usize);
        let base_delay_ms = r.random_range(1..=3u64);
        let link_spread_ms = r.random_range(0..=2u64);
        let jitter_ms = r.random_range(0..=2u64);
        let loss_ppm = r.random_range(5_000..=80_000u32);
        let dup_ppm = r.random_range(1_000..=20_000u32);
        let slow_spread_ms = r.random_range(10..=150u64);
        let slow_jitter_ms = r.random_range(10..=250u64);
        let reorder_ppm = r.random_range(10_000..=100_000u32);
        let reorder_hold_ms = r.random_range(20..=200u64);
        let spike_every_ms = r.random_range(20_000..=120_000u64);
        let spike_len_ms = r.random_range(2_000..=20_000u64);
        let spike_extra_ms = r.random_range(600..=3_000u64);
        let lan_delay_ms = r.random_range(5..=300u64);
        let lan_refresh_ms = r.random_range(20_000..=60_000u64);
        let crash_every_ms = r.random_range(20_000..=180_000u64);
        let restart_max_ms = r.random_range(2_000..=90_000u64);
        let partition_every_ms = r.random_range(20_000..=150_000u64);
        let partition_max_ms = r.random_range(3_000..=90_000u64);
        let leave_every_ms = r.random_range(40_000..=240_000u64);
        let rejoin_max_ms = r.random_range(10_000..=150_000u64);
        let late_share = r.random_range(1..=3usize);
        let intruder_at_share = r.random_range(0..=500u64);
        let intruder_replay_every_ms = r.random_range(200..=5_000u64);
        let intruder_spoofs_cluster_id = r.random_bool(0.5);
        let seeded_ppm = r.random_range(0..=500_000u32);

        let nodes = opts.nodes.unwrap_or(derived_nodes);
        let fault_phase_ms = opts.duration_ms.saturating_sub(HEAL_MS);
        let net = NetPlan {
            base_delay_ms,
            link_spread_ms: link_spread_ms + if on(FaultKind::Delay) { slow_spread_ms } else { 0 },
            jitter_ms: jitter_ms + if on(FaultKind::Delay) { slow_jitter_ms } else { 0 },
            loss_ppm: if on(FaultKind::Loss) { loss_ppm } else { 0 },
            dup_ppm: if on(FaultKind::Loss) { dup_ppm } else { 0 },
            reorder_ppm: if on(FaultKind::Delay) { reorder_ppm } else { 0 },
            reorder_hold_ms: if on(FaultKind::Delay) { reorder_hold_ms } else { 0 },
            spike_every_ms,
            spike_len_ms,
            spike_extra_ms: if on(FaultKind::Delay) { spike_extra_ms } else { 0 },
            lan_delay_ms,
            lan_refresh_ms,
        };
        Self {
            seed: opts.seed,
            nodes,
            nodes_from_seed: opts.nodes.is_none(),
            duration_ms: opts.duration_ms,
            fault_phase_ms,
            faults: f,
            planted_bug: opts.planted_bug,
            net,
            crash_every_ms,
            restart_after_ms: (1_000, restart_max_ms),
            partition_every_ms,
            partition_len_ms: (1_000, partition_max_ms),
            leave_every_ms,
            rejoin_after_ms: (5_000, rejoin_max_ms),
            late_joiners: if on(FaultKind::LateJoin) { (nodes * late_share / 6).max(1).min(nodes.saturating_sub(1)) } else { 0 },
            intruder_from_ms: fault_phase_ms * intruder_at_share / 1_000,
            intruder_replay_every_ms,
            intruder_spoofs_cluster_id,
            seeded_ppm,
        }
    }

    /// When the heal phase starts.
    pub fn heal_at_ms(&self) -> u64 {
        self.fault_phase_ms
    }
}

fn pct(ppm: u32) -> String {
    format!("{}.{:02}%", ppm / 10_000, ppm % 10_000 / 100)
}

impl fmt::Display for SimPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |k| self.faults.contains(k);
        let d = format_duration;
        writeln!(
            f,
            "seed {}: {} nodes{}, {} simulated ({} of faults, then {} of heal; convergence bound {}), faults: {}{}",
            self.seed,
            self.nodes,
            if self.nodes_from_seed { " (from seed)" } else { "" },
            d(self.duration_ms),
            d(self.fault_phase_ms),
            d(self.duration_ms - self.fault_phase_ms),
            d(CONVERGENCE_BOUND_MS),
            self.faults,
            if self.planted_bug { ", PLANTED BUG ON" } else { "" },
        )?;
        let n = &self.net;
        writeln!(
            f,
            "  network: delay {}..{} ms + jitter 0..{} ms, loss {}, duplication {}, reorder {} (hold <= {} ms), mDNS delay <= {} ms, re-announce every {}",
            n.base_delay_ms,
            n.base_delay_ms + n.link_spread_ms,
            n.jitter_ms,
            pct(n.loss_ppm),
            pct(n.dup_ppm),
            pct(n.reorder_ppm),
            n.reorder_hold_ms,
            n.lan_delay_ms,
            d(n.lan_refresh_ms),
        )?;
        if on(FaultKind::Delay) {
            writeln!(f, "  delay spikes: every ~{} for {} of +{} ms on one node's links", d(n.spike_every_ms), d(n.spike_len_ms), n.spike_extra_ms)?;
        }
        if on(FaultKind::Crash) {
            writeln!(f, "  crash: every ~{}, back after {}..{}", d(self.crash_every_ms), d(self.restart_after_ms.0), d(self.restart_after_ms.1))?;
        }
        if on(FaultKind::Partition) {
            writeln!(f, "  partition: every ~{}, lasting {}..{}", d(self.partition_every_ms), d(self.partition_len_ms.0), d(self.partition_len_ms.1))?;
        }
        if on(FaultKind::Leave) {
            writeln!(f, "  leave: every ~{}, half come back after {}..{}", d(self.leave_every_ms), d(self.rejoin_after_ms.0), d(self.rejoin_after_ms.1))?;
        }
        if on(FaultKind::LateJoin) {
            writeln!(f, "  late join: {} node(s) boot during the fault phase", self.late_joiners)?;
        }
        if on(FaultKind::Intruder) {
            writeln!(
                f,
                "  intruder: boots at {}, {} cluster id, replays a sniffed datagram every ~{}",
                d(self.intruder_from_ms),
                if self.intruder_spoofs_cluster_id { "spoofs the honest" } else { "announces its own" },
                d(self.intruder_replay_every_ms),
            )?;
        }
        write!(f, "  --join seeds: {} of nodes also get node 0 as a seed", pct(self.seeded_ppm))?;
        Ok(())
    }
}
