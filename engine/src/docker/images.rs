//! Images on the real engine: list, resolve, `docker save` as a stream, `docker load` from
//! a bounded stream checked against the expected id and tags (and undone when it is not
//! that image), and pull with progress. The only place shoal asks Docker to pull.
//!
//! Docker 20.10 (the legacy image store) unpacks a whole `load` upload into a temporary
//! directory before it registers anything, so an upload that is cut off, too large or not
//! an archive leaves nothing behind; it also answers a load only once the upload is
//! unpacked, so transfers use a client whose request timeout is [`TRANSFER_TIMEOUT`].

use super::{map_err, status_of, DockerEngine};
use crate::image::{check_tags, import_limit, short_reason, split_tag, validate_reference, with_default_tag, ImageExport, ImageId, ImageInfo, ImageStream, PullProgress};
use crate::EngineError;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{CreateImageOptionsBuilder, ImportImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Request timeout for image transfers and pulls: the engine answers a load only after the
/// whole upload is unpacked, and a save only once the archive is ready, which for a large
/// image over a slow link takes long. The caller bounds a stalled transfer on its side.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Why an upload was cut off on our side, if it was.
type Abort = Arc<Mutex<Option<EngineError>>>;

impl DockerEngine {
    fn transfer_client(&self) -> Docker {
        self.docker.clone().with_timeout(TRANSFER_TIMEOUT)
    }

    pub(super) async fn list_images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        let options = ListImagesOptionsBuilder::default().all(false).build();
        let summaries = self.docker.list_images(Some(options)).await.map_err(map_err)?;
        let mut out: Vec<ImageInfo> = summaries
            .into_iter()
            .map(|s| {
                let mut tags: Vec<String> = s.repo_tags.into_iter().filter(|t| t != "<none>:<none>").collect();
                tags.sort();
                ImageInfo { id: ImageId(s.id), tags, size_bytes: u64::try_from(s.size).unwrap_or(0) }
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub(super) async fn resolve(&self, reference: &str) -> Result<Option<ImageId>, EngineError> {
        validate_reference(reference)?;
        match self.docker.inspect_image(reference).await {
            Ok(inspect) => Ok(inspect.id.map(ImageId)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(BollardError::DockerResponseServerError { status_code: 400, message }) => {
                Err(EngineError::InvalidImageReference { reference: reference.to_string(), reason: message })
            }
            Err(e) => Err(map_err(e)),
        }
    }

    pub(super) async fn export(&self, id: &ImageId, tags: &[String]) -> Result<ImageExport, EngineError> {
        check_tags(tags)?;
        if ImageId::parse(&id.0).is_none() {
            return Err(EngineError::InvalidImageReference { reference: id.0.clone(), reason: "an export names the image by its full id (sha256:…)".to_string() });
        }
        let inspect = match self.docker.inspect_image(&id.0).await {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => return Err(EngineError::ImageNotFound { image: id.0.clone() }),
            Err(e) => return Err(map_err(e)),
        };
        if inspect.id.as_deref() != Some(id.0.as_str()) {
            return Err(EngineError::ImageNotFound { image: id.0.clone() });
        }
        let has: BTreeSet<String> = inspect.repo_tags.unwrap_or_default().into_iter().collect();
        let tags: BTreeSet<String> = tags.iter().map(|t| with_default_tag(t)).collect();
        if let Some(t) = tags.iter().find(|t| !has.contains(*t)) {
            return Err(EngineError::ImageNotFound { image: format!("{t} (as a tag of {id})") });
        }
        // Saved by tag, the archive carries those tags; by id, none.
        let names: Vec<&str> = if tags.is_empty() { vec![id.0.as_str()] } else { tags.iter().map(String::as_str).collect() };
        let chunks = self.transfer_client().export_images(&names).map(|r| r.map_err(|e| std::io::Error::other(map_err(e).to_string())));
        let size_bytes = inspect.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
        let image = ImageInfo { id: id.clone(), tags: tags.into_iter().collect(), size_bytes };
        Ok(ImageExport { image, total_bytes: None, chunks: Box::pin(chunks) })
    }

    pub(super) async fn import(&self, id: &ImageId, tags: &[String], max_bytes: u64, chunks: ImageStream) -> Result<ImageInfo, EngineError> {
        check_tags(tags)?;
        if ImageId::parse(&id.0).is_none() {
            return Err(EngineError::InvalidImageReference { reference: id.0.clone(), reason: "an import expects a full image id (sha256:…)".to_string() });
        }
        let expected_tags: BTreeSet<String> = tags.iter().map(|t| with_default_tag(t)).collect();
        let limit = import_limit(max_bytes);
        let before = self.list_images().await?;
        let abort: Abort = Arc::new(Mutex::new(None));
        let body = bounded(chunks, limit, abort.clone());
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut out = self.transfer_client().import_image_stream(options, body, None);
        let (mut loaded_tags, mut loaded_ids) = (BTreeSet::new(), BTreeSet::new());
        let mut failure = None;
        while let Some(item) = out.next().await {
            match item {
                Ok(info) => {
                    for line in info.stream.as_deref().unwrap_or("").lines() {
                        if let Some(i) = line.strip_prefix("Loaded image ID: ") {
                            loaded_ids.insert(ImageId(i.trim().to_string()));
                        } else if let Some(t) = line.strip_prefix("Loaded image: ") {
                            loaded_tags.insert(t.trim().to_string());
                        }
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(out);
        if let Some(err) = abort.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(err);
        }
        if let Some(e) = failure {
            return Err(match e {
                BollardError::DockerStreamError { error } => EngineError::ImportFailed { reason: short_reason(&error) },
                BollardError::DockerResponseServerError { message, .. } => EngineError::ImportFailed { reason: short_reason(&message) },
                // The engine may close the upload as soon as it sees the bytes are no
                // archive: if it still answers, that is what happened.
                other => match self.docker.ping().await {
                    Ok(_) => EngineError::ImportFailed { reason: format!("the engine closed the upload: {other}") },
                    Err(_) => map_err(other),
                },
            });
        }

        let now = self.list_images().await?;
        let now_by_tag: BTreeMap<&str, &ImageId> = now.iter().flat_map(|i| i.tags.iter().map(move |t| (t.as_str(), &i.id))).collect();
        let tags_ok = expected_tags.iter().all(|t| now_by_tag.get(t.as_str()) == Some(&id));
        let archive_ok = if expected_tags.is_empty() { loaded_tags.is_empty() && loaded_ids.iter().all(|i| i == id) } else { loaded_tags == expected_tags && loaded_ids.is_empty() };
        if let (true, true, Some(info)) = (tags_ok, archive_ok, now.iter().find(|i| i.id == *id)) {
            return Ok(info.clone());
        }
        let mut found: Vec<String> = loaded_ids.iter().map(|i| i.0.clone()).collect();
        found.extend(loaded_tags.iter().map(|t| format!("{t} = {}", now_by_tag.get(t.as_str()).map_or("?".to_string(), |i| i.0.clone()))));
        let found = if found.is_empty() { "no image".to_string() } else { found.join(", ") };
        let expected = format!("{} tagged [{}]", id.0, expected_tags.iter().cloned().collect::<Vec<_>>().join(", "));
        self.undo_load(&before, &now, &loaded_tags, &loaded_ids).await;
        Err(EngineError::ImportMismatch { expected, found })
    }

    /// Puts tags the load moved back where they were, takes off tags it added, and removes
    /// images it brought. Best effort: each failure is logged.
    async fn undo_load(&self, before: &[ImageInfo], now: &[ImageInfo], loaded_tags: &BTreeSet<String>, loaded_ids: &BTreeSet<ImageId>) {
        let before_ids: BTreeSet<&ImageId> = before.iter().map(|i| &i.id).collect();
        let before_by_tag: BTreeMap<&str, &ImageId> = before.iter().flat_map(|i| i.tags.iter().map(move |t| (t.as_str(), &i.id))).collect();
        let now_by_tag: BTreeMap<&str, &ImageId> = now.iter().flat_map(|i| i.tags.iter().map(move |t| (t.as_str(), &i.id))).collect();
        let mut brought: BTreeSet<ImageId> = loaded_ids.iter().filter(|i| !before_ids.contains(i)).cloned().collect();
        for tag in loaded_tags {
            let current = now_by_tag.get(tag.as_str()).copied();
            if let Some(c) = current.filter(|c| !before_ids.contains(c)) {
                brought.insert(c.clone());
            }
            let result = match (before_by_tag.get(tag.as_str()), split_tag(tag)) {
                (Some(prev), Some((repo, t))) if current != Some(*prev) => {
                    let options = TagImageOptionsBuilder::default().repo(repo).tag(t).build();
                    self.docker.tag_image(&prev.0, Some(options)).await
                }
                (Some(_), _) => Ok(()),
                (None, _) => self.docker.remove_image(tag, Some(RemoveImageOptionsBuilder::default().build()), None).await.map(|_| ()),
            };
            if let Err(e) = result {
                tracing::warn!(tag, error = %e, "could not put an image tag back after a rejected load");
            }
        }
        for id in brought {
            let options = RemoveImageOptionsBuilder::default().force(true).build();
            match self.docker.remove_image(&id.0, Some(options), None).await {
                Ok(_) => {}
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => tracing::warn!(%id, error = %e, "could not remove an image a rejected load brought"),
            }
        }
    }

    pub(super) async fn pull<P>(&self, reference: &str, mut progress: P) -> Result<ImageId, EngineError>
    where
        P: FnMut(PullProgress) + Send,
    {
        validate_reference(reference)?;
        // Without a tag Docker would pull every tag of the repository.
        let wanted = with_default_tag(reference);
        let failed = |reason: String| EngineError::PullFailed { image: wanted.clone(), reason };
        let options = CreateImageOptionsBuilder::default().from_image(&wanted).build();
        let mut stream = self.transfer_client().create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let detail = info.progress_detail.unwrap_or_default();
                    progress(PullProgress {
                        layer: info.id,
                        status: info.status.unwrap_or_default(),
                        current_bytes: detail.current.and_then(|c| u64::try_from(c).ok()),
                        total_bytes: detail.total.and_then(|t| u64::try_from(t).ok()),
                    });
                }
                Err(BollardError::DockerStreamError { error }) => return Err(failed(short_reason(&error))),
                Err(BollardError::DockerResponseServerError { message, .. }) => return Err(failed(short_reason(&message))),
                Err(e) => return Err(map_err(e)),
            }
        }
        match self.resolve(&wanted).await? {
            Some(id) => Ok(id),
            None => Err(failed("the engine reported the pull done but does not hold the image".to_string())),
        }
    }
}

/// `chunks`, ending with an error at the first chunk past `limit` bytes in all, or at the
/// first chunk error; the reason is left in `abort` (the engine's own error for a cut-off
/// upload says less).
fn bounded(chunks: ImageStream, limit: u64, abort: Abort) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold((chunks, 0u64, false), move |(mut chunks, total, stopped)| {
        let abort = abort.clone();
        async move {
            if stopped {
                return None;
            }
            let set = |err: EngineError| *abort.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
            match chunks.next().await? {
                Ok(chunk) => {
                    let total = total.saturating_add(chunk.len() as u64);
                    if total > limit {
                        set(EngineError::ImportTooLarge { limit_bytes: limit });
                        Some((Err(std::io::Error::other(format!("image archive larger than {limit} bytes"))), (chunks, total, true)))
                    } else {
                        Some((Ok(chunk), (chunks, total, false)))
                    }
                }
                Err(e) => {
                    set(EngineError::TransferFailed(e.to_string()));
                    Some((Err(e), (chunks, total, true)))
                }
            }
        }
    })
}
