//! Services in the simulator (opt-in, `--services`): the real scheduler
//! (`shoal_cluster::scheduler::schedule`) and, on every honest node, the real reconciler
//! (`shoal_engine::Reconciler`) driving that machine's own `FakeEngine`.
//!
//! Raft is not simulated yet, so the replicated state is an **oracle** held here: the
//! services and the tasks in ordered maps, new task ids from a counter. The scheduler runs
//! once a second on it, with node health taken from the `members()` of a stand-in leader
//! (the lowest-id running honest node, kept while it runs, like a stable Raft leader).
//!
//! The model:
//! - every node in the oracle's node table (every honest node that ever booted) is passed
//!   to the scheduler; its health is what the leader's view says (`Alive`, `Suspect`,
//!   `Down{since}`, `Left{since}`); a node the leader has no row for is passed as
//!   `Down{since}` from the first pass of this leader that missed it (so its tasks move
//!   after the grace period, like a node seen down; passing only `members()` would make the
//!   scheduler shut them down at once as `NodeGone`);
//! - a node hears its assignment from the leader only while both links between them are up;
//!   otherwise it keeps acting on what it heard last (a partitioned node keeps running its
//!   containers until it rejoins, then removes those no longer assigned to it);
//! - a freshly booted agent does not reconcile before it has heard its assignment once
//!   (otherwise it would remove every container it has);
//! - a **crash** is a power cut: the machine's running containers exit with 137, and the
//!   new process gets a fresh reconciler (restart counts and backoff are in memory);
//! - a **graceful leave** stops and removes the node's containers before the process exits;
//! - **container crashes** (with the `crash` fault): during the fault phase a running
//!   container exits with a code 1..=255, or is failed by the engine (`oom-killed`).
//!
//! Everything is synchronous: the `Engine` trait is async, but every `FakeEngine` method is
//! ready on its first poll (no timers, no I/O, its clock is set from simulated time), so the
//! driver's futures are polled once with a no-op waker ([`poll_ready`]); a future that is
//! not ready panics rather than being waited on.

use crate::options::ServicesBug;
use crate::rng::{stream, Stream};
use rand::rngs::StdRng;
use rand::RngExt;
use shoal_cluster::constraint::Constraint;
use shoal_cluster::scheduler::{self, Availability, Decision, Health, Mode, NodeView, SchedulerConfig, ServiceView, ShutdownReason, Slot as TaskSlot, TaskId, TaskView};
use shoal_consensus::duties::GossipHealth;
use shoal_discovery::MemberView;
use shoal_engine::{
    Action, AssignedTask, ContainerSpec, ContainerState, Desired, Engine, FakeEngine, LabelFilter, Reconciler, ReconcilerConfig, RemoveReason, RestartPolicy,
};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// How often the scheduler and every node's reconciler run.
pub const SERVICES_TICK_MS: u64 = 1_000;
/// The image every simulated service runs (loaded into every fake engine).
const IMAGE: &str = "sim/app:1";

/// Polls a future that must be ready at once (every `FakeEngine` call is).
pub(crate) fn poll_ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a FakeEngine future was not ready on its first poll: the simulator cannot wait on it"),
    }
}

/// One service of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: String,
    pub replicas: u32,
    pub constraint: Option<String>,
}

/// What the services part of a run does, derived from the seed's own stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesPlan {
    pub services: Vec<ServiceDef>,
    /// Fake engine: time from start to running.
    pub start_delay_ms: u64,
    /// Mean time between container crashes (fault phase, with the `crash` fault).
    pub container_crash_every_ms: u64,
    pub container_crashes: bool,
    pub down_grace_ms: u64,
    /// Planted bug in the glue (sim-only switch).
    pub planted_bug: Option<ServicesBug>,
}

impl ServicesPlan {
    pub fn derive(seed: u64, nodes: usize, container_crashes: bool, planted_bug: Option<ServicesBug>) -> Self {
        let mut r = stream(seed, Stream::Services);
        let count = r.random_range(1..=3usize);
        let max_replicas = u32::try_from(2 * nodes.max(1)).unwrap_or(u32::MAX);
        let mut services = Vec::new();
        for k in 0..count {
            let replicas = r.random_range(1..=max_replicas);
            let which = r.random_range(0..6u32);
            let slot = r.random_range(0..nodes.max(1));
            let constraint = match which {
                0 | 1 => Some(format!("node.labels.sim.slot!={slot}")),
                2 => Some(format!("node.labels.sim.slot=={slot}")),
                _ => None,
            };
            services.push(ServiceDef { name: format!("svc{k}"), replicas, constraint });
        }
        let start_delay_ms = r.random_range(100..=2_000u64);
        let container_crash_every_ms = r.random_range(5_000..=60_000u64);
        Self { services, start_delay_ms, container_crash_every_ms, container_crashes, down_grace_ms: SchedulerConfig::default().down_grace_ms, planted_bug }
    }
}

impl fmt::Display for ServicesPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self
            .services
            .iter()
            .map(|s| match &s.constraint {
                Some(c) => format!("{} x{} ({c})", s.name, s.replicas),
                None => format!("{} x{}", s.name, s.replicas),
            })
            .collect();
        write!(
            f,
            "  services: {}; container start {} ms, scheduler grace {} ms{}{}",
            list.join(", "),
            self.start_delay_ms,
            self.down_grace_ms,
            if self.container_crashes { format!(", a container crashes every ~{} ms", self.container_crash_every_ms) } else { String::new() },
            match self.planted_bug {
                Some(b) => format!(", PLANTED BUG {} ON", b.name()),
                None => String::new(),
            },
        )
    }
}

/// Counters of the services part of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    pub scheduler_passes: u64,
    pub placements: u64,
    pub shutdowns: u64,
    pub creates: u64,
    pub removes: u64,
    pub container_crashes: u64,
    pub power_cut_exits: u64,
    pub failed_actions: u64,
}

/// One running container as the checkers see it.
pub(crate) struct RunningContainer {
    pub slot: usize,
    pub service: String,
    pub task: TaskId,
    /// The (service, slot) the task was created for, if the task is known.
    pub task_slot: Option<TaskSlot>,
}

pub(crate) struct Services {
    pub plan: ServicesPlan,
    defs: Vec<ServiceView>,
    specs: BTreeMap<String, ContainerSpec>,
    /// The oracle: live tasks (desired running).
    tasks: BTreeMap<TaskId, TaskView>,
    /// Every task ever created, for the checkers (a stale container's task may be gone).
    history: BTreeMap<TaskId, (String, TaskSlot)>,
    next_task: TaskId,
    /// Honest nodes that ever booted (the node table of the replicated state).
    registered: BTreeMap<NodeId, usize>,
    engines: Vec<FakeEngine>,
    reconcilers: Vec<Option<Reconciler>>,
    /// What each node last heard from the leader; `None` until it heard once this boot.
    views: Vec<Option<Vec<AssignedTask>>>,
    leader: Option<usize>,
    /// The current leader's view of registered nodes' health (and when each went missing).
    health: GossipHealth,
    rng: StdRng,
    pub counts: ServiceCounts,
}

fn node_label(id: &NodeId) -> String {
    id.to_string()
}

impl Services {
    pub(crate) fn new(seed: u64, plan: ServicesPlan, honest: usize) -> Self {
        let mut defs = Vec::new();
        let mut specs = BTreeMap::new();
        for s in &plan.services {
            let constraints = s.constraint.iter().filter_map(|c| Constraint::parse(c).ok()).collect();
            defs.push(ServiceView { name: s.name.clone(), mode: Mode::Replicated(s.replicas), constraints, reserve_cpu_millis: 0, reserve_memory_bytes: 0, host_ports: vec![], stays_with_node: false, group: None });
            specs.insert(s.name.clone(), ContainerSpec { image: IMAGE.to_string(), command: vec![s.name.clone()], ..Default::default() });
        }
        let engines = (0..honest)
            .map(|_| {
                let e = FakeEngine::new(plan.start_delay_ms);
                e.add_image(IMAGE);
                e
            })
            .collect();
        Self {
            defs,
            specs,
            tasks: BTreeMap::new(),
            history: BTreeMap::new(),
            next_task: 1,
            registered: BTreeMap::new(),
            engines,
            reconcilers: (0..honest).map(|_| None).collect(),
            views: vec![None; honest],
            leader: None,
            health: GossipHealth::new(),
            rng: stream(seed, Stream::ServiceFaults),
            counts: ServiceCounts::default(),
            plan,
        }
    }

    pub(crate) fn defs(&self) -> &[ServiceView] {
        &self.defs
    }

    /// A node's process booted: a fresh agent that has not heard its assignment yet.
    pub(crate) fn on_boot(&mut self, slot: usize, node: NodeId) {
        self.registered.insert(node, slot);
        self.reconcilers[slot] = Some(Reconciler::new(node_label(&node), ReconcilerConfig::default()));
        self.views[slot] = None;
    }

    /// Power cut: the machine's containers stop (exit 137), the agent's memory is gone.
    pub(crate) fn on_power_cut(&mut self, slot: usize, node: NodeId, now_ms: u64) {
        let engine = &self.engines[slot];
        engine.set_now_ms(now_ms);
        let listed = poll_ready(engine.list(&LabelFilter::node(node_label(&node)))).unwrap_or_default();
        for c in listed {
            if matches!(c.state, ContainerState::Running | ContainerState::Starting) && engine.exit(&c.id, 137) {
                self.counts.power_cut_exits += 1;
            }
        }
        self.reconcilers[slot] = None;
        self.views[slot] = None;
    }

    /// Graceful leave: the agent stops and removes its containers, then exits.
    pub(crate) fn on_graceful_stop(&mut self, slot: usize, node: NodeId, now_ms: u64) {
        let engine = &self.engines[slot];
        engine.set_now_ms(now_ms);
        let listed = poll_ready(engine.list(&LabelFilter::node(node_label(&node)))).unwrap_or_default();
        for c in listed {
            if poll_ready(engine.stop_and_remove(&c.id)).is_ok() {
                self.counts.removes += 1;
            }
        }
        self.reconcilers[slot] = None;
        self.views[slot] = None;
    }

    /// The stand-in leader: the current one while it runs, else the lowest-id running node.
    pub(crate) fn leader(&mut self, running: &[(usize, NodeId)]) -> Option<usize> {
        if let Some(l) = self.leader {
            if running.iter().any(|(s, _)| *s == l) {
                return Some(l);
            }
        }
        self.leader = running.iter().min_by_key(|(_, id)| *id).map(|(s, _)| *s);
        self.health.reset();
        self.leader
    }

    /// One scheduler pass on the oracle, with health from the leader's `members()`.
    /// Returns trace lines.
    pub(crate) fn schedule(&mut self, now_abs_ms: u64, leader_view: &[MemberView]) -> Vec<String> {
        self.counts.scheduler_passes += 1;
        // The node's own mapping (`duties::GossipHealth`): a registered node the leader has
        // no row for is down from the first pass that missed it.
        let me = leader_view.iter().find(|m| m.is_self).map_or(NodeId([0; 16]), |m| m.id);
        let health = &mut self.health;
        let nodes: Vec<NodeView> = self
            .registered
            .iter()
            .map(|(id, slot)| sim_node_view(*slot, *id, health.health(me, leader_view, id, now_abs_ms)))
            .collect();
        let tasks: Vec<TaskView> = self.tasks.values().cloned().collect();
        let cfg = SchedulerConfig { down_grace_ms: self.plan.down_grace_ms };
        let mut decisions = scheduler::schedule(&cfg, now_abs_ms, &nodes, &self.defs, &tasks);
        if self.plan.planted_bug == Some(ServicesBug::NoDownShutdown) {
            // As if the scheduler kept the tasks of down nodes: neither their shutdown nor the
            // placement that replaces them in the same batch is applied.
            let kept: Vec<(String, TaskSlot)> = decisions
                .iter()
                .filter_map(|d| match d {
                    Decision::Shutdown { task, reason: ShutdownReason::NodeDown } => self.tasks.get(task).map(|t| (t.service.clone(), t.slot)),
                    _ => None,
                })
                .collect();
            decisions.retain(|d| match d {
                Decision::Shutdown { reason: ShutdownReason::NodeDown, .. } => false,
                Decision::Place { service, slot, .. } => !kept.iter().any(|(s, k)| s == service && k == slot),
                _ => true,
            });
        }
        let mut lines = Vec::new();
        for d in decisions {
            match d {
                Decision::Place { service, slot, node } => {
                    let id = self.next_task;
                    self.next_task += 1;
                    self.counts.placements += 1;
                    lines.push(format!("place task {id} {service}{} on {}", slot_text(slot), self.label(&node)));
                    self.history.insert(id, (service.clone(), slot));
                    self.tasks.insert(id, TaskView { id, service, slot, node });
                }
                Decision::Shutdown { task, reason } => {
                    if let Some(t) = self.tasks.remove(&task) {
                        self.counts.shutdowns += 1;
                        lines.push(format!("shutdown task {task} {}{} on {}: {reason:?}", t.service, slot_text(t.slot), self.label(&t.node)));
                    }
                }
                Decision::Pending { .. } => {}
            }
        }
        lines
    }

    fn label(&self, node: &NodeId) -> String {
        self.registered.get(node).map_or_else(|| node.short(), |s| format!("n{s}"))
    }

    /// One reconciliation on node `slot`. `hears_leader`: it can get its assignment now.
    /// Returns trace lines.
    pub(crate) fn reconcile(&mut self, slot: usize, node: NodeId, now_ms: u64, hears_leader: bool) -> Vec<String> {
        if hears_leader {
            let mine: Vec<AssignedTask> = self
                .tasks
                .values()
                .filter(|t| t.node == node)
                .map(|t| AssignedTask { network: None,
                    id: t.id,
                    service: t.service.clone(),
                    spec: self.specs.get(&t.service).cloned().unwrap_or_default(),
                    desired: Desired::Running,
                    restart: RestartPolicy::Always,
                })
                .collect();
            self.views[slot] = Some(mine);
        }
        let (Some(assigned), Some(reconciler)) = (self.views[slot].as_ref(), self.reconcilers[slot].as_mut()) else {
            return Vec::new();
        };
        let engine = &self.engines[slot];
        engine.set_now_ms(now_ms);
        let Ok(observed) = poll_ready(engine.list(&LabelFilter::node(reconciler.node()))) else { return Vec::new() };
        let mut actions = reconciler.reconcile(now_ms, assigned, &observed);
        if self.plan.planted_bug == Some(ServicesBug::StaleContainers) {
            actions.retain(|a| !matches!(a, Action::Remove { reason: RemoveReason::NotAssigned, .. }));
        }
        let mut lines = Vec::new();
        for a in &actions {
            match a {
                Action::Create { task, .. } => {
                    self.counts.creates += 1;
                    lines.push(format!("engine create task {task}"));
                }
                Action::Start { task, container } => lines.push(format!("engine start task {task} ({})", container.0)),
                Action::Remove { task, container, reason } => {
                    self.counts.removes += 1;
                    lines.push(format!("engine remove task {task} ({}): {reason:?}", container.0));
                }
                Action::Report(r) => lines.push(format!("task {} {:?} restarts {}", r.task, r.state, r.restarts)),
            }
        }
        let planned: Vec<shoal_engine::TaskReport> = actions.iter().filter_map(|a| if let Action::Report(r) = a { Some(r.clone()) } else { None }).collect();
        let reports = poll_ready(shoal_engine::apply(engine, reconciler, now_ms, assigned, actions));
        // Reports beyond those among the actions come from failed actions.
        for r in reports.iter().filter(|r| !planned.contains(r)) {
            self.counts.failed_actions += 1;
            lines.push(format!("task {} {:?} (action failed)", r.task, r.state));
        }
        lines
    }

    /// A container on a random running node crashes. Returns a trace line.
    pub(crate) fn container_crash(&mut self, running: &[(usize, NodeId)], now_ms: u64) -> Option<(usize, String)> {
        if running.is_empty() {
            return None;
        }
        let (slot, node) = running[self.rng.random_range(0..running.len())];
        let engine = &self.engines[slot];
        engine.set_now_ms(now_ms);
        let listed = poll_ready(engine.list(&LabelFilter::node(node_label(&node)))).ok()?;
        let up: Vec<_> = listed.into_iter().filter(|c| matches!(c.state, ContainerState::Running)).collect();
        if up.is_empty() {
            return None;
        }
        let c = &up[self.rng.random_range(0..up.len())];
        let oom = self.rng.random_range(0..4u32) == 0;
        let code = self.rng.random_range(1..=255i64);
        self.counts.container_crashes += 1;
        if oom {
            engine.crash(&c.id, "oom-killed");
            Some((slot, format!("CONTAINER CRASH task {} ({}): failed, oom-killed", c.owner.task, c.id.0)))
        } else {
            engine.exit(&c.id, code);
            Some((slot, format!("CONTAINER CRASH task {} ({}): exit {code}", c.owner.task, c.id.0)))
        }
    }

    /// The next container crash, from the services stream.
    pub(crate) fn next_crash_in(&mut self) -> u64 {
        let mean = self.plan.container_crash_every_ms;
        self.rng.random_range(mean / 2..=mean * 3 / 2).max(1)
    }

    /// Every running container on every honest machine (whether its agent runs or not).
    pub(crate) fn running_containers(&self, now_ms: u64) -> Vec<RunningContainer> {
        let mut out = Vec::new();
        for (slot, engine) in self.engines.iter().enumerate() {
            engine.set_now_ms(now_ms);
            let Some(node) = self.registered.iter().find(|(_, s)| **s == slot).map(|(id, _)| *id) else { continue };
            let listed = poll_ready(engine.list(&LabelFilter::node(node_label(&node)))).unwrap_or_default();
            for c in listed.into_iter().filter(|c| c.state == ContainerState::Running) {
                let task_slot = self.history.get(&c.owner.task).map(|(_, s)| *s);
                out.push(RunningContainer { slot, service: c.owner.service, task: c.owner.task, task_slot });
            }
        }
        out
    }
}

pub(crate) fn slot_text(slot: TaskSlot) -> String {
    match slot {
        TaskSlot::Index(i) => format!(".{i}"),
        TaskSlot::Node(n) => format!("@{}", n.short()),
    }
}

/// How the scheduler sees simulated node `slot` (labels `sim.slot=<slot>`, as in its facts).
pub(crate) fn sim_node_view(slot: usize, id: NodeId, health: Health) -> NodeView {
    NodeView {
        id,
        hostname: format!("n{slot}"),
        arch: "x86_64".to_string(),
        labels: BTreeMap::from([("sim.slot".to_string(), slot.to_string())]),
        health,
        availability: Availability::Active,
        engine_ok: true,
        cpu_millis: 4_000,
        memory_bytes: 8 << 30,
    }
}
