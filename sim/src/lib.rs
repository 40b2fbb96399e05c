//! shoal's deterministic simulator: many membership cores on one thread, on simulated time,
//! over a simulated network and LAN, with faults drawn from one seed and invariant checkers
//! running all the time (TigerBeetle's VOPR is the model).
//!
//! - [`options`]: what to run (seed, nodes, duration, faults) and the command-line parsers;
//! - [`plan`]: everything derived from the seed, printed before the run;
//! - `harness`: the event queue, nodes, faults, LAN and network glue;
//! - `net`, `node`, `rng`, `trace`: the simulated network, one machine, the seeded streams,
//!   the trace file;
//! - `invariants`: one checker per property;
//! - [`report`]: counters, violations, the summary and the replay command;
//! - [`raft`]: the Raft mode (`--raft`): real openraft nodes on paused tokio time, simulated
//!   network and disks, its own checkers and report.
//!
//! Entry point: [`run`]. A caller prints [`SimPlan::derive`] first, then
//! [`SimReport::summary`].
//!
//! **Architecture invariant:** nothing on the simulated path reads a clock, the OS rng or
//! iterates a hash map; the only wall-clock read is the run time put in the report.
#![forbid(unsafe_code)]

mod harness;
mod invariants;
mod net;
mod node;
pub mod options;
pub mod plan;
pub mod raft;
pub mod report;
mod rng;
mod sweep;
mod trace;
mod whole;

pub use harness::{run, EPOCH_MS};
pub use sweep::sweep;
pub use options::{format_duration, parse_duration, FaultKind, FaultSet, OptionsError, RaftBug, SimOptions, MAX_NODES, WHOLE_MAX_NODES};
pub use plan::{SimPlan, CONVERGENCE_BOUND_MS, HEAL_MS};
pub use report::{MessageCounts, SimReport};
