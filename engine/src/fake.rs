//! An in-memory container engine for the simulator and for tests: containers start after a
//! delay, and exit or crash when told to or when their scripted behaviour says so, all on a
//! clock the caller sets (`set_now_ms`). No wall clock, no randomness, only ordered maps.

use crate::engine::Engine;
use crate::types::{ContainerId, ContainerInfo, ContainerState, CreateRequest, LabelFilter, Owner};
use crate::EngineError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a fake container's process does once it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs until stopped.
    RunForever,
    /// Exits by itself with `code`, `after_ms` after it started running.
    ExitAfter { after_ms: u64, code: i64 },
    /// Cannot start (like a command missing from the image): `start` fails with
    /// `StartFailed` and the container is left failed.
    FailToStart,
}

#[derive(Debug, Clone)]
struct FakeContainer {
    name: String,
    owner: Owner,
    command: Vec<String>,
    state: FakeState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FakeState {
    Created,
    /// Started at `since_ms`, runs once `now >= since_ms + start_delay_ms`.
    Starting { since_ms: u64 },
    Running { since_ms: u64 },
    Exited { code: i64 },
    Failed { reason: String },
}

#[derive(Debug)]
struct Inner {
    now_ms: u64,
    start_delay_ms: u64,
    healthy: bool,
    images: BTreeSet<String>,
    behaviours: BTreeMap<Vec<String>, Behaviour>,
    containers: BTreeMap<ContainerId, FakeContainer>,
    next_id: u64,
}

impl Inner {
    /// Moves every container along to `now_ms`.
    fn settle(&mut self) {
        let now = self.now_ms;
        let delay = self.start_delay_ms;
        for c in self.containers.values_mut() {
            if let FakeState::Starting { since_ms } = c.state {
                if now >= since_ms.saturating_add(delay) {
                    c.state = FakeState::Running { since_ms: since_ms.saturating_add(delay) };
                }
            }
            if let FakeState::Running { since_ms } = c.state {
                let behaviour = self.behaviours.get(&c.command).copied().unwrap_or(Behaviour::RunForever);
                if let Behaviour::ExitAfter { after_ms, code } = behaviour {
                    if now >= since_ms.saturating_add(after_ms) {
                        c.state = FakeState::Exited { code };
                    }
                }
            }
        }
    }

    fn check_healthy(&self) -> Result<(), EngineError> {
        if self.healthy {
            Ok(())
        } else {
            Err(EngineError::Unavailable("fake engine is down".to_string()))
        }
    }

    fn state_of(c: &FakeContainer) -> ContainerState {
        match &c.state {
            FakeState::Created => ContainerState::Created,
            FakeState::Starting { .. } => ContainerState::Starting,
            FakeState::Running { .. } => ContainerState::Running,
            FakeState::Exited { code } => ContainerState::Exited { code: *code },
            FakeState::Failed { reason } => ContainerState::Failed { reason: reason.clone() },
        }
    }
}

/// The fake engine. Cheap to clone; clones share the same containers (like several agents
/// sharing one host's Docker Engine).
#[derive(Debug, Clone)]
pub struct FakeEngine {
    inner: Arc<Mutex<Inner>>,
}

impl FakeEngine {
    /// An engine at time 0 whose containers take `start_delay_ms` to start.
    pub fn new(start_delay_ms: u64) -> Self {
        let inner = Inner {
            now_ms: 0,
            start_delay_ms,
            healthy: true,
            images: BTreeSet::new(),
            behaviours: BTreeMap::new(),
            containers: BTreeMap::new(),
            next_id: 1,
        };
        Self { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `image` available locally (the fake's equivalent of `docker load`).
    pub fn add_image(&self, image: impl Into<String>) {
        self.lock().images.insert(image.into());
    }

    /// Containers created with exactly this command behave like this (default: run forever).
    pub fn set_behaviour(&self, command: Vec<String>, behaviour: Behaviour) {
        self.lock().behaviours.insert(command, behaviour);
    }

    /// Sets the clock (never moves it backwards) and lets containers start and exit.
    pub fn set_now_ms(&self, now_ms: u64) {
        let mut inner = self.lock();
        inner.now_ms = inner.now_ms.max(now_ms);
        inner.settle();
    }

    pub fn now_ms(&self) -> u64 {
        self.lock().now_ms
    }

    /// Down engine: every call fails with `Unavailable` until set healthy again.
    pub fn set_healthy(&self, healthy: bool) {
        self.lock().healthy = healthy;
    }

    /// Makes a running (or starting) container exit with `code` now. False if it was not.
    pub fn exit(&self, id: &ContainerId, code: i64) -> bool {
        let mut inner = self.lock();
        inner.settle();
        match inner.containers.get_mut(id) {
            Some(c) if matches!(c.state, FakeState::Running { .. } | FakeState::Starting { .. }) => {
                c.state = FakeState::Exited { code };
                true
            }
            _ => false,
        }
    }

    /// Makes a container fail (the engine killed it, e.g. out of memory). False if unknown.
    pub fn crash(&self, id: &ContainerId, reason: impl Into<String>) -> bool {
        let mut inner = self.lock();
        match inner.containers.get_mut(id) {
            Some(c) => {
                c.state = FakeState::Failed { reason: reason.into() };
                true
            }
            None => false,
        }
    }

    /// Number of containers, of every owner and state.
    pub fn container_count(&self) -> usize {
        self.lock().containers.len()
    }
}

impl Engine for FakeEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        self.lock().check_healthy()
    }

    async fn list(&self, filter: &LabelFilter) -> Result<Vec<ContainerInfo>, EngineError> {
        let mut inner = self.lock();
        inner.check_healthy()?;
        inner.settle();
        let mut out: Vec<ContainerInfo> = inner
            .containers
            .iter()
            .filter(|(_, c)| filter.matches(&c.owner))
            .map(|(id, c)| ContainerInfo { id: id.clone(), name: c.name.clone(), owner: c.owner.clone(), state: Inner::state_of(c) })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create(&self, req: &CreateRequest) -> Result<ContainerId, EngineError> {
        req.validate()?;
        let mut inner = self.lock();
        inner.check_healthy()?;
        if !inner.images.contains(&req.spec.image) {
            return Err(EngineError::ImageNotFound { image: req.spec.image.clone() });
        }
        let name = req.owner.container_name();
        if inner.containers.values().any(|c| c.name == name) {
            return Err(EngineError::NameInUse(name));
        }
        let id = ContainerId(format!("fake-{}", inner.next_id));
        inner.next_id += 1;
        let container = FakeContainer { name, owner: req.owner.clone(), command: req.spec.command.clone(), state: FakeState::Created };
        inner.containers.insert(id.clone(), container);
        Ok(id)
    }

    async fn start(&self, id: &ContainerId) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.check_healthy()?;
        inner.settle();
        let now = inner.now_ms;
        let behaviours = &inner.behaviours;
        let Some(c) = inner.containers.get(id) else {
            return Err(EngineError::NoSuchContainer(id.0.clone()));
        };
        if behaviours.get(&c.command) == Some(&Behaviour::FailToStart) {
            let reason = format!("exec: {:?}: executable file not found", c.command.first().cloned().unwrap_or_default());
            if let Some(c) = inner.containers.get_mut(id) {
                c.state = FakeState::Failed { reason: reason.clone() };
            }
            return Err(EngineError::StartFailed { container: id.to_string(), reason });
        }
        let Some(c) = inner.containers.get_mut(id) else {
            return Err(EngineError::NoSuchContainer(id.0.clone()));
        };
        match c.state {
            FakeState::Starting { .. } | FakeState::Running { .. } => {}
            _ => c.state = FakeState::Starting { since_ms: now },
        }
        inner.settle();
        Ok(())
    }

    async fn stop_and_remove(&self, id: &ContainerId) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.check_healthy()?;
        inner.containers.remove(id);
        Ok(())
    }

    async fn inspect(&self, id: &ContainerId) -> Result<ContainerState, EngineError> {
        let mut inner = self.lock();
        inner.check_healthy()?;
        inner.settle();
        Ok(inner.containers.get(id).map_or(ContainerState::Missing, Inner::state_of))
    }
}
