//! The `shoal-image/1` protocol: one request per connection, over mutual TLS between
//! nodes of the cluster.
//!
//! ```text
//! List            →  Images(list)
//! Fetch(ref)      →  Header(image) chunk* end    |  NotFound(why)
//! Push(image)     →  Ready  chunk* end  → Done   |  AlreadyHave  |  Failed(why)
//!                    (chunks from the client)      (after the end: Done | Failed(why))
//! ```
//! A control message is a frame (`u32` length + `shoal_wire` body) within
//! [`MAX_MESSAGE_BYTES`]; a chunk is a frame of raw bytes within
//! [`MAX_CHUNK_BYTES`](super::MAX_CHUNK_BYTES); the empty frame ends the chunks. The receiver
//! counts the bytes and stops past [`MAX_IMAGE_BYTES`](super::MAX_IMAGE_BYTES).

use super::{ChunkReceiver, ImageStore, ImageInfo, MAX_CHUNK_BYTES, MAX_IMAGE_BYTES, MAX_LISTED_IMAGES, MAX_REFERENCE_LEN};
use crate::frame::{read_frame, write_frame, FrameError, ReadTimeouts};
use serde::{Deserialize, Serialize};
use shoal_wire::NodeId;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest control message (a list of [`MAX_LISTED_IMAGES`] images fits).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// How long a peer may be silent mid-transfer (an engine exporting a big layer can pause).
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a request or a short answer may take.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(15);
/// TCP connect timeout to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Chunks buffered between the network and the engine (each at most 1 MiB).
const PIPE_CHUNKS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageRequest {
    List,
    Fetch { reference: String },
    Push { image: ImageInfo },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageReply {
    Images { images: Vec<ImageInfo>, truncated: bool },
    Header { image: ImageInfo },
    NotFound(String),
    Ready,
    AlreadyHave,
    Done,
    Failed(String),
}

/// Why an image operation with a peer failed. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("TLS with {addr} failed: {0}", addr = .1)]
    Tls(String, SocketAddr),
    #[error("image transfer protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
    #[error("this node's engine: {0}")]
    Local(String),
}

impl From<FrameError> for ImageError {
    fn from(e: FrameError) -> Self {
        ImageError::Protocol(e.to_string())
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ImageError> {
    let body = shoal_wire::encode::<_, MAX_MESSAGE_BYTES>(value).map_err(|e| ImageError::Protocol(e.to_string()))?;
    Ok(frame(&body))
}

/// Length prefix + body (bodies here are bounded far below `u32::MAX`).
pub(crate) use crate::frame::length_prefixed as frame;

pub(crate) async fn read_message<T: serde::de::DeserializeOwned, R: AsyncRead + Unpin>(r: &mut R, timeout: Duration) -> Result<T, ImageError> {
    let body = read_frame(r, MAX_MESSAGE_BYTES, ReadTimeouts { idle: Some(timeout), frame: timeout })
        .await?
        .ok_or_else(|| ImageError::Protocol("the peer closed the connection".into()))?;
    shoal_wire::decode::<T, MAX_MESSAGE_BYTES>(&body).map_err(|e| ImageError::Protocol(e.to_string()))
}

/// Reads chunks until the empty one into `tx`, counting bytes against the image bound.
/// Returns the byte count. A send error (the engine gave up) stops reading.
pub(crate) async fn receive_chunks<R: AsyncRead + Unpin>(
    r: &mut R,
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, String>>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, ImageError> {
    let mut total: u64 = 0;
    loop {
        let chunk = read_frame(r, MAX_CHUNK_BYTES, ReadTimeouts { idle: Some(CHUNK_TIMEOUT), frame: CHUNK_TIMEOUT })
            .await?
            .ok_or_else(|| ImageError::Protocol("the connection ended inside an image".into()))?;
        if chunk.is_empty() {
            return Ok(total);
        }
        total += chunk.len() as u64;
        if total > MAX_IMAGE_BYTES {
            let _ = tx.send(Err("image too large".into())).await;
            return Err(ImageError::Protocol(format!("the image is larger than the limit of {} GiB", MAX_IMAGE_BYTES >> 30)));
        }
        progress(total);
        if tx.send(Ok(chunk)).await.is_err() {
            return Err(ImageError::Local("the engine stopped reading the image".into()));
        }
    }
}

/// Writes the chunks of `rx` then the end marker; returns the byte count.
pub(crate) async fn send_chunks<W: AsyncWrite + Unpin>(w: &mut W, mut rx: ChunkReceiver) -> Result<u64, ImageError> {
    let mut total = 0u64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(ImageError::Local)?;
        for piece in chunk.chunks(MAX_CHUNK_BYTES) {
            total += piece.len() as u64;
            w.write_all(&frame(piece)).await.map_err(|e| ImageError::Protocol(e.to_string()))?;
        }
    }
    write_frame(w, &frame(&[])).await?;
    Ok(total)
}

/// A node's image endpoint: its id (the TLS session must be with that node) and address.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub id: NodeId,
    pub addr: SocketAddr,
}

async fn connect(tls: &crate::pki::MutualTls, peer: Peer) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ImageError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer.addr))
        .await
        .map_err(|_| ImageError::Connect { addr: peer.addr, reason: "timed out".into() })?
        .map_err(|e| ImageError::Connect { addr: peer.addr, reason: e.to_string() })?;
    let _ = tcp.set_nodelay(true);
    let (stream, _) = tls.connect(tcp, Some(peer.id)).await.map_err(|e| ImageError::Tls(e.to_string(), peer.addr))?;
    Ok(stream)
}

/// The images `peer` holds.
pub async fn list(tls: &crate::pki::MutualTls, peer: Peer) -> Result<(Vec<ImageInfo>, bool), ImageError> {
    let mut s = connect(tls, peer).await?;
    write_frame(&mut s, &encode(&ImageRequest::List)?).await?;
    match read_message::<ImageReply, _>(&mut s, MESSAGE_TIMEOUT).await? {
        ImageReply::Images { images, truncated } => {
            if images.len() > MAX_LISTED_IMAGES {
                return Err(ImageError::Protocol("the peer listed too many images".into()));
            }
            let valid: Vec<ImageInfo> = images.into_iter().filter(|i| super::validate(i).is_ok()).collect();
            Ok((valid, truncated))
        }
        other => Err(ImageError::Protocol(format!("unexpected answer to List: {other:?}"))),
    }
}

/// Fetches `reference` from `peer` into `store`; `progress` gets the bytes received so far
/// and the expected size. Returns the image.
pub async fn fetch(
    tls: &crate::pki::MutualTls,
    peer: Peer,
    reference: &str,
    store: &dyn ImageStore,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<ImageInfo, ImageError> {
    if reference.is_empty() || reference.len() > MAX_REFERENCE_LEN {
        return Err(ImageError::Refused("bad image reference".into()));
    }
    let mut s = connect(tls, peer).await?;
    write_frame(&mut s, &encode(&ImageRequest::Fetch { reference: reference.to_string() })?).await?;
    let image = match read_message::<ImageReply, _>(&mut s, MESSAGE_TIMEOUT).await? {
        ImageReply::Header { image } => image,
        ImageReply::NotFound(why) => return Err(ImageError::Refused(why)),
        other => return Err(ImageError::Protocol(format!("unexpected answer to Fetch: {other:?}"))),
    };
    super::validate(&image).map_err(ImageError::Protocol)?;
    if !super::matches(&image, reference) {
        return Err(ImageError::Protocol(format!("asked for {reference}, the peer sent {}", image.id)));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(PIPE_CHUNKS);
    let expected = image.size_bytes;
    let on_bytes = |n: u64| progress(n, expected);
    let (received, imported) = tokio::join!(receive_chunks(&mut s, tx, &on_bytes), store.import(&image, rx));
    let received = received?;
    imported.map_err(ImageError::Local)?;
    tracing::debug!(image = %image.id, bytes = received, from = %peer.addr, "image fetched");
    Ok(image)
}

/// Sends `image` from `store` to `peer`. `Ok(false)`: the peer already had it.
pub async fn push(tls: &crate::pki::MutualTls, peer: Peer, image: &ImageInfo, store: &dyn ImageStore) -> Result<bool, ImageError> {
    let mut s = connect(tls, peer).await?;
    write_frame(&mut s, &encode(&ImageRequest::Push { image: image.clone() })?).await?;
    match read_message::<ImageReply, _>(&mut s, MESSAGE_TIMEOUT).await? {
        ImageReply::Ready => {}
        ImageReply::AlreadyHave => return Ok(false),
        ImageReply::Failed(why) => return Err(ImageError::Refused(why)),
        other => return Err(ImageError::Protocol(format!("unexpected answer to Push: {other:?}"))),
    }
    let rx = store.export(image).await.map_err(ImageError::Local)?;
    send_chunks(&mut s, rx).await?;
    // The peer loads the archive before it answers: a big image takes a while.
    match read_message::<ImageReply, _>(&mut s, CHUNK_TIMEOUT).await? {
        ImageReply::Done => Ok(true),
        ImageReply::Failed(why) => Err(ImageError::Refused(why)),
        other => Err(ImageError::Protocol(format!("unexpected answer after the image: {other:?}"))),
    }
}
