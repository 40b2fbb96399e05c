//! Services from the user's side: parsing the `shoal service create` flags into a
//! [`ServiceDef`] (pure, unit-tested), the rows `service ls` and `service ps` show, and how
//! they are built from the replicated state.
//!
//! Flags are checked here so that a typo gets a precise message before anything is sent;
//! the state machine checks every limit again when the command is applied.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use shoal_cluster::constraint::Constraint;
use shoal_cluster::scheduler::{Mode, Slot};
use shoal_consensus::state::{ServiceDef, TaskRecord, MAX_REPLICAS};
use shoal_consensus::ClusterState;
use shoal_engine::{ContainerSpec, Desired, PortMapping, Protocol, RestartPolicy, TaskState};
use shoal_wire::NodeId;
use std::collections::BTreeMap;

/// `H:C` or `H:C/tcp|udp`.
pub fn parse_publish(text: &str) -> Result<PortMapping> {
    let bad = || anyhow!("bad port `{text}`: use HOST:CONTAINER, e.g. 8080:80 or 53:53/udp (ports 1-65535)");
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some(_) => return Err(bad()),
        None => (text, Protocol::Tcp),
    };
    let (h, c) = ports.split_once(':').ok_or_else(bad)?;
    let host_port: u16 = h.parse().map_err(|_| bad())?;
    let container_port: u16 = c.parse().map_err(|_| bad())?;
    if host_port == 0 || container_port == 0 {
        return Err(bad());
    }
    Ok(PortMapping { host_port, container_port, protocol })
}

/// `512k`, `64M`, `1G`, `1.5G` or bytes.
pub fn parse_memory(text: &str) -> Result<u64> {
    let bad = || anyhow!("bad memory size `{text}`: use e.g. 64M, 512k or 1G");
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => return Err(bad()),
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 || value * (mult as f64) > 1e15 {
        return Err(bad());
    }
    Ok((value * mult as f64) as u64)
}

/// CPUs like docker's `--cpus`: `0.5`, `2` → thousandths.
pub fn parse_cpu(text: &str) -> Result<u64> {
    let value: f64 = text.trim().parse().map_err(|_| anyhow!("bad CPU amount `{text}`: use e.g. 0.5 or 2"))?;
    if !value.is_finite() || !(0.0..=1000.0).contains(&value) {
        bail!("bad CPU amount `{text}`: between 0 and 1000 CPUs");
    }
    Ok((value * 1000.0).round() as u64)
}

/// `always`, `never`, `on-failure` or `on-failure:N`.
pub fn parse_restart(text: &str) -> Result<RestartPolicy> {
    match text {
        "always" | "any" => Ok(RestartPolicy::Always),
        "never" | "none" | "no" => Ok(RestartPolicy::Never),
        "on-failure" => Ok(RestartPolicy::OnFailure { max_attempts: 3 }),
        _ => match text.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(max_attempts)) => Ok(RestartPolicy::OnFailure { max_attempts }),
            _ => bail!("bad restart policy `{text}`: use always, never, on-failure or on-failure:N"),
        },
    }
}

/// `K=V` environment entries.
pub fn parse_env(entries: &[String]) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for e in entries {
        let (k, v) = e.split_once('=').ok_or_else(|| anyhow!("bad --env `{e}`: use KEY=VALUE"))?;
        if k.is_empty() {
            bail!("bad --env `{e}`: the name is empty");
        }
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

/// Everything `service create` takes, as typed.
#[derive(Debug, Clone, Default)]
pub struct CreateFlags {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub replicas: Option<u32>,
    pub global: bool,
    pub env: Vec<String>,
    pub publish: Vec<String>,
    pub constraints: Vec<String>,
    pub reserve_cpu: Option<String>,
    pub reserve_memory: Option<String>,
    pub limit_cpu: Option<String>,
    pub limit_memory: Option<String>,
    pub restart: String,
}

/// Builds the service definition from the flags, or says which flag is wrong.
pub fn service_def(f: &CreateFlags) -> Result<ServiceDef> {
    if !shoal_consensus::state::valid_service_name(&f.name) {
        bail!("bad service name `{}`: 1 to 63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit", f.name);
    }
    if f.image.trim().is_empty() {
        bail!("the image name is empty");
    }
    let mode = match (f.global, f.replicas) {
        (true, Some(_)) => bail!("--global and --replicas exclude each other"),
        (true, None) => Mode::Global,
        (false, r) => {
            let n = r.unwrap_or(1);
            if n > MAX_REPLICAS {
                bail!("--replicas {n} is out of range: 0 to {MAX_REPLICAS}");
            }
            Mode::Replicated(n)
        }
    };
    let constraints = f
        .constraints
        .iter()
        .map(|c| Constraint::parse(c).map_err(|e| anyhow!("bad --constraint `{c}`: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let ports = f.publish.iter().map(|p| parse_publish(p)).collect::<Result<Vec<_>>>()?;
    let mut seen = std::collections::BTreeSet::new();
    for p in &ports {
        if !seen.insert((p.host_port, p.protocol)) {
            bail!("host port {}/{} is published twice", p.host_port, p.protocol.as_str());
        }
    }
    let opt = |v: &Option<String>, parse: fn(&str) -> Result<u64>| v.as_deref().map(parse).transpose().map(Option::unwrap_or_default);
    Ok(ServiceDef {
        name: f.name.clone(),
        spec: ContainerSpec {
            image: f.image.clone(),
            command: f.command.clone(),
            env: parse_env(&f.env)?,
            ports,
            cpu_millis: opt(&f.limit_cpu, parse_cpu)?,
            memory_bytes: opt(&f.limit_memory, parse_memory)?,
        },
        mode,
        constraints,
        reserve_cpu_millis: opt(&f.reserve_cpu, parse_cpu)?,
        reserve_memory_bytes: opt(&f.reserve_memory, parse_memory)?,
        restart: parse_restart(&f.restart)?,
    })
}

/// A row of `shoal service ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub image: String,
    /// `replicated` or `global`.
    pub mode: String,
    /// Desired replicas (replicated), or live tasks (global).
    pub desired: u32,
    pub running: u32,
    pub pending: u32,
    /// `docker` for the service that runs a container of the Docker API (named in
    /// `container`), `shoal` for a service created with `shoal service create`.
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub container: Option<String>,
}

/// A row of `shoal service ps`: a task, or a slot that could not be placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRow {
    /// Task id; `None` for a pending slot.
    pub task: Option<u64>,
    /// `web.1` (replicated) or `web@<node>` (global).
    pub slot: String,
    pub node: Option<NodeId>,
    pub node_name: Option<String>,
    /// running, shutdown.
    pub desired: String,
    /// What the node reported: new (nothing yet), starting, running, exited, failed,
    /// shutdown; or pending.
    pub state: String,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub restarts: u32,
    pub container: Option<String>,
}

fn slot_name(service: &str, slot: &Slot) -> String {
    match slot {
        Slot::Index(i) => format!("{service}.{i}"),
        Slot::Node(n) => format!("{service}@{}", n.short()),
    }
}

fn state_name(t: &TaskRecord) -> (String, Option<String>) {
    match &t.observed {
        None => ("new".into(), None),
        Some(TaskState::Starting) => ("starting".into(), None),
        Some(TaskState::Running) => ("running".into(), None),
        Some(TaskState::Exited { code }) => (format!("exited ({code})"), None),
        Some(TaskState::Failed { reason }) => ("failed".into(), Some(reason.clone())),
        Some(TaskState::Shutdown) => ("shutdown".into(), None),
    }
}

pub fn service_rows(state: &ClusterState) -> Vec<ServiceRow> {
    state
        .services
        .values()
        .map(|svc| {
            let live: Vec<&TaskRecord> = state.tasks_of_service(&svc.def.name).filter(|t| t.is_live()).collect();
            let running = live.iter().filter(|t| t.observed == Some(TaskState::Running)).count() as u32;
            let (mode, desired) = match svc.def.mode {
                Mode::Replicated(n) => ("replicated", n),
                Mode::Global => ("global", live.len() as u32),
            };
            let container = state.container_of_service(&svc.def.name).map(|c| c.name.clone());
            ServiceRow {
                name: svc.def.name.clone(),
                image: svc.def.spec.image.clone(),
                mode: mode.into(),
                desired,
                running,
                pending: svc.pending.len() as u32,
                origin: if container.is_some() { "docker" } else { "shoal" }.into(),
                container,
            }
        })
        .collect()
}

pub fn task_rows(state: &ClusterState, service: &str) -> Result<Vec<TaskRow>> {
    let svc = state
        .services
        .get(service)
        .ok_or_else(|| anyhow!("no service named {service}; list the services to see their names"))?;
    let mut rows: Vec<TaskRow> = state
        .tasks_of_service(service)
        .map(|t| {
            let (st, reason) = state_name(t);
            TaskRow {
                task: Some(t.id),
                slot: slot_name(service, &t.slot),
                node: Some(t.node),
                node_name: state.nodes.get(&t.node).map(|n| n.name.clone()),
                desired: if t.desired == Desired::Running { "running".into() } else { "shutdown".into() },
                state: st,
                exit_code: t.last_exit_code,
                error: reason.or_else(|| t.error.clone()),
                restarts: t.restarts,
                container: t.container.as_ref().map(|c| c.0.chars().take(12).collect()),
            }
        })
        .collect();
    for (slot, p) in &svc.pending {
        rows.push(TaskRow {
            task: None,
            slot: slot_name(service, slot),
            node: None,
            node_name: None,
            desired: "running".into(),
            state: "pending".into(),
            exit_code: None,
            error: Some(p.reason.clone()),
            restarts: 0,
            container: None,
        });
    }
    // Live tasks first, by slot; then the shut-down ones.
    rows.sort_by(|a, b| (a.desired != "running", &a.slot, a.task).cmp(&(b.desired != "running", &b.slot, b.task)));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> CreateFlags {
        CreateFlags { name: "web".into(), image: "shoal-test/busybox:1".into(), restart: "always".into(), ..Default::default() }
    }

    #[test]
    fn ports_parse_and_bad_ones_say_the_form() {
        assert_eq!(parse_publish("8080:80").expect("ok"), PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp });
        assert_eq!(parse_publish("53:53/udp").expect("ok").protocol, Protocol::Udp);
        for bad in ["80", "0:80", "80:0", "x:80", "80:80/sctp", "70000:80", ":"] {
            let e = parse_publish(bad).expect_err(bad).to_string();
            assert!(e.contains("HOST:CONTAINER"), "{e}");
        }
    }

    #[test]
    fn sizes_cpus_and_restart_policies_parse() {
        assert_eq!(parse_memory("64M").expect("ok"), 64 << 20);
        assert_eq!(parse_memory("1.5g").expect("ok"), 3 << 29);
        assert_eq!(parse_memory("100").expect("ok"), 100);
        assert!(parse_memory("12Q").is_err() && parse_memory("-1M").is_err() && parse_memory("M").is_err());
        assert_eq!(parse_cpu("0.5").expect("ok"), 500);
        assert!(parse_cpu("-1").is_err() && parse_cpu("lots").is_err());
        assert_eq!(parse_restart("on-failure:2").expect("ok"), RestartPolicy::OnFailure { max_attempts: 2 });
        assert_eq!(parse_restart("never").expect("ok"), RestartPolicy::Never);
        assert!(parse_restart("sometimes").is_err());
    }

    #[test]
    fn a_service_def_is_built_from_flags_and_bad_input_is_named() {
        let mut f = flags();
        f.replicas = Some(6);
        f.env = vec!["A=1".into()];
        f.constraints = vec!["node.labels.zone==attic".into()];
        f.publish = vec!["8080:80".into()];
        let def = service_def(&f).expect("valid");
        assert_eq!(def.mode, Mode::Replicated(6));
        assert_eq!(def.spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(def.constraints.len(), 1);

        let cases: Vec<(CreateFlags, &str)> = vec![
            (CreateFlags { name: "Web!".into(), ..flags() }, "bad service name"),
            (CreateFlags { replicas: Some(MAX_REPLICAS + 1), ..flags() }, "out of range"),
            (CreateFlags { global: true, replicas: Some(2), ..flags() }, "exclude each other"),
            (CreateFlags { constraints: vec!["node.labels.zone=attic".into()], ..flags() }, "bad --constraint"),
            (CreateFlags { publish: vec!["80:80".into(), "80:81".into()], ..flags() }, "published twice"),
            (CreateFlags { env: vec!["NOEQUALS".into()], ..flags() }, "KEY=VALUE"),
            (CreateFlags { image: " ".into(), ..flags() }, "image"),
        ];
        for (f, expect) in cases {
            let e = service_def(&f).expect_err(expect).to_string();
            assert!(e.contains(expect), "{expect}: {e}");
        }
    }
}
