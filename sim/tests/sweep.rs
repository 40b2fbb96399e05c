//! Seed sweeps: 200 seeds x 5 nodes x 10 simulated minutes, checked by every invariant.
//! The seeds are shared out over the machine's cores.
//!
//! `SHOAL_SIM_SEEDS=N` changes the number of seeds (first seed 1).

use shoal_sim::{run, FaultSet, SimOptions};

const DEFAULT_SEEDS: u64 = 200;

fn seeds() -> u64 {
    std::env::var("SHOAL_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEEDS)
}

/// Runs the sweep; returns the summaries of failing seeds.
fn sweep(faults: FaultSet) -> Vec<String> {
    let n = seeds();
    let started = std::time::Instant::now();
    let results = shoal_sim::sweep(1..=n, |seed| {
        let report = run(&SimOptions { nodes: Some(5), duration_ms: 10 * 60_000, faults, ..SimOptions::new(seed) });
        (!report.passed()).then(|| report.summary())
    });
    eprintln!("sweep of {n} seeds, faults {faults}: {} ms wall", started.elapsed().as_millis());
    results.into_iter().flatten().collect()
}

/// Every fault: crash, partition, loss, delay, leave, late join, intruder.
#[test]
fn sweep_all_faults() {
    let failures = sweep(FaultSet::all());
    assert!(failures.is_empty(), "{} seed(s) failed:\n{}", failures.len(), failures.join("\n"));
}
