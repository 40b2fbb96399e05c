//! Helpers for stories about services on real agents and Docker Engines (each lab machine's
//! own, or the host's shared by all nodes): shared by `tests/services_docker.rs` and
//! `benches/services.rs`.
//!
//! - [`docker_unavailable`] says why Docker-backed stories cannot run here;
//! - [`Docker`]: one engine (the host's, or a lab machine's socket) through
//!   `shoal_engine::DockerEngine` (bollard) on a private tokio runtime, so sync tests can
//!   list the containers of given nodes, and build and remove the `FROM scratch` + static
//!   busybox test image;
//! - [`EngineSet`]: the engines a test's nodes run on, listed engine by engine, checking
//!   that a node's containers are on its own machine's engine only;
//! - [`DockerCleanup`]: on drop, removes from the host's engine every container labelled
//!   `shoal.node=<id>` for the ids registered with it, and the test image — also when the
//!   test panics (a lab's own engines go with the lab, containers and all). Declare it
//!   *before* the [`Cluster`] so the agents are killed first (drop runs in reverse order)
//!   and cannot recreate what is being removed;
//! - the CLI: `shoal service …` and `shoal node update` through one node, and the JSON rows
//!   of `service ls` / `service ps`.

use crate::{run, shoal_bin, Cluster, Lab, Output};
use serde::Deserialize;
use shoal_engine::testimage::{busybox_context, BUSYBOX_PATH};
use shoal_engine::{ContainerInfo, ContainerState, DockerConfig, DockerEngine, Engine, LabelFilter};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound on one `service create|scale` that waits for convergence (its own `--timeout` is
/// set below this).
pub const CONVERGE_CLI_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on one `service ls|ps|rm|inspect` or `node update`: a write retries for about 10 s
/// when no leader is reachable.
pub const SERVICE_CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// A long-running command that exits at once on SIGTERM (busybox `sleep` as PID 1 ignores
/// it, so `docker stop` would wait the whole grace period).
pub const LONG_RUNNING: [&str; 3] = ["/bin/sh", "-c", "trap 'exit 0' TERM; /bin/sleep 3600 & wait"];

/// `None` when the Docker-backed stories can run: `/bin/busybox` (Debian `busybox-static`)
/// exists and an engine socket is there (`DOCKER_HOST`, else `/var/run/docker.sock`).
/// Whether the engine answers is checked by [`Docker::connect`], which fails loudly.
pub fn docker_unavailable() -> Option<String> {
    if !Path::new(BUSYBOX_PATH).is_file() {
        return Some(format!("{BUSYBOX_PATH} is missing (install the Debian package busybox-static)"));
    }
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) if !Path::new(path).exists() => Some(format!("DOCKER_HOST={host}: no such socket")),
            _ => None,
        },
        _ if !Path::new("/var/run/docker.sock").exists() => Some("no Docker Engine socket at /var/run/docker.sock".into()),
        _ => None,
    }
}

/// The host's Docker Engine, for sync code.
pub struct Docker {
    rt: tokio::runtime::Runtime,
    engine: DockerEngine,
}

impl Docker {
    /// The host's engine (`DOCKER_HOST`, else `/var/run/docker.sock`).
    pub fn connect() -> Result<Self, String> {
        Self::connect_with(None)
    }

    /// The engine at a unix socket, e.g. a lab machine's ([`Lab::docker_socket`]).
    pub fn connect_to(socket: &Path) -> Result<Self, String> {
        Self::connect_with(Some(socket))
    }

    fn connect_with(socket: Option<&Path>) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        // Grace 0: what the harness removes is killed at once.
        let cfg = DockerConfig { stop_grace_s: 0, request_timeout_s: 30 };
        let engine = match socket {
            None => rt.block_on(DockerEngine::connect_local(cfg)).map_err(|e| format!("cannot reach the local Docker Engine: {e}"))?,
            Some(path) => rt
                .block_on(DockerEngine::connect_unix(&path.to_string_lossy(), cfg))
                .map_err(|e| format!("cannot reach the Docker Engine at {}: {e}", path.display()))?,
        };
        Ok(Self { rt, engine })
    }

    pub fn api_version(&self) -> String {
        self.engine.api_version()
    }

    /// Builds the `FROM scratch` + static busybox image (`/bin/sh`, `/bin/sleep`) as `tag`.
    pub fn build_busybox(&self, tag: &str) -> Result<(), String> {
        let context = busybox_context(Path::new(BUSYBOX_PATH)).map_err(|e| format!("build context from {BUSYBOX_PATH}: {e}"))?;
        self.rt
            .block_on(self.engine.build_image(tag, context))
            .map_err(|e| format!("building {tag}: {e}"))
    }

    pub fn remove_image(&self, tag: &str) -> Result<(), String> {
        self.rt.block_on(self.engine.remove_image(tag)).map_err(|e| format!("removing image {tag}: {e}"))
    }

    /// Every container (any state) labelled `shoal.node=<id>` for one of `nodes`.
    pub fn containers(&self, nodes: &[String]) -> Result<Vec<ContainerInfo>, String> {
        let mut all = Vec::new();
        for n in nodes {
            let list = self
                .rt
                .block_on(self.engine.list(&LabelFilter::node(n.clone())))
                .map_err(|e| format!("listing containers of node {n}: {e}"))?;
            all.extend(list);
        }
        Ok(all)
    }

    /// Stops and removes every container of `nodes`; returns how many.
    pub fn remove_all(&self, nodes: &[String]) -> Result<usize, String> {
        let list = self.containers(nodes)?;
        for c in &list {
            self.rt
                .block_on(self.engine.stop_and_remove(&c.id))
                .map_err(|e| format!("removing container {}: {e}", c.name))?;
        }
        Ok(list.len())
    }
}

/// The engines a test's nodes run on: one per machine of a lab with engines (machine `i`
/// runs node `i`), or the host's one, shared by every node.
pub struct EngineSet {
    /// Each engine and how messages name it.
    engines: Vec<(String, Docker)>,
    /// The node each engine belongs to, once [`Self::assign`]ed (lab engines only).
    owners: Vec<Option<String>>,
}

impl EngineSet {
    /// The host's engine alone.
    pub fn host() -> Result<Self, String> {
        Ok(Self { engines: vec![("the host's engine".into(), Docker::connect()?)], owners: vec![None] })
    }

    /// Every machine's engine of a lab built with [`Lab::with_engines`], in host order.
    pub fn of_lab(lab: &Lab) -> Result<Self, String> {
        let mut engines = Vec::new();
        for (i, h) in lab.hosts.iter().enumerate() {
            let e = h.engine.as_ref().ok_or_else(|| format!("machine {} of the lab has no engine of its own (use Lab::with_engines)", i + 1))?;
            engines.push((format!("the engine of {}", e.hostname), Docker::connect_to(&e.socket)?));
        }
        let owners = vec![None; engines.len()];
        Ok(Self { engines, owners })
    }

    pub fn len(&self) -> usize {
        self.engines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }

    /// Engine `i`.
    pub fn docker(&self, i: usize) -> &Docker {
        &self.engines[i].1
    }

    /// Engine `i` runs the containers of node `ids[i]` and of no other node: from now on a
    /// listing that finds another node's container there is an error. One id per engine.
    pub fn assign(&mut self, ids: &[String]) {
        assert_eq!(ids.len(), self.engines.len(), "one node per engine");
        self.owners = ids.iter().cloned().map(Some).collect();
    }

    /// Every container (any state) of `nodes`, engine by engine. `Err` when an engine cannot
    /// be listed or holds a container of a node that is not its own.
    pub fn by_engine(&self, nodes: &[String]) -> Result<Vec<Vec<ContainerInfo>>, String> {
        let mut out = Vec::new();
        for ((name, docker), owner) in self.engines.iter().zip(&self.owners) {
            let list = docker.containers(nodes).map_err(|e| format!("{name}: {e}"))?;
            if let Some(owner) = owner {
                if let Some(c) = list.iter().find(|c| &c.owner.node != owner) {
                    return Err(format!(
                        "{name} (of node {owner:.8}) holds container {} of node {:.8}: a node used another machine's engine",
                        c.name, c.owner.node
                    ));
                }
            }
            out.push(list);
        }
        Ok(out)
    }

    /// Every container (any state) of `nodes` on any of the engines.
    pub fn containers(&self, nodes: &[String]) -> Result<Vec<ContainerInfo>, String> {
        Ok(self.by_engine(nodes)?.into_iter().flatten().collect())
    }

    /// Stops and removes every container of `nodes` on every engine; returns how many.
    pub fn remove_all(&self, nodes: &[String]) -> Result<usize, String> {
        let mut n = 0;
        for (name, docker) in &self.engines {
            n += docker.remove_all(nodes).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(n)
    }
}

/// Removes, on drop, the containers of every registered node id and the image.
pub struct DockerCleanup {
    tag: String,
    nodes: Arc<Mutex<Vec<String>>>,
}

impl DockerCleanup {
    pub fn new(tag: &str) -> Self {
        Self { tag: tag.to_string(), nodes: Arc::default() }
    }

    /// From now on, containers labelled with this node id are removed on drop.
    pub fn register(&self, node: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if !nodes.iter().any(|n| n == node) {
            nodes.push(node.to_string());
        }
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let docker = match Docker::connect() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("cleanup: {e}; containers of {nodes:?} and image {} may be left", self.tag);
                return;
            }
        };
        match docker.remove_all(&nodes) {
            Ok(0) => {}
            Ok(n) => eprintln!("cleanup: removed {n} container(s) left by the test's nodes"),
            Err(e) => eprintln!("cleanup: {e}"),
        }
        if let Err(e) = docker.remove_image(&self.tag) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A unique image tag for this run.
pub fn image_tag(label: &str) -> String {
    format!("shoal-test-busybox:{label}-{}-{}", std::process::id(), crate::unique())
}

/// Is the container running?
pub fn is_running(c: &ContainerInfo) -> bool {
    c.state == ContainerState::Running
}

/// Containers of service `service`.
pub fn of_service<'a>(all: &'a [ContainerInfo], service: &str) -> Vec<&'a ContainerInfo> {
    all.iter().filter(|c| c.owner.service == service).collect()
}

/// How many containers each node has (node id → count), nodes in `ids` with none included.
pub fn per_node(containers: &[&ContainerInfo], ids: &[String]) -> BTreeMap<String, usize> {
    let mut m: BTreeMap<String, usize> = ids.iter().map(|i| (i.clone(), 0)).collect();
    for c in containers {
        *m.entry(c.owner.node.clone()).or_default() += 1;
    }
    m
}

/// One-line summary of containers, for failure messages.
pub fn show(containers: &[&ContainerInfo]) -> String {
    containers
        .iter()
        .map(|c| format!("{} {}/{} node {:.8} {}", c.name, c.owner.service, c.owner.task, c.owner.node, c.state))
        .collect::<Vec<_>>()
        .join("; ")
}

// ------------------------------------------------------------------------------ the CLI

/// A row of `shoal service ls --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub image: String,
    pub mode: String,
    pub desired: u32,
    pub running: u32,
    pub pending: u32,
}

/// A row of `shoal service ps NAME --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TaskRow {
    pub task: Option<u64>,
    pub slot: String,
    pub node: Option<String>,
    pub node_name: Option<String>,
    pub desired: String,
    pub state: String,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub restarts: u32,
    pub container: Option<String>,
}

impl TaskRow {
    pub fn is_live(&self) -> bool {
        self.desired == "running"
    }

    pub fn short(&self) -> String {
        format!(
            "{} task={:?} node={} desired={} state={} exit={:?} restarts={} err={:?}",
            self.slot,
            self.task,
            self.node_name.as_deref().unwrap_or("-"),
            self.desired,
            self.state,
            self.exit_code,
            self.restarts,
            self.error
        )
    }
}

/// `shoal <head…> --data-dir D <tail…>` through node `via`: the data dir goes before `tail`
/// because `service create NAME IMAGE CMD…` takes the rest of the line as the command.
pub fn cli(c: &Cluster, via: usize, head: &[&str], tail: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(shoal_bin());
    cmd.args(head).arg("--data-dir").arg(&c.node(via).data_dir).args(tail).env_remove("SHOAL_TOKEN");
    run(&mut cmd, timeout).unwrap_or_else(|e| panic!("{e}\n{}", c.report()))
}

/// Like [`cli`]; the command must succeed.
pub fn cli_ok(c: &Cluster, via: usize, head: &[&str], tail: &[&str], timeout: Duration) -> Output {
    let out = cli(c, via, head, tail, timeout);
    assert!(
        out.status.success(),
        "`shoal {} … {}` through {} failed ({}):\nstdout: {}\nstderr: {}\n{}",
        head.join(" "),
        tail.join(" "),
        c.node(via).name(),
        out.status,
        out.stdout.trim(),
        out.stderr.trim(),
        c.report()
    );
    out
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, out: &Output) -> Result<T, String> {
    if !out.status.success() {
        return Err(format!("`{what}` failed ({}): {}", out.status, out.stderr.trim()));
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("`{what} --format json` printed something else ({e}): {}", out.stdout.trim()))
}

/// `service ls --format json` through `via`.
pub fn service_ls(c: &Cluster, via: usize) -> Result<Vec<ServiceRow>, String> {
    parse("service ls", &cli(c, via, &["service", "ls", "--format", "json"], &[], SERVICE_CLI_TIMEOUT))
}

/// `service ps NAME --format json` through `via`.
pub fn service_ps(c: &Cluster, via: usize, name: &str) -> Result<Vec<TaskRow>, String> {
    parse("service ps", &cli(c, via, &["service", "ps", "--format", "json"], &[name], SERVICE_CLI_TIMEOUT))
}

/// Every node in the cluster sees every other with a working Docker Engine (the gossiped
/// `resources.engine_ok` in `members --format json`), so the scheduler may place on all.
pub fn engines_ok(c: &Cluster, idx: &[usize], ids: &[String]) -> bool {
    idx.iter().all(|&i| {
        let Ok(out) = c.node(i).shoal(&["members", "--format", "json"], crate::CLI_TIMEOUT) else { return false };
        let Ok(rows) = serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout) else { return false };
        ids.iter().all(|id| {
            rows.iter().any(|r| {
                r["id"].as_str() == Some(id.as_str())
                    && r["state"].as_str() == Some("alive")
                    && r["resources"]["engine_ok"].as_bool() == Some(true)
            })
        })
    })
}
