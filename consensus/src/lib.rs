//! shoal's consensus: the openraft type config, the replicated cluster state machine, and
//! its storage (redb on disk, and in memory for tests and the simulator).
//!
//! Layering: depends on `shoal-wire` (codec and `NodeId`), and on `shoal-cluster` and
//! `shoal-engine` for the vocabulary of services and tasks (scheduler decisions, container
//! specs, task states), so the replicated state stores exactly what the scheduler and the
//! agents speak. The Raft network (TCP with mutual TLS) and the wiring into the node live
//! elsewhere; this crate knows nothing about sockets or certificates beyond the records it
//! replicates.
//!
//! - [`types`]: `TypeConfig` (openraft 0.10, pinned exactly; see `DECISION.md`), `RaftNodeId`,
//!   `ShoalNode`, aliases.
//! - [`runtime`]: openraft's async runtime for shoal: tokio with per-node seeded randomness.
//! - [`state`]: `ClusterState`, `Command`, `Response`: pure, deterministic, total.
//! - [`codec`]: size limits and encodings of commands and snapshots through `shoal_wire`.
//! - [`propose`]: the size-checked way to put a command into the log.
//! - [`store`]: `RaftLogStorage` + `RaftStateMachine` over redb ([`store::disk`]) and memory
//!   ([`store::mem`]).
#![forbid(unsafe_code)]

pub mod codec;
pub mod duties;
pub mod propose;
pub mod runtime;
pub mod state;
pub mod store;
pub mod types;

pub use openraft;
pub use propose::propose;
pub use propose::propose_when_ready;
pub use propose::ProposeError;
pub use state::Applied;
pub use state::CaRecord;
pub use state::ClusterState;
pub use state::Command;
pub use state::IssuedCert;
pub use state::NodeRecord;
pub use state::Rejected;
pub use state::Response;
pub use state::ServiceDef;
pub use state::ServiceRecord;
pub use state::TaskRecord;
pub use store::disk::RedbStore;
pub use store::mem::MemStore;
pub use store::StateMachineStore;
pub use types::RaftNodeId;
pub use types::ShoalNode;
pub use types::TypeConfig;
