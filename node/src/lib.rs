//! The `shoal` node as a library: everything the binary (`src/main.rs`) wires together, public
//! so benchmarks and integration tests can drive the pieces (PKI, Raft network, join
//! transport) directly.

pub mod agent;
pub mod api;
pub mod config;
pub mod control;
pub mod dockerapi;
pub mod identity;
pub mod images;
pub mod output;
pub use shoal_pki as pki;
pub use shoal_transport::{frame, joinnet, netutil, port, raftnet};
pub mod recover;
pub mod remote;
pub mod services;
pub mod simcmd;
