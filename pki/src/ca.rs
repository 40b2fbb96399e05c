//! The cluster CA: created once by the first leader, kept in the replicated state as its
//! certificate (PEM) plus its key sealed with a key derived from the join secret.
//!
//! Sealed key layout (a serde struct, encoded by the state machine through the project's
//! codec): `version`, a random 24-byte nonce, and XChaCha20-Poly1305 ciphertext of the
//! key's PKCS#8 PEM. The associated data binds the sealed key to its CA certificate
//! (`domain tag || SHA-256(CA cert DER)`), so a sealed key cannot be paired with another
//! certificate; after opening, the key is also checked against the certificate.

use super::{from_unix_secs, is_supported_key, to_asn1_time, unix_secs, PkiError};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use shoal_secret::{ClusterId, JoinSecret};
use std::fmt;
use std::time::{Duration, SystemTime};

/// How long the cluster CA is valid: 10 years. There is no CA rotation yet.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far before `now` certificates start to be valid, so a node whose clock is a little
/// behind the issuer's accepts a fresh certificate at once.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// Format version of [`SealedCaKey`].
pub const SEALED_KEY_VERSION: u8 = 1;
/// `JoinSecret::derive_key` purpose of the sealing key.
const SEAL_PURPOSE: &str = "ca-key-seal";
const SEAL_AAD_TAG: &[u8] = b"shoal/ca-key-seal/v1";

/// The CA key, encrypted under a key derived from the join secret: safe to replicate to
/// every node (each holds the secret anyway) and to persist.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedCaKey {
    pub version: u8,
    pub nonce: [u8; 24],
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedCaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedCaKey(v{}, {} bytes)", self.version, self.ciphertext.len())
    }
}

/// The cluster CA with its private key: what the leader signs node certificates with.
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: SystemTime,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").field("cert_der_len", &self.cert_der.len()).field("key", &"<redacted>").finish()
    }
}

impl ClusterCa {
    /// Creates the CA of cluster `cluster`: subject CN `shoal cluster CA <cluster id>`,
    /// valid from `now` (minus the clock-skew allowance) for [`CA_LIFETIME`], path length 0
    /// (it signs node certificates only), a random serial. `key` must be ECDSA P-256; the
    /// caller generates it (`rcgen::KeyPair::generate()`), since ring cannot take our rng.
    pub fn create(
        cluster: ClusterId,
        key: KeyPair,
        now: SystemTime,
        rng: &mut impl rand::CryptoRng,
    ) -> Result<Self, PkiError> {
        if !is_supported_key(key.algorithm()) {
            return Err(PkiError::UnsupportedKey);
        }
        let now_secs = unix_secs(now);
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("shoal cluster CA {cluster}"));
        params.distinguished_name.push(DnType::OrganizationName, "shoal");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = to_asn1_time(now_secs.saturating_sub(CLOCK_SKEW_ALLOWANCE.as_secs()))?;
        let not_after_secs = now_secs.saturating_add(CA_LIFETIME.as_secs());
        params.not_after = to_asn1_time(not_after_secs)?;
        params.serial_number = Some(random_serial(rng));
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();
        let cert_pem = cert.pem();
        Ok(Self {
            cert_der,
            cert_pem,
            not_after: from_unix_secs(not_after_secs),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA certificate (DER): the one trust anchor of the cluster.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate (PEM), as stored in the replicated state.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PKCS#8 PEM). Secret: store it only sealed ([`Self::seal_key`]).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// When the CA certificate expires; node certificates never outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub(crate) fn issuer(&self) -> &rcgen::Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Seals the CA key under `secret.derive_key("ca-key-seal")`, bound to this CA's
    /// certificate.
    pub fn seal_key(&self, secret: &JoinSecret, rng: &mut impl rand::CryptoRng) -> SealedCaKey {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let cipher = seal_cipher(secret);
        let aad = seal_aad(&self.cert_der);
        let key_pem = self.key_pem();
        // Encryption with a valid key and nonce only fails for inputs beyond 2^38 bytes.
        #[allow(clippy::expect_used)]
        let ciphertext = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: key_pem.as_bytes(), aad: &aad })
            .expect("XChaCha20-Poly1305 encrypts any key-sized message");
        SealedCaKey { version: SEALED_KEY_VERSION, nonce, ciphertext }
    }

    /// Rebuilds the CA from its certificate (PEM) and sealed key. Fails if the secret is
    /// wrong, if anything was altered, if the certificate is not a self-signed CA
    /// certificate, or if the key does not belong to it.
    pub fn unseal(cert_pem: &str, sealed: &SealedCaKey, secret: &JoinSecret) -> Result<Self, PkiError> {
        if sealed.version != SEALED_KEY_VERSION {
            return Err(PkiError::UnknownSealVersion(sealed.version));
        }
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| PkiError::BadCertificate("the CA certificate is not PEM"))?;
        let cipher = seal_cipher(secret);
        let aad = seal_aad(&cert_der);
        let key_pem = cipher
            .decrypt(XNonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: &aad })
            .map_err(|_| PkiError::SealedKeyForged)?;
        let key_pem = String::from_utf8(key_pem).map_err(|_| PkiError::SealedKeyForged)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| PkiError::SealedKeyForged)?;
        Self::from_parts(cert_pem, cert_der, key)
    }

    /// Rebuilds the CA from its certificate and key, both PEM (as [`Self::cert_pem`] and
    /// [`Self::key_pem`] wrote them), checking that they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| PkiError::BadCertificate("the CA certificate is not PEM"))?;
        let key =
            KeyPair::from_pem(key_pem).map_err(|_| PkiError::BadCertificate("the CA key is not a PEM private key"))?;
        Self::from_parts(cert_pem, cert_der, key)
    }

    /// Checks that `key` belongs to the certificate and that the certificate is a valid
    /// self-signed CA certificate.
    fn from_parts(cert_pem: &str, cert_der: CertificateDer<'static>, key: KeyPair) -> Result<Self, PkiError> {
        if !is_supported_key(key.algorithm()) {
            return Err(PkiError::UnsupportedKey);
        }
        let not_after = {
            let (rest, x509) = x509_parser::parse_x509_certificate(&cert_der)
                .map_err(|_| PkiError::BadCertificate("the CA certificate does not parse"))?;
            if !rest.is_empty() {
                return Err(PkiError::BadCertificate("trailing bytes after the CA certificate"));
            }
            if !x509.is_ca() {
                return Err(PkiError::NotACa("basic constraints do not allow signing"));
            }
            x509.verify_signature(None).map_err(|_| PkiError::NotACa("not self-signed"))?;
            if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(PkiError::CaKeyMismatch);
            }
            let secs = x509.validity().not_after.timestamp();
            from_unix_secs(u64::try_from(secs).map_err(|_| PkiError::BadTime)?)
        };
        let issuer = rcgen::Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self { cert_der, cert_pem: cert_pem.to_string(), not_after, issuer })
    }
}

fn seal_cipher(secret: &JoinSecret) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(Key::from_slice(&secret.derive_key(SEAL_PURPOSE)))
}

fn seal_aad(cert_der: &[u8]) -> Vec<u8> {
    let mut aad = SEAL_AAD_TAG.to_vec();
    aad.extend_from_slice(&Sha256::digest(cert_der));
    aad
}

/// A random, positive, 16-byte certificate serial (top bit clear, next bit set so the DER
/// integer keeps all 16 bytes).
pub(crate) fn random_serial(rng: &mut impl rand::CryptoRng) -> SerialNumber {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rng, secret, t0};

    fn ca_for(secret: &JoinSecret) -> ClusterCa {
        ClusterCa::create(secret.cluster_id(), KeyPair::generate().expect("key"), t0(), &mut rng(1)).expect("ca")
    }

    #[test]
    fn ca_certificate_has_the_promised_shape() {
        let s = secret(1);
        let ca = ca_for(&s);
        let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse");
        assert!(x509.is_ca());
        let cn: Vec<_> = x509.subject().iter_common_name().filter_map(|a| a.as_str().ok()).collect();
        assert_eq!(cn, vec![format!("shoal cluster CA {}", s.cluster_id())]);
        let nb = x509.validity().not_before.timestamp() as u64;
        let na = x509.validity().not_after.timestamp() as u64;
        assert_eq!(na - unix_secs(t0()), 10 * 365 * 24 * 3600);
        assert_eq!(unix_secs(t0()) - nb, CLOCK_SKEW_ALLOWANCE.as_secs());
        assert_eq!(ca.not_after(), from_unix_secs(na));
        assert_eq!(x509.raw_serial().len(), 16);
        // The PEM we keep is the same certificate.
        let again = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("pem");
        assert_eq!(again.as_ref(), ca.cert_der().as_ref());
    }

    #[test]
    fn only_p256_keys_make_a_ca() {
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
        let err = ClusterCa::create(secret(1).cluster_id(), ed, t0(), &mut rng(1)).expect_err("must refuse");
        assert!(matches!(err, PkiError::UnsupportedKey));
    }

    #[test]
    fn sealed_key_round_trips_through_the_codec_and_unseals() {
        let s = secret(1);
        let ca = ca_for(&s);
        let sealed = ca.seal_key(&s, &mut rng(2));
        assert!(!String::from_utf8_lossy(&sealed.ciphertext).contains("PRIVATE KEY"));
        let bytes = shoal_wire::encode::<_, 4096>(&sealed).expect("encode");
        let decoded: SealedCaKey = shoal_wire::decode::<_, 4096>(&bytes).expect("decode");
        let back = ClusterCa::unseal(ca.cert_pem(), &decoded, &s).expect("unseal");
        assert_eq!(back.cert_der().as_ref(), ca.cert_der().as_ref());
        assert_eq!(back.key_pem(), ca.key_pem());
        assert_eq!(back.not_after(), ca.not_after());
    }

    #[test]
    fn unseal_fails_with_a_wrong_secret_and_says_nothing_secret() {
        let s = secret(1);
        let ca = ca_for(&s);
        let sealed = ca.seal_key(&s, &mut rng(2));
        let err = ClusterCa::unseal(ca.cert_pem(), &sealed, &secret(2)).expect_err("wrong secret");
        assert!(matches!(err, PkiError::SealedKeyForged));
        let text = err.to_string();
        assert!(!text.contains(&s.to_token()[7..]) && !text.contains("PRIVATE"), "{text}");
    }

    #[test]
    fn unseal_fails_when_anything_was_altered() {
        let s = secret(1);
        let ca = ca_for(&s);
        let sealed = ca.seal_key(&s, &mut rng(2));
        let mut flipped = sealed.clone();
        flipped.ciphertext[10] ^= 1;
        assert!(matches!(ClusterCa::unseal(ca.cert_pem(), &flipped, &s), Err(PkiError::SealedKeyForged)));
        let mut nonce = sealed.clone();
        nonce.nonce[0] ^= 1;
        assert!(matches!(ClusterCa::unseal(ca.cert_pem(), &nonce, &s), Err(PkiError::SealedKeyForged)));
        let mut version = sealed.clone();
        version.version = 9;
        assert!(matches!(ClusterCa::unseal(ca.cert_pem(), &version, &s), Err(PkiError::UnknownSealVersion(9))));
        // The sealed key is bound to its certificate: another CA's certificate does not open it.
        let other = ca_for(&s);
        assert!(matches!(ClusterCa::unseal(other.cert_pem(), &sealed, &s), Err(PkiError::SealedKeyForged)));
        assert!(matches!(ClusterCa::unseal("not pem", &sealed, &s), Err(PkiError::BadCertificate(_))));
    }

    #[test]
    fn from_pem_checks_the_pair() {
        let s = secret(1);
        let ca = ca_for(&s);
        let stranger = KeyPair::generate().expect("key").serialize_pem();
        let err = ClusterCa::from_pem(ca.cert_pem(), &stranger).expect_err("wrong key");
        assert!(matches!(err, PkiError::CaKeyMismatch));
        let back = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("right key");
        assert_eq!(back.cert_der().as_ref(), ca.cert_der().as_ref());
        // A leaf certificate is not a CA.
        let leaf = rcgen::generate_simple_self_signed(vec!["x.node.shoal".to_string()]).expect("leaf");
        let err = ClusterCa::from_pem(&leaf.cert.pem(), &leaf.signing_key.serialize_pem()).expect_err("not a CA");
        assert!(matches!(err, PkiError::NotACa(_)));
    }
}
