//! shoal-engine: the container engine port (a trait with a Docker implementation over
//! bollard and an in-memory fake on the caller's clock), one conformance suite both pass,
//! and the node-side reconciler (pure) with the small driver that applies its actions.
//!
//! *Architecture invariant:* `reconcile` and `types` do no I/O and read no clock; only
//! `docker` talks to the Docker Engine, and nothing pulls an image unless asked to
//! (`Engine::pull_image`; creating a container never pulls).

#![forbid(unsafe_code)]

pub mod conformance;
pub mod docker;
pub mod driver;
pub mod engine;
pub mod error;
pub mod fake;
pub mod image;
pub mod reconcile;
pub mod testimage;
pub mod types;

pub use docker::{DockerConfig, DockerEngine};
pub use driver::{apply, reconcile_once, reconcile_once_keeping, REMOVALS_IN_FLIGHT_MAX};
pub use engine::Engine;
pub use error::EngineError;
pub use fake::{Behaviour, FakeEngine, FAKE_IMAGE_BYTES_DEFAULT};
pub use image::{ImageExport, ImageId, ImageInfo, ImageStream, PullProgress, IMAGE_IMPORT_BYTES_MAX};
pub use reconcile::{Action, AssignedTask, Desired, Reconciler, ReconcilerConfig, RemoveReason, RestartPolicy, TaskReport, TaskState};
pub use types::{ContainerId, ContainerInfo, ContainerSpec, ContainerState, CreateRequest, EngineNetwork, LabelFilter, NetworkJoin, Owner, PortMapping, Protocol, TaskId};
