//! The cluster as one Docker host: the containers of the Docker API (records in the
//! replicated state, each run by a single-replica service) and every task of every other
//! service are containers, named `NODE/NAME` in lists as classic Docker Swarm did
//! (`/n2/hello`, `/n1/web.1`), and shown in Docker's JSON shapes for `GET /containers/json`,
//! `GET /containers/{id}/json` and `GET /info`. Pure (the state, gossip and `now_ms` come
//! in), unit-tested.

use super::http::ApiError;
use super::query::Filters;
use sha2::{Digest, Sha256};
use shoal_consensus::state::{ContainerRecord, ServiceRecord, Slot, TaskRecord};
use shoal_consensus::ClusterState;
use shoal_discovery::{MemberState, MemberView};
use shoal_engine::{PortMapping, RestartPolicy, TaskState};
use shoal_wire::NodeId;
use std::collections::BTreeMap;

/// Longest name or id prefix looked up.
pub const MAX_LOOKUP_LEN: usize = 256;
/// Longest `name` filter pattern (a regular expression, as in Docker).
pub const MAX_NAME_PATTERN_LEN: usize = 256;

/// What the Docker API reads: the replicated state, gossip, and the time.
pub struct ClusterView<'a> {
    pub state: &'a ClusterState,
    pub members: &'a [MemberView],
    pub now_ms: u64,
}

/// A node as a container shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub id: NodeId,
    pub name: String,
    pub addr: std::net::SocketAddr,
    pub labels: BTreeMap<String, String>,
    /// Gossip's word for it here: alive, suspect, down, left, or unknown.
    pub health: String,
}

/// Docker's container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Created,
    Restarting,
    Running,
    Exited,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Restarting => "restarting",
            State::Running => "running",
            State::Exited => "exited",
        }
    }

    /// What `docker ps` without `-a` lists.
    pub fn is_up(self) -> bool {
        matches!(self, State::Running | State::Restarting)
    }
}

/// Where a container comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Created through the Docker API, run by its own single-replica service.
    Container { service: String, task: Option<u64> },
    /// A task of a `shoal service`.
    Task { service: String, task: u64 },
}

/// The state of one container, as Docker would say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// `Up 5 seconds`, `Exited (3) 2 minutes ago`, ...
    pub text: String,
    pub exit_code: i64,
    pub error: String,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

/// One container of the virtual host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 64 hex digits, stable for the life of the container.
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub origin: Origin,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub restart: RestartPolicy,
    pub restarts: u32,
    pub created_ms: u64,
    /// The node it runs (or last ran) on.
    pub node: Option<NodeRef>,
    pub status: Status,
    /// The networks of the cluster it is attached to.
    pub networks: Vec<EntryNetwork>,
}

/// A container's network, as inspect shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryNetwork {
    pub name: String,
    pub id: String,
    pub aliases: Vec<String>,
}

impl Entry {
    /// `/NODE/NAME`, or `/NAME` while it has no node.
    pub fn list_name(&self) -> String {
        match &self.node {
            Some(n) => format!("/{}/{}", n.name, self.name),
            None => format!("/{}", self.name),
        }
    }
}

/// The stable container id of a service task: SHA-256 of the task id, hex (task ids are
/// allocated once by the state machine, so every node derives the same id).
pub fn task_container_id(task: u64) -> String {
    hex(&Sha256::digest(format!("shoal-task:{task}").as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ClusterView<'_> {
    pub fn node_ref(&self, id: &NodeId) -> Option<NodeRef> {
        let record = self.state.nodes.get(id)?;
        let health = self.members.iter().find(|m| m.id == *id).map_or("unknown", |m| m.state.as_str()).to_string();
        Some(NodeRef { id: *id, name: record.name.clone(), addr: record.addr, labels: record.labels.clone(), health })
    }

    /// Every container, newest first: those of the Docker API, and the tasks of every
    /// other service (live ones, and those told to shut down until they are forgotten).
    pub fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self.state.containers.values().filter_map(|c| self.container_entry(c)).collect();
        out.extend(self.state.tasks.values().filter_map(|t| {
            let svc = self.state.services.get(&t.service)?;
            if self.state.container_of_service(&t.service).is_some() {
                return None;
            }
            Some(self.task_entry(svc, t))
        }));
        out.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| a.name.cmp(&b.name)));
        out
    }

    fn container_entry(&self, c: &ContainerRecord) -> Option<Entry> {
        let svc = self.state.services.get(&c.service)?;
        let task = self.state.container_task(c);
        let node = task.map(|t| t.node).or(c.last_node).and_then(|n| self.node_ref(&n));
        let mut status = container_status(self.state, c, svc, task, self.now_ms);
        if let Some(n) = &node {
            note_node_health(&mut status, n);
            note_lost(&mut status, n, svc.def.restart);
        }
        let spec = &svc.def.spec;
        Some(Entry {
            id: c.id.clone(),
            name: c.name.clone(),
            origin: Origin::Container { service: c.service.clone(), task: task.map(|t| t.id) },
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            ports: spec.ports.clone(),
            labels: c.labels.clone(),
            cpu_millis: spec.cpu_millis,
            memory_bytes: spec.memory_bytes,
            restart: svc.def.restart,
            restarts: task.map_or(0, |t| t.restarts),
            created_ms: c.created_ms,
            node,
            status,
            networks: c
                .networks
                .iter()
                .filter_map(|a| {
                    let n = self.state.networks.get(&a.network)?;
                    Some(EntryNetwork { name: n.name.clone(), id: n.id.clone(), aliases: a.aliases.clone() })
                })
                .collect(),
        })
    }

    fn task_entry(&self, svc: &ServiceRecord, t: &TaskRecord) -> Entry {
        let name = match t.slot {
            Slot::Index(i) => format!("{}.{i}", t.service),
            Slot::Node(_) => t.service.clone(),
        };
        let node = self.node_ref(&t.node);
        let mut status = task_status(t, svc.def.restart, self.now_ms);
        if let Some(n) = &node {
            note_node_health(&mut status, n);
        }
        let spec = &svc.def.spec;
        Entry {
            id: task_container_id(t.id),
            name,
            origin: Origin::Task { service: t.service.clone(), task: t.id },
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            ports: spec.ports.clone(),
            labels: BTreeMap::from([("shoal.service".to_string(), t.service.clone())]),
            cpu_millis: spec.cpu_millis,
            memory_bytes: spec.memory_bytes,
            restart: svc.def.restart,
            restarts: t.restarts,
            created_ms: t.created_ms,
            node,
            status,
            networks: Vec::new(),
        }
    }

    /// Finds a container by full id, name (`hello`, `/hello`, `n2/hello`) or unique id
    /// prefix, as Docker does.
    pub fn find(&self, key: &str) -> Result<Entry, ApiError> {
        let not_found = || ApiError::not_found(format!("No such container: {key}"));
        if key.is_empty() || key.len() > MAX_LOOKUP_LEN {
            return Err(not_found());
        }
        let entries = self.entries();
        if let Some(e) = entries.iter().find(|e| e.id == key) {
            return Ok(e.clone());
        }
        let name = key.strip_prefix('/').unwrap_or(key);
        let by_name = |e: &&Entry| match name.split_once('/') {
            Some((node, n)) => e.name == n && e.node.as_ref().is_some_and(|x| x.name == node),
            None => e.name == name,
        };
        // Live tasks come first among equal names (a slot's new task over its old one).
        if let Some(e) = entries.iter().filter(by_name).min_by_key(|e| !e.status.state.is_up()) {
            return Ok(e.clone());
        }
        let prefixed: Vec<&Entry> = entries.iter().filter(|e| e.id.starts_with(key)).collect();
        match prefixed.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(not_found()),
            _ => Err(ApiError::bad_request(format!("multiple containers have ids starting with {key}; give more of the id"))),
        }
    }

    /// `GET /containers/json`: `all`, `limit` and `filters` (id, label, name, node, status).
    pub fn list(&self, all: bool, limit: Option<i64>, filters: &Filters) -> Result<Vec<Entry>, ApiError> {
        filters.only(&["id", "label", "name", "node", "status"])?;
        let statuses = filters.get("status");
        for s in statuses {
            if !["created", "restarting", "running", "removing", "paused", "exited", "dead"].contains(&s.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "invalid filter 'status={s}': use created, restarting, running, removing, paused, exited or dead"
                )));
            }
        }
        let names = filters
            .get("name")
            .iter()
            .map(|p| {
                if p.len() > MAX_NAME_PATTERN_LEN {
                    return Err(ApiError::bad_request(format!("the name filter is longer than {MAX_NAME_PATTERN_LEN} bytes")));
                }
                regex::RegexBuilder::new(p)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| ApiError::bad_request(format!("invalid filter 'name={p}': {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let labels: Vec<(String, Option<String>)> = filters
            .get("label")
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (l.clone(), None),
            })
            .collect();
        let mut out: Vec<Entry> = self
            .entries()
            .into_iter()
            .filter(|e| all || !statuses.is_empty() || e.status.state.is_up())
            .filter(|e| statuses.is_empty() || statuses.iter().any(|s| s == e.status.state.as_str()))
            .filter(|e| filters.get("id").is_empty() || filters.get("id").iter().any(|p| e.id.starts_with(p.as_str())))
            .filter(|e| {
                let own = format!("/{}", e.name);
                let listed = e.list_name();
                names.is_empty() || names.iter().any(|r| r.is_match(&own) || r.is_match(&listed))
            })
            .filter(|e| {
                filters.get("node").is_empty()
                    || e.node.as_ref().is_some_and(|n| {
                        filters.get("node").iter().any(|f| *f == n.name || (f.len() >= 4 && n.id.to_string().starts_with(f.as_str())))
                    })
            })
            .filter(|e| {
                labels.iter().all(|(k, v)| match (e.labels.get(k), v) {
                    (Some(have), Some(want)) => have == want,
                    (Some(_), None) => true,
                    (None, _) => false,
                })
            })
            .collect();
        if let Some(n) = limit.filter(|n| *n > 0) {
            out.truncate(usize::try_from(n).unwrap_or(usize::MAX));
        }
        Ok(out)
    }
}

/// A task's state in Docker's words.
fn task_status(t: &TaskRecord, restart: RestartPolicy, now_ms: u64) -> Status {
    let code = t.last_exit_code.unwrap_or(0);
    let since = |ms: u64| human_duration(now_ms.saturating_sub(ms));
    let mut s = Status { state: State::Created, text: "Created".into(), exit_code: 0, error: String::new(), started_ms: None, finished_ms: None };
    match &t.observed {
        None => {}
        Some(TaskState::Starting) => {
            s.state = State::Restarting;
            s.text = "Starting".into();
        }
        Some(TaskState::Running) => {
            s.state = State::Running;
            s.text = format!("Up {}", since(t.updated_ms));
            s.started_ms = Some(t.updated_ms);
        }
        Some(TaskState::Exited { code }) => {
            let again = t.is_live()
                && match restart {
                    RestartPolicy::Never => false,
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure { max_attempts } => *code != 0 && t.restarts < max_attempts,
                };
            s.state = if again { State::Restarting } else { State::Exited };
            let word = if again { "Restarting" } else { "Exited" };
            s.text = format!("{word} ({code}) {} ago", since(t.updated_ms));
            s.exit_code = *code;
            s.finished_ms = Some(t.updated_ms);
        }
        Some(TaskState::Failed { reason }) => {
            s.state = State::Exited;
            s.text = format!("Failed: {reason}");
            s.exit_code = if code != 0 { code } else { 128 };
            s.error = reason.clone();
            s.finished_ms = Some(t.updated_ms);
        }
        Some(TaskState::Shutdown) => {
            s.state = State::Exited;
            s.text = format!("Exited ({code}) {} ago", since(t.updated_ms));
            s.exit_code = code;
            s.finished_ms = Some(t.updated_ms);
        }
    }
    if !t.is_live() && s.state.is_up() {
        // Told to shut down; the node has not reported it gone yet.
        s.text = format!("{} (stopping)", s.text);
    }
    s
}

/// The state of a container of the Docker API: created until first started; then its
/// task's state while it is asked to run; exited once stopped.
fn container_status(state: &ClusterState, c: &ContainerRecord, svc: &ServiceRecord, task: Option<&TaskRecord>, now_ms: u64) -> Status {
    let created = Status { state: State::Created, text: "Created".into(), exit_code: 0, error: String::new(), started_ms: None, finished_ms: None };
    let pending = || svc.pending.values().next().map(|p| format!("Pending: {}", p.reason));
    if state.container_wants_to_run(c) {
        return match task.filter(|t| t.is_live()) {
            Some(t) => task_status(t, svc.def.restart, now_ms),
            None => Status { text: pending().unwrap_or_else(|| "Starting".into()), started_ms: c.started_ms, ..created },
        };
    }
    let Some(started_ms) = c.started_ms else { return created };
    if let Some(t) = task.filter(|t| matches!(t.observed, Some(TaskState::Running | TaskState::Starting))) {
        // Stopped; the node has not reported the container gone yet.
        return task_status(t, svc.def.restart, now_ms);
    }
    let code = match task.and_then(|t| t.observed.as_ref()) {
        Some(TaskState::Exited { code }) => *code,
        _ => 0,
    };
    let finished = c.stopped_ms.unwrap_or(started_ms);
    Status {
        state: State::Exited,
        text: format!("Exited ({code}) {} ago", human_duration(now_ms.saturating_sub(finished))),
        exit_code: code,
        error: String::new(),
        started_ms: Some(started_ms),
        finished_ms: Some(finished),
    }
}

/// Says in the status text when the node of an up container is not healthy in gossip.
fn note_node_health(status: &mut Status, node: &NodeRef) {
    if status.state.is_up() && node.health != MemberState::Alive.as_str() {
        status.text = format!("{} (node {} is {})", status.text, node.name, node.health);
    }
}

/// Says that an up container on a node that is down or left stays lost there: only a
/// container with restart policy `always` is started on another node (classic swarm's
/// rule; the scheduler's `stays_with_node`).
fn note_lost(status: &mut Status, node: &NodeRef, restart: RestartPolicy) {
    let gone = node.health == MemberState::Down.as_str() || node.health == MemberState::Left.as_str();
    if status.state.is_up() && gone && restart != RestartPolicy::Always {
        status.text = format!("{}: lost with its node until it returns (only --restart always moves to another node)", status.text);
    }
}

/// go-units' `HumanDuration`, which `docker ps` uses: "Less than a second", "5 seconds",
/// "About a minute", "3 hours", ...
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    let mins = secs / 60;
    let hours = (ms as f64 / 3_600_000.0).round() as u64;
    if secs < 1 {
        "Less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if mins == 1 {
        "About a minute".into()
    } else if mins < 60 {
        format!("{mins} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", hours / 24 / 365)
    }
}

/// RFC 3339 with nanoseconds, as Docker writes times; Docker's zero time when unset.
pub fn rfc3339(ms: Option<u64>) -> String {
    const ZERO: &str = "0001-01-01T00:00:00Z";
    let Some(ms) = ms else { return ZERO.into() };
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ZERO.into())
}

fn port_key(p: &PortMapping) -> String {
    format!("{}/{}", p.container_port, p.protocol.as_str())
}

fn restart_json(p: RestartPolicy) -> serde_json::Value {
    match p {
        RestartPolicy::Never => serde_json::json!({"Name": "no", "MaximumRetryCount": 0}),
        RestartPolicy::Always => serde_json::json!({"Name": "always", "MaximumRetryCount": 0}),
        RestartPolicy::OnFailure { max_attempts } => {
            serde_json::json!({"Name": "on-failure", "MaximumRetryCount": if max_attempts == u32::MAX { 0 } else { max_attempts }})
        }
    }
}

fn network_mode(e: &Entry) -> String {
    // The engine adapter gives a container without published ports (and no network of
    // the cluster) no network at all.
    if let Some(n) = e.networks.first() {
        n.name.clone()
    } else if e.ports.is_empty() {
        "none".to_string()
    } else {
        "default".to_string()
    }
}

/// `NetworkSettings.Networks`: each network with the container's aliases.
fn networks_json(e: &Entry) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = e
        .networks
        .iter()
        .map(|n| {
            (n.name.clone(), serde_json::json!({
                "IPAMConfig": null,
                "Links": null,
                "Aliases": n.aliases,
                "NetworkID": n.id,
                "EndpointID": "",
                "Gateway": "",
                "IPAddress": "",
                "IPPrefixLen": 0,
                "MacAddress": "",
            }))
        })
        .collect();
    serde_json::Value::Object(map)
}

/// One row of `GET /containers/json`.
pub fn list_json(e: &Entry) -> serde_json::Value {
    let ip = e.node.as_ref().map_or_else(|| "0.0.0.0".to_string(), |n| n.addr.ip().to_string());
    let ports: Vec<serde_json::Value> = e
        .ports
        .iter()
        .map(|p| serde_json::json!({"IP": ip, "PrivatePort": p.container_port, "PublicPort": p.host_port, "Type": p.protocol.as_str()}))
        .collect();
    serde_json::json!({
        "Id": e.id,
        "Names": [e.list_name()],
        "Image": e.image,
        "ImageID": "",
        "Command": e.command.join(" "),
        "Created": e.created_ms / 1000,
        "Ports": ports,
        "Labels": e.labels,
        "State": e.status.state.as_str(),
        "Status": e.status.text,
        "HostConfig": {"NetworkMode": network_mode(e)},
        "NetworkSettings": {"Networks": networks_json(e)},
        "Mounts": [],
    })
}

/// `GET /containers/{id}/json`. `Name` is `/NAME` (compose takes `Name[1:]` as the
/// name); the node is shown in `Node`, as classic swarm did.
pub fn inspect_json(e: &Entry) -> serde_json::Value {
    let s = &e.status;
    let mut bindings = serde_json::Map::new();
    let mut exposed = serde_json::Map::new();
    for p in &e.ports {
        bindings.insert(port_key(p), serde_json::json!([{"HostIp": "", "HostPort": p.host_port.to_string()}]));
        exposed.insert(port_key(p), serde_json::json!({}));
    }
    // What is published while it runs (compose's `ps` shows these).
    let mut published = serde_json::Map::new();
    if e.status.state == State::Running {
        let ip = e.node.as_ref().map_or_else(|| "0.0.0.0".to_string(), |n| n.addr.ip().to_string());
        for p in &e.ports {
            published.insert(port_key(p), serde_json::json!([{"HostIp": ip, "HostPort": p.host_port.to_string()}]));
        }
    }
    let node = e.node.as_ref().map(|n| {
        serde_json::json!({
            "ID": n.id.to_string(),
            "IP": n.addr.ip().to_string(),
            "Addr": n.addr.to_string(),
            "Name": n.name,
            "Labels": n.labels,
            "Health": n.health,
        })
    });
    let env: Vec<String> = e.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let origin = match &e.origin {
        Origin::Container { service, task } => serde_json::json!({"Kind": "container", "Service": service, "Task": task}),
        Origin::Task { service, task } => serde_json::json!({"Kind": "service-task", "Service": service, "Task": task}),
    };
    serde_json::json!({
        "Id": e.id,
        "Created": rfc3339(Some(e.created_ms)),
        "Path": e.command.first().cloned().unwrap_or_default(),
        "Args": e.command.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": s.state.as_str(),
            "Running": s.state == State::Running,
            "Paused": false,
            "Restarting": s.state == State::Restarting,
            "OOMKilled": false,
            "Dead": false,
            "Pid": 0,
            "ExitCode": s.exit_code,
            "Error": s.error,
            "StartedAt": rfc3339(s.started_ms),
            "FinishedAt": rfc3339(s.finished_ms),
        },
        "Image": e.image,
        "Name": format!("/{}", e.name),
        "RestartCount": e.restarts,
        "Driver": "",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "HostConfig": {
            "NetworkMode": network_mode(e),
            "PortBindings": bindings,
            "RestartPolicy": restart_json(e.restart),
            "AutoRemove": e.labels.get(shoal_consensus::state::AUTO_REMOVE_LABEL).is_some_and(|v| v == "true"),
            "Memory": e.memory_bytes,
            "NanoCpus": e.cpu_millis.saturating_mul(1_000_000),
            "Binds": null,
            "LogConfig": {"Type": "json-file", "Config": {}},
        },
        "Config": {
            "Hostname": "",
            "Image": e.image,
            "Cmd": if e.command.is_empty() { serde_json::Value::Null } else { serde_json::json!(e.command) },
            "Entrypoint": null,
            "Env": env,
            "Labels": e.labels,
            "ExposedPorts": exposed,
            "Tty": false,
            "OpenStdin": false,
            "StdinOnce": false,
            "AttachStdin": false,
            "AttachStdout": false,
            "AttachStderr": false,
            "WorkingDir": "",
            "User": "",
        },
        "NetworkSettings": {"Networks": networks_json(e), "Ports": published},
        "Mounts": [],
        "Node": node,
        "Shoal": origin,
    })
}

/// Container counts of a set of entries: (all, running, stopped).
fn counts<'a>(entries: impl Iterator<Item = &'a Entry>) -> (usize, usize, usize) {
    let (mut all, mut running) = (0, 0);
    for e in entries {
        all += 1;
        running += usize::from(e.status.state.is_up());
    }
    (all, running, all - running)
}

/// CPU (thousandths) and memory (bytes) reserved on `node` by the live tasks placed there.
fn reserved(state: &ClusterState, node: &NodeId) -> (u64, u64) {
    state
        .tasks
        .values()
        .filter(|t| t.node == *node && t.is_live())
        .filter_map(|t| state.services.get(&t.service))
        .fold((0, 0), |(c, m), s| (c.saturating_add(s.def.reserve_cpu_millis), m.saturating_add(s.def.reserve_memory_bytes)))
}

/// `GET /info`: container counts summed over the cluster, CPUs and memory summed over
/// the nodes' gossiped resources, `Swarm.LocalNodeState: inactive`, and classic swarm's
/// `SystemStatus` (`Nodes: N`, then each node with its state, containers and labels).
pub fn info_json(view: &ClusterView<'_>, cluster_id: &str, this_node: &str) -> serde_json::Value {
    let entries = view.entries();
    let (all, running, stopped) = counts(entries.iter());
    let mut status: Vec<[String; 2]> = vec![
        ["Role".into(), "primary".into()],
        ["Strategy".into(), "spread".into()],
        ["Filters".into(), "constraint (node==NAME, LABEL==VALUE, node.labels.K==V)".into()],
        ["Nodes".into(), view.state.nodes.len().to_string()],
    ];
    let (mut cpus, mut memory) = (0u64, 0u64);
    // Nodes by name (then id), as a reader looks for them.
    let mut ids: Vec<&NodeId> = view.state.nodes.keys().collect();
    ids.sort_by_key(|id| (view.state.nodes.get(id).map(|n| n.name.as_str()), **id));
    for id in ids {
        let Some(n) = view.node_ref(id) else { continue };
        let member = view.members.iter().find(|m| m.id == *id);
        let (c, m) = member.map_or((0, 0), |m| (m.resources.cpu_millis, m.resources.memory_bytes));
        cpus += c;
        memory += m;
        let (all, up, down) = counts(entries.iter().filter(|e| e.node.as_ref().is_some_and(|x| x.id == *id)));
        let health = match n.health.as_str() {
            "alive" => "Healthy".to_string(),
            other => format!("Unhealthy ({other})"),
        };
        let labels = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
        status.push([format!(" {}", n.name), n.addr.to_string()]);
        status.push(["  └ ID".into(), n.id.to_string()]);
        status.push(["  └ Status".into(), health]);
        status.push(["  └ Containers".into(), format!("{all} ({up} Running, 0 Paused, {down} Stopped)")]);
        let (rc, rm) = reserved(view.state, id);
        status.push(["  └ Reserved CPUs".into(), format!("{:.1} / {:.1}", rc as f64 / 1000.0, c as f64 / 1000.0)]);
        status.push(["  └ Reserved Memory".into(), format!("{} MiB / {} MiB", rm >> 20, m >> 20)]);
        status.push(["  └ Labels".into(), labels]);
        let engine = member.is_some_and(|m| m.resources.engine_ok);
        status.push(["  └ Engine".into(), if engine { "reachable".into() } else { "not reachable".into() }]);
    }
    let mut info = serde_json::json!({
        "ID": cluster_id,
        "Containers": all,
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": stopped,
        "Images": 0,
        "Driver": "",
        "DriverStatus": null,
        "SystemStatus": status,
        "Plugins": {"Volume": [], "Network": [], "Authorization": null, "Log": []},
        "MemoryLimit": true,
        "SwapLimit": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": true,
        "CPUSet": false,
        "PidsLimit": false,
        "IPv4Forwarding": true,
        "BridgeNfIptables": true,
        "BridgeNfIp6tables": true,
        "Debug": false,
        "NFd": 0,
        "OomKillDisable": false,
    });
    // Two halves: one `json!` of every field passes the macro's recursion limit.
    let rest = serde_json::json!({
        "NGoroutines": 0,
        "SystemTime": rfc3339(Some(view.now_ms)),
        "LoggingDriver": "",
        "CgroupDriver": "",
        "NEventsListener": 0,
        "KernelVersion": "",
        "OperatingSystem": "shoal cluster",
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": null,
        "NCPU": cpus / 1000,
        "MemTotal": memory,
        "GenericResources": null,
        "DockerRootDir": "",
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": this_node,
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": concat!("shoal/", env!("CARGO_PKG_VERSION")),
        "Runtimes": {},
        "DefaultRuntime": "",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
        "LiveRestoreEnabled": false,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": [],
        "Warnings": [],
    });
    if let (serde_json::Value::Object(first), serde_json::Value::Object(second)) = (&mut info, rest) {
        first.extend(second);
    }
    info
}

/// `GET /version`.
pub fn version_json() -> serde_json::Value {
    let version = concat!("shoal/", env!("CARGO_PKG_VERSION"));
    serde_json::json!({
        "Platform": {"Name": "shoal"},
        "Components": [{
            "Name": "Engine",
            "Version": version,
            "Details": {"ApiVersion": "1.41", "MinAPIVersion": "1.24", "Os": "linux", "Arch": go_arch(), "Experimental": "false"},
        }],
        "Version": version,
        "ApiVersion": super::route::API_VERSION.to_string(),
        "MinAPIVersion": super::route::MIN_API_VERSION.to_string(),
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": go_arch(),
        "KernelVersion": "",
        "BuildTime": "",
    })
}

/// This machine's architecture in Go's words (what Docker reports).
pub(super) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod tests;
