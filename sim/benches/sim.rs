//! Simulator throughput and gossip volume, no faults (steady state):
//! simulated seconds per wall second at 5, 50 and 200 nodes, and gossip bytes sent per node
//! per second (sealed datagrams, measured over the second half of each run) at 5 and 50.
//!
//! Then the Raft mode (`--raft`, all its faults): simulated seconds per wall second at 3
//! and 5 openraft nodes; and whole nodes (`--whole`, every fault) at 5 and 10.
//!
//! `cargo bench -p shoal-sim`

use shoal_sim::{format_duration, run, FaultSet, SimOptions};

fn main() {
    println!("{:>6} {:>10} {:>10} {:>16} {:>22}", "nodes", "simulated", "wall", "sim s / wall s", "gossip B/node/s");
    for (nodes, duration_ms) in [(5usize, 10 * 60_000u64), (50, 5 * 60_000), (200, 30_000)] {
        let opts = SimOptions { nodes: Some(nodes), duration_ms, faults: FaultSet::none(), ..SimOptions::new(1) };
        let report = run(&opts);
        assert!(report.passed(), "{}", report.summary());
        let bytes = if nodes <= 50 { format!("{:.0}", report.gossip_bytes_per_node_s()) } else { "-".to_string() };
        println!(
            "{:>6} {:>10} {:>8}ms {:>16.1} {:>22}",
            nodes,
            format_duration(duration_ms),
            report.wall_ms,
            report.speed(),
            bytes
        );
    }
    println!();
    println!("{:>6} {:>10} {:>10} {:>16} {:>22}", "raft", "simulated", "wall", "sim s / wall s", "acked writes");
    for nodes in [3usize, 5] {
        let opts = SimOptions { raft: true, nodes: Some(nodes), duration_ms: 10 * 60_000, ..SimOptions::new(1) };
        let report = shoal_sim::raft::run(&opts);
        assert!(report.passed(), "{}", report.summary());
        println!("{:>6} {:>10} {:>8}ms {:>16.1} {:>22}", nodes, format_duration(opts.duration_ms), report.wall_ms, report.speed(), report.writes.acked);
    }
    println!();
    println!("{:>6} {:>10} {:>10} {:>16} {:>22}", "whole", "simulated", "wall", "sim s / wall s", "joins / placements");
    for nodes in [5usize, 10] {
        let opts = SimOptions { raft: true, whole: true, nodes: Some(nodes), duration_ms: 10 * 60_000, ..SimOptions::new(1) };
        let report = shoal_sim::raft::run(&opts);
        assert!(report.passed(), "{}", report.summary());
        let w = report.whole.clone().unwrap_or_default();
        let what = format!("{} / {}", w.joins, w.placements);
        println!("{:>6} {:>10} {:>8}ms {:>16.1} {:>22}", nodes, format_duration(opts.duration_ms), report.wall_ms, report.speed(), what);
    }
}
