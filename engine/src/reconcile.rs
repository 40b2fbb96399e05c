//! The node-side reconciler: a pure state machine (no I/O, no clock: `now_ms` comes in)
//! from the tasks assigned to this node and the containers the engine shows for this
//! node, to actions (create, start, stop+remove) and reports of observed task state.
//!
//! Rules, in the order they are applied on every pass:
//! 1. containers labelled for another node are never touched (they are not ours, even if
//!    the engine is shared);
//! 2. a container whose task is not assigned to this node any more, or is desired
//!    shutdown, is stopped and removed (so a node back from a partition removes what the
//!    cluster gave to someone else); a shutdown task with no container left reports
//!    `Shutdown`;
//! 3. a task never has two containers: the best one (running > starting > created > ended,
//!    then by name) is kept and the others are removed;
//! 4. an assigned task without a container gets one (create + start);
//! 5. a container that ended (exited, failed, or vanished) is restarted per the task's
//!    policy (`Never`; `OnFailure` with a maximum number of restarts, exit code 0 is
//!    success; `Always`) after a backoff that doubles from `backoff_base_ms` up to
//!    `backoff_max_ms` and resets once the task has run for `backoff_reset_after_ms`;
//!    an exited container is started again in place, a failed one is replaced;
//! 6. the observed state (starting, running, exited with code, failed with reason,
//!    shutdown) is reported once per change, with the number of restarts so far.
//!
//! Actions must be carried out (see [`crate::driver`]) before the next pass, and failures
//! fed back through [`Reconciler::action_failed`].

use crate::types::{ContainerId, ContainerInfo, ContainerSpec, ContainerState, CreateRequest, Owner, TaskId};
use crate::EngineError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the cluster wants of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    Running,
    Shutdown,
}

/// When a task whose container ended gets a new run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never: the task ends with its container.
    Never,
    /// After a non-zero exit or a failure, at most `max_attempts` restarts in total.
    OnFailure { max_attempts: u32 },
    /// Whatever the exit code, forever (with backoff).
    Always,
}

/// A task the cluster assigned to this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedTask {
    pub id: TaskId,
    pub service: String,
    pub spec: ContainerSpec,
    pub desired: Desired,
    pub restart: RestartPolicy,
    /// The network its container joins (containers of the Docker API on a network).
    pub network: Option<crate::types::NetworkJoin>,
}

/// Observed state of a task, as reported to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Starting,
    Running,
    Exited { code: i64 },
    Failed { reason: String },
    /// Desired shutdown and no container left.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task: TaskId,
    pub state: TaskState,
    /// Restarts done by this node's agent so far.
    pub restarts: u32,
    /// Exit code of the last run that ended, if any (kept while the task runs again).
    pub last_exit_code: Option<i64>,
    pub container: Option<ContainerId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveReason {
    /// The task is no longer assigned to this node.
    NotAssigned,
    DesiredShutdown,
    /// A second container for a task.
    Duplicate,
    /// A failed container replaced by a new one.
    Replace,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Create and start a container.
    Create { task: TaskId, request: CreateRequest },
    /// Start an existing container (created, or exited and restarted in place).
    Start { task: TaskId, container: ContainerId },
    /// Stop and remove a container.
    Remove { task: TaskId, container: ContainerId, reason: RemoveReason },
    Report(TaskReport),
}

#[derive(Debug, Clone, Copy)]
pub struct ReconcilerConfig {
    /// First restart delay; doubles with each failure in a row.
    pub backoff_base_ms: u64,
    /// Cap on the restart delay (so a crash-looping task costs at most one start per cap).
    pub backoff_max_ms: u64,
    /// A task that has run this long is healthy again: its backoff starts over.
    pub backoff_reset_after_ms: u64,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self { backoff_base_ms: 500, backoff_max_ms: 30_000, backoff_reset_after_ms: 10_000 }
    }
}

/// What the reconciler remembers of one task between passes.
#[derive(Debug, Clone, Default)]
struct Record {
    /// Restarts done (count toward `OnFailure::max_attempts`).
    restarts: u32,
    /// Ends in a row without a healthy run in between (the backoff exponent).
    failures_in_row: u32,
    /// The current run has ended and that end has been counted; waiting for the restart.
    ended: bool,
    /// Why the last run ended, when it failed (reported while no container shows it).
    last_failure: Option<String>,
    last_exit_code: Option<i64>,
    /// No more restarts for this task.
    terminal: bool,
    /// A restart is not due before this time.
    next_start_at_ms: u64,
    running_since_ms: Option<u64>,
    /// This task has had a container (so its disappearance is an end).
    had_container: bool,
    /// A create was asked for and no container has been seen since (if the create did not
    /// happen, e.g. the engine was unreachable, the next pass simply asks again).
    pending_create: bool,
    last_report: Option<TaskReport>,
}

/// The reconciler of one node. Holds only bookkeeping (restart counts, backoff deadlines,
/// last reports); the truth is the assigned tasks and the observed containers.
#[derive(Debug)]
pub struct Reconciler {
    node: String,
    cfg: ReconcilerConfig,
    records: BTreeMap<TaskId, Record>,
}

fn backoff(cfg: &ReconcilerConfig, failures_in_row: u32) -> u64 {
    let exp = failures_in_row.saturating_sub(1).min(32);
    cfg.backoff_base_ms.saturating_mul(1u64 << exp).min(cfg.backoff_max_ms)
}

fn rank(state: &ContainerState) -> u8 {
    match state {
        ContainerState::Running => 0,
        ContainerState::Starting => 1,
        ContainerState::Created => 2,
        ContainerState::Exited { .. } => 3,
        ContainerState::Failed { .. } => 4,
        ContainerState::Missing => 5,
    }
}

impl Reconciler {
    /// `node` is this node's id as written in the `shoal.node` label.
    pub fn new(node: impl Into<String>, cfg: ReconcilerConfig) -> Self {
        Self { node: node.into(), cfg, records: BTreeMap::new() }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Restart delay after `failures_in_row` ends in a row (>= 1).
    pub fn backoff_ms(&self, failures_in_row: u32) -> u64 {
        backoff(&self.cfg, failures_in_row)
    }

    /// One pass. `observed` is what the engine listed for this node.
    pub fn reconcile(&mut self, now_ms: u64, assigned: &[AssignedTask], observed: &[ContainerInfo]) -> Vec<Action> {
        let mut actions = Vec::new();
        let tasks: BTreeMap<TaskId, &AssignedTask> = assigned.iter().map(|t| (t.id, t)).collect();
        let mut by_task: BTreeMap<TaskId, Vec<&ContainerInfo>> = BTreeMap::new();
        for c in observed {
            // Rule 1: never touch another node's containers.
            if c.owner.node != self.node || c.state == ContainerState::Missing {
                continue;
            }
            by_task.entry(c.owner.task).or_default().push(c);
        }

        // Rule 2: containers of tasks that are not ours to run.
        for (task, containers) in &by_task {
            let reason = match tasks.get(task) {
                None => RemoveReason::NotAssigned,
                Some(t) if t.desired == Desired::Shutdown => RemoveReason::DesiredShutdown,
                Some(_) => continue,
            };
            for c in containers {
                actions.push(Action::Remove { task: *task, container: c.id.clone(), reason });
            }
        }

        for t in tasks.values() {
            let mut containers = by_task.remove(&t.id).unwrap_or_default();
            if t.desired == Desired::Shutdown {
                if containers.is_empty() {
                    let report = self.report_of(t.id, TaskState::Shutdown, None);
                    self.push_report(&mut actions, report);
                }
                continue;
            }
            // Rule 3: keep the best container, remove the others.
            containers.sort_by(|a, b| rank(&a.state).cmp(&rank(&b.state)).then(a.name.cmp(&b.name)).then(a.id.cmp(&b.id)));
            let mut rest = containers.into_iter();
            let keep = rest.next();
            for extra in rest {
                actions.push(Action::Remove { task: t.id, container: extra.id.clone(), reason: RemoveReason::Duplicate });
            }
            self.task_pass(now_ms, t, keep, &mut actions);
        }

        // Forget tasks that are neither assigned nor have a container.
        let observed_tasks: BTreeSet<TaskId> = observed.iter().filter(|c| c.owner.node == self.node).map(|c| c.owner.task).collect();
        self.records.retain(|id, _| tasks.contains_key(id) || observed_tasks.contains(id));
        actions
    }

    fn task_pass(&mut self, now_ms: u64, t: &AssignedTask, keep: Option<&ContainerInfo>, actions: &mut Vec<Action>) {
        let state = keep.map_or(ContainerState::Missing, |c| c.state.clone());
        let container = keep.map(|c| c.id.clone());
        if keep.is_some() {
            let rec = self.records.entry(t.id).or_default();
            rec.had_container = true;
            rec.pending_create = false;
        }
        match state {
            ContainerState::Running | ContainerState::Starting => {
                let rec = self.records.entry(t.id).or_default();
                rec.had_container = true;
                rec.ended = false;
                let report_state = if state == ContainerState::Running {
                    let since = *rec.running_since_ms.get_or_insert(now_ms);
                    if now_ms.saturating_sub(since) >= self.cfg.backoff_reset_after_ms {
                        rec.failures_in_row = 0;
                    }
                    TaskState::Running
                } else {
                    TaskState::Starting
                };
                let report = self.report_of(t.id, report_state, container);
                self.push_report(actions, report);
            }
            ContainerState::Created => {
                let rec = self.records.entry(t.id).or_default();
                rec.had_container = true;
                if !rec.ended || (!rec.terminal && now_ms >= rec.next_start_at_ms) {
                    if rec.ended {
                        rec.restarts = rec.restarts.saturating_add(1);
                        rec.ended = false;
                    }
                    if let Some(c) = container {
                        actions.push(Action::Start { task: t.id, container: c });
                    }
                }
            }
            ContainerState::Exited { code } => {
                self.count_end(now_ms, t, code != 0, Some(code), None);
                let report = self.report_of(t.id, TaskState::Exited { code }, container.clone());
                self.push_report(actions, report);
                if self.restart_due(now_ms, t.id) {
                    if let Some(c) = container {
                        actions.push(Action::Start { task: t.id, container: c });
                    }
                }
            }
            ContainerState::Failed { reason } => {
                self.count_end(now_ms, t, true, None, Some(reason.clone()));
                let report = self.report_of(t.id, TaskState::Failed { reason }, container.clone());
                self.push_report(actions, report);
                if self.restart_due(now_ms, t.id) {
                    if let Some(c) = container {
                        actions.push(Action::Remove { task: t.id, container: c, reason: RemoveReason::Replace });
                    }
                    let create = self.create(t);
                    actions.push(create);
                }
            }
            ContainerState::Missing => {
                let rec = self.records.entry(t.id).or_default();
                if rec.pending_create || (!rec.had_container && !rec.ended) {
                    // Rule 4: first run (or a create that did not happen).
                    rec.running_since_ms = None;
                    let create = self.create(t);
                    actions.push(create);
                    return;
                }
                if !rec.ended {
                    self.count_end(now_ms, t, true, None, Some("container disappeared".to_string()));
                }
                let reason = self.records.get(&t.id).and_then(|r| r.last_failure.clone());
                let state = match (reason, self.records.get(&t.id).and_then(|r| r.last_exit_code)) {
                    (Some(reason), _) => TaskState::Failed { reason },
                    (None, Some(code)) => TaskState::Exited { code },
                    (None, None) => TaskState::Failed { reason: "container disappeared".to_string() },
                };
                let report = self.report_of(t.id, state, None);
                self.push_report(actions, report);
                if self.restart_due(now_ms, t.id) {
                    let create = self.create(t);
                    actions.push(create);
                }
            }
        }
    }

    /// Counts the end of the current run once, deciding whether and when it restarts.
    fn count_end(&mut self, now_ms: u64, t: &AssignedTask, failed: bool, code: Option<i64>, failure: Option<String>) {
        let cfg = self.cfg;
        let rec = self.records.entry(t.id).or_default();
        rec.pending_create = false;
        if rec.ended {
            return;
        }
        rec.ended = true;
        rec.had_container = true;
        rec.running_since_ms = None;
        if code.is_some() {
            rec.last_exit_code = code;
        }
        rec.last_failure = failure;
        let restart = match t.restart {
            RestartPolicy::Never => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure { max_attempts } => failed && rec.restarts < max_attempts,
        };
        if restart {
            rec.failures_in_row = rec.failures_in_row.saturating_add(1);
            rec.next_start_at_ms = now_ms.saturating_add(backoff(&cfg, rec.failures_in_row));
        } else {
            rec.terminal = true;
        }
    }

    /// If the ended run of `task` is due for its restart, marks it restarted and says yes.
    fn restart_due(&mut self, now_ms: u64, task: TaskId) -> bool {
        match self.records.get_mut(&task) {
            Some(rec) if rec.ended && !rec.terminal && now_ms >= rec.next_start_at_ms => {
                rec.ended = false;
                rec.restarts = rec.restarts.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    fn create(&mut self, t: &AssignedTask) -> Action {
        self.records.entry(t.id).or_default().pending_create = true;
        let owner = Owner { node: self.node.clone(), service: t.service.clone(), task: t.id };
        Action::Create { task: t.id, request: CreateRequest { owner, spec: t.spec.clone(), network: t.network.clone() } }
    }

    fn report_of(&self, task: TaskId, state: TaskState, container: Option<ContainerId>) -> TaskReport {
        let rec = self.records.get(&task);
        TaskReport {
            task,
            state,
            restarts: rec.map_or(0, |r| r.restarts),
            last_exit_code: rec.and_then(|r| r.last_exit_code),
            container,
        }
    }

    /// Pushes `report` unless it is the same as the last one sent for this task.
    fn push_report(&mut self, actions: &mut Vec<Action>, report: TaskReport) {
        let rec = self.records.entry(report.task).or_default();
        if rec.last_report.as_ref() != Some(&report) {
            rec.last_report = Some(report.clone());
            actions.push(Action::Report(report));
        }
    }

    /// The last report made for every task still known, by task id: to resend in full
    /// (e.g. to a new leader) since reports are otherwise only made on change.
    pub fn last_reports(&self) -> Vec<TaskReport> {
        self.records.values().filter_map(|r| r.last_report.clone()).collect()
    }

    /// Feeds back an action that failed. A create or start that failed for a reason of the
    /// task (image missing, bad command, port taken) ends the run like a crash would, under
    /// the restart policy; an unavailable engine changes nothing (the next pass retries).
    /// Returns the report to send, if the task's state changed.
    pub fn action_failed(&mut self, now_ms: u64, task: &AssignedTask, action: &Action, err: &EngineError) -> Option<TaskReport> {
        if matches!(err, EngineError::Unavailable(_)) {
            return None;
        }
        match action {
            Action::Create { .. } | Action::Start { .. } => {
                self.count_end(now_ms, task, true, None, Some(err.to_string()));
                let report = self.report_of(task.id, TaskState::Failed { reason: err.to_string() }, None);
                let mut out = Vec::new();
                self.push_report(&mut out, report);
                out.into_iter().find_map(|a| match a {
                    Action::Report(r) => Some(r),
                    _ => None,
                })
            }
            // A failed removal is retried on the next pass: the container is still listed.
            Action::Remove { .. } | Action::Report(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NODE: &str = "n1";

    fn cfg() -> ReconcilerConfig {
        ReconcilerConfig { backoff_base_ms: 500, backoff_max_ms: 4_000, backoff_reset_after_ms: 10_000 }
    }

    fn task(id: TaskId, restart: RestartPolicy) -> AssignedTask {
        AssignedTask { network: None,
            id,
            service: "web".to_string(),
            spec: ContainerSpec { image: "img:1".to_string(), ..Default::default() },
            desired: Desired::Running,
            restart,
        }
    }

    fn container(node: &str, task: TaskId, id: &str, state: ContainerState) -> ContainerInfo {
        let owner = Owner { node: node.to_string(), service: "web".to_string(), task };
        ContainerInfo { id: ContainerId(id.to_string()), name: format!("{}-{id}", owner.container_name()), owner, state }
    }

    fn reports(actions: &[Action]) -> Vec<&TaskReport> {
        actions.iter().filter_map(|a| if let Action::Report(r) = a { Some(r) } else { None }).collect()
    }

    fn non_reports(actions: &[Action]) -> Vec<&Action> {
        actions.iter().filter(|a| !matches!(a, Action::Report(_))).collect()
    }

    fn is_start(a: &Action, id: &str) -> bool {
        matches!(a, Action::Start { container, .. } if container.0 == id)
    }

    #[test]
    fn an_assigned_task_without_container_gets_one_labelled_for_this_node() {
        let mut r = Reconciler::new(NODE, cfg());
        let actions = r.reconcile(0, &[task(1, RestartPolicy::Never)], &[]);
        assert_eq!(actions.len(), 1);
        match &actions[0] {
            Action::Create { task, request } => {
                assert_eq!(*task, 1);
                assert_eq!(request.owner, Owner { node: NODE.to_string(), service: "web".to_string(), task: 1 });
                assert_eq!(request.spec.image, "img:1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_running_container_is_reported_once() {
        let mut r = Reconciler::new(NODE, cfg());
        let obs = [container(NODE, 1, "c1", ContainerState::Running)];
        let actions = r.reconcile(0, &[task(1, RestartPolicy::Never)], &obs);
        assert_eq!(actions.len(), 1);
        assert_eq!(reports(&actions)[0].state, TaskState::Running);
        assert_eq!(reports(&actions)[0].container, Some(ContainerId("c1".to_string())));
        assert!(r.reconcile(100, &[task(1, RestartPolicy::Never)], &obs).is_empty());
    }

    #[test]
    fn a_starting_container_is_left_alone_and_reported_starting() {
        let mut r = Reconciler::new(NODE, cfg());
        let obs = [container(NODE, 1, "c1", ContainerState::Starting)];
        let actions = r.reconcile(0, &[task(1, RestartPolicy::Never)], &obs);
        assert_eq!(actions.len(), 1);
        assert_eq!(reports(&actions)[0].state, TaskState::Starting);
    }

    #[test]
    fn a_created_container_is_started() {
        let mut r = Reconciler::new(NODE, cfg());
        let obs = [container(NODE, 1, "c1", ContainerState::Created)];
        let actions = r.reconcile(0, &[task(1, RestartPolicy::Never)], &obs);
        assert_eq!(actions.len(), 1);
        assert!(is_start(&actions[0], "c1"));
    }

    #[test]
    fn a_container_of_a_task_no_longer_assigned_here_is_removed() {
        // The node was partitioned away; the cluster gave task 9 to someone else.
        let mut r = Reconciler::new(NODE, cfg());
        let obs = [container(NODE, 9, "c9", ContainerState::Running), container(NODE, 1, "c1", ContainerState::Running)];
        let actions = r.reconcile(0, &[task(1, RestartPolicy::Never)], &obs);
        assert_eq!(
            non_reports(&actions),
            vec![&Action::Remove { task: 9, container: ContainerId("c9".to_string()), reason: RemoveReason::NotAssigned }]
        );
    }

    #[test]
    fn containers_of_other_nodes_are_never_touched() {
        let mut r = Reconciler::new(NODE, cfg());
        let obs = [container("n2", 9, "c9", ContainerState::Running), container("n2", 1, "c1", ContainerState::Exited { code: 1 })];
        // Task 1 is ours: the other node's container for task 1 does not count as ours.
        let actions = r.reconcile(0, &[task(1, RestartPolicy::Never)], &obs);
        assert_eq!(actions.len(), 1);
        assert!(matches!(&actions[0], Action::Create { task: 1, .. }));
    }

    #[test]
    fn desired_shutdown_removes_the_container_then_reports_shutdown() {
        let mut r = Reconciler::new(NODE, cfg());
        let mut t = task(1, RestartPolicy::Always);
        t.desired = Desired::Shutdown;
        let obs = [container(NODE, 1, "c1", ContainerState::Running)];
        let actions = r.reconcile(0, std::slice::from_ref(&t), &obs);
        assert_eq!(
            actions,
            vec![Action::Remove { task: 1, container: ContainerId("c1".to_string()), reason: RemoveReason::DesiredShutdown }]
        );
        let actions = r.reconcile(10, std::slice::from_ref(&t), &[]);
        assert_eq!(reports(&actions).len(), 1);
        assert_eq!(reports(&actions)[0].state, TaskState::Shutdown);
        assert!(r.reconcile(20, &[t], &[]).is_empty(), "shutdown reported once, nothing created");
    }

    #[test]
    fn never_two_containers_for_one_task_the_running_one_is_kept() {
        let mut r = Reconciler::new(NODE, cfg());
        let obs = [
            container(NODE, 1, "a-exited", ContainerState::Exited { code: 0 }),
            container(NODE, 1, "b-running", ContainerState::Running),
            container(NODE, 1, "c-created", ContainerState::Created),
        ];
        let actions = r.reconcile(0, &[task(1, RestartPolicy::Always)], &obs);
        let removed: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { container, reason: RemoveReason::Duplicate, .. } => Some(container.0.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(removed, vec!["c-created", "a-exited"]);
        assert_eq!(non_reports(&actions).len(), 2, "no start, no create: {actions:?}");
        assert_eq!(reports(&actions)[0].state, TaskState::Running);
    }

    #[test]
    fn on_failure_restarts_after_backoff_and_reports_the_exit_code() {
        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::OnFailure { max_attempts: 3 })];
        let exited = [container(NODE, 1, "c1", ContainerState::Exited { code: 3 })];
        let actions = r.reconcile(1_000, &t, &exited);
        assert_eq!(actions.len(), 1, "report only, restart waits for the backoff: {actions:?}");
        let rep = reports(&actions)[0];
        assert_eq!((rep.state.clone(), rep.restarts, rep.last_exit_code), (TaskState::Exited { code: 3 }, 0, Some(3)));
        assert!(r.reconcile(1_499, &t, &exited).is_empty());
        let actions = r.reconcile(1_500, &t, &exited);
        assert_eq!(actions.len(), 1);
        assert!(is_start(&actions[0], "c1"), "restarted in place: {actions:?}");
        let running = [container(NODE, 1, "c1", ContainerState::Running)];
        let actions = r.reconcile(1_600, &t, &running);
        let rep = reports(&actions)[0];
        assert_eq!((rep.state.clone(), rep.restarts, rep.last_exit_code), (TaskState::Running, 1, Some(3)));
    }

    #[test]
    fn on_failure_stops_after_max_attempts() {
        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::OnFailure { max_attempts: 2 })];
        let running = [container(NODE, 1, "c1", ContainerState::Running)];
        let exited = [container(NODE, 1, "c1", ContainerState::Exited { code: 1 })];
        let mut now = 0;
        let mut starts = 0;
        for _ in 0..10 {
            r.reconcile(now, &t, &running);
            now += 1;
            for _ in 0..20 {
                let actions = r.reconcile(now, &t, &exited);
                if actions.iter().any(|a| is_start(a, "c1")) {
                    starts += 1;
                    break;
                }
                now += 1_000;
            }
        }
        assert_eq!(starts, 2);
        let actions = r.reconcile(now + 1_000_000, &t, &exited);
        assert!(non_reports(&actions).is_empty());
    }

    #[test]
    fn on_failure_does_not_restart_a_clean_exit() {
        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::OnFailure { max_attempts: 5 })];
        let exited = [container(NODE, 1, "c1", ContainerState::Exited { code: 0 })];
        let actions = r.reconcile(0, &t, &exited);
        assert_eq!(reports(&actions)[0].state, TaskState::Exited { code: 0 });
        assert!(r.reconcile(1_000_000, &t, &exited).is_empty());
    }

    #[test]
    fn never_policy_never_restarts() {
        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::Never)];
        let exited = [container(NODE, 1, "c1", ContainerState::Exited { code: 2 })];
        assert_eq!(reports(&r.reconcile(0, &t, &exited))[0].state, TaskState::Exited { code: 2 });
        assert!(r.reconcile(1_000_000, &t, &exited).is_empty());
    }

    #[test]
    fn always_restarts_even_a_clean_exit() {
        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::Always)];
        let exited = [container(NODE, 1, "c1", ContainerState::Exited { code: 0 })];
        r.reconcile(0, &t, &exited);
        assert!(r.reconcile(500, &t, &exited).iter().any(|a| is_start(a, "c1")));
    }

    #[test]
    fn backoff_doubles_is_capped_and_resets_after_a_healthy_run() {
        let r = Reconciler::new(NODE, cfg());
        assert_eq!([1, 2, 3, 4, 5, 40].map(|n| r.backoff_ms(n)), [500, 1_000, 2_000, 4_000, 4_000, 4_000]);

        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::Always)];
        let running = [container(NODE, 1, "c1", ContainerState::Running)];
        let exited = [container(NODE, 1, "c1", ContainerState::Exited { code: 1 })];
        // Crash loop: the delay before each restart doubles.
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..4 {
            r.reconcile(now, &t, &running);
            let ended_at = now;
            loop {
                now += 100;
                if r.reconcile(now, &t, &exited).iter().any(|a| is_start(a, "c1")) {
                    break;
                }
            }
            delays.push(now - ended_at - 100);
        }
        assert_eq!(delays, vec![500, 1_000, 2_000, 4_000]);
        // A run longer than backoff_reset_after_ms: the next restart is quick again.
        r.reconcile(now, &t, &running);
        r.reconcile(now + 10_000, &t, &running);
        now += 10_001;
        r.reconcile(now, &t, &exited);
        assert!(r.reconcile(now + 500, &t, &exited).iter().any(|a| is_start(a, "c1")));
    }

    #[test]
    fn a_failed_container_is_replaced_per_policy() {
        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::OnFailure { max_attempts: 1 })];
        let failed = [container(NODE, 1, "c1", ContainerState::Failed { reason: "killed: out of memory".to_string() })];
        let actions = r.reconcile(0, &t, &failed);
        assert_eq!(reports(&actions)[0].state, TaskState::Failed { reason: "killed: out of memory".to_string() });
        let actions = r.reconcile(500, &t, &failed);
        assert!(matches!(&actions[0], Action::Remove { reason: RemoveReason::Replace, .. }), "{actions:?}");
        assert!(matches!(&actions[1], Action::Create { task: 1, .. }), "{actions:?}");
    }

    #[test]
    fn a_missing_image_fails_the_task_with_the_clear_reason_and_retries_per_policy() {
        let err = EngineError::ImageNotFound { image: "img:1".to_string() };
        for (policy, retries) in [(RestartPolicy::Never, false), (RestartPolicy::OnFailure { max_attempts: 3 }, true)] {
            let mut r = Reconciler::new(NODE, cfg());
            let t = [task(1, policy)];
            let actions = r.reconcile(0, &t, &[]);
            let report = r.action_failed(0, &t[0], &actions[0], &err).unwrap();
            assert_eq!(report.state, TaskState::Failed { reason: err.to_string() });
            assert!(err.to_string().contains("is not on this node's engine"));
            assert!(r.reconcile(100, &t, &[]).is_empty(), "same failure not reported twice, no create before backoff");
            let later = r.reconcile(500, &t, &[]);
            assert_eq!(later.iter().any(|a| matches!(a, Action::Create { .. })), retries, "{policy:?}: {later:?}");
        }
    }

    #[test]
    fn an_unavailable_engine_is_not_a_task_failure() {
        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::Never)];
        let actions = r.reconcile(0, &t, &[]);
        assert!(r.action_failed(0, &t[0], &actions[0], &EngineError::Unavailable("down".to_string())).is_none());
        // Still never ran: the next pass simply tries again.
        let actions = r.reconcile(10, &t, &[]);
        assert!(matches!(&actions[0], Action::Create { .. }), "{actions:?}");
    }

    #[test]
    fn a_vanished_container_counts_as_a_failure() {
        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::OnFailure { max_attempts: 1 })];
        r.reconcile(0, &t, &[container(NODE, 1, "c1", ContainerState::Running)]);
        let actions = r.reconcile(10, &t, &[]);
        assert_eq!(reports(&actions)[0].state, TaskState::Failed { reason: "container disappeared".to_string() });
        assert!(non_reports(&actions).is_empty());
        assert!(matches!(&r.reconcile(510, &t, &[])[..], [Action::Create { .. }]));
    }

    #[test]
    fn last_reports_can_be_resent_in_full() {
        let mut r = Reconciler::new(NODE, cfg());
        let t = [task(1, RestartPolicy::Never), task(2, RestartPolicy::Never)];
        let obs = [container(NODE, 1, "c1", ContainerState::Running), container(NODE, 2, "c2", ContainerState::Exited { code: 4 })];
        r.reconcile(0, &t, &obs);
        assert!(r.reconcile(10, &t, &obs).is_empty());
        let states: Vec<(TaskId, TaskState)> = r.last_reports().into_iter().map(|r| (r.task, r.state)).collect();
        assert_eq!(states, vec![(1, TaskState::Running), (2, TaskState::Exited { code: 4 })]);
    }

    #[test]
    fn bookkeeping_of_forgotten_tasks_is_dropped() {
        let mut r = Reconciler::new(NODE, cfg());
        r.reconcile(0, &[task(1, RestartPolicy::Never), task(2, RestartPolicy::Never)], &[]);
        assert_eq!(r.records.len(), 2);
        r.reconcile(10, &[task(2, RestartPolicy::Never)], &[]);
        assert_eq!(r.records.keys().copied().collect::<Vec<_>>(), vec![2]);
    }
}
