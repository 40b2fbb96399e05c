//! The container endpoints that change the cluster: create, start, stop, kill, restart,
//! remove, and wait. Each is one replicated command through `Control::write` (forwarded to
//! the leader), then a bounded wait on this node's copy of the state until the chosen
//! node's agent has carried it out, so the CLI's next command sees the result.

use super::create::{self, CreateBody};
use super::http::{self, ApiError, Body};
use super::query::Query;
use super::{DockerApi, Snapshot, CHANGE_WAIT};
use crate::control::{now_ms, WriteError};
use hyper::{Response, StatusCode};
use shoal_consensus::state::{ContainerRecord, TaskRecord};
use shoal_consensus::{Applied, ClusterState, Command, Rejected};
use shoal_engine::TaskState;
use std::time::Duration;

/// How often a wait looks at the replicated state again.
const WAIT_POLL: Duration = Duration::from_millis(200);
/// How long `rm` waits for the node to remove the engine's container before answering
/// (the record is gone already; a node that is down removes it when it is back).
const REMOVE_WAIT: Duration = Duration::from_secs(15);

/// Docker's words for a container that is not there.
fn no_such(key: &str) -> ApiError {
    ApiError::not_found(format!("No such container: {key}"))
}

/// A refused write as Docker would answer it.
fn write_error(e: WriteError) -> ApiError {
    match e {
        WriteError::NotInCluster | WriteError::NoLeader(..) => ApiError::unavailable(e.to_string()),
        // Docker's answer when a worker of a swarm is asked a manager's write.
        WriteError::NotAllowed(why) => ApiError::unavailable(why),
        WriteError::Rejected(r) => {
            let status = match &r {
                Rejected::UnknownContainer(_) | Rejected::UnknownNetwork(_) => StatusCode::NOT_FOUND,
                Rejected::NetworkNameInUse(_) | Rejected::NetworkInUse { .. } => StatusCode::CONFLICT,
                Rejected::ContainerNameInUse(_)
                | Rejected::NameInUseByService(_)
                | Rejected::ContainerIdInUse
                | Rejected::ContainerRunning(_)
                | Rejected::ServiceOfContainer { .. }
                | Rejected::TooManyContainers
                | Rejected::TooManyServices => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, r.to_string())
        }
    }
}

/// Whether any task of the container is still up on its node.
fn task_up(state: &ClusterState, c: &ContainerRecord) -> bool {
    state.container_tasks(c).any(|t| matches!(t.observed, Some(TaskState::Running | TaskState::Starting)))
}

fn live_task<'a>(state: &'a ClusterState, c: &'a ContainerRecord) -> Option<&'a TaskRecord> {
    state.container_live_task(c)
}

fn node_name(state: &ClusterState, t: &TaskRecord) -> String {
    state.nodes.get(&t.node).map_or_else(|| t.node.short(), |n| n.name.clone())
}

/// What `wait` compares: which end of which run the container is at, if it is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mark {
    /// Never started.
    Created,
    /// Stopped through the API at this time.
    Stopped(Option<u64>),
    /// A run (task, restarts so far) ended.
    Ended(u64, u32),
}

/// `Some((mark, exit code, error))` when the container is not running.
fn exit_mark(state: &ClusterState, c: &ContainerRecord) -> Option<(Mark, i64, Option<String>)> {
    if !state.container_wants_to_run(c) {
        if task_up(state, c) {
            return None; // stopping
        }
        if c.started_ms.is_none() {
            return Some((Mark::Created, 0, None));
        }
        let code = match state.container_task(c).and_then(|t| t.observed.as_ref()) {
            Some(TaskState::Exited { code }) => *code,
            _ => 0,
        };
        return Some((Mark::Stopped(c.stopped_ms), code, None));
    }
    let t = live_task(state, c)?;
    match &t.observed {
        Some(TaskState::Exited { code }) => Some((Mark::Ended(t.id, t.restarts), *code, None)),
        Some(TaskState::Failed { reason }) => Some((Mark::Ended(t.id, t.restarts), t.last_exit_code.unwrap_or(128), Some(reason.clone()))),
        _ => None,
    }
}

/// The exit code of a removed container's last task, if its run had ended.
fn removed_exit_code(t: &TaskRecord) -> Option<i64> {
    match &t.observed {
        Some(TaskState::Exited { code }) => Some(*code),
        _ => t.last_exit_code,
    }
}

impl DockerApi {
    /// Commits `cmd`, with the refusal in Docker's terms.
    pub(super) async fn commit(&self, cmd: Command) -> Result<Applied, ApiError> {
        self.ctl.write(cmd).await.map_err(write_error)
    }

    /// The container of the Docker API that `key` names (id, name, `node/name`, id
    /// prefix). A task of a `shoal service` is refused: it is changed through its service.
    pub(super) fn docker_container(&self, snap: &Snapshot, key: &str) -> Result<ContainerRecord, ApiError> {
        let entry = snap.view().find(key)?;
        match entry.origin {
            super::view::Origin::Container { .. } => snap.state.containers.get(&entry.id).cloned().ok_or_else(|| no_such(key)),
            super::view::Origin::Task { service, .. } => Err(ApiError::bad_request(format!(
                "{key} is a task of the shoal service {service}; change it with `shoal service scale {service}=N` or `shoal service rm {service}`"
            ))),
        }
    }

    /// Reads this node's copy of the state whenever an entry is applied (at least every
    /// [`WAIT_POLL`]) until `done` says so, for at most `limit`; `None` on time-out.
    async fn wait_for<T>(&self, limit: Duration, mut done: impl FnMut(&ClusterState) -> Option<T>) -> Result<Option<T>, ApiError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let seen = self.ctl.running().and_then(|r| r.applied_index());
            let snap = self.snapshot().await?;
            if let Some(v) = done(&snap.state) {
                return Ok(Some(v));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            match self.ctl.running() {
                Some(running) => running.applied_change(seen, WAIT_POLL).await,
                None => tokio::time::sleep(WAIT_POLL).await,
            }
        }
    }

    /// `POST /containers/create?name=`: 201 `{Id, Warnings}`.
    pub(super) async fn create(&self, query: &Query, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let body: CreateBody = http::parse_json(body)?;
        let snap = self.snapshot().await?;
        let id = create::new_id();
        let name = match query.get("name").filter(|n| !n.is_empty()) {
            Some(n) => create::check_name(n)?,
            None => create::generated_name(&id, &snap.state),
        };
        if let Some(other) = snap.state.container_by_name(&name) {
            return Err(ApiError::conflict(format!(
                "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                other.id
            )));
        }
        let networks = create::networks(&body, &name, &id, &snap.state)?;
        let image = body.image.trim().to_string();
        if !image.is_empty() {
            self.check_image_somewhere(&image).await?;
        }
        let def = create::container_def(body, &name, &id, &snap.state)?;
        let cmd = if networks.is_empty() {
            Command::CreateContainer { container: def, now_ms: now_ms() }
        } else {
            Command::CreateNetworkedContainer { container: def, networks, now_ms: now_ms() }
        };
        if shoal_consensus::codec::encode_command(&cmd).is_err() {
            return Err(ApiError::bad_request(format!(
                "the container config is too large: the cluster keeps at most {} KiB per change (image, command, environment, labels)",
                shoal_consensus::codec::MAX_COMMAND_BYTES / 1024
            )));
        }
        self.commit(cmd).await?;
        tracing::info!(container = %name, id = %&id[..12], "docker api: container created");
        Ok(http::json_response(StatusCode::CREATED, &serde_json::json!({"Id": id, "Warnings": []})))
    }

    /// `POST /containers/{id}/start`: 204 once it runs on its node, 304 if it was started.
    pub(super) async fn start(&self, key: &str) -> Result<Response<Body>, ApiError> {
        self.run(key, false).await
    }

    /// `POST /containers/{id}/restart`: a new run, 204 once it runs.
    pub(super) async fn restart(&self, key: &str) -> Result<Response<Body>, ApiError> {
        self.run(key, true).await
    }

    async fn run(&self, key: &str, restart: bool) -> Result<Response<Body>, ApiError> {
        let snap = self.snapshot().await?;
        let c = self.docker_container(&snap, key)?;
        let before = live_task(&snap.state, &c).map(|t| t.id);
        let applied = self.commit(Command::SetContainerRun { id: c.id.clone(), run: true, restart, now_ms: now_ms() }).await?;
        if applied == (Applied::ContainerRun { changed: false }) {
            return Ok(http::status_only(StatusCode::NOT_MODIFIED));
        }
        // The new run is the live task that was not live before.
        let outcome = self
            .wait_for(CHANGE_WAIT, |st| {
                // Gone already: it ran and ended, and AutoRemove (or an `rm`) took it.
                let Some(c) = st.containers.get(&c.id) else { return Some(Ok(())) };
                let t = live_task(st, c).filter(|t| Some(t.id) != before)?;
                match &t.observed {
                    Some(TaskState::Running | TaskState::Exited { .. }) => Some(Ok(())),
                    Some(TaskState::Failed { reason }) => Some(Err(ApiError::internal(format!(
                        "cannot start container {} on {}: {reason}",
                        c.name,
                        node_name(st, t)
                    )))),
                    _ => None,
                }
            })
            .await?;
        match outcome {
            Some(Ok(())) => Ok(http::status_only(StatusCode::NO_CONTENT)),
            Some(Err(e)) => Err(e),
            None => {
                let snap = self.snapshot().await?;
                let why = snap
                    .state
                    .services
                    .get(&c.service)
                    .and_then(|s| s.pending.values().next().map(|p| p.reason.clone()))
                    .or_else(|| live_task(&snap.state, &c).map(|t| format!("its node {} has not reported it running", node_name(&snap.state, t))))
                    .unwrap_or_else(|| "the scheduler has not placed it yet".into());
                Err(ApiError::internal(format!(
                    "container {} did not start within {CHANGE_WAIT:?}: {why}. It starts once a node can run it; `docker stop {}` cancels",
                    c.name, c.name
                )))
            }
        }
    }

    /// `POST /containers/{id}/stop` (and `kill`): 204 once its node has stopped it, 304 if
    /// it was not running.
    pub(super) async fn stop(&self, key: &str, kill: bool) -> Result<Response<Body>, ApiError> {
        let snap = self.snapshot().await?;
        let c = self.docker_container(&snap, key)?;
        let entry = snap.view().find(&c.id)?;
        if !entry.status.state.is_up() && !snap.state.container_is_running(&c) {
            if kill {
                return Err(ApiError::conflict(format!("Cannot kill container: {key}: Container {} is not running", c.id)));
            }
            return Ok(http::status_only(StatusCode::NOT_MODIFIED));
        }
        let applied = self.commit(Command::SetContainerRun { id: c.id.clone(), run: false, restart: false, now_ms: now_ms() }).await?;
        if applied == (Applied::ContainerRun { changed: false }) && !kill {
            return Ok(http::status_only(StatusCode::NOT_MODIFIED));
        }
        let stopped = self.wait_for(CHANGE_WAIT, |st| st.containers.get(&c.id).is_none_or(|c| !task_up(st, c)).then_some(())).await?;
        match stopped {
            Some(()) => Ok(http::status_only(StatusCode::NO_CONTENT)),
            None => Err(ApiError::internal(format!(
                "container {} is told to stop, but its node has not confirmed within {CHANGE_WAIT:?} (is the node down? see `shoal node ls`)",
                c.name
            ))),
        }
    }

    /// `POST /containers/{id}/kill?signal=`: KILL and TERM end the container as a stop
    /// does; other signals are refused.
    pub(super) async fn kill(&self, key: &str, query: &Query) -> Result<Response<Body>, ApiError> {
        let signal = query.get("signal").unwrap_or("").trim().to_ascii_uppercase();
        if !matches!(signal.as_str(), "" | "KILL" | "SIGKILL" | "9" | "TERM" | "SIGTERM" | "15") {
            return Err(ApiError::bad_request(format!(
                "signal {signal} is not supported by shoal's Docker API yet: only KILL and TERM (which stop the container)"
            )));
        }
        self.stop(key, true).await
    }

    /// `DELETE /containers/{id}?force=`: 409 for a running container without force.
    pub(super) async fn remove(&self, key: &str, query: &Query) -> Result<Response<Body>, ApiError> {
        if query.bool("link") {
            return Err(ApiError::bad_request("links are not supported by shoal's Docker API"));
        }
        let force = query.bool("force");
        let snap = self.snapshot().await?;
        let c = self.docker_container(&snap, key)?;
        self.commit(Command::RemoveContainer { id: c.id.clone(), force, now_ms: now_ms() }).await?;
        tracing::info!(container = %c.name, "docker api: container removed");
        // Answer once the node has removed the engine's container (bounded).
        self.wait_for(REMOVE_WAIT, |st| (!st.container_tasks(&c).any(|t| t.observed.is_some() && t.observed != Some(TaskState::Shutdown))).then_some(())).await?;
        Ok(http::status_only(StatusCode::NO_CONTENT))
    }

    /// `POST /containers/{id}/wait?condition=`: the status line and headers at once (the
    /// CLI sends this before `start` and blocks on it), the body `{StatusCode, Error}` when
    /// the condition is met; ends early when the client goes away.
    pub(super) async fn wait(self: std::sync::Arc<Self>, key: &str, query: &Query) -> Result<Response<Body>, ApiError> {
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Condition {
            NotRunning,
            NextExit,
            Removed,
        }
        let condition = match query.get("condition").unwrap_or("") {
            "" | "not-running" => Condition::NotRunning,
            "next-exit" => Condition::NextExit,
            "removed" => Condition::Removed,
            other => {
                return Err(ApiError::bad_request(format!("invalid condition {other:?}: use not-running, next-exit or removed")));
            }
        };
        let snap = self.snapshot().await?;
        let c = self.docker_container(&snap, key)?;
        let initial = exit_mark(&snap.state, &c).map(|(m, _, _)| m);
        let (tx, body) = Body::stream();
        let api = self.clone();
        tokio::spawn(async move {
            let mut last: (i64, Option<String>) = (0, None);
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(WAIT_POLL) => {}
                }
                let Ok(snap) = api.snapshot().await else { continue };
                let done = match snap.state.containers.get(&c.id) {
                    None => {
                        // Removed (by `rm`, or by AutoRemove right after its run ended): the
                        // exit code of its last run, as its tasks still tell it.
                        if let Some(code) = snap.state.container_task(&c).and_then(removed_exit_code) {
                            last.0 = code;
                        }
                        true
                    }
                    Some(now) => match exit_mark(&snap.state, now) {
                        Some((mark, code, err)) => {
                            last = (code, err);
                            match condition {
                                Condition::NotRunning => true,
                                Condition::NextExit => Some(&mark) != initial.as_ref(),
                                Condition::Removed => false,
                            }
                        }
                        None => false,
                    },
                };
                if done {
                    let error = last.1.as_ref().map_or(serde_json::Value::Null, |m| serde_json::json!({"Message": m}));
                    let body = serde_json::json!({"StatusCode": last.0, "Error": error});
                    let _ = tx.send(serde_json::to_vec(&body).unwrap_or_default()).await;
                    return;
                }
            }
        });
        let mut resp = Response::new(body);
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerapi::view::tests::{place, report, three_nodes, NOW};
    use shoal_consensus::state::ContainerDef;

    fn created(st: &mut ClusterState) -> ContainerRecord {
        let body: CreateBody = serde_json::from_value(serde_json::json!({"Image": "busybox:1", "Cmd": ["sleep", "1"]})).expect("body");
        let id = "ab".repeat(32);
        let def: ContainerDef = create::container_def(body, "hello", &id, st).expect("def");
        st.apply(Command::CreateContainer { container: def, now_ms: NOW }).expect("create");
        st.containers[&id].clone()
    }

    fn set_run(st: &mut ClusterState, c: &ContainerRecord, run: bool, restart: bool) {
        st.apply(Command::SetContainerRun { id: c.id.clone(), run, restart, now_ms: NOW + 1 }).expect("run");
    }

    #[test]
    fn wait_marks_tell_each_end_of_a_run_apart() {
        let mut st = three_nodes();
        let c = created(&mut st);
        assert_eq!(exit_mark(&st, &c).map(|m| m.0), Some(Mark::Created));
        set_run(&mut st, &c, true, false);
        assert_eq!(exit_mark(&st, &c), None, "asked to run, not placed: running");
        let t1 = place(&mut st, "hello", 1, 2, NOW + 2);
        report(&mut st, 2, t1, TaskState::Running, None, NOW + 3);
        assert_eq!(exit_mark(&st, &c), None);
        report(&mut st, 2, t1, TaskState::Exited { code: 3 }, Some(3), NOW + 4);
        assert_eq!(exit_mark(&st, &c), Some((Mark::Ended(t1, 0), 3, None)));
        // A new run ends differently.
        set_run(&mut st, &c, true, false);
        let t2 = place(&mut st, "hello", 1, 1, NOW + 5);
        report(&mut st, 1, t2, TaskState::Failed { reason: "image missing".into() }, None, NOW + 6);
        assert_eq!(exit_mark(&st, &c), Some((Mark::Ended(t2, 0), 128, Some("image missing".into()))));
        // Stopped: up until its node reports it gone.
        set_run(&mut st, &c, true, true);
        let t3 = place(&mut st, "hello", 1, 1, NOW + 7);
        report(&mut st, 1, t3, TaskState::Running, None, NOW + 8);
        set_run(&mut st, &c, false, false);
        let c = st.containers[&c.id].clone();
        assert_eq!(exit_mark(&st, &c), None, "stopping");
        report(&mut st, 1, t3, TaskState::Shutdown, None, NOW + 9);
        assert_eq!(exit_mark(&st, &c), Some((Mark::Stopped(Some(NOW + 1)), 0, None)));
    }

    #[test]
    fn refusals_map_to_dockers_status_codes() {
        let status = |r: Rejected| write_error(WriteError::Rejected(r)).status;
        assert_eq!(status(Rejected::ContainerNameInUse("a".into())), StatusCode::CONFLICT);
        assert_eq!(status(Rejected::ContainerRunning("a".into())), StatusCode::CONFLICT);
        assert_eq!(status(Rejected::UnknownContainer("a".into())), StatusCode::NOT_FOUND);
        assert_eq!(status(Rejected::BadContainerLabels), StatusCode::BAD_REQUEST);
        assert_eq!(write_error(WriteError::NotInCluster).status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_created_container_is_listed_and_a_started_one_runs_on_its_node() {
        use crate::dockerapi::view::{ClusterView, State};
        let mut st = three_nodes();
        let c = created(&mut st);
        let m = crate::dockerapi::view::tests::members(&[]);
        let view = |st: &ClusterState| {
            let v = ClusterView { state: st, members: &m, now_ms: NOW + 10_000 };
            v.find("hello").expect("hello")
        };
        let e = view(&st);
        assert_eq!((e.status.state, e.status.text.as_str(), e.list_name()), (State::Created, "Created", "/hello".to_string()));
        set_run(&mut st, &c, true, false);
        let t = place(&mut st, "hello", 1, 2, NOW + 2);
        report(&mut st, 2, t, TaskState::Running, None, NOW + 5_000);
        let e = view(&st);
        assert_eq!((e.status.state, e.list_name()), (State::Running, "/n2/hello".to_string()));
        assert_eq!(e.id, c.id, "the id stays the container's");
        assert_eq!(e.status.text, "Up 5 seconds");
        // Service tasks of containers are not listed twice.
        let v = ClusterView { state: &st, members: &m, now_ms: NOW };
        assert_eq!(v.entries().len(), 1);
        set_run(&mut st, &c, false, false);
        report(&mut st, 2, t, TaskState::Shutdown, None, NOW + 6_000);
        let e = view(&st);
        assert_eq!(e.status.state, State::Exited);
        assert!(e.status.text.starts_with("Exited (0) "), "{}", e.status.text);
        assert_eq!(e.list_name(), "/n2/hello", "a stopped container keeps its node while its task is known");
        let forget = st.forgettable_tasks();
        assert_eq!(forget, [t]);
        st.apply(Command::ForgetTasks { ids: forget }).expect("forget");
        let e = view(&st);
        assert_eq!((e.status.state, e.list_name()), (State::Exited, "/n2/hello".to_string()), "and after its task is forgotten");
    }
}
