//! `POST /containers/create`: Docker's container config → the cluster's [`ContainerDef`]
//! (pure, unit-tested).
//!
//! Scheduling hints are taken as classic Docker Swarm took them, and removed from the
//! container's environment: env entries `constraint:node==NAME` (a node's name or id),
//! `constraint:KEY==VALUE` (a node label), `!=` for both, shoal's own
//! `constraint:node.labels.K==V` (any `node.…` form of `shoal service create
//! --constraint`), and the label `com.docker.swarm.constraints` (a JSON array of the same
//! expressions). Affinities, soft (`==~`) and regular-expression constraints are refused
//! with a message rather than ignored. Options shoal cannot honour yet (volumes, a TTY,
//! an entrypoint, ...) are refused too, each by name, so nothing is silently dropped.

use super::http::ApiError;
use serde::Deserialize;
use shoal_cluster::constraint::{Constraint, Field, Op};
use shoal_consensus::state::{backing_service_name, valid_alias, valid_container_name, ContainerDef, Mode, NetworkAttachment, ServiceDef, AUTO_REMOVE_LABEL, MAX_ALIASES};
use shoal_consensus::ClusterState;
use shoal_engine::{ContainerSpec, PortMapping, Protocol, RestartPolicy};
use std::collections::BTreeMap;

/// The label classic swarm kept placement constraints in.
pub const CONSTRAINTS_LABEL: &str = "com.docker.swarm.constraints";

/// A string or a list of strings (Docker's `StrSlice`, used for `Cmd` and `Entrypoint`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StrSlice {
    One(String),
    Many(Vec<String>),
}

impl StrSlice {
    fn into_vec(self) -> Vec<String> {
        match self {
            StrSlice::One(s) => vec![s],
            StrSlice::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicyConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub maximum_retry_count: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    #[serde(default)]
    pub host_ip: String,
    #[serde(default)]
    pub host_port: String,
}

/// The part of `HostConfig` shoal reads (other fields are ignored when absent or empty,
/// refused by name when set: see [`check_unsupported`]).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    #[serde(default)]
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    #[serde(default)]
    pub restart_policy: Option<RestartPolicyConfig>,
    #[serde(default)]
    pub memory: i64,
    #[serde(default)]
    pub nano_cpus: i64,
    #[serde(default)]
    pub network_mode: String,
    #[serde(default)]
    pub binds: Option<Vec<String>>,
    #[serde(default)]
    pub mounts: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub volumes_from: Option<Vec<String>>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub publish_all_ports: bool,
    #[serde(default)]
    pub links: Option<Vec<String>>,
}

/// One endpoint of `NetworkingConfig.EndpointsConfig` (only the aliases are read).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointConfig {
    #[serde(default)]
    pub aliases: Option<Vec<String>>,
}

/// `NetworkingConfig`: the endpoint settings per network name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkingConfig {
    #[serde(default)]
    pub endpoints_config: Option<BTreeMap<String, Option<EndpointConfig>>>,
}

/// The container config of `POST /containers/create`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateBody {
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub cmd: Option<StrSlice>,
    #[serde(default)]
    pub entrypoint: Option<StrSlice>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub open_stdin: bool,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when the container is stopped (`--stop-timeout`).
    #[serde(default)]
    pub stop_timeout: Option<i64>,
    #[serde(default)]
    pub host_config: Option<HostConfig>,
    #[serde(default)]
    pub networking_config: Option<NetworkingConfig>,
}

fn unsupported(what: &str) -> ApiError {
    ApiError::bad_request(format!("{what} is not supported by shoal's Docker API yet"))
}

/// Refuses, by name, what shoal cannot honour yet.
fn check_unsupported(body: &CreateBody) -> Result<(), ApiError> {
    let set = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
    if body.entrypoint.clone().is_some_and(|e| e.into_vec().iter().any(|w| !w.is_empty())) {
        return Err(unsupported("Entrypoint (--entrypoint)"));
    }
    if body.tty {
        return Err(unsupported("a TTY (-t)"));
    }
    if body.open_stdin {
        return Err(unsupported("an open stdin (-i)"));
    }
    if !body.working_dir.is_empty() {
        return Err(unsupported("WorkingDir (-w)"));
    }
    if !body.user.is_empty() {
        return Err(unsupported("User (-u)"));
    }
    if !body.hostname.is_empty() {
        return Err(unsupported("Hostname (-h)"));
    }
    if body.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported("Volumes (-v)"));
    }
    if body.stop_signal.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("StopSignal (--stop-signal)"));
    }
    if let Some(h) = &body.host_config {
        if set(&h.binds) || h.mounts.as_ref().is_some_and(|m| !m.is_empty()) || set(&h.volumes_from) {
            return Err(unsupported("Volumes and mounts (-v, --mount, --volumes-from)"));
        }
        if h.privileged {
            return Err(unsupported("Privileged (--privileged)"));
        }
        if h.publish_all_ports {
            return Err(unsupported("PublishAllPorts (-P); publish HOST:CONTAINER with -p"));
        }
        if set(&h.links) {
            return Err(unsupported("Links (--link)"));
        }
        if h.network_mode == "host" || h.network_mode.starts_with("container:") {
            return Err(unsupported(&format!("NetworkMode {:?} (--network)", h.network_mode)));
        }
    }
    Ok(())
}

/// The container's network: `HostConfig.NetworkMode` naming a network of the cluster (by
/// name or id), with the aliases of `NetworkingConfig` for it plus the container's name
/// and short id (as Docker adds them, so other containers reach it by name and compose
/// sees its alias). `default`, `bridge`, `none` and empty: no network of the cluster.
pub fn networks(body: &CreateBody, name: &str, id: &str, state: &ClusterState) -> Result<Vec<NetworkAttachment>, ApiError> {
    let mode = body.host_config.as_ref().map_or("", |h| h.network_mode.as_str());
    if matches!(mode, "" | "default" | "bridge" | "none") {
        return Ok(Vec::new());
    }
    // 400, not Docker's 404: the CLI takes a 404 at create for a missing image and pulls.
    let net = state.network(mode).ok_or_else(|| ApiError::bad_request(format!("network {mode} not found")))?;
    let endpoints = body.networking_config.as_ref().and_then(|n| n.endpoints_config.as_ref());
    if let Some(other) = endpoints.and_then(|e| e.keys().find(|k| *k != &net.name && *k != &net.id)) {
        return Err(unsupported(&format!("connecting to a second network ({other}) at create")));
    }
    let given = endpoints
        .and_then(|e| e.get(&net.name).or_else(|| e.get(&net.id)))
        .and_then(|e| e.as_ref())
        .and_then(|e| e.aliases.clone())
        .unwrap_or_default();
    let mut aliases: Vec<String> = Vec::new();
    for a in given.into_iter().chain([name.to_string(), id.get(..12).unwrap_or(id).to_string()]) {
        if !valid_alias(&a) {
            return Err(ApiError::bad_request(format!("invalid network alias {a:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-], at most 128 characters")));
        }
        if !aliases.contains(&a) {
            aliases.push(a);
        }
    }
    if aliases.len() > MAX_ALIASES {
        return Err(ApiError::bad_request(format!("at most {} network aliases", MAX_ALIASES - 2)));
    }
    Ok(vec![NetworkAttachment { network: net.id.clone(), aliases }])
}

/// Parses one classic-swarm constraint (`node==n2`, `zone!=attic`,
/// `node.labels.zone==attic`) against the registered nodes.
pub fn parse_hint(expr: &str, state: &ClusterState) -> Result<Constraint, ApiError> {
    let text = expr.trim();
    let bad = |why: String| ApiError::bad_request(format!("bad scheduling constraint {text:?}: {why}"));
    if text.contains("==~") || text.contains("!=~") {
        return Err(bad("soft constraints (==~) are not supported; use == or !=".into()));
    }
    let (lhs, op, value) = if let Some((l, r)) = text.split_once("!=") {
        (l.trim(), Op::Ne, r.trim())
    } else if let Some((l, r)) = text.split_once("==") {
        (l.trim(), Op::Eq, r.trim())
    } else {
        return Err(bad("use KEY==VALUE or KEY!=VALUE, e.g. node==n2 or zone==attic".into()));
    };
    if (value.starts_with('/') && value.ends_with('/') && value.len() > 1) || value.contains('*') {
        return Err(bad("regular expressions and globs are not supported; give the exact value".into()));
    }
    if value.is_empty() {
        return Err(bad("the value is empty".into()));
    }
    if lhs == "node" {
        // A node's name or id, as in classic swarm.
        if state.nodes.values().any(|n| n.name == value) {
            return Ok(Constraint { field: Field::Hostname, op, value: value.to_string() });
        }
        let lower = value.to_ascii_lowercase();
        if lower.len() >= 6 && lower.bytes().all(|b| b.is_ascii_hexdigit()) && state.nodes.keys().any(|id| id.to_string().starts_with(&lower)) {
            return Ok(Constraint { field: Field::Id, op, value: lower });
        }
        if op == Op::Eq {
            let mut names: Vec<&str> = state.nodes.values().map(|n| n.name.as_str()).collect();
            names.sort_unstable();
            return Err(bad(format!("no node of the cluster is named {value} (nodes: {})", names.join(", "))));
        }
        return Ok(Constraint { field: Field::Hostname, op, value: value.to_string() });
    }
    let shoal_form = if lhs.starts_with("node.") { text.to_string() } else { format!("node.labels.{lhs}{}{value}", if op == Op::Eq { "==" } else { "!=" }) };
    Constraint::parse(&shoal_form).map_err(|e| bad(e.to_string()))
}

/// Docker's restart policy → the engine's.
pub fn restart_policy(p: Option<&RestartPolicyConfig>) -> Result<RestartPolicy, ApiError> {
    let Some(p) = p else { return Ok(RestartPolicy::Never) };
    match p.name.as_str() {
        "" | "no" => Ok(RestartPolicy::Never),
        // A container stopped through the API stays stopped either way (a stop scales its
        // service to 0), so unless-stopped is always.
        "always" | "unless-stopped" => Ok(RestartPolicy::Always),
        "on-failure" => match p.maximum_retry_count {
            0 => Ok(RestartPolicy::OnFailure { max_attempts: u32::MAX }),
            n if n > 0 => Ok(RestartPolicy::OnFailure { max_attempts: u32::try_from(n).unwrap_or(u32::MAX) }),
            n => Err(ApiError::bad_request(format!("invalid restart policy: maximum retry count {n} cannot be negative"))),
        },
        other => Err(ApiError::bad_request(format!(
            "invalid restart policy {other:?}: use no, always, unless-stopped or on-failure[:N]"
        ))),
    }
}

/// `PortBindings` → published ports (`-p HOST:CONTAINER[/udp]`).
fn ports(bindings: Option<&BTreeMap<String, Option<Vec<PortBinding>>>>) -> Result<Vec<PortMapping>, ApiError> {
    let mut out = Vec::new();
    for (key, list) in bindings.into_iter().flatten() {
        let bad = |why: &str| ApiError::bad_request(format!("invalid port binding {key}: {why}"));
        let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(bad("only tcp and udp are supported")),
        };
        let container_port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| bad("the container port must be 1 to 65535"))?;
        for b in list.iter().flatten() {
            if !matches!(b.host_ip.as_str(), "" | "0.0.0.0" | "::") {
                return Err(bad("binding to one host address is not supported; publish on all addresses"));
            }
            if b.host_port.is_empty() {
                return Err(bad("give the host port (-p HOST:CONTAINER); random host ports are not supported yet"));
            }
            if b.host_port.contains('-') {
                return Err(bad("host port ranges are not supported"));
            }
            let host_port: u16 = b.host_port.parse().ok().filter(|p| *p != 0).ok_or_else(|| bad("the host port must be 1 to 65535"))?;
            if out.iter().any(|p: &PortMapping| p.host_port == host_port && p.protocol == protocol) {
                return Err(bad(&format!("host port {host_port}/{proto} is published twice")));
            }
            out.push(PortMapping { host_port, container_port, protocol });
        }
    }
    Ok(out)
}

/// The container to create: `body` with its scheduling hints turned into constraints,
/// named `name` with id `id`.
pub fn container_def(body: CreateBody, name: &str, id: &str, state: &ClusterState) -> Result<ContainerDef, ApiError> {
    check_unsupported(&body)?;
    let image = body.image.trim().to_string();
    if image.is_empty() {
        return Err(ApiError::bad_request("no image given: the container config needs an Image"));
    }
    let mut constraints = Vec::new();
    let mut env = BTreeMap::new();
    for entry in body.env.unwrap_or_default() {
        if let Some(expr) = entry.strip_prefix("constraint:") {
            constraints.push(parse_hint(expr, state)?);
        } else if entry.starts_with("affinity:") {
            return Err(ApiError::bad_request(format!("{entry:?}: affinity hints are not supported by shoal yet")));
        } else if let Some((k, v)) = entry.split_once('=') {
            if k.is_empty() {
                return Err(ApiError::bad_request(format!("invalid environment variable {entry:?}: the name is empty")));
            }
            env.insert(k.to_string(), v.to_string());
        }
        // `NAME` without `=`: Docker leaves the variable unset.
    }
    let mut labels = body.labels.unwrap_or_default();
    if labels.contains_key(AUTO_REMOVE_LABEL) {
        return Err(ApiError::bad_request(format!("the label {AUTO_REMOVE_LABEL} is shoal's own: use HostConfig.AutoRemove (--rm)")));
    }
    if let Some(text) = labels.get(CONSTRAINTS_LABEL) {
        let list: Vec<String> = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("label {CONSTRAINTS_LABEL} must be a JSON array of strings: {e}")))?;
        for expr in &list {
            constraints.push(parse_hint(expr, state)?);
        }
    }
    constraints.sort();
    constraints.dedup();
    let host = body.host_config.unwrap_or_default();
    if host.memory < 0 || host.nano_cpus < 0 {
        return Err(ApiError::bad_request("Memory and NanoCpus cannot be negative"));
    }
    let stop_grace_ms = match body.stop_timeout {
        None => None,
        Some(secs) if secs >= 0 && (secs as u64).saturating_mul(1000) <= shoal_engine::types::STOP_GRACE_MS_MAX => Some(secs as u64 * 1000),
        Some(secs) => {
            return Err(ApiError::bad_request(format!(
                "StopTimeout must be 0 to {} seconds, not {secs}",
                shoal_engine::types::STOP_GRACE_MS_MAX / 1000
            )))
        }
    };
    let restart = restart_policy(host.restart_policy.as_ref())?;
    if host.auto_remove {
        if restart != RestartPolicy::Never {
            return Err(ApiError::bad_request("conflicting options: AutoRemove (--rm) and a restart policy (--restart)"));
        }
        labels.insert(AUTO_REMOVE_LABEL.to_string(), "true".to_string());
    }
    let service = ServiceDef {
        name: backing_service_name(name, id),
        spec: ContainerSpec {
            image,
            command: body.cmd.map(StrSlice::into_vec).unwrap_or_default(),
            env,
            ports: ports(host.port_bindings.as_ref())?,
            cpu_millis: (host.nano_cpus / 1_000_000) as u64,
            memory_bytes: host.memory as u64,
            stop_grace_ms,
        },
        mode: Mode::Replicated(0),
        constraints,
        reserve_cpu_millis: 0,
        reserve_memory_bytes: 0,
        restart,
    };
    // The state machine's own rules, so a refusal is a 400 with its reason now, not a
    // failed write later.
    service.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(ContainerDef { id: id.to_string(), name: name.to_string(), labels, service })
}

/// The `name` query parameter: Docker's rule, a leading `/` allowed.
pub fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.strip_prefix('/').unwrap_or(name);
    if valid_container_name(name) {
        Ok(name.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (2 to {} characters)",
            shoal_consensus::state::MAX_CONTAINER_NAME_LEN
        )))
    }
}

const ADJECTIVES: [&str; 16] = [
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nifty", "proud", "quiet", "swift", "tender",
    "witty",
];
const FISH: [&str; 16] = [
    "anchovy", "bream", "carp", "dorado", "eel", "flounder", "grouper", "herring", "ide", "koi", "mackerel", "perch", "salmon", "tuna",
    "wrasse", "zander",
];

/// A name for a container created without one (`adjective_fish`, like Docker's), picked
/// from the id and free in `state`; with the id's start appended if that pair is taken.
pub fn generated_name(id: &str, state: &ClusterState) -> String {
    let byte = |i: usize| id.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0) as usize;
    let base = format!("{}_{}", ADJECTIVES[byte(0) % 16], FISH[byte(2) % 16]);
    let taken = |n: &str| state.container_by_name(n).is_some() || state.services.contains_key(n);
    if !taken(&base) {
        return base;
    }
    format!("{base}_{}", id.get(..8).unwrap_or(id))
}

/// A fresh container id: 32 random bytes, hex.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerapi::view::tests::{id as node_id, three_nodes};

    fn body(json: serde_json::Value) -> CreateBody {
        serde_json::from_value(json).expect("body")
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn compose_network_mode_and_aliases_become_the_containers_attachment() {
        let mut st = three_nodes();
        let net = "ab".repeat(32);
        st.networks.insert(net.clone(), shoal_consensus::state::NetworkRecord {
            id: net.clone(), name: "p_default".into(), driver: "bridge".into(), labels: BTreeMap::new(), attachable: true, created_ms: 0,
        });
        let compose = body(serde_json::json!({"Image": "x", "HostConfig": {"NetworkMode": "p_default"},
            "NetworkingConfig": {"EndpointsConfig": {"p_default": {"Aliases": ["web"], "IPAMConfig": null}}}}));
        let got = networks(&compose, "p_web_1", ID, &st).expect("attached");
        assert_eq!(got, vec![NetworkAttachment { network: net.clone(), aliases: vec!["web".into(), "p_web_1".into(), ID[..12].to_string()] }]);
        // By id, without NetworkingConfig: the name and short id only.
        let by_id = body(serde_json::json!({"Image": "x", "HostConfig": {"NetworkMode": net}}));
        assert_eq!(networks(&by_id, "c", ID, &st).expect("by id")[0].aliases, vec!["c".to_string(), ID[..12].to_string()]);
        for mode in ["", "default", "bridge", "none"] {
            let b = body(serde_json::json!({"Image": "x", "HostConfig": {"NetworkMode": mode}}));
            assert!(networks(&b, "c", ID, &st).expect("default").is_empty(), "{mode}");
        }
        let unknown = body(serde_json::json!({"Image": "x", "HostConfig": {"NetworkMode": "nosuch"}}));
        assert_eq!(networks(&unknown, "c", ID, &st).expect_err("unknown").message, "network nosuch not found");
        let bad = body(serde_json::json!({"Image": "x", "HostConfig": {"NetworkMode": "p_default"},
            "NetworkingConfig": {"EndpointsConfig": {"p_default": {"Aliases": ["-bad alias"]}}}}));
        assert!(networks(&bad, "c", ID, &st).expect_err("bad alias").message.contains("invalid network alias"));
        let two = body(serde_json::json!({"Image": "x", "HostConfig": {"NetworkMode": "p_default"},
            "NetworkingConfig": {"EndpointsConfig": {"p_default": {}, "other": {}}}}));
        assert!(networks(&two, "c", ID, &st).expect_err("two").message.contains("second network"));
    }

    #[test]
    fn a_cli_body_becomes_a_stopped_single_replica_service() {
        let st = three_nodes();
        let b = body(serde_json::json!({
            "Image": "busybox:1", "Cmd": ["sleep", "300"], "Entrypoint": null,
            "Env": ["A=1", "constraint:node==n2", "B=x=y", "UNSET"],
            "Labels": {"app": "hello"}, "AttachStdout": true, "Tty": false, "OpenStdin": false,
            "HostConfig": {"NetworkMode": "default", "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
                           "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}, "Memory": 67108864, "NanoCpus": 500000000,
                           "Binds": null, "AutoRemove": false},
            "NetworkingConfig": {"EndpointsConfig": {}}
        }));
        let def = container_def(b, "hello", ID, &st).expect("def");
        assert_eq!((def.id.as_str(), def.name.as_str()), (ID, "hello"));
        let svc = &def.service;
        assert_eq!(svc.name, "hello");
        assert_eq!(svc.mode, Mode::Replicated(0));
        assert_eq!(svc.spec.command, ["sleep", "300"]);
        assert_eq!(svc.spec.env, BTreeMap::from([("A".into(), "1".into()), ("B".into(), "x=y".into())]), "the hint is stripped");
        assert_eq!(svc.constraints, [Constraint { field: Field::Hostname, op: Op::Eq, value: "n2".into() }]);
        assert_eq!(svc.restart, RestartPolicy::OnFailure { max_attempts: 2 });
        assert_eq!(svc.spec.ports, [PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp }]);
        assert_eq!((svc.spec.memory_bytes, svc.spec.cpu_millis), (64 << 20, 500));
        assert_eq!(def.labels.get("app").map(String::as_str), Some("hello"));
    }

    #[test]
    fn classic_swarm_hints_and_shoal_constraints() {
        let st = three_nodes();
        let c = |e: &str| parse_hint(e, &st);
        assert_eq!(c("node!=n1").expect("ne"), Constraint { field: Field::Hostname, op: Op::Ne, value: "n1".into() });
        let id3 = node_id(3).to_string();
        assert_eq!(c(&format!("node=={}", &id3[..8])).expect("id").field, Field::Id);
        assert_eq!(c("zone==attic").expect("label"), Constraint::parse("node.labels.zone==attic").expect("parse"));
        assert_eq!(c("node.labels.zone!=attic").expect("shoal"), Constraint::parse("node.labels.zone!=attic").expect("parse"));
        assert_eq!(c("node.hostname==n3").expect("hostname").field, Field::Hostname);
        for (bad, says) in [
            ("node==n9", "no node of the cluster is named n9 (nodes: n1, n2, n3)"),
            ("zone==~attic", "soft constraints"),
            ("zone==/att.*/", "regular expressions"),
            ("zone=attic", "KEY==VALUE"),
            ("zone==", "empty"),
            ("node.bogus==x", "unknown field"),
        ] {
            let e = c(bad).expect_err(bad);
            assert!(e.status == hyper::StatusCode::BAD_REQUEST && e.message.contains(says), "{bad}: {}", e.message);
        }
        // The label form, and affinities refused.
        let b = body(serde_json::json!({"Image": "x", "Labels": {CONSTRAINTS_LABEL: "[\"zone==attic\",\"node!=n1\"]"}}));
        let def = container_def(b, "c1", ID, &st).expect("label hints");
        assert_eq!(def.service.constraints.len(), 2);
        assert!(def.labels.contains_key(CONSTRAINTS_LABEL));
        let b = body(serde_json::json!({"Image": "x", "Labels": {CONSTRAINTS_LABEL: "zone==attic"}}));
        assert!(container_def(b, "c1", ID, &st).expect_err("not json").message.contains("JSON array"));
        let b = body(serde_json::json!({"Image": "x", "Env": ["affinity:container==web"]}));
        assert!(container_def(b, "c1", ID, &st).expect_err("affinity").message.contains("affinity hints are not supported"));
    }

    #[test]
    fn auto_remove_is_kept_as_shoals_label() {
        let st = three_nodes();
        let def = container_def(body(serde_json::json!({"Image": "x", "HostConfig": {"AutoRemove": true}})), "c1", ID, &st).expect("--rm");
        assert_eq!(def.labels.get(AUTO_REMOVE_LABEL).map(String::as_str), Some("true"));
        let def = container_def(body(serde_json::json!({"Image": "x"})), "c1", ID, &st).expect("plain");
        assert!(!def.labels.contains_key(AUTO_REMOVE_LABEL));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let st = three_nodes();
        for (json, says) in [
            (serde_json::json!({"Image": "x", "Tty": true}), "TTY"),
            (serde_json::json!({"Image": "x", "Entrypoint": ["/bin/sh"]}), "Entrypoint"),
            (serde_json::json!({"Image": "x", "HostConfig": {"Binds": ["/a:/b"]}}), "Volumes"),
            (serde_json::json!({"Image": "x", "Volumes": {"/data": {}}}), "Volumes"),
            (serde_json::json!({"Image": "x", "HostConfig": {"AutoRemove": true, "RestartPolicy": {"Name": "always"}}}), "conflicting options"),
            (serde_json::json!({"Image": "x", "Labels": {"shoal.auto-remove": "true"}}), "shoal's own"),
            (serde_json::json!({"Image": "x", "HostConfig": {"NetworkMode": "host"}}), "NetworkMode"),
            (serde_json::json!({"Image": "x", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": ""}]}}}), "random host ports"),
            (serde_json::json!({"Image": "x", "HostConfig": {"PortBindings": {"80/sctp": [{"HostPort": "80"}]}}}), "tcp and udp"),
            (serde_json::json!({"Image": "x", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "99999"}]}}}), "1 to 65535"),
            (serde_json::json!({"Image": "x", "HostConfig": {"RestartPolicy": {"Name": "sometimes"}}}), "invalid restart policy"),
            (serde_json::json!({"Image": "x", "HostConfig": {"Memory": -1}}), "negative"),
            (serde_json::json!({"Image": " "}), "no image"),
            (serde_json::json!({"Image": "x", "Env": ["=1"]}), "name is empty"),
            // What only the shared `ServiceDef::validate` knows.
            (serde_json::json!({"Image": "x", "HostConfig": {"Memory": 1i64 << 62}}), "memory at most"),
            (serde_json::json!({"Image": "x", "Cmd": ["a\u{0}b"]}), "NUL"),
            (serde_json::json!({"Image": "two words"}), "without spaces"),
        ] {
            let e = container_def(body(json.clone()), "c1", ID, &st).expect_err(says);
            assert!(e.status == hyper::StatusCode::BAD_REQUEST && e.message.contains(says), "{json}: {}", e.message);
        }
        // Fields of the wrong type are malformed JSON.
        assert!(serde_json::from_value::<CreateBody>(serde_json::json!({"Image": 5})).is_err());
        assert!(serde_json::from_value::<CreateBody>(serde_json::json!({"Env": "A=1"})).is_err());
    }

    #[test]
    fn names_ids_and_policies() {
        assert_eq!(check_name("/hello").expect("slash"), "hello");
        assert!(check_name("a").is_err() && check_name("-x").is_err() && check_name("a b").is_err());
        assert!(check_name("x/y").expect_err("slash").message.contains("Invalid container name"));
        let st = three_nodes();
        let n = generated_name(ID, &st);
        assert!(valid_container_name(&n) && shoal_consensus::state::valid_service_name(&n), "{n}");
        let id = new_id();
        assert!(shoal_consensus::state::valid_container_id(&id), "{id}");
        assert_ne!(new_id(), id);
        let p = |name: &str, n: i64| restart_policy(Some(&RestartPolicyConfig { name: name.into(), maximum_retry_count: n }));
        assert_eq!(p("unless-stopped", 0).expect("ok"), RestartPolicy::Always);
        assert_eq!(p("on-failure", 0).expect("ok"), RestartPolicy::OnFailure { max_attempts: u32::MAX });
        assert_eq!(p("no", 0).expect("ok"), RestartPolicy::Never);
        assert!(p("on-failure", -1).is_err());
        assert_eq!(restart_policy(None).expect("none"), RestartPolicy::Never);
    }
}
