//! Errors of the engine port. Each says what state it leaves behind.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// The engine could not be reached (socket missing, connection refused, timeout).
    /// Nothing was changed; try again later. The node reports its engine unhealthy.
    #[error("container engine unavailable: {0}")]
    Unavailable(String),
    /// The image is not on this node. Nothing was created.
    #[error("image {image} not found locally; shoal does not pull: build or load it on this node")]
    ImageNotFound { image: String },
    /// No container with this id or name. Nothing was changed.
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    /// A container with this name already exists (one task never gets two containers).
    /// Nothing was created.
    #[error("a container named {0} already exists")]
    NameInUse(String),
    /// The container exists but could not be started (bad command, port taken, …). The
    /// container is left created and not running.
    #[error("container {container} could not start: {reason}")]
    StartFailed { container: String, reason: String },
    /// The spec breaks a limit or is malformed. Nothing was sent to the engine.
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    /// Any other answer from the engine; the operation may or may not have happened.
    #[error("container engine error (status {status}): {message}")]
    Api { status: u16, message: String },
}
