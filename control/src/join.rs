//! The answer to a join (or renewal) request, on any member: check it, choose the role,
//! issue the certificate, and list the writes that must commit before the answer is sent
//! (the node's registration and the issued certificate), so a node never holds a
//! certificate the cluster does not know about.

use crate::PlantedBug;
use shoal_consensus::{ClusterState, Command, IssuedCert, NodeRecord};
use shoal_discovery::MemberView;
use shoal_pki::{CertInfo, Issuer, JoinRequest, JoinResponse, NodeGrant, NodeRole, PkiError};
use shoal_wire::NodeId;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::SystemTime;

/// What the answering member knows.
#[derive(Clone, Copy)]
pub struct JoinContext<'a> {
    pub issuer: &'a Issuer,
    /// The replicated state as applied on the answering member.
    pub state: &'a ClusterState,
    /// Gossip's members as the answering member sees them.
    pub members: &'a [MemberView],
    /// Raft's voters as the answering member sees them.
    pub voters: &'a BTreeSet<NodeId>,
    pub planted: Option<PlantedBug>,
}

/// Why a join request gets no certificate. The texts are sent to the joiner: they hold
/// no secret.
#[derive(Debug, thiserror::Error)]
pub enum JoinRefusal {
    /// The protocol check failed (wrong secret, revoked id, bad CSR, ...).
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the joining node is not visible in gossip here yet (same token? reachable UDP?); retry")]
    NotVisible,
}

/// A certificate to send, once `writes` are committed (in order).
#[derive(Debug, Clone)]
pub struct JoinAnswer {
    pub response: JoinResponse,
    pub role: NodeRole,
    pub writes: Vec<Command>,
}

/// What one of [`JoinAnswer::writes`] is for, for the error a joiner is sent when it does
/// not commit.
pub fn purpose(write: &Command) -> &'static str {
    if matches!(write, Command::RegisterNode { .. }) {
        "register the node"
    } else {
        "record the certificate"
    }
}

/// The role a join answer grants `id`: manager for a Raft voter, worker otherwise (a
/// joiner becomes a learner first and renews as a manager once autopilot promotes it).
pub fn granted_role(voters: &BTreeSet<NodeId>, id: &NodeId, planted: Option<PlantedBug>) -> NodeRole {
    if voters.contains(id) || planted == Some(PlantedBug::GrantManagerToLearners) {
        NodeRole::Manager
    } else {
        NodeRole::Worker
    }
}

/// The record of a node that joins: its gossiped name (or one made from its id), its
/// address (the node's one port: gossip over UDP, the rest over TCP; the one in its own
/// signed facts, `addr`) and its labels.
pub fn joiner_record(id: &NodeId, member: &MemberView, addr: SocketAddr) -> NodeRecord {
    let name = member.name.clone().unwrap_or_else(|| format!("node-{}", id.short()));
    NodeRecord { name, addr, labels: member.labels.clone() }
}

/// Answers `request`: refused for a revoked id or one gossip does not show (a member
/// grants the addresses it sees the joiner at); otherwise the certificate and the writes.
pub fn answer_join(ctx: &JoinContext<'_>, request: &JoinRequest, now: SystemTime, rng: &mut impl rand::CryptoRng) -> Result<JoinAnswer, JoinRefusal> {
    let id = request.node_id;
    if ctx.state.revoked.contains(&id) {
        return Err(PkiError::Revoked(id).into());
    }
    let role = granted_role(ctx.voters, &id, ctx.planted);
    // Only the joiner's own signed facts say where it is (SWIM's address is anyone's claim).
    let member = ctx.members.iter().filter(|m| m.id == id).find_map(|m| Some((m, m.signed_addr?)));
    let checked = match member {
        Some((m, addr)) => {
            let grant = NodeGrant { role, addresses: vec![addr.ip()], names: m.name.as_deref().map(shoal_pki::node_names).unwrap_or_default() };
            ctx.issuer.answer_join(request, &grant, &ctx.state.revoked, now, rng).map_err(JoinRefusal::from)
        }
        None => Err(JoinRefusal::NotVisible),
    };
    let response = match checked {
        Ok(response) => response,
        Err(_) if ctx.planted == Some(PlantedBug::SkipJoinCheck) => {
            // Planted: a request that fails the join check gets a certificate anyway.
            let grant = NodeGrant { role, addresses: Vec::new(), names: Vec::new() };
            let cert = ctx.issuer.issue(&request.csr_der, id, &grant, &ctx.state.revoked, now, rng)?;
            JoinResponse { cert_der: cert.to_vec(), ca_der: ctx.issuer.ca().cert_der().to_vec(), hmac: [0; 32] }
        }
        Err(e) => return Err(e),
    };
    let info = CertInfo::parse(&response.cert_der)?;
    let mut writes = Vec::new();
    if !ctx.state.nodes.contains_key(&id) {
        let record = match member {
            Some((m, addr)) => joiner_record(&id, m, addr),
            None => NodeRecord { name: format!("node-{}", id.short()), addr: SocketAddr::from(([0, 0, 0, 0], 0)), labels: Default::default() },
        };
        writes.push(Command::RegisterNode { id, record });
    }
    writes.push(Command::RecordIssued { node: id, cert: IssuedCert { serial: info.serial, not_after: shoal_pki::unix_secs(info.not_after) } });
    Ok(JoinAnswer { response, role, writes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use shoal_pki::testing::{rng, t0};

    fn request(c: &TestCluster, seed: u64) -> (JoinRequest, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("key");
        (JoinRequest::new(&c.secret, &key, &mut rng(seed)).expect("request"), key)
    }

    #[test]
    fn a_visible_joiner_gets_a_worker_certificate_and_is_registered_then_recorded() {
        let c = TestCluster::new();
        let issuer = c.issuer();
        let state = c.state(&[1]);
        let (req, key) = request(&c, 2);
        let members = vec![member(1), member_as(req.node_id, 2)];
        let voters = BTreeSet::from([id(1)]);
        let ctx = JoinContext { issuer: &issuer, state: &state, members: &members, voters: &voters, planted: None };
        let answer = answer_join(&ctx, &req, t0(), &mut rng(3)).expect("answered");
        assert_eq!(answer.role, NodeRole::Worker);
        let granted = answer.response.verify(&c.secret, &req, &key).expect("verifies");
        assert_eq!(granted.info.role, Some(NodeRole::Worker));
        assert_eq!(granted.info.addresses, vec![addr(2).ip()]);
        match &answer.writes[..] {
            [Command::RegisterNode { id: who, record }, Command::RecordIssued { node, cert }] => {
                assert_eq!((*who, *node), (req.node_id, req.node_id));
                assert_eq!((record.name.as_str(), record.addr), ("n2", addr(2)));
                assert_eq!(record.labels.get("zone").map(String::as_str), Some("z2"));
                assert_eq!(cert.serial, granted.info.serial);
            }
            other => panic!("unexpected writes {other:?}"),
        }
    }

    #[test]
    fn a_voter_renewing_gets_a_manager_certificate_and_no_second_registration() {
        let c = TestCluster::new();
        let issuer = c.issuer();
        let (req, _) = request(&c, 2);
        let mut state = c.state(&[1]);
        let rec = NodeRecord { name: "n2".into(), addr: addr(2), labels: Default::default() };
        state.apply(Command::RegisterNode { id: req.node_id, record: rec }).expect("register");
        let members = vec![member(1), member_as(req.node_id, 2)];
        let voters = BTreeSet::from([id(1), req.node_id]);
        let ctx = JoinContext { issuer: &issuer, state: &state, members: &members, voters: &voters, planted: None };
        let answer = answer_join(&ctx, &req, t0(), &mut rng(3)).expect("answered");
        assert_eq!(answer.role, NodeRole::Manager);
        assert!(matches!(&answer.writes[..], [Command::RecordIssued { .. }]));
    }

    #[test]
    fn revoked_invisible_and_wrong_secret_joiners_are_refused() {
        let c = TestCluster::new();
        let issuer = c.issuer();
        let (req, _) = request(&c, 2);
        let members = vec![member(1), member_as(req.node_id, 2)];
        let voters = BTreeSet::from([id(1)]);
        let mut revoked_state = c.state(&[1]);
        let rec = NodeRecord { name: "n2".into(), addr: addr(2), labels: Default::default() };
        revoked_state.apply(Command::RegisterNode { id: req.node_id, record: rec }).expect("register");
        revoked_state.apply(Command::Revoke { node: req.node_id }).expect("revoke");
        let ctx = JoinContext { issuer: &issuer, state: &revoked_state, members: &members, voters: &voters, planted: None };
        assert!(matches!(answer_join(&ctx, &req, t0(), &mut rng(3)), Err(JoinRefusal::Pki(PkiError::Revoked(_)))));
        let state = c.state(&[1]);
        let ctx = JoinContext { state: &state, members: &members[..1], ..ctx };
        assert!(matches!(answer_join(&ctx, &req, t0(), &mut rng(3)), Err(JoinRefusal::NotVisible)));
        let stranger_key = rcgen::KeyPair::generate().expect("key");
        let stranger = JoinRequest::new(&shoal_pki::testing::secret(42), &stranger_key, &mut rng(4)).expect("request");
        let members = vec![member(1), member_as(stranger.node_id, 3)];
        let ctx = JoinContext { members: &members, ..ctx };
        assert!(matches!(answer_join(&ctx, &stranger, t0(), &mut rng(3)), Err(JoinRefusal::Pki(_))));
    }

    #[test]
    fn the_planted_bugs_change_what_is_granted() {
        let c = TestCluster::new();
        let issuer = c.issuer();
        let state = c.state(&[1]);
        let (req, _) = request(&c, 2);
        let members = vec![member(1), member_as(req.node_id, 2)];
        let voters = BTreeSet::from([id(1)]);
        let ctx = JoinContext { issuer: &issuer, state: &state, members: &members, voters: &voters, planted: Some(PlantedBug::GrantManagerToLearners) };
        assert_eq!(answer_join(&ctx, &req, t0(), &mut rng(3)).expect("answered").role, NodeRole::Manager);
        let stranger_key = rcgen::KeyPair::generate().expect("key");
        let stranger = JoinRequest::new(&shoal_pki::testing::secret(42), &stranger_key, &mut rng(4)).expect("request");
        let ctx = JoinContext { planted: Some(PlantedBug::SkipJoinCheck), ..ctx };
        assert!(answer_join(&ctx, &stranger, t0(), &mut rng(3)).is_ok(), "the planted bug lets a stranger in");
    }
}
