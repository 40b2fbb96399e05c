//! Runs this node's tasks (design step 6): every [`RUN_TICK`] the tasks the replicated state
//! assigns to this node are reconciled with the local Docker Engine through the pure
//! `shoal_engine::Reconciler` (containers labelled `shoal.node`/`shoal.service`/`shoal.task`),
//! and what changed is reported to the leader in batches.
//!
//! Rules:
//! - nothing is done before this node holds the cluster state and knows a leader: a node
//!   that just booted, or is cut off, does not act on a state it cannot know is current
//!   (it would remove containers whose tasks it has not heard of yet);
//! - reports are compared with what the state already records, so a lost write is simply
//!   sent again on the next pass and nothing is sent when nothing changed;
//! - Docker not reachable: the node says so in its gossiped facts (`engine_ok`), so the
//!   scheduler gives it no tasks, and it reconnects on later passes.

use super::{now_ms, Control};
use shoal_consensus::state::TaskRecord;
use shoal_consensus::Command;
use shoal_engine::{DockerConfig, DockerEngine, Reconciler, ReconcilerConfig, TaskReport};
use std::collections::BTreeMap;
use std::time::Duration;

/// How often the node reconciles its tasks.
const RUN_TICK: Duration = Duration::from_secs(1);

/// Whether the state already records `report` for its task.
fn recorded(task: &TaskRecord, report: &TaskReport) -> bool {
    task.observed.as_ref() == Some(&report.state)
        && task.container == report.container
        && task.last_exit_code == report.last_exit_code
        && task.restarts == report.restarts
}

/// The loop; runs for the life of the agent.
pub async fn run_tasks(ctl: Control) {
    let socket = ctl.config().docker_socket.clone();
    let me = ctl.id();
    let mut reconciler = Reconciler::new(me.to_string(), ReconcilerConfig::default());
    let mut engine: Option<DockerEngine> = None;
    let mut engine_warned = false;
    loop {
        tokio::time::sleep(RUN_TICK).await;
        if engine.is_none() {
            let connected = match &socket {
                Some(path) => DockerEngine::connect_unix(&path.to_string_lossy(), DockerConfig::default()).await,
                None => DockerEngine::connect_local(DockerConfig::default()).await,
            };
            match connected {
                Ok(e) => {
                    tracing::info!(api = %e.api_version(), "connected to the local Docker Engine");
                    engine = Some(e);
                    engine_warned = false;
                    let _ = ctl.membership().set_engine_ok(true).await;
                }
                Err(e) => {
                    if !engine_warned {
                        tracing::warn!(error = %e, "the local Docker Engine is not reachable; this node takes no tasks until it is (retrying)");
                        engine_warned = true;
                    }
                    let _ = ctl.membership().set_engine_ok(false).await;
                    continue;
                }
            }
        }
        let Some(docker) = engine.as_ref() else { continue };
        let Some(running) = ctl.running() else { continue };
        let metrics = running.metrics();
        if metrics.current_leader.is_none() {
            continue;
        }
        let Ok(state) = running.state().await else { continue };
        if state.ca.is_none() || !state.nodes.contains_key(&me) {
            continue;
        }
        let assigned = state.tasks_for_node(&me);
        let now = now_ms();
        match shoal_engine::reconcile_once(docker, &mut reconciler, now, &assigned).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the local Docker Engine stopped answering; reconnecting");
                let _ = ctl.membership().set_engine_ok(false).await;
                engine = None;
                continue;
            }
        }
        // Everything the reconciler knows, normalised as the state machine stores it, minus
        // what is already recorded.
        let latest: BTreeMap<_, _> = reconciler
            .last_reports()
            .into_iter()
            .filter(|r| state.tasks.get(&r.task).is_some_and(|t| t.node == me))
            .map(|r| (r.task, r))
            .collect();
        for cmd in Command::report_tasks(me, latest.into_values().collect(), now) {
            let Command::ReportTasks { reports, .. } = &cmd else { continue };
            let fresh: Vec<TaskReport> =
                reports.iter().filter(|r| !state.tasks.get(&r.task).is_some_and(|t| recorded(t, r))).cloned().collect();
            if fresh.is_empty() {
                continue;
            }
            let count = fresh.len();
            for cmd in Command::report_tasks(me, fresh, now) {
                if let Err(e) = running.write(cmd).await {
                    tracing::debug!(error = %e, count, "could not report task states yet; will resend");
                }
            }
        }
    }
}
