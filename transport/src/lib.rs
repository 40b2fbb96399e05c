//! shoal's node-to-node TCP, apart from the node that uses it:
//!
//! - [`port`]: the node's one TCP port: a TLS ClientHello is read, and the connection is
//!   handed to the service its ALPN names (Raft, joins, images, the APIs);
//! - [`admission`]: who may hold a connection before proving who it is (per-IP shares,
//!   places reserved for members);
//! - [`netutil`]: the accept loop;
//! - [`frame`]: the one length-prefixed framing of every protocol here (and of image
//!   transfer), read with a bound before any allocation;
//! - [`raftnet`]: openraft's `RaftNetworkV2` over mutual TLS (client, server, authorization,
//!   the RPC messages);
//! - [`joinnet`]: the join protocol (a joiner without a certificate asks a member for one).
//!
//! **Architecture invariant:** nothing here knows the node's configuration, its files or
//! its loops; the node (`shoal-node`) wires these pieces to them.
#![forbid(unsafe_code)]

pub use shoal_pki as pki;

pub mod admission;
pub mod frame;
pub mod joinnet;
pub mod netutil;
pub mod port;
pub mod raftnet;
