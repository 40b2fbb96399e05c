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
pub mod joinnet;
pub mod netutil;
pub mod output;
pub mod port;
pub use shoal_pki as pki;
pub mod raftnet;
pub mod remote;
pub mod services;
pub mod simcmd;
