//! Carries out the reconciler's actions on an engine: the only part of the agent's
//! reconciliation that does I/O. Generic over [`Engine`], so the simulator runs the same
//! loop on the fake engine.

use crate::engine::Engine;
use crate::reconcile::{Action, AssignedTask, Reconciler, TaskReport};
use crate::types::LabelFilter;
use crate::EngineError;
use futures_util::StreamExt;
use tracing::{debug, warn};

/// Most stop+removes in flight at once on one engine. Stops mostly wait out grace periods
/// (not engine work), so running them together turns "n × grace" into about one grace when
/// a service is scaled down or a node drained; the bound keeps a mass removal from opening
/// hundreds of requests to the engine at once.
pub const REMOVALS_IN_FLIGHT_MAX: usize = 16;

/// Carries out `actions`: first every removal, concurrently (at most
/// [`REMOVALS_IN_FLIGHT_MAX`] at once, polled in action order, no task spawned, so on the
/// fake engine it is as deterministic as a loop), then creates and starts one by one in
/// order. The reconciler puts a task's removals before its create or start (rule 2, rule
/// 3, a failed container replaced), so each task's own order is kept, and freed ports and
/// memory are free before anything new starts. Returns the reports to send to the leader:
/// those among the actions, plus those caused by failed actions (a failed removal causes
/// none: the container is still listed and removed on the next pass).
pub async fn apply<E: Engine>(engine: &E, reconciler: &mut Reconciler, now_ms: u64, assigned: &[AssignedTask], actions: Vec<Action>) -> Vec<TaskReport> {
    let (removals, rest): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| matches!(a, Action::Remove { .. }));
    let removed: Vec<(Action, Result<(), EngineError>)> = futures_util::stream::iter(removals)
        .map(|action| async move {
            let result = match &action {
                Action::Remove { task, container, reason } => {
                    debug!(task, %container, ?reason, "removing container");
                    engine.stop_and_remove(container).await
                }
                _ => Ok(()),
            };
            (action, result)
        })
        .buffered(REMOVALS_IN_FLIGHT_MAX)
        .collect()
        .await;
    let mut reports = Vec::new();
    for (action, result) in removed {
        if let Err(err) = result {
            failed(reconciler, now_ms, assigned, &action, &err, &mut reports);
        }
    }
    for action in rest {
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
            failed(reconciler, now_ms, assigned, &action, &err, &mut reports);
        }
    }
    reports
}

/// Feeds a failed action back to the reconciler, keeping the report it makes, if any.
fn failed(reconciler: &mut Reconciler, now_ms: u64, assigned: &[AssignedTask], action: &Action, err: &EngineError, reports: &mut Vec<TaskReport>) {
    warn!(?action, %err, "container action failed");
    let task_id = match action {
        Action::Create { task, .. } | Action::Start { task, .. } | Action::Remove { task, .. } => *task,
        Action::Report(r) => r.task,
    };
    if let Some(task) = assigned.iter().find(|t| t.id == task_id) {
        if let Some(report) = reconciler.action_failed(now_ms, task, action, err) {
            reports.push(report);
        }
    }
}

/// One reconciliation: list this node's containers, decide, act. An error means the
/// engine could not be listed (the node should report its engine unhealthy); nothing was
/// changed.
pub async fn reconcile_once<E: Engine>(engine: &E, reconciler: &mut Reconciler, now_ms: u64, assigned: &[AssignedTask]) -> Result<Vec<TaskReport>, EngineError> {
    reconcile_once_keeping(engine, reconciler, now_ms, assigned, |_| true).await
}

/// [`reconcile_once`], carrying out only the actions `keep` accepts (a test's planted bug
/// drops some: `shoal_control::PlantedBug`).
pub async fn reconcile_once_keeping<E: Engine>(
    engine: &E,
    reconciler: &mut Reconciler,
    now_ms: u64,
    assigned: &[AssignedTask],
    keep: impl Fn(&Action) -> bool,
) -> Result<Vec<TaskReport>, EngineError> {
    let observed = engine.list(&LabelFilter::node(reconciler.node())).await?;
    let mut actions = reconciler.reconcile(now_ms, assigned, &observed);
    actions.retain(|a| keep(a));
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

    /// The simulator polls `apply` once and needs it done (it has no executor): with more
    /// removals than run at once, and creates after them, it still is on the fake.
    #[test]
    fn apply_on_the_fake_is_ready_on_its_first_poll() {
        use crate::types::{ContainerSpec, Owner};
        use crate::{AssignedTask, Desired, RestartPolicy};
        use futures_util::FutureExt;
        let fake = FakeEngine::new(0);
        fake.add_image("img");
        let n = (REMOVALS_IN_FLIGHT_MAX * 2 + 3) as u64;
        for task in 1..=n {
            let req = crate::CreateRequest { network: None, owner: Owner { node: "n".to_string(), service: "s".to_string(), task }, spec: ContainerSpec { image: "img".to_string(), ..Default::default() } };
            fake.run(&req).now_or_never().expect("ready").expect("run");
        }
        let task = |id| AssignedTask { network: None, id, service: "s".to_string(), spec: ContainerSpec { image: "img".to_string(), ..Default::default() }, desired: Desired::Running, restart: RestartPolicy::Always };
        // Keep tasks n+1 and n+2 (new: created), drop all the others (removed).
        let assigned = [task(n + 1), task(n + 2)];
        let mut r = Reconciler::new("n", ReconcilerConfig::default());
        reconcile_once(&fake, &mut r, 0, &assigned).now_or_never().expect("apply is ready on the first poll").expect("reconcile");
        let left: Vec<u64> = fake.list(&LabelFilter::node("n")).now_or_never().expect("ready").expect("list").iter().map(|c| c.owner.task).collect();
        assert_eq!(left, vec![n + 1, n + 2]);
    }
}
