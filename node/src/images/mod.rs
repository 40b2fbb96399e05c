//! Images that reach every node without a registry (issue 10): a node whose task needs an
//! image its engine lacks fetches it from a node that has it (`docker save` streamed over
//! node-to-node mutual TLS into `docker load`, verified by image id), else asks its engine to
//! pull it, else fails the task with a reason naming who was asked.
//!
//! - [`ImageStore`]: what the node needs from its container engine (list, resolve, export,
//!   import, pull); implemented for the Docker engine in [`docker_store`], and by an
//!   in-memory store in the tests.
//! - [`proto`]: the `shoal-image/1` protocol on the node's port (ALPN): list, fetch, push;
//!   control messages through `shoal_wire` with a bound, image bytes as length-prefixed
//!   chunks ended by an empty chunk, the total bounded by [`MAX_IMAGE_BYTES`].
//! - [`service`]: the server side, mounted on the node's [`PortServer`](crate::port::PortServer).
//! - [`acquire`]: which tasks wait for an image, which images to fetch, and the failure
//!   reports, as a pure plan; and the job that fetches, then pulls.

pub mod acquire;
pub mod docker_store;
pub mod ops;
pub mod proto;
pub mod service;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;

/// ALPN of the image protocol on the node's port.
pub const IMAGE_ALPN: &[u8] = b"shoal-image/1";
/// Largest image (as a `docker save` archive) sent or accepted. Transfers stream, so memory
/// does not grow with it; it bounds the disk a peer can make this node fill.
pub const MAX_IMAGE_BYTES: u64 = 32 << 30;
/// Largest chunk of image bytes in one frame.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// Most images one node lists; a longer list is cut (and says so).
pub const MAX_LISTED_IMAGES: usize = 2_000;
/// Most tags of one image carried; longest tag or reference.
pub const MAX_TAGS: usize = 64;
pub const MAX_REFERENCE_LEN: usize = 512;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use shoal_engine::ImageInfo;

/// Bounds on an image description a peer sent: a full id, valid tags, a size within
/// [`MAX_IMAGE_BYTES`].
pub fn validate(image: &ImageInfo) -> Result<(), String> {
    if shoal_engine::ImageId::parse(&image.id.0).is_none() {
        return Err("an image id must be sha256: and 64 hex digits".into());
    }
    if image.tags.len() > MAX_TAGS || image.tags.iter().any(|t| t.len() > MAX_REFERENCE_LEN) {
        return Err(format!("at most {MAX_TAGS} tags of at most {MAX_REFERENCE_LEN} bytes"));
    }
    shoal_engine::image::check_tags(&image.tags).map_err(|e| e.to_string())?;
    if image.size_bytes > MAX_IMAGE_BYTES {
        return Err(format!("images over {} GiB are not transferred", MAX_IMAGE_BYTES >> 30));
    }
    Ok(())
}

/// Whether `reference` names `image`: a tag (`name` meaning `name:latest`), the id, or an
/// id prefix of at least 12 hex digits.
pub fn matches(image: &ImageInfo, reference: &str) -> bool {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    let id_hex = image.id.0.strip_prefix("sha256:").unwrap_or(&image.id.0);
    if hex.len() >= 12 && hex.bytes().all(|c| c.is_ascii_hexdigit()) && id_hex.starts_with(hex) {
        return true;
    }
    let full = shoal_engine::image::with_default_tag(reference);
    image.tags.iter().any(|t| shoal_engine::image::with_default_tag(t) == full)
}

/// A stream of image bytes being read from an engine.
pub type ChunkReceiver = tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>;

/// What the image protocol needs from the node's container engine.
pub trait ImageStore: Send + Sync + 'static {
    /// Every local image.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ImageInfo>, String>>;
    /// The local image `reference` names, if any.
    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<Option<ImageInfo>, String>>;
    /// The image as a `docker save` archive, in chunks of at most [`MAX_CHUNK_BYTES`].
    fn export<'a>(&'a self, image: &'a ImageInfo) -> BoxFuture<'a, Result<ChunkReceiver, String>>;
    /// Loads an archive from `chunks`; succeeds only if the engine then holds `expected.id`
    /// (with its tags).
    fn import<'a>(&'a self, expected: &'a ImageInfo, chunks: ChunkReceiver) -> BoxFuture<'a, Result<(), String>>;
    /// Asks the engine to pull `reference` from its registry; `progress` gets one line per
    /// step worth showing.
    fn pull<'a>(&'a self, reference: &'a str, progress: &'a (dyn Fn(String) + Send + Sync)) -> BoxFuture<'a, Result<(), String>>;
}
