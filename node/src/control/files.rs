//! What the controller keeps in the data dir besides the Raft store: this node's certificate,
//! the cluster CA certificate it trusts, and (on the node that created the CA, until the CA
//! is committed) the CA with its key sealed under the join secret.
//!
//! Every file is written atomically (`identity::write_atomic`, fsync'd) with mode 0600, and
//! read back with a size bound. Nothing here is secret in the clear: the node key lives in
//! `node.key` (identity.rs), the CA key only sealed.

use crate::identity::write_atomic;
use crate::pki::{CertInfo, SealedCaKey};
use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::Read;
use std::path::{Path, PathBuf};

/// This node's certificate (PEM).
const NODE_CERT_FILE: &str = "node.crt";
/// The cluster CA certificate (PEM): the only trust anchor for TLS.
const CA_CERT_FILE: &str = "ca.crt";
/// The CA this node created, its key sealed: kept until the CA is in the replicated state.
const PENDING_CA_FILE: &str = "ca.pending";
/// Sub-directory of the Raft store.
pub const RAFT_DIR: &str = "raft";
/// Bound on any of these files (a PEM certificate is about 1 KiB).
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Bound on the encoded pending CA.
const MAX_PENDING_CA_BYTES: usize = 32 * 1024;

fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!("{} is larger than {MAX_FILE_BYTES} bytes; it is not a shoal file", path.display());
    }
    Ok(Some(bytes))
}

fn pem_cert(path: &Path) -> Result<Option<CertificateDer<'static>>> {
    let Some(bytes) = read_bounded(path)? else { return Ok(None) };
    let der = CertificateDer::from_pem_slice(&bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a PEM certificate", path.display()))?;
    Ok(Some(der))
}

fn to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// The node's certificate material in its data dir.
#[derive(Debug, Clone)]
pub struct TrustFiles {
    dir: PathBuf,
}

/// A certificate and the CA it chains to, as stored.
#[derive(Debug, Clone)]
pub struct StoredCert {
    pub cert: CertificateDer<'static>,
    pub ca: CertificateDer<'static>,
    pub info: CertInfo,
}

impl TrustFiles {
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.to_path_buf() }
    }

    /// The stored certificate and CA, if both are there and the certificate parses. A
    /// damaged file is an error (the operator must look), a missing one is `None`.
    pub fn load_cert(&self) -> Result<Option<StoredCert>> {
        let (Some(cert), Some(ca)) = (pem_cert(&self.dir.join(NODE_CERT_FILE))?, pem_cert(&self.dir.join(CA_CERT_FILE))?)
        else {
            return Ok(None);
        };
        let info = CertInfo::parse(&cert)
            .with_context(|| format!("{} is not a shoal node certificate", self.dir.join(NODE_CERT_FILE).display()))?;
        Ok(Some(StoredCert { cert, ca, info }))
    }

    /// Saves a certificate and its CA (the CA first: a crash in between leaves the old
    /// certificate, which still chains to the same CA).
    pub fn save_cert(&self, cert: &CertificateDer<'_>, ca: &CertificateDer<'_>) -> Result<()> {
        write_atomic(&self.dir.join(CA_CERT_FILE), to_pem(ca).as_bytes(), 0o600)?;
        write_atomic(&self.dir.join(NODE_CERT_FILE), to_pem(cert).as_bytes(), 0o600)
    }

    /// The CA this node created and has not yet seen committed.
    pub fn load_pending_ca(&self) -> Result<Option<(String, SealedCaKey)>> {
        let path = self.dir.join(PENDING_CA_FILE);
        let Some(bytes) = read_bounded(&path)? else { return Ok(None) };
        let pending = shoal_wire::decode::<(String, SealedCaKey), MAX_PENDING_CA_BYTES>(&bytes)
            .with_context(|| format!("{} is damaged; remove the data dir's Raft state and certificates to start over", path.display()))?;
        Ok(Some(pending))
    }

    pub fn save_pending_ca(&self, cert_pem: &str, sealed: &SealedCaKey) -> Result<()> {
        let bytes = shoal_wire::encode::<_, MAX_PENDING_CA_BYTES>(&(cert_pem.to_string(), sealed.clone()))
            .context("cannot encode the new CA")?;
        write_atomic(&self.dir.join(PENDING_CA_FILE), &bytes, 0o600)
    }

    pub fn remove_pending_ca(&self) {
        let _ = std::fs::remove_file(self.dir.join(PENDING_CA_FILE));
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.dir.join(RAFT_DIR)
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(NODE_CERT_FILE)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// The stored cluster CA alone (what `shoal token show` pins), if there.
    pub fn load_ca(&self) -> Result<Option<CertificateDer<'static>>> {
        pem_cert(&self.ca_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_rustls_parser() {
        let der: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let pem = to_pem(&der);
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).expect("parses");
        assert_eq!(back.as_ref(), der.as_slice());
    }
}
