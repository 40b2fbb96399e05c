//! Test fixtures shared by the pki tests: seeded rngs, secrets, a cluster with a CA and an
//! issuer, and nodes that joined it.

use super::issuer::{IssuePolicy, Issuer, NodeGrant};
use super::join::JoinKey;
use super::join::JoinRequest;
use super::{ClusterCa, NodeRole};
use rand::SeedableRng;
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use shoal_secret::JoinSecret;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

/// A fixed "now" for the pure-logic tests (2025-06-15).
pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn secret(n: u64) -> JoinSecret {
    JoinSecret::generate(&mut rng(1000 + n))
}

/// One cluster: its secret, its CA (created at `t0()` or at real `now`), and an issuer.
pub struct Cluster {
    pub secret: JoinSecret,
    pub issuer: Issuer,
}

impl Cluster {
    pub fn new(n: u64) -> Self {
        Self::created_at(n, t0())
    }

    pub fn created_at(n: u64, now: SystemTime) -> Self {
        let secret = secret(n);
        let ca =
            ClusterCa::create(secret.cluster_id(), KeyPair::generate().expect("key"), now, &mut rng(n)).expect("ca");
        let issuer = Issuer::new(ca, &secret, IssuePolicy::default());
        Self { secret, issuer }
    }

    /// A cluster whose CA is created at the real `now`, for tests that run real TLS.
    pub fn live(n: u64) -> Self {
        Self::created_at(n, SystemTime::now())
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        self.issuer.ca().cert_der()
    }

    /// A manager that joined now: its key and certificate.
    pub fn issue(&self) -> (KeyPair, CertificateDer<'static>) {
        self.join(NodeRole::Manager, SystemTime::now())
    }

    /// Credentials of a manager that joined now (what a server presents).
    pub fn node_credentials(&self) -> std::sync::Arc<super::NodeCredentials> {
        let (key, cert) = self.issue();
        super::NodeCredentials::new(cert, &key).expect("credentials")
    }

    #[cfg(test)]
    pub(crate) fn issuer_key(&self) -> JoinKey {
        JoinKey::from_secret(&self.secret)
    }

    /// The answer this cluster's issuer would HMAC for `request_nonce`, around any bytes:
    /// lets a fuzzer reach the joiner's certificate checks behind the HMAC.
    pub fn sign_response(&self, request_nonce: &[u8; 32], cert_der: Vec<u8>, ca_der: Vec<u8>) -> super::JoinResponse {
        JoinKey::from_secret(&self.secret).sign_response(request_nonce, cert_der, ca_der)
    }

    /// A fresh node that went through the join protocol at `now`.
    pub fn join(&self, role: NodeRole, now: SystemTime) -> (KeyPair, CertificateDer<'static>) {
        let key = KeyPair::generate().expect("key");
        let mut r = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let req = JoinRequest::new(&self.secret, &key, &mut r).expect("request");
        let grant = NodeGrant { role, addresses: vec!["127.0.0.1".parse().expect("ip")], names: Vec::new() };
        let resp = self.issuer.answer_join(&req, &grant, &BTreeSet::new(), now, &mut r).expect("answer");
        let got = resp.verify(&self.secret, &req, &key).expect("joiner accepts");
        (key, got.cert_der)
    }
}
