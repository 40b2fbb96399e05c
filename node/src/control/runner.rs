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
//!   scheduler gives it no tasks, and it reconnects on later passes;
//! - a task whose image the engine lacks is held back from the reconciler while the image
//!   is fetched from a node that has it or pulled (`crate::images::acquire`); if neither
//!   works the task is reported failed with the reason, and the image is tried again later;
//! - networks of the Docker API are created in the engine by the container that joins one
//!   (`Engine::create`), and shoal's engine networks the cluster no longer has are removed
//!   after each pass (an engine refuses while containers still use one: tried again later);
//!   only networks this agent has seen in the state since it started, so an engine shared
//!   with other clusters keeps theirs (a network removed while the agent was down stays on
//!   its engine, unused).

use super::{now_ms, Control};
use crate::images::acquire::{self, Acquisitions, Holder};
use crate::images::proto::Peer;
use crate::images::ImageStore;
use shoal_consensus::duties;
use shoal_discovery::MemberState;
use shoal_engine::{Desired, DockerConfig, DockerEngine, Reconciler, ReconcilerConfig, TaskReport, TaskState};
use std::collections::BTreeSet;
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
    let mut images = Acquisitions::new();
    // Networks this node has seen in the cluster's state: only those are pruned from the
    // engine (an engine shared with another cluster's agents keeps theirs).
    let mut known_networks: BTreeSet<String> = BTreeSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<(String, Result<String, String>)>(16);
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
        let mut assigned = state.tasks_for_node(&me);
        let now = now_ms();
        while let Ok((image, result)) = done_rx.try_recv() {
            match &result {
                Ok(how) => tracing::info!(%image, "image is here: {how}"),
                Err(why) => tracing::warn!(%image, "{why}"),
            }
            images.finished(&image, now, result.map(drop));
        }
        let store = ctl.images();
        let needs: Vec<(u64, String)> =
            assigned.iter().filter(|t| t.desired == Desired::Running).map(|t| (t.id, t.spec.image.clone())).collect();
        let mut present = BTreeSet::new();
        for image in needs.iter().map(|(_, i)| i).collect::<BTreeSet<_>>() {
            // An engine error here shows again in the reconcile below; count it as present so
            // the reconciler, not a transfer, reports it.
            if !matches!(store.resolve(image).await, Ok(None)) {
                present.insert(image.clone());
            }
        }
        let plan = images.plan(now, &needs, &present);
        if !plan.start.is_empty() {
            let holders = holders(&ctl).await;
            for image in plan.start {
                tracing::info!(%image, "image not on this node: fetching it from a node that has it, else pulling it");
                let (store, tls, holders, done) = (store.clone(), running.image_tls.clone(), holders.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let result = acquire::acquire(&image, store.as_ref(), &tls, &holders).await;
                    let _ = done.send((image, result)).await;
                });
            }
        }
        assigned.retain(|t| !plan.waiting.contains(&t.id));
        match shoal_engine::reconcile_once(docker, &mut reconciler, now, &assigned).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the local Docker Engine stopped answering; reconnecting");
                let _ = ctl.membership().set_engine_ok(false).await;
                engine = None;
                continue;
            }
        }
        known_networks.extend(state.networks.keys().cloned());
        prune_networks(docker, &state, &known_networks).await;
        let mut reports = reconciler.last_reports();
        reports.extend(plan.failed.into_iter().map(|(task, reason)| TaskReport {
            task,
            state: TaskState::Failed { reason },
            restarts: 0,
            last_exit_code: None,
            container: None,
        }));
        for cmd in duties::unrecorded_reports(&state, me, reports, now) {
            if let Err(e) = running.write(cmd).await {
                tracing::debug!(error = %e, "could not report task states yet; will resend");
            }
        }
    }
}

/// Removes from the engine shoal's networks this node has seen in the cluster that the
/// cluster no longer has.
async fn prune_networks(docker: &DockerEngine, state: &shoal_consensus::ClusterState, known: &BTreeSet<String>) {
    use shoal_engine::Engine;
    if known.is_empty() {
        return;
    }
    let Ok(networks) = docker.networks().await else { return };
    for n in networks.iter().filter(|n| known.contains(&n.id) && !state.networks.contains_key(&n.id)) {
        match docker.remove_network(&n.name).await {
            Ok(()) => tracing::info!(network = %n.name, "removed a network the cluster no longer has from the engine"),
            Err(e) => tracing::debug!(network = %n.name, error = %e, "network not removed from the engine yet"),
        }
    }
}

/// The other members that may hold images: alive and in the cluster.
async fn holders(ctl: &Control) -> Vec<Holder> {
    let members = ctl.membership().members().await.unwrap_or_default();
    members
        .into_iter()
        .filter(|m| !m.is_self && m.state == MemberState::Alive && m.in_cluster)
        .map(|m| Holder { peer: Peer { id: m.id, addr: m.addr }, name: m.name.unwrap_or_else(|| m.id.short()) })
        .collect()
}
