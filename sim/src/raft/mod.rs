//! The Raft mode (`shoal sim --raft`): N real openraft nodes (shoal's `TypeConfig`,
//! `ShoalRuntime`, shoal's state machine) on one current-thread tokio runtime with paused
//! time, over a simulated network ([`net`]) and simulated disks that lose what was not synced
//! ([`store`]), with faults and a client driven from the seed and checkers ([`invariants`])
//! watching every vote, apply and acknowledgement.
//!
//! Timeline: boot all nodes, node 0 initializes the cluster with all of them as voters; the
//! **fault phase** (crashes and restarts with or without the unsynced writes, leader kills,
//! power outages, partitions that may isolate the leader, loss and delay storms, slow disks);
//! then the **heal phase** ([`RAFT_HEAL_MS`]): every fault stops, crashed nodes boot, the
//! client stops writing [`CLIENT_QUIET_MS`] before the end, and at the end the cluster must
//! have one leader, the same last applied index everywhere, and every acknowledged write.
//!
//! Opt-in: the membership simulation (`crate::run`) is untouched and its traces unchanged.

mod invariants;
pub(crate) mod net;
mod report;
pub(crate) mod store;
pub(crate) mod world;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::RngExt;
use shoal_consensus::openraft::async_runtime::WatchReceiver;
use shoal_consensus::openraft::error::ClientWriteError;
use shoal_consensus::openraft::error::RaftError;
use shoal_consensus::openraft::Config;
use shoal_consensus::openraft::ServerState;
use shoal_consensus::openraft::SnapshotPolicy;
use shoal_consensus::runtime;
use shoal_consensus::types::ShoalRaft;
use shoal_consensus::Applied;
use shoal_consensus::Command;
use shoal_consensus::NodeRecord;
use shoal_consensus::RaftNodeId;
use shoal_consensus::ShoalNode;
use shoal_wire::NodeId;

pub use report::RaftReport;
pub use crate::whole::WholeCounts;
pub use world::{RpcCounts, WriteCounts};

use crate::options::{raft_faults, FaultKind, SimOptions};
use crate::rng::{stream, stream_seed, Stream};
use crate::trace::Trace;
use invariants::heal_convergence::FinalView;
use invariants::Checks;
use store::Disk;
use store::SimStateMachine;
use world::{node_id, Shared, World};

pub(crate) type Raft = ShoalRaft<SimStateMachine>;

/// The heal phase: the last minute of a run (or its second half, if shorter).
pub const RAFT_HEAL_MS: u64 = 60_000;
/// The client's last write is this long before the end, so the cluster can settle.
pub const CLIENT_QUIET_MS: u64 = 20_000;
/// How long the client waits for a write before counting it as unknown.
const WRITE_TIMEOUT_MS: u64 = 5_000;
/// How often the driver samples every node's metrics.
const TICK_MS: u64 = 100;
/// Node counts drawn from the seed when `--nodes` is not given.
const DEFAULT_NODES: std::ops::RangeInclusive<usize> = 3..=5;

/// Node count of a Raft run: `--nodes`, or 3 to 5 from the seed.
pub fn raft_nodes(opts: &SimOptions) -> usize {
    opts.nodes.unwrap_or_else(|| stream(opts.seed, Stream::RaftPlan).random_range(DEFAULT_NODES))
}

/// shoal's Raft timing (the node's defaults: heartbeat 150 ms, election 800–1600 ms), with
/// snapshots every 64 entries so that compaction, purge and snapshot install happen.
fn config() -> Arc<Config> {
    let config = shoal_consensus::types::with_safety(Config {
        cluster_name: "shoal-sim".into(),
        heartbeat_interval: 150,
        election_timeout_min: 800,
        election_timeout_max: 1_600,
        install_snapshot_timeout: 30_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(64),
        max_in_snapshot_log_to_keep: 16,
        ..Default::default()
    });
    Arc::new(config.validate().expect("the simulator's Raft config is valid"))
}

fn node_info(slot: usize) -> ShoalNode {
    // The node's one port (gossip over UDP, Raft and joins over TCP), as in whole mode.
    ShoalNode::new(format!("n{slot}"), ([10, 0, 0, slot as u8 + 1], 7946).into())
}

thread_local! {
    /// Panics on this thread since the run began (node tasks run on the runtime's thread).
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A panic hook, installed once, that also records each panic in [`PANICS`] of the panicking
/// thread: tokio catches a panic in a spawned task and the run goes on, so without this an
/// openraft `debug_assert` or a bug in a node task would only be printed.
fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info.to_string().lines().take(2).collect::<Vec<_>>().join(": ");
            let _ = PANICS.try_with(|p| p.borrow_mut().push(text));
            previous(info);
        }));
    });
}

/// Panics since the last call become violations (checked every tick, so the time is
/// within [`TICK_MS`] of the panic).
fn record_panics(w: &mut World, now: u64) {
    for panic in PANICS.with(|p| std::mem::take(&mut *p.borrow_mut())) {
        let key = format!("panic {}", w.checks.distinct());
        w.trace.line(now, "check", format_args!("PANIC {panic}"));
        w.checks.violation(key, now, format!("a task panicked: {panic}"));
    }
}

/// Runs one seed of the Raft mode.
pub fn run(opts: &SimOptions) -> RaftReport {
    count_panics();
    PANICS.with(|p| p.borrow_mut().clear());
    let wall = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread tokio runtime");
    let driver_seed = stream_seed(opts.seed, Stream::RaftPlan);
    let mut report = rt.block_on(runtime::with_seed(driver_seed, drive(opts.clone())));
    drop(rt);
    report.wall_ms = wall.elapsed().as_millis() as u64;
    report
}

#[derive(Debug)]
pub(crate) enum Action {
    Tick,
    /// Whole mode: the late joiner boots.
    LateBoot(usize),
    /// Whole mode: the leader's duties, the agents, the mDNS stand-in, the intruder.
    Duties,
    Agents,
    LanRefresh,
    Intruder,
    /// Whole mode: the insider forwards a manager's write.
    Insider,
    /// Whole mode: a membership timer, a gossip datagram arriving.
    Gossip { slot: usize, epoch: u32, timer: shoal_discovery::membership::MemberTimer },
    Datagram { from: usize, to: usize, epoch: u32, packet: Vec<u8> },
    NextFault,
    Restart(usize),
    Uncut(u64),
    EndLoss(u64),
    EndDelay(u64),
    Heal,
    ClientStop,
    End,
}

pub(crate) struct Driver {
    pub(crate) opts: SimOptions,
    pub(crate) nodes: usize,
    pub(crate) world: Shared,
    pub(crate) disks: Vec<Disk>,
    pub(crate) boots: Vec<u16>,
    pub(crate) faults: StdRng,
    pub(crate) agenda: BTreeMap<(u64, u64), Action>,
    pub(crate) seq: u64,
    pub(crate) healed: bool,
    /// Ids of the current loss and delay storms (a newer storm replaces an older one).
    pub(crate) storm_ids: (u64, u64),
    pub(crate) config: Arc<Config>,
}

async fn drive(opts: SimOptions) -> RaftReport {
    // Entropy source: tokio's timer wheel counts whole ms from the instant its driver was
    // built, and the paused clock starts a little (a real, varying sub-ms) later. A timer set
    // before the clock first moves would round differently from run to run. One sleep moves
    // the clock onto a whole ms of the wheel; everything starts after it.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let nodes = raft_nodes(&opts);
    let faults = if opts.whole { opts.faults } else { raft_faults(opts.faults) };
    let whole = opts.whole.then(|| crate::whole::Whole::new(opts.seed, nodes, opts.planted_raft_bug));
    let trace = match &opts.trace {
        Some(path) => Trace::to_file(path),
        None => Trace::off(),
    };
    let world = Shared::new(World {
        trace,
        checks: Checks::default(),
        leaders: Default::default(),
        committed: Default::default(),
        prefix: invariants::state_is_prefix::StateIsPrefix::new(nodes),
        rafts: vec![None; nodes],
        epochs: vec![0; nodes],
        incarnations: vec![0; nodes],
        cuts: BTreeMap::new(),
        loss_rate: 0.0,
        delay_storm_ms: 0,
        net_rng: stream(opts.seed, Stream::RaftNetwork),
        link_seed: stream_seed(opts.seed, Stream::RaftNetwork),
        rpcs: RpcCounts::default(),
        faults: BTreeMap::new(),
        elections: 0,
        leader_changes: 0,
        last_leader: None,
        believed_leader: 0,
        client_stopped: false,
        writes: WriteCounts::default(),
        acked: BTreeMap::new(),
        whole,
    });
    {
        let mut w = world.lock();
        let head = format!(
            "shoal sim {}: seed {} nodes {nodes} duration {} faults {faults} heal {} ms{}",
            if opts.whole { "--whole" } else { "--raft" },
            opts.seed,
            crate::format_duration(opts.duration_ms),
            heal_ms(&opts),
            opts.planted_raft_bug.map(|b| format!(" planted bug {}", b.name())).unwrap_or_default()
        );
        w.trace.raw(&head);
        if let Some(wh) = &w.whole {
            let plan = format!("#{}", wh.plan);
            w.trace.raw(&plan);
        }
    }
    let disks = (0..nodes).map(|slot| Disk::new(stream(opts.seed, Stream::RaftDisk { slot }), opts.planted_raft_bug)).collect();
    let d = Driver {
        faults: stream(opts.seed, Stream::RaftFaults),
        opts: SimOptions { faults, ..opts },
        nodes,
        world: world.clone(),
        disks,
        boots: vec![0; nodes],
        agenda: BTreeMap::new(),
        seq: 0,
        healed: false,
        storm_ids: (0, 0),
        config: config(),
    };
    d.run().await
}

fn heal_ms(opts: &SimOptions) -> u64 {
    RAFT_HEAL_MS.min(opts.duration_ms / 2)
}

impl Driver {
    pub(crate) fn at(&mut self, t: u64, a: Action) {
        self.seq += 1;
        self.agenda.insert((t, self.seq), a);
    }

    pub(crate) fn fault_end_ms(&self) -> u64 {
        self.opts.duration_ms - heal_ms(&self.opts)
    }

    /// The node id of `slot`: a fixed test key's in whole mode (ids are key hashes there).
    fn id(&self, slot: usize) -> NodeId {
        if self.opts.whole {
            crate::whole::whole_id(slot)
        } else {
            node_id(slot)
        }
    }

    async fn run(mut self) -> RaftReport {
        if self.opts.whole {
            self.whole_setup();
        }
        for slot in 0..self.nodes {
            if self.boots_at_start(slot) {
                self.boot(slot).await;
            }
        }
        // Whole mode: n0 initializes alone, as the node's bootstrap does; the others join.
        let founders = if self.opts.whole { 1 } else { self.nodes };
        let members: BTreeMap<RaftNodeId, ShoalNode> = (0..founders).map(|s| (RaftNodeId(self.id(s)), node_info(s))).collect();
        if let Some(r) = self.world.raft(0) {
            if let Err(e) = r.initialize(members).await {
                self.violation("init".into(), format!("initialize failed: {e}"));
            }
        }
        let pace = if self.opts.whole { 1_000..=3_000 } else { 50..=500 };
        tokio::spawn(client(self.world.clone(), self.nodes, stream(self.opts.seed, Stream::RaftClient), pace));

        let end = self.opts.duration_ms;
        self.at(TICK_MS, Action::Tick);
        if !self.opts.faults.is_empty() {
            let first = self.faults.random_range(1_000..=10_000u64);
            self.at(first, Action::NextFault);
        }
        self.at(self.fault_end_ms(), Action::Heal);
        self.at(end.saturating_sub(CLIENT_QUIET_MS).max(self.fault_end_ms()), Action::ClientStop);
        self.at(end, Action::End);
        while let Some(((t, _), action)) = self.agenda.pop_first() {
            tokio::time::sleep_until(self.world.start() + Duration::from_millis(t)).await;
            match action {
                Action::Tick => {
                    self.sample();
                    if t + TICK_MS < end {
                        self.at(t + TICK_MS, Action::Tick);
                    }
                }
                Action::NextFault => {
                    if !self.healed {
                        self.fault(t).await;
                        let next = t + self.faults.random_range(1_000..=10_000u64);
                        if next < self.fault_end_ms() {
                            self.at(next, Action::NextFault);
                        }
                    }
                }
                Action::Restart(slot) => {
                    if self.world.raft(slot).is_none() && self.may_boot(slot) {
                        self.boot(slot).await;
                    }
                }
                Action::LateBoot(slot) => {
                    if self.world.raft(slot).is_none() && self.may_boot(slot) {
                        self.world.count_fault("late-join");
                        self.boot(slot).await;
                    }
                }
                Action::Duties => {
                    self.duties_tick();
                    if t + crate::whole::DUTY_TICK_MS < end {
                        self.at(t + crate::whole::DUTY_TICK_MS, Action::Duties);
                    }
                }
                Action::Agents => {
                    self.switch_off_revoked().await;
                    self.agents_tick();
                    if t + crate::whole::AGENT_TICK_MS < end {
                        self.at(t + crate::whole::AGENT_TICK_MS, Action::Agents);
                    }
                }
                Action::LanRefresh => {
                    self.lan_refresh();
                    if t + crate::whole::LAN_REFRESH_MS < end {
                        self.at(t + crate::whole::LAN_REFRESH_MS, Action::LanRefresh);
                    }
                }
                Action::Intruder => {
                    if !self.healed {
                        self.intruder_attempt();
                        let next = t + self.faults.random_range(2_000..=8_000u64);
                        self.at(next, Action::Intruder);
                    }
                }
                Action::Insider => {
                    if !self.healed {
                        if let Some(next) = self.insider_attempt() {
                            self.at(t + next, Action::Insider);
                        }
                    }
                }
                Action::Gossip { slot, epoch, timer } => self.gossip_timer(slot, epoch, timer),
                Action::Datagram { from, to, epoch, packet } => self.datagram(from, to, epoch, &packet),
                Action::Uncut(id) => {
                    if self.world.lock().cuts.remove(&id).is_some() {
                        self.world.trace("net", || format!("heal cut #{id}"));
                    }
                }
                Action::EndLoss(id) => {
                    if self.storm_ids.0 == id {
                        self.world.lock().loss_rate = 0.0;
                        self.world.trace("net", || "loss storm ends".into());
                    }
                }
                Action::EndDelay(id) => {
                    if self.storm_ids.1 == id {
                        self.world.lock().delay_storm_ms = 0;
                        self.world.trace("net", || "delay storm ends".into());
                    }
                }
                Action::Heal => self.heal().await,
                Action::ClientStop => {
                    self.world.lock().client_stopped = true;
                    self.world.trace("client", || "stops writing".into());
                }
                Action::End => break,
            }
        }
        self.finish().await
    }

    fn violation(&self, key: String, what: String) {
        let now = self.world.now_ms();
        self.world.lock().checks.violation(key, now, what);
    }

    async fn boot(&mut self, slot: usize) {
        let boot = self.boots[slot];
        self.boots[slot] = boot.wrapping_add(1);
        let (log, sm) = self.disks[slot].open(self.world.clone(), slot);
        let epoch = self.disks[slot].epoch();
        {
            let mut w = self.world.lock();
            w.epochs[slot] = epoch;
            w.prefix.booted(slot);
        }
        let net = net::SimNet { from: slot, world: self.world.clone() };
        let seed = stream_seed(self.opts.seed, Stream::RaftNode { slot, boot });
        let started = runtime::with_seed(seed, Raft::new(RaftNodeId(self.id(slot)), self.config.clone(), net, log, sm)).await;
        match started {
            Ok(raft) => {
                let mut w = self.world.lock();
                w.incarnations[slot] += 1;
                w.rafts[slot] = Some(raft);
                drop(w);
                self.world.trace(&format!("n{slot}"), || format!("boot #{boot}"));
                if self.opts.whole {
                    self.whole_boot(slot);
                }
            }
            Err(e) => self.violation(format!("start n{slot}"), format!("n{slot} failed to start from its disk: {e}")),
        }
    }

    pub(crate) async fn crash(&mut self, slot: usize, lose_unsynced: bool, why: &str) -> bool {
        let raft = {
            let mut w = self.world.lock();
            let Some(raft) = w.rafts[slot].take() else { return false };
            w.incarnations[slot] += 1;
            raft
        };
        let loss = self.disks[slot].crash(lose_unsynced);
        if self.opts.whole {
            self.whole_crash(slot, lose_unsynced);
        }
        self.world.trace(&format!("n{slot}"), || {
            if lose_unsynced {
                format!("CRASH ({why}, power cut: {} unsynced entries lost{})", loss.entries_lost, if loss.committed_lost { ", committed id lost" } else { "" })
            } else {
                format!("CRASH ({why}, process killed: unsynced writes kept)")
            }
        });
        if tokio::time::timeout(Duration::from_secs(30), raft.shutdown()).await.is_err() {
            self.violation(format!("shutdown n{slot}"), format!("n{slot}'s Raft did not shut down within 30 s"));
        }
        true
    }

    fn leader(&self) -> Option<usize> {
        let w = self.world.lock();
        (0..self.nodes).find(|s| w.rafts[*s].as_ref().is_some_and(|r| r.metrics().borrow_watched().state == ServerState::Leader))
    }

    /// Samples every running node's metrics: a node in state `Leader` leads its current term.
    fn sample(&self) {
        let now = self.world.now_ms();
        let mut w = self.world.lock();
        record_panics(&mut w, now);
        let seen: Vec<(usize, u64)> = (0..self.nodes)
            .filter_map(|s| {
                let r = w.rafts[s].as_ref()?;
                let m = r.metrics().borrow_watched().clone();
                (m.state == ServerState::Leader).then_some((s, m.current_term))
            })
            .collect();
        let World { checks, leaders, .. } = &mut *w;
        for (slot, term) in seen {
            leaders.observe(checks, now, term, slot, &format!("n{slot}'s metrics"));
        }
    }

    async fn fault(&mut self, t: u64) {
        // The insider acts on its own schedule (`Action::Insider`), not as a drawn fault.
        let kinds: Vec<FaultKind> = self.opts.faults.iter().filter(|k| *k != FaultKind::Insider).collect();
        if kinds.is_empty() {
            return;
        }
        let kind = kinds[self.faults.random_range(0..kinds.len())];
        // Every fault makes the same draws, so the schedule does not depend on the state.
        let victim = self.faults.random_range(0..self.nodes);
        let variant = self.faults.random_range(0..100u32);
        let length_ms = self.faults.random_range(1_000..=30_000u64);
        let flag = self.faults.random_bool(0.5);
        let other = self.faults.random_range(0..self.nodes);
        let mask: u64 = self.faults.random();
        match kind {
            FaultKind::Crash if self.opts.whole && variant >= 85 => self.container_crash(victim, mask),
            FaultKind::Crash => {
                if variant < 10 {
                    // Power outage: every machine loses power; each comes back 1–10 s later.
                    self.world.count_fault("power-outage");
                    for slot in 0..self.nodes {
                        if self.crash(slot, true, "power outage").await {
                            let back = t + 1_000 + (mask.rotate_right((slot % 8 * 8) as u32) & 0xff) * 9_000 / 255;
                            self.at(back, Action::Restart(slot));
                        }
                    }
                    return;
                }
                let leader = self.leader();
                let (slot, why) = match leader {
                    Some(l) if variant < 55 => (l, "leader kill"),
                    _ => (victim, "crash"),
                };
                if self.crash(slot, flag, why).await {
                    self.world.count_fault(if why == "leader kill" { "leader-kill" } else { "crash" });
                    self.world.count_fault(if flag { "crash-lost-unsynced" } else { "crash-kept-unsynced" });
                    self.at(t + length_ms / 2 + 500, Action::Restart(slot));
                }
            }
            FaultKind::Partition => {
                let mut links = BTreeSet::new();
                let all = 0..self.nodes;
                let (name, text) = if variant < 35 {
                    let l = self.leader().unwrap_or(victim);
                    for o in all.clone().filter(|o| *o != l) {
                        links.insert((l, o));
                        links.insert((o, l));
                    }
                    ("partition-leader", format!("isolate leader n{l}"))
                } else if variant < 55 {
                    for o in all.clone().filter(|o| *o != victim) {
                        links.insert((victim, o));
                        links.insert((o, victim));
                    }
                    ("partition-node", format!("isolate n{victim}"))
                } else if variant < 80 {
                    let side: Vec<usize> = all.clone().filter(|s| mask >> s & 1 == 1).collect();
                    for a in &side {
                        for b in all.clone().filter(|b| !side.contains(b)) {
                            links.insert((*a, b));
                            links.insert((b, *a));
                        }
                    }
                    ("partition-split", format!("split {side:?} from the rest"))
                } else if victim != other {
                    links.insert((victim, other));
                    ("partition-one-way", format!("cut n{victim} -> n{other} (one way)"))
                } else {
                    for o in all.clone().filter(|o| *o != victim) {
                        links.insert((victim, o));
                    }
                    ("partition-mute", format!("n{victim} cannot send"))
                };
                if links.is_empty() {
                    return;
                }
                self.world.count_fault(name);
                self.seq += 1;
                let id = self.seq;
                self.world.lock().cuts.insert(id, links);
                self.world.trace("net", || format!("CUT #{id}: {text} for {length_ms} ms"));
                self.at(t + length_ms, Action::Uncut(id));
            }
            FaultKind::Loss => {
                let rate = 0.05 + f64::from(variant) / 100.0 * 0.35;
                self.world.count_fault("loss-storm");
                self.seq += 1;
                self.storm_ids.0 = self.seq;
                self.world.lock().loss_rate = rate;
                self.world.trace("net", || format!("LOSS storm {:.0}% for {length_ms} ms", rate * 100.0));
                self.at(t + length_ms, Action::EndLoss(self.storm_ids.0));
            }
            FaultKind::Delay => {
                if flag {
                    self.world.count_fault("slow-disk");
                    self.disks[victim].slow_down(t + length_ms);
                    self.world.trace(&format!("n{victim}"), || format!("SLOW DISK for {length_ms} ms"));
                } else {
                    let extra = 20 + u64::from(variant) * 4;
                    self.world.count_fault("delay-storm");
                    self.seq += 1;
                    self.storm_ids.1 = self.seq;
                    self.world.lock().delay_storm_ms = extra;
                    self.world.trace("net", || format!("DELAY storm up to +{extra} ms for {length_ms} ms"));
                    self.at(t + length_ms, Action::EndDelay(self.storm_ids.1));
                }
            }
            FaultKind::Leave if self.opts.whole => self.revoke_one(victim),
            FaultKind::Leave | FaultKind::LateJoin | FaultKind::Intruder | FaultKind::Insider => {}
        }
    }

    async fn heal(&mut self) {
        self.healed = true;
        {
            let mut w = self.world.lock();
            w.cuts.clear();
            w.loss_rate = 0.0;
            w.delay_storm_ms = 0;
        }
        for disk in &self.disks {
            disk.slow_down(0);
        }
        self.world.trace("sim", || "HEAL: faults stop".into());
        for slot in 0..self.nodes {
            if self.world.raft(slot).is_none() && self.may_boot(slot) {
                self.boot(slot).await;
            }
        }
    }

    async fn finish(mut self) -> RaftReport {
        let now = self.world.now_ms();
        let mut views = Vec::new();
        let mut states = Vec::new();
        for slot in 0..self.nodes {
            let Some(raft) = self.world.raft(slot) else { continue };
            let m = raft.metrics().borrow_watched().clone();
            let state = raft.with_state_machine(|sm: &mut SimStateMachine| Box::pin(async move { sm.state().clone() })).await;
            views.push(FinalView {
                slot,
                is_leader: m.state == ServerState::Leader,
                term: m.current_term,
                leader: m.current_leader.map(|l| world::slot_of(&l.0)),
                last_applied: m.last_applied.map(|l| l.index),
            });
            if let Ok(state) = state {
                states.push((slot, state));
            }
        }
        if self.opts.whole {
            let state = crate::whole::leader_state(&self.world, self.nodes).await;
            self.whole_finish(state.as_ref());
        }
        record_panics(&mut self.world.lock(), now);
        let acked: BTreeMap<u64, NodeId> = self.world.lock().acked.clone();
        {
            let mut w = self.world.lock();
            let checks = &mut w.checks;
            invariants::heal_convergence::check(checks, now, &views);
            for (slot, state) in &states {
                invariants::acked_writes_kept::check(checks, now, *slot, state, &acked);
            }
            if !checks.check(runtime::unseeded_draws() == 0) {
                checks.violation("unseeded".into(), now, format!("openraft drew randomness outside a seed ({} draws)", runtime::unseeded_draws()));
            }
            for v in &views {
                w.trace.line(now, &format!("n{}", v.slot), format_args!("final: leader {:?} term {} last applied {:?}", v.leader, v.term, v.last_applied));
            }
        }
        for slot in 0..self.nodes {
            if let Some(raft) = self.world.raft(slot) {
                let _ = tokio::time::timeout(Duration::from_secs(5), raft.shutdown()).await;
            }
        }
        report::build(&self.opts, self.nodes, &self.world)
    }
}

fn write_id(k: u64) -> NodeId {
    let mut b = [0u8; 16];
    b[0] = 0xC1;
    b[8..].copy_from_slice(&k.to_be_bytes());
    NodeId(b)
}

fn write_command(k: u64) -> Command {
    Command::RegisterNode {
        id: write_id(k),
        record: NodeRecord { name: format!("w{k}"), addr: ([10, 2, 0, 1], 7481).into(), labels: BTreeMap::new() },
    }
}

/// The client: every 50–500 ms, proposes a new write (`RegisterNode` named `w<k>`) to the node
/// it believes leads, without waiting for the previous one. A write is *acknowledged* when
/// `client_write` returns the state machine's answer; refused ones (forward to leader) move
/// the client's belief; ones without an answer in 5 s are unknown (they may still commit).
async fn client(world: Shared, nodes: usize, mut rng: StdRng, pace: std::ops::RangeInclusive<u64>) {
    let mut k = 0u64;
    loop {
        let pause = rng.random_range(pace.clone());
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if world.lock().client_stopped {
            return;
        }
        k += 1;
        let target = world.lock().believed_leader;
        world.lock().writes.proposed += 1;
        world.trace("client", || format!("propose w{k} to n{target}"));
        tokio::spawn(write(world.clone(), nodes, k, target));
    }
}

async fn write(world: Shared, nodes: usize, k: u64, target: usize) {
    let cmd = write_command(k);
    let Some(raft) = world.raft(target) else {
        let mut w = world.lock();
        w.writes.refused += 1;
        w.believed_leader = (target + 1) % nodes;
        return;
    };
    let outcome = tokio::time::timeout(Duration::from_millis(WRITE_TIMEOUT_MS), raft.client_write(cmd.clone())).await;
    let now = world.now_ms();
    let mut w = world.lock();
    match outcome {
        Ok(Ok(resp)) => {
            let ok = matches!(resp.data, Ok(Applied::NodeRegistered { new: true }));
            let World { checks, committed, .. } = &mut *w;
            if !checks.check(ok) {
                checks.violation(format!("answer w{k}"), now, format!("write w{k} (a new name) was answered {:?}", resp.data));
            }
            committed.acked(checks, now, k, resp.log_id, &format!("{cmd:?}"));
            w.writes.acked += 1;
            w.acked.insert(k, write_id(k));
            w.trace.line(now, "client", format_args!("ACK w{k} at {} t{} from n{target}", resp.log_id.index, resp.log_id.leader_id.term));
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            w.writes.refused += 1;
            let hint = f.leader_id.map(|l| world::slot_of(&l.0));
            w.believed_leader = hint.unwrap_or((target + 1) % nodes);
            w.trace.line(now, "client", format_args!("w{k} refused by n{target}: forward to {:?}", hint));
        }
        Ok(Err(e)) => {
            w.writes.failed += 1;
            w.believed_leader = (target + 1) % nodes;
            let text = short_error(&e.to_string());
            w.trace.line(now, "client", format_args!("w{k} failed at n{target}: {text}"));
        }
        Err(_) => {
            w.writes.unknown += 1;
            w.believed_leader = (target + 1) % nodes;
            w.trace.line(now, "client", format_args!("w{k} unknown: no answer from n{target} in {WRITE_TIMEOUT_MS} ms"));
        }
    }
}

/// The first line of an error, without anything that could hold a wall-clock time.
pub(crate) fn short_error(text: &str) -> String {
    text.lines().next().unwrap_or("").chars().take(120).collect()
}
