//! The join secret and what is derived from it: the cluster id (public) and the gossip key.
//! (Its own base crate: gossip (`shoal_discovery`) and the PKI (`shoal_pki`) both derive
//! keys from it, and the PKI has no business depending on gossip.)
//!
//! The secret itself never leaves this module in any printable form except [`JoinSecret::to_token`],
//! which only `shoal token new` calls. `Debug` prints a redaction.

use hkdf::Hkdf;
use rand::Rng;
use sha2::{Digest, Sha256};
use shoal_wire::NodeId;
use std::fmt;

/// The node id of a raw public key: the first 128 bits of its SHA-256 (for P-256, the
/// uncompressed point, as `rcgen::KeyPair::public_key_raw` and a certificate's
/// subjectPublicKey BIT STRING hold it). One rule for the PKI (certificates name it) and
/// gossip (what a node signs about itself is checked against it).
pub fn node_id_of_public_key(raw: &[u8]) -> NodeId {
    let digest = Sha256::digest(raw);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    NodeId(id)
}

/// Text prefix of a token, so a pasted value is recognisable and versioned.
pub const TOKEN_PREFIX: &str = "shoal1-";
const SECRET_LEN: usize = 32; // 256 bits, as the issue asks
const HKDF_SALT: &[u8] = b"shoal/join-secret/v1";

/// Why a token could not be read. Messages never echo the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the join token must start with `{TOKEN_PREFIX}` or `{PINNED_TOKEN_PREFIX}`; create one with `shoal token new`")]
    MissingPrefix,
    #[error("the join token must have {expected} hex characters after `{TOKEN_PREFIX}`, found {found}; create one with `shoal token new`")]
    BadLength { expected: usize, found: usize },
    #[error("the join token contains a character that is not a hex digit; create one with `shoal token new`")]
    NotHex,
    #[error("a `{PINNED_TOKEN_PREFIX}` token must read `{PINNED_TOKEN_PREFIX}<32 hex digits of the CA digest>-<64 hex digits>`; print one with `shoal token show` on a node of the cluster")]
    BadPin,
}

/// A 256-bit join secret shared by every node of one cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinSecret([u8; SECRET_LEN]);

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(<redacted>)")
    }
}

/// Public identifier of a cluster: a one-way function of the secret, safe for mDNS TXT.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub [u8; 8]);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

impl ClusterId {
    /// Parses the 16-hex-character form found in TXT records.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = hex_decode(text)?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl JoinSecret {
    /// A fresh secret from the given (cryptographically secure) rng.
    pub fn generate(rng: &mut impl Rng) -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Reads a token as printed by [`Self::to_token`]; surrounding whitespace is ignored so
    /// tokens read from files or pasted with a newline work.
    pub fn parse(token: &str) -> Result<Self, SecretError> {
        let body = token.trim().strip_prefix(TOKEN_PREFIX).ok_or(SecretError::MissingPrefix)?;
        if body.len() != SECRET_LEN * 2 {
            return Err(SecretError::BadLength { expected: SECRET_LEN * 2, found: body.len() });
        }
        let bytes = hex_decode(body).ok_or(SecretError::NotHex)?;
        let mut out = [0u8; SECRET_LEN];
        out.copy_from_slice(&bytes);
        Ok(Self(out))
    }

    /// The text form users paste: `shoal1-` and 64 hex digits.
    pub fn to_token(&self) -> String {
        let mut s = String::with_capacity(TOKEN_PREFIX.len() + SECRET_LEN * 2);
        s.push_str(TOKEN_PREFIX);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// A 32-byte key for one purpose, derived with HKDF-SHA256. Different `purpose` strings
    /// give independent keys.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.0);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so expand cannot fail.
        #[allow(clippy::expect_used)]
        hk.expand(purpose.as_bytes(), &mut okm).expect("32 bytes is a valid HKDF output length");
        okm
    }

    /// The public cluster id.
    pub fn cluster_id(&self) -> ClusterId {
        let k = self.derive_key("cluster-id");
        let mut id = [0u8; 8];
        id.copy_from_slice(&k[..8]);
        ClusterId(id)
    }

    /// The key that seals gossip datagrams.
    pub fn gossip_key(&self) -> [u8; 32] {
        self.derive_key("gossip-aead")
    }
}

pub(crate) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digits = text.as_bytes();
    let mut out = Vec::with_capacity(digits.len() / 2);
    for pair in digits.chunks(2) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out.push((hi * 16 + lo) as u8);
    }
    Some(out)
}

/// Text prefix of a token that also pins the cluster's CA: `shoal2-<CA digest>-<secret>`.
pub const PINNED_TOKEN_PREFIX: &str = "shoal2-";
const PIN_LEN: usize = 16;

/// The digest of a cluster CA certificate a token pins: the first 128 bits of the SHA-256 of
/// its DER. A joiner given a pinned token refuses a cluster whose CA has another digest
/// (whoever answered holds the secret but is not that cluster: a leaked token, or another
/// cluster started with the same secret).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaPin(pub [u8; PIN_LEN]);

impl CaPin {
    pub fn of_der(ca_der: &[u8]) -> Self {
        use sha2::Digest;
        let digest = Sha256::digest(ca_der);
        let mut out = [0u8; PIN_LEN];
        out.copy_from_slice(&digest[..PIN_LEN]);
        Self(out)
    }

    /// Whether `ca_der` is the pinned CA.
    pub fn matches(&self, ca_der: &[u8]) -> bool {
        Self::of_der(ca_der) == *self
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaPin({self})")
    }
}

/// A join token as users paste it: the secret, and the CA it pins if it is a `shoal2-`
/// token (a `shoal1-` token pins nothing: a node founding a cluster makes one before the CA
/// exists; `shoal token show` prints the pinned form once it does).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub secret: JoinSecret,
    pub ca_pin: Option<CaPin>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("secret", &self.secret).field("ca_pin", &self.ca_pin).finish()
    }
}

impl Token {
    /// Reads `shoal1-<secret>` or `shoal2-<CA digest>-<secret>` (surrounding whitespace
    /// ignored). Messages never echo the token.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let Some(body) = text.strip_prefix(PINNED_TOKEN_PREFIX) else {
            return Ok(Self { secret: JoinSecret::parse(text)?, ca_pin: None });
        };
        let (pin, secret) = body.split_once('-').ok_or(SecretError::BadPin)?;
        let pin: [u8; PIN_LEN] = hex_decode(pin).and_then(|b| b.try_into().ok()).ok_or(SecretError::BadPin)?;
        let secret = JoinSecret::parse(&format!("{TOKEN_PREFIX}{secret}"))?;
        Ok(Self { secret, ca_pin: Some(CaPin(pin)) })
    }

    /// The text form: `shoal2-<CA digest>-<secret>` when pinned, else `shoal1-<secret>`.
    pub fn to_text(&self) -> String {
        let plain = self.secret.to_token();
        match self.ca_pin {
            Some(pin) => format!("{PINNED_TOKEN_PREFIX}{pin}-{}", &plain[TOKEN_PREFIX.len()..]),
            None => plain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn secret(seed: u64) -> JoinSecret {
        JoinSecret::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    #[test]
    fn token_round_trips_and_tolerates_whitespace() {
        let s = secret(1);
        let token = s.to_token();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(JoinSecret::parse(&format!("  {token}\n")), Ok(s));
    }

    #[test]
    fn bad_tokens_are_explained_without_echoing_them() {
        assert_eq!(JoinSecret::parse("abc"), Err(SecretError::MissingPrefix));
        assert_eq!(
            JoinSecret::parse("shoal1-abcd"),
            Err(SecretError::BadLength { expected: 64, found: 4 })
        );
        let bad = format!("shoal1-{}", "zz".repeat(32));
        let err = JoinSecret::parse(&bad).expect_err("not hex");
        assert_eq!(err, SecretError::NotHex);
        assert!(!err.to_string().contains("zz"));
    }

    #[test]
    fn derived_values_differ_by_purpose_and_secret_and_hide_it() {
        let a = secret(1);
        let b = secret(2);
        assert_ne!(a.cluster_id(), b.cluster_id());
        assert_ne!(a.gossip_key(), b.gossip_key());
        assert_ne!(a.gossip_key()[..8], a.cluster_id().0);
        assert_eq!(format!("{a:?}"), "JoinSecret(<redacted>)");
        let id = a.cluster_id();
        assert_eq!(ClusterId::parse(&id.to_string()), Some(id));
        assert!(!a.to_token().contains(&id.to_string()));
    }

    #[test]
    fn a_pinned_token_round_trips_and_pins_the_ca_it_was_made_from() {
        let secret = JoinSecret::generate(&mut rand::rng());
        let pin = CaPin::of_der(b"a CA certificate");
        let token = Token { secret: secret.clone(), ca_pin: Some(pin) };
        let text = token.to_text();
        assert!(text.starts_with("shoal2-") && text.len() == 7 + 32 + 1 + 64, "{text}");
        assert_eq!(Token::parse(&format!(" {text}\n")), Ok(token));
        assert!(pin.matches(b"a CA certificate") && !pin.matches(b"another CA"));
        let plain = Token::parse(&secret.to_token()).expect("shoal1");
        assert_eq!((plain.secret, plain.ca_pin), (secret.clone(), None));
        let body = &secret.to_token()[7..];
        for bad in [format!("shoal2-{body}"), format!("shoal2-zz{}-{body}", "0".repeat(30)), format!("shoal2-{}-{body}", "0".repeat(30))] {
            assert_eq!(Token::parse(&bad), Err(SecretError::BadPin), "{bad}");
        }
        assert!(!format!("{:?}", Token::parse(&text)).contains(body), "Debug shows the secret");
    }
}
