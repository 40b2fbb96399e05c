//! Services and tasks in the replicated state: their records, the limits that bound them,
//! the validation of the commands that change them, and the pure views the leader's
//! scheduler and the nodes' agents read from them.
//!
//! The vocabulary is reused from the crates above: the scheduler's `Mode`, `Slot`,
//! `TaskId`, `Availability`, `Decision`, `ShutdownReason` and `Constraint`
//! (`shoal-cluster`), the engine's `ContainerSpec`, `RestartPolicy`, `Desired`,
//! `TaskState`, `TaskReport` and `AssignedTask` (`shoal-engine`).
//!
//! Rules kept by the state machine (whatever order commands arrive in):
//! - a (service, slot) never has two live tasks (desired `Running`);
//! - a live task always belongs to an existing service and sits on a registered node;
//! - task ids are allocated here, in apply order, so every replica agrees on them;
//! - no clock is read: every time stamp is the `now_ms` the leader put in the command.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use shoal_wire::NodeId;

pub use shoal_cluster::constraint::Constraint;
pub use shoal_cluster::constraint::MAX_CONSTRAINT_LEN;
pub use shoal_cluster::scheduler::Availability;
pub use shoal_cluster::scheduler::Decision;
pub use shoal_cluster::scheduler::HostPort;
pub use shoal_cluster::scheduler::Mode;
pub use shoal_cluster::scheduler::PortProtocol;
pub use shoal_cluster::scheduler::ServiceView;
pub use shoal_cluster::scheduler::ShutdownReason;
pub use shoal_cluster::scheduler::Slot;
pub use shoal_cluster::scheduler::TaskId;
pub use shoal_cluster::scheduler::TaskView;
pub use shoal_engine::AssignedTask;
pub use shoal_engine::ContainerId;
pub use shoal_engine::ContainerSpec;
pub use shoal_engine::Desired;
pub use shoal_engine::PortMapping;
pub use shoal_engine::Protocol;
pub use shoal_engine::RestartPolicy;
pub use shoal_engine::TaskReport;
pub use shoal_engine::TaskState;

use super::Applied;
use super::ClusterState;
use super::Command;
use super::Rejected;
use super::Response;

/// Longest service name: Docker's rule `[a-z0-9][a-z0-9_.-]{0,62}` (it becomes part of
/// container labels and of what the CLI prints).
pub const MAX_SERVICE_NAME_LEN: usize = 63;
/// Most services in a cluster. A service record encodes to at most about 34 KiB (its text
/// is bounded by [`MAX_SPEC_TEXT_BYTES`]; pending reasons come from one batch, so there are
/// at most [`MAX_DECISIONS`] in the whole state), so 256 of them (under 9 MiB) and
/// [`MAX_TASKS`] tasks stay far below `codec::MAX_SNAPSHOT_BYTES` (64 MiB); a test encodes
/// such a state.
pub const MAX_SERVICES: usize = 256;
/// Most replicas of one service: a home-lab cluster never needs more, and it bounds the
/// slots (and pending reasons) one service can make the scheduler and the state track.
pub const MAX_REPLICAS: u32 = 1000;
/// Most task records (live and shut down, not yet forgotten). Bounds the snapshot (a task
/// record encodes to under 1 KiB, so under 10 MiB in all) and the leader's work per pass.
/// Places beyond it are skipped and the slot is recorded pending with the reason.
pub const MAX_TASKS: usize = 10_000;
/// Most command words in a service's container spec.
pub const MAX_COMMAND_ARGS: usize = 64;
/// Most environment variables in a service's container spec.
pub const MAX_ENV: usize = 64;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_KEY_LEN: usize = 256;
/// Most published ports per service.
pub const MAX_PORTS: usize = 64;
/// Most placement constraints per service.
pub const MAX_CONSTRAINTS: usize = 16;
/// Most text in one service definition (image, command words, environment names and
/// values, constraints), in bytes: keeps `CreateService` under `codec::MAX_COMMAND_BYTES`
/// (64 KiB) with room for framing.
pub const MAX_SPEC_TEXT_BYTES: usize = 32 * 1024;
/// Largest CPU reservation or limit, in thousandths of a CPU (1000 CPUs): far above any
/// machine, and small enough that the scheduler's sums over [`MAX_TASKS`] never overflow.
pub const MAX_CPU_MILLIS: u64 = 1_000_000;
/// Largest memory reservation or limit, in bytes (16 TiB), for the same reasons.
pub const MAX_MEMORY_BYTES: u64 = 1 << 44;
/// Most decisions in one `ApplyDecisions` batch: a maximal batch (every decision a
/// `Pending` with the longest name and reason) still fits `codec::MAX_COMMAND_BYTES`.
pub const MAX_DECISIONS: usize = 160;
/// Longest pending reason kept, in bytes ([`Command::apply_decisions`] clips longer ones).
pub const MAX_PENDING_REASON_LEN: usize = 256;
/// Most task reports in one `ReportTasks` batch: a maximal batch (longest error text and
/// container id in every report) still fits `codec::MAX_COMMAND_BYTES`.
pub const MAX_REPORTS: usize = 100;
/// Longest error text of a reported task, in bytes ([`Command::report_tasks`] clips).
pub const MAX_ERROR_LEN: usize = 256;
/// Longest container id in a report (Docker's are 64 hex digits).
pub const MAX_CONTAINER_ID_LEN: usize = 128;
/// Most task ids in one `ForgetTasks` command (about 9 KiB encoded at most).
pub const MAX_FORGET: usize = 1000;

/// What a user asks for when creating a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDef {
    /// Unique name, `[a-z0-9][a-z0-9_.-]{0,62}`.
    pub name: String,
    /// What every task runs.
    pub spec: ContainerSpec,
    /// `Replicated(n)` (0 to [`MAX_REPLICAS`]) or `Global` (one task per eligible node).
    pub mode: Mode,
    /// Placement constraints, all of which a node must satisfy.
    pub constraints: Vec<Constraint>,
    /// CPU reserved per task on its node, in thousandths of a CPU.
    pub reserve_cpu_millis: u64,
    /// Memory reserved per task on its node, in bytes.
    pub reserve_memory_bytes: u64,
    /// What a node's agent does when a task's container ends.
    pub restart: RestartPolicy,
}

/// Why a slot of a service could not be placed, as of the last scheduler batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSlot {
    /// The scheduler's reason (at most [`MAX_PENDING_REASON_LEN`] bytes).
    pub reason: String,
    /// When the slot was first reported pending with this reason.
    pub since_ms: u64,
}

/// A service as the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The definition, as created and then updated.
    pub def: ServiceDef,
    /// 1 at creation, bumped by every update that changes the definition.
    pub version: u64,
    /// Leader time of the creation, ms since the Unix epoch.
    pub created_ms: u64,
    /// Leader time of the last update that changed the definition.
    pub updated_ms: u64,
    /// Slots the last scheduler batch could not place, with the reason.
    pub pending: BTreeMap<Slot, PendingSlot>,
}

/// One task: one run of one slot of a service on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub service: String,
    /// The service's version when the task was created.
    pub service_version: u64,
    pub slot: Slot,
    pub node: NodeId,
    /// `Running` from placement until the task is told to shut down; never back.
    pub desired: Desired,
    /// Why it was told to shut down.
    pub shutdown_reason: Option<ShutdownReason>,
    /// What the node's agent last reported; `None` until the first report.
    pub observed: Option<TaskState>,
    /// The container the agent last reported.
    pub container: Option<ContainerId>,
    /// Exit code of the last run that ended.
    pub last_exit_code: Option<i64>,
    /// The last failure reported (kept after the task runs again, like the exit code).
    pub error: Option<String>,
    /// Restarts the agent has done.
    pub restarts: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl TaskRecord {
    /// Desired running (the scheduler counts it as the slot's task).
    pub fn is_live(&self) -> bool {
        self.desired == Desired::Running
    }
}

pub(super) fn fmt_mode(mode: &Mode) -> String {
    match mode {
        Mode::Replicated(n) => format!("replicated {n}"),
        Mode::Global => "global".to_string(),
    }
}

fn fmt_slot(slot: &Slot) -> String {
    match slot {
        Slot::Index(i) => format!(".{i}"),
        Slot::Node(n) => format!("@{}", n.short()),
    }
}

impl fmt::Display for TaskRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} {}{} on {}",
            self.id,
            self.service,
            fmt_slot(&self.slot),
            self.node.short()
        )
    }
}

/// Keeps at most `max` bytes of `text` (on a character boundary), control characters
/// replaced by spaces: what the state machine accepts for free-form text.
pub fn clip_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn valid_free_text(text: &str, max: usize) -> bool {
    text.len() <= max && !text.chars().any(char::is_control)
}

/// Docker's service name rule: `[a-z0-9][a-z0-9_.-]{0,62}`.
pub fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {}
        _ => return false,
    }
    name.len() <= MAX_SERVICE_NAME_LEN
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

impl ServiceDef {
    /// Every rule a service definition must meet, the one check used by the state machine
    /// (on `CreateService`), by the CLI (before anything is sent) and by the Docker API (before
    /// a container's service is proposed), so all three refuse the same definitions with the
    /// same words.
    pub fn validate(&self) -> Result<(), Rejected> {
        validate_def(self)
    }
}

fn validate_def(def: &ServiceDef) -> Result<(), Rejected> {
    if !valid_service_name(&def.name) {
        return Err(Rejected::BadServiceName(clip_text(
            &def.name,
            MAX_SERVICE_NAME_LEN + 1,
        )));
    }
    if let Mode::Replicated(n) = def.mode {
        if n > MAX_REPLICAS {
            return Err(Rejected::BadReplicas(n));
        }
    }
    let spec = &def.spec;
    if spec.image.is_empty()
        || spec.image.len() > shoal_engine::types::IMAGE_LEN_MAX
        || spec
            .image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Rejected::BadImage);
    }
    if spec.command.len() > MAX_COMMAND_ARGS {
        return Err(Rejected::BadSpec(format!(
            "at most {MAX_COMMAND_ARGS} command words (got {})",
            spec.command.len()
        )));
    }
    if spec.command.iter().any(|w| w.contains('\0')) {
        return Err(Rejected::BadSpec("command words cannot contain NUL".into()));
    }
    if spec.env.len() > MAX_ENV {
        return Err(Rejected::BadSpec(format!(
            "at most {MAX_ENV} environment variables (got {})",
            spec.env.len()
        )));
    }
    for (k, v) in &spec.env {
        if k.is_empty()
            || k.len() > MAX_ENV_KEY_LEN
            || k.contains('=')
            || k.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Rejected::BadSpec(format!(
                "environment variable name {:?} must be 1 to {MAX_ENV_KEY_LEN} bytes without '=', spaces or control characters",
                clip_text(k, 64)
            )));
        }
        if v.contains('\0') {
            return Err(Rejected::BadSpec(format!(
                "the value of environment variable {k} cannot contain NUL"
            )));
        }
    }
    if spec.ports.len() > MAX_PORTS {
        return Err(Rejected::BadSpec(format!(
            "at most {MAX_PORTS} published ports (got {})",
            spec.ports.len()
        )));
    }
    let mut published = BTreeSet::new();
    for p in &spec.ports {
        if p.host_port == 0 || p.container_port == 0 {
            return Err(Rejected::BadPort {
                host: p.host_port,
                container: p.container_port,
            });
        }
        if !published.insert((p.host_port, p.protocol)) {
            return Err(Rejected::DuplicatePort {
                port: p.host_port,
                protocol: p.protocol.as_str().to_string(),
            });
        }
    }
    if let Some(ms) = spec.stop_grace_ms {
        if ms > shoal_engine::types::STOP_GRACE_MS_MAX {
            return Err(Rejected::BadStopGrace(ms));
        }
    }
    if spec.cpu_millis > MAX_CPU_MILLIS
        || spec.memory_bytes > MAX_MEMORY_BYTES
        || def.reserve_cpu_millis > MAX_CPU_MILLIS
        || def.reserve_memory_bytes > MAX_MEMORY_BYTES
    {
        return Err(Rejected::BadResources);
    }
    if def.constraints.len() > MAX_CONSTRAINTS {
        return Err(Rejected::TooManyConstraints(def.constraints.len()));
    }
    let mut constraint_bytes = 0;
    for c in &def.constraints {
        let text = c.to_string();
        // A constraint is valid if it is what its own text parses to: this checks every
        // rule of `Constraint::parse` (fields, empty values, length) on a deserialised value.
        if Constraint::parse(&text).as_ref() != Ok(c) {
            return Err(Rejected::BadConstraint(clip_text(
                &text,
                MAX_CONSTRAINT_LEN,
            )));
        }
        constraint_bytes += text.len();
    }
    let text_bytes = spec.image.len()
        + spec.command.iter().map(String::len).sum::<usize>()
        + spec
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + constraint_bytes;
    if text_bytes > MAX_SPEC_TEXT_BYTES {
        return Err(Rejected::SpecTooLarge { bytes: text_bytes });
    }
    Ok(())
}

/// Whether `slot` is a slot of a service in `mode`; for a global service the slot names
/// its node, so a placement must go to that node.
pub(super) fn slot_fits(mode: &Mode, slot: &Slot) -> bool {
    match (mode, slot) {
        (Mode::Replicated(n), Slot::Index(i)) => (1..=*n).contains(i),
        (Mode::Global, Slot::Node(_)) => true,
        _ => false,
    }
}

fn validate_report(r: &TaskReport) -> Result<(), Rejected> {
    if let TaskState::Failed { reason } = &r.state {
        if !valid_free_text(reason, MAX_ERROR_LEN) {
            return Err(Rejected::BadReport {
                task: r.task,
                why: format!(
                    "the failure reason must be at most {MAX_ERROR_LEN} bytes without control characters"
                ),
            });
        }
    }
    if let Some(c) = &r.container {
        if c.0.is_empty() || !valid_free_text(&c.0, MAX_CONTAINER_ID_LEN) {
            return Err(Rejected::BadReport {
                task: r.task,
                why: format!(
                    "the container id must be 1 to {MAX_CONTAINER_ID_LEN} printable bytes"
                ),
            });
        }
    }
    Ok(())
}

/// Text of the pending reason recorded when a place is skipped for [`MAX_TASKS`].
fn task_limit_reason() -> String {
    format!(
        "the cluster holds {MAX_TASKS} tasks, its limit; remove services or let shut-down tasks be forgotten"
    )
}

impl Command {
    /// The `ApplyDecisions` command for one scheduler pass, always accepted by the state
    /// machine: shutdowns first, then placements, then pending reasons (so a truncated pass
    /// loses only reasons, and a slot's old task is shut down before its new one is placed),
    /// at most [`MAX_DECISIONS`] of them, reasons clipped to [`MAX_PENDING_REASON_LEN`].
    pub fn apply_decisions(decisions: Vec<Decision>, now_ms: u64) -> Command {
        let rank = |d: &Decision| match d {
            Decision::Shutdown { .. } => 0,
            Decision::Place { .. } => 1,
            Decision::Pending { .. } => 2,
        };
        let mut decisions = decisions;
        decisions.sort_by_key(rank); // stable: keeps the scheduler's order within a kind
        decisions.truncate(MAX_DECISIONS);
        for d in &mut decisions {
            if let Decision::Pending { reason, .. } = d {
                if !valid_free_text(reason, MAX_PENDING_REASON_LEN) {
                    *reason = clip_text(reason, MAX_PENDING_REASON_LEN);
                }
            }
        }
        Command::ApplyDecisions { decisions, now_ms }
    }

    /// `ReportTasks` commands for a node's reports, always accepted by the state machine
    /// (if the node is registered): failure reasons clipped to [`MAX_ERROR_LEN`], container
    /// ids that cannot be valid dropped, in batches of at most [`MAX_REPORTS`].
    pub fn report_tasks(node: NodeId, reports: Vec<TaskReport>, now_ms: u64) -> Vec<Command> {
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        for mut r in reports {
            if let TaskState::Failed { reason } = &mut r.state {
                if !valid_free_text(reason, MAX_ERROR_LEN) {
                    *reason = clip_text(reason, MAX_ERROR_LEN);
                }
            }
            if r.container
                .as_ref()
                .is_some_and(|c| c.0.is_empty() || !valid_free_text(&c.0, MAX_CONTAINER_ID_LEN))
            {
                r.container = None;
            }
            batch.push(r);
            if batch.len() == MAX_REPORTS {
                batches.push(Command::ReportTasks {
                    node,
                    reports: std::mem::take(&mut batch),
                    now_ms,
                });
            }
        }
        if !batch.is_empty() {
            batches.push(Command::ReportTasks {
                node,
                reports: batch,
                now_ms,
            });
        }
        batches
    }
}

/// The host ports a spec publishes, as the scheduler counts them (one entry per
/// (port, protocol); validation already refuses duplicates).
pub fn host_ports(spec: &ContainerSpec) -> Vec<HostPort> {
    let set: BTreeSet<HostPort> = spec
        .ports
        .iter()
        .map(|p| HostPort {
            port: p.host_port,
            protocol: match p.protocol {
                Protocol::Tcp => PortProtocol::Tcp,
                Protocol::Udp => PortProtocol::Udp,
            },
        })
        .collect();
    set.into_iter().collect()
}

impl ClusterState {
    pub(super) fn create_service(&mut self, def: ServiceDef, now_ms: u64) -> Response {
        validate_def(&def)?;
        if self.services.contains_key(&def.name) {
            return Err(Rejected::ServiceExists(def.name));
        }
        if self.services.len() >= MAX_SERVICES {
            return Err(Rejected::TooManyServices);
        }
        self.services.insert(
            def.name.clone(),
            ServiceRecord {
                def,
                version: 1,
                created_ms: now_ms,
                updated_ms: now_ms,
                pending: BTreeMap::new(),
            },
        );
        Ok(Applied::ServiceCreated)
    }

    pub(super) fn update_service(
        &mut self,
        name: String,
        replicas: Option<u32>,
        now_ms: u64,
    ) -> Response {
        let Some(service) = self.services.get(&name) else {
            return Err(Rejected::UnknownService(name));
        };
        let Some(replicas) = replicas else {
            return Ok(Applied::ServiceUpdated {
                version: service.version,
                changed: false,
            });
        };
        match service.def.mode {
            Mode::Global => return Err(Rejected::ScaleGlobal(name)),
            Mode::Replicated(n) if n == replicas => {
                return Ok(Applied::ServiceUpdated {
                    version: service.version,
                    changed: false,
                })
            }
            Mode::Replicated(_) => {}
        }
        if replicas > MAX_REPLICAS {
            return Err(Rejected::BadReplicas(replicas));
        }
        // Validated: change from here on.
        let mode = Mode::Replicated(replicas);
        let version = match self.services.get_mut(&name) {
            Some(service) => {
                service.def.mode = mode;
                service.version = service.version.saturating_add(1);
                service.updated_ms = now_ms;
                service.pending.retain(|slot, _| slot_fits(&mode, slot));
                service.version
            }
            None => return Err(Rejected::UnknownService(name)),
        };
        // Scaled down: the tasks of the slots that are gone shut down now (the scheduler
        // would decide the same on its next pass).
        for t in self.tasks.values_mut() {
            if t.service == name && t.is_live() && !slot_fits(&mode, &t.slot) {
                t.desired = Desired::Shutdown;
                t.shutdown_reason = Some(ShutdownReason::ScaledDown);
                t.updated_ms = now_ms;
            }
        }
        Ok(Applied::ServiceUpdated {
            version,
            changed: true,
        })
    }

    pub(super) fn remove_service(&mut self, name: String, now_ms: u64) -> Response {
        if self.services.remove(&name).is_none() {
            return Err(Rejected::UnknownService(name));
        }
        let mut shut_down = 0;
        for t in self.tasks.values_mut() {
            if t.service == name && t.is_live() {
                t.desired = Desired::Shutdown;
                t.shutdown_reason = Some(ShutdownReason::ServiceRemoved);
                t.updated_ms = now_ms;
                shut_down += 1;
            }
        }
        Ok(Applied::ServiceRemoved { shut_down })
    }

    pub(super) fn apply_decisions_cmd(
        &mut self,
        decisions: Vec<Decision>,
        now_ms: u64,
    ) -> Response {
        if decisions.len() > MAX_DECISIONS {
            return Err(Rejected::TooManyDecisions(decisions.len()));
        }
        if decisions.iter().any(|d| {
            matches!(d, Decision::Pending { reason, .. } if !valid_free_text(reason, MAX_PENDING_REASON_LEN))
        }) {
            return Err(Rejected::BadPendingReason);
        }
        // Validated: from here on every decision is applied or skipped, never rejected.
        let mut live: BTreeSet<(String, Slot)> = self
            .tasks
            .values()
            .filter(|t| t.is_live())
            .map(|t| (t.service.clone(), t.slot))
            .collect();
        let mut pending: BTreeMap<String, BTreeMap<Slot, String>> = BTreeMap::new();
        let mut created = Vec::new();
        let mut shut_down = 0u32;
        let mut skipped = 0u32;
        for d in decisions {
            match d {
                Decision::Place {
                    service,
                    slot,
                    node,
                } => {
                    let Some((mode, version)) =
                        self.services.get(&service).map(|s| (s.def.mode, s.version))
                    else {
                        skipped += 1;
                        continue;
                    };
                    let fits = slot_fits(&mode, &slot)
                        && match slot {
                            Slot::Node(target) => target == node,
                            Slot::Index(_) => true,
                        };
                    if !fits
                        || !self.nodes.contains_key(&node)
                        || self.availability_of(&node) != Availability::Active
                        || live.contains(&(service.clone(), slot))
                    {
                        skipped += 1;
                        continue;
                    }
                    let id = self.next_task_id.max(1);
                    let next = id.checked_add(1);
                    if self.tasks.len() >= MAX_TASKS || next.is_none() {
                        pending
                            .entry(service)
                            .or_default()
                            .insert(slot, task_limit_reason());
                        skipped += 1;
                        continue;
                    }
                    self.next_task_id = next.unwrap_or(u64::MAX);
                    if let Some(p) = pending.get_mut(&service) {
                        p.remove(&slot);
                    }
                    live.insert((service.clone(), slot));
                    self.tasks.insert(
                        id,
                        TaskRecord {
                            id,
                            service,
                            service_version: version,
                            slot,
                            node,
                            desired: Desired::Running,
                            shutdown_reason: None,
                            observed: None,
                            container: None,
                            last_exit_code: None,
                            error: None,
                            restarts: 0,
                            created_ms: now_ms,
                            updated_ms: now_ms,
                        },
                    );
                    created.push(id);
                }
                Decision::Shutdown { task, reason } => match self.tasks.get_mut(&task) {
                    Some(t) if t.is_live() => {
                        t.desired = Desired::Shutdown;
                        t.shutdown_reason = Some(reason);
                        t.updated_ms = now_ms;
                        live.remove(&(t.service.clone(), t.slot));
                        shut_down += 1;
                    }
                    _ => skipped += 1,
                },
                Decision::Pending {
                    service,
                    slot,
                    reason,
                } => {
                    let known = self
                        .services
                        .get(&service)
                        .is_some_and(|s| slot_fits(&s.def.mode, &slot));
                    if known && !live.contains(&(service.clone(), slot)) {
                        pending.entry(service).or_default().insert(slot, reason);
                    } else {
                        skipped += 1;
                    }
                }
            }
        }
        // The batch's pending reasons replace the recorded ones; an unchanged reason keeps
        // its `since_ms`, so re-applying the same pass changes nothing.
        for (name, service) in self.services.iter_mut() {
            let now_pending = pending.remove(name).unwrap_or_default();
            let old = std::mem::take(&mut service.pending);
            service.pending = now_pending
                .into_iter()
                .map(|(slot, reason)| {
                    let since_ms = match old.get(&slot) {
                        Some(p) if p.reason == reason => p.since_ms,
                        _ => now_ms,
                    };
                    (slot, PendingSlot { reason, since_ms })
                })
                .collect();
        }
        Ok(Applied::DecisionsApplied {
            created,
            shut_down,
            skipped,
        })
    }

    pub(super) fn report_tasks_cmd(
        &mut self,
        node: NodeId,
        reports: Vec<TaskReport>,
        now_ms: u64,
    ) -> Response {
        if self.revoked.contains(&node) {
            return Err(Rejected::NodeRevoked(node));
        }
        if !self.nodes.contains_key(&node) {
            return Err(Rejected::UnknownNode(node));
        }
        if reports.len() > MAX_REPORTS {
            return Err(Rejected::TooManyReports(reports.len()));
        }
        for r in &reports {
            validate_report(r)?;
        }
        let mut applied = 0u32;
        let mut ignored = 0u32;
        for r in reports {
            let Some(t) = self.tasks.get_mut(&r.task) else {
                ignored += 1;
                continue;
            };
            if t.node != node {
                // Not this node's task (any more): its word does not count.
                ignored += 1;
                continue;
            }
            let error = match &r.state {
                TaskState::Failed { reason } => Some(reason.clone()),
                _ => t.error.clone(),
            };
            let changed = t.observed.as_ref() != Some(&r.state)
                || t.container != r.container
                || t.last_exit_code != r.last_exit_code
                || t.restarts != r.restarts
                || t.error != error;
            if changed {
                t.observed = Some(r.state);
                t.container = r.container;
                t.last_exit_code = r.last_exit_code;
                t.restarts = r.restarts;
                t.error = error;
                t.updated_ms = now_ms;
            }
            applied += 1;
        }
        Ok(Applied::TasksReported { applied, ignored })
    }

    pub(super) fn forget_tasks(&mut self, ids: Vec<TaskId>) -> Response {
        if ids.len() > MAX_FORGET {
            return Err(Rejected::TooManyTaskIds(ids.len()));
        }
        let mut removed = 0u32;
        let mut kept = 0u32;
        for id in ids {
            if self.tasks.get(&id).is_some_and(|t| self.is_forgettable(t)) {
                self.tasks.remove(&id);
                removed += 1;
            } else {
                kept += 1;
            }
        }
        Ok(Applied::TasksForgotten { removed, kept })
    }

    pub(super) fn set_availability(
        &mut self,
        node: NodeId,
        availability: Availability,
    ) -> Response {
        if self.revoked.contains(&node) {
            return Err(Rejected::NodeRevoked(node));
        }
        if !self.nodes.contains_key(&node) {
            return Err(Rejected::UnknownNode(node));
        }
        let changed = match availability {
            // Active is the default: only drained nodes are stored.
            Availability::Active => self.availability.remove(&node).is_some(),
            Availability::Drain => self.availability.insert(node, availability).is_none(),
        };
        Ok(Applied::AvailabilitySet { changed })
    }

    /// Shuts down the live tasks of a node that is revoked (called by `Revoke`).
    pub(super) fn shut_down_tasks_of(&mut self, node: &NodeId) {
        for t in self.tasks.values_mut() {
            if t.node == *node && t.is_live() {
                t.desired = Desired::Shutdown;
                t.shutdown_reason = Some(ShutdownReason::NodeGone);
            }
        }
    }

    fn is_forgettable(&self, t: &TaskRecord) -> bool {
        !t.is_live()
            && (t.observed == Some(TaskState::Shutdown) || !self.nodes.contains_key(&t.node))
    }

    /// A node's availability (`Active` unless drained).
    pub fn availability_of(&self, node: &NodeId) -> Availability {
        self.availability
            .get(node)
            .copied()
            .unwrap_or(Availability::Active)
    }

    /// What the scheduler needs from the replicated state: every service, and the live
    /// tasks (desired running; tasks told to shut down are left out, as it expects).
    /// Node views combine the node table with membership's health and facts, so they are
    /// built by the caller (with [`Self::availability_of`]).
    pub fn scheduler_inputs(&self) -> (Vec<ServiceView>, Vec<TaskView>) {
        // Containers of the Docker API stay with their node unless their restart policy
        // is `always` (classic swarm's rule); services always move.
        let staying: std::collections::BTreeSet<&str> = self
            .containers
            .values()
            .filter_map(|c| self.services.get(&c.service))
            .filter(|s| s.def.restart != RestartPolicy::Always)
            .map(|s| s.def.name.as_str())
            .collect();
        let services = self
            .services
            .values()
            .map(|s| ServiceView {
                name: s.def.name.clone(),
                mode: s.def.mode,
                constraints: s.def.constraints.clone(),
                reserve_cpu_millis: s.def.reserve_cpu_millis,
                reserve_memory_bytes: s.def.reserve_memory_bytes,
                host_ports: host_ports(&s.def.spec),
                stays_with_node: staying.contains(s.def.name.as_str()),
                group: self.service_group(&s.def.name),
            })
            .collect();
        let tasks = self
            .tasks
            .values()
            .filter(|t| t.is_live())
            .map(|t| TaskView {
                id: t.id,
                service: t.service.clone(),
                slot: t.slot,
                node: t.node,
            })
            .collect();
        (services, tasks)
    }

    /// The tasks assigned to `node`, as its agent's reconciler takes them: live ones to run,
    /// shut-down ones to remove (until forgotten), by task id.
    pub fn tasks_for_node(&self, node: &NodeId) -> Vec<AssignedTask> {
        self.tasks
            .values()
            .filter(|t| t.node == *node)
            .map(|t| {
                let service = self.services.get(&t.service);
                AssignedTask {
                    id: t.id,
                    service: t.service.clone(),
                    spec: service.map(|s| s.def.spec.clone()).unwrap_or_default(),
                    // A live task always has its service; `Shutdown` keeps this total.
                    desired: if service.is_some() {
                        t.desired
                    } else {
                        Desired::Shutdown
                    },
                    restart: service.map_or(RestartPolicy::Never, |s| s.def.restart),
                    network: self.network_join(&t.service),
                }
            })
            .collect()
    }

    /// The tasks of a service (live and shut down), by task id: what `service ps` shows.
    pub fn tasks_of_service<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.tasks.values().filter(move |t| t.service == name)
    }

    /// Tasks `ForgetTasks` would remove: told to shut down, and either reported shut down
    /// or on a node that is no longer registered.
    pub fn forgettable_tasks(&self) -> Vec<TaskId> {
        self.tasks
            .values()
            .filter(|t| self.is_forgettable(t))
            .map(|t| t.id)
            .collect()
    }
}
