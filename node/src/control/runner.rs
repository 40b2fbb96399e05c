//! Runs this node's tasks (design step 6): whenever the replicated state changes, and every
//! [`RUN_TICK`] anyway, the shared agent step (`shoal_control::AgentCore`, which the
//! simulator runs on its fake engines) reconciles the tasks the replicated state assigns to
//! this node with the local Docker Engine (containers labelled
//! `shoal.node`/`shoal.service`/`shoal.task`), and what changed is reported to the leader
//! in batches. The agent's rules (wait for the state and a leader, report only what the
//! state does not record) are the core's; this driver adds the node's own I/O:
//!
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
use shoal_control::AgentCore;
use shoal_discovery::MemberState;
use shoal_engine::{DockerConfig, DockerEngine};
use std::collections::BTreeSet;
use std::time::Duration;

/// How often the node reconciles its tasks when nothing changes (containers that exit are
/// noticed at this pace).
const RUN_TICK: Duration = Duration::from_secs(1);
/// Least time between two passes: a change of the replicated state (a task placed here)
/// starts a pass at once, but a busy cluster does not make the node ask its engine more
/// often than this.
const RUN_MIN_GAP: Duration = Duration::from_millis(50);
/// After a pass that left a task of this node on its way (asked to run but not yet seen
/// running or ended, or asked to stop but still seen running), the next pass comes this soon, so a
/// container the engine just started is reported running at once...
const SETTLE_GAP: Duration = Duration::from_millis(100);
/// ...for at most this many passes in a row (a task that never settles, e.g. one that
/// keeps failing to start, then goes back to the [`RUN_TICK`] pace until the state
/// changes).
const SETTLE_PASSES: u32 = 10;

/// The loop; runs for the life of the agent.
pub async fn run_tasks(ctl: Control) {
    let socket = ctl.config().docker_socket.clone();
    let me = ctl.id();
    let mut agent = AgentCore::new(me).with_planted(ctl.config().planted);
    let mut engine: Option<DockerEngine> = None;
    let mut engine_warned = false;
    let mut images = Acquisitions::new();
    // Networks this node has seen in the cluster's state: only those are pruned from the
    // engine (an engine shared with another cluster's agents keeps theirs).
    let mut known_networks: BTreeSet<String> = BTreeSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<(String, Result<String, String>)>(16);
    let mut seen = None;
    let mut settling = 0u32;
    loop {
        match ctl.running() {
            Some(running) => {
                tokio::time::sleep(RUN_MIN_GAP).await;
                let pace = if settling > 0 && settling <= SETTLE_PASSES { SETTLE_GAP } else { RUN_TICK };
                running.applied_change(seen, pace.saturating_sub(RUN_MIN_GAP)).await;
                let now_seen = running.applied_index();
                if now_seen != seen {
                    settling = 0;
                }
                seen = now_seen;
            }
            None => tokio::time::sleep(RUN_TICK).await,
        }
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
        if !agent.ready(&state, metrics.current_leader.is_some()) {
            continue;
        }
        let now = now_ms();
        while let Ok((image, result)) = done_rx.try_recv() {
            match &result {
                Ok(how) => tracing::info!(%image, "image is here: {how}"),
                Err(why) => tracing::warn!(%image, "{why}"),
            }
            images.finished(&image, now, result.map(drop));
        }
        let store = ctl.images();
        // Only tasks not yet seen running need their image checked (a running container
        // has its image): a converged node asks its engine nothing about images.
        let assigned = agent.assigned(&state);
        let needs = AgentCore::image_needs(&state, &assigned);
        let mut present: BTreeSet<String> = BTreeSet::new();
        for image in needs.iter().map(|(_, i)| i).collect::<BTreeSet<&String>>() {
            // An engine error here shows again in the reconcile below; count it as present so
            // the reconciler, not a transfer, reports it.
            if !matches!(store.resolve(image).await, Ok(None)) {
                present.insert(image.to_string());
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
        let outcome = match agent.pass(docker, &state, assigned, now, &plan.waiting, plan.failed).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "the local Docker Engine stopped answering; reconnecting");
                let _ = ctl.membership().set_engine_ok(false).await;
                engine = None;
                continue;
            }
        };
        settling = if outcome.unsettled { settling.saturating_add(1) } else { 0 };
        known_networks.extend(state.networks.keys().cloned());
        prune_networks(docker, &state, &mut known_networks).await;
        for cmd in outcome.commands {
            if let Err(e) = running.write(cmd).await {
                tracing::debug!(error = %e, "could not report task states yet; will resend");
            }
        }
    }
}

/// Removes from the engine shoal's networks this node has seen in the cluster that the
/// cluster no longer has.
/// The engine is asked only while a known network is gone from the state (a pass on a
/// quiet node makes no network call); a gone network is forgotten once its engine no longer
/// has it.
async fn prune_networks(docker: &DockerEngine, state: &shoal_consensus::ClusterState, known: &mut BTreeSet<String>) {
    use shoal_engine::Engine;
    if known.iter().all(|id| state.networks.contains_key(id)) {
        return;
    }
    let Ok(networks) = docker.networks().await else { return };
    for n in networks.iter().filter(|n| known.contains(&n.id) && !state.networks.contains_key(&n.id)) {
        match docker.remove_network(&n.name).await {
            Ok(()) => tracing::info!(network = %n.name, "removed a network the cluster no longer has from the engine"),
            Err(e) => tracing::debug!(network = %n.name, error = %e, "network not removed from the engine yet"),
        }
    }
    let in_engine: BTreeSet<&String> = networks.iter().map(|n| &n.id).collect();
    known.retain(|id| state.networks.contains_key(id) || in_engine.contains(id));
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
