//! Layouts of earlier versions of the replicated records, kept so that logs and snapshots
//! written by them still decode (the codec is not self-describing: a field added to a
//! record changes the bytes of every command and snapshot that holds it).
//!
//! - [`ContainerSpecV1`], [`ServiceDefV1`], [`ServiceRecordV1`]: services before the stop
//!   grace period (`ContainerSpec::stop_grace_ms`). `Command::CreateServiceV1` entries and
//!   snapshot format 2 hold them; they decode with no stop grace period (the engine's
//!   default, 10 s).
//! - [`ContainerRecordV1`]: containers before their networks (snapshot format 3); they
//!   decode on the default bridge.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use super::services::{
    Constraint, ContainerSpec, Mode, PendingSlot, PortMapping, RestartPolicy, ServiceDef,
    ServiceRecord, Slot,
};

/// `ContainerSpec` before `stop_grace_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpecV1 {
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// `ServiceDef` whose spec is a [`ContainerSpecV1`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDefV1 {
    pub name: String,
    pub spec: ContainerSpecV1,
    pub mode: Mode,
    pub constraints: Vec<Constraint>,
    pub reserve_cpu_millis: u64,
    pub reserve_memory_bytes: u64,
    pub restart: RestartPolicy,
}

/// `ServiceRecord` whose definition is a [`ServiceDefV1`] (snapshot format 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecordV1 {
    pub def: ServiceDefV1,
    pub version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub pending: BTreeMap<Slot, PendingSlot>,
}

impl From<ContainerSpecV1> for ContainerSpec {
    fn from(v1: ContainerSpecV1) -> Self {
        ContainerSpec {
            image: v1.image,
            command: v1.command,
            env: v1.env,
            ports: v1.ports,
            cpu_millis: v1.cpu_millis,
            memory_bytes: v1.memory_bytes,
            stop_grace_ms: None,
        }
    }
}

impl From<ServiceDefV1> for ServiceDef {
    fn from(v1: ServiceDefV1) -> Self {
        ServiceDef {
            name: v1.name,
            spec: v1.spec.into(),
            mode: v1.mode,
            constraints: v1.constraints,
            reserve_cpu_millis: v1.reserve_cpu_millis,
            reserve_memory_bytes: v1.reserve_memory_bytes,
            restart: v1.restart,
        }
    }
}

impl From<ServiceRecordV1> for ServiceRecord {
    fn from(v1: ServiceRecordV1) -> Self {
        ServiceRecord {
            def: v1.def.into(),
            version: v1.version,
            created_ms: v1.created_ms,
            updated_ms: v1.updated_ms,
            pending: v1.pending,
        }
    }
}

/// `ContainerRecord` before `networks` (snapshot format 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecordV1 {
    pub id: String,
    pub name: String,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub stopped_ms: Option<u64>,
    pub last_node: Option<shoal_wire::NodeId>,
    pub first_task: u64,
}

impl From<ContainerRecordV1> for super::ContainerRecord {
    fn from(v1: ContainerRecordV1) -> Self {
        super::ContainerRecord {
            id: v1.id,
            name: v1.name,
            service: v1.service,
            labels: v1.labels,
            created_ms: v1.created_ms,
            started_ms: v1.started_ms,
            stopped_ms: v1.stopped_ms,
            last_node: v1.last_node,
            first_task: v1.first_task,
            networks: Vec::new(),
        }
    }
}
