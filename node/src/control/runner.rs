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
use shoal_consensus::duties;
use shoal_engine::{DockerConfig, DockerEngine, Reconciler, ReconcilerConfig};
use std::time::Duration;

/// How often the node reconciles its tasks.
const RUN_TICK: Duration = Duration::from_secs(1);

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
        for cmd in duties::unrecorded_reports(&state, me, reconciler.last_reports(), now) {
            if let Err(e) = running.write(cmd).await {
                tracing::debug!(error = %e, "could not report task states yet; will resend");
            }
        }
    }
}
