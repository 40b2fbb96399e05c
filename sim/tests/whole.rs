//! Whole nodes (`--whole`): membership, Raft, joins with the real issuer, the leader's duties
//! and agents on fake engines, together in every simulated node.
//!
//! - the same seed gives a byte-identical trace, for each fault kind alone and all together;
//! - a sweep of 200 seeds × 5 nodes × 10 simulated minutes with every fault (the insider
//!   with the token among them: every manager's write it forwards as a worker is refused) passes every
//!   checker (`SHOAL_SIM_WHOLE_SEEDS=N` changes the number of seeds), and the faults,
//!   joins, intruder attempts, reschedules and removals it counts did happen;
//! - a planted bug (`skip-join-check`: a member issues a certificate though the join check
//!   failed) is caught by the certificate invariant, and the printed replay command
//!   reproduces it; so is one planted in the shared controller (`grant-manager-to-learners`).

use shoal_sim::raft::{run, RaftReport};
use shoal_sim::RaftBug;
use shoal_sim::{FaultSet, SimOptions};

fn whole(seed: u64, nodes: Option<usize>, duration_ms: u64, faults: &str) -> SimOptions {
    SimOptions { raft: true, whole: true, nodes, duration_ms, faults: FaultSet::parse(faults).expect("faults"), ..SimOptions::new(seed) }
}

fn traced(opts: &SimOptions, name: &str) -> (String, RaftReport) {
    let dir = std::env::temp_dir().join(format!("shoal-sim-whole-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    let report = run(&SimOptions { trace: Some(path.clone()), ..opts.clone() });
    let text = std::fs::read_to_string(&path).expect("trace written");
    let _ = std::fs::remove_file(&path);
    (text, report)
}

#[test]
fn same_seed_same_trace_for_every_fault_kind() {
    let cases: Vec<(u64, &str, usize, &str)> = vec![
        (1, "crash", 4, "CRASH"),
        (2, "partition", 4, "CUT #"),
        (3, "loss", 3, "LOSS storm"),
        (4, "delay", 5, "DELAY storm"),
        (5, "leave", 5, "node rm"),
        (6, "late-join", 4, "late"),
        (7, "intruder", 3, "intruder refused"),
        (8, "all", 5, "HEAL"),
    ];
    let mut distinct = std::collections::BTreeSet::new();
    for (seed, faults, nodes, marker) in cases {
        let opts = whole(seed, Some(nodes), 4 * 60_000, faults);
        let (a, ra) = traced(&opts, &format!("{seed}-a"));
        let (b, rb) = traced(&opts, &format!("{seed}-b"));
        assert!(ra.passed(), "{}", ra.summary());
        for must in ["LEADER term", "joined through", "committed the cluster CA", "autopilot: voters", "service create", marker] {
            let found = if must == "late" { ra.faults.contains_key("late-join") } else { a.contains(must) };
            assert!(found, "seed {seed} ({faults}): no `{must}` in the run:\n{}", ra.summary());
        }
        assert_eq!(a, b, "seed {seed} ({faults}) replayed differently");
        assert_eq!((ra.checks, ra.writes.clone(), ra.whole.clone()), (rb.checks, rb.writes.clone(), rb.whole.clone()));
        distinct.insert(a);
    }
    assert_eq!(distinct.len(), 8, "different seeds gave identical traces");
    assert_eq!(shoal_consensus::runtime::unseeded_draws(), 0);
}

fn sweep_seeds() -> u64 {
    std::env::var("SHOAL_SIM_WHOLE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

#[test]
fn sweep_200_seeds_5_nodes_10_minutes_all_faults() {
    let n = sweep_seeds();
    let started = std::time::Instant::now();
    let reports = shoal_sim::sweep(1..=n, |seed| run(&whole(seed, Some(5), 10 * 60_000, "all")));
    let mut t = Totals::default();
    for r in &reports {
        t.add(r);
    }
    eprintln!(
        "whole sweep of {n} seeds x 5 nodes x 10 min, all faults: {} faults ({} crashes, {} partitions, {} late joins, {} removals), \
         {} elections, {} joins, {} intruder attempts refused, {} of {} insider writes refused, {} voter changes, {} placements, {} container crashes, {} checks; {} ms wall",
        t.faults, t.crashes, t.partitions, t.late_joins, t.revoked, t.elections, t.joins, t.intruder_refused, t.insider_refused, t.insider_attempts, t.voter_changes, t.placements, t.container_crashes, t.checks,
        started.elapsed().as_millis()
    );
    let f: Vec<String> = reports.iter().filter(|r| !r.passed()).map(|r| r.summary()).collect();
    assert!(f.is_empty(), "{} seed(s) failed:\n{}", f.len(), f.join("\n"));
    // The sweep exercised what it claims to.
    let ran = n.min(200);
    assert!(t.joins >= 4 * ran, "{} joins in {ran} seeds", t.joins);
    for (what, count) in [
        ("crashes", t.crashes),
        ("partitions", t.partitions),
        ("late joins", t.late_joins),
        ("removals", t.revoked),
        ("intruder refusals", t.intruder_refused),
        ("insider writes", t.insider_attempts),
        ("voter changes", t.voter_changes),
        ("placements", t.placements),
        ("container crashes", t.container_crashes),
    ] {
        assert!(count > 0, "no {what} in the whole sweep");
    }
    // Every manager's write a worker forwarded was refused by the controller's rule (a
    // committed one is also a violation, checked per seed above).
    assert_eq!(t.insider_refused, t.insider_attempts, "insider writes that were not refused");
}

#[derive(Default)]
struct Totals {
    faults: u64,
    crashes: u64,
    partitions: u64,
    late_joins: u64,
    revoked: u64,
    elections: u64,
    joins: u64,
    intruder_refused: u64,
    insider_attempts: u64,
    insider_refused: u64,
    voter_changes: u64,
    placements: u64,
    container_crashes: u64,
    checks: u64,
}

impl Totals {
    fn add(&mut self, r: &RaftReport) {
        let count = |prefix: &str| r.faults.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| *v).sum::<u64>();
        self.faults += r.faults.values().sum::<u64>();
        self.crashes += count("crash") + count("leader-kill") + count("power-outage");
        self.partitions += count("partition");
        self.late_joins += count("late-join");
        self.elections += r.elections;
        self.checks += r.checks;
        if let Some(w) = &r.whole {
            self.revoked += w.nodes_revoked;
            self.joins += w.joins;
            self.intruder_refused += w.intruder_refused;
            self.insider_attempts += w.insider_attempts;
            self.insider_refused += w.insider_refused;
            self.voter_changes += w.voter_changes;
            self.placements += w.placements;
            self.container_crashes += w.container_crashes;
        }
    }
}

#[test]
fn planted_skip_join_check_is_caught_and_replayed() {
    let opts = whole(11, Some(4), 2 * 60_000, "intruder");
    let clean = run(&opts);
    assert!(clean.passed(), "fails without the planted bug:\n{}", clean.summary());
    assert!(clean.whole.as_ref().is_some_and(|w| w.intruder_refused > 0), "the intruder was never refused:\n{}", clean.summary());
    let buggy = run(&SimOptions { planted_raft_bug: Some(RaftBug::SkipJoinCheck), ..opts.clone() });
    let summary = buggy.summary();
    assert!(!buggy.passed(), "the planted bug went unnoticed:\n{summary}");
    assert!(buggy.violations.iter().any(|v| v.contains("which does not hold the join secret, was committed")), "{summary}");
    assert!(buggy.violations.iter().any(|v| v.contains("issued a certificate to")), "{summary}");
    let cmd = summary.lines().find_map(|l| l.strip_prefix("replay with: ")).expect("a replay command");
    assert!(cmd.starts_with("shoal sim --whole --seed 11 ") && cmd.ends_with("--planted-raft-bug skip-join-check"), "{cmd}");
    let replay = run(&SimOptions::from_command_line(cmd).expect("the replay command parses"));
    assert_eq!(replay.violations, buggy.violations);
    assert_eq!(replay.whole, buggy.whole);
}

/// A bug planted in the shared controller (`shoal_control`, which the node runs too): a
/// join answer grants the manager role to a node that is not a Raft voter. The whole-mode
/// sweep catches it in every seed (the role-grant check on each certificate a joiner
/// receives), and the printed replay command reproduces it. The node's side of the same
/// switch is `tests/tests/planted_netns.rs`.
#[test]
fn planted_grant_manager_to_learners_is_caught_by_the_sweep_and_replayed() {
    let seeds = 1..=8u64;
    let clean = shoal_sim::sweep(seeds.clone(), |seed| run(&whole(seed, Some(5), 2 * 60_000, "all")));
    for r in &clean {
        assert!(r.passed(), "fails without the planted bug:\n{}", r.summary());
    }
    let bug = RaftBug::GrantManagerToLearners;
    let buggy = shoal_sim::sweep(seeds, |seed| run(&SimOptions { planted_raft_bug: Some(bug), ..whole(seed, Some(5), 2 * 60_000, "all") }));
    for r in &buggy {
        let summary = r.summary();
        assert!(!r.passed(), "the planted bug went unnoticed:\n{summary}");
        assert!(r.violations.iter().any(|v| v.contains("granted the manager role") && v.contains("not a Raft voter")), "{summary}");
    }
    let summary = buggy[0].summary();
    let cmd = summary.lines().find_map(|l| l.strip_prefix("replay with: ")).expect("a replay command");
    assert!(cmd.starts_with("shoal sim --whole --seed 1 ") && cmd.ends_with("--planted-raft-bug grant-manager-to-learners"), "{cmd}");
    let replay = run(&SimOptions::from_command_line(cmd).expect("the replay command parses"));
    assert_eq!(replay.violations, buggy[0].violations);
    assert_eq!(replay.whole, buggy[0].whole);
}

/// A bug planted in the shared controller's agent (`shoal_control::AgentCore`, which the
/// node's runner runs too): it keeps the containers of tasks moved away from its node. The
/// whole-mode sweep catches it (a container still runs for a task that is no longer live),
/// and the replay command of a failing seed reproduces it. This replaces the old
/// `--services` oracle mode's planted bugs, which lived in the oracle's own glue.
#[test]
fn planted_keep_stale_containers_is_caught_by_the_sweep_and_replayed() {
    let seeds = 1..=12u64;
    let clean = shoal_sim::sweep(seeds.clone(), |seed| run(&whole(seed, Some(5), 2 * 60_000, "all")));
    for r in &clean {
        assert!(r.passed(), "fails without the planted bug:\n{}", r.summary());
    }
    let bug = RaftBug::KeepStaleContainers;
    let buggy = shoal_sim::sweep(seeds, |seed| run(&SimOptions { planted_raft_bug: Some(bug), ..whole(seed, Some(5), 2 * 60_000, "all") }));
    let caught: Vec<&RaftReport> = buggy.iter().filter(|r| !r.passed()).collect();
    assert!(!caught.is_empty(), "the planted bug went unnoticed in every seed");
    for r in &caught {
        let summary = r.summary();
        assert!(r.violations.iter().all(|v| v.contains("but is not live in the state")), "{summary}");
    }
    let summary = caught[0].summary();
    let cmd = summary.lines().find_map(|l| l.strip_prefix("replay with: ")).expect("a replay command");
    assert!(cmd.starts_with("shoal sim --whole --seed ") && cmd.ends_with("--planted-raft-bug keep-stale-containers"), "{cmd}");
    let replay = run(&SimOptions::from_command_line(cmd).expect("the replay command parses"));
    assert_eq!(replay.violations, caught[0].violations);
    assert_eq!(replay.whole, caught[0].whole);
    eprintln!("keep-stale-containers: caught in {} of {} seeds", caught.len(), buggy.len());
}
