//! The container engine port: the only way shoal touches containers.

use crate::image::{ImageExport, ImageId, ImageInfo, ImageStream, PullProgress};
use crate::types::{ContainerId, ContainerInfo, ContainerState, CreateRequest, EngineNetwork, LabelFilter};
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
    /// and labelled with the owner. With `req.network`, the container joins that network
    /// with its aliases, and the network is created first (a bridge labelled
    /// `shoal.network`) if the engine does not have it. Fails with `ImageNotFound` if the image is not on this
    /// engine: create never pulls (the node fetches or pulls first, see `pull_image`).
    fn create(&self, req: &CreateRequest) -> impl Future<Output = Result<ContainerId, EngineError>> + Send;

    /// shoal's networks on the engine (labelled `shoal.network`), sorted by name.
    fn networks(&self) -> impl Future<Output = Result<Vec<EngineNetwork>, EngineError>> + Send;

    /// Removes shoal's network `name`. A missing one is not an error; one that containers
    /// still use is refused (`Api` with status 403/409) and left as it is.
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Starts a created or exited container. Starting a running one is not an error.
    fn start(&self, id: &ContainerId) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Stops (gracefully, then by force) and removes a container. A container that is
    /// already gone is not an error.
    fn stop_and_remove(&self, id: &ContainerId) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// The container's state; `Missing` if there is no such container.
    fn inspect(&self, id: &ContainerId) -> impl Future<Output = Result<ContainerState, EngineError>> + Send;

    /// Every image on the engine (untagged ones included), sorted by id, tags sorted.
    fn images(&self) -> impl Future<Output = Result<Vec<ImageInfo>, EngineError>> + Send;

    /// The id of the local image `reference` names (`name:tag`; `name` meaning
    /// `name:latest`; a full id or an id prefix), or `None` if there is none here.
    fn resolve_image(&self, reference: &str) -> impl Future<Output = Result<Option<ImageId>, EngineError>> + Send;

    /// Reads image `id` out as an archive (`docker save`) carrying exactly `tags` (each
    /// must be a tag of `id` here, `name` meaning `name:latest`; none: the archive carries
    /// no name and loads untagged). `ImageNotFound` if `id` is not here or a tag is not one
    /// of its tags.
    fn export_image(&self, id: &ImageId, tags: &[String]) -> impl Future<Output = Result<ImageExport, EngineError>> + Send;

    /// Loads an archive made by `export_image` (`docker load`), reading at most
    /// `min(max_bytes, IMAGE_IMPORT_BYTES_MAX)` bytes of `chunks`, then checks that the
    /// engine holds `id` under every one of `tags` and that the archive loaded nothing
    /// else. Errors: `ImportTooLarge`, `TransferFailed` (a chunk error), `ImportFailed`
    /// (garbage, truncated), `ImportMismatch` (another image: taken out again); in each
    /// case nothing of the archive stays on the engine. Returns the image as now held.
    fn import_image(&self, id: &ImageId, tags: &[String], max_bytes: u64, chunks: ImageStream) -> impl Future<Output = Result<ImageInfo, EngineError>> + Send;

    /// Pulls `reference` from its registry (`name` meaning `name:latest`), calling
    /// `progress` for each step the engine reports, and returns the local id. Fails with
    /// `PullFailed` when the registry cannot be reached or does not have the image, and
    /// `Unavailable` only when the engine itself is not answering.
    fn pull_image<P>(&self, reference: &str, progress: P) -> impl Future<Output = Result<ImageId, EngineError>> + Send
    where
        P: FnMut(PullProgress) + Send;

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
