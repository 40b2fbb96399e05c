//! shoal's controller core, without I/O (design steps 3 to 6): what a node decides, given
//! what it sees, in the style of the membership core (inputs with `now`, effects out).
//!
//! - [`bootstrap`]: when to create the cluster, wait, or join (settle tracking around the
//!   pure rule `shoal_cluster::bootstrap::decide`);
//! - [`trust`]: the leader's trust writes (commit the CA it created, register itself,
//!   record its certificate), the issuer rebuilt from the replicated CA, this node's own
//!   grant and when to renew it;
//! - [`join`]: the answer to a join request: the check, the role granted, the certificate,
//!   and the writes to commit before answering;
//! - [`leader`]: one pass of the leader's duties (trust, Raft membership, the scheduler,
//!   auto-removal) as a list of effects;
//! - [`agent`]: one reconcile-and-report pass of a node's tasks, on any
//!   `shoal_engine::Engine` (the Docker adapter in the node, the fake in the simulator);
//! - [`writes`]: who may forward which write to the leader (a worker only its own);
//! - [`planted`]: bugs planted on purpose behind a switch, to show that the simulator's
//!   checks and the real-node tests catch them in the same code.
//!
//! **Architecture invariant:** the node (`shoal_node::control`) and the simulator's whole
//! mode (`shoal_sim::whole`) run this controller; they differ only in their drivers (how
//! inputs are gathered and effects carried out: Raft proposals, TLS calls, engine calls,
//! files). Nothing here touches a socket, a file, a clock or a thread.

pub mod agent;
pub mod bootstrap;
pub mod join;
pub mod leader;
pub mod planted;
pub mod trust;
pub mod writes;

pub use agent::{AgentCore, AgentOutcome};
pub use bootstrap::BootstrapCore;
pub use join::{answer_join, JoinAnswer, JoinContext, JoinRefusal};
pub use leader::{ChangeKind, LeaderCore, LeaderEffect, LeaderInput, WriteWhy};
pub use planted::PlantedBug;
pub use writes::{check_forward, MembershipView, WorkerWrite};
pub use trust::{issuer_from_state, own_grant, renewal_due, trust_step, IssuerError, OwnTrust, TrustStep};

#[cfg(test)]
mod testing;
