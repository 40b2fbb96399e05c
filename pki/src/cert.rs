//! Reading a node certificate (node id, role, addresses, validity) and the renewal rule:
//! a certificate is renewed at two thirds of its lifetime, so a node that misses one
//! renewal still has a third of the lifetime (over two days at the default 7) to retry.

use super::{from_unix_secs, node_id_from_dns_name, node_id_of_public_key, NodeRole, PkiError};
use shoal_wire::NodeId;
use std::net::IpAddr;
use std::time::SystemTime;
use x509_parser::extensions::GeneralName;

/// What shoal reads from a node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// From the `<id>.node.shoal` DNS SAN, checked against the certificate's public key.
    pub node_id: NodeId,
    /// From the subject OU; `None` if absent or unknown (a newer issuer's role).
    pub role: Option<NodeRole>,
    /// The IP address SANs.
    pub addresses: Vec<IpAddr>,
    /// The DNS SANs other than `<id>.node.shoal` (the node's name, for `docker --tlsverify`).
    pub dns_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The serial number's bytes (as DER has them).
    pub serial: Vec<u8>,
}

impl CertInfo {
    /// Parses a node certificate (DER). Does not check who signed it: that is the TLS
    /// verifier's job, or [`super::join::JoinResponse::verify`]'s.
    pub fn parse(der: &[u8]) -> Result<Self, PkiError> {
        let (rest, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| PkiError::BadCertificate("does not parse as X.509"))?;
        if !rest.is_empty() {
            return Err(PkiError::BadCertificate("trailing bytes after the certificate"));
        }
        let node_id = node_id_of_x509(&x509)?;
        let role = x509.subject().iter_organizational_unit().filter_map(|a| a.as_str().ok()).find_map(NodeRole::parse);
        let mut addresses = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    if node_id_from_dns_name(dns).is_none() {
                        dns_names.push(dns.to_string());
                    }
                }
                if let GeneralName::IPAddress(bytes) = name {
                    match bytes.len() {
                        4 => addresses.push(IpAddr::from(
                            <[u8; 4]>::try_from(*bytes).map_err(|_| PkiError::BadCertificate("bad IP SAN"))?,
                        )),
                        16 => addresses.push(IpAddr::from(
                            <[u8; 16]>::try_from(*bytes).map_err(|_| PkiError::BadCertificate("bad IP SAN"))?,
                        )),
                        _ => return Err(PkiError::BadCertificate("IP address SAN of a bad length")),
                    }
                }
            }
        }
        let validity = x509.validity();
        let not_before = u64::try_from(validity.not_before.timestamp()).map_err(|_| PkiError::BadTime)?;
        let not_after = u64::try_from(validity.not_after.timestamp()).map_err(|_| PkiError::BadTime)?;
        Ok(Self {
            node_id,
            role,
            addresses,
            dns_names,
            not_before: from_unix_secs(not_before),
            not_after: from_unix_secs(not_after),
            serial: x509.raw_serial().to_vec(),
        })
    }

    /// When to ask for a new certificate: two thirds into the lifetime.
    pub fn renew_at(&self) -> SystemTime {
        renew_at(self.not_before, self.not_after)
    }

    /// Whether it is time to renew.
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        needs_renewal(self.not_before, self.not_after, now)
    }

    /// Whether the certificate has expired (peers refuse it from then on).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.not_after
    }
}

/// Two thirds of the way from `not_before` to `not_after` (or `not_before` for an empty or
/// inverted validity, so such a certificate is renewed at once).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    match not_after.duration_since(not_before) {
        // Divide first: no overflow whatever the lifetime.
        Ok(life) => not_before + life / 3 * 2,
        Err(_) => not_before,
    }
}

/// Whether a certificate valid from `not_before` to `not_after` should be renewed at `now`.
pub fn needs_renewal(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    now >= renew_at(not_before, not_after)
}

/// The node id of a certificate (DER): from its single `<id>.node.shoal` DNS SAN, which
/// must match the hash of its public key. Used by the TLS verifiers on every handshake.
pub fn node_id_of_cert(der: &[u8]) -> Result<NodeId, PkiError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(der).map_err(|_| PkiError::BadCertificate("does not parse as X.509"))?;
    node_id_of_x509(&x509)
}

fn node_id_of_x509(x509: &x509_parser::certificate::X509Certificate<'_>) -> Result<NodeId, PkiError> {
    // The role check: a client certificate (OU `client`) never names a node, whatever
    // names it carries, so no node-to-node session accepts it.
    if super::client::is_client_certificate(x509) {
        return Err(PkiError::BadCertificate("a client certificate is not a node certificate"));
    }
    let san = x509
        .subject_alternative_name()
        .map_err(|_| PkiError::BadCertificate("malformed subject alternative names"))?
        .ok_or(PkiError::BadCertificate("no subject alternative names"))?;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::DNSName(name) => node_id_from_dns_name(name),
        _ => None,
    });
    let claimed = ids.next().ok_or(PkiError::BadCertificate("no <node id>.node.shoal name"))?;
    if ids.next().is_some() {
        return Err(PkiError::BadCertificate("more than one node id name"));
    }
    let actual = node_id_of_public_key(x509.public_key().subject_public_key.data.as_ref());
    if actual != claimed {
        return Err(PkiError::NodeIdMismatch { claimed, actual });
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let na = nb + 3 * DAY;
        assert_eq!(renew_at(nb, na), nb + 2 * DAY);
        assert!(!needs_renewal(nb, na, nb));
        assert!(!needs_renewal(nb, na, nb + 2 * DAY - Duration::from_secs(1)));
        assert!(needs_renewal(nb, na, nb + 2 * DAY));
        assert!(needs_renewal(nb, na, na + DAY));
        // Seven days: renew after 4 days 16 hours.
        assert_eq!(renew_at(nb, nb + 7 * DAY), nb + Duration::from_secs(4 * 24 * 3600 + 16 * 3600));
        // An inverted validity renews at once.
        assert_eq!(renew_at(na, nb), na);
        assert!(needs_renewal(na, nb, na));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(CertInfo::parse(b"garbage"), Err(PkiError::BadCertificate(_))));
        assert!(matches!(node_id_of_cert(&[0x30, 0x82, 0xff, 0xff]), Err(PkiError::BadCertificate(_))));
    }

    #[test]
    fn a_name_that_does_not_match_the_key_is_refused() {
        // A self-made certificate claiming some other node's id.
        let claimed = NodeId([7; 16]);
        let made = rcgen::generate_simple_self_signed(vec![super::super::node_dns_name(claimed)]).expect("cert");
        let err = node_id_of_cert(made.cert.der()).expect_err("must refuse");
        assert!(matches!(err, PkiError::NodeIdMismatch { claimed: c, .. } if c == claimed), "{err}");
        // No node name at all.
        let made = rcgen::generate_simple_self_signed(vec!["example.org".to_string()]).expect("cert");
        assert!(matches!(node_id_of_cert(made.cert.der()), Err(PkiError::BadCertificate(_))));
    }
}
