//! shoal discovery and membership: who is in the cluster, and who is up.
//!
//! - [`secret`]: the join secret, the public cluster id and the gossip key derived from it;
//! - [`seal`]: AEAD sealing of every datagram, with a replay window;
//! - [`identity`]: the SWIM identity and the facts a node gossips about itself;
//! - [`signing`]: what a node says about itself (facts, leave) is signed with its own key;
//! - [`membership`]: the I/O-free core (foca plus shoal's rules);
//! - [`ports`]: traits for datagrams, clock and peer discovery, real and in-memory;
//! - [`driver`]: the task that runs the core against the ports;
//! - [`mdns`]: the real discovery adapter over `mdns-sd`.
//!
//! **Architecture invariant:** `membership`, `seal`, `identity` and `codec` do no I/O and read
//! no clock or OS randomness; only `ports`, `driver` and `mdns` touch tokio or sockets.
#![forbid(unsafe_code)]

pub mod codec;
pub mod driver;
pub mod identity;
pub mod mdns;
pub mod membership;
pub mod ports;
pub mod seal;
pub mod signing;
#[doc(hidden)]
pub mod testing;
/// The join secret, re-exported from its own base crate (`shoal_secret`).
pub use shoal_secret as secret;

pub use driver::{spawn, MembershipHandle};
pub use identity::{NodeFacts, NodeResources, ShoalId};
pub use membership::{GossipStats, MemberEvent, MemberState, MemberView, Membership, MembershipConfig, PeerHint};
pub use secret::{ClusterId, JoinSecret};
pub use signing::{KeyedHashSignatures, P256Signatures, SharedSignatures, Signatures};
