//! [`ImageStore`] over the engine port: [`EngineStore`] for any `shoal_engine::Engine`
//! (the Docker engine, or the fake in tests), and [`LocalDocker`], which connects to this
//! node's Docker Engine on first use (the agent may start before the engine does).

use super::{BoxFuture, ChunkReceiver, ImageInfo, ImageStore, MAX_IMAGE_BYTES};
use futures_util::StreamExt;
use shoal_engine::{DockerConfig, DockerEngine, Engine, ImageId};
use std::path::PathBuf;
use std::sync::Arc;

/// Chunks buffered between an engine's export and the network.
const EXPORT_CHUNKS: usize = 8;

/// An image store backed by an engine.
pub struct EngineStore<E>(pub Arc<E>);

/// Loads into this process's engine run one at a time: the engine port undoes a rejected
/// load by reading what `docker load` reported, which two loads at once could confuse.
static IMPORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl<E: Engine + Send + Sync + 'static> ImageStore for EngineStore<E> {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ImageInfo>, String>> {
        Box::pin(async move { self.0.images().await.map_err(|e| e.to_string()) })
    }

    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<Option<ImageInfo>, String>> {
        Box::pin(async move {
            let Some(id) = self.0.resolve_image(reference).await.map_err(|e| e.to_string())? else { return Ok(None) };
            let images = self.0.images().await.map_err(|e| e.to_string())?;
            Ok(images.into_iter().find(|i| i.id == id))
        })
    }

    fn export<'a>(&'a self, image: &'a ImageInfo) -> BoxFuture<'a, Result<ChunkReceiver, String>> {
        Box::pin(async move {
            let export = self.0.export_image(&image.id, &image.tags).await.map_err(|e| e.to_string())?;
            let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_CHUNKS);
            let mut chunks = export.chunks;
            // The engine's stream is read by a task of its own, so the network side only
            // waits on the channel.
            tokio::spawn(async move {
                while let Some(chunk) = chunks.next().await {
                    let item = chunk.map(|b| b.to_vec()).map_err(|e| format!("reading the image from the engine: {e}"));
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            });
            Ok(rx)
        })
    }

    fn import<'a>(&'a self, expected: &'a ImageInfo, chunks: ChunkReceiver) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let _one_at_a_time = IMPORTS.lock().await;
            let stream = futures_util::stream::unfold(chunks, |mut rx| async move {
                let item = rx.recv().await?;
                let item = item.map(bytes::Bytes::from).map_err(std::io::Error::other);
                Some((item, rx))
            });
            self.0
                .import_image(&expected.id, &expected.tags, MAX_IMAGE_BYTES, Box::pin(stream))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn pull<'a>(&'a self, reference: &'a str, progress: &'a (dyn Fn(String) + Send + Sync)) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut last_status = String::new();
            let on_step = |p: shoal_engine::PullProgress| {
                // One line per change of status (not per byte).
                if p.status != last_status {
                    let layer = p.layer.as_deref().map(|l| format!("{l}: ")).unwrap_or_default();
                    progress(format!("{layer}{}", p.status));
                    last_status = p.status;
                }
            };
            self.0.pull_image(reference, on_step).await.map(|_: ImageId| ()).map_err(|e| e.to_string())
        })
    }
}

/// This node's Docker Engine, connected on first use (and again after a failed connect).
pub struct LocalDocker {
    socket: Option<PathBuf>,
    engine: tokio::sync::Mutex<Option<Arc<EngineStore<DockerEngine>>>>,
}

impl LocalDocker {
    pub fn new(socket: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self { socket, engine: tokio::sync::Mutex::new(None) })
    }

    async fn get(&self) -> Result<Arc<EngineStore<DockerEngine>>, String> {
        let mut slot = self.engine.lock().await;
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let connected = match &self.socket {
            Some(path) => DockerEngine::connect_unix(&path.to_string_lossy(), DockerConfig::default()).await,
            None => DockerEngine::connect_local(DockerConfig::default()).await,
        }
        .map_err(|e| e.to_string())?;
        let store = Arc::new(EngineStore(Arc::new(connected)));
        *slot = Some(store.clone());
        Ok(store)
    }
}

impl ImageStore for LocalDocker {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ImageInfo>, String>> {
        Box::pin(async move { self.get().await?.list().await })
    }
    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<Option<ImageInfo>, String>> {
        Box::pin(async move { self.get().await?.resolve(reference).await })
    }
    fn export<'a>(&'a self, image: &'a ImageInfo) -> BoxFuture<'a, Result<ChunkReceiver, String>> {
        Box::pin(async move { self.get().await?.export(image).await })
    }
    fn import<'a>(&'a self, expected: &'a ImageInfo, chunks: ChunkReceiver) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.get().await?.import(expected, chunks).await })
    }
    fn pull<'a>(&'a self, reference: &'a str, progress: &'a (dyn Fn(String) + Send + Sync)) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.get().await?.pull(reference, progress).await })
    }
}
