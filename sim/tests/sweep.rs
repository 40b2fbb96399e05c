//! Seed sweeps: 200 seeds x 5 nodes x 10 simulated minutes, checked by every invariant.
//! The seeds are shared out over the machine's cores.
//!
//! `SHOAL_SIM_SEEDS=N` changes the number of seeds (first seed 1).

use shoal_sim::{run, FaultSet, SimOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const DEFAULT_SEEDS: u64 = 200;

fn seeds() -> u64 {
    std::env::var("SHOAL_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEEDS)
}

/// Runs the sweep; returns the summaries of failing seeds.
fn sweep(faults: FaultSet) -> Vec<String> {
    let n = seeds();
    let next = AtomicU64::new(1);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed > n {
                    break;
                }
                let opts = SimOptions { nodes: Some(5), duration_ms: 10 * 60_000, faults, ..SimOptions::new(seed) };
                let report = run(&opts);
                if !report.passed() {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(report.summary());
                }
            });
        }
    });
    eprintln!("sweep of {n} seeds, faults {faults}: {} ms wall on {workers} thread(s)", started.elapsed().as_millis());
    let mut f = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    f.sort();
    f
}

/// Every fault: crash, partition, loss, delay, leave, late join, intruder.
#[test]
fn sweep_all_faults() {
    let failures = sweep(FaultSet::all());
    assert!(failures.is_empty(), "{} seed(s) failed:\n{}", failures.len(), failures.join("\n"));
}
