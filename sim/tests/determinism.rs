//! The same seed gives the same trace, byte for byte: for several seeds, for each fault kind
//! alone and for all of them together.

use shoal_sim::{run, FaultKind, FaultSet, SimOptions, SimReport};
use std::path::PathBuf;

/// Traced and untraced runs must not overlap in one process: `tracing`'s process-wide
/// callsite cache can race with the simulator's thread-scoped log capture and drop lines from
/// a trace. The tests of this file therefore run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn trace_path(tag: &str, seed: u64, round: u32) -> PathBuf {
    std::env::temp_dir().join(format!("shoal-sim-{}-{tag}-{seed}-{round}.trace", std::process::id()))
}

/// Runs `opts` twice with a trace and returns the trace bytes and both reports.
fn twice(tag: &str, opts: &SimOptions) -> (Vec<u8>, SimReport, SimReport) {
    let mut runs = Vec::new();
    for round in 0..2 {
        let path = trace_path(tag, opts.seed, round);
        let report = run(&SimOptions { trace: Some(path.clone()), ..opts.clone() });
        assert_eq!(report.trace_error, None);
        let bytes = std::fs::read(&path).expect("trace written");
        let _ = std::fs::remove_file(&path);
        runs.push((bytes, report));
    }
    let (b, second) = runs.pop().expect("two runs");
    let (a, first) = runs.pop().expect("two runs");
    assert!(a == b, "{tag} seed {}: traces differ (first difference at byte {:?})", opts.seed, a.iter().zip(&b).position(|(x, y)| x != y));
    (a, first, second)
}

fn same_counters(a: &SimReport, b: &SimReport) {
    assert_eq!(a.messages, b.messages);
    assert_eq!(a.faults, b.faults);
    assert_eq!(a.checks, b.checks);
    assert_eq!(a.violations, b.violations);
    assert_eq!(a.trace_lines, b.trace_lines);
}

#[test]
fn each_fault_kind_replays_byte_for_byte() {
    let _serial = serial();
    // The insider is a whole-mode fault (`tests/whole.rs`); membership runs ignore it.
    for kind in FaultKind::ALL.into_iter().filter(|k| *k != FaultKind::Insider) {
        let mut injected = false;
        for seed in [3, 11, 2024] {
            let opts = SimOptions {
                nodes: Some(4),
                duration_ms: 4 * 60_000,
                faults: FaultSet::none().with(kind),
                ..SimOptions::new(seed)
            };
            let (trace, a, b) = twice(kind.name(), &opts);
            same_counters(&a, &b);
            assert!(trace.len() > 10_000, "{kind} seed {seed}: trace suspiciously short");
            let marker = match kind {
                FaultKind::Crash => "CRASH",
                FaultKind::Partition => "partition #",
                FaultKind::Loss => ": loss",
                FaultKind::Delay => "latency +",
                FaultKind::Leave => "LEAVE",
                FaultKind::LateJoin => "boot (late)",
                FaultKind::Intruder => "(replay)",
                FaultKind::Insider => unreachable!("filtered out above"),
            };
            injected |= trace.windows(marker.len()).any(|w| w == marker.as_bytes());
        }
        assert!(injected, "fault kind {kind} was never injected in three seeds");
    }
}

#[test]
fn all_faults_replay_byte_for_byte_and_seeds_differ() {
    let _serial = serial();
    let mut traces = Vec::new();
    for seed in [1, 77, 4242] {
        let opts = SimOptions { duration_ms: 5 * 60_000, ..SimOptions::new(seed) };
        let (trace, a, b) = twice("all", &opts);
        same_counters(&a, &b);
        traces.push(trace);
    }
    assert!(traces[0] != traces[1] && traces[1] != traces[2], "different seeds gave the same trace");
}

#[test]
fn tracing_does_not_change_the_run() {
    let _serial = serial();
    let opts = SimOptions { duration_ms: 3 * 60_000, ..SimOptions::new(9) };
    let (_, traced, _) = twice("traced", &opts);
    let plain = run(&opts);
    assert_eq!(plain.messages, traced.messages);
    assert_eq!(plain.faults, traced.faults);
    assert_eq!(plain.violations, traced.violations);
}
