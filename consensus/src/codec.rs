//! Encoding of everything consensus persists or ships, through the project's one codec
//! (`shoal_wire`), each kind with a named size limit that also bounds decoder allocations.

use std::io;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

use crate::state::ClusterState;
use crate::state::Command;
use crate::types::SnapshotMeta;

/// Largest encoded [`Command`]. A leader must refuse to propose anything larger.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Largest encoded log entry: a command plus its log id, or a membership config (hundreds
/// of nodes fit easily).
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Largest encoded vote, log id, or snapshot metadata (which carries a membership config).
pub const MAX_META_BYTES: usize = 1024 * 1024;
/// Largest encoded snapshot of the cluster state.
pub const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;
/// Largest stored snapshot record (metadata plus data).
pub const MAX_STORED_SNAPSHOT_BYTES: usize = MAX_SNAPSHOT_BYTES + MAX_META_BYTES;
/// Largest Raft RPC message (request or response) a peer may send: a full snapshot with its
/// vote and metadata. An AppendEntries batch must also fit, so the Raft network must keep
/// openraft's `max_payload_entries` × [`MAX_COMMAND_BYTES`] below this.
pub const MAX_RPC_BYTES: usize = MAX_STORED_SNAPSHOT_BYTES + MAX_META_BYTES;

/// Version of the snapshot layout (a format number, then the state); bump it when
/// [`ClusterState`] changes shape, and keep decoding old versions.
///
/// - 1: nodes, CA, issued certificates, revoked ids, last applied, membership.
/// - 2: adds services, tasks, the next task id and node availability (format 1 decodes
///   with none of them).
/// - 3: a service's container spec has a stop grace period (format 2 decodes with none:
///   the engine's default).
///   It also adds the containers of the Docker API (formats 1 and 2 decode with none).
/// - 4: adds the users' client certificates and revoked client ids (`clients`), and the
///   networks of the Docker API with each container's networks (`networks`,
///   `ContainerRecord::networks`); format 3 decodes with none of them.
pub const SNAPSHOT_FORMAT: u32 = 4;

/// Why consensus data could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Encode(#[from] shoal_wire::EncodeError),
    #[error(transparent)]
    Decode(#[from] shoal_wire::DecodeError),
    #[error("snapshot format {0} is not supported (this build reads {SNAPSHOT_FORMAT})")]
    SnapshotFormat(u32),
}

impl From<CodecError> for io::Error {
    fn from(e: CodecError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Encodes `value` with a limit of `LIMIT` bytes.
pub fn encode<T: Serialize, const LIMIT: usize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(shoal_wire::encode::<T, LIMIT>(value)?)
}

/// Decodes exactly one `T` from at most `LIMIT` bytes.
pub fn decode<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(shoal_wire::decode::<T, LIMIT>(bytes)?)
}

/// Encodes a command as a client would send it to the leader.
pub fn encode_command(cmd: &Command) -> Result<Vec<u8>, CodecError> {
    encode::<_, MAX_COMMAND_BYTES>(cmd)
}

/// Decodes a command received from a client.
pub fn decode_command(bytes: &[u8]) -> Result<Command, CodecError> {
    decode::<_, MAX_COMMAND_BYTES>(bytes)
}

/// The snapshot payload: a format version, then the state.
#[cfg(test)]
#[derive(Serialize, Deserialize)]
struct SnapshotEnvelope {
    format: u32,
    state: ClusterState,
}

/// The state as snapshot format 1 laid it out (before services and tasks).
#[derive(Serialize, Deserialize)]
struct StateV1 {
    nodes: std::collections::BTreeMap<shoal_wire::NodeId, crate::state::NodeRecord>,
    ca: Option<crate::state::CaRecord>,
    issued: std::collections::BTreeMap<shoal_wire::NodeId, crate::state::IssuedCert>,
    revoked: std::collections::BTreeSet<shoal_wire::NodeId>,
    last_applied: Option<crate::types::LogId>,
    membership: crate::types::StoredMembership,
}

impl From<StateV1> for ClusterState {
    fn from(v1: StateV1) -> Self {
        ClusterState {
            nodes: v1.nodes,
            ca: v1.ca,
            issued: v1.issued,
            revoked: v1.revoked,
            last_applied: v1.last_applied,
            membership: v1.membership,
            ..ClusterState::default()
        }
    }
}

/// The state as snapshot format 2 laid it out (services without a stop grace period,
/// no containers).
#[derive(Serialize, Deserialize)]
struct StateV2 {
    nodes: std::collections::BTreeMap<shoal_wire::NodeId, crate::state::NodeRecord>,
    ca: Option<crate::state::CaRecord>,
    issued: std::collections::BTreeMap<shoal_wire::NodeId, crate::state::IssuedCert>,
    revoked: std::collections::BTreeSet<shoal_wire::NodeId>,
    last_applied: Option<crate::types::LogId>,
    membership: crate::types::StoredMembership,
    services: std::collections::BTreeMap<String, crate::state::legacy::ServiceRecordV1>,
    tasks: std::collections::BTreeMap<crate::state::TaskId, crate::state::TaskRecord>,
    next_task_id: u64,
    availability: std::collections::BTreeMap<shoal_wire::NodeId, crate::state::Availability>,
}

impl From<StateV2> for ClusterState {
    fn from(v2: StateV2) -> Self {
        ClusterState {
            nodes: v2.nodes,
            ca: v2.ca,
            issued: v2.issued,
            revoked: v2.revoked,
            last_applied: v2.last_applied,
            membership: v2.membership,
            services: v2
                .services
                .into_iter()
                .map(|(name, s)| (name, s.into()))
                .collect(),
            tasks: v2.tasks,
            next_task_id: v2.next_task_id,
            availability: v2.availability,
            ..ClusterState::default()
        }
    }
}

/// The state as snapshot format 3 laid it out (no clients, no networks, containers without
/// networks).
#[derive(Serialize, Deserialize)]
struct StateV3 {
    nodes: std::collections::BTreeMap<shoal_wire::NodeId, crate::state::NodeRecord>,
    ca: Option<crate::state::CaRecord>,
    issued: std::collections::BTreeMap<shoal_wire::NodeId, crate::state::IssuedCert>,
    revoked: std::collections::BTreeSet<shoal_wire::NodeId>,
    last_applied: Option<crate::types::LogId>,
    membership: crate::types::StoredMembership,
    services: std::collections::BTreeMap<String, crate::state::ServiceRecord>,
    tasks: std::collections::BTreeMap<crate::state::TaskId, crate::state::TaskRecord>,
    next_task_id: u64,
    availability: std::collections::BTreeMap<shoal_wire::NodeId, crate::state::Availability>,
    containers: std::collections::BTreeMap<String, crate::state::legacy::ContainerRecordV1>,
}

impl From<StateV3> for ClusterState {
    fn from(v3: StateV3) -> Self {
        ClusterState {
            nodes: v3.nodes,
            ca: v3.ca,
            issued: v3.issued,
            revoked: v3.revoked,
            last_applied: v3.last_applied,
            membership: v3.membership,
            services: v3.services,
            tasks: v3.tasks,
            next_task_id: v3.next_task_id,
            availability: v3.availability,
            containers: v3
                .containers
                .into_iter()
                .map(|(id, c)| (id, c.into()))
                .collect(),
            networks: std::collections::BTreeMap::new(),
            clients: Default::default(),
        }
    }
}

/// Encodes the state as snapshot data.
pub fn encode_snapshot(state: &ClusterState) -> Result<Vec<u8>, CodecError> {
    // Same encoding as `SnapshotEnvelope`, without cloning the state.
    #[derive(Serialize)]
    struct Ref<'a> {
        format: u32,
        state: &'a ClusterState,
    }
    encode::<_, MAX_SNAPSHOT_BYTES>(&Ref {
        format: SNAPSHOT_FORMAT,
        state,
    })
}

/// Decodes snapshot data into a state.
pub fn decode_snapshot(bytes: &[u8]) -> Result<ClusterState, CodecError> {
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(shoal_wire::DecodeError::TooLarge {
            len: bytes.len(),
            limit: MAX_SNAPSHOT_BYTES,
        }
        .into());
    }
    let (format, used) = shoal_wire::decode_prefix::<u32, MAX_SNAPSHOT_BYTES>(bytes)?;
    let state = bytes.get(used..).unwrap_or_default();
    match format {
        SNAPSHOT_FORMAT => decode::<ClusterState, MAX_SNAPSHOT_BYTES>(state),
        3 => decode::<StateV3, MAX_SNAPSHOT_BYTES>(state).map(ClusterState::from),
        2 => decode::<StateV2, MAX_SNAPSHOT_BYTES>(state).map(ClusterState::from),
        1 => decode::<StateV1, MAX_SNAPSHOT_BYTES>(state).map(ClusterState::from),
        other => Err(CodecError::SnapshotFormat(other)),
    }
}

/// A snapshot as stores keep it: metadata and data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredSnapshot {
    /// Last included log id and membership.
    pub meta: SnapshotMeta,
    /// [`encode_snapshot`] output.
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_wire::NodeId;

    use super::*;
    use crate::state::NodeRecord;

    #[test]
    fn command_round_trip_and_limit() {
        let cmd = Command::RegisterNode {
            id: NodeId([7; 16]),
            record: NodeRecord {
                name: "pi-1".into(),
                addr: "10.0.0.1:7481".parse().expect("addr"),
                labels: BTreeMap::new(),
            },
        };
        let bytes = encode_command(&cmd).expect("encode");
        assert_eq!(decode_command(&bytes).expect("decode"), cmd);
        assert!(decode_command(&bytes[..bytes.len() - 1]).is_err());
        let huge = Command::SetCa(crate::state::CaRecord {
            cert_pem: "x".repeat(MAX_COMMAND_BYTES),
            sealed_key: vec![],
        });
        assert!(
            encode_command(&huge).is_err(),
            "over-limit commands cannot be encoded"
        );
    }

    #[test]
    fn snapshot_round_trip_and_version_check() {
        let mut state = ClusterState::default();
        state.revoked.insert(NodeId([3; 16]));
        let bytes = encode_snapshot(&state).expect("encode");
        assert_eq!(decode_snapshot(&bytes).expect("decode"), state);
        let future = encode::<_, MAX_SNAPSHOT_BYTES>(&SnapshotEnvelope { format: 99, state })
            .expect("encode");
        assert!(matches!(
            decode_snapshot(&future),
            Err(CodecError::SnapshotFormat(99))
        ));
        assert!(decode_snapshot(&[0xff; 7]).is_err());
        assert!(decode_snapshot(&[]).is_err());
    }

    #[test]
    fn format_1_snapshots_still_decode() {
        let node = NodeId([3; 16]);
        let v1 = StateV1 {
            nodes: BTreeMap::from([(
                node,
                NodeRecord {
                    name: "pi-1".into(),
                    addr: "10.0.0.1:7481".parse().expect("addr"),
                    labels: BTreeMap::new(),
                },
            )]),
            ca: None,
            issued: BTreeMap::new(),
            revoked: [NodeId([4; 16])].into(),
            last_applied: None,
            membership: Default::default(),
        };
        let bytes = encode::<_, MAX_SNAPSHOT_BYTES>(&(1u32, &v1)).expect("encode");
        let state = decode_snapshot(&bytes).expect("format 1 decodes");
        assert_eq!(state.nodes, v1.nodes);
        assert_eq!(state.revoked, v1.revoked);
        assert!(state.services.is_empty() && state.tasks.is_empty());
        assert_eq!(state.next_task_id, 0);
        // Format 1 bytes are refused as a later format.
        assert!(decode::<StateV1, MAX_SNAPSHOT_BYTES>(&bytes[1..]).is_ok());
        for later in [2, 3, 4] {
            let mut wrong = bytes.clone();
            wrong[0] = later;
            assert!(decode_snapshot(&wrong).is_err());
        }
    }

    /// Bytes written by the build before the stop grace period (commit 7be794c): a
    /// `CreateService` command (variant 4) and a format-2 snapshot holding that service, one
    /// node and one task. They must decode, forever.
    const CREATE_SERVICE_V1_HEX: &str = "04037765620a6e67696e783a312e323701056e67696e7801044d4f44450470726f6401fb901f5000fbf401fc0000100000020100047a6f6e650105617474696364fc000000040103fd0068e5cf8b010000";
    const SNAPSHOT_V2_HEX: &str = "0201010101010101010101010101010101010470692d31000a000001fb391d00000000000000000103776562037765620a6e67696e783a312e323701056e67696e7801044d4f44450470726f6401fb901f5000fbf401fc0000100000020100047a6f6e650105617474696364fc00000004010301fd0068e5cf8b010000fd0068e5cf8b01000000010101037765620100010101010101010101010101010101010100000000000000fd0168e5cf8b010000fd0168e5cf8b0100000200";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// What the fixtures hold, in today's types.
    fn fixture_def() -> crate::state::ServiceDef {
        use crate::state::*;
        ServiceDef {
            name: "web".into(),
            spec: ContainerSpec {
                image: "nginx:1.27".into(),
                command: vec!["nginx".into()],
                env: BTreeMap::from([("MODE".into(), "prod".into())]),
                ports: vec![PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                }],
                cpu_millis: 500,
                memory_bytes: 1 << 20,
                stop_grace_ms: None,
            },
            mode: Mode::Replicated(2),
            constraints: vec![Constraint::parse("node.labels.zone!=attic").expect("constraint")],
            reserve_cpu_millis: 100,
            reserve_memory_bytes: 64 << 20,
            restart: RestartPolicy::OnFailure { max_attempts: 3 },
        }
    }

    #[test]
    fn create_service_entries_of_earlier_logs_still_decode_and_apply() {
        let cmd = decode_command(&unhex(CREATE_SERVICE_V1_HEX)).expect("an old entry decodes");
        let Command::CreateServiceV1 { service, now_ms } = &cmd else {
            panic!("decoded as {cmd:?}");
        };
        assert_eq!(*now_ms, 1_700_000_000_000);
        assert_eq!(crate::state::ServiceDef::from(service.clone()), fixture_def());
        let mut state = ClusterState::default();
        state.apply(cmd).expect("applies");
        assert_eq!(state.services["web"].def, fixture_def());
        // Today's CreateService is another variant, with the grace period.
        let mut def = fixture_def();
        def.spec.stop_grace_ms = Some(1500);
        let new = Command::CreateService { service: def, now_ms: 1 };
        let bytes = encode_command(&new).expect("encode");
        assert_ne!(bytes[0], 4);
        assert_eq!(decode_command(&bytes).expect("decode"), new);
    }

    #[test]
    fn format_3_snapshots_still_decode_with_no_clients() {
        // A format-3 snapshot is today's state without the trailing `networks` and `clients`.
        let mut state = decode_snapshot(&unhex(SNAPSHOT_V2_HEX)).expect("format 2 decodes");
        state.containers.clear();
        let v3 = StateV3 {
            nodes: state.nodes.clone(),
            ca: state.ca.clone(),
            issued: state.issued.clone(),
            revoked: state.revoked.clone(),
            last_applied: state.last_applied,
            membership: state.membership.clone(),
            services: state.services.clone(),
            tasks: state.tasks.clone(),
            next_task_id: state.next_task_id,
            availability: state.availability.clone(),
            containers: Default::default(),
        };
        let bytes = encode::<_, MAX_SNAPSHOT_BYTES>(&(3u32, &v3)).expect("encode");
        let decoded = decode_snapshot(&bytes).expect("format 3 decodes");
        assert_eq!(decoded, state);
        assert!(decoded.clients.records.is_empty() && decoded.clients.revoked.is_empty());
        assert!(decoded.networks.is_empty());
        // Today's format with a client round-trips.
        let mut with = state.clone();
        with.clients.revoked.insert(NodeId([9; 16]));
        assert_eq!(decode_snapshot(&encode_snapshot(&with).expect("encode")).expect("decode"), with);
    }

    #[test]
    fn format_2_snapshots_still_decode() {
        let state = decode_snapshot(&unhex(SNAPSHOT_V2_HEX)).expect("format 2 decodes");
        assert_eq!(state.services.len(), 1);
        assert_eq!(state.services["web"].def, fixture_def());
        assert_eq!(state.services["web"].version, 1);
        assert_eq!(state.tasks.len(), 1);
        assert_eq!(state.tasks[&1].node, NodeId([1; 16]));
        assert_eq!(state.next_task_id, 2);
        assert_eq!(state.nodes[&NodeId([1; 16])].name, "pi-1");
        assert!(state.containers.is_empty(), "format 2 had no containers of the Docker API");
        // Re-encoded, it is today's format and decodes to the same state.
        let again = encode_snapshot(&state).expect("encode");
        assert_eq!(again[0], SNAPSHOT_FORMAT as u8);
        assert_eq!(decode_snapshot(&again).expect("decode"), state);
    }
}
