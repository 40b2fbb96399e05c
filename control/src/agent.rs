//! One pass of a node's agent: reconcile the tasks the replicated state assigns to this
//! node with its engine (the pure `shoal_engine::Reconciler`, through any
//! `shoal_engine::Engine`: Docker in the node, the fake in the simulator), and give the
//! reports the state does not already record, as commands to write.
//!
//! Rules:
//! - nothing is done before this node holds the cluster state, is registered in it and
//!   knows a leader: a node that just booted, or is cut off, does not act on a state it
//!   cannot know is current (it would remove containers whose tasks it has not heard of);
//! - reports are compared with what the state records, so a lost write is produced again
//!   on the next pass and nothing is written when nothing changed;
//! - tasks the driver holds back (their image is on its way) are left out of the pass;
//!   tasks the driver could not prepare are reported failed with the reason.

use shoal_consensus::{duties, ClusterState, Command};
use crate::planted::PlantedBug;
use shoal_engine::{Action, AssignedTask, Desired, Engine, EngineError, Reconciler, ReconcilerConfig, RemoveReason, TaskReport, TaskState};
use shoal_wire::NodeId;
use std::collections::BTreeSet;

/// A node's agent: its reconciler's memory (restart counts, backoffs) between passes.
pub struct AgentCore {
    me: NodeId,
    reconciler: Reconciler,
    planted: Option<PlantedBug>,
}

/// What one pass found.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutcome {
    /// Reports to write, through the leader.
    pub commands: Vec<Command>,
    /// A task of this node is on its way (asked to run but not yet seen running or ended,
    /// or asked to stop but still seen running): the driver may come back sooner.
    pub unsettled: bool,
}

impl AgentCore {
    pub fn new(me: NodeId) -> Self {
        Self { me, reconciler: Reconciler::new(me.to_string(), ReconcilerConfig::default()), planted: None }
    }

    /// The same agent with a bug planted on purpose (tests only; [`PlantedBug`]).
    pub fn with_planted(mut self, planted: Option<PlantedBug>) -> Self {
        self.planted = planted;
        self
    }

    /// Whether this node may act on `state`: it knows a leader, the state has a CA, and
    /// this node is registered in it.
    pub fn ready(&self, state: &ClusterState, leader_known: bool) -> bool {
        leader_known && state.ca.is_some() && state.nodes.contains_key(&self.me)
    }

    /// The tasks assigned to this node.
    pub fn assigned(&self, state: &ClusterState) -> Vec<AssignedTask> {
        state.tasks_for_node(&self.me)
    }

    /// The images the `assigned` tasks not yet seen running need, by task (a running
    /// container has its image: a converged node asks its engine nothing about images).
    pub fn image_needs(state: &ClusterState, assigned: &[AssignedTask]) -> Vec<(u64, String)> {
        assigned
            .iter()
            .filter(|t| t.desired == Desired::Running)
            .filter(|t| !matches!(state.tasks.get(&t.id).and_then(|r| r.observed.as_ref()), Some(TaskState::Running)))
            .map(|t| (t.id, t.spec.image.clone()))
            .collect()
    }

    /// One pass on `engine` over `assigned` (this node's tasks in `state`,
    /// [`Self::assigned`]). `held`: tasks to leave out (their image is on its way);
    /// `failed`: tasks to report failed, with why. An engine error ends the pass (the
    /// driver reconnects); nothing is reported then.
    pub async fn pass<E: Engine>(
        &mut self,
        engine: &E,
        state: &ClusterState,
        mut assigned: Vec<AssignedTask>,
        now_ms: u64,
        held: &BTreeSet<u64>,
        failed: Vec<(u64, String)>,
    ) -> Result<AgentOutcome, EngineError> {
        assigned.retain(|t| !held.contains(&t.id));
        let keep_stale = self.planted == Some(PlantedBug::KeepStaleContainers);
        shoal_engine::reconcile_once_keeping(engine, &mut self.reconciler, now_ms, &assigned, |a| {
            !(keep_stale && matches!(a, Action::Remove { reason: RemoveReason::NotAssigned | RemoveReason::DesiredShutdown, .. }))
        })
        .await?;
        let unsettled = assigned.iter().any(|t| {
            let observed = state.tasks.get(&t.id).and_then(|r| r.observed.as_ref());
            match t.desired {
                Desired::Running => matches!(observed, None | Some(TaskState::Starting)),
                Desired::Shutdown => matches!(observed, Some(TaskState::Running | TaskState::Starting)),
            }
        });
        let mut reports = self.reconciler.last_reports();
        reports.extend(failed.into_iter().map(|(task, reason)| TaskReport {
            task,
            state: TaskState::Failed { reason },
            restarts: 0,
            last_exit_code: None,
            container: None,
        }));
        Ok(AgentOutcome { commands: duties::unrecorded_reports(state, self.me, reports, now_ms), unsettled })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use futures_util::FutureExt;
    use shoal_cluster::scheduler::{Decision, Slot};
    use shoal_engine::FakeEngine;

    fn state_with_one_task(c: &TestCluster) -> ClusterState {
        let mut state = c.state(&[1, 2]);
        let service = web(1);
        state.apply(Command::CreateService { service, now_ms: T0_MS }).expect("create");
        let place = Decision::Place { service: "web".into(), slot: Slot::Index(1), node: id(1) };
        state.apply(Command::apply_decisions(vec![place], T0_MS)).expect("place");
        state
    }

    #[test]
    fn an_agent_waits_for_a_leader_a_ca_and_its_registration() {
        let c = TestCluster::new();
        let agent = AgentCore::new(id(1));
        assert!(!agent.ready(&c.state(&[1]), false));
        assert!(!agent.ready(&ClusterState::default(), true));
        assert!(!agent.ready(&c.state(&[2]), true));
        assert!(agent.ready(&c.state(&[1]), true));
    }

    #[test]
    fn a_placed_task_is_started_and_reported_once() {
        let c = TestCluster::new();
        let mut state = state_with_one_task(&c);
        let engine = FakeEngine::new(0);
        engine.add_image("sim/app:1");
        let mut agent = AgentCore::new(id(1));
        assert_eq!(AgentCore::image_needs(&state, &agent.assigned(&state)).len(), 1);
        // Passes until the state records the task running: each report is written once.
        let mut written = 0;
        for pass in 0..5u64 {
            let out = agent.pass(&engine, &state, agent.assigned(&state), T0_MS + pass * 1_000, &BTreeSet::new(), Vec::new()).now_or_never().expect("ready").expect("engine");
            let running = matches!(state.tasks.values().next().and_then(|t| t.observed.as_ref()), Some(TaskState::Running));
            assert_eq!(out.unsettled, !running, "pass {pass}");
            for cmd in out.commands {
                written += 1;
                state.apply(cmd).expect("report");
            }
        }
        assert!(matches!(state.tasks.values().next().and_then(|t| t.observed.as_ref()), Some(TaskState::Running)));
        assert!((1..=2).contains(&written), "{written} reports for one start");
        let out = agent.pass(&engine, &state, agent.assigned(&state), T0_MS + 9_000, &BTreeSet::new(), Vec::new()).now_or_never().expect("ready").expect("engine");
        assert!(out.commands.is_empty() && !out.unsettled, "a converged node writes nothing");
        assert!(AgentCore::image_needs(&state, &agent.assigned(&state)).is_empty(), "a running task needs no image check");
    }

    #[test]
    fn a_held_task_is_left_alone_and_a_failed_one_is_reported_with_its_reason() {
        let c = TestCluster::new();
        let state = state_with_one_task(&c);
        let engine = FakeEngine::new(0);
        let task = agent_task(&state);
        let mut agent = AgentCore::new(id(1));
        let out = agent.pass(&engine, &state, agent.assigned(&state), T0_MS, &BTreeSet::from([task]), Vec::new()).now_or_never().expect("ready").expect("engine");
        assert!(out.commands.is_empty());
        let out = agent.pass(&engine, &state, agent.assigned(&state), T0_MS, &BTreeSet::from([task]), vec![(task, "no such image".into())]).now_or_never().expect("ready").expect("engine");
        let text = format!("{:?}", out.commands);
        assert!(text.contains("no such image"), "{text}");
    }

    fn agent_task(state: &ClusterState) -> u64 {
        *state.tasks.keys().next().expect("a task")
    }
}
