//! The join protocol's two messages and the joiner's side of it.
//!
//! 1. The joiner sends [`JoinRequest`] `{node_id, csr_der, nonce, hmac}` with
//!    `hmac = HMAC-SHA256(secret.derive_key("join-hmac"),
//!    "shoal/join-request/v1" || node_id || len(csr) || csr || nonce)`.
//! 2. The leader checks it ([`super::Issuer::answer_join`]) and answers [`JoinResponse`]
//!    `{cert_der, ca_der, hmac}` with `hmac = HMAC-SHA256(same key,
//!    "shoal/join-response/v1" || request nonce || len(cert) || cert || len(ca) || ca)`.
//! 3. The joiner checks that HMAC ([`JoinResponse::verify`]): the CA it is about to trust
//!    is vouched for by a holder of the join secret, for this request (the nonce), so
//!    neither side trusts first use blindly. It also checks that the certificate is for
//!    its own key and node id and is signed by that CA.
//!
//! Lengths are 8-byte big-endian, so no two field splits give the same HMAC input; the
//! domain tags keep a request HMAC from ever passing as a response HMAC. HMACs are
//! compared in constant time (`hmac`'s `verify_slice`). A replayed request only gets a
//! certificate for a key the replayer does not hold, so the leader keeps no nonce memory.
//!
//! Both messages travel through the project's codec (`shoal_wire`) with
//! [`MAX_JOIN_MESSAGE_LEN`] as the limit: [`JoinRequest::to_bytes`] / `from_bytes`.

use super::cert::CertInfo;
use super::{node_id_of_key, PkiError};
use hmac::{Hmac, Mac};
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::CertificateDer;
use sha2::Sha256;
use shoal_secret::JoinSecret;
use shoal_wire::NodeId;

/// Largest encoded join message. A P-256 CSR is ~250 bytes and a node certificate ~600;
/// 16 KiB leaves room for many IP SANs and bounds what a stranger can make us allocate.
pub const MAX_JOIN_MESSAGE_LEN: usize = 16 * 1024;
/// `JoinSecret::derive_key` purpose of the HMAC key (both directions).
pub const JOIN_HMAC_PURPOSE: &str = "join-hmac";
const REQUEST_TAG: &[u8] = b"shoal/join-request/v1";
const RESPONSE_TAG: &[u8] = b"shoal/join-response/v1";

type HmacSha256 = Hmac<Sha256>;

/// A joining node's request for a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinRequest {
    pub node_id: NodeId,
    /// PKCS#10 request, signed by the node's key (proof of possession).
    pub csr_der: Vec<u8>,
    /// Fresh random bytes; the answer's HMAC covers them, so an old answer cannot be replayed.
    pub nonce: [u8; 32],
    pub hmac: [u8; 32],
}

/// The leader's answer: the node certificate and the CA certificate, vouched for by the HMAC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinResponse {
    pub cert_der: Vec<u8>,
    pub ca_der: Vec<u8>,
    pub hmac: [u8; 32],
}

/// What a successful join gives the joiner.
#[derive(Debug, Clone)]
pub struct NodeCertificate {
    pub cert_der: CertificateDer<'static>,
    /// The cluster CA: the only trust anchor for TLS from now on.
    pub ca_der: CertificateDer<'static>,
    pub info: CertInfo,
}

/// The HMAC key of the join protocol. Held by value; `Debug` is redacted.
#[derive(Clone)]
pub(crate) struct JoinKey([u8; 32]);

impl std::fmt::Debug for JoinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinKey(<redacted>)")
    }
}

impl JoinKey {
    pub(crate) fn from_secret(secret: &JoinSecret) -> Self {
        Self(secret.derive_key(JOIN_HMAC_PURPOSE))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        #[allow(clippy::expect_used)]
        <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC accepts a 32-byte key")
    }

    fn request_mac(&self, node_id: &NodeId, csr_der: &[u8], nonce: &[u8; 32]) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(REQUEST_TAG);
        mac.update(&node_id.0);
        update_with_len(&mut mac, csr_der);
        mac.update(nonce);
        mac
    }

    fn response_mac(&self, nonce: &[u8; 32], cert_der: &[u8], ca_der: &[u8]) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(RESPONSE_TAG);
        mac.update(nonce);
        update_with_len(&mut mac, cert_der);
        update_with_len(&mut mac, ca_der);
        mac
    }

    /// Checks a request's HMAC in constant time.
    pub(crate) fn verify_request(&self, req: &JoinRequest) -> Result<(), PkiError> {
        self.request_mac(&req.node_id, &req.csr_der, &req.nonce)
            .verify_slice(&req.hmac)
            .map_err(|_| PkiError::JoinRequestForged)
    }

    /// Builds the leader's answer to the request that carried `request_nonce`.
    pub(crate) fn sign_response(&self, request_nonce: &[u8; 32], cert_der: Vec<u8>, ca_der: Vec<u8>) -> JoinResponse {
        let hmac = self.response_mac(request_nonce, &cert_der, &ca_der).finalize().into_bytes().into();
        JoinResponse { cert_der, ca_der, hmac }
    }
}

fn update_with_len(mac: &mut HmacSha256, field: &[u8]) {
    mac.update(&(field.len() as u64).to_be_bytes());
    mac.update(field);
}

impl JoinRequest {
    /// The joiner's request: a CSR for `key` (subject CN = node id; the issuer decides
    /// everything else), a fresh nonce from `rng`, and the HMAC.
    pub fn new(secret: &JoinSecret, key: &KeyPair, rng: &mut impl rand::CryptoRng) -> Result<Self, PkiError> {
        if !super::is_supported_key(key.algorithm()) {
            return Err(PkiError::UnsupportedKey);
        }
        let node_id = node_id_of_key(key);
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node_id.to_string());
        let csr = params.serialize_request(key)?;
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        Ok(Self::signed(secret, node_id, csr.der().to_vec(), nonce))
    }

    /// A request with exactly these fields and a valid HMAC under `secret`. (For renewal
    /// paths that reuse a CSR, and for tests that build odd requests.)
    pub fn signed(secret: &JoinSecret, node_id: NodeId, csr_der: Vec<u8>, nonce: [u8; 32]) -> Self {
        let hmac = JoinKey::from_secret(secret).request_mac(&node_id, &csr_der, &nonce).finalize().into_bytes().into();
        Self { node_id, csr_der, nonce, hmac }
    }

    /// Encodes through the project's codec, within [`MAX_JOIN_MESSAGE_LEN`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, PkiError> {
        shoal_wire::encode::<_, MAX_JOIN_MESSAGE_LEN>(self).map_err(|e| PkiError::Encode(e.to_string()))
    }

    /// Decodes from untrusted bytes (bounded by [`MAX_JOIN_MESSAGE_LEN`]). Says nothing
    /// about the HMAC: the issuer checks that.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PkiError> {
        Ok(shoal_wire::decode::<_, MAX_JOIN_MESSAGE_LEN>(bytes)?)
    }
}

impl JoinResponse {
    /// Encodes through the project's codec, within [`MAX_JOIN_MESSAGE_LEN`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, PkiError> {
        shoal_wire::encode::<_, MAX_JOIN_MESSAGE_LEN>(self).map_err(|e| PkiError::Encode(e.to_string()))
    }

    /// Decodes from untrusted bytes (bounded by [`MAX_JOIN_MESSAGE_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PkiError> {
        Ok(shoal_wire::decode::<_, MAX_JOIN_MESSAGE_LEN>(bytes)?)
    }

    /// The joiner's check of the answer to `request` (which it sent, made with `key`):
    /// the HMAC under `secret` over the request's nonce and both certificates, then that the
    /// CA certificate is a self-signed CA, that the node certificate is signed by it, is
    /// for `key`, and names the node id of the request.
    pub fn verify(
        &self,
        secret: &JoinSecret,
        request: &JoinRequest,
        key: &KeyPair,
    ) -> Result<NodeCertificate, PkiError> {
        JoinKey::from_secret(secret)
            .response_mac(&request.nonce, &self.cert_der, &self.ca_der)
            .verify_slice(&self.hmac)
            .map_err(|_| PkiError::JoinResponseForged)?;
        let (rest, ca) = x509_parser::parse_x509_certificate(&self.ca_der)
            .map_err(|_| PkiError::BadCertificate("the CA certificate does not parse"))?;
        if !rest.is_empty() {
            return Err(PkiError::BadCertificate("trailing bytes after the CA certificate"));
        }
        if !ca.is_ca() {
            return Err(PkiError::NotACa("basic constraints do not allow signing"));
        }
        ca.verify_signature(None).map_err(|_| PkiError::NotACa("not self-signed"))?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|_| PkiError::BadCertificate("the node certificate does not parse"))?;
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|_| PkiError::IssuedCertificateMismatch("not signed by the CA that came with it"))?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::IssuedCertificateMismatch("not for this node's key"));
        }
        let info = CertInfo::parse(&self.cert_der)?;
        if info.node_id != request.node_id || info.node_id != node_id_of_key(key) {
            return Err(PkiError::IssuedCertificateMismatch("not for this node id"));
        }
        Ok(NodeCertificate {
            cert_der: CertificateDer::from(self.cert_der.clone()),
            ca_der: CertificateDer::from(self.ca_der.clone()),
            info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rng, secret};

    #[test]
    fn request_round_trips_through_the_codec_and_verifies() {
        let s = secret(1);
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&s, &key, &mut rng(1)).expect("request");
        assert_eq!(req.node_id, node_id_of_key(&key));
        let bytes = req.to_bytes().expect("encode");
        assert!(bytes.len() < 1024, "{} bytes", bytes.len());
        let back = JoinRequest::from_bytes(&bytes).expect("decode");
        assert_eq!(back, req);
        JoinKey::from_secret(&s).verify_request(&back).expect("valid hmac");
    }

    #[test]
    fn wrong_secret_or_any_altered_field_fails_the_request_hmac() {
        let s = secret(1);
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&s, &key, &mut rng(1)).expect("request");
        let verifier = JoinKey::from_secret(&s);
        assert!(matches!(JoinKey::from_secret(&secret(2)).verify_request(&req), Err(PkiError::JoinRequestForged)));
        let mut r = req.clone();
        r.nonce[31] ^= 1;
        assert!(matches!(verifier.verify_request(&r), Err(PkiError::JoinRequestForged)));
        let mut r = req.clone();
        r.node_id.0[0] ^= 1;
        assert!(matches!(verifier.verify_request(&r), Err(PkiError::JoinRequestForged)));
        let mut r = req.clone();
        let last = r.csr_der.len() - 1;
        r.csr_der[last] ^= 1;
        assert!(matches!(verifier.verify_request(&r), Err(PkiError::JoinRequestForged)));
        let mut r = req.clone();
        r.csr_der.push(0);
        assert!(matches!(verifier.verify_request(&r), Err(PkiError::JoinRequestForged)));
        let mut r = req;
        r.hmac[0] ^= 1;
        assert!(matches!(verifier.verify_request(&r), Err(PkiError::JoinRequestForged)));
    }

    #[test]
    fn oversized_and_garbage_messages_do_not_decode() {
        let big = JoinRequest {
            node_id: NodeId([0; 16]),
            csr_der: vec![0; MAX_JOIN_MESSAGE_LEN],
            nonce: [0; 32],
            hmac: [0; 32],
        };
        assert!(matches!(big.to_bytes(), Err(PkiError::Encode(_))));
        assert!(JoinRequest::from_bytes(&vec![0xff; MAX_JOIN_MESSAGE_LEN + 1]).is_err());
        assert!(JoinRequest::from_bytes(b"\x01\x02garbage").is_err());
        assert!(JoinResponse::from_bytes(&[]).is_err());
    }

    #[test]
    fn request_and_response_hmacs_are_not_interchangeable() {
        // Same key, same bytes in different roles: the domain tags keep them apart.
        let s = secret(1);
        let k = JoinKey::from_secret(&s);
        let nonce = [5u8; 32];
        let resp = k.sign_response(&nonce, vec![1, 2, 3], vec![]);
        let req = JoinRequest { node_id: NodeId([0; 16]), csr_der: vec![1, 2, 3], nonce, hmac: resp.hmac };
        assert!(k.verify_request(&req).is_err());
    }
}
