//! The image vocabulary of the engine port: what an engine holds (`ImageInfo`), an image
//! archive in flight (`ImageExport`, a stream of byte chunks as `docker save` writes them),
//! pull progress, the import bound, and the checks every reference goes through.

use crate::EngineError;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::pin::Pin;

/// Largest image archive an import accepts (bytes of the `docker save` tar, summed over
/// chunks). Home-lab images are rarely above a few GiB; past this the sender is broken or
/// hostile, and the engine would be writing an unbounded upload to its data root. An
/// import stops reading at the first byte past the bound and fails with
/// [`EngineError::ImportTooLarge`].
pub const IMAGE_IMPORT_BYTES_MAX: u64 = 16 << 30;

/// Most tags one import or export may name (an image's tags, as `docker save` carries them).
pub const IMAGE_TAGS_MAX: usize = 64;

/// An image archive's bytes, chunk by chunk: what [`crate::Engine::export_image`] yields
/// and [`crate::Engine::import_image`] consumes. A chunk error ends the stream (for an
/// import: the transfer failed, nothing is loaded).
pub type ImageStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static>>;

/// An engine's id of an image: `sha256:` and 64 hex digits (the digest of its config).
/// Two engines holding the same id hold the same image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImageId(pub String);

impl ImageId {
    /// The id if `s` is a full image id (`sha256:` + 64 lowercase hex digits).
    pub fn parse(s: &str) -> Option<ImageId> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| ImageId(s.to_string()))
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 12 hex digits, as `docker images` shows.
        let hex = self.0.strip_prefix("sha256:").unwrap_or(&self.0);
        let short: String = hex.chars().take(12).collect();
        f.write_str(&short)
    }
}

/// One image an engine holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageInfo {
    pub id: ImageId,
    /// `repository:tag` names, sorted (Docker's familiar form: `nginx:alpine`, not
    /// `docker.io/library/nginx:alpine`). Empty for an untagged image.
    pub tags: Vec<String>,
    /// Size of the image's layers on the engine, in bytes (the archive is about this big).
    pub size_bytes: u64,
}

/// An image archive being read out of an engine (`docker save`).
pub struct ImageExport {
    /// The image: its id, the tags the archive carries (those asked for), its size.
    pub image: ImageInfo,
    /// Exact archive length when the engine states it (the fake does; Docker streams
    /// without a length, so use `image.size_bytes` as the estimate for progress).
    pub total_bytes: Option<u64>,
    /// The archive, chunk by chunk.
    pub chunks: ImageStream,
}

impl fmt::Debug for ImageExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageExport").field("image", &self.image).field("total_bytes", &self.total_bytes).finish_non_exhaustive()
    }
}

/// One step of a pull, as the engine reports it (Docker sends one per layer and state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    /// The layer this is about (short digest), if any.
    pub layer: Option<String>,
    /// `Pulling fs layer`, `Downloading`, `Extracting`, `Pull complete`, `Status: …`.
    pub status: String,
    /// Bytes done of this layer and step, when the engine says.
    pub current_bytes: Option<u64>,
    /// Bytes in all of this layer and step, when the engine says.
    pub total_bytes: Option<u64>,
}

/// Checks a reference (`name`, `name:tag`, `name@sha256:…`, an id or id prefix) before it
/// is sent to an engine: 1..=[`crate::types::IMAGE_LEN_MAX`] bytes of the characters image
/// names are made of (so it cannot reshape a request URL).
pub fn validate_reference(reference: &str) -> Result<(), EngineError> {
    let bad = |reason: &str| Err(EngineError::InvalidImageReference { reference: reference.chars().take(80).collect(), reason: reason.to_string() });
    if reference.is_empty() || reference.len() > crate::types::IMAGE_LEN_MAX {
        return bad(&format!("must be 1..={} bytes", crate::types::IMAGE_LEN_MAX));
    }
    if !reference.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/' | b'@')) {
        return bad("only letters, digits and . _ - : / @ are allowed");
    }
    if reference.starts_with(['.', '-', ':', '/', '@']) || reference.ends_with([':', '/', '@']) {
        return bad("must start with a letter or digit and not end with : / @");
    }
    Ok(())
}

/// A reference with the tag made explicit: `name` means `name:latest` (as Docker reads
/// it); `name:tag` and `name@digest` are kept. The port's fake resolves tags this way.
pub fn with_default_tag(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

/// Splits `repo:tag` into its repository and tag (the tag is after the last `:` of the
/// last path component); `None` without a tag.
pub fn split_tag(tagged: &str) -> Option<(&str, &str)> {
    let slash = tagged.rfind('/').map_or(0, |i| i + 1);
    let colon = tagged[slash..].rfind(':')? + slash;
    Some((&tagged[..colon], &tagged[colon + 1..]))
}

/// Checks the tags of an import or export: at most [`IMAGE_TAGS_MAX`], each a valid
/// reference.
pub fn check_tags(tags: &[String]) -> Result<(), EngineError> {
    if tags.len() > IMAGE_TAGS_MAX {
        return Err(EngineError::InvalidImageReference { reference: format!("{} tags", tags.len()), reason: format!("at most {IMAGE_TAGS_MAX} tags") });
    }
    tags.iter().try_for_each(|t| validate_reference(t))
}

/// An engine's or archive's error text made fit for a message: one line, printable, at
/// most 300 characters (a parser's error may quote the hostile bytes it choked on).
pub fn short_reason(reason: &str) -> String {
    let mut out: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).take(300).collect();
    if reason.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// The bound actually applied to an import asked to stop at `max_bytes`.
pub fn import_limit(max_bytes: u64) -> u64 {
    max_bytes.min(IMAGE_IMPORT_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_checked() {
        for ok in ["nginx", "nginx:alpine", "127.0.0.1:5000/a/b:1", "sha256:abc", "abc123", "x@sha256:00ff"] {
            assert!(validate_reference(ok).is_ok(), "{ok}");
        }
        for bad in ["", " nginx", "a b", "a?b", "a#b", "../x", "x:", "-x", "é", &"a".repeat(crate::types::IMAGE_LEN_MAX + 1)] {
            assert!(matches!(validate_reference(bad), Err(EngineError::InvalidImageReference { .. })), "{bad:?}");
        }
    }

    #[test]
    fn default_tag_is_latest() {
        assert_eq!(with_default_tag("nginx"), "nginx:latest");
        assert_eq!(with_default_tag("nginx:1"), "nginx:1");
        assert_eq!(with_default_tag("127.0.0.1:5000/web"), "127.0.0.1:5000/web:latest");
        assert_eq!(with_default_tag("127.0.0.1:5000/web:2"), "127.0.0.1:5000/web:2");
        assert_eq!(with_default_tag("web@sha256:00"), "web@sha256:00");
        assert_eq!(split_tag("127.0.0.1:5000/web:2"), Some(("127.0.0.1:5000/web", "2")));
        assert_eq!(split_tag("127.0.0.1:5000/web"), None);
        assert_eq!(split_tag("web:latest"), Some(("web", "latest")));
    }

    #[test]
    fn reasons_are_one_short_printable_line() {
        assert_eq!(short_reason("bad\nheader\0x"), "bad header x");
        let long = short_reason(&"x".repeat(1000));
        assert_eq!(long.chars().count(), 301);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn ids_parse_only_in_full() {
        let full = format!("sha256:{}", "a1".repeat(32));
        assert_eq!(ImageId::parse(&full).map(|i| i.to_string()), Some("a1a1a1a1a1a1".to_string()));
        assert!(ImageId::parse("sha256:a1").is_none());
        assert!(ImageId::parse(&full.to_uppercase()).is_none());
        assert!(ImageId::parse(&"a1".repeat(32)).is_none());
        assert_eq!(import_limit(u64::MAX), IMAGE_IMPORT_BYTES_MAX);
        assert_eq!(import_limit(10), 10);
    }
}
