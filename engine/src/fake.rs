//! An in-memory container engine for the simulator and for tests: containers start after a
//! delay, and exit or crash when told to or when their scripted behaviour says so, all on a
//! clock the caller sets (`set_now_ms`). No wall clock, no randomness, only ordered maps.
//!
//! Images are content-addressed like Docker's: an image is a seed (the name it was added or
//! pulled under) and a deterministic layer of `size_bytes`; its id is the SHA-256 of both,
//! so the same name gives the same id on every fake engine. `export_image` writes a small
//! tar (layer, then a manifest with the id and tags) that `import_image` checks byte for
//! byte; `pull_image` succeeds only for what was put in the fake's registry.

use crate::engine::Engine;
use crate::image::{check_tags, import_limit, short_reason, validate_reference, with_default_tag, ImageExport, ImageId, ImageInfo, ImageStream, PullProgress};
use crate::types::{ContainerId, ContainerInfo, ContainerState, CreateRequest, EngineNetwork, LabelFilter, Owner};
use crate::EngineError;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};

/// Layer size of an image added with [`FakeEngine::add_image`] or pulled from the fake
/// registry: small, so the simulator moves images around cheaply.
pub const FAKE_IMAGE_BYTES_DEFAULT: u64 = 4096;
/// Largest fake layer (`add_image_sized`): the fake keeps layers in memory.
pub const FAKE_IMAGE_BYTES_MAX: u64 = 64 << 20;
/// Chunk size of a fake export stream.
const FAKE_CHUNK_BYTES: usize = 64 << 10;
/// Name of the archive entry with the image's bytes, and of the one describing it.
const ARCHIVE_LAYER: &str = "layer";
const ARCHIVE_MANIFEST: &str = "manifest";

/// What a fake container's process does once it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs until stopped.
    RunForever,
    /// Exits by itself with `code`, `after_ms` after it started running.
    ExitAfter { after_ms: u64, code: i64 },
    /// Cannot start (like a command missing from the image): `start` fails with
    /// `StartFailed` and the container is left failed.
    FailToStart,
}

#[derive(Debug, Clone)]
struct FakeContainer {
    name: String,
    owner: Owner,
    command: Vec<String>,
    state: FakeState,
    /// The network it joined, if any (by name).
    network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FakeState {
    Created,
    /// Started at `since_ms`, runs once `now >= since_ms + start_delay_ms`.
    Starting { since_ms: u64 },
    Running { since_ms: u64 },
    Exited { code: i64 },
    Failed { reason: String },
}

/// One fake image: what its bytes are made from, and its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FakeImage {
    seed: String,
    size_bytes: u64,
    tags: BTreeSet<String>,
}

/// The deterministic layer of an image: SHA-256(seed) repeated up to `size_bytes`.
fn fake_layer(seed: &str, size_bytes: u64) -> Vec<u8> {
    let block = Sha256::digest(seed.as_bytes());
    let len = usize::try_from(size_bytes.min(FAKE_IMAGE_BYTES_MAX)).unwrap_or(0);
    block.iter().copied().cycle().take(len).collect()
}

/// The id of an image made of `seed` and `layer`.
fn fake_image_id(seed: &str, layer: &[u8]) -> ImageId {
    let mut h = Sha256::new();
    h.update(b"shoal fake image v1\n");
    h.update(seed.as_bytes());
    h.update(b"\n");
    h.update(Sha256::digest(layer));
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    ImageId(format!("sha256:{hex}"))
}

/// What a fake archive says about itself.
struct Manifest {
    id: String,
    seed: String,
    tags: BTreeSet<String>,
}

/// Reads a fake archive completely; any defect (not a tar, truncated, a missing part,
/// content not matching the id it claims) is an `ImportFailed`.
fn read_archive(bytes: &[u8]) -> Result<(Manifest, Vec<u8>), EngineError> {
    let failed = |reason: String| EngineError::ImportFailed { reason: short_reason(&reason) };
    let mut layer = None;
    let mut manifest = None;
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().map_err(|e| failed(format!("not an image archive: {e}")))? {
        let mut entry = entry.map_err(|e| failed(format!("not an image archive: {e}")))?;
        let path = entry.path().map_err(|e| failed(e.to_string()))?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| failed(format!("archive entry {path}: {e}")))?;
        match path.as_str() {
            ARCHIVE_LAYER => layer = Some(data),
            ARCHIVE_MANIFEST => manifest = Some(String::from_utf8(data).map_err(|_| failed("manifest is not text".to_string()))?),
            other => return Err(failed(format!("unexpected archive entry {other:?}"))),
        }
    }
    let (Some(layer), Some(text)) = (layer, manifest) else {
        return Err(failed("archive incomplete: no layer or no manifest".to_string()));
    };
    let (mut id, mut seed, mut tags) = (None, None, BTreeSet::new());
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("seed", v)) => seed = Some(v.to_string()),
            Some(("tag", v)) => {
                tags.insert(v.to_string());
            }
            _ => return Err(failed(format!("bad manifest line {line:?}"))),
        }
    }
    let (Some(id), Some(seed)) = (id, seed) else {
        return Err(failed("manifest without id or seed".to_string()));
    };
    if fake_image_id(&seed, &layer).0 != id {
        return Err(failed(format!("content does not match its id {id}")));
    }
    Ok((Manifest { id, seed, tags }, layer))
}

#[derive(Debug)]
struct Inner {
    now_ms: u64,
    start_delay_ms: u64,
    healthy: bool,
    images: BTreeMap<ImageId, FakeImage>,
    /// What `pull_image` can get: tag → (seed, size).
    registry: BTreeMap<String, (String, u64)>,
    registry_reachable: bool,
    behaviours: BTreeMap<Vec<String>, Behaviour>,
    containers: BTreeMap<ContainerId, FakeContainer>,
    /// shoal's networks: name → cluster id.
    networks: BTreeMap<String, String>,
    next_id: u64,
}

impl Inner {
    /// Moves every container along to `now_ms`.
    fn settle(&mut self) {
        let now = self.now_ms;
        let delay = self.start_delay_ms;
        for c in self.containers.values_mut() {
            if let FakeState::Starting { since_ms } = c.state {
                if now >= since_ms.saturating_add(delay) {
                    c.state = FakeState::Running { since_ms: since_ms.saturating_add(delay) };
                }
            }
            if let FakeState::Running { since_ms } = c.state {
                let behaviour = self.behaviours.get(&c.command).copied().unwrap_or(Behaviour::RunForever);
                if let Behaviour::ExitAfter { after_ms, code } = behaviour {
                    if now >= since_ms.saturating_add(after_ms) {
                        c.state = FakeState::Exited { code };
                    }
                }
            }
        }
    }

    fn check_healthy(&self) -> Result<(), EngineError> {
        if self.healthy {
            Ok(())
        } else {
            Err(EngineError::Unavailable("fake engine is down".to_string()))
        }
    }

    /// The id `reference` names here: a tag (`name` = `name:latest`), else a unique prefix
    /// of an id (with or without `sha256:`).
    fn resolve(&self, reference: &str) -> Option<ImageId> {
        let tag = with_default_tag(reference);
        if let Some((id, _)) = self.images.iter().find(|(_, img)| img.tags.contains(&tag)) {
            return Some(id.clone());
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut hits = self.images.keys().filter(|id| id.0.strip_prefix("sha256:").is_some_and(|h| h.starts_with(hex)));
        match (hits.next(), hits.next()) {
            (Some(id), None) => Some(id.clone()),
            _ => None,
        }
    }

    /// Adds an image (or more tags to it); a tag moves off any other image, as in Docker.
    fn register(&mut self, id: ImageId, seed: String, size_bytes: u64, tags: BTreeSet<String>) -> ImageInfo {
        for img in self.images.values_mut() {
            img.tags.retain(|t| !tags.contains(t));
        }
        let img = self.images.entry(id.clone()).or_insert_with(|| FakeImage { seed, size_bytes, tags: BTreeSet::new() });
        img.tags.extend(tags);
        ImageInfo { id, tags: img.tags.iter().cloned().collect(), size_bytes: img.size_bytes }
    }

    fn state_of(c: &FakeContainer) -> ContainerState {
        match &c.state {
            FakeState::Created => ContainerState::Created,
            FakeState::Starting { .. } => ContainerState::Starting,
            FakeState::Running { .. } => ContainerState::Running,
            FakeState::Exited { code } => ContainerState::Exited { code: *code },
            FakeState::Failed { reason } => ContainerState::Failed { reason: reason.clone() },
        }
    }
}

/// The fake engine. Cheap to clone; clones share the same containers (like several agents
/// sharing one host's Docker Engine).
#[derive(Debug, Clone)]
pub struct FakeEngine {
    inner: Arc<Mutex<Inner>>,
}

impl FakeEngine {
    /// An engine at time 0 whose containers take `start_delay_ms` to start.
    pub fn new(start_delay_ms: u64) -> Self {
        let inner = Inner {
            now_ms: 0,
            start_delay_ms,
            healthy: true,
            images: BTreeMap::new(),
            registry: BTreeMap::new(),
            registry_reachable: true,
            behaviours: BTreeMap::new(),
            containers: BTreeMap::new(),
            networks: BTreeMap::new(),
            next_id: 1,
        };
        Self { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts image `name` (`name` meaning `name:latest`) on this engine, with a layer of
    /// [`FAKE_IMAGE_BYTES_DEFAULT`] bytes; the same name gives the same id on every fake.
    /// Returns its id.
    pub fn add_image(&self, name: impl Into<String>) -> ImageId {
        self.add_image_sized(name, FAKE_IMAGE_BYTES_DEFAULT)
    }

    /// [`Self::add_image`] with a layer of `size_bytes` (at most [`FAKE_IMAGE_BYTES_MAX`]).
    pub fn add_image_sized(&self, name: impl Into<String>, size_bytes: u64) -> ImageId {
        let tag = with_default_tag(&name.into());
        let size_bytes = size_bytes.min(FAKE_IMAGE_BYTES_MAX);
        let id = fake_image_id(&tag, &fake_layer(&tag, size_bytes));
        self.lock().register(id.clone(), tag.clone(), size_bytes, BTreeSet::from([tag]));
        id
    }

    /// Removes a tag (`name` = `name:latest`; the image goes once untagged, as
    /// `docker rmi`), or an image by full id with all its tags. False if neither is here.
    pub fn remove_image(&self, reference: &str) -> bool {
        let mut inner = self.lock();
        let tag = with_default_tag(reference);
        let by_tag = inner.images.iter().find(|(_, img)| img.tags.contains(&tag)).map(|(id, _)| id.clone());
        if let Some(id) = by_tag {
            let now_untagged = inner.images.get_mut(&id).is_some_and(|img| {
                img.tags.remove(&tag);
                img.tags.is_empty()
            });
            if now_untagged {
                inner.images.remove(&id);
            }
            return true;
        }
        inner.images.remove(&ImageId(reference.to_string())).is_some()
    }

    /// Tags the local image `reference` names as `tag` too (`docker tag`; the tag moves
    /// off any other image). False if `reference` names no image here.
    pub fn tag_image(&self, reference: &str, tag: &str) -> bool {
        let mut inner = self.lock();
        let Some(id) = inner.resolve(reference) else { return false };
        let Some(img) = inner.images.get(&id).cloned() else { return false };
        inner.register(id, img.seed, img.size_bytes, BTreeSet::from([with_default_tag(tag)]));
        true
    }

    /// Puts image `name` in this engine's registry, so `pull_image(name)` gets it (the
    /// same image, same id, that `add_image(name)` makes).
    pub fn add_registry_image(&self, name: &str) {
        let tag = with_default_tag(name);
        self.lock().registry.insert(tag.clone(), (tag, FAKE_IMAGE_BYTES_DEFAULT));
    }

    /// Registry down: every pull fails with `PullFailed` (registry unreachable).
    pub fn set_registry_reachable(&self, reachable: bool) {
        self.lock().registry_reachable = reachable;
    }

    /// Containers created with exactly this command behave like this (default: run forever).
    pub fn set_behaviour(&self, command: Vec<String>, behaviour: Behaviour) {
        self.lock().behaviours.insert(command, behaviour);
    }

    /// Sets the clock (never moves it backwards) and lets containers start and exit.
    pub fn set_now_ms(&self, now_ms: u64) {
        let mut inner = self.lock();
        inner.now_ms = inner.now_ms.max(now_ms);
        inner.settle();
    }

    pub fn now_ms(&self) -> u64 {
        self.lock().now_ms
    }

    /// Down engine: every call fails with `Unavailable` until set healthy again.
    pub fn set_healthy(&self, healthy: bool) {
        self.lock().healthy = healthy;
    }

    /// Makes a running (or starting) container exit with `code` now. False if it was not.
    pub fn exit(&self, id: &ContainerId, code: i64) -> bool {
        let mut inner = self.lock();
        inner.settle();
        match inner.containers.get_mut(id) {
            Some(c) if matches!(c.state, FakeState::Running { .. } | FakeState::Starting { .. }) => {
                c.state = FakeState::Exited { code };
                true
            }
            _ => false,
        }
    }

    /// Makes a container fail (the engine killed it, e.g. out of memory). False if unknown.
    pub fn crash(&self, id: &ContainerId, reason: impl Into<String>) -> bool {
        let mut inner = self.lock();
        match inner.containers.get_mut(id) {
            Some(c) => {
                c.state = FakeState::Failed { reason: reason.into() };
                true
            }
            None => false,
        }
    }

    /// Number of containers, of every owner and state.
    pub fn container_count(&self) -> usize {
        self.lock().containers.len()
    }
}

impl Engine for FakeEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        self.lock().check_healthy()
    }

    async fn list(&self, filter: &LabelFilter) -> Result<Vec<ContainerInfo>, EngineError> {
        let mut inner = self.lock();
        inner.check_healthy()?;
        inner.settle();
        let mut out: Vec<ContainerInfo> = inner
            .containers
            .iter()
            .filter(|(_, c)| filter.matches(&c.owner))
            .map(|(id, c)| ContainerInfo { id: id.clone(), name: c.name.clone(), owner: c.owner.clone(), state: Inner::state_of(c) })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create(&self, req: &CreateRequest) -> Result<ContainerId, EngineError> {
        req.validate()?;
        let mut inner = self.lock();
        inner.check_healthy()?;
        if inner.resolve(&req.spec.image).is_none() {
            return Err(EngineError::ImageNotFound { image: req.spec.image.clone() });
        }
        let name = req.owner.container_name();
        if inner.containers.values().any(|c| c.name == name) {
            return Err(EngineError::NameInUse(name));
        }
        let id = ContainerId(format!("fake-{}", inner.next_id));
        inner.next_id += 1;
        if let Some(net) = &req.network {
            inner.networks.entry(net.name.clone()).or_insert_with(|| net.id.clone());
        }
        let network = req.network.as_ref().map(|n| n.name.clone());
        let container = FakeContainer { name, owner: req.owner.clone(), command: req.spec.command.clone(), state: FakeState::Created, network };
        inner.containers.insert(id.clone(), container);
        Ok(id)
    }

    async fn networks(&self) -> Result<Vec<EngineNetwork>, EngineError> {
        let inner = self.lock();
        inner.check_healthy()?;
        Ok(inner.networks.iter().map(|(name, id)| EngineNetwork { name: name.clone(), id: id.clone() }).collect())
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.check_healthy()?;
        if inner.containers.values().any(|c| c.network.as_deref() == Some(name)) {
            return Err(EngineError::Api { status: 403, message: format!("error while removing network: network {name} has active endpoints") });
        }
        inner.networks.remove(name);
        Ok(())
    }

    async fn start(&self, id: &ContainerId) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.check_healthy()?;
        inner.settle();
        let now = inner.now_ms;
        let behaviours = &inner.behaviours;
        let Some(c) = inner.containers.get(id) else {
            return Err(EngineError::NoSuchContainer(id.0.clone()));
        };
        if behaviours.get(&c.command) == Some(&Behaviour::FailToStart) {
            let reason = format!("exec: {:?}: executable file not found", c.command.first().cloned().unwrap_or_default());
            if let Some(c) = inner.containers.get_mut(id) {
                c.state = FakeState::Failed { reason: reason.clone() };
            }
            return Err(EngineError::StartFailed { container: id.to_string(), reason });
        }
        let Some(c) = inner.containers.get_mut(id) else {
            return Err(EngineError::NoSuchContainer(id.0.clone()));
        };
        match c.state {
            FakeState::Starting { .. } | FakeState::Running { .. } => {}
            _ => c.state = FakeState::Starting { since_ms: now },
        }
        inner.settle();
        Ok(())
    }

    async fn stop_and_remove(&self, id: &ContainerId) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.check_healthy()?;
        inner.containers.remove(id);
        Ok(())
    }

    async fn inspect(&self, id: &ContainerId) -> Result<ContainerState, EngineError> {
        let mut inner = self.lock();
        inner.check_healthy()?;
        inner.settle();
        Ok(inner.containers.get(id).map_or(ContainerState::Missing, Inner::state_of))
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        let inner = self.lock();
        inner.check_healthy()?;
        Ok(inner.images.iter().map(|(id, img)| ImageInfo { id: id.clone(), tags: img.tags.iter().cloned().collect(), size_bytes: img.size_bytes }).collect())
    }

    async fn resolve_image(&self, reference: &str) -> Result<Option<ImageId>, EngineError> {
        validate_reference(reference)?;
        let inner = self.lock();
        inner.check_healthy()?;
        Ok(inner.resolve(reference))
    }

    async fn export_image(&self, id: &ImageId, tags: &[String]) -> Result<ImageExport, EngineError> {
        check_tags(tags)?;
        let (img, tags) = {
            let inner = self.lock();
            inner.check_healthy()?;
            let Some(img) = inner.images.get(id) else {
                return Err(EngineError::ImageNotFound { image: id.0.clone() });
            };
            let tags: BTreeSet<String> = tags.iter().map(|t| with_default_tag(t)).collect();
            if let Some(t) = tags.iter().find(|t| !img.tags.contains(*t)) {
                return Err(EngineError::ImageNotFound { image: format!("{t} (as a tag of {id})") });
            }
            (img.clone(), tags)
        };
        let layer = fake_layer(&img.seed, img.size_bytes);
        let mut manifest = format!("id {}\nseed {}\n", id.0, img.seed);
        for t in &tags {
            manifest.push_str(&format!("tag {t}\n"));
        }
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in [(ARCHIVE_LAYER, &layer[..]), (ARCHIVE_MANIFEST, manifest.as_bytes())] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append_data(&mut header, path, data).map_err(|e| EngineError::Api { status: 0, message: format!("fake archive: {e}") })?;
        }
        let archive = builder.into_inner().map_err(|e| EngineError::Api { status: 0, message: format!("fake archive: {e}") })?;
        let total = archive.len() as u64;
        let chunks: Vec<Result<Bytes, std::io::Error>> = archive.chunks(FAKE_CHUNK_BYTES).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let image = ImageInfo { id: id.clone(), tags: tags.into_iter().collect(), size_bytes: img.size_bytes };
        Ok(ImageExport { image, total_bytes: Some(total), chunks: Box::pin(futures_util::stream::iter(chunks)) })
    }

    async fn import_image(&self, id: &ImageId, tags: &[String], max_bytes: u64, mut chunks: ImageStream) -> Result<ImageInfo, EngineError> {
        check_tags(tags)?;
        self.lock().check_healthy()?;
        let limit = import_limit(max_bytes);
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| EngineError::TransferFailed(e.to_string()))?;
            if bytes.len() as u64 + chunk.len() as u64 > limit {
                return Err(EngineError::ImportTooLarge { limit_bytes: limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        let (manifest, layer) = read_archive(&bytes)?;
        let expected_tags: BTreeSet<String> = tags.iter().map(|t| with_default_tag(t)).collect();
        if manifest.id != id.0 || manifest.tags != expected_tags {
            let describe = |id: &str, tags: &BTreeSet<String>| format!("{id} tagged [{}]", tags.iter().cloned().collect::<Vec<_>>().join(", "));
            return Err(EngineError::ImportMismatch { expected: describe(&id.0, &expected_tags), found: describe(&manifest.id, &manifest.tags) });
        }
        let mut inner = self.lock();
        inner.check_healthy()?;
        Ok(inner.register(id.clone(), manifest.seed, layer.len() as u64, expected_tags))
    }

    async fn pull_image<P>(&self, reference: &str, mut progress: P) -> Result<ImageId, EngineError>
    where
        P: FnMut(PullProgress) + Send,
    {
        validate_reference(reference)?;
        let tag = with_default_tag(reference);
        let (seed, size) = {
            let inner = self.lock();
            inner.check_healthy()?;
            if !inner.registry_reachable {
                return Err(EngineError::PullFailed { image: reference.to_string(), reason: "the registry cannot be reached (fake registry down)".to_string() });
            }
            match inner.registry.get(&tag) {
                Some(found) => found.clone(),
                None => return Err(EngineError::PullFailed { image: reference.to_string(), reason: "manifest unknown: the registry does not have it".to_string() }),
            }
        };
        let layer = fake_layer(&seed, size);
        let id = fake_image_id(&seed, &layer);
        let short = id.to_string();
        let step = |status: &str, current: Option<u64>| PullProgress { layer: Some(short.clone()), status: status.to_string(), current_bytes: current, total_bytes: current.map(|_| size) };
        progress(step("Pulling fs layer", None));
        progress(step("Downloading", Some(size / 2)));
        progress(step("Downloading", Some(size)));
        progress(step("Pull complete", None));
        progress(PullProgress { layer: None, status: format!("Status: Downloaded newer image for {tag}"), current_bytes: None, total_bytes: None });
        let mut inner = self.lock();
        inner.check_healthy()?;
        inner.register(id.clone(), seed, size, BTreeSet::from([tag]));
        Ok(id)
    }
}

