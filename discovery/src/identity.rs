//! The SWIM identity of a node and the facts it gossips about itself.

use serde::{Deserialize, Serialize};
use shoal_wire::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What foca knows a member by: its permanent node id, where its gossip socket is, and a
/// generation (`bump`) that grows on every restart (upper 16 bits, from the data dir) and
/// every automatic rejoin after being declared down (lower 16 bits). A newer generation
/// always wins over an older one of the same node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShoalId {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub bump: u32,
}

impl ShoalId {
    /// The generation a process starts with, from the boot counter kept in its data dir.
    pub fn first_bump(boot_count: u16) -> u32 {
        u32::from(boot_count) << 16
    }
}

impl foca::Identity for ShoalId {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Self { bump: self.bump.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Newer generation wins; on a tie (should not happen) the address decides, so every
        // node decides the same way.
        (self.bump, self.addr) > (adversary.bump, adversary.addr)
    }
}

/// Limits on facts, checked when they are built locally and when they arrive.
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 128;
pub const MAX_VERSION_LEN: usize = 32;
/// Encoded facts must fit comfortably in one datagram next to foca's own payload.
pub const MAX_FACTS_LEN: usize = 900;

/// Small facts a node gossips about itself (foca custom broadcasts, and on request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub node: NodeId,
    /// Grows whenever the facts change; higher replaces lower.
    pub seq: u64,
    pub name: String,
    pub gossip_addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    /// The process generation these facts belong to (`ShoalId::bump >> 16`).
    pub boot: u16,
    /// The node left on purpose (set in its last facts before it goes); applies to `boot`.
    pub left: bool,
    /// The node belongs to a formed Raft cluster (holds the replicated state and the CA):
    /// what `--bootstrap-expect` looks at, and where a newcomer asks to join.
    pub in_cluster: bool,
    /// What the node offers for placement (architecture, CPU, memory, engine health).
    pub resources: NodeResources,
}

/// Longest architecture name (`x86_64`, `aarch64`, `arm`...).
pub const MAX_ARCH_LEN: usize = 32;

/// What a node offers for placement; the scheduler reads it from gossip.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// `std::env::consts::ARCH` of the node (`x86_64`, `aarch64`, ...).
    pub arch: String,
    /// CPUs, in thousandths.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// The node's container engine answers.
    pub engine_ok: bool,
}

/// Why facts (from a flag or from a peer) are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("node name must be 1 to {MAX_NAME_LEN} characters of letters, digits, '.', '-' or '_'")]
    BadName,
    #[error("at most {MAX_LABELS} labels are allowed")]
    TooManyLabels,
    #[error("label key must be 1 to {MAX_LABEL_KEY_LEN} characters of letters, digits, '.', '-', '_' or '/'")]
    BadLabelKey,
    #[error("label value must be at most {MAX_LABEL_VALUE_LEN} printable characters")]
    BadLabelValue,
    #[error("version string too long or not printable")]
    BadVersion,
    #[error("facts too large to gossip ({0} bytes, limit {MAX_FACTS_LEN})")]
    TooLarge(usize),
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Checks a node name (also used for `--name`).
pub fn validate_name(name: &str) -> Result<(), FactsError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(name_char) {
        return Err(FactsError::BadName);
    }
    Ok(())
}

/// Checks one label (also used for `--label k=v`).
pub fn validate_label(key: &str, value: &str) -> Result<(), FactsError> {
    if key.is_empty()
        || key.len() > MAX_LABEL_KEY_LEN
        || !key.chars().all(|c| name_char(c) || c == '/')
    {
        return Err(FactsError::BadLabelKey);
    }
    if value.len() > MAX_LABEL_VALUE_LEN || value.chars().any(|c| c.is_control()) {
        return Err(FactsError::BadLabelValue);
    }
    Ok(())
}

impl NodeFacts {
    pub fn validate(&self) -> Result<(), FactsError> {
        validate_name(&self.name)?;
        if self.labels.len() > MAX_LABELS {
            return Err(FactsError::TooManyLabels);
        }
        for (k, v) in &self.labels {
            validate_label(k, v)?;
        }
        if self.version.len() > MAX_VERSION_LEN || self.version.chars().any(|c| c.is_control()) {
            return Err(FactsError::BadVersion);
        }
        let arch = &self.resources.arch;
        if arch.len() > MAX_ARCH_LEN || !arch.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(FactsError::BadVersion);
        }
        let len = self.encode().map(|b| b.len()).unwrap_or(usize::MAX);
        if len > MAX_FACTS_LEN {
            return Err(FactsError::TooLarge(len));
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, shoal_wire::EncodeError> {
        shoal_wire::encode::<_, MAX_FACTS_LEN>(self)
    }

    /// Decodes and validates facts from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, FactsDecodeError> {
        let facts: Self = shoal_wire::decode::<_, MAX_FACTS_LEN>(bytes)?;
        facts.validate()?;
        Ok(facts)
    }
}

/// Facts from a peer that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FactsDecodeError {
    #[error(transparent)]
    Decode(#[from] shoal_wire::DecodeError),
    #[error(transparent)]
    Invalid(#[from] FactsError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(bump: u32) -> ShoalId {
        ShoalId { node: NodeId([1; 16]), addr: "127.0.0.1:7480".parse().expect("addr"), bump }
    }

    #[test]
    fn newer_generation_wins_and_renew_bumps() {
        assert!(id(2).win_addr_conflict(&id(1)));
        assert!(!id(1).win_addr_conflict(&id(2)));
        assert_eq!(id(1).renew().map(|i| i.bump), Some(2));
        assert!(ShoalId::first_bump(3) > ShoalId::first_bump(2) + 1000);
    }

    #[test]
    fn names_and_labels_are_checked() {
        assert!(validate_name("pi-3.attic").is_ok());
        assert_eq!(validate_name(""), Err(FactsError::BadName));
        assert_eq!(validate_name("a b"), Err(FactsError::BadName));
        assert_eq!(validate_name(&"x".repeat(65)), Err(FactsError::BadName));
        assert!(validate_label("zone", "attic").is_ok());
        assert!(validate_label("example.com/gpu", "").is_ok());
        assert_eq!(validate_label("", "x"), Err(FactsError::BadLabelKey));
        assert_eq!(validate_label("k", "a\nb"), Err(FactsError::BadLabelValue));
    }

    #[test]
    fn facts_from_peers_are_bounded_and_validated() {
        let mut f = NodeFacts {
            node: NodeId([2; 16]),
            seq: 1,
            name: "pi".into(),
            gossip_addr: "10.0.0.1:7480".parse().expect("addr"),
            labels: BTreeMap::new(),
            version: "0.1.0".into(),
            boot: 1,
            left: false,
            in_cluster: false,
            resources: Default::default(),
        };
        let bytes = f.encode().expect("encode");
        assert_eq!(NodeFacts::decode(&bytes).expect("decode"), f);
        f.name = "bad name".into();
        let bytes = f.encode().expect("encode");
        assert!(matches!(NodeFacts::decode(&bytes), Err(FactsDecodeError::Invalid(_))));
        assert!(NodeFacts::decode(&[0xff; 10]).is_err());
        assert!(NodeFacts::decode(&vec![0; MAX_FACTS_LEN + 1]).is_err());
    }
}
