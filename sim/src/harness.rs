//! The harness: N membership cores and an intruder on one thread, an ordered event queue on
//! simulated time, the network and LAN models, the fault schedule and the checkers.
//!
//! **Determinism:** the queue is a `BTreeMap` keyed by `(time_ms, seq)`, every map is
//! ordered, every random draw comes from a named stream of the seed ([`crate::rng`]), and
//! the only clock read is the wall time reported at the end.

use crate::invariants::graceful_leave::LeftIsLeft;
use crate::invariants::{Checkers, Snapshot, Violations};
use crate::net::{DropReason, Fate, Network};
use crate::node::{slot_addr, Slot, Status};
use crate::options::{FaultKind, SimOptions};
use crate::plan::{SimPlan, CHECK_INTERVAL_MS, CONVERGENCE_BOUND_MS, LEAVE_SETTLE_MS};
use crate::report::{MessageCounts, SimReport};
use crate::rng::{stream, Stream};
use crate::trace::{CoreLogs, Trace};
use foca::Timer;
use rand::rngs::StdRng;
use rand::RngExt;
use shoal_discovery::membership::{Effect, MemberTimer, LEAVE_ATTEMPTS, LEAVE_RETRY_MS};
use shoal_discovery::{GossipStats, JoinSecret};
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// Simulated time 0 is this wall-clock instant (ms since the Unix epoch) for the cores:
/// sealed datagrams carry it, and the replay window needs a realistic clock.
pub const EPOCH_MS: u64 = 1_764_000_000_000;
/// Datagrams the intruder keeps from sniffing, to replay (oldest dropped first).
const SNIFF_BUFFER: usize = 64;
/// The intruder copies about one honest datagram in this many.
const SNIFF_ONE_IN: u32 = 16;

#[derive(Debug, Clone, Copy)]
enum BootWhy {
    First,
    Late,
    Restart,
    Rejoin,
}

struct Departing {
    bump: u32,
    at_ms: u64,
    witnesses: Vec<(usize, u32)>,
    comes_back: bool,
    back: u64,
}

enum Ev {
    Boot { slot: usize, why: BootWhy },
    /// The leaving process exits even if not every `Leave` was acknowledged.
    LeaveExit { slot: usize, epoch: u32 },
    Timer { slot: usize, epoch: u32, timer: MemberTimer },
    Datagram { from: usize, to: usize, epoch: u32, packet: Vec<u8>, replay: bool },
    Hint { from: usize, to: usize, epoch: u32 },
    LanRefresh { slot: usize, epoch: u32 },
    /// Boots a crashed or departed node again, if it is still in the life it was in then.
    Return { slot: usize, epoch: u32, why: BootWhy },
    Crash,
    Leave,
    PartitionStart,
    PartitionEnd { id: u64 },
    Spike,
    IntruderReplay,
    Heal,
    Check,
}

struct Sim {
    plan: SimPlan,
    now: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    slots: Vec<Slot>,
    honest: usize,
    intruder: Option<usize>,
    by_addr: BTreeMap<SocketAddr, usize>,
    by_node: BTreeMap<NodeId, usize>,
    net: Network,
    net_rng: StdRng,
    fault_rng: StdRng,
    intruder_rng: StdRng,
    partitions: BTreeMap<u64, Vec<(usize, usize)>>,
    next_partition: u64,
    /// Departed nodes that come back when the heal starts.
    rejoin_at_heal: BTreeSet<usize>,
    /// Nodes finishing a graceful leave, with what the leave checker needs once they exit.
    leaving: BTreeMap<usize, Departing>,
    /// Slots whose mDNS announcement the LAN still carries.
    announced: BTreeSet<usize>,
    sniffed: VecDeque<Vec<u8>>,
    checkers: Checkers,
    violations: Violations,
    trace: Trace,
    /// The cores' own log lines, copied into the trace (only when tracing).
    logs: Option<CoreLogs>,
    faults: BTreeMap<String, u64>,
    messages: MessageCounts,
    replays_accepted: u64,
    honest_bytes: u64,
    mid_bytes: Option<(u64, u64)>,
}

pub(crate) fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1_000)).unwrap_or(u64::MAX)
}

fn timer_name(t: &MemberTimer) -> &'static str {
    match t {
        MemberTimer::Tick => "tick",
        MemberTimer::LeaveRetry => "leave-retry",
        MemberTimer::Foca(Timer::ProbeRandomMember(_)) => "probe",
        MemberTimer::Foca(Timer::SendIndirectProbe { .. }) => "indirect-probe",
        MemberTimer::Foca(Timer::ChangeSuspectToDown { .. }) => "suspect-to-down",
        MemberTimer::Foca(Timer::PeriodicAnnounce(_)) => "announce",
        MemberTimer::Foca(Timer::PeriodicAnnounceDown(_)) => "announce-down",
        MemberTimer::Foca(Timer::PeriodicGossip(_)) => "gossip",
        MemberTimer::Foca(Timer::RemoveDown(_)) => "remove-down",
    }
}

fn drops(s: &GossipStats) -> [u64; 6] {
    [s.dropped_forged, s.dropped_replayed, s.dropped_clock_skew, s.dropped_malformed, s.dropped_misdirected, s.foca_rejected]
}

const DROP_NAMES: [&str; 6] = ["forged", "replayed", "clock-skew", "malformed", "misdirected", "foca-rejected"];

/// Runs one simulation. `opts` must pass [`SimOptions::validate`].
pub fn run(opts: &SimOptions) -> SimReport {
    #[allow(clippy::expect_used)]
    opts.validate().expect("SimOptions::validate must pass before run()");
    // The one wall-clock read, for the report only; nothing simulated depends on it.
    let wall = std::time::Instant::now();
    let plan = SimPlan::derive(opts);
    let trace = match &opts.trace {
        Some(path) => Trace::to_file(path),
        None => Trace::off(),
    };
    let logs = trace.on().then(CoreLogs::default);
    let mut sim = Sim::new(plan, trace, logs.clone());
    match logs {
        Some(logs) => tracing::subscriber::with_default(logs.subscriber(), || sim.run()),
        None => sim.run(),
    }
    sim.into_report(opts.clone(), wall.elapsed().as_millis() as u64)
}

impl Sim {
    fn new(plan: SimPlan, mut trace: Trace, logs: Option<CoreLogs>) -> Self {
        trace.raw(&plan.to_string());
        let mut ids = stream(plan.seed, Stream::Identities);
        let secret = JoinSecret::generate(&mut ids);
        let intruder_secret = JoinSecret::generate(&mut ids);
        let mut slots = Vec::new();
        for i in 0..plan.nodes {
            let mut id = [0u8; 16];
            ids.fill(&mut id);
            let s = Slot::new(format!("n{i}"), NodeId(id), slot_addr(i, true), true, secret.clone(), secret.cluster_id());
            slots.push(s);
        }
        let mut intruder_id = [0u8; 16];
        ids.fill(&mut intruder_id);
        let honest = plan.nodes;
        let intruder = plan.faults.contains(FaultKind::Intruder).then(|| {
            let announced = if plan.intruder_spoofs_cluster_id { secret.cluster_id() } else { intruder_secret.cluster_id() };
            let mut s = Slot::new("intruder".into(), NodeId(intruder_id), slot_addr(0, false), false, intruder_secret, announced);
            s.seed_addrs = (0..honest).map(|i| slot_addr(i, true)).collect();
            slots.push(s);
            honest
        });
        let by_addr = slots.iter().enumerate().map(|(i, s)| (s.addr, i)).collect();
        let by_node = slots.iter().enumerate().map(|(i, s)| (s.node, i)).collect();
        let net = Network::new(plan.net.clone(), stream(plan.seed, Stream::Network).random());
        let checkers = Checkers::new(plan.heal_at_ms() + CONVERGENCE_BOUND_MS, intruder, LEAVE_SETTLE_MS);
        Self {
            net_rng: stream(plan.seed, Stream::Network),
            fault_rng: stream(plan.seed, Stream::Faults),
            intruder_rng: stream(plan.seed, Stream::Intruder),
            plan,
            now: 0,
            queue: BTreeMap::new(),
            seq: 0,
            slots,
            honest,
            intruder,
            by_addr,
            by_node,
            net,
            partitions: BTreeMap::new(),
            next_partition: 0,
            rejoin_at_heal: BTreeSet::new(),
            leaving: BTreeMap::new(),
            announced: BTreeSet::new(),
            sniffed: VecDeque::new(),
            checkers,
            violations: Violations::default(),
            trace,
            logs,
            faults: BTreeMap::new(),
            messages: MessageCounts::default(),
            replays_accepted: 0,
            honest_bytes: 0,
            mid_bytes: None,
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn after(&mut self, delay_ms: u64, ev: Ev) {
        self.at(self.now.saturating_add(delay_ms), ev);
    }

    fn count(&mut self, fault: &str) {
        *self.faults.entry(fault.to_string()).or_insert(0) += 1;
    }

    fn abs(&self) -> u64 {
        EPOCH_MS + self.now
    }

    fn in_fault_phase(&self, t: u64) -> bool {
        t < self.plan.heal_at_ms()
    }

    /// Around `mean_ms`: uniform in `mean/2 ..= 3*mean/2`.
    fn jittered(&mut self, mean_ms: u64) -> u64 {
        self.fault_rng.random_range(mean_ms / 2..=mean_ms * 3 / 2).max(1)
    }

    fn schedule_fault(&mut self, kind: FaultKind, mean_ms: u64, ev: Ev) {
        if !self.plan.faults.contains(kind) {
            return;
        }
        let t = self.now + self.jittered(mean_ms);
        if self.in_fault_phase(t) {
            self.at(t, ev);
        }
    }

    fn setup(&mut self) {
        let p = self.plan.clone();
        // Which honest nodes boot late: a partial shuffle, never node 0.
        let mut order: Vec<usize> = (1..self.honest).collect();
        for i in 0..order.len() {
            let j = self.fault_rng.random_range(i..order.len());
            order.swap(i, j);
        }
        let late: BTreeSet<usize> = order.into_iter().take(p.late_joiners).collect();
        for i in 0..self.honest {
            let share = self.fault_rng.random_range(0..1_000_000u64);
            let seeded = self.fault_rng.random_range(0..1_000_000u32) < p.seeded_ppm;
            if seeded && i > 0 {
                self.slots[i].seed_addrs = vec![slot_addr(0, true)];
            }
            if late.contains(&i) {
                let window = p.fault_phase_ms.saturating_sub(5_000);
                let t = (5_000 + window * share / 1_000_000).min(p.heal_at_ms());
                self.at(t, Ev::Boot { slot: i, why: BootWhy::Late });
            } else {
                self.at(share % 2_001, Ev::Boot { slot: i, why: BootWhy::First });
            }
        }
        if let Some(i) = self.intruder {
            self.at(p.intruder_from_ms, Ev::Boot { slot: i, why: BootWhy::First });
            let t = p.intruder_from_ms + p.intruder_replay_every_ms;
            self.at(t, Ev::IntruderReplay);
        }
        self.schedule_fault(FaultKind::Crash, p.crash_every_ms, Ev::Crash);
        self.schedule_fault(FaultKind::Leave, p.leave_every_ms, Ev::Leave);
        self.schedule_fault(FaultKind::Partition, p.partition_every_ms, Ev::PartitionStart);
        self.schedule_fault(FaultKind::Delay, p.net.spike_every_ms, Ev::Spike);
        self.at(p.heal_at_ms(), Ev::Heal);
        self.at(CHECK_INTERVAL_MS, Ev::Check);
    }

    fn run(&mut self) {
        self.setup();
        let end = self.plan.duration_ms;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let ((t, _), ev) = entry.remove_entry();
            self.now = t;
            self.handle(ev);
        }
        self.now = end;
        self.check();
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Boot { slot, why } => self.boot(slot, why),
            Ev::Timer { slot, epoch, timer } => {
                if !self.alive_in(slot, epoch) {
                    return;
                }
                if self.trace.on() {
                    let label = self.slots[slot].label.clone();
                    self.trace.line(self.now, &label, format_args!("timer {}", timer_name(&timer)));
                }
                let now = self.abs();
                let effects = match self.slots[slot].core.as_mut() {
                    Some(core) => core.handle_timer(now, timer),
                    None => return,
                };
                self.apply(slot, effects);
                self.finish_leave_if_done(slot);
            }
            Ev::Datagram { from, to, epoch, packet, replay } => {
                self.deliver(from, to, epoch, &packet, replay);
                self.finish_leave_if_done(to);
            }
            Ev::LeaveExit { slot, epoch } => {
                if self.slots[slot].epoch == epoch && self.slots[slot].status == Status::Leaving {
                    self.finish_leave(slot);
                }
            }
            Ev::Hint { from, to, epoch } => {
                if !self.alive_in(to, epoch) {
                    return;
                }
                self.messages.lan_hints += 1;
                let hint = self.slots[from].hint();
                if self.trace.on() {
                    let (a, b) = (self.slots[to].label.clone(), self.slots[from].label.clone());
                    self.trace.line(self.now, &a, format_args!("mdns found {b}"));
                }
                let now = self.abs();
                let effects = match self.slots[to].core.as_mut() {
                    Some(core) => core.handle_discovered(now, hint),
                    None => return,
                };
                self.apply(to, effects);
            }
            Ev::LanRefresh { slot, epoch } => {
                if !self.alive_in(slot, epoch) {
                    return;
                }
                self.announce_to_all(slot);
                let every = self.plan.net.lan_refresh_ms;
                self.after(every, Ev::LanRefresh { slot, epoch });
            }
            Ev::Return { slot, epoch, why } => {
                if self.slots[slot].epoch == epoch && !self.slots[slot].running() {
                    self.boot(slot, why);
                }
            }
            Ev::Crash => self.crash(),
            Ev::Leave => self.leave(),
            Ev::PartitionStart => self.partition(),
            Ev::PartitionEnd { id } => {
                if let Some(links) = self.partitions.remove(&id) {
                    self.net.restore_links(&links);
                    self.trace.line(self.now, "net", format_args!("partition #{id} healed"));
                }
            }
            Ev::Spike => self.spike(),
            Ev::IntruderReplay => self.intruder_replay(),
            Ev::Heal => self.heal(),
            Ev::Check => {
                self.check();
                self.after(CHECK_INTERVAL_MS, Ev::Check);
            }
        }
    }

    fn alive_in(&self, slot: usize, epoch: u32) -> bool {
        let s = &self.slots[slot];
        s.process_up() && s.epoch == epoch
    }

    // ------------------------------------------------------------------ nodes

    fn boot(&mut self, slot: usize, why: BootWhy) {
        if self.slots[slot].running() {
            return;
        }
        let (seed, n, planted, now) = (self.plan.seed, self.plan.nodes, self.plan.planted_bug, self.abs());
        let effects = self.slots[slot].boot(seed, slot, n, planted, now);
        if matches!(why, BootWhy::Late) {
            self.count("late-join");
        }
        if matches!(why, BootWhy::Restart | BootWhy::Rejoin) {
            self.count(if matches!(why, BootWhy::Restart) { "restart" } else { "rejoin" });
        }
        if self.trace.on() {
            let s = &self.slots[slot];
            let line = format!("boot ({why:?}) generation {:#x} at {}", s.bump().unwrap_or(0), s.addr).to_lowercase();
            let label = s.label.clone();
            self.trace.line(self.now, &label, format_args!("{line}"));
        }
        self.checkers.on_boot(slot);
        self.apply(slot, effects);
        // mDNS: announce to every browser, and browse what is announced.
        self.announced.insert(slot);
        self.announce_to_all(slot);
        let others: Vec<usize> = self.announced.iter().copied().filter(|a| *a != slot).collect();
        for a in others {
            self.send_hint(a, slot);
        }
        let epoch = self.slots[slot].epoch;
        let first = self.net_rng.random_range(1..=self.plan.net.lan_refresh_ms);
        self.after(first, Ev::LanRefresh { slot, epoch });
    }

    fn announce_to_all(&mut self, from: usize) {
        for to in 0..self.slots.len() {
            if to != from && self.slots[to].running() {
                self.send_hint(from, to);
            }
        }
    }

    /// An mDNS announcement of `from` reaching the browser of `to` (multicast: cut links and
    /// loss apply to it like to a datagram).
    fn send_hint(&mut self, from: usize, to: usize) {
        let fate = self.net.route(&mut self.net_rng, self.now, from, to);
        let extra = self.net_rng.random_range(1..=self.plan.net.lan_delay_ms);
        if let Fate::Arrives { delays_ms, .. } = fate {
            let epoch = self.slots[to].epoch;
            self.after(delays_ms[0] + extra, Ev::Hint { from, to, epoch });
        }
    }

    /// Carries out what a core asked for (and first copies what it logged into the trace).
    fn apply(&mut self, slot: usize, effects: Vec<Effect>) {
        if let Some(logs) = &self.logs {
            let text = logs.take();
            if !text.is_empty() {
                let label = self.slots[slot].label.clone();
                for line in String::from_utf8_lossy(&text).lines() {
                    self.trace.line(self.now, &label, format_args!("log {line}"));
                }
            }
        }
        for effect in effects {
            match effect {
                Effect::Send { to, packet } => self.send(slot, to, packet),
                Effect::Schedule { after, timer } => {
                    let epoch = self.slots[slot].epoch;
                    self.after(ceil_ms(after), Ev::Timer { slot, epoch, timer });
                }
                Effect::Event(ev) => {
                    if self.trace.on() {
                        let who = self.slots[slot].label.clone();
                        let about = self.label_of(&ev.node);
                        self.trace.line(
                            self.now,
                            &who,
                            format_args!("sees {about} {} generation {:#x}", ev.state.as_str(), ev.incarnation),
                        );
                    }
                    let new = self.checkers.on_event(self.now, &self.slots, &self.by_node, slot, &ev, &mut self.violations);
                    for v in new {
                        self.trace.line(self.now, "check", format_args!("VIOLATION {v}"));
                    }
                }
            }
        }
    }

    fn label_of(&self, node: &NodeId) -> String {
        match self.by_node.get(node) {
            Some(i) => self.slots[*i].label.clone(),
            None => node.short(),
        }
    }

    fn send(&mut self, from: usize, to_addr: SocketAddr, packet: Vec<u8>) {
        self.messages.sent += 1;
        self.messages.sent_bytes += packet.len() as u64;
        if self.slots[from].honest {
            self.honest_bytes += packet.len() as u64;
            if let Some(i) = self.intruder {
                if self.slots[i].running() && self.intruder_rng.random_range(0..SNIFF_ONE_IN) == 0 {
                    if self.sniffed.len() == SNIFF_BUFFER {
                        self.sniffed.pop_front();
                    }
                    self.sniffed.push_back(packet.clone());
                }
            }
        }
        let to = match self.by_addr.get(&to_addr) {
            Some(to) if self.slots[*to].process_up() => *to,
            _ => {
                self.dropped(from, None, DropReason::NoHost, packet.len());
                return;
            }
        };
        self.route(from, to, packet, false);
    }

    fn route(&mut self, from: usize, to: usize, packet: Vec<u8>, replay: bool) {
        match self.net.route(&mut self.net_rng, self.now, from, to) {
            Fate::Dropped(reason) => self.dropped(from, Some(to), reason, packet.len()),
            Fate::Arrives { delays_ms, reordered } => {
                let epoch = self.slots[to].epoch;
                self.messages.reordered += u64::from(reordered);
                if delays_ms.len() > 1 {
                    self.messages.duplicated += 1;
                }
                let mut packet = Some(packet);
                let n = delays_ms.len();
                for (k, d) in delays_ms.into_iter().enumerate() {
                    let p = if k + 1 == n { packet.take().unwrap_or_default() } else { packet.clone().unwrap_or_default() };
                    self.after(d, Ev::Datagram { from, to, epoch, packet: p, replay });
                }
            }
        }
    }

    fn dropped(&mut self, from: usize, to: Option<usize>, reason: DropReason, len: usize) {
        match reason {
            DropReason::Cut => self.messages.dropped_cut += 1,
            DropReason::Loss => self.messages.dropped_loss += 1,
            DropReason::NoHost => self.messages.dropped_no_host += 1,
        }
        if self.trace.on() {
            let who = self.slots[from].label.clone();
            let dest = to.map(|t| self.slots[t].label.clone()).unwrap_or_else(|| "?".into());
            self.trace.line(self.now, &who, format_args!("drop to {dest} {len}B: {}", reason.as_str()));
        }
    }

    fn deliver(&mut self, from: usize, to: usize, epoch: u32, packet: &[u8], replay: bool) {
        if !self.alive_in(to, epoch) {
            self.dropped(from, Some(to), DropReason::NoHost, packet.len());
            return;
        }
        self.messages.delivered += 1;
        let now = self.abs();
        let from_addr = self.slots[from].addr;
        let Some(core) = self.slots[to].core.as_mut() else { return };
        let before = drops(core.stats());
        let effects = core.handle_datagram(now, from_addr, packet);
        let after = drops(core.stats());
        let refused = (0..before.len()).find(|k| after[*k] != before[*k]).map(|k| DROP_NAMES[k]);
        if replay && refused.is_none() {
            self.replays_accepted += 1;
        }
        if self.trace.on() {
            let (who, src) = (self.slots[to].label.clone(), self.slots[from].label.clone());
            let what = if replay { " (replay)" } else { "" };
            match refused {
                Some(r) => self.trace.line(self.now, &who, format_args!("recv from {src} {}B{what}: refused, {r}", packet.len())),
                None => self.trace.line(self.now, &who, format_args!("recv from {src} {}B{what}", packet.len())),
            }
        }
        self.apply(to, effects);
    }

    // ------------------------------------------------------------------ faults

    fn pick(&mut self, candidates: &[usize]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.fault_rng.random_range(0..candidates.len())])
    }

    fn running_honest(&self) -> Vec<usize> {
        (0..self.honest).filter(|i| self.slots[*i].running()).collect()
    }

    fn crash(&mut self) {
        let p = self.plan.clone();
        let running = self.running_honest();
        if let Some(victim) = self.pick(&running) {
            self.count("crash");
            let label = self.slots[victim].label.clone();
            self.trace.line(self.now, &label, format_args!("CRASH"));
            self.slots[victim].stop(Status::Crashed);
            let back = self.fault_rng.random_range(p.restart_after_ms.0..=p.restart_after_ms.1);
            if self.in_fault_phase(self.now + back) {
                let epoch = self.slots[victim].epoch;
                self.after(back, Ev::Return { slot: victim, epoch, why: BootWhy::Restart });
            }
        }
        self.schedule_fault(FaultKind::Crash, p.crash_every_ms, Ev::Crash);
    }

    fn leave(&mut self) {
        let p = self.plan.clone();
        let running = self.running_honest();
        // The process keeps running until its leave is acknowledged (or retries run out),
        // like `shoal agent` on SIGTERM; then it exits.
        if let Some(l) = self.pick(&running) {
            self.count("leave");
            let witnesses = LeftIsLeft::witnesses(&self.slots, l, |a, b| !self.net.is_cut(a, b));
            let label = self.slots[l].label.clone();
            if self.trace.on() {
                let names: Vec<String> = witnesses.iter().map(|(w, _)| self.slots[*w].label.clone()).collect();
                self.trace.line(self.now, &label, format_args!("LEAVE (witnesses: {})", names.join(" ")));
            }
            let bump = self.slots[l].bump().unwrap_or(0);
            let now = self.abs();
            let effects = self.slots[l].core.as_mut().map(|c| c.leave(now)).unwrap_or_default();
            // mDNS sends its goodbye at once.
            self.slots[l].status = Status::Leaving;
            self.announced.remove(&l);
            let comes_back = self.fault_rng.random_bool(0.5);
            let back = self.fault_rng.random_range(p.rejoin_after_ms.0..=p.rejoin_after_ms.1);
            self.leaving.insert(l, Departing { bump, at_ms: self.now, witnesses, comes_back, back });
            self.apply(l, effects);
            let epoch = self.slots[l].epoch;
            let deadline = LEAVE_RETRY_MS * u64::from(LEAVE_ATTEMPTS) + 1;
            self.after(deadline, Ev::LeaveExit { slot: l, epoch });
            self.finish_leave_if_done(l);
        }
        self.schedule_fault(FaultKind::Leave, p.leave_every_ms, Ev::Leave);
    }

    fn finish_leave_if_done(&mut self, slot: usize) {
        let s = &self.slots[slot];
        if s.status == Status::Leaving && s.core.as_ref().is_some_and(|c| c.leave_done()) {
            self.finish_leave(slot);
        }
    }

    /// The leaving process exits.
    fn finish_leave(&mut self, l: usize) {
        self.slots[l].stop(Status::Left);
        let Some(d) = self.leaving.remove(&l) else { return };
        let epoch = self.slots[l].epoch;
        self.checkers.leave.record(l, epoch, d.bump, d.at_ms, d.witnesses);
        if d.comes_back {
            if self.in_fault_phase(self.now + d.back) {
                self.after(d.back, Ev::Return { slot: l, epoch, why: BootWhy::Rejoin });
            } else {
                self.rejoin_at_heal.insert(l);
            }
        }
    }

    fn partition(&mut self) {
        let p = self.plan.clone();
        let n = self.honest;
        if n >= 2 {
            let kind = self.fault_rng.random_range(0..4u32);
            let len = self.fault_rng.random_range(p.partition_len_ms.0..=p.partition_len_ms.1);
            let mut links = Vec::new();
            let what = match kind {
                0 => {
                    let mut side: Vec<bool> = (0..n).map(|_| self.fault_rng.random_bool(0.5)).collect();
                    if side.iter().all(|s| *s) || side.iter().all(|s| !*s) {
                        side[0] = !side[0];
                    }
                    for a in 0..n {
                        for b in 0..n {
                            if side[a] != side[b] {
                                links.push((a, b));
                            }
                        }
                    }
                    let group = |want: bool| -> String {
                        (0..n).filter(|i| side[*i] == want).map(|i| self.slots[i].label.clone()).collect::<Vec<_>>().join(" ")
                    };
                    format!("split [{}] | [{}]", group(true), group(false))
                }
                1 => {
                    let x = self.fault_rng.random_range(0..n);
                    for y in (0..n).filter(|y| *y != x) {
                        links.push((x, y));
                        links.push((y, x));
                    }
                    format!("isolate {}", self.slots[x].label)
                }
                2 => {
                    let x = self.fault_rng.random_range(0..n);
                    let deaf = self.fault_rng.random_bool(0.5);
                    for y in (0..n).filter(|y| *y != x) {
                        links.push(if deaf { (y, x) } else { (x, y) });
                    }
                    format!("{} {}", self.slots[x].label, if deaf { "hears nobody" } else { "reaches nobody" })
                }
                _ => {
                    let a = self.fault_rng.random_range(0..n);
                    let b = (a + self.fault_rng.random_range(1..n)) % n;
                    links.push((a, b));
                    format!("one-way {} -/-> {}", self.slots[a].label, self.slots[b].label)
                }
            };
            self.count("partition");
            let id = self.next_partition;
            self.next_partition += 1;
            self.net.cut_links(&links);
            self.partitions.insert(id, links);
            self.trace.line(self.now, "net", format_args!("partition #{id} {what} for {len}ms"));
            if self.in_fault_phase(self.now + len) {
                self.after(len, Ev::PartitionEnd { id });
            }
        }
        self.schedule_fault(FaultKind::Partition, p.partition_every_ms, Ev::PartitionStart);
    }

    fn spike(&mut self) {
        let p = self.plan.clone();
        let x = self.fault_rng.random_range(0..self.honest);
        let len = self.fault_rng.random_range(p.net.spike_len_ms / 2..=p.net.spike_len_ms);
        self.net.spike(x, self.now + len, p.net.spike_extra_ms);
        self.count("delay-spike");
        let label = self.slots[x].label.clone();
        self.trace.line(self.now, "net", format_args!("latency +{}ms on {label}'s links for {len}ms", p.net.spike_extra_ms));
        self.schedule_fault(FaultKind::Delay, p.net.spike_every_ms, Ev::Spike);
    }

    fn intruder_replay(&mut self) {
        let Some(i) = self.intruder else { return };
        let targets = self.running_honest();
        if self.slots[i].running() && !self.sniffed.is_empty() && !targets.is_empty() {
            let k = self.intruder_rng.random_range(0..self.sniffed.len());
            let to = targets[self.intruder_rng.random_range(0..targets.len())];
            let packet = self.sniffed[k].clone();
            self.count("intruder-replay");
            self.route(i, to, packet, true);
        }
        let mean = self.plan.intruder_replay_every_ms;
        let next = self.intruder_rng.random_range(mean / 2..=mean * 3 / 2).max(1);
        self.after(next, Ev::IntruderReplay);
    }

    fn heal(&mut self) {
        self.trace.line(self.now, "net", format_args!("HEAL: faults stop, links healed, crashed nodes restart"));
        self.net.heal();
        self.partitions.clear();
        for i in 0..self.honest {
            let why = match self.slots[i].status {
                Status::Crashed => BootWhy::Restart,
                Status::Left if self.rejoin_at_heal.contains(&i) => BootWhy::Rejoin,
                // Nodes not booted yet have their boot queued at the latest for now.
                Status::Waiting | Status::Left | Status::Running | Status::Leaving => continue,
            };
            self.boot(i, why);
        }
    }

    // ------------------------------------------------------------------ checks

    fn check(&mut self) {
        if self.mid_bytes.is_none() && self.now >= self.plan.duration_ms / 2 {
            self.mid_bytes = Some((self.now, self.honest_bytes));
        }
        let members = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running())
            .map(|(i, s)| (i, s.members().into_iter().map(|m| (m.id, m)).collect()))
            .collect();
        let snap = Snapshot { now_ms: self.now, slots: &self.slots, members, by_node: &self.by_node };
        let new = self.checkers.check(&snap, &mut self.violations);
        for v in new {
            self.trace.line(self.now, "check", format_args!("VIOLATION {v}"));
        }
    }

    fn into_report(self, options: SimOptions, wall_ms: u64) -> SimReport {
        let (mid_t, mid_bytes) = self.mid_bytes.unwrap_or((self.now, self.honest_bytes));
        let steady_nodes = self.running_honest().len();
        let (trace_lines, trace_error) = self.trace.finish();
        SimReport {
            options,
            faults: self.faults,
            messages: self.messages,
            checks: self.checkers.checks,
            simulated_ms: self.plan.duration_ms,
            wall_ms,
            violations: self.violations.list,
            violations_distinct: self.violations.distinct,
            intruder_replays_accepted: self.replays_accepted,
            steady_bytes: self.honest_bytes - mid_bytes,
            steady_window_ms: self.plan.duration_ms - mid_t,
            steady_nodes,
            trace_lines,
            trace_error,
            plan: self.plan,
        }
    }
}
