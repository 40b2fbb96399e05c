//! shoal's pure cluster logic: placement constraints and the scheduler. No I/O, no clock,
//! no randomness: time comes in as arguments, decisions go out as values, so the same code
//! runs on the leader and in the simulator.
#![forbid(unsafe_code)]

pub mod constraint;
pub mod scheduler;
pub mod autopilot;
pub mod bootstrap;
