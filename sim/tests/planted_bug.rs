//! The simulator catches a planted bug in the membership core (a graceful leave shown as
//! `down`), and the replay command it prints reproduces the same violation.

use shoal_sim::{run, FaultSet, SimOptions};

#[test]
fn planted_bug_is_caught_and_the_replay_command_reproduces_it() {
    let faults = FaultSet::parse("leave,late-join").expect("faults");
    for seed in 1..=20u64 {
        let opts = SimOptions { nodes: Some(5), duration_ms: 5 * 60_000, faults, ..SimOptions::new(seed) };
        let clean = run(&opts);
        assert!(clean.passed(), "seed {seed} fails without the planted bug:\n{}", clean.summary());
        let buggy = run(&SimOptions { planted_bug: true, ..opts.clone() });
        if buggy.passed() {
            continue; // no leave with witnesses in this seed; try the next one
        }
        let summary = buggy.summary();
        assert!(summary.contains("FAILED"), "{summary}");
        assert!(buggy.violations.iter().any(|v| v.contains("graceful leave") && v.contains("as down")), "{summary}");
        let cmd = summary
            .lines()
            .find_map(|l| l.strip_prefix("replay with: "))
            .expect("the summary prints a replay command");
        assert!(cmd.starts_with("shoal sim --seed ") && cmd.contains("--planted-bug"), "{cmd}");
        let replay_opts = SimOptions::from_command_line(cmd).expect("the replay command parses");
        let replay = run(&replay_opts);
        assert_eq!(replay.violations, buggy.violations);
        assert_eq!(replay.messages, buggy.messages);
        assert_eq!(replay.faults, buggy.faults);
        return;
    }
    panic!("the planted bug went unnoticed in 20 seeds");
}
