//! Errors of the engine port. Each says what state it leaves behind.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// The engine could not be reached (socket missing, connection refused, timeout).
    /// Nothing was changed; try again later. The node reports its engine unhealthy.
    #[error("container engine unavailable: {0}")]
    Unavailable(String),
    /// The image is not on this node's engine. Nothing was created (creating a container
    /// never pulls: the node fetches or pulls images itself, before it creates).
    #[error("image {image} is not on this node's engine: fetch it from a node that has it, pull it, or load it here")]
    ImageNotFound { image: String },
    /// An image reference that cannot be a name, tag or id. Nothing was sent to the engine.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidImageReference { reference: String, reason: String },
    /// An image archive went past the import bound. The engine stopped reading it;
    /// nothing was loaded.
    #[error("image archive larger than {limit_bytes} bytes: refused, nothing was loaded")]
    ImportTooLarge { limit_bytes: u64 },
    /// The archive's bytes stopped coming (the sending side failed or went away). Nothing
    /// was loaded; fetch it again.
    #[error("image transfer failed before the archive was complete: {0}; nothing was loaded")]
    TransferFailed(String),
    /// The engine refused the archive (not an image archive, truncated, corrupt). Nothing
    /// was loaded.
    #[error("the engine could not load the image archive (corrupt or truncated): {reason}")]
    ImportFailed { reason: String },
    /// The archive loaded, but it is not the image that was expected (other id, other
    /// tags). What it loaded was taken out again (tags put back as they were).
    #[error("the image archive holds {found}, not the expected {expected}; none of it was kept (tags it moved were put back)")]
    ImportMismatch { expected: String, found: String },
    /// A pull failed: the registry cannot be reached, or it does not have the image (or
    /// will not give it). Nothing was pulled.
    #[error("could not pull image {image}: {reason}")]
    PullFailed { image: String, reason: String },
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
