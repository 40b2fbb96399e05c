//! `shoal sim`: run the deterministic simulator from the binary (one seed or a sweep).

use anyhow::{anyhow, bail, Result};
use shoal_sim::{FaultSet, SimOptions, SimPlan};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(long_about = "Runs many shoal membership cores in one process on simulated time, \
injects faults drawn from the seed, checks invariants, and prints a summary. On a broken \
invariant it exits non-zero and prints the command that replays the same run, byte for byte. \
--raft simulates real openraft nodes instead; --whole simulates whole nodes (membership, Raft, \
joins, the leader's duties and agents together).")]
pub struct SimArgs {
    /// Seed of one run (everything else is derived from it unless given).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep a range of seeds, e.g. `1..200` (inclusive); prints only failures and a total.
    #[arg(long, value_name = "A..B")]
    seeds: Option<String>,
    /// Number of nodes [default: derived from the seed].
    #[arg(long)]
    nodes: Option<usize>,
    /// Simulated duration, e.g. 30s, 10m, 1h.
    #[arg(long, default_value = "10m")]
    duration: String,
    /// Faults to inject: all, none, or a list of crash,partition,loss,delay,leave,late-join,intruder,insider
    /// (insider: whole mode only).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Write one line per simulated event to this file (single seed only).
    #[arg(long, conflicts_with = "seeds")]
    trace: Option<PathBuf>,
    /// Test-only: run a core with a planted bug to show the checkers catch it.
    #[arg(long, hide = true)]
    planted_bug: bool,
    /// Simulate Raft instead of membership: real openraft nodes (shoal's state machine) on
    /// simulated time, network and disks; faults crash, partition, loss, delay.
    #[arg(long)]
    raft: bool,
    /// Gone: services run in whole mode. Kept hidden so old replay commands get a clear
    /// answer instead of clap's "unexpected argument".
    #[arg(long, hide = true)]
    services: bool,
    /// Simulate whole nodes: membership, Raft, joins with the real issuer, the leader's
    /// duties (autopilot, scheduler) and agents on fake container engines in every node;
    /// every fault kind (leave removes a node with `node rm`). At most 10 nodes.
    #[arg(long, conflicts_with = "raft")]
    whole: bool,
    /// Test-only: a planted bug in the Raft or whole mode (unsynced-flush, skip-join-check,
    /// grant-manager-to-learners, keep-stale-containers).
    #[arg(long, hide = true, value_name = "BUG")]
    planted_raft_bug: Option<String>,
}

fn parse_range(text: &str) -> Result<(u64, u64)> {
    let (a, b) = text.split_once("..").ok_or_else(|| anyhow!("--seeds must look like A..B, e.g. 1..200"))?;
    let a: u64 = a.trim().parse().map_err(|_| anyhow!("--seeds: `{a}` is not a number"))?;
    let b: u64 = b.trim().parse().map_err(|_| anyhow!("--seeds: `{b}` is not a number"))?;
    if b < a {
        bail!("--seeds: the range {a}..{b} is empty");
    }
    Ok((a, b))
}

fn options(args: &SimArgs, seed: u64) -> Result<SimOptions> {
    if args.services {
        bail!("--services is gone: services run in whole mode (--whole), on the real state machine and controller");
    }
    let opts = SimOptions {
        nodes: args.nodes,
        duration_ms: shoal_sim::parse_duration(&args.duration)?,
        faults: FaultSet::parse(&args.faults)?,
        trace: args.trace.clone(),
        planted_bug: args.planted_bug,
        raft: args.raft || args.whole,
        whole: args.whole,
        planted_raft_bug: match args.planted_raft_bug.as_deref() {
            None => None,
            Some(_) if !(args.raft || args.whole) => bail!("--planted-raft-bug needs --raft or --whole"),
            Some(name) => Some(
                shoal_sim::RaftBug::parse(name).ok_or_else(|| anyhow!("unknown planted raft bug `{name}`: {}", shoal_sim::RaftBug::names()))?,
            ),
        },
        ..SimOptions::new(seed)
    };
    opts.validate()?;
    Ok(opts)
}

/// Returns whether every run passed.
pub fn run(args: SimArgs) -> Result<bool> {
    if let Some(seed) = args.seed {
        let opts = options(&args, seed)?;
        if opts.raft {
            let report = shoal_sim::raft::run(&opts);
            print!("{}", report.summary());
            return Ok(report.passed());
        }
        println!("{}", SimPlan::derive(&opts));
        let report = shoal_sim::run(&opts);
        print!("{}", report.summary());
        return Ok(report.passed());
    }
    let Some(range) = args.seeds.as_deref() else {
        bail!("give --seed S for one run or --seeds A..B for a sweep");
    };
    let (a, b) = parse_range(range)?;
    let started = std::time::Instant::now();
    let opts: Vec<SimOptions> = (a..=b).map(|seed| options(&args, seed)).collect::<Result<_>>()?;
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!("sweeping {} seeds on {workers} thread(s)...", b - a + 1);
    // Each run is single-threaded and deterministic; seeds are shared out over the cores.
    let done = std::sync::atomic::AtomicU64::new(0);
    let results = shoal_sim::sweep(a..=b, |seed| {
        let Some(opts) = usize::try_from(seed - a).ok().and_then(|i| opts.get(i)) else { return (true, String::new()) };
        let outcome = if opts.raft {
            let report = shoal_sim::raft::run(opts);
            (report.passed(), report.summary())
        } else {
            let report = shoal_sim::run(opts);
            (report.passed(), report.summary())
        };
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n.is_multiple_of(50) {
            eprintln!("... {n} of {} seeds done", b - a + 1);
        }
        outcome
    });
    let mut failed = 0u64;
    for (passed, summary) in results {
        if !passed {
            failed += 1;
            print!("{summary}");
        }
    }
    println!("{} passed, {} failed ({} seeds in {:.1} s)", b - a + 1 - failed, failed, b - a + 1, started.elapsed().as_secs_f64());
    Ok(failed == 0)
}
