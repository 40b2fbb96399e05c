//! Certificate parsing: whatever a peer presents (and the CA verified) is read by these;
//! they must refuse garbage with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_pki::cert::node_id_of_cert;
use shoal_pki::{CertInfo, ClientCertInfo};

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = CertInfo::parse(data) {
        // The id a certificate names is the one its holder is known by.
        assert_eq!(node_id_of_cert(data).ok(), Some(info.node_id));
    }
    let _ = ClientCertInfo::parse(data);
});
