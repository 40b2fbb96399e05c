//! Containers created through the Docker Engine API, as cluster objects.
//!
//! A container is a [`ContainerRecord`] (its stable id, its Docker name, unique across the
//! cluster, its labels and start/stop times) backed by a single-replica service that runs
//! it: created with 0 replicas (Docker's "created"), scaled to 1 by a start and back to 0
//! by a stop. The scheduler places and the node agents run that service like any other,
//! so a container needs nothing new from either. The backing service is named like the
//! container when the name is a valid service name (so `shoal service ls` shows `hello`),
//! else `ctr-` and the first 12 digits of the id; services and containers therefore share
//! one namespace. The service of a container can only be changed through the container
//! commands (`UpdateService`/`RemoveService` on it are refused), so the two never
//! disagree.
//!
//! Every rule is checked before anything changes: a rejected command changes nothing.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;
use shoal_wire::NodeId;

use super::Applied;
use super::ClusterState;
use super::Mode;
use super::Rejected;
use super::Response;
use super::ServiceDef;
use super::Slot;
use super::TaskState;
use super::MAX_SERVICES;

/// Length of a container id: 64 lowercase hex digits, as Docker's.
pub const CONTAINER_ID_LEN: usize = 64;
/// Longest container name, in bytes.
pub const MAX_CONTAINER_NAME_LEN: usize = 128;
/// Most containers: each is backed by a service, so the service limit bounds them too.
pub const MAX_CONTAINERS: usize = MAX_SERVICES;
/// Most labels on one container.
pub const MAX_CONTAINER_LABELS: usize = 64;
/// Longest label key, in bytes.
pub const MAX_CONTAINER_LABEL_KEY_LEN: usize = 256;
/// Most label text (keys and values) on one container, in bytes: with the service's own
/// bound (`MAX_SPEC_TEXT_BYTES`) a `CreateContainer` stays under the command limit.
pub const MAX_CONTAINER_LABEL_BYTES: usize = 16 * 1024;

/// Label that marks a container created with Docker's `AutoRemove` (`docker run --rm`):
/// once its run ends, the leader removes it ([`ClusterState::auto_remove_due`]). A label,
/// so the replicated layout of containers stays as it is.
pub const AUTO_REMOVE_LABEL: &str = "shoal.auto-remove";

/// A container of the Docker API, as the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 lowercase hex digits; stable for the life of the container.
    pub id: String,
    /// Docker name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`), without the leading `/`.
    pub name: String,
    /// The single-replica service that runs it.
    pub service: String,
    /// The container's labels, as given at creation.
    pub labels: BTreeMap<String, String>,
    pub created_ms: u64,
    /// Leader time of the last start (or restart).
    pub started_ms: Option<u64>,
    /// Leader time of the last stop.
    pub stopped_ms: Option<u64>,
    /// The node of the last run that was stopped or restarted (its task may be forgotten
    /// since): where `docker ps -a` shows a stopped container.
    pub last_node: Option<NodeId>,
    /// Task ids from this one on are the container's (an older container of the same
    /// name had a service of the same name, whose shut-down tasks may still be known).
    pub first_task: u64,
    /// The networks it is attached to (empty: Docker's default bridge).
    pub networks: Vec<super::NetworkAttachment>,
}

/// What `CreateContainer` carries: the record's given parts and the service that runs it
/// (with 0 replicas: a new container is created, not started).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDef {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service: ServiceDef,
}

/// Docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, here at most
/// [`MAX_CONTAINER_NAME_LEN`] bytes.
pub fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= MAX_CONTAINER_NAME_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// 64 lowercase hex digits.
pub fn valid_container_id(id: &str) -> bool {
    id.len() == CONTAINER_ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The name of the service that runs container `name` with id `id`.
pub fn backing_service_name(name: &str, id: &str) -> String {
    if super::valid_service_name(name) {
        name.to_string()
    } else {
        format!("ctr-{}", id.get(..12).unwrap_or(id))
    }
}

pub(super) fn valid_labels(labels: &BTreeMap<String, String>) -> bool {
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    labels.len() <= MAX_CONTAINER_LABELS
        && bytes <= MAX_CONTAINER_LABEL_BYTES
        && labels.iter().all(|(k, v)| {
            !k.is_empty()
                && k.len() <= MAX_CONTAINER_LABEL_KEY_LEN
                && !k.chars().any(|c| c.is_control() || c == '=')
                && !v.contains('\0')
        })
}

impl ClusterState {
    /// The container named `name`.
    pub fn container_by_name(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers.values().find(|c| c.name == name)
    }

    /// The container a service runs, if it is the service of one.
    pub fn container_of_service(&self, service: &str) -> Option<&ContainerRecord> {
        self.containers.values().find(|c| c.service == service)
    }

    /// Whether the container is asked to run (its service has its one replica).
    pub fn container_wants_to_run(&self, c: &ContainerRecord) -> bool {
        self.services
            .get(&c.service)
            .is_some_and(|s| s.def.mode == Mode::Replicated(1))
    }

    /// The tasks of a container (live and shut down, until forgotten), by id.
    pub fn container_tasks<'a>(
        &'a self,
        c: &'a ContainerRecord,
    ) -> impl Iterator<Item = &'a super::TaskRecord> + 'a {
        self.tasks
            .range(c.first_task..)
            .map(|(_, t)| t)
            .filter(move |t| t.service == c.service)
    }

    /// The live task of a container (at most one: its service has one slot).
    pub fn container_live_task<'a>(
        &'a self,
        c: &'a ContainerRecord,
    ) -> Option<&'a super::TaskRecord> {
        self.container_tasks(c).find(|t| t.is_live())
    }

    /// The ended run of a container that is asked to run: its live task has exited or
    /// failed (it may be restarted by its policy, or stay ended).
    fn live_task_ended(&self, c: &ContainerRecord) -> bool {
        self.container_tasks(c).any(|t| {
            t.is_live()
                && matches!(
                    t.observed,
                    Some(TaskState::Exited { .. } | TaskState::Failed { .. })
                )
        })
    }

    /// Running, for `docker rm` without force: asked to run, and its current run has
    /// not ended (starting, running, or not placed yet).
    pub fn container_is_running(&self, c: &ContainerRecord) -> bool {
        self.container_wants_to_run(c) && !self.live_task_ended(c)
    }

    /// Whether the container was created with `AutoRemove`.
    pub fn container_auto_removes(c: &ContainerRecord) -> bool {
        c.labels.get(AUTO_REMOVE_LABEL).is_some_and(|v| v == "true")
    }

    /// The `AutoRemove` containers whose run is over, to be removed (record, service and
    /// so the engine's container): started once, and now either ended by themselves
    /// (their live task exited or failed) or stopped with no task still up.
    pub fn auto_remove_due(&self) -> Vec<String> {
        self.containers
            .values()
            .filter(|c| Self::container_auto_removes(c) && c.started_ms.is_some())
            .filter(|c| {
                if self.container_wants_to_run(c) {
                    self.live_task_ended(c)
                } else {
                    !self.container_tasks(c).any(|t| {
                        t.is_live()
                            || matches!(t.observed, Some(TaskState::Running | TaskState::Starting))
                    })
                }
            })
            .map(|c| c.id.clone())
            .collect()
    }

    pub(super) fn create_container(&mut self, def: ContainerDef, now_ms: u64) -> Response {
        if !valid_container_id(&def.id) {
            return Err(Rejected::BadContainerId);
        }
        if self.containers.contains_key(&def.id) {
            return Err(Rejected::ContainerIdInUse);
        }
        if !valid_container_name(&def.name) {
            return Err(Rejected::BadContainerName(super::clip_text(
                &def.name,
                MAX_CONTAINER_NAME_LEN + 1,
            )));
        }
        if self.container_by_name(&def.name).is_some() {
            return Err(Rejected::ContainerNameInUse(def.name));
        }
        if !valid_labels(&def.labels) {
            return Err(Rejected::BadContainerLabels);
        }
        if def.service.name != backing_service_name(&def.name, &def.id) {
            return Err(Rejected::BadContainerService(format!(
                "its service must be named {}",
                backing_service_name(&def.name, &def.id)
            )));
        }
        if def.service.mode != Mode::Replicated(0) {
            return Err(Rejected::BadContainerService(
                "a new container's service has 0 replicas (it is created, not started)".into(),
            ));
        }
        if self.containers.len() >= MAX_CONTAINERS {
            return Err(Rejected::TooManyContainers);
        }
        let service = def.service.name.clone();
        // Validates the service and changes nothing if it is refused.
        match self.create_service(def.service, now_ms) {
            Ok(_) => {}
            Err(Rejected::ServiceExists(s)) => return Err(Rejected::NameInUseByService(s)),
            Err(e) => return Err(e),
        }
        self.containers.insert(
            def.id.clone(),
            ContainerRecord {
                id: def.id,
                name: def.name,
                service,
                labels: def.labels,
                created_ms: now_ms,
                started_ms: None,
                stopped_ms: None,
                last_node: None,
                first_task: self.next_task_id.max(1),
                networks: Vec::new(),
            },
        );
        Ok(Applied::ContainerCreated)
    }

    /// Start (`run`), restart (`run` and `restart`) or stop a container. A start of a
    /// container whose run has ended starts a new run, as a restart does.
    pub(super) fn set_container_run(
        &mut self,
        id: String,
        run: bool,
        restart: bool,
        now_ms: u64,
    ) -> Response {
        let Some(c) = self.containers.get(&id).cloned() else {
            return Err(Rejected::UnknownContainer(id));
        };
        if !self.services.contains_key(&c.service) {
            return Err(Rejected::UnknownContainer(id));
        }
        let wants = self.container_wants_to_run(&c);
        let cycle = run && wants && (restart || self.live_task_ended(&c));
        let changed = run != wants || cycle;
        if !changed {
            return Ok(Applied::ContainerRun { changed: false });
        }
        // Validated: from here on nothing is refused (the service exists, 0 and 1 replicas
        // are in range, and it is replicated).
        let ran_on = self.container_live_task(&c).map(|t| t.node);
        if cycle {
            self.update_service(c.service.clone(), Some(0), now_ms)?;
        }
        self.update_service(c.service.clone(), Some(u32::from(run)), now_ms)?;
        if let Some(record) = self.containers.get_mut(&id) {
            if ran_on.is_some() {
                record.last_node = ran_on;
            }
            if run {
                record.started_ms = Some(now_ms);
            } else {
                record.stopped_ms = Some(now_ms);
            }
        }
        Ok(Applied::ContainerRun { changed: true })
    }

    pub(super) fn remove_container(&mut self, id: String, force: bool, now_ms: u64) -> Response {
        let Some(c) = self.containers.get(&id).cloned() else {
            return Err(Rejected::UnknownContainer(id));
        };
        if !force && self.container_is_running(&c) {
            return Err(Rejected::ContainerRunning(c.name));
        }
        self.containers.remove(&id);
        let shut_down = match self.remove_service(c.service, now_ms) {
            Ok(Applied::ServiceRemoved { shut_down }) => shut_down,
            _ => 0,
        };
        Ok(Applied::ContainerRemoved { shut_down })
    }

    /// The task that shows a container's state: its live task, else its newest one.
    pub fn container_task<'a>(&'a self, c: &'a ContainerRecord) -> Option<&'a super::TaskRecord> {
        let tasks: Vec<&'a super::TaskRecord> = self
            .container_tasks(c)
            .filter(|t| t.slot == Slot::Index(1))
            .collect();
        tasks
            .iter()
            .rev()
            .find(|t| t.is_live())
            .or_else(|| tasks.last())
            .copied()
    }
}
