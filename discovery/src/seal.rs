//! Sealed datagrams: every gossip packet is encrypted and authenticated with
//! XChaCha20-Poly1305 under a key derived from the join secret, stamped with the sender's
//! wall-clock time, and checked against a replay window.
//!
//! Layout: `version (1) | sent_at_ms (8, big endian) | nonce (24) | ciphertext+tag`.
//! The version, the timestamp and the destination node id (not transmitted: the receiver
//! supplies its own) are authenticated as associated data, so a datagram captured on its way
//! to one node is refused by every other. Datagrams to a peer whose id is not known yet
//! (greetings to a `--join` seed) are sealed to [`ANYONE`].

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::Rng;
use std::collections::BTreeSet;

/// Format version of the sealed envelope.
pub const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a seal adds around the plaintext.
pub const SEAL_OVERHEAD: usize = 1 + 8 + NONCE_LEN + TAG_LEN;
/// Largest sealed datagram we send or accept: an Ethernet MTU (1500) minus IPv4 and UDP
/// headers, so a packet is never fragmented on a LAN.
pub const MAX_SEALED_LEN: usize = 1472;
/// Largest plaintext that fits in one sealed datagram.
pub const MAX_PLAINTEXT_LEN: usize = MAX_SEALED_LEN - SEAL_OVERHEAD;
/// How far a sender's clock may be from ours, either way, before its packets are refused.
/// Also how long a seen nonce is remembered. Nodes need roughly synchronised clocks (NTP).
pub const DEFAULT_WINDOW_MS: u64 = 120_000;
/// Cap on remembered nonces (memory bound: ~40 bytes each). At 50 nodes gossiping a few
/// packets per second each, a 120 s window holds well under this.
pub const MAX_REMEMBERED: usize = 100_000;

/// Why a datagram was refused. Every variant means "drop and count".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("datagram shorter than the seal overhead")]
    TooShort,
    #[error("datagram longer than {MAX_SEALED_LEN} bytes")]
    TooLarge,
    #[error("unknown seal version")]
    UnknownVersion,
    #[error("sender clock is {skew_ms} ms away from ours (limit {DEFAULT_WINDOW_MS} ms); check NTP on both machines")]
    OutsideWindow { skew_ms: i64 },
    #[error("datagram already seen (replay)")]
    Replayed,
    #[error("datagram does not authenticate (wrong join secret or tampered)")]
    Forged,
}

/// The destination of a datagram sealed for whoever receives it.
pub const ANYONE: [u8; 16] = [0; 16];

/// To whom an opened datagram was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressee {
    /// To the node that opened it.
    Me,
    /// To [`ANYONE`]: only acceptable for messages that are harmless to replay.
    Anyone,
}

fn aad(header: &[u8], dst: &[u8; 16]) -> [u8; 25] {
    let mut a = [0u8; 25];
    a[..9].copy_from_slice(&header[..9]);
    a[9..].copy_from_slice(dst);
    a
}

/// Why a datagram could not be sealed: a bug in the caller (payload too big).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("plaintext of {0} bytes does not fit in one datagram")]
pub struct SealError(pub usize);

/// Seals outgoing and opens incoming datagrams for one node.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    window_ms: u64,
    /// (sent_at_ms, nonce) of every accepted packet still inside the window.
    seen: BTreeSet<(u64, [u8; NONCE_LEN])>,
    /// Packets stamped at or before this are refused: the replay memory no longer covers them.
    floor_ms: u64,
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Self {
        Self::with_window(key, DEFAULT_WINDOW_MS)
    }

    pub fn with_window(key: [u8; 32], window_ms: u64) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
            window_ms,
            seen: BTreeSet::new(),
            floor_ms: 0,
        }
    }

    /// Seals `plaintext` for the node `dst` (or [`ANYONE`]).
    pub fn seal(&self, now_ms: u64, rng: &mut impl Rng, dst: &[u8; 16], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(SealError(plaintext.len()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.push(SEAL_VERSION);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = aad(&out, dst);
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .map_err(|_| SealError(plaintext.len()))?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Authenticates and decrypts a datagram received by node `me`; accepts each packet at
    /// most once.
    pub fn open(&mut self, now_ms: u64, me: &[u8; 16], packet: &[u8]) -> Result<(Vec<u8>, Addressee), OpenError> {
        if packet.len() > MAX_SEALED_LEN {
            return Err(OpenError::TooLarge);
        }
        if packet.len() < SEAL_OVERHEAD {
            return Err(OpenError::TooShort);
        }
        if packet[0] != SEAL_VERSION {
            return Err(OpenError::UnknownVersion);
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&packet[1..9]);
        let sent_at_ms = u64::from_be_bytes(ts);
        let skew_ms = sent_at_ms as i128 - now_ms as i128;
        if skew_ms.unsigned_abs() > u128::from(self.window_ms) {
            return Err(OpenError::OutsideWindow {
                skew_ms: skew_ms.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&packet[9..9 + NONCE_LEN]);
        let body = &packet[9 + NONCE_LEN..];
        let try_open = |dst: &[u8; 16]| {
            self.cipher.decrypt(XNonce::from_slice(&nonce), Payload { msg: body, aad: &aad(packet, dst) }).ok()
        };
        let (plaintext, addressee) = match try_open(me) {
            Some(p) => (p, Addressee::Me),
            None => (try_open(&ANYONE).ok_or(OpenError::Forged)?, Addressee::Anyone),
        };
        // Only authentic packets reach the replay memory, so forgeries cannot flood it.
        self.forget_before(now_ms.saturating_sub(self.window_ms));
        if sent_at_ms <= self.floor_ms || !self.seen.insert((sent_at_ms, nonce)) {
            return Err(OpenError::Replayed);
        }
        while self.seen.len() > MAX_REMEMBERED {
            if let Some(oldest) = self.seen.pop_first() {
                self.floor_ms = self.floor_ms.max(oldest.0);
            }
        }
        Ok((plaintext, addressee))
    }

    fn forget_before(&mut self, cutoff_ms: u64) {
        while let Some(first) = self.seen.first() {
            if first.0 >= cutoff_ms {
                break;
            }
            self.seen.pop_first();
        }
    }

    /// Number of nonces currently remembered (for tests and stats).
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const NOW: u64 = 1_764_000_000_000;
    const ME: [u8; 16] = [9; 16];

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn round_trip() {
        let mut s = Sealer::new([1; 32]);
        let packet = s.seal(NOW, &mut rng(), &ME, b"hello").expect("seal");
        assert_eq!(packet.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(s.open(NOW + 10, &ME, &packet), Ok((b"hello".to_vec(), Addressee::Me)));
    }

    #[test]
    fn tampered_packets_are_rejected_at_every_byte() {
        let mut s = Sealer::new([1; 32]);
        let packet = s.seal(NOW, &mut rng(), &ME, b"membership update").expect("seal");
        for i in 0..packet.len() {
            let mut bad = packet.clone();
            bad[i] ^= 0x01;
            let got = s.open(NOW, &ME, &bad);
            assert!(got.is_err(), "flipping byte {i} was accepted");
        }
        // The untouched packet still opens: rejected forgeries did not poison the replay memory.
        assert!(s.open(NOW, &ME, &packet).is_ok());
    }

    #[test]
    fn replayed_packet_is_rejected() {
        let mut s = Sealer::new([1; 32]);
        let packet = s.seal(NOW, &mut rng(), &ME, b"x").expect("seal");
        assert!(s.open(NOW, &ME, &packet).is_ok());
        assert_eq!(s.open(NOW + 1, &ME, &packet), Err(OpenError::Replayed));
    }

    #[test]
    fn wrong_key_is_rejected() {
        let sender = Sealer::new([1; 32]);
        let mut receiver = Sealer::new([2; 32]);
        let packet = sender.seal(NOW, &mut rng(), &ME, b"x").expect("seal");
        assert_eq!(receiver.open(NOW, &ME, &packet), Err(OpenError::Forged));
    }

    #[test]
    fn truncated_and_oversized_are_rejected() {
        let mut s = Sealer::new([1; 32]);
        let packet = s.seal(NOW, &mut rng(), &ME, b"some payload").expect("seal");
        for cut in 0..packet.len() {
            assert!(s.open(NOW, &ME, &packet[..cut]).is_err(), "truncated to {cut} accepted");
        }
        assert_eq!(s.open(NOW, &ME, &vec![SEAL_VERSION; MAX_SEALED_LEN + 1]), Err(OpenError::TooLarge));
        assert_eq!(s.seal(NOW, &mut rng(), &ME, &vec![0; MAX_PLAINTEXT_LEN + 1]), Err(SealError(MAX_PLAINTEXT_LEN + 1)));
        let full = s.seal(NOW, &mut rng(), &ME, &vec![0; MAX_PLAINTEXT_LEN]).expect("max size seals");
        assert_eq!(full.len(), MAX_SEALED_LEN);
        assert!(s.open(NOW, &ME, &full).is_ok());
    }

    #[test]
    fn stale_and_future_timestamps_are_rejected() {
        let mut s = Sealer::with_window([1; 32], 1_000);
        let old = s.seal(NOW - 5_000, &mut rng(), &ME, b"x").expect("seal");
        assert!(matches!(s.open(NOW, &ME, &old), Err(OpenError::OutsideWindow { skew_ms: -5_000 })));
        let future = s.seal(NOW + 5_000, &mut rng(), &ME, b"x").expect("seal");
        assert!(matches!(s.open(NOW, &ME, &future), Err(OpenError::OutsideWindow { skew_ms: 5_000 })));
    }

    #[test]
    fn replay_memory_is_bounded_by_the_window() {
        let mut s = Sealer::with_window([1; 32], 1_000);
        let mut r = rng();
        for i in 0..100 {
            let p = s.seal(NOW + i * 100, &mut r, &ME, b"x").expect("seal");
            assert!(s.open(NOW + i * 100, &ME, &p).is_ok());
        }
        assert!(s.remembered() <= 11, "remembered {}", s.remembered());
    }

    #[test]
    fn a_datagram_for_one_node_is_refused_by_another() {
        let s = Sealer::new([1; 32]);
        let mut other = Sealer::new([1; 32]);
        let packet = s.seal(NOW, &mut rng(), &ME, b"for ME only").expect("seal");
        assert_eq!(other.open(NOW, &[8; 16], &packet), Err(OpenError::Forged));
        let greeting = s.seal(NOW, &mut rng(), &ANYONE, b"hello whoever").expect("seal");
        assert_eq!(other.open(NOW, &[8; 16], &greeting), Ok((b"hello whoever".to_vec(), Addressee::Anyone)));
    }
}
