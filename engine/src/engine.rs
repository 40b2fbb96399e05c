//! The container engine port: the only way shoal touches containers.

use crate::types::{ContainerId, ContainerInfo, ContainerState, CreateRequest, LabelFilter};
use crate::EngineError;
use std::future::Future;

/// A container engine as a node's agent sees it. Implemented by [`crate::DockerEngine`]
/// (bollard) and [`crate::FakeEngine`] (in memory, on a clock the caller drives); both pass
/// the same suite in [`crate::conformance`].
pub trait Engine: Send + Sync {
    /// Is the engine reachable and answering?
    fn ping(&self) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Every container (running or not) whose labels match `filter`, sorted by name.
    fn list(&self, filter: &LabelFilter) -> impl Future<Output = Result<Vec<ContainerInfo>, EngineError>> + Send;

    /// Creates (does not start) a container for `req`, named `req.owner.container_name()`
    /// and labelled with the owner. Fails with `ImageNotFound` if the image is not local:
    /// nothing is ever pulled.
    fn create(&self, req: &CreateRequest) -> impl Future<Output = Result<ContainerId, EngineError>> + Send;

    /// Starts a created or exited container. Starting a running one is not an error.
    fn start(&self, id: &ContainerId) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Stops (gracefully, then by force) and removes a container. A container that is
    /// already gone is not an error.
    fn stop_and_remove(&self, id: &ContainerId) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// The container's state; `Missing` if there is no such container.
    fn inspect(&self, id: &ContainerId) -> impl Future<Output = Result<ContainerState, EngineError>> + Send;

    /// Create and start. If the start fails, the created container is left in place (the
    /// reconciler sees it and decides) and the start error is returned.
    fn run(&self, req: &CreateRequest) -> impl Future<Output = Result<ContainerId, EngineError>> + Send {
        async move {
            let id = self.create(req).await?;
            self.start(&id).await?;
            Ok(id)
        }
    }
}
