//! The one framing every TCP protocol of the node uses (Raft, joins, image transfer): a
//! `u32` big-endian length, then a body encoded with `shoal_wire` (bincode 2 through
//! `shoal_consensus::codec`). Each protocol reads with its own limit; Raft's is
//! [`MAX_RPC_BYTES`].
//!
//! Reading never trusts the length prefix with memory: it is checked against the limit
//! first, and the body buffer then grows with the bytes that actually arrive.

use serde::Serialize;
use shoal_consensus::codec::{self, CodecError, MAX_RPC_BYTES};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix.
pub const HEADER_BYTES: usize = 4;
/// The body buffer starts at most this large and grows as bytes arrive.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// Why a frame could not be read or written. Any of these ends the connection it happened
/// on, and only that one.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: u64, limit: usize },
    #[error("connection ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("frame does not decode: {0}")]
    Undecodable(#[source] CodecError),
    #[error("message cannot be encoded within the limit: {0}")]
    Unencodable(#[source] CodecError),
    #[error("no frame within the idle timeout of {0:?}")]
    Idle(Duration),
    #[error("frame not complete within {0:?}")]
    SlowFrame(Duration),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `value` as a frame body (length prefix included), within [`MAX_RPC_BYTES`].
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let body = codec::encode::<T, MAX_RPC_BYTES>(value).map_err(FrameError::Unencodable)?;
    // MAX_RPC_BYTES is far below u32::MAX (checked by a test), so this never fails.
    let len =
        u32::try_from(body.len()).map_err(|_| FrameError::TooLarge { len: body.len() as u64, limit: MAX_RPC_BYTES })?;
    let mut frame = Vec::with_capacity(HEADER_BYTES + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Length prefix + body, for protocols whose bodies are bounded far below `u32::MAX` (the
/// join and image protocols share this framing with Raft's).
pub fn length_prefixed(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Decodes a frame body read by [`read_frame`].
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    codec::decode::<T, MAX_RPC_BYTES>(body).map_err(FrameError::Undecodable)
}

/// Writes an encoded frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

/// How long [`read_frame`] waits.
#[derive(Debug, Clone, Copy)]
pub struct ReadTimeouts {
    /// For the first byte of the next frame (`None`: forever).
    pub idle: Option<Duration>,
    /// From the first byte to the last byte of a frame.
    pub frame: Duration,
}

async fn maybe_timeout<F: std::future::Future>(limit: Option<Duration>, fut: F) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// Reads one frame body of at most `limit` bytes. `Ok(None)` is a clean end of the
/// connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    timeouts: ReadTimeouts,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let first = maybe_timeout(timeouts.idle, r.read(&mut header[..1]))
        .await
        .ok_or(FrameError::Idle(timeouts.idle.unwrap_or_default()))??;
    if first == 0 {
        return Ok(None);
    }
    tokio::time::timeout(timeouts.frame, read_rest(r, header, limit))
        .await
        .map_err(|_| FrameError::SlowFrame(timeouts.frame))?
}

async fn read_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    mut header: [u8; HEADER_BYTES],
    limit: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut got = 1;
    while got < HEADER_BYTES {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { got, want: HEADER_BYTES });
        }
        got += n;
    }
    let len = u32::from_be_bytes(header);
    let want = usize::try_from(len).map_err(|_| FrameError::TooLarge { len: u64::from(len), limit })?;
    if want > limit {
        return Err(FrameError::TooLarge { len: u64::from(len), limit });
    }
    // Grows with what arrives: a peer claiming 60 MiB and sending 10 bytes costs 64 KiB.
    let mut body = Vec::with_capacity(want.min(INITIAL_BODY_CAPACITY));
    let read = (&mut *r).take(u64::from(len)).read_to_end(&mut body).await?;
    if read < want {
        return Err(FrameError::Truncated { got: read, want });
    }
    Ok(Some(body))
}
