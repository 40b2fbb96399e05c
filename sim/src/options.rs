//! What a run is asked to do: seed, node count, length, faults, trace file; the parsers for
//! the command-line forms (`--faults crash,loss`, `--duration 10m`) and for the replay
//! command a failing run prints.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Most honest nodes one run may have. Addresses are `10.a.b.c`, and a run of this size is
/// already minutes of wall time per simulated minute.
pub const MAX_NODES: usize = 1_000;
/// Most machines of a whole-node run (`--whole`; one fixed key each).
pub const WHOLE_MAX_NODES: usize = 10;
/// Longest run: a week of simulated time. Longer runs would also cross the core's 24 h
/// retention of down members, which the checkers do not model.
pub const MAX_DURATION_MS: u64 = 7 * 24 * 3_600_000;
/// Shortest run: one second.
pub const MIN_DURATION_MS: u64 = 1_000;
/// Default length of a run: ten simulated minutes.
pub const DEFAULT_DURATION_MS: u64 = 10 * 60_000;

/// One kind of fault the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A node loses power (its timers and the datagrams on their way to it are gone) and
    /// boots again later with the same node id and a higher generation.
    Crash,
    /// Links are cut: a two-way split of the cluster, an isolated node, or one-way cuts.
    Partition,
    /// Datagrams are lost or duplicated.
    Loss,
    /// Slow links, jitter that reorders datagrams, and latency spikes longer than a probe.
    Delay,
    /// A node leaves gracefully (`shoal` stopping cleanly) and may come back later.
    Leave,
    /// Some nodes boot long after the others.
    LateJoin,
    /// A machine with another join secret sits on the LAN, greets everyone, spoofs the
    /// cluster id in its mDNS announcement and replays datagrams it sniffed.
    Intruder,
    /// Whole mode only: a machine that holds the token and a worker's certificate forwards
    /// what only a manager may write (`node rm` of a voter, `service create`, task reports
    /// for another node); the leader must refuse every one (`shoal_control::check_forward`).
    Insider,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Crash,
        FaultKind::Partition,
        FaultKind::Loss,
        FaultKind::Delay,
        FaultKind::Leave,
        FaultKind::LateJoin,
        FaultKind::Intruder,
        FaultKind::Insider,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Partition => "partition",
            Self::Loss => "loss",
            Self::Delay => "delay",
            Self::Leave => "leave",
            Self::LateJoin => "late-join",
            Self::Intruder => "intruder",
            Self::Insider => "insider",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of fault kinds. Text form: `crash,partition,loss` in canonical order, `all` or `none`.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct FaultSet(u8);

impl FaultSet {
    pub const fn none() -> Self {
        Self(0)
    }

    pub fn all() -> Self {
        FaultKind::ALL.iter().fold(Self::none(), |s, k| s.with(*k))
    }

    #[must_use]
    pub fn with(self, kind: FaultKind) -> Self {
        Self(self.0 | kind.bit())
    }

    #[must_use]
    pub fn without(self, kind: FaultKind) -> Self {
        Self(self.0 & !kind.bit())
    }

    pub fn contains(self, kind: FaultKind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in canonical order.
    pub fn iter(self) -> impl Iterator<Item = FaultKind> {
        FaultKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }

    /// Parses `crash,loss`, `all` or `none`; spaces around names are ignored.
    pub fn parse(text: &str) -> Result<Self, OptionsError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(OptionsError::EmptyFaults);
        }
        let mut set = Self::none();
        for name in text.split(',').map(str::trim) {
            match name {
                "all" => set = Self::all(),
                "none" => {}
                _ => {
                    let kind = FaultKind::ALL
                        .into_iter()
                        .find(|k| k.name() == name)
                        .ok_or_else(|| OptionsError::UnknownFault(name.to_string()))?;
                    set = set.with(kind);
                }
            }
        }
        Ok(set)
    }
}

impl FromStr for FaultSet {
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(FaultKind::name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultSet({self})")
    }
}

/// The fault kinds the Raft mode injects; the others (leave, late join, intruder) are
/// membership faults and are ignored here.
pub fn raft_faults(faults: FaultSet) -> FaultSet {
    [FaultKind::Crash, FaultKind::Partition, FaultKind::Loss, FaultKind::Delay]
        .into_iter()
        .filter(|k| faults.contains(*k))
        .fold(FaultSet::none(), FaultSet::with)
}

/// A bug planted in the simulator's disk (never in the consensus crate), to prove the
/// checkers are not blind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RaftBug {
    /// The log store invokes openraft's flush callback for a batch, but the batch reaches
    /// the disk only when the *next* batch is synced: a power cut loses acknowledged entries.
    UnsyncedFlush,
    /// Whole mode, in the shared controller (`shoal_control::PlantedBug::SkipJoinCheck`):
    /// a member answers join requests without the join check (gossip visibility and the
    /// secret's HMAC), so the intruder gets a certificate.
    SkipJoinCheck,
    /// Whole mode, in the shared controller
    /// (`shoal_control::PlantedBug::GrantManagerToLearners`): a join answer grants the
    /// manager role to a node that is not a Raft voter.
    GrantManagerToLearners,
    /// Whole mode, in the shared controller
    /// (`shoal_control::PlantedBug::KeepStaleContainers`): an agent keeps the containers of
    /// tasks moved away from it while it was cut off.
    KeepStaleContainers,
}

impl RaftBug {
    pub const ALL: [RaftBug; 4] = [RaftBug::UnsyncedFlush, RaftBug::SkipJoinCheck, RaftBug::GrantManagerToLearners, RaftBug::KeepStaleContainers];

    pub fn name(self) -> &'static str {
        match self {
            Self::UnsyncedFlush => "unsynced-flush",
            Self::SkipJoinCheck => "skip-join-check",
            Self::GrantManagerToLearners => "grant-manager-to-learners",
            Self::KeepStaleContainers => "keep-stale-containers",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The names, for error messages.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    /// The controller's planted bug this is, if it is one.
    pub fn planted(self) -> Option<shoal_control::PlantedBug> {
        match self {
            Self::UnsyncedFlush => None,
            Self::SkipJoinCheck => Some(shoal_control::PlantedBug::SkipJoinCheck),
            Self::GrantManagerToLearners => Some(shoal_control::PlantedBug::GrantManagerToLearners),
            Self::KeepStaleContainers => Some(shoal_control::PlantedBug::KeepStaleContainers),
        }
    }
}

/// Options that cannot be used. Messages say what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("unknown fault `{0}`; known faults: crash, partition, loss, delay, leave, late-join, intruder, insider (or `all`, `none`)")]
    UnknownFault(String),
    #[error("empty fault list; name faults like `crash,loss`, or use `all` or `none`")]
    EmptyFaults,
    #[error("cannot read duration `{0}`: use a number with a unit (ms, s, m, h), like 30s, 10m, 1h or 1m30s")]
    BadDuration(String),
    #[error("duration {0} is out of range: a run lasts from 1s to 168h")]
    DurationOutOfRange(String),
    #[error("node count {0} is out of range: use 1 to {MAX_NODES}")]
    NodesOutOfRange(usize),
    #[error("node count {0} is out of range for --whole: use 1 to {max}", max = WHOLE_MAX_NODES)]
    WholeNodesOutOfRange(usize),
    #[error("cannot read the command line: {0}")]
    BadCommandLine(String),
}

/// Parses a duration: numbers each followed by a unit (`ms`, `s`, `m`, `h`), summed, like
/// `30s`, `10m`, `1h`, `1m30s`, `250ms`. Returns milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, OptionsError> {
    let bad = || OptionsError::BadDuration(text.to_string());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| OptionsError::DurationOutOfRange(text.to_string()))?;
    }
    if !(MIN_DURATION_MS..=MAX_DURATION_MS).contains(&total_ms) {
        return Err(OptionsError::DurationOutOfRange(text.to_string()));
    }
    Ok(total_ms)
}

/// Formats milliseconds in the form [`parse_duration`] reads, as short as it is exact:
/// `10m`, `1h30m`, `90500ms`.
pub fn format_duration(ms: u64) -> String {
    if ms == 0 {
        return "0ms".to_string();
    }
    if !ms.is_multiple_of(1_000) {
        return format!("{ms}ms");
    }
    let (h, m, s) = (ms / 3_600_000, ms % 3_600_000 / 60_000, ms % 60_000 / 1_000);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

/// What to simulate. Every field that is not given is derived from `seed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOptions {
    pub seed: u64,
    /// Number of honest nodes; `None` derives it from the seed (3 to 7).
    pub nodes: Option<usize>,
    /// Whole run: the fault phase, then the heal phase ([`crate::HEAL_MS`]).
    pub duration_ms: u64,
    pub faults: FaultSet,
    /// Write one line per event to this file.
    pub trace: Option<PathBuf>,
    /// Turn on the membership core's planted bug (a graceful leave shows as `down`), to
    /// prove the checkers catch it.
    pub planted_bug: bool,
    /// Run the Raft mode instead of the membership simulation (`crate::raft::run`).
    pub raft: bool,
    /// With `raft`: a planted bug in the simulated disk, to prove the Raft checkers catch it.
    pub planted_raft_bug: Option<RaftBug>,
    /// Whole nodes (`--whole`, implies `raft`): membership, Raft, the leader's duties, joins
    /// with the real issuer, and agents on fake engines, in every simulated node.
    pub whole: bool,
}

impl SimOptions {
    /// Defaults for `seed`: derived node count, ten minutes, every fault, no trace.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: None,
            duration_ms: DEFAULT_DURATION_MS,
            faults: FaultSet::all(),
            trace: None,
            planted_bug: false,
            raft: false,
            planted_raft_bug: None,
            whole: false,
        }
    }

    /// Checks the ranges [`crate::run`] relies on.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if let Some(n) = self.nodes {
            if !(1..=MAX_NODES).contains(&n) {
                return Err(OptionsError::NodesOutOfRange(n));
            }
            if self.whole && n > WHOLE_MAX_NODES {
                return Err(OptionsError::WholeNodesOutOfRange(n));
            }
        }
        if !(MIN_DURATION_MS..=MAX_DURATION_MS).contains(&self.duration_ms) {
            return Err(OptionsError::DurationOutOfRange(format_duration(self.duration_ms)));
        }
        Ok(())
    }

    /// The command that replays this run exactly, with the node count spelled out.
    pub fn replay_command(&self, nodes: usize) -> String {
        if self.raft {
            let (mode, faults) = if self.whole { ("--whole", self.faults) } else { ("--raft", raft_faults(self.faults)) };
            let mut cmd = format!(
                "shoal sim {mode} --seed {} --nodes {} --duration {} --faults {}",
                self.seed,
                nodes,
                format_duration(self.duration_ms),
                faults
            );
            if let Some(bug) = self.planted_raft_bug {
                cmd.push_str(" --planted-raft-bug ");
                cmd.push_str(bug.name());
            }
            return cmd;
        }
        let mut cmd = format!(
            "shoal sim --seed {} --nodes {} --duration {} --faults {}",
            self.seed,
            nodes,
            format_duration(self.duration_ms),
            self.faults
        );
        if self.planted_bug {
            cmd.push_str(" --planted-bug");
        }
        cmd
    }

    /// Reads a command line as printed by [`Self::replay_command`] (the leading
    /// `shoal sim` is optional; `--trace FILE` is also read). Flags not given keep the
    /// defaults of [`Self::new`]; `--seed` is required.
    pub fn from_command_line(cmd: &str) -> Result<Self, OptionsError> {
        let bad = |why: String| OptionsError::BadCommandLine(why);
        let mut words = cmd.split_whitespace().peekable();
        if words.peek() == Some(&"shoal") {
            words.next();
        }
        if words.peek() == Some(&"sim") {
            words.next();
        }
        let mut seed = None;
        let mut opts = Self::new(0);
        while let Some(flag) = words.next() {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if name == "--planted-bug" {
                opts.planted_bug = true;
                continue;
            }
            if name == "--services" || name == "--planted-services-bug" {
                return Err(bad(format!("`{name}` is gone: services run in whole mode (`--whole`), on the real state machine and controller")));
            }
            if name == "--raft" {
                opts.raft = true;
                continue;
            }
            if name == "--whole" {
                opts.raft = true;
                opts.whole = true;
                continue;
            }

            let value = match inline {
                Some(v) => v,
                None => words.next().ok_or_else(|| bad(format!("`{name}` needs a value")))?.to_string(),
            };
            match name {
                "--seed" => seed = Some(value.parse::<u64>().map_err(|_| bad(format!("seed `{value}` is not a u64")))?),
                "--nodes" => {
                    opts.nodes = Some(value.parse::<usize>().map_err(|_| bad(format!("node count `{value}` is not a number")))?)
                }
                "--duration" => opts.duration_ms = parse_duration(&value)?,
                "--faults" => opts.faults = FaultSet::parse(&value)?,
                "--trace" => opts.trace = Some(PathBuf::from(value)),
                "--planted-raft-bug" => {
                    let bug = RaftBug::parse(&value);
                    opts.planted_raft_bug = Some(bug.ok_or_else(|| bad(format!("unknown planted raft bug `{value}`: {}", RaftBug::names())))?);
                }
                other => return Err(bad(format!("unknown flag `{other}`"))),
            }
        }
        opts.seed = seed.ok_or_else(|| bad("`--seed` is required".to_string()))?;
        opts.validate()?;
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_sets_parse_and_print_canonically() {
        assert_eq!(FaultSet::parse("all"), Ok(FaultSet::all()));
        assert_eq!(FaultSet::parse("none"), Ok(FaultSet::none()));
        let s = FaultSet::parse(" loss , crash,late-join").expect("parse");
        assert_eq!(s.to_string(), "crash,loss,late-join");
        assert_eq!(FaultSet::parse(&s.to_string()), Ok(s));
        assert_eq!(FaultSet::all().to_string(), "crash,partition,loss,delay,leave,late-join,intruder,insider");
        assert_eq!(FaultSet::parse("crash,flood"), Err(OptionsError::UnknownFault("flood".into())));
        assert!(OptionsError::UnknownFault("flood".into()).to_string().contains("late-join"));
        assert_eq!(FaultSet::parse(""), Err(OptionsError::EmptyFaults));
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("1500ms"), Ok(1_500));
        for bad in ["", "10", "m", "10 x", "10d", "1.5m", "-1s"] {
            assert!(matches!(parse_duration(bad), Err(OptionsError::BadDuration(_))), "{bad:?} accepted");
        }
        assert!(matches!(parse_duration("10ms"), Err(OptionsError::DurationOutOfRange(_))));
        assert!(matches!(parse_duration("200h"), Err(OptionsError::DurationOutOfRange(_))));
        assert!(matches!(parse_duration("99999999999999999h"), Err(OptionsError::DurationOutOfRange(_))));
        for ms in [1_000, 90_000, 600_000, 3_600_000, 5_400_000, 1_500, 3_601_000] {
            assert_eq!(parse_duration(&format_duration(ms)), Ok(ms), "{ms}");
        }
        assert_eq!(format_duration(5_400_000), "1h30m");
    }

    #[test]
    fn replay_command_round_trips() {
        let mut o = SimOptions::new(42);
        o.duration_ms = 300_000;
        o.faults = FaultSet::parse("crash,leave").expect("faults");
        o.planted_bug = true;
        let cmd = o.replay_command(5);
        assert_eq!(cmd, "shoal sim --seed 42 --nodes 5 --duration 5m --faults crash,leave --planted-bug");
        let back = SimOptions::from_command_line(&cmd).expect("parse");
        assert_eq!(back, SimOptions { nodes: Some(5), ..o });
        assert!(SimOptions::from_command_line("shoal sim --nodes 3").is_err());
        assert!(SimOptions::from_command_line("--seed 1 --bogus 2").is_err());
        assert_eq!(SimOptions::from_command_line("--seed 1 --nodes 0"), Err(OptionsError::NodesOutOfRange(0)));
    }

    #[test]
    fn the_removed_services_mode_is_named_with_where_services_went() {
        for cmd in ["--seed 1 --services", "--seed 1 --planted-services-bug stale-containers"] {
            let Err(OptionsError::BadCommandLine(why)) = SimOptions::from_command_line(cmd) else { panic!("{cmd} parsed") };
            assert!(why.contains("is gone") && why.contains("--whole"), "{why}");
        }
    }

    #[test]
    fn raft_flags_round_trip() {
        let mut o = SimOptions::new(9);
        o.raft = true;
        o.faults = FaultSet::parse("crash,loss").expect("faults");
        o.planted_raft_bug = Some(RaftBug::UnsyncedFlush);
        let cmd = o.replay_command(3);
        assert_eq!(cmd, "shoal sim --raft --seed 9 --nodes 3 --duration 10m --faults crash,loss --planted-raft-bug unsynced-flush");
        assert_eq!(SimOptions::from_command_line(&cmd), Ok(SimOptions { nodes: Some(3), ..o }));
        // Membership-only faults are dropped from a Raft replay command.
        let all = SimOptions { raft: true, planted_raft_bug: None, ..SimOptions::new(1) };
        assert!(all.replay_command(5).ends_with("--faults crash,partition,loss,delay"), "{}", all.replay_command(5));
    }
}
