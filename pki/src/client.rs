//! Client certificates: what a user's `docker` or `shoal` CLI presents on the node's TCP
//! port (the Docker API and the shoal API over mutual TLS, issue 11 "Remote access").
//!
//! A client certificate is issued by the cluster CA for a key the user's machine generated
//! (only its CSR reaches the node). Subject `CN=<client name>, OU=client, O=shoal cluster
//! <cluster id>`, the single DNS SAN `<client id hex>.client.shoal` (the client id is the
//! node-id rule applied to its key: first 16 bytes of SHA-256 of the public key), key usage
//! digital signature and the extended key usage client auth only: it cannot serve TLS.
//!
//! It carries no `<id>.node.shoal` name and its OU is `client`, so every node-to-node
//! verifier (Raft, images, any session between nodes) refuses it: [`crate::cert`] reads a
//! node id only from a certificate that is not a client's.
//!
//! Pure: `now` and the rng are parameters, like the rest of the issuer.

use super::ca::{random_serial, ClusterCa};
use super::{from_unix_secs, node_id_of_public_key, to_asn1_time, unix_secs, PkiError};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use rustls::pki_types::CertificateDer;
use shoal_secret::ClusterId;
use shoal_wire::NodeId;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};
use x509_parser::extensions::GeneralName;

/// The subject OU of a client certificate (a node's is `manager` or `worker`).
pub const CLIENT_OU: &str = "client";
/// DNS suffix of a client certificate's one name: `<client id hex>.client.shoal`.
pub const CLIENT_DNS_SUFFIX: &str = "client.shoal";
/// Default lifetime of a client certificate (a laptop is not renewed automatically).
pub const DEFAULT_CLIENT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest lifetime the issuer gives a client certificate.
pub const MAX_CLIENT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Longest client name, in bytes.
pub const MAX_CLIENT_NAME_LEN: usize = 64;

/// A client name: 1 to [`MAX_CLIENT_NAME_LEN`] of lowercase letters, digits, `.`, `-`, `_`,
/// starting with a letter or digit (it goes into a certificate subject and into tables).
pub fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME_LEN
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

/// `<client id hex>.client.shoal`.
pub fn client_dns_name(id: NodeId) -> String {
    format!("{id}.{CLIENT_DNS_SUFFIX}")
}

/// The client id in a `<client id hex>.client.shoal` name, if it is one (lower-case only).
pub fn client_id_from_dns_name(name: &str) -> Option<NodeId> {
    let hex = name.strip_suffix(CLIENT_DNS_SUFFIX)?.strip_suffix('.')?;
    if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    NodeId::parse(hex)
}

/// What shoal reads from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertInfo {
    /// From the `<id>.client.shoal` SAN, checked against the public key.
    pub id: NodeId,
    /// The subject CN.
    pub name: String,
    pub serial: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Who holds a certificate of the cluster CA, as the TCP endpoints tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A node (`<id>.node.shoal`, OU manager or worker).
    Node(NodeId),
    /// A user's client (`<id>.client.shoal`, OU client).
    Client(NodeId),
}

impl Holder {
    /// The id the revoked set is checked for.
    pub fn id(self) -> NodeId {
        match self {
            Holder::Node(id) | Holder::Client(id) => id,
        }
    }
}

fn is_client_x509(x509: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    x509.subject().iter_organizational_unit().filter_map(|a| a.as_str().ok()).any(|ou| ou == CLIENT_OU)
}

/// Whether a parsed certificate says it is a client's (OU `client`); node readers refuse it.
pub(crate) fn is_client_certificate(x509: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    is_client_x509(x509)
}

impl ClientCertInfo {
    /// Parses a client certificate (DER); does not check who signed it (the TLS verifier does).
    pub fn parse(der: &[u8]) -> Result<Self, PkiError> {
        let (rest, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| PkiError::BadCertificate("does not parse as X.509"))?;
        if !rest.is_empty() {
            return Err(PkiError::BadCertificate("trailing bytes after the certificate"));
        }
        if !is_client_x509(&x509) {
            return Err(PkiError::BadCertificate("not a client certificate (its OU is not `client`)"));
        }
        let san = x509
            .subject_alternative_name()
            .map_err(|_| PkiError::BadCertificate("malformed subject alternative names"))?
            .ok_or(PkiError::BadCertificate("no subject alternative names"))?;
        let mut ids = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::DNSName(name) => client_id_from_dns_name(name),
            _ => None,
        });
        let claimed = ids.next().ok_or(PkiError::BadCertificate("no <client id>.client.shoal name"))?;
        if ids.next().is_some() {
            return Err(PkiError::BadCertificate("more than one client id name"));
        }
        let actual = node_id_of_public_key(x509.public_key().subject_public_key.data.as_ref());
        if actual != claimed {
            return Err(PkiError::NodeIdMismatch { claimed, actual });
        }
        let name = x509.subject().iter_common_name().filter_map(|a| a.as_str().ok()).next().unwrap_or("").to_string();
        let validity = x509.validity();
        let not_before = u64::try_from(validity.not_before.timestamp()).map_err(|_| PkiError::BadTime)?;
        let not_after = u64::try_from(validity.not_after.timestamp()).map_err(|_| PkiError::BadTime)?;
        Ok(Self {
            id: claimed,
            name,
            serial: x509.raw_serial().to_vec(),
            not_before: from_unix_secs(not_before),
            not_after: from_unix_secs(not_after),
        })
    }
}

/// Who a certificate (DER) belongs to: a node or a client. Fails for anything that is
/// neither (e.g. a node name on a client OU). Does not check the signature.
pub fn holder_of_cert(der: &[u8]) -> Result<Holder, PkiError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(der).map_err(|_| PkiError::BadCertificate("does not parse as X.509"))?;
    if is_client_x509(&x509) {
        ClientCertInfo::parse(der).map(|info| Holder::Client(info.id))
    } else {
        super::cert::node_id_of_cert(der).map(Holder::Node)
    }
}

/// Issues a client certificate named `name` for the key of `csr_der` (its self-signature
/// proves the requester holds the key), valid from `now` (minus `backdate`) for `lifetime`,
/// never past the CA. Refused for a bad name, a revoked client id, a key that is not ECDSA
/// P-256, or a lifetime out of range. Nothing in the CSR but its key is used.
#[allow(clippy::too_many_arguments)]
pub fn issue_client(
    ca: &ClusterCa,
    cluster: ClusterId,
    csr_der: &[u8],
    name: &str,
    lifetime: Duration,
    revoked: &BTreeSet<NodeId>,
    now: SystemTime,
    rng: &mut impl rand::CryptoRng,
) -> Result<(CertificateDer<'static>, ClientCertInfo), PkiError> {
    if !valid_client_name(name) {
        return Err(PkiError::BadPolicy(
            "a client name is 1 to 64 lowercase letters, digits, '.', '-' or '_', starting with a letter or digit",
        ));
    }
    if lifetime < Duration::from_secs(3600) || lifetime > MAX_CLIENT_LIFETIME {
        return Err(PkiError::BadPolicy("a client certificate lives 1 hour to 10 years"));
    }
    let (csr, id) = super::checked_csr(csr_der)?;
    if revoked.contains(&id) {
        return Err(PkiError::Revoked(id));
    }
    let now_secs = unix_secs(now);
    let ca_end = unix_secs(ca.not_after());
    if now_secs >= ca_end {
        return Err(PkiError::BadPolicy("the cluster CA has expired"));
    }
    let not_after = now_secs.saturating_add(lifetime.as_secs()).min(ca_end);
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationalUnitName, CLIENT_OU);
    params.distinguished_name.push(DnType::OrganizationName, format!("shoal cluster {cluster}"));
    params.subject_alt_names = vec![SanType::DnsName(client_dns_name(id).try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = to_asn1_time(now_secs.saturating_sub(super::ca::CLOCK_SKEW_ALLOWANCE.as_secs()))?;
    params.not_after = to_asn1_time(not_after)?;
    params.serial_number = Some(random_serial(rng));
    let cert = params.signed_by(&csr.public_key, ca.issuer())?;
    let der = cert.der().clone();
    let info = ClientCertInfo::parse(&der)?;
    Ok((der, info))
}

/// A CSR (DER) for `key`, as `shoal client new` sends it: it carries nothing but the key.
pub fn client_csr(key: &rcgen::KeyPair) -> Result<Vec<u8>, PkiError> {
    let params = CertificateParams::default();
    Ok(params.serialize_request(key)?.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rng, t0, Cluster};
    use crate::{node_id_of_key, NodeRole};

    fn issue(c: &Cluster, name: &str) -> (rcgen::KeyPair, CertificateDer<'static>, ClientCertInfo) {
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = client_csr(&key).expect("csr");
        let (der, info) = issue_client(
            c.issuer.ca(),
            c.secret.cluster_id(),
            &csr,
            name,
            DEFAULT_CLIENT_LIFETIME,
            &BTreeSet::new(),
            t0(),
            &mut rng(3),
        )
        .expect("issued");
        (key, der, info)
    }

    #[test]
    fn names_are_checked() {
        for good in ["laptop", "a", "alice-mbp.home", "x_1", &"a".repeat(64)] {
            assert!(valid_client_name(good), "{good}");
        }
        for bad in ["", "Laptop", "-x", ".x", "a b", "a/b", &"a".repeat(65), "é"] {
            assert!(!valid_client_name(bad), "{bad}");
        }
        let id = NodeId([0xab; 16]);
        assert_eq!(client_id_from_dns_name(&client_dns_name(id)), Some(id));
        assert_eq!(client_id_from_dns_name(&crate::node_dns_name(id)), None);
    }

    #[test]
    fn a_client_certificate_names_its_key_and_role_and_is_no_node_certificate() {
        let c = Cluster::new(1);
        let (key, der, info) = issue(&c, "laptop");
        assert_eq!(info.id, node_id_of_key(&key));
        assert_eq!(info.name, "laptop");
        assert_eq!(info.not_after, t0() + DEFAULT_CLIENT_LIFETIME);
        assert_eq!(holder_of_cert(&der).expect("holder"), Holder::Client(info.id));
        // Node readers refuse it: no node id comes out of a client certificate.
        assert!(crate::cert::node_id_of_cert(&der).is_err());
        assert!(crate::CertInfo::parse(&der).is_err());
        // Client auth only: it cannot serve TLS.
        let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let eku = x509.extended_key_usage().expect("eku").expect("present").value;
        assert!(eku.client_auth && !eku.server_auth);
        // A node certificate is a node's.
        let (nkey, ncert) = c.join(NodeRole::Worker, t0());
        assert_eq!(holder_of_cert(&ncert).expect("holder"), Holder::Node(node_id_of_key(&nkey)));
        assert!(ClientCertInfo::parse(&ncert).is_err());
    }

    #[test]
    fn refusals() {
        let c = Cluster::new(1);
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = client_csr(&key).expect("csr");
        let go = |name: &str, life: Duration, revoked: &BTreeSet<NodeId>, csr: &[u8]| {
            issue_client(c.issuer.ca(), c.secret.cluster_id(), csr, name, life, revoked, t0(), &mut rng(1))
        };
        assert!(matches!(go("Bad Name", DEFAULT_CLIENT_LIFETIME, &BTreeSet::new(), &csr), Err(PkiError::BadPolicy(_))));
        assert!(matches!(go("x", Duration::from_secs(60), &BTreeSet::new(), &csr), Err(PkiError::BadPolicy(_))));
        let revoked = BTreeSet::from([node_id_of_key(&key)]);
        assert!(matches!(go("x", DEFAULT_CLIENT_LIFETIME, &revoked, &csr), Err(PkiError::Revoked(_))));
        assert!(matches!(go("x", DEFAULT_CLIENT_LIFETIME, &BTreeSet::new(), b"junk"), Err(PkiError::BadCsr(_))));
        // Never past the CA.
        let late = c.issuer.ca().not_after() - Duration::from_secs(7200);
        let (_, info) =
            issue_client(c.issuer.ca(), c.secret.cluster_id(), &csr, "x", DEFAULT_CLIENT_LIFETIME, &BTreeSet::new(), late, &mut rng(1))
                .expect("issued");
        assert_eq!(info.not_after, c.issuer.ca().not_after());
    }
}
