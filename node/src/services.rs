//! Services from the user's side: parsing the `shoal service create` flags into a
//! [`ServiceDef`] (pure, unit-tested), the rows `service ls` and `service ps` show, how
//! they are built from the replicated state and this node's gossip view (a task on a node
//! that is down is `unknown (node down)`, not what it last reported), and when a
//! `create`/`scale` wait is over ([`convergence`]).
//!
//! Flags are checked here so that a typo gets a precise message before anything is sent;
//! the state machine checks every limit again when the command is applied.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use shoal_cluster::constraint::Constraint;
use shoal_cluster::scheduler::{Health, Mode, Slot};
use shoal_consensus::duties::GossipHealth;
use shoal_consensus::state::{ServiceDef, TaskRecord};
use shoal_consensus::ClusterState;
use shoal_discovery::MemberView;
use shoal_engine::{ContainerSpec, Desired, PortMapping, Protocol, RestartPolicy, TaskState};
use shoal_wire::NodeId;
use std::collections::{BTreeMap, BTreeSet};

/// `H:C` or `H:C/tcp|udp`.
pub fn parse_publish(text: &str) -> Result<PortMapping> {
    let bad = || anyhow!("bad port `{text}`: use HOST:CONTAINER, e.g. 8080:80 or 53:53/udp (ports 1-65535)");
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some(_) => return Err(bad()),
        None => (text, Protocol::Tcp),
    };
    let (h, c) = ports.split_once(':').ok_or_else(bad)?;
    let host_port: u16 = h.parse().map_err(|_| bad())?;
    let container_port: u16 = c.parse().map_err(|_| bad())?;
    if host_port == 0 || container_port == 0 {
        return Err(bad());
    }
    Ok(PortMapping { host_port, container_port, protocol })
}

/// `512k`, `64M`, `1G`, `1.5G` or bytes.
pub fn parse_memory(text: &str) -> Result<u64> {
    let bad = || anyhow!("bad memory size `{text}`: use e.g. 64M, 512k or 1G");
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => return Err(bad()),
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 || value * (mult as f64) > 1e15 {
        return Err(bad());
    }
    Ok((value * mult as f64) as u64)
}

/// CPUs like docker's `--cpus`: `0.5`, `2` → thousandths.
pub fn parse_cpu(text: &str) -> Result<u64> {
    let value: f64 = text.trim().parse().map_err(|_| anyhow!("bad CPU amount `{text}`: use e.g. 0.5 or 2"))?;
    if !value.is_finite() || !(0.0..=1000.0).contains(&value) {
        bail!("bad CPU amount `{text}`: between 0 and 1000 CPUs");
    }
    Ok((value * 1000.0).round() as u64)
}

/// `always`, `never`, `on-failure` or `on-failure:N`.
pub fn parse_restart(text: &str) -> Result<RestartPolicy> {
    match text {
        "always" | "any" => Ok(RestartPolicy::Always),
        "never" | "none" | "no" => Ok(RestartPolicy::Never),
        "on-failure" => Ok(RestartPolicy::OnFailure { max_attempts: 3 }),
        _ => match text.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(max_attempts)) => Ok(RestartPolicy::OnFailure { max_attempts }),
            _ => bail!("bad restart policy `{text}`: use always, never, on-failure or on-failure:N"),
        },
    }
}

/// `--stop-grace-period`: a duration such as `10s`, `1m30s` or `500ms`, at most 10 minutes,
/// in ms. (Docker counts whole seconds: it waits the value rounded up.)
pub fn parse_stop_grace(text: &str) -> Result<u64> {
    let d = crate::config::parse_duration(text).map_err(|e| anyhow!("bad --stop-grace-period: {e}"))?;
    let max = shoal_engine::types::STOP_GRACE_MS_MAX;
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms > max {
        bail!("bad --stop-grace-period `{text}`: at most {}", shoal_sim::format_duration(max));
    }
    Ok(ms)
}

/// `K=V` environment entries.
pub fn parse_env(entries: &[String]) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for e in entries {
        let (k, v) = e.split_once('=').ok_or_else(|| anyhow!("bad --env `{e}`: use KEY=VALUE"))?;
        if k.is_empty() {
            bail!("bad --env `{e}`: the name is empty");
        }
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

/// Everything `service create` takes, as typed.
#[derive(Debug, Clone, Default)]
pub struct CreateFlags {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub replicas: Option<u32>,
    pub global: bool,
    pub env: Vec<String>,
    pub publish: Vec<String>,
    pub constraints: Vec<String>,
    pub reserve_cpu: Option<String>,
    pub reserve_memory: Option<String>,
    pub limit_cpu: Option<String>,
    pub limit_memory: Option<String>,
    pub restart: String,
    /// `None`: the default, 10 s.
    pub stop_grace_period: Option<String>,
}

/// Builds the service definition from the flags, or says which flag is wrong. The flags'
/// own syntax is checked here; what the definition must meet is checked by
/// [`ServiceDef::validate`], the same rules the state machine applies.
pub fn service_def(f: &CreateFlags) -> Result<ServiceDef> {
    let mode = match (f.global, f.replicas) {
        (true, Some(_)) => bail!("--global and --replicas exclude each other"),
        (true, None) => Mode::Global,
        (false, r) => Mode::Replicated(r.unwrap_or(1)),
    };
    let constraints = f
        .constraints
        .iter()
        .map(|c| Constraint::parse(c).map_err(|e| anyhow!("bad --constraint `{c}`: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let ports = f.publish.iter().map(|p| parse_publish(p)).collect::<Result<Vec<_>>>()?;
    let opt = |v: &Option<String>, parse: fn(&str) -> Result<u64>| v.as_deref().map(parse).transpose().map(Option::unwrap_or_default);
    let def = ServiceDef {
        name: f.name.clone(),
        spec: ContainerSpec {
            image: f.image.trim().to_string(),
            command: f.command.clone(),
            env: parse_env(&f.env)?,
            ports,
            cpu_millis: opt(&f.limit_cpu, parse_cpu)?,
            memory_bytes: opt(&f.limit_memory, parse_memory)?,
            stop_grace_ms: Some(f.stop_grace_period.as_deref().map_or(Ok(shoal_engine::types::STOP_GRACE_MS_DEFAULT), parse_stop_grace)?),
        },
        mode,
        constraints,
        reserve_cpu_millis: opt(&f.reserve_cpu, parse_cpu)?,
        reserve_memory_bytes: opt(&f.reserve_memory, parse_memory)?,
        restart: parse_restart(&f.restart)?,
    };
    def.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(def)
}

/// A row of `shoal service ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub image: String,
    pub mode: ServiceMode,
    /// Desired replicas (replicated), or live tasks (global).
    pub desired: u32,
    /// Live tasks reported running, on nodes that are up.
    pub running: u32,
    pub pending: u32,
    /// Live tasks on a node gossip sees down or left: their state is unknown.
    #[serde(default)]
    pub unknown: u32,
    /// Who made the service: the Docker API (its container is named in `container`) or
    /// `shoal service create`.
    #[serde(default)]
    pub origin: ServiceOrigin,
    #[serde(default)]
    pub container: Option<String>,
}

/// How a service places its tasks, as rows show it (`replicated` or `global` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    Replicated,
    Global,
}

impl ServiceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceMode::Replicated => "replicated",
            ServiceMode::Global => "global",
        }
    }
}

/// Who made a service (`shoal` or `docker` in JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceOrigin {
    /// `shoal service create`.
    #[default]
    Shoal,
    /// The service that runs a container of the Docker API.
    Docker,
}

/// What the cluster wants of a task, as rows show it (`running` or `shutdown` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskDesired {
    Running,
    Shutdown,
}

impl TaskDesired {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskDesired::Running => "running",
            TaskDesired::Shutdown => "shutdown",
        }
    }
}

/// A task's state as `service ps` reports it, typed (the `state` text adds details such as
/// the exit code). `Unknown`: the task's node is down or left, so whatever it last
/// reported may no longer be true and it cannot report anything new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Placed; its node has reported nothing yet.
    New,
    Starting,
    Running,
    Exited,
    Failed,
    /// Told to shut down, and its node reported the container gone.
    Shutdown,
    /// A slot the scheduler could not place (`error` says why).
    Pending,
    /// On a node that is down: see `node_down`.
    Unknown,
}

/// A row of `shoal service ps`: a task, or a slot that could not be placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRow {
    /// Task id; `None` for a pending slot.
    pub task: Option<u64>,
    /// `web.1` (replicated) or `web@<node>` (global).
    pub slot: String,
    pub node: Option<NodeId>,
    pub node_name: Option<String>,
    /// running, shutdown.
    pub desired: TaskDesired,
    /// What the node reported: new (nothing yet), starting, running, exited (N), failed,
    /// shutdown; or pending; or `unknown (node down)`.
    pub state: String,
    /// `state` as a value to compare.
    pub status: TaskStatus,
    /// The task's node is down or left in gossip, as this node sees it.
    #[serde(default)]
    pub node_down: bool,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub restarts: u32,
    pub container: Option<String>,
}

impl TaskRow {
    /// A task (not a pending slot) that the cluster wants running.
    pub fn is_live_task(&self) -> bool {
        self.desired == TaskDesired::Running && self.task.is_some()
    }
}

/// The state text shown for a task whose node is down.
pub const UNKNOWN_NODE_DOWN: &str = "unknown (node down)";

fn slot_name(service: &str, slot: &Slot) -> String {
    match slot {
        Slot::Index(i) => format!("{service}.{i}"),
        Slot::Node(n) => format!("{service}@{}", n.short()),
    }
}

/// The registered nodes that cannot report now: down or left in gossip, or not listed at
/// all (the same mapping the leader's scheduler uses, `GossipHealth`). `me` is always up.
pub fn down_nodes(state: &ClusterState, me: NodeId, members: &[MemberView], now_ms: u64) -> BTreeSet<NodeId> {
    let mut health = GossipHealth::new();
    state
        .nodes
        .keys()
        .filter(|id| matches!(health.health(me, members, id, now_ms), Health::Down { .. } | Health::Left { .. }))
        .copied()
        .collect()
}

/// The status, its text and the failure reason of a task, given whether its node is down.
fn task_status(t: &TaskRecord, node_down: bool) -> (TaskStatus, String, Option<String>) {
    match &t.observed {
        // What a down node last said of a container that is gone stays true.
        Some(TaskState::Shutdown) => (TaskStatus::Shutdown, "shutdown".into(), None),
        _ if node_down => (TaskStatus::Unknown, UNKNOWN_NODE_DOWN.into(), None),
        None => (TaskStatus::New, "new".into(), None),
        Some(TaskState::Starting) => (TaskStatus::Starting, "starting".into(), None),
        Some(TaskState::Running) => (TaskStatus::Running, "running".into(), None),
        Some(TaskState::Exited { code }) => (TaskStatus::Exited, format!("exited ({code})"), None),
        Some(TaskState::Failed { reason }) => (TaskStatus::Failed, "failed".into(), Some(reason.clone())),
    }
}

/// `service ls` rows; tasks on `down` nodes count as unknown, not running.
pub fn service_rows(state: &ClusterState, down: &BTreeSet<NodeId>) -> Vec<ServiceRow> {
    state
        .services
        .values()
        .map(|svc| {
            let live: Vec<&TaskRecord> = state.tasks_of_service(&svc.def.name).filter(|t| t.is_live()).collect();
            let unknown = live.iter().filter(|t| down.contains(&t.node)).count() as u32;
            let running = live.iter().filter(|t| t.observed == Some(TaskState::Running) && !down.contains(&t.node)).count() as u32;
            let (mode, desired) = match svc.def.mode {
                Mode::Replicated(n) => (ServiceMode::Replicated, n),
                Mode::Global => (ServiceMode::Global, live.len() as u32),
            };
            let container = state.container_of_service(&svc.def.name).map(|c| c.name.clone());
            ServiceRow {
                name: svc.def.name.clone(),
                image: svc.def.spec.image.clone(),
                mode,
                desired,
                running,
                pending: svc.pending.len() as u32,
                unknown,
                origin: if container.is_some() { ServiceOrigin::Docker } else { ServiceOrigin::Shoal },
                container,
            }
        })
        .collect()
}

/// `service ps` rows; tasks on `down` nodes are `unknown (node down)`.
pub fn task_rows(state: &ClusterState, service: &str, down: &BTreeSet<NodeId>) -> Result<Vec<TaskRow>> {
    let svc = state
        .services
        .get(service)
        .ok_or_else(|| anyhow!("no service named {service}; list the services to see their names"))?;
    let mut rows: Vec<TaskRow> = state
        .tasks_of_service(service)
        .map(|t| {
            let node_down = down.contains(&t.node);
            let (status, text, reason) = task_status(t, node_down);
            TaskRow {
                task: Some(t.id),
                slot: slot_name(service, &t.slot),
                node: Some(t.node),
                node_name: state.nodes.get(&t.node).map(|n| n.name.clone()),
                desired: if t.desired == Desired::Running { TaskDesired::Running } else { TaskDesired::Shutdown },
                state: text,
                status,
                node_down,
                exit_code: t.last_exit_code,
                error: reason.or_else(|| t.error.clone()),
                restarts: t.restarts,
                container: t.container.as_ref().map(|c| c.0.chars().take(12).collect()),
            }
        })
        .collect();
    for (slot, p) in &svc.pending {
        rows.push(TaskRow {
            task: None,
            slot: slot_name(service, slot),
            node: None,
            node_name: None,
            desired: TaskDesired::Running,
            state: "pending".into(),
            status: TaskStatus::Pending,
            node_down: false,
            exit_code: None,
            error: Some(p.reason.clone()),
            restarts: 0,
            container: None,
        });
    }
    // Live tasks first, by slot; then the shut-down ones.
    rows.sort_by(|a, b| (a.desired != TaskDesired::Running, &a.slot, a.task).cmp(&(b.desired != TaskDesired::Running, &b.slot, b.task)));
    Ok(rows)
}

/// How far a service is from what was asked, from the tasks that can still report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Live tasks running on nodes that are up.
    pub running: u32,
    pub desired: u32,
    /// Slots the scheduler could not place.
    pub pending: u32,
    /// Tasks told to shut down whose (up) node has not reported them gone yet.
    pub stopping: u32,
    /// Live tasks on down nodes.
    pub unknown: u32,
}

/// Where a `create` or `scale` wait stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convergence {
    /// Every slot has a running task and nothing is left to stop.
    Converged,
    /// Everything that can report has converged; `live` tasks that count for their slot
    /// and `stopping` tasks told to shut down are on down nodes, so they cannot (the
    /// scheduler moves live ones after its grace period).
    ConvergedExceptDown { live: u32, stopping: u32 },
    /// Still waiting.
    Waiting(Progress),
}

/// Decides a wait from a service's `desired` count and its `service ps` rows (whose
/// `node_down` says which nodes cannot report). Pure, so the CLI's wait is unit-tested.
pub fn convergence(desired: u32, rows: &[TaskRow]) -> Convergence {
    let mut p = Progress { desired, ..Progress::default() };
    let (mut live, mut live_up_not_running, mut down_stopping) = (0u32, 0u32, 0u32);
    for r in rows {
        match (r.status, r.desired) {
            (TaskStatus::Pending, _) => p.pending += 1,
            (_, TaskDesired::Running) if r.task.is_some() => {
                live += 1;
                if r.node_down {
                    p.unknown += 1;
                } else if r.status == TaskStatus::Running {
                    p.running += 1;
                } else {
                    live_up_not_running += 1;
                }
            }
            (TaskStatus::Shutdown | TaskStatus::New, TaskDesired::Shutdown) => {}
            (_, TaskDesired::Shutdown) if r.node_down => down_stopping += 1,
            (_, TaskDesired::Shutdown) => p.stopping += 1,
            _ => {}
        }
    }
    let reachable_done = p.pending == 0 && p.stopping == 0 && live == desired && live_up_not_running == 0;
    match (reachable_done, p.unknown + down_stopping) {
        (true, 0) => Convergence::Converged,
        (true, _) => Convergence::ConvergedExceptDown { live: p.unknown, stopping: down_stopping },
        (false, _) => Convergence::Waiting(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> CreateFlags {
        CreateFlags { name: "web".into(), image: "shoal-test/busybox:1".into(), restart: "always".into(), ..Default::default() }
    }

    #[test]
    fn ports_parse_and_bad_ones_say_the_form() {
        assert_eq!(parse_publish("8080:80").expect("ok"), PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp });
        assert_eq!(parse_publish("53:53/udp").expect("ok").protocol, Protocol::Udp);
        for bad in ["80", "0:80", "80:0", "x:80", "80:80/sctp", "70000:80", ":"] {
            let e = parse_publish(bad).expect_err(bad).to_string();
            assert!(e.contains("HOST:CONTAINER"), "{e}");
        }
    }

    #[test]
    fn sizes_cpus_and_restart_policies_parse() {
        assert_eq!(parse_memory("64M").expect("ok"), 64 << 20);
        assert_eq!(parse_memory("1.5g").expect("ok"), 3 << 29);
        assert_eq!(parse_memory("100").expect("ok"), 100);
        assert!(parse_memory("12Q").is_err() && parse_memory("-1M").is_err() && parse_memory("M").is_err());
        assert_eq!(parse_cpu("0.5").expect("ok"), 500);
        assert!(parse_cpu("-1").is_err() && parse_cpu("lots").is_err());
        assert_eq!(parse_restart("on-failure:2").expect("ok"), RestartPolicy::OnFailure { max_attempts: 2 });
        assert_eq!(parse_restart("never").expect("ok"), RestartPolicy::Never);
        assert!(parse_restart("sometimes").is_err());
    }

    #[test]
    fn a_service_def_is_built_from_flags_and_bad_input_is_named() {
        let mut f = flags();
        f.replicas = Some(6);
        f.env = vec!["A=1".into()];
        f.constraints = vec!["node.labels.zone==attic".into()];
        f.publish = vec!["8080:80".into()];
        let def = service_def(&f).expect("valid");
        assert_eq!(def.mode, Mode::Replicated(6));
        assert_eq!(def.spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(def.constraints.len(), 1);
        assert_eq!(def.spec.stop_grace_ms, Some(10_000), "the default stop grace period");
        for (text, ms) in [("1s", 1000), ("1m30s", 90_000), ("500ms", 500), ("0s", 0), ("10m", 600_000)] {
            let def = service_def(&CreateFlags { stop_grace_period: Some(text.into()), ..flags() }).expect(text);
            assert_eq!(def.spec.stop_grace_ms, Some(ms), "{text}");
        }

        let cases: Vec<(CreateFlags, &str)> = vec![
            (CreateFlags { name: "Web!".into(), ..flags() }, "service name \"Web!\" is not valid"),
            (CreateFlags { replicas: Some(shoal_consensus::state::MAX_REPLICAS + 1), ..flags() }, "replicas must be 0 to 1000"),
            (CreateFlags { global: true, replicas: Some(2), ..flags() }, "exclude each other"),
            (CreateFlags { constraints: vec!["node.labels.zone=attic".into()], ..flags() }, "bad --constraint"),
            (CreateFlags { publish: vec!["80:80".into(), "80:81".into()], ..flags() }, "published twice"),
            (CreateFlags { env: vec!["NOEQUALS".into()], ..flags() }, "KEY=VALUE"),
            (CreateFlags { image: " ".into(), ..flags() }, "the image must be a reference"),
            (CreateFlags { env: vec!["A B=1".into()], ..flags() }, "environment variable name"),
            (CreateFlags { limit_memory: Some("900000G".into()), ..flags() }, "memory at most"),
            (CreateFlags { stop_grace_period: Some("11m".into()), ..flags() }, "at most 10m"),
            (CreateFlags { stop_grace_period: Some("soon".into()), ..flags() }, "bad --stop-grace-period"),
            (CreateFlags { stop_grace_period: Some("-1s".into()), ..flags() }, "1m30s"),
        ];
        for (f, expect) in cases {
            let e = service_def(&f).expect_err(expect).to_string();
            assert!(e.contains(expect), "{expect}: {e}");
        }
    }

    fn row(slot: &str, desired: TaskDesired, status: TaskStatus, node_down: bool) -> TaskRow {
        TaskRow {
            task: if status == TaskStatus::Pending { None } else { Some(1) },
            slot: slot.into(),
            node: None,
            node_name: None,
            desired,
            state: String::new(),
            status,
            node_down,
            exit_code: None,
            error: None,
            restarts: 0,
            container: None,
        }
    }

    use TaskDesired::{Running as Want, Shutdown as Stop};

    #[test]
    fn a_wait_converges_when_every_slot_runs_and_nothing_is_left_to_stop() {
        let rows = [row("web.1", Want, TaskStatus::Running, false), row("web.2", Want, TaskStatus::Running, false), row("web.3", Stop, TaskStatus::Shutdown, false)];
        assert_eq!(convergence(2, &rows), Convergence::Converged);
        // A task told to stop that never reported anything has nothing to stop.
        let rows = [row("web.1", Want, TaskStatus::Running, false), row("web.2", Stop, TaskStatus::New, false)];
        assert_eq!(convergence(1, &rows), Convergence::Converged);
        assert_eq!(convergence(0, &[]), Convergence::Converged);
    }

    #[test]
    fn a_wait_goes_on_while_a_reachable_task_starts_stops_or_a_slot_pends() {
        let starting = [row("web.1", Want, TaskStatus::Running, false), row("web.2", Want, TaskStatus::Starting, false)];
        assert_eq!(convergence(2, &starting), Convergence::Waiting(Progress { running: 1, desired: 2, ..Progress::default() }));
        let stopping = [row("web.1", Want, TaskStatus::Running, false), row("web.2", Stop, TaskStatus::Running, false)];
        assert_eq!(convergence(1, &stopping), Convergence::Waiting(Progress { running: 1, desired: 1, stopping: 1, ..Progress::default() }));
        let pending = [row("web.1", Want, TaskStatus::Running, false), row("web.2", Want, TaskStatus::Pending, false)];
        assert_eq!(convergence(2, &pending), Convergence::Waiting(Progress { running: 1, desired: 2, pending: 1, ..Progress::default() }));
        // Not placed yet: fewer live tasks than desired.
        assert!(matches!(convergence(3, &starting[..1]), Convergence::Waiting(Progress { running: 1, desired: 3, .. })));
        // A failed task is not converged (it may be restarting).
        let failed = [row("web.1", Want, TaskStatus::Failed, false)];
        assert!(matches!(convergence(1, &failed), Convergence::Waiting(_)));
        // A task on a down node does not end a wait that others still hold up.
        let mixed = [row("web.1", Want, TaskStatus::Unknown, true), row("web.2", Want, TaskStatus::Starting, false)];
        assert_eq!(convergence(2, &mixed), Convergence::Waiting(Progress { desired: 2, unknown: 1, ..Progress::default() }));
    }

    #[test]
    fn tasks_on_down_nodes_do_not_hold_a_wait_up_and_are_counted() {
        // Scaled 3 -> 2 with the node of web.2 and web.3 dead: web.3 can never report its
        // shutdown and web.2 never its state; the rest converged.
        let rows = [
            row("web.1", Want, TaskStatus::Running, false),
            row("web.2", Want, TaskStatus::Unknown, true),
            row("web.3", Stop, TaskStatus::Unknown, true),
        ];
        assert_eq!(convergence(2, &rows), Convergence::ConvergedExceptDown { live: 1, stopping: 1 });
        let only_stopping = [row("web.1", Want, TaskStatus::Running, false), row("web.2", Stop, TaskStatus::Unknown, true)];
        assert_eq!(convergence(1, &only_stopping), Convergence::ConvergedExceptDown { live: 0, stopping: 1 });
        // A down node that reported the shutdown before it died is done.
        let reported = [row("web.1", Want, TaskStatus::Running, false), row("web.2", Stop, TaskStatus::Shutdown, true)];
        assert_eq!(convergence(1, &reported), Convergence::Converged);
    }

    fn member(id: NodeId, state: shoal_discovery::MemberState) -> MemberView {
        MemberView {
            id,
            name: None,
            addr: "127.0.0.1:7480".parse().expect("addr"),
            state,
            labels: BTreeMap::new(),
            incarnation: 0,
            version: None,
            since_ms: 0,
            is_self: false,
            in_cluster: true,
            resources: Default::default(),
            signed_addr: None,
        }
    }

    /// A state with three nodes and a service `web` of three tasks, one per node, all
    /// reported running.
    fn three_node_state() -> ClusterState {
        use shoal_consensus::{Command, NodeRecord};
        let mut s = ClusterState::default();
        for i in 1..=3u8 {
            let record = NodeRecord { name: format!("pi-{i}"), addr: "10.0.0.1:7481".parse().expect("addr"), labels: BTreeMap::new() };
            s.apply(Command::RegisterNode { id: NodeId([i; 16]), record }).expect("register");
        }
        let mut f = flags();
        f.replicas = Some(3);
        s.apply(Command::CreateService { service: service_def(&f).expect("def"), now_ms: 1 }).expect("create");
        let decisions = (1..=3u8).map(|i| shoal_cluster::scheduler::Decision::Place { service: "web".into(), slot: Slot::Index(u32::from(i)), node: NodeId([i; 16]) }).collect();
        s.apply(Command::apply_decisions(decisions, 2)).expect("place");
        for i in 1..=3u8 {
            let report = shoal_engine::TaskReport { task: u64::from(i), state: TaskState::Running, restarts: 0, container: None, last_exit_code: None };
            for c in Command::report_tasks(NodeId([i; 16]), vec![report], 3) {
                s.apply(c).expect("report");
            }
        }
        s
    }

    #[test]
    fn tasks_on_nodes_gossip_sees_down_are_unknown_in_rows() {
        use shoal_discovery::MemberState;
        let s = three_node_state();
        let (me, up, dead) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        let members = vec![member(up, MemberState::Alive), member(dead, MemberState::Down)];
        let down = down_nodes(&s, me, &members, 10);
        assert_eq!(down, BTreeSet::from([dead]));
        // Left counts as down, and so does a registered node gossip does not list at all;
        // suspect does not (it may still report).
        let left = vec![member(up, MemberState::Suspect), member(dead, MemberState::Left)];
        assert_eq!(down_nodes(&s, me, &left, 10), BTreeSet::from([dead]));
        assert_eq!(down_nodes(&s, me, &[], 10), BTreeSet::from([up, dead]));

        let rows = task_rows(&s, "web", &down).expect("rows");
        let by_slot: BTreeMap<&str, &TaskRow> = rows.iter().map(|r| (r.slot.as_str(), r)).collect();
        assert_eq!(by_slot["web.1"].status, TaskStatus::Running);
        assert_eq!(by_slot["web.3"].status, TaskStatus::Unknown);
        assert_eq!(by_slot["web.3"].state, "unknown (node down)");
        assert!(by_slot["web.3"].node_down && !by_slot["web.1"].node_down);
        let json = serde_json::to_value(by_slot["web.3"]).expect("json");
        assert_eq!(json["state"], "unknown (node down)");
        assert_eq!(json["status"], "unknown");
        assert_eq!(json["desired"], "running");
        let ls = service_rows(&s, &down);
        assert_eq!((ls[0].running, ls[0].unknown, ls[0].desired), (2, 1, 3));
        assert_eq!(convergence(3, &rows), Convergence::ConvergedExceptDown { live: 1, stopping: 0 });
        // With everyone up, the same state has converged.
        let all_up = task_rows(&s, "web", &BTreeSet::new()).expect("rows");
        assert_eq!(convergence(3, &all_up), Convergence::Converged);
    }
}
