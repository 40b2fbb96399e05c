//! Trust on the leader and on every node: the writes that make the cluster's trust state
//! complete (the CA the initializer created, the leader's own registration and
//! certificate), the issuer rebuilt from the replicated CA, and this node's own grant and
//! when it must be renewed.

use shoal_consensus::duties::RaftView;
use shoal_consensus::state::MAX_SEALED_KEY_LEN;
use shoal_consensus::{CaRecord, ClusterState, Command, IssuedCert, NodeRecord};
use shoal_discovery::JoinSecret;
use shoal_pki::{CertInfo, ClusterCa, IssuePolicy, Issuer, NodeGrant, NodeRole, PkiError, SealedCaKey};
use shoal_wire::NodeId;
use std::net::SocketAddr;
use std::time::SystemTime;

/// What the leader knows of its own trust material.
#[derive(Debug, Clone, Copy)]
pub struct OwnTrust<'a> {
    pub me: NodeId,
    /// This node's record (its name, advertised address and labels).
    pub record: &'a NodeRecord,
    /// This node's certificate (serial and expiry), if it holds one.
    pub cert: Option<&'a IssuedCert>,
    /// The CA this node created, until it is committed (the initializer's `ca.pending`).
    pub pending_ca: Option<&'a (String, SealedCaKey)>,
}

/// The next trust write a leader must make before its other duties.
#[derive(Debug, Clone, PartialEq)]
pub enum TrustStep {
    /// Trust is complete: go on with the other duties.
    Ready,
    /// The state has no CA and this node created none: nothing can be issued or decided.
    NoCa,
    /// The CA this node created is in the state (committed by it or by a previous leader):
    /// forget the pending copy.
    ClearPendingCa,
    /// Commit this, then stop the pass (the state read is stale). `clears_pending`: once it
    /// commits (or is refused because a CA is already set), forget the pending CA.
    Write { command: Command, clears_pending: bool },
    /// The pending CA key cannot be encoded (a bug: the sealed key has a fixed size).
    Broken(String),
}

/// The leader's next trust write: the CA it created, then its own record (unless it was
/// revoked), then its certificate (again after a renewal the cluster missed).
pub fn trust_step(state: &ClusterState, own: &OwnTrust<'_>) -> TrustStep {
    if let Some((cert_pem, sealed)) = own.pending_ca {
        if state.ca.is_some() {
            return TrustStep::ClearPendingCa;
        }
        return match shoal_wire::encode::<_, MAX_SEALED_KEY_LEN>(sealed) {
            Ok(sealed_key) => {
                TrustStep::Write { command: Command::SetCa(CaRecord { cert_pem: cert_pem.clone(), sealed_key }), clears_pending: true }
            }
            Err(e) => TrustStep::Broken(format!("cannot encode the sealed CA key: {e}")),
        };
    }
    if state.ca.is_none() {
        return TrustStep::NoCa;
    }
    if !state.nodes.contains_key(&own.me) {
        if state.revoked.contains(&own.me) {
            return TrustStep::Ready;
        }
        return TrustStep::Write { command: Command::RegisterNode { id: own.me, record: own.record.clone() }, clears_pending: false };
    }
    if let Some(cert) = own.cert {
        if state.issued.get(&own.me).is_none_or(|c| c.not_after < cert.not_after) {
            return TrustStep::Write { command: Command::RecordIssued { node: own.me, cert: cert.clone() }, clears_pending: false };
        }
    }
    TrustStep::Ready
}

/// Why no issuer can be built.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("the cluster CA is not known here yet; retry")]
    NoCa,
    #[error("the replicated CA key does not decode")]
    BadSealedKey,
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The issuer of the committed CA (or, before it is committed, of the CA this node
/// created), unsealed with the join secret.
pub fn issuer_from_state(
    state: &ClusterState,
    pending_ca: Option<&(String, SealedCaKey)>,
    secret: &JoinSecret,
    policy: IssuePolicy,
) -> Result<Issuer, IssuerError> {
    let ca = match (&state.ca, pending_ca) {
        (Some(ca), _) => {
            let sealed = shoal_wire::decode::<SealedCaKey, MAX_SEALED_KEY_LEN>(&ca.sealed_key).map_err(|_| IssuerError::BadSealedKey)?;
            ClusterCa::unseal(&ca.cert_pem, &sealed, secret)?
        }
        (None, Some((cert_pem, sealed))) => ClusterCa::unseal(cert_pem, sealed, secret)?,
        (None, None) => return Err(IssuerError::NoCa),
    };
    Ok(Issuer::new(ca, secret, policy))
}

/// What a node grants itself (its own certificate and its renewals): the role, its
/// advertised IP and its name as SANs.
pub fn own_grant(role: NodeRole, advertise: SocketAddr, name: &str) -> NodeGrant {
    NodeGrant { role, addresses: vec![advertise.ip()], names: shoal_pki::node_names(name) }
}

/// The grant this node must renew its certificate with now, if it must: at two thirds of
/// its lifetime, when its Raft role changed (a learner promoted to voter becomes a
/// manager, a demoted voter a worker), or when its names or address changed (issued by an
/// earlier build, or before the address moved), so `docker --tlsverify` accepts the node
/// under them.
pub fn renewal_due(info: &CertInfo, raft: &RaftView, me: NodeId, advertise: SocketAddr, name: &str, now: SystemTime) -> Option<NodeGrant> {
    let role = if raft.voters.contains(&me) { NodeRole::Manager } else { NodeRole::Worker };
    let in_raft = raft.nodes.contains_key(&me);
    let role_changed = in_raft && info.role != Some(role);
    let grant = own_grant(role, advertise, name);
    let sans_changed = info.addresses != grant.addresses || info.dns_names != grant.names;
    (info.needs_renewal(now) || role_changed || sans_changed).then_some(grant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn the_initializer_commits_its_ca_first_and_forgets_it_once_the_state_has_one() {
        let c = TestCluster::new();
        let own_record = record(1);
        let pending = c.pending();
        let own = OwnTrust { me: id(1), record: &own_record, cert: None, pending_ca: Some(&pending) };
        let empty = ClusterState::default();
        let TrustStep::Write { command, clears_pending: true } = trust_step(&empty, &own) else { panic!("expected the CA commit") };
        assert!(matches!(command, Command::SetCa(_)));
        let with_ca = c.state(&[]);
        assert_eq!(trust_step(&with_ca, &own), TrustStep::ClearPendingCa);
    }

    #[test]
    fn without_a_ca_nothing_else_is_decided() {
        let own_record = record(1);
        let own = OwnTrust { me: id(1), record: &own_record, cert: None, pending_ca: None };
        assert_eq!(trust_step(&ClusterState::default(), &own), TrustStep::NoCa);
    }

    #[test]
    fn the_leader_registers_itself_then_records_its_newer_certificate() {
        let c = TestCluster::new();
        let own_record = record(1);
        let cert = IssuedCert { serial: "01".into(), not_after: 2_000 };
        let own = OwnTrust { me: id(1), record: &own_record, cert: Some(&cert), pending_ca: None };
        let mut state = c.state(&[]);
        let TrustStep::Write { command: Command::RegisterNode { id: who, .. }, .. } = trust_step(&state, &own) else { panic!("expected a registration") };
        assert_eq!(who, id(1));
        state.apply(Command::RegisterNode { id: id(1), record: record(1) }).expect("register");
        assert!(matches!(trust_step(&state, &own), TrustStep::Write { command: Command::RecordIssued { .. }, .. }));
        state.apply(Command::RecordIssued { node: id(1), cert: cert.clone() }).expect("record");
        assert_eq!(trust_step(&state, &own), TrustStep::Ready);
        // An older certificate than the recorded one is not recorded again.
        let older = IssuedCert { serial: "00".into(), not_after: 1_000 };
        let own = OwnTrust { cert: Some(&older), ..own };
        assert_eq!(trust_step(&state, &own), TrustStep::Ready);
    }

    #[test]
    fn a_revoked_leader_does_not_register_itself_again() {
        let c = TestCluster::new();
        let own_record = record(1);
        let own = OwnTrust { me: id(1), record: &own_record, cert: None, pending_ca: None };
        let mut state = c.state(&[1, 2, 3]);
        state.apply(Command::Revoke { node: id(1) }).expect("revoke");
        assert_eq!(trust_step(&state, &own), TrustStep::Ready);
    }

    #[test]
    fn the_issuer_comes_from_the_replicated_ca_or_the_pending_one_and_needs_the_secret() {
        let c = TestCluster::new();
        let pending = c.pending();
        assert!(issuer_from_state(&ClusterState::default(), Some(&pending), &c.secret, IssuePolicy::default()).is_ok());
        assert!(issuer_from_state(&c.state(&[]), None, &c.secret, IssuePolicy::default()).is_ok());
        assert!(matches!(issuer_from_state(&ClusterState::default(), None, &c.secret, IssuePolicy::default()), Err(IssuerError::NoCa)));
        let other = shoal_pki::testing::secret(99);
        assert!(matches!(issuer_from_state(&c.state(&[]), None, &other, IssuePolicy::default()), Err(IssuerError::Pki(_))));
    }

    #[test]
    fn renewal_follows_the_raft_role_and_the_names() {
        let c = TestCluster::new();
        let (info, _) = c.own_cert(NodeRole::Worker, "n1");
        let (me, other) = (id_of(&info), id(2));
        let now = shoal_pki::testing::t0();
        // A learner with a worker certificate: nothing to do.
        assert!(renewal_due(&info, &raft_view(&[other], &[me]), me, addr(1), "n1", now).is_none());
        // Promoted to voter: renewed as a manager.
        let grant = renewal_due(&info, &raft_view(&[me, other], &[]), me, addr(1), "n1", now).expect("due");
        assert_eq!(grant.role, NodeRole::Manager);
        // Not in Raft yet (just joined): the role is not changed yet.
        assert!(renewal_due(&info, &raft_view(&[other], &[]), me, addr(1), "n1", now).is_none());
        // Renamed: renewed with the new names.
        assert!(renewal_due(&info, &raft_view(&[other], &[me]), me, addr(1), "other", now).is_some());
        // At the end of its life: renewed.
        let late = info.not_after - std::time::Duration::from_secs(60);
        assert!(renewal_due(&info, &raft_view(&[other], &[me]), me, addr(1), "n1", late).is_some());
    }
}
