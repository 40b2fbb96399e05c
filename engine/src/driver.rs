//! Carries out the reconciler's actions on an engine: the only part of the agent's
//! reconciliation that does I/O. Generic over [`Engine`], so the simulator runs the same
//! loop on the fake engine.

use crate::engine::Engine;
use crate::reconcile::{Action, AssignedTask, Reconciler, TaskReport};
use crate::types::LabelFilter;
use crate::EngineError;
use tracing::{debug, warn};

/// Applies `actions` in order. Returns the reports to send to the leader: those among the
/// actions, plus those caused by failed actions.
pub async fn apply<E: Engine>(engine: &E, reconciler: &mut Reconciler, now_ms: u64, assigned: &[AssignedTask], actions: Vec<Action>) -> Vec<TaskReport> {
    let mut reports = Vec::new();
    for action in actions {
        let result = match &action {
            Action::Report(r) => {
                reports.push(r.clone());
                continue;
            }
            Action::Create { task, request } => {
                debug!(task, image = %request.spec.image, "creating container");
                engine.run(request).await.map(|_| ())
            }
            Action::Start { task, container } => {
                debug!(task, %container, "starting container");
                engine.start(container).await
            }
            Action::Remove { task, container, reason } => {
                debug!(task, %container, ?reason, "removing container");
                engine.stop_and_remove(container).await
            }
        };
        if let Err(err) = result {
            warn!(?action, %err, "container action failed");
            let task_id = match &action {
                Action::Create { task, .. } | Action::Start { task, .. } | Action::Remove { task, .. } => *task,
                Action::Report(r) => r.task,
            };
            if let Some(task) = assigned.iter().find(|t| t.id == task_id) {
                if let Some(report) = reconciler.action_failed(now_ms, task, &action, &err) {
                    reports.push(report);
                }
            }
        }
    }
    reports
}

/// One reconciliation: list this node's containers, decide, act. An error means the
/// engine could not be listed (the node should report its engine unhealthy); nothing was
/// changed.
pub async fn reconcile_once<E: Engine>(engine: &E, reconciler: &mut Reconciler, now_ms: u64, assigned: &[AssignedTask]) -> Result<Vec<TaskReport>, EngineError> {
    let observed = engine.list(&LabelFilter::node(reconciler.node())).await?;
    let actions = reconciler.reconcile(now_ms, assigned, &observed);
    Ok(apply(engine, reconciler, now_ms, assigned, actions).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DockerEngine, FakeEngine, ReconcilerConfig};

    fn is_send<T: Send>(_: &T) {}

    /// The agent will `tokio::spawn` its loop: the driver's futures must be `Send` on both
    /// engines (compile-time check; nothing is run).
    #[allow(dead_code)]
    fn driver_futures_are_send(docker: &DockerEngine, fake: &FakeEngine) {
        let mut r = Reconciler::new("n", ReconcilerConfig::default());
        is_send(&reconcile_once(docker, &mut r, 0, &[]));
        let mut r = Reconciler::new("n", ReconcilerConfig::default());
        is_send(&reconcile_once(fake, &mut r, 0, &[]));
    }

    #[test]
    fn compiles() {
        let _ = driver_futures_are_send;
    }
}
