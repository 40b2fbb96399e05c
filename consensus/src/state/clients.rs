//! Users' client certificates (`shoal client new|ls|rm`): which clients the cluster issued
//! a certificate to, and which it revoked. Every node feeds the revoked client ids into the
//! revoked set its TLS endpoints check, so `shoal client rm` refuses the certificate at the
//! next handshake on every node.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_wire::NodeId;

use super::{Applied, ClusterState, Rejected, MAX_SERIAL_LEN};

/// Most clients the cluster records (a home lab has a handful of laptops).
pub const MAX_CLIENTS: usize = 1024;
/// Most revoked client ids kept (a revoked id is never removed: it must stay refused).
pub const MAX_REVOKED_CLIENTS: usize = 16 * 1024;
/// Longest client name, in bytes.
pub const MAX_CLIENT_NAME_LEN: usize = 64;

/// A client the cluster issued a certificate to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The client id (from its key, as a node id is).
    pub id: NodeId,
    /// The certificate's serial (1 to [`MAX_SERIAL_LEN`] bytes).
    pub serial: Vec<u8>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: u64,
    /// When it was issued, ms since the Unix epoch.
    pub created_ms: u64,
}

/// The clients of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientsState {
    /// By name (unique).
    pub records: BTreeMap<String, ClientRecord>,
    /// Revoked client ids: refused at every handshake, never issued again.
    pub revoked: BTreeSet<NodeId>,
}

/// Same rule as the issuer's: 1 to 64 lowercase letters, digits, `.`, `-`, `_`, starting
/// with a letter or digit.
pub fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME_LEN
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

impl ClusterState {
    pub(super) fn add_client(&mut self, name: String, client: ClientRecord) -> Result<Applied, Rejected> {
        if !valid_client_name(&name) {
            return Err(Rejected::BadClientName(name));
        }
        if client.serial.is_empty() || client.serial.len() > MAX_SERIAL_LEN || client.not_after == 0 {
            return Err(Rejected::BadCert);
        }
        if self.clients.records.contains_key(&name) {
            return Err(Rejected::ClientExists(name));
        }
        if self.clients.revoked.contains(&client.id)
            || self.revoked.contains(&client.id)
            || self.nodes.contains_key(&client.id)
            || self.clients.records.values().any(|c| c.id == client.id)
        {
            return Err(Rejected::ClientIdInUse);
        }
        if self.clients.records.len() >= MAX_CLIENTS {
            return Err(Rejected::TooManyClients);
        }
        self.clients.records.insert(name, client);
        Ok(Applied::ClientAdded)
    }

    pub(super) fn revoke_client(&mut self, name: String) -> Result<Applied, Rejected> {
        let Some(record) = self.clients.records.get(&name) else {
            return Err(Rejected::UnknownClient(name));
        };
        if self.clients.revoked.len() >= MAX_REVOKED_CLIENTS {
            return Err(Rejected::TooManyClients);
        }
        let id = record.id;
        self.clients.records.remove(&name);
        self.clients.revoked.insert(id);
        Ok(Applied::ClientRevoked { id })
    }

    /// Every id the TLS endpoints refuse: revoked nodes and revoked clients.
    pub fn refused_ids(&self) -> BTreeSet<NodeId> {
        self.revoked.union(&self.clients.revoked).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn rec(id: u8) -> ClientRecord {
        ClientRecord { id: NodeId([id; 16]), serial: vec![1, 2], not_after: 10, created_ms: 5 }
    }

    #[test]
    fn clients_are_added_unique_and_revoked_for_good() {
        let mut s = ClusterState::default();
        assert_eq!(s.apply(Command::AddClient { name: "laptop".into(), client: rec(1) }), Ok(Applied::ClientAdded));
        let before = s.clone();
        for (name, client, want) in [
            ("laptop", rec(2), Rejected::ClientExists("laptop".into())),
            ("other", rec(1), Rejected::ClientIdInUse),
            ("Bad", rec(3), Rejected::BadClientName("Bad".into())),
            ("x", ClientRecord { serial: vec![], ..rec(4) }, Rejected::BadCert),
        ] {
            assert_eq!(s.apply(Command::AddClient { name: name.into(), client }), Err(want));
            assert_eq!(s, before, "a rejected command changed the state");
        }
        assert_eq!(s.apply(Command::RevokeClient { name: "nope".into() }), Err(Rejected::UnknownClient("nope".into())));
        assert_eq!(s.apply(Command::RevokeClient { name: "laptop".into() }), Ok(Applied::ClientRevoked { id: NodeId([1; 16]) }));
        assert!(s.clients.records.is_empty());
        assert!(s.refused_ids().contains(&NodeId([1; 16])));
        // The name is free again, the id is not.
        assert_eq!(s.apply(Command::AddClient { name: "laptop".into(), client: rec(1) }), Err(Rejected::ClientIdInUse));
        assert_eq!(s.apply(Command::AddClient { name: "laptop".into(), client: rec(2) }), Ok(Applied::ClientAdded));
    }
}
