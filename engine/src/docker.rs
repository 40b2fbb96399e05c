//! The real engine: the local Docker Engine through bollard. Nothing is pulled unless the
//! node asks (`pull_image`, in `docker/images.rs` with the other image operations).
//!
//! bollard 0.21 speaks API 1.53 by default; `connect_local` negotiates down to what the
//! server speaks (e.g. 1.41 for Engine 20.10), otherwise every call would be refused.

mod exec;
mod images;
mod logs;
pub use exec::{ExecRequest, ExecSession, ExecStatus, EXEC_MAX_TEXT_BYTES, EXEC_MAX_WORDS};
pub use logs::{LogChunk, LogStream, LogsRequest};

use crate::engine::Engine;
use crate::image::{ImageExport, ImageId, ImageInfo, ImageStream, PullProgress};
use crate::types::{ContainerId, ContainerInfo, ContainerState, CreateRequest, EngineNetwork, LabelFilter, NetworkJoin, Owner, LABEL_NETWORK, STOP_GRACE_MS_MAX};
use crate::EngineError;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig, PortBinding};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;

/// How the real engine behaves.
#[derive(Debug, Clone, Copy)]
pub struct DockerConfig {
    /// Seconds a container gets after SIGTERM before it is killed on stop, unless it was
    /// created with a stop grace period of its own (`ContainerSpec::stop_grace_ms`, kept by
    /// Docker as the container's `StopTimeout`): then that one counts.
    pub stop_grace_s: u32,
    /// Seconds before any single request to the engine is abandoned.
    pub request_timeout_s: u64,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self { stop_grace_s: 10, request_timeout_s: 60 }
    }
}

/// The Docker Engine on this host.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    cfg: DockerConfig,
}

impl DockerEngine {
    /// Connects to the local engine (`DOCKER_HOST` or `/var/run/docker.sock`) and negotiates
    /// the API version down to the server's.
    pub async fn connect_local(cfg: DockerConfig) -> Result<Self, EngineError> {
        let docker = Docker::connect_with_local_defaults().map_err(map_err)?.with_timeout(std::time::Duration::from_secs(cfg.request_timeout_s));
        let docker = docker.negotiate_version().await.map_err(map_err)?;
        Ok(Self { docker, cfg })
    }

    /// Connects to the engine at a unix socket path (e.g. `/var/run/docker.sock`) and
    /// negotiates the API version.
    pub async fn connect_unix(path: &str, cfg: DockerConfig) -> Result<Self, EngineError> {
        let docker = Docker::connect_with_unix(path, cfg.request_timeout_s, bollard::API_DEFAULT_VERSION).map_err(map_err)?;
        let docker = docker.negotiate_version().await.map_err(map_err)?;
        Ok(Self { docker, cfg })
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        let v = self.docker.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }

    /// The bollard client, for what the port does not cover (building test images).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Builds an image tagged `tag` from a tar build context holding a `Dockerfile`, with
    /// the classic builder (Engine 20.10 has BuildKit only through a session). Nothing is
    /// pulled, so the Dockerfile must start `FROM scratch` or from a local image.
    pub async fn build_image(&self, tag: &str, context_tar: Vec<u8>) -> Result<(), EngineError> {
        let options = BuildImageOptionsBuilder::default().dockerfile("Dockerfile").t(tag).rm(true).forcerm(true).build();
        let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(context_tar.into())));
        while let Some(item) = stream.next().await {
            let info = item.map_err(map_err)?;
            if let Some(detail) = info.error_detail {
                let message = detail.message.unwrap_or_else(|| "build failed".to_string());
                return Err(EngineError::Api { status: 0, message });
            }
        }
        Ok(())
    }

    /// Removes an image by tag (force); a missing image is not an error.
    pub async fn remove_image(&self, tag: &str) -> Result<(), EngineError> {
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        match self.docker.remove_image(tag, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Creates the bridge `net` on this engine unless it is there (a name taken by a
    /// network that is not shoal's is refused, so shoal never joins someone else's).
    async fn ensure_network(&self, net: &NetworkJoin) -> Result<(), EngineError> {
        match self.docker.inspect_network(&net.name, None::<bollard::query_parameters::InspectNetworkOptions>).await {
            Ok(found) => {
                let ours = found.labels.as_ref().and_then(|l| l.get(LABEL_NETWORK)).is_some();
                if ours {
                    return Ok(());
                }
                return Err(EngineError::InvalidSpec(format!(
                    "this node's engine already has a network named {} that is not shoal's; remove or rename it",
                    net.name
                )));
            }
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(map_err(e)),
        }
        let config = NetworkCreateRequest {
            name: net.name.clone(),
            driver: Some("bridge".to_string()),
            attachable: Some(true),
            labels: Some(HashMap::from([(LABEL_NETWORK.to_string(), net.id.clone())])),
            ..Default::default()
        };
        match self.docker.create_network(config).await {
            Ok(_) => Ok(()),
            // Created meanwhile by another agent on this engine.
            Err(BollardError::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn inspect_state(&self, id: &str) -> Result<ContainerState, EngineError> {
        match self.docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(resp) => Ok(resp.state.map_or(ContainerState::Missing, state_from_inspect)),
            Err(e) if status_of(&e) == Some(404) => Ok(ContainerState::Missing),
            Err(e) => Err(map_err(e)),
        }
    }
}

/// Maps Docker's inspect state onto the port's states.
fn state_from_inspect(s: bollard::models::ContainerState) -> ContainerState {
    let error = s.error.filter(|e| !e.is_empty());
    let code = s.exit_code.unwrap_or(0);
    match s.status {
        Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Running,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Starting,
        Some(ContainerStateStatusEnum::CREATED) => match error {
            // A failed start leaves the container `created` with the error set.
            Some(reason) => ContainerState::Failed { reason },
            None => ContainerState::Created,
        },
        Some(ContainerStateStatusEnum::DEAD) => ContainerState::Failed { reason: error.unwrap_or_else(|| "container is dead".to_string()) },
        Some(ContainerStateStatusEnum::REMOVING) => ContainerState::Missing,
        _ => {
            if s.oom_killed == Some(true) {
                ContainerState::Failed { reason: format!("killed: out of memory (exit code {code})") }
            } else if let Some(reason) = error {
                ContainerState::Failed { reason }
            } else {
                ContainerState::Exited { code }
            }
        }
    }
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Maps a bollard error onto the port's errors (callers handle the cases where a status
/// means something specific, such as 404 on create).
fn map_err(e: BollardError) -> EngineError {
    match e {
        BollardError::DockerResponseServerError { status_code, message } => EngineError::Api { status: status_code, message },
        BollardError::SocketNotFoundError(path) => EngineError::Unavailable(format!("no Docker socket at {path}")),
        BollardError::RequestTimeoutError => EngineError::Unavailable("request to the Docker Engine timed out".to_string()),
        other @ (BollardError::HyperResponseError { .. } | BollardError::IOError { .. } | BollardError::HyperLegacyError { .. }) => {
            EngineError::Unavailable(other.to_string())
        }
        other => EngineError::Api { status: 0, message: other.to_string() },
    }
}

impl Engine for DockerEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await.map(|_| ()).map_err(map_err)
    }

    async fn list(&self, filter: &LabelFilter) -> Result<Vec<ContainerInfo>, EngineError> {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([("label", filter.label_pairs())]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let summaries = self.docker.list_containers(Some(options)).await.map_err(map_err)?;
        let mut out = Vec::with_capacity(summaries.len());
        for s in summaries {
            let Some(id) = s.id else { continue };
            let labels = s.labels.unwrap_or_default();
            let Some(owner) = Owner::from_labels(|k| labels.get(k).map(String::as_str)) else { continue };
            if !filter.matches(&owner) {
                continue;
            }
            let name = s.names.and_then(|n| n.into_iter().next()).map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default();
            // The summary has no exit code or error: ask for those when not running.
            let state = match s.state {
                Some(ContainerSummaryStateEnum::RUNNING) => ContainerState::Running,
                _ => self.inspect_state(&id).await?,
            };
            if state == ContainerState::Missing {
                continue; // removed between the list and the inspect
            }
            out.push(ContainerInfo { id: ContainerId(id), name, owner, state });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create(&self, req: &CreateRequest) -> Result<ContainerId, EngineError> {
        req.validate()?;
        let name = req.owner.container_name();
        let spec = &req.spec;
        let labels: HashMap<String, String> = req.owner.labels().into_iter().collect();
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut host = HostConfig::default();
        let mut networking = None;
        if let Some(net) = &req.network {
            self.ensure_network(net).await?;
            host.network_mode = Some(net.name.clone());
            let endpoint = EndpointSettings { aliases: Some(net.aliases.clone()), ..Default::default() };
            networking = Some(NetworkingConfig { endpoints_config: Some(HashMap::from([(net.name.clone(), endpoint)])) });
        }
        if spec.ports.is_empty() {
            if req.network.is_none() {
                host.network_mode = Some("none".to_string());
            }
        } else {
            let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
            for p in &spec.ports {
                let key = format!("{}/{}", p.container_port, p.protocol.as_str());
                let binding = PortBinding { host_ip: None, host_port: Some(p.host_port.to_string()) };
                bindings.entry(key).or_insert_with(|| Some(Vec::new())).get_or_insert_with(Vec::new).push(binding);
            }
            host.port_bindings = Some(bindings);
        }
        if spec.cpu_millis > 0 {
            host.nano_cpus = Some(i64::try_from(spec.cpu_millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX));
        }
        if spec.memory_bytes > 0 {
            host.memory = Some(i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX));
        }
        let exposed: Vec<String> = spec.ports.iter().map(|p| format!("{}/{}", p.container_port, p.protocol.as_str())).collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: (!env.is_empty()).then_some(env),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            stop_timeout: spec.stop_grace_secs().map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            host_config: Some(host),
            networking_config: networking,
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(resp) => Ok(ContainerId(resp.id)),
            Err(BollardError::DockerResponseServerError { status_code: 404, message }) if message.contains("image") => {
                Err(EngineError::ImageNotFound { image: spec.image.clone() })
            }
            Err(BollardError::DockerResponseServerError { status_code: 409, .. }) => Err(EngineError::NameInUse(name)),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn networks(&self) -> Result<Vec<EngineNetwork>, EngineError> {
        let filters = HashMap::from([("label".to_string(), vec![LABEL_NETWORK.to_string()])]);
        let options = bollard::query_parameters::ListNetworksOptions { filters: Some(filters) };
        let list = self.docker.list_networks(Some(options)).await.map_err(map_err)?;
        let mut out: Vec<EngineNetwork> = list
            .into_iter()
            .filter_map(|n| {
                let id = n.labels.as_ref()?.get(LABEL_NETWORK)?.clone();
                Some(EngineNetwork { name: n.name?, id })
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn start(&self, id: &ContainerId) -> Result<(), EngineError> {
        match self.docker.start_container(&id.0, None).await {
            Ok(()) => Ok(()),
            Err(e) => match status_of(&e) {
                Some(304) => Ok(()), // already running
                Some(404) => Err(EngineError::NoSuchContainer(id.0.clone())),
                Some(_) => {
                    let reason = match e {
                        BollardError::DockerResponseServerError { message, .. } => message,
                        other => other.to_string(),
                    };
                    Err(EngineError::StartFailed { container: id.to_string(), reason })
                }
                None => Err(map_err(e)),
            },
        }
    }

    async fn stop_and_remove(&self, id: &ContainerId) -> Result<(), EngineError> {
        // The container's own grace period (its StopTimeout) if it has one, bounded.
        let own = match self.docker.inspect_container(&id.0, None::<InspectContainerOptions>).await {
            Ok(resp) => resp.config.and_then(|c| c.stop_timeout),
            Err(e) if status_of(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(map_err(e)),
        };
        let grace_s = own.map_or(u64::from(self.cfg.stop_grace_s), |s| u64::try_from(s).unwrap_or(0).min(STOP_GRACE_MS_MAX / 1000));
        let stop = StopContainerOptionsBuilder::default().t(i32::try_from(grace_s).unwrap_or(i32::MAX)).build();
        // The stop answers once the container is down: give the request the grace on top.
        let docker = self.docker.clone().with_timeout(std::time::Duration::from_secs(grace_s.saturating_add(self.cfg.request_timeout_s)));
        match docker.stop_container(&id.0, Some(stop)).await {
            Ok(()) => {}
            Err(e) => match status_of(&e) {
                Some(304) => {}             // not running
                Some(404) => return Ok(()), // already gone
                _ => return Err(map_err(e)),
            },
        }
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(&id.0, Some(remove)).await {
            Ok(()) => Ok(()),
            // 404: gone; 409: removal already in progress.
            Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn inspect(&self, id: &ContainerId) -> Result<ContainerState, EngineError> {
        self.inspect_state(&id.0).await
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        self.list_images().await
    }

    async fn resolve_image(&self, reference: &str) -> Result<Option<ImageId>, EngineError> {
        self.resolve(reference).await
    }

    async fn export_image(&self, id: &ImageId, tags: &[String]) -> Result<ImageExport, EngineError> {
        self.export(id, tags).await
    }

    async fn import_image(&self, id: &ImageId, tags: &[String], max_bytes: u64, chunks: ImageStream) -> Result<ImageInfo, EngineError> {
        self.import(id, tags, max_bytes, chunks).await
    }

    async fn pull_image<P>(&self, reference: &str, progress: P) -> Result<ImageId, EngineError>
    where
        P: FnMut(PullProgress) + Send,
    {
        self.pull(reference, progress).await
    }
}
