//! What `shoal status` and `shoal node ls` show: built from this node's copy of the
//! replicated state, its Raft metrics and its membership view. The JSON shapes are a
//! contract (tests and scripts read them); fields are only ever added.

use super::{Control, Phase};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_discovery::{MemberState, MemberView};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A voter or learner in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRow {
    pub id: NodeId,
    pub name: String,
    pub addr: SocketAddr,
    /// How gossip sees it here: alive, suspect, down, left, or unknown.
    pub health: String,
}

/// A log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPos {
    pub term: u64,
    pub index: u64,
}

/// `shoal status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub cluster_id: String,
    pub node: NodeId,
    pub name: String,
    /// leader, manager (a voter), worker (a learner), joining, or bootstrapping.
    pub role: String,
    /// While not in the cluster: what the node is waiting for.
    pub detail: Option<String>,
    pub leader: Option<NodeId>,
    pub leader_name: Option<String>,
    pub term: u64,
    /// Highest log index known committed here, and applied here.
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    /// The last entry applied here (term of its leader, index): equal on nodes whose logs agree.
    pub last_applied: Option<LogPos>,
    pub voters: Vec<PeerRow>,
    pub learners: Vec<PeerRow>,
    /// SHA-256 of the cluster CA certificate (DER), hex: equal on every node of a cluster.
    pub ca_fingerprint: Option<String>,
    /// This node's certificate expiry (seconds since the epoch) and role in it.
    pub cert_expires_unix: Option<u64>,
    pub cert_role: Option<String>,
    pub nodes_registered: usize,
    pub revoked: Vec<NodeId>,
}

/// A row of `shoal node ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: NodeId,
    pub name: String,
    /// leader, manager, worker, or "-" (not in Raft: joining, or seen only in gossip).
    pub role: String,
    /// Membership state: alive, suspect, down, left, or unknown.
    pub state: String,
    pub addr: Option<SocketAddr>,
    pub labels: BTreeMap<String, String>,
    pub revoked: bool,
}

/// Hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// A node's role as Raft sees it here: leader, manager (a voter) or worker (a learner);
/// `None` if it is not in the membership config.
fn raft_role(metrics: &shoal_consensus::types::RaftMetrics, id: NodeId) -> Option<&'static str> {
    let id = shoal_consensus::RaftNodeId(id);
    let membership = metrics.membership_config.membership();
    if metrics.current_leader == Some(id) {
        Some("leader")
    } else if membership.voter_ids().any(|v| v == id) {
        Some("manager")
    } else if membership.learner_ids().any(|l| l == id) {
        Some("worker")
    } else {
        None
    }
}

fn health(members: &[MemberView], id: NodeId) -> String {
    members.iter().find(|m| m.id == id).map_or("unknown", |m| m.state.as_str()).to_string()
}

impl Control {
    pub async fn status(&self) -> anyhow::Result<StatusReport> {
        let members = self.membership().members().await.unwrap_or_default();
        let mut report = StatusReport {
            cluster_id: self.config().secret.cluster_id().to_string(),
            node: self.id(),
            name: self.config().name.clone(),
            role: String::new(),
            detail: None,
            leader: None,
            leader_name: None,
            term: 0,
            commit_index: None,
            applied_index: None,
            last_log_index: None,
            last_applied: None,
            voters: Vec::new(),
            learners: Vec::new(),
            ca_fingerprint: None,
            cert_expires_unix: None,
            cert_role: None,
            nodes_registered: 0,
            revoked: Vec::new(),
        };
        let running = match self.phase() {
            Phase::Bootstrapping(why) => {
                report.role = "bootstrapping".into();
                report.detail = Some(why);
                return Ok(report);
            }
            Phase::Joining(why) => {
                report.role = "joining".into();
                report.detail = Some(why);
                return Ok(report);
            }
            Phase::Running(r) => r,
        };
        let state = running.state().await?;
        let m = running.metrics();
        let membership = m.membership_config.membership().clone();
        let row = |id: shoal_consensus::RaftNodeId| {
            let node = membership.get_node(&id);
            PeerRow {
                id: id.0,
                name: node.map_or_else(String::new, |n| n.name.clone()),
                addr: node.map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |n| n.addr),
                health: if id.0 == self.id() { "alive".into() } else { health(&members, id.0) },
            }
        };
        report.voters = membership.voter_ids().map(row).collect();
        report.learners = membership.learner_ids().map(row).collect();
        report.role = raft_role(&m, self.id()).unwrap_or("joining").into();
        if report.role == "joining" {
            report.detail = Some("holding a certificate; waiting for the leader to add this node to Raft".into());
        }
        report.leader = m.current_leader.map(|l| l.0);
        report.leader_name = m.current_leader.and_then(|l| membership.get_node(&l).map(|n| n.name.clone()));
        report.term = m.current_term;
        report.commit_index = m.local_committed.map(|l| l.index);
        report.applied_index = m.last_applied.map(|l| l.index);
        report.last_log_index = m.last_log_index;
        report.last_applied = m.last_applied.map(|l| LogPos { term: l.leader_id.term, index: l.index });
        report.ca_fingerprint = Some(fingerprint(&running.ca_der));
        let cert = running.cert();
        report.cert_expires_unix = Some(crate::pki::unix_secs(cert.info.not_after));
        report.cert_role = cert.info.role.map(|r| r.to_string());
        report.nodes_registered = state.nodes.len();
        report.revoked = state.revoked.iter().copied().collect();
        Ok(report)
    }

    pub async fn node_rows(&self) -> anyhow::Result<Vec<NodeRow>> {
        let members = self.membership().members().await.unwrap_or_default();
        let mut rows: BTreeMap<NodeId, NodeRow> = BTreeMap::new();
        for m in &members {
            rows.insert(
                m.id,
                NodeRow {
                    id: m.id,
                    name: m.name.clone().unwrap_or_else(|| "?".into()),
                    role: "-".into(),
                    state: m.state.as_str().into(),
                    addr: Some(m.addr),
                    labels: m.labels.clone(),
                    revoked: false,
                },
            );
        }
        if let Some(running) = self.running() {
            let state = running.state().await?;
            let metrics = running.metrics();
            for (id, record) in &state.nodes {
                let row = rows.entry(*id).or_insert_with(|| NodeRow {
                    id: *id,
                    name: record.name.clone(),
                    role: "-".into(),
                    state: "unknown".into(),
                    addr: None,
                    labels: BTreeMap::new(),
                    revoked: false,
                });
                row.name = record.name.clone();
                row.labels = record.labels.clone();
                if row.addr.is_none() {
                    row.addr = Some(record.addr);
                }
            }
            // Revoked nodes stay listed (marked), even once gossip has forgotten them.
            for id in &state.revoked {
                rows.entry(*id)
                    .or_insert_with(|| NodeRow {
                        id: *id,
                        name: "?".into(),
                        role: "-".into(),
                        state: "unknown".into(),
                        addr: None,
                        labels: BTreeMap::new(),
                        revoked: true,
                    })
                    .revoked = true;
            }
            for row in rows.values_mut() {
                row.role = raft_role(&metrics, row.id).unwrap_or("-").into();
                if row.id == self.id() && row.state == "unknown" {
                    row.state = MemberState::Alive.as_str().into();
                }
            }
        }
        Ok(rows.into_values().collect())
    }
}
