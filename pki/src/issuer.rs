//! The leader's side of the join protocol: check a [`JoinRequest`], issue a short-lived
//! node certificate, answer with a [`JoinResponse`].
//!
//! Checks, in order (cheapest and least exposed first; nothing from a stranger is parsed
//! before its HMAC verifies): the request HMAC; the node id is not revoked; the CSR parses
//! and its self-signature verifies (proof that the sender holds the key); the key is
//! ECDSA P-256; the node id is the one that key derives from. Nothing the CSR asks for
//! (names, extensions) is copied: the certificate is built from the grant alone.
//!
//! The certificate: subject `CN=<node id hex>, OU=<role>, O=shoal cluster <cluster id>`,
//! SAN `<node id hex>.node.shoal` plus the granted IP addresses, key usage digital
//! signature, extended key usages server and client auth (every node is both), a random
//! 16-byte serial, valid from `now` minus the clock-skew allowance for the policy's
//! lifetime (7 days by default), never past the CA's own expiry.

use super::ca::{random_serial, ClusterCa, CLOCK_SKEW_ALLOWANCE};
use super::join::{JoinKey, JoinRequest, JoinResponse};
use super::{node_dns_name, to_asn1_time, unix_secs, NodeRole, PkiError};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use rustls::pki_types::CertificateDer;
use shoal_secret::{ClusterId, JoinSecret};
use shoal_wire::NodeId;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Default lifetime of a node certificate.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest lifetime the issuer accepts: below this, renewal (at 2/3) would be a storm.
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(60);
/// Most IP addresses one certificate carries (a node has a handful; this bounds the size).
pub const MAX_ADDRESSES: usize = 32;

/// How the issuer issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuePolicy {
    /// How long a node certificate is valid from issuance (configurable, default 7 days).
    pub cert_lifetime: Duration,
    /// How far before `now` the validity starts, for nodes whose clocks are a bit behind.
    pub clock_skew_allowance: Duration,
}

impl Default for IssuePolicy {
    fn default() -> Self {
        Self { cert_lifetime: DEFAULT_CERT_LIFETIME, clock_skew_allowance: CLOCK_SKEW_ALLOWANCE }
    }
}

/// What the leader grants a node, from its own knowledge (the state and membership), not
/// from anything the node claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGrant {
    pub role: NodeRole,
    /// IP SANs (the node's advertised addresses).
    pub addresses: Vec<IpAddr>,
    /// Extra DNS SANs (the node's name when it is a valid DNS name; see [`node_names`]), so
    /// `docker --tlsverify` with `DOCKER_HOST=tcp://NAME:PORT` accepts the node.
    pub names: Vec<String>,
}

/// The DNS SANs a node named `name` gets: the name itself when it is a valid DNS name
/// (letters, digits, `-` and `.`, labels of 1 to 63 characters, at most 253 in all),
/// lower-cased; none otherwise (the node keeps its `<id>.node.shoal` name and its IPs).
pub fn node_names(name: &str) -> Vec<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) || name.ends_with(super::NODE_DNS_SUFFIX) {
        return Vec::new();
    }
    if name.parse::<IpAddr>().is_ok() {
        return Vec::new();
    }
    vec![name]
}

/// Issues node certificates with the cluster CA. Lives on the leader.
pub struct Issuer {
    ca: ClusterCa,
    key: JoinKey,
    cluster: ClusterId,
    policy: IssuePolicy,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("cluster", &self.cluster).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Issuer {
    pub fn new(ca: ClusterCa, secret: &JoinSecret, policy: IssuePolicy) -> Self {
        Self { ca, key: JoinKey::from_secret(secret), cluster: secret.cluster_id(), policy }
    }

    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    pub fn policy(&self) -> IssuePolicy {
        self.policy
    }

    /// Answers a join request: checks it (see the module docs), issues the certificate and
    /// vouches for it and the CA certificate with the response HMAC.
    pub fn answer_join(
        &self,
        request: &JoinRequest,
        grant: &NodeGrant,
        revoked: &BTreeSet<NodeId>,
        now: SystemTime,
        rng: &mut impl rand::CryptoRng,
    ) -> Result<JoinResponse, PkiError> {
        self.key.verify_request(request)?;
        let cert = self.issue(&request.csr_der, request.node_id, grant, revoked, now, rng)?;
        Ok(self.key.sign_response(&request.nonce, cert.to_vec(), self.ca.cert_der().to_vec()))
    }

    /// Issues a client certificate (see [`crate::client`]) with this cluster's CA.
    pub fn issue_client(
        &self,
        csr_der: &[u8],
        name: &str,
        lifetime: Duration,
        revoked: &BTreeSet<NodeId>,
        now: SystemTime,
        rng: &mut impl rand::CryptoRng,
    ) -> Result<(CertificateDer<'static>, crate::client::ClientCertInfo), PkiError> {
        crate::client::issue_client(&self.ca, self.cluster, csr_der, name, lifetime, revoked, now, rng)
    }

    /// Issues a certificate for a CSR without the join HMAC: for the leader's own
    /// certificate, and for renewals that arrive over an already authenticated channel.
    /// Every other check of [`Self::answer_join`] applies.
    pub fn issue(
        &self,
        csr_der: &[u8],
        node_id: NodeId,
        grant: &NodeGrant,
        revoked: &BTreeSet<NodeId>,
        now: SystemTime,
        rng: &mut impl rand::CryptoRng,
    ) -> Result<CertificateDer<'static>, PkiError> {
        if revoked.contains(&node_id) {
            return Err(PkiError::Revoked(node_id));
        }
        if self.policy.cert_lifetime < MIN_CERT_LIFETIME {
            return Err(PkiError::BadPolicy("certificate lifetime below one minute"));
        }
        if grant.addresses.len() > MAX_ADDRESSES || grant.names.len() > MAX_ADDRESSES {
            return Err(PkiError::BadPolicy("more than 32 addresses or names in one certificate"));
        }
        let (csr, actual) = super::checked_csr(csr_der)?;
        if actual != node_id {
            return Err(PkiError::NodeIdMismatch { claimed: node_id, actual });
        }
        let now_secs = unix_secs(now);
        let ca_end = unix_secs(self.ca.not_after());
        if now_secs >= ca_end {
            return Err(PkiError::BadPolicy("the cluster CA has expired"));
        }
        let not_after = now_secs.saturating_add(self.policy.cert_lifetime.as_secs()).min(ca_end);
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node_id.to_string());
        params.distinguished_name.push(DnType::OrganizationalUnitName, grant.role.as_str());
        params.distinguished_name.push(DnType::OrganizationName, format!("shoal cluster {}", self.cluster));
        let dns = node_dns_name(node_id).try_into()?;
        let mut sans = vec![SanType::DnsName(dns)];
        for name in &grant.names {
            sans.push(SanType::DnsName(name.clone().try_into()?));
        }
        sans.extend(grant.addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        // Backdated for slow clocks, but by at most a quarter of the lifetime: renewal is at two
        // thirds of notBefore..notAfter, so a backdate near the lifetime would make a short-lived
        // certificate due for renewal the moment it is issued (a renewal storm).
        let backdate = self.policy.clock_skew_allowance.min(self.policy.cert_lifetime / 4);
        params.not_before = to_asn1_time(now_secs.saturating_sub(backdate.as_secs()))?;
        params.not_after = to_asn1_time(not_after)?;
        params.serial_number = Some(random_serial(rng));
        let cert = params.signed_by(&csr.public_key, self.ca.issuer())?;
        Ok(cert.der().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::CertInfo;
    use crate::testing::{rng, secret, t0, Cluster};
    use crate::{node_id_of_key, renew_at};
    use rcgen::KeyPair;

    fn grant() -> NodeGrant {
        NodeGrant {
            role: NodeRole::Worker,
            addresses: vec!["10.1.2.3".parse().expect("ip"), "fd00::7".parse().expect("ip")],
            names: vec!["pi-1.home".into()],
        }
    }

    /// The whole protocol, through the codec both ways, as the network will carry it.
    #[test]
    fn join_gives_a_certificate_for_the_joiner_signed_by_the_ca() {
        let c = Cluster::new(1);
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&c.secret, &key, &mut rng(10)).expect("request");
        let req_on_wire = JoinRequest::from_bytes(&req.to_bytes().expect("encode")).expect("decode");
        let resp = c.issuer.answer_join(&req_on_wire, &grant(), &BTreeSet::new(), t0(), &mut rng(11)).expect("answer");
        let resp_on_wire = JoinResponse::from_bytes(&resp.to_bytes().expect("encode")).expect("decode");
        let got = resp_on_wire.verify(&c.secret, &req, &key).expect("joiner accepts");
        assert_eq!(got.ca_der.as_ref(), c.issuer.ca().cert_der().as_ref());
        let info = got.info;
        assert_eq!(info.node_id, node_id_of_key(&key));
        assert_eq!(info.role, Some(NodeRole::Worker));
        assert_eq!(info.addresses, grant().addresses);
        assert_eq!(info.dns_names, grant().names);
        assert_eq!(info.not_after, t0() + DEFAULT_CERT_LIFETIME);
        assert_eq!(info.not_before, t0() - CLOCK_SKEW_ALLOWANCE);
        assert_eq!(info.serial.len(), 16);
        assert_eq!(info.renew_at(), renew_at(info.not_before, info.not_after));
        assert!(!info.needs_renewal(t0() + Duration::from_secs(4 * 24 * 3600)));
        assert!(info.needs_renewal(t0() + Duration::from_secs(5 * 24 * 3600)));
        // The certificate names the node and nothing the CSR asked for.
        let (_, x509) = x509_parser::parse_x509_certificate(&got.cert_der).expect("parse");
        let cn: Vec<_> = x509.subject().iter_common_name().filter_map(|a| a.as_str().ok()).collect();
        assert_eq!(cn, vec![info.node_id.to_string()]);
        assert!(!x509.is_ca());
    }

    #[test]
    fn lifetime_is_configurable_and_never_outlives_the_ca() {
        let mut c = Cluster::new(1);
        let policy = IssuePolicy { cert_lifetime: Duration::from_secs(3600), ..IssuePolicy::default() };
        c.issuer = Issuer::new(
            ClusterCa::from_pem(c.issuer.ca().cert_pem(), &c.issuer.ca().key_pem()).expect("ca"),
            &c.secret,
            policy,
        );
        let (_, cert) = c.join(NodeRole::Manager, t0());
        let info = CertInfo::parse(&cert).expect("parse");
        assert_eq!(info.not_after, t0() + Duration::from_secs(3600));
        assert_eq!(info.role, Some(NodeRole::Manager));
        assert!(!info.needs_renewal(t0()), "a fresh certificate is not due for renewal");
        // A short lifetime is backdated by at most a quarter of it, so it is not due at once.
        c.issuer.policy.cert_lifetime = Duration::from_secs(60);
        let (_, cert) = c.join(NodeRole::Worker, t0());
        let info = CertInfo::parse(&cert).expect("parse");
        assert_eq!(info.not_before, t0() - Duration::from_secs(15));
        assert!(!info.needs_renewal(t0() + Duration::from_secs(20)));
        assert!(info.needs_renewal(t0() + Duration::from_secs(35)));
        c.issuer.policy.cert_lifetime = Duration::from_secs(3600);
        // Close to the CA's end the certificate is cut to the CA's expiry.
        let late = c.issuer.ca().not_after() - Duration::from_secs(600);
        let (_, cert) = c.join(NodeRole::Worker, late);
        assert_eq!(CertInfo::parse(&cert).expect("parse").not_after, c.issuer.ca().not_after());
        // Past it, nothing is issued.
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&c.secret, &key, &mut rng(3)).expect("request");
        let err = c.issuer.answer_join(&req, &grant(), &BTreeSet::new(), c.issuer.ca().not_after(), &mut rng(4));
        assert!(matches!(err, Err(PkiError::BadPolicy(_))));
        // A silly lifetime is refused.
        c.issuer.policy.cert_lifetime = Duration::from_secs(1);
        let err = c.issuer.answer_join(&req, &grant(), &BTreeSet::new(), t0(), &mut rng(4));
        assert!(matches!(err, Err(PkiError::BadPolicy(_))));
    }

    #[test]
    fn node_names_are_dns_names_or_nothing() {
        assert_eq!(node_names("n1"), vec!["n1".to_string()]);
        assert_eq!(node_names("Pi-1.Home."), vec!["pi-1.home".to_string()]);
        for bad in ["", "has space", "under_score", "-x", "x-", "10.0.0.1", &"a".repeat(64), "ab.node.shoal", "a..b"] {
            assert!(node_names(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn wrong_secret_gets_no_certificate() {
        let c = Cluster::new(1);
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&secret(99), &key, &mut rng(10)).expect("request");
        let err = c.issuer.answer_join(&req, &grant(), &BTreeSet::new(), t0(), &mut rng(11)).expect_err("refused");
        assert!(matches!(err, PkiError::JoinRequestForged), "{err}");
        assert!(!err.to_string().contains(&c.secret.to_token()[7..]));
    }

    #[test]
    fn tampered_csr_or_nonce_is_refused() {
        let c = Cluster::new(1);
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&c.secret, &key, &mut rng(10)).expect("request");
        // Another CSR swapped in (e.g. the attacker's own key under the victim's HMAC).
        let mut swapped = req.clone();
        let other = KeyPair::generate().expect("key");
        swapped.csr_der = JoinRequest::new(&c.secret, &other, &mut rng(12)).expect("request").csr_der;
        let mut nonce = req.clone();
        nonce.nonce[0] ^= 0x80;
        let mut flipped = req.clone();
        flipped.csr_der[40] ^= 1;
        for bad in [swapped, nonce, flipped] {
            let err = c.issuer.answer_join(&bad, &grant(), &BTreeSet::new(), t0(), &mut rng(11)).expect_err("refused");
            assert!(matches!(err, PkiError::JoinRequestForged), "{err}");
        }
    }

    #[test]
    fn csr_for_another_key_than_the_node_id_is_refused() {
        // A secret holder (so the HMAC is fine) asks for a certificate under someone
        // else's node id with its own key.
        let c = Cluster::new(1);
        let victim = KeyPair::generate().expect("key");
        let mine = KeyPair::generate().expect("key");
        let csr = JoinRequest::new(&c.secret, &mine, &mut rng(1)).expect("request").csr_der;
        let req = JoinRequest::signed(&c.secret, node_id_of_key(&victim), csr, [3; 32]);
        let err = c.issuer.answer_join(&req, &grant(), &BTreeSet::new(), t0(), &mut rng(11)).expect_err("refused");
        assert!(
            matches!(err, PkiError::NodeIdMismatch { claimed, actual } if claimed == node_id_of_key(&victim) && actual == node_id_of_key(&mine)),
            "{err}"
        );
    }

    #[test]
    fn garbage_csr_with_a_valid_hmac_is_refused() {
        let c = Cluster::new(1);
        let req = JoinRequest::signed(&c.secret, NodeId([1; 16]), b"not a csr".to_vec(), [3; 32]);
        let err = c.issuer.answer_join(&req, &grant(), &BTreeSet::new(), t0(), &mut rng(11)).expect_err("refused");
        assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
        // A CSR whose signature does not verify (bit flipped in the signature, HMAC redone).
        let key = KeyPair::generate().expect("key");
        let mut csr = JoinRequest::new(&c.secret, &key, &mut rng(1)).expect("request").csr_der;
        let last = csr.len() - 2;
        csr[last] ^= 1;
        let req = JoinRequest::signed(&c.secret, node_id_of_key(&key), csr, [3; 32]);
        let err = c.issuer.answer_join(&req, &grant(), &BTreeSet::new(), t0(), &mut rng(11)).expect_err("refused");
        assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
    }

    #[test]
    fn revoked_node_gets_no_certificate() {
        let c = Cluster::new(1);
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&c.secret, &key, &mut rng(10)).expect("request");
        let revoked = BTreeSet::from([node_id_of_key(&key)]);
        let err = c.issuer.answer_join(&req, &grant(), &revoked, t0(), &mut rng(11)).expect_err("refused");
        assert!(matches!(err, PkiError::Revoked(id) if id == node_id_of_key(&key)));
    }

    #[test]
    fn joiner_refuses_a_response_not_vouched_for_by_the_secret() {
        let c = Cluster::new(1);
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&c.secret, &key, &mut rng(10)).expect("request");
        let good = c.issuer.answer_join(&req, &grant(), &BTreeSet::new(), t0(), &mut rng(11)).expect("answer");
        // An impostor leader with its own CA and the wrong secret.
        let impostor = Cluster::new(2);
        let forged = JoinKey::from_secret(&impostor.secret).sign_response(
            &req.nonce,
            impostor
                .issuer
                .issue(&req.csr_der, req.node_id, &grant(), &BTreeSet::new(), t0(), &mut rng(5))
                .expect("issue")
                .to_vec(),
            impostor.issuer.ca().cert_der().to_vec(),
        );
        assert!(matches!(forged.verify(&c.secret, &req, &key), Err(PkiError::JoinResponseForged)));
        // The genuine answer with its CA swapped, or its HMAC flipped.
        let mut swapped = good.clone();
        swapped.ca_der = impostor.issuer.ca().cert_der().to_vec();
        assert!(matches!(swapped.verify(&c.secret, &req, &key), Err(PkiError::JoinResponseForged)));
        let mut flipped = good.clone();
        flipped.hmac[7] ^= 1;
        assert!(matches!(flipped.verify(&c.secret, &req, &key), Err(PkiError::JoinResponseForged)));
        // A genuine answer to an earlier request (replay): the nonce differs.
        let later = JoinRequest::new(&c.secret, &key, &mut rng(20)).expect("request");
        assert!(matches!(good.verify(&c.secret, &later, &key), Err(PkiError::JoinResponseForged)));
        // A genuine answer checked by someone with the wrong secret.
        assert!(matches!(good.verify(&secret(3), &req, &key), Err(PkiError::JoinResponseForged)));
        good.verify(&c.secret, &req, &key).expect("the genuine answer is accepted");
    }

    #[test]
    fn joiner_refuses_a_vouched_certificate_for_someone_else() {
        // A secret holder answering with a certificate for another node (HMAC valid).
        let c = Cluster::new(1);
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&c.secret, &key, &mut rng(10)).expect("request");
        let (_, other_cert) = c.join(NodeRole::Worker, t0());
        let resp = c.issuer_key().sign_response(&req.nonce, other_cert.to_vec(), c.issuer.ca().cert_der().to_vec());
        let err = resp.verify(&c.secret, &req, &key).expect_err("refused");
        assert!(matches!(err, PkiError::IssuedCertificateMismatch(_)), "{err}");
        // Or a certificate not signed by the CA it came with.
        let other = Cluster::new(1);
        let foreign = other
            .issuer
            .issue(&req.csr_der, req.node_id, &grant(), &BTreeSet::new(), t0(), &mut rng(5))
            .expect("issue");
        let resp = c.issuer_key().sign_response(&req.nonce, foreign.to_vec(), c.issuer.ca().cert_der().to_vec());
        let err = resp.verify(&c.secret, &req, &key).expect_err("refused");
        assert!(matches!(err, PkiError::IssuedCertificateMismatch(_)), "{err}");
    }

    #[test]
    fn unsealed_ca_issues_certificates_that_chain_to_the_original() {
        let c = Cluster::new(1);
        let sealed = c.issuer.ca().seal_key(&c.secret, &mut rng(1));
        let ca = ClusterCa::unseal(c.issuer.ca().cert_pem(), &sealed, &c.secret).expect("unseal");
        let issuer = Issuer::new(ca, &c.secret, IssuePolicy::default());
        let key = KeyPair::generate().expect("key");
        let req = JoinRequest::new(&c.secret, &key, &mut rng(10)).expect("request");
        let resp = issuer.answer_join(&req, &grant(), &BTreeSet::new(), t0(), &mut rng(11)).expect("answer");
        let got = resp.verify(&c.secret, &req, &key).expect("accepted");
        assert_eq!(got.ca_der.as_ref(), c.issuer.ca().cert_der().as_ref());
    }
}
