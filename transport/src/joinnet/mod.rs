//! The join protocol's network transport: how a node without a certificate reaches a node
//! that holds the cluster CA (design section 4, issue 3). The agent serves it on its one TCP port (`crate::port`), ALPN `shoal-join/1`.
//!
//! The protocol itself (CSR + nonce + HMAC, and the answer's HMAC) is `pki::join` and
//! `pki::issuer`; this module only carries it:
//!
//! - [`server`]: [`JoinServer`] listens on TCP with TLS 1.3 (ring), presents the node's own
//!   certificate (issued by the cluster CA) and asks for **no** client certificate (the
//!   joiner has none yet). Per connection it reads one frame holding a [`JoinRequest`],
//!   asks a [`JoinAuthority`] (the Raft leader, later) for the answer, writes one
//!   [`JoinReply`] frame and closes. A connection cap, a short handshake timeout and a
//!   read timeout bound what a stalled stranger can hold; every refusal and bad frame is
//!   counted in [`JoinStats`].
//! - [`client`]: [`request_certificate`]. The joiner has no trust anchor, so the TLS layer
//!   accepts the server's certificate for this session only (the handshake signature is
//!   still verified with the presented key, so the session is bound to that key). Trust
//!   comes from [`JoinResponse::verify`](crate::pki::JoinResponse::verify): its HMAC covers
//!   the request's nonce, the issued certificate and the CA certificate, so only a holder
//!   of the join secret can produce it. After that check the client also requires the
//!   server's TLS certificate to chain to the CA it just received (WebPKI, with the node id
//!   rules), so it knows it talked to a cluster member and not merely to a secret holder.
//!
//! Wire format: one frame each way, `u32` big-endian length + a body encoded with
//! `shoal_wire` (the shared `crate::frame` reader, so the length is checked before any
//! allocation): the request within [`MAX_JOIN_MESSAGE_LEN`], the reply within
//! [`MAX_JOIN_REPLY_LEN`]. Both sides use ALPN `shoal-join/1`; the server closes any
//! session that did not negotiate it before reading a byte (so a Raft client dialling this
//! port is dropped; a join client dialling the Raft port fails there for lack of a client
//! certificate). The port itself is not chosen yet: [`JoinServer::bind`] takes an address.
//!
//! What the joiner learns when refused is [`JoinReply::Refused`]'s message: the `Display`
//! of the refusal (`PkiError` messages never contain key material or the secret).


pub mod client;
pub mod server;

#[cfg(test)]
mod tests;

pub use client::{request_certificate, request_pinned_certificate, JoinError};
pub use server::{JoinAuthority, JoinServer, JoinServerConfig, JoinService, Refusal};

use crate::pki::{JoinResponse, PkiError, MAX_JOIN_MESSAGE_LEN};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// ALPN protocol name of the join port.
pub const JOIN_ALPN: &[u8] = b"shoal-join/1";
/// Largest encoded [`JoinReply`]: a response within [`MAX_JOIN_MESSAGE_LEN`] plus the tag.
pub const MAX_JOIN_REPLY_LEN: usize = MAX_JOIN_MESSAGE_LEN + 64;
/// Longest refusal message sent (longer ones are cut).
pub const MAX_REFUSAL_LEN: usize = 512;

/// The server's one answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JoinReply {
    /// The certificate, the CA certificate and the HMAC that vouches for both.
    Granted(JoinResponse),
    /// Why not; never contains secrets.
    Refused(String),
}

impl JoinReply {
    pub fn to_bytes(&self) -> Result<Vec<u8>, PkiError> {
        shoal_wire::encode::<_, MAX_JOIN_REPLY_LEN>(self).map_err(|e| PkiError::Encode(e.to_string()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PkiError> {
        Ok(shoal_wire::decode::<_, MAX_JOIN_REPLY_LEN>(bytes)?)
    }
}

/// Length prefix + body (bodies are bounded by MAX_JOIN_REPLY_LEN, far below u32::MAX).
pub(crate) use crate::frame::length_prefixed as frame;

/// Why the join server could not start (per-connection problems are only counted).
#[derive(Debug, thiserror::Error)]
pub enum JoinNetError {
    #[error("cannot listen for joins on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the join listener's address: {0}")]
    LocalAddr(#[source] std::io::Error),
    #[error("join TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Counters of a [`JoinServer`]. Nothing is logged above debug per connection.
#[derive(Debug, Default)]
pub struct JoinStats {
    /// TCP connections accepted (within the cap).
    pub connections: AtomicU64,
    /// Connections closed at once because the cap was reached.
    pub over_capacity: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub handshakes_failed: AtomicU64,
    /// Connections closed before or inside the request frame, or too slow to send it.
    pub frames_truncated: AtomicU64,
    pub frames_too_large: AtomicU64,
    pub frames_undecodable: AtomicU64,
    pub timeouts: AtomicU64,
    /// Certificates handed out.
    pub granted: AtomicU64,
    /// Requests answered with `Refused`.
    pub refused: AtomicU64,
    /// Other per-connection errors (I/O while writing the answer, encoding).
    pub errors: AtomicU64,
}

/// A copy of [`JoinStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JoinStatsSnapshot {
    pub connections: u64,
    pub over_capacity: u64,
    pub handshakes_failed: u64,
    pub frames_truncated: u64,
    pub frames_too_large: u64,
    pub frames_undecodable: u64,
    pub timeouts: u64,
    pub granted: u64,
    pub refused: u64,
    pub errors: u64,
}

impl JoinStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> JoinStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        JoinStatsSnapshot {
            connections: get(&self.connections),
            over_capacity: get(&self.over_capacity),
            handshakes_failed: get(&self.handshakes_failed),
            frames_truncated: get(&self.frames_truncated),
            frames_too_large: get(&self.frames_too_large),
            frames_undecodable: get(&self.frames_undecodable),
            timeouts: get(&self.timeouts),
            granted: get(&self.granted),
            refused: get(&self.refused),
            errors: get(&self.errors),
        }
    }
}
