//! The one codec of shoal: every byte that crosses a process boundary is encoded and decoded
//! here, with bincode 2 and a hard size limit, so the encoding can be swapped in one place.
//!
//! **Architecture invariant:** nothing else in the workspace calls `bincode` directly.
#![forbid(unsafe_code)]

use serde::{de::DeserializeOwned, Serialize};

/// A task's id: a number the replicated state hands out, unique in a cluster. The
/// scheduler (`shoal_cluster`) and the engine's reconciler (`shoal_engine`) use this one
/// type, so neither crate depends on the other for it.
pub type TaskId = u64;

/// Why bytes could not be turned into a value. Decoding never panics; the caller drops the
/// input and counts it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is longer than the limit the caller set for this message kind.
    #[error("input of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    /// The bytes are not a valid encoding of the expected type (truncated, corrupt, or a
    /// length prefix that would exceed the limit).
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A value decoded but bytes were left over: treat as corrupt.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Why a value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode value: {0}")]
pub struct EncodeError(String);

fn config<const LIMIT: usize>(
) -> bincode::config::Configuration<bincode::config::LittleEndian, bincode::config::Varint, bincode::config::Limit<LIMIT>>
{
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Encodes `value`. Fails if the encoding would exceed `LIMIT` bytes, so a sender can never
/// produce a message its peers are bound to reject.
pub fn encode<T: Serialize, const LIMIT: usize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let bytes = bincode::serde::encode_to_vec(value, config::<LIMIT>())
        .map_err(|e| EncodeError(e.to_string()))?;
    if bytes.len() > LIMIT {
        return Err(EncodeError(format!("{} bytes exceed the limit of {LIMIT}", bytes.len())));
    }
    Ok(bytes)
}

/// Decodes exactly one `T` from `bytes`, which must be at most `LIMIT` bytes long and hold
/// nothing after the value. The limit also bounds every allocation the decoder makes.
pub fn decode<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > LIMIT {
        return Err(DecodeError::TooLarge { len: bytes.len(), limit: LIMIT });
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config::<LIMIT>())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decodes one `T` from the front of `bytes` and returns how many bytes it used; for framed
/// formats that carry several values back to back (foca's header then its updates).
pub fn decode_prefix<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), DecodeError> {
    let window = &bytes[..bytes.len().min(LIMIT)];
    bincode::serde::decode_from_slice::<T, _>(window, config::<LIMIT>())
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Sample {
        name: String,
        items: Vec<u32>,
    }

    #[test]
    fn round_trip() {
        let v = Sample { name: "pi-1".into(), items: vec![1, 2, 3] };
        let bytes = encode::<_, 256>(&v).expect("encode");
        assert_eq!(decode::<Sample, 256>(&bytes), Ok(v));
    }

    #[test]
    fn rejects_oversized_input_before_decoding() {
        let bytes = vec![0u8; 300];
        assert_eq!(
            decode::<Sample, 256>(&bytes),
            Err(DecodeError::TooLarge { len: 300, limit: 256 })
        );
    }

    #[test]
    fn rejects_length_prefix_beyond_limit() {
        // A string claiming 10_000 bytes: must fail without allocating them.
        let mut bytes = vec![251u8]; // varint marker for u16
        bytes.extend_from_slice(&10_000u16.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        assert!(matches!(decode::<Sample, 256>(&bytes), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn rejects_truncated_and_trailing() {
        let v = Sample { name: "node".into(), items: vec![7; 10] };
        let bytes = encode::<_, 256>(&v).expect("encode");
        for cut in 0..bytes.len() {
            assert!(decode::<Sample, 256>(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode::<Sample, 256>(&longer), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn encode_refuses_values_over_limit() {
        let v = Sample { name: "x".repeat(100), items: vec![] };
        assert!(encode::<_, 16>(&v).is_err());
    }
}

/// A node's permanent identifier: 128 bits derived from its public key, printed as 32 hex
/// digits. Stable across restarts (it lives in the data dir).
///
/// Serialised as its 32-hex-digit text in human-readable formats (JSON for the CLI and API)
/// and as 16 raw bytes in binary ones (the wire codec).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 16]);

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serde::Serialize::serialize(&self.0, serializer)
        }
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
            Self::parse(&text).ok_or_else(|| serde::de::Error::custom("node id must be 32 hex digits"))
        } else {
            <[u8; 16] as serde::Deserialize>::deserialize(deserializer).map(Self)
        }
    }
}

impl NodeId {
    /// Parses the 32-hex-digit form.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(Self(out))
    }

    /// The first 12 hex digits, for tables (like short container ids).
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

#[cfg(test)]
mod node_id_tests {
    use super::NodeId;

    #[test]
    fn node_id_text_round_trip() {
        let id = NodeId([0xab; 16]);
        assert_eq!(NodeId::parse(&id.to_string()), Some(id));
        assert_eq!(id.short(), "abababababab");
        assert_eq!(NodeId::parse("xyz"), None);
        assert_eq!(NodeId::parse(&"g".repeat(32)), None);
    }

    #[test]
    fn node_id_is_hex_in_text_formats_and_bytes_on_the_wire() {
        let id = NodeId([0x0f; 16]);
        let bytes = crate::encode::<_, 64>(&id).expect("encode");
        assert_eq!(bytes, vec![0x0f; 16]);
        assert_eq!(crate::decode::<NodeId, 64>(&bytes), Ok(id));
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<NodeId>(&json).expect("parse"), id);
        assert!(serde_json::from_str::<NodeId>("\"nothex\"").is_err());
    }
}
